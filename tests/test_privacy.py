"""The further metrics (jit_jax.privacy, metrics.output_distances / relearn_steps / the metrics=
selection), each against an independent reference: a Python loop, scipy or sklearn, or a
closed form."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy.spatial.distance import jensenshannon
from scipy.special import rel_entr
from scipy.stats import norm
from sklearn.metrics import roc_auc_score

from jit_jax import metrics as M
from jit_jax import privacy as P


def _logits(n, k=4, seed=0, margin=0.0):
    rng = np.random.default_rng(seed)
    z = rng.normal(size=(n, k)) * 2
    y = rng.integers(0, k, n)
    z[np.arange(n), y] += margin
    return z, y


def _softmax_loop(row):
    m = max(row)
    e = [math.exp(v - m) for v in row]
    s = sum(e)
    return [v / s for v in e]


def test_features_match_a_loop():
    z, y = _logits(20, 5, seed=1)
    conf, ent, ment = P.confidence(z, y), P.entropy(z), P.modified_entropy(z, y)
    for i in range(20):
        p = _softmax_loop(z[i])
        assert conf[i] == pytest.approx(p[y[i]], rel=1e-12)
        assert ent[i] == pytest.approx(-sum(q * math.log(q) for q in p), rel=1e-12)
        want = -(1 - p[y[i]]) * math.log(p[y[i]]) - sum(
            p[j] * math.log(1 - p[j]) for j in range(5) if j != y[i])
        assert ment[i] == pytest.approx(want, rel=1e-10)
    np.testing.assert_array_equal(P.attack_features(z, y), np.stack([conf, ent, ment], -1))


def test_logit_confidence_is_log_odds_and_stable():
    z, y = _logits(30, 3, seed=2)
    p = P.confidence(z, y)
    np.testing.assert_allclose(P.logit_confidence(z, y), np.log(p / (1 - p)), rtol=1e-9)
    # p_y = 1 - 2e-44 in float64 would round to 1; the closed form is 100 - log(2)
    assert P.logit_confidence(np.array([[100.0, 0.0, 0.0]]), [0])[0] == pytest.approx(
        100 - math.log(2), rel=1e-14)


def test_bad_labels_and_shapes():
    with pytest.raises(ValueError, match=r"labels must lie in \[0, 3\)"):
        P.confidence(np.zeros((2, 3)), [0, 3])
    with pytest.raises(ValueError, match="labels must be"):
        P.confidence(np.zeros((2, 3)), [0])
    with pytest.raises(ValueError, match=r"\(samples, classes\)"):
        P.entropy(np.zeros(3))


def test_auc_matches_sklearn_and_a_loop_with_ties():
    rng = np.random.default_rng(3)
    pos = rng.integers(0, 5, 40).astype(float)  # many ties
    neg = rng.integers(0, 4, 30).astype(float)
    loop = sum((a > b) + 0.5 * (a == b) for a in pos for b in neg) / (40 * 30)
    got = P.auc(pos, neg)
    assert got == pytest.approx(loop, abs=1e-12)
    assert got == pytest.approx(roc_auc_score(np.r_[np.ones(40), np.zeros(30)], np.r_[pos, neg]),
                                abs=1e-12)
    with pytest.raises(ValueError, match="positives and negatives"):
        P.auc([], [1.0])


def test_threshold_attack_matches_brute_force():
    zm, ym = _logits(60, seed=4, margin=3.0)
    zn, yn = _logits(50, seed=5, margin=0.5)
    zt, yt = _logits(25, seed=6, margin=2.0)
    # the members and non-members among the targets too: one target then sits exactly at the
    # threshold, where "member" must include equality
    zt, yt = np.concatenate([zt, zm, zn]), np.concatenate([yt, ym, yn])
    zh, yh = _logits(135, seed=7, margin=0.5)
    got = P.threshold_attack((zm, ym), (zn, yn), (zt, yt), (zh, yh))
    sm, sn, st = (np.log(P.confidence(z, y)) for z, y in ((zm, ym), (zn, yn), (zt, yt)))
    best, best_t = -1.0, None
    for t in sorted(set(sm) | set(sn)):  # ascending: the first maximum is the lowest threshold
        bal = 0.5 * (np.mean(sm >= t) + np.mean(sn < t))
        if bal > best + 1e-15:
            best, best_t = bal, t
    assert got.member_rate == pytest.approx(100 * np.mean(st >= best_t))
    assert got.auc == pytest.approx(roc_auc_score(
        np.r_[np.ones(135), np.zeros(135)], np.r_[st, np.log(P.confidence(zh, yh))]))


def test_feature_attack_matches_a_hand_standardised_logistic_regression():
    from sklearn.linear_model import LogisticRegression

    zm, ym = _logits(80, seed=8, margin=4.0)
    zn, yn = _logits(80, seed=9, margin=0.0)
    zt, yt = _logits(30, seed=10, margin=4.0)  # drawn like the members
    zh, yh = _logits(30, seed=11, margin=0.0)
    got = P.feature_attack((zm, ym), (zn, yn), (zt, yt), (zh, yh), classifier="lr")
    f = np.concatenate([P.attack_features(zm, ym), P.attack_features(zn, yn)])
    mu, sd = f.mean(0), f.std(0)
    clf = LogisticRegression(class_weight="balanced").fit((f - mu) / sd, np.r_[np.ones(80), np.zeros(80)])
    ft = (P.attack_features(zt, yt) - mu) / sd
    fh = (P.attack_features(zh, yh) - mu) / sd
    assert got.member_rate == pytest.approx(100 * clf.predict(ft).mean())
    assert got.auc == pytest.approx(P.auc(clf.decision_function(ft), clf.decision_function(fh)),
                                    abs=1e-9)
    assert got.member_rate > 70 and got.auc > 0.8  # confident targets look like members
    svc = P.feature_attack((zm, ym), (zn, yn), (zh, yh), (zt, yt), classifier="svc")
    assert svc.member_rate < 50 and svc.auc < 0.3  # non-member-like targets, member-like held out
    with pytest.raises(ValueError, match="classifier='tree'"):
        P.feature_attack((zm, ym), (zn, yn), (zt, yt), classifier="tree")


@pytest.mark.parametrize("global_variance", [True, False])
def test_lira_scores_match_scipy_per_sample(global_variance):
    rng = np.random.default_rng(12)
    k, n = 8, 10
    mask = np.zeros((k, n), bool)
    for i in range(n):
        mask[rng.permutation(k)[:4], i] = True
    phi = rng.normal(size=(k, n)) + 2.0 * mask
    target = rng.normal(size=n) + 1.0
    got = P.lira_scores(target, phi, mask, global_variance=global_variance)
    if global_variance:
        ins = np.concatenate([phi[mask[:, i], i] - phi[mask[:, i], i].mean() for i in range(n)])
        outs = np.concatenate([phi[~mask[:, i], i] - phi[~mask[:, i], i].mean() for i in range(n)])
        s_in = math.sqrt(sum(v * v for v in ins) / (len(ins) - 1))
        s_out = math.sqrt(sum(v * v for v in outs) / (len(outs) - 1))
    for i in range(n):
        a, b = phi[mask[:, i], i], phi[~mask[:, i], i]
        si, so = (s_in, s_out) if global_variance else (a.std(ddof=1), b.std(ddof=1))
        want = norm.logpdf(target[i], a.mean(), si) - norm.logpdf(target[i], b.mean(), so)
        assert got[i] == pytest.approx(want, rel=1e-10, abs=1e-12)
    with pytest.raises(ValueError, match="in and out shadows"):
        P.lira_scores(target, phi, np.ones_like(mask))


def test_train_shadows_balances_membership_and_caches(tmp_path):
    rng = np.random.default_rng(13)
    x_r, y_r = rng.normal(size=(20, 3)), rng.integers(0, 2, 20)
    x_c, y_c = rng.normal(size=(9, 3)), np.ones(9, int)  # phi = +3 if trained on, else -3
    is_forget = np.arange(9) < 5
    calls = []

    def fit(x, y, k):  # a "model" whose logits reveal which candidates it trained on
        calls.append(k)
        seen = {tuple(r) for r in np.round(x, 12)}
        return lambda xs: np.stack([np.zeros(len(xs)), np.array(
            [3.0 if tuple(r) in seen else -3.0 for r in np.round(xs, 12)])], -1)

    kw = dict(fit=fit, n_shadows=6, seed=1, cache_dir=tmp_path, cache_key={"a": 1}, log=lambda *a: None)
    s = P.train_shadows(x_r, y_r, x_c, y_c, is_forget, **kw)
    assert calls == list(range(6)) and s.n_shadows == 6
    np.testing.assert_array_equal(s.in_mask.sum(0), np.full(9, 3))  # each candidate in 3 of 6
    calls.clear()
    again = P.train_shadows(x_r, y_r, x_c, y_c, is_forget, **kw)
    assert calls == [] and again.train_seconds == 0.0  # all from the cache
    np.testing.assert_array_equal(again.phi, s.phi)
    # a model that trained on every forget candidate and on no held-out one is caught: AUC 1
    logits = np.stack([np.zeros(9), np.where(is_forget, 3.0, -3.0)], -1)
    assert s.attack(logits, np.ones(9, int)).auc == pytest.approx(1.0)
    with pytest.raises(ValueError, match="n_shadows=1"):
        P.train_shadows(x_r, y_r, x_c, y_c, is_forget, fit=fit, n_shadows=1)


def test_output_distances_match_scipy():
    a, _ = _logits(15, 6, seed=14)
    b, _ = _logits(15, 6, seed=15)
    got = M.output_distances(a, b)
    pa = np.array([_softmax_loop(r) for r in a])
    pb = np.array([_softmax_loop(r) for r in b])
    kl = np.mean([rel_entr(pb[i], pa[i]).sum() for i in range(15)])
    js = np.mean([jensenshannon(pa[i], pb[i]) ** 2 for i in range(15)])  # scipy: sqrt, base e
    agree = 100 * np.mean([np.argmax(pa[i]) == np.argmax(pb[i]) for i in range(15)])
    assert got["kl"] == pytest.approx(kl, rel=1e-9)
    assert got["js"] == pytest.approx(js, rel=1e-9)
    assert got["agreement"] == pytest.approx(agree)
    same = M.output_distances(a, a)
    assert same["kl"] == pytest.approx(0, abs=1e-15) and same["agreement"] == 100
    with pytest.raises(ValueError, match="differ in shape"):
        M.output_distances(a, b[:3])


def test_relearn_steps_match_an_independent_loop():
    """A small MLP fine-tuned on 'forget' data: the step count equals a hand-written loop's
    (plain SGD with momentum on the functional parameters, the same batch order)."""
    import jax
    import jax.numpy as jnp

    from jit_jax import models
    from jit_jax.functional import functionalize
    from jit_jax.train import accuracy, predict

    rng = np.random.default_rng(16)
    x = rng.normal(size=(40, 4, 4, 1)).astype(np.float32)
    y = (x.reshape(40, -1).sum(1) > 0).astype(np.int32)
    model = models.create("mlp", 2, (4, 4, 1), hidden=8, depth=1)
    before = jax.tree.map(np.asarray, nnx_state(model))
    cfg = M.RelearnConfig(lr=0.05, batch_size=8, max_steps=60, tolerance=0.0, seed=3)
    target = 90.0
    got = M.relearn_steps(model, x, y, x, y, target, cfg)
    jax.tree.map(np.testing.assert_array_equal, before, jax.tree.map(np.asarray, nnx_state(model)))

    fn = functionalize(model, train=True)
    params = fn.params
    vel = jax.tree.map(jnp.zeros_like, params)

    def loss(p, xb, yb):
        lg = fn.apply_fn(p, xb)
        return -jnp.mean(jax.nn.log_softmax(lg)[jnp.arange(len(yb)), yb])

    grad = jax.jit(jax.grad(loss))
    order_rng = np.random.default_rng(cfg.seed)
    order, pos, want = order_rng.permutation(40), 0, None
    for k in range(1, cfg.max_steps + 1):
        if pos + 8 > 40:
            order, pos = order_rng.permutation(40), 0
        idx = order[pos:pos + 8]
        pos += 8
        g = grad(params, jnp.asarray(x[idx]), jnp.asarray(y[idx]))
        vel = jax.tree.map(lambda v, gi: 0.9 * v + gi, vel, g)
        params = jax.tree.map(lambda p, v: p - cfg.lr * v, params, vel)
        acc = 100 * np.mean(np.argmax(np.asarray(fn.apply_fn(params, jnp.asarray(x))), -1) == y)
        if acc >= target:
            want = k
            break
    assert accuracy(predict(model, x), y) < target  # the model did have to relearn
    assert want is not None and got == want


def nnx_state(model):
    from flax import nnx

    return nnx.state(model, nnx.Param)


def test_metrics_selection_and_missing_inputs(digits):
    from jit_jax import recipes
    from jit_jax.data import parse_forget
    from jit_jax.demo import train_original
    from jit_jax.models import ModelSpec

    split = parse_forget(digits, "class:3")
    spec = ModelSpec("mlp", digits.num_classes, digits.image_shape, {})
    cfg = recipes.train_recipe(digits.name, "mlp").replace(epochs=3)
    model, _ = train_original(digits, spec, cfg)
    prep = recipes.preprocess_fn(digits)
    r = M.evaluate_unlearning(model, digits, split, method="bsln", preprocess=prep, metrics="full")
    assert r.metrics["skipped"] == ["distances", "relearn", "ulira"]
    for k in ("mia_lr3", "mia_lr3_auc", "mia_svc3", "mia_svc3_auc", "mia_threshold",
              "mia_threshold_auc"):
        assert k in r.metrics
    ref = M.reference_logits(model, digits, split, preprocess=prep)
    r2 = M.evaluate_unlearning(model, digits, split, method="bsln", preprocess=prep,
                               metrics=["distances", "relearn"], reference=ref,
                               original_forget_acc=r.forget_acc)
    assert r2.metrics["kl_forget"] == pytest.approx(0, abs=1e-12)
    assert r2.metrics["agree_test"] == 100 and r2.metrics["relearn_steps"] == 0
    assert M.evaluate_unlearning(model, digits, split, method="bsln", preprocess=prep).metrics == {}
    with pytest.raises(ValueError, match="metric 'distances' needs reference="):
        M.evaluate_unlearning(model, digits, split, method="x", preprocess=prep, metrics="distances")
    with pytest.raises(ValueError, match=r"unknown metric\(s\) \['nope'\]"):
        M.evaluate_unlearning(model, digits, split, method="x", preprocess=prep, metrics="mia_lr3,nope")
    held = M.heldout_nonmembers(digits, split)
    assert np.all(digits.y_test[held] == split.forget_class)
    table = M.markdown_table([r2])
    assert "KL forget" in table and "Relearn steps" in table


def test_ulira_shadows_start_from_the_originals_pretrained_weights(tmp_path, monkeypatch):
    """For an original fine-tuned from pretrained ViT weights, every shadow model starts from them
    (all but the head), as RTRN does; the cache tells weights apart by content, not path; a
    missing file is an error naming it."""
    from jit_jax import metrics
    from jit_jax.data import forget_class, load_dataset
    from jit_jax.models import ModelSpec, export_vit_npz
    from jit_jax.models import vit as vit_mod
    from jit_jax.train import TrainConfig

    ds = load_dataset("digits")
    split = forget_class(ds, "3")
    spec = ModelSpec("vit", 10, ds.image_shape, {"patch_size": 4, "hidden": 8, "depth": 1,
                                                 "heads": 2, "mlp_dim": 16})
    cfg = TrainConfig(epochs=1, batch_size=256, optimizer="sgd", lr=1e-3, weight_decay=0.0,
                      augment="none")
    weights = tmp_path / "w.npz"
    export_vit_npz(spec.build(seed=7), weights)
    calls = []
    real = vit_mod.load_vit_npz

    def spy(model, path, **kw):
        calls.append((str(path), kw))
        return real(model, path, **kw)

    monkeypatch.setattr(vit_mod, "load_vit_npz", spy)
    kw = dict(n_shadows=2, cache_dir=tmp_path / "cache", log=lambda *a: None)
    first = metrics.train_ulira_shadows(ds, split, spec, cfg, init_weights=str(weights), **kw)
    assert calls == [(str(weights), {"load_head": False})] * 2
    again = metrics.train_ulira_shadows(ds, split, spec, cfg, init_weights=str(weights), **kw)
    assert len(calls) == 2 and again.train_seconds == 0.0  # cached
    np.testing.assert_array_equal(again.phi, first.phi)
    export_vit_npz(spec.build(seed=8), weights)  # other weights at the same path: not cached
    metrics.train_ulira_shadows(ds, split, spec, cfg, init_weights=str(weights), **kw)
    assert len(calls) == 4
    fresh = metrics.train_ulira_shadows(ds, split, spec, cfg, **kw)  # trained from scratch
    assert len(calls) == 4 and fresh.train_seconds > 0
    with pytest.raises(FileNotFoundError, match="missing.npz.*missing"):
        metrics.train_ulira_shadows(ds, split, spec, cfg, init_weights=str(tmp_path / "missing.npz"),
                                    **kw)
