"""The one job path both front ends share: decode, plan, infer once, aggregate, encode.

Every way a job can end is decided here, so the serverless handler and the pod server answer
alike: a ``ServiceError`` becomes ``{"error": "<code>: <message>"}``; anything else is a bug,
logged with its traceback under the job's id and answered with a fixed ``internal`` message, so
no traceback or internal detail reaches a caller. Cancellation is never caught: the caller left,
and the batcher drops the job's queued pairs as the ``CancelledError`` passes through it.
"""

from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass
from typing import Any, Protocol

import msgspec
import numpy as np
import structlog
from structlog.contextvars import bound_contextvars

from batching import ServiceError
from schemas import JOB_TYPES, JobSchema, operation_name
from worker.metrics import Metrics
from worker.operations import NliHead, plan_job
from worker.settings import Settings

log = structlog.get_logger("worker.service")


class Engine(Protocol):
    """What a job needs of ``NliEngine``."""

    @property
    def model(self) -> NliHead: ...

    @property
    def settings(self) -> Settings: ...

    async def infer(self, pairs: list[tuple[str, str]]) -> np.ndarray: ...


@dataclass(frozen=True, slots=True)
class JobOutcome:
    """How one job ended: its output, or the error a caller reads."""

    operation: str
    """The job's operation; ``unknown`` when its input did not decode."""
    output: dict[str, Any] | None
    error: ServiceError | None
    latency_s: float
    pairs: int

    @property
    def status(self) -> str:
        """``completed`` or the error's code (the ``status`` label of ``nli_jobs_total``)."""
        return "completed" if self.error is None else self.error.code

    def to_output(self) -> dict[str, Any]:
        """The RunPod output dict: the result, or ``{"error": "<code>: <message>"}``."""
        return self.output if self.output is not None else {"error": str(self.error)}


async def run_job(
    engine: Engine,
    schema: JobSchema,
    job_input: object,
    *,
    job_id: str | None = None,
    metrics: Metrics | None = None,
) -> dict[str, Any]:
    """Run one job to its output dict, or ``{"error": ...}``; raises only cancellation."""
    outcome = await execute_job(engine, schema, job_input, job_id=job_id, metrics=metrics)
    return outcome.to_output()


async def execute_job(
    engine: Engine,
    schema: JobSchema,
    job_input: object,
    *,
    job_id: str | None = None,
    metrics: Metrics | None = None,
    arrived: float | None = None,
) -> JobOutcome:
    """Run one job (raw input, or one already decoded by ``schema``) to its ``JobOutcome``.

    Raises only cancellation, which is counted as ``cancelled`` first. ``arrived`` (a
    ``time.perf_counter()`` reading) starts the latency clock earlier than this call, for a
    front end that queued the job itself.
    """
    started = time.perf_counter() if arrived is None else arrived
    operation, pairs = "unknown", 0
    output: dict[str, Any] | None = None
    error: ServiceError | None = None
    with contextlib.ExitStack() as context:
        context.enter_context(bound_contextvars(job_id=job_id))
        try:
            op = job_input if isinstance(job_input, JOB_TYPES) else schema.decode_input(job_input)
            operation = operation_name(op)
            context.enter_context(bound_contextvars(operation=operation))
            plan = plan_job(op, engine.model, engine.settings.thresholds)
            pairs = len(plan.pairs)
            logits = await engine.infer(list(plan.pairs))
            output = msgspec.to_builtins(plan.aggregate(logits))
            log.debug("job_done", pairs=pairs, latency_ms=_ms_since(started))
        except ServiceError as err:
            error = err
            log.info("job_failed", error=str(err), code=err.code, latency_ms=_ms_since(started))
        except Exception:
            log.exception("job_crashed")
            error = ServiceError(f"unexpected error; see the worker log (job {job_id})")
        except BaseException:
            if metrics is not None:
                metrics.observe_job(operation, "cancelled", time.perf_counter() - started)
            raise
    outcome = JobOutcome(operation, output, error, time.perf_counter() - started, pairs)
    if metrics is not None:
        metrics.observe_job(operation, outcome.status, outcome.latency_s)
        if error is not None and error.code in _REJECTIONS:
            metrics.observe_rejection(error.code)
    return outcome


_REJECTIONS = frozenset({"invalid_input", "overloaded", "unavailable"})
"""Error codes that mean a job was refused before any of its pairs ran."""


def _ms_since(started: float) -> float:
    return round((time.perf_counter() - started) * 1e3, 2)
