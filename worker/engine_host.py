"""The engine's life, for both front ends: load and time the model, warm it, serve, fail, stop.

The serverless worker and the pod differ only in when the model loads: the serverless worker loads
and warms it, and takes the start-up heap out of the collector's reach, before the SDK's loop takes
a job (``preload``), so a cold start ends when the worker can serve; the pod answers HTTP at once
and loads in the background (``serve`` does it off the event loop). Either way ``serve`` runs the
engine in one task for the host's life (the batcher's anyio task group must be entered and left by
the same task), concurrent callers of ``wait_ready`` all wait for the same readiness, and a model
or engine that fails is logged once and kept as the ``Unavailable`` every job is answered with.
This is the one place that sets the start-up metrics (load and warm-up seconds, ready).
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass

import anyio
import structlog

from batching import BatchStats, Unavailable
from worker.engine import NliEngine, tune_garbage_collector
from worker.metrics import Metrics
from worker.model import NliModel
from worker.settings import Settings

log = structlog.get_logger("worker.engine_host")


@dataclass(frozen=True, slots=True)
class Startup:
    """What starting took: ``model_load_s`` is 0 for a model handed in already loaded."""

    model_load_s: float
    warmup_s: float


class EngineHost:
    """One engine's life: ``preload`` (optional), then ``serve`` in a task until ``stop``."""

    def __init__(
        self,
        settings: Settings,
        *,
        model: NliModel | None = None,
        load_model: Callable[[], NliModel] | None = None,
        metrics: Metrics | None = None,
        on_batch: Callable[[BatchStats], None] | None = None,
    ) -> None:
        """``model`` skips loading (tests share one); ``load_model`` replaces ``NliModel.load``;
        ``on_batch`` sees every batch the engine runs."""
        self.settings = settings
        self.metrics = metrics
        self.on_batch = on_batch
        self.engine: NliEngine | None = None
        """The running engine; None before it serves and after it stopped or failed."""
        self.failure: Unavailable | None = None
        """Why the model or the engine stopped, once it has."""
        self.startup: Startup | None = None
        self._model = model
        self._loaded_s = 0.0
        self._load_model = load_model or (
            lambda: NliModel.load(settings.model_name, device=settings.device, dtype=settings.dtype)
        )
        self._ready: anyio.Event | None = None
        self._stop: anyio.Event | None = None

    def preload(self) -> None:
        """Load and warm the model now, on this thread (before an event loop runs). A failure is
        logged and kept: every job is then answered ``unavailable``."""
        if self.startup is None and self.failure is None:
            self._load_and_warm()

    async def serve(self) -> None:
        """Load and warm (off the loop) unless preloaded, run the engine until ``stop``."""
        ready, stop = self._events()
        try:
            if self.startup is None and self.failure is None:
                await anyio.to_thread.run_sync(self._load_and_warm, abandon_on_cancel=True)
            if self.failure is not None or self._model is None or self.startup is None:
                return
            async with NliEngine.start(
                self.settings, model=self._model, metrics=self.metrics, on_batch=self.on_batch
            ) as engine:
                self.engine = engine
                if self.metrics is not None:
                    self.metrics.observe_startup(self.startup.model_load_s, self.startup.warmup_s)
                    self.metrics.observe_build(model=engine.model.name, device=str(engine.model.device),
                                               dtype=str(engine.model.dtype).removeprefix("torch."))  # fmt: skip
                ready.set()
                log.info("engine_ready", model=engine.model.name, device=str(engine.model.device))
                await stop.wait()
        except Exception as err:
            log.exception("engine_failed")
            self.failure = Unavailable(f"the engine failed: {type(err).__name__}: {err}")
        finally:
            self.engine = None
            if self.metrics is not None:
                self.metrics.model_ready.set(0)
            ready.set()

    async def wait_ready(self) -> NliEngine:
        """The engine once it serves; ``Unavailable`` if it failed or has stopped."""
        ready, _ = self._events()
        await ready.wait()
        if self.engine is None:
            raise self.failure or Unavailable("the engine has stopped")
        return self.engine

    def stop(self) -> None:
        """Let ``serve`` return: the engine stops, and the batcher fails what is in flight."""
        _, stop = self._events()
        stop.set()

    def served_on(self) -> tuple[str, str] | None:
        """The model's device and dtype while the engine serves."""
        engine = self.engine
        if engine is None:
            return None
        return str(engine.model.device), str(engine.model.dtype).removeprefix("torch.")

    async def queue_state(self) -> tuple[int, int] | None:
        """Pairs and tokens queued (the waiting room's too) while the engine serves."""
        engine = self.engine
        return None if engine is None else (engine.queued_pairs, engine.queued_tokens)

    def _events(self) -> tuple[anyio.Event, anyio.Event]:
        if self._ready is None or self._stop is None:  # made in the event loop, on first use
            self._ready, self._stop = anyio.Event(), anyio.Event()
        return self._ready, self._stop

    def _load_and_warm(self) -> None:
        settings = self.settings
        try:
            if self._model is None:
                started = time.perf_counter()
                self._model = self._load_model()
                self._loaded_s = time.perf_counter() - started
            warmup_s = self._model.warm_up(settings.warmup_max_len)
        except Exception as err:
            log.exception("model_load_failed", model=settings.model_name)
            self.failure = Unavailable(f"model failed to load: {type(err).__name__}: {err}")
            return
        tune_garbage_collector()  # serverless: before the SDK's loop, so no job waits for it
        self.startup = Startup(model_load_s=self._loaded_s, warmup_s=warmup_s)
        log.info("model_loaded", model=self._model.name, device=str(self._model.device),
                 model_load_s=round(self._loaded_s, 3), warmup_s=round(warmup_s, 3))  # fmt: skip


@asynccontextmanager
async def hosted_engine(
    settings: Settings,
    *,
    model: NliModel | None = None,
    metrics: Metrics | None = None,
    on_batch: Callable[[BatchStats], None] | None = None,
) -> AsyncIterator[tuple[NliEngine, EngineHost]]:
    """``async with hosted_engine(settings) as (engine, host):`` load, warm and serve, then stop;
    for in-process load tests that want what a front end runs."""
    host = EngineHost(settings, model=model, metrics=metrics, on_batch=on_batch)
    async with anyio.create_task_group() as tasks:
        tasks.start_soon(host.serve, name="nli-engine")
        try:
            yield await host.wait_ready(), host
        finally:
            host.stop()
