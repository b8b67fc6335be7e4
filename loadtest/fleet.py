"""RunPod's autoscaling, emulated: real ``python -m worker serverless`` processes, started and stopped
by the queue's load, for ``python -m loadtest emulate-runpod --workers-max N``.

RunPod scales a queue endpoint between its active (minimum) and maximum workers by one rule:

- ``queue-delay:SECONDS``: one more worker whenever a job has waited longer than that in the queue
  (one at a time: not while another is still starting);
- ``request-count:N``: ``ceil((queued + running jobs) / N)`` workers.

The rule only adds workers: one above the minimum that has held no job for the idle timeout is
stopped (SIGTERM, the SDK's graceful stop). Every worker is a real process polling the emulator through the runpod SDK,
so its cold start (interpreter, torch, model load, warm-up, first job-take) is measured, not
assumed: ``report()`` has each worker's start, first poll and stop, and the fleet over time.
"""

from __future__ import annotations

import asyncio
import math
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import structlog

from loadtest.emulator import QueueLoad, RunpodQueue

log = structlog.get_logger("loadtest.fleet")

TICK_S = 0.25
"""How often the scaler looks at the queue."""


@dataclass(frozen=True, slots=True)
class Scaler:
    """One of RunPod's two scaling rules."""

    kind: str
    value: float

    @classmethod
    def parse(cls, text: str) -> Scaler:
        """``queue-delay:SECONDS`` or ``request-count:N``; ``ValueError`` saying what is wrong."""
        kind, _, value = text.partition(":")
        if kind not in ("queue-delay", "request-count"):
            raise ValueError(f"scaler {text!r}: expected queue-delay:SECONDS or request-count:N")
        try:
            number = float(value)
        except ValueError:
            raise ValueError(f"scaler {text!r}: {value!r} is not a number") from None
        if not (number > 0 if kind == "request-count" else number >= 0) or math.isinf(number):
            raise ValueError(f"scaler {text!r}: expected a positive number")
        return cls(kind, number)

    def wanted(self, workers: int, starting: int, queued: int, running: int, oldest_wait_s: float) -> int:
        """How many workers this rule asks for now, before the min and max: ``workers`` are up,
        ``starting`` of them not polling yet. Queue delay adds one at a time, and not while one
        is still starting (its cold start is the wait it would cut)."""
        if self.kind == "request-count":
            return math.ceil((queued + running) / self.value)
        return workers + 1 if queued and oldest_wait_s > self.value and not starting else workers

    def __str__(self) -> str:
        return f"{self.kind}:{self.value:g}"


@dataclass(frozen=True, slots=True)
class FleetSettings:
    workers_max: int
    workers_min: int = 0
    scaler: Scaler = field(default_factory=lambda: Scaler("queue-delay", 1.0))
    idle_timeout_s: float = 5.0
    log_dir: Path | None = None
    """Each worker's output goes to ``<log_dir>/<worker id>.log`` (default: a temporary directory)."""

    def __post_init__(self) -> None:
        if not 0 <= self.workers_min <= self.workers_max or self.workers_max < 1:
            raise ValueError(f"need 0 <= workers-min ({self.workers_min}) <= workers-max ({self.workers_max}), max >= 1")
        if self.idle_timeout_s < 0:
            raise ValueError(f"idle timeout must not be negative, got {self.idle_timeout_s}")


@dataclass(eq=False, slots=True)
class FleetWorker:
    id: str
    process: subprocess.Popen[bytes]
    started_s: float
    ready_s: float | None = None
    """When it first asked for a job: the end of its cold start."""
    stopping_s: float | None = None
    """When it was told to stop (idle), or found gone."""
    stopped_s: float | None = None
    """When its process had exited."""

    def view(self, origin: float) -> dict[str, Any]:
        def since(t: float | None) -> float | None:
            return None if t is None else round(t - origin, 3)

        return {
            "id": self.id,
            "started_s": since(self.started_s),
            "ready_s": since(self.ready_s),
            "cold_start_s": None if self.ready_s is None else round(self.ready_s - self.started_s, 3),
            "stopping_s": since(self.stopping_s),
            "stopped_s": since(self.stopped_s),
            "exit_code": self.process.returncode,
        }


class Fleet:
    """Starts and stops workers for one emulated endpoint; ``run()`` is its scaling loop."""

    def __init__(self, queue: RunpodQueue, settings: FleetSettings, worker_env: Callable[[str], dict[str, str]]) -> None:
        """``worker_env(worker_id)``: the ``RUNPOD_*`` variables that point a worker at the emulator;
        a worker gets them over this process's environment (``MODEL_NAME``, ``MAX_CONCURRENCY``...)."""
        self.queue = queue
        self.settings = settings
        self.worker_env = worker_env
        self._base_env = {k: v for k, v in os.environ.items() if not k.startswith("RUNPOD_")}
        self.workers: list[FleetWorker] = []
        self.timeline: list[tuple[float, int, int, int, int]] = []
        """(seconds since start, workers up, workers ready, jobs queued, jobs running), a tick each."""
        self.origin = time.monotonic()
        self.origin_unix = time.time()
        self._log_dir = settings.log_dir

    @property
    def up(self) -> list[FleetWorker]:
        """Workers started and not told to stop."""
        return [w for w in self.workers if w.stopping_s is None]

    async def run(self) -> None:
        """Forever: every tick, note which workers are ready or gone, then scale."""
        while True:
            self._observe()
            self._scale()
            await asyncio.sleep(TICK_S)

    async def stop(self) -> None:
        """SIGTERM every worker still running and wait for them (the SDK finishes what it holds)."""
        for worker in self.workers:
            self._terminate(worker)
        await asyncio.gather(*(asyncio.to_thread(self._reap, w) for w in self.workers))

    def report(self) -> dict[str, Any]:
        """Each worker's start, cold start and stop, and the fleet over time (``GET /fleet``)."""
        settings = self.settings
        return {
            "started_unix": round(self.origin_unix, 3),
            "settings": {"workers_max": settings.workers_max, "workers_min": settings.workers_min,
                         "scaler": str(settings.scaler), "idle_timeout_s": settings.idle_timeout_s},
            "workers": [worker.view(self.origin) for worker in self.workers],
            "timeline": {"columns": ["t_s", "workers_up", "workers_ready", "jobs_queued", "jobs_running"],
                         "rows": [list(row) for row in self.timeline]},
        }  # fmt: skip

    # --- the loop's steps ---------------------------------------------------------------------------

    def _observe(self) -> None:
        now = time.monotonic()
        load = self.queue.load()
        for worker in self.workers:
            if worker.ready_s is None and worker.id in self.queue.first_polls:
                worker.ready_s = self.queue.first_polls[worker.id]
                log.info("worker_ready", worker_id=worker.id, cold_start_s=round(worker.ready_s - worker.started_s, 2))
            if worker.stopped_s is None and worker.process.poll() is not None:
                worker.stopped_s = now
                if worker.stopping_s is None:  # it died by itself: RunPod would replace it
                    worker.stopping_s = now
                    log.warning("worker_exited", worker_id=worker.id, exit_code=worker.process.returncode)
        up = self.up
        ready = sum(1 for w in up if w.ready_s is not None)
        self.timeline.append((round(now - self.origin, 3), len(up), ready, load.queued, load.running))

    def _scale(self) -> None:
        settings, load, up = self.settings, self.queue.load(), self.up
        starting = sum(1 for w in up if w.ready_s is None)
        wanted = settings.scaler.wanted(len(up), starting, load.queued, load.running, load.oldest_wait_s)
        wanted = min(max(wanted, settings.workers_min), settings.workers_max)
        for _ in range(wanted - len(up)):
            self._start()
        # The rule only adds workers; idleness alone stops them, down to the minimum (as on RunPod).
        idle = [w for w in up if self._idle_s(w, load) >= settings.idle_timeout_s]
        for worker in idle[: max(len(up) - settings.workers_min, 0)]:
            log.info("worker_idle_stop", worker_id=worker.id, idle_s=round(self._idle_s(worker, load), 2))
            self._terminate(worker)

    def _idle_s(self, worker: FleetWorker, load: QueueLoad) -> float:
        """Seconds since the worker last held a job (since it was ready, if it never did); 0 while busy
        or starting."""
        if worker.ready_s is None or load.running_by_worker.get(worker.id):
            return 0.0
        last = max(worker.ready_s, self.queue.last_busy.get(worker.id, worker.ready_s))
        return time.monotonic() - last

    def _start(self) -> None:
        worker_id = f"fleet-worker-{len(self.workers) + 1}"
        if self._log_dir is None:
            self._log_dir = Path(tempfile.mkdtemp(prefix="fleet-"))
        self._log_dir.mkdir(parents=True, exist_ok=True)
        with (self._log_dir / f"{worker_id}.log").open("wb") as out:
            process = subprocess.Popen([sys.executable, "-m", "worker", "serverless"], env={**self._base_env, **self.worker_env(worker_id)},
                                       stdout=out, stderr=subprocess.STDOUT, start_new_session=True)  # fmt: skip
        self.workers.append(FleetWorker(worker_id, process, time.monotonic()))
        log.info("worker_started", worker_id=worker_id, up=len(self.up))

    def _terminate(self, worker: FleetWorker) -> None:
        if worker.stopping_s is None:
            worker.stopping_s = time.monotonic()
        if worker.process.poll() is None:
            try:
                os.killpg(worker.process.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass

    def _reap(self, worker: FleetWorker) -> None:
        try:
            worker.process.wait(60)
        except subprocess.TimeoutExpired:
            os.killpg(worker.process.pid, signal.SIGKILL)
            worker.process.wait(60)
        if worker.stopped_s is None:
            worker.stopped_s = time.monotonic()
