"""Tests for jit_jax.models: shapes, parameter counts, modes, im2col, registry, ViT checkpoints."""

from __future__ import annotations

import functools
import json

import jax
import jax.extend
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from jit_jax import models
from jit_jax.models import ModelSpec, count_params, create, layers, num_params
from jit_jax.models.layers import (
    Conv,
    adaptive_avg_pool,
    adaptive_pool_matrix,
    conv_general,
    conv_im2col,
)
from jit_jax.models.vit import export_vit_npz, load_vit_npz

TINY_VIT = dict(patch_size=4, hidden=16, depth=2, heads=2, mlp_dim=32)


_fwd = nnx.jit(lambda model, x: model(x))  # one compile per model structure and mode

# Rounding (float32 unless said otherwise): u = 2^-24, gamma_n = n u / (1 - n u) bounds the relative
# error of a length-n sum or contraction in any order, relative to the sum of the |terms|.
U32 = 2.0**-24


def _gamma(n, u=U32):
    return n * u / (1 - n * u)


# Comparisons of two formulations of one computation run in float64 (x64 on, state cast): they
# differ by roundings of u = 2^-53 only, a few hundred deep at most, so 1e-10 (relative to the
# largest entry) leaves a factor > 1e3 for the conditioning of these small networks.
RTOL64 = 1e-10


def _float64(model):
    """``model`` with its parameters and batch statistics in float64 (call with x64 on)."""
    for kind in (nnx.Param, nnx.BatchStat):
        nnx.update(model, jax.tree.map(lambda a: jnp.asarray(a, jnp.float64),
                                       nnx.state(model, kind)))
    return model


def _close64(got, want, err_msg=""):
    want = np.asarray(want)
    np.testing.assert_allclose(got, want, rtol=RTOL64, atol=RTOL64 * np.abs(want).max(),
                               err_msg=err_msg)


def _x(shape, batch=2, seed=0):
    return jax.random.normal(jax.random.key(seed), (batch, *shape), jnp.float32)


# ---------------------------------------------------------------------------- output shapes

MODELS_AT_FULL_SIZE = [
    ("resnet18", {}), ("resnet18", {"stem": "imagenet"}), ("vgg11", {}), ("vgg16", {}),
    ("vgg11_bn", {}), ("vgg16_bn", {}), ("vgg11_torchvision", {}), ("vit_b16", {}), ("cnn", {}),
    ("simplecnn", {}), ("mlp", {}),
]


@pytest.mark.parametrize("name,opts", MODELS_AT_FULL_SIZE, ids=lambda v: str(v))
@pytest.mark.parametrize("shape", [(32, 32, 3), (64, 64, 1), (224, 224, 3)], ids=str)
def test_output_shape_abstract(name, opts, shape):
    """Real sizes, traced abstractly (nnx.eval_shape): no allocation, no compilation."""
    model = ModelSpec(name, 7, shape, tuple(opts.items())).abstract()
    x = jax.ShapeDtypeStruct((2, *shape), jnp.float32)
    for mode in ("train", "eval"):
        getattr(model, mode)()
        y = nnx.eval_shape(lambda m, xx: m(xx), model, x)
        assert (y.shape, y.dtype) == ((2, 7), jnp.float32), (mode, y)


@pytest.mark.parametrize(
    "name,shape,opts",
    [
        ("cnn", (8, 8, 1), {}),
        ("simplecnn", (8, 8, 1), {}),
        ("simplecnn", (9, 7, 3), {"width": 4, "hidden": 8}),  # floor pooling on odd sizes
        ("mlp", (8, 8, 1), {}),
        ("vgg16_bn", (32, 32, 3), {"width": 4}),
        ("resnet18", (64, 64, 1), {"width": 4, "stem": "imagenet"}),
    ],
    ids=str,
)
def test_tiny_forward_runs(name, shape, opts):
    model = create(name, 7, shape, **opts)
    model.eval()
    y = _fwd(model, _x(shape))
    assert y.shape == (2, 7) and y.dtype == jnp.float32
    assert bool(jnp.all(jnp.isfinite(y))) and float(jnp.std(y)) > 0


def test_train_mode_is_default_and_eval_toggles():
    model = create("vgg11_torchvision", 5, (32, 32, 3), width=4)
    assert model.drop1.deterministic is False
    model.eval()
    assert model.drop1.deterministic is True
    model.train()
    assert model.drop1.deterministic is False


# ---------------------------------------------------------------------------- parameter counts

@pytest.mark.parametrize(
    "name,classes,shape,expected",
    [
        ("resnet18", 10, (32, 32, 3), 11_173_962),  # the standard CIFAR ResNet18
        ("resnet18", 100, (32, 32, 3), 11_220_132),
        # torchvision vgg11 (132,863,336) + the authors' extra Linear(1000, 100)
        ("vgg11_torchvision", 100, (32, 32, 3), 132_863_336 + 1000 * 100 + 100),
        ("vit_b16", 1000, (224, 224, 3), 86_567_656),  # ViT-B/16
        ("vgg11", 10, (32, 32, 3), 9_225_610),
        ("vgg11_bn", 10, (32, 32, 3), 9_231_114),
        ("vgg16_bn", 10, (32, 32, 3), 14_728_266),
        ("cnn", 10, (8, 8, 1), 28_714),
        # the authors' toy SimpleCNN on 8x8x1: conv 1->32 (320) + conv 32->64 (18,496)
        # + FC 2*2*64->128 (32,896) + FC 128->10 (1,290)
        ("simplecnn", 10, (8, 8, 1), 53_002),
        ("mlp", 10, (8, 8, 1), 64 * 256 + 256 + 256 * 256 + 256 + 256 * 10 + 10),
    ],
)
def test_param_counts(name, classes, shape, expected):
    assert num_params(name, classes, shape) == expected


def test_vgg11_torchvision_count_by_arithmetic():
    convs = [(3, 64), (64, 128), (128, 256), (256, 256), (256, 512), (512, 512), (512, 512),
             (512, 512)]
    n = sum(9 * i * o + o for i, o in convs)
    n += 25088 * 4096 + 4096 + 4096 * 4096 + 4096 + 4096 * 1000 + 1000 + 1000 * 100 + 100
    assert n == 132_963_436 == num_params("vgg11_torchvision", 100, (32, 32, 3))


def test_count_params_model_state_and_abstract_agree():
    spec = ModelSpec("resnet18", 10, (32, 32, 3), (("width", 4),))
    model = spec.build()
    n = count_params(model)
    assert n == count_params(nnx.state(model)) == count_params(nnx.state(model, nnx.Param))
    assert n == spec.num_params() == count_params(spec.abstract())
    # BatchNorm running stats are not parameters
    everything = sum(x.size for x in jax.tree.leaves(nnx.state(model, nnx.BatchStat)))
    assert everything > 0
    assert count_params(nnx.to_pure_dict(nnx.state(model, nnx.Param))) == n


# ---------------------------------------------------------------------------- BatchNorm / dropout

def test_batchnorm_train_updates_stats_eval_does_not():
    model = create("vgg11_bn", 10, (32, 32, 3), width=4)
    x = _x((32, 32, 3), batch=4)
    stats = lambda: jax.tree.map(np.asarray, nnx.to_pure_dict(nnx.state(model, nnx.BatchStat)))
    stats0 = stats()
    first = model.features[0]
    conv_out = nnx.jit(lambda conv, xx: conv(xx))(first.conv, x)
    _fwd(model, x)  # train mode
    stats1 = stats()
    changed = jax.tree.map(lambda a, b: not np.array_equal(a, b), stats0, stats1)
    assert all(jax.tree.leaves(changed))
    # momentum 0.9 (torch 0.1): running mean starts at 0, so it is 0.1 * batch mean. The model's
    # conv and this one are separate programs: each output within gamma_{27+1} A of exact (A: the
    # conv of |x| with |kernel|, plus |bias|), each mean of n = 4096 values within gamma_n mean|c|,
    # then one rounding of the product by 0.1 on each side.
    absconv = nnx.clone(first.conv)
    absconv.kernel.set_value(jnp.abs(first.conv.kernel[...]))
    absconv.bias.set_value(jnp.abs(first.conv.bias[...]))
    a_mean = np.asarray(absconv(jnp.abs(x))).mean(axis=(0, 1, 2))
    c_abs = np.abs(np.asarray(conv_out)).mean(axis=(0, 1, 2))
    want = 0.1 * conv_out.mean(axis=(0, 1, 2))
    atol = 0.1 * (2 * _gamma(28) * a_mean + 2 * _gamma(4096) * c_abs) + 2 * U32 * np.abs(want)
    assert np.all(np.abs(np.asarray(first.bn.mean[...]) - np.asarray(want)) <= atol)
    assert first.bn.epsilon == 1e-5 and first.bn.momentum == 0.9

    model.eval()
    y1 = _fwd(model, x)
    y2 = _fwd(model, x)
    jax.tree.map(np.testing.assert_array_equal, stats1, stats())
    np.testing.assert_array_equal(y1, y2)


@pytest.mark.parametrize(
    "name,shape,opts",
    [("vgg11_torchvision", (32, 32, 3), {"width": 4}),
     ("vgg11", (32, 32, 3), {"width": 4, "dropout": 0.5}),
     pytest.param("vit", (16, 16, 3), {**TINY_VIT, "dropout": 0.2},
                  marks=pytest.mark.slow)],  # ~6 s; the VGG case keeps the behaviour
)
def test_dropout_train_random_eval_deterministic(name, shape, opts):
    model = create(name, 10, shape, **opts)
    x = _x(shape)
    a, b = _fwd(model, x), _fwd(model, x)
    assert not np.allclose(a, b)
    model.eval()
    np.testing.assert_array_equal(_fwd(model, x), _fwd(model, x))


def test_models_without_dropout_are_deterministic_in_train_mode():
    model = create("vit", 10, (16, 16, 3), **TINY_VIT)  # dropout 0.0
    x = _x((16, 16, 3))
    np.testing.assert_array_equal(_fwd(model, x), _fwd(model, x))


def test_the_cifar_vgg_head_dropout_adds_no_parameters_and_is_off_by_default():
    """``dropout`` on the CIFAR VGG head only inserts a dropout layer: the same parameters, the
    same eval-mode outputs; the default (0) builds no layer, so checkpoints written before the
    option existed restore unchanged, and train mode is then deterministic."""
    plain = create("vgg11", 10, (32, 32, 3), width=4)
    drop = create("vgg11", 10, (32, 32, 3), width=4, dropout=0.5)
    assert plain.drop is None and drop.drop is not None
    assert ModelSpec("vgg11", 10, (32, 32, 3), {"width": 4}).kwargs["dropout"] == 0.0
    jax.tree.map(np.testing.assert_array_equal, nnx.state(plain, nnx.Param),
                 nnx.state(drop, nnx.Param))
    x = _x((32, 32, 3))
    np.testing.assert_array_equal(_fwd(plain, x), _fwd(plain, x))
    drop.eval()
    np.testing.assert_array_equal(_fwd(plain, x), _fwd(drop, x))


def test_seeds():
    a = create("cnn", 10, (8, 8, 1), seed=3)
    b = create("cnn", 10, (8, 8, 1), seed=3)
    c = create("cnn", 10, (8, 8, 1), seed=4)
    np.testing.assert_array_equal(a.conv1.kernel[...], b.conv1.kernel[...])
    assert not np.array_equal(a.conv1.kernel[...], c.conv1.kernel[...])


# ---------------------------------------------------------------------------- im2col convolution

IM2COL_CASES = [  # (spatial, kernel, stride, pad, check gradients)
    (1, 3, 1, 1, False), (2, 3, 1, 1, True), (3, 3, 1, 1, False), (4, 3, 1, 1, False),
    (4, 3, 2, 1, True), (4, 1, 2, 0, False), (4, 7, 2, 3, False),
]


@pytest.mark.slow  # ~20 s; the small-map path vs XLA is also in tests/test_conv_vjp.py
def test_im2col_equals_plain_conv():
    """Values and gradients (the JiT step differentiates through these layers), in float64: the
    two formulations then differ by float64 roundings only (RTOL64)."""
    with jax.enable_x64(True):
        _im2col_equals_plain_conv()


def _im2col_equals_plain_conv():
    key = jax.random.key(1)
    inputs = []
    for spatial, k, *_ in IM2COL_CASES:
        kx, kk, key = jax.random.split(key, 3)
        x = jax.random.normal(kx, (3, spatial, spatial + 1, 8), jnp.float64)
        inputs.append((jax.random.normal(kk, (k, k, 8, 5), jnp.float64) / np.sqrt(k * k * 8), x))

    @jax.jit
    def run(inputs):
        outs = []
        for (kernel, x), (_, _, stride, pad, grads) in zip(inputs, IM2COL_CASES, strict=True):
            strides, pads = (stride, stride), ((pad, pad), (pad, pad))
            for conv in (conv_general, conv_im2col):
                f = functools.partial(conv, strides=strides, padding=pads)
                out = (f(x, kernel),)
                if grads:
                    loss = lambda kr, xx, f=f: jnp.sum(f(xx, kr) ** 2)
                    out += jax.grad(loss, argnums=(0, 1))(kernel, x)
                outs.append(out)
        return outs

    outs = run(inputs)
    for i, case in enumerate(IM2COL_CASES):
        ref, got = outs[2 * i], outs[2 * i + 1]
        assert got[0].shape == ref[0].shape and got[0].dtype == jnp.float64, case
        for a, b in zip(got, ref, strict=True):
            _close64(a, b, err_msg=str(case))


def test_conv_module_matches_nnx_conv():
    with jax.enable_x64(True):  # float64: see RTOL64
        _conv_module_matches_nnx_conv()


def _conv_module_matches_nnx_conv():
    ours = _float64(Conv(6, 4, 3, padding=1, rngs=nnx.Rngs(0)))
    ref = nnx.Conv(6, 4, (3, 3), padding="SAME", kernel_init=nnx.initializers.zeros_init(),
                   rngs=nnx.Rngs(0))
    ref.kernel.set_value(ours.kernel[...])
    ref.bias.set_value(jnp.arange(4.0, dtype=jnp.float64))
    ours.bias.set_value(jnp.arange(4.0, dtype=jnp.float64))
    assert ours.uses_im2col((4, 4)) and ours.uses_im2col((1, 2)) and not ours.uses_im2col((5, 5))
    xs = [jax.random.normal(jax.random.key(s), (2, s, s, 6), jnp.float64) for s in (2, 4, 8)]
    got, want = nnx.jit(lambda a, b, xs: ([a(x) for x in xs], [b(x) for x in xs]))(ours, ref, xs)
    for g, w in zip(got, want, strict=True):
        assert g.dtype == jnp.float64
        _close64(g, w)


def _conv_input_shapes(model, x):
    graphdef, state = nnx.split(model)
    jaxpr = jax.make_jaxpr(lambda s, xx: nnx.merge(graphdef, s)(xx))(state, x)
    shapes = []

    def walk(jp):
        for eqn in jp.eqns:
            if eqn.primitive.name == "conv_general_dilated":
                shapes.append(tuple(eqn.invars[0].aval.shape))
            for sub in jax.extend.core.jaxprs_in_params(eqn.params):
                walk(sub)

    walk(jaxpr.jaxpr)
    return shapes


def test_no_xla_conv_on_tiny_maps_in_vgg():
    """Regression guard (perf-jit-step.md): XLA:CPU's conv on 2x2 maps is ~100x too slow."""
    model = create("vgg11", 10, (32, 32, 3), width=4)
    model.eval()
    for impl in ("xla", "custom"):  # (oneDNN is fast on small maps and takes them all)
        with layers.conv_impl(impl):
            shapes = _conv_input_shapes(model, _x((32, 32, 3)))
        assert shapes, "expected some XLA convolutions at the large spatial sizes"
        assert all(min(s[1:3]) > 4 for s in shapes), (impl, shapes)


# ---------------------------------------------------------------------------- adaptive pooling

def _torch_adaptive_pool_ref(x, out):
    b, h, w, c = x.shape
    y = np.zeros((b, out, out, c), np.float64)
    for i in range(out):
        h0, h1 = (i * h) // out, -((-(i + 1) * h) // out)
        for j in range(out):
            w0, w1 = (j * w) // out, -((-(j + 1) * w) // out)
            y[:, i, j] = x[:, h0:h1, w0:w1].mean(axis=(1, 2))
    return y


def test_adaptive_avg_pool_matches_torch_rule():
    rng = np.random.default_rng(0)
    for size in (1, 2, 3, 5, 6, 7, 9, 14, 15):
        x = rng.standard_normal((2, size, size, 3))
        m = adaptive_pool_matrix(size, 7)
        assert m.shape == (7, size)
        np.testing.assert_allclose(np.einsum("oh,bhwc,pw->bopc", m, x, m),
                                   _torch_adaptive_pool_ref(x, 7), atol=1e-6, err_msg=str(size))
    for size in (1, 2, 7):  # the broadcast, general and identity paths of the jnp version
        x = rng.standard_normal((2, size, size, 3)).astype(np.float32)
        # float32: per axis a length-`size` contraction with weights 1/count (rounded): rel err
        # <= gamma_{size+1} of sum|w x| <= max|x|, two axes; the reference's float32 window means
        # (of <= 2 x 2 values) add gamma_4 max|x|
        atol = (2 * _gamma(size + 1) + _gamma(4)) * np.abs(x).max()
        np.testing.assert_allclose(adaptive_avg_pool(jnp.asarray(x), (7, 7)),
                                   _torch_adaptive_pool_ref(x, 7), atol=atol)


# ---------------------------------------------------------------------------- registry / spec

@pytest.mark.parametrize(
    "args,kwargs,match",
    [
        (("resnet19", 10, (32, 32, 3)), {}, r"unknown model 'resnet19'.*available.*resnet18"),
        (("cnn", 10, (8, 8, 1)), {"depth": 3}, r"unknown option.*depth.*width=32"),
        (("cnn", 10, (8, 8, 1)), {"width": 0}, r"width=0.*positive int"),
        (("resnet18", 10, (32, 32, 3)), {"stem": "tiny"}, r"stem='tiny'.*cifar.*imagenet"),
        (("vit", 10, (32, 32, 3)), {"dropout": 1.5}, r"dropout=1.5"),
        (("cnn", 1, (8, 8, 1)), {}, r"num_classes=1.*>= 2"),
        (("cnn", "10", (8, 8, 1)), {}, r"num_classes='10'"),
        (("cnn", 10, (8, 8)), {}, r"input_shape=\(8, 8\).*3 positive ints"),
        (("cnn", 10, (0, 8, 1)), {}, r"input_shape=\(0, 8, 1\)"),
        (("cnn", 10, (8.0, 8, 1)), {}, r"input_shape"),
        (("vgg11", 10, (16, 16, 3)), {}, r"input_shape=\(16, 16, 3\).*at least 32x32"),
        (("simplecnn", 10, (3, 8, 1)), {}, r"input_shape=\(3, 8, 1\).*at least 4x4"),
        (("resnet18", 10, (16, 16, 3)), {"stem": "imagenet"}, r"at least 32x32"),
        (("vit", 10, (30, 30, 3)), {}, r"divisible by patch_size=16"),
        (("vit", 10, (32, 32, 3)), {"hidden": 10, "heads": 3}, r"hidden=10 divisible by heads=3"),
    ],
)
def test_create_errors(args, kwargs, match):
    with pytest.raises(ValueError, match=match):
        create(*args, **kwargs)


def test_spec_roundtrip_json_and_rebuild():
    model = create("vit", 10, [16, 16, 3], seed=5, **TINY_VIT)
    spec = models.spec_of(model)
    assert spec.input_shape == (16, 16, 3)
    assert spec.kwargs == {**TINY_VIT, "dropout": 0.0, "gelu": "exact"}
    d = json.loads(json.dumps(spec.to_dict()))
    again = ModelSpec.from_dict(d)
    assert again == spec and hash(again) == hash(spec)
    rebuilt = again.build(seed=5)
    x = _x((16, 16, 3))
    model.eval()
    rebuilt.eval()
    np.testing.assert_array_equal(_fwd(model, x), _fwd(rebuilt, x))
    # defaults are filled in, so explicit and implicit defaults give the same spec
    assert models.spec_of(create("cnn", 10, (8, 8, 1))) == ModelSpec(
        "cnn", 10, (8, 8, 1), (("width", 32),))
    with pytest.raises(ValueError, match="unknown model spec key"):
        ModelSpec.from_dict({**d, "extra": 1})


def test_spec_survives_split_merge_jit_and_eval_shape():
    model = create("cnn", 10, (8, 8, 1), width=4)
    graphdef, state = nnx.split(model)
    merged = nnx.merge(graphdef, state)
    assert merged.spec == model.spec
    assert nnx.eval_shape(lambda: create("cnn", 10, (8, 8, 1), width=4)).spec == model.spec

    @nnx.jit
    def fwd(m, x):
        return m(x), m.spec.num_classes

    y, nc = fwd(model, _x((8, 8, 1)))
    assert y.shape == (2, 10) and nc == 10


def test_available_lists_all():
    assert {"cnn", "simplecnn", "mlp", "resnet18", "vgg11", "vgg16", "vgg11_bn", "vgg16_bn", "vgg11_torchvision",
            "vit", "vit_b16"} <= set(models.available())


def test_vit_rejects_other_input_size_at_call():
    model = create("vit", 10, (16, 16, 3), **TINY_VIT)
    with pytest.raises(ValueError, match="patch grid"):
        model(_x((32, 32, 3)))


# ---------------------------------------------------------------------------- ViT checkpoints

def _erf(x):
    from scipy.special import erf

    return erf(x)


def _np_layernorm(x, scale, bias, eps=1e-6):
    mu = x.mean(-1, keepdims=True)
    var = ((x - mu) ** 2).mean(-1, keepdims=True)
    return (x - mu) / np.sqrt(var + eps) * scale + bias


def numpy_vit_forward(p: dict, x: np.ndarray, heads: int) -> np.ndarray:
    """Reference ViT forward straight from the published npz key layout (float64 numpy)."""
    p = {k: np.asarray(v, np.float64) for k, v in p.items()}
    x = np.asarray(x, np.float64)
    k = p["embedding/kernel"]  # (P, P, C, D)
    ps = k.shape[0]
    b, h, w, _ = x.shape
    gh, gw = h // ps, w // ps
    tokens = np.zeros((b, gh * gw, k.shape[-1]))
    for i in range(gh):  # a conv with kernel = stride = patch, written out
        for j in range(gw):
            patch = x[:, i * ps:(i + 1) * ps, j * ps:(j + 1) * ps, :]
            tokens[:, i * gw + j] = np.einsum("bpqc,pqcd->bd", patch, k)
    tokens += p["embedding/bias"]
    cls = np.broadcast_to(p["cls"], (b, 1, tokens.shape[-1]))
    z = np.concatenate([cls, tokens], axis=1) + p["Transformer/posembed_input/pos_embedding"]
    i = 0
    while f"Transformer/encoderblock_{i}/LayerNorm_0/scale" in p:
        pre = f"Transformer/encoderblock_{i}/"
        att = pre + "MultiHeadDotProductAttention_1/"
        y = _np_layernorm(z, p[pre + "LayerNorm_0/scale"], p[pre + "LayerNorm_0/bias"])
        q, kk, v = (np.einsum("bnd,dhk->bnhk", y, p[att + n + "/kernel"]) + p[att + n + "/bias"]
                    for n in ("query", "key", "value"))
        assert q.shape[2] == heads
        logits = np.einsum("bqhk,bshk->bhqs", q, kk) / np.sqrt(q.shape[-1])
        wts = np.exp(logits - logits.max(-1, keepdims=True))
        wts /= wts.sum(-1, keepdims=True)
        o = np.einsum("bhqs,bshk->bqhk", wts, v)
        z = z + np.einsum("bqhk,hkd->bqd", o, p[att + "out/kernel"]) + p[att + "out/bias"]
        y = _np_layernorm(z, p[pre + "LayerNorm_2/scale"], p[pre + "LayerNorm_2/bias"])
        mlp = pre + "MlpBlock_3/"
        y = y @ p[mlp + "Dense_0/kernel"] + p[mlp + "Dense_0/bias"]
        y = 0.5 * y * (1 + _erf(y / np.sqrt(2)))
        z = z + y @ p[mlp + "Dense_1/kernel"] + p[mlp + "Dense_1/bias"]
        i += 1
    z = _np_layernorm(z, p["Transformer/encoder_norm/scale"], p["Transformer/encoder_norm/bias"])
    return z[:, 0] @ p["head/kernel"] + p["head/bias"]


def _perturbed_ckpt(seed=0):
    src = create("vit", 10, (16, 16, 3), seed=seed, **TINY_VIT)
    ckpt = export_vit_npz(src)
    rng = np.random.default_rng(seed)
    # perturb everything (incl. zero-initialised cls/biases) so that no key is trivially zero
    return {k: (v + 0.1 * rng.standard_normal(v.shape)).astype(np.float32)
            for k, v in ckpt.items()}


def test_vit_export_key_layout():
    ckpt = export_vit_npz(create("vit", 10, (16, 16, 3), **TINY_VIT))
    assert ckpt["embedding/kernel"].shape == (4, 4, 3, 16)
    assert ckpt["cls"].shape == (1, 1, 16)
    assert ckpt["Transformer/posembed_input/pos_embedding"].shape == (1, 17, 16)
    att = "Transformer/encoderblock_1/MultiHeadDotProductAttention_1/"
    assert ckpt[att + "query/kernel"].shape == (16, 2, 8)
    assert ckpt[att + "query/bias"].shape == (2, 8)
    assert ckpt[att + "out/kernel"].shape == (2, 8, 16)
    assert ckpt["Transformer/encoderblock_0/MlpBlock_3/Dense_0/kernel"].shape == (16, 32)
    assert ckpt["Transformer/encoderblock_0/LayerNorm_2/scale"].shape == (16,)
    assert ckpt["head/kernel"].shape == (16, 10)
    assert len(ckpt) == 8 + 2 * 16


def test_vit_npz_roundtrip_and_numpy_reference(tmp_path):
    ckpt = _perturbed_ckpt()
    path = tmp_path / "vit_tiny.npz"
    np.savez(path, **ckpt)
    model = create("vit", 10, (16, 16, 3), seed=7, **TINY_VIT)
    load_vit_npz(model, path)
    back = export_vit_npz(model)
    assert back.keys() == ckpt.keys()
    for k in ckpt:
        np.testing.assert_array_equal(back[k], ckpt[k], err_msg=k)
    model.eval()
    x = _x((16, 16, 3), batch=3)
    ref = numpy_vit_forward(ckpt, np.asarray(x), heads=2)
    with jax.enable_x64(True):  # the model in float64 against the float64 reference: RTOL64
        got = _fwd(_float64(model), jnp.asarray(x, jnp.float64))
        assert got.dtype == jnp.float64
        _close64(got, ref)


def test_vit_npz_accepts_linen_names_and_big_vision_posemb():
    ckpt = _perturbed_ckpt()
    ref_model = load_vit_npz(create("vit", 10, (16, 16, 3), **TINY_VIT), ckpt)
    x = _x((16, 16, 3))
    ref_model.eval()
    want = _fwd(ref_model, x)
    renames = {"MultiHeadDotProductAttention_1": "MultiHeadDotProductAttention_0",
               "LayerNorm_2": "LayerNorm_1", "MlpBlock_3": "MlpBlock_0"}
    linen = {}
    for k, v in ckpt.items():
        for a, b in renames.items():
            k = k.replace(a, b)
        linen[k] = v
    # big_vision layout: grid-only table at top level, added before the CLS token
    pos = linen.pop("Transformer/posembed_input/pos_embedding")
    linen["pos_embedding"] = pos[:, 1:]
    linen["cls"] = linen["cls"] + pos[:, :1]
    model = load_vit_npz(create("vit", 10, (16, 16, 3), seed=3, **TINY_VIT), linen)
    model.eval()
    # Bit for bit: every parameter is the same except the CLS row, where the original model adds
    # pos[0] to cls in float32 and this one holds that same float32 sum (cls + pos[0], computed
    # above) plus a zero position row (adding 0 is exact): the same program on the same values.
    np.testing.assert_array_equal(model.pos_embedding[...][:, 0], 0.0)
    np.testing.assert_array_equal(_fwd(model, x), want)


def test_vit_npz_head_and_posemb_resampling():
    ckpt = _perturbed_ckpt()
    model = create("vit", 5, (24, 24, 3), seed=1, **TINY_VIT)  # other classes, 6x6 grid
    head_before = np.asarray(model.head.kernel[...])
    with pytest.raises(ValueError, match=r"'head/kernel'.*\(16, 10\).*\(16, 5\)"):
        load_vit_npz(model, ckpt)
    load_vit_npz(model, ckpt, load_head=False)
    np.testing.assert_array_equal(model.head.kernel[...], head_before)
    np.testing.assert_array_equal(model.cls[...], ckpt["cls"])
    old = ckpt["Transformer/posembed_input/pos_embedding"]
    new = np.asarray(model.pos_embedding[...])
    assert new.shape == (1, 37, 16)
    np.testing.assert_array_equal(new[:, 0], old[:, 0])  # CLS row kept
    g_old, g_new = old[0, 1:].reshape(4, 4, 16), new[0, 1:].reshape(6, 6, 16)
    # corner-aligned bilinear: new index j sits at old coordinate j * 3/5. scipy interpolates in
    # float64 (error ~1e-16) and the table is cast back to float32: |err| <= u |value| + 1e-12.
    g_old = g_old.astype(np.float64)
    for got, want in ((g_new[0, 0], g_old[0, 0]), (g_new[5, 5], g_old[3, 3]),
                      (g_new[0, 1], 0.4 * g_old[0, 0] + 0.6 * g_old[0, 1])):
        assert np.all(np.abs(got - want) <= U32 * np.abs(want) + 1e-12)
    assert _fwd(model, _x((24, 24, 3))).shape == (2, 5)
    with pytest.raises(ValueError, match="pos_embedding.*resize_pos_embedding"):
        load_vit_npz(create("vit", 10, (24, 24, 3), **TINY_VIT), ckpt,
                     resize_pos_embedding=False)


def test_vit_npz_errors():
    ckpt = _perturbed_ckpt()
    fresh = lambda **kw: create("vit", 10, (16, 16, 3), **{**TINY_VIT, **kw})
    missing = dict(ckpt)
    del missing["Transformer/encoderblock_1/MlpBlock_3/Dense_1/bias"]
    with pytest.raises(ValueError, match=r"lacks 1 key.*encoderblock_1/MlpBlock_3/Dense_1/bias"):
        load_vit_npz(fresh(), missing)
    with pytest.raises(ValueError, match="2 encoder blocks.*depth 3"):
        load_vit_npz(fresh(depth=3), ckpt)
    with pytest.raises(ValueError, match=r"embedding/kernel.*\(4, 4, 3, 16\).*\(4, 4, 1, 16\)"):
        load_vit_npz(create("vit", 10, (16, 16, 1), **TINY_VIT), ckpt)
    with pytest.raises(ValueError, match="pre_logits.*load_head=False"):
        load_vit_npz(fresh(), {**ckpt, "pre_logits/kernel": np.zeros((16, 16), np.float32)})
    load_vit_npz(fresh(), {**ckpt, "pre_logits/kernel": np.zeros((16, 16), np.float32)},
                 load_head=False)
    with pytest.raises(ValueError, match="not used.*optimizer/step"):
        load_vit_npz(fresh(), {**ckpt, "optimizer/step": np.zeros(())})
    load_vit_npz(fresh(), {**ckpt, "optimizer/step": np.zeros(())}, strict=False)
    with pytest.raises(TypeError, match="ViT"):
        load_vit_npz(create("cnn", 10, (8, 8, 1)), ckpt)
    # a failed load leaves the model untouched
    model = fresh()
    before = export_vit_npz(model)
    with pytest.raises(ValueError):
        load_vit_npz(model, missing)
    after = export_vit_npz(model)
    for k in before:
        np.testing.assert_array_equal(before[k], after[k])
