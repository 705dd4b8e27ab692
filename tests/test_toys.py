"""The toy experiments of jit_jax.toys: Figure 2 (at the shipped settings), Figure 3,
leave-one-out."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jit_jax import toys


@pytest.fixture(scope="module")
def boundary():
    """Figure 2 at the shipped settings (toys.BoundaryConfig())."""
    return toys.boundary_experiment(toys.BoundaryConfig())


def test_boundary_forget_points(boundary):
    lo, hi = boundary["points"]["low"], boundary["points"]["high"]
    assert lo["grad_norm"] < 1e-6 < 1.0 < hi["grad_norm"]
    # removing the low-gradient point changes almost nothing; the high-gradient one much more
    assert lo["moved"]["retrained"] < 0.5 < 2.0 < hi["moved"]["retrained"]
    for pt in (lo, hi):  # both mislabel baselines do mislabel the point
        assert pt["p_true"]["mislabel"] < 0.5 and pt["p_true"]["mislabel_gentle"] < 0.5
        assert pt["agreement"]["retrained"] == 100.0 and pt["moved"]["original"] == 0.0


@pytest.mark.parametrize("baseline", ["mislabel", "mislabel_gentle"])
def test_boundary_jit_beats_mislabel_low_point(boundary, baseline):
    lo = boundary["points"]["low"]
    assert lo["agreement"]["jit"] > lo["agreement"][baseline] + 1.0


def test_boundary_jit_beats_naive_mislabel_high_point(boundary):
    """The paper's baseline (a fixed budget of steps on the flipped label) at the high point."""
    hi = boundary["points"]["high"]
    assert hi["agreement"]["jit"] > hi["agreement"]["mislabel"]


@pytest.mark.xfail(strict=True, reason=(
    "measured tie with the gentle baseline (stops once the point is mislabelled) at the "
    "high-gradient point: JiT 96.28-96.35% over 5 noise seeds (96.30% at the shipped seed) against "
    "96.30%; see docs/toys.md"))
def test_boundary_jit_beats_gentle_mislabel_high_point(boundary):
    hi = boundary["points"]["high"]
    assert hi["agreement"]["jit"] > hi["agreement"]["mislabel_gentle"]


def test_boundary_jit_moves_more_for_high_gradient_point(boundary):
    lo, hi = boundary["points"]["low"], boundary["points"]["high"]
    assert hi["moved"]["jit"] > lo["moved"]["jit"]
    # and JiT unlearns the high-gradient point, as retraining does
    assert hi["p_true"]["jit"] < 0.5 and hi["p_true"]["retrained"] < 0.5


@pytest.mark.parametrize("stop_gradient", [True, False])
def test_sigmoid_flat_vs_steep(stop_gradient):
    cfg = toys.SigmoidConfig(train_steps=500, jit_seeds=(0, 1), stop_gradient=stop_gradient)
    res = toys.sigmoid_experiment(cfg)
    flat, steep = res["flat"], res["steep"]
    assert flat["slope"] < 1e-3 < 0.3 < steep["slope"]
    for k in range(len(cfg.jit_seeds)):
        assert flat["max_change"][k] < 1e-3
        assert steep["max_change"][k] > 0.02
        assert steep["max_change"][k] > 100 * flat["max_change"][k]


def test_linear_logit_has_no_jit_signal():
    """With the logits [0, w x + b] the JiT loss is |w| whatever the noise: its value does not
    depend on the draws (hence the sigmoid output in Figure 3)."""
    from jit_jax.unlearn.jit import jit_loss

    # float64: each ratio |w (x - x~) + e| / |x - x~|, e the rounding of the logits (<= 4u of
    # |w x| + |b| ~ 3), so rel err <= 12u / (1.7 |x - x~|), < 1e-12 unless a draw has
    # |x - x~| < 1e-3 (none of these 48): 1e-10 asserted
    with jax.enable_x64(True):
        params = {"w": jnp.asarray(1.7, jnp.float64), "b": jnp.asarray(-0.3, jnp.float64)}
        x = jnp.array([[0.2], [1.5]], jnp.float64)
        for seed in range(3):
            loss = jit_loss(toys.logistic_logits, params, x, jax.random.key(seed), sigma=0.5,
                            num_samples=8, clip=False)
            assert loss.dtype == jnp.float64
            np.testing.assert_allclose(loss, 2 * 1.7, rtol=1e-10)


def test_leave_one_out_vmap_equals_loop():
    # In float64 (x64 on, data and parameters cast): the three routes (vmapped with 0/1 weights,
    # a subset, a weighted loop) are the same 100 full-batch steps up to the order of the sums
    # (zero-weight terms add exact zeros), u = 2^-53; gradient descent at lr 0.01 on this smooth
    # loss does not blow such differences up beyond ~1e-13: 1e-10 asserted.
    with jax.enable_x64(True):
        _leave_one_out_vmap_equals_loop()


def _leave_one_out_vmap_equals_loop():
    x, y = toys.two_moons(40, noise=0.2, seed=3)
    x = x.astype(np.float64)
    f = toys.mlp_fn("tanh")
    init = jax.tree.map(lambda a: jnp.asarray(a, jnp.float64),
                        toys.init_mlp(jax.random.key(1), (2, 8, 8, 2)))
    idx = np.array([0, 7, 21])
    kw = dict(steps=100, lr=0.01, weight_decay=1e-4)
    stacked = toys.leave_one_out(f, init, x, y, idx, **kw)
    for k, i in enumerate(idx):
        keep = np.arange(len(y)) != i
        subset = toys.train_full_batch(f, init, x[keep], y[keep], **kw)
        weighted = toys.train_full_batch(f, init, x, y, weights=keep.astype(np.float64), **kw)
        for a, b, c in zip(jax.tree.leaves(toys.stack_index(stacked, k)), jax.tree.leaves(subset),
                           jax.tree.leaves(weighted), strict=True):
            assert a.dtype == np.float64
            np.testing.assert_allclose(a, c, rtol=1e-10, atol=1e-10)
            np.testing.assert_allclose(a, b, rtol=1e-10, atol=1e-10)


@pytest.fixture(scope="module")
def learnt_point():
    """A small tanh MLP trained on two moons, and one training point it classifies correctly."""
    x, y = toys.two_moons(40, noise=0.2, seed=3)
    f = toys.mlp_fn("tanh")
    params = toys.train_full_batch(f, toys.init_mlp(jax.random.key(1), (2, 8, 8, 2)), x, y,
                                   steps=200, lr=0.02)
    i = int(np.flatnonzero(toys.predict(f, params, x) == y)[0])
    return f, params, x[i:i + 1], y[i:i + 1]


def test_mislabel_stops_when_mislabelled(learnt_point):
    f, params, xi, yi = learnt_point
    new, steps = toys.mislabel_update(f, params, xi, yi, lr=0.05, max_steps=500)
    assert 0 < int(steps) < 500
    assert toys.predict(f, new, xi)[0] == 1 - yi[0]
    prev, _ = toys.mislabel_update(f, params, xi, yi, lr=0.05, max_steps=int(steps) - 1)
    assert toys.predict(f, prev, xi)[0] == yi[0]


def test_naive_mislabel_takes_its_whole_budget(learnt_point):
    f, params, xi, yi = learnt_point
    early_params, early = toys.mislabel_update(f, params, xi, yi, lr=0.05, max_steps=500)
    new, steps = toys.mislabel_update(f, params, xi, yi, lr=0.05, max_steps=500,
                                      early_stop=False)
    assert int(early) < 500 and int(steps) == 500
    # the extra steps push the point further into the wrong class
    p_new = float(jax.nn.softmax(f(new, xi))[0, yi[0]])
    p_early = float(jax.nn.softmax(f(early_params, xi))[0, yi[0]])
    assert p_new < p_early < 0.5


def test_jit_update_one_step_is_sgd_on_the_loss():
    from jit_jax.unlearn.jit import jit_value_and_grad

    f = toys.mlp_fn("tanh")
    # float64 (x64 on, parameters cast): the jitted update and this one differ by rounding order
    # only, u = 2^-53 through < 100 operations: 1e-10 asserted
    with jax.enable_x64(True):
        params = jax.tree.map(lambda a: jnp.asarray(a, jnp.float64),
                              toys.init_mlp(jax.random.key(0), (2, 4, 2)))
        x = jnp.array([[0.3, -0.2]], jnp.float64)
        key = jax.random.key(5)
        new = toys.jit_update(f, params, x, key, sigma=0.3, lr=0.1, num_samples=4, steps=1)
        _, g = jit_value_and_grad(f, params, x, jax.random.split(key, 1)[0], sigma=0.3,
                                  num_samples=4, clip=False, images_per_forward=None)
    for a, p, gg in zip(jax.tree.leaves(new), jax.tree.leaves(params), jax.tree.leaves(g),
                        strict=True):
        assert a.dtype == np.float64
        np.testing.assert_allclose(a, np.asarray(p) - 0.1 * np.asarray(gg), rtol=1e-10, atol=1e-10)


def test_select_boundary_loss_picks_the_best_validation_score():
    cfg = toys.BoundaryConfig(n=60, train_steps=300, num_samples=16, steps=2, resolution=20)
    setup = toys.boundary_setup(cfg)
    variants = ((1, True), (1, False))
    sel = toys.select_boundary_loss(cfg, variants=variants, jit_seeds=(0, 1), num_val=4,
                                    setup=setup)
    assert set(sel["table"]) == set(variants)
    scores = {k: v["score"] for k, v in sel["table"].items()}
    assert sel["choice"] == max(scores, key=scores.get)
    # each score is tune_boundary's validation agreement at its own choice
    for (p, sg), row in sel["table"].items():
        assert row["score"] == pytest.approx(np.mean(row["agreement"]))
        if (p, sg) != sel["choice"]:  # one variant's grid is rerun (the other's is the same code)
            continue
        tb = toys.tune_boundary(cfg.replace(p=p, stop_gradient=sg, jit_seed=1), num_val=4,
                                sigmas=(row["choice"][1]["sigma"],), lrs=toys.BOUNDARY_LRS[p],
                                mislabel_lrs=(cfg.mislabel_lr,), setup=setup)
        ch = tb["choice"]
        assert {"sigma": ch["sigma"], "lr": ch["lr"]} == row["choice"][1]
        assert tb["jit"][(ch["sigma"], ch["lr"])][0] == pytest.approx(row["agreement"][1])
    with pytest.raises(ValueError, match="p=3"):
        toys.select_boundary_loss(cfg, variants=((3, True),), setup=setup)
    with pytest.raises(ValueError, match="jit_seeds"):
        toys.select_boundary_loss(cfg, jit_seeds=(), setup=setup)


def test_bad_options_fail_early():
    with pytest.raises(ValueError, match="dataset"):
        toys.make_2d("spiral", 10, noise=0.1, seed=0)
    with pytest.raises(ValueError, match="activation"):
        toys.mlp_apply(toys.init_mlp(jax.random.key(0), (2, 2)), jnp.zeros((1, 2)), "sigmoid")
    with pytest.raises(ValueError, match="output"):
        toys.jit_output(toys.mlp_fn(), "entropy")
    with pytest.raises(ValueError, match="optimizer"):
        toys.train_full_batch(toys.mlp_fn(), toys.init_mlp(jax.random.key(0), (2, 2)),
                              np.zeros((2, 2), np.float32), np.zeros(2, np.int32), steps=1,
                              lr=0.1, optimizer="lbfgs")
