"""The pod front end: RunPod's job API over HTTP (Starlette on uvicorn), always on.

``POST /run`` decodes and admits a job synchronously through the service path the serverless
handler uses (``admit_job``), so a bad job, a full queue or a loading model is answered at once
(400, 429, 503), then finishes it in a background task; ``/runsync`` does the same and waits.
Jobs live in a ``JobStore`` (statuses, retention); ``/cancel`` cancels a job's task, and the
batcher drops its queued pairs as the cancellation passes through it.

``PodApp`` owns everything with a lifetime: the engine, which loads in one background task (the
batcher's anyio task group must be entered and left by one task) while the HTTP server already
answers (``/ping`` 204 until ready), and the jobs' tasks. Enter it with ``async with`` (tests, an
already-loaded model, httpx's ``ASGITransport``, which runs no lifespan) or let uvicorn's lifespan
enter it (``serve``). Every ``ServiceError`` becomes an HTTP response in ``error_response`` alone.
"""

from __future__ import annotations

import asyncio
import hmac
import ipaddress
import logging
import math
import signal
import sys
import time
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager, contextmanager
from typing import Any

import anyio
import msgspec
import structlog
import uvicorn
from anyio.abc import TaskGroup
from prometheus_client import CollectorRegistry
from prometheus_client.exposition import choose_encoder
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route
from starlette.types import ASGIApp, Receive, Scope, Send

from batching import InvalidInput, ServiceError, Unavailable
from schemas import build_job_schema
from schemas.trace import TraceRecorder
from worker.engine import NliEngine
from worker.engine_host import EngineHost
from schemas.runpod import (
    CANCELLED,
    COMPLETED,
    FAILED,
    IN_PROGRESS,
    IN_QUEUE,
    TIMED_OUT,
    JobView,
    decode_run_request,
)
from worker.job_store import JobRecord, JobStore, new_job_id
from worker.metrics import Metrics
from worker.model import NliModel
from worker.service import AdmittedJob, JobOutcome, accept_job, admit_job, finish_job
from worker.settings import Settings

log = structlog.get_logger("worker.pod")
_levels = logging.getLogger("worker.pod")  # asked before a per-job debug line (see worker.service)

RUNSYNC_DEFAULT_WAIT_MS = 60_000
RUNSYNC_MAX_WAIT_MS = 300_000
"""``/runsync?wait=`` is in milliseconds, as on RunPod's endpoints (1000 to 300000 there)."""
GRACEFUL_SHUTDOWN_S = 30.0
"""Once the drain is over, uvicorn lets open requests finish for this long."""
DRAIN_READ_S = 2.5
"""After the last job in flight has ended, the results stay readable this long before the
process exits: longer than the project's client waits between two polls (2 s at most)."""
OPEN_PATHS = frozenset({"/ping", "/metrics"})
"""Routes that need no API key: load-balancer health checks and Prometheus scrapes."""


# ---- errors only HTTP has, and the one mapping of errors to responses ---------------------------


class NotFound(ServiceError):
    code = "not_found"
    http_status = 404


class PayloadTooLarge(ServiceError):
    code = "payload_too_large"
    http_status = 413


class Unauthorized(ServiceError):
    code = "unauthorized"
    http_status = 401


class MethodNotAllowed(ServiceError):
    code = "method_not_allowed"
    http_status = 405


_encoder = msgspec.json.Encoder()


def json_response(body: Any, status_code: int = 200, headers: dict[str, str] | None = None) -> Response:
    return Response(_encoder.encode(body), status_code, headers, media_type="application/json")


def error_response(err: ServiceError, headers: dict[str, str] | None = None) -> Response:
    """``{"error": "<code>: <message>"}`` with the error's status; Retry-After when retryable."""
    headers = dict(headers or {})
    if err.retryable:
        headers["Retry-After"] = str(max(1, math.ceil(getattr(err, "retry_after_s", 1.0))))
    if isinstance(err, Unauthorized):
        headers["WWW-Authenticate"] = 'Bearer realm="burst-nli"'
    return json_response({"error": str(err)}, err.http_status, headers)


# ---- the request body ---------------------------------------------------------------------------


async def read_body(request: Request, limit: int) -> bytes:
    """The body, refused with 413 past ``limit`` by its Content-Length or as it streams in."""
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        raise PayloadTooLarge(f"body of {declared} bytes is over MAX_BODY_BYTES={limit}")
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise PayloadTooLarge(f"body is over MAX_BODY_BYTES={limit}")
        chunks.append(chunk)
    return b"".join(chunks)


def parse_wait_ms(raw: str | None) -> int:
    """``/runsync``'s ``?wait=``: whole milliseconds, like RunPod's."""
    if raw is None:
        return RUNSYNC_DEFAULT_WAIT_MS
    # ASCII digits only: str.isdigit() also takes "²" (int() then fails) and other scripts' digits.
    if not (raw.isascii() and raw.isdigit()) or len(raw) > 7 or int(raw) > RUNSYNC_MAX_WAIT_MS:
        raise InvalidInput(f"wait: expected milliseconds from 0 to {RUNSYNC_MAX_WAIT_MS}, got {raw[:20]!r}")
    return int(raw)


# ---- the application ----------------------------------------------------------------------------


class PodApp:
    """The pod server's state and its ASGI app (``.app``); enter it to start the engine."""

    def __init__(
        self,
        settings: Settings,
        *,
        model: NliModel | None = None,
        load_model: Callable[[], NliModel] | None = None,
        metrics: Metrics | None = None,
        recorder: TraceRecorder | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        """``model`` skips loading (tests share one); ``load_model`` replaces ``NliModel.load``;
        ``clock`` times jobs and their retention (tests move it instead of sleeping)."""
        self.settings = settings
        self.metrics = metrics or Metrics(CollectorRegistry())
        self.recorder = recorder
        self.schema = build_job_schema(settings.limits)
        self.store = JobStore(ttl_s=settings.job_ttl_s, max_finished=settings.max_finished_jobs,
                              max_bytes=settings.max_finished_bytes, clock=clock)  # fmt: skip
        self.metrics.watch_job_store(lambda: len(self.store), lambda: self.store.finished_bytes)
        self.host = EngineHost(settings, model=model, load_model=load_model, metrics=self.metrics)
        self.closing = False
        self.drain_over = anyio.Event()
        """Set once a drain has ended: open ``/runsync`` waits answer with the job as it stands."""
        self._task_group: TaskGroup | None = None
        self.app = build_app(self)

    # ---- lifetime ---------------------------------------------------------------------------

    async def __aenter__(self) -> PodApp:
        if self._task_group is not None:
            raise RuntimeError("this PodApp is already running")
        self._task_group = anyio.create_task_group()
        await self._task_group.__aenter__()
        self._task_group.start_soon(self.host.serve, name="nli-engine")
        return self

    async def __aexit__(self, *exc_info: object) -> bool | None:
        """Stop taking jobs and stop the engine: jobs still in flight fail ``unavailable``."""
        assert self._task_group is not None
        self.closing = True
        self.host.stop()
        if self.engine is None:  # still loading (or failed): nothing to wait for
            self._task_group.cancel_scope.cancel()
        try:
            return await self._task_group.__aexit__(*exc_info)
        finally:
            log.info("pod_stopped", jobs=self.store.counts())

    @property
    def entered(self) -> bool:
        return self._task_group is not None

    async def drain(self, timeout_s: float) -> None:
        """Stop taking jobs (``/ping`` and new jobs 503) and let those in flight finish, for
        ``timeout_s`` at most; then keep their results readable for ``DRAIN_READ_S``.

        The pod is then ready to exit: what is still in flight ends ``unavailable`` as the
        engine stops.
        """
        self.closing = True
        in_flight = self.store.in_flight()
        log.info("pod_draining", jobs_in_flight=len(in_flight), timeout_s=timeout_s)
        with anyio.move_on_after(timeout_s):
            for record in in_flight:
                await record.done.wait()
            if in_flight:
                await anyio.sleep(DRAIN_READ_S)
        left = len(self.store.in_flight())
        log.info("pod_drained", jobs_left=left, jobs=self.store.counts())
        self.drain_over.set()

    async def wait_ready(self) -> NliEngine:
        """Wait until the engine serves jobs; raises ``Unavailable`` if it failed to start."""
        assert self._task_group is not None, "enter the PodApp first"
        return await self.host.wait_ready()

    @property
    def engine(self) -> NliEngine | None:
        return self.host.engine

    @property
    def failure(self) -> Unavailable | None:
        """Why the model or engine stopped, once it has."""
        return self.host.failure

    # ---- jobs -------------------------------------------------------------------------------

    def serving_engine(self) -> NliEngine:
        """The engine, or the ``Unavailable`` a job is refused with (503, Retry-After)."""
        if self.closing or self._task_group is None:
            raise Unavailable("the server is shutting down" if self.closing else "the server is not started")
        if self.engine is None:
            raise self.failure or Unavailable("the model is loading; retry shortly")
        return self.engine

    async def submit(self, request: Request) -> JobRecord:
        """Read, decode and admit a job now (or raise why not), then run it in the background."""
        try:
            engine = self.serving_engine()
            body = decode_run_request(await read_body(request, self.settings.max_body_bytes))
        except ServiceError as err:  # refused before it was a job: no operation to count it under
            log.info("request_refused", path=request.url.path, error=str(err), code=err.code)
            self.metrics.observe_rejection(err.code)
            raise
        job_id = new_job_id()
        job_input = body.input if len(body.input) else None
        admitted = admit_job(
            engine, self.schema, job_input, job_id=job_id, metrics=self.metrics, timeout_s=body.timeout_s
        )
        await accept_job(admitted)  # its tokens counted too: a job that does not fit is a 429 now
        record = self.store.add(admitted.operation, job_id)
        self._record(body.input)
        assert self._task_group is not None
        self._task_group.start_soon(self._run_job, record, admitted, name=f"job {job_id}")
        if _levels.isEnabledFor(logging.DEBUG):
            log.debug("job_accepted", job_id=job_id, operation=admitted.operation, pairs=len(admitted.plan.pairs),
                      timeout_s=body.timeout_s)  # fmt: skip
        return record

    def _record(self, job_input: msgspec.Raw) -> None:
        if self.recorder is None:
            return
        try:
            self.recorder.record(job_input)
        except Exception:  # a full disk must not fail the job it was recording
            log.exception("record_failed", path=str(self.recorder.path))

    async def _run_job(self, record: JobRecord, admitted: AdmittedJob) -> None:
        named = {"job_id": record.id, "operation": record.operation}  # named, not bound: see service.admit_job
        try:
            with record.scope:
                self.store.start(record)
                self._end(record, await finish_job(admitted))
        except Exception:  # a bug here must not take the task group, and the server, down
            log.exception("job_crashed", **named)
            self.store.finish(record, FAILED, error=f"internal: unexpected error; see the log (job {record.id})")
        finally:
            self.store.finish(record, CANCELLED)  # a no-op unless it was cancelled
            view = record.view()
            times = {"delay_ms": view.delay_time_ms, "execution_ms": view.execution_time_ms}
            log.info("job_ended", **named, status=record.status, **times)

    def _end(self, record: JobRecord, outcome: JobOutcome) -> None:
        if outcome.error is None:
            self.store.finish(record, COMPLETED, output=outcome.output)
        else:
            status = TIMED_OUT if outcome.error.code == "timed_out" else FAILED
            self.store.finish(record, status, error=str(outcome.error))

    def job(self, job_id: str) -> JobRecord:
        record = self.store.get(job_id)
        if record is None:
            raise NotFound(
                f"no job {job_id[:64]!r}: never accepted, or finished more than "
                f"JOB_TTL_S={self.settings.job_ttl_s:g} s (or MAX_FINISHED_JOBS jobs or MAX_FINISHED_BYTES) ago"
            )
        return record

    def cancel(self, job_id: str) -> JobRecord:
        """Cancel a job that has not ended (its queued pairs are dropped); an ended one stays."""
        record = self.job(job_id)
        if self.store.finish(record, CANCELLED):
            record.scope.cancel()
            log.info("job_cancel_requested", job_id=record.id, operation=record.operation)
        return record

    # ---- views --------------------------------------------------------------------------------

    def health(self) -> dict[str, Any]:
        """``/health``: RunPod's job counts (camelCase, as its endpoints answer), the model, the queue."""
        counts = self.store.counts()
        engine = self.engine
        model = engine.model if engine is not None else None
        body: dict[str, Any] = {
            "jobs": {
                "inQueue": counts[IN_QUEUE],
                "inProgress": counts[IN_PROGRESS],
                "completed": counts[COMPLETED],
                "failed": counts[FAILED],
                "cancelled": counts[CANCELLED],
                "timedOut": counts[TIMED_OUT],
            },
            "model": {
                "name": self.settings.model_name,
                "device": str(model.device) if model is not None else self.settings.device,
                "dtype": str(model.dtype).removeprefix("torch.") if model is not None else self.settings.dtype,
                "ready": engine is not None and not self.closing,
            },
        }
        if engine is not None:
            body["queue"] = {"pairs": engine.queued_pairs, "tokens": engine.queued_tokens}
        if self.failure is not None:
            body["model"]["error"] = str(self.failure)
        return body


# ---- routes ----------------------------------------------------------------------------------------


def build_app(pod: PodApp) -> Starlette:
    """The ASGI app over ``pod``; its lifespan enters ``pod`` unless something already has."""

    async def run(request: Request) -> Response:
        record = await pod.submit(request)
        return json_response(JobView(id=record.id, status=record.status))

    async def runsync(request: Request) -> Response:
        wait_ms = parse_wait_ms(request.query_params.get("wait"))
        record = await pod.submit(request)
        with anyio.move_on_after(wait_ms / 1000):
            await _first_of(record.done, pod.drain_over)  # a drain's end answers with the job as it is
        return json_response(record.view())

    async def status(request: Request) -> Response:
        return json_response(pod.job(request.path_params["job_id"]).view())

    async def cancel(request: Request) -> Response:
        record = pod.cancel(request.path_params["job_id"])
        return json_response(JobView(id=record.id, status=record.status))

    async def health(request: Request) -> Response:
        return json_response(pod.health())

    async def ping(request: Request) -> Response:
        if pod.engine is not None and not pod.closing:
            return json_response({"status": "healthy"})
        if pod.failure is None and not pod.closing:
            return Response(status_code=204)  # loading: RunPod's load balancer waits
        return error_response(pod.failure or Unavailable("the server is shutting down"))

    async def metrics(request: Request) -> Response:
        encode, content_type = choose_encoder(request.headers.get("accept"))
        return Response(encode(pod.metrics.registry), headers={"Content-Type": content_type})

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        if pod.entered:  # by its owner (tests, an in-process server)
            yield
            return
        async with pod:
            yield

    routes = [
        Route("/run", run, methods=["POST"]),
        Route("/runsync", runsync, methods=["POST"]),
        Route("/status/{job_id}", status, methods=["GET", "POST"]),
        Route("/cancel/{job_id}", cancel, methods=["POST"]),
        Route("/health", health, methods=["GET"]),
        Route("/ping", ping, methods=["GET"]),
        Route("/metrics", metrics, methods=["GET"]),
    ]
    middleware = [Middleware(BearerAuth, api_key=pod.settings.api_key)] if pod.settings.api_key else []
    return Starlette(
        routes=routes,
        middleware=middleware,
        exception_handlers={ServiceError: _service_error, HTTPException: _http_error},  # type: ignore[dict-item]
        lifespan=lifespan,
    )


async def _first_of(*events: anyio.Event) -> None:
    """Return once any of ``events`` is set."""
    async with anyio.create_task_group() as tg:

        async def wait(event: anyio.Event) -> None:
            await event.wait()
            tg.cancel_scope.cancel()

        for event in events:
            tg.start_soon(wait, event)


async def _service_error(request: Request, err: ServiceError) -> Response:
    return error_response(err)


async def _http_error(request: Request, exc: HTTPException) -> Response:
    """Starlette's own 404 (no such route) and 405 (wrong method), as our JSON errors."""
    path = request.url.path
    if exc.status_code == 405:
        allowed = (exc.headers or {}).get("Allow", "")
        return error_response(MethodNotAllowed(f"{request.method} {path}; allowed: {allowed}"), exc.headers)
    if exc.status_code == 404:
        return error_response(NotFound(f"no route {path}"))
    return json_response({"error": f"http_{exc.status_code}: {exc.detail}"}, exc.status_code, exc.headers)


class BearerAuth:
    """Every route but ``OPEN_PATHS`` needs ``Authorization: Bearer <API_KEY>`` (constant time)."""

    def __init__(self, app: ASGIApp, api_key: str) -> None:
        self.app = app
        self._expected = b"bearer " + api_key.encode()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] in OPEN_PATHS or self._authorized(scope):
            await self.app(scope, receive, send)
            return
        response = error_response(Unauthorized("send 'Authorization: Bearer <API_KEY>'"))
        await response(scope, receive, send)

    def _authorized(self, scope: Scope) -> bool:
        given = next((value for name, value in scope["headers"] if name == b"authorization"), b"")
        scheme, _, key = given.partition(b" ")
        return hmac.compare_digest(scheme.lower() + b" " + key.strip(), self._expected)


# ---- running it --------------------------------------------------------------------------------


@asynccontextmanager
async def running_server(
    settings: Settings, *, model: NliModel | None = None, host: str = "127.0.0.1", port: int = 0
) -> AsyncIterator[str]:
    """``async with running_server(settings) as base_url:`` uvicorn in this event loop (IPv4).

    For tests and in-process load tests: the socket is bound first (``port=0`` picks a free one)
    and listens before uvicorn starts, so clients may connect at once; the block starts once
    the engine serves jobs. Leaving it stops the server, then the engine.
    """
    import socket

    import uvicorn

    # IPPROTO_TCP, not 0: asyncio sets TCP_NODELAY only on sockets that name it, and without it
    # small responses wait on Nagle's algorithm (about 40 ms a request under load).
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP) as sock:
        sock.bind((host, port))
        sock.listen(2048)  # the backlog holds early connections until uvicorn accepts them
        bound_host, bound_port = sock.getsockname()
        async with PodApp(settings, model=model) as pod:
            await pod.wait_ready()
            config = uvicorn.Config(
                pod.app, log_config=None, access_log=False, lifespan="off", ws="none",
                timeout_keep_alive=settings.keep_alive_s, timeout_graceful_shutdown=GRACEFUL_SHUTDOWN_S,
            )  # fmt: skip
            server = uvicorn.Server(config)
            async with anyio.create_task_group() as tg:
                tg.start_soon(server.serve, [sock])
                try:
                    yield f"http://{bound_host}:{bound_port}"
                finally:
                    server.should_exit = True


# ---- the command ---------------------------------------------------------------------------------


def bind_refusal(host: str, settings: Settings, *, insecure: bool) -> str | None:
    """Why serving on ``host`` is refused (beyond loopback with no API key), or None."""
    if settings.api_key or insecure or _is_loopback(host):
        return None
    return (
        f"refusing to serve on {host} without an API key: beyond loopback anyone who can reach "
        "the port could submit jobs. Set API_KEY (clients then send 'Authorization: Bearer "
        "<key>'), or pass --insecure to serve without authentication."
    )


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def serve(settings: Settings, *, host: str, port: int, insecure: bool = False, record: str | None = None) -> int:
    """Run the pod server until SIGINT/SIGTERM; the exit status (2: refused to start).

    The HTTP server answers before the model has loaded (``/ping`` 204, jobs 503). The first
    SIGTERM or SIGINT drains the pod (``PodApp.drain``: ``/ping`` and new jobs 503, jobs in
    flight finish within ``DRAIN_TIMEOUT_S``); then uvicorn lets open requests finish
    (``GRACEFUL_SHUTDOWN_S``), the engine stops and jobs still in flight end FAILED
    ``unavailable``. Logging is ours (configured by the caller); the
    access log is on only at LOG_LEVEL=DEBUG.
    """
    import uvicorn

    refusal = bind_refusal(host, settings, insecure=insecure)
    if refusal is not None:
        print(f"error: {refusal}", file=sys.stderr)
        return 2
    try:
        recorder = TraceRecorder(record) if record else None
    except (OSError, ValueError) as err:
        print(f"error: --record {record}: {err}", file=sys.stderr)
        return 2
    logging.getLogger("uvicorn").setLevel(logging.NOTSET)  # importing runpod held it at WARNING
    pod = PodApp(settings, recorder=recorder)
    config = uvicorn.Config(
        pod.app,
        host=host,
        port=port,
        log_config=None,
        access_log=settings.log_level.upper() == "DEBUG",
        lifespan="on",
        ws="none",
        timeout_keep_alive=settings.keep_alive_s,
        timeout_graceful_shutdown=GRACEFUL_SHUTDOWN_S,
    )
    server = _DrainingServer(config, pod)
    log.info("pod_starting", host=host, port=port, auth=settings.api_key is not None, record=record)
    try:
        with _signals_end_quietly():
            server.run()
    finally:
        if recorder is not None:
            recorder.close()
    return 0 if server.started else 1


class _DrainingServer(uvicorn.Server):
    """uvicorn whose first SIGTERM or SIGINT drains the pod (``PodApp.drain``) before it shuts
    down; a second one shuts down at once, a third forces it."""

    def __init__(self, config: uvicorn.Config, pod: PodApp) -> None:
        super().__init__(config)
        self.pod = pod
        self.draining = False
        self._drain_task: asyncio.Task[None] | None = None

    def handle_exit(self, sig: int, frame: Any) -> None:
        if self.draining or not self.pod.entered or self.should_exit:
            super().handle_exit(sig, frame)
            return
        self.draining = True
        loop = asyncio.get_running_loop()  # signal handlers run on the loop's thread
        self._drain_task = loop.create_task(self._drain_then_exit(sig, frame))

    async def _drain_then_exit(self, sig: int, frame: Any) -> None:
        try:
            await self.pod.drain(self.pod.settings.drain_timeout_s)
        finally:
            super().handle_exit(sig, frame)


@contextmanager
def _signals_end_quietly() -> Iterator[None]:
    """Exit 0 after a graceful shutdown on SIGINT/SIGTERM.

    uvicorn shuts down on the signal, then raises it again for the handler it found installed:
    Python's default would print a KeyboardInterrupt traceback (SIGINT) or kill the process
    (SIGTERM) after the work is done, so that handler is a no-op while it serves.
    """
    quiet = {sig: signal.signal(sig, lambda *_: None) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for sig, handler in quiet.items():
            signal.signal(sig, handler)
