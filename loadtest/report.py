"""What a replay reports: per-job records, the summary (JSON and a table), and the files it writes.

Latency runs from a job's *scheduled* arrival to its end, so time spent waiting for a
``--concurrency`` slot, or behind a replayer that fell behind, is counted, not hidden. Percentiles
are over completed jobs: a refusal's latency says nothing about serving. ``slot_wait_ms`` is how
long jobs waited between their scheduled arrival and their sending: the wait for a
``--concurrency`` slot (near zero without a cap, unless the replayer itself fell behind).
"""

from __future__ import annotations

import datetime as dt
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import msgspec

from loadtest.plots import write_plots
from loadtest.stats import latency_summary_ms
from loadtest.targets import COMPLETED, REJECTED_STATUSES, BatchRecord


class ReplayedJob(msgspec.Struct, kw_only=True):
    """One line of ``jobs.jsonl``; times in seconds from the replay's start."""

    index: int
    """The job's position in the trace."""
    t_scheduled: float
    """When the trace says it arrives (``t / speed``)."""
    t_sent: float
    """When it was handed to the target (later than scheduled when waiting for a slot)."""
    latency_ms: float
    """From ``t_scheduled`` to its end."""
    status: str
    """``completed`` or an error code (``overloaded``, ``timed_out``, ``client_error``...)."""
    error: str | None
    operation: str
    pairs: int | None


@dataclass(slots=True)
class ReplayRun:
    """What a replay saw: one record per job (in trace order) and the target's batches."""

    records: list[ReplayedJob]
    wall_s: float
    """From the replay's start to the last job's end."""
    batches: list[BatchRecord] | None
    """``at`` counted in seconds from the replay's start."""
    started_at: float
    """Unix time the replay started."""
    fleet: dict[str, Any] | None = None
    """An emulated RunPod fleet's ``GET /fleet`` (``loadtest/fleet.py``), when the target has one."""


class Summary(msgspec.Struct, kw_only=True, omit_defaults=True):
    """``summary.json``: one replay in numbers."""

    trace: str
    target: str
    started: str
    speed: float
    concurrency: int | None
    jobs: int
    completed: int
    failed: int
    """Ended with an error other than a refusal for lack of room."""
    rejected: int
    """Refused for lack of room: ``overloaded`` or ``unavailable``."""
    pairs: int | None
    """NLI pairs of completed jobs; ``None`` where the target does not report them (HTTP)."""
    wall_s: float
    jobs_per_s: float
    """Completed jobs per second of wall time."""
    pairs_per_s: float | None
    latency_ms: dict[str, float]
    slot_wait_ms: dict[str, float]
    statuses: dict[str, int]
    batches: int | None = None
    mean_batch_pairs: float | None = None
    merged_pairs: int | None = None
    """Pairs computed once for several jobs (identical pairs in one batch)."""
    padding_efficiency: float | None = None

    def table(self) -> str:
        rows = [
            ("trace", f"{self.trace} at {self.speed:g}x"
             + (f", at most {self.concurrency} in flight" if self.concurrency else "")),
            ("target", self.target),
            ("jobs", f"{self.jobs}: {self.completed} completed, {self.failed} failed, {self.rejected} rejected"),
            ("pairs", "not reported by the target" if self.pairs is None else f"{self.pairs}"),
            ("wall time", f"{self.wall_s:.2f} s"),
            ("throughput", f"{self.jobs_per_s:.1f} jobs/s"
             + ("" if self.pairs_per_s is None else f", {self.pairs_per_s:.1f} pairs/s")),
            ("latency", _percentiles(self.latency_ms)),
            # With a cap this is the wait for a --concurrency slot; without, the replayer's own lag.
            ("waited for a slot" if self.concurrency else "replayer lag", _percentiles(self.slot_wait_ms)),
        ]  # fmt: skip
        if self.batches is not None:
            rows += [
                ("batches", f"{self.batches}, mean {self.mean_batch_pairs or 0:.1f} pairs, "
                            f"{self.merged_pairs or 0} pairs merged"),
                ("padding efficiency", f"{self.padding_efficiency or 0:.3f}"),
            ]
        errors = {status: n for status, n in self.statuses.items() if status != COMPLETED}
        if errors:
            rows.append(("errors", ", ".join(f"{status} {n}" for status, n in sorted(errors.items()))))
        width = max(len(name) for name, _ in rows)
        return "\n".join(f"{name:<{width}}  {value}" for name, value in rows)


def summarize(run: ReplayRun, *, trace: str, target: str, speed: float, concurrency: int | None) -> Summary:
    records = run.records
    statuses = Counter(record.status for record in records)
    completed = [record for record in records if record.status == COMPLETED]
    rejected = sum(n for status, n in statuses.items() if status in REJECTED_STATUSES)
    known = [record.pairs for record in records if record.pairs is not None]
    pairs = sum(record.pairs or 0 for record in completed) if known else None
    wall_s = max(run.wall_s, 1e-9)
    summary = Summary(
        trace=trace,
        target=target,
        started=dt.datetime.fromtimestamp(run.started_at, dt.UTC).isoformat(timespec="seconds").replace("+00:00", "Z"),
        speed=speed,
        concurrency=concurrency,
        jobs=len(records),
        completed=len(completed),
        failed=len(records) - len(completed) - rejected,
        rejected=rejected,
        pairs=pairs,
        wall_s=round(run.wall_s, 3),
        jobs_per_s=round(len(completed) / wall_s, 2),
        pairs_per_s=None if pairs is None else round(pairs / wall_s, 2),
        latency_ms=latency_summary_ms([record.latency_ms / 1e3 for record in completed]),
        slot_wait_ms=latency_summary_ms([record.t_sent - record.t_scheduled for record in records]),
        statuses=dict(sorted(statuses.items())),
    )
    if run.batches is not None:
        summary = _with_batches(summary, run.batches)
    return summary


def _with_batches(summary: Summary, batches: list[BatchRecord]) -> Summary:
    padded = sum(batch.padded_tokens for batch in batches)
    real = sum(batch.real_tokens for batch in batches)
    return msgspec.structs.replace(
        summary,
        batches=len(batches),
        mean_batch_pairs=round(sum(batch.pairs for batch in batches) / len(batches), 2) if batches else 0.0,
        merged_pairs=sum(batch.merged_pairs for batch in batches),
        padding_efficiency=round(real / padded, 4) if padded else 1.0,
    )


def write_report(out_dir: Path, summary: Summary, run: ReplayRun) -> list[str]:
    """Write summary.json, jobs.jsonl (and batches.jsonl, plots); returns lines to print."""
    out_dir.mkdir(parents=True, exist_ok=True)
    encoder = msgspec.json.Encoder()
    (out_dir / "summary.json").write_bytes(msgspec.json.format(encoder.encode(summary), indent=2) + b"\n")
    (out_dir / "jobs.jsonl").write_bytes(b"".join(encoder.encode(record) + b"\n" for record in run.records))
    written = ["summary.json", "jobs.jsonl"]
    if run.batches is not None:
        (out_dir / "batches.jsonl").write_bytes(b"".join(encoder.encode(batch) + b"\n" for batch in run.batches))
        written.append("batches.jsonl")
    if run.fleet is not None:
        (out_dir / "fleet.json").write_bytes(msgspec.json.format(encoder.encode(run.fleet), indent=2) + b"\n")
        written.append("fleet.json")
    fleet = None if run.fleet is None else fleet_since(run.fleet, run.started_at)
    plots = write_plots(out_dir, run.records, run.batches, title=f"{summary.trace} on {summary.target}", fleet=fleet)
    lines = [f"wrote {', '.join(written + [path.name for path in plots or []])} to {out_dir}"]
    if plots is None:
        lines.append("plots skipped: matplotlib is not installed (pip install 'burst-nli[plots]')")
    return lines


def fleet_since(report: dict[str, Any], started_at: float) -> list[list[float]]:
    """The fleet's timeline rows with ``t`` counted from the replay's start, as the latency plot's."""
    offset = float(report.get("started_unix", started_at)) - started_at
    return [[row[0] + offset, *row[1:]] for row in report["timeline"]["rows"]]


def _percentiles(summary: dict[str, float]) -> str:
    return "  ".join(f"{name} {value:.1f} ms" if value == value else f"{name} n/a" for name, value in summary.items())
