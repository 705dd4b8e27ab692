"""Flax NNX models and their registry.

Every model is an ``nnx.Module`` whose ``__call__(x)`` takes a float32 NHWC batch
``(B, H, W, C)`` (already normalised) and returns logits ``(B, num_classes)``. Dropout modules hold
their own RNG streams (seeded at construction), so ``model(x)`` works in train mode;
``model.eval()`` / ``model.train()`` switch BatchNorm (running vs batch statistics; momentum 0.9 =
torch's 0.1, epsilon 1e-5) and Dropout (off / on). Models start in train mode.

Registry (``available()``); options and their defaults:

=====================  =============================================================================
``cnn``                ``width=32``: small CNN (28.7k params at 8x8x1), for digits and tests
``simplecnn``          ``width=32, hidden=128``: the authors' toy-notebook CNN (2 conv/pool blocks,
                       flatten, FC hidden, FC classes)
``mlp``                ``hidden=256, depth=2``: flatten, ``depth`` ReLU layers, dense head
``resnet18``           ``width=64``, ``stem="cifar"|"imagenet"``: 11,173,962 params (10 classes)
``vgg11``, ``vgg16``   ``width=64, dropout=0.0``: CIFAR VGG (configs A/D), no BN, global-avg-pool
                       (+ dropout if > 0) + dense head
``vgg11_bn``,          ``width=64``: the same with BatchNorm after every convolution
``vgg16_bn``
``vgg11_torchvision``  ``width=64``, ``dropout=0.5``: the JiT authors' model (torchvision vgg11,
                       7x7 adaptive pool, 4096-4096-1000 classifier, extra 1000->C layer)
``vit``                ``patch_size=16, hidden=768, depth=12, heads=12, mlp_dim=3072,
                       dropout=0.0, gelu="exact"|"tanh"``
``vit_b16``            ViT-B/16 preset (= ``vit`` defaults; 86,567,656 params at 224x224, 1000
                       classes); ``vit_s16`` (384/12/6/1536) and ``vit_ti16`` (192/12/3/768)
=====================  =============================================================================

Initialisation: convolutions He-normal over fan-out (torchvision's choice for ResNet and VGG),
dense layers flax's LeCun-normal, the torchvision VGG head as torchvision, the ViT as Google's
``vit_jax``. Values are drawn with numpy from the JAX key (``initializers``), which builds a model
in well under a second on CPU instead of compiling a random-number program per parameter shape;
``spec.build(seed)`` is deterministic in ``seed``.

Minimum input sizes: ``cnn`` 2x2, ``simplecnn`` 4x4, ``resnet18`` 8x8 (cifar stem) / 32x32 (imagenet stem), VGGs
32x32, ViTs a multiple of the patch size.

A model is described by a :class:`ModelSpec` (name, num_classes, input_shape, options), a frozen,
hashable, JSON-able record: ``spec.build(seed)`` builds it, ``spec.to_dict()`` /
``ModelSpec.from_dict(d)`` go to and from checkpoint metadata, and every built model carries its
spec as the static attribute ``model.spec`` (it survives ``nnx.split``/``nnx.merge``/``nnx.jit``).
``create(name, num_classes, input_shape, seed=0, **options)`` is ``ModelSpec(...).build(seed)``.
``num_params(...)`` counts parameters through ``nnx.eval_shape`` without allocating them.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Mapping
from typing import Any

import jax
import numpy as np
from flax import nnx

from jit_jax.models.cnn import CNN, SimpleCNN
from jit_jax.models.layers import Conv, adaptive_avg_pool, conv_general, conv_im2col
from jit_jax.models.mlp import MLP
from jit_jax.models.resnet import ResNet18
from jit_jax.models.vgg import VGG
from jit_jax.models.vit import ViT, export_vit_npz, load_vit_npz

__all__ = [
    "CNN", "Conv", "MLP", "ModelSpec", "ResNet18", "SimpleCNN", "VGG", "ViT", "adaptive_avg_pool",
    "available",
    "conv_general", "conv_im2col", "count_params", "create", "export_vit_npz", "load_vit_npz",
    "num_params", "spec_of",
]


# ------------------------------------------------------------------------------ option checks

def _positive_int(name: str, v: Any) -> int:
    if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 1:
        raise ValueError(f"option {name}={v!r} must be a positive int")
    return int(v)


def _rate(name: str, v: Any) -> float:
    if isinstance(v, bool) or not isinstance(v, (int, float, np.number)) or not 0 <= v < 1:
        raise ValueError(f"option {name}={v!r} must be a float in [0, 1)")
    return float(v)


def _choice(*choices: str) -> Callable[[str, Any], str]:
    def check(name: str, v: Any) -> str:
        if v not in choices:
            raise ValueError(f"option {name}={v!r} must be one of {list(choices)}")
        return v

    return check


@dataclasses.dataclass(frozen=True)
class _Entry:
    builder: Callable[..., nnx.Module]
    options: dict[str, tuple[Any, Callable[[str, Any], Any]]]  # name -> (default, checker)
    fixed: dict[str, Any]  # constructor arguments the name implies (not user options)
    check_shape: Callable[[tuple[int, int, int], dict[str, Any]], str | None]


def _min_size(n: int, what: str):
    def check(shape, opts):
        if min(shape[:2]) < n:
            return f"{what} needs inputs of at least {n}x{n}"
        return None

    return check


def _resnet_shape(shape, opts):
    return _min_size(8 if opts["stem"] == "cifar" else 32, f"resnet18 (stem={opts['stem']!r})")(
        shape, opts
    )


def _vit_shape(shape, opts):
    p = opts["patch_size"]
    if shape[0] % p or shape[1] % p:
        return f"ViT needs H and W divisible by patch_size={p}"
    if opts["hidden"] % opts["heads"]:
        return f"ViT needs hidden={opts['hidden']} divisible by heads={opts['heads']}"
    return None


_VIT_OPTIONS = {
    "patch_size": (16, _positive_int),
    "hidden": (768, _positive_int),
    "depth": (12, _positive_int),
    "heads": (12, _positive_int),
    "mlp_dim": (3072, _positive_int),
    "dropout": (0.0, _rate),
    "gelu": ("exact", _choice("exact", "tanh")),
}


def _vit_preset(hidden: int, depth: int, heads: int, mlp_dim: int):
    opts = dict(_VIT_OPTIONS)
    for k, v in dict(hidden=hidden, depth=depth, heads=heads, mlp_dim=mlp_dim).items():
        opts[k] = (v, opts[k][1])
    return _Entry(ViT, opts, {}, _vit_shape)


def _vgg(config: str, bn: bool, head: str) -> _Entry:
    opts = {"width": (64, _positive_int),
            "dropout": (0.5 if head == "torchvision" else 0.0, _rate)}
    fixed = dict(config=config, batch_norm=bn, head=head)
    return _Entry(VGG, opts, fixed, _min_size(32, "VGG (five 2x2 max-pools)"))


_REGISTRY: dict[str, _Entry] = {
    "cnn": _Entry(CNN, {"width": (32, _positive_int)}, {}, _min_size(2, "cnn")),
    "simplecnn": _Entry(SimpleCNN, {"width": (32, _positive_int), "hidden": (128, _positive_int)},
                        {}, _min_size(4, "simplecnn (two 2x2 max-pools)")),
    "mlp": _Entry(MLP, {"hidden": (256, _positive_int), "depth": (2, _positive_int)}, {},
                  _min_size(1, "mlp")),
    "resnet18": _Entry(
        ResNet18,
        {"width": (64, _positive_int), "stem": ("cifar", _choice("cifar", "imagenet"))},
        {},
        _resnet_shape,
    ),
    "vgg11": _vgg("A", False, "cifar"),
    "vgg16": _vgg("D", False, "cifar"),
    "vgg11_bn": _vgg("A", True, "cifar"),
    "vgg16_bn": _vgg("D", True, "cifar"),
    "vgg11_torchvision": _vgg("A", False, "torchvision"),
    "vit": _Entry(ViT, dict(_VIT_OPTIONS), {}, _vit_shape),
    "vit_b16": _vit_preset(768, 12, 12, 3072),
    "vit_s16": _vit_preset(384, 12, 6, 1536),
    "vit_ti16": _vit_preset(192, 12, 3, 768),
}


def available() -> list[str]:
    """Registered model names."""
    return sorted(_REGISTRY)


#: What each model suits (``jit-jax models``); times measured on the project's 2-core CPU.
NOTES: dict[str, str] = {
    "mlp": "any input; small data sets (< 5,000 images) and small inputs; digits 8x8: 97-98%, "
           "a 40-class 64x64 set of 280 images: 98% in ~15 s",
    "cnn": "small inputs (8x8-32x32, >= 2x2); digits 8x8: 98.6% in ~9 s; slow on large inputs "
           "on a CPU (64x64: ~1-4 s a step of 32), weak on identity-like tasks (global pooling)",
    "simplecnn": "the authors' toy CNN; inputs >= 4x4 (flatten + dense head)",
    "resnet18": "CIFAR-size inputs (>= 8x8, cifar stem; >= 32x32 imagenet stem) and >= 5,000 "
                "images; width 16 on the CIFAR-10 subset: 73.8%, 36 s an epoch here",
    "vgg11": "inputs >= 32x32 (five 2x2 pools), no BN; the paper's CNN family",
    "vgg16": "inputs >= 32x32, no BN", "vgg11_bn": "inputs >= 32x32, BatchNorm",
    "vgg16_bn": "inputs >= 32x32, BatchNorm",
    "vgg11_torchvision": "the JiT authors' VGG11 (torchvision layout, 4096-wide head); >= 32x32",
    "vit": "inputs a multiple of patch_size; pretrained weights via load_vit_npz; slow on a CPU",
    "vit_b16": "ViT-B/16 (the paper's ViT, 224x224); accelerators",
    "vit_s16": "ViT-S/16; accelerators", "vit_ti16": "ViT-Ti/16; the smallest ViT preset",
}


def option_types(name: str) -> dict[str, type]:
    """``{option: type of its default}`` of model ``name`` (for ``--model-opt KEY=VALUE``)."""
    return {k: type(default) for k, (default, _) in _lookup(name).options.items()}


def _lookup(name: Any) -> _Entry:
    if not isinstance(name, str) or name not in _REGISTRY:
        raise ValueError(f"unknown model {name!r}; available: {available()}")
    return _REGISTRY[name]


# ------------------------------------------------------------------------------ ModelSpec

@dataclasses.dataclass(frozen=True)
class ModelSpec:
    """Everything needed to rebuild a model: registry name, class count, input shape, options.

    ``options`` may be given as a mapping; it is validated, completed with the defaults and stored
    as a sorted tuple of ``(name, value)`` pairs (so the spec is hashable and can be a static NNX
    attribute). ``spec.kwargs`` gives them back as a dict. Invalid values raise ``ValueError``
    naming the value and what is accepted.
    """

    name: str
    num_classes: int
    input_shape: tuple[int, int, int]
    options: tuple[tuple[str, Any], ...] = ()

    def __post_init__(self):
        entry = _lookup(self.name)
        nc = self.num_classes
        if isinstance(nc, bool) or not isinstance(nc, (int, np.integer)) or nc < 2:
            raise ValueError(f"num_classes={nc!r} must be an int >= 2")
        shape = self.input_shape
        if (
            not isinstance(shape, (tuple, list))
            or len(shape) != 3
            or any(isinstance(s, bool) or not isinstance(s, (int, np.integer)) or s < 1
                   for s in shape)
        ):
            raise ValueError(
                f"input_shape={shape!r} must be 3 positive ints (height, width, channels)"
            )
        shape = tuple(int(s) for s in shape)
        given = dict(self.options)
        unknown = sorted(set(given) - set(entry.options))
        if unknown:
            raise ValueError(
                f"unknown option(s) {unknown} for model {self.name!r}; accepted: "
                + (", ".join(f"{k}={d!r}" for k, (d, _) in entry.options.items()) or "none")
            )
        opts = {k: check(k, given.get(k, default)) for k, (default, check) in entry.options.items()}
        problem = entry.check_shape(shape, opts)
        if problem:
            raise ValueError(f"input_shape={shape} is too small or ill-shaped: {problem}")
        object.__setattr__(self, "num_classes", int(nc))
        object.__setattr__(self, "input_shape", shape)
        object.__setattr__(self, "options", tuple(sorted(opts.items())))

    @property
    def kwargs(self) -> dict[str, Any]:
        """The options as a dict (defaults filled in)."""
        return dict(self.options)

    def build(self, seed: int = 0) -> nnx.Module:
        """A freshly initialised model; params from ``seed``, dropout masks from ``seed + 1``."""
        entry = _REGISTRY[self.name]
        rngs = nnx.Rngs(params=jax.random.key(seed), dropout=jax.random.key(seed + 1))
        model = entry.builder(
            self.num_classes, self.input_shape, **entry.fixed, **self.kwargs, rngs=rngs
        )
        model.spec = self
        return model

    def abstract(self, seed: int = 0) -> nnx.Module:
        """The model with ``jax.ShapeDtypeStruct`` leaves (``nnx.eval_shape``): no allocation."""
        return nnx.eval_shape(lambda: self.build(seed))

    def num_params(self) -> int:
        """Parameter count (``nnx.Param`` leaves), computed without allocating the model."""
        return count_params(self.abstract())

    def to_dict(self) -> dict[str, Any]:
        """JSON-able form: ``{"name", "num_classes", "input_shape", "options"}``."""
        return {
            "name": self.name,
            "num_classes": self.num_classes,
            "input_shape": list(self.input_shape),
            "options": self.kwargs,
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> ModelSpec:
        keys = {"name", "num_classes", "input_shape", "options"}
        if not isinstance(d, Mapping) or not {"name", "num_classes", "input_shape"} <= set(d):
            raise ValueError(f"a model spec needs keys {sorted(keys)}, got {d!r}")
        extra = set(d) - keys
        if extra:
            raise ValueError(f"unknown model spec key(s) {sorted(extra)}; accepted: {sorted(keys)}")
        return cls(d["name"], d["num_classes"], tuple(d["input_shape"]),
                   tuple(dict(d.get("options") or {}).items()))


def _spec(name, num_classes, input_shape, options) -> ModelSpec:
    shape = tuple(input_shape) if isinstance(input_shape, (tuple, list)) else input_shape
    return ModelSpec(name, num_classes, shape, tuple(options.items()))


def create(
    name: str, num_classes: int, input_shape: tuple[int, int, int], *, seed: int = 0,
    **options: Any,
) -> nnx.Module:
    """Build a registered model (``ModelSpec(name, num_classes, input_shape, options).build``)."""
    return _spec(name, num_classes, input_shape, options).build(seed)


def num_params(
    name: str, num_classes: int, input_shape: tuple[int, int, int], **options: Any
) -> int:
    """Parameter count of a registered model, via ``nnx.eval_shape`` (nothing is allocated)."""
    return _spec(name, num_classes, input_shape, options).num_params()


def spec_of(model: nnx.Module) -> ModelSpec:
    """The :class:`ModelSpec` a registry-built model was created from."""
    spec = getattr(model, "spec", None)
    if not isinstance(spec, ModelSpec):
        raise ValueError(f"{type(model).__name__} was not built by jit_jax.models (no .spec)")
    return spec


def _size(x) -> int:
    return int(math.prod(np.shape(x)))


def count_params(model_or_state: Any) -> int:
    """Number of scalar parameters (``nnx.Param`` leaves; BatchNorm running stats and RNG state
    excluded) of a module, an ``nnx.State`` or any pytree holding NNX variables. Abstract models
    from ``nnx.eval_shape`` work too. A pytree without NNX variables (e.g. a pure dict of arrays)
    is counted whole."""
    tree = model_or_state
    if isinstance(tree, nnx.Module):
        tree = nnx.state(tree, nnx.Param)
    leaves = jax.tree.leaves(tree, is_leaf=lambda x: isinstance(x, nnx.Variable))
    if any(isinstance(x, nnx.Variable) for x in leaves):
        return sum(_size(x.get_value()) for x in leaves if isinstance(x, nnx.Param))
    return sum(_size(x) for x in leaves)
