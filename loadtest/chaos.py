"""Reliability scenarios: faults, cancellations, overload, deadlines, soak and a worker restart.

The in-process scenarios drive ``NliEngine`` through the service path (``admit_job`` /
``finish_job``, as both front ends do) with faults injected by ``loadtest.faults``; the HTTP ones
drive the pod server with ``burst_nli_client``: uvicorn on a loopback port in this process
(overload, soak), or ``python -m worker pod`` as a process that is killed and started again
(restart). Each returns a ``ScenarioReport`` that accounts for every submitted job: each must end
in exactly one terminal state (completed, failed, rejected, timed out or cancelled), none lost,
none still running when the bound is up. The tests in ``tests/reliability`` assert on these
reports; ``python -m loadtest chaos`` prints them (the figures in RELIABILITY.md).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import functools
import json
import math
import os
import random
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import anyio
import anyio.abc

from batching import ServiceError
from loadtest.faults import FaultyModel, poison_token_id
from loadtest.headlines import headlines
from loadtest.stats import latency_summary_ms, percentile
from schemas import DEFAULT_SCHEMA, Limits
from schemas.trace import read_trace
from burst_nli_client import (
    REFUSED_STATUSES,
    Backoff,
    Client,
    ClientError,
    ConnectionFailed,
    HttpError,
    SubmittedJob,
    JobCancelled,
    JobFailed,
    JobView,
    JobTimedOut,
    NotFound,
    RetryPolicy,
    SubmissionUncertain,
    Timeouts,
    WaitTimeout,
)
from worker.engine import NliEngine
from worker.model import NliModel
from worker.pod import running_server
from worker.service import admit_job, execute_job, finish_job
from worker.settings import Settings

BOUND_S = 60.0
"""Longest a scenario waits for its jobs to end before it counts the rest as hung."""


@dataclass(slots=True)
class ScenarioReport:
    name: str
    submitted: int = 0
    ended: Counter[str] = field(default_factory=Counter)
    """Terminal states: completed, cancelled, rejected (overloaded at admission), or an error code."""
    double_ended: int = 0
    """Jobs that reached a second terminal state (must be 0)."""
    hung: int = 0
    """Jobs not ended within the bound (must be 0)."""
    wrong: int = 0
    """Completed jobs whose output differs from the same job run alone (must be 0)."""
    latencies_s: list[float] = field(default_factory=list)
    """Admitted jobs that completed."""
    figures: dict[str, Any] = field(default_factory=dict)

    @property
    def lost(self) -> int:
        """Submitted jobs with no terminal state that were not counted as hung either."""
        return self.submitted - sum(self.ended.values()) - self.hung

    def as_dict(self) -> dict[str, Any]:
        return {
            "scenario": self.name,
            "submitted": self.submitted,
            "ended": dict(self.ended),
            "lost": self.lost,
            "hung": self.hung,
            "double_ended": self.double_ended,
            "wrong": self.wrong,
            "latency_ms": latency_summary_ms(self.latencies_s) if self.latencies_s else {},
            **self.figures,
        }


class Ledger:
    """Every job's terminal state, set once; wakes the waiter when all have ended."""

    def __init__(self, report: ScenarioReport, total: int) -> None:
        self.report = report
        self.total = total
        self.states: dict[int, str] = {}
        self.outputs: dict[int, dict[str, Any]] = {}
        self.all_ended = anyio.Event()

    def end(self, index: int, state: str, output: dict[str, Any] | None = None) -> None:
        if index in self.states:
            self.report.double_ended += 1
            return
        self.states[index] = state
        self.report.ended[state] += 1
        if output is not None:
            self.outputs[index] = output
        if len(self.states) == self.total:
            self.all_ended.set()


async def run_all(
    report: ScenarioReport,
    count: int,
    job: Callable[[int, Ledger], Awaitable[None]],
    *,
    arrivals: Callable[[int], Awaitable[None]] | None = None,
) -> Ledger:
    """Start ``job(i, ledger)`` for each of ``count`` jobs (``arrivals(i)`` awaited before job
    ``i``), wait for all of them to end in the ledger; a job still running ``BOUND_S`` after the
    last arrival counts as hung."""
    ledger = Ledger(report, count)
    report.submitted = count
    async with anyio.create_task_group() as tg:
        for index in range(count):
            if arrivals is not None:
                await arrivals(index)
            tg.start_soon(job, index, ledger)
        with anyio.move_on_after(BOUND_S):
            await ledger.all_ended.wait()
        report.hung = ledger.total - len(ledger.states)
        tg.cancel_scope.cancel()
    return ledger


async def run_jobs(
    engine: NliEngine,
    inputs: Sequence[dict[str, Any]],
    report: ScenarioReport,
    *,
    arrivals: Callable[[int], Awaitable[None]] | None = None,
    scopes: dict[int, anyio.CancelScope] | None = None,
) -> Ledger:
    """Submit every input as a job (``arrivals(i)`` is awaited before job ``i``), wait for all.

    Jobs run in their own cancel scopes (exposed through ``scopes``) so a scenario can cancel
    them at any moment; a job still running after ``BOUND_S`` counts as hung.
    """
    scopes = {} if scopes is None else scopes

    async def one(index: int, ledger: Ledger) -> None:
        with anyio.CancelScope() as scope:
            scopes[index] = scope
            arrived = time.perf_counter()
            try:
                admitted = admit_job(engine, DEFAULT_SCHEMA, inputs[index], arrived=arrived)
            except ServiceError as err:
                ledger.end(index, "rejected" if err.code == "overloaded" else err.code)
                report.figures.setdefault("_admission_s", []).append(time.perf_counter() - arrived)
                return
            outcome = await finish_job(admitted)
            if outcome.error is None:
                report.latencies_s.append(outcome.latency_s)
            ledger.end(index, outcome.status, outcome.output)
        if scope.cancelled_caught:
            ledger.end(index, "cancelled")

    ledger = await run_all(report, len(inputs), one, arrivals=arrivals)
    rejections = report.figures.pop("_admission_s", [])
    if rejections:
        report.figures["admission_ms_max"] = round(max(rejections) * 1e3, 3)
    return ledger


async def reference_outputs(engine: NliEngine, inputs: Sequence[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Each distinct input's output when it runs alone, keyed by its JSON."""
    outputs: dict[str, dict[str, Any]] = {}
    for job_input in inputs:
        key = json.dumps(job_input, sort_keys=True)
        if key not in outputs:
            outputs[key] = (await execute_job(engine, DEFAULT_SCHEMA, job_input)).to_output()
    return outputs


def count_wrong(ledger: Ledger, inputs: Sequence[dict[str, Any]], reference: dict[str, dict[str, Any]]) -> int:
    return sum(
        not outputs_match(output, reference[json.dumps(inputs[index], sort_keys=True)])
        for index, output in ledger.outputs.items()
    )


def outputs_match(a: Any, b: Any, tolerance: float = 1e-4) -> bool:
    """Equal structure and values, floats within ``tolerance`` (batch-mates change padding only)."""
    if isinstance(a, float) and isinstance(b, float):
        return math.isclose(a, b, abs_tol=tolerance)
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(outputs_match(a[k], b[k], tolerance) for k in a)
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(outputs_match(x, y, tolerance) for x, y in zip(a, b))
    return a == b


def classify_inputs(count: int, seed: int = 0) -> list[dict[str, Any]]:
    """``count`` classify jobs over the real headlines, a third with a company."""
    rng = random.Random(seed)
    pool = headlines()
    companies = ("Apple", "Tesla", "Nvidia")
    jobs: list[dict[str, Any]] = []
    for index in range(count):
        job: dict[str, Any] = {"operation": "classify", "headline": rng.choice(pool)}
        if index % 3 == 0:
            job["company"] = companies[index % len(companies)]
        jobs.append(job)
    return jobs


def engine_settings(**overrides: Any) -> Settings:
    return Settings(**{"device": "cpu", "warmup_max_len": 16, "max_batch_pairs": 64, "max_batch_tokens": 4096,
                       **overrides})  # fmt: skip


# ---- the scenarios ------------------------------------------------------------------------------


async def cancel_storm(model: NliModel, jobs: int = 1000, seed: int = 0) -> ScenarioReport:
    """Half the jobs cancelled at random moments: while queued, while their batch is being
    formed (collated), and while it runs. The rest must complete with the right outputs."""
    report = ScenarioReport("cancel storm")
    rng = random.Random(seed)
    inputs = classify_inputs(jobs, seed)
    faulty, module = FaultyModel.wrap(model)
    chosen = rng.sample(range(jobs), jobs // 2)
    phases: dict[str, list[int]] = {"queued": [], "forming": [], "running": []}
    for index in chosen:
        phases[rng.choice(list(phases))].append(index)
    for pending in phases.values():
        rng.shuffle(pending)
    scopes: dict[int, anyio.CancelScope] = {}
    loop = asyncio.get_running_loop()
    requested: Counter[str] = Counter()

    def cancel_some(phase: str, count: int) -> None:
        """Called from the collate or model thread: cancel jobs of this phase already submitted."""
        pending = phases[phase]
        for _ in range(min(count, len(pending))):
            index = pending.pop()
            scope = scopes.get(index)
            if scope is None:
                pending.insert(0, index)  # not submitted yet: try again at a later batch
                continue
            requested[phase] += 1
            loop.call_soon_threadsafe(scope.cancel)

    collate = faulty.collate

    def collate_and_cancel(pairs: Any) -> Any:
        cancel_some("forming", 8)
        return collate(pairs)

    faulty.collate = collate_and_cancel  # type: ignore[method-assign]
    async with NliEngine.start(engine_settings(), model=faulty) as engine:
        reference = await reference_outputs(engine, inputs)
        module.on_forward = lambda pairs: cancel_some("running", 8)

        async def arrivals(index: int) -> None:
            if index % 50 == 0:  # waves of 50 jobs, with batches running between them
                cancel_some("queued", len(phases["queued"]))
                await anyio.sleep(0.002)

        ledger = await run_jobs(engine, inputs, report, arrivals=arrivals, scopes=scopes)
        module.on_forward = None
        report.wrong = count_wrong(ledger, inputs, reference)
        report.figures.update(cancel_requested=sum(requested.values()), **await _still_serves(engine))
        report.figures.update(_engine_figures(engine))
    return report


async def poison_pair(model: NliModel, jobs: int = 200, seed: int = 1) -> ScenarioReport:
    """One job's pair makes the forward pass raise inside a burst: only that job fails."""
    report = ScenarioReport("poison pair")
    inputs = classify_inputs(jobs, seed)
    poisoned = jobs // 2
    inputs[poisoned] = {"operation": "classify", "headline": "A zebra escapes the zoo"}
    faulty, module = FaultyModel.wrap(model)
    async with NliEngine.start(engine_settings(), model=faulty) as engine:
        reference = await reference_outputs(engine, inputs[:poisoned] + inputs[poisoned + 1:])
        module.poison_id = poison_token_id(model, "zebra")
        ledger = await run_jobs(engine, inputs, report)
        report.wrong = count_wrong(ledger, inputs, reference)
        report.figures["poisoned_job_state"] = ledger.states.get(poisoned)
        module.poison_id = None
        report.figures.update(**await _still_serves(engine), **_engine_figures(engine))
    return report


async def out_of_memory(model: NliModel, jobs: int = 300, seed: int = 2) -> ScenarioReport:
    """Batches above 16 pairs run out of memory during a burst: split, retried, the token budget
    shrinks; when memory is back the budget recovers. No job fails."""
    report = ScenarioReport("out of memory")
    inputs = classify_inputs(jobs, seed)
    faulty, module = FaultyModel.wrap(model)
    async with NliEngine.start(engine_settings(), model=faulty) as engine:
        reference = await reference_outputs(engine, inputs)
        module.oom_above_pairs = 16
        ledger = await run_jobs(engine, inputs, report)
        report.wrong = count_wrong(ledger, inputs, reference)
        shrunk = engine.batcher.budget_tokens
        module.oom_above_pairs = None
        recovery_jobs = 0
        while engine.batcher.budget_tokens < engine.batcher.policy.max_batch_tokens and recovery_jobs < 2000:
            await execute_job(engine, DEFAULT_SCHEMA, {"operation": "nli", "pairs": [["a", "b"]]})
            recovery_jobs += 1
        report.figures.update(
            budget_tokens_policy=engine.batcher.policy.max_batch_tokens,
            budget_tokens_shrunk=shrunk,
            budget_tokens_recovered=engine.batcher.budget_tokens,
            batches_to_recover=recovery_jobs,
            **await _still_serves(engine),
            **_engine_figures(engine),
        )
    return report


async def deadlines(model: NliModel, jobs: int = 50) -> ScenarioReport:
    """With the model held, jobs with a short deadline expire as ``timed_out`` and their pairs
    never reach the model; a job without one, already computing, still completes."""
    report = ScenarioReport("deadlines")
    faulty, module = FaultyModel.wrap(model)
    async with NliEngine.start(engine_settings(job_timeout_s=0.05), model=faulty) as engine:
        module.gate.clear()
        started = anyio.Event()
        loop = asyncio.get_running_loop()
        module.on_forward = lambda pairs: loop.call_soon_threadsafe(started.set)
        first = admit_job(engine, DEFAULT_SCHEMA, {"operation": "nli", "pairs": [["held", "batch"]]})
        await started.wait()  # the model thread is inside the first batch, held
        module.on_forward = None
        rows_before = module.rows_seen
        inputs = classify_inputs(jobs)
        ledger = await run_jobs(engine, inputs, report)  # every one expires while the model is held
        module.gate.set()
        first_outcome = await finish_job(first)  # timed out too: it may return before its batch ends
        # The model thread runs batches one after another: when the still-serves job's forward
        # starts, every earlier batch (the held one, and any pair of an expired job) has been counted.
        rows_at_forward: list[int] = []
        module.on_forward = lambda pairs: rows_at_forward.append(module.rows_seen)
        still = await _still_serves(engine)
        module.on_forward = None
        report.figures.update(
            pairs_of_expired_jobs_computed=rows_at_forward[-1] - rows_before - 1,
            held_job=first_outcome.status,
            timed_out=ledger.report.ended["timed_out"],
            **still,
        )
    return report


async def overload(model: NliModel, seconds: float = 3.0, factor: float = 2.0, seed: int = 3) -> ScenarioReport:
    """Arrivals at ``factor`` x the measured capacity for ``seconds``: the excess is refused at
    admission with a retryable ``overloaded`` error, admitted jobs complete, memory ends flat."""
    report = ScenarioReport("overload")
    settings = engine_settings(max_queue_pairs=600)
    async with NliEngine.start(settings, model=model) as engine:
        capacity = await _measure_capacity(engine, seed)
        rate = capacity * factor
        inputs = classify_inputs(max(1, int(rate * seconds)), seed)
        rss_before = _rss_mb()
        start = time.perf_counter()

        async def arrivals(index: int) -> None:
            delay = start + index / rate - time.perf_counter()
            if delay > 0:
                await anyio.sleep(delay)

        await run_jobs(engine, inputs, report, arrivals=arrivals)
        pairs_per_s = capacity * CLASSIFY_PAIRS_PER_JOB
        report.figures.update(
            capacity_jobs_per_s=round(capacity, 1),
            arrival_jobs_per_s=round(rate, 1),
            queue_bound_ms=round(settings.max_queue_pairs / pairs_per_s * 1e3, 1),
            rss_growth_mb=round(_rss_mb() - rss_before, 1),
            **await _still_serves(engine),
            **_engine_figures(engine),
        )
    return report


# ---- over HTTP: the pod server on loopback, and as a process that dies --------------------------

CLASSIFY_PAIRS_PER_JOB = 5 + 1 / 3
"""``classify_inputs`` jobs: 5 pairs, 6 with a company (a third of them)."""
HTTP_TIMEOUTS = Timeouts(connect_s=5.0, request_s=BOUND_S)
NO_RETRY = RetryPolicy(max_attempts=1)
"""Overload and soak see every answer as it came: a load test must not hide 429s behind retries."""
RESTART_RETRY = RetryPolicy(max_attempts=8, backoff=Backoff(initial_s=0.25, factor=1.6, max_s=2.0))
"""The restart scenario's callers: about 8 s of safe retries before ``ConnectionFailed`` surfaces."""
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
        rss_before = _rss_mb()

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
        rss_growth = _rss_mb() - rss_before
        server_rejected = await _server_rejections(base_url)
        still = await _still_serves_http(client)
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
    samples: list[tuple[float, float, int]] = []
    async with running_server(pod_settings(model, job_ttl_s=ttl_s), model=model) as base_url, http_client(
        base_url
    ) as client:
        started = time.perf_counter()

        async def sample() -> None:
            while True:
                held = sum((await client.health())["jobs"].values())
                samples.append((time.perf_counter() - started, _rss_mb(), held))
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
        still = await _still_serves_http(client)
    report.figures.update(
        jobs_per_s=jobs_per_s,
        ttl_s=ttl_s,
        **soak_flatness(samples, load_s, retention_jobs=jobs_per_s * ttl_s),
        jobs_held_after_ttl=held_after_ttl,
        **still,
    )
    return report


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


async def worker_restart(
    model: NliModel, jobs: int = 300, jobs_per_s: float = 30.0, seed: int = 6, log_dir: str | Path | None = None
) -> ScenarioReport:
    """Scenario 8: ``python -m worker pod`` as a real process on a loopback port, SIGKILLed while
    it holds a burst (right after it accepts a 640-pair job, a third of the way in) and started
    again on the same port. Jobs arrive at ``jobs_per_s`` throughout.

    Callers use ``burst_nli_client`` as a caller would: it retries what is safe on its own
    (connection refused before sending; 503 while the new process loads its model). A submission
    it cannot vouch for (``SubmissionUncertain``: the connection died with the request sent) and
    a job the new process has never heard of (404: it died with the old one) are resubmitted by
    the caller. Every job must still complete, with its own output. ``log_dir`` keeps the
    processes' logs (a temporary directory otherwise).
    """
    report = ScenarioReport("worker restart")
    inputs = classify_inputs(jobs, seed)
    kill_at = jobs // 3
    pool = headlines()
    inputs[kill_at] = {
        "operation": "classify_batch",
        "headlines": [pool[i % len(pool)] for i in range(Limits().max_headlines_per_job)],
    }
    counts: Counter[str] = Counter()
    killed, restarted = anyio.Event(), anyio.Event()
    with contextlib.ExitStack() as stack:
        if log_dir is None:
            log_dir = stack.enter_context(tempfile.TemporaryDirectory(prefix="burst-nli-restart-"))
        pod = PodProcess(model, _free_port(), Path(log_dir))
        async with _counting_session(counts) as session, http_client(
            pod.base_url, retry=RESTART_RETRY, session=session
        ) as client:
            try:
                await pod.start()
                await pod.wait_ready(client)

                async def one(index: int, ledger: Ledger) -> None:
                    sent = time.perf_counter()
                    while True:
                        try:
                            job = await client.run(inputs[index])
                        except SubmissionUncertain:  # sent, then the connection died: resubmit
                            counts["uncertain_resubmitted"] += 1
                            continue
                        except ConnectionFailed:  # never reached a server, after the client's retries
                            counts["unreachable_resubmitted"] += 1
                            continue
                        except HttpError as err:
                            if err.status in REFUSED_STATUSES:  # refused (503 loading) to the client's last try
                                counts["refused_resubmitted"] += 1
                                continue
                            ledger.end(index, f"http_{err.status}")
                            return
                        generation = pod.starts
                        counts[f"accepted_by_process_{generation}"] += 1
                        if index == kill_at and not killed.is_set():
                            pod.kill()  # the worker dies holding this job and whatever else it had
                            killed.set()
                        state, output = await _wait_through_restart(job)
                        if state == "lost":
                            counts["lost_with_worker"] += 1  # 404 from the new process: resubmit
                            continue
                        if state == "completed":
                            report.latencies_s.append(time.perf_counter() - sent)
                            counts[f"completed_by_process_{generation}"] += 1
                            report.wrong += not _same_headlines(inputs[index], output)
                        ledger.end(index, state)
                        return

                async def restart() -> None:
                    await killed.wait()
                    down = time.perf_counter()
                    await pod.wait_exit()
                    await pod.start()
                    await pod.wait_ready(client)
                    report.figures["downtime_s"] = round(time.perf_counter() - down, 2)
                    restarted.set()

                async with anyio.create_task_group() as tg:
                    tg.start_soon(restart)
                    await run_all(report, jobs, one, arrivals=paced(jobs_per_s))
                    tg.cancel_scope.cancel()
                if restarted.is_set():
                    report.figures.update(await _still_serves_http(client))
                else:
                    report.figures.update(serves_after=False)
            finally:
                await pod.stop()
    report.figures = {
        "accepted_by_killed": counts["accepted_by_process_1"],
        "completed_before_kill": counts["completed_by_process_1"],
        "lost_with_worker": counts["lost_with_worker"],
        "uncertain_resubmitted": counts["uncertain_resubmitted"],
        "unreachable_resubmitted": counts["unreachable_resubmitted"],
        "refused_resubmitted": counts["refused_resubmitted"],
        "connection_errors_seen": counts["request_errors"],
        "http_503_while_loading": counts["http_503"],
        "served_by_restarted": counts["completed_by_process_2"],
        **report.figures,
    }
    return report


async def _wait_through_restart(job: SubmittedJob) -> tuple[str, Any]:
    """Wait for a job across a restart: ``("completed", output)``, its end, or ``("lost", None)``
    when the server answering now has never heard of it."""
    while True:
        try:
            status = await job.wait(timeout_s=BOUND_S)
        except ConnectionFailed:  # down, or still starting, after the client's retries: keep asking
            continue
        except NotFound:
            return "lost", None
        except JobFailed as err:
            return err.code or "failed", None
        except (JobTimedOut, JobCancelled) as err:
            return "timed_out" if isinstance(err, JobTimedOut) else "cancelled", None
        return "completed", status.output


def _same_headlines(job_input: dict[str, Any], output: Any) -> bool:
    """The output answers this job's headline(s), not another's."""
    if not isinstance(output, dict):
        return False
    if "headlines" in job_input:
        return [result.get("headline") for result in output.get("results", [])] == job_input["headlines"]
    return output.get("headline") == job_input.get("headline")


class PodProcess:
    """``python -m worker pod`` on a fixed loopback port in its own process group, logging to
    ``log_dir/pod-<n>.log``; ``starts`` counts its lives (1 for the first)."""

    def __init__(self, model: NliModel, port: int, log_dir: Path) -> None:
        self.model_name = model.name
        self.port = port
        self.base_url = f"http://127.0.0.1:{port}"
        self.log_dir = log_dir
        self.starts = 0
        self.process: anyio.abc.Process | None = None

    @property
    def log_path(self) -> Path:
        return self.log_dir / f"pod-{self.starts}.log"

    async def start(self) -> None:
        root = Path(__file__).resolve().parents[1]
        env = {key: value for key, value in os.environ.items() if key != "API_KEY"}
        env.update(
            MODEL_NAME=self.model_name, DEVICE="cpu", WARMUP_MAX_LEN="16", LOG_LEVEL="INFO",
            PYTHONPATH=os.pathsep.join(filter(None, [str(root), env.get("PYTHONPATH")])),
        )  # fmt: skip
        self.starts += 1
        command = [sys.executable, "-m", "worker", "pod", "--host", "127.0.0.1", "--port", str(self.port)]
        with self.log_path.open("wb") as log:  # the child keeps its own descriptor
            self.process = await anyio.open_process(
                command, env=env, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                start_new_session=True,
            )  # fmt: skip

    async def wait_ready(self, client: Client, within_s: float = 90.0) -> None:
        """Poll ``/ping`` as a load balancer does until it answers 200 (bounded)."""
        assert self.process is not None
        with anyio.fail_after(within_s):
            while True:
                if self.process.returncode is not None:
                    raise RuntimeError(f"the pod exited with {self.process.returncode}; see {self.log_path}")
                try:
                    if await client.ping():
                        return
                except ClientError:
                    pass  # not listening yet
                await anyio.sleep(0.05)  # another process's readiness: nothing to wait on but its port

    def kill(self) -> None:
        """SIGKILL its process group now: a crash, no graceful shutdown."""
        if self.process is not None and self.process.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, signal.SIGKILL)

    async def wait_exit(self) -> None:
        if self.process is not None:
            with anyio.fail_after(30):
                await self.process.wait()

    async def stop(self) -> None:
        self.kill()
        with anyio.CancelScope(shield=True):
            await self.wait_exit()


def _counting_session(counts: Counter[str]) -> aiohttp.ClientSession:
    """An aiohttp session counting requests that failed without an answer (refused, reset) and 503s."""

    async def on_exception(session: Any, context: Any, params: Any) -> None:
        counts["request_errors"] += 1

    async def on_end(session: Any, context: Any, params: aiohttp.TraceRequestEndParams) -> None:
        if params.response.status == 503:
            counts["http_503"] += 1

    trace = aiohttp.TraceConfig()
    trace.on_request_exception.append(on_exception)
    trace.on_request_end.append(on_end)
    return aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=4096), trace_configs=[trace])


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


async def _measure_http_capacity(client: Client, seed: int, jobs: int = 200) -> float:
    """Jobs per second a pod server completes when ``jobs`` classify jobs arrive at once."""
    inputs = classify_inputs(jobs, seed + 100)
    started = time.perf_counter()
    async with anyio.create_task_group() as tg:
        for job_input in inputs:
            tg.start_soon(functools.partial(http_job, client, job_input, sync=True))
    return jobs / (time.perf_counter() - started)


async def _still_serves_http(client: Client) -> dict[str, Any]:
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


SCENARIOS: dict[str, Callable[[NliModel], Awaitable[ScenarioReport]]] = {
    "cancel-storm": cancel_storm,
    "poison": poison_pair,
    "oom": out_of_memory,
    "deadlines": deadlines,
    "overload": overload,
    "http-overload": http_overload,
    "soak": soak,
    "restart": worker_restart,
}


# ---- helpers ---------------------------------------------------------------------------------


async def _still_serves(engine: NliEngine) -> dict[str, Any]:
    """One more job after the scenario: the worker must still answer it."""
    outcome = await execute_job(engine, DEFAULT_SCHEMA, {"operation": "classify", "headline": "Fed Raises Rates"})
    batcher = engine.batcher
    return {
        "serves_after": outcome.status == "completed",
        "queue_empty_after": batcher.queued_items == 0 and batcher.inflight_jobs == 0,
    }


def _engine_figures(engine: NliEngine) -> dict[str, Any]:
    stats = engine.batcher.stats
    return {
        "batches": stats.batches,
        "batch_splits": stats.batch_splits,
        "budget_shrinks": stats.budget_shrinks,
        "pairs_dropped_before_compute": stats.items_dropped,
    }


async def _measure_capacity(engine: NliEngine, seed: int) -> float:
    """Jobs per second when a burst of 200 classify jobs is submitted at once."""
    inputs = classify_inputs(200, seed + 100)
    started = time.perf_counter()
    async with anyio.create_task_group() as tg:
        for job_input in inputs:
            tg.start_soon(execute_job, engine, DEFAULT_SCHEMA, job_input)
    return len(inputs) / (time.perf_counter() - started)


def _rss_mb() -> float:
    """Resident memory of this process (Linux ``/proc``), in MB."""
    try:
        with open("/proc/self/statm") as statm:
            pages = int(statm.read().split()[1])
    except (OSError, ValueError, IndexError):
        return float("nan")
    import resource

    return pages * resource.getpagesize() / 1e6


# ---- the command --------------------------------------------------------------------------------


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", default="synthetic:tiny", help="model (default: %(default)s)")
    parser.add_argument("--only", choices=list(SCENARIOS), action="append", help="run only these scenarios")
    parser.add_argument("--json", metavar="PATH", help="also write the reports as JSON here")
    parser.add_argument("--soak-seconds", type=float, default=120.0, metavar="S",
                        help="how long the soak's load runs (default: %(default)s)")
    parser.add_argument("--log-level", default="ERROR", help="worker log level (default: %(default)s)")


def run(args: argparse.Namespace) -> int:
    from worker.logs import configure_logging

    configure_logging(args.log_level)
    model = NliModel.load(args.model, device="cpu")
    names = args.only or list(SCENARIOS)
    scenarios = {**SCENARIOS, "soak": functools.partial(soak, seconds=args.soak_seconds)}

    async def main() -> list[ScenarioReport]:
        return [await scenarios[name](model) for name in names]

    reports = anyio.run(main)
    print(table(reports))
    if args.json:
        with open(args.json, "w", encoding="utf-8") as out:
            json.dump([report.as_dict() for report in reports], out, indent=2)
    return 0 if all(healthy(report) for report in reports) else 1


def healthy(report: ScenarioReport) -> bool:
    """Nothing lost, hung, double-ended or wrong, and the worker still serves."""
    figures = report.figures
    return (
        report.lost == report.hung == report.double_ended == report.wrong == 0
        and figures.get("serves_after", True)
        and figures.get("queue_empty_after", True)
        and figures.get("rss_flat", True)
        and figures.get("store_flat", True)
        and figures.get("jobs_held_after_ttl", 0) == 0
    )


def table(reports: Sequence[ScenarioReport]) -> str:
    """A Markdown table: one row a scenario."""
    head = "| scenario | submitted | completed | other ends | lost | hung | wrong | p99 ms | figures |"
    rows = [head, "|" + "---|" * 9]
    for report in reports:
        d = report.as_dict()
        others = ", ".join(f"{k} {v}" for k, v in sorted(report.ended.items()) if k != "completed") or "-"
        figures = ", ".join(
            f"{k} {v}" for k, v in d.items()
            if k not in {"scenario", "submitted", "ended", "lost", "hung", "double_ended", "wrong", "latency_ms"}
        )  # fmt: skip
        p99 = d["latency_ms"].get("p99", float("nan"))
        rows.append(
            f"| {report.name} | {report.submitted} | {report.ended['completed']} | {others} | {report.lost} "
            f"| {report.hung} | {report.wrong} | {p99:.1f} | {figures} |"
        )
    return "\n".join(rows)
