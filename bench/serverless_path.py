"""Where a serverless job's time goes: the same burst in process and through the runpod SDK's loop.

    python bench/serverless_path.py --rounds 3 --out bench/results     # about a minute on 2 cores

Both ways run ``--jobs`` classify jobs submitted at once on ``bench/emulated.py``'s model (the
forward pass emulated, ``--forward``, default H100 speed; the GPU's batch budget):

- ``in process``: straight into an engine through the service path, as ``bench/versions.py``;
- ``serverless``: into ``loadtest.emulator``'s queue (served in this process, so its clock is
  this one), taken by one real ``python -m worker serverless`` process (runpod 1.12's job loop,
  ``MAX_CONCURRENCY`` as set, default 512) whose model is the same emulated one;
- ``serverless, model process``: the same with ``--model-process``, the emulated model in the
  model process (``bench/emulated.py --socket``).

For the serverless way it reports, per job, what RunPod itself would: ``delay`` (queued until a
worker took it: the SDK's fetching) and ``execution`` (taken until the result was posted: the
handler, the engine, and the SDK's result POST). The in-process latency of the same jobs is what
the engine needs; the rest of ``execution`` is the SDK's handling around it.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import cpu_model, publish  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def worker_child(forward: str, model_process: bool) -> None:
    """``python -m worker serverless [--model-process]`` whose model's forward pass is the emulated one."""
    from bench.emulated import emulated, gpu_policy
    from worker import serverless
    from worker.model import NliModel
    from worker.settings import Settings

    settings = gpu_policy(Settings.from_env(device="cpu"))
    if model_process:
        command = [sys.executable, "-m", "bench.emulated", "--forward", forward, "--model", settings.model_name]
        serverless.start(settings, model_process=True, model_command=command)
        return
    load = NliModel.load
    NliModel.load = classmethod(lambda cls, *a, **kw: emulated(load(*a, **kw), forward))  # type: ignore[method-assign]
    serverless.start(settings)


async def in_process(jobs: list[dict], forward: str, model_name: str) -> dict[str, float]:
    import anyio

    from bench.emulated import emulated, gpu_policy
    from schemas import build_job_schema
    from worker.engine import NliEngine
    from worker.model import NliModel
    from worker.service import execute_job
    from worker.settings import Settings

    settings = gpu_policy(Settings.from_env(model_name=model_name, device="cpu", log_level="WARNING"))
    model = emulated(NliModel.load(settings.model_name, device="cpu"), forward)
    schema = build_job_schema(settings.limits)
    latencies: list[float] = []
    async with NliEngine.start(settings, model=model) as engine:

        async def one(job: dict) -> None:
            started = time.perf_counter()
            outcome = await execute_job(engine, schema, job)
            assert outcome.error is None, outcome.error
            latencies.append(time.perf_counter() - started)

        async with anyio.create_task_group() as tg:  # warm
            for job in jobs:
                tg.start_soon(one, job)
        latencies.clear()
        started = time.perf_counter()
        async with anyio.create_task_group() as tg:
            for job in jobs:
                tg.start_soon(one, job)
        wall = time.perf_counter() - started
    return {"wall_ms": wall * 1e3, **_percentiles(latencies)}


async def serverless(
    jobs: list[dict], forward: str, model_name: str, concurrency: int, model_process: bool
) -> dict[str, float]:
    from loadtest.emulator import serve_emulator
    from schemas.runpod import FINAL_STATUSES

    async with serve_emulator(long_poll_s=1.0) as emu:
        env = {k: v for k, v in os.environ.items() if not k.startswith("RUNPOD_")}
        env.update(emu.worker_env, MODEL_NAME=model_name, MAX_CONCURRENCY=str(concurrency), PREMISE_CACHE_SIZE="0",
                   LOG_LEVEL="WARNING", PYTHONPATH=str(ROOT))  # fmt: skip
        log = Path(tempfile.mkdtemp(prefix="serverless-path-")) / "worker.log"
        with log.open("wb") as out:
            layout = ["--child-model-process"] if model_process else []
            worker = subprocess.Popen([sys.executable, __file__, "--child-worker", forward, *layout], env=env,
                                      stdout=out, stderr=subprocess.STDOUT, start_new_session=True)  # fmt: skip
        try:
            warm = [emu.queue.submit(job) for job in jobs[:8]]
            await _all_final(warm, FINAL_STATUSES, 120)  # the worker is up and its engine started
            started = time.monotonic()
            submitted = [emu.queue.submit(job) for job in jobs]
            await _all_final(submitted, FINAL_STATUSES, 300)
            wall = max(job.finished_s for job in submitted) - started  # type: ignore[type-var]
        finally:
            os.killpg(worker.pid, signal.SIGTERM)
            try:
                await asyncio.to_thread(worker.wait, 60)
            except subprocess.TimeoutExpired:
                os.killpg(worker.pid, signal.SIGKILL)
    assert all(job.status == "COMPLETED" for job in submitted), {job.status for job in submitted}
    latency = [job.finished_s - job.submitted_s for job in submitted]  # type: ignore[operator]
    delay = [job.started_s - job.submitted_s for job in submitted]  # type: ignore[operator]
    execution = [job.finished_s - job.started_s for job in submitted]  # type: ignore[operator]
    return {"wall_ms": wall * 1e3, **_percentiles(latency),
            "delay_p50_ms": statistics.median(delay) * 1e3, "delay_max_ms": max(delay) * 1e3,
            "execution_min_ms": min(execution) * 1e3, "execution_p50_ms": statistics.median(execution) * 1e3,
            "execution_max_ms": max(execution) * 1e3}  # fmt: skip


async def _all_final(jobs: list, final: frozenset[str], timeout_s: float) -> None:
    async with asyncio.timeout(timeout_s):
        for job in jobs:
            await job.finished.wait()
    assert all(job.status in final for job in jobs)


def _percentiles(seconds: list[float]) -> dict[str, float]:
    ordered = sorted(seconds)
    return {"p50_ms": ordered[len(ordered) // 2] * 1e3, "p99_ms": ordered[int(len(ordered) * 0.99)] * 1e3}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=339)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--forward", default="h100", choices=("free", "h100"))
    parser.add_argument("--model", default="synthetic:distilbert-mnli", help="its tokenizer and limits are used")
    parser.add_argument("--max-concurrency", type=int, default=512)
    parser.add_argument("--out", type=Path)
    parser.add_argument("--child-worker", metavar="FORWARD", help=argparse.SUPPRESS)
    parser.add_argument("--child-model-process", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child_worker:
        worker_child(args.child_worker, args.child_model_process)
        return 0
    from loadtest.burst import classify_jobs
    from worker.logs import configure_logging

    configure_logging("WARNING")
    jobs = classify_jobs(args.jobs)
    rows: dict[str, list[dict[str, float]]] = {"in process": [], "serverless": [], "serverless, model process": []}
    for _ in range(args.rounds):
        rows["in process"].append(asyncio.run(in_process(jobs, args.forward, args.model)))
        for model_process, way in ((False, "serverless"), (True, "serverless, model process")):
            rows[way].append(asyncio.run(serverless(jobs, args.forward, args.model, args.max_concurrency, model_process)))
    medians = {way: {key: statistics.median(r[key] for r in runs) for key in runs[0]} for way, runs in rows.items()}
    inproc = medians["in process"]
    lines = ["| way | burst wall (ms) | p50 (ms) | p99 (ms) | delay p50 / max (ms) | execution min / p50 / max (ms) |",
             "|---|---|---|---|---|---|",
             f"| in process | {inproc['wall_ms']:.0f} | {inproc['p50_ms']:.0f} | {inproc['p99_ms']:.0f} | | |"]
    for way, name in (("serverless", "serverless, one SDK worker"), ("serverless, model process", "the same, --model-process")):
        sdk = medians[way]
        lines.append(f"| {name} | {sdk['wall_ms']:.0f} | {sdk['p50_ms']:.0f} | {sdk['p99_ms']:.0f} | "
                     f"{sdk['delay_p50_ms']:.0f} / {sdk['delay_max_ms']:.0f} | "
                     f"{sdk['execution_min_ms']:.0f} / {sdk['execution_p50_ms']:.0f} / {sdk['execution_max_ms']:.0f} |")  # fmt: skip
    header = (f"{cpu_model()}, {args.jobs} classify jobs at once, {args.model} (forward {args.forward}), "
              f"MAX_CONCURRENCY {args.max_concurrency}; medians of {args.rounds} rounds")  # fmt: skip
    publish(args.out, "serverless_path", header, "\n".join(lines), {"rounds": rows, "medians": medians})
    return 0


if __name__ == "__main__":
    sys.exit(main())
