"""A front process's counterpart of ``EngineHost``: the connection to the model process, for the
pod's front processes (``python -m worker pod --front-processes N``) and a serverless worker with
a model process (``python -m worker serverless --model-process``).

It answers what the pod asks of a host: the engine while jobs can be sent (a ``RemoteEngine``
that is connected), why not when they cannot, where the model runs and what the shared queue
holds. Before the first connection the model is "loading" (the pod's ``/ping`` 204); once the
model process has gone, jobs are refused ``unavailable`` and ``/ping`` is 503 until the front
has connected again, as a load balancer must see it.
"""

from __future__ import annotations

import math
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TypeVar

import anyio

from batching import Unavailable
from worker.engine import tune_garbage_collector
from worker.model import NliModel
from worker.settings import Settings
from worker.split.model_process import failure_note
from worker.split.remote_engine import Knock, RemoteEngine

T = TypeVar("T")

ASK_TIMEOUT_S = 5.0
"""How long ``/health`` and ``/metrics`` wait for the model process's answer before leaving it out."""


class RemoteHost:
    """One front's connection to the model process: ``serve`` in a task until ``stop``."""

    def __init__(
        self, settings: Settings, path: str | Path, *, model: NliModel | None = None, rerun_lost: bool = False
    ) -> None:
        """``path``: the model process's socket; ``model``: the head to tokenize with (default
        ``NliModel.load_head(settings.model_name)``); ``rerun_lost``: the ``RemoteEngine``'s."""
        self.settings = settings
        self.path = Path(path)
        self._model = model
        self._rerun_lost = rerun_lost
        self._knock = Knock()
        self._engine: RemoteEngine | None = None
        self._failure: Unavailable | None = None
        self._ready: anyio.Event | None = None
        self._stop: anyio.Event | None = None

    @property
    def engine(self) -> RemoteEngine | None:
        """The engine while the model process is connected, else None."""
        engine = self._engine
        return engine if engine is not None and engine.connected else None

    @property
    def gone(self) -> bool:
        """Whether the model process this front was connected to has gone and is not back yet."""
        return self._engine is not None and not self._engine.connected

    @property
    def failure(self) -> Unavailable | None:
        """Why jobs cannot be sent now; None while the first connection is still awaited and
        the model process has not said it failed to start."""
        if self._engine is not None and not self._engine.connected:
            return self._engine.unavailable
        if self._failure is None and self._engine is None:
            try:
                why = failure_note(self.path).read_text(encoding="utf-8")
            except OSError:
                return None
            return Unavailable(f"the model process failed to start: {why}")
        return self._failure

    async def serve(self) -> None:
        """Connect (waiting for the model process as long as it takes to load) and follow the
        connection until ``stop``."""
        ready, stop = self._events()
        try:
            head = self._model or NliModel.load_head(self.settings.model_name)
            tune_garbage_collector()  # as EngineHost does once its model is warm, before any job
            async with RemoteEngine.connect(
                self.settings, self.path, model=head, connect_timeout_s=math.inf, rerun_lost=self._rerun_lost,
                knock=self._knock,
            ) as engine:  # fmt: skip
                self._engine = engine
                ready.set()
                await stop.wait()
        except Exception as err:  # the model's head could not be loaded here
            self._failure = Unavailable(f"the front process failed: {type(err).__name__}: {err}")
        finally:
            self._engine = None
            self._failure = self._failure or Unavailable("the front process is shutting down")
            ready.set()

    async def wait_ready(self) -> RemoteEngine:
        """The engine once connected; ``Unavailable`` if the front failed or stopped."""
        ready, _ = self._events()
        await ready.wait()
        if self._engine is None:
            raise self.failure or Unavailable("the front process has stopped")
        await self._engine.wait_connected()
        return self._engine

    async def connect_now(self) -> None:
        """Try the model process's socket now rather than at the next attempt: a job that
        arrives in the moment between a model process listening and this front reaching it is
        served, not refused. Returns once connected, or once an attempt found nothing there."""
        if self.engine is not None:
            return
        ready, _ = self._events()
        with anyio.move_on_after(ASK_TIMEOUT_S):
            async with anyio.create_task_group() as attempt:

                async def until_connected() -> None:
                    await ready.wait()
                    if self._engine is not None:
                        await self._engine.wait_connected()
                    attempt.cancel_scope.cancel()

                attempt.start_soon(until_connected)
                await self._knock.knock()
                attempt.cancel_scope.cancel()

    def stop(self) -> None:
        _, stop = self._events()
        stop.set()

    def served_on(self) -> tuple[str, str] | None:
        """The model's device and dtype, as the model process said on connecting."""
        engine = self.engine
        hello = engine.hello if engine is not None else None
        return None if hello is None else (hello.device, hello.dtype)

    async def queue_state(self) -> tuple[int, int] | None:
        """Pairs and tokens in the shared queue (the waiting room's too), asked of the model
        process; None while it is not connected."""
        pong = await self._ask(RemoteEngine.sync)
        return None if pong is None else (pong.queued_pairs, pong.queued_tokens)

    async def scrape(self) -> bytes | None:
        """The model process's metrics (OpenMetrics' text); None while it is not connected."""
        return await self._ask(RemoteEngine.scrape)

    async def _ask(self, question: Callable[[RemoteEngine], Awaitable[T]]) -> T | None:
        """The model process's answer to ``question``; None while it is not connected or when
        it does not answer within ``ASK_TIMEOUT_S``."""
        engine = self.engine
        if engine is None:
            return None
        with anyio.move_on_after(ASK_TIMEOUT_S):
            try:
                return await question(engine)
            except Unavailable:
                return None
        return None

    def _events(self) -> tuple[anyio.Event, anyio.Event]:
        if self._ready is None or self._stop is None:
            self._ready, self._stop = anyio.Event(), anyio.Event()
        return self._ready, self._stop
