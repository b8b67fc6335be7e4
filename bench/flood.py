"""A flood of big serverless jobs through the local RunPod queue and one real worker: how they end.

The shape docs/DEPLOYMENT.md recommends for bulk work (``classify_batch`` of 128 headlines), many
at once, submitted to ``loadtest.emulator`` and taken by a real ``python -m worker serverless``
(the runpod SDK's own job loop) with the worker's default settings unless the environment says
otherwise. A worker must complete every job it took: RunPod does not retry a job that failed.

    python bench/flood.py --jobs 128 --headlines 128          # prints the statuses and the wall time
    MAX_QUEUE_PAIRS=5000 python bench/flood.py --jobs 32      # any worker setting from the environment
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import httpx

from loadtest.emulator import FINAL_STATUSES, serve_emulator
from loadtest.headlines import headlines

ROOT = Path(__file__).resolve().parents[1]


async def flood(jobs: int, per_job: int, model: str, timeout_s: float) -> dict[str, object]:
    texts = headlines()
    bodies = [
        {"input": {"operation": "classify_batch",
                   "headlines": [f"{j} {texts[(j + i) % len(texts)]}" for i in range(per_job)]}}
        for j in range(jobs)
    ]  # fmt: skip
    async with serve_emulator(long_poll_s=1.0) as emu:
        env = {k: v for k, v in os.environ.items() if not k.startswith("RUNPOD_")}
        env.update(emu.worker_env, MODEL_NAME=model, PYTHONPATH=str(ROOT))
        log = Path(tempfile.mkdtemp(prefix="flood-")) / "worker.log"
        with log.open("wb") as out:
            worker = subprocess.Popen([sys.executable, "-m", "worker", "serverless"], env=env, stdout=out,
                                      stderr=subprocess.STDOUT, start_new_session=True)  # fmt: skip
        try:
            async with httpx.AsyncClient(base_url=emu.base_url, timeout=60) as client:
                started = time.monotonic()
                answers = await asyncio.gather(*(client.post("/run", json=body) for body in bodies))
                ids = [answer.json()["id"] for answer in answers]
                final: dict[str, dict] = {}
                while len(final) < len(ids) and time.monotonic() - started < timeout_s:
                    await asyncio.sleep(0.5)
                    for job_id in [i for i in ids if i not in final]:
                        body = (await client.get(f"/status/{job_id}")).json()
                        if body["status"] in FINAL_STATUSES:
                            final[job_id] = body
                    print(f"{time.monotonic() - started:6.1f} s: {len(final)} of {len(ids)} ended",
                          file=sys.stderr, flush=True)  # fmt: skip
                wall_s = time.monotonic() - started
        finally:  # the worker's graceful stop talks to the emulator: keep this loop serving meanwhile
            os.killpg(worker.pid, signal.SIGTERM)
            try:
                await asyncio.to_thread(worker.wait, 60)
            except subprocess.TimeoutExpired:
                os.killpg(worker.pid, signal.SIGKILL)
                await asyncio.to_thread(worker.wait, 60)
    errors = Counter(body.get("error", "")[:60] for body in final.values() if body["status"] != "COMPLETED")
    return {
        "jobs": jobs, "headlines_per_job": per_job, "pairs": jobs * per_job * 5, "model": model,
        "statuses": dict(Counter(body["status"] for body in final.values())),
        "unfinished": len(ids) - len(final), "errors": dict(errors), "wall_s": round(wall_s, 1),
        "worker_log": str(log),
    }  # fmt: skip


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=128)
    parser.add_argument("--headlines", type=int, default=128, help="headlines a classify_batch job")
    parser.add_argument("--model", default="synthetic:tiny")
    parser.add_argument("--timeout", type=float, default=900, help="seconds to wait for every job to end")
    args = parser.parse_args()
    report = asyncio.run(flood(args.jobs, args.headlines, args.model, args.timeout))
    for key, value in report.items():
        print(f"{key:18} {value}")
    return 0 if report["statuses"] == {"COMPLETED": args.jobs} else 1


if __name__ == "__main__":
    sys.exit(main())
