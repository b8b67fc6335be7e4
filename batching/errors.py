"""The one error hierarchy callers see.

Each class carries its stable ``code`` (the prefix of every error message a caller reads), the
HTTP status a front end answers with, and whether retrying later can succeed. Front ends map
these to the wire in one function each; tracebacks go to logs, never to callers.
"""

from __future__ import annotations

from typing import ClassVar


class ServiceError(Exception):
    """Base of every error a job can end with; ``str(err)`` is ``"<code>: <message>"``."""

    code: ClassVar[str] = "internal"
    http_status: ClassVar[int] = 500
    retryable: ClassVar[bool] = False

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message

    def __str__(self) -> str:
        return f"{self.code}: {self.message}"


class InvalidInput(ServiceError):
    """The job itself is wrong; sending it again will fail again."""

    code = "invalid_input"
    http_status = 400


class Overloaded(ServiceError):
    """The queue is full: refused at admission, before any work, so a retry soon may succeed."""

    code = "overloaded"
    http_status = 429
    retryable = True

    def __init__(self, message: str, *, retry_after_s: float = 1.0) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s


class Unavailable(ServiceError):
    """The engine is not running (starting or shutting down)."""

    code = "unavailable"
    http_status = 503
    retryable = True


class DeadlineExceeded(ServiceError):
    """The job's deadline passed; its queued items were dropped before compute."""

    code = "timed_out"
    http_status = 504


class InferenceFailed(ServiceError):
    """The model raised on an item of this job; batch-mates of other jobs were re-run without it."""

    code = "inference_failed"
    http_status = 500


class ResourceExhausted(Exception):
    """Raised by a runner that ran out of memory for a batch.

    Not a job's error: the batcher splits the batch, shrinks its token budget and retries.
    """
