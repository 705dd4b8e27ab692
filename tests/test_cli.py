"""The jit-jax command end to end on digits (tiny epochs), and its errors."""

import json

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
