"""What every scenario shares: its report, the ledger that ends each job once, and their checks.

Each scenario returns a ``ScenarioReport`` that accounts for every submitted job: each must end in
exactly one terminal state (completed, failed, rejected, timed out or cancelled), none lost, none
still running when the bound is up (``healthy``).
"""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import anyio
import anyio.abc

from loadtest.headlines import headlines
from loadtest.stats import latency_summary_ms

BOUND_S = 60.0
"""Longest a scenario waits for its jobs to end before it counts the rest as hung."""


CLASSIFY_PAIRS_PER_JOB = 5 + 1 / 3
"""``classify_inputs`` jobs: 5 pairs, 6 with a company (a third of them)."""


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


def rss_mb() -> float:
    """Resident memory of this process (Linux ``/proc``), in MB."""
    try:
        with open("/proc/self/statm") as statm:
            pages = int(statm.read().split()[1])
    except (OSError, ValueError, IndexError):
        return float("nan")
    import resource

    return pages * resource.getpagesize() / 1e6


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
