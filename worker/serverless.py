"""The RunPod serverless front end: an async handler over one engine, hosted for the worker's life.

The SDK owns the event loop (``asyncio.run`` inside ``runpod.serverless.start``; uvicorn's loop
under ``--rp_serve_api``), so the engine cannot be started before it: the SDK's first call into
the worker starts it (``start`` loads and warms the model beforehand; the engine then only runs).
``EngineHost`` keeps the engine in one background task, so concurrent first jobs wait for the same
readiness and a model that failed to load answers every job with ``unavailable``.

With ``--model-process`` the engine runs in a process of its own (docs/PROCESSES.md): this one
fetches, decodes, tokenizes and aggregates jobs on the SDK's loop, the model process batches and
runs them, and ``RemoteHost`` connects the two. RunPod does not retry a job a worker took and
failed, so a model process that dies costs its jobs a second run, not their end: they are held
until it has been started again and sent once more, and the worker takes no new jobs meanwhile.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import os
import sys
from collections.abc import Sequence
from typing import Any

import structlog
from prometheus_client import CollectorRegistry, start_http_server

from batching import Unavailable
from schemas import JobSchema, build_job_schema
from worker.engine_host import EngineHost
from worker.metrics import Metrics
from worker.metrics_push import MetricsPusher
from worker.model import NliModel
from worker.service import Engine, run_job
from worker.settings import Settings
from worker.split.children import ModelChild
from worker.split.process_metrics import Merged
from worker.split.remote_host import ASK_TIMEOUT_S, RemoteHost

log = structlog.get_logger("worker.serverless")


class ServerlessWorker:
    """Settings, the engine's host, and the task that runs it from the SDK's first call on."""

    def __init__(
        self, settings: Settings, *, model: NliModel | None = None, metrics: Metrics | None = None,
        model_process: ModelChild | None = None,
    ) -> None:  # fmt: skip
        """``model_process``: run the engine there (``model`` is then the head to tokenize with)."""
        self.settings = settings
        self.metrics = metrics
        self.schema: JobSchema = build_job_schema(settings.limits)
        self.model_process = model_process
        self.host: EngineHost | RemoteHost = (
            EngineHost(settings, model=model, metrics=metrics) if model_process is None
            else RemoteHost(settings, model_process.path, model=model, rerun_lost=True)
        )  # fmt: skip
        self._failure: Unavailable | None = None
        self._task: asyncio.Task[None] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    def preload(self) -> None:
        """Load and warm the model now, before the SDK's loop starts taking jobs (call from
        ``start``); with a model process, start it and wait until it serves.

        A worker polls for jobs only once this returns, so the first jobs of a cold start wait in
        RunPod's queue (where another worker may take them) rather than on this worker's model
        load and warm-up, and the cold start RunPod sees ends when the worker can serve.
        """
        if self.model_process is None:
            assert isinstance(self.host, EngineHost)
            self.host.preload()
            return
        why = self.model_process.start()
        if why is not None:
            log.error("model_process_failed", error=why)
            self._failure = Unavailable(f"the model process failed to start: {why}")

    @property
    def engine(self) -> Engine | None:
        """The running engine (or the connected model process's); None before the SDK's first
        call has started it, after it failed, and while the model process is gone."""
        return self.host.engine

    def concurrency(self, current: int) -> int:
        """The SDK's ``concurrency_modifier``: ``MAX_CONCURRENCY``, or 1 while the model process
        is gone. The SDK fetches nothing while a change waits for the jobs it holds to end, so
        jobs that arrive while the model process restarts stay in RunPod's queue, where the
        autoscaler sees them and another worker can take them. (1, not 0: the SDK starts no job
        it fetched once the limit is 0, and waits for them to end.)"""
        self._start()
        gone = isinstance(self.host, RemoteHost) and self.host.gone
        return 1 if gone else self.settings.max_concurrency

    async def handler(self, job: dict[str, Any]) -> dict[str, Any]:
        """A RunPod job ``{"id", "input"}`` to its output dict or ``{"error": ...}``."""
        job_id = job.get("id") if isinstance(job, dict) else None
        job_input = job.get("input") if isinstance(job, dict) else None
        try:
            engine = await self.ready()
        except Unavailable as err:
            return {"error": str(err)}
        # RunPod does not retry a job a worker took and failed: a full queue makes it wait, never fail.
        return await run_job(engine, self.schema, job_input, job_id=job_id, metrics=self.metrics, wait_for_room=True)

    async def ready(self) -> Engine:
        """Start the engine if nothing has yet, wait until it runs, and return it."""
        if self._failure is not None:
            raise self._failure
        self._start()
        return await self.host.wait_ready()

    def model_metrics(self) -> bytes | None:
        """The model process's metrics, from another thread than the SDK's loop (a scrape of
        ``METRICS_PORT``, a push); None while it does not answer or the loop does not run."""
        loop = self._loop
        if not isinstance(self.host, RemoteHost) or loop is None or loop.is_closed():
            return None
        try:
            asked = asyncio.run_coroutine_threadsafe(self.host.scrape(), loop)
        except RuntimeError:  # the loop closed meanwhile
            return None
        try:
            return asked.result(ASK_TIMEOUT_S + 1)
        except (concurrent.futures.TimeoutError, concurrent.futures.CancelledError):
            asked.cancel()
            return None

    def _start(self) -> None:
        if self._task is None and self._failure is None:
            self._loop = asyncio.get_running_loop()
            self._task = self._loop.create_task(self.host.serve(), name="nli-engine")

    async def aclose(self) -> None:
        """Stop the engine (if started) and wait for it: the batcher fails what is in flight."""
        if self._task is None:
            return
        self.host.stop()
        await self._task

    async def __aenter__(self) -> ServerlessWorker:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()


_default: ServerlessWorker | None = None


async def handler(job: dict[str, Any]) -> dict[str, Any]:
    """The module-level handler: the worker ``start`` installed, or one from the environment."""
    global _default
    if _default is None:
        _default = ServerlessWorker(Settings.from_env())
    return await _default.handler(job)


def start(settings: Settings, *, model_process: bool = False, model_command: Sequence[str] | None = None) -> None:
    """Run the RunPod SDK's worker (or its ``--test_input`` / ``--rp_serve_api`` local modes);
    ``model_process``: with the engine in a process of its own, ``model_command`` in place of
    ``python -m worker model-process`` (a benchmark's emulated model).

    The SDK parses ``sys.argv`` with ``parse_known_args``, so a leading ``serverless``
    subcommand is left alone. Its job-fetch loop wants a constant concurrency: a changing one
    stalls it until every job in flight has finished (``ServerlessWorker.concurrency`` changes
    it only while a model process is gone, for that stall).
    """
    global _default
    from worker.logs import configure_logging, set_runpod_sdk_log_level

    configure_logging(settings.log_level)
    if _runs_locally() and settings.log_level.upper() != "DEBUG":
        set_runpod_sdk_log_level("INFO")  # the SDK prints a local job's result through its INFO lines
    metrics = Metrics(CollectorRegistry())
    child = ModelChild(model_command) if model_process else None
    worker = _default = ServerlessWorker(settings, metrics=metrics, model_process=child)
    # With a model process, each scrape and push adds its series, labelled by process.
    exposed = Merged(metrics.registry, worker.model_metrics) if model_process else metrics.registry
    if settings.metrics_port is not None:
        start_http_server(settings.metrics_port, registry=exposed)
        log.info("metrics_serving", port=settings.metrics_port)
    pusher = None
    if settings.metrics_push_url:
        pusher = MetricsPusher(settings.metrics_push_url, exposed, endpoint=settings.runpod_endpoint_id,
                               worker=settings.runpod_pod_id, interval_s=settings.metrics_push_interval_s)  # fmt: skip
        pusher.start()
    import runpod

    try:
        worker.preload()
        runpod.serverless.start({
            "handler": handler,
            "concurrency_modifier": worker.concurrency,
            "return_aggregate_stream": False,
        })
    finally:  # the SDK returns on SIGTERM and SIGINT (or raises SystemExit), its jobs ended
        if pusher is not None:
            pusher.stop()
        if worker.model_process is not None:
            worker.model_process.stop()


def _runs_locally() -> bool:
    """The SDK's own test: a ``--test_input`` flag, or no job-take URL to poll."""
    flagged = any(arg.startswith("--test_input") for arg in sys.argv)
    return flagged or os.environ.get("RUNPOD_WEBHOOK_GET_JOB") is None


