"""burst-nli's host path with the GPU's forward pass emulated: what the CPU side costs.

    python bench/host.py --out bench/results            # about 2 minutes
    python bench/host.py --quick                        # a smoke run

On a GPU the forward pass of a whole burst is tens of milliseconds (docs/MEASUREMENTS.md); what stands
between it and the targets is the CPU work around it. This runs that work as shipped, with
``bench/emulated.py``'s model (forward ``free``: nothing, and ``h100``: the H100's measured time,
slept), under the GPU's batch budget, on any machine:
- stages: each step of the job path timed alone over the burst's jobs, in one thread (µs a job);
- in process: the serverless handler's path (bursts, a closed loop, one job at a time);
- split, in process: the same path with its front (decode, plan, tokenize, aggregate) in this
  process and the emulated model in a model process (docs/PROCESSES.md);
- pod over HTTP: ``/runsync`` on the pod served with the emulated model, driven by the aiohttp
  client processes, beside the trivial server (the client's own ceiling on this machine);
- server CPU µs a job: the serving process's CPU time (every thread) over the sustained loop,
  divided by its jobs; one process can feed a GPU at most 1 / that many jobs a second, however
  many cores the host has (docs/PROCESSES.md). In the split rows it and the batch columns are
  the model process's (its ``METRICS_PORT``, or the ``process="model"`` series of a pod of
  several, beside every process's together): the fronts are the part that scales with cores;
- the pod of 1 and of 2 front processes (``--front-processes``) beside the pod in one process.
Writes ``host.json`` and ``host.md`` under ``--out`` and prints the tables.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import aiohttp
import anyio
import msgspec
import numpy as np
from prometheus_client import CollectorRegistry

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.batch_totals import BatchTotals, text_totals  # noqa: E402
from bench.common import cpu_model  # noqa: E402
from bench.drivers import HttpDriver, InprocDriver, Scale, measure  # noqa: E402
from bench.emulated import FORWARDS, emulated, gpu_policy  # noqa: E402
from bench.http_load import ClientPool, HttpEndpoint, client_pool  # noqa: E402
from bench.servers import ROOT, free_port, serving_process, trivial_server  # noqa: E402
from loadtest.burst import classify_jobs  # noqa: E402
from schemas import JobSchema, build_job_schema  # noqa: E402
from worker.admission import Admission  # noqa: E402
from worker.engine import NliEngine  # noqa: E402
from worker.logs import configure_logging  # noqa: E402
from worker.metrics import Metrics  # noqa: E402
from worker.model import NliModel  # noqa: E402
from worker.operations import plan_job  # noqa: E402
from worker.settings import Settings  # noqa: E402
from worker.split.remote_engine import RemoteEngine  # noqa: E402

SCALE = Scale(jobs=339, repeats=5, sustained_s=5.0, concurrency=1024, idle_jobs=50, client_procs=1)
QUICK_SCALE = Scale(jobs=48, repeats=1, sustained_s=1.0, concurrency=64, idle_jobs=5, client_procs=1)
RUNSYNC_WAIT_MS = 300_000


def stage_costs(model: NliModel, settings: Settings, jobs: Sequence[dict], repeats: int = 5) -> dict[str, float]:
    """µs a job of each step of the job path, timed alone over ``jobs`` (best of ``repeats``)."""
    schema = build_job_schema(settings.limits)
    admission = Admission(model, None, premise_cache_size=0)  # type: ignore[arg-type]  # tokenizes, never queues
    decoded = [schema.decode_input(job) for job in jobs]
    plans = [plan_job(op, model, settings.thresholds) for op in decoded]
    tokens = admission.tokenizer.tokenize_tick([plan.pairs for plan in plans])
    pairs = [pair for job_tokens in tokens for pair in job_tokens]
    batch = settings.batch_policy(on_gpu=True).max_batch_items
    rng = np.random.default_rng(0)
    logits = [rng.standard_normal((len(plan.pairs), len(model.labels))).astype(np.float32) for plan in plans]
    results = [plan.aggregate(rows) for plan, rows in zip(plans, logits)]
    stages: dict[str, Callable[[], object]] = {
        "decode": lambda: [schema.decode_input(job) for job in jobs],
        "plan": lambda: [plan_job(op, model, settings.thresholds) for op in decoded],
        "tokenize": lambda: admission.tokenizer.tokenize_tick([plan.pairs for plan in plans]),  # the burst in one tick
        "collate": lambda: [model.collate(pairs[i : i + batch]) for i in range(0, len(pairs), batch)],
        "aggregate": lambda: [plan.aggregate(rows) for plan, rows in zip(plans, logits)],
        "encode": lambda: [msgspec.json.encode(msgspec.to_builtins(result)) for result in results],
    }
    costs = {}
    for name, stage in stages.items():
        best = min(_timed(stage) for _ in range(repeats))
        costs[name] = round(best / len(jobs) * 1e6, 1)
    return costs


def _timed(fn: Callable[[], object]) -> float:
    started = time.perf_counter()
    fn()
    return time.perf_counter() - started


async def inproc_row(settings: Settings, model: NliModel, forward: str, scale: Scale) -> dict:
    registry = CollectorRegistry()
    async with NliEngine.start(settings, model=emulated(model, forward), metrics=Metrics(registry)) as engine:
        driver = InprocDriver(engine, build_job_schema(settings.limits), registry)
        result = await measure(driver, scale, classify_jobs(scale.jobs), _loop_jobs(scale))
    return {"way": f"in process, forward {forward}", **result}


async def split_row(settings: Settings, model: NliModel, forward: str, scale: Scale, log_dir: Path) -> dict:
    with tempfile.TemporaryDirectory(prefix="burst-nli-") as folder:
        socket = Path(folder) / "model.sock"
        command = [sys.executable, "-m", "bench.emulated", "--forward", forward, "--model", settings.model_name,
                   "--socket", str(socket)]
        log_dir.mkdir(parents=True, exist_ok=True)
        port = free_port()
        with (log_dir / f"model-process-{forward}.log").open("wb") as log:
            process = subprocess.Popen(command, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT,
                                       env={**os.environ, "METRICS_PORT": str(port)})
            try:
                async with RemoteEngine.connect(settings, socket, model=model, connect_timeout_s=600) as front:
                    metrics_url = f"http://127.0.0.1:{port}/metrics"
                    driver = ModelProcessDriver(front, build_job_schema(settings.limits), metrics_url)
                    result = await measure(driver, scale, classify_jobs(scale.jobs), _loop_jobs(scale))
            finally:
                process.terminate()
                process.wait(30)
    return {"way": f"split in process, forward {forward}", **result}


class ModelProcessDriver(InprocDriver):
    """Jobs through a front's service path (``InprocDriver``'s, any engine); batch totals and CPU
    from the model process's metrics."""

    def __init__(self, engine: RemoteEngine, schema: JobSchema, metrics_url: str) -> None:
        super().__init__(engine, schema, CollectorRegistry())
        self.metrics_url = metrics_url

    async def totals(self) -> BatchTotals:
        async with aiohttp.ClientSession() as session, session.get(self.metrics_url) as response:
            return text_totals(await response.text())


async def pod_row(
    settings: Settings, forward: str, scale: Scale, pool: ClientPool, log_dir: Path, fronts: int | None = None
) -> dict:
    """The pod in one process, or (``fronts``) a pod of that many front processes and a model
    process, whose CPU and batches the row reports."""
    port = free_port()
    command = [sys.executable, "-m", "bench.emulated", "--forward", forward, "--model", settings.model_name,
               "--port", str(port), *(["--front-processes", str(fronts)] if fronts else [])]
    name = f"emulated-pod-{forward}" + (f"-{fronts}-fronts" if fronts else "")
    async with serving_process(name, command, f"http://127.0.0.1:{port}", "/ping", log_dir=log_dir) as url:
        target = HttpEndpoint("pod", f"{url}/runsync?wait={RUNSYNC_WAIT_MS}")
        driver = HttpDriver(pool, target, f"{url}/metrics", "model" if fronts else None)
        result = await measure(driver, scale, classify_jobs(scale.jobs), _loop_jobs(scale))
    processes = f"{fronts} front process{'es' if fronts > 1 else ''}, " if fronts else ""
    return {"way": f"pod over HTTP, {processes}forward {forward}", **result}


async def trivial_row(scale: Scale, pool: ClientPool, log_dir: Path) -> dict:
    async with trivial_server(log_dir=log_dir) as url:
        driver = HttpDriver(pool, HttpEndpoint("trivial", f"{url}/runsync"))
        result = await measure(driver, scale, classify_jobs(scale.jobs), _loop_jobs(scale))
    return {"way": "trivial server over HTTP (client ceiling)", **result}


def _loop_jobs(scale: Scale) -> list[dict]:
    return classify_jobs(max(scale.jobs, scale.concurrency))


async def server_rows(settings: Settings, model: NliModel, scale: Scale, forwards: list[str], http: bool,
                      log_dir: Path, pods: list[int | None]) -> list[dict]:
    rows = []
    for forward in forwards:
        rows.append(await inproc_row(settings, model, forward, scale))
        rows.append(await split_row(settings, model, forward, scale, log_dir))
    if http:
        async with client_pool(scale.client_procs) as pool:
            rows.append(await trivial_row(scale, pool, log_dir))
            for forward in forwards:
                for fronts in pods:
                    rows.append(await pod_row(settings, forward, scale, pool, log_dir, fronts))
    return rows


def stages_table(costs: dict[str, float]) -> str:
    total = sum(costs.values())
    lines = ["| stage | µs a job | share |", "|---|---|---|"]
    lines += [f"| {name} | {cost:.1f} | {cost / total:.0%} |" for name, cost in costs.items()]
    lines.append(f"| total | {total:.1f} | |")
    return "\n".join(lines)


def rows_table(rows: list[dict]) -> str:
    head = ("| way | burst jobs | burst ms | µs a job | burst p99 ms | batches | mean batch | sustained jobs/s "
            "| sustained pairs/s | server CPU µs a job | every process's CPU µs a job | busy | idle p50 ms |")
    lines = [head, "|" + "---|" * 13]
    for row in rows:
        burst, sustained, idle = row["burst"], row["sustained"], row["idle"]
        per_job = burst["wall_ms"] * 1000 / burst["jobs"] if burst["jobs"] else None
        cells = [row["way"] + (" (failures)" if burst["failed"] or sustained["failed"] else ""), burst["jobs"],
                 burst["wall_ms"], f"{per_job:.0f}" if per_job else None, burst["p99_ms"], burst.get("batches"),
                 burst.get("mean_batch_pairs"), f"{sustained['jobs_per_s']:,.0f}",
                 f"{sustained['pairs_per_s']:,.0f}", sustained.get("cpu_us_a_job"),
                 sustained.get("all_cpu_us_a_job"), sustained.get("busy"), idle["p50_ms"]]
        lines.append("| " + " | ".join("" if cell is None else str(cell) for cell in cells) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="synthetic:distilbert-mnli", help="its tokenizer and limits are used")
    parser.add_argument("--forwards", default="free,h100", help=f"comma-separated, of {', '.join(FORWARDS)}")
    parser.add_argument("--no-http", action="store_true", help="skip the pod and trivial-server rows")
    parser.add_argument("--pods", default="0,1,2",
                        help="the pods over HTTP, by front processes (0: the pod in one process); default %(default)s")
    parser.add_argument("--quick", action="store_true", help="a small smoke run")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args(argv)
    pods = [int(count) or None for count in args.pods.split(",")]
    configure_logging("WARNING")
    os.environ.setdefault("PREMISE_CACHE_SIZE", "0")  # every burst's headlines are new (the pod inherits it)
    settings = gpu_policy(Settings.from_env(model_name=args.model, device="cpu", log_level="WARNING"))
    model = NliModel.load(args.model, device="cpu")
    scale = QUICK_SCALE if args.quick else SCALE
    forwards = args.forwards.split(",")
    costs = stage_costs(model, settings, classify_jobs(scale.jobs))
    rows = anyio.run(server_rows, settings, model, scale, forwards, not args.no_http,
                     args.out or Path("bench/results"), pods)
    policy = settings.batch_policy(on_gpu=True)
    header = (f"host {cpu_model()}, model {args.model} (tokenizer and limits; forward emulated), "
              f"max_batch_tokens {policy.max_batch_tokens}, max_batch_pairs {policy.max_batch_items}; "
              f"bursts of {scale.jobs} jobs (median of {scale.repeats}), {scale.sustained_s:g} s sustained at "
              f"{scale.concurrency} in flight, {scale.idle_jobs} idle jobs")
    text = f"{header}\n\n{stages_table(costs)}\n\n{rows_table(rows)}\n"
    print(text)
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
        report = {"header": header, "scale": dataclasses.asdict(scale), "stages_us": costs, "rows": rows}
        (args.out / "host.json").write_text(json.dumps(report, indent=2))
        (args.out / "host.md").write_text(text)


if __name__ == "__main__":
    main()
