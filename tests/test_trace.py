"""The trace format: what the generator writes, the pod's --record appends and the replayer reads."""

from __future__ import annotations

import datetime as dt
import json
from importlib.resources import files
from pathlib import Path

import pytest

from schemas import DEFAULT_SCHEMA
from schemas.trace import TraceError, TraceJob, TraceRecorder, new_header, read_trace, write_trace

HEADER = '{"trace": 1, "name": "t", "created": "2025-08-14T13:40:00Z"}'
JOB = '{"t": 0.5, "input": {"operation": "classify", "headline": "Apple Declares $0.25 Dividend"}}'


def test_a_written_trace_reads_back_the_same(tmp_path):
    header = new_header("peak", "a test trace", created="2025-08-14T13:40:00Z")
    jobs = [TraceJob(t=0.0, input={"operation": "classify", "headline": "Fed Raises Rates"}),
            TraceJob(t=1.25, input={"operation": "nli", "pairs": [["a", "b"]]})]  # fmt: skip
    assert write_trace(tmp_path / "t.jsonl", header, jobs) == 2
    trace = read_trace(tmp_path / "t.jsonl")
    assert trace.header == header and trace.jobs == jobs and trace.duration_s == 1.25


def test_jobs_come_back_in_arrival_order_ties_in_file_order(tmp_path):
    lines = [HEADER, '{"t": 2, "input": {"n": 1}}', '{"t": 1, "input": {"n": 2}}', '{"t": 2, "input": {"n": 3}}']
    (tmp_path / "t.jsonl").write_text("\n".join(lines) + "\n")
    assert [job.input["n"] for job in read_trace(tmp_path / "t.jsonl").jobs] == [2, 1, 3]


def _write(path: Path, *lines: str) -> Path:
    path.write_text("".join(line + "\n" for line in lines))
    return path


@pytest.mark.parametrize(
    ("lines", "where", "reason"),
    [
        ((), "", "empty file"),
        (("not json",), ":1:", "expected a header"),
        (("not json",), ":1:", "malformed JSON: unexpected character at byte 0"),
        (('{"name": "t", "created": "2025-08-14T13:40:00Z"}',), ":1:", "trace: missing required field"),
        (('{"trace": 2, "name": "t", "created": "2025-08-14T13:40:00Z"}',), ":1:", "version 2 is not supported"),
        (('{"trace": 1, "name": "t", "created": "yesterday"}',), ":1:", "ISO 8601"),
        ((HEADER, JOB, "{oops"), ":3:", 'expected a job {"t": <seconds>'),
        ((HEADER, '{"input": {}}'), ":2:", "t: missing required field"),
        ((HEADER, '{"t": "soon", "input": {}}'), ":2:", "t: expected float, got str"),
        ((HEADER, '{"t": -1, "input": {}}'), ":2:", "t must be a finite number of seconds >= 0"),
        ((HEADER, '{"t": 1e999, "input": {}}'), ":2:", "t: number out of range"),
        ((HEADER, '{"t": 1, "input": ["classify"]}'), ":2:", "input must be a JSON object, got list"),
        ((HEADER, '{"t": 1, "input": {}, "id": 3}'), ":2:", "id: unknown field"),
        ((HEADER, "", JOB, "", "[]"), ":5:", "expected a job"),
        ((HEADER, "[]"), ":2:", "line: expected an object, got array"),  # blank lines still count
    ],
)
def test_a_bad_line_is_rejected_with_its_line_number(tmp_path, lines, where, reason):
    path = _write(tmp_path / "bad.jsonl", *lines)
    with pytest.raises(TraceError) as raised:
        read_trace(path)
    message = str(raised.value)
    assert message.startswith(f"{path}{where}") and reason in message


def test_a_missing_file_is_a_trace_error(tmp_path):
    with pytest.raises(TraceError, match="cannot read"):
        read_trace(tmp_path / "missing.jsonl")


def test_the_recorder_writes_a_header_then_one_line_per_job(tmp_path):
    path = tmp_path / "rec.jsonl"
    with TraceRecorder(path, name="pod", description="recorded") as recorder:
        recorder.record({"operation": "classify", "headline": "A"})
        recorder.record({"operation": "classify", "headline": "B"})
        assert recorder.recorded == 2
    trace = read_trace(path)
    assert (trace.header.name, trace.header.description) == ("pod", "recorded")
    assert [job.input["headline"] for job in trace.jobs] == ["A", "B"]
    assert 0 <= trace.jobs[0].t <= trace.jobs[1].t


def test_reopening_a_recording_appends_on_the_same_timeline(tmp_path):
    path = tmp_path / "rec.jsonl"
    an_hour_ago = (dt.datetime.now(dt.UTC) - dt.timedelta(hours=1)).isoformat()
    _write(path, json.dumps({"trace": 1, "name": "day", "created": an_hour_ago}), JOB)
    with TraceRecorder(path, name="ignored") as recorder:
        recorder.record({"operation": "classify", "headline": "after restart"})
    trace = read_trace(path)
    assert trace.header.name == "day"  # the existing header is kept, not rewritten
    assert [job.t for job in trace.jobs][0] == 0.5
    assert trace.jobs[-1].t >= 3599  # counted from the header's created, not from the reopen


def test_reopening_after_a_crash_mid_line_drops_only_the_cut_line(tmp_path):
    path = tmp_path / "rec.jsonl"
    path.write_text(HEADER + "\n" + JOB + "\n" + '{"t": 3.0, "input": {"operation": "clas')
    with TraceRecorder(path) as recorder:
        recorder.record({"operation": "classify", "headline": "next"})
    trace = read_trace(path)
    assert [job.input["headline"] for job in trace.jobs] == ["Apple Declares $0.25 Dividend", "next"]


def test_the_recorder_refuses_a_file_that_is_not_a_trace(tmp_path):
    path = _write(tmp_path / "notes.jsonl", '{"hello": "world"}')
    with pytest.raises(TraceError, match=":1: expected a header"):
        TraceRecorder(path)
    assert path.read_text() == '{"hello": "world"}\n'


DATA = Path(str(files("loadtest") / "data"))
BUNDLED = sorted(DATA.glob("*.jsonl"))


def test_traces_are_bundled():
    assert {path.stem for path in BUNDLED} >= {"peak-minute", "benzinga-2025-08-14_18"}


@pytest.mark.parametrize("path", BUNDLED, ids=lambda path: path.stem)
def test_a_bundled_trace_loads_small_and_every_job_decodes(path):
    assert path.stat().st_size < 256_000
    trace = read_trace(path)
    assert trace.header.name == path.stem and trace.jobs
    for job in trace.jobs:
        DEFAULT_SCHEMA.decode_input(job.input)


def test_the_bundled_peak_minute_is_339_jobs_within_a_minute_front_loaded():
    jobs = read_trace(DATA / "peak-minute.jsonl").jobs
    assert len(jobs) == 339 and jobs[-1].t < 60
    assert sum(job.t < 10 for job in jobs) > 339 * 0.7


def test_the_bundled_recording_keeps_the_feeds_publication_times():
    trace = read_trace(DATA / "benzinga-2025-08-14_18.jsonl")
    feed = [json.loads(line) for line in Path(__file__).with_name("data").joinpath(
        "benzinga_headlines_2025-08-14_18.jsonl").read_text().splitlines()]  # fmt: skip
    start = dt.datetime.fromisoformat(trace.header.created)
    expected = sorted(
        (dt.datetime.fromisoformat(a["published_time"]).replace(year=2025, month=8, day=14) - start).total_seconds()
        for a in feed
    )
    assert [job.t for job in trace.jobs] == expected
    assert sorted(job.input.get("headline", "") for job in trace.jobs) == sorted(a["headline"] for a in feed)
