"""Running the pod: uvicorn in this event loop (tests, in-process load tests) or as the command.

The command's first SIGTERM or SIGINT drains the pod before uvicorn shuts down.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import socket
import sys
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from typing import Any

import anyio
import structlog
import uvicorn
from starlette.types import ASGIApp, Receive, Scope, Send

from schemas.trace import TraceRecorder
from worker.model import NliModel
from worker.pod.app import PodApp
from worker.pod.auth import bind_refusal
from worker.pod.connections import http_protocol
from worker.pod.http import NoSuchResource, error_response
from worker.settings import Settings

log = structlog.get_logger("worker.pod")

GRACEFUL_SHUTDOWN_S = 30.0
"""Once the drain is over, uvicorn lets open requests finish for this long."""
DEFAULT_PORT = 8000


def _http(settings: Settings) -> type:
    return http_protocol(idle_s=settings.keep_alive_s, head_s=settings.header_timeout_s)


def _listen(host: str, port: int) -> socket.socket:
    """A listening TCP socket (IPv6 for a bracketed or colon address), as uvicorn binds one."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host.strip("[]"), port))
        sock.listen(2048)
        sock.set_inheritable(True)
    except OSError:
        sock.close()
        raise
    return sock


def url_of(sock: socket.socket) -> str:
    host, port = sock.getsockname()[:2]
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


class PingOnlyOn:
    """On ``port``, only ``/ping`` (under RunPod's prefix too) is served: a health port."""

    def __init__(self, app: ASGIApp, port: int) -> None:
        self.app, self.port = app, port

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        server = scope.get("server") or (None, None)
        if scope["type"] == "http" and server[1] == self.port and not scope["path"].endswith("/ping"):
            await error_response(NoSuchResource(f"port {self.port} serves /ping only"))(scope, receive, send)
            return
        await self.app(scope, receive, send)


@asynccontextmanager
async def running_server(
    settings: Settings, *, model: NliModel | None = None, host: str = "127.0.0.1", port: int = 0
) -> AsyncIterator[str]:
    """``async with running_server(settings) as base_url:`` uvicorn in this event loop (IPv4).

    For tests and in-process load tests: the socket is bound first (``port=0`` picks a free one)
    and listens before uvicorn starts, so clients may connect at once; the block starts once
    the engine serves jobs. Leaving it stops the server, then the engine.
    """
    # IPPROTO_TCP, not 0: asyncio sets TCP_NODELAY only on sockets that name it, and without it
    # small responses wait on Nagle's algorithm (delayed ACKs) under load.
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP) as sock:
        sock.bind((host, port))
        sock.listen(2048)  # the backlog holds early connections until uvicorn accepts them
        bound_host, bound_port = sock.getsockname()
        async with PodApp(settings, model=model) as pod:
            await pod.wait_ready()
            config = uvicorn.Config(
                pod.app, log_config=None, access_log=False, lifespan="off", ws="none", http=_http(settings),
                timeout_keep_alive=settings.keep_alive_s, timeout_graceful_shutdown=GRACEFUL_SHUTDOWN_S,
            )  # fmt: skip
            server = uvicorn.Server(config)
            async with anyio.create_task_group() as tg:
                tg.start_soon(server.serve, [sock])
                try:
                    yield f"http://{bound_host}:{bound_port}"
                finally:
                    server.should_exit = True


def serve(
    settings: Settings, *, host: str, port: int | None = None, insecure: bool = False, record: str | None = None
) -> int:
    """Run the pod server until SIGINT/SIGTERM; the exit status (2: refused to start).

    ``port`` (else ``PORT``, else 8000) serves everything; ``PORT_HEALTH``, when it is another
    port, serves ``/ping`` alone, as RunPod's load-balancing endpoints probe it.

    The HTTP server answers before the model has loaded (``/ping`` 204, jobs 503). The first
    SIGTERM or SIGINT drains the pod (``PodApp.drain``: ``/ping`` and new jobs 503, jobs in
    flight finish within ``DRAIN_TIMEOUT_S``); then uvicorn lets open requests finish
    (``GRACEFUL_SHUTDOWN_S``), the engine stops and jobs still in flight end FAILED
    ``unavailable``. Logging is ours (configured by the caller); the
    access log is on only at LOG_LEVEL=DEBUG.
    """
    bound = listen(settings, host=host, port=port, insecure=insecure)
    if bound is None:
        return 2
    sockets, health_port = bound
    try:
        recorder = TraceRecorder(record) if record else None
    except (OSError, ValueError) as err:
        print(f"error: --record {record}: {err}", file=sys.stderr)
        for sock in sockets:
            sock.close()
        return 2
    urls = [url_of(sock) for sock in sockets]  # the ports bound (port 0: the one the system chose)
    log.info("pod_listening", url=urls[0], health_url=urls[1] if health_port else None,
             auth=settings.api_key is not None, record=record)  # fmt: skip
    try:
        return run_pod(settings, PodApp(settings, recorder=recorder), sockets, health_port)
    finally:
        for sock in sockets:
            sock.close()
        if recorder is not None:
            recorder.close()


def listen(
    settings: Settings, *, host: str, port: int | None, insecure: bool
) -> tuple[list[socket.socket], int | None] | None:
    """The pod's listening sockets (its port, then ``PORT_HEALTH``'s when that is another) and
    the health port; None, having said why on stderr, when it must not or cannot listen."""
    refusal = bind_refusal(host, settings, insecure=insecure)
    if refusal is not None:
        print(f"error: {refusal}", file=sys.stderr)
        return None
    port = next(p for p in (port, settings.port, DEFAULT_PORT) if p is not None)
    health_port = settings.port_health if settings.port_health not in (None, port) else None
    sockets: list[socket.socket] = []
    try:
        for each in (port, health_port):
            if each is not None:
                sockets.append(_listen(host, each))
    except OSError as err:
        print(f"error: cannot listen on {host}, port {each}: {err}", file=sys.stderr)
        for sock in sockets:
            sock.close()
        return None
    if health_port == 0:  # the system chose it: serve /ping alone on the port it chose
        health_port = sockets[1].getsockname()[1]
    return sockets, health_port


def run_pod(settings: Settings, pod: PodApp, sockets: list[socket.socket], health_port: int | None) -> int:
    """Serve ``pod`` on ``sockets`` (``health_port``'s serving ``/ping`` alone) with uvicorn until
    SIGINT/SIGTERM, draining first; 0 once it has served and stopped, 1 if it never started."""
    logging.getLogger("uvicorn").setLevel(logging.NOTSET)  # importing runpod held it at WARNING
    app = PingOnlyOn(pod.app, health_port) if health_port else pod.app
    host, port = sockets[0].getsockname()[:2]
    config = uvicorn.Config(
        app,
        host=host,
        port=port,  # bound already (sockets); uvicorn names them in its "running on" line
        http=_http(settings),
        log_config=None,
        access_log=settings.log_level.upper() == "DEBUG",
        lifespan="on",
        ws="none",
        timeout_keep_alive=settings.keep_alive_s,
        timeout_graceful_shutdown=GRACEFUL_SHUTDOWN_S,
    )
    server = _DrainingServer(config, pod)
    with _signals_end_quietly():
        server.run(sockets=sockets)
    return 0 if server.started else 1


class _DrainingServer(uvicorn.Server):
    """uvicorn whose first SIGTERM or SIGINT drains the pod (``PodApp.drain``) before it shuts
    down; a second one shuts down at once, a third forces it."""

    def __init__(self, config: uvicorn.Config, pod: PodApp) -> None:
        super().__init__(config)
        self.pod = pod
        self.draining = False
        self._drain_task: asyncio.Task[None] | None = None

    def handle_exit(self, sig: int, frame: Any) -> None:
        if self.draining or not self.pod.entered or self.should_exit:
            super().handle_exit(sig, frame)
            return
        self.draining = True
        loop = asyncio.get_running_loop()  # signal handlers run on the loop's thread
        self._drain_task = loop.create_task(self._drain_then_exit(sig, frame))

    async def _drain_then_exit(self, sig: int, frame: Any) -> None:
        try:
            await self.pod.drain(self.pod.settings.drain_timeout_s)
        finally:
            super().handle_exit(sig, frame)


@contextmanager
def _signals_end_quietly() -> Iterator[None]:
    """Exit 0 after a graceful shutdown on SIGINT/SIGTERM.

    uvicorn shuts down on the signal, then raises it again for the handler it found installed:
    Python's default would print a KeyboardInterrupt traceback (SIGINT) or kill the process
    (SIGTERM) after the work is done, so that handler is a no-op while it serves.
    """
    quiet = {sig: signal.signal(sig, lambda *_: None) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for sig, handler in quiet.items():
            signal.signal(sig, handler)
