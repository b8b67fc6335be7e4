"""The trace generator: the news feed's burst shape, the operation mix, determinism, real feeds."""

from __future__ import annotations

import datetime as dt
import statistics
from collections import Counter
from importlib.resources import files
from pathlib import Path

import pytest

from loadtest.__main__ import main
from loadtest.arrivals import EASTERN
from loadtest.generate import feed_trace, generate_trace, parse_start
from loadtest.job_inputs import DEFAULT_MIX, parse_mix
from schemas import DEFAULT_SCHEMA, OPERATIONS
from schemas.trace import read_trace

FEED = Path(__file__).with_name("data") / "benzinga_headlines_2025-08-14_18.jsonl"


def per_minute(start: str, hours: float, *, seed: int = 0, peak: str = "none") -> dict[dt.datetime, int]:
    """Jobs per clock minute (US Eastern) of a generated trace, zeros included."""
    origin = parse_start(start)
    _, jobs = generate_trace(origin, hours * 3600, seed=seed, mix=parse_mix(DEFAULT_MIX), peak=peak)
    counts = Counter(int(job.t // 60) for job in jobs)
    return {(origin + dt.timedelta(minutes=m)).astimezone(EASTERN): counts[m] for m in range(int(hours * 60))}


def test_bursts_at_10_and_40_hold_50_to_100_articles_and_quiet_minutes_stay_small():
    counts = per_minute("00:00", 24)
    bursts = [n for minute, n in counts.items() if minute.minute in (10, 40)]
    quiet = [n for minute, n in counts.items() if minute.minute not in (10, 40)]
    assert len(bursts) == 48 and all(50 <= n <= 100 for n in bursts)
    assert max(quiet) <= 10 and statistics.mean(quiet) < 3


def test_a_burst_arrives_mostly_in_the_first_seconds_of_its_minute():
    _, jobs = generate_trace(parse_start("13:00"), 3600, seed=1, mix={"classify": 1.0})
    in_burst = [job.t % 60 for job in jobs if 600 <= job.t < 660 or 2400 <= job.t < 2460]
    assert sum(offset < 10 for offset in in_burst) > 0.75 * len(in_burst)


def test_peak_hours_bring_bigger_bursts_and_a_busier_background():
    counts = per_minute("00:00", 24, seed=3)
    peak = {minute: n for minute, n in counts.items() if 6 <= minute.hour < 11}
    off = {minute: n for minute, n in counts.items() if not 6 <= minute.hour < 11}

    def means(part: dict[dt.datetime, int]) -> tuple[float, float]:
        bursts = [n for minute, n in part.items() if minute.minute in (10, 40)]
        quiet = [n for minute, n in part.items() if minute.minute not in (10, 40)]
        return statistics.mean(bursts), statistics.mean(quiet)

    (peak_bursts, peak_quiet), (off_bursts, off_quiet) = means(peak), means(off)
    assert peak_bursts > off_bursts + 10 and peak_quiet > 2 * off_quiet


def test_the_peak_minute_holds_339_articles_at_the_first_peak_hour_burst_by_default():
    counts = per_minute("05:30", 2, peak="auto")
    assert counts[parse_start("06:10")] == 339
    assert sum(n == 339 for n in counts.values()) == 1
    assert per_minute("05:30", 2, peak="07:10")[parse_start("07:10")] == 339
    assert 339 not in per_minute("05:30", 2, peak="none").values()


def test_start_places_the_clock_so_bursts_land_at_10_and_40(tmp_path):
    out = tmp_path / "t.jsonl"
    assert main(["generate", "--out", str(out), "--start", "2025-08-15T09:05:00-04:00", "--duration", "10"]) == 0
    trace = read_trace(out)
    assert trace.header.created == "2025-08-15T13:05:00Z"
    counts = Counter(int(job.t // 60) for job in trace.jobs)
    assert counts[5] == 339  # 09:10, the first burst minute in peak hours
    assert all(n <= 10 for minute, n in counts.items() if minute != 5)


def test_the_same_seed_writes_the_same_trace_and_another_seed_differs(tmp_path):
    paths = [tmp_path / f"{i}.jsonl" for i in range(3)]
    for path, seed in zip(paths, ("7", "7", "8"), strict=True):
        assert main(["generate", "--out", str(path), "--seed", seed, "--duration", "45", "--name", "t"]) == 0
    assert paths[0].read_bytes() == paths[1].read_bytes()
    assert paths[0].read_bytes() != paths[2].read_bytes()


def test_the_bundled_peak_minute_is_what_the_documented_command_writes(tmp_path):
    out = tmp_path / "peak-minute.jsonl"
    assert main(["generate", "--start", "09:40", "--duration", "1", "--seed", "339", "--out", str(out)]) == 0
    assert out.read_bytes() == (files("loadtest") / "data" / "peak-minute.jsonl").read_bytes()


def test_the_mix_is_honoured_exactly():
    mix = parse_mix("classify=2,zero_shot=1,nli=1")
    assert mix == {"classify": 0.5, "zero_shot": 0.25, "nli": 0.25}
    _, jobs = generate_trace(parse_start("06:00"), 3600, seed=2, mix=mix)
    counts = Counter(job.input["operation"] for job in jobs)
    assert set(counts) == set(mix)
    assert all(abs(counts[op] - share * len(jobs)) <= 1 for op, share in mix.items())


def test_every_generated_input_decodes_for_all_nine_operations():
    mix = parse_mix(",".join(OPERATIONS))
    _, jobs = generate_trace(parse_start("06:00"), 3600, seed=4, mix=mix)
    assert {job.input["operation"] for job in jobs} == set(OPERATIONS)
    for job in jobs:
        DEFAULT_SCHEMA.decode_input(job.input)  # raises InvalidInput naming the field


def test_speed_compresses_the_times():
    start, mix = parse_start("06:00"), parse_mix("classify")
    _, normal = generate_trace(start, 1200, seed=5, mix=mix)
    _, fast = generate_trace(start, 1200, seed=5, mix=mix, speed=10)
    assert [job.input for job in fast] == [job.input for job in normal]
    assert [job.t for job in fast] == [round(job.t / 10, 4) for job in normal]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--mix", "classify=1,summarize=1"], "unknown operation 'summarize'"),
        (["--mix", "classify=0"], "at least one operation"),
        (["--duration", "soon"], "--duration"),
        (["--start", "25:00"], "--start"),
        (["--peak", "12:00"], "not a whole minute within the trace"),
    ],
)
def test_bad_options_exit_2_naming_the_option(tmp_path, capsys, args, message):
    assert main(["generate", "--out", str(tmp_path / "t.jsonl"), *args]) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "t.jsonl").exists()


def test_a_real_feed_becomes_one_job_per_article_at_its_time_of_day():
    header, jobs = feed_trace(FEED, mix=parse_mix("routine_operations"), name="feed")
    assert header.created == "2025-08-14T13:37:00Z"  # the earliest article's minute (18 Aug, 13:37:38)
    assert len(jobs) == 55 and jobs[0].t == 38.0
    assert jobs[0].input == {
        "operation": "routine_operations",
        "headline": "Microsoft Opens 'Urgent' Probe Over Claims Israeli Military Used Its Tech To Monitor Palestinians",
        "ticker_symbols": ["MSFT"],
    }
    for job in jobs:
        DEFAULT_SCHEMA.decode_input(job.input)


def test_a_feed_window_keeps_only_its_articles():
    _, jobs = feed_trace(FEED, start="10:00", duration_s=600, mix=parse_mix("classify"))
    assert len(jobs) == 14  # 14:00:24 .. 14:07:55 UTC on the three days
    assert all(0 <= job.t < 600 for job in jobs)
