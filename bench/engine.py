"""The seed's way against the engine, on the same model, in the same run.

    python bench/engine.py --out bench/results                 # CPU here: a reduced burst
    python bench/engine.py --jobs 339 --out bench/results      # on a GPU

Every headline is a classify job: five label hypotheses plus one company hypothesis (6 pairs).
- seed way: a transformers ``zero-shot-classification`` pipeline called per headline (one call
  for the five labels, one for the company), fp32, as the headline service did it;
- careful pipeline: the same pipeline over the whole list with ``batch_size=64``;
- engine: all jobs submitted at once to the in-process engine through the service path, then a
  sustained burst of many more jobs, then single jobs one at a time (idle latency).
Writes ``engine.json`` and ``engine.md`` under ``--out`` and prints the table.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
from pathlib import Path

import anyio
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import careful_pipeline, dtype_name, publish, row, seed_way  # noqa: E402
from loadtest.burst import BurstRun, burst, classify_jobs, one_at_a_time  # noqa: E402
from loadtest.stats import latency_summary_ms  # noqa: E402
from schemas import build_job_schema  # noqa: E402
from worker.engine import NliEngine  # noqa: E402
from worker.logs import configure_logging  # noqa: E402
from worker.model import NliModel  # noqa: E402
from worker.settings import Settings  # noqa: E402


async def engine_runs(settings: Settings, model: NliModel, jobs: list[dict], sustained: list[dict],
                      repeats: int, idle_jobs: int) -> list[dict]:
    schema = build_job_schema(settings.limits)
    async with NliEngine.start(settings, model=model) as engine:
        await burst(engine, schema, jobs)  # warm: every shape the burst needs
        runs = [await burst(engine, schema, jobs) for _ in range(repeats)]
        median = sorted(runs, key=lambda run: run.wall_s)[(len(runs) - 1) // 2]  # the median_low run
        rows = [_engine_row(f"engine: {len(jobs)} jobs at once (median of {repeats})", median)]
        rows.append(_engine_row(f"engine: {len(sustained)} jobs at once (sustained)",
                                await burst(engine, schema, sustained)))
        idle = await one_at_a_time(engine, schema, jobs[:idle_jobs])
        rows.append({"way": "engine: one job alone", "idle_p50_ms": latency_summary_ms(idle)["p50"]})
    return rows


def _engine_row(way: str, run: BurstRun) -> dict:
    assert not run.failed, f"{run.failed} jobs failed"
    return row(way, run.jobs, run.wall_s, pairs=run.pairs, batches=run.batches,
               efficiency=run.padding_efficiency, p99_ms=latency_summary_ms(run.latencies_s)["p99"])


def markdown(rows: list[dict], baseline: float) -> str:
    head = "| way | jobs | pairs | wall ms | pairs/s | × seed | batches | mean batch | padding eff. | p99 ms |"
    lines = [head, "|" + "---|" * 10]
    for entry in rows:
        if "idle_p50_ms" in entry:
            lines.append(f"| {entry['way']} | 1 | 6 | p50 {entry['idle_p50_ms']} | | | | | | |")
            continue
        ratio = entry["pairs_per_s"] / baseline
        lines.append(
            f"| {entry['way']} | {entry['jobs']} | {entry['pairs']} | {entry['wall_ms']} | {entry['pairs_per_s']:,} "
            f"| {ratio:.1f}× | {entry['batches'] or ''} | {entry['mean_batch_pairs'] or ''} "
            f"| {entry['padding_efficiency'] or ''} | {entry['p99_ms'] or ''} |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="synthetic:distilbert-mnli")
    parser.add_argument("--device", default=None)
    parser.add_argument("--jobs", type=int, default=None, help="burst size (default: 339 on GPU, 24 on CPU)")
    parser.add_argument("--sustained-jobs", type=int, default=None, help="default: 20× the burst on GPU, 4× on CPU")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--idle-jobs", type=int, default=20)
    parser.add_argument("--skip-careful", action="store_true")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    configure_logging("WARNING")

    os.environ.setdefault("PREMISE_CACHE_SIZE", "0")  # repeated bursts must not find their headlines tokenized
    settings = Settings.from_env(model_name=args.model, device=args.device, log_level="WARNING")
    model = NliModel.load(args.model, device=args.device)
    on_gpu = model.device.type == "cuda"
    n_jobs = args.jobs or (339 if on_gpu else 24)
    jobs = classify_jobs(n_jobs)
    sustained = classify_jobs(args.sustained_jobs or n_jobs * (20 if on_gpu else 4))
    seed_model = NliModel.load(args.model, device=args.device, dtype="float32") if on_gpu else model

    rows = [seed_way(seed_model, jobs)]
    if not args.skip_careful:
        rows.append(careful_pipeline(model, jobs))
    del seed_model
    rows += anyio.run(engine_runs, settings, model, jobs, sustained, args.repeats, args.idle_jobs)

    machine = torch.cuda.get_device_name(model.device) if on_gpu else f"{platform.processor() or 'cpu'}, {torch.get_num_threads()} threads"
    header = (f"model {args.model}, {model.device} {dtype_name(model)} ({machine}), torch {torch.__version__}, "
              f"max_batch_tokens {settings.batch_policy(on_gpu=on_gpu).max_batch_tokens}")
    table = markdown(rows, rows[0]["pairs_per_s"])
    publish(args.out, "engine", header, table, {"rows": rows})


if __name__ == "__main__":
    main()
