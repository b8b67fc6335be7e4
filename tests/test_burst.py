"""The main job: a burst of classify jobs in process, and the report it prints."""

from __future__ import annotations

from loadtest.__main__ import main
from loadtest.burst import classify_jobs, run_burst
from loadtest.headlines import headlines
from worker.settings import Settings


def test_classify_jobs_ask_about_different_headlines_real_ones_first():
    jobs = classify_jobs(400)
    assert len(jobs) == 400 and all(job["operation"] == "classify" for job in jobs)
    assert len({job["headline"] for job in jobs}) == 400  # no pair repeats: no merging inflates a burst
    assert [job["headline"] for job in jobs[: len(headlines())]] == list(headlines())
    assert all("company" in job for job in jobs)
    assert classify_jobs(400) == jobs


async def test_a_burst_merges_jobs_into_fewer_batches_and_reports_it():
    report = await run_burst(Settings(model_name="synthetic:tiny", warmup_max_len=16), jobs=60, idle_jobs=2)
    assert (report.jobs, report.failed, report.pairs) == (60, 0, 360)
    assert report.batches < report.jobs
    assert report.mean_batch_pairs == report.pairs / report.batches
    assert 0 < report.padding_efficiency <= 1
    assert report.latency_ms["p50"] <= report.latency_ms["max"]
    assert "mean batch (pairs)" in report.table()


def test_the_command_prints_the_table_and_writes_json(tmp_path, capsys):
    out = tmp_path / "burst.json"
    assert main(["burst", "--model", "synthetic:tiny", "--jobs", "12", "--idle-jobs", "1", "--json", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "padding efficiency" in printed and "burst latency" in printed
    assert '"jobs": 12' in out.read_text()
