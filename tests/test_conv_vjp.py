"""The convolution with the custom CPU differentiation rule (``layers.conv_custom``) against XLA's.

Tolerances. Both implementations compute every output element as a float32 sum of K products
(K = kh*kw*C_in for the forward, kh*kw*C_out for the input gradient, N*H_out*W_out for the kernel
gradient, N*H_out*W_out for the bias gradient), in different orders. The standard bound for a
float32 dot product of length K in any order is ``|fl(s) - s| <= gamma_K * sum_k |a_k b_k|`` with
``gamma_K = K u / (1 - K u)`` and ``u = 2^-24``, so the two results differ by at most
``2 * gamma_K * S``, where S is the same contraction of the absolute values of the operands.
:func:`_bound` computes that S from the actual operands (with XLA's convolution applied to
``|x|``, ``|w|``, ``|dy|``), element by element.

Higher-order derivatives (grad of grad, jvp, Hessians) are checked on small-integer data: every
product and partial sum is then an integer far below 2^24, so float32 arithmetic is exact in any
order and the two implementations must agree exactly.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from jit_jax import models
from jit_jax.functional import functionalize
from jit_jax.models import layers, onednn
from jit_jax.models.layers import conv_custom, conv_general
from jit_jax.models.vit import PatchEmbedding
from jit_jax.train import cross_entropy

U = 2.0**-24
xla_conv = functools.partial(layers.conv, impl="xla")  # conv_general with the padding normalised

# (name, batch, (H, W), C_in, C_out, kernel, stride, padding): every configuration the models use.
CASES = [
    ("3x3 s1 p1", 2, (8, 8), 16, 8, 3, 1, 1),  # cnn / resnet / vgg body (patch-matrix layout)
    ("3x3 s1 p1 rgb", 3, (8, 8), 3, 5, 3, 1, 1),  # first layer: channel-major layout
    ("3x3 s1 p1 non-square", 2, (6, 9), 16, 4, 3, 1, 1),
    ("3x3 s2 p1", 2, (8, 8), 16, 24, 3, 2, 1),  # resnet stage entry
    ("3x3 s2 p1 odd", 2, (7, 9), 8, 6, 3, 2, 1),
    ("3x3 s2 p1 batch 8", 8, (4, 4), 8, 6, 3, 2, 1),  # chunked at 16 rows: 4 images per chunk
    ("1x1 s1 p0", 2, (5, 5), 8, 16, 1, 1, 0),
    ("1x1 s2 p0", 2, (8, 6), 8, 16, 1, 2, 0),  # resnet projection shortcut
    ("7x7 s2 p3", 2, (16, 16), 3, 8, 7, 2, 3),  # resnet imagenet stem
    ("3x3 p1 on 1x1", 3, (1, 1), 8, 4, 3, 1, 1),  # small maps (Conv's im2col path, here direct)
    ("3x3 p1 on 2x2", 3, (2, 2), 8, 4, 3, 1, 1),
    ("3x3 VALID", 2, (6, 7), 4, 4, 3, 1, "VALID"),
    ("3x3 s2 SAME", 2, (8, 8), 4, 4, 3, 2, "SAME"),  # XLA's SAME: pads (0, 1)
    ("4x4 s4 VALID patches", 2, (8, 8), 3, 6, 4, 4, "VALID"),  # ViT patch embedding as a conv
]


def _normal(seed, shape):
    """Host-drawn data (jax.random would compile a sampler per shape)."""
    return jnp.asarray(np.random.default_rng(seed).standard_normal(shape).astype(np.float32))


def _case_arrays(case, seed):
    _, n, (h, w), cin, cout, k, _, _ = case
    x = _normal(seed, (n, h, w, cin))
    kernel = _normal(seed + 1000, (k, k, cin, cout)) / np.sqrt(k * k * cin)
    bias = _normal(seed + 2000, (cout,))
    return x, kernel, bias


def _conv_args(case):
    *_, stride, pad = case
    return (stride, stride), pad


def _with_bias(conv, strides, padding):
    def f(x, kernel, bias):
        return conv(x, kernel, strides, padding) + bias

    return f


def _bound(x, kernel, dy, strides, padding, bias=None):
    """Elementwise ``(2 * gamma_K, S)`` for (y, dx, dkernel, dbias), S from the absolute operands
    (y = conv(x, kernel) + bias: the bias is one more term of each output's sum)."""
    ax, ak, ady = jnp.abs(x), jnp.abs(kernel), jnp.abs(dy)
    s_y, vjp = jax.vjp(lambda a, b: conv_general(a, b, strides, padding), ax, ak)
    s_dx, s_dk = vjp(ady)
    if bias is not None:
        s_y = s_y + jnp.abs(bias)
    s_db = jnp.sum(ady, axis=(0, 1, 2))
    kh, kw, cin, cout = kernel.shape
    rows = int(np.prod(dy.shape[:3]))

    def two_gamma(k):
        return 2 * k * U / (1 - k * U)

    # dx: at most kh*kw*C_out terms (fewer at stride 2); the forward with its bias: K + 1 terms
    return (two_gamma(kh * kw * cin + 1), s_y), (two_gamma(kh * kw * cout), s_dx), \
        (two_gamma(rows), s_dk), (two_gamma(rows), s_db)


_bound_jit = jax.jit(_bound, static_argnums=(3, 4))


def _assert_within(got, want, bound, what):
    (g, s), = [bound]
    err = np.abs(np.asarray(got, np.float64) - np.asarray(want, np.float64))
    # S is itself a float32 sum of the same length: its relative error is at most gamma_K < g
    limit = float(g) * np.asarray(s, np.float64) * (1 + float(g))
    worst = np.max(err - limit)
    assert worst <= 0, f"{what}: error exceeds the float32 bound by {worst:.3g}"


@pytest.fixture(params=[(None, False), (16, False), (16, True)],
                ids=["one-chunk", "chunked", "interleaved"])
def chunk_rows(request, monkeypatch):
    """Run each case as one patch matrix and as a scan over batch chunks of 16 output rows, with
    contiguous chunks (one device) and interleaved ones (several devices)."""
    rows, interleave = request.param
    monkeypatch.setattr(layers, "DW_INTERLEAVE", interleave)
    if rows is not None:
        monkeypatch.setattr(layers, "DW_CHUNK_ROWS", rows)
    return request.param


CHUNKED = {"3x3 s1 p1", "3x3 s1 p1 rgb", "3x3 s2 p1 odd", "3x3 s2 p1 batch 8", "1x1 s2 p0",
           "7x7 s2 p3", "3x3 s2 SAME"}


def test_values_and_gradients_match_xla(chunk_rows):
    """Forward, dx, dkernel, dbias for every case (the scan over batch chunks: for a subset that
    covers both patch layouts, odd sizes, 1x1 and 7x7), under jit, within the float32 bound."""
    rows, interleave = chunk_rows
    # interleaving only reorders chunks of several images: the case with 4 images a chunk
    subset = {"3x3 s2 p1 batch 8"} if interleave else CHUNKED
    cases = [c for c in CASES if rows is None or c[0] in subset]
    data = [_case_arrays(c, i) for i, c in enumerate(cases)]

    @jax.jit
    def run(data):
        outs = []
        for case, (x, kernel, bias) in zip(cases, data, strict=True):
            strides, pad = _conv_args(case)
            per_impl = []
            for conv in (xla_conv, conv_custom):
                y, vjp = jax.vjp(_with_bias(conv, strides, pad), x, kernel, bias)
                dy = jnp.cos(3.0 * y)  # a cotangent that is not a function of y's sign alone
                per_impl.append((y, *vjp(dy)))
            pads = layers._normalise(x, kernel, strides, pad)[1]
            outs.append((*per_impl, _bound(x, kernel, dy, strides, pads, bias)))
        return outs

    for case, (ref, got, bounds) in zip(cases, run(data), strict=True):
        assert got[0].shape == ref[0].shape
        for name, i in (("y", 0), ("dx", 1), ("dkernel", 2), ("dbias", 3)):
            _assert_within(got[i], ref[i], bounds[i], f"{case[0]} {name}")


def test_string_padding_matches_xla():
    """'SAME'/'VALID' strings mean what they mean for lax.conv_general_dilated."""
    x, kernel = _normal(0, (2, 8, 7, 3)), _normal(1, (3, 3, 3, 4))
    for stride in (1, 2):
        for pad in ("SAME", "VALID"):
            want = jax.lax.conv_general_dilated(x, kernel, (stride, stride), pad,
                                                dimension_numbers=("NHWC", "HWIO", "NHWC"))
            np.testing.assert_array_equal(conv_custom(x, kernel, (stride, stride), pad), want)
            np.testing.assert_array_equal(layers.conv(x, kernel, (stride, stride), pad,
                                                      impl="xla"), want)


def test_vmap_per_example_gradients(chunk_rows):
    """vmap of grad (per-example kernel gradients) and grad of a vmapped conv."""
    if chunk_rows[1]:
        pytest.skip("one image per vmapped call: nothing to interleave")
    (case,) = [c for c in CASES if c[0] == "3x3 s2 p1"]
    x, kernel, _ = _case_arrays(case, 0)
    strides, pad = _conv_args(case)
    r = _normal(5, conv_general(x, kernel, strides, ((1, 1),) * 2).shape)

    def loss(conv, k, xi, ri):
        return jnp.sum(conv(xi[None], k, strides, pad) * ri[None])

    outs = {}
    for impl in ("xla", "custom"):
        with layers.conv_impl(impl):
            f = functools.partial(loss, layers.conv)
            per_example = jax.jit(jax.vmap(jax.grad(f), in_axes=(None, 0, 0)))(kernel, x, r)
            batched = jax.jit(jax.grad(lambda k: jnp.sum(
                jax.vmap(lambda xi: layers.conv(xi[None], k, strides, pad)[0])(x) * r)))(kernel)
        outs[impl] = (per_example, batched)
    pad_x = ((1, 1), (1, 1))
    for i in range(x.shape[0]):
        bound = _bound_jit(x[i:i + 1], kernel, r[i:i + 1], strides, pad_x)[2]
        _assert_within(outs["custom"][0][i], outs["xla"][0][i], bound, f"per-example {i}")
    _assert_within(outs["custom"][1], outs["xla"][1], _bound_jit(x, kernel, r, strides, pad_x)[2],
                   "vmapped conv")


# ---------------------------------------------------------------------------- higher order, exact

def _int_data(seed, x_shape, k_shape):
    """Small integers: every sum below is exact in float32, whatever the order."""
    rng = np.random.default_rng(seed)
    x = jnp.asarray(rng.integers(-2, 3, x_shape).astype(np.float32))
    kernel = jnp.asarray(rng.integers(-2, 3, k_shape).astype(np.float32))
    return x, kernel


HIGHER = [("3x3 s1 p1", (1, 1), ((1, 1), (1, 1)), 3), ("3x3 s2 p1", (2, 2), ((1, 1), (1, 1)), 3),
          ("1x1 s2", (2, 2), ((0, 0), (0, 0)), 1)]


@pytest.mark.parametrize("name,strides,pad,k", HIGHER, ids=[h[0] for h in HIGHER])
def test_higher_order_exact(name, strides, pad, k, chunk_rows):
    """grad of grad (both ways), jvp in each argument, jvp of grad (curvature's HVP), linearize;
    the custom rule must give exactly XLA's numbers on integer data."""
    if chunk_rows[1] and strides == (1, 1):
        pytest.skip("one image a chunk at stride 1: interleaving changes nothing")
    x, kernel = _int_data(0, (6, 4, 5, 4), (k, k, 4, 3))  # stride 2, chunked: 2 images a chunk
    xt, kt = _int_data(1, x.shape, kernel.shape)

    want = jax.jit(lambda: higher_order_results(conv_general, x, kernel, xt, kt, strides, pad))()
    got = jax.jit(lambda: higher_order_results(conv_custom, x, kernel, xt, kt, strides, pad))()
    assert_trees_equal(got, want)


def assert_trees_equal(got, want):
    for (path, a), b in zip(jax.tree_util.tree_flatten_with_path(want)[0], jax.tree.leaves(got),
                            strict=True):
        np.testing.assert_array_equal(b, a, err_msg=jax.tree_util.keystr(path))


def higher_order_results(conv, x, kernel, xt, kt, strides, pad):
    """grad of grad (both ways), jvp in each argument, jvp of grad (curvature's HVP) and
    linearize of a loss through ``conv`` (shared with test_onednn)."""
    def loss(x, w):
        return 0.5 * jnp.sum(conv(x, w, strides, pad) ** 2)

    def grad_x_sq(x, w):  # an input-gradient penalty
        return jnp.sum(jax.grad(loss, 0)(x, w) ** 2)

    def grad_w_sq(x, w):
        return jnp.sum(jax.grad(loss, 1)(x, w) ** 2)

    return dict(
        grad=jax.grad(loss, (0, 1))(x, kernel),
        grad_of_grad_x=jax.grad(grad_x_sq, (0, 1))(x, kernel),
        grad_of_grad_w=jax.grad(grad_w_sq, (0, 1))(x, kernel),
        jvp=jax.jvp(lambda a, b: conv(a, b, strides, pad), (x, kernel), (xt, kt)),
        jvp_w=jax.jvp(lambda b: conv(x, b, strides, pad), (kernel,), (kt,)),
        hvp_x=jax.jvp(jax.grad(loss, 0), (x, kernel), (xt, jnp.zeros_like(kernel))),
        hvp_w=jax.jvp(lambda b: jax.grad(loss, 1)(x, b), (kernel,), (kt,)),
        linearize=jax.linearize(lambda a: jax.grad(loss, 0)(a, kernel), x)[1](xt),
    )


def test_hessian_wrt_input_exact():
    """jax.hessian (forward over reverse) of a scalar of one tiny input, as the curvature code."""
    x, kernel = _int_data(2, (1, 4, 4, 2), (3, 3, 2, 3))

    def f(conv, xx):
        y = conv(xx, kernel, (1, 1), ((1, 1), (1, 1)))
        return 0.5 * jnp.sum(jnp.maximum(y, 0.0) ** 2)  # ReLU: piecewise quadratic, exact

    want = jax.jit(jax.hessian(functools.partial(f, conv_general)))(x)
    got = jax.jit(jax.hessian(functools.partial(f, conv_custom)))(x)
    assert got.shape == (1, 4, 4, 2) * 2
    np.testing.assert_array_equal(got, want)


# ---------------------------------------------------------------------------- the switch

def _uses_custom_rule(fn, *args) -> bool:
    # a fresh wrapper each time: JAX caches traces per function, and the setting is read at trace
    # time only (as for jax.jit: a compiled function keeps the implementation it was traced with)
    jaxpr = jax.make_jaxpr(lambda *a: fn(*a))(*args)

    def walk(jp):
        for eqn in jp.eqns:
            # the custom rule, or the oneDNN convolution (the CPU's own rules, both)
            if eqn.primitive.name.startswith("custom_jvp_call") or \
                    eqn.primitive.name == onednn.forward_p.name:
                return True
            if any(walk(sub) for sub in jax.extend.core.jaxprs_in_params(eqn.params)):
                return True
        return False

    return walk(jaxpr.jaxpr)


def test_switch_selects_the_rule(monkeypatch):
    x, kernel, _ = _case_arrays(CASES[0], 0)

    def f(xx, k):
        return layers.conv(xx, k, (1, 1), ((1, 1), (1, 1)))

    monkeypatch.delenv(layers.CONV_ENV, raising=False)
    layers.set_conv_impl(None)
    assert layers.get_conv_impl() == "auto"
    on_cpu = jax.default_backend() == "cpu"
    # auto on the CPU: oneDNN when it is there (one device), else the custom rule
    auto = ("onednn" if jax.device_count() == 1 and onednn.available() else "custom") \
        if on_cpu else "xla"
    assert layers.resolve_conv_impl() == auto
    assert _uses_custom_rule(f, x, kernel) == on_cpu  # auto: the custom rule on the CPU only
    with layers.conv_impl("xla"):
        assert layers.resolve_conv_impl() == "xla"
        assert not _uses_custom_rule(f, x, kernel)
        with layers.conv_impl("custom"):
            assert _uses_custom_rule(f, x, kernel)
        assert not _uses_custom_rule(f, x, kernel)
    monkeypatch.setenv(layers.CONV_ENV, "xla")
    assert layers.resolve_conv_impl() == "xla" and not _uses_custom_rule(f, x, kernel)
    try:
        layers.set_conv_impl("custom")  # beats the environment
        assert _uses_custom_rule(f, x, kernel)
        with layers.conv_impl("auto"):  # beats both
            assert layers.resolve_conv_impl() == auto
    finally:
        layers.set_conv_impl(None)
    monkeypatch.setenv(layers.CONV_ENV, "cudnn")
    with pytest.raises(ValueError, match="JIT_JAX_CONV"):
        layers.get_conv_impl()
    with pytest.raises(ValueError, match="one of"):
        layers.conv_impl("fast").__enter__()
    # forced either way, a grad runs and agrees (values: see test_values_and_gradients_match_xla)
    monkeypatch.delenv(layers.CONV_ENV)
    grads = {}
    for impl in ("xla", "custom"):
        with layers.conv_impl(impl):
            grads[impl] = jax.jit(jax.grad(lambda k: jnp.sum(f(x, k) ** 2)))(kernel)
    y = f(x, kernel)
    _assert_within(grads["custom"], grads["xla"],
                   _bound_jit(x, kernel, 2 * y, (1, 1), ((1, 1), (1, 1)))[2], "forced impls")


def test_conv_module_uses_the_switch():
    conv = layers.Conv(3, 4, 3, padding=1, rngs=nnx.Rngs(0))
    x = jnp.ones((2, 8, 8, 3))
    graphdef, state = nnx.split(conv)

    def apply(s, xx):
        return nnx.merge(graphdef, s)(xx)

    with layers.conv_impl("custom"):
        assert _uses_custom_rule(apply, state, x)
    with layers.conv_impl("xla"):
        assert not _uses_custom_rule(apply, state, x)
    small = jnp.ones((2, 4, 4, 3))
    with layers.conv_impl("custom"):
        assert conv.uses_im2col((4, 4)) and not _uses_custom_rule(apply, state, small)  # a matmul
    if onednn.available():  # oneDNN is fast on small maps too: no im2col form
        with layers.conv_impl("onednn"):
            assert not conv.uses_im2col((4, 4)) and _uses_custom_rule(apply, state, small)


@pytest.mark.parametrize("name,shape,opts", [
    ("cnn", (8, 8, 3), {}), ("simplecnn", (8, 8, 3), {}), ("resnet18", (16, 16, 3), {}),
    ("resnet18", (64, 64, 3), {"stem": "imagenet"}), ("vgg11_bn", (32, 32, 3), {}),
], ids=str)
def test_every_model_conv_goes_through_the_rule(name, shape, opts):
    """No XLA convolution in a model's forward jaxpr outside the custom rule (traced only)."""
    model = models.ModelSpec(name, 10, shape, tuple(opts.items())).abstract()
    graphdef, state = nnx.split(model)
    x = jax.ShapeDtypeStruct((2, *shape), jnp.float32)
    with layers.conv_impl("custom"):
        jaxpr = jax.make_jaxpr(lambda s, xx: nnx.merge(graphdef, s)(xx))(state, x)
    counts = {"inside": 0, "outside": 0}

    def walk(jp, inside):
        for eqn in jp.eqns:
            if eqn.primitive.name == "conv_general_dilated":
                counts["inside" if inside else "outside"] += 1
            is_rule = eqn.primitive.name.startswith("custom_jvp_call")
            for sub in jax.extend.core.jaxprs_in_params(eqn.params):
                walk(sub, inside or is_rule)

    walk(jaxpr.jaxpr, False)
    assert counts["outside"] == 0 and counts["inside"] > 0, counts


def test_patch_embedding_is_a_strided_conv():
    """ViT's patch embedding (reshape + matmul, no conv op) equals the conv with stride = kernel
    = patch size, in value and gradients; its kernel gradient is already a single matmul."""
    emb = PatchEmbedding(4, 3, 6, rngs=nnx.Rngs(0))
    emb.bias.set_value(jnp.arange(6.0))
    x = _normal(0, (2, 8, 12, 3))
    fn = functionalize(emb)
    kernel, bias = emb.kernel[...], emb.bias[...]
    y_ref, vjp_ref = jax.vjp(_with_bias(xla_conv, (4, 4), "VALID"), x, kernel, bias)
    dy = jnp.cos(3.0 * y_ref)
    y, vjp = jax.vjp(lambda xx, p: fn.apply_fn(p, xx), x, fn.params)
    dx, dp = vjp(dy)
    d_bias, d_kernel = jax.tree.leaves(dp)  # State leaves in name order
    bounds = _bound_jit(x, kernel, dy, (4, 4), ((0, 0), (0, 0)), bias)
    for name, got, want, bound in zip(("y", "dx", "dkernel", "dbias"), (y, dx, d_kernel, d_bias),
                                      (y_ref, *vjp_ref(dy)), bounds, strict=True):
        _assert_within(got, want, bound, f"patch embedding {name}")


# ---------------------------------------------------------------------------- model zoo

TINY_VIT = dict(patch_size=4, hidden=16, depth=1, heads=2, mlp_dim=32)
ZOO = [("cnn", (8, 8, 3), {}),
       pytest.param("resnet18", (16, 16, 3), {"width": 4}, marks=pytest.mark.slow),  # ~11 s
       ("vgg11", (32, 32, 3), {"width": 4}), ("vit", (16, 16, 3), TINY_VIT)]


@pytest.mark.parametrize("name,shape,opts", ZOO, ids=["cnn", "resnet18", "vgg11", "vit"])
def test_model_zoo_gradients(name, shape, opts, monkeypatch):
    """Training-mode loss gradients with both implementations.

    The forward pass and every input gradient are XLA's own ops in both, so everything but the
    convolution kernels' gradients must be bit-identical; each kernel gradient is one contraction
    over the N*H_out*W_out pixels of its layer, checked against that layer's float32 bound with
    the layer's actual input and output cotangent (captured with a zero probe on its output).
    Max pooling is pinned to XLA's form in both (the CPU rules' block form is exact on its own,
    tests/test_pooling.py, but lets XLA fuse the neighbouring reductions differently)."""
    model = models.create(name, 10, shape, **opts)
    fn = functionalize(model, train=True)
    x = _normal(0, (4, *shape))
    labels = jnp.arange(4) % 10
    meta = []  # (strides, padding, output shape) of each layers.conv call, in call order
    real_conv = layers.conv

    def loss(params, probes):
        operands = []  # (kernel, input) of each call

        def conv(xx, kernel, strides, padding, *, impl=None):
            y = real_conv(xx, kernel, strides, padding, impl=impl)
            operands.append((kernel, xx))
            if probes is None:
                meta.append((strides, padding, y.shape))
                return y
            return y + probes[len(operands) - 1]

        monkeypatch.setattr(layers, "conv", conv)
        try:
            return cross_entropy(fn.apply_fn(params, x), labels).mean(), operands
        finally:
            monkeypatch.setattr(layers, "conv", real_conv)

    # (which layers reach layers.conv depends on the setting)
    with layers.conv_impl("xla"), layers.pool_impl("xla"):
        jax.eval_shape(loss, fn.params, None)  # trace only: fills meta
    probes = [jnp.zeros(m[2]) for m in meta]

    def run(params, probes):
        (g, dys), operands = jax.grad(loss, (0, 1), has_aux=True)(params, probes)
        bounds = [_bound(xx, k, dy, st, layers._normalise(xx, k, st, pad)[1])[2]
                  for (k, xx), (st, pad, _), dy in zip(operands, meta, dys, strict=True)]
        return g, [k for k, _ in operands], bounds

    with layers.conv_impl("xla"), layers.pool_impl("xla"):
        want_grads, kernels, kernel_bounds = jax.jit(run)(fn.params, probes)
    with layers.conv_impl("custom"), layers.pool_impl("xla"):
        got_grads = jax.jit(lambda p, q: jax.grad(loss, has_aux=True)(p, q)[0])(fn.params, probes)

    flat_x = jax.tree_util.tree_flatten_with_path(want_grads)[0]
    flat_c = jax.tree.leaves(got_grads)
    params = jax.tree.leaves(fn.params)
    checked = 0
    for (path, want), got, p in zip(flat_x, flat_c, params, strict=True):
        where = f"{name} {jax.tree_util.keystr(path)}"
        layer = [i for i, k in enumerate(kernels) if k.shape == p.shape and np.array_equal(k, p)]
        if not layer:  # not a kernel seen by layers.conv: the same XLA ops in both
            np.testing.assert_array_equal(got, want, err_msg=where)
            continue
        (i,) = layer
        _assert_within(got, want, kernel_bounds[i], where)
        checked += 1
    assert checked == len(meta), (checked, len(meta))
    if name == "vit":
        assert not meta  # the patch embedding is a matmul (see the test above)
    else:
        assert meta


def test_the_winograd_probe_computes_the_kernel_gradient():
    """experiments/probe_winograd_dw.py's F(3x3, 2x2) kernel gradient equals the direct one
    (float64, numpy) for SAME and VALID padding and odd output sizes. Error bound: the transforms
    add at most 2 entries of the input patch per axis (B), average the gradient tile (G) and add
    up to 3 products per axis (A), so each output's intermediate terms sum in absolute value to at
    most 4 * 9 * S, S = sum over tiles of |patch|_1 * |tile|_1; float32 rounds each of the
    (tiles + 20) sequential additions by at most eps."""
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "experiments" / "probe_winograd_dw.py"
    spec = importlib.util.spec_from_file_location("probe_winograd_dw", path)
    probe = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(probe)
    rng = np.random.default_rng(0)
    for n, h, w, ci, co, pad in [(2, 5, 6, 3, 4, ((1, 1), (1, 1))), (1, 7, 7, 2, 3, ((0, 0), (0, 0))),
                                 (3, 4, 4, 5, 2, ((1, 1), (1, 1)))]:
        x = rng.standard_normal((n, h, w, ci)).astype(np.float32)
        xp = np.pad(x, ((0, 0), *pad, (0, 0))).astype(np.float64)
        ho, wo = xp.shape[1] - 2, xp.shape[2] - 2
        dy = rng.standard_normal((n, ho, wo, co)).astype(np.float32)
        ref = np.zeros((3, 3, ci, co))
        for i in range(3):
            for j in range(3):
                ref[i, j] = np.einsum("npqc,npqd->cd", xp[:, i:i + ho, j:j + wo], dy)
        got = np.asarray(probe.winograd_dw(jnp.asarray(x), jnp.asarray(dy), pad), np.float64)
        th, tw = -(-ho // 2), -(-wo // 2)
        dyp = np.pad(np.abs(dy), ((0, 0), (0, 2 * th - ho), (0, 2 * tw - wo), (0, 0)))
        xpp = np.pad(np.abs(xp), ((0, 0), (0, 2 * th + 2 - xp.shape[1]),
                                  (0, 2 * tw + 2 - xp.shape[2]), (0, 0)))
        s = sum(xpp[:, 2 * p:2 * p + 4, 2 * q:2 * q + 4].sum(axis=(1, 2))[:, :, None]
                * dyp[:, 2 * p:2 * p + 2, 2 * q:2 * q + 2].sum(axis=(1, 2))[:, None, :]
                for p in range(th) for q in range(tw)).sum(axis=0)  # (ci, co)
        bound = (n * th * tw + 20) * np.finfo(np.float32).eps * 36 * s
        assert np.all(np.abs(got - ref) <= bound[None, None]), np.max(np.abs(got - ref))
        assert np.max(np.abs(ref)) > 100 * np.max(bound)  # the bound leaves the test meaningful
