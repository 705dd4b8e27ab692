"""Resumable training: a run interrupted after some epoch and resumed from its training state ends
with the same arrays, bit for bit, as a run that was never interrupted (train(), jit-jax train with
a real SIGKILL, jit-jax unlearn --method rtrn), and a resume that does not match is refused."""

import json
import os
import queue
import signal
import subprocess
import sys
import threading
from pathlib import Path

import jax
import numpy as np
import pytest
from flax import nnx

from jit_jax import checkpoint
from jit_jax.checkpoint import TrainingState, saved_epochs
from jit_jax.cli import main
from jit_jax.train import TrainConfig, train

ROOT = Path(__file__).resolve().parents[1]
# tiny digits runs: an MLP with 32 hidden units, 4 epochs of 22 steps
TRAIN = ["train", "--dataset", "digits", "--model", "mlp", "--model-opt", "hidden=32",
         "--epochs", "4", "--no-progress"]


class Interrupted(BaseException):
    """Stands for a kill: not an Exception, so nothing on the way catches it."""


class Tiny(nnx.Module):
    """Convolution, BatchNorm, dropout, dense head: every kind of state a run carries."""

    def __init__(self, seed: int, width: int = 4):
        rngs = nnx.Rngs(params=seed, dropout=seed + 1)
        self.conv = nnx.Conv(1, width, (3, 3), rngs=rngs)
        self.bn = nnx.BatchNorm(width, rngs=rngs)
        self.drop = nnx.Dropout(0.3, rngs=rngs)
        self.head = nnx.Linear(64 * width, 3, rngs=rngs)

    def __call__(self, x):
        x = nnx.relu(self.bn(self.conv(x)))
        return self.head(self.drop(x.reshape(len(x), -1)))


# SGD with momentum, one-cycle schedule, crop + flip: the shuffling generator, the JAX key (crops,
# flips, dropout masks), the optimiser state and the schedule's step count all matter.
CONFIG = TrainConfig(epochs=5, batch_size=32, lr=0.05, augment="crop_flip", seed=3)


def _bits(model: nnx.Module) -> dict[str, np.ndarray]:
    flat, _ = jax.tree_util.tree_flatten_with_path(nnx.to_pure_dict(nnx.state(model)))
    return {jax.tree_util.keystr(kp): np.asarray(
        jax.random.key_data(x) if jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key) else x)
        for kp, x in flat}


def assert_same_bits(a: nnx.Module, b: nnx.Module):
    fa, fb = _bits(a), _bits(b)
    assert fa.keys() == fb.keys()
    differ = [k for k in fa if (fa[k].dtype, fa[k].shape, fa[k].tobytes())
              != (fb[k].dtype, fb[k].shape, fb[k].tobytes())]
    assert not differ, f"arrays differ from the uninterrupted run's: {differ}"


def _untimed(history: list[dict]) -> list[dict]:
    return [{k: v for k, v in rec.items() if k != "time"} for rec in history]


@pytest.fixture(scope="module")
def tiny_data(tiny_images):
    (x, y), _ = tiny_images
    return (x / 255.0).astype(np.float32), y


@pytest.fixture(scope="module")
def reference(tiny_data):
    model = Tiny(0)
    res = train(model, *tiny_data, CONFIG, progress=False)
    return model, res


def _stop_after(epoch: int):
    def callback(rec):
        if rec["epoch"] == epoch:
            raise Interrupted

    return callback


@pytest.mark.parametrize("every, resumed_from, kept", [(1, 3, [2, 3]), (2, 2, [2])])
def test_train_resumes_bit_for_bit(tiny_data, reference, tmp_path, every, resumed_from, kept):
    ref_model, ref_res = reference
    state = tmp_path / "state"
    with pytest.raises(Interrupted):  # stopped after epoch 3, once its state (if due) is saved
        train(Tiny(0), *tiny_data, CONFIG, progress=False, state_dir=state,
              checkpoint_every=every, callback=_stop_after(3))
    assert saved_epochs(state) == kept  # the last two saved epochs are kept
    model = Tiny(9)  # another initialisation: the restored state replaces all of it
    res = train(model, *tiny_data, CONFIG, progress=False, state_dir=state, checkpoint_every=every,
                resume=True)
    assert res.resumed_from == resumed_from
    assert_same_bits(ref_model, model)
    assert _untimed(res.history) == _untimed(ref_res.history)
    assert [r["epoch"] for r in res.history] == [1, 2, 3, 4, 5]
    assert saved_epochs(state) == [4, 5]  # the last epoch is always saved
    # resuming a run that had finished only restores its final state
    again = Tiny(5)
    res = train(again, *tiny_data, CONFIG, progress=False, state_dir=state, resume=True)
    assert res.resumed_from == 5 and len(res.history) == 5
    assert_same_bits(ref_model, again)


def test_resume_refuses_a_different_run(tiny_data, reference, tmp_path):
    x, y = tiny_data
    cfg = CONFIG  # the reference's recipe: its compiled step is reused
    state = tmp_path / "state"
    with pytest.raises(Interrupted):
        train(Tiny(0), x, y, cfg, progress=False, state_dir=state, callback=_stop_after(1))
    assert saved_epochs(state) == [1]

    def resume(model=None, x=x, y=y, cfg=cfg, state_dir=state, **kw):
        return train(model or Tiny(0), x, y, cfg, progress=False, state_dir=state_dir,
                     resume=True, **kw)

    with pytest.raises(ValueError, match=r"config\.lr: saved 0\.05, now 0\.01"):
        resume(cfg=cfg.replace(lr=0.01))
    with pytest.raises(ValueError, match=r"config\.epochs: saved 5, now 6"):
        resume(cfg=cfg.replace(epochs=6))
    with pytest.raises(ValueError, match=r"data\.n: saved 96, now 64"):
        resume(x=x[:64], y=y[:64])
    with pytest.raises(ValueError, match=r"data\.sha256"):
        resume(x=x[::-1])
    with pytest.raises(ValueError, match=r"model\.arrays\.conv/kernel: saved '\(3, 3, 1, 4\)"):
        resume(model=Tiny(0, width=2))
    with pytest.raises(ValueError, match=r"run_info\.dataset: saved '<absent>', now 'b'"):
        resume(run_info={"dataset": "b"})
    with pytest.raises(FileNotFoundError, match=f"nothing to resume: .*{tmp_path / 'empty'}"):
        resume(state_dir=tmp_path / "empty")
    assert not (tmp_path / "empty").exists()  # looking created nothing
    with pytest.raises(FileExistsError, match="already holds the training state"):
        train(Tiny(0), x, y, cfg, progress=False, state_dir=state)
    with pytest.raises(ValueError, match="resume=True needs state_dir"):
        train(Tiny(0), x, y, cfg, progress=False, resume=True)
    with TrainingState(state) as ts:  # the refused attempts left the saved state as it was
        assert ts.epochs() == [1] and ts.info(1)["epoch"] == 1


@pytest.fixture(scope="module")
def digits_run(tmp_path_factory):
    """An uninterrupted ``jit-jax train`` (the reference, and the source for RTRN)."""
    out = tmp_path_factory.mktemp("resume") / "ref"
    assert main([*TRAIN, "--out", str(out)]) == 0
    assert not Path(f"{out}.partial").exists()  # removed once the checkpoint is written
    return out


def _same_checkpoints(a: Path, b: Path):
    model_a, meta_a = checkpoint.restore(a)
    model_b, meta_b = checkpoint.restore(b)
    assert_same_bits(model_a, model_b)
    return meta_a, meta_b


def test_cli_train_killed_and_resumed(digits_run, tmp_path, capsys):
    run = tmp_path / "run"
    partial = Path(f"{run}.partial")
    env = dict(os.environ, JIT_JAX_TEST_HANG_AFTER_EPOCH="2", TQDM_DISABLE="1")
    with open(tmp_path / "stderr.txt", "w") as err:
        proc = subprocess.Popen([sys.executable, "-m", "jit_jax.cli", *TRAIN, "--out", str(run)],
                                cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=err, text=True)
    lines: queue.Queue = queue.Queue()

    def read():
        for s in proc.stdout:
            lines.put(s)
        lines.put(None)  # the process ended

    threading.Thread(target=read, daemon=True).start()
    try:
        while True:  # the JSON line of epoch 2 is printed once that epoch's state is saved
            line = lines.get(timeout=240)
            if line is None:
                pytest.fail("the training subprocess ended before epoch 2: "
                            + (tmp_path / "stderr.txt").read_text()[-2000:])
            if line.startswith("{") and json.loads(line)["epoch"] == 2:
                break
        assert saved_epochs(partial) == [1, 2] and not run.exists()
    except queue.Empty:
        pytest.fail("the training subprocess printed no epoch 2 in 240 s: "
                    + (tmp_path / "stderr.txt").read_text()[-2000:])
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=60)
    assert proc.returncode == -signal.SIGKILL
    assert saved_epochs(partial) == [1, 2] and not run.exists()

    capsys.readouterr()
    assert main([*TRAIN, "--out", str(run)]) == 2  # the interrupted run is not silently restarted
    assert "pass --resume" in capsys.readouterr().err
    assert main([*TRAIN, "--out", str(run), "--resume"]) == 0
    assert f"resuming from epoch 2 saved in {partial}" in capsys.readouterr().out
    assert run.is_dir() and not partial.exists()
    meta, ref_meta = _same_checkpoints(run, digits_run)
    assert _untimed(meta["history"]) == _untimed(ref_meta["history"])
    assert meta["metrics"]["test_accuracy"] == ref_meta["metrics"]["test_accuracy"]

    assert main([*TRAIN, "--out", str(run), "--resume"]) == 2
    assert "already exists: that run finished" in capsys.readouterr().err
    none = tmp_path / "none"
    assert main([*TRAIN, "--out", str(none), "--resume"]) == 2
    assert f"nothing to resume: {none}.partial does not exist" in capsys.readouterr().err
    assert main([*TRAIN, "--epochs", "5", "--out", str(none), "--resume"]) == 2
    assert main([*TRAIN, "--resume"]) == 2
    assert "--resume needs --out" in capsys.readouterr().err


def test_cli_rtrn_resumes(digits_run, tmp_path, monkeypatch, capsys):
    unlearn = ["unlearn", "--checkpoint", str(digits_run), "--method", "rtrn", "--forget",
               "class:3", "--set", "epochs=3", "--no-progress"]
    ref = tmp_path / "ref"
    assert main([*unlearn, "--out", str(ref)]) == 0
    run = tmp_path / "run"
    partial = Path(f"{run}.partial")
    save = TrainingState.save

    def save_then_die(self, epoch, arrays, info):  # killed right after epoch 2's state is saved
        save(self, epoch, arrays, info)
        if epoch == 2:
            raise Interrupted

    monkeypatch.setattr(TrainingState, "save", save_then_die)
    with pytest.raises(Interrupted):
        main([*unlearn, "--out", str(run)])
    monkeypatch.undo()
    assert saved_epochs(partial) == [1, 2] and not run.exists()
    capsys.readouterr()
    assert main([*unlearn, "--out", str(run), "--method", "jit", "--resume"]) == 2
    assert "--resume applies to --method rtrn or rtrn_head" in capsys.readouterr().err
    assert main([*unlearn, "--out", str(run), "--set", "lr=0.5", "--resume"]) == 2
    assert "config.lr: saved 0.01, now 0.5" in capsys.readouterr().err
    assert main([*unlearn, "--out", str(run), "--resume"]) == 0
    assert run.is_dir() and not partial.exists()
    meta, _ = _same_checkpoints(run, ref)
    assert meta["method_log"]["resumed_from_epoch"] == 2
