"""The jit-jax command end to end on digits (tiny epochs), and its errors."""

import json
from pathlib import Path

import pytest

from jit_jax.cli import main


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("cli") / "digits-mlp"
    rc = main(["train", "--dataset", "digits", "--model", "mlp", "--epochs", "3", "--out", str(out),
               "--no-progress"])
    assert rc == 0
    return out


def test_train_writes_checkpoint_and_evaluate_reads_it(run_dir, capsys):
    meta = json.loads((run_dir / "metadata.json").read_text())
    assert meta["model"]["name"] == "mlp" and meta["train_config"]["epochs"] == 3
    assert meta["class_names"] == [str(i) for i in range(10)]
    capsys.readouterr()
    assert main(["evaluate", "--checkpoint", str(run_dir)]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["test_accuracy"] == pytest.approx(meta["metrics"]["test_accuracy"])
    assert out["test_accuracy"] > 80


def test_unlearn_jit_and_rtrn(run_dir, tmp_path, capsys):
    rtrn = tmp_path / "rtrn"
    assert main(["unlearn", "--checkpoint", str(run_dir), "--method", "rtrn", "--forget",
                 "class:3", "--out", str(rtrn), "--set", "epochs=2", "--no-progress"]) == 0
    jit = tmp_path / "jit"
    assert main(["unlearn", "--checkpoint", str(run_dir), "--method", "jit", "--forget",
                 "class:3", "--out", str(jit), "--rtrn", str(rtrn), "--set", "num_samples=4"]) == 0
    res = json.loads((jit / "result.json").read_text())
    assert res["method"] == "jit" and res["task"] == "class" and res["zero_shot"]
    assert res["retrain_distance"] is not None and res["runtime"] > 0
    assert res["extra"]["options"]["num_samples"] == 4
    meta = json.loads((jit / "metadata.json").read_text())
    assert meta["kind"] == "unlearned" and meta["source_checkpoint"].endswith("digits-mlp")
    # The source checkpoint is untouched and the new one evaluates.
    assert main(["evaluate", "--checkpoint", str(jit), "--forget", "class:3"]) == 0
    # a comparison method, with an option
    assert main(["unlearn", "--checkpoint", str(run_dir), "--method", "bdsh", "--forget",
                 "class:3", "--out", str(tmp_path / "bdsh"), "--set", "epochs=1"]) == 0
    res = json.loads((tmp_path / "bdsh" / "result.json").read_text())
    assert res["method"] == "bdsh" and res["zero_shot"] and res["extra"]["options"] == {"epochs": 1}


def test_unlearn_auto_with_no_options_prints_what_it_chose(run_dir, tmp_path, capsys):
    """A random request runs rule 5 by default and says so; with random_rule off it runs the
    smoothing rules and prints their settings."""
    capsys.readouterr()
    assert main(["unlearn", "--checkpoint", str(run_dir), "--method", "auto", "--forget",
                 "random:40", "--out", str(tmp_path / "auto"), "--set", "random_passes=2"]) == 0
    out = capsys.readouterr().out
    assert "auto chose random mode" in out and "stopped after" in out
    meta = json.loads((tmp_path / "auto" / "metadata.json").read_text())
    assert meta["method_log"]["chosen"]["mode"] == "random"
    assert meta["method_log"]["chosen"]["passes_run"] in (1, 2)
    assert main(["unlearn", "--checkpoint", str(run_dir), "--method", "auto", "--forget",
                 "random:40", "--out", str(tmp_path / "smooth"), "--set", "random_rule=false",
                 "--set", "max_passes=2"]) == 0
    out = capsys.readouterr().out
    assert "auto chose: sigma per sample" in out and "of 2 passes" in out
    meta = json.loads((tmp_path / "smooth" / "metadata.json").read_text())
    assert meta["method_log"]["chosen"]["passes_run"] in (1, 2)


def test_unlearn_paper_setting(run_dir, tmp_path):
    """--paper: the authors' JiT run for the task and model (the MLP gets their CNN row); --set
    still overrides."""
    out = tmp_path / "jit-paper"
    assert main(["unlearn", "--checkpoint", str(run_dir), "--method", "jit", "--forget",
                 "class:3", "--out", str(out), "--paper", "--set", "num_samples=4",
                 "--no-progress"]) == 0
    res = json.loads((out / "result.json").read_text())
    assert res["extra"]["paper_setting"] is True
    assert res["extra"]["options"] == {"sigma": 0.5, "lr": 3e-4, "batch_size": 128,
                                       "reference_quirks": True, "num_samples": 4}


def test_each_seed_against_the_rtrn_of_its_seed(run_dir, tmp_path, capsys):
    """experiments/cifar_forget.py pairs every seed with the RTRN retrained with that seed, and
    `jit-jax unlearn --rtrn` warns when the seeds differ."""
    import importlib.util

    rtrn = {}
    for seed in (0, 1):
        rtrn[seed] = tmp_path / f"rtrn-s{seed}"
        assert main(["unlearn", "--checkpoint", str(run_dir), "--method", "rtrn", "--forget",
                     "class:3", "--seed", str(seed), "--out", str(rtrn[seed]), "--set", "epochs=1",
                     "--no-progress"]) == 0
    path = Path(__file__).resolve().parents[1] / "experiments" / "cifar_forget.py"
    spec = importlib.util.spec_from_file_location("cifar_forget", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    out = tmp_path / "res.json"
    mod.main(["--checkpoint", str(run_dir), "--rtrn", str(rtrn[1]), str(rtrn[0]), "--forget",
              "class:3", "--seeds", "0", "1", "--set", "num_samples=2", "--out", str(out)])
    runs = json.loads(out.read_text())["runs"]
    by = {(r["method"], r["seed"]): r for r in runs}
    assert set(by) == {(m, s) for m in ("bsln", "rtrn", "jit") for s in (0, 1)}
    r0, r1 = by[("rtrn", 0)], by[("rtrn", 1)]
    assert (r0["retain_acc"], r0["mia"]) != (r1["retain_acc"], r1["mia"])  # two different models
    for seed, ref in ((0, r0), (1, r1)):
        assert by[("rtrn", seed)]["retrain_distance"] == 0
        b = by[("bsln", seed)]
        want = sum(abs(b[k] - ref[k]) for k in ("retain_acc", "forget_acc", "mia"))
        assert b["retrain_distance"] == pytest.approx(want, abs=1e-9)
    with pytest.raises(SystemExit):  # seed 2 has no RTRN of its own
        mod.main(["--checkpoint", str(run_dir), "--rtrn", str(rtrn[0]), str(rtrn[1]),
                  "--forget", "class:3", "--seeds", "0", "2"])
    capsys.readouterr()
    assert main(["unlearn", "--checkpoint", str(run_dir), "--method", "bsln", "--forget",
                 "class:3", "--seed", "0", "--out", str(tmp_path / "b"), "--rtrn",
                 str(rtrn[1])]) == 0
    assert "retrained with seed 1, this run uses --seed 0" in capsys.readouterr().err


def test_errors(run_dir, tmp_path, capsys):
    assert main(["unlearn", "--checkpoint", str(run_dir), "--method", "nope", "--forget",
                 "class:3", "--out", str(tmp_path / "x")]) == 2
    assert "unknown method" in capsys.readouterr().err
    assert main(["unlearn", "--checkpoint", str(run_dir), "--forget", "class:12",
                 "--out", str(tmp_path / "y")]) == 2
    assert "out of range" in capsys.readouterr().err
    assert main(["unlearn", "--checkpoint", str(run_dir), "--forget", "random:0",
                 "--out", str(tmp_path / "z")]) == 2
    capsys.readouterr()
    assert main(["unlearn", "--checkpoint", str(run_dir), "--forget", "class:1",
                 "--out", str(run_dir)]) == 2
    assert "already exists" in capsys.readouterr().err
    assert main(["evaluate", "--checkpoint", str(tmp_path / "missing")]) == 2
    assert "does not exist" in capsys.readouterr().err
    assert main(["train", "--dataset", "nope", "--out", str(tmp_path / "t")]) == 2
    assert "nope" in capsys.readouterr().err
    assert main(["train", "--model", "resnet99", "--out", str(tmp_path / "t")]) == 2
    assert "resnet99" in capsys.readouterr().err
    assert main(["evaluate", "--checkpoint", str(run_dir), "--validation"]) == 2
    assert "holdout" in capsys.readouterr().err
    # --devices: jit only, a count within what jax sees, or "all"
    for devices, method, msg in [("2", "ssd", "--devices applies to --method jit, rtrn or "
                                               "rtrn_head, not 'ssd'"),
                                 ("0", "jit", "devices=0: accepted 1..1"),
                                 ("some", "jit", "--devices 'some'; accepted: a device count")]:
        assert main(["unlearn", "--checkpoint", str(run_dir), "--forget", "class:1", "--method",
                     method, "--devices", devices, "--out", str(tmp_path / "m")]) == 2
        assert msg in capsys.readouterr().err and not (tmp_path / "m").exists()
    # a diverging JiT run: a clear error, and nothing written
    assert main(["unlearn", "--checkpoint", str(run_dir), "--forget", "class:1", "--set",
                 "lr=3e38", "--set", "num_samples=2", "--out", str(tmp_path / "d")]) == 2
    assert "diverged" in capsys.readouterr().err and not (tmp_path / "d").exists()


def test_help_is_useful(capsys):
    for cmd in ("train", "evaluate", "unlearn", "demo"):
        with pytest.raises(SystemExit) as e:
            main([cmd, "--help"])
        assert e.value.code == 0
    out = capsys.readouterr().out
    assert "npz:PATH" in out and "--forget" in out and "--holdout" in out
    from jit_jax import unlearn

    missing = [m for m in unlearn.available() if m not in out]
    assert not missing, f"jit-jax unlearn --help does not list {missing}"


def test_demo(tmp_path, capsys):
    assert main(["demo", "--out", str(tmp_path / "demo"), "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert "| jit |" in out and "| rtrn |" in out and "| bsln |" in out
    payload = json.loads((tmp_path / "demo" / "results.json").read_text())
    assert {r["method"] for r in payload["runs"]} == {"bsln", "rtrn", "jit"}
    assert (tmp_path / "demo" / "results.md").exists()
    assert main(["demo", "--out", str(tmp_path / "demo"), "--no-progress"]) == 2  # no overwrite
    _check_readme_quickstart_table(out, payload)


def _cells(table: str) -> dict[str, list[str]]:
    rows = [r.strip("|").split("|") for r in table.strip().splitlines()[2:]]
    return {r[0].strip(): [c.strip() for c in r[1:]] for r in rows}


def _check_readme_quickstart_table(printed: str, payload: dict):
    """The README's quickstart table comes from the demo as the code runs it now.

    Not compared: the numbers themselves. Training is chaotic in the float rounding, and the
    rounding of XLA's CPU kernels depends on the CPU: on the machine of 2026-12-02 this same code,
    with the same packages, trained an original model with BSLN D_f 100.0 and MIA 88.4 where the
    machine that wrote the table got 97.3 and 90.4 (one and three of 37 and 146 samples), so no
    bound can be derived for them. What is compared instead:
    - the setup: dataset, forget request, model, training recipe and seeds of a fresh run equal
      those recorded with the table (``docs/results/demo.json``): a change of any default that
      the demo uses makes the table stale and fails here;
    - the README's claims about it, on the fresh run: the same rows and zero-shot column, JiT
      forgets the class (D_f <= 5) at a cost of at most 5 points of D_r against BSLN, and is
      nearer to RTRN than the untouched model by a factor of 5 or more.
    """
    import re
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    readme = (root / "README.md").read_text()
    block = re.search(r"<!-- table: docs/results/demo.md -->\n(.*?)<!-- /table -->", readme, re.S)
    assert block, "README has no quickstart table block"
    recorded = json.loads((root / "docs" / "results" / "demo.json").read_text())
    ctx, rec = payload["context"], recorded["context"]
    for key in ("dataset", "forget", "model", "train_config", "seeds"):
        assert ctx[key] == rec[key], (f"the demo's {key} changed: rerun python "
                                      "experiments/readme_tables.py --run-demo", ctx[key], rec[key])
    got = _cells(printed[printed.index("| Method |"):].split("\n\n")[0] + "\n")
    want = _cells(block.group(1))
    assert got.keys() == want.keys()
    for method in want:
        assert got[method][-1] == want[method][-1]  # zero-shot
    mean = {m: [float(c.split("±")[0]) for c in cells[:5]] for m, cells in got.items()}
    d_r, d_f, dist = 0, 1, 4
    assert mean["jit"][d_f] <= 5.0, mean["jit"]
    assert mean["bsln"][d_r] - mean["jit"][d_r] <= 5.0, (mean["bsln"], mean["jit"])
    assert mean["jit"][dist] * 5 <= mean["bsln"][dist], (mean["bsln"], mean["jit"])


def test_readme_tables_are_current():
    """Every README table block equals the result file it names (experiments/readme_tables.py)."""
    import importlib.util
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    spec = importlib.util.spec_from_file_location("readme_tables",
                                                  root / "experiments" / "readme_tables.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    text, stale = mod.render((root / "README.md").read_text(), root)
    assert stale == [], f"stale README tables {stale}: run python experiments/readme_tables.py"
    assert text.count("<!-- table: ") >= 5
    # the check can fail: a changed cell is reported
    mutated = text.replace("| jit | 96.4", "| jit | 96.5", 1)
    assert mod.render(mutated, root)[1] == ["docs/results/demo.md#1"]


def test_unlearn_warns_when_nothing_moved_or_collapsed(run_dir, tmp_path, capsys):
    """A JiT step too small to change a prediction, and one that wrecks the model, are reported."""
    capsys.readouterr()
    assert main(["unlearn", "--checkpoint", str(run_dir), "--method", "jit", "--forget",
                 "class:3", "--out", str(tmp_path / "tiny"), "--set", "lr=1e-12",
                 "--set", "num_samples=4", "--no-progress"]) == 0
    err = capsys.readouterr().err
    assert "left the forget set untouched" in err and "lr=" in err and "jit-jax tune" in err
    res = json.loads((tmp_path / "tiny" / "result.json").read_text())
    assert res["extra"]["warnings"] and res["extra"]["original"]["forget_acc"] == res["forget_acc"]
    assert main(["unlearn", "--checkpoint", str(run_dir), "--method", "jit", "--forget",
                 "class:3", "--out", str(tmp_path / "huge"), "--set", "lr=1",
                 "--set", "num_samples=4", "--no-progress"]) == 0
    err = capsys.readouterr().err  # measured: D_r 0% after one step of lr 1 (95% before)
    assert "collapsed the model" in err and "lower --set lr" in err


def test_sanity_warnings_rules():
    from jit_jax.metrics import UnlearnResult, sanity_warnings

    def r(method, dr, df):
        return UnlearnResult(method, "class", "class:3", dr, df, dr, 50.0)

    before = r("bsln", 98.0, 100.0)
    assert sanity_warnings(r("jit", 97.0, 0.0), before, 10) == []
    assert sanity_warnings(r("bsln", 98.0, 100.0), before, 10) == []
    (w,) = sanity_warnings(r("jit", 98.0, 99.5), before, 10)
    assert "untouched" in w and "--set lr" in w
    (w,) = sanity_warnings(r("jit", 40.0, 0.0), before, 10)  # below half the original's 98
    assert "collapsed" in w and "lower" in w
    (w,) = sanity_warnings(r("ssd", 4.0, 0.0), r("bsln", 6.0, 100.0), 40)  # below 2x chance (5%)
    assert "collapsed" in w
    assert sanity_warnings(r("ssd", 6.0, 0.0), r("bsln", 6.0, 100.0), 40) == []


def test_train_from_vit_weights(tmp_path, capsys):
    """--vit-weights: a ViT starts from a Google-layout .npz (every weight but the head); with a
    vanishing lr the trained checkpoint keeps those weights, and its head is a fresh one."""
    import numpy as np

    from jit_jax import checkpoint
    from jit_jax.models import ModelSpec, export_vit_npz

    opts = {"patch_size": 4, "hidden": 8, "depth": 1, "heads": 2, "mlp_dim": 16}
    donor = ModelSpec("vit", 10, (8, 8, 1), opts).build(seed=7)
    weights = tmp_path / "vit.npz"
    saved = export_vit_npz(donor, weights)
    out = tmp_path / "vit"
    model_opts = [a for k, v in opts.items() for a in ("--model-opt", f"{k}={v}")]
    args = ["train", "--dataset", "digits", "--epochs", "1", "--optimizer", "sgd", "--lr", "1e-30",
            "--weight-decay", "0", "--no-progress"]
    vit = ["--model", "vit", *model_opts]
    assert main([*args, *vit, "--out", str(out), "--vit-weights", str(weights)]) == 0
    model, meta = checkpoint.restore(out)
    assert meta["init"] == {"vit_weights": str(weights)}
    got = export_vit_npz(model)
    for key, value in saved.items():
        if key == "head/kernel":
            assert not np.allclose(got[key], value), key  # a fresh head (its bias: zeros in both)
        elif key.startswith("head/"):
            continue
        else:
            # each SGD step moves a weight by lr * |momentum buffer| <= lr * |g| / (1 - 0.9); over
            # the 23 steps of an epoch (1,438 images, batch 64) with lr 1e-30 that stays below
            # 1e-20 for any gradient under 4e7 (zero biases move by ~1e-29; the rest not at all)
            np.testing.assert_allclose(got[key], value, rtol=0, atol=1e-20, err_msg=key)
    capsys.readouterr()
    assert main([*args, "--model", "mlp", "--out", str(tmp_path / "m"),
                 "--vit-weights", str(weights)]) == 2
    assert "--vit-weights needs a ViT model" in capsys.readouterr().err
    assert main([*args, *vit, "--out", str(tmp_path / "n"), "--vit-weights",
                 str(tmp_path / "nope.npz")]) == 2
    assert "no such file" in capsys.readouterr().err
    assert not (tmp_path / "m").exists() and not (tmp_path / "n").exists()


def test_rtrn_starts_from_the_weights_the_original_was_fine_tuned_from(tmp_path, capsys):
    """A ViT fine-tuned from --vit-weights is retrained from those weights (all but the head),
    as the fine-tuning is redone without D_f; one trained from scratch is retrained from a fresh
    initialisation; a missing weights file is an error naming it, nothing written."""
    import numpy as np

    from jit_jax import checkpoint
    from jit_jax.models import ModelSpec, export_vit_npz

    opts = {"patch_size": 4, "hidden": 8, "depth": 1, "heads": 2, "mlp_dim": 16}
    donor = ModelSpec("vit", 10, (8, 8, 1), opts).build(seed=7)
    weights = tmp_path / "vit.npz"
    saved = export_vit_npz(donor, weights)
    fresh = export_vit_npz(ModelSpec("vit", 10, (8, 8, 1), opts).build(seed=0))  # RTRN's seed 0
    model_opts = [a for k, v in opts.items() for a in ("--model-opt", f"{k}={v}")]
    train = ["train", "--dataset", "digits", "--epochs", "1", "--optimizer", "sgd", "--lr", "1e-30",
             "--weight-decay", "0", "--no-progress", "--model", "vit", *model_opts]
    assert main([*train, "--out", str(tmp_path / "ft"), "--vit-weights", str(weights)]) == 0
    assert main([*train, "--out", str(tmp_path / "scratch")]) == 0
    unl = ["unlearn", "--method", "rtrn", "--forget", "class:3", "--no-progress"]
    for orig, start in (("ft", saved), ("scratch", fresh)):
        out = tmp_path / f"rtrn-{orig}"
        assert main([*unl, "--checkpoint", str(tmp_path / orig), "--out", str(out)]) == 0
        got = export_vit_npz(checkpoint.restore(out)[0])
        for key, value in start.items():
            if key.startswith("head/"):  # a fresh head either way (seed 0's)
                np.testing.assert_allclose(got[key], fresh[key], rtol=0, atol=1e-20, err_msg=key)
            else:
                # the bound of test_train_from_vit_weights: lr 1e-30 moves no weight by 1e-20
                np.testing.assert_allclose(got[key], value, rtol=0, atol=1e-20, err_msg=key)
        assert not np.allclose(got["embedding/kernel"],
                               (fresh if orig == "ft" else saved)["embedding/kernel"])
    capsys.readouterr()
    weights.rename(tmp_path / "moved.npz")
    out = tmp_path / "rtrn-missing"
    assert main([*unl, "--checkpoint", str(tmp_path / "ft"), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert str(weights) in err and "missing" in err
    assert not out.exists() and not (tmp_path / "rtrn-missing.partial").exists()


def test_unlearn_full_metrics_with_shadows(run_dir, tmp_path, capsys):
    """--metrics full with --rtrn and --shadows: every further column in result.json, the shadows
    cached; bad --metrics/--shadows are errors up front."""
    rtrn = tmp_path / "rtrn"
    assert main(["unlearn", "--checkpoint", str(run_dir), "--method", "rtrn", "--forget",
                 "random:30", "--out", str(rtrn), "--no-progress"]) == 0
    cache = tmp_path / "shadows"
    args = ["unlearn", "--checkpoint", str(run_dir), "--method", "jit", "--forget", "random:30",
            "--rtrn", str(rtrn), "--metrics", "full", "--shadows", "2", "--shadow-cache",
            str(cache), "--set", "num_samples=4"]
    assert main([*args, "--out", str(tmp_path / "jit")]) == 0
    m = json.loads((tmp_path / "jit" / "result.json").read_text())["metrics"]
    for k in ("mia_lr3", "mia_lr3_auc", "mia_svc3_auc", "mia_threshold_auc", "kl_forget",
              "js_test", "agree_test", "relearn_steps", "ulira", "ulira_auc"):
        assert k in m, k
    assert "skipped" not in m and 0 <= m["ulira_auc"] <= 1
    assert len(list(cache.glob("*/shadow-*.npz"))) == 2  # reuse: test_privacy's cache test
    capsys.readouterr()
    assert main([*args[:-4], "--metrics", "mia_lr3,bogus", "--out", str(tmp_path / "x")]) == 2
    assert "unknown metric(s) ['bogus']" in capsys.readouterr().err
    assert main([*args[:7], "--shadows", "1", "--out", str(tmp_path / "y")]) == 2
    assert "--shadows 1; accepted: an integer >= 2" in capsys.readouterr().err
    assert not (tmp_path / "x").exists() and not (tmp_path / "y").exists()


def test_original_and_rtrn_are_scored_once_per_process(run_dir, tmp_path, monkeypatch):
    """Many methods on one original in one process (the paper runner) score the untouched and the
    retrained model once; the numbers are those of a fresh process, and a checkpoint rewritten in
    place is scored again."""
    import os

    from jit_jax import cli, metrics

    rtrn = tmp_path / "rtrn"
    assert main(["unlearn", "--checkpoint", str(run_dir), "--method", "rtrn", "--forget",
                 "class:3", "--out", str(rtrn), "--set", "epochs=1", "--no-progress"]) == 0
    calls = []
    real = metrics.evaluate_unlearning

    def counting(model, ds, split, *, method, **kw):
        calls.append(method)
        return real(model, ds, split, method=method, **kw)

    monkeypatch.setattr(metrics, "evaluate_unlearning", counting)
    monkeypatch.setattr(cli, "_SCORES", {})
    restored = []  # the --rtrn checkpoint is restored only to be scored
    real_load = cli.load_run

    def counting_load(path, **kw):
        if Path(path) == rtrn:
            restored.append(path)
        return real_load(path, **kw)

    monkeypatch.setattr(cli, "load_run", counting_load)

    def run(method, name):
        assert main(["unlearn", "--checkpoint", str(run_dir), "--method", method, "--forget",
                     "class:3", "--out", str(tmp_path / name), "--rtrn", str(rtrn),
                     "--no-progress", "--set", "num_samples=4" if method == "jit" else
                     "epochs=1"]) == 0
        return json.loads((tmp_path / name / "result.json").read_text())

    first = {m: run(m, m) for m in ("jit", "bdsh")}
    # jit: original, method, rtrn; bdsh: its own model only
    assert calls == ["bsln", "jit", "rtrn", "bdsh"], calls
    assert len(restored) == 1
    monkeypatch.setattr(cli, "_SCORES", {})  # a fresh process
    again = run("bdsh", "bdsh-fresh")
    for key in ("retrain_distance", "retain_acc", "forget_acc", "mia"):
        assert again[key] == first["bdsh"][key], key
    assert again["extra"]["rtrn"] == first["bdsh"]["extra"]["rtrn"]
    assert again["extra"]["original"] == first["bdsh"]["extra"]["original"]
    calls.clear()
    meta = rtrn / "metadata.json"
    st = meta.stat()
    os.utime(meta, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))  # rewritten in place
    run("bdsh", "bdsh-rewritten")
    assert calls == ["bdsh", "rtrn"], calls
    assert len(restored) == 3  # the fresh process and the rewrite
