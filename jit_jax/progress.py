"""Progress bars that redraw only on a terminal.

On a terminal a tqdm bar redraws as usual. When standard error is a file or a pipe (a log, CI, a
batch job), redraws would write every step into the log (the demo's first training alone wrote 660
redraws, 75 KB), so there a plain line is written at most every ``LOG_INTERVAL`` seconds (with the
count, the rate and the latest postfix) and once at the end. ``TQDM_DISABLE=1`` in the
environment or ``--no-progress`` turns progress output off entirely.
"""

from __future__ import annotations

import os
import sys
import time

LOG_INTERVAL = 60.0  # seconds between two progress lines in a non-terminal log

__all__ = ["LOG_INTERVAL", "LogProgress", "progress_bar"]


class LogProgress:
    """The tqdm calls the library uses (update, set_postfix, close), as rare plain log lines."""

    def __init__(self, total: int, desc: str, file, interval: float = LOG_INTERVAL, unit="it"):
        self.total, self.desc, self.file, self.interval, self.unit = total, desc, file, interval, unit
        self.n, self.postfix = 0, {}
        self.t0 = self.last = time.monotonic()
        self.lines = 0

    def _write(self):
        el = time.monotonic() - self.t0
        pct = f" ({100 * self.n / self.total:.0f}%)" if self.total else ""
        post = " ".join(f"{k}={v}" for k, v in self.postfix.items())
        rate = f", {self.n / el:.2f} {self.unit}/s" if el > 0 else ""
        print(f"{self.desc}: {self.n}/{self.total} {self.unit}{pct}, {el:.0f}s{rate} {post}".rstrip(),
              file=self.file, flush=True)
        self.lines += 1
        self.last = time.monotonic()

    def update(self, n: int = 1):
        self.n += n
        if time.monotonic() - self.last >= self.interval:
            self._write()

    def set_postfix(self, refresh: bool = True, **kwargs):
        self.postfix = kwargs

    def close(self):
        if self.n:
            self._write()


def progress_bar(total: int, desc: str, *, enabled: bool = True, file=None, unit: str = "it"):
    """A tqdm bar on a terminal, a :class:`LogProgress` elsewhere, None when disabled."""
    if not enabled or os.environ.get("TQDM_DISABLE", "") not in ("", "0"):
        return None
    file = sys.stderr if file is None else file
    isatty = getattr(file, "isatty", None)
    if isatty is not None and isatty():
        from tqdm import tqdm

        return tqdm(total=total, desc=desc, file=file, leave=False, unit=unit)
    return LogProgress(total, desc, file, unit=unit)
