"""Scenarios over HTTP: the pod server under uvicorn on a loopback port in this process, driven
with ``burst_nli_client`` (overload, soak)."""

from __future__ import annotations

import functools
import math
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import aiohttp
import anyio
import anyio.abc

from burst_nli_client import (
    Client,
    ClientError,
    HttpError,
    JobCancelled,
    JobFailed,
    JobTimedOut,
    JobView,
    RetryPolicy,
    SubmissionUncertain,
    Timeouts,
    WaitTimeout,
)
from loadtest.chaos.ledger import BOUND_S, CLASSIFY_PAIRS_PER_JOB, Ledger, ScenarioReport, classify_inputs, rss_mb, run_all
from loadtest.stats import latency_summary_ms, percentile
from schemas.trace import read_trace
from worker.model import NliModel
from worker.pod import running_server
from worker.settings import Settings

HTTP_TIMEOUTS = Timeouts(connect_s=5.0, request_s=BOUND_S)


NO_RETRY = RetryPolicy(max_attempts=1)
"""Overload and soak see every answer as it came: a load test must not hide 429s behind retries."""


RSS_TOLERANCE_MB = 32.0
"""Soak: RSS is flat when its mean over the last quarter of the load is at most this much above
its mean over the quarter after the warm-up (generous: allocator arenas and caches settle late)."""


JOBS_HELD_TOLERANCE = 0.5
"""Soak: the job store is flat when its mean size over the last quarter of the load is at most
50% (or 20 jobs) above its mean over the quarter after the warm-up."""


def pod_settings(model: NliModel, **overrides: Any) -> Settings:
    """A pod server's settings for ``model`` on its device, with a short warm-up."""
    return Settings(model_name=model.name, device=str(model.device), warmup_max_len=16, **overrides)


def http_client(base_url: str, *, retry: RetryPolicy = NO_RETRY, session: aiohttp.ClientSession | None = None) -> Client:
    return Client.for_pod(base_url, retry=retry, timeouts=HTTP_TIMEOUTS, max_connections=4096, session=session)


async def http_job(client: Client, job_input: dict[str, Any], *, sync: bool) -> tuple[str | None, JobView | None]:
    """One job over HTTP, not retried: ``(state, its COMPLETED status or None)``; state None if
    it did not end in time.

    ``sync``: ``/runsync``; otherwise ``/run`` then ``/status`` polling. ``rejected`` is a 429
    ``overloaded: ...`` with a ``Retry-After``, the answer that tells a caller to come back later;
    any other error status is ``http_<status>``.
    """
    try:
        if sync:
            status = await client.runsync(job_input, wait_s=BOUND_S, timeout_s=BOUND_S)
        else:
            status = await (await client.run(job_input)).wait(timeout_s=BOUND_S)
    except HttpError as err:
        if err.status == 429 and err.code == "overloaded":
            return ("rejected" if err.retry_after_s is not None else "rejected_without_retry_after"), None
        return f"http_{err.status}", None
    except JobFailed as err:
        return err.code or "failed", None
    except JobTimedOut:
        return "timed_out", None
    except JobCancelled:
        return "cancelled", None
    except WaitTimeout:
        return None, None
    except SubmissionUncertain:
        return "submission_uncertain", None
    except ClientError:
        return "connection_failed", None
    return "completed", status


def paced(rate: float) -> Callable[[int], Awaitable[None]]:
    """Open-loop arrivals for ``run_all``: job ``i`` starts ``i / rate`` s after the first."""
    start: float | None = None

    async def arrive(index: int) -> None:
        nonlocal start
        now = time.perf_counter()
        start = now if start is None else start
        delay = start + index / rate - now
        if delay > 0:
            await anyio.sleep(delay)

    return arrive


async def http_overload(
    model: NliModel, seconds: float = 3.0, factor: float = 2.0, max_queue_pairs: int = 160, seed: int = 4
) -> ScenarioReport:
    """Scenario 4 over HTTP: a pod server (uvicorn on loopback, in this process) with a queue of
    ``max_queue_pairs`` meets ``/runsync`` arrivals at ``factor`` x its measured capacity for
    ``seconds``. The excess must be refused at admission (429, ``Retry-After``, ``overloaded:``),
    admitted jobs complete; figures: the refusals' latency as the client saw it, admitted jobs'
    p99 next to the queue's bound (its pairs at capacity), RSS growth, the server's own count."""
    report = ScenarioReport("overload over HTTP")
    async with running_server(pod_settings(model), model=model) as base_url, http_client(base_url) as client:
        capacity = await _measure_http_capacity(client, seed)
    rate = capacity * factor
    inputs = classify_inputs(max(1, int(rate * seconds)), seed)
    rejection_s: list[float] = []
    server_s: list[float] = []
    halves: tuple[list[float], list[float]] = ([], [])  # admitted jobs' latencies by arrival: first, second half
    settings = pod_settings(model, max_queue_pairs=max_queue_pairs)
    async with running_server(settings, model=model) as base_url, http_client(base_url) as client:
        rss_before = rss_mb()

        async def one(index: int, ledger: Ledger) -> None:
            sent = time.perf_counter()
            state, status = await http_job(client, inputs[index], sync=True)
            elapsed = time.perf_counter() - sent
            if status is not None:
                report.latencies_s.append(elapsed)
                halves[index >= len(inputs) // 2].append(elapsed)
                server_s.append(((status.delay_time_ms or 0) + (status.execution_time_ms or 0)) / 1e3)
            elif state is not None and state.startswith("rejected"):
                rejection_s.append(elapsed)
            if state is not None:
                ledger.end(index, state)

        await run_all(report, len(inputs), one, arrivals=paced(rate))
        rss_growth = rss_mb() - rss_before
        server_rejected = await _server_rejections(base_url)
        still = await still_serves_http(client)
        health = await client.health()
    report.figures.update(
        capacity_jobs_per_s=round(capacity, 1),
        arrival_jobs_per_s=round(rate, 1),
        max_queue_pairs=max_queue_pairs,
        queue_bound_ms=round(max_queue_pairs / (capacity * CLASSIFY_PAIRS_PER_JOB) * 1e3, 1),
        p99_ms_first_half=round(percentile(halves[0], 99) * 1e3, 1),
        p99_ms_second_half=round(percentile(halves[1], 99) * 1e3, 1),
        **_ms_summary("server_latency_ms", server_s),
        **_ms_summary("rejection_ms", rejection_s),
        server_rejected=server_rejected,
        server_jobs=sum(health["jobs"].values()),
        rss_growth_mb=round(rss_growth, 1),
        **still,
    )
    return report


async def soak(
    model: NliModel, seconds: float = 120.0, jobs_per_s: float = 60.0, ttl_s: float = 3.0, sample_s: float = 0.5
) -> ScenarioReport:
    """Scenario 7: the bundled peak news minute's jobs, cycled at ``jobs_per_s`` for ``seconds``
    through a pod server (uvicorn on loopback, in this process) with ``JOB_TTL_S=ttl_s``, half by
    ``/runsync``, half by ``/run`` and ``/status`` polling, sampling this process's RSS and the
    jobs the server holds (``/health``) every ``sample_s``. After a warm-up (a fifth of the load,
    5 s at least) both must stay flat (``RSS_TOLERANCE_MB``, ``JOBS_HELD_TOLERANCE``), and once
    the load stops and ``ttl_s`` has passed the server must hold no job at all."""
    report = ScenarioReport("soak")
    inputs = soak_inputs(max(1, int(seconds * jobs_per_s)))
    async with running_server(pod_settings(model, job_ttl_s=ttl_s), model=model) as base_url, http_client(
        base_url
    ) as client:

        async def this_process_mb() -> float:
            return rss_mb()

        figures = await soak_load(report, client, inputs, jobs_per_s, ttl_s, sample_s, this_process_mb)
    report.figures.update(figures)
    return report


async def soak_load(
    report: ScenarioReport, client: Client, inputs: Sequence[dict[str, Any]], jobs_per_s: float, ttl_s: float,
    sample_s: float, memory_mb: Callable[[], Awaitable[float]],
) -> dict[str, Any]:  # fmt: skip
    """The soak's load and samples, whatever serves it: ``inputs`` at ``jobs_per_s`` (half
    ``/runsync``, half ``/run`` and polling), ``memory_mb()`` and the jobs held (``/health``)
    sampled every ``sample_s``, then ``ttl_s`` waited out; its figures."""
    samples: list[tuple[float, float, int]] = []
    started = time.perf_counter()

    async def sample() -> None:
        while True:
            held = sum((await client.health())["jobs"].values())
            samples.append((time.perf_counter() - started, await memory_mb(), held))
            await anyio.sleep(sample_s)

    async def one(index: int, ledger: Ledger) -> None:
        sent = time.perf_counter()
        state, _ = await http_job(client, inputs[index], sync=index % 2 == 0)
        if state == "completed":
            report.latencies_s.append(time.perf_counter() - sent)
        if state is not None:
            ledger.end(index, state)  # outputs are not kept: they would grow this process's RSS

    async with anyio.create_task_group() as sampler:
        sampler.start_soon(sample)
        await run_all(report, len(inputs), one, arrivals=paced(jobs_per_s))
        load_s = time.perf_counter() - started
        await anyio.sleep(ttl_s + 2 * sample_s)  # retention is by time: wait it out, still sampling
        sampler.cancel_scope.cancel()
    held_after_ttl = sum((await client.health())["jobs"].values())
    return {
        "jobs_per_s": jobs_per_s,
        "ttl_s": ttl_s,
        **soak_flatness(samples, load_s, retention_jobs=jobs_per_s * ttl_s),
        "jobs_held_after_ttl": held_after_ttl,
        **await still_serves_http(client),
    }


def soak_inputs(count: int) -> list[dict[str, Any]]:
    """The bundled peak news minute's job inputs (its operation mix), cycled to ``count`` jobs."""
    from loadtest.replay import resolve_trace

    jobs = read_trace(resolve_trace("peak-minute")).jobs
    return [jobs[index % len(jobs)].input for index in range(count)]


def soak_flatness(samples: Sequence[tuple[float, float, int]], load_s: float, *, retention_jobs: float) -> dict[str, Any]:
    """RSS and jobs held, ``(t, rss_mb, jobs)`` samples: flat or not after the warm-up.

    The warm-up is the first fifth of the load (5 s at least); the mean over the quarter of the
    remaining load right after it is compared with the mean over the load's last quarter.
    """
    warmup_s = max(5.0, load_s / 5)
    quarter = max(load_s - warmup_s, 0.0) / 4
    early = [s for s in samples if warmup_s <= s[0] < warmup_s + quarter]
    late = [s for s in samples if load_s - quarter <= s[0] <= load_s]
    steady = [s for s in samples if warmup_s <= s[0] <= load_s]
    rss_early, rss_late = _mean([s[1] for s in early]), _mean([s[1] for s in late])
    held_early, held_late = _mean([s[2] for s in early]), _mean([s[2] for s in late])
    rss_growth = rss_late - rss_early
    return {
        "warmup_s": round(warmup_s, 1),
        "samples": len(samples),
        "rss_mb_start": round(samples[0][1], 1) if samples else math.nan,
        "rss_mb_after_warmup": round(rss_early, 1),
        "rss_mb_end": round(rss_late, 1),
        "rss_growth_mb": round(rss_growth, 1),
        "rss_slope_mb_per_min": round(_slope([(s[0], s[1]) for s in steady]) * 60, 2),
        "rss_flat": rss_growth <= RSS_TOLERANCE_MB,
        "retention_jobs": round(retention_jobs),
        "jobs_held_after_warmup": round(held_early, 1),
        "jobs_held_end": round(held_late, 1),
        "jobs_held_max": max((s[2] for s in steady), default=0),
        "store_flat": held_late <= max(held_early * (1 + JOBS_HELD_TOLERANCE), held_early + 20),
    }


async def _measure_http_capacity(client: Client, seed: int, jobs: int = 200) -> float:
    """Jobs per second a pod server completes when ``jobs`` classify jobs arrive at once."""
    inputs = classify_inputs(jobs, seed + 100)
    started = time.perf_counter()
    async with anyio.create_task_group() as tg:
        for job_input in inputs:
            tg.start_soon(functools.partial(http_job, client, job_input, sync=True))
    return jobs / (time.perf_counter() - started)


async def still_serves_http(client: Client) -> dict[str, Any]:
    """One more job after the scenario: the server must answer it and hold nothing else."""
    state, _ = await http_job(client, {"operation": "classify", "headline": "Fed Raises Rates"}, sync=True)
    health = await client.health()
    jobs = health["jobs"]
    return {
        "serves_after": state == "completed",
        "queue_empty_after": health.get("queue", {}).get("pairs") == 0 and jobs["inQueue"] + jobs["inProgress"] == 0,
    }


async def _server_rejections(base_url: str) -> int:
    """``nli_rejected_total{reason="overloaded"}`` as the server's ``/metrics`` reports it."""
    async with aiohttp.ClientSession() as session, session.get(f"{base_url}/metrics") as response:
        text = await response.text()
    prefix = 'nli_rejected_total{reason="overloaded"} '
    return sum(int(float(line.removeprefix(prefix))) for line in text.splitlines() if line.startswith(prefix))


def _ms_summary(name: str, values_s: Sequence[float]) -> dict[str, float]:
    summary = latency_summary_ms(values_s) if values_s else {}
    return {f"{name}_{key}": summary[key] for key in ("p50", "p99", "max") if key in summary}


def _mean(values: Sequence[float]) -> float:
    return sum(values) / len(values) if values else math.nan


def _slope(points: Sequence[tuple[float, float]]) -> float:
    """Least-squares slope of ``(x, y)`` points (0 for fewer than two)."""
    if len(points) < 2:
        return 0.0
    mean_x, mean_y = _mean([p[0] for p in points]), _mean([p[1] for p in points])
    spread = sum((x - mean_x) ** 2 for x, _ in points)
    return sum((x - mean_x) * (y - mean_y) for x, y in points) / spread if spread else 0.0
