"""Scenario 7, soak: a couple of thousand jobs through a real pod server with a short JOB_TTL_S;
this process's RSS and the jobs the server holds stay flat, and the store empties once the load
stops and the TTL has passed (figures for a longer run: ``python -m loadtest chaos --only soak``)."""

from __future__ import annotations

from loadtest import chaos
from worker.model import NliModel

JOBS_PER_S = 65.0
TTL_S = 2.0


async def test_a_soak_through_the_pod_server_keeps_memory_and_the_job_store_flat(tiny_model: NliModel) -> None:
    report = await chaos.soak(tiny_model, seconds=30.0, jobs_per_s=JOBS_PER_S, ttl_s=TTL_S)
    figures = report.figures
    assert chaos.healthy(report), report.as_dict()
    assert report.submitted >= 1900 and report.ended == {"completed": report.submitted}, report.ended
    # Flat after the warm-up: RSS within chaos.RSS_TOLERANCE_MB, jobs held within JOBS_HELD_TOLERANCE.
    assert figures["rss_flat"] and figures["store_flat"], figures
    # Retention, not the load's length, bounds the store: it never held more than a few TTLs' worth
    # of arrivals (the jobs in flight included), a fraction of the jobs sent...
    assert figures["jobs_held_max"] <= JOBS_PER_S * (TTL_S + 5.0) < report.submitted / 4, figures
    # ...and once the load stops and the TTL passes, it holds nothing at all.
    assert figures["jobs_held_after_ttl"] == 0


def test_the_soak_verdict_passes_a_plateau_and_flags_growth() -> None:
    """The verdict the soak (and RELIABILITY.md) reports can fail: steady growth is caught."""
    plateau = [(i / 2, 500.0 + i % 3, 130 + i % 5) for i in range(80)]  # 40 s sampled every 0.5 s
    leak = [(i / 2, 500.0 + i, 130 + 10 * i) for i in range(80)]  # 2 MB/s, and jobs never forgotten
    flat = chaos.soak_flatness(plateau, 40.0, retention_jobs=130)
    growing = chaos.soak_flatness(leak, 40.0, retention_jobs=130)
    assert flat["rss_flat"] and flat["store_flat"], flat
    assert not growing["rss_flat"] and not growing["store_flat"], growing
    assert growing["rss_slope_mb_per_min"] == 120.0


async def test_a_soak_through_a_pod_of_fronts_keeps_every_process_and_its_store_flat(tiny_model: NliModel) -> None:
    # Scenario 7 against `pod --front-processes 2`: the memory of both fronts and the model
    # process (the pod's own scrape), and the jobs the fronts hold. Every job completes: none is
    # refused by a front that had not reached its model process yet while the other served.
    report = await chaos.soak_processes(tiny_model, seconds=10.0, jobs_per_s=60.0, ttl_s=TTL_S)
    figures = report.figures
    assert chaos.healthy(report), report.as_dict()
    assert report.ended == {"completed": report.submitted} and report.submitted == 600, report.ended
    assert figures["processes_sampled"] == ["front-0", "front-1", "model"]
    assert figures["rss_flat"] and figures["store_flat"], figures
    assert figures["jobs_held_after_ttl"] == 0 and figures["serves_after"], figures
