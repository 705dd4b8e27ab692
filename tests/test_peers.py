"""The paper's comparison methods (jit_jax/unlearn/: finetune.py, ssd.py, distill.py, boundary.py,
noise.py, gkt.py): their parts against hand-written formulas, and each method end to end through
the registry on a tiny problem."""

import dataclasses

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from jit_jax import unlearn
from jit_jax.data import Dataset, forget_class, forget_random
from jit_jax.functional import functionalize
from jit_jax.models import ModelSpec
from jit_jax.train import TrainConfig, cross_entropy, train
from jit_jax.unlearn import boundary, distill, finetune, gkt, noise, ssd

# Rounding. float32: u = 2^-24. Comparisons of a jax formula with a numpy reference run in float64
# (x64 on, float64 inputs): both then round at u = 2^-53 only, through < 100 operations of these
# small, well-conditioned formulas (softmax, KL, norms), so they agree far below RTOL64.
U32 = 2.0**-24
RTOL64 = 1e-10


def _gamma(n, u=U32):
    return n * u / (1 - n * u)


def test_random_wrong_labels_never_the_true_one_and_cover_the_rest():
    y = np.repeat(np.arange(4), 500)
    r = finetune.random_wrong_labels(y, 4, seed=0)
    assert r.dtype == np.int32 and not np.any(r == y)
    for c in range(4):  # each other class about a third of the time
        counts = np.bincount(r[y == c], minlength=4)
        assert counts[c] == 0 and counts.min(initial=500, where=np.arange(4) != c) > 120
    np.testing.assert_array_equal(r, finetune.random_wrong_labels(y, 4, seed=0))
    assert not np.array_equal(r, finetune.random_wrong_labels(y, 4, seed=1))
    with pytest.raises(ValueError, match="num_classes=1"):
        finetune.random_wrong_labels(y[:3] * 0, 1, seed=0)


def test_dampen_is_the_ssd_rule():
    p = {"w": jnp.array([1.0, 2.0, 3.0, 4.0, -5.0])}
    imp_d = {"w": jnp.array([1.0, 1.0, 0.0, 2.0, 1.0])}
    imp_f = {"w": jnp.array([0.5, 4.0, 1.0, 2.0, 3.0])}
    out = ssd.dampen(p, imp_d, imp_f, lam=2.0, alpha=1.5)
    # selected where f > 1.5 * d: entries 1, 2, 4; factor min(2 d / f, 1) = 0.5, 0, 2/3
    # float32: lam * d, / f, * p: three roundings, rel err <= gamma_3
    np.testing.assert_allclose(out["w"], [1.0, 1.0, 0.0, 4.0, -5.0 * 2 / 3], rtol=_gamma(3))
    # zero importance on D and any on D_f: selected at every alpha, and zeroed (as in torch)
    np.testing.assert_allclose(ssd.dampen(p, imp_d, imp_f, lam=1.0, alpha=100.0)["w"],
                               [1.0, 2.0, 0.0, 4.0, -5.0])
    # no importance on D_f: nothing selected, nothing changed
    chex.assert_trees_all_equal(ssd.dampen(p, imp_d, {"w": jnp.zeros(5)}, lam=1.0, alpha=0.0), p)


def _linear(params, x):
    return x @ params["w"] + params["b"]


def test_importances_equal_a_loop_over_batches():
    with jax.enable_x64(True):  # float64: see RTOL64
        _importances_equal_a_loop_over_batches()


def _importances_equal_a_loop_over_batches():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(10, 3))
    y = rng.integers(0, 4, 10)
    params = {"w": jnp.asarray(rng.normal(size=(3, 4))), "b": jnp.zeros(4, jnp.float64)}
    for seed in (None, 3):
        got, _ = ssd.importances(_linear, params, x, y, batch_size=4, seed=seed)
        order = np.arange(10) if seed is None else np.random.default_rng(seed).permutation(10)
        want = jax.tree.map(jnp.zeros_like, params)
        for s in range(0, 10, 4):  # batches of 4, 4 and 2: three batches
            idx = order[s:s + 4]
            g = jax.grad(lambda p, idx=idx: cross_entropy(_linear(p, x[idx]), y[idx]).mean())(
                params)
            want = jax.tree.map(lambda a, gg: a + gg ** 2, want, g)
        want = jax.tree.map(lambda a: a / 3, want)
        assert got["w"].dtype == jnp.float64
        chex.assert_trees_all_close(got, want, rtol=RTOL64, atol=0)


def test_fgsm_labels_one_signed_step_in_pixel_space():
    # a linear model on 2 pixels: the gradient of the CE in pixel space has a known sign
    params = {"w": jnp.array([[2.0, -2.0], [0.0, 0.0]]), "b": jnp.zeros(2)}

    def apply(p, x):
        return _linear(p, x.reshape(x.shape[0], -1))

    x01 = np.array([[[[0.6]], [[0.3]]], [[[0.02]], [[0.99]]]], np.float32).reshape(2, 1, 2, 1)
    y = np.array([0, 1])
    mean, std = [0.5], [0.25]
    adv, lab = boundary.fgsm_labels(apply, params, x01, y, mean, std, epsilon=0.1)
    # d CE / d pixel0 has the sign of (p1 - 1{y=1}) * 2 / std: class 0 -> pixel0 goes down
    want = np.array([[0.5, 0.3], [0.12, 0.99]])
    want = np.round(np.clip(want, 0, 1) * 255) / 255
    np.testing.assert_allclose(adv.reshape(2, 2), want, rtol=U32)  # float32 k / 255: one rounding
    logits = apply(params, (jnp.asarray(adv) - 0.5) / 0.25)
    np.testing.assert_array_equal(lab, np.argmax(logits, -1))


def test_bad_teacher_loss_is_torch_kl_div_mean():
    rng = np.random.default_rng(0)
    s, t = rng.normal(size=(5, 3)), rng.normal(size=(5, 3))
    for temp in (1.0, 4.0):
        pt = np.exp(t / temp) / np.exp(t / temp).sum(1, keepdims=True)
        ls = s / temp - np.log(np.exp(s / temp).sum(1, keepdims=True))
        want = np.sum(pt * (np.log(pt) - ls)) / pt.size  # every element, as reduction="mean"
        with jax.enable_x64(True):  # float64: see RTOL64
            got = distill.bad_teacher_loss(jnp.asarray(s), jnp.asarray(t), temp)
        assert got.dtype == jnp.float64
        np.testing.assert_allclose(got, want, rtol=RTOL64)


def test_kl_terms_gradient_through_the_teacher_is_torchs_where_a_probability_underflows():
    # GKT's generator differentiates the KL through the teacher's softmax. torch's kl_div
    # backward gives the target (log t + 1 - log s) masked to 0 where t == 0, then softmax's
    # backward; with xlogy(t, t) the derivative at t == 0 is 0 * log 0 = NaN, which made every
    # GKT run "diverge". float64 logits 1000 apart: exp underflows to exactly 0 in float64 too.
    rng = np.random.default_rng(0)
    s = rng.normal(size=(3, 4))
    for t in (rng.normal(size=(3, 4)), np.array([[0.0, 1000.0, 1.0, -5.0],
                                                 [900.0, 0.0, 0.0, 0.0],
                                                 [1.0, 2.0, 3.0, 4.0]])):
        lt = t - t.max(1, keepdims=True)
        lt = lt - np.log(np.exp(lt).sum(1, keepdims=True))  # finite log-softmax
        pt = np.exp(lt)
        ls = s - s.max(1, keepdims=True)
        ls = ls - np.log(np.exp(ls).sum(1, keepdims=True))
        g = np.where(pt > 0, lt + 1 - ls, 0.0)  # torch's target gradient, masked at t == 0
        want_t = pt * (g - (pt * g).sum(1, keepdims=True))  # through softmax
        want_s = -(pt - pt.sum(1, keepdims=True) * np.exp(ls))  # d/ds of -sum t log_softmax(s)
        with jax.enable_x64(True):  # float64: see RTOL64
            got_t = jax.grad(lambda u: distill.kl_terms(jnp.asarray(s), u, 1.0).sum())(
                jnp.asarray(t))
            got_s = jax.grad(lambda v, t=t: distill.kl_terms(v, jnp.asarray(t), 1.0).sum())(
                jnp.asarray(s))
            value = distill.kl_terms(jnp.asarray(s), jnp.asarray(t), 1.0)
        assert np.isfinite(got_t).all() and np.isfinite(got_s).all()
        # entries of order 1 or 0, sums of 4 terms: absolute float64 rounding far below 1e-12
        np.testing.assert_allclose(got_t, want_t, rtol=RTOL64, atol=1e-12)
        np.testing.assert_allclose(got_s, want_s, rtol=RTOL64, atol=1e-12)
        np.testing.assert_allclose(value, np.where(pt > 0, pt * (lt - ls), 0.0), rtol=RTOL64,
                                   atol=1e-12)


def test_train_keeps_the_last_partial_batch_when_asked(monkeypatch):
    import jit_jax.train as T

    sizes = []
    step = T._train_step
    monkeypatch.setattr(T, "_train_step", lambda m, o, x, *a: sizes.append(len(x)) or step(m, o, x, *a))
    spec = ModelSpec("mlp", 3, (2, 2, 1), {"hidden": 8, "depth": 1})
    x = np.random.default_rng(0).normal(size=(10, 2, 2, 1)).astype(np.float32)
    y = np.arange(10) % 3
    cfg = TrainConfig(epochs=2, batch_size=4, optimizer="adam", lr=1e-3, augment="none")
    res = train(spec.build(0), x, y, cfg, progress=False, drop_last=False)
    assert sizes == [4, 4, 2, 4, 4, 2] and res.compile_time >= 0
    sizes.clear()
    train(spec.build(0), x, y, cfg, progress=False)
    assert sizes == [4, 4, 4, 4]


def _tiny_request(tiny_images, spec_name, options):
    """The tiny 3-class image problem, a model of ``spec_name`` trained on it, and a maker of
    requests: ``(make(split) -> Request, dataset)``."""
    (x_tr, y_tr), (x_te, y_te) = tiny_images
    ds = Dataset("tiny", x_tr, y_tr, x_te, y_te, ["a", "b", "c"], (0.3,), (0.3,))
    spec = ModelSpec(spec_name, 3, ds.image_shape, options)
    cfg = TrainConfig(epochs=15, batch_size=16, optimizer="adam", lr=1e-2, augment="none")
    model = spec.build(0)
    prep = lambda u: ((u / 255.0 - 0.3) / 0.3).astype(np.float32)  # noqa: E731
    train(model, prep(x_tr), y_tr, cfg, progress=False)

    def make(split):
        return unlearn.Request(model, ds, split, spec, cfg, seed=0, preprocess=prep)

    return make, ds


@pytest.fixture(scope="module")
def request_tiny(tiny_images):
    return _tiny_request(tiny_images, "mlp", {"hidden": 32, "depth": 1})


@pytest.fixture(scope="module")
def request_tiny_cnn(tiny_images):
    """The same problem with a small CNN: GKT re-draws convolution kernels, so it needs some."""
    return _tiny_request(tiny_images, "cnn", {"width": 4})


def _params(m):
    return jax.tree.map(np.asarray, nnx.state(m, nnx.Param))


PEER_OPTIONS = {"gkt": {"pseudo_batches": 3, "batch_size": 16}}  # its 17,000 steps cut short


@pytest.mark.parametrize("name", ["fntn", "amn", "ssd", "bt", "bdsh", "unsir", "emmn", "scrub",
                                  pytest.param("gkt", marks=pytest.mark.slow)])  # gkt: ~14 s
def test_each_peer_runs_through_the_registry(request_tiny, request_tiny_cnn, name):
    make, ds = request_tiny_cnn if name == "gkt" else request_tiny
    req = make(forget_class(ds, "1"))
    before = _params(req.model)
    out = unlearn.run(name, req, **PEER_OPTIONS.get(name, {}))
    chex.assert_trees_all_equal(_params(req.model), before)  # the source is untouched
    changed = jax.tree.leaves(jax.tree.map(lambda a, b: bool(np.any(a != b)),
                                           _params(out.model), before))
    assert any(changed), name
    assert out.runtime > 0 and out.compile_time >= 0
    assert out.zero_shot == (name in ("bdsh", "emmn", "gkt")) == unlearn.METHODS[name].zero_shot
    with pytest.raises(ValueError, match=f"unknown option.*'{name}'.*accepted"):
        unlearn.run(name, req, nonsense=1)


def test_ssd_forgets_a_class_and_alpha_controls_selection(request_tiny):
    make, ds = request_tiny
    req = make(forget_class(ds, "2"))
    out = unlearn.run("ssd", req)  # the authors' full-class setting, lambda = alpha = 1
    assert out.log["config"] == {"lam": 1.0, "alpha": 1.0, "batch_size": 128,
                                 "full_order": "shuffled"}
    assert 0 < out.log["selected"] < out.log["num_params"]
    # selective: the forget class loses confidence, the retained classes keep theirs
    fn = functionalize(out.model)
    x, y = req.inputs(np.arange(len(ds.y_train))), ds.y_train
    p_true = np.asarray(jax.nn.softmax(fn.apply_fn(fn.params, x)))[np.arange(len(y)), y]
    assert p_true[y == 2].mean() < 0.6 and p_true[y != 2].mean() > 0.99
    none = unlearn.run("ssd", req, alpha=1e9)  # nothing is ever that much more important
    assert none.log["selected"] == 0
    chex.assert_trees_all_equal(_params(none.model), _params(req.model))
    # random forgetting uses the authors' random-task values
    assert unlearn.run("ssd", make(forget_random(ds, 5, 0))).log["config"]["lam"] == 4.0
    with pytest.raises(ValueError, match="lam > 0"):
        unlearn.run("ssd", req, lam=0.0)


def test_ssd_full_order_retain_then_forget(request_tiny, monkeypatch):
    """The authors' sub-class loader: the importances on D come from D_r in order, then D_f,
    unshuffled (whatever the seed); the default shuffles with the request's seed."""
    make, ds = request_tiny
    req = make(forget_class(ds, "1"))
    seen = []
    real = ssd.importances

    def spy(apply_fn, params, x, y, *, batch_size=128, seed=None):
        seen.append((np.asarray(y), seed))
        return real(apply_fn, params, x, y, batch_size=batch_size, seed=seed)

    monkeypatch.setattr(ssd, "importances", spy)
    out = unlearn.run("ssd", req, full_order="retain_then_forget", batch_size=8)
    assert out.log["config"]["full_order"] == "retain_then_forget"
    (y_f, seed_f), (y_d, seed_d) = seen
    split = req.split
    want = np.concatenate([ds.y_train[split.retain_idx], ds.y_train[split.forget_idx]])
    np.testing.assert_array_equal(y_d, want)
    assert seed_d is None and seed_f is None
    seen.clear()
    unlearn.run("ssd", req, batch_size=8)
    (_, _), (y_d, seed_d) = seen
    np.testing.assert_array_equal(y_d, ds.y_train)  # dataset order, shuffled inside with the seed
    assert seed_d == req.seed
    with pytest.raises(ValueError, match="full_order 'sorted'; accepted"):
        unlearn.run("ssd", req, full_order="sorted")


def test_bdsh_relabels_with_the_attacked_prediction(request_tiny):
    make, ds = request_tiny
    req = make(forget_class(ds, "0"))
    out = unlearn.run("bdsh", req, epochs=1)
    assert out.log["config"]["lr"] == 1e-5 and out.log["config"]["batch_size"] == 64
    assert out.log["attack_time"] > 0
    fn = functionalize(req.model)
    for eps in (0.1, 1.0):  # on these easy images one step of 0.1 flips none, a step of 1 some
        _, lab = boundary.fgsm_labels(fn.apply_fn, fn.params, ds.x_train[req.split.forget_idx] / 255.0,
                                   ds.y_train[req.split.forget_idx], ds.mean, ds.std, epsilon=eps)
        frac = unlearn.run("bdsh", req, epochs=1, epsilon=eps).log["label_changed"]
        assert frac == np.mean(lab != 0)
        assert (frac == 0) == (eps == 0.1)


def test_bt_uses_a_fraction_of_the_retained_data(request_tiny):
    make, ds = request_tiny
    req = make(forget_class(ds, "1"))
    out = unlearn.run("bt", req, lr=1e-3)
    assert out.log["n_retain_used"] == int(0.3 * len(req.split.retain_idx))
    assert len(out.log["losses"]) == 1  # one epoch of batch 256 on a tiny set: one step
    with pytest.raises(ValueError, match="retain_fraction=0"):
        unlearn.run("bt", req, retain_fraction=0)


def test_noise_rounds_are_the_authors_loader():
    noises = {2: np.zeros((4, 3, 3, 3)), 0: np.ones((4, 3, 3, 3))}
    x, y = noise.noise_rounds(noises, rounds=5, per_round=3)
    assert x.shape == (30, 3, 3, 3) and list(y[:6]) == [2, 2, 2, 0, 0, 0]
    np.testing.assert_array_equal(x[y == 0], 1.0)
    x, y = noise.noise_rounds(noises, rounds=2)
    assert x.shape == (16, 3, 3, 3)


@pytest.mark.parametrize("maximise", [True, False])
def test_train_noise_moves_the_cross_entropy_the_right_way(maximise):
    rng = np.random.default_rng(0)
    params = {"w": jnp.asarray(rng.normal(size=(12, 3)), jnp.float32), "b": jnp.zeros(3)}

    def apply(p, x, key=None):
        return _linear(p, x.reshape(x.shape[0], -1))

    def ce(n):
        return float(cross_entropy(apply(params, jnp.asarray(n)), jnp.full(len(n), 1)).mean())

    start = np.asarray(jax.random.normal(jax.random.split(jax.random.key(0))[0], (8, 2, 2, 3)))
    trained, _ = noise.train_noise(apply, params, 1, shape=(8, 2, 2, 3), steps=20,
                                   key=jax.random.key(0), maximise=maximise)
    assert trained.shape == (8, 2, 2, 3)
    assert (ce(trained) > ce(start) + 0.5) if maximise else (ce(trained) < ce(start) - 0.5)


def test_unsir_and_emmn_settings_and_scope(request_tiny):
    make, ds = request_tiny
    req = make(forget_class(ds, "1"))
    u = unlearn.run("unsir", req)
    # the authors' loader: one noise image per round on 1-channel images, 80 rounds
    assert u.log["n_noise"] == 80 and u.log["config"]["images_per_round"] == 1
    n_keep = sum(min(500, int(np.sum(ds.y_train == c))) for c in (0, 2))
    assert u.log["n_retain_used"] == n_keep
    assert unlearn.run("unsir", req, images_per_round=32).log["n_noise"] == 80 * 32
    e = unlearn.run("emmn", req, epochs=1)
    assert e.zero_shot and e.log["n_noise"] == 80 * 3  # one noise image per class per round
    with pytest.raises(ValueError, match="unsir runs full-class or sub-class forgetting"):
        unlearn.run("unsir", make(forget_random(ds, 5, 0)))
    with pytest.raises(ValueError, match="emmn is a full-class method"):
        unlearn.run("emmn", make(forget_random(ds, 5, 0)))
    with pytest.raises(ValueError, match="images_per_round=0"):
        unlearn.run("emmn", req, images_per_round=0)


def test_unsir_subclass_is_the_authors_variant(tiny_images):
    """Sub-class: noise labelled with the forgotten fine class's super-class, 250 steps; the
    retained samples are the first ones of every other fine class, with super-class labels."""
    from jit_jax.data import forget_subclass, group_classes

    (x_tr, y_tr), (x_te, y_te) = tiny_images
    ds = group_classes(Dataset("tiny", x_tr, y_tr, x_te, y_te, ["a", "b", "c"], (0.3,), (0.3,)),
                       {"ab": ["a", "b"], "c": ["c"]}, target="coarse")
    spec = ModelSpec("mlp", 2, ds.image_shape, {"hidden": 16, "depth": 1})
    cfg = TrainConfig(epochs=3, batch_size=16, optimizer="adam", lr=1e-2, augment="none")
    model = spec.build(0)
    prep = lambda u: ((u / 255.0 - 0.3) / 0.3).astype(np.float32)  # noqa: E731
    train(model, prep(x_tr), ds.train_targets, cfg, progress=False)
    req = unlearn.Request(model, ds, forget_subclass(ds, "b"), spec, cfg, seed=0,
                          preprocess=prep)
    out = unlearn.run("unsir", req, samples_per_class=7)
    assert out.log["config"]["noise_steps"] == 250 and out.log["noise_label"] == 0  # "ab"
    assert out.log["n_retain_used"] == 14  # 7 of "a" and 7 of "c", none of "b"
    assert unlearn.run("unsir", req, noise_steps=3).log["config"]["noise_steps"] == 3
    with pytest.raises(ValueError, match="noise_steps=0"):
        unlearn.run("unsir", req, noise_steps=0)


def test_distill_kl_is_scrubs_distillkl():
    rng = np.random.default_rng(1)
    s, t = rng.normal(size=(6, 4)), rng.normal(size=(6, 4))
    T = 4.0
    pt = np.exp(t / T) / np.exp(t / T).sum(1, keepdims=True)
    ls = s / T - np.log(np.exp(s / T).sum(1, keepdims=True))
    want = np.sum(pt * (np.log(pt) - ls)) * T ** 2 / 6  # summed, times T^2 / batch
    with jax.enable_x64(True):  # float64: see RTOL64
        got = distill.distill_kl(jnp.asarray(s), jnp.asarray(t), T)
    assert got.dtype == jnp.float64
    np.testing.assert_allclose(got, want, rtol=RTOL64)


def test_scrub_passes_and_settings(request_tiny):
    make, ds = request_tiny
    req = make(forget_class(ds, "1"))
    out = unlearn.run("scrub", req, batch_size=16)
    cfg = out.log["config"]
    assert (cfg["alpha"], cfg["gamma"], cfg["clip"]) == (0.001, 0.99, 1.0)
    n_f, n_r = req.split.n_forget, len(req.split.retain_idx)
    # max passes over D_f in epochs 1-2, min passes over D_r in epochs 1-3
    assert len(out.log["losses"]["max"]) == 2 * -(-n_f // 16)
    assert len(out.log["losses"]["min"]) == 3 * -(-n_r // 16)
    mx = out.log["losses"]["max"]  # -KL: 0 up to rounding at the start, then below
    assert max(mx) < 1e-5 and mx[-1] < mx[0]
    rnd = unlearn.run("scrub", make(forget_random(ds, 5, 0)), epochs=1).log["config"]
    assert (rnd["alpha"], rnd["gamma"], rnd["clip"]) == (1.0, 5.0, None)


# ------------------------------------------------------------------------------------------------
# GKT
# ------------------------------------------------------------------------------------------------
def _torch_attention_nchw(x):
    """The authors' ``attention``: x.pow(2).mean(1).view(B, -1), L2-normalised per row."""
    a = (x ** 2).mean(1).reshape(x.shape[0], -1)
    return a / np.maximum(np.linalg.norm(a, axis=1, keepdims=True), 1e-12)


def test_attention_map_is_the_authors_on_nchw_and_tokens():
    rng = np.random.default_rng(0)
    nchw = rng.normal(size=(3, 5, 4, 6))
    tokens = rng.normal(size=(3, 7, 4))  # (B, T, D): mean over the tokens
    with jax.enable_x64(True):  # float64: see RTOL64
        got = gkt.attention_map("conv", jnp.asarray(nchw.transpose(0, 2, 3, 1)))  # NHWC here
        got_tokens = gkt.attention_map("encoder", jnp.asarray(tokens))
    assert got.dtype == got_tokens.dtype == jnp.float64
    np.testing.assert_allclose(got, _torch_attention_nchw(nchw), rtol=RTOL64)
    np.testing.assert_allclose(got_tokens, _torch_attention_nchw(tokens), rtol=RTOL64)
    # a dense layer's (B, F) output has a (B, 1) map: always 1, no signal (as in their VGG).
    # float32 a / sqrt(fl(a^2)) (a: a mean of squares): rel err <= u/2 + u + u < 3u
    flat = gkt.attention_map("conv", jnp.asarray(rng.normal(size=(3, 1, 1, 4))))
    np.testing.assert_allclose(flat, np.ones((3, 1)), rtol=3 * U32)


def test_gkt_losses_on_the_kept_rows_equal_the_losses_on_the_subset():
    with jax.enable_x64(True):  # float64 inputs and sums: see RTOL64
        _gkt_losses_on_the_kept_rows_equal_the_losses_on_the_subset()


def _gkt_losses_on_the_kept_rows_equal_the_losses_on_the_subset():
    rng = np.random.default_rng(1)
    s, t = jnp.asarray(rng.normal(size=(6, 4))), jnp.asarray(rng.normal(size=(6, 4)))
    keep = np.array([1, 0, 1, 1, 0, 1], np.float32)
    sub = keep.astype(bool)
    assert s.dtype == jnp.float64
    np.testing.assert_allclose(gkt.gkt_kl(s, t, jnp.ones(6)), distill.bad_teacher_loss(s, t),
                               rtol=RTOL64)  # torch kl_div "mean" over every element
    np.testing.assert_allclose(gkt.gkt_kl(s, t, jnp.asarray(keep)),
                               distill.bad_teacher_loss(s[sub], t[sub]), rtol=RTOL64)
    acts_s = [("conv", jnp.asarray(rng.normal(size=(6, 4, 4, 3)))),
              ("conv", jnp.asarray(rng.normal(size=(6, 2, 2, 5))))]
    acts_t = [(k, a + jnp.asarray(rng.normal(size=a.shape))) for k, a in acts_s]
    want = sum(5.0 * np.mean((_torch_attention_nchw(np.asarray(a)[sub].transpose(0, 3, 1, 2))
                              - _torch_attention_nchw(np.asarray(b)[sub].transpose(0, 3, 1, 2)))
                             ** 2) for (_, a), (_, b) in zip(acts_s, acts_t, strict=True))
    np.testing.assert_allclose(gkt.gkt_attention_loss(acts_s, acts_t, jnp.asarray(keep), 5.0),
                               want, rtol=RTOL64)
    with pytest.raises(ValueError, match="1 student against 2 teacher"):
        gkt.gkt_attention_loss(acts_s[:1], acts_t, jnp.asarray(keep), 5.0)


@pytest.mark.parametrize("size,channels", [(8, 1), (32, 3)])
def test_generator_makes_images_of_the_data_shape(size, channels):
    g = gkt.PseudoImageGenerator(128, size, channels, rngs=nnx.Rngs(0))
    z = np.random.default_rng(0).normal(size=(5, 128))
    run = nnx.jit(lambda gen, zz: gen(zz))
    x = run(g, jnp.asarray(z, jnp.float32))
    assert x.shape == (5, size, size, channels) and bool(jnp.all(jnp.isfinite(x)))
    # its last BatchNorm uses batch statistics: each channel has mean 0 (exactly, up to rounding:
    # checked in float64, where that is ~n u = 5120 * 2^-53 relative; running statistics would
    # give the pre-normalisation mean, O(0.1))
    with jax.enable_x64(True):
        for kind in (nnx.Param, nnx.BatchStat):
            nnx.update(g, jax.tree.map(lambda a: jnp.asarray(a, jnp.float64), nnx.state(g, kind)))
        x64 = np.asarray(run(g, jnp.asarray(z)))
    assert x64.dtype == np.float64
    np.testing.assert_allclose(x64.mean((0, 1, 2)), 0.0, atol=1e-10 * np.abs(x64).max())
    with pytest.raises(ValueError, match="divisible by 4"):
        gkt.PseudoImageGenerator(128, 30, 3, rngs=nnx.Rngs(0))


def test_record_activations_collects_conv_and_encoder_outputs():
    from jit_jax.models.layers import record_activations

    cnn = ModelSpec("cnn", 3, (8, 8, 1), {"width": 4}).build(0)
    x = jnp.ones((2, 8, 8, 1))
    cnn(x)  # outside a block nothing is kept
    with record_activations() as outer:
        with record_activations() as inner:
            cnn(x)
        cnn(x)
    assert [k for k, _ in inner] == ["conv"] * 3 and len(outer) == 3
    # conv1, conv2 at 8x8 (4 channels), conv3 after a 2x2 pool (8 channels), in call order
    assert [a.shape for _, a in inner] == [(2, 8, 8, 4), (2, 8, 8, 4), (2, 4, 4, 8)]
    vit = ModelSpec("vit", 3, (8, 8, 1), {"patch_size": 4, "hidden": 8, "depth": 2, "heads": 2,
                                          "mlp_dim": 16}).build(0)
    with record_activations() as acts:
        vit(x)
    assert [k for k, _ in acts] == ["encoder", "encoder"] and acts[0][1].shape == (2, 5, 8)

    @jax.jit
    def traced(v):  # inside a trace the activations are that trace's values
        with record_activations() as a:
            out = cnn(v)
        return out, [t for _, t in a]

    # jitted and eager differ only in fusion, i.e. rounding order: compared in float64 (RTOL64)
    with jax.enable_x64(True):
        for kind in (nnx.Param, nnx.BatchStat):
            nnx.update(cnn, jax.tree.map(lambda a: jnp.asarray(a, jnp.float64),
                                         nnx.state(cnn, kind)))
        x = jnp.ones((2, 8, 8, 1), jnp.float64)
        out, acts_traced = traced(x)
        with record_activations() as eager:
            cnn(x)
    for a, b in zip(acts_traced, eager, strict=True):
        assert a.dtype == jnp.float64
        np.testing.assert_allclose(a, b[1], rtol=RTOL64, atol=RTOL64 * np.abs(b[1]).max())


def test_reinit_conv_kernels_touches_only_conv_kernels():
    model = ModelSpec("cnn", 3, (8, 8, 1), {"width": 4}).build(0)
    before = _params(model)
    student = nnx.clone(model)
    assert gkt.reinit_conv_kernels(student, jax.random.key(0)) == 3
    after = _params(student)
    chex.assert_trees_all_equal(_params(model), before)  # a clone: the source is untouched
    flat_b = dict(jax.tree_util.tree_leaves_with_path(before))
    for path, leaf in jax.tree_util.tree_leaves_with_path(after):
        name = jax.tree_util.keystr(path)
        if "conv" in name and "kernel" in name:
            assert not np.allclose(leaf, flat_b[path]), name
            kh, kw, c_in, c_out = leaf.shape  # xavier-uniform: U(-b, b), b = sqrt(6 / fans)
            bound = np.sqrt(6.0 / (c_in * kh * kw + c_out * kh * kw))
            assert 0.5 * bound < np.abs(leaf).max() <= bound, name
        else:
            np.testing.assert_array_equal(leaf, flat_b[path], err_msg=name)
    vit = ModelSpec("vit", 3, (8, 8, 1), {"patch_size": 4, "hidden": 8, "depth": 1, "heads": 2,
                                          "mlp_dim": 16}).build(0)
    assert gkt.reinit_conv_kernels(vit, jax.random.key(0)) == 1  # the patch embedding


def test_torch_onecycle_schedules():
    # Evaluated in float64 (x64): < 10 operations, each within u = 2^-53 of the largest term
    # (<= 0.95), so |err| < 1e-15 absolute, i.e. 1e-9 relative even for the final 4e-7.
    with jax.enable_x64(True):
        lr, mom = gkt.torch_onecycle(1000, 0.1)
        t = lambda i: jnp.asarray(i, jnp.float64)  # noqa: E731
        got_lr = [float(lr(t(i))) for i in (0, 300, 1000)]
        got_mom = [float(mom(t(i))) for i in (0, 150, 300, 1000)]
    np.testing.assert_allclose(got_lr, [0.1 / 25, 0.1, 0.1 / 25 / 1e4], rtol=1e-9)
    # cosine: half way at half time
    np.testing.assert_allclose(got_mom, [0.95, 0.90, 0.85, 0.95], rtol=1e-9)


def test_gkt_gate_steps_and_scope(request_tiny, request_tiny_cnn):
    make, ds = request_tiny_cnn
    req = make(forget_class(ds, "1"))
    out = unlearn.run("gkt", req, pseudo_batches=2, batch_size=16)
    cfg = out.log["config"]
    # the authors' defaults outside ViT: 2 generator and 15 student steps per pseudo batch
    assert (cfg["generator_iters"], cfg["student_iters"], cfg["at_beta"]) == (2, 15, 5.0)
    assert len(out.log["losses"]["generator"]) == 4 and len(out.log["losses"]["student"]) == 30
    assert out.log["rounds"] == 2 and not out.log["stopped_early"]
    assert max(out.log["losses"]["generator"]) < 0  # the generator maximises the KL (> 0)
    assert out.log["convs_reinitialised"] == 3
    # a gate nothing passes: every round is skipped, and the method stops after max_empty
    shut = unlearn.run("gkt", req, pseudo_batches=2, batch_size=16, threshold=-1.0, max_empty=5)
    assert shut.log["stopped_early"] and shut.log["rounds"] == 0
    assert shut.log["losses"] == {"generator": [], "student": []}
    # the gate: the teacher's probability of the forget class at most the threshold
    gen = gkt.PseudoImageGenerator(128, 8, 1, rngs=nnx.Rngs(0))
    teacher = nnx.clone(req.model)
    z = jnp.asarray(np.random.default_rng(0).normal(size=(16, 128)), jnp.float32)
    x, mask = gkt._gkt_candidates(gen, teacher, z, 1, 0.3)
    p = np.asarray(jax.nn.softmax(teacher(x))[:, 1])
    np.testing.assert_array_equal(np.asarray(mask), (p <= 0.3).astype(np.float32))
    with pytest.raises(ValueError, match="gkt is a full-class method"):
        unlearn.run("gkt", make(forget_random(ds, 5, 0)))
    with pytest.raises(ValueError, match="student_iters=0"):
        unlearn.run("gkt", req, student_iters=0)
    mlp_make, _ = request_tiny  # no convolution to re-draw: a clear error, not a no-op
    with pytest.raises(ValueError, match="'mlp' has none"):
        unlearn.run("gkt", mlp_make(forget_class(ds, "1")), pseudo_batches=1)


class _ConvBN(nnx.Module):
    """A conv, BatchNorm, dense net: the smallest model with running statistics."""

    def __init__(self, rngs):
        from jit_jax.models.layers import Conv, batch_norm, dense

        self.conv = Conv(1, 4, 3, padding=1, rngs=rngs)
        self.bn = batch_norm(4, rngs)
        self.head = dense(4, 3, rngs=rngs)

    def __call__(self, x):
        return self.head(jnp.mean(jax.nn.relu(self.bn(self.conv(x))), axis=(1, 2)))


def test_gkt_with_batchnorm_updates_the_students_statistics(request_tiny_cnn):
    """In train mode the student's (and the teacher copy's) BatchNorm statistics update inside
    the generator step too, as in torch; the source model's never do."""
    make, ds = request_tiny_cnn
    base = make(forget_class(ds, "1"))
    model = _ConvBN(nnx.Rngs(0))
    model.eval()
    req = unlearn.Request(model, ds, base.split, base.spec, base.train_config, seed=0,
                          preprocess=base.preprocess)
    stats = jax.tree.map(np.asarray, nnx.state(model, nnx.BatchStat))
    out = unlearn.run("gkt", req, pseudo_batches=1, batch_size=8, threshold=1.0)
    assert out.log["rounds"] == 1 and len(out.log["losses"]["generator"]) == 2
    chex.assert_trees_all_equal(jax.tree.map(np.asarray, nnx.state(model, nnx.BatchStat)), stats)
    new = jax.tree.map(np.asarray, nnx.state(out.model, nnx.BatchStat))
    assert any(not np.allclose(a, b) for a, b in
               zip(jax.tree.leaves(new), jax.tree.leaves(stats), strict=True))


def test_bdsh_attacks_through_the_requests_preprocess(request_tiny):
    """BDSH perturbs the stored images and feeds them to the model through ``req.preprocess`` (not
    the dataset's statistics): with another input map the attacked labels are those of that map."""
    make, ds = request_tiny
    base = make(forget_class(ds, "0"))
    x, y = ds.x_train[base.split.forget_idx], ds.y_train[base.split.forget_idx]
    fn = functionalize(base.model)
    step = 51  # epsilon = 51/255 = 0.2: whole pixel levels, so no rounding tie in the attack

    def changed(prep):
        """Label-change fraction of the step through ``prep``, written out: prep is
        (u / 255 - m) / s with s > 0, so the pixel gradient has the sign of the input gradient."""
        g = jax.grad(lambda v: jnp.sum(cross_entropy(fn.apply_fn(fn.params, v), y)))(prep(x))
        adv = np.clip(x.astype(int) + step * np.sign(np.asarray(g)).astype(int), 0, 255)
        logits = np.asarray(fn.apply_fn(fn.params, prep(adv.astype(np.uint8))))
        return np.mean(np.argmax(logits, -1) != y)

    seen = []

    def other(u):  # plain [0, 1] scaling: not the normalisation the model was trained with
        seen.append(np.array(u))
        return (u / 255.0).astype(np.float32)

    want_base, want_other = changed(base.preprocess), changed(other)
    assert want_base == 0 and want_other > 0.2  # the map matters on this problem
    req = unlearn.Request(base.model, ds, base.split, base.spec, base.train_config,
                          preprocess=other)
    seen.clear()
    assert unlearn.run("bdsh", req, epochs=1, epsilon=step / 255).log["label_changed"] == want_other
    # called on the attacked images, not only on D_f itself
    assert any(u.shape == x.shape and not np.array_equal(u, x) for u in seen)
    assert unlearn.run("bdsh", base, epochs=1, epsilon=step / 255).log["label_changed"] == 0
    # A map the signed step cannot go through (decreasing in the pixels) is refused, not misused.
    flipped = unlearn.Request(base.model, ds, base.split, base.spec, base.train_config,
                              preprocess=lambda u: base.preprocess(255 - u))
    with pytest.raises(ValueError, match="elementwise preprocess increasing"):
        unlearn.run("bdsh", flipped, epochs=1)


# ------------------------------------------------------------------------------------------------
# Zero-shot methods never read the retained data
# ------------------------------------------------------------------------------------------------
class _RetainGuard(np.ndarray):
    """An array whose rows in ``retain`` must not be read: indexing any of them raises. Arrays
    derived from it (slices of forget rows, results of operations) are plain arrays."""

    def __new__(cls, a, retain):
        obj = np.asarray(a).view(cls)
        obj._retain = frozenset(int(i) for i in retain)
        return obj

    def __array_finalize__(self, obj):
        self._retain = None

    def __getitem__(self, key):
        if self._retain is not None:
            rows = np.atleast_1d(np.arange(len(self))[key[0] if isinstance(key, tuple) else key])
            touched = self._retain.intersection(rows.tolist())
            if touched:
                raise AssertionError(f"retained rows read: {sorted(touched)[:5]}")
        out = super().__getitem__(key)
        return out.view(np.ndarray) if isinstance(out, np.ndarray) else out


class _Untouchable:
    """Stands for the retained indices: any use raises."""

    def _fail(self, *args, **kwargs):
        raise AssertionError("split.retain_idx was read")

    __len__ = __iter__ = __getitem__ = __array__ = __getattr__ = _fail


def _poisoned(req):
    """``req`` with every sample outside the forget set poisoned: retained training images
    inverted and relabelled, and guarded (reading one raises), the test set inverted and
    relabelled, the retained indices unreadable, no training recipe."""
    ds, split = req.dataset, req.split
    retain = np.setdiff1d(np.arange(len(ds.y_train)), split.forget_idx)
    x, y = ds.x_train.copy(), ds.y_train.copy()
    x[retain], y[retain] = 255 - x[retain], (y[retain] + 1) % ds.num_classes
    pds = Dataset(ds.name, _RetainGuard(x, retain), _RetainGuard(y, retain), 255 - ds.x_test,
                  (ds.y_test + 1) % ds.num_classes, ds.class_names, ds.mean, ds.std)
    psplit = type(split)(split.kind, split.forget_idx, split.retain_idx, split.forget_class,
                         split.description, split.seed)
    object.__setattr__(psplit, "retain_idx", _Untouchable())
    with pytest.raises(AssertionError, match="retained rows"):  # the guard works
        pds.x_train[retain[:1]]
    np.testing.assert_array_equal(pds.x_train[split.forget_idx], ds.x_train[split.forget_idx])
    return unlearn.Request(req.model, pds, psplit, req.spec, None, seed=req.seed,
                           preprocess=req.preprocess)


# small settings; a zero-shot method added to the registry runs with its defaults until listed here
ZERO_SHOT_OPTIONS = {"jit": {"num_samples": 2}, "bdsh": {"epochs": 1},
                     "emmn": {"epochs": 1, "forget_steps": 2, "retain_steps": 2},
                     "gkt": {"pseudo_batches": 2, "batch_size": 8},
                     # JiT's default lr moves the tiny model's curvature by less than float32 resolves
                     "curvature": {"lr": 0.1}, "jit_curvature": {"num_samples": 2, "lr": 0.1},
                     "auto": {"max_passes": 1, "class_passes": 1}, "lipschitz": {"num_samples": 2}}
ZERO_SHOT_SLOW = {"gkt"}  # ~40 s on 2 CPU cores (two runs, its steps compiled for each)
ZERO_SHOT = [pytest.param(name, marks=[pytest.mark.slow] if name in ZERO_SHOT_SLOW else [])
             for name, m in unlearn.METHODS.items() if m.zero_shot]


@pytest.mark.parametrize("name", ZERO_SHOT)
def test_zero_shot_methods_never_read_the_retained_data(request_tiny, request_tiny_cnn, name):
    make, ds = request_tiny_cnn if name == "gkt" else request_tiny
    req = make(forget_class(ds, "1"))
    opts = ZERO_SHOT_OPTIONS.get(name, {})
    clean = unlearn.run(name, req, **opts)
    poisoned = unlearn.run(name, _poisoned(req), **opts)
    chex.assert_trees_all_equal(_params(poisoned.model), _params(clean.model))
    assert any(np.any(a != b) for a, b in zip(jax.tree.leaves(_params(clean.model)),
                                              jax.tree.leaves(_params(req.model)), strict=True))


def test_the_poisoned_request_catches_a_method_that_reads_the_retained_data(request_tiny):
    make, ds = request_tiny
    with pytest.raises(AssertionError, match="retain"):
        unlearn.run("fntn", _poisoned(make(forget_class(ds, "1"))), epochs=1)


def test_gkt_upsample_is_flax_conv_transpose():
    """GKT's generator computes its stride-2 transposed convolutions as four phase convolutions
    of the undilated input: the same function as nnx.ConvTranspose (values and gradients, in
    float64), and in float32 within the rounding bound of its contraction."""
    rng = np.random.default_rng(3)
    with jax.enable_x64(True):
        m = nnx.ConvTranspose(5, 3, (4, 4), strides=(2, 2), padding=((2, 2), (2, 2)),
                              param_dtype=jnp.float64, dtype=jnp.float64, rngs=nnx.Rngs(0))
        k, bias = m.kernel[...], jnp.asarray(rng.normal(size=3))
        m.bias[...] = bias
        x = jnp.asarray(rng.normal(size=(2, 4, 6, 5)))
        want = m(x)
        got = gkt.upsample2x(x, k, bias)
        assert got.shape == (2, 8, 12, 3) and got.dtype == jnp.float64
        # each output sums 4 x 5 = 20 products: float64 rounding of both sides << 1e-12
        np.testing.assert_allclose(got, want, rtol=RTOL64, atol=1e-12)
        w = jnp.asarray(rng.normal(size=want.shape))

        def ref(x, k):
            return jnp.sum(w * jax.lax.conv_transpose(
                x, k, (2, 2), ((2, 2), (2, 2)), dimension_numbers=("NHWC", "HWIO", "NHWC")))

        def ours(x, k):
            return jnp.sum(w * gkt.upsample2x(x, k, bias))

        for argnum in (0, 1):
            np.testing.assert_allclose(jax.grad(ours, argnum)(x, k), jax.grad(ref, argnum)(x, k),
                                       rtol=RTOL64, atol=1e-10)
        mag = gkt.upsample2x(jnp.abs(x), jnp.abs(k), jnp.zeros(3))  # sum of |terms| per output
    got32 = gkt.upsample2x(jnp.asarray(x, jnp.float32), jnp.asarray(k, jnp.float32),
                           jnp.asarray(bias, jnp.float32))
    # float32: inputs rounded (2 u per product), 20 products summed (20 u), the bias added (u)
    bound = 23 * U32 * (np.asarray(mag) + np.abs(np.asarray(bias))) + U32 * np.abs(want)
    assert np.all(np.abs(np.asarray(got32, np.float64) - np.asarray(want)) <= bound)
    with pytest.raises(ValueError, match="4x4 kernel"):
        gkt.upsample2x(x, k[:3], bias)


def test_bt_incompetent_teacher_constructions(tiny_images, tmp_path):
    """BT's incompetent teacher: ``fresh`` is a fresh initialisation (seed + 1); ``random_head``
    (the authors' ViT) keeps a trained backbone and takes only the head from that initialisation,
    the backbone being the model's own or, with ``teacher_weights``, a ViT .npz's; the authors'
    ViT setting asks for it; bad values are errors naming what is accepted."""
    from jit_jax.models.vit import export_vit_npz
    from jit_jax.unlearn import paper

    (x_tr, y_tr), (x_te, y_te) = tiny_images
    ds = Dataset("tiny", x_tr, y_tr, x_te, y_te, ["a", "b", "c"], (0.3,), (0.3,))
    spec = ModelSpec("vit", 3, ds.image_shape, {"patch_size": 4, "hidden": 8, "depth": 1,
                                                "heads": 2, "mlp_dim": 16})
    model = spec.build(0)
    cfg = TrainConfig(epochs=1, batch_size=16, optimizer="adam", lr=1e-2, augment="none")
    req = unlearn.Request(model, ds, forget_class(ds, "1"), spec, cfg, seed=3)
    fresh = _params(spec.build(4))
    own = _params(model)

    def parts(m):
        p = _params(m)
        return p["head"], {k: v for k, v in p.items() if k != "head"}

    chex.assert_trees_all_equal(_params(distill.incompetent_teacher(req)), fresh)
    head, body = parts(distill.incompetent_teacher(req, "random_head"))
    chex.assert_trees_all_equal(head, fresh["head"])
    chex.assert_trees_all_equal(body, {k: v for k, v in own.items() if k != "head"})
    assert not np.array_equal(np.asarray(head["kernel"]), np.asarray(own["head"]["kernel"]))
    other = spec.build(7)
    path = tmp_path / "backbone.npz"
    np.savez(path, **export_vit_npz(other))
    head, body = parts(distill.incompetent_teacher(req, "random_head", str(path)))
    chex.assert_trees_all_equal(head, fresh["head"])
    chex.assert_trees_all_equal(body, {k: v for k, v in _params(other).items() if k != "head"})
    chex.assert_trees_all_equal(_params(model), own)  # the model itself is untouched
    # a model fine-tuned from a pretrained start: the teacher's backbone is that start
    req_ft = dataclasses.replace(req, init_weights=str(path))
    head, body = parts(distill.incompetent_teacher(req_ft, "random_head"))
    chex.assert_trees_all_equal(body, {k: v for k, v in _params(other).items() if k != "head"})
    with pytest.raises(ValueError, match="teacher='tuned'; accepted: \\['fresh', 'random_head'\\]"):
        distill.incompetent_teacher(req, "tuned")
    with pytest.raises(ValueError, match="teacher_weights is for teacher='random_head'"):
        distill.incompetent_teacher(req, "fresh", str(path))
    with pytest.raises(FileNotFoundError, match="teacher_weights='.*missing.npz': no such file"):
        distill.incompetent_teacher(req, "random_head", str(tmp_path / "missing.npz"))
    vgg = ModelSpec("vgg11", 3, (32, 32, 3), {"width": 4})  # VGG's last layer is no `head`
    req_vgg = unlearn.Request(vgg.build(0), ds, forget_class(ds, "1"), vgg, cfg, seed=3)
    with pytest.raises(ValueError, match="needs a model with a `head` layer.*vgg11"):
        distill.incompetent_teacher(req_vgg, "random_head")
    out = unlearn.run("bt", req, lr=1e-3, teacher="random_head")
    assert out.log["config"]["teacher"] == "random_head"
    for task in ("class", "subclass", "random"):
        assert paper.options(task, "vit_b16", "bt")["teacher"] == "random_head"
        assert "teacher" not in paper.options(task, "vgg11_torchvision", "bt")
