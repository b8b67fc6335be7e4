"""Admission, a job at a time against a loop tick at a time: the same bursts, alternating, in one process.

    python bench/admission.py --out bench/results     # about 2 minutes on 2 cores

``tick`` is admission as shipped (``worker/admission.py``): a job is accepted at once and the
premises of a loop tick's jobs are tokenized in one call. ``per job`` is the way before it: each
job's premise tokenized as the job is admitted, its pairs queued at once. One engine serves both
(only its ``admission`` is swapped), on ``bench/emulated.py``'s model with the GPU's batch budget
and no premise cache; bursts of ``--jobs`` classify jobs alternate between the ways, and the
medians of ``--repeats`` are reported: the burst's wall time and the event loop's own CPU time
in it (``time.thread_time``, which the machine's other load disturbs less).
"""

from __future__ import annotations

import argparse
import math
import os
import statistics
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import anyio
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import cpu_model, publish  # noqa: E402
from bench.emulated import FORWARDS, emulated, gpu_policy  # noqa: E402
from loadtest.burst import burst, classify_jobs  # noqa: E402
from schemas import build_job_schema  # noqa: E402
from worker.admission import Admission, QueuedPairs, _Admitted  # noqa: E402
from worker.engine import NliEngine  # noqa: E402
from worker.logs import configure_logging  # noqa: E402
from worker.model import NliModel  # noqa: E402
from worker.settings import Settings  # noqa: E402


class PerJobAdmission(Admission):
    """The way before: tokenize the job's premise and queue its pairs as the job is admitted."""

    def admit(
        self, pairs: Sequence[tuple[str, str]], *, timeout_s: float | None = None, wait_for_room: bool = False
    ) -> QueuedPairs:
        self.batcher.check_admission(len(pairs))
        tokens = self.tokenizer.tokenize(pairs)
        job = _Admitted(pairs, [], timeout_s, math.inf, False, anyio.Event())  # the way before: an event a job
        job.ticket = self.batcher.enqueue(tokens, [t.length for t in tokens], timeout_s=timeout_s)
        job.settled.set()
        return QueuedPairs(job, len(self.model.labels), self)


async def compare(settings: Settings, model: NliModel, jobs: list[dict], repeats: int) -> dict[str, dict]:
    schema = build_job_schema(settings.limits)
    samples: dict[str, list[tuple[float, float]]] = {"per job": [], "tick": []}
    async with NliEngine.start(settings, model=model) as engine:
        ways = {"per job": PerJobAdmission(model, engine.batcher, 0), "tick": engine.admission}
        for way in ways.values():  # warm both
            engine.admission = way
            await burst(engine, schema, jobs)
        for _ in range(repeats):
            for name, way in ways.items():
                engine.admission = way
                cpu = time.thread_time()
                run = await burst(engine, schema, jobs)
                assert not run.failed, f"{run.failed} jobs failed"
                samples[name].append((run.wall_s * 1e3, (time.thread_time() - cpu) * 1e3))
        engine.admission = ways["tick"]
    return {
        name: {
            "burst_ms": round(statistics.median(wall for wall, _ in runs), 1),
            "loop_cpu_ms": round(statistics.median(cpu for _, cpu in runs), 1),
            "burst_ms_quartiles": [round(q, 1) for q in _quartiles([wall for wall, _ in runs])],
        }
        for name, runs in samples.items()
    }


def _quartiles(values: list[float]) -> list[float]:
    return statistics.quantiles(values, n=4) if len(values) > 1 else values * 3


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="synthetic:distilbert-mnli", help="its tokenizer and limits are used")
    parser.add_argument("--forwards", default="free,h100", help=f"comma-separated, of {', '.join(FORWARDS)}")
    parser.add_argument("--jobs", type=int, default=339)
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    configure_logging("WARNING")
    settings = gpu_policy(Settings(model_name=args.model, device="cpu", log_level="WARNING", premise_cache_size=0))
    loaded = NliModel.load(args.model, device="cpu")
    jobs = classify_jobs(args.jobs)
    results = {forward: anyio.run(compare, settings, emulated(loaded, forward), jobs, args.repeats)
               for forward in args.forwards.split(",")}  # fmt: skip

    header = (f"{cpu_model()}, {os.cpu_count()} cores, torch {torch.__version__}; {args.jobs}-job bursts of "
              f"classify jobs, forward emulated, GPU batch budget; medians of {args.repeats}, ways alternating")
    lines = ["| forward | admission | burst ms (median) | quartiles | event loop CPU ms | × per job (burst) |",
             "|---|---|---|---|---|---|"]  # fmt: skip
    for forward, ways in results.items():
        for name, numbers in ways.items():
            low, _, high = numbers["burst_ms_quartiles"]
            ratio = ways["per job"]["burst_ms"] / numbers["burst_ms"]
            lines.append(f"| {forward} | {name} | {numbers['burst_ms']} | {low}–{high} | {numbers['loop_cpu_ms']} "
                         f"| {ratio:.2f}× |")
    table = "\n".join(lines)
    publish(args.out, "admission", header, table, {"results": results})


if __name__ == "__main__":
    main()
