"""The model process: one engine (the shared queue, admission, batches, the GPU) serving the
jobs of every front process that connects to its Unix socket.

Each front's jobs arrive as token ids (``Submit``) and are admitted by the same rules as in one
process (``Admission.admit_tokens``): refused at once (``Failed``), held in the waiting room, or
queued and ``Accepted``; each then ends as ``Result`` or ``Failed``. A front that disconnects
gives up all its jobs, whose queued pairs are dropped; other fronts' jobs are untouched. The
socket is bound only once the model is warm, so a front that can connect can be served; when the
engine stops or fails, the socket goes and every front sees its connection end.
"""

from __future__ import annotations

import os
import signal
from collections.abc import Callable, Sequence
from functools import partial
from pathlib import Path

import anyio
import numpy as np
import structlog
from anyio.abc import SocketStream, TaskGroup
from prometheus_client import CollectorRegistry, start_http_server
from prometheus_client.openmetrics.exposition import generate_latest

from batching import ServiceError
from worker.admission import QueuedPairs
from worker.engine import NliEngine
from worker.engine_host import EngineHost
from worker.metrics import Metrics
from worker.model import NliModel
from worker.settings import Settings
from worker.split.frames import FrameError, Sender, receive
from worker.split.messages import (
    Exposition, Failed, Hello, Ping, Pong, Scrape, SequenceCache, Submit, ToFront, ToModel, accept, answer, failed,
)  # fmt: skip

log = structlog.get_logger("worker.split.model_process")


class ModelServer:
    """Serves one running engine to front processes: ``await listener.serve(server.serve_front)``."""

    def __init__(self, engine: NliEngine, registry: CollectorRegistry | None = None) -> None:
        """``registry``: the metrics a front's ``Scrape`` reads (none: an empty exposition)."""
        self.engine = engine
        self.registry = registry
        self._sequences = SequenceCache()
        model = engine.model
        self._hello = Hello(model.name, str(model.device), str(model.dtype).removeprefix("torch."))

    async def serve_front(self, stream: SocketStream) -> None:
        """One front's connection, until it closes: its jobs end with it."""
        sender: Sender[ToFront] = Sender(stream)
        jobs: dict[int, Callable[[], None]] = {}
        """Each open job's way to give it up."""
        async with stream, anyio.create_task_group() as tasks:
            tasks.start_soon(sender.run, name="nli-front-sender")
            sender.send(self._hello)
            try:
                async for message in receive(stream, ToModel):
                    if isinstance(message, Submit):
                        self._submit(message, sender, jobs, tasks)
                    elif isinstance(message, Ping):
                        sender.send(Pong(message.key, self.engine.queued_pairs, self.engine.queued_tokens))
                    elif isinstance(message, Scrape):
                        text = generate_latest(self.registry) if self.registry is not None else b""
                        sender.send(Exposition(message.key, text))
                    elif (give_up := jobs.pop(message.job, None)) is not None:
                        give_up()
            except FrameError as err:
                log.error("front_sent_garbage", error=str(err))
            finally:  # the front is gone: drop every pair of its jobs still queued
                for give_up in list(jobs.values()):
                    give_up()
                tasks.cancel_scope.cancel()

    def _submit(
        self, message: Submit, sender: Sender[ToFront], jobs: dict[int, Callable[[], None]], tasks: TaskGroup
    ) -> None:
        job = message.job
        try:
            tokens = self._sequences.pairs(message)
            queued = self.engine.admission.admit_tokens(
                tokens, timeout_s=message.timeout_s, wait_for_room=message.wait_for_room
            )
        except ServiceError as err:
            sender.send(failed(job, err))
            return
        except Exception:
            log.exception("submit_failed", front_job=job)
            sender.send(failed(job, ServiceError("the model process could not read the job")))
            return
        if queued.in_queue:  # the usual case: followed without a task of its own
            accept(sender, job)
            jobs[job] = queued.drop
            queued.when_done(partial(self._answer, job, sender, jobs))
        else:  # waiting for room: the waiting room's clock and order need a task
            scope = anyio.CancelScope()
            jobs[job] = scope.cancel
            tasks.start_soon(self._wait_for_room, job, queued, scope, sender, jobs)

    def _answer(
        self, job: int, sender: Sender[ToFront], jobs: dict[int, Callable[[], None]],
        rows: Sequence[np.ndarray] | None, error: ServiceError | None,
    ) -> None:  # fmt: skip
        """Send how a job ended: its logits, or its error; nothing for a job its front gave up."""
        jobs.pop(job, None)
        if error is not None:
            sender.send(failed(job, error))
        elif rows is not None:
            answer(sender, job, rows)

    async def _wait_for_room(
        self, job: int, queued: QueuedPairs, scope: anyio.CancelScope, sender: Sender[ToFront],
        jobs: dict[int, Callable[[], None]],
    ) -> None:  # fmt: skip
        """A job held in the waiting room: tell the front once it is queued, then how it ended."""
        with scope:
            try:
                await queued.accepted()
                accept(sender, job)
                logits = await queued.logits()
            except ServiceError as err:
                self._answer(job, sender, jobs, None, err)
            except Exception:
                log.exception("job_crashed", front_job=job)
                jobs.pop(job, None)
                sender.send(Failed(job, "internal", "unexpected error in the model process; see its log"))
            else:
                self._answer(job, sender, jobs, logits, None)


def failure_note(path: str | Path) -> Path:
    """Beside the socket: why the model process at ``path`` could not start, for its fronts to
    answer with while it does not listen (a pod's ``/ping`` 503 instead of "loading")."""
    return Path(f"{path}.failed")


async def serve_model(host: EngineHost, path: str | Path, *, ready: anyio.Event | None = None) -> None:
    """Run ``host``'s engine and serve it on the Unix socket ``path`` until the engine stops (or
    this is cancelled); the socket exists only while the engine serves. ``ready`` is set once it
    listens."""
    path = Path(path)
    async with anyio.create_task_group() as tasks:

        async def engine() -> None:
            await host.serve()
            tasks.cancel_scope.cancel()  # stopped or failed: the fronts must see the socket go

        tasks.start_soon(engine, name="nli-engine")
        try:
            served = await host.wait_ready()
        except ServiceError as err:
            log.error("model_process_unavailable", error=str(err))
            return
        path.unlink(missing_ok=True)  # a socket left by a process that died
        failure_note(path).unlink(missing_ok=True)  # an earlier start's failure is over
        server = ModelServer(served, host.metrics.registry if host.metrics is not None else None)
        try:
            # Only this user may connect: a front can submit jobs without the pod's API key.
            async with await anyio.create_unix_listener(path, mode=0o600) as listener:
                log.info("model_process_listening", socket=str(path))
                if ready is not None:
                    ready.set()
                await listener.serve(server.serve_front)
        finally:
            path.unlink(missing_ok=True)


def run(settings: Settings, path: str, *, model: NliModel | None = None) -> int:
    """``python -m worker model-process``: load and warm the model (or take ``model``), then
    serve it on ``path`` until SIGTERM or SIGINT; with ``METRICS_PORT``, its batch, queue and
    process metrics are served there for Prometheus. Exits 1 when the model could not be loaded
    or the engine failed."""
    metrics = Metrics(CollectorRegistry())
    if settings.metrics_port is not None:
        start_http_server(settings.metrics_port, registry=metrics.registry)
        log.info("metrics_serving", port=settings.metrics_port)
    host = EngineHost(settings, model=model, metrics=metrics)
    host.preload()
    if host.failure is not None:
        failure_note(path).write_text(host.failure.message, encoding="utf-8")
        return 1

    async def main() -> None:
        async with anyio.create_task_group() as tasks:

            async def serve() -> None:
                await serve_model(host, path)
                tasks.cancel_scope.cancel()

            tasks.start_soon(serve)
            with anyio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
                async for signum in signals:
                    log.info("model_process_stopping", signal=signal.Signals(signum).name, pid=os.getpid())
                    host.stop()
                    break

    anyio.run(main)
    return 0 if host.failure is None else 1
