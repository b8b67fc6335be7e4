"""Every way of serving the same jobs, side by side, in one run: the performance table.

    python bench/gpu.py --out bench/results                # on a GPU: the whole table (about 3 minutes)
    python bench/gpu.py --quick --out bench/results        # a CPU smoke run (about 1-2 minutes)

Same model (``--model``), same classify jobs (5 label hypotheses + 1 company: 6 pairs), same run:
- seed way: the transformers zero-shot pipeline once per headline, fp32 (``bench/common.py``);
- careful pipeline: the same pipeline over the whole list, ``batch_size=64``;
- trivial server: uvicorn (as the pod runs it) answering every job at once with nothing behind
  it, driven by the same client: the HTTP ceiling the other HTTP rows are read against;
- LitServe: the same model and operations behind LitServe's own batching (max batch 32, 2 ms),
  over HTTP (the ``peers`` extra; skipped with a note when litserve is not installed);
- burst-nli in process: the service path of the serverless handler;
- burst-nli in process with the other half-precision type (bf16 beside fp16; CUDA only);
- burst-nli pod: ``python -m worker pod`` as shipped, ``/runsync`` over loopback HTTP;
- burst-nli pod of front processes: the same with ``--front-processes N`` (``--fronts``): N
  processes decode, tokenize and answer HTTP, one model process batches for the GPU.
Every server row runs the same phases: a warm-up burst, ``--repeats`` bursts of ``--jobs`` jobs at
once (the median kept), a closed loop of ``--concurrency`` jobs in flight for ``--sustained-s``
seconds, then ``--idle-jobs`` jobs one at a time. The HTTP client is ``--client-procs`` aiohttp
processes. Writes ``gpu.json`` and ``gpu.md`` under ``--out`` and prints the tables.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import functools
import importlib.metadata
import importlib.util
import json
import os
import resource
import sys
import time
import traceback
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

import anyio
import msgspec
import torch
from prometheus_client import CollectorRegistry

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import careful_pipeline, cpu_model, dtype_name, machine_name, seed_way  # noqa: E402
from bench.drivers import HttpDriver, InprocDriver, Scale, measure  # noqa: E402
from bench.gpu_report import check_targets, markdown_table, targets_table  # noqa: E402
from bench.http_load import ClientPool, HttpEndpoint, client_pool  # noqa: E402
from bench.servers import litserve_installed, litserve_server, pod_server, trivial_server  # noqa: E402
from loadtest.burst import classify_jobs  # noqa: E402
from schemas import build_job_schema  # noqa: E402
from worker.engine import NliEngine  # noqa: E402
from worker.logs import configure_logging  # noqa: E402
from worker.metrics import Metrics  # noqa: E402
from worker.model import NliModel  # noqa: E402
from worker.settings import Settings  # noqa: E402

WAYS = ("seed", "careful", "trivial", "litserve", "inproc", "inproc-dtype", "pod", "pod-fronts")
FRONTS = 4
GPU_SCALE = Scale(jobs=339, repeats=5, sustained_s=10.0, concurrency=1024, idle_jobs=50, client_procs=4)
CPU_SCALE = Scale(jobs=24, repeats=3, sustained_s=10.0, concurrency=48, idle_jobs=10, client_procs=1)
QUICK_SCALE = Scale(jobs=8, repeats=1, sustained_s=3.0, concurrency=16, idle_jobs=5, client_procs=1)
LITSERVE_MAX_BATCH = 32
LITSERVE_TIMEOUT_S = 0.002
RUNSYNC_WAIT_MS = 300_000


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="synthetic:distilbert-mnli")
    parser.add_argument("--device", default=None, help="default: cuda when present, else cpu")
    parser.add_argument("--dtype", default=None, help="burst-nli's and LitServe's dtype; default: float16 on CUDA")
    parser.add_argument("--ways", default=",".join(WAYS), help=f"comma-separated, of {', '.join(WAYS)}")
    parser.add_argument("--quick", action="store_true", help="a small CPU smoke run; options below still override")
    parser.add_argument("--jobs", type=int, help="burst size (GPU 339, CPU 24, quick 8)")
    parser.add_argument("--repeats", type=int, help="timed bursts, median kept (GPU 5, CPU 3, quick 1)")
    parser.add_argument("--sustained-s", type=float, help="closed-loop seconds (GPU 10, CPU 10, quick 3)")
    parser.add_argument("--concurrency", type=int, help="jobs in flight, closed loop (GPU 1024, CPU 48, quick 16)")
    parser.add_argument("--idle-jobs", type=int, help="jobs sent one at a time (GPU 50, CPU 10, quick 5)")
    parser.add_argument("--client-procs", type=int, help="aiohttp client processes (GPU 4, else 1)")
    parser.add_argument("--fronts", type=int, default=FRONTS, help=f"the pod-fronts way's front processes ({FRONTS})")
    parser.add_argument("--out", type=Path, default=None, help="write gpu.json and gpu.md here")
    args = parser.parse_args(argv)
    unknown = set(args.ways.split(",")) - set(WAYS)
    if unknown:
        parser.error(f"--ways: unknown {', '.join(sorted(unknown))}; expected some of {', '.join(WAYS)}")
    return args


def resolve_scale(args: argparse.Namespace, *, on_gpu: bool) -> Scale:
    """The device's (or --quick's) defaults, with any option given on the command line."""
    base = QUICK_SCALE if args.quick else GPU_SCALE if on_gpu else CPU_SCALE
    given = {field.name: getattr(args, field.name) for field in dataclasses.fields(Scale)}
    return dataclasses.replace(base, **{name: value for name, value in given.items() if value is not None})


@dataclass(frozen=True)  # no slots: functools.cached_property keeps its values in __dict__
class Run:
    """What every way of one run shares: the model, the jobs and where logs go."""

    settings: Settings
    model: NliModel
    scale: Scale
    log_dir: Path
    fronts: int = FRONTS

    @functools.cached_property
    def jobs(self) -> list[dict]:
        return classify_jobs(self.scale.jobs)

    @functools.cached_property
    def loop_jobs(self) -> list[dict]:
        """What the warm-up and the closed loop send: enough for every sender."""
        return classify_jobs(max(self.scale.jobs, self.scale.concurrency))

    def served(self) -> dict:
        """The model as the server processes load it: by name, on the same device and dtype."""
        return {"model": self.model.name, "device": str(self.model.device), "dtype": dtype_name(self.model),
                "log_dir": self.log_dir}


def pipeline_rows(run: Run, ways: list[str]) -> list[dict]:
    """The seed way (fp32 always) and the careful pipeline (the engine's dtype), as bench/engine.py runs them."""
    rows = []
    if "seed" in ways:
        model = run.model
        fp32 = model if model.dtype == torch.float32 else NliModel.load(model.name, device=str(model.device),
                                                                         dtype="float32")
        rows.append(_pipeline_row("seed", seed_way(fp32, run.jobs)))
        del fp32
    if "careful" in ways:
        rows.append(_pipeline_row("careful", careful_pipeline(run.model, run.jobs)))
    return rows


def _pipeline_row(key: str, measured: dict) -> dict:
    wall_s = measured["wall_ms"] / 1000
    burst = {"jobs": measured["jobs"], "failed": 0, "wall_ms": measured["wall_ms"],
             "jobs_per_s": round(measured["jobs"] / wall_s, 1), "pairs_per_s": measured["pairs_per_s"]}
    return {"key": key, "way": measured["way"], "burst": burst}


async def trivial_row(run: Run, pool: ClientPool) -> dict:
    async with trivial_server(log_dir=run.log_dir) as url:
        driver = HttpDriver(pool, HttpEndpoint("trivial", f"{url}/runsync"))
        return {"key": "trivial", "way": "trivial server over HTTP (client ceiling)",
                **await measure(driver, run.scale, run.jobs, run.loop_jobs)}


async def litserve_row(run: Run, pool: ClientPool) -> dict:
    if not litserve_installed():
        return {"key": "litserve", "way": "LitServe", "skipped": "not installed: pip install -e '.[peers]'"}
    batching = f"max batch {LITSERVE_MAX_BATCH}, {LITSERVE_TIMEOUT_S * 1000:g} ms"
    way = f"LitServe {_version('litserve')} over HTTP ({batching})"
    served = run.served()
    async with litserve_server(**served, max_batch_size=LITSERVE_MAX_BATCH, batch_timeout_s=LITSERVE_TIMEOUT_S) as url:
        driver = HttpDriver(pool, HttpEndpoint("litserve", f"{url}/predict", wrap_input=False, expect_completed=False))
        return {"key": "litserve", "way": way, **await measure(driver, run.scale, run.jobs, run.loop_jobs)}


async def inproc_row(run: Run, pool: ClientPool) -> dict:
    registry = CollectorRegistry()
    async with NliEngine.start(run.settings, model=run.model, metrics=Metrics(registry)) as engine:
        driver = InprocDriver(engine, build_job_schema(run.settings.limits), registry)
        return {"key": "inproc", "way": "burst-nli in process",
                **await measure(driver, run.scale, run.jobs, run.loop_jobs)}


async def inproc_dtype_row(run: Run, pool: ClientPool) -> dict:
    """burst-nli in process in the other half-precision type (bf16 beside fp16, or fp16
    beside bf16): bf16 keeps fp32's range, fp16 more precision; this row says what each costs."""
    other = "float16" if run.model.dtype == torch.bfloat16 else "bfloat16"
    way = f"burst-nli in process, {other}"
    if run.model.device.type != "cuda":
        return {"key": "inproc-dtype", "way": way, "skipped": "runs on CUDA only"}
    settings = msgspec.structs.replace(run.settings, dtype=other)
    model = await anyio.to_thread.run_sync(lambda: NliModel.load(run.model.name, device=str(run.model.device), dtype=other))
    registry = CollectorRegistry()
    try:
        async with NliEngine.start(settings, model=model, metrics=Metrics(registry)) as engine:
            driver = InprocDriver(engine, build_job_schema(settings.limits), registry)
            return {"key": "inproc-dtype", "way": way, **await measure(driver, run.scale, run.jobs, run.loop_jobs)}
    finally:
        del model
        torch.cuda.empty_cache()


async def pod_row(run: Run, pool: ClientPool) -> dict:
    async with pod_server(**run.served()) as url:
        driver = HttpDriver(pool, HttpEndpoint("pod", f"{url}/runsync?wait={RUNSYNC_WAIT_MS}"), f"{url}/metrics")
        return {"key": "pod", "way": "burst-nli pod over HTTP (/runsync)",
                **await measure(driver, run.scale, run.jobs, run.loop_jobs)}


async def pod_fronts_row(run: Run, pool: ClientPool) -> dict:
    async with pod_server(**run.served(), front_processes=run.fronts) as url:
        endpoint = HttpEndpoint("pod", f"{url}/runsync?wait={RUNSYNC_WAIT_MS}")
        driver = HttpDriver(pool, endpoint, f"{url}/metrics", process="model")
        return {"key": "pod-fronts", "way": f"burst-nli pod of {run.fronts} front processes over HTTP (/runsync)",
                **await measure(driver, run.scale, run.jobs, run.loop_jobs)}


SERVER_WAYS: dict[str, Callable[[Run, ClientPool], Awaitable[dict]]] = {
    "trivial": trivial_row, "litserve": litserve_row, "inproc": inproc_row, "inproc-dtype": inproc_dtype_row,
    "pod": pod_row, "pod-fronts": pod_fronts_row,
}


async def server_rows(run: Run, ways: list[str], record: Callable[[dict], None]) -> None:
    """Every server way, one after another, driven by one pool of client processes."""
    async with client_pool(run.scale.client_procs) as pool:
        for key, row_of in SERVER_WAYS.items():
            if key in ways:
                record(await _guarded(key, row_of(run, pool)))


async def _guarded(key: str, measuring: Awaitable[dict]) -> dict:
    """The way's row, or a row saying why it failed: a GPU run is one shot, and one way failing
    (a server that would not start) must not lose the others."""
    started = time.perf_counter()
    try:
        row = await measuring
    except Exception as err:
        traceback.print_exc()
        row = {"key": key, "way": key, "skipped": f"failed: {type(err).__name__}: {err}"}
    print(f"[bench/gpu.py] {key}: {time.perf_counter() - started:.0f} s", file=sys.stderr, flush=True)
    return row


def _version(package: str) -> str | None:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return None


def prepare_process() -> None:
    """What every process of the run inherits: enough file descriptors for ``--concurrency``
    connections (a server holds one each), the runpod SDK's log level chosen, so that
    ``configure_logging`` need not import the SDK (the GPU image lacks it; nothing here uses it),
    and no premise cache: the seed way and the peers tokenize every burst anew, and so must we."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = 65_536 if hard == resource.RLIM_INFINITY else hard
    if soft != resource.RLIM_INFINITY and soft < wanted:
        resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))
    os.environ.setdefault("RUNPOD_LOG_LEVEL", "WARN")
    os.environ.setdefault("PREMISE_CACHE_SIZE", "0")  # repeated bursts must not find their headlines tokenized


def machine_info(settings: Settings, model: NliModel, scale: Scale) -> dict:
    """What the table ran on and with: enough to reproduce it and to compare runs."""
    on_gpu = model.device.type == "cuda"
    policy = settings.batch_policy(on_gpu=on_gpu)
    return {
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "command": " ".join(["python", "bench/gpu.py", *sys.argv[1:]]),
        "model": model.name,
        "device": str(model.device),
        "machine": machine_name(model.device),
        "cpu": f"{cpu_model()}, {os.cpu_count()} cores",
        "dtype": dtype_name(model),
        "torch": torch.__version__,
        "cuda": torch.version.cuda if on_gpu else None,
        "transformers": _version("transformers"),
        "litserve": _version("litserve"),
        "uvicorn_http": "httptools" if importlib.util.find_spec("httptools") else "h11",
        "uvicorn_loop": "uvloop" if importlib.util.find_spec("uvloop") else "asyncio",
        "max_batch_tokens": policy.max_batch_tokens,
        "max_batch_pairs": policy.max_batch_items,
        "scale": dataclasses.asdict(scale),
    }


def header_line(info: dict) -> str:
    return (f"model {info['model']}, {info['device']} {info['dtype']} ({info['machine']}), torch {info['torch']}, "
            f"transformers {info['transformers']}, litserve {info['litserve'] or 'not installed'}, "
            f"uvicorn {info['uvicorn_http']}/{info['uvicorn_loop']}, "
            f"max_batch_tokens {info['max_batch_tokens']}, max_batch_pairs {info['max_batch_pairs']}; "
            f"{_scale_words(info['scale'])}; host CPU {info['cpu']}")


def _scale_words(scale: dict) -> str:
    return (f"bursts of {scale['jobs']} jobs (median of {scale['repeats']}), {scale['sustained_s']:g} s sustained at "
            f"{scale['concurrency']} in flight, {scale['idle_jobs']} idle jobs, "
            f"client processes {scale['client_procs']}")


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    prepare_process()
    configure_logging("WARNING")
    settings = Settings.from_env(model_name=args.model, device=args.device, dtype=args.dtype, log_level="WARNING")
    model = NliModel.load(args.model, device=settings.device, dtype=settings.dtype)
    on_gpu = model.device.type == "cuda"
    run = Run(settings, model, resolve_scale(args, on_gpu=on_gpu), log_dir=args.out or Path("bench/results"),
              fronts=args.fronts)
    ways = args.ways.split(",")
    info = machine_info(settings, model, run.scale)
    rows = pipeline_rows(run, ways)

    def record(row: dict) -> None:  # rewrite the report after every way: a cut-off run keeps what it measured
        rows.append(row)
        write_report(args.out, info, rows, on_gpu=on_gpu, burst_jobs=run.scale.jobs)

    anyio.run(server_rows, run, ways, record)
    print(write_report(args.out, info, rows, on_gpu=on_gpu, burst_jobs=run.scale.jobs))


def write_report(out: Path | None, info: dict, rows: list[dict], *, on_gpu: bool, burst_jobs: int) -> str:
    """The header, the table and the targets as Markdown; with ``out``, also written there with the JSON."""
    checks = check_targets(rows, on_gpu=on_gpu, burst_jobs=burst_jobs)
    text = f"{header_line(info)}\n\n{markdown_table(rows)}\n\n{targets_table(checks)}\n"
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
        (out / "gpu.json").write_text(json.dumps({"machine": info, "rows": rows, "targets": checks}, indent=2))
        (out / "gpu.md").write_text(text)
    return text


if __name__ == "__main__":
    main()
