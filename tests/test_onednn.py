"""The oneDNN convolution (``jit_jax.models.onednn``, ``layers.conv_onednn``) against XLA's.

Its forward pass, input gradient and kernel gradient are three oneDNN calls, made JAX primitives
whose derivatives (jvp and transpose) are each other. Values: each output of every map is a
float32 sum of the same products as XLA's, in another order, so the two differ by at most
``2 * gamma_K * S`` elementwise (``test_conv_vjp._bound``: K the contraction length, S the same
sums over absolute values). Higher-order derivatives (grad of grad, jvp, Hessians) are checked on
small-integer data, where float32 arithmetic is exact in any order: they must equal XLA's exactly.
"""

from __future__ import annotations

import functools
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from test_conv_vjp import (
    CASES,
    HIGHER,
    _assert_within,
    _bound,
    _case_arrays,
    _conv_args,
    _int_data,
    _with_bias,
    assert_trees_equal,
    higher_order_results,
)

from jit_jax.models import layers, onednn

pytestmark = pytest.mark.skipif(not onednn.available(),
                                reason=f"oneDNN convolution not available: {onednn.status()}")

PRIMS = (onednn.forward_p, onednn.data_p, onednn.weights_p)


def _onednn_conv(x, kernel, strides, padding):
    return layers.conv_onednn(x, kernel, strides, padding)


def _prims_in(fn, *args) -> set[str]:
    names = set()

    def walk(jp):
        for eqn in jp.eqns:
            names.add(eqn.primitive.name)
            for sub in jax.extend.core.jaxprs_in_params(eqn.params):
                walk(sub)

    walk(jax.make_jaxpr(fn)(*args).jaxpr)
    return names


def test_values_and_gradients_match_xla():
    """Every layer configuration of the models, under jit: y, dx, dkernel and dbias within the
    float32 bound of XLA's; the gradient program runs the three oneDNN maps and no XLA conv."""
    data = [_case_arrays(c, i) for i, c in enumerate(CASES)]

    @jax.jit
    def run(data):
        outs = []
        for case, (x, kernel, bias) in zip(CASES, data, strict=True):
            strides, pad = _conv_args(case)
            per_impl = []
            for conv in (functools.partial(layers.conv, impl="xla"), _onednn_conv):
                y, vjp = jax.vjp(_with_bias(conv, strides, pad), x, kernel, bias)
                dy = jnp.cos(3.0 * per_impl[0][0]) if per_impl else jnp.cos(3.0 * y)
                per_impl.append((y, *vjp(dy)))
            pads = layers._normalise(x, kernel, strides, pad)[1]
            outs.append((*per_impl, _bound(x, kernel, dy, strides, pads, bias)))
        return outs

    for case, (ref, got, bounds) in zip(CASES, run(data), strict=True):
        for name, i in (("y", 0), ("dx", 1), ("dkernel", 2), ("dbias", 3)):
            assert got[i].shape == ref[i].shape, (case[0], name)
            _assert_within(got[i], ref[i], bounds[i], f"{case[0]} {name}")

    (case,) = [c for c in CASES if c[0] == "3x3 s2 p1"]
    x, kernel, bias = data[CASES.index(case)]
    names = _prims_in(jax.grad(lambda a, k: jnp.sum(_onednn_conv(a, k, (2, 2), 1) ** 2), (0, 1)),
                      x, kernel)
    assert {p.name for p in PRIMS} <= names and "conv_general_dilated" not in names, names


@pytest.mark.parametrize("name,strides,pad,k", HIGHER, ids=[h[0] for h in HIGHER])
def test_higher_order_exact(name, strides, pad, k):
    """grad of grad (both ways), jvp in each argument, jvp of grad (curvature's HVP), linearize,
    on integer data: exactly XLA's numbers."""
    x, kernel = _int_data(0, (6, 4, 5, 4), (k, k, 4, 3))
    xt, kt = _int_data(1, x.shape, kernel.shape)

    want = jax.jit(lambda: higher_order_results(layers.conv_general, x, kernel, xt, kt, strides,
                                                pad))()
    got = jax.jit(lambda: higher_order_results(_onednn_conv, x, kernel, xt, kt, strides, pad))()
    assert_trees_equal(got, want)


def test_hessian_wrt_input_exact():
    """jax.hessian (forward over reverse) of a scalar of one tiny input, as the curvature code."""
    x, kernel = _int_data(2, (1, 4, 4, 2), (3, 3, 2, 3))

    def f(conv, xx):
        y = conv(xx, kernel, (1, 1), ((1, 1), (1, 1)))
        return 0.5 * jnp.sum(jnp.maximum(y, 0.0) ** 2)

    want = jax.jit(jax.hessian(functools.partial(f, layers.conv_general)))(x)
    got = jax.jit(jax.hessian(functools.partial(f, _onednn_conv)))(x)
    np.testing.assert_array_equal(got, want)


def test_vmap_all_maps():
    """vmap of the forward and of grad: the input mapped (folded into the image axis), nested,
    input and kernel mapped, per-example gradients (vmap of grad: the kernel gradient per
    element); every result exactly XLA's on integer data."""
    x, kernel = _int_data(3, (2, 5, 6, 3), (3, 3, 3, 4))
    xs = jnp.stack([x, 2.0 * x, -x])  # (3, N, H, W, C)
    ks = jnp.stack([kernel, -kernel, 2.0 * kernel])

    def results(conv):
        def one(a, k):
            return conv(a, k, (2, 2), 1)

        def loss(k, a):
            return 0.5 * jnp.sum(one(a, k) ** 2)

        return dict(
            mapped_x=jax.vmap(one, in_axes=(0, None))(xs, kernel),
            nested=jax.vmap(jax.vmap(lambda a, k: one(a[None], k)[0], in_axes=(0, None)),
                            in_axes=(0, None))(xs, kernel),
            mapped_both=jax.vmap(one)(xs, ks),
            per_example=jax.vmap(jax.grad(loss, (0, 1)), in_axes=(None, 0))(kernel, xs),
            per_example_both=jax.vmap(jax.grad(loss, (0, 1)))(ks, xs),
            grad_of_vmapped=jax.grad(lambda k: jnp.sum(jax.vmap(one, in_axes=(0, None))(xs, k)
                                                       ** 2), )(kernel),
        )

    with layers.conv_impl("xla"):
        want = jax.jit(lambda: results(layers.conv))()
    got = jax.jit(lambda: results(_onednn_conv))()
    assert_trees_equal(got, want)


def test_eager_and_empty():
    """Outside jit (each map through its own jitted call) and with no images."""
    x, kernel = _int_data(4, (2, 4, 4, 2), (3, 3, 2, 3))
    pads = ((1, 1), (1, 1))
    np.testing.assert_array_equal(onednn.conv(x, kernel, (1, 1), pads),
                                  layers.conv_general(x, kernel, (1, 1), pads))
    dy = jnp.ones((2, 4, 4, 3))
    np.testing.assert_array_equal(
        onednn.data_p.bind(dy, kernel, strides=(1, 1), padding=pads, in_hw=(4, 4)),
        onednn._ref_data(dy, kernel, strides=(1, 1), padding=pads, in_hw=(4, 4)))
    empty = jnp.zeros((0, 4, 4, 2))
    assert onednn.conv(empty, kernel, (1, 1), pads).shape == (0, 4, 4, 3)
    dk = jax.grad(lambda k: jnp.sum(onednn.conv(empty, k, (1, 1), pads)))(kernel)
    np.testing.assert_array_equal(dk, jnp.zeros_like(kernel))


def test_non_float32_uses_xla():
    """Float64 (x64) goes to XLA's convolution: exactly XLA's numbers."""
    with jax.enable_x64(True):
        rng = np.random.default_rng(0)
        x = jnp.asarray(rng.standard_normal((2, 6, 6, 3)))
        k = jnp.asarray(rng.standard_normal((3, 3, 3, 4)))
        assert x.dtype == jnp.float64
        got = _onednn_conv(x, k, (1, 1), 1)
        want = layers.conv_general(x, k, (1, 1), ((1, 1), (1, 1)))
        np.testing.assert_array_equal(got, want)
    with pytest.raises(TypeError, match="float32"):
        onednn.conv(x.astype(jnp.float16), k.astype(jnp.float16), (1, 1), ((1, 1), (1, 1)))
    with pytest.raises(ValueError, match="matching channels"):
        onednn.conv(jnp.ones((1, 4, 4, 2)), jnp.ones((3, 3, 5, 1)), (1, 1), ((1, 1), (1, 1)))


def test_switch(monkeypatch):
    monkeypatch.delenv(layers.CONV_ENV, raising=False)
    layers.set_conv_impl(None)
    if jax.default_backend() == "cpu" and jax.device_count() == 1:
        assert layers.resolve_conv_impl() == "onednn"
    with layers.conv_impl("onednn"):
        assert layers.resolve_conv_impl() == "onednn"
    monkeypatch.setattr(onednn, "available", lambda: False)
    monkeypatch.setattr(onednn, "status", lambda: "switched off in a test")
    if jax.default_backend() == "cpu":
        assert layers.resolve_conv_impl("auto") == "custom"
    with pytest.raises(RuntimeError, match="'onednn' is not available: switched off in a test"):
        layers.resolve_conv_impl("onednn")


def test_environment_switch_off():
    """JIT_JAX_ONEDNN=0: not available, says why, and the models use the custom rule."""
    code = ("from jit_jax.models import onednn, layers; "
            "print(onednn.available(), '|', onednn.status(), '|', layers.resolve_conv_impl())")
    env = {**os.environ, onednn.ENV_SWITCH: "0", "JAX_PLATFORMS": "cpu"}
    env.pop(layers.CONV_ENV, None)  # the default setting, whatever this process runs with
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == f"False | turned off by ${onednn.ENV_SWITCH} | custom"


_CONCURRENT = """
import jax, jax.numpy as jnp, numpy as np
from jit_jax.functional import functionalize
from jit_jax.models import ModelSpec
from jit_jax.unlearn import objectives
fn = functionalize(ModelSpec("resnet18", 10, (32, 32, 3), {"width": 8}).build(0))
x = jnp.asarray(np.random.default_rng(0).normal(size=(4, 32, 32, 3)), jnp.float32)
vg = jax.jit(lambda p, k: objectives.value_and_grad("jacobian_fro")(
    fn.apply_fn, p, x, k, mask=None, forward_keys=False, aux={}))
for k in (0, 2, 1, 1, 1, 1):
    loss, _ = jax.block_until_ready(vg(fn.params, jax.random.key(k)))
print("done", float(loss))
"""


def test_concurrent_executions_do_not_share_a_scratchpad():
    """XLA runs independent convolutions of one program on several threads at once. With oneDNN's
    default (library, shared) scratchpad, the ResNet18 Jacobian objective's step hung on its
    second or third call on this machine (a kernel-gradient reduction spinning on a barrier that
    another execution overwrote); each call now gets its own scratchpad. A hang is caught by the
    subprocess timeout (the step compiles in ~10 s and then takes well under 1 s a call)."""
    try:
        out = subprocess.run([sys.executable, "-c", _CONCURRENT], capture_output=True, text=True,
                             timeout=150)
    except subprocess.TimeoutExpired:
        pytest.fail("the Jacobian objective's step did not finish in 150 s (a oneDNN hang)")
    assert out.returncode == 0, out.stderr[-2000:]
    assert "done" in out.stdout
