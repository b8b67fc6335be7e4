"""``python -m loadtest plan TRACE``: a RunPod fleet simulated over a trace, to size it before market open.

A discrete-event model of what ``loadtest/fleet.py`` runs for real: jobs arrive on the trace's
clock into RunPod's queue; workers between the active minimum and the maximum are started by the
scaler (queue delay or request count, one tick every ``TICK_S``), become ready after a cold
start, take jobs first come first served up to ``MAX_CONCURRENCY`` and stop after the idle
timeout. A worker clears pairs at ``--rate`` pairs/s, its held jobs in the order taken (the
engine merges them into shared batches; the model keeps only the throughput). runpod 1.12's job
loop waits ``FULL_WAIT_S`` whenever a worker is full, and so does the model. Costs: flex workers
bill from their start to their stop, active workers all day.

    python -m loadtest plan peak-minute --rate 25000 --cold-start 20 --p99-ms 1000 --out runs/plan
    python -m loadtest plan day.jsonl --from-replay runs/fleet3     # rate and cold start measured there

It sweeps ``--workers-max``, ``--workers-min``, ``--idle-timeout`` and ``--scaler`` (comma-separated
lists), prints a table (cheapest first), names the cheapest setting whose p99 meets ``--p99-ms``,
and with ``--out`` writes ``plan.json`` and ``plan.png`` (p99 latency against cost per day). The
trace is taken as a day's traffic (``generate --duration`` writes one): its flex worker-seconds
plus the active workers for 24 hours.
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import sys
from collections import deque
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from loadtest.fleet import TICK_S, Scaler
from loadtest.stats import latency_summary_ms

FULL_WAIT_S = 1.0
"""runpod 1.12's ``JobScaler.get_jobs`` sleeps this long when the worker holds ``MAX_CONCURRENCY`` jobs."""


@dataclass(frozen=True, slots=True)
class WorkerModel:
    rate_pairs_s: float
    cold_start_s: float
    max_concurrency: int = 512


@dataclass(frozen=True, slots=True)
class FleetPlan:
    workers_max: int
    workers_min: int
    scaler: Scaler
    idle_timeout_s: float

    def label(self) -> str:
        return f"max {self.workers_max}, min {self.workers_min}, {self.scaler}, idle {self.idle_timeout_s:g} s"


@dataclass(slots=True)
class PlanResult:
    plan: FleetPlan
    latency_ms: dict[str, float]
    worker_seconds: float
    """Flex workers' billed seconds: start (cold start included) to stop."""
    active_seconds: float
    workers_started: int
    cost_per_day: float | None = None


@dataclass(eq=False, slots=True)
class _Worker:
    started: float
    ready: float
    active: bool
    held: deque[list[Any]] = field(default_factory=deque)
    """[job index, pairs left], in the order taken."""
    next_take: float = 0.0
    last_busy: float = 0.0
    stopped: float | None = None


def simulate(arrivals: list[tuple[float, int]], plan: FleetPlan, worker: WorkerModel, *, dt: float = 0.01) -> PlanResult:
    """Run ``arrivals`` (seconds, pairs) through the fleet; latencies from arrival to completion.
    It ends once every job is done and every flex worker has idled out."""
    order = sorted(range(len(arrivals)), key=lambda i: arrivals[i][0])
    done: list[float | None] = [None] * len(arrivals)
    queue: deque[int] = deque()
    workers = [_Worker(0.0, 0.0, active=True) for _ in range(plan.workers_min)]
    end = arrivals[order[-1]][0] if arrivals else 0.0
    t, next_arrival, next_tick = 0.0, 0, 0.0
    while t <= end or queue or any(w.held or (w.stopped is None and not w.active) for w in workers):
        while next_arrival < len(order) and arrivals[order[next_arrival]][0] <= t:
            queue.append(order[next_arrival])
            next_arrival += 1
        scale_now = t >= next_tick
        for w in workers:
            if w.stopped is not None or w.ready > t:
                continue
            if queue and t >= w.next_take:
                for _ in range(min(worker.max_concurrency - len(w.held), len(queue))):
                    job = queue.popleft()
                    w.held.append([job, arrivals[job][1]])
                if len(w.held) >= worker.max_concurrency:  # the SDK looks again at once, finds it full, sleeps
                    w.next_take = t + FULL_WAIT_S
            budget = worker.rate_pairs_s * dt
            while w.held and budget > 0:
                job_left = w.held[0]
                spent = min(budget, job_left[1])
                job_left[1] -= spent
                budget -= spent
                if job_left[1] <= 1e-9:
                    w.held.popleft()
                    done[job_left[0]] = t + dt - budget / worker.rate_pairs_s
            if w.held or budget < worker.rate_pairs_s * dt:
                w.last_busy = t + dt
        if scale_now:  # after this step's takes: a worker that just polled has taken what was queued
            _scale(workers, queue, arrivals, plan, worker, t)
            next_tick = (math.floor(t / TICK_S) + 1) * TICK_S  # on the tick grid, also after a jump
        t = _next_time(t, dt, queue, workers, arrivals, order, next_arrival, next_tick)
    for w in workers:
        if w.stopped is None:
            w.stopped = max(t, end)
    latencies = [done[i] - arrivals[i][0] for i in range(len(arrivals)) if done[i] is not None]  # type: ignore[operator]
    flex = [w for w in workers if not w.active]
    return PlanResult(
        plan=plan,
        latency_ms=latency_summary_ms(latencies),
        worker_seconds=round(sum((w.stopped or t) - w.started for w in flex), 3),
        active_seconds=round(sum((w.stopped or t) - w.started for w in workers if w.active), 3),
        workers_started=len(flex),
    )


def _scale(workers: list[_Worker], queue: deque[int], arrivals: list[tuple[float, int]], plan: FleetPlan,
           model: WorkerModel, t: float) -> None:  # fmt: skip
    """One scaler tick: start what the rule wants, stop idle flex workers (as ``Fleet._scale``)."""
    up = [w for w in workers if w.stopped is None]
    starting = sum(1 for w in up if w.ready > t)
    running = sum(len(w.held) for w in up)
    oldest_wait = t - arrivals[queue[0]][0] if queue else 0.0
    wanted = plan.scaler.wanted(len(up), starting, len(queue), running, oldest_wait)
    wanted = min(max(wanted, plan.workers_min), plan.workers_max)
    for _ in range(wanted - len(up)):
        workers.append(_Worker(t, t + model.cold_start_s, active=False, last_busy=t + model.cold_start_s))
    stoppable = len(up) - plan.workers_min
    for w in up:
        if stoppable <= 0:
            break
        if not w.active and w.ready <= t and not w.held and t - max(w.ready, w.last_busy) >= plan.idle_timeout_s:
            w.stopped = t
            stoppable -= 1


def _next_time(t: float, dt: float, queue: deque[int], workers: list[_Worker], arrivals: list[tuple[float, int]],
               order: list[int], next_arrival: int, next_tick: float) -> float:  # fmt: skip
    """The next step: ``t + dt`` while anything moves, else straight to the next event (a trading
    day's quiet hours cost nothing to simulate)."""
    if queue or any(w.held for w in workers):
        return t + dt
    upcoming = [arrivals[order[next_arrival]][0]] if next_arrival < len(order) else []
    flex_up = any(w.stopped is None and not w.active for w in workers)
    if flex_up or any(w.stopped is None and w.ready > t for w in workers):
        upcoming.append(next_tick)  # idle timeouts and cold starts end on ticks
    return max(t + dt, min(upcoming)) if upcoming else t + dt


# --- the command -------------------------------------------------------------------------------------


def trace_arrivals(path: Path) -> list[tuple[float, int]]:
    """(seconds, pairs) of each job of a trace; a job the worker would refuse counts 0 pairs."""
    from schemas import DEFAULT_SCHEMA
    from schemas.trace import read_trace
    from worker.operations import plan_job

    class Head:  # the label layout of an MNLI head: all that counting pairs needs
        labels = ("ENTAILMENT", "NEUTRAL", "CONTRADICTION")
        entailment_index, contradiction_index = 0, 2

    arrivals = []
    for job in read_trace(path).jobs:
        try:
            pairs = len(plan_job(DEFAULT_SCHEMA.decode_input(job.input), Head()).pairs)
        except Exception:  # a bad job in a trace is refused at once: no pairs, no work
            pairs = 0
        arrivals.append((job.t, pairs))
    return arrivals


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from loadtest.replay import bundled_traces

    parser.add_argument("trace", metavar="TRACE", help=f"trace file or bundled name ({', '.join(bundled_traces())})")
    parser.add_argument("--rate", type=float, help="pairs/s one worker clears (or --from-replay)")
    parser.add_argument("--cold-start", type=float, help="seconds from a worker's start to its first job (or --from-replay)")
    parser.add_argument("--from-replay", type=Path, metavar="DIR",
                        help="a replay's --out: the rate from summary.json (in-process replays report pairs/s), "
                        "the cold start from fleet.json (replays against an emulated fleet)")
    parser.add_argument("--max-concurrency", type=int, default=512, help="MAX_CONCURRENCY (default 512)")
    parser.add_argument("--workers-max", default="1,2,3", help="comma-separated values to sweep (default 1,2,3)")
    parser.add_argument("--workers-min", default="0,1", help="active workers to sweep (default 0,1)")
    parser.add_argument("--idle-timeout", default="5,60", help="seconds, to sweep (default 5,60)")
    parser.add_argument("--scaler", default="queue-delay:1,request-count:100", help="rules to sweep")
    parser.add_argument("--speed", type=float, default=1.0, help="divide the trace's times by this (default 1)")
    parser.add_argument("--price-per-s", type=float, default=0.001,
                        help="a flex worker's price, $/s (default 0.001: the round, illustrative figure of "
                        "docs/DEPLOYMENT.md; look up today's)")
    parser.add_argument("--active-price-per-s", type=float, default=0.001, help="an active worker's price, $/s")
    parser.add_argument("--p99-ms", type=float, default=1000.0, help="the p99 latency to meet (default 1000 ms)")
    parser.add_argument("--out", type=Path, help="write plan.json and plan.png here")


def run(args: argparse.Namespace) -> int:
    from loadtest.replay import resolve_trace
    from schemas.trace import TraceError

    try:
        rate, cold_start = calibration(args)
        arrivals = [(t / args.speed, pairs) for t, pairs in trace_arrivals(resolve_trace(args.trace))]
        plans = [FleetPlan(hi, lo, Scaler.parse(rule), idle) for hi, lo, rule, idle in itertools.product(
            _ints(args.workers_max), _ints(args.workers_min), args.scaler.split(","), _floats(args.idle_timeout))
            if lo <= hi]  # fmt: skip
    except (TraceError, ValueError, OSError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    model = WorkerModel(rate, cold_start, args.max_concurrency)
    results = [simulate(arrivals, plan, model) for plan in plans]
    span_s = max((t for t, _ in arrivals), default=0.0)
    for result in results:
        result.cost_per_day = cost_per_day(result, args.price_per_s, args.active_price_per_s)
    results.sort(key=lambda r: r.cost_per_day or 0.0)
    best = next((r for r in results if r.latency_ms["p99"] <= args.p99_ms), None)
    print(f"{len(arrivals)} jobs over {span_s:.0f} s; a worker: {rate:g} pairs/s, cold start {cold_start:g} s, "
          f"MAX_CONCURRENCY {args.max_concurrency}")  # fmt: skip
    print(table(results, best))
    print(f"cheapest with p99 <= {args.p99_ms:g} ms: {best.plan.label()}" if best else
          f"no setting meets p99 <= {args.p99_ms:g} ms: raise --workers-max or --workers-min")  # fmt: skip
    if args.out is not None:
        write(args.out, results, best, args)
    return 0 if best else 1


def calibration(args: argparse.Namespace) -> tuple[float, float]:
    """``--rate`` and ``--cold-start``, or what a replay's files measured."""
    rate, cold_start = args.rate, args.cold_start
    if args.from_replay is not None:
        summary = json.loads((args.from_replay / "summary.json").read_text())
        rate = rate or summary.get("pairs_per_s")
        fleet_path = args.from_replay / "fleet.json"
        if cold_start is None and fleet_path.exists():
            starts = [w["cold_start_s"] for w in json.loads(fleet_path.read_text())["workers"] if w["cold_start_s"]]
            cold_start = sum(starts) / len(starts) if starts else None
    if not rate or rate <= 0:
        raise ValueError("--rate: give a worker's pairs/s, or --from-replay an in-process replay's --out")
    if cold_start is None or cold_start < 0:
        raise ValueError("--cold-start: give a worker's cold start in seconds, or --from-replay a fleet replay's --out")
    return float(rate), float(cold_start)


def cost_per_day(result: PlanResult, price_per_s: float, active_price_per_s: float) -> float:
    """The trace taken as a day's traffic: its flex worker-seconds, plus the active workers all day."""
    return round(result.worker_seconds * price_per_s + result.plan.workers_min * 86_400 * active_price_per_s, 2)


def table(results: list[PlanResult], best: PlanResult | None) -> str:
    lines = ["| setting | p50 ms | p99 ms | workers started | flex worker-s | $/day |", "|---|---|---|---|---|---|"]
    for r in results:
        mark = " **(cheapest meeting the target)**" if r is best else ""
        lines.append(f"| {r.plan.label()}{mark} | {r.latency_ms['p50']:.0f} | {r.latency_ms['p99']:.0f} | "
                     f"{r.workers_started} | {r.worker_seconds:.0f} | {r.cost_per_day:.2f} |")  # fmt: skip
    return "\n".join(lines)


def write(out: Path, results: list[PlanResult], best: PlanResult | None, args: argparse.Namespace) -> None:
    out.mkdir(parents=True, exist_ok=True)
    rows = [{**asdict(r), "plan": {**asdict(r.plan), "scaler": str(r.plan.scaler)}} for r in results]
    (out / "plan.json").write_text(json.dumps({"results": rows, "best": best.plan.label() if best else None}, indent=2))
    try:
        from matplotlib.figure import Figure
    except ImportError:
        return
    fig = Figure(figsize=(10, 6), layout="constrained")
    ax = fig.subplots()
    ax.scatter([r.cost_per_day for r in results], [r.latency_ms["p99"] for r in results], s=18)
    for r in results:
        ax.annotate(r.plan.label(), (r.cost_per_day, r.latency_ms["p99"]), fontsize=6, alpha=0.7)
    ax.axhline(args.p99_ms, color="tab:red", linestyle="--", label=f"p99 target {args.p99_ms:g} ms")
    ax.set_xlabel("cost per day ($)")
    ax.set_ylabel("p99 latency (ms)")
    ax.set_yscale("log")
    ax.legend()
    ax.grid(alpha=0.3)
    fig.suptitle("Fleet settings: p99 latency against cost")
    fig.savefig(out / "plan.png", dpi=110)


def _ints(text: str) -> list[int]:
    return [int(v) for v in text.split(",") if v.strip()]


def _floats(text: str) -> list[float]:
    return [float(v) for v in text.split(",") if v.strip()]

