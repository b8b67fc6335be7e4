"""An in-process burst: many classify jobs submitted at once to one engine, and what happened.

This is the project's main job on the embedded offline model: it shows the cross-job batching at
work (jobs → pairs → a few full batches) without a GPU, a network or RunPod.
"""

from __future__ import annotations

import random
import time
from dataclasses import asdict, dataclass

import anyio

from loadtest.headlines import headlines
from loadtest.job_inputs import templated_article
from loadtest.stats import latency_summary_ms
from schemas import JobSchema, build_job_schema
from worker.engine import NliEngine
from worker.engine_host import hosted_engine
from worker.service import Engine, run_job
from worker.settings import Settings

COMPANIES = ("Apple", "Tesla", "Dell", "Nvidia", "Bank of America")


@dataclass(frozen=True, slots=True)
class BurstReport:
    model: str
    device: str
    jobs: int
    failed: int
    pairs: int
    batches: int
    mean_batch_pairs: float
    padding_efficiency: float
    wall_s: float
    jobs_per_s: float
    pairs_per_s: float
    latency_ms: dict[str, float]
    idle_latency_ms: dict[str, float]
    model_load_s: float
    warmup_s: float

    def table(self) -> str:
        rows = [
            ("model", f"{self.model} on {self.device}"),
            ("jobs (failed)", f"{self.jobs} ({self.failed})"),
            ("pairs", f"{self.pairs}"),
            ("batches", f"{self.batches}"),
            ("mean batch (pairs)", f"{self.mean_batch_pairs:.1f}"),
            ("padding efficiency", f"{self.padding_efficiency:.3f}"),
            ("burst wall time", f"{self.wall_s * 1000:.1f} ms"),
            ("throughput", f"{self.jobs_per_s:.1f} jobs/s, {self.pairs_per_s:.1f} pairs/s"),
            ("burst latency", _percentiles(self.latency_ms)),
            ("one job alone", _percentiles(self.idle_latency_ms)),
            ("model load, warm-up", f"{self.model_load_s:.2f} s, {self.warmup_s:.2f} s"),
        ]
        width = max(len(name) for name, _ in rows)
        return "\n".join(f"{name:<{width}}  {value}" for name, value in rows)


def _percentiles(summary: dict[str, float]) -> str:
    return "  ".join(f"{name} {value:.1f} ms" for name, value in summary.items())


def classify_jobs(count: int, *, company_every: int = 1) -> list[dict]:
    """``count`` classify job inputs, each about a different headline (``distinct_headlines``);
    every ``company_every``-th names a company (5 label hypotheses + 1 company hypothesis: 6
    pairs a job). No two jobs share a pair, so a burst measures batching alone, not the merging
    of identical pairs."""
    jobs = []
    for i, headline in enumerate(distinct_headlines(count)):
        job: dict = {"operation": "classify", "headline": headline}
        if company_every and i % company_every == 0:
            job["company"] = COMPANIES[i % len(COMPANIES)]
        jobs.append(job)
    return jobs


def distinct_headlines(count: int) -> list[str]:
    """``count`` different headlines: the real ones first, then templated ones in their style
    (a fixed seed, so every run gets the same)."""
    chosen = list(dict.fromkeys(headlines()))[:count]
    seen, rng = set(chosen), random.Random(0)
    while len(chosen) < count:
        headline = templated_article(rng).headline
        if headline not in seen:
            seen.add(headline)
            chosen.append(headline)
    return chosen


@dataclass(frozen=True, slots=True)
class BurstRun:
    """One burst against a running engine: its wall time, latencies and the batches it caused."""

    jobs: int
    failed: int
    wall_s: float
    latencies_s: list[float]
    batches: int
    pairs: int
    padding_efficiency: float


async def submit_together(engine: Engine, schema: JobSchema, job_inputs: list[dict]) -> tuple[int, float, list[float]]:
    """Submit every job at once through the service path and wait for all of them: (jobs that
    ended in an error, wall seconds, each job's latency). Any engine: one process's or a front's."""
    latencies: list[float] = []
    failures = 0

    async def one(job_input: dict) -> None:
        nonlocal failures
        output = await run_job(engine, schema, job_input)
        latencies.append(time.perf_counter() - started)
        failures += "error" in output

    started = time.perf_counter()
    async with anyio.create_task_group() as tg:
        for job_input in job_inputs:
            tg.start_soon(one, job_input)
    return failures, time.perf_counter() - started, latencies


async def burst(engine: NliEngine, schema: JobSchema, job_inputs: list[dict]) -> BurstRun:
    """Submit every job at once through the service path and wait for all of them."""
    stats = engine.batcher.stats
    batches0, items0, real0, padded0 = stats.batches, stats.items, stats.real_tokens, stats.padded_tokens
    failures, wall_s, latencies = await submit_together(engine, schema, job_inputs)
    padded = stats.padded_tokens - padded0
    return BurstRun(
        jobs=len(job_inputs),
        failed=failures,
        wall_s=wall_s,
        latencies_s=latencies,
        batches=stats.batches - batches0,
        pairs=stats.items - items0,
        padding_efficiency=(stats.real_tokens - real0) / padded if padded else 1.0,
    )


async def one_at_a_time(engine: Engine, schema: JobSchema, job_inputs: list[dict]) -> list[float]:
    """Latency of each job submitted alone: what a quiet minute's job sees."""
    latencies = []
    for job_input in job_inputs:
        started = time.perf_counter()
        await run_job(engine, schema, job_input)
        latencies.append(time.perf_counter() - started)
    return latencies


async def run_burst(settings: Settings, *, jobs: int, idle_jobs: int = 10) -> BurstReport:
    """Time ``idle_jobs`` jobs one at a time, then ``jobs`` jobs submitted at once."""
    schema = build_job_schema(settings.limits)
    async with hosted_engine(settings) as (engine, host):
        idle_latencies = await one_at_a_time(engine, schema, classify_jobs(idle_jobs))
        run = await burst(engine, schema, classify_jobs(jobs))
        return BurstReport(
            model=engine.model.name,
            device=str(engine.model.device),
            jobs=run.jobs,
            failed=run.failed,
            pairs=run.pairs,
            batches=run.batches,
            mean_batch_pairs=run.pairs / run.batches if run.batches else 0.0,
            padding_efficiency=run.padding_efficiency,
            wall_s=run.wall_s,
            jobs_per_s=run.jobs / run.wall_s,
            pairs_per_s=run.pairs / run.wall_s,
            latency_ms=latency_summary_ms(run.latencies_s),
            idle_latency_ms=latency_summary_ms(idle_latencies),
            model_load_s=host.startup.model_load_s if host.startup else 0.0,
            warmup_s=host.startup.warmup_s if host.startup else 0.0,
        )


def report_dict(report: BurstReport) -> dict:
    return asdict(report)
