"""The processes a split worker starts (docs/PROCESSES.md): each in its own process group, so a
terminal's Ctrl-C reaches its parent alone, which stops them in order; each dies with its parent
(``PR_SET_PDEATHSIG``); each started again after it dies. A pod's supervisor runs a model process
and its fronts (``worker/pod/fronts.py``); a serverless worker runs its model process
(``ModelChild``).
"""

from __future__ import annotations

import ctypes
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import structlog

from worker.split.model_process import failure_note

log = structlog.get_logger("worker.split.children")

MODEL_SOCKET = "model.sock"
"""The model process's socket, in the worker's private run directory."""
RESTART_S = (1.0, 30.0)
"""A child that died is started again after the first delay, doubled each time it dies again
soon after, up to the second."""
STOP_MODEL_S = 30.0
"""Once its fronts have stopped, how long the model process has to stop before it is killed."""
_STEADY_S = 60.0
"""A child that lived this long starts the next time without waiting."""


@dataclass
class Child:
    """One process of a split worker, started again whenever it dies (``check``)."""

    name: str
    argv: list[str]
    pass_fds: tuple[int, ...] = ()
    env: dict[str, str] | None = None
    process: subprocess.Popen[bytes] | None = None
    started_at: float = 0.0
    delay_s: float = RESTART_S[0]
    start_after: float = 0.0

    def start(self) -> None:
        self.process = subprocess.Popen(  # noqa: S603 - our own interpreter and arguments
            self.argv, pass_fds=self.pass_fds, env=self.env, process_group=0, preexec_fn=_die_with_parent
        )
        self.started_at = time.monotonic()
        log.info("worker_process_started", process=self.name, pid=self.process.pid)

    def check(self, now: float) -> None:
        """Start it again if it died and its delay is over."""
        if self.process is None:
            if now >= self.start_after:
                self.start()
            return
        code = self.process.poll()
        if code is None:
            return
        wait_s = RESTART_S[0] if now - self.started_at >= _STEADY_S else self.delay_s
        self.delay_s = min(wait_s * 2, RESTART_S[1])
        self.process, self.start_after = None, now + wait_s
        log.error("worker_process_died", process=self.name, exit_code=code, restart_in_s=wait_s)

    def signal(self, signum: int) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signum)

    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def stop(self, timeout_s: float) -> None:
        """SIGTERM, and SIGKILL if it has not stopped within ``timeout_s``."""
        self.signal(signal.SIGTERM)
        if self.process is not None:
            try:
                self.process.wait(timeout_s)
            except subprocess.TimeoutExpired:
                self.signal(signal.SIGKILL)
                self.process.wait()


def model_child(path: Path, command: Sequence[str] | None = None) -> Child:
    """The model process serving on ``path``; ``command`` replaces ``python -m worker
    model-process`` (a benchmark's emulated model). ``METRICS_PORT`` is its front's to serve."""
    env = {name: value for name, value in os.environ.items() if name != "METRICS_PORT"}
    argv = [*(command or [sys.executable, "-m", "worker", "model-process"]), "--socket", str(path)]
    return Child("model", argv, env=env)


class ModelChild:
    """A serverless worker's model process: ``start`` (waits until it serves), watched from a
    thread and started again whenever it dies, until ``stop``. (The death signal follows the
    thread that started a child: the watcher, which lives until ``stop``.)"""

    def __init__(self, command: Sequence[str] | None = None) -> None:
        """``command``: as ``model_child``'s."""
        self.run_dir = Path(tempfile.mkdtemp(prefix="burst-nli-worker-"))  # mode 0700: this user's only
        self.path = self.run_dir / MODEL_SOCKET
        """The model process's socket."""
        self._child = model_child(self.path, command)
        self._stopping = threading.Event()
        self._watcher = threading.Thread(target=self._watch, name="model-process-watch", daemon=True)

    def start(self) -> str | None:
        """Start it and wait until its model is warm and it listens: None, or why it could not
        start (then it is not started again: a model that cannot load will not load later)."""
        self._child.start()
        process = self._child.process
        assert process is not None
        while not self.path.exists():
            if failure_note(self.path).exists():
                return failure_note(self.path).read_text(encoding="utf-8")
            if (code := process.poll()) is not None:
                return f"it exited with code {code} before it served"
            time.sleep(0.05)
        self._watcher.start()
        return None

    def stop(self) -> None:
        """Stop watching, stop it (SIGTERM, SIGKILL after ``STOP_MODEL_S``), remove its run directory."""
        self._stopping.set()
        if self._watcher.is_alive():
            self._watcher.join()
        self._child.stop(STOP_MODEL_S)
        shutil.rmtree(self.run_dir, ignore_errors=True)

    def _watch(self) -> None:
        while not self._stopping.wait(0.1):
            self._child.check(time.monotonic())


def _die_with_parent() -> None:
    """In the child before it runs: SIGTERM it if its parent dies (Linux's PR_SET_PDEATHSIG),
    so no front or model process outlives its worker."""
    ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)
