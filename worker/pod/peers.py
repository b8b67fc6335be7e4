"""A front process's view of the pod's other fronts (``python -m worker pod --front-processes N``).

The fronts share the pod's port, and the kernel hands each connection to any of them, so the
``/status`` that follows a ``/run`` usually lands on another front than the one holding the job.
A job's id names its front (``<front>-<uuid>``); a front that takes a request for another front's
job relays it, as it came (method, path, body, the caller's credentials), to that front's own
Unix socket in the pod's run directory and answers with what it said. ``/health``,
``/purge-queue`` and ``/metrics`` ask every front for its own part (``RELAYED``) and add them up.
A front that does not answer (it stopped, or is restarting) holds no job any more: a relayed
request for its job is 404, and the sums leave it out.
"""

from __future__ import annotations

import uuid
from pathlib import Path

import aiohttp
import anyio
import structlog
from starlette.requests import Request
from starlette.responses import Response

log = structlog.get_logger("worker.pod.peers")

RELAYED = "x-burst-nli-relayed"
"""The header of a request one front sends another: answer for yourself, relay nothing. Heeded
only on a front's own Unix socket, so a caller outside cannot ask for one front's part."""
RELAY_TIMEOUT_S = 10.0
"""How long a front waits for another's answer before it counts that front as gone."""
_FORWARDED = ("authorization", "accept", "content-type")


def front_socket(run_dir: str | Path, front: int) -> Path:
    """Where front ``front`` of the pod listens for the others."""
    return Path(run_dir) / f"front-{front}.sock"


def is_relayed(request: Request) -> bool:
    """Whether another front sent this request, over this front's Unix socket (which has no
    port: uvicorn names its server ``(path, None)``)."""
    server = request.scope.get("server")
    return (server is None or server[1] is None) and RELAYED in request.headers


class Peers:
    """Front ``front`` of ``fronts``, whose sockets are in ``run_dir``."""

    def __init__(self, front: int, fronts: int, run_dir: str | Path) -> None:
        self.front = front
        self.fronts = fronts
        self.run_dir = Path(run_dir)
        self._sessions: dict[int, aiohttp.ClientSession] = {}

    @property
    def others(self) -> list[int]:
        return [front for front in range(self.fronts) if front != self.front]

    def new_job_id(self) -> str:
        return f"{self.front}-{uuid.uuid4()}"

    def owner(self, job_id: str) -> int | None:
        """The other front that holds ``job_id``, by its prefix; None for this front's ids and
        for any id that names no front of this pod."""
        prefix, dash, _ = job_id.partition("-")
        if not dash or not (prefix.isascii() and prefix.isdigit()) or len(prefix) > 4:  # "²".isdigit() too
            return None
        front = int(prefix)
        return front if front < self.fronts and front != self.front else None

    async def relay(self, request: Request, front: int) -> Response | None:
        """``request`` as ``front`` answers it; None when that front does not answer."""
        query = f"?{request.url.query}" if request.url.query else ""
        answer = await self._ask(front, request.method, request.url.path + query, _forwarded(request),
                                 await request.body())  # fmt: skip
        if answer is None:
            return None
        status, headers, body = answer
        return Response(body, status_code=status, headers=headers)

    async def ask_others(
        self, request: Request, method: str, path: str, *, accept: str | None = None
    ) -> dict[int, bytes]:
        """Every other front's own answer to ``method path`` (its part of the pod), asked with
        ``request``'s credentials; by front, leaving out fronts that do not answer."""
        answers: dict[int, bytes] = {}
        headers = _forwarded(request)
        if accept is not None:
            headers["accept"] = accept

        async def ask(front: int) -> None:
            answer = await self._ask(front, method, path, headers, b"")
            if answer is not None and answer[0] == 200:
                answers[front] = answer[2]

        async with anyio.create_task_group() as tasks:
            for front in self.others:
                tasks.start_soon(ask, front)
        return answers

    async def aclose(self) -> None:
        sessions, self._sessions = self._sessions, {}
        for session in sessions.values():
            await session.close()

    async def _ask(
        self, front: int, method: str, path: str, headers: dict[str, str], body: bytes
    ) -> tuple[int, dict[str, str], bytes] | None:
        headers = {**headers, RELAYED: "1"}
        try:
            async with self._session(front).request(method, f"http://front-{front}{path}", headers=headers,
                                                    data=body) as response:  # fmt: skip
                content = await response.read()
                kept = {name: response.headers[name] for name in ("content-type", "retry-after", "allow")
                        if name in response.headers}  # fmt: skip
                return response.status, kept, content
        except (aiohttp.ClientError, OSError, TimeoutError) as err:
            log.info("front_not_answering", front=front, error=f"{type(err).__name__}: {err}")
            return None

    def _session(self, front: int) -> aiohttp.ClientSession:
        session = self._sessions.get(front)
        if session is None:
            connector = aiohttp.UnixConnector(path=str(front_socket(self.run_dir, front)))
            session = self._sessions[front] = aiohttp.ClientSession(
                connector=connector, timeout=aiohttp.ClientTimeout(total=RELAY_TIMEOUT_S)
            )
        return session


def _forwarded(request: Request) -> dict[str, str]:
    return {name: request.headers[name] for name in _FORWARDED if name in request.headers}
