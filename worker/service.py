"""The one job path both front ends share: decode, plan, enqueue once, aggregate, encode.

It runs in steps so a front end can answer "accepted" or "refused" before a job runs:
``admit_job`` decodes, plans and admits the job's pairs (or raises the error that refuses it),
``accept_job`` waits the loop tick until they are in the shared queue, their tokens counted (or
raises what refused them), ``finish_job`` waits for their results and builds the output.
``execute_job`` admits and finishes.

Every way a job can end is decided here, so the serverless handler and the pod server answer
alike: a ``ServiceError`` becomes ``{"error": "<code>: <message>"}``; anything else is a bug,
logged with its traceback under the job's id and answered with a fixed ``internal`` message, so
no traceback or internal detail reaches a caller. Cancellation is never caught: the caller left,
and the batcher drops the job's queued pairs as the ``CancelledError`` passes through it.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Any, Protocol

import msgspec
import numpy as np
import structlog

from batching import ServiceError
from schemas import JOB_TYPES, OPERATIONS, JobSchema, Operation, operation_name
from worker.metrics import Metrics
from worker.operations import NliHead, Plan, plan_job
from worker.settings import Settings

log = structlog.get_logger("worker.service")
_levels = logging.getLogger("worker.service")
"""Its stdlib twin, asked before a per-job debug line: a cheap check, where structlog drops a
line below the level only after building it."""


class Queued(Protocol):
    """A job's pairs handed to an engine (``QueuedPairs``, or a split worker's ``RemoteJob``)."""

    async def accepted(self) -> None: ...

    async def logits(self) -> np.ndarray: ...


class Engine(Protocol):
    """What a job needs of an engine: ``NliEngine`` in one process, ``RemoteEngine`` in a front
    process of a split worker (docs/PROCESSES.md)."""

    @property
    def model(self) -> NliHead: ...

    @property
    def settings(self) -> Settings: ...

    def enqueue(
        self, pairs: list[tuple[str, str]], *, timeout_s: float | None = None, wait_for_room: bool = False
    ) -> Queued: ...


@dataclass(frozen=True, slots=True)
class JobOutcome:
    """How one job ended: its output, or the error a caller reads."""

    operation: str
    """The job's operation; ``unknown`` when its input names none of the nine."""
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


@dataclass(frozen=True, slots=True)
class AdmittedJob:
    """A decoded job whose pairs are in the shared queue; ``finish_job`` waits for it."""

    job_id: str | None
    operation: str
    plan: Plan
    queued: Queued
    arrived: float
    """``time.perf_counter()`` at arrival: the latency clock's start."""
    metrics: Metrics | None


async def run_job(
    engine: Engine,
    schema: JobSchema,
    job_input: object,
    *,
    job_id: str | None = None,
    metrics: Metrics | None = None,
    wait_for_room: bool = False,
) -> dict[str, Any]:
    """Run one job to its output dict, or ``{"error": ...}``; raises only cancellation."""
    outcome = await execute_job(
        engine, schema, job_input, job_id=job_id, metrics=metrics, wait_for_room=wait_for_room
    )
    return outcome.to_output()


async def execute_job(
    engine: Engine,
    schema: JobSchema,
    job_input: object,
    *,
    job_id: str | None = None,
    metrics: Metrics | None = None,
    wait_for_room: bool = False,
) -> JobOutcome:
    """Admit and finish one job: its ``JobOutcome``; raises only cancellation.

    ``wait_for_room``: a job this worker has already taken (a RunPod serverless job) waits for
    room in a full queue, in arrival order, instead of failing ``overloaded``."""
    arrived = time.perf_counter()
    try:
        admitted = admit_job(
            engine, schema, job_input, job_id=job_id, metrics=metrics, arrived=arrived, wait_for_room=wait_for_room
        )
    except ServiceError as err:
        return JobOutcome(_operation_of(job_input), None, err, time.perf_counter() - arrived, 0)
    return await finish_job(admitted)


def admit_job(
    engine: Engine,
    schema: JobSchema,
    job_input: object,
    *,
    job_id: str | None = None,
    metrics: Metrics | None = None,
    arrived: float | None = None,
    timeout_s: float | None = None,
    wait_for_room: bool = False,
) -> AdmittedJob:
    """Decode, plan, tokenize and queue a job's pairs now, without waiting for them.

    ``job_input`` is a raw input, its JSON text (``bytes`` or ``msgspec.Raw``: an HTTP body's
    ``input``, decoded straight into its operation) or one ``schema`` already decoded.
    ``timeout_s`` is the job's own deadline: it can shorten ``JOB_TIMEOUT_S``, not extend it.
    Raises the ``ServiceError`` that refuses the job (``invalid_input``, ``overloaded``,
    ``unavailable``; anything unexpected becomes ``internal``), counted in ``metrics`` before it
    leaves.
    """
    arrived = time.perf_counter() if arrived is None else arrived
    operation = _operation_of(job_input)  # a known name even when the rest does not decode
    # Log lines name the job themselves: binding it in contextvars for each job costs the event
    # loop a measurable share of a burst (BENCHMARKS.md), and nothing this calls logs for the job.
    try:
        op = _decode(schema, job_input)
        operation = operation_name(op)
        plan = plan_job(op, engine.model, engine.settings.thresholds)
        pairs = list(plan.pairs)
        # Only a job that needs them passes these, so simple engines need not take them.
        options: dict[str, Any] = {}
        if timeout_s is not None:
            options["timeout_s"] = timeout_s
        if wait_for_room:
            options["wait_for_room"] = True
        queued = engine.enqueue(pairs, **options)
    except ServiceError as err:
        log.info("job_refused", job_id=job_id, operation=operation, error=str(err), code=err.code)
        _observe_end(metrics, operation, err, arrived)
        raise
    except Exception as err:
        log.exception("job_crashed", job_id=job_id, operation=operation)
        internal = ServiceError(f"unexpected error; see the worker log (job {job_id})")
        _observe_end(metrics, operation, internal, arrived)
        raise internal from err
    return AdmittedJob(job_id, operation, plan, queued, arrived, metrics)


async def accept_job(job: AdmittedJob) -> None:
    """Return once an admitted job's pairs are in the shared queue, or raise the ``ServiceError``
    that kept them out (``overloaded`` once its tokens are counted), counted as a refusal.

    A front end that answers "accepted" (the pod's ``/run``) awaits this first, so a job it
    accepts is never failed later for lack of room.
    """
    try:
        await job.queued.accepted()
    except ServiceError as err:
        log.info("job_refused", job_id=job.job_id, operation=job.operation, error=str(err), code=err.code)
        _observe_end(job.metrics, job.operation, err, job.arrived)
        raise


async def finish_job(job: AdmittedJob) -> JobOutcome:
    """Wait for an admitted job's pairs and aggregate them; raises only cancellation.

    Cancellation (the caller left, or ``/cancel``) drops the job's queued pairs as it passes
    through the batcher and is counted as ``cancelled``.
    """
    output: dict[str, Any] | None = None
    error: ServiceError | None = None
    named = {"job_id": job.job_id, "operation": job.operation}
    try:
        output = msgspec.to_builtins(job.plan.aggregate(await job.queued.logits()))
        if _levels.isEnabledFor(logging.DEBUG):
            log.debug("job_done", **named, pairs=len(job.plan.pairs), latency_ms=_ms_since(job.arrived))
    except ServiceError as err:
        error = err
        log.info("job_failed", **named, error=str(err), code=err.code, latency_ms=_ms_since(job.arrived))
    except Exception:
        log.exception("job_crashed", **named)
        error = ServiceError(f"unexpected error; see the worker log (job {job.job_id})")
    except BaseException:
        if job.metrics is not None:
            job.metrics.observe_job(job.operation, "cancelled", time.perf_counter() - job.arrived)
        raise
    outcome = JobOutcome(job.operation, output, error, time.perf_counter() - job.arrived, len(job.plan.pairs))
    _observe_end(job.metrics, job.operation, error, job.arrived)
    return outcome


def _observe_end(metrics: Metrics | None, operation: str, error: ServiceError | None, arrived: float) -> None:
    if metrics is None:
        return
    metrics.observe_job(operation, "completed" if error is None else error.code, time.perf_counter() - arrived)
    if error is not None and error.code in _REJECTIONS:
        metrics.observe_rejection(error.code)


def _decode(schema: JobSchema, job_input: object) -> Operation:
    if isinstance(job_input, JOB_TYPES):
        return job_input
    if isinstance(job_input, bytes | msgspec.Raw):
        return schema.decode_json(job_input)
    return schema.decode_input(job_input)


class _Named(msgspec.Struct):
    operation: object = None


_named_decoder = msgspec.json.Decoder(_Named)


def _operation_of(job_input: object) -> str:
    if isinstance(job_input, JOB_TYPES):
        return operation_name(job_input)
    if isinstance(job_input, bytes | msgspec.Raw):  # JSON text: read its "operation" alone
        try:
            job_input = {"operation": _named_decoder.decode(job_input).operation}
        except msgspec.DecodeError:
            return "unknown"
    operation = job_input.get("operation") if isinstance(job_input, dict) else None
    return operation if isinstance(operation, str) and operation in OPERATIONS else "unknown"


_REJECTIONS = frozenset({"invalid_input", "overloaded", "unavailable"})
"""Error codes that mean a job was refused before any of its pairs ran."""


def _ms_since(started: float) -> float:
    return round((time.perf_counter() - started) * 1e3, 2)
