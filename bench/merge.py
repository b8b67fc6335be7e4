"""What merging identical pairs saves: the headline service's calls about each article, merging
off and on, in one run on one model.

    python bench/merge.py --out bench/results                 # CPU: the real forward, 24 articles
    python bench/merge.py --forward h100 --articles 100       # the H100's forward, emulated
    python bench/merge.py --articles 100 --out bench/results  # on a GPU

The headline service makes five calls about every article, all at once: ``classify`` (with the
company), ``company_relevance``, ``routine_operations`` (its ticker),
``detect_quantitative_catalyst`` and ``detect_strategic_catalyst``. Six of an article's pairs are
asked twice: the company pair (classify and company_relevance) and classify's five label pairs
(again inside routine_operations). Each burst submits every call for every article at once
through the service path. Two engines share the model, one with ``MERGE_IDENTICAL_PAIRS=false``;
bursts alternate between them and the median of ``--repeats`` is reported. ``--forward h100``
sleeps the H100's measured forward time instead of computing (``bench/emulated.py``) and uses
the GPU's batch budget, to show the gain where the forward is short. Writes ``merge.json`` and
``merge.md`` under ``--out``.
"""

from __future__ import annotations

import argparse
import platform
import sys
from pathlib import Path

import anyio
import msgspec
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import dtype_name, median_bursts, publish  # noqa: E402
from bench.emulated import FORWARDS, emulated, gpu_policy  # noqa: E402
from loadtest.burst import burst, distinct_headlines  # noqa: E402
from loadtest.job_inputs import COMPANIES  # noqa: E402
from schemas import build_job_schema  # noqa: E402
from worker.engine import NliEngine  # noqa: E402
from worker.logs import configure_logging  # noqa: E402
from worker.model import NliModel  # noqa: E402
from worker.settings import Settings  # noqa: E402


def article_calls(articles: int) -> list[dict]:
    """The five calls the headline service makes about each of ``articles`` different headlines."""
    jobs = []
    for i, headline in enumerate(distinct_headlines(articles)):
        company, ticker = COMPANIES[i % len(COMPANIES)]
        jobs += [
            {"operation": "classify", "headline": headline, "company": company},
            {"operation": "company_relevance", "headline": headline, "company": company},
            {"operation": "routine_operations", "headline": headline, "ticker_symbols": [ticker]},
            {"operation": "detect_quantitative_catalyst", "headline": headline},
            {"operation": "detect_strategic_catalyst", "headline": headline},
        ]
    return jobs


async def compare(settings: Settings, model: NliModel, jobs: list[dict], repeats: int) -> list[dict]:
    """Median burst of each engine, bursts alternating between them."""
    schema = build_job_schema(settings.limits)
    ways = {"merging off": False, "merging on": True}
    runs: dict[str, list[dict]] = {way: [] for way in ways}
    async with (
        NliEngine.start(msgspec.structs.replace(settings, merge_identical_pairs=False), model=model) as off,
        NliEngine.start(msgspec.structs.replace(settings, merge_identical_pairs=True), model=model) as on,
    ):
        engines = {"merging off": off, "merging on": on}
        for engine in engines.values():
            await burst(engine, schema, jobs)  # warm: every shape the burst needs
        for _ in range(repeats):
            for way, engine in engines.items():
                stats = engine.batcher.stats
                merged0, padded0 = stats.items_merged, stats.padded_tokens
                run = await burst(engine, schema, jobs)
                assert not run.failed, f"{run.failed} jobs failed"
                runs[way].append({
                    "wall_ms": run.wall_s * 1e3, "pairs": run.pairs, "batches": run.batches,
                    "rows": run.pairs - (stats.items_merged - merged0), "padded_tokens": stats.padded_tokens - padded0,
                })  # fmt: skip
    return median_bursts(runs, len(jobs))


def markdown(rows: list[dict]) -> str:
    lines = ["| way | jobs | pairs | rows run | padded tokens | batches | wall ms (median) | min–max | × off |",
             "|" + "---|" * 9]  # fmt: skip
    baseline = rows[0]["wall_ms"]
    for entry in rows:
        low, high = entry["wall_ms_spread"]
        lines.append(
            f"| {entry['way']} | {entry['jobs']} | {entry['pairs']} | {entry['rows']} | {entry['padded_tokens']:,} "
            f"| {entry['batches']} | {entry['wall_ms']} | {low}–{high} | {baseline / entry['wall_ms']:.2f}× |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="synthetic:distilbert-mnli")
    parser.add_argument("--device", default=None)
    parser.add_argument("--forward", choices=["real", *sorted(FORWARDS)], default="real",
                        help="real: the model computes; free / h100: emulated (bench/emulated.py), on the CPU")
    parser.add_argument("--articles", type=int, default=None, help="default: 100 on a GPU or emulated, 24 on a CPU")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    configure_logging("WARNING")

    settings = Settings.from_env(model_name=args.model, device=args.device, log_level="WARNING")
    if args.forward == "real":
        model = NliModel.load(args.model, device=args.device)
        machine = (torch.cuda.get_device_name(model.device) if model.device.type == "cuda"
                   else f"{platform.processor() or 'cpu'}, {torch.get_num_threads()} threads")  # fmt: skip
        forward = f"{model.device} {dtype_name(model)} ({machine})"
        fast = model.device.type == "cuda"
    else:
        settings = gpu_policy(msgspec.structs.replace(settings, device="cpu"))
        model = emulated(NliModel.load(args.model, device="cpu"), args.forward)
        forward, fast = f"forward emulated: {args.forward} (bench/emulated.py)", True
    jobs = article_calls(args.articles or (100 if fast else 24))
    rows = anyio.run(compare, settings, model, jobs, args.repeats)

    policy = settings.batch_policy(on_gpu=model.device.type == "cuda" or args.forward != "real")
    header = (f"model {args.model}, {forward}, torch {torch.__version__}, {len(jobs) // 5} articles × 5 calls, "
              f"max_batch_tokens {policy.max_batch_tokens}, median of {args.repeats}")
    table = markdown(rows)
    publish(args.out, "merge", header, table, {"rows": rows})
    print(f"merging on ran {rows[1]['rows'] / rows[0]['rows']:.2f} of the rows merging off ran")


if __name__ == "__main__":
    main()
