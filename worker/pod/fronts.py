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

import shutil
import signal
import socket
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

import msgspec
import structlog

from schemas.trace import TraceRecorder
from worker.pod.app import PodApp
from worker.pod.peers import Peers, front_socket
from worker.pod.serving import listen, run_pod, url_of
from worker.settings import Settings
from worker.split.children import MODEL_SOCKET, STOP_MODEL_S, Child, model_child
from worker.split.remote_host import RemoteHost

log = structlog.get_logger("worker.pod.fronts")


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
    model = model_child(run_dir / MODEL_SOCKET, model_command)
    fds = tuple(sock.fileno() for sock in sockets)
    children = [model] + [
        Child(f"front-{front}", [
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


def _stop(fronts: list[Child], model: Child, received: list[int]) -> None:
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
    model.stop(STOP_MODEL_S)


def store_share(settings: Settings, fronts: int) -> Settings:
    """One front's settings: its job store keeps ``1/fronts`` of the ended jobs and of their bytes
    that ``MAX_FINISHED_JOBS`` and ``MAX_FINISHED_BYTES`` allow, so the pod as a whole keeps what
    they say, however many fronts share it (each front keeps the jobs it took)."""
    return msgspec.structs.replace(
        settings,
        max_finished_jobs=max(1, settings.max_finished_jobs // fronts),
        max_finished_bytes=max(1, settings.max_finished_bytes // fronts),
    )


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
    settings = store_share(settings, fronts)
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
