"""The ``http://host:port`` and ``runpod://ENDPOINT_ID`` targets: the RunPod job API, over ``burst_nli_client``.

A pod (``python -m worker pod``) and a RunPod serverless endpoint speak the same routes, so one
target serves both: ``--mode run`` submits with ``/run`` and polls ``/status`` (what a queue
consumer does), ``--mode runsync`` waits on ``/runsync``. Keys come from ``API_KEY`` (a pod) or
``RUNPOD_API_KEY`` (an endpoint), as ``Client.for_target`` reads them.

Nothing is retried: a load test must see refusals (``overloaded`` answered 429 counts as
*rejected*), not hide them behind backoff. A job the replayer abandons (``--timeout``) is
cancelled on the server. Batches are not visible from here (``batches`` is ``None``).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import Any

import anyio

from burst_nli_client import (
    Client,
    ClientError,
    ConnectionFailed,
    HttpError,
    JobCancelled,
    JobFailed,
    JobTimedOut,
    RetryPolicy,
    SubmissionUncertain,
    SubmittedJob,
    WaitTimeout,
)
from loadtest.targets import COMPLETED, JobResult, TargetError, TargetOptions

NO_RETRY = RetryPolicy(max_attempts=1)
WAIT_LIMIT_S = 86_400.0
"""The client's own wait limit; the replayer's ``--timeout`` (cancellation) ends jobs first."""
CANCEL_WITHIN_S = 5.0


class ApiTarget:
    """``submit`` sends one job through ``burst_nli_client.Client`` and maps how it ended."""

    batches = None

    def __init__(self, client: Client, name: str, mode: str) -> None:
        self.client = client
        self.name = name
        self.mode = mode

    async def submit(self, job_input: dict[str, Any]) -> JobResult:
        try:
            if self.mode == "runsync":
                await self.client.runsync(job_input, timeout_s=WAIT_LIMIT_S)
            else:
                job = await self.client.run(job_input)
                await self._wait(job)
        except ClientError as err:
            return _result_of(err)
        return JobResult(status=COMPLETED)

    async def _wait(self, job: SubmittedJob) -> None:
        """Wait for the job; when the replayer gives up on it, cancel it on the server too."""
        try:
            await job.wait(timeout_s=WAIT_LIMIT_S)
        except anyio.get_cancelled_exc_class():
            with anyio.move_on_after(CANCEL_WITHIN_S, shield=True):
                try:
                    await job.cancel()
                except ClientError:
                    pass  # best effort: the job may have ended, or the server be gone
            raise


def _result_of(err: ClientError) -> JobResult:
    """The replay's status for a client error: the server's code where it gave one."""
    if isinstance(err, JobFailed):
        return JobResult(status=err.code or "failed", error=err.error)
    if isinstance(err, JobTimedOut):
        return JobResult(status="timed_out", error=f"timed_out: {err}")
    if isinstance(err, JobCancelled):
        return JobResult(status="cancelled", error=f"cancelled: {err}")
    if isinstance(err, HttpError):
        return JobResult(status=err.code or f"http_{err.status}", error=err.error or str(err))
    if isinstance(err, WaitTimeout):
        return JobResult(status="timed_out", error=f"timed_out: {err}")
    if isinstance(err, ConnectionFailed | SubmissionUncertain):
        return JobResult(status="connection_failed", error=f"connection_failed: {err}")
    return JobResult(status="client_error", error=f"client_error: {err}")


def open_target(spec: str, options: TargetOptions) -> AbstractAsyncContextManager[ApiTarget]:
    if options.mode not in ("run", "runsync"):
        raise TargetError(f"--mode: expected run or runsync, got {options.mode!r}")
    try:
        client = Client.for_target(spec, retry=NO_RETRY, max_connections=options.max_connections)
    except ValueError as err:
        raise TargetError(f"--target {spec}: {err}") from err
    return _opened(client, f"{spec} ({options.mode})", options.mode)


@asynccontextmanager
async def _opened(client: Client, name: str, mode: str) -> AsyncIterator[ApiTarget]:
    async with client:
        yield ApiTarget(client, name, mode)
