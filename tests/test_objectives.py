"""Zero-shot objectives (jit_jax.unlearn.objectives) against closed forms and brute force, and as
methods in JiT's update loop.

Float32 bounds: each compared quantity is a product of the input Jacobian (or a weight matrix) with
a direction, a dot product of D = 12 terms, then norms and a division. Its rounding error is at
most SLACK * gamma_D times the same expression evaluated in float64 on absolute values (M below),
with SLACK = 8 for the handful of further roundings. A wrong objective (a missing square, the
wrong norm, a mask ignored) is off by O(M)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jit_jax.unlearn import objectives as O

D, C, B, N = 12, 3, 5, 6
U = 2.0 ** -24
GAMMA = D * U / (1 - D * U)
SLACK = 8


def _linear():
    rng = np.random.default_rng(0)
    w = rng.standard_normal((D, C)).astype(np.float32)
    b = rng.standard_normal(C).astype(np.float32)
    x = rng.standard_normal((B, 3, 4)).astype(np.float32)  # any batch-first shape: D = 3 * 4

    def apply(p, xx):
        return xx.reshape(xx.shape[0], -1) @ p["w"] + p["b"]

    return apply, {"w": jnp.asarray(w), "b": jnp.asarray(b)}, x


def _directions(key, shape, n):
    return np.stack([np.asarray(jax.random.normal(k, shape, jnp.float32))
                     for k in jax.random.split(key, n)]).reshape(n, shape[0], -1).astype(np.float64)


def _within(got, want, mag, what):
    err = np.abs(np.asarray(got, np.float64) - want)
    worst = np.max(err - SLACK * GAMMA * mag)
    assert worst <= 0, f"{what}: off by {worst:.3g} beyond the float32 bound (error {err.max():.3g})"


def test_lipschitz_on_a_linear_model_is_the_closed_form():
    """f(x) = x W + b: J v = v W, so the value is sum_b mean_k ||v_kb W|| / ||v_kb|| and the
    gradient in W is sum_b mean_k v_kb^T (v_kb W) / (||v_kb W|| ||v_kb||)."""
    apply, params, x = _linear()
    key = jax.random.key(3)
    val, grads = jax.jit(jax.value_and_grad(
        lambda p: O.lipschitz(apply, p, jnp.asarray(x), key, num_samples=N)))(params)
    v = _directions(key, x.shape, N)  # (N, B, D)
    w = np.asarray(params["w"], np.float64)
    vw, vn = v @ w, np.linalg.norm(v, axis=-1)
    vwn = np.linalg.norm(vw, axis=-1)
    want = (vwn / vn).sum(1).mean()
    mag_vw = np.linalg.norm(np.abs(v) @ np.abs(w), axis=-1)
    _within(val, want, (mag_vw / vn).sum(1).mean(), "value")
    g = np.einsum("kbd,kbc->dc", v, vw / (vwn * vn)[..., None]) / N
    kappa = (mag_vw / vwn)[..., None]  # the relative error of ||vW|| enters once more
    gmag = np.einsum("kbd,kbc->dc", np.abs(v), (np.abs(v) @ np.abs(w)) * (1 + kappa)
                     / (vwn * vn)[..., None]) / N
    _within(grads["w"], g, gmag, "d/dW")
    np.testing.assert_array_equal(np.asarray(grads["b"]), np.zeros(C))  # J does not depend on b


def _jacobians(apply, params, x):
    """(B, C, D): every sample's input Jacobian, by reverse mode per sample (not jvp)."""
    def one(xi):
        return jax.jacrev(lambda z: apply(params, z[None])[0])(xi).reshape(C, -1)

    return np.asarray(jax.jit(jax.vmap(one))(jnp.asarray(x)), np.float64)


def _mlp():
    from jit_jax import models
    from jit_jax.functional import functionalize

    model = models.create("mlp", C, (3, 4, 1), hidden=8, depth=2)
    fn = functionalize(model)
    x = np.random.default_rng(1).standard_normal((B, 3, 4, 1)).astype(np.float32)
    return fn.apply_fn, fn.params, x


@pytest.mark.parametrize("reduction", ["sum", "mean"])
def test_lipschitz_matches_the_explicit_jacobian_with_a_mask(reduction):
    apply, params, x = _mlp()
    key = jax.random.key(4)
    mask = jnp.asarray([1, 1, 0, 1, 0], jnp.float32)
    got = jax.jit(lambda x: O.lipschitz(apply, params, x, key, mask=mask, num_samples=N,
                                        reduction=reduction))(jnp.asarray(x))
    jac = _jacobians(apply, params, x)
    v = _directions(key, x.shape, N)
    jv = np.einsum("bcd,kbd->kbc", jac, v)
    ratio = np.linalg.norm(jv, axis=-1) / np.linalg.norm(v, axis=-1)
    m = np.asarray(mask, bool)
    want = ratio[:, m].sum(1).mean() / (m.sum() if reduction == "mean" else 1)
    mag = (np.linalg.norm(np.einsum("bcd,kbd->kbc", np.abs(jac), np.abs(v)), axis=-1)
           / np.linalg.norm(v, axis=-1))[:, m].sum(1).mean() * 4  # jac itself: a few layers' error
    _within(got, want, mag / (m.sum() if reduction == "mean" else 1), "lipschitz")


def test_jacobian_fro_is_hutchinson_and_unbiased():
    apply, params, x = _mlp()
    jac = _jacobians(apply, params, x)
    key = jax.random.key(5)
    got = jax.jit(lambda x: O.jacobian_fro(apply, params, x, key, num_samples=N))(jnp.asarray(x))
    v = _directions(key, x.shape, N)
    jv = np.einsum("bcd,kbd->kbc", jac, v)
    mag = (np.einsum("bcd,kbd->kbc", np.abs(jac), np.abs(v)) ** 2).sum(-1).sum(1).mean() * 8
    _within(got, (jv ** 2).sum(-1).sum(1).mean(), mag, "Hutchinson with these directions")
    # unbiased: many directions approach sum_b ||J_b||_F^2; the estimator's variance for Gaussian
    # directions is 2 sum_b ||J_b^T J_b||_F^2 per draw, so 4000 draws sit within 5 standard errors
    many = 4000
    est = float(jax.jit(lambda x: O.jacobian_fro(apply, params, x, jax.random.key(6),
                                                 num_samples=many))(jnp.asarray(x)))
    exact = float((jac ** 2).sum())
    se = np.sqrt(2 * sum(np.sum((j.T @ j) ** 2) for j in jac) / many)
    assert abs(est - exact) <= 5 * se, (est, exact, se)


def test_unknown_options_and_bad_values():
    with pytest.raises(ValueError, match=r"unknown option\(s\) \['sigma'\] for objective "
                                         r"'lipschitz'; accepted: \['num_samples', 'reduction'\]"):
        O.value_and_grad("lipschitz", sigma=1.0)
    with pytest.raises(ValueError, match="num_samples=0"):
        O.value_and_grad("jacobian_fro", num_samples=0)
    apply, params, x = _mlp()
    with pytest.raises(ValueError, match="reduction must be 'sum' or 'mean', got 'max'"):
        O.lipschitz(apply, params, jnp.asarray(x), jax.random.key(0), reduction="max")


def test_objective_methods_run_in_the_update_loop(digits_class3_request):
    """As registered methods: zero-shot, the objective on the forget set goes down over a pass,
    the source model is untouched, and a wrong --set name is an error naming the accepted ones."""
    from jit_jax import unlearn
    from jit_jax.functional import functionalize

    req = digits_class3_request
    model, split = req.model, req.split
    xf = jnp.asarray(req.forget_inputs())
    before = jax.tree.map(np.asarray, functionalize(model).params)
    for name in ("lipschitz", "jacobian_fro"):
        obj = O.OBJECTIVES[name].loss
        out = unlearn.run(name, req, lr=1e-3, passes=2)
        assert out.zero_shot and out.log["config"]["objective"] == name
        assert out.log["num_steps"] == 2 * -(-split.n_forget // out.log["batch_size"])

        def value(m, obj=obj):
            return float(obj(functionalize(m).apply_fn, functionalize(m).params, xf,
                             jax.random.key(9), num_samples=64, reduction="mean"))

        assert value(out.model) < value(model), name
    jax.tree.map(np.testing.assert_array_equal, before,
                 jax.tree.map(np.asarray, functionalize(model).params))
    with pytest.raises(ValueError, match=r"unknown option\(s\) \['sigma'\] for method "
                                         r"'lipschitz'; accepted: \['batch_size', 'lr'"):
        unlearn.run("lipschitz", req, sigma=0.5)


# ------------------------------------------------------------------------------------------------
# Objectives that read labels and the original model's logits, against a loop in float64
# ------------------------------------------------------------------------------------------------
def _log_softmax64(z):
    z = np.asarray(z, np.float64)
    m = z.max(-1, keepdims=True)
    return z - m - np.log(np.exp(z - m).sum(-1, keepdims=True))


def _softplus64(t):
    return np.log1p(np.exp(-abs(t))) + max(t, 0.0)


def _preference_reference(name, logits, ref_logits, labels, mask, beta):
    """The per-sample losses of ga/npo/dpo/idkpo written out sample by sample, averaged over the
    unmasked rows."""
    lp, lr = _log_softmax64(logits), _log_softmax64(ref_logits)
    vals = []
    for i, y in enumerate(labels):
        if not mask[i]:
            continue
        if name == "ga":
            v = lp[i, y]
        elif name == "npo":
            v = 2.0 / beta * _softplus64(beta * (lp[i, y] - lr[i, y]))
        else:
            if name == "dpo":
                alt = max((c for c in range(logits.shape[1]) if c != y),
                          key=lambda c: ref_logits[i, c])
                win, win_ref = lp[i, alt], lr[i, alt]
            else:  # idkpo: the uniform answer's log-likelihood, the mean log-probability
                win, win_ref = lp[i].mean(), lr[i].mean()
            v = _softplus64(-beta * ((win - win_ref) - (lp[i, y] - lr[i, y])))
        vals.append(v)
    return float(np.mean(vals))


@pytest.mark.parametrize("name", ["ga", "npo", "dpo", "idkpo"])
def test_label_objectives_match_a_per_sample_loop(name):
    """Each value equals the loop above on a linear model, with a padded row masked out. Bound:
    the logits are D-term dot products (error <= gamma_D * M per logit, M = |x| |W| + |b|); the
    log-softmax, differences and softplus add a few roundings, each Lipschitz <= 2/beta in the
    logits: |error| <= SLACK * (2 + 2/beta) * (gamma_D * M + C * U) per sample."""
    apply, params, x = _linear()
    rng = np.random.default_rng(1)
    labels = rng.integers(0, C, B).astype(np.int32)
    ref_logits = rng.standard_normal((B, C)).astype(np.float32) * 3
    mask = np.array([1, 1, 1, 1, 0], np.float32)
    beta = 0.5
    obj = O.OBJECTIVES[name]
    reads = {"labels": jnp.asarray(labels), "ref_logits": jnp.asarray(ref_logits)}
    reads = {k: v for k, v in reads.items() if k in obj.needs}
    opts = {"beta": beta} if "beta" in obj.options else {}
    got = float(obj.loss(apply, params, jnp.asarray(x), jax.random.key(0), mask=jnp.asarray(mask),
                         **reads, **opts))
    logits = np.asarray(apply(params, jnp.asarray(x)))
    want = _preference_reference(name, logits, ref_logits, labels, mask, beta)
    xf = np.abs(x.reshape(B, -1).astype(np.float64))
    m = (xf @ np.abs(np.asarray(params["w"], np.float64))).max() + np.abs(params["b"]).max()
    bound = SLACK * (2 + 2 / beta) * (GAMMA * m + C * U)
    assert abs(got - want) <= bound, (name, got, want, bound)


def test_runner_up_is_the_best_class_other_than_the_label():
    ref = jnp.array([[3.0, 1.0, 2.0], [3.0, 1.0, 2.0], [0.0, 5.0, 4.0]])
    np.testing.assert_array_equal(O.runner_up(ref, jnp.array([0, 2, 0])), [2, 0, 1])


def _f64(tree):
    return jax.tree.map(lambda a: jnp.asarray(np.asarray(a, np.float64)), tree)


# float64 comparisons: the objective and its float64 reference differ only in the order of O(10)
# roundings of O(1) quantities (logits of D = 12 terms, a log-softmax over C = 3, a mean over <= 7),
# so they agree to ~1e2 * 2^-53 ~ 1e-14 relative; RTOL64 leaves a factor 1e4 for any CPU's kernels.
# A wrong objective (a sign, a missing alpha, the wrong label) is off by O(1).
RTOL64 = 1e-10


def test_graddiff_is_ascent_on_forget_plus_alpha_descent_on_retain():
    apply, params, x = _linear()
    rng = np.random.default_rng(2)
    y = rng.integers(0, C, B)
    xr = rng.standard_normal((7, 3, 4))
    yr = rng.integers(0, C, 7)
    with jax.enable_x64(True):
        p64, x64, xr64 = _f64(params), jnp.asarray(x, jnp.float64), jnp.asarray(xr)
        got = O.graddiff(apply, p64, x64, jax.random.key(0), labels=jnp.asarray(y),
                         retain_x=xr64, retain_y=jnp.asarray(yr), alpha=0.3)
        assert got.dtype == jnp.float64
        lp = _log_softmax64(apply(p64, x64))
        lpr = _log_softmax64(apply(p64, xr64))
    want = np.mean(lp[np.arange(B), y]) + 0.3 * np.mean(-lpr[np.arange(7), yr])
    assert abs(float(got) - want) <= RTOL64 * (1 + abs(want))


def _tanh_mlp():
    rng = np.random.default_rng(3)
    p = {"w1": jnp.asarray(rng.standard_normal((3, 5)), jnp.float32),
         "w2": jnp.asarray(rng.standard_normal((5, C)), jnp.float32)}

    def apply(pp, xx):
        return jnp.tanh(xx.reshape(xx.shape[0], -1) @ pp["w1"]) @ pp["w2"]

    return apply, p, rng.standard_normal((4, 3)).astype(np.float32), rng.integers(0, C, 4)


def test_input_hvps_are_each_samples_hessian_times_its_probe():
    """The batched jvp-of-grad gives H_i v_i with H_i the explicit (jax.hessian) Hessian of
    log p(y_i | x_i) for that sample alone; with all 2^3 sign vectors as probes the Hutchinson mean
    is ||H_i||_F^2 exactly (sum_v v v^T = 8 I). In float64: the two routes are different orders of
    O(10) roundings through a 3-5-3 tanh network (RTOL64 above), entries near 0 measured against the
    Hessian's largest."""
    apply, p, x, y = _tanh_mlp()
    signs = np.array([[a, b, c] for a in (-1, 1) for b in (-1, 1) for c in (-1, 1)], np.float64)
    probes = np.stack([np.stack([s] * len(x)) for s in signs])  # (8, B, 3)
    probes = probes * np.array([1, -1, 1, -1], np.float64)[None, :, None]  # differ per sample
    with jax.enable_x64(True):
        p64, x64 = _f64(p), jnp.asarray(x, jnp.float64)
        hv = O.input_hvps(apply, p64, x64, jnp.asarray(y), jnp.asarray(probes))
        assert hv.dtype == jnp.float64
        hv = np.asarray(hv)
        hs = []
        for i in range(len(x)):
            def f(xi, i=i):
                return jax.nn.log_softmax(apply(p64, xi[None]))[0, y[i]]

            hs.append(np.asarray(jax.hessian(f)(x64[i])))
    fro = []
    for i, h in enumerate(hs):
        scale = np.abs(h).max()
        np.testing.assert_allclose(hv[:, i], probes[:, i] @ h.T, rtol=RTOL64, atol=RTOL64 * scale)
        fro.append(np.sum(h * h))
    sq = np.mean(np.sum(hv * hv, -1), 0)
    np.testing.assert_allclose(sq, fro, rtol=RTOL64)
    with jax.enable_x64(True):
        got = O.curvature(apply, p64, x64, jax.random.key(0), labels=jnp.asarray(y),
                          num_probes=4096, reduction="mean")
    # Rademacher Hutchinson: the variance of ||H v||^2 per probe is 2 (||H^2||_F^2 - sum_j
    # (H^2)_jj^2) <= 2 ||H||_F^4, so 4096 probes put each sample's mean, and so the mean over
    # samples, within 5 standard errors sqrt(2 max ||H||_F^4 / 4096) of ||H||_F^2 (doubled: slack)
    off = 2 * np.sqrt(2 * np.max(fro) ** 2 / 4096) * 5
    assert abs(float(got) - np.mean(fro)) <= off


def test_jit_curvature_is_jits_loss_plus_lam_curvature():
    from jit_jax.unlearn.jit import jit_loss

    apply, p, x, y = _tanh_mlp()
    key = jax.random.key(4)
    k_jit, k_curv = jax.random.split(key)
    got = O.jit_curvature(apply, p, jnp.asarray(x), key, labels=jnp.asarray(y), sigma=0.3,
                          num_samples=5, lam=0.7)
    want = (jit_loss(apply, p, jnp.asarray(x), k_jit, sigma=0.3, num_samples=5)
            + 0.7 * O.curvature(apply, p, jnp.asarray(x), k_curv, labels=jnp.asarray(y)))
    np.testing.assert_allclose(float(got), float(want), rtol=1e-6)


def test_objectives_missing_inputs_and_bad_options():
    apply, params, x = _linear()
    vg = O.value_and_grad("npo")
    with pytest.raises(ValueError, match=r"objective 'npo' needs \['labels', 'ref_logits'\]"):
        vg(apply, params, jnp.asarray(x), jax.random.key(0), mask=None, forward_keys=False,
           aux={})
    with pytest.raises(ValueError, match=r"beta=0.0; accepted: a number > 0"):
        O.value_and_grad("dpo", beta=0.0)
    with pytest.raises(ValueError, match=r"num_probes=0; accepted: an integer >= 1"):
        O.value_and_grad("curvature", num_probes=0)
