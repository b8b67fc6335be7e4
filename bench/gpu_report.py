"""The side-by-side table and the performance targets, from the rows ``bench/gpu.py`` measured.

Ratios (× seed) are against the seed way of the same run. The absolute targets are for a GPU and
the 339-job burst; elsewhere they read "n/a" rather than pass or fail on the wrong machine.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

PEAK_BURST_JOBS = 339

COLUMNS = (
    "way", "burst jobs", "burst ms", "burst p99 ms", "burst pairs/s", "× seed", "sustained jobs/s",
    "sustained pairs/s", "× seed", "idle p50 ms", "burst mean batch", "burst padding eff.", "sustained busy",
    "sustained idle gap ms",
)  # fmt: skip


def markdown_table(rows: list[dict]) -> str:
    """One line a way; blank where a way has no such number (a pipeline has no sustained loop)."""
    seed = _get(_row(rows, "seed"), "burst", "pairs_per_s")
    lines = ["| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    for row in rows:
        if "skipped" in row:
            lines.append(f"| {row['way']}: skipped ({row['skipped']}) |" + " |" * (len(COLUMNS) - 1))
            continue
        burst, sustained = row.get("burst", {}), row.get("sustained", {})
        cells = [
            _way(row), burst.get("jobs"), burst.get("wall_ms"), burst.get("p99_ms"), _n(burst.get("pairs_per_s")),
            _ratio(burst.get("pairs_per_s"), seed), _n(sustained.get("jobs_per_s")),
            _n(sustained.get("pairs_per_s")), _ratio(sustained.get("pairs_per_s"), seed),
            row.get("idle", {}).get("p50_ms"), burst.get("mean_batch_pairs"), burst.get("padding_efficiency"),
            sustained.get("busy"), sustained.get("idle_gap_ms"),
        ]  # fmt: skip
        lines.append("| " + " | ".join("" if cell is None else str(cell) for cell in cells) + " |")
    return "\n".join(lines)


def _way(row: dict) -> str:
    failed = sum(row.get(phase, {}).get("failed", 0) or 0 for phase in ("burst", "sustained", "idle"))
    return row["way"] + (f" ({failed} jobs failed)" if failed else "")


def _n(value: float | None) -> str | None:
    return None if value is None else f"{value:,.0f}" if value >= 100 else f"{value:,.1f}"


def _ratio(value: float | None, seed: float | None) -> str | None:
    return None if value is None or not seed else f"{value / seed:.1f}×"


# ---- targets -------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Goal:
    """One performance target: what is read from which row, and the bound it must meet."""

    name: str
    goal: str
    read: Callable[[list[dict]], float | None]
    met: Callable[[float], bool]
    gpu_burst_only: bool = True
    """An absolute number for an H100 and the 339-job burst: n/a elsewhere."""


def _row(rows: list[dict], key: str) -> dict:
    return next((row for row in rows if row.get("key") == key and "skipped" not in row), {})


def _get(row: dict, phase: str, field: str) -> float | None:
    value = row.get(phase, {}).get(field)
    return float(value) if value is not None else None


def _reader(key: str, phase: str, field: str) -> Callable[[list[dict]], float | None]:
    return lambda rows: _get(_row(rows, key), phase, field)


def _over(key: str, other: str, phase: str, field: str, *, other_phase: str | None = None,
          lower: bool = False) -> Callable[[list[dict]], float | None]:
    """How many times better ``key`` did than ``other`` on one number (time: lower is better);
    ``other_phase`` where the other has no such phase (the seed way has only its burst)."""

    def read(rows: list[dict]) -> float | None:
        ours = _get(_row(rows, key), phase, field)
        theirs = _get(_row(rows, other), other_phase or phase, field)
        if ours is None or theirs is None or not ours or not theirs:
            return None
        return round(theirs / ours if lower else ours / theirs, 2)

    return read


GOALS = (
    Goal("339-job burst in process", "≤ 100 ms", _reader("inproc", "burst", "wall_ms"), lambda v: v <= 100),
    Goal("339-job burst through the pod over HTTP", "≤ 250 ms", _reader("pod", "burst", "wall_ms"), lambda v: v <= 250),
    Goal("sustained in process, pairs/s", "≥ 50,000 (stretch 100,000)", _reader("inproc", "sustained", "pairs_per_s"),
           lambda v: v >= 50_000),
    Goal("pod sustained, jobs/s", "≥ 3,000", _reader("pod", "sustained", "jobs_per_s"), lambda v: v >= 3_000),
    Goal("idle single job in process, p50 ms", "≤ 3", _reader("inproc", "idle", "p50_ms"), lambda v: v <= 3),
    Goal("idle single job over HTTP, p50 ms", "≤ 5", _reader("pod", "idle", "p50_ms"), lambda v: v <= 5),
    Goal("padding efficiency in the burst (in process)", "≥ 0.85", _reader("inproc", "burst", "padding_efficiency"),
           lambda v: v >= 0.85, gpu_burst_only=False),
    Goal("in-process burst vs the seed way, × pairs/s", "≥ 2× (the CPU target)",
           _over("inproc", "seed", "burst", "pairs_per_s"), lambda v: v >= 2, gpu_burst_only=False),
    Goal("in-process sustained vs the seed way, × pairs/s", "≥ 2× (the CPU target)",
           _over("inproc", "seed", "sustained", "pairs_per_s", other_phase="burst"), lambda v: v >= 2,
           gpu_burst_only=False),
    Goal("pod burst vs LitServe burst, × faster", "> 1× (beat every peer)",
           _over("pod", "litserve", "burst", "wall_ms", lower=True), lambda v: v > 1, gpu_burst_only=False),
    Goal("pod sustained vs LitServe sustained, × jobs/s", "> 1×", _over("pod", "litserve", "sustained", "jobs_per_s"),
           lambda v: v > 1, gpu_burst_only=False),
    Goal("pod idle p50 vs LitServe idle p50, × faster", "> 1×", _over("pod", "litserve", "idle", "p50_ms", lower=True),
           lambda v: v > 1, gpu_burst_only=False),
    Goal("339-job burst through the pod of front processes", "≤ 250 ms", _reader("pod-fronts", "burst", "wall_ms"),
           lambda v: v <= 250),
    Goal("pod of front processes sustained, jobs/s", "≥ 3,000", _reader("pod-fronts", "sustained", "jobs_per_s"),
           lambda v: v >= 3_000),
    Goal("idle single job over HTTP, pod of front processes, p50 ms", "≤ 5", _reader("pod-fronts", "idle", "p50_ms"),
           lambda v: v <= 5),
    Goal("pod of front processes vs LitServe sustained, × jobs/s", "> 1×",
           _over("pod-fronts", "litserve", "sustained", "jobs_per_s"), lambda v: v > 1, gpu_burst_only=False),
    Goal("client ceiling (trivial server) over the pod, × jobs/s", "≥ 2× (the client is not the limit)",
           _over("trivial", "pod", "sustained", "jobs_per_s"), lambda v: v >= 2, gpu_burst_only=False),
)  # fmt: skip


def check_targets(rows: list[dict], *, on_gpu: bool, burst_jobs: int) -> list[dict]:
    """Each target with its reading and verdict: met, not met, n/a (machine, burst size) or not measured."""
    checks = []
    for goal in GOALS:
        value = goal.read(rows)
        if goal.gpu_burst_only and not (on_gpu and burst_jobs == PEAK_BURST_JOBS):
            verdict = "n/a: GPU, 339-job burst only"
        elif value is None:
            verdict = "not measured"
        else:
            verdict = "met" if goal.met(value) else "not met"
        checks.append({"target": goal.name, "goal": goal.goal, "measured": value, "verdict": verdict})
    return checks


def targets_table(checks: list[dict]) -> str:
    lines = ["| target | goal | measured | verdict |", "|---|---|---|---|"]
    for check in checks:
        measured = "" if check["measured"] is None else f"{check['measured']:,}"
        lines.append(f"| {check['target']} | {check['goal']} | {measured} | {check['verdict']} |")
    return "\n".join(lines)
