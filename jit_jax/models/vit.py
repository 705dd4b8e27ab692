"""Vision Transformer (ViT, Dosovitskiy et al. 2021) and Google's ``.npz`` checkpoints.

Architecture (the original ``vit_jax`` model, ``classifier='token'``):

- patch embedding: a convolution with kernel = stride = ``patch_size`` (computed as reshape +
  matmul, which is the same maths); the input size must be a multiple of the patch size;
- a learnable CLS token (zeros at init) prepended, then learnable position embeddings for
  ``1 + (H/p)*(W/p)`` positions (N(0, 0.02) at init) added, then dropout;
- ``depth`` pre-LN encoder blocks: ``x + Dropout(MHA(LN(x)))``, then
  ``x + MLP(LN(x))`` with MLP = Dense(mlp_dim) - GELU - Dropout - Dense(hidden) - Dropout;
  LayerNorm epsilon 1e-6, attention scaled by 1/sqrt(head_dim), no attention dropout;
- a final LayerNorm; the classifier is a dense layer on the CLS token's output.

GELU: ``gelu="exact"`` (erf; the default, what the authors' HuggingFace ViT uses) or ``"tanh"``
(the approximation ``flax.linen.gelu`` uses, i.e. what Google's checkpoints were trained with);
the two differ by < 1e-3 per activation.

Checkpoints
-----------
:func:`load_vit_npz` reads the ``.npz`` files of google-research/vision_transformer (e.g.
``imagenet21k+imagenet2012/ViT-B_16.npz``, the weights behind HF's ``google/vit-base-patch16-224``
that the JiT authors fine-tune) and of its AugReg release. Keys are '/'-joined flax parameter
paths::

    embedding/kernel                      (p, p, C, hidden)
    embedding/bias                        (hidden,)
    cls                                   (1, 1, hidden)
    Transformer/posembed_input/pos_embedding  (1, 1 + N, hidden)
    Transformer/encoderblock_{i}/LayerNorm_0/{scale,bias}                        (hidden,)
    Transformer/encoderblock_{i}/MultiHeadDotProductAttention_1/{query,key,value}/kernel
                                                                   (hidden, heads, head_dim)
    Transformer/encoderblock_{i}/MultiHeadDotProductAttention_1/{query,key,value}/bias
                                                                   (heads, head_dim)
    Transformer/encoderblock_{i}/MultiHeadDotProductAttention_1/out/kernel
                                                                   (heads, head_dim, hidden)
    Transformer/encoderblock_{i}/MultiHeadDotProductAttention_1/out/bias    (hidden,)
    Transformer/encoderblock_{i}/LayerNorm_2/{scale,bias}                        (hidden,)
    Transformer/encoderblock_{i}/MlpBlock_3/Dense_0/{kernel (hidden, mlp), bias (mlp,)}
    Transformer/encoderblock_{i}/MlpBlock_3/Dense_1/{kernel (mlp, hidden), bias (hidden,)}
    Transformer/encoder_norm/{scale,bias}                                        (hidden,)
    head/{kernel (hidden, classes), bias (classes,)}
    pre_logits/{kernel,bias}              only in pre-training checkpoints with a representation
                                          layer (Dense + tanh); absent from fine-tuned ones

The block-level numbers (``LayerNorm_0``, ``MultiHeadDotProductAttention_1``, ``LayerNorm_2``,
``MlpBlock_3``) are the *pre-Linen* global counters the published files use; Linen renumbers per
class (``LayerNorm_0``, ``MultiHeadDotProductAttention_0``, ``LayerNorm_1``, ``MlpBlock_0``).
The loader accepts both: within a block it orders the ``LayerNorm_*`` by number (first = before
attention) and takes the single ``MultiHeadDotProductAttention_*`` and ``MlpBlock_*``. It also
accepts the position embedding at ``Transformer/pos_embedding`` or at top level
``pos_embedding``; a big_vision-style table without the CLS row (big_vision adds the position
embedding *before* prepending the CLS token) gets a zero CLS row, which is the same function.
:func:`export_vit_npz` writes our parameters in the published (pre-Linen) layout.

When the checkpoint's patch grid differs from the model's (another input size), the grid part of
the position embedding is resampled bilinearly with ``scipy.ndimage.zoom(order=1)`` (corner-
aligned, as Google's own fine-tuning code does); the CLS row is kept.
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Mapping

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from jit_jax.models import initializers as init
from jit_jax.models.layers import dense, record

LN_EPSILON = 1e-6


class PatchEmbedding(nnx.Module):
    """Conv with kernel = stride = patch (VALID), as reshape + matmul. Output (B, H/p, W/p, D)."""

    def __init__(self, patch: int, in_ch: int, hidden: int, *, rngs: nnx.Rngs):
        self.patch = patch
        # nnx.Conv's default (lecun normal over fan_in = p*p*C)
        self.kernel = nnx.Param(init.lecun_normal(rngs.params(), (patch, patch, in_ch, hidden)))
        self.bias = nnx.Param(init.zeros(None, (hidden,)))

    def __call__(self, x):
        b, h, w, c = x.shape
        p = self.patch
        if h % p or w % p:
            raise ValueError(f"input {h}x{w} is not divisible by the patch size {p}")
        x = x.reshape(b, h // p, p, w // p, p, c).transpose(0, 1, 3, 2, 4, 5)
        x = x.reshape(b, h // p, w // p, p * p * c)
        kernel = self.kernel[...]
        return jnp.dot(x, kernel.reshape(p * p * c, kernel.shape[-1])) + self.bias[...]


class HeadsProjection(nnx.Module):
    """Dense to heads: kernel (hidden, heads, head_dim), bias (heads, head_dim)."""

    def __init__(self, hidden: int, heads: int, *, rngs: nnx.Rngs):
        hd = hidden // heads
        kernel = init.xavier_uniform(rngs.params(), (hidden, hidden))
        self.kernel = nnx.Param(kernel.reshape(hidden, heads, hd))
        self.bias = nnx.Param(init.zeros(None, (heads, hd)))

    def __call__(self, x):
        return jnp.einsum("bnd,dhk->bnhk", x, self.kernel[...]) + self.bias[...]


class OutProjection(nnx.Module):
    """Dense (heads, head_dim) -> hidden: kernel (heads, head_dim, hidden), bias (hidden,)."""

    def __init__(self, hidden: int, heads: int, *, rngs: nnx.Rngs):
        hd = hidden // heads
        kernel = init.xavier_uniform(rngs.params(), (hidden, hidden))
        self.kernel = nnx.Param(kernel.reshape(heads, hd, hidden))
        self.bias = nnx.Param(init.zeros(None, (hidden,)))

    def __call__(self, x):
        return jnp.einsum("bnhk,hkd->bnd", x, self.kernel[...]) + self.bias[...]


class SelfAttention(nnx.Module):
    def __init__(self, hidden: int, heads: int, *, rngs: nnx.Rngs):
        self.query = HeadsProjection(hidden, heads, rngs=rngs)
        self.key = HeadsProjection(hidden, heads, rngs=rngs)
        self.value = HeadsProjection(hidden, heads, rngs=rngs)
        self.out = OutProjection(hidden, heads, rngs=rngs)

    def __call__(self, x):
        q, k, v = self.query(x), self.key(x), self.value(x)
        q = q / jnp.sqrt(jnp.asarray(q.shape[-1], q.dtype))
        weights = jax.nn.softmax(jnp.einsum("bqhk,bshk->bhqs", q, k), axis=-1)
        return self.out(jnp.einsum("bhqs,bshk->bqhk", weights, v))


class EncoderBlock(nnx.Module):
    def __init__(
        self, hidden: int, heads: int, mlp_dim: int, dropout: float, gelu: str, *, rngs: nnx.Rngs
    ):
        self.gelu_approximate = gelu == "tanh"
        self.ln1 = nnx.LayerNorm(hidden, epsilon=LN_EPSILON, rngs=rngs)
        self.attn = SelfAttention(hidden, heads, rngs=rngs)
        self.attn_dropout = nnx.Dropout(dropout, rngs=rngs)
        self.ln2 = nnx.LayerNorm(hidden, epsilon=LN_EPSILON, rngs=rngs)
        self.mlp_fc1 = dense(hidden, mlp_dim, kernel_init=init.xavier_uniform, rngs=rngs)
        self.mlp_dropout1 = nnx.Dropout(dropout, rngs=rngs)
        self.mlp_fc2 = dense(mlp_dim, hidden, kernel_init=init.xavier_uniform, rngs=rngs)
        self.mlp_dropout2 = nnx.Dropout(dropout, rngs=rngs)

    def __call__(self, x):
        x = x + self.attn_dropout(self.attn(self.ln1(x)))
        y = jax.nn.gelu(self.mlp_fc1(self.ln2(x)), approximate=self.gelu_approximate)
        y = self.mlp_dropout2(self.mlp_fc2(self.mlp_dropout1(y)))
        return record("encoder", x + y)


class ViT(nnx.Module):
    def __init__(
        self,
        num_classes: int,
        input_shape: tuple[int, int, int],
        *,
        patch_size: int = 16,
        hidden: int = 768,
        depth: int = 12,
        heads: int = 12,
        mlp_dim: int = 3072,
        dropout: float = 0.0,
        gelu: str = "exact",
        rngs: nnx.Rngs,
    ):
        h, w, c = input_shape
        if h % patch_size or w % patch_size:
            raise ValueError(
                f"input_shape {input_shape} is not divisible by patch_size {patch_size}"
            )
        if hidden % heads:
            raise ValueError(f"hidden ({hidden}) must be divisible by heads ({heads})")
        if gelu not in ("exact", "tanh"):
            raise ValueError(f"gelu must be 'exact' or 'tanh', got {gelu!r}")
        self.grid = (h // patch_size, w // patch_size)
        n_pos = 1 + self.grid[0] * self.grid[1]
        self.embedding = PatchEmbedding(patch_size, c, hidden, rngs=rngs)
        self.cls = nnx.Param(init.zeros(None, (1, 1, hidden)))
        self.pos_embedding = nnx.Param(init.normal(0.02)(rngs.params(), (1, n_pos, hidden)))
        self.embed_dropout = nnx.Dropout(dropout, rngs=rngs)
        self.blocks = nnx.List(
            [EncoderBlock(hidden, heads, mlp_dim, dropout, gelu, rngs=rngs) for _ in range(depth)]
        )
        self.encoder_norm = nnx.LayerNorm(hidden, epsilon=LN_EPSILON, rngs=rngs)
        self.head = dense(hidden, num_classes, rngs=rngs)

    def __call__(self, x):
        return self.head(self.features(x))

    def features(self, x):
        """The representation the head reads: the class token after the encoder's last
        LayerNorm, ``(batch, hidden)``."""
        x = self.embedding(x)
        b, gh, gw, d = x.shape
        if (gh, gw) != self.grid:
            raise ValueError(
                f"input gives a {gh}x{gw} patch grid, the position embeddings are for "
                f"{self.grid[0]}x{self.grid[1]}; build the model for this input shape"
            )
        x = x.reshape(b, gh * gw, d)
        cls = jnp.broadcast_to(self.cls[...], (b, 1, d)).astype(x.dtype)
        x = jnp.concatenate([cls, x], axis=1) + self.pos_embedding[...]
        x = self.embed_dropout(x)
        for block in self.blocks:
            x = block(x)
        return self.encoder_norm(x)[:, 0]


# --------------------------------------------------------------------------- checkpoints

_ATTN = "MultiHeadDotProductAttention"


def _num(name: str) -> int:
    return int(name.rsplit("_", 1)[1])


def _children(keys, prefix: str, pattern: str) -> list[str]:
    """Names of the direct children of ``prefix`` matching ``pattern``, by trailing number."""
    names = {k[len(prefix):].split("/", 1)[0] for k in keys if k.startswith(prefix)}
    return sorted((n for n in names if re.fullmatch(pattern, n)), key=_num)


def _block_keys(keys, i: int) -> dict[str, str]:
    """Map our names within encoder block ``i`` to checkpoint keys (pre-Linen or Linen)."""
    prefix = f"Transformer/encoderblock_{i}/"
    lns = _children(keys, prefix, r"LayerNorm_\d+")
    attn = _children(keys, prefix, _ATTN + r"_\d+")
    mlp = _children(keys, prefix, r"MlpBlock_\d+")
    if len(lns) != 2 or len(attn) != 1 or len(mlp) != 1:
        found = sorted({k[len(prefix):].split("/", 1)[0] for k in keys if k.startswith(prefix)})
        raise ValueError(
            f"checkpoint block {prefix!r} should hold 2 LayerNorm_*, 1 {_ATTN}_* and 1 "
            f"MlpBlock_*; found {found}"
        )
    dense = _children(keys, f"{prefix}{mlp[0]}/", r"Dense_\d+")
    if len(dense) != 2:
        raise ValueError(f"checkpoint {prefix}{mlp[0]} should hold 2 Dense_*; found {dense}")
    out = {}
    for ours, theirs in (("ln1", lns[0]), ("ln2", lns[1])):
        for p in ("scale", "bias"):
            out[f"{ours}/{p}"] = f"{prefix}{theirs}/{p}"
    for proj in ("query", "key", "value", "out"):
        for p in ("kernel", "bias"):
            out[f"attn/{proj}/{p}"] = f"{prefix}{attn[0]}/{proj}/{p}"
    for ours, theirs in (("mlp_fc1", dense[0]), ("mlp_fc2", dense[1])):
        for p in ("kernel", "bias"):
            out[f"{ours}/{p}"] = f"{prefix}{mlp[0]}/{theirs}/{p}"
    return out


def _block_vars(block: EncoderBlock) -> dict[str, nnx.Variable]:
    out = {}
    for name in ("ln1", "ln2"):
        ln = getattr(block, name)
        out[f"{name}/scale"], out[f"{name}/bias"] = ln.scale, ln.bias
    for proj in ("query", "key", "value", "out"):
        m = getattr(block.attn, proj)
        out[f"attn/{proj}/kernel"], out[f"attn/{proj}/bias"] = m.kernel, m.bias
    for name in ("mlp_fc1", "mlp_fc2"):
        m = getattr(block, name)
        out[f"{name}/kernel"], out[f"{name}/bias"] = m.kernel, m.bias
    return out


def _check_vit(model) -> None:
    if not isinstance(model, ViT):
        raise TypeError(f"expected a jit_jax.models.vit.ViT, got {type(model).__name__}")


def export_vit_npz(model: ViT, path: str | os.PathLike | None = None) -> dict[str, np.ndarray]:
    """Our ViT's parameters in the published ``vit_jax`` (pre-Linen) key layout.

    Returns the ``{key: array}`` dict and, if ``path`` is given, writes it with ``np.savez``.
    """
    _check_vit(model)
    a = lambda v: np.asarray(v[...])
    out = {
        "embedding/kernel": a(model.embedding.kernel),
        "embedding/bias": a(model.embedding.bias),
        "cls": a(model.cls),
        "Transformer/posembed_input/pos_embedding": a(model.pos_embedding),
        "Transformer/encoder_norm/scale": a(model.encoder_norm.scale),
        "Transformer/encoder_norm/bias": a(model.encoder_norm.bias),
        "head/kernel": a(model.head.kernel),
        "head/bias": a(model.head.bias),
    }
    names = {"ln1": "LayerNorm_0", "attn": f"{_ATTN}_1", "ln2": "LayerNorm_2",
             "mlp_fc1": "MlpBlock_3/Dense_0", "mlp_fc2": "MlpBlock_3/Dense_1"}
    for i, block in enumerate(model.blocks):
        for ours, var in _block_vars(block).items():
            head, rest = ours.split("/", 1)
            out[f"Transformer/encoderblock_{i}/{names[head]}/{rest}"] = a(var)
    if path is not None:
        np.savez(path, **out)
    return out


def resample_pos_embedding(pos: np.ndarray, grid: tuple[int, int]) -> np.ndarray:
    """Resample a (1, 1 + g*g, D) position table to (1, 1 + grid[0]*grid[1], D).

    The CLS row is kept; the square g x g grid is resized with corner-aligned bilinear
    interpolation (``scipy.ndimage.zoom(order=1)``).
    """
    import scipy.ndimage

    n = pos.shape[1] - 1
    g = math.isqrt(n)
    if g * g != n:
        raise ValueError(
            f"cannot resample position embeddings of shape {pos.shape}: {n} grid positions "
            "are not a square"
        )
    if (g, g) == tuple(grid):
        return pos
    table = np.asarray(pos[0, 1:], np.float64).reshape(g, g, -1)
    zoomed = scipy.ndimage.zoom(table, (grid[0] / g, grid[1] / g, 1), order=1)
    if zoomed.shape[:2] != tuple(grid):  # zoom rounds the output size; guard it
        raise ValueError(f"resampling {g}x{g} to {grid} gave {zoomed.shape[:2]}")
    zoomed = zoomed.reshape(1, grid[0] * grid[1], -1).astype(pos.dtype)
    return np.concatenate([pos[:, :1], zoomed], axis=1)


def load_vit_npz(
    model: ViT,
    path: str | os.PathLike | Mapping[str, np.ndarray],
    *,
    load_head: bool = True,
    resize_pos_embedding: bool = True,
    strict: bool = True,
) -> ViT:
    """Load a Google ViT ``.npz`` checkpoint (layout in the module doc) into ``model`` in place.

    Args:
      model: a :class:`ViT` built with the checkpoint's patch size, width, depth, heads and MLP
        size (``create("vit_b16", num_classes, (224, 224, 3))`` for ViT-B/16).
      path: an ``.npz`` file, or a mapping of the same keys to arrays.
      load_head: load ``head/*`` too (then its class count must equal the model's). Use
        ``False`` to keep the model's freshly initialised head, e.g. to fine-tune on CIFAR from an
        ImageNet checkpoint; a ``pre_logits`` layer in the file is then dropped as well (our
        model has none), as Google's fine-tuning does.
      resize_pos_embedding: resample the position embeddings bilinearly when the checkpoint's
        patch grid differs from the model's (otherwise that is a shape error).
      strict: fail on checkpoint keys that were not used.

    Returns:
      ``model``, updated. Raises ``ValueError`` naming the key and both shapes on any mismatch,
      and listing the missing keys.
    """
    _check_vit(model)
    if isinstance(path, Mapping):
        ckpt = {k: np.asarray(v) for k, v in path.items()}
    else:
        with np.load(path, allow_pickle=False) as f:
            ckpt = {k: f[k] for k in f.files}
    keys = set(ckpt)

    pos_key = next(
        (k for k in ("Transformer/posembed_input/pos_embedding", "Transformer/pos_embedding",
                     "pos_embedding") if k in keys),
        "Transformer/posembed_input/pos_embedding",
    )
    targets: dict[str, nnx.Variable] = {
        "embedding/kernel": model.embedding.kernel,
        "embedding/bias": model.embedding.bias,
        "cls": model.cls,
        pos_key: model.pos_embedding,
        "Transformer/encoder_norm/scale": model.encoder_norm.scale,
        "Transformer/encoder_norm/bias": model.encoder_norm.bias,
    }
    if load_head:
        targets["head/kernel"] = model.head.kernel
        targets["head/bias"] = model.head.bias

    n_blocks = len({m.group(1) for k in keys
                    if (m := re.match(r"Transformer/encoderblock_(\d+)/", k))})
    if n_blocks != len(model.blocks):
        raise ValueError(
            f"checkpoint has {n_blocks} encoder blocks (Transformer/encoderblock_*), the model "
            f"has depth {len(model.blocks)}"
        )
    for i, block in enumerate(model.blocks):
        ours = _block_vars(block)
        for name, key in _block_keys(keys, i).items():
            targets[key] = ours[name]

    missing = sorted(k for k in targets if k not in keys)
    if missing:
        hint = ""
        if "cls" in missing:
            hint = " (no 'cls': a GAP/MAP-pooled checkpoint; this ViT classifies the CLS token)"
        raise ValueError(f"checkpoint lacks {len(missing)} key(s): {missing}{hint}")

    ignored = set()
    if not load_head:
        ignored = {k for k in keys if k.startswith(("pre_logits/", "head/"))}
    if load_head and any(k.startswith("pre_logits/") for k in keys):
        raise ValueError(
            "checkpoint has a 'pre_logits' (representation) layer that this ViT lacks; "
            "pass load_head=False to drop the checkpoint's head and pre_logits"
        )
    unused = sorted(keys - set(targets) - ignored)
    if unused and strict:
        raise ValueError(f"checkpoint keys not used by the model: {unused} (strict=False skips)")

    values = {}
    for key, var in targets.items():
        arr = ckpt[key]
        want = tuple(var[...].shape)
        if key == pos_key:
            arr = _fit_pos_embedding(arr, want, model.grid, key, resize_pos_embedding)
        if tuple(arr.shape) != want:
            raise ValueError(
                f"shape mismatch for checkpoint key {key!r}: checkpoint {tuple(arr.shape)}, "
                f"model {want}"
            )
        values[key] = arr
    for key, var in targets.items():  # all checks passed: now write
        var.set_value(jnp.asarray(values[key], dtype=var[...].dtype))
    return model


def _fit_pos_embedding(arr, want, grid, key, resize):
    arr = np.asarray(arr)
    if arr.ndim == 2:
        arr = arr[None]
    if arr.ndim != 3 or arr.shape[0] != 1 or arr.shape[2] != want[2]:
        return arr  # the generic shape check reports it
    n = arr.shape[1]
    if math.isqrt(n) ** 2 == n and math.isqrt(n - 1) ** 2 != n - 1:
        # big_vision layout: grid only, added before the CLS token is prepended.
        arr = np.concatenate([np.zeros_like(arr[:, :1]), arr], axis=1)
    if arr.shape != tuple(want) and resize:
        arr = resample_pos_embedding(arr, grid)
    elif arr.shape != tuple(want):
        raise ValueError(
            f"shape mismatch for checkpoint key {key!r}: checkpoint {arr.shape}, model {want} "
            "(resize_pos_embedding=True resamples the grid)"
        )
    return arr
