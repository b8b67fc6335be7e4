"""RunPod's job API on the wire: a job's statuses, the body that describes a job, what ``/run`` takes.

One home for the contract that RunPod's endpoints, the pod, the local emulator and the client all
speak: the pod's job store and the emulator encode ``JobView``, the client decodes it, and the pod
and the emulator decode ``RunRequest``. Field names are RunPod's (camelCase on the wire), times are
whole milliseconds.
"""

from __future__ import annotations

from typing import Annotated, Any, Final

import msgspec

from batching.errors import InvalidInput
from schemas.decoding import explain_validation_error, malformed_json

IN_QUEUE: Final = "IN_QUEUE"
IN_PROGRESS: Final = "IN_PROGRESS"
COMPLETED: Final = "COMPLETED"
FAILED: Final = "FAILED"
CANCELLED: Final = "CANCELLED"
TIMED_OUT: Final = "TIMED_OUT"
STATUSES: Final = (IN_QUEUE, IN_PROGRESS, COMPLETED, FAILED, CANCELLED, TIMED_OUT)
FINAL_STATUSES: Final = frozenset({COMPLETED, FAILED, CANCELLED, TIMED_OUT})


class JobView(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True):
    """A job as ``/run``, ``/runsync``, ``/status`` and ``/cancel`` describe it."""

    id: str
    status: str
    delay_time_ms: int | None = msgspec.field(default=None, name="delayTime")
    """Submission to pick-up: the time it waited for a worker."""
    execution_time_ms: int | None = msgspec.field(default=None, name="executionTime")
    """Pick-up to end."""
    worker_id: str | None = msgspec.field(default=None, name="workerId")
    output: Any = None
    error: Any = None

    @property
    def done(self) -> bool:
        return self.status in FINAL_STATUSES


def job_view(
    job_id: str,
    status: str,
    *,
    submitted_s: float,
    started_s: float | None,
    ended_s: float | None,
    output: Any = None,
    error: Any = None,
    worker_id: str | None = None,
) -> JobView:
    """The view of a job from its clock readings (seconds): no times until a worker has it."""
    delay_ms = execution_ms = None
    if started_s is not None:
        delay_ms = _ms(started_s - submitted_s)
        if ended_s is not None:
            execution_ms = _ms(ended_s - started_s)
    return JobView(
        id=job_id, status=status, delay_time_ms=delay_ms, execution_time_ms=execution_ms,
        worker_id=worker_id, output=output, error=error,
    )  # fmt: skip


def _ms(seconds: float) -> int:
    return max(0, round(seconds * 1000))


class ErrorBody(msgspec.Struct, frozen=True):
    """Every error answer: ``{"error": "<code>: <message>"}``, the code stable, the message naming
    the field at fault where there is one."""

    error: str


class JobCounts(msgspec.Struct, frozen=True, kw_only=True, rename="camel"):
    """Jobs held by status, as RunPod's ``/health`` counts them."""

    in_queue: int
    in_progress: int
    completed: int
    failed: int
    cancelled: int
    timed_out: int


class ModelState(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True):
    name: str
    device: str | None
    dtype: str | None
    ready: bool
    error: str | None = None
    """Why the model or its engine stopped, once it has."""


class QueueState(msgspec.Struct, frozen=True, kw_only=True):
    pairs: int
    """Pairs waiting for a batch."""
    tokens: int


class HealthView(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True):
    """A pod's ``/health``: RunPod's job counts, then the model and the shared queue."""

    jobs: JobCounts
    model: ModelState
    queue: QueueState | None = None


class PurgeResult(msgspec.Struct, frozen=True):
    """``/purge-queue``: how many jobs no worker had taken were dropped."""

    removed: int
    status: str = "completed"


class RunPolicy(msgspec.Struct, kw_only=True):
    """RunPod's per-job ``policy``; only ``executionTimeout`` (ms) is acted on."""

    executionTimeout: Annotated[int, msgspec.Meta(ge=1)] | None = None  # noqa: N815 - RunPod's name


class RunRequest(msgspec.Struct, kw_only=True):
    """RunPod's ``{"input": {...}, "policy": {...}}``; other top-level fields are ignored.

    ``input`` stays raw JSON: the pod decodes it straight into its operation (and ``--record``
    writes it back byte for byte); the emulator hands it to a worker as it came.
    """

    input: msgspec.Raw = msgspec.Raw()
    policy: RunPolicy | None = None
    webhook: str | None = None
    """Where the ended job is POSTed (the pod; RunPod's endpoints do the same)."""

    @property
    def timeout_s(self) -> float | None:
        timeout_ms = self.policy.executionTimeout if self.policy is not None else None
        return None if timeout_ms is None else timeout_ms / 1000


_request_decoder = msgspec.json.Decoder(RunRequest)


def decode_run_request(body: bytes) -> RunRequest:
    """The body as a ``RunRequest``, or ``InvalidInput`` naming the field at fault."""
    if not body.strip():
        raise InvalidInput('body: missing; send {"input": {"operation": ...}}')
    try:
        body.decode("utf-8")  # ``input`` stays raw below: its strings would be checked only later
    except UnicodeDecodeError as err:
        raise malformed_json(body) from err
    try:
        return _request_decoder.decode(body)
    except msgspec.ValidationError as err:  # a subclass of DecodeError: catch it first
        raise InvalidInput(explain_validation_error(str(err), root="body")) from err
    except (msgspec.DecodeError, RecursionError) as err:  # RecursionError: JSON nested past Python's limit
        raise malformed_json(body) from err
