"""Two versions of burst-nli on the same bursts, alternating, for changes smaller than the noise.

    python bench/versions.py --before HEAD~1                     # this tree against its parent
    python bench/versions.py --before v1 --after v2 --rounds 12  # any two revisions

On a shared machine, runs of the same code minutes apart differ by more than a per-job saving of
a few microseconds. So each version runs in
its own process, the two alternating ``--rounds`` times, and the table reports every round's pair
and the median of the ratios. A process loads the synthetic model, starts an engine with the
emulated forward (``bench/emulated.py``, the GPU's batch budget, no premise cache, metrics on,
logging at INFO) and times ``--bursts`` bursts of 339 ``classify`` jobs through the service path
(``admit_job`` and ``finish_job``, as the serverless handler runs them): the median wall time
and the median CPU time of the event loop's thread (``time.thread_time``), which the machine's
other load disturbs less. ``--before``/``--after`` are git revisions checked out in temporary
worktrees (``--after`` defaults to this working tree, uncommitted changes included).

``--pod``: each round serves that version's pod (``bench/emulated.py``, its own process) and
drives ``/runsync`` for ``--seconds`` at ``--concurrency`` from a client process, and reports
the pod's sustained jobs/s and its process's CPU µs a job (``process_cpu_seconds_total`` from
``/metrics``, every thread): the bound on what one pod process serves (docs/PROCESSES.md).
``--sustained``: the same closed loop in process, through the service path as above, reporting
jobs/s and the process's CPU µs a job (``time.process_time``, every thread); the JSON also
holds the garbage collections during the loop, their total and longest pause.
``--split``: that closed loop through a front (``RemoteEngine``) and that version's model
process (``bench/emulated.py --socket``), reporting jobs/s and the model process's CPU µs a job
(``process_cpu_seconds_total`` from its ``METRICS_PORT``): the work that cannot spread over
front processes (docs/PROCESSES.md).

    python bench/versions.py --pod --before HEAD~1 --rounds 6
    python bench/versions.py --sustained --before HEAD~1 --rounds 6
    python bench/versions.py --split --before HEAD~1 --rounds 6
    python bench/versions.py --cut --before HEAD~1 --rounds 6

``--cut``: only the batcher's cut (``Batcher._cut_batch``: the window topped up, the batch chosen
and taken out), timed alone in each version's process over a queue kept 1,024 classify-sized
jobs deep (6 pairs of 15 to 52 tokens), as in a sustained burst: the cut's µs a job.
"""

from __future__ import annotations

import argparse
import itertools
import json
import statistics
import subprocess
import sys
import tempfile
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BURST_JOBS = 339


def child(repo: Path, bursts: int, forward: str, model_name: str, sustained_s: float | None, concurrency: int,
          split: bool = False) -> dict:
    """Runs in a fresh process with ``repo`` first on the path: that version's code is measured."""
    import contextlib
    import gc
    import os
    import time

    sys.path.insert(0, str(repo))
    os.chdir(repo)
    os.environ["PREMISE_CACHE_SIZE"] = "0"
    import anyio
    from prometheus_client import CollectorRegistry

    from bench.emulated import emulated, gpu_policy
    from loadtest.burst import classify_jobs
    from schemas import build_job_schema
    from worker.engine import NliEngine
    from worker.logs import configure_logging
    from worker.metrics import Metrics
    from worker.model import NliModel
    from worker.service import admit_job, finish_job
    from worker.settings import Settings

    async def run() -> dict:
        configure_logging("INFO")
        settings = gpu_policy(Settings.from_env(model_name=model_name, device="cpu"))
        model = emulated(NliModel.load(settings.model_name, device="cpu"), forward)
        schema, metrics = build_job_schema(settings.limits), Metrics(CollectorRegistry())
        jobs = classify_jobs(BURST_JOBS)
        engines = split_engine(settings, model) if split else NliEngine.start(settings, model=model, metrics=metrics)
        async with engines as engine:

            async def one(i: int, job: dict) -> None:
                outcome = await finish_job(admit_job(engine, schema, job, job_id=str(i), metrics=metrics))
                assert outcome.error is None, outcome.error

            async def burst() -> None:
                async with anyio.create_task_group() as tg:
                    for i, job in enumerate(jobs):
                        tg.start_soon(one, i, job)

            await burst()  # warm
            if split:
                before = await model_process_cpu_s()
                result = await sustained(one)
                cpu_s = await model_process_cpu_s() - before
                return {**result, "cpu_us_a_job": cpu_s / result["jobs"] * 1e6}
            if sustained_s is not None:
                return await sustained(one)
            walls, cpus = [], []
            for _ in range(bursts):
                cpu, wall = time.thread_time(), time.perf_counter()
                await burst()
                walls.append((time.perf_counter() - wall) * 1e3)
                cpus.append((time.thread_time() - cpu) * 1e3)
                await anyio.sleep(0.05)  # let the batch log lines drain between bursts
        return {"wall_ms": statistics.median(walls), "loop_cpu_ms": statistics.median(cpus)}

    async def sustained(one: Callable[[int, dict], Awaitable[None]]) -> dict:
        """``concurrency`` jobs kept in flight for ``sustained_s``: jobs/s and the process's CPU a job."""
        loop_jobs, done = itertools.cycle(classify_jobs(max(BURST_JOBS, concurrency))), 0
        stop = time.perf_counter() + (sustained_s or 0.0)

        async def sender() -> None:
            nonlocal done
            while time.perf_counter() < stop:
                await one(done, next(loop_jobs))
                done += 1

        collections: list[float] = []  # each garbage collection's pause, from gc.callbacks
        started_at = [0.0]

        def collected(phase: str, info: dict) -> None:
            if phase == "start":
                started_at[0] = time.perf_counter()
            else:
                collections.append(time.perf_counter() - started_at[0])

        gc.callbacks.append(collected)
        cpu, wall = time.process_time(), time.perf_counter()
        async with anyio.create_task_group() as tg:
            for _ in range(concurrency):
                tg.start_soon(sender)
        wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
        gc.callbacks.remove(collected)
        return {"jobs": done, "jobs_per_s": done / wall, "cpu_us_a_job": cpu / done * 1e6,
                "gc_collections": len(collections), "gc_ms": sum(collections) * 1e3,
                "gc_max_ms": max(collections, default=0.0) * 1e3}

    from bench.servers import free_port

    metrics_port = free_port()  # the model process's, with --split

    @contextlib.asynccontextmanager
    async def split_engine(settings: Settings, model: NliModel) -> AsyncIterator[object]:
        """A model process of this version on a Unix socket, and a front connected to it."""
        from worker.engine import tune_garbage_collector
        from worker.split.remote_engine import RemoteEngine

        with tempfile.TemporaryDirectory(prefix="burst-nli-versions-") as folder:
            socket = Path(folder) / "model.sock"
            command = [sys.executable, "-m", "bench.emulated", "--forward", forward, "--model", model_name,
                       "--socket", str(socket)]  # fmt: skip
            env = {**os.environ, "METRICS_PORT": str(metrics_port), "PREMISE_CACHE_SIZE": "0"}
            process = subprocess.Popen(command, cwd=repo, env=env, stdout=subprocess.DEVNULL, stderr=sys.stderr)
            try:
                tune_garbage_collector()  # as a front's host does (RemoteHost), before any job
                async with RemoteEngine.connect(settings, socket, model=model, connect_timeout_s=600) as front:
                    yield front
            finally:
                process.terminate()
                process.wait(30)

    async def model_process_cpu_s() -> float:
        import aiohttp

        from bench.batch_totals import text_totals

        url = f"http://127.0.0.1:{metrics_port}/metrics"
        async with aiohttp.ClientSession() as session, session.get(url) as response:
            return text_totals(await response.text()).cpu_s

    return anyio.run(run)


async def pod_sustained(repo: Path, args: argparse.Namespace) -> dict:
    """That version's pod under a closed loop of ``/runsync`` jobs: jobs/s and server CPU a job."""
    from bench.drivers import HttpDriver
    from bench.http_load import HttpEndpoint, client_pool
    from bench.servers import free_port, serving_process
    from loadtest.burst import classify_jobs

    port = free_port()
    command = [sys.executable, "-m", "bench.emulated", "--forward", args.forward, "--model", args.model,
               "--port", str(port)]  # fmt: skip
    jobs = classify_jobs(max(BURST_JOBS, args.concurrency))
    with tempfile.TemporaryDirectory(prefix="burst-nli-pod-") as logs:
        async with (
            serving_process("pod", command, f"http://127.0.0.1:{port}", "/ping", log_dir=Path(logs), cwd=repo,
                            env={"PREMISE_CACHE_SIZE": "0"}) as url,
            client_pool(1) as pool,
        ):  # fmt: skip
            driver = HttpDriver(pool, HttpEndpoint("pod", f"{url}/runsync?wait=300000"), f"{url}/metrics")
            await driver.burst(jobs)  # warm: connections, shapes
            before = await driver.totals()
            phase = await driver.sustained(jobs, args.concurrency, args.seconds)
            after = await driver.totals()
    if phase.failed:
        raise RuntimeError(f"{phase.failed} jobs failed on the pod in {repo}")
    assert before is not None and after is not None
    return {"jobs_per_s": phase.per_s, "cpu_us_a_job": (after.cpu_s - before.cpu_s) / phase.requests * 1e6}


def cut_child(repo: Path, cuts: int) -> dict:
    """Runs in a fresh process with ``repo`` first on the path: that version's cut, timed alone."""
    import random
    import time

    sys.path.insert(0, str(repo))
    from batching import Batcher, BatchPolicy

    class Unused:  # the cut never reaches the runner
        def collate(self, payloads: list) -> list:
            return payloads

        def run(self, batch: list) -> list:
            return batch

    rng = random.Random(0)
    batcher = Batcher(Unused(), BatchPolicy())  # the GPU's budget: 16,384 tokens, 512 pairs, 2,048 looked at
    batcher._open = True  # queued without the batcher's loop: nothing but the cut runs
    queued = 0

    def add(jobs: int) -> None:
        nonlocal queued
        for _ in range(jobs):
            premise = rng.randint(12, 40)  # a headline's tokens; each pair adds a hypothesis and 3 special tokens
            batcher.enqueue([(queued, pair) for pair in range(6)], [premise + 3 + rng.randint(0, 9) for _ in range(6)])
            queued += 1

    add(1024)
    seconds, pairs = 0.0, 0
    for i in range(50 + cuts):  # the first 50 warm up
        started = time.perf_counter()
        batch = batcher._cut_batch()
        if i >= 50:
            seconds += time.perf_counter() - started
            pairs += len(batch)
        for entry in batch:
            entry.job.remaining -= 1
            if not entry.job.remaining:
                batcher._finish(entry.job, None)
        add(len({id(entry.job) for entry in batch if entry.job.finished}))
    return {"pairs_a_batch": pairs / cuts, "us_a_job": seconds / (pairs / 6) * 1e6}


def measure(repo: Path, args: argparse.Namespace) -> dict:
    if args.pod:
        import anyio

        return anyio.run(pod_sustained, repo, args)
    command = [sys.executable, str(Path(__file__).resolve()), "--child", str(repo), "--bursts", str(args.bursts),
               "--forward", args.forward, "--model", args.model, "--concurrency", str(args.concurrency)]  # fmt: skip
    if args.sustained or args.split:
        command += ["--split" if args.split else "--sustained", "--seconds", str(args.seconds)]
    if args.cut:
        command += ["--cut", "--cuts", str(args.cuts)]
    done = subprocess.run(command, capture_output=True, text=True, timeout=600)
    if done.returncode != 0:
        raise RuntimeError(f"the run in {repo} failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def worktree(revision: str, parent: Path) -> Path:
    path = parent / revision.replace("/", "_").replace("~", "-").replace("^", "-")
    subprocess.run(["git", "worktree", "add", "--detach", str(path), revision], cwd=ROOT, check=True,
                   capture_output=True)  # fmt: skip
    return path


@dataclass(frozen=True, slots=True)
class Figure:
    """One measured figure of a round: its key in a side's result, its column name and format."""

    key: str
    name: str
    form: str


BURST_FIGURES = (Figure("wall_ms", "wall ms", ".1f"), Figure("loop_cpu_ms", "loop CPU ms", ".1f"))
SUSTAINED_FIGURES = (Figure("jobs_per_s", "jobs/s", ",.0f"), Figure("cpu_us_a_job", "CPU µs a job", ".0f"))
CUT_FIGURES = (Figure("pairs_a_batch", "pairs a batch", ".0f"), Figure("us_a_job", "cut µs a job", ".1f"))


def markdown(before: str, after: str, rounds: list[tuple[dict, dict]], figures: tuple[Figure, Figure]) -> str:
    """Each round's two figures for both versions, and the ratio of the second (the CPU one)."""
    other, cpu = figures
    lines = [f"| round | {before} {other.name} | {after} {other.name} | {before} {cpu.name} | {after} {cpu.name} "
             f"| {cpu.name} after/before |", "|" + "---|" * 6]  # fmt: skip
    for i, (b, a) in enumerate(rounds, 1):
        lines.append(f"| {i} | {b[other.key]:{other.form}} | {a[other.key]:{other.form}} | {b[cpu.key]:{cpu.form}} "
                     f"| {a[cpu.key]:{cpu.form}} | {a[cpu.key] / b[cpu.key]:.2f} |")  # fmt: skip
    other_ratio = statistics.median(a[other.key] / b[other.key] for b, a in rounds)
    cpu_ratio = statistics.median(a[cpu.key] / b[cpu.key] for b, a in rounds)
    lines.append(f"| **median of the ratios** | | | | | **{cpu_ratio:.2f}** ({other.name} {other_ratio:.2f}) |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--before", default="HEAD", help="a git revision (default HEAD)")
    parser.add_argument("--after", default=None, help="a git revision (default: this working tree)")
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--bursts", type=int, default=11, help="bursts a process times (its median is kept)")
    parser.add_argument("--forward", choices=["free", "h100", "h100-eager"], default="free")
    parser.add_argument("--model", default="synthetic:distilbert-mnli", help="its tokenizer and limits are used")
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--pod", action="store_true", help="the pod over HTTP, sustained (see above)")
    mode.add_argument("--sustained", action="store_true", help="in process, sustained (see above)")
    mode.add_argument("--split", action="store_true", help="a front and a model process, sustained (see above)")
    mode.add_argument("--cut", action="store_true", help="the batcher's cut alone, over a deep queue (see above)")
    parser.add_argument("--seconds", type=float, default=5.0, help="--pod, --sustained, --split: the loop's length")
    parser.add_argument("--concurrency", type=int, default=512, help="--pod, --sustained, --split: jobs in flight")
    parser.add_argument("--cuts", type=int, default=400, help="--cut: the cuts a process times")
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--child", type=Path, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child is not None and args.cut:
        print(json.dumps(cut_child(args.child, args.cuts)))
        return
    if args.child is not None:
        sustained_s = args.seconds if args.sustained or args.split else None
        print(json.dumps(child(args.child, args.bursts, args.forward, args.model, sustained_s, args.concurrency,
                               args.split)))
        return

    sys.path.insert(0, str(ROOT))
    from bench.common import publish

    rounds = []
    with tempfile.TemporaryDirectory(prefix="burst-nli-versions-") as tmp:
        try:
            before = worktree(args.before, Path(tmp))
            after = worktree(args.after, Path(tmp)) if args.after else ROOT
            for i in range(args.rounds):
                rounds.append((measure(before, args), measure(after, args)))
                print(f"round {i + 1}/{args.rounds}: {rounds[-1]}", file=sys.stderr)
        finally:
            for tree in Path(tmp).iterdir():
                subprocess.run(["git", "worktree", "remove", "--force", str(tree)], cwd=ROOT, capture_output=True)
            subprocess.run(["git", "worktree", "prune"], cwd=ROOT, capture_output=True)
    order = f"{args.rounds} rounds, {args.before} then {args.after or 'this tree'}"
    if args.pod:
        header = (f"the pod over HTTP, /runsync classify jobs, {args.seconds:g} s at {args.concurrency} in flight, "
                  f"forward {args.forward} (emulated); {order}")
        table = markdown(args.before, args.after or "this tree", rounds, SUSTAINED_FIGURES)
    elif args.sustained:
        header = (f"in process, classify jobs through the service path, {args.seconds:g} s at {args.concurrency} in "
                  f"flight, forward {args.forward} (emulated); {order}")
        table = markdown(args.before, args.after or "this tree", rounds, SUSTAINED_FIGURES)
    elif args.cut:
        header = f"the batcher's cut alone, a queue kept 1,024 classify jobs deep, {args.cuts} cuts a process; {order}"
        table = markdown(args.before, args.after or "this tree", rounds, CUT_FIGURES)
    elif args.split:
        header = (f"a front and a model process, classify jobs through the front's service path, {args.seconds:g} s "
                  f"at {args.concurrency} in flight, forward {args.forward} (emulated), the model process's CPU; "
                  f"{order}")
        table = markdown(args.before, args.after or "this tree", rounds, SUSTAINED_FIGURES)
    else:
        header = (f"{BURST_JOBS}-job classify bursts, forward {args.forward} (emulated), median of {args.bursts} "
                  f"a process; {order}")
        table = markdown(args.before, args.after or "this tree", rounds, BURST_FIGURES)
    publish(args.out, "versions", header, table, {"rounds": [{"before": b, "after": a} for b, a in rounds]})


if __name__ == "__main__":
    main()
