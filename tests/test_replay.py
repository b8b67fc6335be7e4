"""The replayer: open-loop timing, the in-process target, and the reports it writes."""

from __future__ import annotations

import importlib.util
import io
import json
import sys
import threading
from typing import Any

import anyio
import msgspec
import pytest

from loadtest.__main__ import main
from loadtest.progress import ProgressBar
from loadtest.replay import replay
from loadtest.report import ReplayedJob, ReplayRun, fleet_since, summarize, write_report
from loadtest.targets import JobResult, TargetOptions, open_target
from loadtest.targets.inproc import InprocTarget
from schemas.trace import Trace, TraceJob, new_header, write_trace
from worker.settings import Settings

SETTINGS = Settings(model_name="synthetic:tiny", device="cpu", warmup_max_len=16)
HEADLINES = ["Apple Declares $0.25 Dividend", "Fed Raises Interest Rates by 25 Basis Points", "Why the Fed Is Wrong"]


def small_trace(count: int = 12, *, step_s: float = 0.01, bad: bool = False) -> Trace:
    """``count`` valid jobs ``step_s`` apart (classify with a company, strategic catalyst: 6 pairs each);
    with ``bad``, one more whose blank headline fails ``invalid_input``."""
    jobs = []
    for i in range(count):
        headline = HEADLINES[i % len(HEADLINES)]
        job = {"operation": "classify", "headline": headline, "company": "Apple"} if i % 2 == 0 else (
            {"operation": "detect_strategic_catalyst", "headline": headline})  # fmt: skip
        jobs.append(TraceJob(t=round(i * step_s, 4), input=job))
    if bad:
        jobs.append(TraceJob(t=round(count * step_s, 4), input={"operation": "classify", "headline": " "}))
    return Trace(header=new_header("small", created="2025-08-14T13:40:00Z"), jobs=jobs)


class Watch:
    """An observer that counts sends and ends, with an event once ``expected`` jobs were sent."""

    def __init__(self, expected: int) -> None:
        self.expected = expected
        self.sent = 0
        self.done: list[ReplayedJob] = []
        self.max_in_flight = 0
        self.all_sent = anyio.Event()
        self._done_events: dict[int, anyio.Event] = {}

    def on_sent(self, index: int) -> None:
        self.sent += 1
        self.max_in_flight = max(self.max_in_flight, self.sent - len(self.done))
        if self.sent == self.expected:
            self.all_sent.set()

    def on_done(self, record: ReplayedJob) -> None:
        self.done.append(record)
        for count, event in self._done_events.items():
            if len(self.done) >= count:
                event.set()

    async def some_done(self, count: int) -> None:
        """Return once ``count`` jobs have ended."""
        if len(self.done) < count:
            await self._done_events.setdefault(count, anyio.Event()).wait()


class GatedModel:
    """The tiny model whose batches wait on a gate: an engine that is blocked until released."""

    def __init__(self, model: Any, gate: threading.Event) -> None:
        self._model, self._gate = model, gate

    def __getattr__(self, name: str) -> Any:
        return getattr(self._model, name)

    def run(self, batch: Any) -> Any:
        self._gate.wait(timeout=60)
        return self._model.run(batch)


class HeldTarget:
    """A fake target whose jobs all end when ``release`` is set (``None``: they never end)."""

    name = "held"
    batches = None

    def __init__(self, release: anyio.Event | None, result: JobResult = JobResult("completed", pairs=1)) -> None:
        self.release, self.result = release, result

    async def submit(self, job_input: dict[str, Any]) -> JobResult:
        if self.release is None:
            await anyio.sleep_forever()
        else:
            await self.release.wait()
        return self.result


async def test_an_inproc_replay_completes_every_job_and_reports_it_consistently(tiny_model, tmp_path):
    trace = small_trace(12, bad=True)
    async with InprocTarget.start(SETTINGS, model=tiny_model) as target:
        run = await replay(trace, target, speed=10)
        name = target.name
    assert name == "inproc synthetic:tiny on cpu"
    summary = summarize(run, trace="small", target=name, speed=10, concurrency=None)

    assert (summary.jobs, summary.completed, summary.failed, summary.rejected) == (13, 12, 1, 0)
    assert summary.statuses == {"completed": 12, "invalid_input": 1}
    assert summary.pairs == 12 * 6
    assert run.batches and summary.batches == len(run.batches)
    assert summary.pairs == sum(batch.pairs for batch in run.batches)  # every pair ran in some batch
    assert summary.mean_batch_pairs == round(summary.pairs / summary.batches, 2)
    assert summary.merged_pairs == sum(batch.merged_pairs for batch in run.batches)
    assert 0 < summary.padding_efficiency <= 1  # type: ignore[operator]
    assert summary.jobs_per_s == round(12 / run.wall_s, 2)
    latency = summary.latency_ms
    assert 0 < latency["p50"] <= latency["p90"] <= latency["p99"] <= latency["max"]
    assert "padding efficiency" in summary.table() and "invalid_input 1" in summary.table()

    write_report(tmp_path, summary, run)
    written = json.loads((tmp_path / "summary.json").read_text())
    assert written == msgspec.to_builtins(summary)
    lines = [json.loads(line) for line in (tmp_path / "jobs.jsonl").read_text().splitlines()]
    assert [line["index"] for line in lines] == list(range(13))
    assert [line["operation"] for line in lines] == [job.input["operation"] for job in trace.jobs]
    assert [line["t_scheduled"] for line in lines] == pytest.approx([job.t / 10 for job in trace.jobs], abs=1e-6)
    assert lines[-1]["status"] == "invalid_input" and lines[-1]["error"].startswith("invalid_input: headline")
    assert all(line["t_sent"] >= line["t_scheduled"] and line["latency_ms"] > 0 for line in lines)
    assert sum(line["pairs"] for line in lines if line["status"] == "completed") == summary.pairs


async def test_arrivals_keep_their_schedule_while_the_engine_is_blocked(tiny_model):
    trace = small_trace(10)
    gate = threading.Event()
    watch = Watch(expected=10)
    runs: list[ReplayRun] = []
    try:
        async with InprocTarget.start(SETTINGS, model=GatedModel(tiny_model, gate)) as target:
            with anyio.fail_after(30):
                async with anyio.create_task_group() as tg:

                    async def go() -> None:
                        runs.append(await replay(trace, target, speed=10, observer=watch))

                    tg.start_soon(go)
                    await watch.all_sent.wait()  # a closed-loop replayer would never get here
                    assert watch.done == []  # every job was sent while none could finish
                    gate.set()
    finally:
        gate.set()
    records = runs[0].records
    assert [r.status for r in records] == ["completed"] * 10
    assert max(r.t_sent for r in records) < min(r.t_scheduled + r.latency_ms / 1e3 for r in records)


async def test_a_concurrency_cap_makes_arrivals_wait_and_the_wait_counts_in_latency():
    trace = small_trace(6, step_s=0.0)
    release = anyio.Event()
    watch = Watch(expected=6)
    runs: list[ReplayRun] = []
    with anyio.fail_after(10):
        async with anyio.create_task_group() as tg:

            async def go() -> None:
                runs.append(await replay(trace, HeldTarget(release), concurrency=2, observer=watch))

            tg.start_soon(go)
            await anyio.wait_all_tasks_blocked()
            assert watch.sent == 2  # four arrivals wait for a slot
            release.set()
    assert watch.max_in_flight == 2 and watch.sent == 6
    records = runs[0].records
    assert all(r.t_scheduled == 0 for r in records)
    waited = [r for r in records if r.t_sent > 0]
    assert len(waited) >= 4
    assert all(r.latency_ms >= r.t_sent * 1e3 for r in records)  # latency runs from the schedule


async def test_a_job_past_the_timeout_is_abandoned_and_counted_failed():
    trace = small_trace(3)
    with anyio.fail_after(10):
        run = await replay(trace, HeldTarget(None), speed=100, timeout_s=0.01)
    summary = summarize(run, trace="small", target="held", speed=100, concurrency=None)
    assert (summary.completed, summary.failed, summary.statuses) == (0, 3, {"timed_out": 3})
    assert run.records[0].error == "timed_out: no result 0.01 s after sending (--timeout)"


async def test_refusals_for_lack_of_room_count_as_rejected():
    overloaded = JobResult.from_output({"error": "overloaded: queue full (50000 pairs); retry"})
    assert overloaded.status == "overloaded"
    release = anyio.Event()
    release.set()
    run = await replay(small_trace(4), HeldTarget(release, overloaded), speed=100)
    summary = summarize(run, trace="small", target="held", speed=100, concurrency=None)
    assert (summary.jobs, summary.completed, summary.failed, summary.rejected) == (4, 0, 0, 4)
    assert summary.batches is None and "batches" not in msgspec.to_builtins(summary)


def test_the_command_prints_the_table_and_writes_the_report(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("WARMUP_MAX_LEN", "16")
    path = tmp_path / "small.jsonl"
    trace = small_trace(8)
    write_trace(path, trace.header, trace.jobs)
    out = tmp_path / "out"
    args = ["replay", str(path), "--model", "synthetic:tiny", "--device", "cpu", "--speed", "100", "--out", str(out)]
    assert main(args) == 0
    printed = capsys.readouterr()
    assert "8: 8 completed, 0 failed, 0 rejected" in printed.out and "padding efficiency" in printed.out
    assert "\r[" not in printed.err  # no progress bar when stderr is not a terminal
    summary = json.loads((out / "summary.json").read_text())
    for field in ("jobs", "completed", "failed", "rejected", "pairs", "wall_s", "jobs_per_s", "pairs_per_s",
                  "batches", "mean_batch_pairs", "merged_pairs", "padding_efficiency"):  # fmt: skip
        assert field in summary
    assert set(summary["latency_ms"]) == {"p50", "p90", "p99", "max"}
    assert len((out / "jobs.jsonl").read_text().splitlines()) == 8
    if importlib.util.find_spec("matplotlib") is not None:
        for name in ("latency.png", "batches.png"):
            assert (out / name).read_bytes().startswith(b"\x89PNG")


def test_an_emulated_fleet_is_written_and_plotted_on_the_replays_clock(tmp_path):
    record = ReplayedJob(index=0, t_scheduled=0, t_sent=0, latency_ms=5, status="completed", error=None,
                       operation="classify", pairs=6)  # fmt: skip
    fleet = {"started_unix": 98.0, "settings": {}, "workers": [],
             "timeline": {"columns": ["t_s", "workers_up", "workers_ready", "jobs_queued", "jobs_running"],
                          "rows": [[0.0, 0, 0, 0, 0], [2.5, 1, 0, 3, 0], [7.0, 1, 1, 0, 1]]}}  # fmt: skip
    run = ReplayRun([record], wall_s=0.01, batches=None, started_at=100.0, fleet=fleet)
    summary = summarize(run, trace="t", target="emulator", speed=1, concurrency=None)
    write_report(tmp_path, summary, run)
    assert json.loads((tmp_path / "fleet.json").read_text()) == fleet
    assert (tmp_path / "fleet.png").read_bytes().startswith(b"\x89PNG")
    assert fleet_since(fleet, started_at=100.0) == [[-2.0, 0, 0, 0, 0], [0.5, 1, 0, 3, 0], [5.0, 1, 1, 0, 1]]


def test_plots_are_skipped_with_a_note_without_matplotlib(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    monkeypatch.setitem(sys.modules, "matplotlib.figure", None)
    record = ReplayedJob(index=0, t_scheduled=0, t_sent=0, latency_ms=5, status="completed", error=None,
                       operation="classify", pairs=6)  # fmt: skip
    run = ReplayRun([record], wall_s=0.01, batches=None, started_at=0.0)
    summary = summarize(run, trace="t", target="held", speed=1, concurrency=None)
    lines = write_report(tmp_path, summary, run)
    assert lines[-1].startswith("plots skipped: matplotlib is not installed")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["jobs.jsonl", "summary.json"]


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ('{"trace": 1, "name": "t", "created": "2025-08-14T13:40:00Z"}\n{"t": 0, "input": {}}\nnot json\n',
         ":3: expected a job"),
        ('{"trace": 1, "name": "t", "created": "2025-08-14T13:40:00Z"}\n', "the trace has no jobs"),
    ],
)
def test_a_bad_trace_exits_2_with_a_clear_error(tmp_path, capsys, content, message):
    path = tmp_path / "bad.jsonl"
    path.write_text(content)
    assert main(["replay", str(path), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: {path}") and message in err


@pytest.mark.parametrize(
    ("target", "message"),
    [("nowhere", "expected inproc, http://host:port or runpod://ENDPOINT_ID"), ("ftp://x", "expected inproc")],
)
def test_an_unknown_target_exits_2(capsys, target, message):
    assert main(["replay", "peak-minute", "--target", target]) == 2
    assert message in capsys.readouterr().err


def test_the_progress_bar_shows_jobs_done_sent_and_failed():
    stream = io.StringIO()
    bar = ProgressBar(4, stream=stream, width=8)
    for index in range(4):
        bar.on_sent(index)
    for status in ("completed", "overloaded"):
        bar.on_done(ReplayedJob(index=0, t_scheduled=0, t_sent=0, latency_ms=1, status=status, error=None,
                              operation="classify", pairs=None))  # fmt: skip
    bar.close()
    last = stream.getvalue().rsplit("\r", 1)[-1]
    assert last.startswith("[####----] 2/4 done, 4 sent, 1 failed") and last.endswith("\n")


@pytest.mark.parametrize("mode", ["run", "runsync"])
async def test_a_replay_against_a_pod_on_loopback_completes_every_job(tiny_model, mode):
    from worker.pod import running_server

    trace = small_trace(8, bad=True)
    with anyio.fail_after(60):
        async with running_server(SETTINGS, model=tiny_model) as base_url:
            async with open_target(base_url, TargetOptions(mode=mode)) as target:
                run = await replay(trace, target, speed=100)
                name = target.name
    summary = summarize(run, trace="small", target=name, speed=100, concurrency=None)
    assert name == f"{base_url} ({mode})"
    assert (summary.jobs, summary.completed, summary.failed, summary.rejected) == (9, 8, 1, 0)
    assert run.records[-1].error is not None and run.records[-1].error.startswith("invalid_input: headline")
    assert summary.pairs is None and summary.batches is None  # not visible over HTTP


async def test_a_pod_refusing_for_lack_of_room_counts_as_rejected(tiny_model):
    from worker.pod import running_server

    gate = threading.Event()
    watch = Watch(expected=10)
    settings = msgspec.structs.replace(SETTINGS, max_queue_pairs=6)
    runs: list[ReplayRun] = []
    try:
        with anyio.fail_after(60):
            async with running_server(settings, model=GatedModel(tiny_model, gate)) as base_url:
                async with open_target(base_url, TargetOptions()) as target, anyio.create_task_group() as tg:

                    async def go() -> None:
                        runs.append(await replay(small_trace(10, step_s=0.0), target, observer=watch))

                    tg.start_soon(go)
                    # 6-pair jobs: one computing (held), one collated next, one queued; the rest refused
                    await watch.some_done(7)
                    gate.set()
    finally:
        gate.set()
    summary = summarize(runs[0], trace="small", target="pod", speed=1, concurrency=None)
    assert summary.rejected >= 7 and summary.completed + summary.rejected == 10
    assert set(summary.statuses) <= {"completed", "overloaded"}


def test_the_command_refuses_a_runpod_target_without_a_key(capsys, monkeypatch):
    monkeypatch.delenv("RUNPOD_API_KEY", raising=False)
    assert main(["replay", "peak-minute", "--target", "runpod://abc123"]) == 2
    assert "RUNPOD_API_KEY" in capsys.readouterr().err


async def test_a_job_abandoned_by_the_timeout_is_cancelled_on_the_pod(tiny_model):
    from worker.pod import running_server

    gate = threading.Event()
    try:
        with anyio.fail_after(60):
            async with running_server(SETTINGS, model=GatedModel(tiny_model, gate)) as base_url:
                async with open_target(base_url, TargetOptions()) as target:
                    run = await replay(small_trace(3), target, speed=100, timeout_s=0.2)
                    health = await target.client.health()
                gate.set()
    finally:
        gate.set()
    assert [r.status for r in run.records] == ["timed_out"] * 3
    assert health["jobs"]["cancelled"] == 3 and health["jobs"]["inProgress"] == 0
