"""Progress output: a bar on a terminal, rare plain lines in a log."""

from __future__ import annotations

import io

import numpy as np

from jit_jax import progress
from jit_jax.models import create
from jit_jax.train import TrainConfig, train


class _Tty(io.StringIO):
    def isatty(self):
        return True


def test_log_gets_lines_not_redraws(monkeypatch):
    monkeypatch.delenv("TQDM_DISABLE", raising=False)
    log = io.StringIO()
    bar = progress.progress_bar(1000, "train", file=log)
    assert isinstance(bar, progress.LogProgress)
    for i in range(1000):
        bar.update(1)
        bar.set_postfix(loss=f"{i:.3f}")
    bar.close()
    text = log.getvalue()
    assert "\r" not in text
    # 1000 updates within far less than LOG_INTERVAL: only the closing line
    assert text.count("\n") == 1 and "1000/1000" in text and "loss=999.000" in text


def test_log_interval_respected(monkeypatch):
    monkeypatch.delenv("TQDM_DISABLE", raising=False)
    clock = [0.0]
    monkeypatch.setattr(progress.time, "monotonic", lambda: clock[0])
    log = io.StringIO()
    bar = progress.progress_bar(100, "x", file=log)
    for _ in range(100):
        clock[0] += 7.0  # 700 s in all: a line every >= 60 s -> 11 lines, + 1 at close
        bar.update(1)
    bar.close()
    assert log.getvalue().count("\n") == 700 // 63 + 1


def test_terminal_gets_tqdm_and_disable_switches(monkeypatch):
    monkeypatch.delenv("TQDM_DISABLE", raising=False)
    bar = progress.progress_bar(10, "x", file=_Tty())
    assert type(bar).__name__ == "tqdm"
    bar.close()
    assert progress.progress_bar(10, "x", enabled=False) is None
    monkeypatch.setenv("TQDM_DISABLE", "1")
    assert progress.progress_bar(10, "x", file=_Tty()) is None


def test_training_writes_one_line_to_a_log(monkeypatch, capsys):
    monkeypatch.delenv("TQDM_DISABLE", raising=False)
    rng = np.random.default_rng(0)
    x = rng.normal(size=(64, 4, 4, 1)).astype(np.float32)
    y = (x.mean((1, 2, 3)) > 0).astype(np.int32)
    model = create("mlp", 2, (4, 4, 1), hidden=8, depth=1)
    train(model, x, y, TrainConfig(epochs=5, batch_size=8, optimizer="adam", lr=1e-2,
                                   augment="none"), progress=True)
    err = capsys.readouterr().err  # pytest's capture is not a terminal
    assert "\r" not in err and err.count("\n") == 1 and "40/40" in err
