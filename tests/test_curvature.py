"""Tests for jit_jax.analysis.curvature: input gradients, Hessians, Hutchinson, eigenvalues, kappa.

Tolerances. Exactness claims and comparisons of two routes to one value are checked in float64
(``jax.enable_x64(True)`` inside each test): the ``jax.hessian`` and HVP routes at rtol 1e-10, the
batched statistics against a per-point loop at 1e-10, closed forms at 1e-10 or tighter. The few
float32 checks are smoke checks of the float32 path, with estimated (not worst-case) tolerances,
stated where they are asserted: 1e-5 relative on the Frobenius norm and 1e-4 of max |H|
elementwise (the two routes sum the same terms in different orders).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from jit_jax.analysis import curvature as C

# --------------------------------------------------------------------------------------------------
# Test functions
# --------------------------------------------------------------------------------------------------


def _quadratic(d=6, seed=0):
    rng = np.random.default_rng(seed)
    m = rng.normal(size=(d, d))
    a, b = m + m.T, rng.normal(size=d)
    return a, b


def _mlp(dtype, seed=0):
    """A tanh MLP 2 -> 16 -> 16 -> 3 as a plain batched function."""
    ks = jax.random.split(jax.random.key(seed), 3)
    sizes = [(2, 16), (16, 16), (16, 3)]
    params = [
        (jax.random.normal(k, s, dtype) / np.sqrt(s[0]), jnp.full((s[1],), 0.1, dtype))
        for k, s in zip(ks, sizes, strict=True)
    ]

    def apply(xb):
        h = xb
        for i, (w, c) in enumerate(params):
            h = h @ w + c
            if i < len(params) - 1:
                h = jnp.tanh(h)
        return h

    return apply


class _TinyCNN(nnx.Module):
    """6x6x1 input, two 3x3 convolutions (4, 4 channels), BatchNorm, a dense head with 3 classes."""

    def __init__(self, dtype, rngs):
        kw = dict(dtype=dtype, param_dtype=dtype, rngs=rngs)
        self.conv1 = nnx.Conv(1, 4, (3, 3), **kw)
        self.bn = nnx.BatchNorm(4, **kw)
        self.conv2 = nnx.Conv(4, 4, (3, 3), strides=2, **kw)
        self.head = nnx.Linear(3 * 3 * 4, 3, **kw)

    def __call__(self, x):
        h = jnp.tanh(self.bn(self.conv1(x)))
        h = jax.nn.softplus(self.conv2(h))
        return self.head(h.reshape(h.shape[0], -1))


def _cnn(dtype, seed=0):
    model = _TinyCNN(dtype, nnx.Rngs(seed))
    model.eval()
    return model


def _cnn_input(dtype, seed=1):
    return jax.random.normal(jax.random.key(seed), (6, 6, 1), dtype)


# --------------------------------------------------------------------------------------------------
# Quadratic: everything in closed form
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("shape", [(6,), (2, 3)])
def test_quadratic_closed_form(shape):
    with jax.enable_x64(True):
        a, b = _quadratic(6)
        aj, bj = jnp.asarray(a), jnp.asarray(b)
        f = lambda x: 0.5 * x.reshape(-1) @ aj @ x.reshape(-1) + bj @ x.reshape(-1)
        x = jnp.asarray(np.random.default_rng(1).normal(size=shape))
        v = jnp.asarray(np.random.default_rng(2).normal(size=shape))
        g = a @ np.asarray(x).reshape(-1) + b
        routes = [("hessian", None), ("hvp", None), ("hvp", 4)]

        @jax.jit
        def everything(x, v):
            return {
                "grad": C.input_gradient(f, x),
                "grad_norm": C.gradient_norm(f, x),
                "hvp": C.hvp(f, x, v),
                "hess": [C.hessian(f, x, m, bs) for m, bs in routes],
                "fro": [C.hessian_frobenius(f, x, m, bs) for m, bs in routes],
                "kappa": [C.kappa(f, x, m, batch_size=bs) for m, bs in routes],
            }

        out = everything(x, v)
        assert out["grad"].shape == shape
        np.testing.assert_allclose(out["grad"], g.reshape(shape), rtol=1e-12)
        np.testing.assert_allclose(out["grad_norm"], np.linalg.norm(g), rtol=1e-12)
        hv = (a @ np.asarray(v).reshape(-1)).reshape(shape)
        np.testing.assert_allclose(out["hvp"], hv, rtol=1e-12)
        for i in range(len(routes)):
            np.testing.assert_allclose(out["hess"][i], a, rtol=1e-12, atol=1e-12)
            np.testing.assert_allclose(out["fro"][i], np.linalg.norm(a), rtol=1e-12)
            kappa = np.linalg.norm(a) / np.linalg.norm(g)
            np.testing.assert_allclose(out["kappa"][i], kappa, rtol=1e-12)


def test_kappa_zero_gradient_is_inf_and_constant_is_nan():
    with jax.enable_x64(True):
        a, _ = _quadratic(4)
        aj = jnp.asarray(a)
        x0 = jnp.zeros(4)
        quad = lambda x: 0.5 * x @ aj @ x  # gradient 0 at x = 0, Hessian a != 0
        const = lambda x: 0.0 * jnp.sum(x)  # gradient 0 and Hessian 0
        lin = lambda x: jnp.sum(x)  # flat: kappa 0
        k = jax.jit(
            lambda x: (
                C.kappa(quad, x),
                C.kappa(quad, x, "hvp"),
                C.kappa(const, x),
                C.kappa(lin, x),
            )
        )(x0)
        assert k[0] == np.inf and k[1] == np.inf
        assert np.isnan(k[2])
        assert k[3] == 0.0


# --------------------------------------------------------------------------------------------------
# jax.hessian vs HVP route on a tanh MLP and a tiny CNN
# --------------------------------------------------------------------------------------------------


def _fn_and_point(model, dtype):
    if model == "mlp":
        f = C.scalar_fn(_mlp(dtype), "log_softmax", label=1)
        return f, jnp.asarray([0.3, -0.7], dtype)
    f = C.scalar_fn(_cnn(dtype), "log_softmax", label=2)
    return f, _cnn_input(dtype)


@functools.cache
def _routes_float64(model):
    """Every route to the float64 Hessian of a test model at its test point, in one compile."""
    with jax.enable_x64(True):
        f, x = _fn_and_point(model, jnp.float64)
        d, eps = x.size, 1e-5
        steps = (eps * jnp.eye(d)).reshape((d, *x.shape))
        grads = jax.vmap(lambda z: C.input_gradient(f, z).reshape(-1))

        @jax.jit
        def everything(z):
            return {
                "hessian": C.hessian(f, z, "hessian"),
                "hvp": C.hessian(f, z, "hvp", batch_size=5),
                "fro_hessian": C.hessian_frobenius(f, z, "hessian"),
                "fro_hvp": C.hessian_frobenius(f, z, "hvp", 7),
                # Independent check: central differences of the gradient, column by column.
                "finite_diff": ((grads(z + steps) - grads(z - steps)) / (2 * eps)).T,
            }

        return {k: np.asarray(v) for k, v in everything(x).items()}


@pytest.mark.parametrize("model", ["mlp", "cnn"])
def test_hessian_routes_agree_float64(model):
    r = _routes_float64(model)
    h1, h2 = r["hessian"], r["hvp"]
    d = 2 if model == "mlp" else 36
    assert h1.dtype == np.float64 and h1.shape == h2.shape == (d, d)
    scale = np.abs(h1).max()
    np.testing.assert_allclose(h2, h1, rtol=1e-10, atol=1e-12 * scale)
    np.testing.assert_allclose(h1, h1.T, atol=1e-12 * scale)
    fro = np.linalg.norm(h1)
    np.testing.assert_allclose(r["fro_hessian"], fro, rtol=1e-10)
    np.testing.assert_allclose(r["fro_hvp"], fro, rtol=1e-10)
    np.testing.assert_allclose(r["finite_diff"], h1, atol=1e-7 * max(1.0, scale))


@pytest.mark.parametrize("model", ["mlp", "cnn"])
def test_hessian_routes_agree_float32(model):
    f, x = _fn_and_point(model, jnp.float32)
    h1, h2, fro_v = jax.jit(
        lambda z: (
            C.hessian(f, z, "hessian"),
            C.hessian(f, z, "hvp"),
            C.hessian_frobenius(f, z, "hvp", 4),
        )
    )(x)
    h1, h2 = np.asarray(h1), np.asarray(h2)
    # A float32 smoke check (exactness is pinned in float64 above). Each entry is the same sum of
    # products in another order: |dH| <= 2 gamma_n sum|terms| with n <= ~400 chained terms, 5e-5
    # of sum|terms| in the worst case; typical rounding grows as sqrt(n) u ~ 1e-6, and the entries'
    # terms do not cancel much here (sum|terms| ~ max|H|): 1e-4 max|H| elementwise, 1e-5 on the
    # norm (which averages the entries' errors). An estimate, not a worst-case bound.
    np.testing.assert_allclose(np.linalg.norm(h2), np.linalg.norm(h1), rtol=1e-5)
    np.testing.assert_allclose(h2, h1, atol=1e-4 * np.abs(h1).max())
    np.testing.assert_allclose(fro_v, np.linalg.norm(h1), rtol=1e-5)


def test_hessian_is_flattened_row_major():
    # An NHWC-shaped input and a quadratic with small integer coefficients: both routes are then
    # exact in float32 (every product and sum is a small multiple of 1/2), so equality is exact.
    rng = np.random.default_rng(4)
    m = rng.integers(-3, 4, size=(12, 12))
    a = jnp.asarray(m + m.T, jnp.float32)
    f = lambda z: 0.5 * z.reshape(-1) @ a @ z.reshape(-1)
    x = jnp.asarray(rng.integers(-2, 3, size=(2, 3, 2)), jnp.float32)
    full, ours = jax.jit(lambda z: (jax.hessian(f)(z), C.hessian(f, z)))(x)
    assert full.shape == x.shape + x.shape
    np.testing.assert_array_equal(ours, full.reshape(x.size, x.size))
    np.testing.assert_array_equal(ours, a)


# --------------------------------------------------------------------------------------------------
# Hutchinson
# --------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def cnn_exact():
    """The CNN's exact input Hessian (float64 and float32) at one point, computed once."""
    out = {"f64": _routes_float64("cnn")["hessian"]}
    f, x = _fn_and_point("cnn", jnp.float32)
    out["f32"] = np.asarray(jax.jit(lambda z: C.hessian(f, z))(x), np.float64)
    return out


def test_hutchinson_interval_covers_exact_value(cnn_exact):
    with jax.enable_x64(True):
        f, x = _fn_and_point("cnn", jnp.float64)
        exact = float(np.linalg.norm(cnn_exact["f64"]) ** 2)
        hutch = jax.jit(
            lambda k: C.hutchinson_frobenius_sq(f, x, k, num_probes=512, batch_size=128)
        )
        est = hutch(jax.random.key(0))
        assert est.ci_low <= exact <= est.ci_high
        assert int(est.num_probes) == 512
        np.testing.assert_allclose(est.estimate, exact, rtol=0.1)
        # float64; 1.959964 is z_0.975 to 7 digits (rel 1e-8)
        np.testing.assert_allclose(est.ci_high - est.estimate, 1.959964 * est.stderr, rtol=1e-7)

        # Coverage over 20 keys at 95 %, 64 probes each: about 19 expected; >= 15 asserted.
        # The same probes at 99 % give a wider interval around the same estimate.
        keys = jax.random.split(jax.random.key(1), 20)
        both = jax.jit(
            jax.vmap(
                lambda k: (
                    C.hutchinson_frobenius_sq(f, x, k, num_probes=64),
                    C.hutchinson_frobenius_sq(f, x, k, num_probes=64, confidence=0.99),
                )
            )
        )
        e95, e99 = both(keys)
        covered = np.sum((np.asarray(e95.ci_low) <= exact) & (exact <= np.asarray(e95.ci_high)))
        assert covered >= 15, covered
        np.testing.assert_array_equal(e99.estimate, e95.estimate)
        assert np.all(e99.ci_high > e95.ci_high)


def test_hutchinson_exact_for_diagonal_hessian():
    # H = diag(h): ||H v||^2 = sum h_i^2 for every Rademacher v, so zero variance.
    with jax.enable_x64(True):
        h = jnp.asarray([3.0, -1.0, 0.5, 2.0])
        f = lambda x: 0.5 * jnp.sum(h * x**2)
        est = C.hutchinson_frobenius_sq(f, jnp.ones(4), jax.random.key(0), num_probes=8)
        np.testing.assert_allclose(est.estimate, np.sum(np.asarray(h) ** 2), rtol=1e-12)
        assert est.stderr == 0.0


# --------------------------------------------------------------------------------------------------
# Top eigenvalue
# --------------------------------------------------------------------------------------------------


def _spectral_quadratic(eigs, seed=0):
    q, _ = np.linalg.qr(np.random.default_rng(seed).normal(size=(len(eigs), len(eigs))))
    a = jnp.asarray((q * np.asarray(eigs)) @ q.T)
    return (lambda x: 0.5 * x @ a @ x), jnp.ones(len(eigs))


def _top(ev):
    return ev[np.argmax(np.abs(ev))]


def test_lanczos_full_dimension_is_exact(cnn_exact):
    with jax.enable_x64(True):
        f, x = _fn_and_point("cnn", jnp.float64)
        top = _top(np.linalg.eigvalsh(cnn_exact["f64"]))
        lanczos = jax.jit(
            lambda k: (
                C.top_eigenvalue(f, x, k, "lanczos", num_iters=x.size),
                C.top_eigenvalue(f, x, k, "lanczos", num_iters=8),
            )
        )
        full, few = lanczos(jax.random.key(0))
        np.testing.assert_allclose(full, top, rtol=1e-8)
        # Fewer steps: a Ritz value, never larger in magnitude than the true one.
        assert abs(few) <= abs(top) * (1 + 1e-10)


def test_lanczos_float32_and_breakdown(cnn_exact):
    f, x = _fn_and_point("cnn", jnp.float32)
    got = jax.jit(lambda k: C.top_eigenvalue(f, x, k, "lanczos", num_iters=x.size))(
        jax.random.key(0)
    )
    # float32 smoke check (float64 exactness: the test above). Weyl: |got - lambda(H1)| <=
    # ||H_hvp - H1||_2 + Lanczos rounding ~ d u ||H||, i.e. the routes' difference above (an
    # estimate of 1e-5 relative) plus 36 u: 1e-4 relative
    np.testing.assert_allclose(got, _top(np.linalg.eigvalsh(cnn_exact["f32"])), rtol=1e-4)
    # Repeated eigenvalues: the Krylov space is invariant after 3 steps; the restart keeps it exact.
    with jax.enable_x64(True):
        f2, x2 = _spectral_quadratic([-4.0, 3.0, 3.0, 1.0, 1.0, 1.0])
        for k in (6, 10):
            got = C.top_eigenvalue(f2, x2, jax.random.key(1), "lanczos", num_iters=k)
            np.testing.assert_allclose(got, -4.0, rtol=1e-10)


@pytest.mark.parametrize("eigs", [[10.0, 5.0, 3.0, 1.0, -2.0, 0.5], [-8.0, 4.0, 2.0, -1.0, 0.1]])
def test_power_iteration_with_spectral_gap(eigs):
    with jax.enable_x64(True):
        f, x = _spectral_quadratic(eigs)
        # |lambda_2 / lambda_1| = 0.5: 60 iterations leave an eigenvector error ~1e-18.
        got = C.top_eigenvalue(f, x, jax.random.key(0), "power", num_iters=60)
        np.testing.assert_allclose(got, eigs[0], rtol=1e-8)
        # 8 iterations: error ~ 0.5^16 relative on the Rayleigh quotient; a few % asserted.
        got = C.top_eigenvalue(f, x, jax.random.key(0), "power", num_iters=8)
        np.testing.assert_allclose(got, eigs[0], rtol=0.03)
        assert abs(got) <= abs(eigs[0]) * (1 + 1e-12)


def test_power_iteration_on_cnn(cnn_exact):
    f, x = _fn_and_point("cnn", jnp.float32)
    ev = np.linalg.eigvalsh(cnn_exact["f32"])
    ev = ev[np.argsort(-np.abs(ev))]
    got = jax.jit(lambda k: C.top_eigenvalue(f, x, k, "power", num_iters=200))(jax.random.key(0))
    assert abs(got) <= abs(ev[0]) * (1 + 1e-5)  # a Rayleigh quotient; float32 slack as above
    if abs(ev[1] / ev[0]) < 0.9:  # a clear gap: 200 iterations converge to well under 1 %
        np.testing.assert_allclose(got, ev[0], rtol=0.01)


# --------------------------------------------------------------------------------------------------
# Kinds of scalar function on a linear model (closed form)
# --------------------------------------------------------------------------------------------------


def test_kinds_on_linear_model():
    with jax.enable_x64(True):
        rng = np.random.default_rng(0)
        w, c = rng.normal(size=(3, 4)), rng.normal(size=3)
        apply = lambda xb: xb @ jnp.asarray(w).T + jnp.asarray(c)
        x = rng.normal(size=4)
        z = w @ x + c
        p = np.exp(z - z.max()) / np.exp(z - z.max()).sum()
        fisher = w.T @ (np.diag(p) - np.outer(p, p)) @ w  # -Hessian of log p(y|x)
        kinds = ("logit", "log_softmax", "loss")

        @jax.jit
        def derivatives(x, y):  # y traced: one compile for the three labels
            fs = [C.scalar_fn(apply, kind, label=y) for kind in kinds]
            return [(f(x), C.input_gradient(f, x), C.hessian(f, x)) for f in fs]

        for y in range(3):
            g_logp = w[y] - w.T @ p
            expected = [
                (z[y], w[y], np.zeros((4, 4))),  # logit
                (np.log(p[y]), g_logp, -fisher),  # log_softmax
                (-np.log(p[y]), -g_logp, fisher),  # loss
            ]
            got = derivatives(jnp.asarray(x), y)
            for kind, (val, grad, hess), (v, g, h) in zip(kinds, expected, got, strict=True):
                np.testing.assert_allclose(v, val, rtol=1e-12, err_msg=kind)
                np.testing.assert_allclose(g, grad, rtol=1e-10, atol=1e-12, err_msg=kind)
                np.testing.assert_allclose(h, hess, atol=1e-12, err_msg=kind)
        # Traced labels under vmap: (x, label) pairs.
        ys = jnp.asarray([0, 2, 1])
        xs = jnp.asarray(rng.normal(size=(3, 4)))
        grads = jax.vmap(lambda x, y: C.input_gradient(C.scalar_fn(apply, "logit", label=y), x))(
            xs, ys
        )
        np.testing.assert_allclose(grads, w[np.asarray(ys)], rtol=1e-12)
    with pytest.raises(ValueError, match="kind"):
        C.scalar_fn(apply, "probability", label=0)


# --------------------------------------------------------------------------------------------------
# curvature_stats: batched equals a loop
# --------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def cnn_batch():
    """The CNN and a batch in float64: batched and per-point routes differ by rounding order only,
    so they are compared in float64 (the tests run with x64 on)."""
    with jax.enable_x64(True):
        model = _cnn(jnp.float64)
        xs = jax.random.normal(jax.random.key(3), (5, 6, 6, 1), jnp.float64)
        ys = jnp.asarray([0, 1, 2, 1, 0])
    return model, xs, ys


@pytest.mark.parametrize(
    "method,batch_size,hvp_batch_size,top_eig",
    [("hessian", 2, None, None),
     pytest.param("hvp", None, 12, "lanczos", marks=pytest.mark.slow),  # ~8 s each
     pytest.param("hutchinson", None, 16, "power", marks=pytest.mark.slow)],
)
def test_curvature_stats_equals_loop(cnn_batch, method, batch_size, hvp_batch_size, top_eig):
    with jax.enable_x64(True):
        _curvature_stats_equals_loop(cnn_batch, method, batch_size, hvp_batch_size, top_eig)


def _curvature_stats_equals_loop(cnn_batch, method, batch_size, hvp_batch_size, top_eig):
    model, xs, ys = cnn_batch
    key = jax.random.key(7)
    stats = C.curvature_stats(
        model, xs, ys, kind="loss", method=method, key=key, num_probes=32,
        batch_size=batch_size, hvp_batch_size=hvp_batch_size, top_eig=top_eig, num_iters=12,
    )  # fmt: skip
    assert all(v.shape == (len(xs),) for v in stats.values())
    assert ("top_eig" in stats) == (top_eig is not None)

    @jax.jit
    def one(x, y, k):  # the per-point reference, called in a Python loop
        f = C.scalar_fn(model, "loss", label=y)
        k_fro, k_eig = jax.random.split(k)
        out = {"value": f(x), "grad_norm": C.gradient_norm(f, x)}
        if method == "hutchinson":
            est = C.hutchinson_frobenius_sq(f, x, k_fro, 32)
            out["hess_fro"] = jnp.sqrt(est.estimate)
            out["hess_fro_sq_ci_low"], out["hess_fro_sq_ci_high"] = est.ci_low, est.ci_high
        else:
            out["hess_fro"] = C.hessian_frobenius(f, x, method)
        out["kappa"] = out["hess_fro"] / out["grad_norm"]
        if top_eig is not None:
            out["top_eig"] = C.top_eigenvalue(f, x, k_eig, top_eig, 12)
        return out

    keys = jax.random.split(key, len(xs))
    assert stats["value"].dtype == np.float64
    for i in range(len(xs)):
        ref = one(xs[i], ys[i], keys[i])
        for name, val in ref.items():
            # float64: the same maths up to the order of the sums (the same probes, the same
            # Krylov steps), u = 2^-53; measured ~1e-15 relative, ~1e-13 for top_eig (12 Lanczos
            # or power steps amplify it): 1e-10 leaves a margin of 1e3
            np.testing.assert_allclose(stats[name][i], val, rtol=1e-10, err_msg=name)


def test_curvature_stats_nnx_split_merge_and_scalar_label(cnn_batch):
    model, xs, _ = cnn_batch
    graphdef, state = nnx.split(model)
    apply_fn = lambda xb: nnx.merge(graphdef, state)(xb)
    with jax.enable_x64(True):  # float64: the two routes differ by rounding order only
        a = C.curvature_stats(model, xs, 1, kind="logit")
        b = C.curvature_stats(apply_fn, xs, jnp.ones(5, jnp.int32), kind="logit", batch_size=2)
    for k in ("grad_norm", "hess_fro", "kappa"):
        assert a[k].dtype == np.float64
        np.testing.assert_allclose(a[k], b[k], rtol=1e-10)
    with pytest.raises(ValueError, match="key"):
        C.curvature_stats(model, xs, 1, method="hutchinson")


def test_integer_inputs_are_promoted_to_float():
    f = lambda x: jnp.sum(x**3)
    x = np.array([1, 2], np.uint8)
    np.testing.assert_allclose(C.input_gradient(f, x), [3.0, 12.0])
    np.testing.assert_allclose(C.hessian(f, x, "hvp"), np.diag([6.0, 12.0]))
