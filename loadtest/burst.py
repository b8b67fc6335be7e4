"""An in-process burst: many classify jobs submitted at once to one engine, and what happened.

This is the project's main job on the embedded offline model: it shows the cross-job batching at
work (jobs → pairs → a few full batches) without a GPU, a network or RunPod.
"""

from __future__ import annotations

import itertools
import time
from dataclasses import asdict, dataclass

import anyio

from loadtest.headlines import headlines
from loadtest.stats import latency_summary_ms
from schemas import build_job_schema
from worker.engine import NliEngine
from worker.service import run_job
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
    """``count`` classify job inputs over the real headlines; every ``company_every``-th names a
    company (5 label hypotheses + 1 company hypothesis: 6 pairs a job)."""
    jobs = []
    for i, headline in zip(range(count), itertools.cycle(headlines())):
        job: dict = {"operation": "classify", "headline": headline}
        if company_every and i % company_every == 0:
            job["company"] = COMPANIES[i % len(COMPANIES)]
        jobs.append(job)
    return jobs


async def run_burst(settings: Settings, *, jobs: int, idle_jobs: int = 10) -> BurstReport:
    """Time ``idle_jobs`` jobs one at a time, then ``jobs`` jobs submitted at once."""
    schema = build_job_schema(settings.limits)
    async with NliEngine.start(settings) as engine:
        idle_latencies = []
        for job_input in classify_jobs(idle_jobs):
            started = time.perf_counter()
            await run_job(engine, schema, job_input)
            idle_latencies.append(time.perf_counter() - started)

        before = engine.batcher.stats
        batches0, items0, real0, padded0 = before.batches, before.items, before.real_tokens, before.padded_tokens
        latencies: list[float] = []
        failures = 0

        async def one(job_input: dict) -> None:
            nonlocal failures
            output = await run_job(engine, schema, job_input)
            latencies.append(time.perf_counter() - burst_started)
            failures += "error" in output

        burst_started = time.perf_counter()
        async with anyio.create_task_group() as tg:
            for job_input in classify_jobs(jobs):
                tg.start_soon(one, job_input)
        wall_s = time.perf_counter() - burst_started

        stats = engine.batcher.stats
        batches, pairs = stats.batches - batches0, stats.items - items0
        padded = stats.padded_tokens - padded0
        return BurstReport(
            model=engine.model.name,
            device=str(engine.model.device),
            jobs=jobs,
            failed=failures,
            pairs=pairs,
            batches=batches,
            mean_batch_pairs=pairs / batches if batches else 0.0,
            padding_efficiency=(stats.real_tokens - real0) / padded if padded else 1.0,
            wall_s=wall_s,
            jobs_per_s=jobs / wall_s,
            pairs_per_s=pairs / wall_s,
            latency_ms=latency_summary_ms(latencies),
            idle_latency_ms=latency_summary_ms(idle_latencies),
            model_load_s=engine.startup.model_load_s,
            warmup_s=engine.startup.warmup_s,
        )


def report_dict(report: BurstReport) -> dict:
    return asdict(report)
