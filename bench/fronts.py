"""The pod in one process against a pod of 1 and of 2 front processes, alternating in one run.

    python bench/fronts.py --rounds 3 --out bench/results    # about 5 minutes on 2 cores
    python bench/fronts.py --quick --rounds 1                # a smoke run

``bench/host.py``'s pod rows (``/runsync`` from the aiohttp client processes, the GPU's forward
emulated), each round running the three pods one after another in a new order, so a machine that
slows down or speeds up during the run weighs on each alike. Reports each round's sustained
jobs/s and the median of the per-round ratios against the pod in one process, with the CPU a job
of the process that feeds the model and of every process of the pod. Writes ``fronts.json`` and
``fronts.md`` under ``--out``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
from pathlib import Path

import anyio

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import cpu_model  # noqa: E402
from bench.emulated import FORWARDS, gpu_policy  # noqa: E402
from bench.drivers import Scale  # noqa: E402
from bench.host import QUICK_SCALE, SCALE, pod_row  # noqa: E402
from bench.http_load import client_pool  # noqa: E402
from worker.logs import configure_logging  # noqa: E402
from worker.settings import Settings  # noqa: E402

LAYOUTS: dict[str, int | None] = {"one process": None, "1 front": 1, "2 fronts": 2}


async def rounds(settings: Settings, forward: str, count: int, scale: Scale, log_dir: Path) -> list[dict[str, dict]]:
    names = list(LAYOUTS)
    runs: list[dict[str, dict]] = []
    async with client_pool(scale.client_procs) as pool:
        for index in range(count):
            order = names[index % len(names):] + names[: index % len(names)]
            runs.append({name: await pod_row(settings, forward, scale, pool, log_dir, LAYOUTS[name]) for name in order})
    return runs


def table(runs: list[dict[str, dict]]) -> str:
    lines = ["| round | layout | sustained jobs/s | × one process | model-feeding process CPU µs a job "
             "| every process's CPU µs a job | burst ms |", "|" + "---|" * 7]
    for index, run in enumerate(runs, 1):
        base = run["one process"]["sustained"]["jobs_per_s"]
        for name in LAYOUTS:
            sustained = run[name]["sustained"]
            cells = [index, name, f"{sustained['jobs_per_s']:,.0f}", f"{sustained['jobs_per_s'] / base:.2f}",
                     sustained.get("cpu_us_a_job"), sustained.get("all_cpu_us_a_job") or sustained.get("cpu_us_a_job"),
                     run[name]["burst"]["wall_ms"]]
            lines.append("| " + " | ".join("" if cell is None else str(cell) for cell in cells) + " |")
    for name in ("1 front", "2 fronts"):
        ratios = [run[name]["sustained"]["jobs_per_s"] / run["one process"]["sustained"]["jobs_per_s"] for run in runs]
        lines.append(f"\n{name}: median ×{statistics.median(ratios):.2f} the pod in one process's sustained jobs/s "
                     f"(rounds: {', '.join(f'{ratio:.2f}' for ratio in ratios)})")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="synthetic:distilbert-mnli", help="its tokenizer and limits are used")
    parser.add_argument("--forward", choices=sorted(FORWARDS), default="h100")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--quick", action="store_true", help="small bursts and a short sustained loop: a smoke run")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args(argv)
    configure_logging("WARNING")
    os.environ.setdefault("PREMISE_CACHE_SIZE", "0")  # as bench/host.py: every burst's headlines are new
    settings = gpu_policy(Settings.from_env(model_name=args.model, device="cpu", log_level="WARNING"))
    scale = QUICK_SCALE if args.quick else SCALE
    runs = anyio.run(rounds, settings, args.forward, args.rounds, scale, args.out or Path("bench/results"))
    header = (f"host {cpu_model()}, model {args.model} (forward emulated: {args.forward}); pods over HTTP, "
              f"bursts of {scale.jobs} jobs, {scale.sustained_s:g} s sustained at {scale.concurrency} in flight; "
              f"{args.rounds} rounds, each in a new order")
    text = f"{header}\n\n{table(runs)}\n"
    print(text)
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "fronts.json").write_text(json.dumps({"header": header, "rounds": runs}, indent=2))
        (args.out / "fronts.md").write_text(text)


if __name__ == "__main__":
    main()
