"""jit-jax tune: the choice rule, the heat map, the command end to end on digits (tiny epochs), the
script experiments/tune_jit.py giving the same grid and choice, and the command's errors."""

import importlib.util
import json
from pathlib import Path

import pytest

from jit_jax import tune
from jit_jax.cli import main, parse_options

ROOT = Path(__file__).resolve().parents[1]
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
# digits + mlp, originals and RTRN trained 3 epochs, N = 4 noise draws: seconds, not minutes
TINY = ["--dataset", "digits", "--model", "mlp", "--forget", "class:0", "--seeds", "0",
        "--train-set", "epochs=3", "--num-samples", "4", "--batch-size", "32"]
TINY_SIGMAS, TINY_LRS = ["1", "2"], ["4e-3", "1e30"]  # lr 1e30 diverges


def _row(sigma, lr, dist, drop, b=32):
    return {"sigma": sigma, "lr": lr, "batch_size": b, "retrain_distance": dist, "dr_drop": drop}


ROWS = [_row(0.5, 1e-3, 30.0, 0.5), _row(0.5, 2e-3, 12.0, 2.0), _row(0.5, 4e-3, 9.0, 7.5),
        {"sigma": 1.0, "lr": 1e-3, "batch_size": 32, "diverged": True},
        _row(1.0, 2e-3, 12.0, 1.0), _row(1.0, 4e-3, 15.0, 3.0)]


def test_choose_is_the_lowest_distance_among_eligible_rows():
    assert tune.choose(ROWS) is ROWS[2]  # the lowest distance; the diverged row is skipped
    assert tune.choose(ROWS, max_dr_drop=5) is ROWS[1]  # 9.0 drops 7.5 points; first of a tie
    assert tune.choose(ROWS, max_dr_drop=2.0) is ROWS[1]  # the bound itself is allowed
    assert tune.choose(ROWS, max_dr_drop=0.1) is None
    assert tune.choose(ROWS[3:4]) is None


def test_set_line_parses_back():
    row = _row(2.0, 1.13e-2, 1.0, 0.0, b=16)
    opts = parse_options(tune.set_line(row).split()[1::2], "JiT")
    assert opts == {"sigma": 2.0, "lr": 0.0113, "batch_size": 16}
    assert type(opts["batch_size"]) is int


def test_default_grid_is_2x_steps_around_the_digits_defaults(digits):
    from jit_jax.data import parse_forget
    from jit_jax.models import ModelSpec

    spec = ModelSpec("mlp", digits.num_classes, digits.image_shape, {})
    ref = tune.Reference(0, parse_forget(digits, "class:0"), digits, None, None, None, spec)
    grid = tune.default_grid([ref])  # digits defaults: sigma 1, lr 8e-3, batch size 32
    assert grid == {"sigma": [0.5, 1.0, 2.0], "lr": [2e-3, 4e-3, 8e-3, 1.6e-2, 3.2e-2],
                    "batch_size": [32]}
    assert tune.default_grid([ref], {"passes": 2}) == grid
    with pytest.raises(ValueError, match="no references"):
        tune.default_grid([])


def test_heat_map_marks_diverged_excluded_and_chosen_cells():
    from matplotlib.patches import Rectangle

    rows = ROWS + [_row(0.5, 1e-3, 20.0, 0.0, b=64)]
    fig = tune.plot_grid(rows, tune.choose(rows, 5), max_dr_drop=5)
    axes = [ax for ax in fig.axes if ax.get_label() != "<colorbar>"]
    assert [ax.get_title() for ax in axes] == ["batch size 32", "batch size 64"]
    texts = [t.get_text() for t in axes[0].texts]
    assert texts.count("diverged") == 1 and "9.0" in texts and "12.0" in texts
    patches = [p for p in axes[0].patches if isinstance(p, Rectangle)]
    red = [p for p in patches if p.get_edgecolor()[:3] == (1.0, 0.0, 0.0)]
    assert [(p.get_x() + 0.5, p.get_y() + 0.5) for p in red] == [(1, 0)]  # lr 2e-3, sigma 0.5
    hatched = [p for p in patches if p.get_hatch()]
    assert [(p.get_x() + 0.5, p.get_y() + 0.5) for p in hatched] == [(2, 0)]  # drop 7.5 > 5
    assert not [p for p in axes[1].patches if p.get_edgecolor()[:3] == (1.0, 0.0, 0.0)]


def test_command_passes_max_dr_drop_and_reports_no_choice(tmp_path, monkeypatch, capsys):
    """The command's plumbing with the search replaced by fixed rows."""
    monkeypatch.setattr(tune, "references_in_process", lambda *a, **k: [])
    monkeypatch.setattr(tune, "run_grid", lambda *a, **k: [dict(r) for r in ROWS])
    args = ["tune", *TINY, "--sigma", "0.5", "1", "--lr", "1e-3", "2e-3", "4e-3"]
    assert main([*args, "--max-dr-drop", "5", "--out", str(tmp_path / "a")]) == 0
    line = capsys.readouterr().out.strip().splitlines()[-1]
    assert line == "--set sigma=0.5 --set lr=0.002 --set batch_size=32"
    saved = json.loads((tmp_path / "a" / "grid.json").read_text())
    assert saved["best"] == ROWS[1] and saved["max_dr_drop"] == 5
    assert main([*args, "--max-dr-drop", "0.1", "--out", str(tmp_path / "b")]) == 1
    assert "no setting chosen" in capsys.readouterr().out
    assert json.loads((tmp_path / "b" / "grid.json").read_text())["best"] is None
    assert (tmp_path / "b" / "grid.png").read_bytes().startswith(PNG_MAGIC)


@pytest.fixture(scope="module")
def tuned(tmp_path_factory):
    out = tmp_path_factory.mktemp("tune") / "digits"
    import contextlib
    import io

    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        rc = main(["tune", *TINY, "--sigma", *TINY_SIGMAS, "--lr", *TINY_LRS,
                   "--max-dr-drop", "60", "--out", str(out)])
    return rc, out, buf.getvalue()


def test_command_end_to_end(tuned):
    rc, out, printed = tuned
    assert rc == 0
    saved = json.loads((out / "grid.json").read_text())
    assert set(saved) == {"argv", "references", "max_dr_drop", "grid", "best"}
    assert saved["argv"][0] == "tune" and saved["max_dr_drop"] == 60
    assert [r["forget"] for r in saved["references"]] == ["class:0 (0)"]
    rows = saved["grid"]
    assert [(r["sigma"], r["lr"]) for r in rows] == [(1.0, 4e-3), (1.0, 1e30), (2.0, 4e-3),
                                                    (2.0, 1e30)]
    assert [bool(r.get("diverged")) for r in rows] == [False, True, False, True]
    ok = [r for r in rows if not r.get("diverged") and r["dr_drop"] <= 60]
    assert saved["best"] == min(ok, key=lambda r: r["retrain_distance"])
    assert (out / "grid.png").read_bytes().startswith(PNG_MAGIC)
    chosen = parse_options(printed.strip().splitlines()[-1].split()[1::2], "JiT")
    assert chosen == {k: saved["best"][k] for k in ("sigma", "lr", "batch_size")}


def test_script_gives_the_same_grid_and_choice(tuned, tmp_path, capsys):
    _, out, _ = tuned
    spec = importlib.util.spec_from_file_location("tune_jit", ROOT / "experiments" / "tune_jit.py")
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    best = script.main([*TINY, "--sigma", *TINY_SIGMAS, "--lr", *TINY_LRS, "--max-dr-drop", "60",
                        "--out", str(tmp_path / "s.json")])
    ours = json.loads((out / "grid.json").read_text())
    theirs = json.loads((tmp_path / "s.json").read_text())
    assert set(ours) == set(theirs)
    assert {k: best[k] for k in ("sigma", "lr", "batch_size")} == \
        {k: ours["best"][k] for k in ("sigma", "lr", "batch_size")}
    strip = lambda rows: [{k: v for k, v in r.items() if k not in ("runtime", "runs")}
                          for r in rows]
    assert strip(theirs["grid"]) == strip(ours["grid"])


def _tune_err(argv, capsys):
    rc = main(["tune", *argv])
    return rc, capsys.readouterr().err


@pytest.mark.parametrize("extra, message", [
    (["--set", "sigma=2"], "use --sigma instead of --set"),
    (["--set", "nope=1"], "unknown JiT option(s) ['nope']"),
    (["--sigma", "-1"], "JiTConfig.sigma=-1.0; accepted: a finite number >= 0"),
    (["--lr", "0"], "JiTConfig.lr=0.0; accepted: a finite number > 0"),
    (["--batch-size", "0"], "JiTConfig.batch_size=0; accepted: an integer >= 1"),
    (["--max-dr-drop", "-1"], "--max-dr-drop -1.0: accepted: a number >= 0"),
    (["--holdout", "1.5"], "--holdout 1.5: accepted: a fraction in (0, 1)"),
    (["--train-set", "seed=3"], "the seeds are set by --seeds"),
    (["--train-set", "epochz=3"], "unknown training option(s) ['epochz']"),
    (["--forget", "class:12"], "out of range"),
    (["--model", "resnet99"], "unknown model 'resnet99'"),
    (["--dataset", "nope"], "nope"),
    (["--checkpoint", "runs/x"], "--checkpoint and --rtrn go together"),
    (["--checkpoint", "a", "--rtrn", "b", "--dataset", "digits"],
     "--dataset apply when tune trains the references itself"),
])
def test_errors_name_the_value(extra, message, tmp_path, capsys):
    base = ["--forget", "class:0", "--sigma", "1", "--lr", "8e-3", "--out", str(tmp_path / "o")]
    rc, err = _tune_err(base + extra, capsys)
    assert rc == 2 and message in err, err
    assert not (tmp_path / "o").exists()


def test_existing_out_is_not_overwritten(tmp_path, capsys):
    (tmp_path / "o").mkdir()
    (tmp_path / "o" / "grid.json").write_text("keep")
    rc, err = _tune_err(["--forget", "class:0", "--sigma", "1", "--lr", "8e-3", "--out",
                         str(tmp_path / "o")], capsys)
    assert rc == 2 and "already exists" in err and "--overwrite" in err
    assert (tmp_path / "o" / "grid.json").read_text() == "keep"
