"""PNG plots of a replay: latency over time with the arrivals, and batch sizes over time.

matplotlib is optional (the ``plots`` extra): it is imported here only, and only when plots are
asked for. Figures are built with ``matplotlib.figure.Figure`` directly, without pyplot, so no GUI
backend or global state is involved.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Protocol

from loadtest.targets import COMPLETED, BatchRecord


class PlottedJob(Protocol):
    """What the latency plot reads of a replayed job (``loadtest.report.ReplayedJob``)."""

    t_scheduled: float
    latency_ms: float
    status: str


def write_plots(
    out_dir: Path,
    records: Sequence[PlottedJob],
    batches: Sequence[BatchRecord] | None,
    *,
    title: str,
    fleet: Sequence[Sequence[float]] | None = None,
) -> list[Path] | None:
    """``latency.png``; ``batches.png`` when batches are known; ``fleet.png`` when the target was an
    emulated fleet (rows: t, workers up, workers ready, jobs queued, jobs running); ``None``
    without matplotlib."""
    try:
        from matplotlib.figure import Figure
    except ImportError:
        return None
    paths = [out_dir / "latency.png"]
    _latency_figure(Figure(figsize=(10, 6), layout="constrained"), records, title).savefig(paths[0], dpi=110)
    if batches:
        paths.append(out_dir / "batches.png")
        _batch_figure(Figure(figsize=(10, 6), layout="constrained"), batches, title).savefig(paths[-1], dpi=110)
    if fleet:
        paths.append(out_dir / "fleet.png")
        _fleet_figure(Figure(figsize=(10, 6), layout="constrained"), fleet, title).savefig(paths[-1], dpi=110)
    return paths


def _latency_figure(fig, records: Sequence[PlottedJob], title: str):  # type: ignore[no-untyped-def]
    top, bottom = fig.subplots(2, 1, sharex=True, height_ratios=(3, 1))
    fig.suptitle(f"Job latency over time: {title}")
    ok = [r for r in records if r.status == COMPLETED]
    bad = [r for r in records if r.status != COMPLETED]
    top.scatter([r.t_scheduled for r in ok], [r.latency_ms for r in ok], s=8, alpha=0.6, label="completed")
    if bad:
        top.scatter([r.t_scheduled for r in bad], [r.latency_ms for r in bad], s=14, marker="x", color="tab:red",
                    label="failed or rejected")  # fmt: skip
    top.set_ylabel("latency from scheduled arrival (ms)")
    latencies = [r.latency_ms for r in records if r.latency_ms > 0]
    if latencies and max(latencies) / min(latencies) > 100:
        top.set_yscale("log")
    top.legend(loc="upper right")
    top.grid(alpha=0.3)
    arrivals = [r.t_scheduled for r in records]
    span = max(arrivals, default=0.0)
    width = _bin_width(span)
    bottom.hist(arrivals, bins=max(int(span / width) + 1, 1), range=(0, (int(span / width) + 1) * width),
                color="tab:gray")  # fmt: skip
    bottom.set_ylabel(f"arrivals per {width:g} s")
    bottom.set_xlabel("seconds since the replay started (scheduled arrival)")
    return fig


def _batch_figure(fig, batches: Sequence[BatchRecord], title: str):  # type: ignore[no-untyped-def]
    top, bottom = fig.subplots(2, 1, sharex=True, height_ratios=(3, 1))
    fig.suptitle(f"Batches over time: {title}")
    at = [b.at for b in batches]
    top.scatter(at, [b.pairs for b in batches], s=10, alpha=0.7)
    top.set_ylabel("pairs per batch")
    top.grid(alpha=0.3)
    bottom.scatter(at, [b.real_tokens / b.padded_tokens if b.padded_tokens else 1.0 for b in batches], s=6,
                   color="tab:green")  # fmt: skip
    bottom.set_ylim(0, 1.05)
    bottom.set_ylabel("padding efficiency")
    bottom.set_xlabel("seconds since the replay started (batch end)")
    return fig


def _fleet_figure(fig, rows: Sequence[Sequence[float]], title: str):  # type: ignore[no-untyped-def]
    top, bottom = fig.subplots(2, 1, sharex=True, height_ratios=(1, 1))
    fig.suptitle(f"The fleet over time: {title}")
    t = [row[0] for row in rows]
    top.step(t, [row[1] for row in rows], where="post", label="workers up")
    top.step(t, [row[2] for row in rows], where="post", label="workers ready (cold start over)")
    top.set_ylabel("workers")
    top.legend(loc="upper right")
    top.grid(alpha=0.3)
    bottom.step(t, [row[3] for row in rows], where="post", color="tab:red", label="jobs queued (at RunPod)")
    bottom.step(t, [row[4] for row in rows], where="post", color="tab:green", label="jobs running (on workers)")
    bottom.set_ylabel("jobs")
    bottom.legend(loc="upper right")
    bottom.grid(alpha=0.3)
    bottom.set_xlabel("seconds since the replay started")
    return fig


def _bin_width(span_s: float) -> float:
    """A round bin width giving at most about 120 bins."""
    for width in (0.01, 0.05, 0.1, 0.5, 1, 5, 10, 30, 60, 300, 600):
        if span_s / width <= 120:
            return width
    return 3600.0
