"""The pod server's jobs: one record per accepted job, its RunPod status, and bounded retention.

A job is ``IN_QUEUE`` from acceptance until its background task picks it up (at once unless the
event loop is busy), then ``IN_PROGRESS`` while its pairs wait in the shared queue or ride in a
batch, as a RunPod worker holding many jobs at once reports them; it ends ``COMPLETED``,
``FAILED``, ``TIMED_OUT`` or ``CANCELLED`` and never changes again. ``delayTime`` is acceptance
to pick-up, ``executionTime`` pick-up to end, both in ms as RunPod reports them.

Finished jobs are forgotten ``ttl_s`` after they end, and beyond ``max_finished`` jobs or
``max_bytes`` of their outputs and errors (a ``classify_batch`` output echoes every headline, so
a count alone bounds nothing) the oldest go first. Jobs end in clock order, so the finished ones sit in a deque sorted by end time and
expiry pops from its left: amortised O(1) a request, never a scan. Counts by status are kept as
jobs move, so ``/health`` is O(1) too.
"""

from __future__ import annotations

import time
import uuid
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import anyio
import msgspec

from schemas.runpod import COMPLETED, FINAL_STATUSES, IN_PROGRESS, IN_QUEUE, STATUSES, JobView, job_view


@dataclass(eq=False, slots=True)
class JobRecord:
    """One accepted job. ``done`` is set when it ends; ``scope`` cancels its task."""

    id: str
    operation: str
    arrived: float
    status: str = IN_QUEUE
    started: float | None = None
    ended: float | None = None
    output: msgspec.Raw | None = None
    """The output as JSON, encoded once when the job ends: a tenth of the memory of the objects,
    and ``/status`` sends it as it is."""
    error: str | None = None
    size_bytes: int = 0
    """What its output or error weighs as JSON, once it has ended."""
    webhook: str | None = None
    """Where its ended status is POSTed, if anywhere."""
    done: anyio.Event = field(default_factory=anyio.Event)
    scope: anyio.CancelScope = field(default_factory=anyio.CancelScope)

    @property
    def finished(self) -> bool:
        return self.status in FINAL_STATUSES

    def view(self) -> JobView:
        """The body of ``/status``."""
        output = self.output if self.status == COMPLETED else None
        return job_view(self.id, self.status, submitted_s=self.arrived, started_s=self.started, ended_s=self.ended,
                        output=output, error=self.error)  # fmt: skip


class JobStore:
    """Jobs by id, with counts by status and the retention of finished ones."""

    def __init__(
        self,
        *,
        ttl_s: float,
        max_finished: int,
        max_bytes: int | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.ttl_s = ttl_s
        self.max_finished = max_finished
        self.max_bytes = max_bytes
        self.clock = clock
        self._jobs: dict[str, JobRecord] = {}
        self._finished: deque[tuple[float, JobRecord]] = deque()
        self._finished_bytes = 0
        self._counts = dict.fromkeys(STATUSES, 0)

    def add(self, operation: str, job_id: str | None = None, *, webhook: str | None = None) -> JobRecord:
        """Record a newly accepted job (``IN_QUEUE``) under a fresh uuid4 unless given one."""
        self._expire()
        record = JobRecord(id=job_id or new_job_id(), operation=operation, arrived=self.clock(), webhook=webhook)
        self._jobs[record.id] = record
        self._counts[IN_QUEUE] += 1
        return record

    def get(self, job_id: str) -> JobRecord | None:
        """The job, or None when it is unknown or already forgotten."""
        self._expire()
        return self._jobs.get(job_id)

    def start(self, record: JobRecord) -> None:
        """The job's task picked it up: ``IN_QUEUE`` becomes ``IN_PROGRESS`` (else no change)."""
        if record.status == IN_QUEUE:
            record.started = self.clock()
            self._move(record, IN_PROGRESS)

    def finish(self, record: JobRecord, status: str, *, output: Any = None, error: str | None = None) -> bool:
        """End the job once with a final ``status``; False (and no change) if it had ended."""
        if status not in FINAL_STATUSES:
            raise ValueError(f"not a final status: {status!r}")
        if record.finished:
            return False
        record.ended = self.clock()
        if record.started is None:
            record.started = record.ended  # cancelled before its task picked it up
        record.output = None if output is None else msgspec.Raw(_encode(output))
        record.error = error
        record.size_bytes = len(record.output or b"") + len(error or "")
        self._move(record, status)
        self._finished.append((record.ended, record))
        self._finished_bytes += record.size_bytes
        record.done.set()
        self._expire()
        return True

    def counts(self) -> dict[str, int]:
        """Jobs held now by status (forgotten ones are no longer counted)."""
        self._expire()
        return dict(self._counts)

    def __len__(self) -> int:
        return len(self._jobs)

    def in_flight(self) -> list[JobRecord]:
        """Jobs accepted and not ended yet."""
        return [record for record in self._jobs.values() if not record.finished]

    @property
    def finished_bytes(self) -> int:
        """What the finished jobs held now weigh (their outputs and errors as JSON)."""
        return self._finished_bytes

    def _move(self, record: JobRecord, status: str) -> None:
        self._counts[record.status] -= 1
        self._counts[status] += 1
        record.status = status

    def _expire(self) -> None:
        """Forget finished jobs past their ttl or beyond the count or the bytes, oldest end first."""
        deadline = self.clock() - self.ttl_s
        finished, max_bytes = self._finished, self.max_bytes
        while finished and (
            len(finished) > self.max_finished
            or finished[0][0] <= deadline
            or (max_bytes is not None and self._finished_bytes > max_bytes)
        ):
            _, record = finished.popleft()
            del self._jobs[record.id]
            self._counts[record.status] -= 1
            self._finished_bytes -= record.size_bytes


_encode = msgspec.json.Encoder().encode


def new_job_id() -> str:
    return str(uuid.uuid4())
