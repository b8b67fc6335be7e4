"""The ``inproc`` target: jobs go through the worker's service path to an engine in this process.

The same ``execute_job`` the serverless handler and the pod server call, so a replay measures the
batching exactly as deployed, minus the network. Every batch is recorded (``on_batch``), so the
report can plot batch sizes; model load and warm-up happen before the replay's clock starts.
"""

from __future__ import annotations

import sys
import time
from collections.abc import AsyncIterator
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import Any

import anyio

from batching import BatchStats
from loadtest.targets import BatchRecord, JobResult, TargetError, TargetOptions
from schemas import JobSchema, build_job_schema
from worker.engine import NliEngine
from worker.engine_host import hosted_engine
from worker.model import NliModel
from worker.service import execute_job
from worker.settings import Settings, SettingsError


class InprocTarget:
    """``submit`` runs one job through ``execute_job`` on a running ``NliEngine``."""

    def __init__(self, engine: NliEngine, schema: JobSchema, batches: list[BatchRecord]) -> None:
        self.engine = engine
        self.schema = schema
        self.batches: list[BatchRecord] | None = batches
        self.name = f"inproc {engine.model.name} on {engine.model.device}"

    async def submit(self, job_input: dict[str, Any]) -> JobResult:
        outcome = await execute_job(self.engine, self.schema, job_input)
        error = None if outcome.error is None else str(outcome.error)
        return JobResult(status=outcome.status, error=error, pairs=outcome.pairs)

    @classmethod
    @asynccontextmanager
    async def start(cls, settings: Settings, *, model: NliModel | None = None) -> AsyncIterator[InprocTarget]:
        """Load and warm the model (or use ``model``), start the engine, record its batches."""
        batches: list[BatchRecord] = []

        def record(batch: BatchStats) -> None:
            batches.append(
                BatchRecord(
                    at=anyio.current_time(),
                    pairs=batch.items,
                    jobs=batch.jobs,
                    real_tokens=batch.real_tokens,
                    padded_tokens=batch.padded_tokens,
                    compute_s=batch.compute_s,
                    merged_pairs=batch.merged_items,
                )
            )

        async with hosted_engine(settings, model=model, on_batch=record) as (engine, _):
            yield cls(engine, build_job_schema(settings.limits), batches)


def open_target(spec: str, options: TargetOptions) -> AbstractAsyncContextManager[InprocTarget]:
    """Settings from the environment (``MAX_BATCH_TOKENS``...) with the command's model and device."""
    try:
        settings = Settings.from_env(model_name=options.model, device=options.device, log_level=options.log_level)
    except SettingsError as err:
        raise TargetError(str(err)) from err
    return _announced(settings)


@asynccontextmanager
async def _announced(settings: Settings) -> AsyncIterator[InprocTarget]:
    """``InprocTarget.start``, saying on stderr what the seconds of load and warm-up are."""
    print(f"loading {settings.model_name} and warming it up; the replay starts once it is ready",
          file=sys.stderr, flush=True)  # fmt: skip
    started = time.monotonic()
    async with InprocTarget.start(settings) as target:
        print(f"model ready in {time.monotonic() - started:.1f} s", file=sys.stderr, flush=True)
        yield target
