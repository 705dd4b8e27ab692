"""oneDNN's forward convolution (``jit_jax.models.onednn``, ``layers.conv_custom(forward="onednn")``)
against XLA's.

Forward values: both compute each output as a float32 sum of K = kh*kw*C_in products plus the
bias, in different orders, so they differ by at most ``2 * gamma_(K+1) * S`` elementwise, S being
the same sums over absolute values (``test_conv_vjp._bound``). Gradients: the rule's derivative
maps do not read the forward values (a convolution is linear in each argument), so dx and dkernel
must be bit-identical to the custom rule's with XLA's forward pass.
"""

from __future__ import annotations

import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from test_conv_vjp import CASES, _assert_within, _bound, _case_arrays, _conv_args, _with_bias

from jit_jax.models import layers, onednn

pytestmark = pytest.mark.skipif(not onednn.available(),
                                reason=f"oneDNN convolution not available: {onednn.status()}")


def _onednn_conv(x, kernel, strides, padding):
    return layers.conv_custom(x, kernel, strides, padding, forward="onednn")


def test_forward_matches_xla_and_gradients_are_the_rules():
    """Every layer configuration of the models, under jit: values within the float32 bound of
    XLA's, gradients equal to the custom rule's (XLA's forward) bit for bit."""
    data = [_case_arrays(c, i) for i, c in enumerate(CASES)]

    @jax.jit
    def run(data):
        outs = []
        for case, (x, kernel, bias) in zip(CASES, data, strict=True):
            strides, pad = _conv_args(case)
            per_impl = []
            for conv in (layers.conv_custom, _onednn_conv):
                y, vjp = jax.vjp(_with_bias(conv, strides, pad), x, kernel, bias)
                dy = jnp.cos(3.0 * per_impl[0][0]) if per_impl else jnp.cos(3.0 * y)
                per_impl.append((y, *vjp(dy)))
            pads = layers._normalise(x, kernel, strides, pad)[1]
            outs.append((*per_impl, _bound(x, kernel, dy, strides, pads, bias)))
        return outs

    for case, (ref, got, bounds) in zip(CASES, run(data), strict=True):
        assert got[0].shape == ref[0].shape, case[0]
        _assert_within(got[0], ref[0], bounds[0], f"{case[0]} y")
        for name, i in (("dx", 1), ("dkernel", 2), ("dbias", 3)):
            np.testing.assert_array_equal(got[i], ref[i], err_msg=f"{case[0]} {name}")


def test_vmap_folds_the_mapped_axis():
    """Only the input mapped (JiT's noisy draws): one call over all images; nested vmaps too;
    input and kernel both mapped: XLA's convolution per element (values within the bound)."""
    (case,) = [c for c in CASES if c[0] == "3x3 s2 p1"]
    x, kernel, _ = _case_arrays(case, 0)
    strides, pad = _conv_args(case)
    pads = layers._normalise(x, kernel, strides, pad)[1]
    xs = jnp.stack([x, 2.0 * x, -x])  # (3, N, H, W, C)
    ks = jnp.stack([kernel, 0.5 * kernel, -kernel])

    def one(a, k):
        return _onednn_conv(a, k, strides, pad)

    mapped_x = jax.jit(jax.vmap(one, in_axes=(0, None)))(xs, kernel)
    nested = jax.jit(jax.vmap(jax.vmap(lambda a, k: one(a[None], k)[0], in_axes=(0, None)),
                              in_axes=(0, None)))(xs, kernel)
    mapped_both = jax.jit(jax.vmap(one))(xs, ks)
    for i in range(3):
        y_ref = layers.conv_general(xs[i], kernel, strides, pads)
        dy = jnp.ones_like(y_ref)
        bound = _bound(xs[i], kernel, dy, strides, pads)[0]
        _assert_within(mapped_x[i], y_ref, bound, f"vmap over x, element {i}")
        _assert_within(nested[i], y_ref, bound, f"nested vmap, element {i}")
        ref_both = layers.conv_general(xs[i], ks[i], strides, pads)
        _assert_within(mapped_both[i], ref_both, _bound(xs[i], ks[i], dy, strides, pads)[0],
                       f"vmap over x and kernel, element {i}")


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
        onednn.conv_forward(x.astype(jnp.float16), k.astype(jnp.float16), (1, 1),
                            ((1, 1), (1, 1)))


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
    with pytest.raises(ValueError, match="forward must be 'xla' or 'onednn'"):
        layers.conv_custom(jnp.ones((1, 4, 4, 1)), jnp.ones((3, 3, 1, 1)), forward="mkl")


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
