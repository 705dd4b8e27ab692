"""JiT's loss and unlearning pass."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from jit_jax.functional import functionalize
from jit_jax.unlearn import jit as J


def mlp_apply(params, x):
    h = jnp.tanh(x.reshape(x.shape[0], -1) @ params["w1"] + params["b1"])
    return h @ params["w2"] + params["b2"]


@pytest.fixture
def setup():
    k = jax.random.split(jax.random.key(0), 4)
    params = {
        "w1": jax.random.normal(k[0], (12, 8)) * 0.5,
        "b1": jnp.zeros(8),
        "w2": jax.random.normal(k[1], (8, 3)) * 0.5,
        "b2": jnp.zeros(3),
    }
    x = jax.random.normal(k[2], (5, 2, 2, 3))
    return params, x, k[3]


# Comparisons of two routes to the same value (jitted or not, a hand loop, autodiff of the loss)
# run in float64 (x64): the routes differ only in the order of their roundings, each a relative
# u = 2^-53; a ratio passes < 50 of them (two contractions of length <= 12, tanh, two norms, a
# division), amplified by at most |out| / |out - out~| < 1e3 here (sigma moves the outputs by O(1)),
# and the loss sums >= 0 ratios, so the routes agree to < 50 * 1e3 * 2^-53 ~ 6e-12 (relative):
RTOL64 = 1e-10


def close64(got, want):
    """Trees equal to RTOL64, entries near 0 measured against the tree's largest entry."""
    scale = max(float(jnp.max(jnp.abs(a))) for a in jax.tree.leaves(want))
    chex.assert_trees_all_close(got, want, rtol=RTOL64, atol=RTOL64 * scale)


@pytest.fixture
def setup64(setup):
    """``setup`` in float64, with x64 on for the test's duration."""
    params, x, key = setup
    with jax.enable_x64(True):
        yield (jax.tree.map(lambda a: jnp.asarray(a, jnp.float64), params),
               jnp.asarray(x, jnp.float64), key)


def loop_reference(params, x, key, *, sigma, n, p=1, clip=True, reduction="sum", mask=None):
    """The formula, written as the authors' loops (numpy, no vmap), with the same draws.

    ``mask`` marks the real samples of a padded batch: only they set the clipping range and
    contribute terms."""
    k_pert, _ = jax.random.split(key)
    keys = jax.random.split(k_pert, n)
    xv = np.asarray(x)
    valid = np.ones(len(xv), bool) if mask is None else np.asarray(mask) > 0
    out = np.asarray(mlp_apply(params, x))
    lo, hi = xv[valid].min(), xv[valid].max()
    total = 0.0
    for j in range(n):
        k_noise, _ = jax.random.split(keys[j])
        xt = xv + sigma * np.asarray(jax.random.normal(k_noise, x.shape))
        if clip:
            xt = np.clip(xt, lo, hi)
        out_t = np.asarray(mlp_apply(params, jnp.asarray(xt)))
        k_j = 0.0
        for i in np.flatnonzero(valid):
            num = np.linalg.norm(out[i] - out_t[i])
            den = np.linalg.norm((xv[i] - xt[i]).ravel())
            k_j += num**p / den**p
        total += k_j / (valid.sum() if reduction == "mean" else 1)
    return total / n


@pytest.mark.parametrize("p", [1, 2])
@pytest.mark.parametrize("clip", [True, False])
@pytest.mark.parametrize("reduction", ["sum", "mean"])
def test_loss_equals_python_loop(setup64, p, clip, reduction):
    params, x, key = setup64
    got = J.jit_loss(mlp_apply, params, x, key, sigma=0.7, num_samples=4, p=p, clip=clip,
                     reduction=reduction)
    want = loop_reference(params, x, key, sigma=0.7, n=4, p=p, clip=clip, reduction=reduction)
    np.testing.assert_allclose(float(got), want, rtol=RTOL64)  # float64: see RTOL64


def test_chunking_does_not_change_the_loss(setup):
    """Chunked draws (``lax.map`` with ``batch_size=k``) give the one-forward result, including the
    remainder path: B = 8 images and N = 25 draws, so 32 images per forward give k = 4 draws per
    chunk, which does not divide 25 (a last partial chunk of 1 draw); None is one forward of all.
    Loss and gradient (stop_gradient=False: the backward pass goes through the chunks too) are
    compared in float64: chunking only regroups the same per-draw computations, and any
    re-association (the sum over 25 draws, contractions of length <= 12) moves a result by
    <= 2 gamma_25 sum|terms| ~ 6e-15 of the terms' magnitude (u = 2^-53), far below 1e-12."""
    params, _, key = setup
    with jax.enable_x64(True):
        params = jax.tree.map(lambda a: jnp.asarray(a, jnp.float64), params)
        x = jax.random.normal(jax.random.key(11), (8, 2, 2, 3), jnp.float64)

        def value_and_grad(ipf):
            return jax.jit(lambda p, xx, k: J.jit_value_and_grad(
                mlp_apply, p, xx, k, sigma=0.5, num_samples=25, stop_gradient=False,
                images_per_forward=ipf))(params, x, key)

        v_ref, g_ref = value_and_grad(None)
        scale = max(float(jnp.max(jnp.abs(a))) for a in jax.tree.leaves(g_ref))
        assert J.draws_per_forward(8, 25, 32) == 4 and 25 % 4
        v, g = value_and_grad(32)
        np.testing.assert_allclose(float(v), float(v_ref), rtol=1e-12)
        chex.assert_trees_all_close(g, g_ref, rtol=1e-12, atol=1e-12 * scale)


def test_draws_per_forward():
    assert J.draws_per_forward(1, 25, 32) == 25
    assert J.draws_per_forward(8, 25, 32) == 4
    assert J.draws_per_forward(32, 25, 32) == 1
    assert J.draws_per_forward(128, 25, 32) == 1
    assert J.draws_per_forward(8, 25, None) == 25


class TestVariants(chex.TestCase):
    @chex.variants(with_jit=True, without_jit=True)
    def test_jitted_and_not_agree(self):
        with jax.enable_x64(True):  # float64: see RTOL64
            k = jax.random.split(jax.random.key(1), 3)
            f64 = jnp.float64
            params = {"w1": jax.random.normal(k[0], (12, 8), f64), "b1": jnp.zeros(8, f64),
                      "w2": jax.random.normal(k[1], (8, 3), f64), "b2": jnp.zeros(3, f64)}
            x = jax.random.normal(k[2], (4, 2, 2, 3), f64)

            def f(prm, xx, key):
                return J.jit_value_and_grad(mlp_apply, prm, xx, key, sigma=0.5, num_samples=3)

            loss, grads = self.variant(f)(params, x, jax.random.key(3))
            want = loop_reference(params, x, jax.random.key(3), sigma=0.5, n=3)
            np.testing.assert_allclose(float(loss), want, rtol=RTOL64)
            _, ref_grads = f(params, x, jax.random.key(3))
            close64(grads, ref_grads)


def test_value_and_grad_matches_autodiff_of_loss(setup64):
    params, x, key = setup64  # float64: see RTOL64
    kw = dict(sigma=0.5, num_samples=4)
    v1, g1 = J.jit_value_and_grad(mlp_apply, params, x, key, **kw)
    v2, g2 = jax.value_and_grad(lambda p: J.jit_loss(mlp_apply, p, x, key, **kw))(params)
    np.testing.assert_allclose(float(v1), float(v2), rtol=RTOL64)
    close64(g1, g2)


def test_stop_gradient_blocks_the_perturbed_branch(setup64):
    params, x, key = setup64  # float64: see RTOL64
    kw = dict(sigma=0.5, num_samples=4)
    k_pert, _ = jax.random.split(key)
    out_t, dx = J.perturbed_outputs(mlp_apply, params, x, k_pert, sigma=0.5, num_samples=4)
    # Gradient of the clean branch alone, with the perturbed outputs as constants.
    g_clean = jax.grad(lambda p: J.loss_from_outputs(mlp_apply(p, x), out_t, dx))(params)
    g_sg = jax.grad(lambda p: J.jit_loss(mlp_apply, p, x, key, stop_gradient=True, **kw))(params)
    close64(g_sg, g_clean)
    # Without stop-gradient the perturbed branch contributes, so the gradient differs.
    g_full = jax.grad(lambda p: J.jit_loss(mlp_apply, p, x, key, stop_gradient=False, **kw))(params)
    assert float(optax.tree.norm(jax.tree.map(jnp.subtract, g_full, g_sg))) > 1e-3
    _, g_vg = J.jit_value_and_grad(mlp_apply, params, x, key, stop_gradient=False, **kw)
    close64(g_vg, g_full)


def test_backward_pass_sees_only_clean_images(setup):
    """With stop-gradient the differentiated function's forward runs on the B clean images only."""
    params, x, key = setup
    shapes = []

    def recording_apply(p, xx):
        shapes.append(xx.shape)
        return mlp_apply(p, xx)

    J.jit_value_and_grad(recording_apply, params, x, key, sigma=0.5, num_samples=4)
    # Two traces: the perturbed forward (vmapped, traced once) and the clean forward.
    assert shapes.count(x.shape) == 2
    jaxpr = jax.make_jaxpr(jax.grad(lambda p: J.loss_from_outputs(
        mlp_apply(p, x), jnp.zeros((4, 5, 3)), jnp.ones((4, 5)))))(params)
    assert "while" not in str(jaxpr)  # the gradient holds no loop over draws


def test_collapsed_model_gives_zero_gradient_not_nan(setup):
    _, x, key = setup
    const = {"w1": jnp.zeros((12, 8)), "b1": jnp.zeros(8), "w2": jnp.zeros((8, 3)),
             "b2": jnp.ones(3)}
    loss, grads = J.jit_value_and_grad(mlp_apply, const, x, key, sigma=0.5, num_samples=3)
    assert float(loss) == 0.0
    for g in jax.tree.leaves(grads):
        assert np.all(np.isfinite(np.asarray(g)))
        np.testing.assert_array_equal(np.asarray(g), 0.0)


def test_zero_perturbation_contributes_zero(setup):
    params, x, key = setup
    loss, grads = J.jit_value_and_grad(mlp_apply, params, x, key, sigma=0.0, num_samples=2)
    assert float(loss) == 0.0
    assert all(np.all(np.isfinite(np.asarray(g))) for g in jax.tree.leaves(grads))


def test_clip_to_batch_global_range(setup):
    _, x, key = setup
    xt = J.perturb(key, x, 5.0, clip=True)
    assert float(xt.min()) >= float(x.min()) and float(xt.max()) <= float(x.max())  # clip: exact
    xu = J.perturb(key, x, 5.0, clip=False)
    assert float(xu.max()) > float(x.max())


def test_mask_equals_unpadded_batch(setup):
    """A batch padded with masked rows (100x the first row: far outside the real rows' range, so a
    leak into the clipping range or the sums would show) gives the unpadded batch's loss and SGD
    update (the jitted training step; update = -lr * gradient). The real rows get the same draws
    in both: with partitionable threefry (pinned here) a normal draw of shape (5, ...) starts with
    the draw of shape (3, ...). Compared in float64, where the two differ only in the association
    of sums (the masked rows add exact zeros): |err| <= 2 gamma_n sum|terms| with n <= 15 terms,
    u = 2^-53, i.e. ~3e-15 of the terms' magnitude, far below the 1e-12 used."""
    params, x, key = setup
    with jax.enable_x64(True), jax.threefry_partitionable(True):
        params = jax.tree.map(lambda a: jnp.asarray(a, jnp.float64), params)
        x = jnp.asarray(x, jnp.float64)[:3]
        xp = jnp.concatenate([x, jnp.broadcast_to(x[:1] * 100, (2,) + x.shape[1:])])
        mask = jnp.array([1.0, 1, 1, 0, 0])
        tx = optax.sgd(0.1)

        def run(step, xb, mb):  # (loss, update) of one step; fresh buffers: the step donates
            fresh = jax.tree.map(jnp.copy, params)
            new, _, _, loss = step(fresh, tx.init(params), jax.tree.map(jnp.zeros_like, params),
                                   xb, mb, key)
            return float(loss), jax.tree.map(jnp.subtract, new, params)

        # "mean": the mask also sets the divisor (3 real rows, not 5)
        cfg = J.JiTConfig(lr=0.1, sigma=0.5, num_samples=3, reduction="mean")
        step = J.make_step(mlp_apply, tx, cfg, False, False)
        v_ref, d_ref = run(step, x, jnp.ones(3))
        v, d = run(step, xp, mask)
        np.testing.assert_allclose(v, v_ref, rtol=1e-12)
        scale = max(float(jnp.max(jnp.abs(a))) for a in jax.tree.leaves(d_ref))
        chex.assert_trees_all_close(d, d_ref, rtol=1e-12, atol=1e-12 * scale)
        assert scale > 1e-4  # a real update
        # Without the mask the padding rows change the result: the comparison can fail.
        v_all, _ = run(step, xp, jnp.ones(5))
        assert abs(v_all - v_ref) > 1e-3 * v_ref


def test_compiles_once_for_repeated_calls(setup):
    params, x, key = setup
    chex.clear_trace_counter()

    @jax.jit
    @chex.assert_max_traces(n=1)
    def step(prm, xx, k):
        return J.jit_value_and_grad(mlp_apply, prm, xx, k, sigma=0.5, num_samples=3)

    for i in range(4):
        step(params, x + i, jax.random.key(i))


# ------------------------------------------------------------------------------------------------
# The unlearning pass on NNX models
# ------------------------------------------------------------------------------------------------
class BNNet(nnx.Module):
    def __init__(self, rngs=None):
        rngs = rngs or nnx.Rngs(0, dropout=1)
        self.conv = nnx.Conv(1, 4, (3, 3), rngs=rngs)
        self.bn = nnx.BatchNorm(4, rngs=rngs)
        self.drop = nnx.Dropout(0.5, rngs=rngs)
        self.head = nnx.Linear(4, 3, rngs=rngs)

    def __call__(self, x):
        h = nnx.relu(self.bn(self.conv(x)))
        return self.head(self.drop(h.mean((1, 2))))


def _forget(n=10):
    return np.array(jax.random.normal(jax.random.key(5), (n, 6, 6, 1)), np.float32)


def test_unlearn_raises_when_the_last_update_overflows():
    """The loss of a step is computed before its update: a finite loss can still be followed by
    non-finite parameters. One batch (one step) with an lr at float32's limit and inputs scaled
    up (gradients well above 1) overflows them."""
    model = BNNet()
    lr = float(np.finfo(np.float32).max)
    xf = _forget(4) * 100
    with pytest.raises(FloatingPointError, match=r"JiT diverged: after step 0 .*NaN or inf"):
        J.jit_unlearn(model, xf, J.JiTConfig(sigma=0.5, lr=lr, batch_size=4, num_samples=2))
    # a sane lr on the same input passes the check
    J.jit_unlearn(model, xf, J.JiTConfig(sigma=0.5, lr=1e-3, batch_size=4, num_samples=2))


def test_unlearn_leaves_source_and_batchnorm_stats_untouched():
    model = BNNet()
    before = jax.tree.map(np.asarray, nnx.state(model, nnx.Param, nnx.BatchStat))
    new, log = J.jit_unlearn(model, _forget(), J.JiTConfig(sigma=0.5, lr=1e-2, batch_size=4,
                                                          num_samples=3))
    chex.assert_trees_all_equal(
        jax.tree.map(np.asarray, nnx.state(model, nnx.Param, nnx.BatchStat)), before)
    np.testing.assert_array_equal(new.bn.mean[...], model.bn.mean[...])
    np.testing.assert_array_equal(new.bn.var[...], model.bn.var[...])
    assert not np.allclose(new.head.kernel[...], model.head.kernel[...])
    assert log.num_steps == 3 and log.batch_size == 4 and len(log.losses) == 3
    assert log.runtime > 0 and log.compile_time > 0
    # The unlearned model is in eval mode: deterministic.
    x = jnp.asarray(_forget(2))
    np.testing.assert_array_equal(new(x), new(x))


def _replay(model, xf, cfg, *, train, accumulate):
    """jit_unlearn's pass replayed with its own step program (``make_step``, plain SGD): the same
    compiled computation on the same inputs, so the result must match bit for bit."""
    fn = functionalize(model, train=train)
    tx = optax.sgd(cfg.lr)
    step = J.make_step(fn.apply_fn, tx, cfg, train, accumulate)
    params = jax.tree.map(jnp.copy, fn.params)
    opt_state, acc = tx.init(params), jax.tree.map(jnp.zeros_like, params)
    key = jax.random.key(cfg.seed)
    for s in range(0, len(xf), cfg.batch_size):
        key, sub = jax.random.split(key)
        xb = jnp.asarray(xf[s:s + cfg.batch_size])
        params, opt_state, acc, _ = step(params, opt_state, acc, xb, jnp.ones(len(xb)), sub)
    return params


def test_unlearn_is_one_sgd_step_per_batch():
    """jit_unlearn = one SGD step of ``make_step`` per batch, with the keys split from the seed in
    order and an all-ones mask: equal bit for bit to the replay (same program, same inputs; the
    step's own maths is checked against the formula in float64 by the tests above)."""
    model = BNNet()
    xf = _forget(8)
    cfg = J.JiTConfig(sigma=0.5, lr=0.05, batch_size=4, num_samples=3, seed=7)
    new, log = J.jit_unlearn(model, xf, cfg)
    assert log.num_steps == 2
    chex.assert_trees_all_equal(nnx.state(new, nnx.Param),
                                _replay(model, xf, cfg, train=False, accumulate=False))


@pytest.mark.slow  # ~14 s; test_accumulating_step_applies_the_running_sum is the fast one
def test_reference_quirks_accumulate_gradients():
    """Authors' code never zeroes .grad: with plain SGD, step k applies g_1 + ... + g_k. The pass
    is jit_unlearn's accumulating step replayed in train mode with forward keys (bit for bit, as
    above); that this step applies the running sum is checked in float64 below."""
    model = BNNet()
    xf = _forget(8)
    base = dict(sigma=0.5, lr=0.05, batch_size=4, num_samples=2, seed=3, train_mode=True)
    plain, _ = J.jit_unlearn(model, xf, J.JiTConfig(**base))
    quirky, _ = J.jit_unlearn(model, xf, J.JiTConfig(**base, reference_quirks=True))
    p0 = np.asarray(model.head.bias[...])
    d_plain = np.asarray(plain.head.bias[...]) - p0
    d_quirk = np.asarray(quirky.head.bias[...]) - p0
    assert not np.allclose(d_plain, d_quirk)
    cfg = J.JiTConfig(**base, reference_quirks=True)
    chex.assert_trees_all_equal(nnx.state(quirky, nnx.Param),
                                _replay(model, xf, cfg, train=True, accumulate=True))


def test_accumulating_step_applies_the_running_sum(setup64):
    """make_step(accumulate=True): step k applies lr * (g_1 + ... + g_k), each g_i the gradient at
    the step's own parameters and key (float64: see RTOL64)."""
    params, x, key = setup64
    cfg = J.JiTConfig(sigma=0.5, lr=0.05, num_samples=3)
    tx = optax.sgd(0.05)
    step = J.make_step(mlp_apply, tx, cfg, False, True)
    p, opt_state = jax.tree.map(jnp.copy, params), tx.init(params)
    acc = jax.tree.map(jnp.zeros_like, params)
    hand, total = params, jax.tree.map(jnp.zeros_like, params)
    for k, xb in zip(jax.random.split(key, 2), (x[:3], x[2:]), strict=True):
        p, opt_state, acc, _ = step(p, opt_state, acc, xb, jnp.ones(len(xb)), k)
        _, g = J.jit_value_and_grad(mlp_apply, hand, xb, k, sigma=0.5, num_samples=3,
                                    mask=jnp.ones(len(xb)))
        total = jax.tree.map(jnp.add, total, g)
        hand = jax.tree.map(lambda a, t: a - 0.05 * t, hand, total)
    close64(p, hand)


def test_custom_optimizer_and_padding():
    model = BNNet()
    new, log = J.jit_unlearn(model, _forget(5), J.JiTConfig(batch_size=4, num_samples=2),
                             optimizer=optax.adam(1e-3))
    assert log.num_steps == 2
    assert all(np.isfinite(log.losses))


@pytest.mark.parametrize("bad", [dict(sigma=-1.0), dict(lr=0.0), dict(p=3), dict(reduction="max"),
                                 dict(batch_size=0), dict(num_samples=0),
                                 dict(images_per_forward=0), dict(images_per_forward="fast"),
                                 dict(images_per_forward=2.5)])
def test_config_errors(bad):
    with pytest.raises(ValueError, match=list(bad)[0]):
        J.JiTConfig(**bad)


def test_images_per_forward_auto_is_backend_aware():
    assert J.JiTConfig().images_per_forward == "auto"
    assert J.resolve_images_per_forward("auto", "cpu") == 32
    assert J.resolve_images_per_forward("auto", "gpu") == 1024
    assert J.resolve_images_per_forward("auto", "tpu") == 1024
    assert J.resolve_images_per_forward("auto") == (32 if jax.default_backend() == "cpu" else 1024)
    assert J.resolve_images_per_forward(None) is None
    assert J.resolve_images_per_forward(7) == 7
    assert J.resolve_images_per_forward(np.int64(16)) == 16
    assert J.JiTConfig(images_per_forward=np.int64(16)).images_per_forward == 16
    for bad in (0, "fast", True, 2.5):
        with pytest.raises(ValueError, match="images_per_forward"):
            J.resolve_images_per_forward(bad)


def test_auto_default_runs_the_resolved_chunking():
    """The default step is the one with the resolved chunk size: the same parameters, bit for bit,
    and on CPU a different program from one forward of all draws (chunks of 32 images)."""
    model = BNNet()
    xf = _forget(8)
    base = dict(sigma=0.5, lr=0.05, batch_size=8, num_samples=12, seed=1)
    auto, _ = J.jit_unlearn(model, xf, J.JiTConfig(**base))
    explicit, _ = J.jit_unlearn(model, xf, J.JiTConfig(
        **base, images_per_forward=J.resolve_images_per_forward("auto")))
    chex.assert_trees_all_equal(nnx.state(auto, nnx.Param), nnx.state(explicit, nnx.Param))
    fn = functionalize(model)
    cfg = J.JiTConfig(**base)
    step = J.make_step(fn.apply_fn, optax.sgd(0.05), cfg, False, False)
    args = (fn.params, optax.sgd(0.05).init(fn.params), fn.params, jnp.asarray(xf),
            jnp.ones(8), jax.random.key(0))
    hlo = step.lower(*args).as_text()
    one = J.make_step(fn.apply_fn, optax.sgd(0.05), cfg.replace(images_per_forward=None),
                      False, False).lower(*args).as_text()
    if jax.default_backend() == "cpu":  # 32 // 8 = 4 draws per forward: a loop over chunks
        assert hlo != one and "while" in hlo


def test_input_errors():
    model = BNNet()
    with pytest.raises(ValueError, match="empty"):
        J.jit_unlearn(model, np.zeros((0, 6, 6, 1), np.float32))
    bad = _forget(3)
    bad[1, 0, 0, 0] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        J.jit_unlearn(model, bad)
    with pytest.raises(ValueError, match="unknown JiT option"):
        J.JiTConfig().replace(sigmaa=1.0)


def test_presets_are_the_authors():
    assert J.preset("class", "vgg11_torchvision") == J.JiTConfig(sigma=0.5, lr=3e-4, batch_size=128)
    assert J.preset("random", "vit_b16").sigma == 0.5
    with pytest.raises(ValueError, match="unknown task"):
        J.preset("nope", "vit")
