"""The RunPod serverless front end: an async handler over one engine, hosted for the worker's life.

The SDK owns the event loop (``asyncio.run`` inside ``runpod.serverless.start``; uvicorn's loop
under ``--rp_serve_api``), so the engine cannot be started before it: the first job starts it
(``start`` loads and warms the model beforehand; the engine then only runs). ``EngineHost`` keeps
the engine in one background task, so concurrent first jobs wait for the same readiness and a
model that failed to load answers every job with ``unavailable``.
"""

from __future__ import annotations

import asyncio
import os
import sys
from typing import Any

import structlog
from prometheus_client import CollectorRegistry, start_http_server

from batching import Unavailable
from schemas import JobSchema, build_job_schema
from worker.engine import NliEngine
from worker.engine_host import EngineHost
from worker.metrics import Metrics
from worker.metrics_push import MetricsPusher
from worker.model import NliModel
from worker.service import run_job
from worker.settings import Settings

log = structlog.get_logger("worker.serverless")


class ServerlessWorker:
    """Settings, the engine's host, and the task that runs it from the first job on."""

    def __init__(self, settings: Settings, *, model: NliModel | None = None, metrics: Metrics | None = None) -> None:
        self.settings = settings
        self.metrics = metrics
        self.schema: JobSchema = build_job_schema(settings.limits)
        self.host = EngineHost(settings, model=model, metrics=metrics)
        self._task: asyncio.Task[None] | None = None

    def preload(self) -> None:
        """Load and warm the model now, before the SDK's loop starts taking jobs (call from ``start``).

        A worker polls for jobs only once this returns, so the first jobs of a cold start wait in
        RunPod's queue (where another worker may take them) rather than on this worker's model
        load and warm-up, and the cold start RunPod sees ends when the worker can serve.
        """
        self.host.preload()

    @property
    def engine(self) -> NliEngine | None:
        """The running engine; None until the first job has started it (or after it failed)."""
        return self.host.engine

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

    async def ready(self) -> NliEngine:
        """Start the engine if no job has yet, wait until it runs, and return it."""
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self.host.serve(), name="nli-engine")
        return await self.host.wait_ready()

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


def start(settings: Settings) -> None:
    """Run the RunPod SDK's worker (or its ``--test_input`` / ``--rp_serve_api`` local modes).

    The SDK parses ``sys.argv`` with ``parse_known_args``, so a leading ``serverless``
    subcommand is left alone. Its job-fetch loop needs a constant concurrency: a changing one
    stalls it until every job in flight has finished.
    """
    global _default
    from worker.logs import configure_logging, set_runpod_sdk_log_level

    configure_logging(settings.log_level)
    if _runs_locally() and settings.log_level.upper() != "DEBUG":
        set_runpod_sdk_log_level("INFO")  # the SDK prints a local job's result through its INFO lines
    metrics = Metrics(CollectorRegistry())
    if settings.metrics_port is not None:
        start_http_server(settings.metrics_port, registry=metrics.registry)
        log.info("metrics_serving", port=settings.metrics_port)
    pusher = None
    if settings.metrics_push_url:
        pusher = MetricsPusher(settings.metrics_push_url, metrics.registry, endpoint=settings.runpod_endpoint_id,
                               worker=settings.runpod_pod_id, interval_s=settings.metrics_push_interval_s)  # fmt: skip
        pusher.start()
    _default = ServerlessWorker(settings, metrics=metrics)
    _default.preload()
    import runpod

    try:
        runpod.serverless.start({
            "handler": handler,
            "concurrency_modifier": lambda current: settings.max_concurrency,
            "return_aggregate_stream": False,
        })
    finally:  # the SDK returns on SIGTERM and SIGINT (or raises SystemExit)
        if pusher is not None:
            pusher.stop()


def _runs_locally() -> bool:
    """The SDK's own test: a ``--test_input`` flag, or no job-take URL to poll."""
    flagged = any(arg.startswith("--test_input") for arg in sys.argv)
    return flagged or os.environ.get("RUNPOD_WEBHOOK_GET_JOB") is None


