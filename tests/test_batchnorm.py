"""Training-mode BatchNorm with the closed-form derivative (``layers.batch_norm_train`` and
``layers.BatchNorm``), against independent float64 references:

- the forward pass against a float64 NumPy BatchNorm;
- the gradient, the jvp and a Hessian-vector product (grad of grad) against float64 central
  finite differences of that NumPy forward (and of its finite-difference gradient);
- the module against ``nnx.BatchNorm`` (outputs, running statistics, evaluation mode, fallbacks).

Float32 bounds. The data has n = 4*3*3 = 36 positions per channel. Each quantity is a mean over
those positions (rounding error at most gamma_n = n*u/(1 - n*u) times the sum of the absolute
terms, whatever the summation order) followed by a few elementwise operations (each one more u).
The variance is ``E[x^2] - E[x]^2``, so its absolute error is gamma_n * (E[x^2] + E[x]^2) and the
relative error of ``rsqrt(var + eps)`` carries the factor kappa = (E[x^2] + E[x]^2) / var. The
bounds below are ``SLACK * gamma_n * kappa * M`` with M the float64 value of the quantity's
expression with every term replaced by its absolute value, and SLACK = 8 covering the chain of
at most eight dependent roundings from the means to the result. A wrong term in the rule (e.g.
dropping ``xh * mean(dx * xh)``) is off by O(M), orders of magnitude above the bound.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from jit_jax.models import layers

EPS = 1e-5
SHAPE = (4, 3, 3, 5)
N = 4 * 3 * 3
U = 2.0 ** -24
GAMMA = N * U / (1 - N * U)
SLACK = 8


def _data(seed=0):
    rng = np.random.default_rng(seed)
    x = (rng.standard_normal(SHAPE) * 2.0 + 1.5).astype(np.float32)  # a mean away from 0
    scale = rng.uniform(0.5, 2.0, SHAPE[-1]).astype(np.float32)
    bias = rng.standard_normal(SHAPE[-1]).astype(np.float32)
    w = rng.standard_normal(SHAPE).astype(np.float32)  # the loss's weights: L = sum(y * w)
    return x, scale, bias, w


def bn64(x, scale, bias):
    x = np.asarray(x, np.float64)
    mean = x.mean((0, 1, 2))
    var = (x * x).mean((0, 1, 2)) - mean ** 2
    return (x - mean) / np.sqrt(var + EPS) * scale + bias


def _fd_grad(f, x, h=1e-4):
    """Central differences of the float64 scalar function f at x (every coordinate)."""
    x = np.asarray(x, np.float64)
    g = np.zeros_like(x)
    for i in np.ndindex(x.shape):
        e = np.zeros_like(x)
        e[i] = h
        g[i] = (f(x + e) - f(x - e)) / (2 * h)
    return g


def _kappa(x):
    x = np.asarray(x, np.float64)
    m, m2 = x.mean((0, 1, 2)), (x * x).mean((0, 1, 2))
    return (m2 + m * m) / (m2 - m * m)


def _assert_within(got, want, magnitude, kappa, what):
    err = np.abs(np.asarray(got, np.float64) - want)
    limit = SLACK * GAMMA * kappa * magnitude
    worst = np.max(err - limit)
    assert worst <= 0, f"{what}: error exceeds the float32 bound by {worst:.3g} (max error {err.max():.3g})"


def _pieces(x, scale):
    x = np.asarray(x, np.float64)
    mean = x.mean((0, 1, 2))
    r = 1 / np.sqrt((x * x).mean((0, 1, 2)) - mean ** 2 + EPS)
    return mean, r, (x - mean) * r, scale * r


def test_forward_matches_float64():
    x, scale, bias, _ = _data()
    y = jax.jit(layers.batch_norm_train, static_argnums=3)(x, scale, bias, EPS)
    mean, r, xh, k = _pieces(x, scale)
    mag = np.abs(scale) * r * (np.abs(x) + np.abs(x).mean((0, 1, 2))) * 2 + np.abs(bias)
    _assert_within(y, bn64(x, scale, bias), mag, _kappa(x), "y")


@pytest.mark.parametrize("wrt", ["x", "scale", "bias"])
def test_gradient_matches_finite_differences(wrt):
    x, scale, bias, w = _data(1)
    args = {"x": x, "scale": scale, "bias": bias}
    names = list(args)

    def loss32(a):
        return jnp.sum(layers.batch_norm_train(a["x"], a["scale"], a["bias"], EPS) * w)

    got = jax.jit(jax.grad(loss32))({k: jnp.asarray(v) for k, v in args.items()})[wrt]

    def loss64(v):
        a = {k: np.asarray(args[k], np.float64) for k in names}
        a[wrt] = v
        return float(np.sum(bn64(a["x"], a["scale"], a["bias"]) * w))

    want = _fd_grad(loss64, args[wrt])
    mean, r, xh, k = _pieces(x, scale)
    wabs = np.abs(w)
    if wrt == "x":  # k * (w - mean(w) - xh * mean(w * xh)), each term by its magnitude
        mag = np.abs(k) * (wabs + wabs.mean((0, 1, 2)) + (np.abs(xh) + 1)
                           * (wabs * np.abs(xh)).mean((0, 1, 2))) * 2
    elif wrt == "scale":  # sum(w * xh)
        mag = (wabs * (np.abs(xh) + 1)).sum((0, 1, 2)) * 2
    else:  # sum(w)
        mag = wabs.sum((0, 1, 2))
    # the finite differences themselves: O(h^2) truncation, about 1e-12 relative rounding
    _assert_within(got, want, mag + 1e-6 * np.abs(want).max(), _kappa(x), f"d/d{wrt}")


def test_jvp_matches_finite_differences():
    x, scale, bias, _ = _data(2)
    rng = np.random.default_rng(3)
    tx = rng.standard_normal(SHAPE).astype(np.float32)
    ts, tb = rng.standard_normal((2, SHAPE[-1])).astype(np.float32)
    _, got = jax.jit(lambda p, t: jax.jvp(lambda *a: layers.batch_norm_train(*a, EPS), p, t))(
        (x, scale, bias), (tx, ts, tb))
    h = 1e-5
    x64, s64, b64 = (np.asarray(a, np.float64) for a in (x, scale, bias))
    want = (bn64(x64 + h * tx, s64 + h * ts, b64 + h * tb)
            - bn64(x64 - h * tx, s64 - h * ts, b64 - h * tb)) / (2 * h)
    mean, r, xh, k = _pieces(x, scale)
    ta = np.abs(tx)
    mag = (np.abs(k) * (ta + ta.mean((0, 1, 2)) + (np.abs(xh) + 1) * (ta * np.abs(xh)).mean((0, 1, 2)))
           + (np.abs(xh) + 1) * np.abs(ts) + np.abs(tb)) * 2
    _assert_within(got, want, mag + 1e-6 * np.abs(want).max(), _kappa(x), "jvp")


def test_grad_of_grad_matches_finite_differences():
    """A Hessian-vector product of L(x) = sum(bn(x)^2 * w) / 2 (reverse over reverse), against
    central differences along v of the float64 gradient in closed form (the textbook BatchNorm
    backward pass, written here in NumPy; the first-order tests check the same formula against
    finite differences of the forward pass)."""
    x, scale, bias, w = _data(4)
    v = np.random.default_rng(5).standard_normal(SHAPE).astype(np.float32)

    def loss32(x):
        return 0.5 * jnp.sum(layers.batch_norm_train(x, scale, bias, EPS) ** 2 * w)

    got = jax.jit(lambda x, v: jax.grad(lambda x: jnp.vdot(jax.grad(loss32)(x), v))(x))(x, v)

    def grad64(x):  # dL/dx in closed form: dy = y * w, dx = k * (dy - mean(dy) - xh * mean(dy * xh))
        mean, r, xh, k = _pieces(x, scale)
        dy = (xh * scale + bias) * w
        return k * (dy - dy.mean((0, 1, 2)) - xh * (dy * xh).mean((0, 1, 2)))

    h = 1e-4
    x64 = np.asarray(x, np.float64)
    want = (grad64(x64 + h * v) - grad64(x64 - h * v)) / (2 * h)  # H v (H is symmetric)
    # second order: each product of first-order factors adds one more layer of the same means
    mean, r, xh, k = _pieces(x, scale)
    y = np.abs(xh * scale) + np.abs(bias)
    scale_ = (np.abs(k) ** 2 * (np.abs(w) * (y + 1)).max() * (np.abs(xh) + 1) ** 2
              * np.abs(v).mean((0, 1, 2), keepdims=True).max()) * 8 + np.abs(k) ** 2 * np.abs(v) * 4
    _assert_within(got, want, scale_ + 1e-6 * np.abs(want).max(), _kappa(x) ** 2, "H v")


def test_vmap_is_per_element():
    xs = np.stack([_data(s)[0] for s in range(3)])
    _, scale, bias, _ = _data()
    f = lambda x: layers.batch_norm_train(x, scale, bias, EPS)  # noqa: E731
    got = jax.jit(jax.vmap(f))(xs)
    for i in range(3):
        np.testing.assert_array_equal(np.asarray(got[i]), np.asarray(jax.jit(f)(xs[i])))


def _pair(features=5):
    ours = layers.batch_norm(features, nnx.Rngs(0))
    theirs = nnx.BatchNorm(features, momentum=layers.BN_MOMENTUM, epsilon=layers.BN_EPSILON,
                           rngs=nnx.Rngs(0))
    rng = np.random.default_rng(7)
    for m in (ours, theirs):  # the same non-trivial parameters and running statistics
        m.scale[...] = jnp.asarray(rng.uniform(0.5, 2, features).astype(np.float32))
        m.bias[...] = jnp.asarray(rng.standard_normal(features).astype(np.float32))
        m.mean[...] = jnp.full(features, 0.25, jnp.float32)
        m.var[...] = jnp.full(features, 2.0, jnp.float32)
        rng = np.random.default_rng(7)
    return ours, theirs


def test_module_matches_flax_in_training_and_evaluation():
    ours, theirs = _pair()
    assert isinstance(ours, nnx.BatchNorm)
    x, _, _, _ = _data(8)
    y_ours, y_theirs = ours(jnp.asarray(x), use_running_average=False), theirs(
        jnp.asarray(x), use_running_average=False)
    mean, r, xh, k = _pieces(x, np.asarray(ours.scale[...]))
    mag = (np.abs(k) * (np.abs(x) + np.abs(x).mean((0, 1, 2))) * 2 + np.abs(ours.bias[...])) * 2
    # both are float32 evaluations of the same function: each within the bound of the float64 one
    want = bn64(x, np.asarray(ours.scale[...]), np.asarray(ours.bias[...]))
    _assert_within(y_ours, want, mag, _kappa(x), "module y")
    _assert_within(y_theirs, want, mag, _kappa(x), "flax y")
    x64 = np.asarray(x, np.float64)
    m64, v64 = x64.mean((0, 1, 2)), x64.var((0, 1, 2))
    for name, want_stat in (("mean", 0.9 * 0.25 + 0.1 * m64), ("var", 0.9 * 2.0 + 0.1 * v64)):
        got = np.asarray(getattr(ours, name)[...], np.float64)
        stat_mag = 0.9 * np.abs([0.25, 2.0][name == "var"]) + 0.1 * (
            (x64 * x64).mean((0, 1, 2)) + m64 ** 2 if name == "var" else np.abs(x64).mean((0, 1, 2)))
        _assert_within(got, want_stat, stat_mag * 2, _kappa(x), f"running {name}")
    # evaluation mode is flax's own code: identical results
    y1, y2 = ours(jnp.asarray(x), use_running_average=True), theirs(jnp.asarray(x), use_running_average=True)
    np.testing.assert_allclose(np.asarray(y1), np.asarray(y2), rtol=0, atol=4 * U * float(np.abs(y2).max()))


def test_module_falls_back_to_flax_outside_the_fast_case():
    """A mask, or evaluation mode set on the module (``model.eval()``), takes flax's own code."""
    ours, theirs = _pair()
    x = jnp.asarray(_data(9)[0])
    mask = jnp.asarray(np.random.default_rng(0).random(SHAPE) > 0.3)
    np.testing.assert_array_equal(np.asarray(ours(x, use_running_average=False, mask=mask)),
                                  np.asarray(theirs(x, use_running_average=False, mask=mask)))
    ours.use_running_average = True
    np.testing.assert_array_equal(np.asarray(ours(x)),
                                  np.asarray(theirs(x, use_running_average=True)))


def test_models_use_the_rule_in_training_mode_only(monkeypatch):
    """ResNet18's BatchNorm layers are the closed-form module: its training-mode forward pass calls
    ``batch_norm_train`` once per layer, its evaluation mode never."""
    from jit_jax import models
    from jit_jax.functional import functionalize

    calls = []
    original = layers.batch_norm_train

    def counting(*a):
        calls.append(a[0].shape)
        return original(*a)

    monkeypatch.setattr(layers, "batch_norm_train", counting)
    model = models.create("resnet18", 10, (8, 8, 3), width=4)
    bns = [m for _, m in nnx.iter_graph(model) if isinstance(m, nnx.BatchNorm)]
    assert bns and all(isinstance(m, layers.BatchNorm) for m in bns)
    x = jnp.zeros((2, 8, 8, 3), jnp.float32)
    for train, count in ((True, len(bns)), (False, 0)):
        calls.clear()
        fn = functionalize(model, train=train)
        jax.make_jaxpr(fn.apply_fn)(fn.params, x)
        assert len(calls) == count, (train, calls)
