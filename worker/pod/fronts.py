"""A pod of several processes: ``python -m worker pod --front-processes N`` (docs/PROCESSES.md).

The supervisor (``serve_fronts``) binds the pod's port, starts the model process (the one engine:
the shared queue, the batches, the GPU) on a Unix socket in a private run directory, and N front
processes (``serve_front``) that share the port: each one takes HTTP, decodes, tokenizes and
aggregates its own jobs, with a ``RemoteEngine`` to the model process, and relays requests for
other fronts' jobs to them (``worker/pod/peers.py``). A child that dies is started again (a
front's jobs go with it; a model process's jobs fail ``unavailable`` and the fronts connect to
the new one). The first SIGTERM or SIGINT drains every front at once, as one pod drains, then
stops the model process; a second one makes the fronts stop at once, a third kills them.
"""

from __future__ import annotations

import ctypes
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import structlog

from schemas.trace import TraceRecorder
from worker.pod.app import PodApp
from worker.pod.peers import Peers, front_socket
from worker.pod.serving import listen, run_pod, url_of
from worker.settings import Settings
from worker.split.remote_host import RemoteHost

log = structlog.get_logger("worker.pod.fronts")

MODEL_SOCKET = "model.sock"
"""The model process's socket, in the pod's run directory."""
RESTART_S = (1.0, 30.0)
"""A child that died is started again after the first delay, doubled each time it dies again
soon after, up to the second."""
STOP_MODEL_S = 30.0
"""Once the fronts have stopped, how long the model process has to stop before it is killed."""
_STEADY_S = 60.0
"""A child that lived this long starts the next time without waiting."""


@dataclass
class _Child:
    """One process of the pod, started again whenever it dies (until the pod stops)."""

    name: str
    argv: list[str]
    pass_fds: tuple[int, ...] = ()
    env: dict[str, str] | None = None
    process: subprocess.Popen[bytes] | None = None
    started_at: float = 0.0
    delay_s: float = RESTART_S[0]
    start_after: float = 0.0

    def start(self) -> None:
        self.process = subprocess.Popen(  # noqa: S603 - our own interpreter and arguments
            self.argv, pass_fds=self.pass_fds, env=self.env, process_group=0, preexec_fn=_die_with_parent
        )
        self.started_at = time.monotonic()
        log.info("pod_process_started", process=self.name, pid=self.process.pid)

    def check(self, now: float) -> None:
        """Start it again if it died and its delay is over."""
        if self.process is None:
            if now >= self.start_after:
                self.start()
            return
        code = self.process.poll()
        if code is None:
            return
        wait_s = RESTART_S[0] if now - self.started_at >= _STEADY_S else self.delay_s
        self.delay_s = min(wait_s * 2, RESTART_S[1])
        self.process, self.start_after = None, now + wait_s
        log.error("pod_process_died", process=self.name, exit_code=code, restart_in_s=wait_s)

    def signal(self, signum: int) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signum)

    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None


def serve_fronts(
    settings: Settings,
    *,
    host: str,
    port: int | None = None,
    fronts: int,
    insecure: bool = False,
    record: str | None = None,
    model_command: Sequence[str] | None = None,
) -> int:
    """Run a pod of ``fronts`` front processes and one model process until SIGINT/SIGTERM; the
    exit status (2: refused to start). ``model_command`` replaces ``python -m worker
    model-process`` (a benchmark's emulated model); ``--socket PATH`` is added to it."""
    bound = listen(settings, host=host, port=port, insecure=insecure)
    if bound is None:
        return 2
    sockets, health_port = bound
    if record:
        try:
            TraceRecorder(record).close()  # checked, and its header written, before any front appends
        except (OSError, ValueError) as err:
            print(f"error: --record {record}: {err}", file=sys.stderr)
            for sock in sockets:
                sock.close()
            return 2
    run_dir = Path(tempfile.mkdtemp(prefix="burst-nli-pod-"))  # mode 0700: this user's processes only
    model_env = {name: value for name, value in os.environ.items() if name != "METRICS_PORT"}  # the pod serves it
    model = _Child(
        "model", [*(model_command or [sys.executable, "-m", "worker", "model-process"]),
                  "--socket", str(run_dir / MODEL_SOCKET)], env=model_env,
    )  # fmt: skip
    fds = tuple(sock.fileno() for sock in sockets)
    children = [model] + [
        _Child(f"front-{front}", [
            sys.executable, "-m", "worker", "pod-front", "--front", str(front), "--fronts", str(fronts),
            "--run-dir", str(run_dir), "--fds", ",".join(map(str, fds)),
            *(["--health-port", str(health_port)] if health_port else []), *(["--record", record] if record else []),
        ], pass_fds=fds)  # fmt: skip
        for front in range(fronts)
    ]
    urls = [url_of(sock) for sock in sockets]
    log.info("pod_listening", url=urls[0], health_url=urls[1] if health_port else None, front_processes=fronts,
             auth=settings.api_key is not None, record=record, run_dir=str(run_dir))  # fmt: skip
    received: list[int] = []
    handlers = {
        sig: signal.signal(sig, lambda signum, _: received.append(signum)) for sig in (signal.SIGINT, signal.SIGTERM)
    }
    try:
        while not received:
            now = time.monotonic()
            for child in children:
                child.check(now)
            time.sleep(0.1)
        _stop(children[1:], model, received)
    finally:
        for sig, handler in handlers.items():
            signal.signal(sig, handler)
        for child in children:
            child.signal(signal.SIGKILL)
        for sock in sockets:
            sock.close()
        shutil.rmtree(run_dir, ignore_errors=True)
    log.info("pod_stopped", front_processes=fronts)
    return 0


def _stop(fronts: list[_Child], model: _Child, received: list[int]) -> None:
    """Drain and stop the fronts (each further signal passed on to them), then the model process."""
    seen = 0
    while any(front.running() for front in fronts):
        while seen < len(received):
            signum = signal.SIGKILL if seen >= 2 else received[seen]
            log.info("pod_stopping", signal=signal.Signals(received[seen]).name, nth=seen + 1)
            for front in fronts:
                front.signal(signum)
            seen += 1
        time.sleep(0.05)
    model.signal(signal.SIGTERM)
    if model.process is not None:
        try:
            model.process.wait(STOP_MODEL_S)
        except subprocess.TimeoutExpired:
            model.signal(signal.SIGKILL)


def serve_front(
    settings: Settings, *, front: int, fronts: int, run_dir: str, fds: Sequence[int], health_port: int | None,
    record: str | None,
) -> int:  # fmt: skip
    """One front process of a pod (``pod-front``, started by ``serve_fronts``): HTTP on the
    pod's inherited sockets and on its own Unix socket, where the other fronts relay to it."""
    sockets = [socket.socket(fileno=fd) for fd in fds]
    own = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    path = front_socket(run_dir, front)
    path.unlink(missing_ok=True)  # left by this front's previous life
    own.bind(str(path))
    own.listen(2048)
    recorder = TraceRecorder(record) if record else None
    pod = PodApp(
        settings, recorder=recorder, remote=RemoteHost(settings, Path(run_dir) / MODEL_SOCKET),
        peers=Peers(front, fronts, run_dir),
    )  # fmt: skip
    try:
        return run_pod(settings, pod, [*sockets, own], health_port)
    finally:
        own.close()
        path.unlink(missing_ok=True)
        if recorder is not None:
            recorder.close()


def _die_with_parent() -> None:
    """In the child before it runs: SIGTERM it if the supervisor dies (Linux's PR_SET_PDEATHSIG),
    so no front or model process outlives its pod."""
    ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)
