"""``--method auto`` (jit_jax/unlearn/auto.py) and the update loop's extensions it uses: the
information radius against brute force, relative steps against their definition, the stopping
statistics against a float64 loop, per-sample sigma, aux and retain rows, and the method end to
end on digits with no options."""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jit_jax.unlearn import auto
from jit_jax.unlearn.jit import JiTConfig, jit_unlearn, perturb


def test_information_radius_is_the_kth_nearest_other_sample():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((30, 2, 3, 2))
    x[7] = x[3]  # a copy: its nearest neighbour is at distance 0
    flat = x.reshape(30, -1)
    for k in (1, 2, 5, 29, 40):
        got = auto.information_radius(x, k, batch_size=7)  # several blocks
        for i in range(30):
            d = sorted(np.linalg.norm(flat[i] - flat[j]) for j in range(30) if j != i)
            assert got[i] == pytest.approx(d[min(k, 29) - 1], rel=1e-12, abs=1e-12), (k, i)
    assert auto.information_radius(x, 1)[7] == 0.0
    with pytest.raises(ValueError, match="at least 2 forget samples, got 1"):
        auto.information_radius(x[:1], 3)
    with pytest.raises(ValueError, match="k=0; accepted: an integer >= 1"):
        auto.information_radius(x, 0)


def test_chosen_sigma_scales_the_radius_and_falls_back_without_neighbours():
    rng = np.random.default_rng(1)
    x = rng.standard_normal((10, 4, 4, 1)).astype(np.float32)
    cfg = dataclasses.replace(auto.AUTO_DEFAULTS, k=3, scale=0.5)
    sig, info = auto.chosen_settings(x, cfg, 0.7)
    np.testing.assert_allclose(sig, 0.5 * auto.information_radius(x, 3) / 4.0, rtol=1e-6)
    assert info["sigma_median"] == pytest.approx(float(np.median(sig)))
    one, info1 = auto.chosen_settings(x[:1], cfg, 0.7)
    assert one.tolist() == [pytest.approx(0.7)] and "one forget sample" in info1["sigma_rule"]
    same, _ = auto.chosen_settings(np.repeat(x[:1], 4, 0), cfg, 0.7)
    assert np.allclose(same, 0.7)
    x2 = np.concatenate([x, x[:1], x[:1], x[:1]])  # x[0] has 3 copies: its k=3 radius is 0
    sig2, _ = auto.chosen_settings(x2, cfg, 0.7)
    assert np.all(sig2 > 0)


def test_relative_steps_move_the_parameters_by_step_times_their_norm():
    params = {"a": jnp.array([3.0, 4.0]), "b": jnp.array([[12.0]])}  # ||params|| = 13
    g = {"a": jnp.array([0.0, 2.0]), "b": jnp.array([[0.0]])}
    tx = auto.relative_steps(0.1)
    upd, _ = tx.update(g, tx.init(params), params)
    np.testing.assert_allclose(upd["a"], [0.0, -1.3], rtol=1e-6)
    np.testing.assert_allclose(upd["b"], [[0.0]])
    zero, _ = tx.update(jax.tree.map(jnp.zeros_like, g), tx.init(params), params)
    assert all(float(jnp.max(jnp.abs(v))) == 0 for v in jax.tree.leaves(zero))


def test_layer_steps_move_each_tensor_by_step_times_its_own_norm():
    """norm="layer": each tensor moves by step x its norm along its own normalised gradient; a
    tensor whose norm is below LAYER_NORM_FLOOR moves by step x the floor; a zero gradient, not
    at all. The global rule on the same input scales every gradient by 0.1 ||params|| / ||g||."""
    params = {"a": jnp.array([3.0, 4.0]), "b": jnp.array([[12.0]]), "c": jnp.zeros(2),
              "d": jnp.array([1.0])}
    g = {"a": jnp.array([0.0, 2.0]), "b": jnp.array([[-3.0]]), "c": jnp.array([4.0, 3.0]),
         "d": jnp.array([0.0])}
    tx = auto.relative_steps(0.1, "layer")
    upd, _ = tx.update(g, tx.init(params), params)
    np.testing.assert_allclose(upd["a"], [0.0, -0.5], rtol=1e-6)
    np.testing.assert_allclose(upd["b"], [[1.2]], rtol=1e-6)
    floor = auto.LAYER_NORM_FLOOR
    np.testing.assert_allclose(upd["c"], [-0.1 * floor * 0.8, -0.1 * floor * 0.6], rtol=1e-6)
    np.testing.assert_array_equal(upd["d"], [0.0])
    glob, _ = auto.relative_steps(0.1).update(g, tx.init(params), params)  # norms over all
    np.testing.assert_allclose(glob["a"], [0.0, -0.2 * np.sqrt(170 / 38)], rtol=1e-6)
    with pytest.raises(ValueError, match="norm='unit'; accepted: global, layer"):
        auto.relative_steps(0.1, "unit")


def test_a_pass_that_raises_jits_ratio_is_undone():
    """With lip_rise, the stop rule ends the run at the first pass whose ratio exceeds lip_rise x
    its start and hands back the parameters from before that pass; without it, the same
    statistics run on; a pass that stays at or below the threshold is kept."""
    lips = iter([2.0, 1.9, 2.1, 2.5, 9.0])  # start, then after passes 0, 1, 2, 3

    def stats(params):
        return {"gap": 0.0, "lip": next(lips)}

    cfg = dataclasses.replace(auto.AUTO_DEFAULTS, lip_ratio=0.0, gap_peak=False, lip_rise=1.2)
    p = {name: {"w": jnp.full((2,), float(i))} for i, name in enumerate(["init", "0", "1", "2"])}

    def same(a, b):
        return all(np.array_equal(x, y) for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b),
                                                          strict=True))

    stop = auto.Stop(stats, stats(None), cfg, p["init"])
    assert stop(p["0"], 0)[0] is False and same(stop.result(p["0"]), p["0"])
    assert stop(p["1"], 1)[0] is False and same(stop.result(p["1"]), p["1"])  # 2.1 <= 1.2 x 2
    done, info, keep = stop(p["2"], 2)  # 2.5 > 2.4: the loop is handed the parameters before
    assert done and info["undone"] == 1.0 and same(keep, p["1"])
    assert same(stop.result(p["2"]), p["1"])
    lips = iter([2.0, 2.5, 9.0])
    off = auto.Stop(stats, stats(None), dataclasses.replace(cfg, lip_rise=0.0), p["init"])
    assert off(p["0"], 0)[0] is False and off(p["1"], 1)[0] is False
    assert same(off.result(p["1"]), p["1"])
    lips = iter([2.0, 3.0])
    first = auto.Stop(stats, stats(None), cfg, p["init"])
    assert first(p["0"], 0)[0] and same(first.result(p["0"]), p["init"])  # first pass undone


def test_forget_stats_match_a_float64_loop():
    """The gap and JiT's ratio from forget_stats_fn against numpy on a linear model, with the same
    fixed draws (perturb, no clipping, keys from seed + 7919), both in float64. Bound: logits are
    D = 6 term dot products, then a log-softmax over 3 and means over <= 5 x 4: O(10) roundings of
    O(1) quantities, ~1e-14 relative between the two orders; 1e-10 leaves a factor 1e4. A wrong
    statistic (the draws' mean in the wrong place, the norm of the wrong difference) is off by
    O(1)."""
    rng = np.random.default_rng(2)
    w = rng.standard_normal((6, 3))
    x = rng.standard_normal((5, 6))
    y = np.array([0, 1, 2, 1, 0])
    sig = np.array([0.1, 0.2, 0.3, 0.4, 0.5])

    def apply(p, xx):
        return xx @ p

    with jax.enable_x64(True):
        stats = auto.forget_stats_fn(apply, x, sig, y, num_checks=4, seed=11,
                                     chunk=2)(jnp.asarray(w))
        keys = jax.random.split(jax.random.key(11 + 7919), 4)
        noisy = [np.asarray(perturb(k, jnp.asarray(x[s:s + 2]), jnp.asarray(sig[s:s + 2]),
                                    clip=False)) for k in keys for s in (0, 2, 4)]
    assert noisy[0].dtype == np.float64
    noisy = np.stack([np.concatenate(noisy[m * 3:(m + 1) * 3]) for m in range(4)])  # (4, 5, 6)
    gaps, lips = [], []

    def logp(v, c):
        z = v @ w
        return z[c] - z.max() - np.log(np.exp(z - z.max()).sum())

    for i in range(5):
        gaps.append(logp(x[i], y[i]) - np.mean([logp(noisy[m, i], y[i]) for m in range(4)]))
        lips.append(np.mean([np.linalg.norm(x[i] @ w - noisy[m, i] @ w)
                             / np.linalg.norm(x[i] - noisy[m, i]) for m in range(4)]))
    assert stats["gap"] == pytest.approx(np.mean(gaps), rel=1e-10, abs=1e-12)
    assert stats["lip"] == pytest.approx(np.mean(lips), rel=1e-10)


def test_should_stop_on_the_lip_ratio_the_gap_peak_or_a_non_finite_value():
    first = {"gap": 1.0, "lip": 2.0}
    assert not auto.should_stop({"gap": 3.0, "lip": 1.7}, {"gap": 2.0, "lip": 1.9}, first, 0.8,
                                True)
    assert auto.should_stop({"gap": 3.0, "lip": 1.6}, {"gap": 2.0, "lip": 1.9}, first, 0.8, True)
    assert not auto.should_stop({"gap": 3.0, "lip": 1.6}, {"gap": 2.0, "lip": 1.9}, first, 0.0,
                                True)  # lip_ratio 0: that test is off
    assert auto.should_stop({"gap": 1.9, "lip": 1.9}, {"gap": 2.0, "lip": 1.9}, first, 0.0, True)
    assert not auto.should_stop({"gap": 1.9, "lip": 1.9}, {"gap": 2.0, "lip": 1.9}, first, 0.0,
                                False)
    assert auto.should_stop({"gap": float("nan"), "lip": 1.9}, first, first, 0.0, False)


def test_perturb_takes_one_sigma_per_sample():
    x = jnp.zeros((3, 2, 2))
    key = jax.random.key(0)
    got = perturb(key, x, jnp.array([0.0, 1.0, 2.0]), clip=False)
    eps = jax.random.normal(key, x.shape)
    np.testing.assert_allclose(got, eps * jnp.array([0.0, 1.0, 2.0])[:, None, None], rtol=1e-6)


def _model():
    from flax import nnx

    class M(nnx.Module):
        def __init__(self):
            self.w = nnx.Param(jnp.asarray(np.random.default_rng(0).standard_normal((4, 3)),
                                           jnp.float32))

        def __call__(self, x):
            return x.reshape(x.shape[0], -1) @ self.w

    return M()


def test_loop_passes_aux_rows_and_retain_batches_and_stops_when_told():
    """Each step's objective sees its batch's aux rows (padded like the batch) and a retain batch
    of distinct rows; the stop function ends the loop after pass 2 of 5."""
    x = np.arange(7 * 4, dtype=np.float32).reshape(7, 4)
    ids = np.arange(7, dtype=np.int32) + 100
    retain = {"v": np.arange(50, dtype=np.int32)}
    seen = []

    def vg(apply_fn, params, xb, key, *, mask, forward_keys, aux):
        jax.debug.callback(lambda *a: seen.append(a), aux["ids"], aux["retain_v"], mask)
        return jnp.float32(0.0), jax.tree.map(jnp.zeros_like, params)

    calls = []

    def stop(params, p):
        calls.append(p)
        return p == 1, {"p": p}

    _, log = jit_unlearn(_model(), x, JiTConfig(batch_size=3, passes=5), value_and_grad=vg,
                         aux={"ids": ids}, retain=retain, stop=stop)
    steps = seen
    assert log.passes_run == 2 and calls == [0, 1] and log.num_steps == 6
    assert [p["p"] for p in log.pass_info] == [0.0, 1.0]
    got = [np.asarray(a).tolist() for a, _, _ in steps[:3]]
    assert got == [[100, 101, 102], [103, 104, 105], [106, 106, 106]]
    assert np.asarray(steps[2][2]).tolist() == [1, 0, 0]
    for _, r, _ in steps:
        r = np.asarray(r)
        assert len(r) == 3 and len(set(r.tolist())) == 3 and r.max() < 50


def test_loop_rejects_misaligned_aux_and_empty_retain():
    x = np.zeros((5, 4), np.float32)
    with pytest.raises(ValueError, match=r"aux\['ids'\] has shape \(4,\); accepted: first "
                                         r"dimension 5"):
        jit_unlearn(_model(), x, JiTConfig(), aux={"ids": np.zeros(4)})
    with pytest.raises(ValueError, match="retain arrays have lengths"):
        jit_unlearn(_model(), x, JiTConfig(), retain={"x": np.zeros((0, 4))})


def test_auto_config_rejects_bad_values():
    for field, bad, accepted in [("k", 0, "an integer >= 1"), ("scale", -1.0, "> 0"),
                                 ("step", float("nan"), "> 0"),
                                 ("lip_ratio", 1.0, r"in \[0, 1\)"),
                                 ("lip_rise", 0.5, r"0 \(off\) or a finite number >= 1"),
                                 ("norm", "unit", "'global' or 'layer'"),
                                 ("max_passes", 0, ">= 1")]:
        with pytest.raises(ValueError, match=rf"auto: {field}=.*accepted: .*{accepted}"):
            dataclasses.replace(auto.AUTO_DEFAULTS, **{field: bad})


def test_auto_runs_with_no_options_and_reports_what_it_chose(digits_class3_request):
    """On a digits class with no options: a new model (the source untouched), zero-shot, the
    chosen sigma/step/passes in the log, the stopping statistic logged per pass; an unknown option
    is an error naming the accepted ones; a single-sample forget set runs."""
    from jit_jax import unlearn
    from jit_jax.functional import functionalize

    req = digits_class3_request
    model, split = req.model, req.split
    before = jax.tree.map(np.asarray, functionalize(model).params)
    # a class request: with no options rule 4 runs (test below); class_share=0 with random_rule
    # off keeps smoothing
    out = unlearn.run("auto", req, max_passes=2, class_share=0.0, random_rule=False)
    assert out.zero_shot
    chosen = out.log["chosen"]
    assert chosen["mode"] == "smoothing"
    assert chosen["sigma_min"] > 0 and 1 <= chosen["passes_run"] <= 2
    assert len(out.log["pass_info"]) == chosen["passes_run"]
    assert {"gap", "lip", "gap0", "lip0"} <= set(out.log["pass_info"][0])
    after = jax.tree.map(np.asarray, functionalize(out.model).params)
    assert any(not np.array_equal(a, b) for a, b in zip(jax.tree.leaves(before),
                                                         jax.tree.leaves(after), strict=True))
    jax.tree.map(np.testing.assert_array_equal, before,
                 jax.tree.map(np.asarray, functionalize(model).params))
    with pytest.raises(ValueError, match=r"unknown option\(s\) \['sigma'\] for method 'auto'; "
                                         r"accepted: \['k', 'scale'"):
        unlearn.run("auto", req, sigma=0.5)
    one = dataclasses.replace(split, forget_idx=split.forget_idx[:1])
    out1 = unlearn.run("auto", dataclasses.replace(req, split=one), max_passes=1,
                       class_share=0.0, random_rule=False)
    assert "one forget sample" in out1.log["chosen"]["sigma_rule"]


def test_label_objectives_run_as_methods(digits_class3_request):
    """ga/npo/dpo/idkpo/graddiff/curvature as registered methods: they change the model, and
    graddiff is marked as not zero-shot (it reads D_r)."""
    from jit_jax import unlearn
    from jit_jax.metrics import evaluate_unlearning

    req = digits_class3_request
    model, split, digits = req.model, req.split, req.dataset
    base = evaluate_unlearning(model, digits, split, method="bsln").forget_acc
    for name in ("ga", "npo", "dpo", "idkpo", "graddiff"):
        out = unlearn.run(name, req, lr=0.05, passes=3)
        assert out.zero_shot == (name != "graddiff"), name
        got = evaluate_unlearning(out.model, digits, split, method=name).forget_acc
        assert got < base, (name, got, base)
    out = unlearn.run("curvature", req, lr=1e-4)
    assert out.log["num_steps"] >= 1 and np.isfinite(out.log["losses"]).all()


def test_auto_starts_again_with_a_smaller_step_when_its_first_pass_is_undone(
        digits_class3_request, monkeypatch):
    """Scripted statistics: the first attempt's first pass raises JiT's ratio above lip_rise x its
    start, so it is undone; with retries=1 the run starts again from the original with
    RETRY_FACTOR x the step and keeps both passes; with retries=0 the original parameters come
    back unchanged."""
    from jit_jax import unlearn
    from jit_jax.functional import functionalize

    def scripted(lips):
        it = iter(lips)
        monkeypatch.setattr(auto, "forget_stats_fn",
                            lambda *a, **k: (lambda params: {"gap": 0.0, "lip": next(it)}))

    req = digits_class3_request
    # class_share=0 and random_rule off: the smoothing path (rules 1-3) on this class request
    opts = dict(step=0.01, max_passes=2, lip_ratio=0.0, gap_peak=False, lip_rise=1.25,
                class_share=0.0, random_rule=False)
    scripted([1.0, 2.0, 0.9, 0.8])  # the start (measured once), attempt 1: pass 0; attempt 2: 0, 1
    out = unlearn.run("auto", req, retries=1, **opts)
    c = out.log["chosen"]
    assert c["attempts"] == [{"step": 0.01, "passes_run": 1, "passes_kept": 0},
                             {"step": pytest.approx(0.01 * auto.RETRY_FACTOR), "passes_run": 2,
                              "passes_kept": 2}]
    assert c["step_used"] == pytest.approx(0.0025)
    original = jax.tree.map(np.asarray, functionalize(req.model).params)
    after = jax.tree.map(np.asarray, functionalize(out.model).params)
    assert any(not np.array_equal(a, b) for a, b in zip(jax.tree.leaves(original),
                                                         jax.tree.leaves(after), strict=True))
    # undone after the second pass: the parameters kept are those after the first, which the
    # loop donated to its next step (kept as a copy; without it, the buffers are deleted)
    scripted([1.0, 0.9, 2.0])
    out1 = unlearn.run("auto", req, retries=1, **{**opts, "max_passes": 3})
    assert out1.log["chosen"]["passes_run"] == 2 and out1.log["chosen"]["passes_kept"] == 1
    one = jax.tree.map(np.asarray, functionalize(out1.model).params)
    assert all(np.all(np.isfinite(v)) for v in jax.tree.leaves(one))
    assert any(not np.array_equal(a, b) for a, b in zip(jax.tree.leaves(original),
                                                         jax.tree.leaves(one), strict=True))
    scripted([1.0, 2.0])
    out0 = unlearn.run("auto", req, retries=0, **opts)
    assert out0.log["chosen"]["passes_kept"] == 0 and len(out0.log["chosen"]["attempts"]) == 1
    jax.tree.map(np.testing.assert_array_equal, original,
                 jax.tree.map(np.asarray, functionalize(out0.model).params))


def _rules_module():
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "experiments" / "auto_rules.py"
    spec = importlib.util.spec_from_file_location("auto_rules_under_test", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_choose_replays_the_damage_test_and_its_retry_from_the_traces():
    """auto_rules' replay of a rule on traced passes: the pass before the first rise beyond
    lip_rise is kept (the passes run counted); a rise on the first pass with retries moves to
    the run traced at RETRY_FACTOR x the step, which restarts from the original; a step not traced
    makes the rule unscorable; per-family balance averages the families and takes the worst
    family's D_r drop."""
    ar = _rules_module()

    def rows(lips, dists, drops):
        return [{"pass": p, "lip": lip, "gap": float(p), "retrain_distance": d, "dr_drop": dr}
                for p, (lip, d, dr) in enumerate(zip(lips, dists, drops, strict=True))]

    big = {"seed": 0, "forget": "class:1", "scale": 1.0, "step": 0.004, "norm": "layer",
           "passes": rows([1.0, 2.0, 3.0], [50, 90, 95], [0, 20, 25])}
    small = {**big, "step": 0.001, "passes": rows([1.0, 0.9, 1.1, 1.5], [50, 30, 20, 60],
                                                  [0, 1, 2, 9])}
    t = {"dataset": "d", "model": "vgg", "runs": [big, small]}
    kept = ar.stop_pass(small["passes"], 0.0, False, 8, 1.25)
    assert kept["retrain_distance"] == 20 and kept["pass"] == 3  # pass 3 undone, pass 2 kept
    assert ar.replay(t, big, 0.0, False, 8, 1.25, 0)["retrain_distance"] == 50  # untouched
    got = ar.replay(t, big, 0.0, False, 8, 1.25, 1)
    assert got["retrain_distance"] == 20 and got["pass"] == 1 + 3  # passes of both attempts
    assert ar.replay(t, small, 0.0, False, 8, 1.25, 0)["retrain_distance"] == 20
    assert ar.stop_pass(small["passes"], 0.0, False, 8, 0.0)["retrain_distance"] == 60  # no test
    rising = {**small, "passes": rows([1.0, 2.0], [50, 80], [0, 10])}
    t2 = {**t, "runs": [big, rising]}
    assert ar.replay(t2, big, 0.0, False, 8, 1.25, 1)["retrain_distance"] == 50
    assert ar.replay(t2, big, 0.0, False, 8, 1.25, 2) is None  # 0.004 / 16 was not traced
    mlp = {"dataset": "e", "model": "mlp", "runs": [{**small, "passes": rows(
        [1.0, 0.5], [10, 4], [0, 3])}]}
    row = ar.score([t, mlp], "layer", 1.0, 0.001, 0.0, False, 8, 1.25, 0)
    assert row["per_model"] == {"vgg": {"retrain_distance": 20.0, "dr_drop": 2.0},
                                "mlp": {"retrain_distance": 4.0, "dr_drop": 3.0}}
    bal = ar.balanced(row)
    assert bal["retrain_distance"] == 12.0 and bal["dr_drop"] == 3.0


def test_the_untouched_distance_counts_each_task_once():
    """choose's reference line: each (dataset, model, request, seed) once, whatever number of
    steps was traced for it; balanced over model families when the rules are (numbers by hand)."""
    rules = _rules_module()

    def run(forget, seed, step, d0):
        return {"forget": forget, "seed": seed, "step": step, "passes": [{"retrain_distance": d0}]}

    mlp = {"dataset": "digits", "model": "mlp",
           "runs": [run("class:0", 0, s, 100.0) for s in (1e-3, 4e-3, 1.6e-2)]
           + [run("class:0", 1, 1e-3, 80.0)]}
    vgg = {"dataset": "cifar", "model": "vgg11", "runs": [run("class:2", 0, 1e-3, 30.0)]}
    assert rules.untouched_distance([mlp, vgg]) == pytest.approx((100 + 80 + 30) / 3)
    assert rules.untouched_distance([mlp, vgg], True) == pytest.approx((90 + 30) / 2)


def test_trace_helpers_shuffle_patches_and_label_batchnorm_parameters():
    """The trace's diagnostics: every shuffled image holds exactly its own patches (a permutation,
    not the identity); ``update_labels`` freezes exactly the BatchNorm scales and biases
    (``no_norm``) or everything else (``norm_only``); the probe statistics are zero for the
    original model."""
    from jit_jax.functional import functionalize
    from jit_jax.models import ModelSpec

    rules = _rules_module()
    x = np.arange(3 * 8 * 8 * 2, dtype=np.float32).reshape(3, 8, 8, 2)
    y = rules.shuffled_patches(x, grid=4, seed=0)

    def patches(img):
        corners = [(a, b) for a in range(0, 8, 2) for b in range(0, 8, 2)]
        return sorted(img[a:a + 2, b:b + 2].tobytes() for a, b in corners)

    assert y.shape == x.shape and not np.array_equal(x, y)
    for i in range(3):
        assert patches(y[i]) == patches(x[i])
    model = ModelSpec("resnet18", 3, (8, 8, 1), {"width": 4}).build(0)
    fn = functionalize(model)
    leaves = jax.tree_util.tree_leaves_with_path(fn.params)
    in_norm = [any(k in jax.tree_util.keystr(p) for k in ("bn", "norm")) for p, _ in leaves]
    assert sum(in_norm) == 40  # 20 BatchNorm layers, a scale and a bias each
    for which, want in (("all", lambda n: "move"), ("no_norm", lambda n: "freeze" if n else "move"),
                        ("norm_only", lambda n: "move" if n else "freeze")):
        got = jax.tree_util.tree_leaves(rules.update_labels(model, fn.params, which))
        assert got == [want(n) for n in in_norm], which
    xs = np.random.default_rng(0).normal(size=(5, 8, 8, 1)).astype(np.float32)
    labels = np.argmax(np.asarray(fn.apply_fn(fn.params, xs)), -1)
    stats = rules.probe_stats_fn(fn, xs, labels, seed=0)(fn.params)
    assert stats == {"cond_kl": 0.0, "shuf_kl": 0.0, "shuf_flip": 0.0}


def test_label_share_and_class_mode_switch():
    assert auto.label_share(np.array([3, 3, 3, 3])) == 1.0
    assert auto.label_share(np.array([0, 1, 1, 2, 1])) == 0.6
    assert auto.label_share(np.array([], np.int32)) == 0.0
    cfg = dataclasses.replace(auto.AUTO_DEFAULTS, class_share=0.9)
    assert auto.class_mode(np.array([7] * 9 + [2]), cfg)
    assert not auto.class_mode(np.array([7] * 8 + [2, 1]), cfg)
    assert not auto.class_mode(np.array([7] * 10), dataclasses.replace(cfg, class_share=0.0))
    for bad in (dict(class_share=1.5), dict(class_objective="ga"), dict(class_grow=0.5),
                dict(class_step=1e-2, class_max_step=1e-3), dict(class_target=101.0),
                dict(class_passes=0)):
        with pytest.raises(ValueError, match=next(iter(bad))):
            auto.AutoConfig(**bad)


def test_random_stop_fires_on_the_first_criterion_met_relative_to_the_start():
    """RandomStop (rule 5): done at the first pass whose accuracy fell by random_drop points, whose
    mean confidence fell by random_conf_drop, or whose mean error 1 - conf grew random_err_rise
    times, each measured from the untouched model's values; criteria at 0 are not used; the step
    grows as in rule 4."""
    first = {"acc": 100.0, "conf": 0.99}
    seq = [{"acc": 100.0, "conf": 0.989}, {"acc": 100.0, "conf": 0.975},
           {"acc": 98.0, "conf": 0.96}, {"acc": 90.0, "conf": 0.80}]

    def run(**kw):
        cfg = auto.AutoConfig(class_step=1e-4, class_grow=2.0, class_min_move=0.05, **kw)
        it = iter(seq)
        st = auto.RandomStop(lambda params: next(it), first, cfg)
        state = auto.adjustable_relative_steps(cfg.class_step).init({"w": jnp.ones(3)})
        for p in range(len(seq)):
            done, _ = st(None, p)
            if done:
                return p + 1, st.steps
            state = st.adjust(state, p)
        return None, st.steps

    # error 0.01 -> 0.011, 0.025 (2.5x), 0.04, 0.2
    assert run(random_err_rise=2.0)[0] == 2
    assert run(random_err_rise=3.0)[0] == 3
    assert run(random_drop=2.0)[0] == 3
    assert run(random_drop=5.0)[0] == 4
    assert run(random_conf_drop=0.1)[0] == 4
    assert run(random_drop=5.0, random_err_rise=2.0)[0] == 2  # the first met
    assert run()[0] is None  # nothing set: never done early
    # the confidence moved < 0.05 on passes 1-3: the step doubled after each of them
    np.testing.assert_allclose(run()[1], [1e-4, 2e-4, 4e-4, 8e-4])
    # with random_hold, once a sample has flipped (pass 3: 98%) the step stops growing
    np.testing.assert_allclose(run(random_hold=True)[1], [1e-4, 2e-4, 4e-4, 4e-4])
    # rule 5 grows by its own factor: random_grow, not class_grow (rule 4's)
    np.testing.assert_allclose(run(random_grow=3.0)[1], [1e-4, 3e-4, 9e-4, 2.7e-3])
    cfg4 = dict(class_step=1e-4, class_grow=4.0, class_min_move=0.05)
    it = iter(seq)
    st = auto.RandomStop(lambda params: next(it), first, auto.AutoConfig(**cfg4))
    state = auto.adjustable_relative_steps(1e-4).init({"w": jnp.ones(3)})
    for p in range(3):
        st(None, p)
        state = st.adjust(state, p)
    np.testing.assert_allclose(st.steps, [1e-4, 2e-4, 4e-4])
    for bad in (dict(random_drop=-1.0), dict(random_conf_drop=2.0), dict(random_err_rise=0.5),
                dict(random_passes=0), dict(random_rule=1), dict(random_hold="yes"),
                dict(random_grow=0.5)):
        with pytest.raises(ValueError, match=next(iter(bad))):
            auto.AutoConfig(**bad)


def test_class_stop_grows_the_step_until_the_confidence_moves_and_stops_at_the_target():
    """ClassStop on a scripted sequence of (accuracy, confidence): the step grows by class_grow
    after each pass that lowered the mean confidence by less than class_min_move, never beyond
    class_max_step, and the run stops at the first pass whose accuracy is at most the target."""
    seq = iter([{"acc": 100.0, "conf": 0.99}, {"acc": 100.0, "conf": 0.97},
                {"acc": 90.0, "conf": 0.80}, {"acc": 60.0, "conf": 0.78},
                {"acc": 4.0, "conf": 0.10}])
    cfg = auto.AutoConfig(class_step=1e-4, class_grow=4.0, class_min_move=0.05,
                          class_max_step=1e-3, class_target=5.0)
    st = auto.ClassStop(lambda params: next(seq), {"acc": 100.0, "conf": 1.0}, cfg)
    state = auto.adjustable_relative_steps(cfg.class_step).init({"w": jnp.ones(3)})
    done = []
    for p in range(5):
        d, info = st(None, p)
        done.append(d)
        assert info["step"] == st.steps[-1]
        if not d:
            state = st.adjust(state, p)
    assert done == [False, False, False, False, True]
    # passes 1, 2 and 4 moved the confidence by < 0.05: x4, x4 (capped at 1e-3), x4 (capped)
    np.testing.assert_allclose(st.steps, [1e-4, 4e-4, 1e-3, 1e-3, 1e-3])
    assert float(state.hyperparams["step"]) == pytest.approx(1e-3)


def test_class_growth_variants_grow_on_an_absolute_or_relative_fall_or_hold():
    """class_growth on one scripted sequence of mean confidences (untouched 0.8): "fall" grows
    after each pass that lowered the confidence by less than class_min_move (0.05), which every
    pass does once the confidence is low; "relative" scales that bound by the confidence before
    the pass over the untouched model's, so a pass that halves a low confidence does not grow
    it; "hold" grows until a pass has fallen by 0.05, then never. Rule 5 (RandomStop) keeps
    "fall" whatever class_growth says."""
    confs = [0.78, 0.70, 0.40, 0.20, 0.10, 0.08, 0.07]

    def steps(growth, stop_cls=auto.ClassStop, **kw):
        seq = iter([{"acc": 90.0, "conf": c} for c in confs])
        cfg = auto.AutoConfig(class_step=1e-4, class_grow=2.0, class_min_move=0.05,
                              class_max_step=1.0, class_target=5.0, class_growth=growth,
                              random_grow=2.0, **kw)
        st = stop_cls(lambda params: next(seq), {"acc": 100.0, "conf": 0.8}, cfg)
        state = auto.adjustable_relative_steps(1e-4).init({"w": jnp.ones(3)})
        for p in range(len(confs)):
            st(None, p)
            state = st.adjust(state, p)
        return [round(s / 1e-4) for s in st.steps]

    # falls 0.02 0.08 0.30 0.20 0.10 0.02 0.01
    assert steps("fall") == [1, 2, 2, 2, 2, 2, 4]
    # bounds 0.05 x (0.8, 0.78, 0.70, 0.40, 0.20, 0.10) / 0.8 for passes 1-6: 0.05, 0.049,
    # 0.044, 0.025, 0.0125, 0.00625: only pass 1 grows (0.02 < 0.05); pass 6's fall of 0.02 is
    # above its 0.00625 (the last pass's growth is never applied)
    assert steps("relative") == [1, 2, 2, 2, 2, 2, 2]
    assert steps("hold") == [1, 2, 2, 2, 2, 2, 2]
    # a sequence whose falls stay below 0.05 for three passes: hold grows until the first
    # pass that moves it, relative goes on growing after a slow pass at a low confidence
    confs[:] = [0.79, 0.77, 0.75, 0.60, 0.59, 0.30, 0.299]
    assert steps("fall") == [1, 2, 4, 8, 8, 16, 16]
    assert steps("hold") == [1, 2, 4, 8, 8, 8, 8]
    assert steps("relative") == [1, 2, 4, 8, 8, 16, 16]
    # rule 5 ignores class_growth
    assert steps("hold", auto.RandomStop) == steps("fall", auto.RandomStop)
    with pytest.raises(ValueError, match="class_growth"):
        auto.AutoConfig(class_growth="sometimes")


def test_the_loop_applies_a_step_changed_between_passes():
    """jit_unlearn's ``adjust``: the step held in the optimiser state is changed after a pass and
    the next pass uses it with the same compiled step. A zero first step leaves the parameters
    as they are; the second pass then moves them by step x their norm."""
    from flax import nnx

    class Lin(nnx.Module):
        def __init__(self):
            self.w = nnx.Param(jnp.array([[1.0, -2.0], [0.5, 3.0]]))

        def __call__(self, x):
            return x @ self.w

    x = np.array([[1.0, 2.0], [3.0, -1.0]], np.float32)
    calls = []

    def vg(apply_fn, params, xb, key, *, mask, forward_keys, aux):
        return jax.value_and_grad(lambda p: jnp.sum(apply_fn(p, xb) ** 2))(params)

    def adjust(state, p):
        calls.append(p)
        return auto.set_step(state, 0.1)

    model = Lin()
    _, log1 = jit_unlearn(model, x, JiTConfig(batch_size=2, passes=1), value_and_grad=vg,
                          optimizer=auto.adjustable_relative_steps(0.0, "global"), adjust=adjust)
    assert calls == []  # no pass after the last
    out, log = jit_unlearn(model, x, JiTConfig(batch_size=2, passes=2), value_and_grad=vg,
                           optimizer=auto.adjustable_relative_steps(0.0, "global"), adjust=adjust)
    assert calls == [0]
    w0 = np.asarray(model.w[...])
    moved = np.asarray(out.w[...]) - w0
    np.testing.assert_allclose(np.linalg.norm(moved), 0.1 * np.linalg.norm(w0), rtol=1e-5)


def test_auto_class_mode_forgets_a_digits_class(digits_class3_request):
    """With the defaults (class_share 0.9), a class request runs rule 4: dpo with growing
    relative steps, stopped once the forget accuracy reaches the target (or the passes run out);
    what it chose is logged; a random request keeps JiT's smoothing."""
    from jit_jax import unlearn
    from jit_jax.data import parse_forget
    from jit_jax.train import accuracy, predict

    req = digits_class3_request
    # the frozen defaults switch it on for a class request
    assert auto.class_mode(req.dataset.train_targets[req.split.forget_idx], auto.AUTO_DEFAULTS)
    out = unlearn.run("auto", req, class_target=20.0, class_passes=8)
    c = out.log["chosen"]
    assert c["mode"] == "class" and c["label_share"] == 1.0 and c["objective"] == "dpo"
    # the defaults search the first step: every trial but the kept one is an undone pass
    undone = [p for p in out.log["pass_info"] if p.get("trial")]
    assert len(undone) == len(c["trials"]) - 1 >= 1
    assert c["passes_run"] == len(out.log["pass_info"]) == len(c["steps"]) + len(undone)
    assert all(b >= a for a, b in zip(c["steps"], c["steps"][1:], strict=False))
    # without the search every pass is kept
    plain = unlearn.run("auto", req, class_target=20.0, class_passes=8, class_search=False)
    cp = plain.log["chosen"]
    assert len(cp["steps"]) == cp["passes_run"] == len(plain.log["pass_info"])
    assert cp["steps"][0] == auto.AUTO_DEFAULTS.class_step
    x = req.forget_inputs()
    y = req.dataset.train_targets[req.split.forget_idx]
    acc = accuracy(predict(out.model, x), y)
    assert acc == pytest.approx(c["forget_accuracy"], abs=1e-4)
    assert acc <= 20.0 or c["passes_run"] == 8
    # a forget set already at the target is left as it is (0 passes, the same parameters)
    from jit_jax.functional import functionalize

    same = unlearn.run("auto", req, class_target=100.0)
    assert same.log["chosen"]["passes_run"] == 0 and same.log["chosen"]["steps"] == []
    jax.tree.map(np.testing.assert_array_equal, functionalize(req.model).params,
                 functionalize(same.model).params)
    rnd = dataclasses.replace(req, split=parse_forget(req.dataset, "random:30"))
    out_r = unlearn.run("auto", rnd, max_passes=1, random_rule=False)
    assert out_r.log["chosen"]["mode"] == "smoothing"


def test_auto_random_mode_runs_rule_4s_loop_with_the_random_stop(digits_class3_request):
    """With random_rule on, a random request runs rule 4's objective and growing step and stops
    at the random stop (here: the mean error doubled) or after random_passes; the logged final
    accuracy and confidence are the returned model's."""
    from jit_jax import unlearn
    from jit_jax.data import parse_forget
    from jit_jax.train import accuracy, predict

    req = dataclasses.replace(digits_class3_request,
                              split=parse_forget(digits_class3_request.dataset, "random:30"))
    out = unlearn.run("auto", req, random_rule=True, random_err_rise=2.0, random_drop=0.0,
                      random_conf_drop=0.0, random_passes=6)
    c = out.log["chosen"]
    assert c["mode"] == "random" and c["objective"] == "dpo" and c["label_share"] < 0.9
    assert len(c["steps"]) == c["passes_run"] <= 6
    x = req.forget_inputs()
    y = req.dataset.train_targets[req.split.forget_idx]
    logits = np.asarray(predict(out.model, x), np.float64)
    assert accuracy(logits, y) == pytest.approx(c["forget_accuracy"], abs=1e-4)
    p = np.exp(logits - logits.max(-1, keepdims=True))
    p /= p.sum(-1, keepdims=True)
    conf = float(np.mean(p[np.arange(len(y)), y]))
    assert conf == pytest.approx(c["forget_confidence"], abs=1e-4)
    doubled = 1 - conf >= 2.0 * (1 - c["start"]["conf"])
    assert doubled or c["passes_run"] == 6  # a stop before the budget is the criterion's
    from jit_jax.functional import functionalize

    moved = jax.tree.leaves(jax.tree.map(lambda a, b: float(np.max(np.abs(a - b))),
                                         functionalize(req.model).params,
                                         functionalize(out.model).params))
    assert max(moved) > 0  # the source model is untouched, the result moved


def test_class_rule_replay_stops_at_the_target_and_chooses_across_families(tmp_path):
    """auto_rules' replay of rule 4: the first pass at the accuracy (or confidence) target, the
    untouched model when the forget set starts at the target, else the budget's last pass; the
    choice takes the lowest mean over families whose every mean D_r drop is within the bound."""
    import json

    ar = _rules_module()

    def rows(accs, confs, dists, drops):
        return [{"pass": p, "acc": a, "conf": c, "retrain_distance": d, "dr_drop": dr,
                 "forget_acc": a} for p, (a, c, d, dr) in enumerate(zip(accs, confs, dists, drops,
                                                                         strict=True))]

    r = rows([100, 80, 30, 4, 0], [0.9, 0.7, 0.3, 0.05, 0.0], [90, 60, 30, 10, 20], [0, 0, 1, 2, 6])
    assert ar.class_stop_pass(r, 5.0, 8)["pass"] == 3
    assert ar.class_stop_pass(r, 0.0, 8)["pass"] == 4
    assert ar.class_stop_pass(r, 0.0, 2)["pass"] == 2  # the budget
    assert ar.class_stop_pass(r, 0.0, 8, conf_target=0.3)["pass"] == 2
    assert ar.class_stop_pass(rows([3], [0.1], [40], [0]), 5.0, 8)["pass"] == 0
    mlp = {"dataset": "a", "model": "mlp", "runs": [
        {"start": 1e-4, "grow": 2.0, "min_move": 0.1, "passes": r},
        {"start": 1e-4, "grow": 4.0, "min_move": 0.1,
         "passes": rows([100, 0], [0.9, 0.0], [90, 50], [0, 0])}]}
    cnn = {"dataset": "b", "model": "cnn", "runs": [
        {"start": 1e-4, "grow": 2.0, "min_move": 0.1, "passes": r},
        {"start": 1e-4, "grow": 4.0, "min_move": 0.1,
         "passes": rows([100, 0], [0.9, 0.0], [90, 5], [0, 9])}]}
    paths = []
    for i, t in enumerate((mlp, cnn)):
        paths.append(str(tmp_path / f"t{i}.json"))
        with open(paths[-1], "w") as f:
            json.dump(t, f)
    got = ar.classchoose(ar_args(paths))
    best = got["valid"][0]
    # grow 4 has the lower mean (27.5) but the cnn family's D_r drop (9) is over 5: grow 2 wins
    assert (best["grow"], best["target"], best["distance"]) == (2.0, 5.0, 10.0)
    assert all(v["grow"] == 2.0 for v in got["valid"])
    # targets 5 and 10 and a confidence target of 0.05 all stop grow 2 at pass 3 (a tie): the
    # tie goes to the plainer stop (no confidence target), then to the higher accuracy target
    tied = ar.classchoose(ar_args(paths, targets=[5.0, 10.0], conf_targets=[0.05, 0.0]))
    assert [(v["distance"], v["conf_target"], v["target"]) for v in tied["valid"][:4]] == [
        (10.0, 0.0, 10.0), (10.0, 0.0, 5.0), (10.0, 0.05, 10.0), (10.0, 0.05, 5.0)]


def test_class_rule_robust_choice_scores_each_rule_at_its_worst_start(tmp_path):
    """classchoose --robust: the start step is no longer part of the rule; a rule best at one
    start but poor at another loses to one fair at both; a D_r drop at any start counts; a family
    missing a scored start leaves no candidate; searched runs are left out."""
    import json

    ar = _rules_module()

    def run(start, grow, dists, drops=None, **kw):
        drops = drops or [0.0] * len(dists)
        return {"start": start, "grow": grow, "min_move": 0.1, **kw, "passes": [
            {"pass": p, "acc": 100.0 - 50 * p, "conf": 0.9, "retrain_distance": d, "dr_drop": dr,
             "forget_acc": 100.0 - 50 * p}
            for p, (d, dr) in enumerate(zip(dists, drops, strict=True))]}

    # budget 12, target 0 -> the last pass (2): grow 2 at 3 / 30 (worst 30), grow 4 at 12 / 12
    t = {"dataset": "a", "model": "mlp", "runs": [
        run(1e-4, 2.0, [90, 50, 3]), run(4e-4, 2.0, [90, 50, 30]),
        run(1e-4, 4.0, [90, 50, 12]), run(4e-4, 4.0, [90, 50, 12]),
        run(4e-4, 4.0, [90, 50, 99], search=True)]}  # a searched run: not replayed
    path = str(tmp_path / "t.json")
    with open(path, "w") as f:
        json.dump(t, f)
    kw = dict(targets=[0.0], conf_targets=[0.0], budgets=[12])
    plain = ar.classchoose(ar_args([path], **kw))["valid"][0]
    assert (plain["start"], plain["grow"], plain["distance"]) == (1e-4, 2.0, 3.0)
    robust = ar.classchoose(ar_args([path], robust=True, **kw))["valid"][0]
    assert (robust["start"], robust["grow"], robust["distance"]) == ("all", 4.0, 12.0)
    assert robust["families"]["a/mlp"]["spread"] == 1.0
    # a D_r drop over the bound at one start only rules grow 4 out
    t["runs"][3] = run(4e-4, 4.0, [90, 50, 12], [0, 0, 6.0])
    with open(path, "w") as f:
        json.dump(t, f)
    again = ar.classchoose(ar_args([path], robust=True, **kw))["valid"]
    assert [v["grow"] for v in again] == [2.0]
    # only the start named is scored; a start no family traced leaves nothing
    one = ar.classchoose(ar_args([path], robust=True, robust_starts=[1e-4], **kw))["valid"][0]
    assert (one["grow"], one["distance"]) == (2.0, 3.0)
    assert ar.classchoose(ar_args([path], robust=True, robust_starts=[2e-4], **kw))["valid"] == []


def test_random_rule_replay_and_choice(tmp_path):
    """auto_rules' replay of rule 5 stops at the first criterion met from the start (the budget's
    last pass otherwise; budget 0 is the untouched model), and the choice keeps every family's
    mean D_r drop within the bound; among tied rules the one with fewer criteria wins."""
    import argparse
    import json

    ar = _rules_module()
    r = [{"pass": p, "acc": a, "conf": c, "retrain_distance": d, "dr_drop": dr, "forget_acc": a,
          "mia": 50.0} for p, (a, c, d, dr) in enumerate(zip(
              [100, 100, 100, 95, 60], [0.99, 0.985, 0.97, 0.9, 0.6], [20, 18, 8, 30, 90],
              [0, 0, 0, 4, 20], strict=True))]
    assert ar.random_stop_pass(r, 101.0, 0.0, 8, err_rise=2.0)["pass"] == 2  # 0.03 >= 2 x 0.01
    assert ar.random_stop_pass(r, 5.0, 0.0, 8)["pass"] == 3
    assert ar.random_stop_pass(r, 101.0, 0.05, 8)["pass"] == 3
    assert ar.random_stop_pass(r, 101.0, 0.0, 1)["pass"] == 1
    assert ar.random_stop_pass(r, 5.0, 0.0, 0)["pass"] == 0
    path = str(tmp_path / "t.json")
    with open(path, "w") as f:
        json.dump({"dataset": "a", "model": "mlp", "runs": [
            {"start": 1e-4, "grow": 2.0, "min_move": 0.05, "passes": r}]}, f)
    got = ar.randchoose(argparse.Namespace(
        traces=[path], drops=[101.0, 5.0], conf_drops=[0.0], err_rises=[0.0, 2.0],
        budgets=[0, 8], max_dr_drop=5.0, top=0, out=None))
    best = got["valid"][0]
    assert (best["err_rise"], best["budget"], best["distance"]) == (2.0, 8, 8.0)
    # the untouched model (budget 0) is a candidate; no rule keeps pass 4 (D_r drop 20)
    assert any(v["budget"] == 0 and v["distance"] == 20.0 for v in got["valid"])
    assert all(v["distance"] != 90.0 for v in got["valid"])


def test_random_rule_robust_choice_scores_each_stop_at_its_worst_start(tmp_path):
    """randchoose --robust: the start step is no longer part of the rule; a stop that is best at
    one start but poor at another loses to one that is fair at both, and a family missing a
    start leaves no candidate."""
    import argparse
    import json

    ar = _rules_module()

    def run(start, dists):
        return {"start": start, "grow": 2.0, "min_move": 0.05, "hold": False, "passes": [
            {"pass": p, "acc": 100.0 - 10 * p, "conf": 0.9, "retrain_distance": d, "dr_drop": 0.0,
             "forget_acc": 100.0, "mia": 50.0} for p, d in enumerate(dists)]}

    path = str(tmp_path / "t.json")
    # budget 1: 2 at start 1e-4, 30 at 4e-4 (worst 30); budget 2: 12 at both (worst 12)
    with open(path, "w") as f:
        json.dump({"dataset": "a", "model": "mlp",
                   "runs": [run(1e-4, [20, 2, 12]), run(4e-4, [20, 30, 12])]}, f)

    def args(**kw):
        return argparse.Namespace(**{**dict(
            traces=[path], drops=[101.0], conf_drops=[0.0], err_rises=[0.0], budgets=[1, 2],
            max_dr_drop=5.0, top=0, out=None), **kw})

    plain = ar.randchoose(args())["valid"][0]
    assert (plain["start"], plain["budget"], plain["distance"]) == (1e-4, 1, 2.0)
    robust = ar.randchoose(args(robust=True))["valid"][0]
    assert (robust["start"], robust["budget"], robust["distance"]) == ("all", 2, 12.0)
    assert robust["families"]["a/mlp"]["spread"] == 1.0
    # a second family with one start only: no robust candidate
    other = str(tmp_path / "u.json")
    with open(other, "w") as f:
        json.dump({"dataset": "b", "model": "mlp", "runs": [run(1e-4, [20, 2, 12])]}, f)
    assert ar.randchoose(args(traces=[path, other], robust=True))["valid"] == []
    # naming the starts scored: the family's other start is ignored, the one named is required
    one = ar.randchoose(args(traces=[path, other], robust=True, robust_starts=[1e-4]))["valid"][0]
    assert (one["budget"], one["distance"]) == (1, 2.0)
    assert ar.randchoose(args(robust=True, robust_starts=[2e-4]))["valid"] == []
    # a searched run is not a trace of rule 5's loop: adding one changes nothing
    with open(path) as f:
        t = json.load(f)
    t["runs"].append({**run(4e-4, [20, 0, 0]), "search": "flip"})
    with open(path, "w") as f:
        json.dump(t, f)
    again = ar.randchoose(args(robust=True))["valid"][0]
    assert (again["budget"], again["distance"]) == (2, 12.0)


def ar_args(paths, targets=(5.0,), conf_targets=(0.0,), budgets=(8,), **extra):
    import argparse

    return argparse.Namespace(traces=paths, targets=list(targets),
                              conf_targets=list(conf_targets), budgets=list(budgets),
                              max_dr_drop=5.0, top=0, out=None, **extra)


def _simulate_search(stop_cls, cfg, fit_at):
    """Run ``stop_cls`` with its step search against a scripted model: ``fit_at(step)`` is what a
    pass made at ``step`` (from the untouched model) measures. The "parameters" are one array
    holding the summed steps of the passes that made them; the loop is simulated as
    ``jit_unlearn`` runs it: a returned ``keep`` replaces the parameters the next pass starts
    from, and every undone trial must hand back a fresh copy of the untouched parameters."""
    initial = {"w": jnp.zeros(2)}
    st = stop_cls(lambda params: fit_at(float(params["w"][0])), {"acc": 100.0, "conf": 0.99},
                  cfg, initial)
    state = auto.adjustable_relative_steps(cfg.class_step).init({"w": jnp.ones(3)})
    params, undone = initial, 0
    for p in range(st.loop_passes):
        params = {"w": params["w"] + float(state.hyperparams["step"])}  # one "pass"
        out = st(params, p)
        keep = out[2] if len(out) > 2 else None
        if keep is not None:
            if not st.last_kept:  # an undone trial: a fresh copy of the untouched parameters
                undone += 1
                np.testing.assert_array_equal(keep["w"], initial["w"])
                assert keep["w"] is not initial["w"]
            params = keep
        if out[0]:
            break
        state = st.adjust(state, p)
    return st, params, undone


def _scripted_search(start, threshold=3.3e-3, mode="class", trials=16, refine=2, **kw):
    """:func:`_simulate_search` with a model whose one pass responds (mean confidence down 0.2,
    error 0.01 -> 0.21) exactly when its step is at least ``threshold``."""
    cfg = auto.AutoConfig(class_step=start, class_grow=2.0, class_min_move=0.05,
                          class_search=mode == "class",
                          random_search="stop" if mode == "random" else "",
                          class_search_trials=trials,
                          class_search_refine=refine, class_target=5.0, random_err_rise=2.0,
                          **kw)
    return _simulate_search(auto.ClassStop if mode == "class" else auto.RandomStop, cfg,
                            lambda s: {"acc": 100.0, "conf": 0.79 if s >= threshold else 0.985})


def test_the_step_search_finds_the_smallest_responding_step_from_any_start():
    """class_search: trial passes from the untouched model, each undone, double the step until a
    pass responds (or halve it until one does not), then bisect the bracket geometrically
    class_search_refine times; the kept first pass is the one at the smallest responding step
    found, within class_grow ** 2 ** -refine of the true threshold, from starts 100x apart."""
    t = 3.3e-3
    found = []
    for start in (3e-5, 6.25e-5, 1e-4, 1e-3, 3e-3, 1.5e-2):
        st, params, undone = _scripted_search(start, t, class_passes=1)
        s = st.steps[0]
        assert t <= s <= t * 2 ** 0.25 * (1 + 1e-9), (start, s, st.trials)
        assert len(st.trials) <= st.config.class_search_trials
        assert undone == len(st.trials) - 1  # every trial but the kept one was undone
        # the kept pass is the one at the found step, from the untouched parameters
        assert float(params["w"][0]) == pytest.approx(s)
        assert st.trials[-1]["responds"] or any(r["responds"] and r["step"] == s
                                                for r in st.trials)
        found.append(s)
    # starts a power of 2 apart share one grid: the same step
    assert _scripted_search(6.25e-5, t)[0].steps[0] == _scripted_search(1e-3, t)[0].steps[0]
    # no refinement: the bracket is a factor 2 wide
    st, _, _ = _scripted_search(1e-4, t, refine=0)
    assert t <= st.steps[0] < 2 * t
    # out of trials before anything responds: the run goes on from the last trial's pass
    st, params, _ = _scripted_search(1e-6, t, trials=3)
    assert st.steps[0] == pytest.approx(4e-6) and not any(r["responds"] for r in st.trials)


def test_the_anchored_search_keeps_the_same_step_from_every_start():
    """class_search_anchor: every trial step is the point anchor * 2 ** (k / 2 ** refine)
    nearest it, the first the one nearest the start, so starts that are not a power of
    2 ** (1/4) apart keep the same step, the same float; without it they keep different ones."""
    t, anchor = 3.3e-3, 6.25e-5
    steps = []
    for start in (3e-5, 6.25e-5, 1e-4, 1.7e-3, 1.5e-2):
        st, params, _ = _scripted_search(start, t, class_passes=1, class_search_anchor=anchor)
        k = round(np.log2(start / anchor) * 4)
        assert st.trials[0]["step"] == anchor * 2.0 ** (k / 4)  # the nearest lattice point
        assert abs(np.log2(start / st.trials[0]["step"])) <= 1 / 8 + 1e-12
        assert t <= st.steps[0] <= t * 2 ** 0.25 * (1 + 1e-9)
        assert float(params["w"][0]) == pytest.approx(st.steps[0])  # the kept pass at that step
        steps.append(st.steps[0])
    assert len(set(steps)) == 1, steps  # the same float: every trial step is snapped
    # the lattice through the start (no anchor): 6.25e-5 and 1e-4 keep different steps
    a = _scripted_search(6.25e-5, t, class_passes=1)[0].steps[0]
    b = _scripted_search(1e-4, t, class_passes=1)[0].steps[0]
    assert a == pytest.approx(steps[0], rel=1e-12) and abs(np.log2(b / a)) > 0.1
    # a start on the anchor's lattice tries the steps it tries without the anchor (up to the
    # rounding of the bisection: a square root there, a power here)
    for start in (anchor, anchor * 4):
        plain = [r["step"] for r in _scripted_search(start, t, class_passes=1)[0].trials]
        lat = [r["step"] for r in _scripted_search(start, t, class_passes=1,
                                                   class_search_anchor=anchor)[0].trials]
        assert lat == pytest.approx(plain, rel=1e-12)
    # the snapped start never exceeds class_max_step
    st, _, _ = _scripted_search(1e-4, t, class_passes=1, class_search_anchor=anchor,
                                class_max_step=1e-4)
    assert st.trials[0]["step"] <= 1e-4
    for bad in (-1.0, float("inf"), float("nan")):
        with pytest.raises(ValueError, match="class_search_anchor"):
            auto.AutoConfig(class_search_anchor=bad)


def test_random_mode_search_keeps_the_single_pass_that_meets_the_stop():
    """In random mode a trial responds when it meets rule 5's stop (here the error doubled), so
    the run is the one pass at the smallest such step, and it ends there."""
    st, params, _ = _scripted_search(1e-4, 3.3e-3, mode="random")
    assert len(st.steps) == 1 and st.done(st.previous)
    assert 3.3e-3 <= st.steps[0] <= 3.3e-3 * 2 ** 0.25 * (1 + 1e-9)
    for bad in (dict(class_search=1), dict(random_search="yes"), dict(random_search=True), dict(class_search_trials=0),
                dict(class_search_refine=9)):
        with pytest.raises(ValueError, match=next(iter(bad))):
            auto.AutoConfig(**bad)


def test_auto_with_the_search_undoes_its_trials_and_ignores_the_start(digits_class3_request):
    """On a real model: with class_search, starts 16x apart give the same model, and it is the
    model that the rule without the search gives when started at the found step (so every trial
    pass was undone and the kept passes ran as rule 4 runs them)."""
    from jit_jax import unlearn
    from jit_jax.functional import functionalize

    req = digits_class3_request
    runs = [unlearn.run("auto", req, class_search=True, class_step=s, class_passes=4)
            for s in (6.25e-5, 1e-3)]
    a, b = (functionalize(r.model).params for r in runs)
    jax.tree.map(np.testing.assert_array_equal, a, b)
    ca = runs[0].log["chosen"]
    assert ca["steps"] == runs[1].log["chosen"]["steps"]
    assert any(r["responds"] and r["step"] == ca["steps"][0] for r in ca["trials"])
    assert len(ca["trials"]) > 1  # the search ran: at least one trial was undone
    plain = unlearn.run("auto", req, class_search=False, class_step=ca["steps"][0],
                        class_passes=4)
    assert plain.log["chosen"]["steps"] == ca["steps"]
    jax.tree.map(np.testing.assert_array_equal, a, functionalize(plain.model).params)


def test_auto_anchored_search_gives_one_model_from_starts_off_each_others_lattice(
        digits_class3_request):
    """On a real model: with class_search_anchor 6.25e-5, the starts 6.25e-5 and 1e-4 (off each
    other's lattice) try steps of one lattice and keep the same steps."""
    from jit_jax import unlearn
    from jit_jax.functional import functionalize

    runs = [unlearn.run("auto", digits_class3_request, class_search=True,
                        class_search_anchor=6.25e-5, class_step=s, class_passes=3)
            for s in (6.25e-5, 1e-4)]
    first = [r.log["chosen"]["trials"][0]["step"] for r in runs]
    assert first == [6.25e-5, 6.25e-5 * 2 ** 0.75]
    assert runs[0].log["chosen"]["steps"] == runs[1].log["chosen"]["steps"]
    a, b = (functionalize(r.model).params for r in runs)
    jax.tree.map(np.testing.assert_array_equal, a, b)


def test_auto_random_search_runs_one_pass_that_meets_the_stop(digits_class3_request):
    """Rule 5 with random_search on a real model: starts 16x apart give the same model, made by
    one kept pass that meets the stop (the mean error grown random_err_rise times)."""
    from jit_jax import unlearn
    from jit_jax.data import parse_forget
    from jit_jax.functional import functionalize

    req = dataclasses.replace(digits_class3_request,
                              split=parse_forget(digits_class3_request.dataset, "random:30"))
    # the error rise as the only stop (the default's accuracy stop off)
    runs = [unlearn.run("auto", req, random_search="stop", random_err_rise=1.5, random_drop=0.0,
                        class_step=s, class_max_step=0.5) for s in (6.25e-5, 1e-3)]
    for r in runs:
        c = r.log["chosen"]
        assert c["mode"] == "random" and len(c["steps"]) == 1 and len(c["trials"]) > 1
        assert 1 - c["forget_confidence"] >= 1.5 * (1 - c["start"]["conf"])
    jax.tree.map(np.testing.assert_array_equal, *(functionalize(r.model).params for r in runs))


def test_random_flip_search_finds_the_first_flip_and_runs_on_from_there():
    """random_search "flip": a trial responds once a forget sample flips (here at steps >= 1e-3;
    the error never doubles), so the first kept pass is at the smallest such step; the run then
    goes on (the stop not met) with the step held (random_hold) for its budget."""
    cfg = auto.AutoConfig(class_step=6.25e-5, class_grow=2.0, class_min_move=0.05,
                          random_search="flip", random_hold=True, random_err_rise=2.0,
                          random_passes=3)
    st, _, _ = _simulate_search(
        auto.RandomStop, cfg,
        lambda s: {"acc": 95.0 if s >= 1e-3 else 100.0, "conf": 0.985 if s >= 1e-3 else 0.989})
    assert 1e-3 <= st.steps[0] <= 1e-3 * 2 ** 0.25 * (1 + 1e-9)
    assert len(st.steps) == 3 and st.steps == [st.steps[0]] * 3  # held, budget of 3 passes
    assert not any(r["responds"] for r in st.trials if r["step"] < 1e-3)


def test_searchcompare_scores_each_request_over_its_best_window(tmp_path):
    """searchcompare --per-request: searched runs are told apart by their bisection count
    (traces without one searched with the default's) and their lattice anchor (traces without
    one searched on the lattice through the start, anchor 0); each request's distance per start is its
    mean over seeds, its spread the worst / best in the best 8x window of starts (floored at 1
    point), and the requests over --max-spread are counted."""
    import argparse
    import json

    ar = _rules_module()
    default = auto.AUTO_DEFAULTS.class_step
    anchor = auto.AUTO_DEFAULTS.class_search_anchor

    def run(req, seed, start, dist, refine=None, drop=0.0, anchor=anchor):
        return {"forget": req, "seed": seed, "start": start, "mode": "class", "search": True,
                **({"refine": refine} if refine is not None else {}),
                **({"anchor": anchor} if anchor is not None else {}), "passes": [
                    {"pass": 0, "acc": 100.0, "conf": 0.9, "retrain_distance": 99.0,
                     "dr_drop": 0.0, "forget_acc": 100.0, "mia": 50.0},
                    {"pass": 1, "acc": 0.0, "conf": 0.1, "retrain_distance": dist,
                     "dr_drop": drop, "forget_acc": 0.0, "mia": 50.0}]}

    starts = [default / 4, default / 2, default, default * 1.6, default * 4]
    # request a: default refine (no key) 10 at every start but 1.6x, where seed 1 reads 30
    # (mean 20): worst / best 2.0 in every 8x window; refine 4: 10 everywhere
    runs = [run("a", s, x, 30.0 if (s == 1 and x == default * 1.6) else 10.0)
            for s in (0, 1) for x in starts]
    runs += [run("a", s, x, 10.0, refine=4) for s in (0, 1) for x in starts]
    # request b: distances below the 1-point floor (0.2 against 0.9): spread 1.0, not 4.5
    runs += [run("b", s, x, 0.9 if x == default / 4 else 0.2, refine=r, drop=6.0 * (r == 4))
             for s in (0, 1) for x in starts for r in (2, 4)]
    # a trace from before the anchor (no key): its own variant
    runs += [run("a", s, x, 50.0, anchor=None) for s in (0, 1) for x in starts]
    path = str(tmp_path / "t.json")
    with open(path, "w") as f:
        json.dump({"dataset": "d", "model": "mlp", "runs": runs}, f)
    got = ar.searchcompare(argparse.Namespace(
        traces=[path], target=5.0, class_budget=12, err_rise=2.0, random_budget=10,
        max_dr_drop=5.0, window=8.0, per_request=True, max_spread=1.5, out=None))
    two, four = got["class: search"], got["class: search (refine 4)"]
    assert got["class: search (anchor 0)"]["families"]["d/mlp"]["requests"]["a"]["distances"] \
        == [50.0] * 5
    a2 = two["families"]["d/mlp"]["requests"]["a"]
    assert a2["distances"] == [10.0, 10.0, 10.0, 20.0, 10.0]
    assert a2["window_spread"] == 2.0 and a2["at_default"] == 10.0
    assert two["families"]["d/mlp"]["requests"]["b"]["window_spread"] == 1.0
    assert (two["requests_over"], two["requests"]) == (1, 2)
    assert (four["requests_over"], four["requests"]) == (0, 2)
    # a request's D_r drop is its own; the family's (what qualifies) is the mean over requests
    assert four["worst_request_dr_drop"] == 6.0 and four["worst_dr_drop"] == 3.0
    assert two["mean_at_default"] == pytest.approx((10.0 + 0.2) / 2, rel=1e-12)


def test_searchchoose_replays_rule_4s_stop_on_searched_runs(tmp_path):
    """searchchoose: only searched class runs at the default bisection count and lattice anchor
    are replayed; each
    (target, budget) stops at the first pass at the target (else the budget's last), scored at
    the family's worst start; a candidate over the D_r bound on any start is left out."""
    import argparse
    import json

    ar = _rules_module()

    def run(start, accs, dists, drops, **kw):
        return {"forget": "a", "seed": 0, "start": start, "mode": "class", **kw, "passes": [
            {"pass": p, "acc": a, "conf": 0.5, "retrain_distance": d, "dr_drop": dr,
             "forget_acc": a, "mia": 50.0}
            for p, (a, d, dr) in enumerate(zip(accs, dists, drops, strict=True))]}

    accs = [100.0, 30.0, 8.0, 3.0]
    anchor = auto.AUTO_DEFAULTS.class_search_anchor
    runs = [run(1e-4, accs, [90, 40, 10, 20], [0, 1, 2, 6], search=True, anchor=anchor),
            run(2e-4, accs, [90, 40, 12, 30], [0, 1, 3, 4], search=True, refine=2, anchor=anchor),
            run(2e-4, accs, [90, 1, 1, 1], [0, 0, 0, 0], search=True, refine=4,
                anchor=anchor),  # not default
            run(2e-4, accs, [90, 1, 1, 1], [0, 0, 0, 0], search=True),  # anchor 0: not default
            run(2e-4, accs, [90, 1, 1, 1], [0, 0, 0, 0], search=False)]  # not searched
    path = str(tmp_path / "t.json")
    with open(path, "w") as f:
        json.dump({"dataset": "d", "model": "mlp", "runs": runs}, f)
    got = ar.searchchoose(argparse.Namespace(traces=[path], targets=[5.0, 10.0], budgets=[1, 3],
                                             max_dr_drop=5.0, top=0, out=None))
    by = {(c["target"], c["budget"]): c for c in got["all"]}
    # target 10 stops at pass 2 on both starts: worst start 12, D_r drop 3
    assert (by[10.0, 3]["distance"], by[10.0, 3]["worst_dr_drop"]) == (12.0, 3.0)
    # target 5 stops at pass 3: worst start 30, and the 6-point drop at 1e-4 rules it out
    assert (by[5.0, 3]["distance"], by[5.0, 3]["worst_dr_drop"]) == (30.0, 6.0)
    # a budget of 1 pass: pass 1 whatever the target
    assert by[5.0, 1]["distance"] == by[10.0, 1]["distance"] == 40.0
    assert [(c["target"], c["budget"]) for c in got["valid"]] == [(10.0, 3), (5.0, 1), (10.0, 1)]
    # --anchor 0: only the run searched on the lattice through its start (distance 1 throughout)
    got = ar.searchchoose(argparse.Namespace(traces=[path], targets=[5.0], budgets=[3],
                                             max_dr_drop=5.0, top=0, out=None, anchor=0.0))
    assert got["all"][0]["distance"] == 1.0


def test_growthcompare_counts_requests_meeting_the_target_and_applies_its_rule(tmp_path):
    """growthcompare: each growth variant's searched default-start runs replayed with the stop;
    a request (mean over seeds) meets the target when its D_r drop is within 5 and its D_f
    within 10 of its RTRNs'; a variant replaces the baseline only with more requests met, a mean
    over families at most the margin above, and every family's mean D_r drop within 5."""
    import argparse
    import json

    ar = _rules_module()
    anchor = auto.AUTO_DEFAULTS.class_search_anchor
    start = auto.AUTO_DEFAULTS.class_step

    def run(forget, seed, growth, rows, **kw):
        return {"forget": forget, "seed": seed, "start": start, "mode": "class", "search": True,
                "anchor": anchor, "growth": growth, **kw, "passes": [
                    {"pass": p, "acc": a, "conf": 0.5, "retrain_distance": d, "dr_drop": dr,
                     "forget_acc": df, "mia": 50.0}
                    for p, (a, d, dr, df) in enumerate(rows)]}

    # (train-forget acc the stop reads, distance, D_r drop, D_f); the stop: acc <= 5
    slow = [(90, 90, 0, 90), (40, 30, 1, 40), (3, 12, 7, 0)]   # stops at pass 2: drop 7
    gentle = [(90, 90, 0, 90), (40, 30, 1, 40), (4, 8, 3, 4)]  # stops at pass 2: drop 3
    short = [(90, 90, 0, 90), (40, 30, 1, 40), (20, 22, 2, 25)]  # budget out: D_f 25
    refs = [{"seed": s, "forget": q, "rtrn": {"forget_acc": 0.0}} for q in "ab" for s in (0, 1)]
    t1 = {"dataset": "d", "model": "mlp", "references": refs, "runs": [
        run("a", 0, "fall", slow), run("a", 1, "fall", slow),
        run("b", 0, "fall", gentle), run("b", 1, "fall", gentle),
        run("a", 0, "hold", gentle), run("a", 1, "hold", gentle),
        run("b", 0, "hold", gentle), run("b", 1, "hold", gentle),
        run("a", 0, "relative", short), run("a", 1, "relative", short),
        run("b", 0, "relative", gentle), run("b", 1, "relative", gentle),
        # not the default start, or not searched: left out
        {**run("a", 0, "fall", gentle), "start": 2 * start},
        {**run("a", 0, "fall", gentle), "search": False},
        # a request traced without every variant: left out
        run("c", 0, "fall", gentle)]}
    path = str(tmp_path / "t.json")
    with open(path, "w") as f:
        json.dump(t1, f)

    def compare(**kw):
        opts = dict(traces=[path], baseline="fall", target=5.0, budget=2, max_dr_drop=5.0,
                    max_df_gap=10.0, margin=1.0, out=None)
        return ar.growthcompare(argparse.Namespace(**{**opts, **kw}))

    got = compare()
    v = got["variants"]
    assert got["requests"] == ["d/mlp a", "d/mlp b"]
    assert (v["fall"]["met"], v["hold"]["met"], v["relative"]["met"]) == (1, 2, 1)
    assert v["fall"]["mean"] == pytest.approx(10.0) and v["hold"]["mean"] == pytest.approx(8.0)
    assert v["relative"]["requests"][0]["forget_acc"] == 25.0  # D_f 25 against 0: a miss
    assert got["chosen"] == "hold"
    # a margin of -3 asks for a mean 3 points under the baseline's (10): hold's 8 is refused
    assert compare(margin=-3.0)["chosen"] == "fall"
    # a D_r bound of 2: hold's family drop (3) is over it, and no request meets the target
    assert compare(max_dr_drop=2.0)["chosen"] == "fall"
    # a baseline that was not traced is an error that names what was
    with pytest.raises(SystemExit, match="traced"):
        compare(baseline="nothing")
