"""In-process scenarios: ``NliEngine`` through the service path (``admit_job`` / ``finish_job``, as
both front ends do), with faults injected by ``loadtest.faults``."""

from __future__ import annotations

import asyncio
import json
import math
import random
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import anyio
import anyio.abc

from batching import ServiceError
from loadtest.chaos.ledger import CLASSIFY_PAIRS_PER_JOB, Ledger, ScenarioReport, classify_inputs, rss_mb, run_all
from loadtest.faults import FaultyModel, poison_token_id
from schemas import DEFAULT_SCHEMA
from worker.engine import NliEngine
from worker.model import NliModel
from worker.service import admit_job, execute_job, finish_job
from worker.settings import Settings

def engine_settings(**overrides: Any) -> Settings:
    return Settings(**{"device": "cpu", "warmup_max_len": 16, "max_batch_pairs": 64, "max_batch_tokens": 4096,
                       **overrides})  # fmt: skip


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
        rss_before = rss_mb()
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
            rss_growth_mb=round(rss_mb() - rss_before, 1),
            **await _still_serves(engine),
            **_engine_figures(engine),
        )
    return report


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
