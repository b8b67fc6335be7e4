"""A new serverless worker's first job: what it waits for beyond the second one's time.

    python bench/first_job.py --rounds 5

A worker that RunPod starts during a burst takes jobs as soon as its SDK loop polls. Each round
starts fresh worker processes, as a cold start does, with ``--model`` on the CPU (by default
``synthetic:distilbert-mnli``: the real model's size and start-up heap), runs
``ServerlessWorker.preload()`` (what ``worker serverless`` runs before the SDK's loop), then one
``classify`` job, then a second. Two ways, alternating in each round:
- ``now``: as shipped: preload also takes the start-up heap out of the collector's reach;
- ``heap left to the first job``: ``gc.unfreeze()`` after preload, so the engine's start on the
  first job makes the full collection itself, on the event loop, as the worker did before.
The second job is the baseline a first job is read against, in the same process.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import cpu_model, publish  # noqa: E402

WAYS = {"now": False, "heap left to the first job": True}


def child(model: str, unfreeze: bool) -> dict[str, float]:
    from worker.serverless import ServerlessWorker
    from worker.settings import Settings

    worker = ServerlessWorker(Settings(model_name=model, device="cpu", log_level="WARNING"))
    worker.preload()
    if unfreeze:
        gc.unfreeze()

    async def jobs() -> dict[str, float]:
        times = {}
        for name, headline in (("first_ms", "Fed raises rates by 50 basis points"), ("second_ms", "Apple beats")):
            started = time.perf_counter()
            output = await worker.handler({"id": name, "input": {"operation": "classify", "headline": headline}})
            times[name] = (time.perf_counter() - started) * 1e3
            assert "error" not in output, output
        await worker.aclose()
        return times

    return asyncio.run(jobs())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--model", default="synthetic:distilbert-mnli")
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--child", choices=["0", "1"], default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child is not None:
        print(json.dumps(child(args.model, args.child == "1")))
        return
    runs: dict[str, list[dict[str, float]]] = {way: [] for way in WAYS}
    for round_ in range(args.rounds):
        for way, unfreeze in WAYS.items():
            out = subprocess.run([sys.executable, __file__, "--model", args.model, "--child", "1" if unfreeze else "0"],
                                 check=True, capture_output=True, text=True).stdout  # fmt: skip
            runs[way].append(json.loads(out.strip().splitlines()[-1]))
        print(f"round {round_ + 1}/{args.rounds}: {[runs[way][-1] for way in WAYS]}", file=sys.stderr)
    lines = ["| way | first job ms (median) | second job ms (median) | first − second ms, each round |",
             "|---|---|---|---|"]  # fmt: skip
    for way, rounds in runs.items():
        extra = ", ".join(f"{r['first_ms'] - r['second_ms']:.0f}" for r in rounds)
        lines.append(f"| {way} | {statistics.median(r['first_ms'] for r in rounds):.1f} | "
                     f"{statistics.median(r['second_ms'] for r in rounds):.1f} | {extra} |")  # fmt: skip
    header = f"{cpu_model()}, {args.model} on the CPU, a new worker process each way and round; {args.rounds} rounds"
    publish(args.out, "first_job", header, "\n".join(lines), {"rounds": runs})


if __name__ == "__main__":
    main()
