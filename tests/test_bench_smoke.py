"""bench/gpu.py end to end at the smallest scale, and its verdicts on the performance targets.

The GPU session runs the benchmark once, on borrowed time: this keeps the script from breaking
unnoticed on the way there. It runs as a subprocess (it configures logging and spawns client and
server processes of its own) with the 2-layer model, the client-ceiling, in-process and front
processes rows only.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.gpu_report import check_targets, markdown_table  # noqa: E402


def test_smoke_run_writes_the_client_ceiling_the_in_process_and_the_front_processes_rows(tmp_path: Path) -> None:
    command = [
        sys.executable, "bench/gpu.py", "--quick", "--model", "synthetic:tiny", "--ways", "trivial,inproc,pod-fronts",
        "--fronts", "2", "--sustained-s", "0.5", "--idle-jobs", "3", "--out", str(tmp_path),
    ]  # fmt: skip
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]

    report = json.loads((tmp_path / "gpu.json").read_text())
    rows = {row["key"]: row for row in report["rows"]}
    assert set(rows) == {"trivial", "inproc", "pod-fronts"}
    for row in rows.values():
        assert row["burst"]["jobs"] == 8 and row["burst"]["failed"] == 0
        assert row["sustained"]["jobs"] > 0 and row["sustained"]["failed"] == 0
        assert row["idle"]["jobs"] == 3 and row["idle"]["p50_ms"] > 0
    assert rows["inproc"]["burst"]["batches"] >= 1
    assert rows["pod-fronts"]["burst"]["batches"] >= 1, "the model process's batches, read from the pod's /metrics"
    assert 0 < rows["inproc"]["burst"]["padding_efficiency"] <= 1
    assert report["machine"]["device"] == "cpu" and report["machine"]["dtype"] == "float32"
    assert "| burst-nli in process | 8 |" in (tmp_path / "gpu.md").read_text()


def _rows(inproc_burst_ms: float, pod_jobs_per_s: float, litserve_jobs_per_s: float) -> list[dict]:
    return [
        {"key": "seed", "way": "seed", "burst": {"jobs": 339, "wall_ms": 6000.0, "pairs_per_s": 339.0}},
        {"key": "inproc", "way": "in process",
         "burst": {"jobs": 339, "wall_ms": inproc_burst_ms, "pairs_per_s": 20_000.0}},
        {"key": "pod", "way": "pod", "sustained": {"jobs_per_s": pod_jobs_per_s}},
        {"key": "litserve", "way": "LitServe", "sustained": {"jobs_per_s": litserve_jobs_per_s}},
    ]


def _verdicts(checks: list[dict]) -> dict[str, str]:
    return {check["target"]: check["verdict"] for check in checks}


def test_absolute_targets_are_judged_only_on_a_gpu_at_the_peak_burst() -> None:
    rows = _rows(inproc_burst_ms=80.0, pod_jobs_per_s=3500.0, litserve_jobs_per_s=700.0)
    on_gpu = _verdicts(check_targets(rows, on_gpu=True, burst_jobs=339))
    assert on_gpu["339-job burst in process"] == "met"
    assert on_gpu["pod sustained, jobs/s"] == "met"
    assert on_gpu["339-job burst through the pod over HTTP"] == "not measured"
    assert on_gpu["pod sustained vs LitServe sustained, × jobs/s"] == "met"
    assert on_gpu["pod of front processes sustained, jobs/s"] == "not measured"

    fronts = {"key": "pod-fronts", "way": "pod of 4 front processes",
              "burst": {"jobs": 339, "wall_ms": 126.7}, "sustained": {"jobs_per_s": 5302.0}}
    with_fronts = _verdicts(check_targets([*rows, fronts], on_gpu=True, burst_jobs=339))
    assert with_fronts["339-job burst through the pod of front processes"] == "met"
    assert with_fronts["pod of front processes sustained, jobs/s"] == "met"
    assert with_fronts["pod of front processes vs LitServe sustained, × jobs/s"] == "met"
    assert with_fronts["339-job burst through the pod over HTTP"] == "not measured", "each layout judged on its own row"

    on_cpu = _verdicts(check_targets(_rows(150.0, 10.0, 20.0), on_gpu=False, burst_jobs=8))
    assert on_cpu["339-job burst in process"].startswith("n/a")
    assert on_cpu["in-process burst vs the seed way, × pairs/s"] == "met"
    assert on_cpu["pod sustained vs LitServe sustained, × jobs/s"] == "not met"


def test_the_table_leaves_blank_what_a_way_did_not_measure() -> None:
    table = markdown_table([*_rows(80.0, 3500.0, 700.0), {"key": "x", "way": "LitServe", "skipped": "not installed"}])
    assert "| seed | 339 | 6000.0 |  | 339 | 1.0× |" in table
    assert "| LitServe: skipped (not installed) |" in table


def test_host_bench_smoke_run_measures_every_stage_and_row(tmp_path: Path) -> None:
    """bench/host.py (the emulated forward: in process, split, and the pod over HTTP in one process;
    the fronts' smoke run below runs its pods of 1 and 2 front processes) at its smallest."""
    command = [sys.executable, "bench/host.py", "--quick", "--model", "synthetic:tiny", "--forwards", "h100",
               "--pods", "0", "--out", str(tmp_path)]
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, done.stderr[-3000:]

    report = json.loads((tmp_path / "host.json").read_text())
    assert set(report["stages_us"]) == {"decode", "plan", "tokenize", "collate", "aggregate", "encode"}
    assert all(cost > 0 for cost in report["stages_us"].values())
    ways = [row["way"] for row in report["rows"]]
    pods = ["pod over HTTP, forward h100"]
    assert ways == ["in process, forward h100", "split in process, forward h100",
                    "trivial server over HTTP (client ceiling)", *pods]
    rows = dict(zip(ways, report["rows"]))
    for row in report["rows"]:
        assert row["burst"]["jobs"] == 48 and row["burst"]["failed"] == 0
        assert row["sustained"]["jobs"] > 0 and row["sustained"]["failed"] == 0
    for way in ("in process, forward h100", "split in process, forward h100", *pods):
        assert rows[way]["burst"]["batches"] >= 1 and rows[way]["burst"]["mean_batch_pairs"] > 6  # batches merged jobs
        assert rows[way]["sustained"]["cpu_us_a_job"] > 0  # the serving (model) process's CPU: the feed rate's bound
    assert "| in process, forward h100 | 48 |" in (tmp_path / "host.md").read_text()


def test_merge_bench_runs_fewer_rows_with_merging_on(tmp_path: Path) -> None:
    """bench/merge.py at its smallest: the same calls about each article, merging off and on."""
    command = [sys.executable, "bench/merge.py", "--model", "synthetic:tiny", "--forward", "free", "--articles", "4",
               "--repeats", "1", "--out", str(tmp_path)]
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]

    off, on = json.loads((tmp_path / "merge.json").read_text())["rows"]
    assert (off["way"], on["way"]) == ("merging off", "merging on")
    assert off["jobs"] == on["jobs"] == 20 and off["pairs"] == on["pairs"] == off["rows"]
    assert on["rows"] == on["pairs"] - 4 * 6  # six pairs an article are asked twice, all in one batch here


def test_admission_bench_compares_both_ways_on_the_same_bursts(tmp_path: Path) -> None:
    """bench/admission.py at its smallest: per-job against tick admission, alternating."""
    command = [sys.executable, "bench/admission.py", "--model", "synthetic:tiny", "--forwards", "free", "--jobs", "12",
               "--repeats", "2", "--out", str(tmp_path)]
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]

    ways = json.loads((tmp_path / "admission.json").read_text())["results"]["free"]
    assert set(ways) == {"per job", "tick"}
    assert all(way["burst_ms"] > 0 and way["loop_cpu_ms"] > 0 for way in ways.values())
    assert "| free | tick |" in (tmp_path / "admission.md").read_text()


def test_padding_bench_compares_the_gpus_rounding_with_the_cpus(tmp_path: Path) -> None:
    """bench/padding.py at its smallest: lengths rounded up to 8 against the longest pair, alternating."""
    command = [sys.executable, "bench/padding.py", "--model", "synthetic:tiny", "--jobs", "6", "--repeats", "1",
               "--out", str(tmp_path)]
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]

    rounded, exact = json.loads((tmp_path / "padding.json").read_text())["rows"]
    assert rounded["way"].startswith("multiple of 8") and exact["way"].startswith("the longest pair")
    assert rounded["pairs"] == exact["pairs"] == 6 * 6
    assert rounded["padded_tokens"] % 8 == 0  # every batch n × a multiple of 8
    assert 0 < rounded["padding_efficiency"] <= 1 and 0 < exact["padding_efficiency"] <= 1


def test_gpu_forward_bench_times_new_shapes_and_a_busy_thread(tmp_path: Path) -> None:
    """bench/gpu_forward.py at its smallest, on a CPU: every shape case twice, the busy-thread cases."""
    command = [sys.executable, "bench/gpu_forward.py", "--model", "synthetic:tiny", "--batches", "2", "--pairs", "8",
               "--out", str(tmp_path)]
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]

    cases = json.loads((tmp_path / "gpu_forward.json").read_text())["cases"]
    shapes = [case for case in cases if case["group"] == "a new batch shape"]
    assert len(shapes) == 6 and all(case["batches"] == 2 and case["median_ms"] > 0 for case in shapes)
    assert [case["case"] for case in cases if case["group"] == "beside a busy thread"] == [
        "alone", "beside a busy thread, switch interval 5 ms", "beside a busy thread, switch interval 0.5 ms",
    ]  # fmt: skip  (no CUDA graph on a CPU)


def test_versions_bench_alternates_two_revisions(tmp_path: Path) -> None:
    """bench/versions.py at its smallest: HEAD in a temporary worktree against this tree."""
    command = [sys.executable, "bench/versions.py", "--before", "HEAD", "--rounds", "1", "--bursts", "1",
               "--model", "synthetic:tiny", "--out", str(tmp_path)]
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]

    (round_,) = json.loads((tmp_path / "versions.json").read_text())["rounds"]
    for side in ("before", "after"):
        assert round_[side]["wall_ms"] > 0 and round_[side]["loop_cpu_ms"] > 0
    assert "| **median of the ratios** |" in (tmp_path / "versions.md").read_text()
    listed = subprocess.run(["git", "worktree", "list"], cwd=ROOT, capture_output=True, text=True).stdout
    assert "burst-nli-versions-" not in listed  # the temporary worktree is gone


@pytest.mark.parametrize("mode", ["--pod", "--sustained", "--split"])
def test_versions_bench_compares_two_versions_sustained_by_their_cpu_a_job(tmp_path: Path, mode: str) -> None:
    """bench/versions.py --pod (each version's pod over HTTP), --sustained (in process) and --split
    (a front and each version's model process) at their smallest."""
    command = [sys.executable, "bench/versions.py", mode, "--before", "HEAD", "--rounds", "1", "--seconds", "0.5",
               "--concurrency", "16", "--model", "synthetic:tiny", "--out", str(tmp_path)]
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=180)
    assert done.returncode == 0, done.stderr[-3000:]

    (round_,) = json.loads((tmp_path / "versions.json").read_text())["rounds"]
    for side in ("before", "after"):
        assert round_[side]["jobs_per_s"] > 0 and round_[side]["cpu_us_a_job"] > 0
    assert "| **median of the ratios** |" in (tmp_path / "versions.md").read_text()


def test_versions_bench_times_two_versions_cut_alone_on_the_same_queue(tmp_path: Path) -> None:
    """bench/versions.py --cut at its smallest: each version's batcher cuts batches of the same jobs."""
    command = [sys.executable, "bench/versions.py", "--cut", "--before", "HEAD", "--rounds", "1", "--cuts", "5",
               "--out", str(tmp_path)]  # fmt: skip
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]

    (round_,) = json.loads((tmp_path / "versions.json").read_text())["rounds"]
    for side in ("before", "after"):
        assert round_[side]["pairs_a_batch"] > 0 and round_[side]["us_a_job"] > 0


def test_refusal_bench_times_the_pods_way_beside_a_plain_parse(tmp_path: Path) -> None:
    """bench/refusal.py at its smallest: both oversized bodies refused naming the list, the valid one accepted."""
    command = [sys.executable, "bench/refusal.py", "--repeats", "1", "--out", str(tmp_path)]
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]

    rows = json.loads((tmp_path / "refusal.json").read_text())["rows"]
    assert [row["answer"] for row in rows] == ["invalid_input: headlines: expected at most 128 items"] * 2 + ["accepted"]
    assert all(row["json_us"] > 0 and row["pod_us"] > 0 for row in rows)


def test_first_job_bench_times_both_ways_in_new_worker_processes(tmp_path: Path) -> None:
    """bench/first_job.py at its smallest: a first and a second job in each way's own process."""
    command = [sys.executable, "bench/first_job.py", "--model", "synthetic:tiny", "--rounds", "1", "--out", str(tmp_path)]
    subprocess.run(command, cwd=ROOT, check=True, capture_output=True, timeout=300)
    rounds = json.loads((tmp_path / "first_job.json").read_text())["rounds"]
    assert set(rounds) == {"now", "heap left to the first job"}
    assert all(r["first_ms"] > 0 and r["second_ms"] > 0 for way in rounds.values() for r in way)


def test_fronts_bench_smoke_run_compares_the_three_pods(tmp_path: Path) -> None:
    """bench/fronts.py at its smallest: the pod in one process, with 1 and with 2 front processes."""
    command = [sys.executable, "bench/fronts.py", "--quick", "--rounds", "1", "--model", "synthetic:tiny",
               "--out", str(tmp_path)]
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, done.stderr[-3000:]
    (run,) = json.loads((tmp_path / "fronts.json").read_text())["rounds"]
    assert set(run) == {"one process", "1 front", "2 fronts"}
    for row in run.values():
        assert row["burst"]["failed"] == 0 and row["sustained"]["jobs"] > 0 and row["sustained"]["failed"] == 0
        assert row["sustained"]["cpu_us_a_job"] > 0  # the process that feeds the model
    for fronts in ("1 front", "2 fronts"):  # every process of the pod, beyond the model process
        assert run[fronts]["sustained"]["all_cpu_us_a_job"] > run[fronts]["sustained"]["cpu_us_a_job"]
    assert "2 fronts: median ×" in (tmp_path / "fronts.md").read_text()


def test_serverless_path_bench_runs_the_sdk_worker_in_both_layouts(tmp_path: Path) -> None:
    """bench/serverless_path.py at its smallest: in process, and one SDK worker with and without
    a model process, every job completed (the bench asserts it)."""
    command = [sys.executable, "bench/serverless_path.py", "--jobs", "16", "--rounds", "1", "--model", "synthetic:tiny",
               "--out", str(tmp_path)]  # fmt: skip
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    rounds = json.loads((tmp_path / "serverless_path.json").read_text())["rounds"]
    assert set(rounds) == {"in process", "serverless", "serverless, model process"}
    assert all(run["wall_ms"] > 0 for way in rounds.values() for run in way)
    assert "| the same, --model-process |" in (tmp_path / "serverless_path.md").read_text()
