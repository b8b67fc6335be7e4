"""A worker in either layout, for tests that must hold in both: one process, or a front process
with a ``RemoteEngine`` and a model process (here: the same event loop, a real Unix socket)."""

from __future__ import annotations

import tempfile
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import anyio

from worker.engine import NliEngine
from worker.engine_host import EngineHost
from worker.model import NliModel
from worker.service import Engine
from worker.settings import Settings

LAYOUTS = ("one-process", "split")


@asynccontextmanager
async def started(layout: str, settings: Settings, model: NliModel) -> AsyncIterator[tuple[Engine, NliEngine]]:
    """``(front, engine)``: what a front end submits jobs to, and the engine that batches them
    (the same object in one process)."""
    if layout == "one-process":
        async with NliEngine.start(settings, model=model) as engine:
            yield engine, engine
        return
    async with model_process(settings, model) as served, connected(settings, served.path, model) as front:
        yield front, served.engine


@dataclass(frozen=True)
class Served:
    """A model process's server running in the test's event loop."""

    path: Path
    """Its socket."""
    engine: NliEngine
    host: EngineHost


@asynccontextmanager
async def model_process(settings: Settings, model: NliModel, path: Path | None = None) -> AsyncIterator[Served]:
    """A model process's server in this event loop (on ``path``, else a new socket), until the
    block ends or ``host.stop()``."""
    from worker.split.model_process import serve_model

    host = EngineHost(settings, model=model)
    with tempfile.TemporaryDirectory(prefix="burst-nli-") as folder:
        path = path or Path(folder) / "model.sock"
        async with anyio.create_task_group() as tasks:
            ready = anyio.Event()
            tasks.start_soon(partial(serve_model, host, path, ready=ready))
            await ready.wait()
            assert host.engine is not None
            try:
                yield Served(path, host.engine, host)
            finally:
                host.stop()


@asynccontextmanager
async def connected(settings: Settings, path: Path, model: NliModel) -> AsyncIterator[Engine]:
    from worker.split.remote_engine import RemoteEngine

    async with RemoteEngine.connect(settings, path, model=model) as front:
        yield front


async def settled(front: Engine) -> None:
    """Return once everything enqueued so far has been admitted, held or refused by the engine
    and every task that follows from it waits: the model process's engine included."""
    sync = getattr(front, "sync", None)
    if sync is not None:
        await sync()
    await anyio.wait_all_tasks_blocked()
