"""A small job behind a flood of big ones: its latency with the fair share, in arrival order, and alone.

    python bench/fairness.py --out bench/results     # about a minute on 2 cores

The flood is ``--flood`` ``zero_shot`` jobs of 128 texts × 32 labels (4,096 pairs each: twelve
of them nearly fill the default ``MAX_QUEUE_PAIRS``), submitted at once; one ``classify`` job
follows as soon as they are queued. Three ways, alternating, ``--repeats`` times each, medians
reported, in one process on ``bench/emulated.py``'s model (the forward pass emulated at H100 speed,
the GPU's batch budget, everything else as shipped):

- ``fair``: the batcher as shipped (``batching/batcher.py``: while the oldest job is bigger than
  a batch, every other batch is anchored on the job with the fewest queued items);
- ``arrival order``: the same batcher with every batch anchored on the oldest queued item, the
  way before the fair share;
- ``alone``: the classify job on an empty queue, the floor.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import anyio

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from batching import batcher as batcher_module  # noqa: E402
from bench.common import cpu_model, publish  # noqa: E402
from bench.emulated import emulated, gpu_policy  # noqa: E402
from loadtest.headlines import headlines  # noqa: E402
from schemas import build_job_schema  # noqa: E402
from worker.engine import NliEngine  # noqa: E402
from worker.logs import configure_logging  # noqa: E402
from worker.model import NliModel  # noqa: E402
from worker.service import admit_job, execute_job, finish_job  # noqa: E402
from worker.settings import Settings  # noqa: E402

LABELS = [f"label {i}: {word}" for i, word in enumerate(["earnings", "merger", "dividend", "guidance"] * 8)]


def arrival_order(self: batcher_module.Batcher) -> None:  # type: ignore[type-arg]
    """No job ever leads a cut: the oldest item anchors every batch."""
    return None


async def one_round(engine: NliEngine, flood: int, texts: list[str]) -> tuple[float, int]:
    """Seconds from the classify job's arrival to its result, behind ``flood`` big jobs (0: none),
    and the batches that ended meanwhile."""
    schema = build_job_schema(engine.settings.limits)
    big = [{"operation": "zero_shot", "texts": [f"{j} {texts[(j + i) % len(texts)]}" for i in range(128)],
            "labels": LABELS} for j in range(flood)]  # fmt: skip
    admitted = [admit_job(engine, schema, job) for job in big]
    await anyio.wait_all_tasks_blocked()  # the flood is tokenized and queued
    started, batches = time.perf_counter(), engine.batcher.stats.batches
    small = await execute_job(engine, schema, {"operation": "classify", "headline": texts[0], "company": "Apple"})
    latency, batches = time.perf_counter() - started, engine.batcher.stats.batches - batches
    assert small.status == "completed", small.error
    for job in admitted:
        assert (await finish_job(job)).status == "completed"
    return latency, batches


async def compare(settings: Settings, model: NliModel, flood: int, repeats: int) -> dict[str, list[tuple[float, int]]]:
    texts = headlines()
    fair = batcher_module.Batcher._anchor_job
    samples: dict[str, list[tuple[float, int]]] = {"fair": [], "arrival order": [], "alone": []}
    async with NliEngine.start(settings, model=model) as engine:
        await one_round(engine, 1, texts)  # warm
        for _ in range(repeats):
            for way in samples:
                batcher_module.Batcher._anchor_job = arrival_order if way == "arrival order" else fair  # type: ignore[method-assign]
                samples[way].append(await one_round(engine, 0 if way == "alone" else flood, texts))
        batcher_module.Batcher._anchor_job = fair  # type: ignore[method-assign]
    return samples


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--flood", type=int, default=12, help="zero_shot jobs of 4,096 pairs ahead of the small one")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--model", default="synthetic:distilbert-mnli", help="its tokenizer and limits are used")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    configure_logging("WARNING")
    settings = gpu_policy(Settings.from_env(model_name=args.model, device="cpu", log_level="WARNING"))
    model = emulated(NliModel.load(settings.model_name, device="cpu"), "h100")
    samples = anyio.run(compare, settings, model, args.flood, args.repeats)
    medians = {way: statistics.median(s for s, _ in values) * 1e3 for way, values in samples.items()}
    lines = [f"| way | classify latency, median of {args.repeats} (ms) | runs (ms) | vs alone | batches it waited |",
             "|---|---|---|---|---|"]  # fmt: skip
    for way, values in samples.items():
        runs = ", ".join(f"{s * 1e3:.0f}" for s, _ in values)
        waited = ", ".join(str(b) for _, b in values)
        lines.append(f"| {way} | {medians[way]:.1f} | {runs} | {medians[way] / medians['alone']:.1f}x | {waited} |")
    header = (f"{cpu_model()}, {args.model} (forward emulated at H100 speed), flood of {args.flood} zero_shot "
              f"jobs x 4,096 pairs, then one classify job")  # fmt: skip
    table = "\n".join(lines)
    publish(args.out, "fairness", header, table, {"flood": args.flood, "samples_s": samples, "medians_ms": medians})
    return 0


if __name__ == "__main__":
    sys.exit(main())
