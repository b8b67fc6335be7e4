"""What padding to the longest pair saves on a CPU: lengths rounded up to a multiple of 8 (the GPU's
way) against exact lengths (the CPU's), in one run on one model.

    python bench/padding.py --out bench/results          # CPU, the real forward, 24 jobs a burst

A GPU picks kernels per shape, so its padded lengths are multiples of 8 and repeat. A CPU pays for
every padded token and keeps nothing per shape, so ``NliModel`` pads to the longest pair there
(``length_multiple`` 1). Two models share one set of weights, one rounding to 8; an engine runs on
each (CPU batch budget, no premise cache) and bursts of ``classify`` jobs on different real
headlines alternate between them. Reports the median burst of ``--repeats``, its batches and its
padding. Writes ``padding.json`` and ``padding.md`` under ``--out``.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import anyio
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import dtype_name, machine_name, median_bursts, publish  # noqa: E402
from loadtest.burst import burst, classify_jobs  # noqa: E402
from schemas import build_job_schema  # noqa: E402
from worker.engine import NliEngine  # noqa: E402
from worker.logs import configure_logging  # noqa: E402
from worker.model import GPU_LENGTH_MULTIPLE, NliModel  # noqa: E402
from worker.settings import Settings  # noqa: E402


def padded_to(model: NliModel, multiple: int) -> NliModel:
    """The same weights and tokenizer, padding lengths up to a multiple of ``multiple``."""
    twin = NliModel(model.name, model.tokenizer, model.model)
    twin.length_multiple = multiple
    return twin


async def compare(settings: Settings, models: dict[str, NliModel], jobs: list[dict], repeats: int) -> list[dict]:
    """Median burst of each way, bursts alternating between them."""
    schema = build_job_schema(settings.limits)
    runs: dict[str, list[dict]] = {way: [] for way in models}
    first, second = models.items()
    async with (
        NliEngine.start(settings, model=first[1]) as first_engine,
        NliEngine.start(settings, model=second[1]) as second_engine,
    ):
        engines = {first[0]: first_engine, second[0]: second_engine}
        for engine in engines.values():
            await burst(engine, schema, jobs)  # warm: every shape the burst needs
        for _ in range(repeats):
            for way, engine in engines.items():
                padded0 = engine.batcher.stats.padded_tokens
                run = await burst(engine, schema, jobs)
                assert not run.failed, f"{run.failed} jobs failed"
                runs[way].append({
                    "wall_ms": run.wall_s * 1e3, "pairs": run.pairs, "batches": run.batches,
                    "padded_tokens": engine.batcher.stats.padded_tokens - padded0,
                    "padding_efficiency": round(run.padding_efficiency, 3),
                })  # fmt: skip
    return median_bursts(runs, len(jobs))


def markdown(rows: list[dict]) -> str:
    lines = ["| padded lengths | jobs | pairs | batches | padded tokens | padding eff. | wall ms (median) "
             "| min–max | × multiple of 8 |", "|" + "---|" * 9]  # fmt: skip
    baseline = rows[0]["wall_ms"]
    for entry in rows:
        low, high = entry["wall_ms_spread"]
        lines.append(
            f"| {entry['way']} | {entry['jobs']} | {entry['pairs']} | {entry['batches']} "
            f"| {entry['padded_tokens']:,} | {entry['padding_efficiency']} | {entry['wall_ms']} | {low}–{high} "
            f"| {baseline / entry['wall_ms']:.2f}× |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="synthetic:distilbert-mnli")
    parser.add_argument("--jobs", type=int, default=24)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    configure_logging("WARNING")

    settings = Settings.from_env(model_name=args.model, device="cpu", log_level="WARNING", premise_cache_size=0)
    model = NliModel.load(args.model, device="cpu")
    models = {
        f"multiple of {GPU_LENGTH_MULTIPLE} (the GPU's)": padded_to(model, GPU_LENGTH_MULTIPLE),
        "the longest pair (the CPU's)": padded_to(model, 1),
    }
    rows = anyio.run(compare, settings, models, classify_jobs(args.jobs), args.repeats)

    policy = settings.batch_policy(on_gpu=False)
    header = (f"model {args.model}, cpu {dtype_name(model)} ({machine_name(model.device)}), torch {torch.__version__}, "
              f"{args.jobs} classify jobs a burst, max_batch_tokens {policy.max_batch_tokens}, "
              f"max_batch_pairs {policy.max_batch_items}, median of {args.repeats}")
    publish(args.out, "padding", header, markdown(rows), {"rows": rows})
    print(f"padding to the longest ran {rows[1]['padded_tokens'] / rows[0]['padded_tokens']:.2f} of the padded tokens")


if __name__ == "__main__":
    main()
