"""The servers the HTTP rows drive, each in its own process as it would be deployed.

- ``pod_server``: ``python -m worker pod``, burst-nli's pod exactly as shipped (uvicorn's own
  socket, event loop and HTTP parser), in one process or as front processes beside a model
  process, ready once ``/ping`` answers 200.
- ``trivial_server``: ``trivial_app`` on uvicorn with the same defaults, answering every job at
  once with a fixed ``COMPLETED`` body: what the client and the HTTP stack can do with no work
  behind them, the ceiling the other HTTP rows are read against.
- ``litserve_server``: ``bench/litserve_peer.py`` (LitServe starts its own worker processes),
  ready once ``/health`` answers 200.

Why not uvicorn inside the benchmark's process (``worker.pod.running_server``): a server shares
no event loop or CPU time with what measures it, as deployed, and its own process's CPU
(``process_cpu_seconds_total``) is then the server's alone. Each process's output goes to
``<name>.log``.
"""

from __future__ import annotations

import importlib.util
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Mapping
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from pathlib import Path
from typing import Any

import aiohttp
import anyio

ROOT = Path(__file__).resolve().parents[1]
TRIVIAL_BODY = b'{"id":"trivial","status":"COMPLETED","delayTime":0,"executionTime":0,"output":{}}'
STOP_WITHIN_S = 15.0


async def trivial_app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    """Read the request body, answer the fixed body: nothing else."""
    if scope["type"] != "http":
        return
    more = True
    while more:
        message = await receive()
        more = message.get("more_body", False)
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(TRIVIAL_BODY)).encode())]
    await send({"type": "http.response.start", "status": 200, "headers": headers})
    await send({"type": "http.response.body", "body": TRIVIAL_BODY})


def trivial_server(*, log_dir: Path) -> AbstractAsyncContextManager[str]:
    port = free_port()
    command = [sys.executable, "-m", "uvicorn", "bench.servers:trivial_app", "--host", "127.0.0.1",
               "--port", str(port), "--log-level", "warning", "--no-access-log"]
    return serving_process("trivial", command, f"http://127.0.0.1:{port}", "/ping", log_dir=log_dir)


def pod_server(model: str, *, device: str, dtype: str, log_dir: Path,
               front_processes: int = 0) -> AbstractAsyncContextManager[str]:
    """The pod on a free loopback port; the batch settings come from this environment, as the
    in-process engine's do, so both rows run the same policy. With ``front_processes``, the pod
    of that many front processes and one model process (docs/PROCESSES.md)."""
    port = free_port()
    env = {"MODEL_NAME": model, "DEVICE": device, "DTYPE": dtype, "LOG_LEVEL": "WARNING"}
    command = [sys.executable, "-m", "worker", "pod", "--host", "127.0.0.1", "--port", str(port)]
    name = "pod"
    if front_processes:
        command += ["--front-processes", str(front_processes)]
        name = f"pod-{front_processes}-fronts"
    return serving_process(name, command, f"http://127.0.0.1:{port}", "/ping", log_dir=log_dir, env=env)


def litserve_installed() -> bool:
    return importlib.util.find_spec("litserve") is not None


def litserve_server(model: str, *, device: str, dtype: str, max_batch_size: int, batch_timeout_s: float,
                    log_dir: Path) -> AbstractAsyncContextManager[str]:
    port = free_port()
    command = [
        sys.executable, "-m", "bench.litserve_peer", "--model", model, "--device", device, "--dtype", dtype,
        "--port", str(port), "--max-batch-size", str(max_batch_size), "--batch-timeout", str(batch_timeout_s),
    ]  # fmt: skip
    return serving_process("litserve", command, f"http://127.0.0.1:{port}", "/health", log_dir=log_dir)


@asynccontextmanager
async def serving_process(name: str, command: list[str], base_url: str, ready_path: str, *, log_dir: Path,
                          env: Mapping[str, str] | None = None, start_timeout_s: float = 600.0,
                          cwd: Path = ROOT) -> AsyncIterator[str]:
    """``async with serving_process(...) as base_url:`` run ``command`` from ``cwd`` (the
    repository root) until ``ready_path`` answers 200; stop it (and every process it started) on
    the way out."""
    log_dir.mkdir(parents=True, exist_ok=True)
    log_path = log_dir / f"{name}.log"
    with log_path.open("wb") as log:
        process = subprocess.Popen(command, cwd=cwd, env={**os.environ, **(env or {})}, stdout=log,
                                   stderr=subprocess.STDOUT, start_new_session=True)
        try:
            await _wait_ready(f"{base_url}{ready_path}", process, start_timeout_s, log_path)
            yield base_url
        finally:
            _stop(process)


async def _wait_ready(url: str, process: subprocess.Popen, timeout_s: float, log_path: Path) -> None:
    """Poll until 200; fail naming the log if the process dies or time runs out."""
    deadline = time.monotonic() + timeout_s
    async with aiohttp.ClientSession() as session:
        while time.monotonic() < deadline:
            if process.poll() is not None:
                raise RuntimeError(f"{process.args[:4]} exited with {process.returncode}; see {log_path}")
            try:
                async with session.get(url) as response:
                    if response.status == 200:
                        return
            except aiohttp.ClientError:
                pass
            await anyio.sleep(0.2)
    raise TimeoutError(f"{url} did not answer 200 within {timeout_s:.0f} s; see {log_path}")


def _stop(process: subprocess.Popen) -> None:
    """SIGTERM (a graceful stop), then SIGKILL whatever is left of the process's own session."""
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout=STOP_WITHIN_S)
        except subprocess.TimeoutExpired:
            pass
    try:
        os.killpg(process.pid, signal.SIGKILL)  # its own session: the server and its workers only
    except ProcessLookupError:
        pass
    process.wait()


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])
