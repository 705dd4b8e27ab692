"""The paper configs and their runner (``experiments/paper``) at the tiny scale: generated data
and width-4 models, every config through the same code as the CPU twins."""

from __future__ import annotations

import importlib
import json
import sys
from pathlib import Path

import numpy as np
import pytest

from jit_jax import unlearn

PAPER = Path(__file__).resolve().parents[1] / "experiments" / "paper"
CONFIGS = sorted(p.stem for p in PAPER.glob("table*.py"))


@pytest.fixture(scope="module")
def runner():
    sys.path.insert(0, str(PAPER))
    try:
        yield importlib.import_module("run"), importlib.import_module("common")
    finally:
        sys.path.remove(str(PAPER))


def test_configs_cover_the_tables(runner):
    run, common = runner
    assert CONFIGS == ["table1_faces", "table2_vgg", "table2_vit", "table3_vgg", "table3_vit",
                       "table4_vgg", "table4_vit"]
    tables = set()
    for name in CONFIGS:
        for scale in common.SCALES:
            cfg = run.load_config(name, scale)
            assert cfg.name == name and cfg.scale == scale
            methods = cfg.method_list()
            assert set(methods) <= set(unlearn.METHODS), methods
            assert {"bsln", "rtrn", "jit"} <= set(methods)
            assert len(cfg.seeds) == (1 if scale == "tiny" else 3)
            assert set(cfg.train) <= set(run.TRAIN_FLAGS), cfg.train  # passed as train's flags
        tables.add(cfg.table)
    # every sub-table of the paper has a config
    assert tables == {"table1", "table2a", "table2b", "table3a", "table3b", "table4a", "table4b"}
    with pytest.raises(ValueError, match="unknown config 'table9'") as err:
        run.load_config("table9")
    assert "figures" not in str(err.value) and "table1_faces" in str(err.value)
    with pytest.raises(ValueError, match="unknown config 'figures'"):
        run.load_config("figures")
    with pytest.raises(ValueError, match="scale 'huge'"):
        run.load_config("table2_vgg", "huge")


def test_model_and_recipe_overrides(runner):
    """--model/--model-set/--train-set: another model takes only its own options, options alone
    update the config's, values are typed, and unknown names are errors naming what is accepted."""
    run, _ = runner
    cfg = run.load_config("table4_vgg", "cpu")
    r18 = run.override(cfg, "resnet18", ["width=16"], ["epochs=12"])
    assert (r18.model, r18.model_opts) == ("resnet18", {"width": 16})
    assert r18.train == {**cfg.train, "epochs": 12} and r18.forget == cfg.forget
    wider = run.override(cfg, None, ["width=32"], [])
    assert (wider.model, wider.model_opts) == (cfg.model, {**cfg.model_opts, "width": 32})
    assert run.override(cfg, None, [], []) is cfg
    with pytest.raises(ValueError, match="resnet99"):
        run.override(cfg, "resnet99", [], [])
    with pytest.raises(ValueError, match="depth"):
        run.override(cfg, "resnet18", ["depth=3"], [])
    with pytest.raises(ValueError, match="epoch"):
        run.override(cfg, None, [], ["epoch=3"])


def _run_tiny(runner, tmp_path, names):
    """Configs through the runner at the tiny scale with BSLN, RTRN and JiT; the page has the
    paper's numbers beside ours."""
    run, common = runner
    for name in names:
        cfg = run.load_config(name, "tiny")
        out = tmp_path / name
        summary = run.run(cfg, out, methods=["bsln", "jit"], log=lambda *_: None)
        rows = {r["method"]: r for r in summary["rows"]}
        assert set(rows) == {"rtrn", "bsln", "jit"}
        assert rows["rtrn"]["retrain_distance"] == 0.0
        paper = common.paper_rows(cfg.table)
        assert rows["jit"]["paper"]["forget_acc"] == paper["jit"]["forget_acc"]
        page = (out / "results.md").read_text()
        assert f"{paper['bsln']['retain_acc']:.1f}" in page
        assert json.loads((out / "results.json").read_text())["rows"]


@pytest.mark.parametrize("name", CONFIGS)
def test_every_config_runs_at_the_tiny_scale(runner, tmp_path, name):
    """Each of the seven configs through the runner (original, RTRN, BSLN and JiT each), in the
    default suite: the issue's smoke test of every config. Every tiny config trains and scores the
    same width-4 cnn (or the same tiny ViT) on the same 8x8 images; the suite's compilation cache
    (``conftest.py``) spares the recompilations. All seven took 40.7 s of test time in one process
    on 2 cores (2026-12-04, matmul calibration 120 GFLOP/s)."""
    _run_tiny(runner, tmp_path, [name])


def test_resumes_without_recomputing(runner, tmp_path, monkeypatch):
    """A finished (method, seed) is never run again; a new method runs alone."""
    run, _ = runner
    cfg = run.load_config("table2_vgg", "tiny")
    calls = []
    real = run._cli
    monkeypatch.setattr(run, "_cli", lambda argv: (calls.append(argv[0:5]), real(argv)))
    run.run(cfg, tmp_path, methods=["bsln"], log=lambda *_: None)
    assert [c[0] for c in calls] == ["train", "unlearn", "unlearn"]  # original, rtrn, bsln
    calls.clear()
    first = json.loads((tmp_path / "results.json").read_text())["rows"]
    run.run(cfg, tmp_path, methods=["bsln"], log=lambda *_: None)
    assert calls == []
    assert json.loads((tmp_path / "results.json").read_text())["rows"] == first
    run.run(cfg, tmp_path, methods=["bsln", "ssd"], log=lambda *_: None)
    assert [c[4] for c in calls] == ["ssd"]


def test_further_metrics_from_the_saved_runs(runner, tmp_path, monkeypatch):
    """--metrics full scores every finished run from its checkpoint (RTRN against itself: no
    distance), the page gains the table, and a second call reads metrics.json back."""
    run, _ = runner
    cfg = run.load_config("table4_vgg", "tiny")
    run.run(cfg, tmp_path, methods=["bsln"], log=lambda *_: None)
    assert not (tmp_path / "bsln-s0" / "metrics.json").exists()
    run.run(cfg, tmp_path, methods=["bsln"], metrics="full", log=lambda *_: None)
    r = json.loads((tmp_path / "rtrn-s0" / "metrics.json").read_text())
    assert r["kl_forget"] == pytest.approx(0, abs=1e-12) and r["agree_test"] == 100
    b = json.loads((tmp_path / "bsln-s0" / "metrics.json").read_text())
    assert {"mia_lr3_auc", "mia_svc3_auc", "mia_threshold_auc", "js_test", "relearn_steps"} <= set(b)
    assert b["relearn_steps"] == 0  # the original is its own target
    page = (tmp_path / "results.md").read_text()
    assert "## Further metrics" in page and "| bsln |" in page.split("## Further metrics")[1]
    import jit_jax.metrics

    monkeypatch.setattr(jit_jax.metrics, "evaluate_unlearning", None)  # would fail if called
    run.run(cfg, tmp_path, methods=["bsln"], metrics="full", log=lambda *_: None)


def _summary(rows):
    return {"rows": [{"method": m, "retain_acc": r[0], "forget_acc": r[1], "mia": r[2],
                      "paper": {"retain_acc": p[0], "forget_acc": p[1], "mia": p[2]}}
                     for m, r, p in rows]}


def test_differences_locate_each_gap(runner):
    """Rows more than 10 points from the paper, located against each side's BSLN and RTRN
    (numbers worked by hand)."""
    run, _ = runner
    summary = _summary([
        ("rtrn", (50.0, 0.0, 30.0), (80.0, 0.0, 10.0)),  # D_r -30, MIA +20
        ("bsln", (52.0, 60.0, 70.0), (82.0, 90.0, 95.0)),  # -30, -30, -25
        ("jit", (51.0, 10.0, 20.0), (80.0, 14.0, 3.0)),  # D_r -29: -1 rel. BSLN; MIA +17
        ("amn", (49.0, 0.0, 40.0), (80.0, 0.0, 2.0)),  # MIA +38: +63 rel. BSLN, +18 rel. RTRN
        ("ssd", (50.0, 5.0, 12.0), (79.0, 1.0, 4.0)),  # within 10 except D_r
    ])
    got = {(d["method"], d["column"]): d for d in run.differences(summary)}
    assert set(got) == {("rtrn", "D_r"), ("rtrn", "MIA"), ("bsln", "D_r"), ("bsln", "D_f"),
                        ("bsln", "MIA"), ("jit", "D_r"), ("jit", "MIA"), ("amn", "D_r"),
                        ("amn", "MIA"), ("ssd", "D_r")}
    assert got[("jit", "D_r")]["relative_to_bsln"] == (51 - 52) - (80 - 82)  # +1
    assert got[("jit", "D_r")]["cause"] == "original"
    # jit MIA: +17; rel. BSLN (20-70)-(3-95) = +42; rel. RTRN (20-30)-(3-10) = -3
    assert got[("jit", "MIA")]["relative_to_rtrn"] == -3.0
    assert got[("jit", "MIA")]["cause"] == "retrained"
    assert got[("amn", "MIA")]["relative_to_bsln"] == 63.0
    assert got[("amn", "MIA")]["relative_to_rtrn"] == 18.0
    assert got[("amn", "MIA")]["cause"] == "method"
    assert got[("rtrn", "MIA")]["cause"] == "retrained"  # its own gap: rel. BSLN +45
    assert {d["cause"] for k, d in got.items() if k[0] == "bsln"} == {"original"}
    page = run.differences_markdown(summary)
    assert "| amn | MIA | 40.0 | 2.0 | +38.0 | +63.0 | +18.0 | method |" in page
    assert "No row differs" in run.differences_markdown(_summary([
        ("bsln", (80.0, 90.0, 95.0), (82.0, 90.0, 95.0))]))


def test_figures_from_a_tiny_run(runner, tmp_path, monkeypatch):
    """Figure 5 from a runner folder and the Figure 7/8 sweep on a 3 x 1 grid: PNG and JSON. A
    grid point that fails (here: forced to) is recorded and drawn as failed; the sweep goes on,
    and a second call neither recomputes nor retries anything."""
    from jit_jax.unlearn import paper

    run, _ = runner
    real, calls = run.cli_main, []
    cfg = run.load_config("table2_vgg", "tiny")
    base_lr = paper.jit_config(cfg.task, cfg.model).lr

    def cli(argv):
        calls.append(argv)
        if f"lr={2.0 * base_lr!r}" in argv:  # the grid's middle lr
            print("error: JiT diverged: loss nan at batch 1", file=sys.stderr)
            return 2
        return real(argv)

    monkeypatch.setattr(run, "cli_main", cli)
    sys.path.insert(0, str(PAPER))
    try:
        figures = importlib.import_module("figures")
    finally:
        sys.path.remove(str(PAPER))
    cfg = run.load_config("table2_vgg", "tiny")
    runs = tmp_path / "runs"
    run.run(cfg, runs, methods=["bsln", "jit"], log=lambda *_: None)
    data = figures.fig5(runs, tmp_path / "figs")
    assert set(data["median_runtime_s"]) == {"rtrn", "jit"}
    assert (tmp_path / "figs" / "figure5-table2_vgg-tiny.png").stat().st_size > 1000
    sw = figures.sweep("table2_vgg", "tiny", runs, tmp_path / "figs", log=lambda *_: None,
                       lr_factors=(1.0, 2.0, 3.0), sigma_factors=(1.0,))
    assert [g["lr_factor"] for g in sw["grid"]] == [1.0, 2.0, 3.0]
    base = sw["paper_setting"]
    assert sw["grid"][2]["lr"] == 3.0 * base["lr"] and sw["grid"][2]["sigma"] == base["sigma"]
    assert sw["grid"][1]["failed"] == "JiT diverged: loss nan at batch 1"
    assert sw["grid"][1]["retain_acc"] is None and sw["grid"][2]["retain_acc"] is not None
    for n in (7, 8):
        assert (tmp_path / "figs" / f"figure{n}-table2_vgg-tiny.png").stat().st_size > 1000
        saved = json.loads((tmp_path / "figs" / f"figure{n}-table2_vgg-tiny.json").read_text())
        assert saved["figure"] == n and len(saved["grid"]) == 3
    # resumable: a second call recomputes nothing (the grid's folders hold their results) and
    # does not retry the failed point
    before = sorted(p.stat().st_mtime_ns for p in (runs / "sweep").glob("*/result.json"))
    n = len(calls)
    figures.sweep("table2_vgg", "tiny", runs, tmp_path / "figs", log=lambda *_: None,
                  lr_factors=(1.0, 2.0, 3.0), sigma_factors=(1.0,))
    assert sorted(p.stat().st_mtime_ns for p in (runs / "sweep").glob("*/result.json")) == before
    assert len(calls) == n


def test_pretrained_vit_configs_need_weights(runner, tmp_path):
    """The paper's ViT is fine-tuned from published weights at 224x224: at the gpu and paper
    scales the runner refuses to start without --vit-weights, and refuses weights for a CNN."""
    run, _ = runner
    for scale in ("gpu", "paper"):
        cfg = run.load_config("table2_vit", scale)
        assert cfg.model == "vit_b16" and cfg.data_opts["image_size"] == 224
        with pytest.raises(ValueError, match="pass --vit-weights PATH"):
            run.run(cfg, tmp_path / scale, data=tmp_path / "none.npz")
    with pytest.raises(FileNotFoundError, match="no such file"):
        run.run(run.load_config("table2_vit", "gpu"), tmp_path / "x", vit_weights=tmp_path / "w")
    with pytest.raises(ValueError, match="--vit-weights is for the ViT configs"):
        run.run(run.load_config("table2_vgg", "gpu"), tmp_path / "y", vit_weights=tmp_path / "w")
    assert not any(tmp_path.iterdir())  # nothing written
    gpu = run.load_config("table2_vgg", "gpu")
    paper = run.load_config("table2_vgg", "paper")
    assert gpu.train == {**paper.train, "epochs": 6} and gpu.model == paper.model


def test_a_failing_method_is_a_result(runner, tmp_path, monkeypatch, capsys):
    """A method that fails (e.g. diverges) on a seed is recorded and reported, the other methods
    and seeds run on, and a resumed run does not retry it."""
    run, _ = runner
    real = run.cli_main
    calls = []

    def cli(argv):
        calls.append(argv)
        if argv[0] == "unlearn" and argv[argv.index("--method") + 1] == "jit":
            print("error: JiT diverged: loss nan at batch 1", file=sys.stderr)
            return 2
        return real(argv)

    monkeypatch.setattr(run, "cli_main", cli)
    cfg = run.load_config("table2_vgg", "tiny")
    out = tmp_path / "t"
    summary = run.run(cfg, out, methods=["bsln", "jit"], log=lambda *_: None)
    rows = {r["method"]: r for r in summary["rows"]}
    assert rows["jit"]["n"] == 0 and rows["jit"]["failed"] == {0: "JiT diverged: loss nan at batch 1"}
    assert rows["bsln"]["n"] == 1 and "retain_acc" in rows["bsln"]
    saved = json.loads((out / "jit-s0.failed.json").read_text())
    assert saved["error"] == "JiT diverged: loss nan at batch 1" and saved["seed"] == 0
    page = (out / "results.md").read_text()
    assert "| jit (n=0) | failed |" in page
    assert "- jit failed on seed(s) 0: JiT diverged: loss nan at batch 1." in page
    assert all(d["method"] != "jit" for d in summary["differences"])
    n = len(calls)
    run.run(cfg, out, methods=["bsln", "jit"], log=lambda *_: None)
    assert len(calls) == n  # resumed: nothing recomputed, the failure not retried


def test_an_interrupted_original_resumes(runner, tmp_path, monkeypatch):
    """The runner stopped during the original's training (after its first epoch was saved): the
    next run continues that training with --resume instead of failing on its saved state."""
    import jit_jax.cli as cli

    run, _ = runner
    real = cli._report_epoch

    def stop(rec):
        real(rec)
        raise KeyboardInterrupt  # as Ctrl-C or a killed job, after epoch 1 was saved

    monkeypatch.setattr(cli, "_report_epoch", stop)
    cfg = run.load_config("table2_vgg", "tiny")
    out = tmp_path / "t"
    with pytest.raises(KeyboardInterrupt):
        run.run(cfg, out, methods=["bsln"], log=lambda *_: None)
    assert (out / "original.partial").is_dir() and not (out / "original").exists()
    monkeypatch.setattr(cli, "_report_epoch", real)
    logs = []
    run.run(cfg, out, methods=["bsln"], log=logs.append)
    assert any("(resuming)" in line for line in logs), logs
    meta = json.loads((out / "original" / "metadata.json").read_text())
    assert [h["epoch"] for h in meta["history"]] == [1, 2]


def test_an_interrupted_retraining_resumes(runner, tmp_path, monkeypatch):
    """The same for a seed's RTRN: stopped after its first epoch was saved, the next run continues
    it with --resume (before, the runner stopped on the saved state and asked for --resume)."""
    import jit_jax.unlearn.baselines as baselines

    run, _ = runner
    real = baselines.train

    def stop_after_epoch_1(*a, **kw):
        def cb(rec):
            if rec["epoch"] == 1:
                raise KeyboardInterrupt  # after epoch 1 was saved (the save precedes the callback)
        return real(*a, **kw, callback=cb)

    monkeypatch.setattr(baselines, "train", stop_after_epoch_1)
    cfg = run.load_config("table2_vgg", "tiny")
    out = tmp_path / "t"
    with pytest.raises(KeyboardInterrupt):
        run.run(cfg, out, seeds=[0], methods=["bsln"], log=lambda *_: None)
    assert (out / "original" / "metadata.json").exists()
    assert (out / "rtrn-s0.partial").is_dir() and not (out / "rtrn-s0" / "result.json").exists()
    monkeypatch.setattr(baselines, "train", real)
    logs = []
    run.run(cfg, out, seeds=[0], methods=["bsln"], log=logs.append)
    assert any("seed 0: rtrn (resuming)" in line for line in logs), logs
    assert (out / "rtrn-s0" / "result.json").exists()


def test_gkt_rounds_scale_with_the_originals_training(runner, tmp_path, monkeypatch):
    """GKT's fixed 1000 (ViT: 101) rounds shrink with the original's training (epochs x images)
    against the paper's; the paper scale keeps the authors' own; the runner passes the rounds to
    the CLI and names them on the page."""
    run, common = runner

    def rounds(name, scale, n):
        return common.gkt_rounds(run.load_config(name, scale), n)

    assert rounds("table2_vgg", "cpu", 10_000) == 29  # ceil(1000 * 30 * 10k / (210 * 50k))
    assert rounds("table2_vit", "cpu", 10_000) == 51  # ceil(101 * 20 * 10k / (8 * 50k))
    assert rounds("table2_vgg", "gpu", 50_000) == 29  # 6 of 210 epochs on the full set
    assert rounds("table2_vgg", "paper", 50_000) is None
    assert rounds("table1_faces", "cpu", 1234) == 120  # the same folder: 30 of 250 epochs
    cfg = run.load_config("table2_vgg", "cpu")
    assert run.method_sets(cfg, "gkt", 10_000) == {"pseudo_batches": 29}
    assert run.method_sets(cfg, "jit", 10_000) == {}
    mine = cfg.replace(method_sets={"gkt": {"pseudo_batches": 3, "batch_size": 8}})
    assert run.method_sets(mine, "gkt", 10_000) == {"pseudo_batches": 3, "batch_size": 8}
    tiny = run.load_config("table2_vgg", "tiny")
    calls = []
    real = run._cli
    monkeypatch.setattr(run, "_cli", lambda argv: (calls.append(argv), real(argv)))
    summary = run.run(tiny, tmp_path, methods=["gkt"], log=lambda *_: None)
    gkt_argv = [a for a in calls if a[:4] == ["unlearn", "--checkpoint", a[2], "--method"]
                and a[4] == "gkt"]
    assert len(gkt_argv) == 1 and gkt_argv[0][-2:] == ["--set", "pseudo_batches=1"]
    assert (tmp_path / "gkt-s0" / "result.json").exists()
    assert summary["method_sets"] == {"gkt": {"pseudo_batches": 1}}
    assert "gkt: pseudo_batches=1 (GKT's rounds scaled" in (tmp_path / "results.md").read_text()


def test_images_per_class_override(runner, tmp_path, capsys):
    """--per-class/--test-per-class resize the class-balanced subset (``all``: the whole split,
    the paper's data for a scale probe); bad values name what is accepted; an output folder made
    with other sizes is refused instead of silently reused."""
    run, common = runner
    cfg = run.load_config("table2_vgg", "cpu")
    assert run.images_per_class(cfg, None, None) is cfg
    full = run.images_per_class(cfg, "all", "all")
    assert (full.per_class, full.test_per_class) == (None, None)
    assert run.images_per_class(cfg, "7", None).per_class == 7
    assert run.images_per_class(cfg, "7", None).test_per_class == cfg.test_per_class
    for bad in ("0", "-3", "half"):
        with pytest.raises(ValueError, match=f"--per-class '{bad}'.*positive integer"):
            run.images_per_class(cfg, bad, None)
    arrays = common.tiny_dataset("cifar100")
    src = tmp_path / "src.npz"
    np.savez(src, **arrays)
    small = run.images_per_class(cfg, "5", "3")
    path = run.prepare_data(small, tmp_path / "out", src)
    with np.load(path) as z:
        counts = np.bincount(z["y_train"])
        assert set(counts[counts > 0]) == {5}
        assert set(np.bincount(z["y_test"])[np.bincount(z["y_test"]) > 0]) == {3}
    assert run.prepare_data(small, tmp_path / "out", src) == path  # same sizes: reused
    before = path.read_bytes()
    with pytest.raises(ValueError, match="holds data made with"):
        run.prepare_data(full, tmp_path / "out", src)
    assert path.read_bytes() == before  # nothing overwritten
    with pytest.raises(SystemExit) as exit_info:  # the command line: one error line, code 2
        run.main(["table2_vgg", "--per-class", "0", "--out", str(tmp_path / "cli")])
    assert exit_info.value.code == 2
    assert "--per-class '0': accepted" in capsys.readouterr().err
    assert not (tmp_path / "cli").exists()  # nothing written
    page = run.markdown(small, {"seeds": [0], "rows": [], "differences": []})
    assert "images a class: 5 training, 3 test" in page


def test_bt_teacher_backbone_from_the_vit_weights(runner, tmp_path, monkeypatch):
    """With --vit-weights BT (on ViT, the authors' random-head teacher) takes the pretrained
    backbone the original was fine-tuned from, as the authors' teacher has: read from the
    original's checkpoint, so the runner adds no option for it."""
    from jit_jax.models import ModelSpec
    from jit_jax.models.vit import export_vit_npz

    run, common = runner
    cfg = run.load_config("table2_vit", "tiny")
    arrays = common.tiny_dataset("cifar100")
    spec = ModelSpec(cfg.model, int(arrays["y_train"].max()) + 1, arrays["x_train"].shape[1:],
                     cfg.model_opts)
    weights = tmp_path / "pretrained.npz"
    np.savez(weights, **export_vit_npz(spec.build(11)))
    calls = []
    real = run._cli
    monkeypatch.setattr(run, "_cli", lambda argv: (calls.append(argv), real(argv)))
    summary = run.run(cfg, tmp_path / "out", methods=["bt"], vit_weights=weights,
                      log=lambda *_: None)
    assert summary["method_sets"] == {}
    bt_argv = [a for a in calls if a[0] == "unlearn" and a[4] == "bt"]
    assert len(bt_argv) == 1 and "--set" not in bt_argv[0]
    meta = json.loads((tmp_path / "out" / "bt-s0" / "metadata.json").read_text())
    assert meta["method_log"]["config"]["teacher"] == "random_head"
    assert meta["method_log"]["config"]["teacher_weights"] == str(weights.absolute())


def test_pretrain_vit_complement(runner, tmp_path, capsys):
    """pretrain_vit's pretraining set: exactly the images outside the twin's class-balanced
    subset, per split, labels kept; nothing left or a CNN config are errors."""
    run, common = runner
    pre = importlib.import_module("pretrain_vit")
    rng = np.random.default_rng(0)
    y_tr, y_te = np.repeat(np.arange(4), 6), np.repeat(np.arange(4), 3)
    arrays = {"x_train": np.arange(24)[:, None] * np.ones((1, 2)), "y_train": y_tr,
              "y_train_coarse": y_tr // 2, "x_test": 100 + np.arange(12)[:, None] * np.ones((1, 2)),
              "y_test": y_te, "class_names": np.array(list("abcd"))}
    arrays["x_train"] = arrays["x_train"][rng.permutation(24)]  # images name their own index
    sub = common.balanced_subset(arrays, 2, 1)
    comp = pre.complement(arrays, 2, 1)
    for split, n, k in (("train", 24, 2), ("test", 12, 1)):
        x_sub, x_comp = sub[f"x_{split}"][:, 0], comp[f"x_{split}"][:, 0]
        assert len(x_sub) == 4 * k and len(x_comp) == n - 4 * k
        assert sorted(np.concatenate([x_sub, x_comp])) == sorted(arrays[f"x_{split}"][:, 0])
        lookup = dict(zip(arrays[f"x_{split}"][:, 0], arrays[f"y_{split}"], strict=True))
        assert all(lookup[v] == y for v, y in zip(x_comp, comp[f"y_{split}"], strict=True))
    assert np.array_equal(comp["y_train_coarse"], comp["y_train"] // 2)
    with pytest.raises(ValueError, match="the twin holds every train image"):
        pre.complement(arrays, 6, 1)
    with pytest.raises(ValueError, match="the twin holds every test image"):
        pre.complement(arrays, 2, None)
    with pytest.raises(SystemExit):
        pre.main(["table2_vgg", "--data", str(tmp_path / "d.npz"), "--out", str(tmp_path)])
    assert "accepted: a ViT config" in capsys.readouterr().err
    with pytest.raises(ValueError, match="unknown config 'pretrain_vit'"):
        run.load_config("pretrain_vit")


def test_forget_outputs_describe(runner):
    """forget_outputs.describe against hand-computed values: a uniform output has entropy log C
    and top probability 1/C; KL to itself is 0; accuracy and the most predicted classes."""
    fo = importlib.import_module("forget_outputs")
    names = ["a", "b", "c", "d"]
    uni = np.zeros((3, 4))
    r = fo.describe(uni, np.array([0, 1, 2]), names, teacher=uni)
    assert r["entropy"] == pytest.approx(np.log(4), rel=1e-12)
    assert r["p_top"] == pytest.approx(0.25, rel=1e-12) and r["p_label"] == pytest.approx(0.25)
    assert r["kl_teacher"] == pytest.approx(0.0, abs=1e-15) and r["agree_teacher"] == 100.0
    sharp = np.array([[9.0, 0, 0, 0], [0, 9.0, 0, 0], [9.0, 0, 0, 0]])
    r = fo.describe(sharp, np.array([0, 0, 0]), names, teacher=uni)
    assert r["accuracy"] == pytest.approx(200 / 3) and r["top_classes"] == [("a", 2), ("b", 1)]
    p = np.exp(9) / (np.exp(9) + 3)  # the top probability of each sharp row
    assert r["p_top"] == pytest.approx(p, rel=1e-12)
    # KL(uniform || sharp row) = sum 1/4 log((1/4) / q): q = p once and (1 - p) / 3 three times
    kl = 0.25 * (np.log(0.25 / p) + 3 * np.log(0.25 / ((1 - p) / 3)))
    # the uniform teacher's top class is the first (argmax of ties): rows 1 and 3 agree
    assert r["kl_teacher"] == pytest.approx(kl, rel=1e-12) and r["agree_teacher"] == pytest.approx(200 / 3)


def test_forget_outputs_attack_power(runner):
    """attack_power: members with sharp outputs against uniform non-members are told apart
    perfectly (AUC 1) and sharp forget samples count as members; the entropies are exact."""
    fo = importlib.import_module("forget_outputs")
    rng = np.random.default_rng(0)
    sharp = np.zeros((40, 5))
    sharp[np.arange(40), rng.integers(0, 5, 40)] = 50.0  # entropy ~ 4 * 51 e^-50: 0 in float64
    uniform = np.zeros((30, 5))
    a = fo.attack_power(sharp, uniform, sharp[:7])
    assert a["auc"] == 1.0 and a["mia"] == 100.0
    # its operating point: every member called "member", no non-member; the decision point
    # between the members' entropy (0) and the non-members' (log 5)
    assert (a["tpr"], a["fpr"]) == (100.0, 0.0) and 0.0 < a["threshold"] < np.log(5)
    assert a["entropy_nonmember"][0] == pytest.approx(np.log(5), rel=1e-12)
    assert a["entropy_nonmember"][1] == pytest.approx(0.0, abs=1e-12)
    assert a["entropy_member"][0] == pytest.approx(0.0, abs=1e-15)
    a = fo.attack_power(sharp, uniform, uniform[:4])
    assert a["mia"] == 0.0


def test_forget_outputs_on_a_tiny_run(runner, tmp_path, capsys):
    """forget_outputs on a runner folder: BSLN (the original's copy) reads exactly as the original
    in every printed number; --attack and --test-share add the same seed's RTRN; a folder with no
    results.json needs --forget and says so."""
    import shutil

    run, _ = runner
    fo = importlib.import_module("forget_outputs")
    run.run(run.load_config("table2_vgg", "tiny"), tmp_path / "r", methods=["bsln"],
            log=lambda *_: None)
    capsys.readouterr()
    assert fo.main([str(tmp_path / "r"), "--method", "bsln", "--attack", "--test-share"]) == 0
    lines = capsys.readouterr().out.splitlines()

    def line(model, what):
        got = [ln.split(None, 1)[1] for ln in lines if ln.startswith(model + " ") and what in ln]
        assert len(got) == 1, (model, what, lines)
        return got[0]

    for what in ("accuracy", "test images predicted", "attack:"):
        assert line("bsln-s0", what) == line("original", what)
        if what != "accuracy":  # the RTRN is scored by the attack and the test share only
            assert line("rtrn-s0", what)
    forget = json.loads((tmp_path / "r" / "results.json").read_text())["config"]["forget"]
    shutil.copytree(tmp_path / "r", tmp_path / "bare", ignore=shutil.ignore_patterns("results.*"))
    with pytest.raises(SystemExit):
        fo.main([str(tmp_path / "bare"), "--method", "bsln"])
    assert "name the request with --forget" in capsys.readouterr().err
    assert fo.main([str(tmp_path / "bare"), "--method", "bsln", "--forget", forget]) == 0
    assert forget in capsys.readouterr().out


def test_the_standin_faces_folder_loads_as_the_table1_twin_reads_it(runner, tmp_path):
    """standin_faces.py writes one sub-folder of PNGs per identity in class order; the folder
    loader with Table 1's options reads back the same labels and pixels, and an existing folder is
    refused untouched."""
    sys.path.insert(0, str(PAPER))
    try:
        standin = importlib.import_module("standin_faces")
    finally:
        sys.path.remove(str(PAPER))
    from jit_jax.data import load_dataset
    from jit_jax.data.synthetic import identities

    out = tmp_path / "faces"
    assert standin.write(out, classes=12, per_class=3, size=8, seed=1) == 36
    assert sorted(p.name for p in out.iterdir())[:3] == ["pins_id000", "pins_id001", "pins_id002"]
    ds = load_dataset(f"folder:{out}", image_size=(8, 8), test_fraction=0.0)
    ref = identities(num_classes=12, train_per_class=3, test_per_class=1, size=8, seed=1)
    assert ds.class_names[1] == "pins_id001" and len(ds.y_train) == 36
    np.testing.assert_array_equal(np.bincount(ds.y_train), [3] * 12)
    # the loader sorts files by name: the written order, class by class
    np.testing.assert_array_equal(ds.y_train, ref["y_train"])
    np.testing.assert_array_equal(ds.x_train, ref["x_train"])  # PNG is lossless
    before = sorted(p.name for p in (out / "pins_id000").iterdir())
    with pytest.raises(FileExistsError, match="not empty"):
        standin.write(out, classes=2, per_class=1, size=8, seed=0)
    assert sorted(p.name for p in (out / "pins_id000").iterdir()) == before


def test_the_separability_probe_reads_the_vit_representation_before_its_head():
    """probe_subclass_separability.representation is what the ViT's head reads: the head applied
    to it gives the model's logits. The probe runs jitted, the model here eagerly: the same
    float32 ops, which XLA may fuse and reassociate (reductions of at most 16 terms, two blocks),
    so the two agree to a few hundred float32 ulps of the logits' scale, not bit for bit; a wrong
    representation is off by the logits' own size."""
    import jax.numpy as jnp

    from jit_jax import models

    sys.path.insert(0, str(PAPER))
    try:
        probe = importlib.import_module("probe_subclass_separability")
    finally:
        sys.path.remove(str(PAPER))
    model = models.create("vit", 5, (8, 8, 3), patch_size=4, hidden=8, depth=2, heads=2,
                          mlp_dim=16)
    x = np.random.default_rng(0).standard_normal((3, 8, 8, 3)).astype(np.float32)
    feats = probe.representation(model, x, batch=2)
    assert feats.shape == (3, 8)
    logits = np.asarray(model(x))
    scale = max(1.0, float(np.abs(logits).max()))
    np.testing.assert_allclose(np.asarray(model.head(jnp.asarray(feats))), logits, rtol=0,
                               atol=1e-4 * scale)
    with pytest.raises(ValueError, match="ViT only"):
        probe.representation(models.create("mlp", 5, (8, 8, 3)), x)
