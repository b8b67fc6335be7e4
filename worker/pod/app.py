"""The pod's state: the engine's host, the jobs and their tasks, and the drain.

``submit`` reads, decodes and admits a job synchronously through the service path the serverless
handler uses (``admit_job``), so a bad job, a full queue or a loading model is refused at once,
then finishes it in a background task. Jobs live in a ``JobStore`` (statuses, retention);
``cancel`` cancels a job's task, and the batcher drops its queued pairs as the cancellation passes
through it. The engine loads in the host's background task while HTTP already answers. Enter a
``PodApp`` with ``async with`` (tests, httpx's ``ASGITransport``, which runs no lifespan) or let
uvicorn's lifespan enter it (``serve``).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

import anyio
import msgspec
import structlog
from anyio.abc import TaskGroup
from prometheus_client import CollectorRegistry
from starlette.requests import Request
from starlette.responses import Response

from batching import ServiceError, Unavailable
from schemas import build_job_schema
from schemas.runpod import (
    CANCELLED,
    COMPLETED,
    FAILED,
    IN_PROGRESS,
    IN_QUEUE,
    TIMED_OUT,
    HealthView,
    JobCounts,
    ModelState,
    PurgeResult,
    QueueState,
    decode_run_request,
)
from schemas.trace import TraceRecorder
from worker.engine_host import EngineHost
from worker.job_store import JobRecord, JobStore, new_job_id
from worker.metrics import Metrics
from worker.model import NliModel
from worker.pod.http import NoSuchResource
from worker.pod.peers import Peers, is_relayed
from worker.pod.requests import read_body
from worker.pod.routes import build_app
from worker.pod.webhooks import WebhookSender, check_webhook
from worker.service import AdmittedJob, Engine, JobOutcome, accept_job, admit_job, finish_job
from worker.settings import Settings
from worker.split.process_metrics import MODEL, OPENMETRICS, Families, merge, not_ready, parse
from worker.split.remote_host import RemoteHost

log = structlog.get_logger("worker.pod")
_levels = logging.getLogger("worker.pod")  # asked before a per-job debug line (see worker.service)

DRAIN_READ_S = 2.5
"""After the last job in flight has ended, the results stay readable this long before the
process exits: longer than the project's client waits between two polls (2 s at most)."""


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
        remote: RemoteHost | None = None,
        peers: Peers | None = None,
    ) -> None:
        """``model`` skips loading (tests share one); ``load_model`` replaces ``NliModel.load``;
        ``clock`` times jobs and their retention (tests move it instead of sleeping). A front
        process of a pod with several (``worker/pod/fronts.py``) has ``remote``, its connection
        to the model process, instead of an engine of its own, and ``peers``, the other fronts."""
        self.settings = settings
        self.metrics = metrics or Metrics(CollectorRegistry())
        self.recorder = recorder
        self.schema = build_job_schema(settings.limits)
        self.store = JobStore(ttl_s=settings.job_ttl_s, max_finished=settings.max_finished_jobs,
                              max_bytes=settings.max_finished_bytes, clock=clock)  # fmt: skip
        self.metrics.watch_job_store(lambda: len(self.store), lambda: self.store.finished_bytes)
        self.host: EngineHost | RemoteHost = remote or EngineHost(
            settings, model=model, load_model=load_model, metrics=self.metrics
        )
        self.peers = peers
        self.webhooks = WebhookSender(
            attempts=settings.webhook_attempts, retry_s=settings.webhook_retry_s,
            timeout_s=settings.webhook_timeout_s, allow_private=settings.webhook_allow_private,
        )  # fmt: skip
        self._deliveries = 0
        self._deliveries_done = anyio.Event()
        self.closing = False
        self.drained = False
        self._sync_waits: set[anyio.CancelScope] = set()
        """The open ``/runsync`` waits, ended at once when a drain ends (``wait_answerable``)."""
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
            await self.webhooks.aclose()
            if self.peers is not None:
                await self.peers.aclose()
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
            if self._deliveries:  # the ended jobs' webhooks, retries included
                await self._deliveries_done.wait()
            if in_flight:
                await anyio.sleep(DRAIN_READ_S)
        left = len(self.store.in_flight())
        log.info("pod_drained", jobs_left=left, jobs=self.store.counts())
        self.drained = True
        for wait in self._sync_waits:
            wait.cancel()

    async def wait_answerable(self, record: JobRecord, timeout_s: float) -> None:
        """Wait until the job ends, ``timeout_s`` passes or a drain ends: what ``/runsync``
        waits for before it answers with the job as it stands. One cancel scope a request; a
        drain's end cancels them all."""
        with anyio.move_on_after(timeout_s) as wait:
            if self.drained:
                return
            self._sync_waits.add(wait)
            try:
                await record.done.wait()
            finally:
                self._sync_waits.discard(wait)

    async def wait_ready(self) -> Engine:
        """Wait until the engine serves jobs; raises ``Unavailable`` if it failed to start."""
        assert self._task_group is not None, "enter the PodApp first"
        return await self.host.wait_ready()

    @property
    def engine(self) -> Engine | None:
        """``NliEngine`` in one process; in a front process, ``RemoteEngine`` while connected."""
        return self.host.engine

    @property
    def failure(self) -> Unavailable | None:
        """Why the model or engine stopped, once it has."""
        return self.host.failure

    # ---- jobs -------------------------------------------------------------------------------

    async def serving_engine(self) -> Engine:
        """The engine, or the ``Unavailable`` a job is refused with (503, Retry-After)."""
        if self.closing or self._task_group is None:
            raise Unavailable("the server is shutting down" if self.closing else "the server is not started")
        if self.engine is None and isinstance(self.host, RemoteHost):
            await self.host.connect_now()  # a front of several: its model process may listen already
        if self.engine is None:
            raise self.failure or Unavailable("the model is loading; retry shortly")
        return self.engine

    async def relayed(self, request: Request, job_id: str) -> Response | None:
        """In a pod of several fronts, the answer of the front that holds ``job_id`` when it is
        another (``NoSuchResource`` when that front has gone); None when this one answers."""
        if self.peers is None or is_relayed(request) or (front := self.peers.owner(job_id)) is None:
            return None
        answer = await self.peers.relay(request, front)
        if answer is None:
            raise NoSuchResource(
                f"no job {job_id[:64]!r}: the front process that took it has stopped (or does not answer)"
            )
        return answer

    async def submit(self, request: Request) -> JobRecord:
        """Read, decode and admit a job now (or raise why not), then run it in the background."""
        try:
            engine = await self.serving_engine()
            body = decode_run_request(await read_body(request, self.settings.max_body_bytes))
            if body.webhook is not None:
                check_webhook(body.webhook, allow_private=self.settings.webhook_allow_private)
        except ServiceError as err:  # refused before it was a job: no operation to count it under
            log.info("request_refused", path=request.url.path, error=str(err), code=err.code)
            self.metrics.observe_rejection(err.code)
            raise
        job_id = self.peers.new_job_id() if self.peers is not None else new_job_id()
        job_input = body.input if len(body.input) else None
        admitted = admit_job(
            engine, self.schema, job_input, job_id=job_id, metrics=self.metrics, timeout_s=body.timeout_s
        )
        await accept_job(admitted)  # its tokens counted too: a job that does not fit is a 429 now
        record = self.store.add(admitted.operation, job_id, webhook=body.webhook)
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
            if record.webhook is not None:
                self._start_delivery(record.webhook, msgspec.json.encode(view), record.id)

    def _start_delivery(self, url: str, body: bytes, job_id: str) -> None:
        assert self._task_group is not None
        if not self._deliveries:
            self._deliveries_done = anyio.Event()
        self._deliveries += 1
        self._task_group.start_soon(self._deliver, url, body, job_id, name=f"webhook {job_id}")

    async def _deliver(self, url: str, body: bytes, job_id: str) -> None:
        try:
            delivered = await self.webhooks.deliver(url, body, job_id=job_id)
            self.metrics.webhooks.labels(result="delivered" if delivered else "failed").inc()
        except Exception:  # a bug here must not take the task group, and the server, down
            log.exception("webhook_crashed", job_id=job_id)
        finally:
            self._deliveries -= 1
            if not self._deliveries:
                self._deliveries_done.set()

    def _end(self, record: JobRecord, outcome: JobOutcome) -> None:
        if outcome.error is None:
            self.store.finish(record, COMPLETED, output=outcome.output)
        else:
            status = TIMED_OUT if outcome.error.code == "timed_out" else FAILED
            self.store.finish(record, status, error=str(outcome.error))

    def job(self, job_id: str) -> JobRecord:
        record = self.store.get(job_id)
        if record is None:
            raise NoSuchResource(
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

    def purge_queue(self) -> int:
        """Cancel this process's jobs no task has picked up yet, as RunPod's ``/purge-queue``
        drops the jobs no worker has taken; how many. Jobs already running are left to finish."""
        waiting = [record for record in self.store.in_flight() if record.status == IN_QUEUE]
        for record in waiting:
            self.cancel(record.id)
        return len(waiting)

    async def purge_pod_queue(self, request: Request) -> int:
        """``purge_queue`` on every front of the pod, asked with ``request``'s credentials (this
        process alone in one process, or for a request another front relayed)."""
        removed = self.purge_queue()
        if self.peers is not None and not is_relayed(request):
            for answer in (await self.peers.ask_others(request, "POST", "/purge-queue")).values():
                removed += msgspec.json.decode(answer, type=PurgeResult).removed
        return removed

    # ---- views --------------------------------------------------------------------------------

    async def health(self, request: Request) -> HealthView:
        """``/health``: RunPod's job counts, the model, the queue; in a pod of several fronts,
        the job counts of every front that answers, asked with ``request``'s credentials (for a
        request another front relayed: this front's alone)."""
        counts = self.store.counts()
        if self.peers is not None and not is_relayed(request):
            for answer in (await self.peers.ask_others(request, "GET", "/health")).values():
                other = msgspec.json.decode(answer, type=HealthView).jobs
                for status, count in _COUNTS.items():
                    counts[status] += getattr(other, count)
        served_on = self.host.served_on()
        device, dtype = served_on or (self.settings.device, self.settings.dtype)
        queue = await self.host.queue_state()
        return HealthView(
            jobs=JobCounts(**{count: counts[status] for status, count in _COUNTS.items()}),
            model=ModelState(
                name=self.settings.model_name, device=device, dtype=dtype,
                ready=self.engine is not None and not self.closing,
                error=None if self.failure is None else str(self.failure),
            ),
            queue=None if queue is None else QueueState(pairs=queue[0], tokens=queue[1]),
        )  # fmt: skip

    async def metrics_view(self, request: Request) -> CollectorRegistry:
        """What ``/metrics`` shows: this process's registry, or, in a pod of several fronts,
        every front's series and the model process's, each labelled by its ``process``
        (``worker/split/process_metrics.py``; a request another front relayed: this front's)."""
        if self.peers is None or is_relayed(request):
            return self.metrics.registry
        fronts = {self.peers.front: list(self.metrics.registry.collect())}
        answers = await self.peers.ask_others(request, "GET", "/metrics", accept=OPENMETRICS)
        fronts.update((front, parse(text)) for front, text in answers.items())
        model = await self.host.scrape() if isinstance(self.host, RemoteHost) else None
        parts = [(f"front-{front}", fronts[front]) for front in sorted(fronts)]
        return Families(merge([*parts, (MODEL, parse(model) if model is not None else not_ready())]))


_COUNTS = {
    IN_QUEUE: "in_queue", IN_PROGRESS: "in_progress", COMPLETED: "completed",
    FAILED: "failed", CANCELLED: "cancelled", TIMED_OUT: "timed_out",
}  # fmt: skip
"""RunPod's job statuses and ``JobCounts``' fields for them."""
