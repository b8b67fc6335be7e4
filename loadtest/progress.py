"""A one-line progress bar on stderr for replays (no dependency: tqdm is not one of ours).

It redraws when a job is sent or ends, at most ten times a second, and once more on ``close``.
"""

from __future__ import annotations

import sys
import time
from typing import Protocol, TextIO


class _Ended(Protocol):
    status: str


class ProgressBar:
    def __init__(self, total: int, *, stream: TextIO | None = None, width: int = 30, interval_s: float = 0.1) -> None:
        self.total = total
        self.sent = 0
        self.done = 0
        self.failed = 0
        self._stream = stream if stream is not None else sys.stderr
        self._width = width
        self._interval_s = interval_s
        self._started = time.monotonic()
        self._drawn = -interval_s

    def on_sent(self, index: int) -> None:
        self.sent += 1
        self._draw()

    def on_done(self, record: _Ended) -> None:
        self.done += 1
        self.failed += record.status != "completed"
        self._draw()

    def close(self) -> None:
        self._draw(force=True)
        self._stream.write("\n")
        self._stream.flush()

    def line(self) -> str:
        filled = self._width * self.done // self.total if self.total else self._width
        bar = "#" * filled + "-" * (self._width - filled)
        failed = f", {self.failed} failed" if self.failed else ""
        elapsed = time.monotonic() - self._started
        return f"[{bar}] {self.done}/{self.total} done, {self.sent} sent{failed}, {elapsed:.1f} s"

    def _draw(self, *, force: bool = False) -> None:
        now = time.monotonic()
        if not force and now - self._drawn < self._interval_s and self.done < self.total:
            return
        self._drawn = now
        self._stream.write("\r" + self.line())
        self._stream.flush()
