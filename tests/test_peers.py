"""The paper's comparison methods (jit_jax/unlearn/peers.py): their parts against hand-written
formulas, and each method end to end through the registry on a tiny problem."""

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
from jit_jax.unlearn import peers


def test_random_wrong_labels_never_the_true_one_and_cover_the_rest():
    y = np.repeat(np.arange(4), 500)
    r = peers.random_wrong_labels(y, 4, seed=0)
    assert r.dtype == np.int32 and not np.any(r == y)
    for c in range(4):  # each other class about a third of the time
        counts = np.bincount(r[y == c], minlength=4)
        assert counts[c] == 0 and counts.min(initial=500, where=np.arange(4) != c) > 120
    np.testing.assert_array_equal(r, peers.random_wrong_labels(y, 4, seed=0))
    assert not np.array_equal(r, peers.random_wrong_labels(y, 4, seed=1))
    with pytest.raises(ValueError, match="num_classes=1"):
        peers.random_wrong_labels(y[:3] * 0, 1, seed=0)


def test_dampen_is_the_ssd_rule():
    p = {"w": jnp.array([1.0, 2.0, 3.0, 4.0, -5.0])}
    imp_d = {"w": jnp.array([1.0, 1.0, 0.0, 2.0, 1.0])}
    imp_f = {"w": jnp.array([0.5, 4.0, 1.0, 2.0, 3.0])}
    out = peers.dampen(p, imp_d, imp_f, lam=2.0, alpha=1.5)
    # selected where f > 1.5 * d: entries 1, 2, 4; factor min(2 d / f, 1) = 0.5, 0, 2/3
    np.testing.assert_allclose(out["w"], [1.0, 1.0, 0.0, 4.0, -5.0 * 2 / 3], rtol=1e-6)
    # zero importance on D and any on D_f: selected at every alpha, and zeroed (as in torch)
    np.testing.assert_allclose(peers.dampen(p, imp_d, imp_f, lam=1.0, alpha=100.0)["w"],
                               [1.0, 2.0, 0.0, 4.0, -5.0])
    # no importance on D_f: nothing selected, nothing changed
    chex.assert_trees_all_equal(peers.dampen(p, imp_d, {"w": jnp.zeros(5)}, lam=1.0, alpha=0.0), p)


def _linear(params, x):
    return x @ params["w"] + params["b"]


def test_importances_equal_a_loop_over_batches():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(10, 3)).astype(np.float32)
    y = rng.integers(0, 4, 10)
    params = {"w": jnp.asarray(rng.normal(size=(3, 4)), jnp.float32), "b": jnp.zeros(4)}
    for seed in (None, 3):
        got, _ = peers.importances(_linear, params, x, y, batch_size=4, seed=seed)
        order = np.arange(10) if seed is None else np.random.default_rng(seed).permutation(10)
        want = jax.tree.map(jnp.zeros_like, params)
        for s in range(0, 10, 4):  # batches of 4, 4 and 2: three batches
            idx = order[s:s + 4]
            g = jax.grad(lambda p, idx=idx: cross_entropy(_linear(p, x[idx]), y[idx]).mean())(
                params)
            want = jax.tree.map(lambda a, gg: a + gg ** 2, want, g)
        want = jax.tree.map(lambda a: a / 3, want)
        chex.assert_trees_all_close(got, want, rtol=1e-5, atol=1e-8)


def test_fgsm_labels_one_signed_step_in_pixel_space():
    # a linear model on 2 pixels: the gradient of the CE in pixel space has a known sign
    params = {"w": jnp.array([[2.0, -2.0], [0.0, 0.0]]), "b": jnp.zeros(2)}

    def apply(p, x):
        return _linear(p, x.reshape(x.shape[0], -1))

    x01 = np.array([[[[0.6]], [[0.3]]], [[[0.02]], [[0.99]]]], np.float32).reshape(2, 1, 2, 1)
    y = np.array([0, 1])
    mean, std = [0.5], [0.25]
    adv, lab = peers.fgsm_labels(apply, params, x01, y, mean, std, epsilon=0.1)
    # d CE / d pixel0 has the sign of (p1 - 1{y=1}) * 2 / std: class 0 -> pixel0 goes down
    want = np.array([[0.5, 0.3], [0.12, 0.99]])
    want = np.round(np.clip(want, 0, 1) * 255) / 255
    np.testing.assert_allclose(adv.reshape(2, 2), want, atol=1e-6)
    logits = apply(params, (jnp.asarray(adv) - 0.5) / 0.25)
    np.testing.assert_array_equal(lab, np.argmax(logits, -1))


def test_bad_teacher_loss_is_torch_kl_div_mean():
    rng = np.random.default_rng(0)
    s, t = rng.normal(size=(5, 3)), rng.normal(size=(5, 3))
    for temp in (1.0, 4.0):
        pt = np.exp(t / temp) / np.exp(t / temp).sum(1, keepdims=True)
        ls = s / temp - np.log(np.exp(s / temp).sum(1, keepdims=True))
        want = np.sum(pt * (np.log(pt) - ls)) / pt.size  # every element, as reduction="mean"
        np.testing.assert_allclose(peers.bad_teacher_loss(jnp.asarray(s), jnp.asarray(t), temp),
                                   want, rtol=1e-5)


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


@pytest.fixture(scope="module")
def request_tiny(tiny_images):
    (x_tr, y_tr), (x_te, y_te) = tiny_images
    ds = Dataset("tiny", x_tr, y_tr, x_te, y_te, ["a", "b", "c"], (0.3,), (0.3,))
    spec = ModelSpec("mlp", 3, ds.image_shape, {"hidden": 32, "depth": 1})
    cfg = TrainConfig(epochs=15, batch_size=16, optimizer="adam", lr=1e-2, augment="none")
    model = spec.build(0)
    prep = lambda u: ((u / 255.0 - 0.3) / 0.3).astype(np.float32)  # noqa: E731
    train(model, prep(x_tr), y_tr, cfg, progress=False)

    def make(split):
        return unlearn.Request(model, ds, split, spec, cfg, seed=0, preprocess=prep)

    return make, ds


def _params(m):
    return jax.tree.map(np.asarray, nnx.state(m, nnx.Param))


@pytest.mark.parametrize("name", ["fntn", "amn", "ssd", "bt", "bdsh", "unsir", "emmn", "scrub"])
def test_each_peer_runs_through_the_registry(request_tiny, name):
    make, ds = request_tiny
    req = make(forget_class(ds, "1"))
    before = _params(req.model)
    out = unlearn.run(name, req)
    chex.assert_trees_all_equal(_params(req.model), before)  # the source is untouched
    changed = jax.tree.leaves(jax.tree.map(lambda a, b: bool(np.any(a != b)),
                                           _params(out.model), before))
    assert any(changed), name
    assert out.runtime > 0 and out.compile_time >= 0
    assert out.zero_shot == (name in ("bdsh", "emmn")) == unlearn.METHODS[name].zero_shot
    with pytest.raises(ValueError, match=f"unknown option.*'{name}'.*accepted"):
        unlearn.run(name, req, nonsense=1)


def test_ssd_forgets_a_class_and_alpha_controls_selection(request_tiny):
    make, ds = request_tiny
    req = make(forget_class(ds, "2"))
    out = unlearn.run("ssd", req)  # the authors' full-class setting, lambda = alpha = 1
    assert out.log["config"] == {"lam": 1.0, "alpha": 1.0, "batch_size": 128}
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


def test_bdsh_relabels_with_the_attacked_prediction(request_tiny):
    make, ds = request_tiny
    req = make(forget_class(ds, "0"))
    out = unlearn.run("bdsh", req, epochs=1)
    assert out.log["config"]["lr"] == 1e-5 and out.log["config"]["batch_size"] == 64
    assert out.log["attack_time"] > 0
    fn = functionalize(req.model)
    for eps in (0.1, 1.0):  # on these easy images one step of 0.1 flips none, a step of 1 some
        _, lab = peers.fgsm_labels(fn.apply_fn, fn.params, ds.x_train[req.split.forget_idx] / 255.0,
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
    x, y = peers.noise_rounds(noises, rounds=5, per_round=3)
    assert x.shape == (30, 3, 3, 3) and list(y[:6]) == [2, 2, 2, 0, 0, 0]
    np.testing.assert_array_equal(x[y == 0], 1.0)
    x, y = peers.noise_rounds(noises, rounds=2)
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
    noise, _ = peers.train_noise(apply, params, 1, shape=(8, 2, 2, 3), steps=20,
                                 key=jax.random.key(0), maximise=maximise)
    assert noise.shape == (8, 2, 2, 3)
    assert (ce(noise) > ce(start) + 0.5) if maximise else (ce(noise) < ce(start) - 0.5)


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
    for name in ("unsir", "emmn"):
        with pytest.raises(ValueError, match=f"{name} is a full-class method"):
            unlearn.run(name, make(forget_random(ds, 5, 0)))
    with pytest.raises(ValueError, match="images_per_round=0"):
        unlearn.run("emmn", req, images_per_round=0)


def test_distill_kl_is_scrubs_distillkl():
    rng = np.random.default_rng(1)
    s, t = rng.normal(size=(6, 4)), rng.normal(size=(6, 4))
    T = 4.0
    pt = np.exp(t / T) / np.exp(t / T).sum(1, keepdims=True)
    ls = s / T - np.log(np.exp(s / T).sum(1, keepdims=True))
    want = np.sum(pt * (np.log(pt) - ls)) * T ** 2 / 6  # summed, times T^2 / batch
    np.testing.assert_allclose(peers.distill_kl(jnp.asarray(s), jnp.asarray(t), T), want,
                               rtol=1e-5)


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
