"""The restart scenario: ``python -m worker pod`` as a process that is killed mid-load and started
again, its callers retrying through ``burst_nli_client``."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import aiohttp
import anyio
import anyio.abc

from burst_nli_client import (
    REFUSED_STATUSES,
    Backoff,
    Client,
    ClientError,
    ConnectionFailed,
    HttpError,
    JobCancelled,
    JobFailed,
    JobTimedOut,
    NotFound,
    RetryPolicy,
    SubmissionUncertain,
    SubmittedJob,
)
from loadtest.chaos.ledger import BOUND_S, Ledger, ScenarioReport, classify_inputs, run_all
from loadtest.chaos.loopback import http_client, paced, still_serves_http
from loadtest.headlines import headlines
from schemas import Limits
from worker.model import NliModel

RESTART_RETRY = RetryPolicy(max_attempts=8, backoff=Backoff(initial_s=0.25, factor=1.6, max_s=2.0))
"""The restart scenario's callers: about 8 s of safe retries before ``ConnectionFailed`` surfaces."""


async def worker_restart(
    model: NliModel, jobs: int = 300, jobs_per_s: float = 30.0, seed: int = 6, log_dir: str | Path | None = None
) -> ScenarioReport:
    """Scenario 8: ``python -m worker pod`` as a real process on a loopback port, SIGKILLed while
    it holds a burst (right after it accepts a 640-pair job, a third of the way in) and started
    again on the same port. Jobs arrive at ``jobs_per_s`` throughout.

    Callers use ``burst_nli_client`` as a caller would: it retries what is safe on its own
    (connection refused before sending; 503 while the new process loads its model). A submission
    it cannot vouch for (``SubmissionUncertain``: the connection died with the request sent) and
    a job the new process has never heard of (404: it died with the old one) are resubmitted by
    the caller. Every job must still complete, with its own output. ``log_dir`` keeps the
    processes' logs (a temporary directory otherwise).
    """
    report = ScenarioReport("worker restart")
    inputs = classify_inputs(jobs, seed)
    kill_at = jobs // 3
    pool = headlines()
    inputs[kill_at] = {
        "operation": "classify_batch",
        "headlines": [pool[i % len(pool)] for i in range(Limits().max_headlines_per_job)],
    }
    counts: Counter[str] = Counter()
    killed, restarted = anyio.Event(), anyio.Event()
    async with pod_under_test(model, log_dir, counts, prefix="burst-nli-restart-") as (pod, client):

        async def one(index: int, ledger: Ledger) -> None:
            sent = time.perf_counter()
            while True:
                job = await submit_until_taken(client, inputs[index], counts)
                if isinstance(job, str):
                    ledger.end(index, job)
                    return
                generation = pod.starts
                counts[f"accepted_by_process_{generation}"] += 1
                if index == kill_at and not killed.is_set():
                    pod.kill()  # the worker dies holding this job and whatever else it had
                    killed.set()
                state, output = await wait_through_restart(job)
                if state == "lost":
                    counts["lost_with_worker"] += 1  # 404 from the new process: resubmit
                    continue
                if state == "completed":
                    report.latencies_s.append(time.perf_counter() - sent)
                    counts[f"completed_by_process_{generation}"] += 1
                    report.wrong += not same_headlines(inputs[index], output)
                ledger.end(index, state)
                return

        async def restart() -> None:
            await killed.wait()
            down = time.perf_counter()
            await pod.wait_exit()
            await pod.start()
            await pod.wait_ready(client)
            report.figures["downtime_s"] = round(time.perf_counter() - down, 2)
            restarted.set()

        async with anyio.create_task_group() as tg:
            tg.start_soon(restart)
            await run_all(report, jobs, one, arrivals=paced(jobs_per_s))
            tg.cancel_scope.cancel()
        if restarted.is_set():
            report.figures.update(await still_serves_http(client))
        else:
            report.figures.update(serves_after=False)
    report.figures = {
        "accepted_by_killed": counts["accepted_by_process_1"],
        "completed_before_kill": counts["completed_by_process_1"],
        "lost_with_worker": counts["lost_with_worker"],
        "uncertain_resubmitted": counts["uncertain_resubmitted"],
        "unreachable_resubmitted": counts["unreachable_resubmitted"],
        "refused_resubmitted": counts["refused_resubmitted"],
        "connection_errors_seen": counts["request_errors"],
        "http_503_while_loading": counts["http_503"],
        "served_by_restarted": counts["completed_by_process_2"],
        **report.figures,
    }
    return report


@asynccontextmanager
async def pod_under_test(
    model: NliModel, log_dir: str | Path | None, counts: Counter[str], *, prefix: str,
    front_processes: int | None = None, env: dict[str, str] | None = None, retry: RetryPolicy = RESTART_RETRY,
) -> AsyncIterator[tuple[PodProcess, Client]]:  # fmt: skip
    """A started ``PodProcess`` that serves (``env`` added to its environment), and a client of
    it retrying as ``retry`` says, counting failed requests and 503s in ``counts``; the pod is
    killed on the way out. ``log_dir`` keeps its logs (a temporary directory otherwise)."""
    with contextlib.ExitStack() as stack:
        if log_dir is None:
            log_dir = stack.enter_context(tempfile.TemporaryDirectory(prefix=prefix))
        pod = PodProcess(model, _free_port(), Path(log_dir), front_processes, env)
        async with _counting_session(counts) as session, http_client(pod.base_url, retry=retry, session=session) as client:
            try:
                await pod.start()
                await pod.wait_ready(client)
                yield pod, client
            finally:
                await pod.stop()


async def submit_until_taken(client: Client, job_input: dict[str, Any], counts: Counter[str]) -> SubmittedJob | str:
    """Submit a job as a caller who resubmits what the client could not vouch for: the job once a
    server has taken it, or how it ended (``http_<status>``) when it was refused for good."""
    while True:
        try:
            return await client.run(job_input)
        except SubmissionUncertain:  # sent, then the connection died: resubmit
            counts["uncertain_resubmitted"] += 1
        except ConnectionFailed:  # never reached a server, after the client's retries
            counts["unreachable_resubmitted"] += 1
        except HttpError as err:
            if err.status not in REFUSED_STATUSES:
                return f"http_{err.status}"
            counts["refused_resubmitted"] += 1  # refused (503 while loading) to the client's last try


async def wait_through_restart(job: SubmittedJob) -> tuple[str, Any]:
    """Wait for a job across a restart: ``("completed", output)``, its end, or ``("lost", None)``
    when the server answering now has never heard of it."""
    while True:
        try:
            status = await job.wait(timeout_s=BOUND_S)
        except ConnectionFailed:  # down, or still starting, after the client's retries: keep asking
            continue
        except NotFound:
            return "lost", None
        except JobFailed as err:
            return err.code or "failed", None
        except (JobTimedOut, JobCancelled) as err:
            return "timed_out" if isinstance(err, JobTimedOut) else "cancelled", None
        return "completed", status.output


def same_headlines(job_input: dict[str, Any], output: Any) -> bool:
    """The output answers this job's headline(s), not another's."""
    if not isinstance(output, dict):
        return False
    if "headlines" in job_input:
        return [result.get("headline") for result in output.get("results", [])] == job_input["headlines"]
    return output.get("headline") == job_input.get("headline")


class PodProcess:
    """``python -m worker pod`` on a fixed loopback port in its own process group, logging to
    ``log_dir/pod-<n>.log``; ``starts`` counts its lives (1 for the first). With
    ``front_processes``, a pod of that many fronts and a model process (``--front-processes``)."""

    def __init__(
        self, model: NliModel, port: int, log_dir: Path, front_processes: int | None = None,
        env: dict[str, str] | None = None,
    ) -> None:  # fmt: skip
        self.model_name = model.name
        self.front_processes = front_processes
        self.env = env or {}
        self.port = port
        self.base_url = f"http://127.0.0.1:{port}"
        self.log_dir = log_dir
        self.starts = 0
        self.process: anyio.abc.Process | None = None

    @property
    def log_path(self) -> Path:
        return self.log_dir / f"pod-{self.starts}.log"

    async def start(self) -> None:
        root = Path(__file__).resolve().parents[1]
        env = {key: value for key, value in os.environ.items() if key != "API_KEY"}
        env.update(
            MODEL_NAME=self.model_name, DEVICE="cpu", WARMUP_MAX_LEN="16", LOG_LEVEL="INFO",
            PYTHONPATH=os.pathsep.join(filter(None, [str(root), env.get("PYTHONPATH")])), **self.env,
        )  # fmt: skip
        self.starts += 1
        command = [sys.executable, "-m", "worker", "pod", "--host", "127.0.0.1", "--port", str(self.port)]
        if self.front_processes:
            command += ["--front-processes", str(self.front_processes)]
        with self.log_path.open("wb") as log:  # the child keeps its own descriptor
            self.process = await anyio.open_process(
                command, env=env, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                start_new_session=True,
            )  # fmt: skip

    async def wait_ready(self, client: Client, within_s: float = 90.0) -> None:
        """Poll ``/ping`` as a load balancer does until it answers 200 (bounded)."""
        assert self.process is not None
        with anyio.fail_after(within_s):
            while True:
                if self.process.returncode is not None:
                    raise RuntimeError(f"the pod exited with {self.process.returncode}; see {self.log_path}")
                try:
                    if await client.ping():
                        return
                except ClientError:
                    pass  # not listening yet
                await anyio.sleep(0.05)  # another process's readiness: nothing to wait on but its port

    def kill_child(self, name: str) -> None:
        """SIGKILL one process of a pod of several, by the name its supervisor logged it under
        (``model``, ``front-0``, ...): the newest one of that name."""
        lines = self.log_path.read_text().splitlines()
        started = [json.loads(line) for line in lines if '"worker_process_started"' in line]
        pid = [line["pid"] for line in started if line.get("process") == name][-1]
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)

    def kill(self) -> None:
        """SIGKILL its process group now: a crash, no graceful shutdown."""
        if self.process is not None and self.process.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, signal.SIGKILL)

    async def wait_exit(self) -> None:
        if self.process is not None:
            with anyio.fail_after(30):
                await self.process.wait()

    async def stop(self) -> None:
        self.kill()
        with anyio.CancelScope(shield=True):
            await self.wait_exit()


def _counting_session(counts: Counter[str]) -> aiohttp.ClientSession:
    """An aiohttp session counting requests that failed without an answer (refused, reset) and 503s."""

    async def on_exception(session: Any, context: Any, params: Any) -> None:
        counts["request_errors"] += 1

    async def on_end(session: Any, context: Any, params: aiohttp.TraceRequestEndParams) -> None:
        if params.response.status == 503:
            counts["http_503"] += 1

    trace = aiohttp.TraceConfig()
    trace.on_request_exception.append(on_exception)
    trace.on_request_end.append(on_end)
    return aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=4096), trace_configs=[trace])


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])
