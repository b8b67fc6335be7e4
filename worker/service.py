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
from typing import Any, Protocol

import msgspec
import numpy as np
import structlog
from structlog.contextvars import bound_contextvars

from batching import ServiceError
from schemas import JobSchema, operation_name
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


async def run_job(
    engine: Engine, schema: JobSchema, job_input: object, *, job_id: str | None = None
) -> dict[str, Any]:
    """Run one job to its output dict, or ``{"error": ...}``; raises only cancellation."""
    started = time.perf_counter()
    with contextlib.ExitStack() as context:
        context.enter_context(bound_contextvars(job_id=job_id))
        try:
            op = schema.decode_input(job_input)
            context.enter_context(bound_contextvars(operation=operation_name(op)))
            plan = plan_job(op, engine.model, engine.settings.thresholds)
            logits = await engine.infer(list(plan.pairs))
            output: dict[str, Any] = msgspec.to_builtins(plan.aggregate(logits))
            log.debug("job_done", pairs=len(plan.pairs), latency_ms=_ms_since(started))
            return output
        except ServiceError as err:
            log.info("job_failed", error=str(err), code=err.code, latency_ms=_ms_since(started))
            return {"error": str(err)}
        except Exception:
            log.exception("job_crashed")
            return {"error": f"internal: unexpected error; see the worker log (job {job_id})"}


def _ms_since(started: float) -> float:
    return round((time.perf_counter() - started) * 1e3, 2)
