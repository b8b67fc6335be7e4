"""The three phases every server row runs, and one way of measuring them for every server.

A driver sends jobs to one server: ``burst`` (every job at once), ``sustained`` (a closed loop
keeping ``concurrency`` jobs in flight for ``duration_s``) and ``idle`` (one job at a time), and
reads the engine's batch totals where there is an engine. ``measure`` runs the phases the same way
for burst-nli in process, its pod over HTTP, the trivial server and LitServe, so their rows compare.
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Protocol

import aiohttp
import anyio
from prometheus_client import CollectorRegistry

from bench.batch_totals import BatchTotals, registry_totals, text_totals
from bench.common import PAIRS_PER_JOB
from bench.http_load import ClientPool, PhaseResult, HttpEndpoint
from loadtest.burst import one_at_a_time, submit_together
from schemas import JobSchema
from worker.service import Engine, run_job


@dataclass(frozen=True, slots=True)
class Scale:
    """How much work each phase gets: options of ``bench/gpu.py``."""

    jobs: int
    repeats: int
    sustained_s: float
    concurrency: int
    idle_jobs: int
    client_procs: int


class Driver(Protocol):
    async def burst(self, job_inputs: Sequence[dict]) -> PhaseResult: ...

    async def sustained(self, job_inputs: Sequence[dict], concurrency: int, duration_s: float) -> PhaseResult: ...

    async def idle(self, job_inputs: Sequence[dict]) -> PhaseResult: ...

    async def totals(self) -> BatchTotals | None: ...


class InprocDriver:
    """Jobs through the service path of an engine in this process (what the serverless handler
    runs): one process's, or a split worker's front (``RemoteEngine``)."""

    def __init__(self, engine: Engine, schema: JobSchema, registry: CollectorRegistry) -> None:
        self.engine, self.schema, self.registry = engine, schema, registry

    async def burst(self, job_inputs: Sequence[dict]) -> PhaseResult:
        failed, wall_s, latencies = await submit_together(self.engine, self.schema, list(job_inputs))
        return PhaseResult(len(job_inputs), failed, wall_s, latencies)

    async def sustained(self, job_inputs: Sequence[dict], concurrency: int, duration_s: float) -> PhaseResult:
        started = time.perf_counter()
        stop_at = started + duration_s
        jobs = itertools.cycle(job_inputs)
        latencies: list[float] = []
        failed = 0

        async def sender() -> None:
            nonlocal failed
            while time.perf_counter() < stop_at:
                sent = time.perf_counter()
                output = await run_job(self.engine, self.schema, next(jobs))
                latencies.append(time.perf_counter() - sent)
                failed += "error" in output

        async with anyio.create_task_group() as tg:
            for _ in range(concurrency):
                tg.start_soon(sender)
        return PhaseResult(len(latencies), failed, time.perf_counter() - started, latencies)

    async def idle(self, job_inputs: Sequence[dict]) -> PhaseResult:
        started = time.perf_counter()
        latencies = await one_at_a_time(self.engine, self.schema, list(job_inputs))
        return PhaseResult(len(latencies), 0, time.perf_counter() - started, latencies)

    async def totals(self) -> BatchTotals | None:
        return registry_totals(self.registry)


class HttpDriver:
    """Jobs over loopback HTTP from the client processes; batch totals from ``/metrics`` if given
    (``process``: that process's alone, in a pod of several)."""

    def __init__(
        self, pool: ClientPool, target: HttpEndpoint, metrics_url: str | None = None, process: str | None = None
    ) -> None:
        self.pool, self.target, self.metrics_url, self.process = pool, target, metrics_url, process

    async def burst(self, job_inputs: Sequence[dict]) -> PhaseResult:
        return await self.pool.burst(self.target, job_inputs)

    async def sustained(self, job_inputs: Sequence[dict], concurrency: int, duration_s: float) -> PhaseResult:
        return await self.pool.sustained(self.target, job_inputs, concurrency=concurrency, duration_s=duration_s)

    async def idle(self, job_inputs: Sequence[dict]) -> PhaseResult:
        return await self.pool.idle(self.target, job_inputs)

    async def totals(self) -> BatchTotals | None:
        if self.metrics_url is None:
            return None
        async with aiohttp.ClientSession() as session, session.get(self.metrics_url) as response:
            return text_totals(await response.text(), self.process)


async def measure(driver: Driver, scale: Scale, jobs: Sequence[dict], loop_jobs: Sequence[dict]) -> dict:
    """Warm-up burst, ``repeats`` timed bursts (the median kept), a sustained loop, idle jobs."""
    await driver.burst(loop_jobs[: max(scale.jobs, scale.concurrency)])  # warm: connections, shapes
    bursts = [await _phase(driver, lambda: driver.burst(jobs)) for _ in range(scale.repeats)]
    median = sorted(bursts, key=lambda phase: phase["wall_ms"])[(len(bursts) - 1) // 2]
    sustained = await _phase(driver, lambda: driver.sustained(loop_jobs, scale.concurrency, scale.sustained_s))
    idle = await driver.idle(jobs[: scale.idle_jobs])
    return {
        "burst": {**median, "repeats": len(bursts), "walls_ms": [phase["wall_ms"] for phase in bursts]},
        "sustained": {**sustained, "concurrency": scale.concurrency, "duration_s": scale.sustained_s},
        "idle": {"jobs": idle.requests, "failed": idle.failed, **_latencies(idle)},
    }


async def _phase(driver: Driver, run: Callable[[], Awaitable[PhaseResult]]) -> dict:
    """Run one phase between two readings of the batch totals."""
    before = await driver.totals()
    result = await run()
    after = await driver.totals()
    phase = phase_dict(result)
    if before is not None and after is not None:
        phase.update((after - before).summary(result.wall_s, result.requests))
    return phase


def phase_dict(result: PhaseResult) -> dict:
    """Requests, failures, wall time, throughput and latencies of one phase."""
    return {
        "jobs": result.requests,
        "failed": result.failed,
        "wall_ms": round(result.wall_s * 1000, 1),
        "jobs_per_s": round(result.per_s, 1),
        "pairs_per_s": round(result.per_s * PAIRS_PER_JOB, 1),
        **_latencies(result),
    }


def _latencies(result: PhaseResult) -> dict:
    """p50 and p99 of the jobs that succeeded; None when none did (JSON has no NaN)."""
    if not result.latencies_s:
        return {"p50_ms": None, "p99_ms": None}
    summary = result.latency_ms()
    return {"p50_ms": summary["p50"], "p99_ms": summary["p99"]}
