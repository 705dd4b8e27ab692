"""Metrics: entropy, the MIA, the protocol's accuracies, retrain distance, tables."""

import json

import numpy as np
import pytest

from jit_jax import metrics as M
from jit_jax.data import Dataset, forget_class, forget_random, normalize


def test_entropy_matches_definition():
    logits = np.array([[0.0, 0.0], [10.0, -10.0], [1.0, 2.0]])
    p = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    want = -(p * np.log(p)).sum(1)
    np.testing.assert_allclose(M.entropy(logits), want, rtol=1e-10)
    np.testing.assert_allclose(M.entropy(np.array([[1e4, 0.0, 0.0]])), [0.0], atol=1e-12)


def _confident(n, rng, margin):
    z = rng.normal(size=(n, 4))
    z[:, 0] += margin
    return z


def test_mia_separates_confident_members():
    rng = np.random.default_rng(0)
    members = _confident(300, rng, 8.0)  # low entropy
    nonmembers = _confident(300, rng, 0.0)  # high entropy
    assert M.mia_score(members, nonmembers, _confident(50, rng, 8.0)) > 90
    assert M.mia_score(members, nonmembers, _confident(50, rng, 0.0)) < 20


def test_mia_balanced_weights_matter():
    """With 10x more members than non-members, balancing keeps uninformative targets near 50%."""
    rng = np.random.default_rng(1)
    members = _confident(2000, rng, 1.0)
    nonmembers = _confident(200, rng, 1.0)
    score = M.mia_score(members, nonmembers, _confident(400, rng, 1.0))
    assert 15 < score < 85


def test_mia_errors():
    z = np.zeros((3, 2))
    with pytest.raises(ValueError, match="forget"):
        M.mia_score(z, z, np.zeros((0, 2)))
    with pytest.raises(ValueError, match="member"):
        M.mia_score(np.zeros((0, 2)), z, z)


def test_retrain_distance():
    a = {"retain_acc": 90.0, "forget_acc": 10.0, "mia": 30.0}
    r = {"retain_acc": 92.0, "forget_acc": 0.0, "mia": 25.0}
    assert M.retrain_distance(a, r) == pytest.approx(2 + 10 + 5)
    assert M.retrain_distance(r, r) == 0.0


def _tiny_dataset():
    rng = np.random.default_rng(0)
    y_tr = np.repeat(np.arange(3), 20)
    y_te = np.repeat(np.arange(3), 10)
    x_tr = rng.integers(0, 255, (60, 4, 4, 1), dtype=np.uint8)
    x_te = rng.integers(0, 255, (30, 4, 4, 1), dtype=np.uint8)
    return Dataset("tiny", x_tr, y_tr, x_te, y_te, ("a", "b", "c"), (0.5,), (0.25,))


def _fake_predict(ds, split):
    """A fake predictor, by image: right on every training image (margin 10 on retained samples,
    1..7 on forget samples), on test images right with margin 0.5 except class 1 (wrong, margin 4).
    Each set thus has its own entropy profile, so the MIA depends on which set plays which role."""
    table = {}
    for i, y in enumerate(ds.y_train):
        table[ds.x_train[i].tobytes()] = (int(y), 10.0)
    for j, i in enumerate(split.forget_idx):
        table[ds.x_train[i].tobytes()] = (int(ds.y_train[i]), 1.0 + j % 7)
    for i, y in enumerate(ds.y_test):
        table[ds.x_test[i].tobytes()] = ((y + 1) % 3, 4.0) if y == 1 else (int(y), 0.5)

    def predict(model, x, batch_size=500):
        raw = np.clip(np.rint((x * 0.25 + 0.5) * 255), 0, 255).astype(np.uint8)
        out = np.zeros((len(x), 3))
        for i, img in enumerate(raw):
            label, margin = table[img.tobytes()]
            out[i, label] = margin
        return out

    def logits(x_uint8):
        return predict(None, normalize(x_uint8, ds.mean, ds.std))

    return predict, logits


def test_evaluate_unlearning_follows_the_protocol(monkeypatch):
    ds = _tiny_dataset()
    split = forget_class(ds, 1)
    fake, logits = _fake_predict(ds, split)
    monkeypatch.setattr(M, "predict", fake)
    r = M.evaluate_unlearning(object(), ds, split, method="fake")
    assert r.task == "class"
    assert r.retain_acc == 100.0  # test images of classes 0 and 2
    assert r.forget_acc == 0.0  # test images of class 1, all wrong
    # 100 * mean of 30 booleans in float64: the count is exact, the division and the product each
    # round once, and so does the reference 200 / 3: rel err <= 3 * 2^-53
    assert r.test_acc == pytest.approx(200 / 3, rel=3 * 2.0**-53, abs=0)
    # MIA: members = retained training samples, non-members = the whole test set, targets = the
    # forget training samples (the sets built here by hand, not by evaluation_sets).
    members = logits(ds.x_train[split.retain_idx])
    target = logits(ds.x_train[split.forget_idx])
    want = M.mia_score(members, logits(ds.x_test), target)
    assert r.mia == want
    # ... and every wrong non-member set gives another score, so a swap would be caught.
    wrong = {"train": logits(ds.x_train), "forget_train": target,
             "retained-class test": logits(ds.x_test[ds.y_test != 1]),
             "forget-class test": logits(ds.x_test[ds.y_test == 1]), "retain_train": members}
    for name, nonmembers in wrong.items():
        assert M.mia_score(members, nonmembers, target) != want, name
    assert M.mia_score(logits(ds.x_train), logits(ds.x_test), target) != want  # wrong members

    split = forget_random(ds, 5, seed=0)
    fake, logits = _fake_predict(ds, split)
    monkeypatch.setattr(M, "predict", fake)
    r = M.evaluate_unlearning(object(), ds, split, method="fake")
    assert r.retain_acc == pytest.approx(200 / 3, rel=3 * 2.0**-53, abs=0)  # full test set; as above
    assert r.forget_acc == 100.0  # the forget *training* samples
    target = logits(ds.x_train[split.forget_idx])
    assert r.mia == M.mia_score(logits(ds.x_train[split.retain_idx]), logits(ds.x_test), target)
    json.loads(r.to_json())


def test_evaluate_unlearning_refuses_non_finite_outputs(monkeypatch):
    ds = _tiny_dataset()

    def diverged(model, x, batch_size=500):
        out = np.zeros((len(x), 3))
        out[: min(2, len(x))] = np.nan
        return out

    monkeypatch.setattr(M, "predict", diverged)
    with pytest.raises(FloatingPointError, match=r"jit: .*NaN or inf on 2 of \d+ 'retain'"):
        M.evaluate_unlearning(object(), ds, forget_class(ds, 1), method="jit")


def test_tables(tmp_path):
    rs = [M.UnlearnResult("jit", "class", "class:1", 90.0 + s, 1.0, 88.0, 20.0, runtime=0.5,
                          zero_shot=True, retrain_distance=5.0 + s, seed=s) for s in range(3)]
    rs.append(M.UnlearnResult("rtrn", "class", "class:1", 92.0, 0.0, 89.0, 18.0, runtime=9.0,
                              retrain_distance=0.0, seed=0))
    rows = M.summarize(rs)
    assert rows[0]["method"] == "jit" and rows[0]["n"] == 3
    assert rows[0]["retain_acc"] == pytest.approx(91.0)
    assert rows[0]["retain_acc_sd"] == pytest.approx(np.std([90, 91, 92]))
    md = M.markdown_table(rs)
    assert "| jit | 91.0 ± 0.8 |" in md and "| rtrn | 92.0 |" in md
    M.write_results(tmp_path / "r.json", rs, context={"a": 1})
    payload = json.loads((tmp_path / "r.json").read_text())
    assert len(payload["runs"]) == 4 and payload["context"] == {"a": 1}
    assert (tmp_path / "r.md").read_text().startswith("| Method |")
