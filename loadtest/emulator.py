"""``python -m loadtest emulate-runpod``: a local stand-in for RunPod's serverless queue.

The real ``python -m worker serverless`` polls it exactly as it polls RunPod, so a burst of ``/run``
submissions drives the SDK's own job-take loop, concurrency modifier, result posting and per-job
stop channel on one machine. Both sides share one in-memory FIFO queue:

* public, what clients call (under ``/v2/<endpoint>``, and also bare): ``POST /run``, ``/runsync``,
  ``GET|POST /status/{id}``, ``GET|POST /stream/{id}``, ``POST /cancel/{id}``, ``/retry/{id}``,
  ``/purge-queue``, ``GET /health``; ``Authorization: Bearer <key>`` (or the bare key).
* worker, what runpod 1.12's worker loop builds from the ``RUNPOD_WEBHOOK_*`` variables
  (``--print-env`` prints them): ``GET job-take/<worker>`` (one job) and
  ``job-take-batch/<worker>?batch_size=N`` (a list), both long-polled and 204 when none;
  ``POST job-done/<worker>/<job>`` (the result as JSON text, sent form-encoded);
  ``POST job-stream/<worker>/<job>``; ``GET job-stop/<worker>`` (long-polled
  ``{"jobsToStop": [ids]}``: the SDK cancels those jobs' handler tasks); ``GET ping/<worker>``.
  Workers send the key bare in ``Authorization`` (their ``RUNPOD_AI_API_KEY``).

A job that is cancelled or passes its execution timeout while a worker holds it is sent down that
worker's stop channel, and a result that arrives afterwards is discarded: the job stays CANCELLED
or TIMED_OUT, as on RunPod.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hmac
import ipaddress
import os
import shlex
import socket
import sys
import time
import uuid
from collections import OrderedDict, deque
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import msgspec
import structlog
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from batching.errors import InvalidInput
from schemas.runpod import (
    CANCELLED,
    COMPLETED,
    FAILED,
    FINAL_STATUSES,
    IN_PROGRESS,
    IN_QUEUE,
    TIMED_OUT,
    JobView,
    decode_run_request,
    job_view,
)

if TYPE_CHECKING:
    from loadtest.fleet import Fleet, FleetSettings

log = structlog.get_logger("loadtest.emulator")

API_KEY_ENV = "RUNPOD_EMULATOR_API_KEY"
LONG_POLL_S = 5.0  # how long an empty job-take or job-stop is held (the SDK gives up after 90 s)
WORKER_SEEN_S = 30.0  # a worker that has neither polled nor pinged for this long is gone
RUNSYNC_WAIT_MS = (1000, 90_000, 300_000)  # RunPod's ?wait= bounds and default, in ms
KEEP_ALIVE_S = 75.0  # idle connections outlive the clients' pools (aiohttp 15 s), which close them first
RUN_MAX_BYTES, RUNSYNC_MAX_BYTES = 10 * 2**20, 20 * 2**20  # RunPod's payload limits


# --- the queue: jobs, their states, and the long-polls that wait on them ----------------------------


@dataclass(eq=False, slots=True)
class EmulatedJob:
    """One request, from submission to its final state; times are ``time.monotonic`` seconds."""

    id: str
    input: Any
    submitted_s: float
    execution_timeout_s: float | None = None
    status: str = IN_QUEUE
    worker_id: str | None = None
    started_s: float | None = None
    finished_s: float | None = None
    result: dict[str, Any] = field(default_factory=dict)  # "output" and/or "error", as the worker sent
    stream: list[Any] = field(default_factory=list)  # outputs streamed and not yet read by /stream
    finished: asyncio.Event = field(default_factory=asyncio.Event)
    timer: asyncio.TimerHandle | None = None

    def view(self) -> JobView:
        """The body of ``/status``, with the worker that holds or held it."""
        return job_view(
            self.id, self.status, submitted_s=self.submitted_s, started_s=self.started_s, ended_s=self.finished_s,
            output=self.result.get("output"), error=self.result.get("error"), worker_id=self.worker_id,
        )  # fmt: skip

    def payload(self) -> dict[str, Any]:
        """What a worker's job-take receives."""
        return {"id": self.id, "input": self.input}


@dataclass(slots=True)
class QueueStats:
    """Counters tests and ``/health`` read; they only grow."""

    submitted: int = 0
    taken: int = 0
    completed: int = 0
    failed: int = 0
    cancelled: int = 0
    timed_out: int = 0
    retried: int = 0
    stops_delivered: int = 0
    results_discarded: int = 0


@dataclass(frozen=True, slots=True)
class QueueLoad:
    """What an autoscaler sees: jobs waiting, jobs running (by worker), the oldest one's wait."""

    queued: int
    running: int
    oldest_wait_s: float
    running_by_worker: dict[str, int]


class _Broadcast:
    """Wakes every current waiter at once (an event that re-arms), so long-polls re-check."""

    def __init__(self) -> None:
        self._event = asyncio.Event()

    def notify(self) -> None:
        self._event.set()
        self._event = asyncio.Event()

    async def wait(self) -> None:
        await self._event.wait()


class RunpodQueue:
    """The emulator's state: a FIFO of queued jobs, every retained job, and each worker's stops.

    Everything runs on one event loop, so no locks: a method either changes state at once or
    waits on a broadcast and re-checks. Finished jobs are kept (for ``/status``) up to
    ``max_finished``, oldest evicted first.
    """

    def __init__(self, *, execution_timeout_s: float | None = None, max_finished: int = 10_000) -> None:
        self.execution_timeout_s = execution_timeout_s
        self.max_finished = max_finished
        self.stats = QueueStats()
        self._jobs: dict[str, EmulatedJob] = {}
        self._queue: deque[EmulatedJob] = deque()
        self._finished: OrderedDict[str, None] = OrderedDict()
        self._stops: dict[str, list[str]] = {}
        self._workers: dict[str, float] = {}
        self.first_polls: dict[str, float] = {}
        """When each worker first asked for a job: the end of its cold start."""
        self.last_busy: dict[str, float] = {}
        """When each worker last took or ended a job: how long it has been idle."""
        self._arrived = _Broadcast()
        self._stopping = _Broadcast()
        self._closed = False

    # public side

    def submit(self, job_input: Any, *, sync: bool = False, execution_timeout_s: float | None = None) -> EmulatedJob:
        """Queue a job; ``/runsync`` ids start with ``sync-`` as RunPod's do."""
        job_id = f"{'sync-' if sync else ''}{uuid.uuid4()}"
        job = EmulatedJob(job_id, job_input, time.monotonic(), execution_timeout_s=execution_timeout_s)
        self._jobs[job_id] = job
        self._queue.append(job)
        self.stats.submitted += 1
        self._arrived.notify()
        return job

    def get(self, job_id: str) -> EmulatedJob | None:
        return self._jobs.get(job_id)

    def cancel(self, job_id: str) -> EmulatedJob | None:
        """Cancel a queued or running job; a finished one keeps its state."""
        job = self._jobs.get(job_id)
        if job is None or job.status in FINAL_STATUSES:
            return job
        was = job.status
        if was == IN_QUEUE:
            self._queue.remove(job)
        self._end(job, CANCELLED)
        if was == IN_PROGRESS:
            self._signal_stop(job)
        log.info("job_cancelled", job_id=job.id, was=was, worker_id=job.worker_id)
        return job

    def retry(self, job_id: str) -> EmulatedJob | None:
        """Queue a FAILED or TIMED_OUT job again under its id; other jobs are left as they are."""
        job = self._jobs.get(job_id)
        if job is None or job.status not in (FAILED, TIMED_OUT):
            return job
        self._finished.pop(job.id, None)
        job.status, job.worker_id, job.started_s, job.finished_s = IN_QUEUE, None, None, None
        job.result, job.stream, job.finished = {}, [], asyncio.Event()
        job.submitted_s = time.monotonic()
        self._queue.append(job)
        self.stats.retried += 1
        self._arrived.notify()
        return job

    def purge(self) -> int:
        """Cancel every queued job (running ones go on); returns how many."""
        queued = list(self._queue)
        self._queue.clear()
        for job in queued:
            self._end(job, CANCELLED)
        return len(queued)

    def read_stream(self, job_id: str) -> list[Any] | None:
        """The outputs streamed since the last read (RunPod's ``/stream`` hands each out once)."""
        job = self._jobs.get(job_id)
        if job is None:
            return None
        chunks, job.stream = job.stream, []
        return chunks

    async def wait_finished(self, job: EmulatedJob, timeout_s: float) -> None:
        """Wait until the job is final, the timeout passes, or the queue closes."""
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeout_s):
                await job.finished.wait()

    def health(self) -> dict[str, Any]:
        """``/health``: job counts and the workers seen lately, running (holding a job) or idle."""
        now = time.monotonic()
        alive = {worker for worker, seen in self._workers.items() if now - seen <= WORKER_SEEN_S}
        running = {job.worker_id for job in self._jobs.values() if job.status == IN_PROGRESS}
        return {
            "jobs": {
                "completed": self.stats.completed,
                "failed": self.stats.failed,
                "inProgress": sum(1 for job in self._jobs.values() if job.status == IN_PROGRESS),
                "inQueue": len(self._queue),
                "retried": self.stats.retried,
            },
            "workers": {"idle": len(alive - running), "running": len(alive & running)},
        }

    def load(self) -> QueueLoad:
        """The queue as RunPod's autoscaler reads it."""
        now = time.monotonic()
        running: dict[str, int] = {}
        for job in self._jobs.values():
            if job.status == IN_PROGRESS and job.worker_id is not None:
                running[job.worker_id] = running.get(job.worker_id, 0) + 1
        oldest = now - self._queue[0].submitted_s if self._queue else 0.0
        return QueueLoad(len(self._queue), sum(running.values()), oldest, running)

    # worker side

    async def take(self, worker_id: str, count: int, hold_s: float) -> list[EmulatedJob]:
        """Up to ``count`` jobs, oldest first, waiting at most ``hold_s`` for the first."""
        self._seen(worker_id)
        self.first_polls.setdefault(worker_id, time.monotonic())
        await self._hold(self._arrived, lambda: bool(self._queue), hold_s)
        jobs = [self._queue.popleft() for _ in range(min(count, len(self._queue)))]
        for job in jobs:
            self._start(job, worker_id)
        return jobs

    def finish(self, worker_id: str, job_id: str, result: dict[str, Any]) -> bool | None:
        """Record a worker's result: True if it counts, False if discarded, None for no such job."""
        job = self._jobs.get(job_id)
        if job is None:
            return None
        if job.status != IN_PROGRESS or job.worker_id != worker_id:
            self.stats.results_discarded += 1
            log.info("result_discarded", job_id=job_id, status=job.status, worker_id=worker_id)
            return False
        kept = {key: result[key] for key in ("output", "error") if key in result}
        self._end(job, FAILED if "error" in kept else COMPLETED, kept)
        return True

    def add_stream(self, worker_id: str, job_id: str, chunk: dict[str, Any]) -> bool | None:
        """Keep a streamed output for ``/stream``; like ``finish``, only from the job's worker."""
        job = self._jobs.get(job_id)
        if job is None:
            return None
        if job.status != IN_PROGRESS or job.worker_id != worker_id:
            return False
        job.stream.append(chunk.get("output"))
        return True

    async def stop_signals(self, worker_id: str, hold_s: float) -> list[str]:
        """The ids this worker must stop, waiting at most ``hold_s`` for one."""
        self._seen(worker_id)
        await self._hold(self._stopping, lambda: bool(self._stops.get(worker_id)), hold_s)
        job_ids = self._stops.pop(worker_id, [])
        self.stats.stops_delivered += len(job_ids)
        return job_ids

    def ping(self, worker_id: str) -> None:
        self._seen(worker_id)

    def close(self) -> None:
        """Release every long-poll and ``/runsync`` now (they answer as if their wait ran out)."""
        self._closed = True
        self._arrived.notify()
        self._stopping.notify()
        for job in self._jobs.values():
            job.finished.set()

    # helpers

    async def _hold(self, broadcast: _Broadcast, ready: Callable[[], bool], hold_s: float) -> None:
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(hold_s):
                while not ready() and not self._closed:
                    await broadcast.wait()

    def _seen(self, worker_id: str) -> None:
        if worker_id not in self._workers:
            log.info("worker_seen", worker_id=worker_id)
        self._workers[worker_id] = time.monotonic()

    def _start(self, job: EmulatedJob, worker_id: str) -> None:
        job.status, job.worker_id, job.started_s = IN_PROGRESS, worker_id, time.monotonic()
        self.last_busy[worker_id] = job.started_s
        self.stats.taken += 1
        timeout_s = job.execution_timeout_s or self.execution_timeout_s
        if timeout_s is not None:
            job.timer = asyncio.get_running_loop().call_later(timeout_s, self._time_out, job)

    def _time_out(self, job: EmulatedJob) -> None:
        if job.status != IN_PROGRESS:
            return
        self._end(job, TIMED_OUT)
        self._signal_stop(job)
        log.info("job_timed_out", job_id=job.id, worker_id=job.worker_id)

    def _signal_stop(self, job: EmulatedJob) -> None:
        assert job.worker_id is not None
        self._stops.setdefault(job.worker_id, []).append(job.id)
        self._stopping.notify()

    def _end(self, job: EmulatedJob, status: str, result: dict[str, Any] | None = None) -> None:
        if job.worker_id is not None and job.status == IN_PROGRESS:
            self.last_busy[job.worker_id] = time.monotonic()
        job.status, job.finished_s, job.result = status, time.monotonic(), result or {}
        if job.timer is not None:
            job.timer.cancel()
            job.timer = None
        job.finished.set()
        counter = {COMPLETED: "completed", FAILED: "failed", CANCELLED: "cancelled", TIMED_OUT: "timed_out"}
        setattr(self.stats, counter[status], getattr(self.stats, counter[status]) + 1)
        self._finished[job.id] = None
        while len(self._finished) > self.max_finished:
            old_id, _ = self._finished.popitem(last=False)
            del self._jobs[old_id]


# --- HTTP: the public API and the worker side, one Starlette app -----------------------------------

Handler = Callable[[Request], Awaitable[Response]]


def _json(body: Any, status_code: int = 200) -> Response:
    return Response(msgspec.json.encode(body), status_code=status_code, media_type="application/json")


def _error(status_code: int, message: str) -> Response:
    return _json({"error": message}, status_code)


def _authorized(request: Request, api_key: str | None) -> bool:
    """Without a key anything goes; with one, ``Bearer <key>`` (clients) or the bare key (workers)."""
    if api_key is None:
        return True
    sent = request.headers.get("authorization", "")
    scheme, _, token = sent.partition(" ")
    candidate = token if scheme.lower() == "bearer" else sent
    return hmac.compare_digest(candidate.strip().encode(), api_key.encode())


class EmulatorApi:
    """The routes, bound to one queue, endpoint id and key."""

    def __init__(
        self,
        queue: RunpodQueue,
        *,
        endpoint_id: str,
        api_key: str | None,
        long_poll_s: float,
        fleet_report: Callable[[], dict[str, Any]] | None = None,
    ) -> None:
        self.queue = queue
        self.endpoint_id = endpoint_id
        self.api_key = api_key
        self.long_poll_s = long_poll_s
        self.fleet_report = fleet_report

    def routes(self) -> list[Route]:
        public: list[tuple[str, Handler, list[str]]] = [
            ("/run", self.run, ["POST"]),
            ("/runsync", self.runsync, ["POST"]),
            ("/status/{job_id}", self.status, ["GET", "POST"]),
            ("/stream/{job_id}", self.stream, ["GET", "POST"]),
            ("/cancel/{job_id}", self.cancel, ["POST"]),
            ("/retry/{job_id}", self.retry, ["POST"]),
            ("/purge-queue", self.purge_queue, ["POST"]),
            ("/health", self.health, ["GET"]),
            ("/fleet", self.fleet, ["GET"]),
        ]
        worker: list[tuple[str, Handler, list[str]]] = [
            ("/job-take/{worker_id}", self.job_take, ["GET"]),
            ("/job-take-batch/{worker_id}", self.job_take_batch, ["GET"]),
            ("/job-stop/{worker_id}", self.job_stop, ["GET"]),
            ("/job-done/{worker_id}/{job_id}", self.job_done, ["POST"]),
            ("/job-stream/{worker_id}/{job_id}", self.job_stream, ["POST"]),
            ("/ping/{worker_id}", self.ping, ["GET"]),
        ]
        routes = [Route(f"/v2/{{endpoint}}{path}", self._guard(h), methods=m) for path, h, m in public + worker]
        routes += [Route(path, self._guard(h), methods=m) for path, h, m in public]
        return routes

    def _guard(self, handler: Handler) -> Handler:
        """Check the key, then the endpoint id in the path (a mismatch is a misconfigured client)."""

        async def guarded(request: Request) -> Response:
            if not _authorized(request, self.api_key):
                return _error(401, "unauthorized: send Authorization: Bearer <key>")
            endpoint = request.path_params.get("endpoint", self.endpoint_id)
            if endpoint != self.endpoint_id:
                return _error(404, f"no endpoint {endpoint!r} here; this emulator serves {self.endpoint_id!r}")
            return await handler(request)

        return guarded

    # public side

    async def run(self, request: Request) -> Response:
        job = await self._submit(request, sync=False, max_bytes=RUN_MAX_BYTES)
        return job if isinstance(job, Response) else _json({"id": job.id, "status": job.status})

    async def runsync(self, request: Request) -> Response:
        job = await self._submit(request, sync=True, max_bytes=RUNSYNC_MAX_BYTES)
        if isinstance(job, Response):
            return job
        low, default, high = RUNSYNC_WAIT_MS
        try:
            wait_ms = min(max(int(request.query_params.get("wait", default)), low), high)
        except ValueError:
            wait_ms = default
        await self.queue.wait_finished(job, wait_ms / 1000)
        return _json(job.view())

    async def status(self, request: Request) -> Response:
        job = self.queue.get(request.path_params["job_id"])
        return _json(job.view()) if job is not None else _error(404, "request does not exist")

    async def stream(self, request: Request) -> Response:
        job_id = request.path_params["job_id"]
        chunks = self.queue.read_stream(job_id)
        job = self.queue.get(job_id)
        if chunks is None or job is None:
            return _error(404, "request does not exist")
        return _json({"id": job.id, "status": job.status, "stream": [{"output": chunk} for chunk in chunks]})

    async def cancel(self, request: Request) -> Response:
        job = self.queue.cancel(request.path_params["job_id"])
        if job is None:
            return _error(404, "request does not exist")
        return _json({"id": job.id, "status": job.status})

    async def retry(self, request: Request) -> Response:
        job_id = request.path_params["job_id"]
        before = self.queue.get(job_id)
        if before is None:
            return _error(404, "request does not exist")
        if before.status not in (FAILED, TIMED_OUT):
            return _error(400, f"only FAILED or TIMED_OUT requests can be retried; this one is {before.status}")
        job = self.queue.retry(job_id)
        assert job is not None
        return _json({"id": job.id, "status": job.status})

    async def purge_queue(self, request: Request) -> Response:
        return _json({"removed": self.queue.purge(), "status": "completed"})

    async def health(self, request: Request) -> Response:
        return _json(self.queue.health())

    async def fleet(self, request: Request) -> Response:
        """Not RunPod's: the emulated fleet's workers and their number over time (``--workers-max``)."""
        if self.fleet_report is None:
            return _error(404, "no fleet here: start the emulator with --workers-max N")
        return _json(self.fleet_report())

    async def _submit(self, request: Request, *, sync: bool, max_bytes: int) -> EmulatedJob | Response:
        """Decode ``{"input": ..., "policy"?: {"executionTimeout": ms}}`` and queue it."""
        body = await request.body()
        if len(body) > max_bytes:
            return _error(413, f"the request body is over {max_bytes} bytes")
        try:
            run = decode_run_request(body)
        except InvalidInput as err:
            return _error(400, str(err))
        if not len(run.input):
            return _error(400, 'body.input: missing; send {"input": {...}}')
        return self.queue.submit(run.input, sync=sync, execution_timeout_s=run.timeout_s)

    # worker side

    async def job_take(self, request: Request) -> Response:
        jobs = await self.queue.take(request.path_params["worker_id"], 1, self.long_poll_s)
        return _json(jobs[0].payload()) if jobs else Response(status_code=204)

    async def job_take_batch(self, request: Request) -> Response:
        try:
            batch_size = max(1, int(request.query_params.get("batch_size", "1")))
        except ValueError:
            return _error(400, "batch_size must be an integer")
        jobs = await self.queue.take(request.path_params["worker_id"], batch_size, self.long_poll_s)
        return _json([job.payload() for job in jobs]) if jobs else Response(status_code=204)

    async def job_stop(self, request: Request) -> Response:
        job_ids = await self.queue.stop_signals(request.path_params["worker_id"], self.long_poll_s)
        return _json({"jobsToStop": job_ids}) if job_ids else Response(status_code=204)

    async def job_done(self, request: Request) -> Response:
        return await self._from_worker(request, self.queue.finish)

    async def job_stream(self, request: Request) -> Response:
        return await self._from_worker(request, self.queue.add_stream)

    async def ping(self, request: Request) -> Response:
        worker_id = request.path_params["worker_id"]
        self.queue.ping(worker_id)
        if request.query_params.get("status") == "unhealthy":  # the SDK's failed fitness check
            log.warning("worker_unhealthy", worker_id=worker_id, check=request.query_params.get("check"),
                        reason=request.query_params.get("reason"))
        return Response(status_code=200)

    async def _from_worker(
        self, request: Request, record: Callable[[str, str, dict[str, Any]], bool | None]
    ) -> Response:
        """A worker's POST: the JSON text of a dict (the SDK labels it form-encoded)."""
        try:
            data = msgspec.json.decode(await request.body())
        except msgspec.DecodeError as err:
            return _error(400, f"the body is not JSON: {err}")
        if not isinstance(data, dict):
            return _error(400, "the body must be a JSON object")
        recorded = record(request.path_params["worker_id"], request.path_params["job_id"], data)
        return _error(404, "request does not exist") if recorded is None else Response(status_code=200)


def build_app(
    queue: RunpodQueue,
    *,
    endpoint_id: str = "local",
    api_key: str | None = None,
    long_poll_s: float = LONG_POLL_S,
    fleet_report: Callable[[], dict[str, Any]] | None = None,
) -> Starlette:
    """The emulator's ASGI app over ``queue`` (tests drive it with httpx's ASGITransport)."""
    api = EmulatorApi(queue, endpoint_id=endpoint_id, api_key=api_key, long_poll_s=long_poll_s,
                      fleet_report=fleet_report)  # fmt: skip
    return Starlette(routes=api.routes())


# --- what a worker needs to connect ----------------------------------------------------------------


def worker_env(
    root_url: str, endpoint_id: str, api_key: str | None, *, pod_id: str = "emulated-worker-1"
) -> dict[str, str]:
    """The ``RUNPOD_*`` variables the SDK reads, pointing at the emulator.

    URL shapes are RunPod's: ``$ID`` in the job-take URL and ``$RUNPOD_POD_ID`` elsewhere become the
    worker id, ``$ID`` in job-done / job-stream the job id; the SDK appends ``&batch_size=``,
    ``&job_in_progress=`` and ``&isStream=``, so each URL already carries a query. The SDK starts
    its heartbeat only with an API key and a pod id, so both are always set. Its start-up fitness
    checks are skipped: they test RunPod's machines (and dial 8.8.8.8), not the worker.
    """
    base = f"{root_url}/v2/{endpoint_id}"
    return {
        "RUNPOD_WEBHOOK_GET_JOB": f"{base}/job-take/$ID?gpu=emulated",
        "RUNPOD_WEBHOOK_POST_OUTPUT": f"{base}/job-done/$RUNPOD_POD_ID/$ID?gpu=emulated",
        "RUNPOD_WEBHOOK_POST_STREAM": f"{base}/job-stream/$RUNPOD_POD_ID/$ID?gpu=emulated",
        "RUNPOD_WEBHOOK_PING": f"{base}/ping/$RUNPOD_POD_ID",
        "RUNPOD_PING_INTERVAL": "10000",
        "RUNPOD_AI_API_KEY": api_key or "emulated",
        "RUNPOD_POD_ID": pod_id,
        "RUNPOD_ENDPOINT_ID": endpoint_id,
        "RUNPOD_SKIP_AUTO_SYSTEM_CHECKS": "true",
        "RUNPOD_SKIP_GPU_CHECK": "true",
    }


def format_env(env: dict[str, str]) -> str:
    """``export NAME=value`` lines, quoted so ``$ID`` and ``$RUNPOD_POD_ID`` reach the SDK unexpanded."""
    return "\n".join(f"export {name}={shlex.quote(value)}" for name, value in env.items())


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _connect_host(host: str) -> str:
    """The address a local worker dials: a wildcard bind is reached on loopback."""
    return "127.0.0.1" if host in ("0.0.0.0", "", "::") else host


# --- serving: in process (tests, the ``runpod_emulator`` fixture) and from the CLI -------------------


@dataclass(frozen=True, slots=True)
class RunningEmulator:
    """A served emulator: where clients and workers reach it, and its queue."""

    queue: RunpodQueue
    root_url: str  # http://127.0.0.1:PORT
    endpoint_id: str
    api_key: str | None

    @property
    def base_url(self) -> str:
        """The public side with its prefix: ``{base_url}/run``, ``{base_url}/status/{id}``..."""
        return f"{self.root_url}/v2/{self.endpoint_id}"

    @property
    def headers(self) -> dict[str, str]:
        """What a client sends: ``Authorization: Bearer <key>``, or nothing without a key."""
        return {"Authorization": f"Bearer {self.api_key}"} if self.api_key else {}

    @property
    def worker_env(self) -> dict[str, str]:
        """The ``RUNPOD_*`` variables for a ``python -m worker serverless`` subprocess."""
        return worker_env(self.root_url, self.endpoint_id, self.api_key)

    def env_for(self, worker_id: str) -> dict[str, str]:
        """``worker_env`` for the worker named ``worker_id`` (its ``RUNPOD_POD_ID``)."""
        return worker_env(self.root_url, self.endpoint_id, self.api_key, pod_id=worker_id)


@contextlib.asynccontextmanager
async def serve_emulator(
    api_key: str | None = None,
    *,
    endpoint_id: str = "local",
    host: str = "127.0.0.1",
    port: int = 0,
    execution_timeout_s: float | None = None,
    max_finished: int = 10_000,
    long_poll_s: float = LONG_POLL_S,
    fleet: FleetSettings | None = None,
) -> AsyncIterator[RunningEmulator]:
    """Serve an emulator on ``host:port`` (0: a free port) in the running loop until the block ends.

    With ``fleet``, real workers are started and stopped by the queue's load (``loadtest/fleet.py``)
    and ``GET /fleet`` reports them. On exit the fleet's workers are stopped first (the SDK would
    retry a vanished emulator without pause), then the queue is closed, so held long-polls answer
    at once and uvicorn's shutdown does not wait them out.
    """
    from loadtest.fleet import Fleet

    queue = RunpodQueue(execution_timeout_s=execution_timeout_s, max_finished=max_finished)
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    url_host = f"[{host}]" if ":" in host else host
    running = RunningEmulator(queue, f"http://{url_host}:{sock.getsockname()[1]}", endpoint_id, api_key)
    workers = None
    if fleet is not None:
        workers = Fleet(queue, fleet, running.env_for)
    app = build_app(queue, endpoint_id=endpoint_id, api_key=api_key, long_poll_s=long_poll_s,
                    fleet_report=workers.report if workers is not None else None)  # fmt: skip
    config = uvicorn.Config(app, log_config=None, access_log=False, lifespan="off", timeout_keep_alive=KEEP_ALIVE_S,
                            timeout_graceful_shutdown=5)
    server = uvicorn.Server(config)
    task = asyncio.get_running_loop().create_task(server.serve(sockets=[sock]), name="runpod-emulator")
    scaling = None
    try:
        await _started(server, task)
        if workers is not None:
            scaling = asyncio.get_running_loop().create_task(workers.run(), name="runpod-fleet")
        yield running
    finally:
        if workers is not None and scaling is not None:
            scaling.cancel()
            await workers.stop()
        queue.close()
        server.should_exit = True
        async with asyncio.timeout(15):
            await task
        sock.close()


async def _started(server: uvicorn.Server, task: asyncio.Task[None]) -> None:
    """Wait (bounded) for uvicorn's ``started`` flag, which is all it offers to wait on."""
    async with asyncio.timeout(10):
        while not server.started:
            if task.done():
                task.result()  # raises what stopped it
                raise RuntimeError("the emulator's server stopped before it started")
            await asyncio.sleep(0.01)


class _EmulatorServer(uvicorn.Server):
    """uvicorn that also closes the queue on Ctrl-C, so held long-polls answer 204 at once, and
    runs the fleet's scaling loop (if any) while it serves, stopping its workers before it closes."""

    def __init__(self, config: uvicorn.Config, queue: RunpodQueue, fleet: Fleet | None = None) -> None:
        super().__init__(config)
        self.queue = queue
        self.fleet = fleet
        self._scaling: asyncio.Task[None] | None = None

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        await super().startup(sockets)
        if self.fleet is not None:
            self._scaling = asyncio.get_running_loop().create_task(self.fleet.run(), name="runpod-fleet")

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        if self.fleet is not None and self._scaling is not None:
            self._scaling.cancel()
            await self.fleet.stop()  # while the emulator still answers their last calls
        await super().shutdown(sockets)

    def handle_exit(self, sig: int, frame: Any) -> None:
        super().handle_exit(sig, frame)
        with contextlib.suppress(RuntimeError):  # no running loop: nothing is held
            asyncio.get_running_loop().call_soon_threadsafe(self.queue.close)


# --- the CLI ---------------------------------------------------------------------------------------


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.description = (
        "Serve a local stand-in for RunPod's serverless queue: clients call /v2/<endpoint>/run, "
        "/runsync, /status, /cancel, /health; real workers (python -m worker serverless) poll it "
        "with the runpod SDK. --print-env prints the environment such a worker needs."
    )
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    parser.add_argument("--port", type=int, default=8080, help="port to bind (default 8080)")
    parser.add_argument("--endpoint-id", default="local", help="the endpoint id in /v2/<id>/... (default local)")
    parser.add_argument(
        "--api-key",
        default=os.environ.get(API_KEY_ENV) or None,
        help=f"require this key: clients send 'Authorization: Bearer KEY', workers get it as "
        f"RUNPOD_AI_API_KEY (default ${API_KEY_ENV}; none: no auth, loopback only)",
    )
    parser.add_argument(
        "--execution-timeout",
        type=float,
        metavar="SECONDS",
        help="a job running longer ends TIMED_OUT and its worker is told to stop it (default: none)",
    )
    parser.add_argument(
        "--max-finished", type=int, default=10_000, help="finished jobs kept for /status (default 10000)"
    )
    parser.add_argument("--worker-id", default="emulated-worker-1", help="RUNPOD_POD_ID for --print-env")
    parser.add_argument(
        "--print-env",
        action="store_true",
        help="print 'export VAR=...' lines for a worker to poll this emulator, and exit",
    )
    parser.add_argument("--insecure", action="store_true", help="allow binding beyond loopback without a key")
    fleet = parser.add_argument_group("a local fleet: real workers started and stopped as RunPod's autoscaler would")
    fleet.add_argument("--workers-max", type=int, default=0, metavar="N",
                       help="start up to N 'python -m worker serverless' processes, with this environment "
                       "(MODEL_NAME, MAX_CONCURRENCY...); 0: none, bring your own (default)")
    fleet.add_argument("--workers-min", type=int, default=0, metavar="N",
                       help="active workers: started at once, never stopped for idleness (default 0)")
    fleet.add_argument("--scaler", default="queue-delay:1", metavar="RULE",
                       help="queue-delay:SECONDS (a worker more when a job waited that long) or request-count:N "
                       "(ceil(jobs queued and running / N) workers); default queue-delay:1")
    fleet.add_argument("--idle-timeout", type=float, default=5.0, metavar="SECONDS",
                       help="stop a worker above the minimum after this long without a job (default 5)")
    fleet.add_argument("--fleet-logs", metavar="DIR", help="each worker's output in DIR/<worker id>.log "
                       "(default: a temporary directory)")
    parser.add_argument("--log-level", default="INFO", help="log level (default INFO)")


def run(args: argparse.Namespace) -> int:
    args.api_key = args.api_key or None  # an empty key is no key
    root_url = f"http://{_connect_host(args.host)}:{args.port}"
    env = worker_env(root_url, args.endpoint_id, args.api_key, pod_id=args.worker_id)
    if args.print_env:
        print(f"# a worker for the emulator at {root_url}/v2/{args.endpoint_id} (eval these, then "
              "run python -m worker serverless; a second worker needs another RUNPOD_POD_ID)")
        print(format_env(env))
        return 0
    if args.api_key is None and not _is_loopback(args.host) and not args.insecure:
        print(f"error: binding {args.host} without a key lets anyone take jobs: set --api-key "
              f"(or ${API_KEY_ENV}), or pass --insecure", file=sys.stderr)
        return 2
    from worker.logs import configure_logging

    configure_logging(args.log_level)
    try:
        fleet_settings = _fleet_settings(args)
    except ValueError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    queue = RunpodQueue(execution_timeout_s=args.execution_timeout, max_finished=args.max_finished)
    fleet = None
    if fleet_settings is not None:
        from loadtest.fleet import Fleet

        served = RunningEmulator(queue, root_url, args.endpoint_id, args.api_key)
        fleet = Fleet(queue, fleet_settings, served.env_for)
    app = build_app(queue, endpoint_id=args.endpoint_id, api_key=args.api_key,
                    fleet_report=fleet.report if fleet is not None else None)  # fmt: skip
    log.info("emulator_starting", base_url=f"{root_url}/v2/{args.endpoint_id}", auth=args.api_key is not None,
             hint="python -m loadtest emulate-runpod --print-env (same options) prints a worker's environment")
    config = uvicorn.Config(app, host=args.host, port=args.port, log_config=None, log_level="info",
                            access_log=False, lifespan="off", timeout_keep_alive=KEEP_ALIVE_S,
                            timeout_graceful_shutdown=5)
    with contextlib.suppress(KeyboardInterrupt):
        _EmulatorServer(config, queue, fleet).run()
    return 0


def _fleet_settings(args: argparse.Namespace) -> FleetSettings | None:
    from pathlib import Path

    from loadtest.fleet import FleetSettings, Scaler

    if args.workers_max <= 0:
        return None
    return FleetSettings(
        workers_max=args.workers_max, workers_min=args.workers_min, scaler=Scaler.parse(args.scaler),
        idle_timeout_s=args.idle_timeout, log_dir=Path(args.fleet_logs) if args.fleet_logs else None,
    )  # fmt: skip
