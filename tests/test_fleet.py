"""The emulated RunPod fleet: its scaling rules, and real workers started and stopped by the queue."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

import anyio
import httpx
import pytest

from loadtest.emulator import FINAL_STATUSES, serve_emulator
from loadtest.fleet import FleetSettings, Scaler
from loadtest.headlines import headlines

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize(
    ("text", "message"),
    [("queue-delay", "is not a number"), ("queue-delay:-1", "positive"), ("request-count:0", "positive"),
     ("latency:2", "expected queue-delay:SECONDS or request-count:N"), ("request-count:inf", "positive")],
)  # fmt: skip
def test_a_bad_scaler_is_refused_saying_what_is_wrong(text: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        Scaler.parse(text)


def test_queue_delay_adds_one_worker_once_a_job_has_waited_and_none_is_starting() -> None:
    rule = Scaler.parse("queue-delay:2")
    assert rule.wanted(workers=1, starting=0, queued=5, running=3, oldest_wait_s=1.0) == 1
    assert rule.wanted(workers=1, starting=0, queued=5, running=3, oldest_wait_s=2.5) == 2
    assert rule.wanted(workers=2, starting=1, queued=5, running=3, oldest_wait_s=9.0) == 2
    assert rule.wanted(workers=2, starting=0, queued=0, running=3, oldest_wait_s=0.0) == 2


def test_request_count_wants_one_worker_per_n_jobs_queued_or_running() -> None:
    rule = Scaler.parse("request-count:4")
    assert rule.wanted(workers=0, starting=0, queued=9, running=0, oldest_wait_s=0.0) == 3
    assert rule.wanted(workers=3, starting=0, queued=0, running=0, oldest_wait_s=0.0) == 0


def test_fleet_settings_check_their_bounds() -> None:
    with pytest.raises(ValueError, match="workers-min"):
        FleetSettings(workers_max=1, workers_min=2)


async def test_the_fleet_grows_under_a_backlog_serves_it_all_and_shrinks_when_idle(tmp_path, monkeypatch) -> None:
    # Each worker holds 2 jobs at once, so a burst of 12 leaves a backlog in the queue: the
    # queue-delay scaler adds workers (real processes, one at a time), every job completes on
    # one of them, and the idle ones stop again.
    monkeypatch.setenv("MODEL_NAME", "synthetic:tiny")
    monkeypatch.setenv("WARMUP_MAX_LEN", "16")
    monkeypatch.setenv("MAX_CONCURRENCY", "2")
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])))
    texts = headlines()
    jobs = [{"operation": "classify_batch", "headlines": [f"{j} {t}" for t in texts[:64]]} for j in range(12)]
    fleet = FleetSettings(workers_max=3, scaler=Scaler.parse("queue-delay:0.2"), idle_timeout_s=1.0, log_dir=tmp_path)
    async with (
        serve_emulator(long_poll_s=1.0, fleet=fleet) as emu,
        httpx.AsyncClient(base_url=emu.base_url, timeout=30) as client,
    ):
        ids = [(await client.post("/run", json={"input": job})).json()["id"] for job in jobs]
        final: dict[str, dict] = {}
        with anyio.fail_after(240):
            while len(final) < len(ids):
                for job_id in [i for i in ids if i not in final]:
                    body = (await client.get(f"/status/{job_id}")).json()
                    if body["status"] in FINAL_STATUSES:
                        final[job_id] = body
                await asyncio.sleep(0.25)  # another process's progress: nothing to wait on but polling
        with anyio.fail_after(60):
            while (await client.get("/fleet")).json()["timeline"]["rows"][-1][1] > 0:
                await asyncio.sleep(0.25)  # idle workers stop after the idle timeout
        report = (await client.get("/fleet")).json()

    assert [final[i]["status"] for i in ids] == ["COMPLETED"] * len(ids)
    workers = {w["id"]: w for w in report["workers"]}
    assert 2 <= len(workers) <= 3, "the backlog grew the fleet, within its maximum"
    assert all(w["cold_start_s"] is not None and w["cold_start_s"] > 0 for w in workers.values())
    assert {final[i]["workerId"] for i in ids} <= set(workers)
    assert all(w["stopping_s"] is not None for w in workers.values()), "idle workers were stopped"
    assert report["timeline"]["columns"] == ["t_s", "workers_up", "workers_ready", "jobs_queued", "jobs_running"]
    assert max(row[1] for row in report["timeline"]["rows"]) == len(workers)


# --- the planner: the same model, simulated, against the emulated fleet --------------------------------


def test_the_planner_simulates_cold_starts_the_scaler_and_idle_stops() -> None:
    from loadtest.planner import FleetPlan, WorkerModel, simulate

    arrivals = [(0.0, 6)] * 10 + [(30.0, 6)] * 10
    model = WorkerModel(rate_pairs_s=1000, cold_start_s=4.0)
    cold = simulate(arrivals, FleetPlan(2, 0, Scaler.parse("queue-delay:0.5"), 3.0), model)
    # each burst waits for a worker: the scaler's delay, the tick, the cold start, then 60 pairs
    assert 4500 <= cold.latency_ms["p50"] <= 5000 and cold.workers_started == 2
    assert 2 * (4 + 3) <= cold.worker_seconds <= 2 * (4 + 3 + 1.5)
    warm = simulate(arrivals, FleetPlan(2, 1, Scaler.parse("queue-delay:0.5"), 3.0), model)
    assert warm.latency_ms["p99"] <= 61 and warm.workers_started == 0 and warm.active_seconds >= 30
    full = simulate([(0.0, 6)] * 20, FleetPlan(1, 1, Scaler.parse("queue-delay:9"), 3.0),
                    WorkerModel(rate_pairs_s=10_000, cold_start_s=0.0, max_concurrency=4))  # fmt: skip
    assert full.latency_ms["max"] >= 4000, "a full worker waits a second before taking more, as the SDK does"


async def test_the_planner_matches_the_emulated_fleet_within_a_quarter(tmp_path, monkeypatch) -> None:
    # Two bursts far enough apart that the fleet starts, serves, idles out and starts again: the
    # real fleet's latency percentiles and billed worker-seconds, against the planner's for the
    # same trace, with the cold start the real one measured and the engine's rate.
    from loadtest.planner import FleetPlan, WorkerModel, simulate
    from loadtest.replay import replay
    from loadtest.targets import TargetOptions, open_target
    from schemas.trace import Trace, TraceHeader, TraceJob

    monkeypatch.setenv("MODEL_NAME", "synthetic:tiny")
    monkeypatch.setenv("WARMUP_MAX_LEN", "16")
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])))
    texts = headlines()
    times = [i * 0.05 for i in range(30)] + [14 + i * 0.05 for i in range(30)]
    jobs = [TraceJob(t, {"operation": "classify", "headline": texts[i % len(texts)]}) for i, t in enumerate(times)]
    trace = Trace(TraceHeader(trace=1, name="two-bursts", created="2025-08-14T13:40:00Z"), jobs)
    plan = FleetPlan(workers_max=2, workers_min=0, scaler=Scaler.parse("queue-delay:0.5"), idle_timeout_s=3.0)
    settings = FleetSettings(workers_max=2, scaler=plan.scaler, idle_timeout_s=plan.idle_timeout_s, log_dir=tmp_path)
    async with serve_emulator(long_poll_s=1.0, fleet=settings) as emu:
        async with open_target(emu.root_url, TargetOptions(mode="runsync")) as target:  # no polling delay
            run = await replay(trace, target)
        with anyio.fail_after(60):
            async with httpx.AsyncClient(base_url=emu.root_url) as client:
                while (report := (await client.get("/fleet")).json())["timeline"]["rows"][-1][1] > 0:
                    await asyncio.sleep(0.25)  # the last worker idles out
    assert all(record.status == "completed" for record in run.records)
    latencies = sorted(record.latency_ms for record in run.records)
    real = {"p50": latencies[len(latencies) // 2], "p99": latencies[-1]}
    workers = report["workers"]
    real_worker_s = sum(w["stopping_s"] - w["started_s"] for w in workers)
    cold_start_s = sum(w["cold_start_s"] for w in workers) / len(workers)

    planned = simulate([(t, 5) for t in times], plan, WorkerModel(rate_pairs_s=2000, cold_start_s=cold_start_s))
    for name in ("p50", "p99"):
        assert abs(planned.latency_ms[name] - real[name]) <= 0.25 * real[name], (name, planned.latency_ms, real)
    assert abs(planned.worker_seconds - real_worker_s) <= 0.25 * real_worker_s, (planned.worker_seconds, real_worker_s)
