"""``python -m loadtest replay TRACE --target T``: send a trace's jobs on its schedule, then report.

Open loop: job ``i`` is started at ``t_i / speed`` seconds after the replay starts whatever
happened to the jobs before it, so a slow server meets the arrivals it would meet in production
instead of slowing them down. ``--concurrency`` caps the jobs in flight; an arrival beyond the
cap waits for a slot, and that wait counts in its latency, which always runs from the job's
*scheduled* arrival (no coordinated omission). ``--timeout`` abandons (cancels) a job that has not
ended that many seconds after it was sent.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import sys
import time
from contextlib import AbstractAsyncContextManager, nullcontext
from importlib.resources import files
from pathlib import Path
from typing import Any, Protocol

import anyio

from loadtest.progress import ProgressBar
from loadtest.report import ReplayedJob, ReplayRun, summarize, write_report
from loadtest.targets import BatchRecord, JobResult, Target, TargetError, TargetOptions, open_target
from schemas.trace import Trace, TraceError, read_trace
from worker.logs import configure_logging


class Observer(Protocol):
    """Sees each job sent and each job ended (the progress bar; tests)."""

    def on_sent(self, index: int) -> None: ...

    def on_done(self, record: ReplayedJob) -> None: ...


async def replay(
    trace: Trace,
    target: Target,
    *,
    speed: float = 1.0,
    concurrency: int | None = None,
    timeout_s: float | None = None,
    observer: Observer | None = None,
) -> ReplayRun:
    """Start each job at its scheduled time, wait for all of them, and return the records."""
    slots: AbstractAsyncContextManager[Any] = anyio.Semaphore(concurrency) if concurrency else nullcontext()
    records: list[ReplayedJob | None] = [None] * len(trace.jobs)
    batches_before = len(target.batches) if target.batches is not None else 0
    started_at = time.time()
    clock = anyio.current_time
    start = clock()

    async def one(index: int, job_input: Any, due: float) -> None:
        async with slots:
            sent = clock()
            if observer is not None:
                observer.on_sent(index)
            result = await _submit(target, job_input, timeout_s)
            ended = clock()
        record = ReplayedJob(
            index=index,
            t_scheduled=round(due - start, 6),
            t_sent=round(sent - start, 6),
            latency_ms=round((ended - due) * 1e3, 3),
            status=result.status,
            error=result.error,
            operation=_operation(job_input),
            pairs=result.pairs,
        )
        records[index] = record
        if observer is not None:
            observer.on_done(record)

    async with anyio.create_task_group() as tg:
        for index, job in enumerate(trace.jobs):
            due = start + job.t / speed
            await anyio.sleep_until(due)
            tg.start_soon(one, index, job.input, due)
    wall_s = clock() - start
    batches = None
    if target.batches is not None:
        batches = [_since(batch, start) for batch in target.batches[batches_before:]]
    return ReplayRun([r for r in records if r is not None], wall_s, batches, started_at)


async def _submit(target: Target, job_input: Any, timeout_s: float | None) -> JobResult:
    """The target's answer, a client-side ``timed_out``, or the client's own failure."""
    with anyio.move_on_after(timeout_s if timeout_s is not None else math.inf):
        try:
            return await target.submit(job_input)
        except Exception as err:  # a client bug or a broken connection ends this job only
            return JobResult(status="client_error", error=f"client_error: {type(err).__name__}: {err}")
    return JobResult(status="timed_out", error=f"timed_out: no result {timeout_s:g} s after sending (--timeout)")


def _operation(job_input: Any) -> str:
    operation = job_input.get("operation") if isinstance(job_input, dict) else None
    return operation if isinstance(operation, str) else "unknown"


def _since(batch: BatchRecord, start: float) -> BatchRecord:
    return dataclasses.replace(batch, at=round(batch.at - start, 6))


# --- the command ----------------------------------------------------------------------------


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("trace", metavar="TRACE", help="trace file (JSON Lines: a header, then one job a line), "
                        f"or a bundled trace's name: {', '.join(bundled_traces())}")
    parser.add_argument("--target", default="inproc", help="inproc (default: the worker in this process), "
                        "http://host:port (a pod; key from API_KEY) or runpod://ENDPOINT_ID (key from RUNPOD_API_KEY)")
    parser.add_argument("--speed", type=_positive_float, default=1.0,
                        help="time compression: job i starts at t_i / speed (default: %(default)s)")
    parser.add_argument("--concurrency", type=_positive_int, help="most jobs in flight; arrivals beyond it wait, "
                        "and the wait counts in their latency (default: no cap)")
    parser.add_argument("--timeout", type=_positive_float, default=60.0, metavar="S",
                        help="abandon a job this many seconds after sending it (default: %(default)s)")
    parser.add_argument("--out", metavar="DIR", help="write summary.json, jobs.jsonl and PNG plots here")
    parser.add_argument("--mode", choices=("run", "runsync"), default="run",
                        help="http and runpod targets: /run + /status polling, or /runsync (default: %(default)s)")
    parser.add_argument("--model", default="synthetic:distilbert-mnli",
                        help="inproc: model to load (default: %(default)s, offline, random weights, real speed)")
    parser.add_argument("--device", help="inproc: cuda, cpu, ... (default: CUDA when available)")
    parser.add_argument("--log-level", default="WARNING", help="worker log level (default: %(default)s)")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")


def run(args: argparse.Namespace) -> int:
    configure_logging(args.log_level)
    try:
        trace = read_trace(resolve_trace(args.trace))
        if not trace.jobs:
            raise TraceError(f"{args.trace}: the trace has no jobs")
        options = TargetOptions(model=args.model, device=args.device, log_level=args.log_level, mode=args.mode)
        opened = open_target(args.target, options)
    except (TraceError, TargetError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2

    async def main() -> tuple[ReplayRun, str]:
        async with opened as target:
            bar = ProgressBar(len(trace.jobs)) if not args.quiet and sys.stderr.isatty() else None
            try:
                run = await replay(
                    trace, target, speed=args.speed, concurrency=args.concurrency, timeout_s=args.timeout,
                    observer=bar,
                )  # fmt: skip
            finally:
                if bar is not None:
                    bar.close()
            return run, target.name

    replayed, target_name = anyio.run(main)
    if args.target.startswith(("http://", "https://")):
        replayed.fleet = fleet_report(args.target)
    summary = summarize(
        replayed, trace=trace.header.name, target=target_name, speed=args.speed, concurrency=args.concurrency
    )
    print(summary.table())
    if args.out:
        for line in write_report(Path(args.out), summary, replayed):
            print(line)
    return 0 if summary.completed == summary.jobs else 1


def fleet_report(target: str) -> dict[str, Any] | None:
    """``GET <target>/fleet`` from a local RunPod emulator with a fleet; None from anything else."""
    import json
    import urllib.error
    import urllib.request

    try:
        with urllib.request.urlopen(f"{target.rstrip('/')}/fleet", timeout=10) as answer:
            report = json.loads(answer.read())
    except (urllib.error.URLError, OSError, ValueError):
        return None
    return report if isinstance(report, dict) and "timeline" in report else None


def bundled_traces() -> list[str]:
    """Names of the traces shipped in ``loadtest/data``."""
    return sorted(entry.name.removesuffix(".jsonl") for entry in _DATA.iterdir() if entry.name.endswith(".jsonl"))


def resolve_trace(text: str) -> Path:
    """A path as given, or the bundled trace of that name when no such file exists."""
    path = Path(text)
    if path.exists() or text not in bundled_traces():
        return path
    return Path(str(_DATA / f"{text}.jsonl"))


_DATA = files("loadtest") / "data"


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not 0 < value < math.inf:
        raise argparse.ArgumentTypeError(f"must be a positive number, got {text!r}")
    return value


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {text!r}")
    return value

