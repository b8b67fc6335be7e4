"""A flood of big serverless jobs through the local RunPod queue and one real worker: how they end.

The shape docs/DEPLOYMENT.md recommends for bulk work (``classify_batch`` of 128 headlines), many
at once, submitted to ``loadtest.emulator`` and taken by real ``python -m worker serverless``
processes (the runpod SDK's own job loop) with the worker's default settings unless the
environment says otherwise: one warm worker, and with ``--workers-max`` more started by the
emulated queue-delay scaler. A worker must complete every job it took: RunPod does not retry a
job that failed.

    python bench/flood.py --jobs 128 --headlines 128                   # one worker
    python bench/flood.py --jobs 128 --headlines 128 --workers-max 3   # a fleet of up to three
    MAX_QUEUE_PAIRS=5000 python bench/flood.py --jobs 32               # any worker setting from the environment
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import httpx

from loadtest.emulator import serve_emulator
from schemas.runpod import FINAL_STATUSES
from loadtest.fleet import FleetSettings, Scaler
from loadtest.headlines import headlines

ROOT = Path(__file__).resolve().parents[1]


async def flood(jobs: int, per_job: int, model: str, timeout_s: float, workers_max: int) -> dict[str, object]:
    texts = headlines()
    bodies = [
        {"input": {"operation": "classify_batch",
                   "headlines": [f"{j} {texts[(j + i) % len(texts)]}" for i in range(per_job)]}}
        for j in range(jobs)
    ]  # fmt: skip
    os.environ.update(MODEL_NAME=model, PYTHONPATH=str(ROOT))  # what the fleet's workers inherit
    fleet = FleetSettings(workers_max=workers_max, workers_min=1, scaler=Scaler.parse("queue-delay:1"))
    async with serve_emulator(long_poll_s=1.0, fleet=fleet) as emu, httpx.AsyncClient(timeout=60) as client:
        await _until(lambda: emu.queue.first_polls, 180)  # the active worker is warm: the burst starts now
        started = time.monotonic()
        answers = await asyncio.gather(*(client.post(f"{emu.base_url}/run", json=body) for body in bodies))
        ids = [answer.json()["id"] for answer in answers]
        final: dict[str, dict] = {}
        while len(final) < len(ids) and time.monotonic() - started < timeout_s:
            await asyncio.sleep(0.5)
            for job_id in [i for i in ids if i not in final]:
                body = (await client.get(f"{emu.base_url}/status/{job_id}")).json()
                if body["status"] in FINAL_STATUSES:
                    final[job_id] = body
            print(f"{time.monotonic() - started:6.1f} s: {len(final)} of {len(ids)} ended", file=sys.stderr, flush=True)
        wall_s = time.monotonic() - started
        workers = (await client.get(f"{emu.root_url}/fleet")).json()["workers"]
    errors = Counter(body.get("error", "")[:60] for body in final.values() if body["status"] != "COMPLETED")
    return {
        "jobs": jobs, "headlines_per_job": per_job, "pairs": jobs * per_job * 5, "model": model,
        "statuses": dict(Counter(body["status"] for body in final.values())),
        "unfinished": len(ids) - len(final), "errors": dict(errors), "wall_s": round(wall_s, 1),
        "workers": [(w["id"], w["started_s"], w["cold_start_s"]) for w in workers],
        "jobs_by_worker": dict(Counter(body.get("workerId") for body in final.values())),
    }  # fmt: skip


async def _until(ready: Callable[[], object], timeout_s: float) -> None:
    async with asyncio.timeout(timeout_s):
        while not ready():
            await asyncio.sleep(0.2)  # another process's start: nothing to wait on but polling


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=128)
    parser.add_argument("--headlines", type=int, default=128, help="headlines a classify_batch job")
    parser.add_argument("--model", default="synthetic:tiny")
    parser.add_argument("--timeout", type=float, default=900, help="seconds to wait for every job to end")
    parser.add_argument("--workers-max", type=int, default=1,
                        help="the fleet's maximum: one warm worker, and more started by the queue-delay "
                        "scaler (queue-delay:1) up to this (default 1)")
    args = parser.parse_args()
    report = asyncio.run(flood(args.jobs, args.headlines, args.model, args.timeout, args.workers_max))
    for key, value in report.items():
        print(f"{key:18} {value}")
    return 0 if report["statuses"] == {"COMPLETED": args.jobs} else 1


if __name__ == "__main__":
    sys.exit(main())
