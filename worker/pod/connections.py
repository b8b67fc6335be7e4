"""Connection limits uvicorn lacks: connections that send nothing, or send a request head too slowly.

uvicorn times out a kept-alive connection only after it has answered a request on it, and never
times a request head while it arrives. So a client that connects and stays silent, or sends a
head a byte at a time (slowloris), holds a connection, and its memory, for as long as it likes.
Here a connection that has sent nothing within ``idle_s`` of connecting is closed, as a
kept-alive one is after ``KEEP_ALIVE_S``; and a request head must be complete within ``head_s``
of its first byte (``HEADER_TIMEOUT_S``), or the connection is closed. Once a head is complete the
request belongs to the app, and once its response is sent, uvicorn's keep-alive takes over.
"""

from __future__ import annotations

import asyncio
import importlib.util
import logging
from typing import Any

import structlog

log = structlog.get_logger("worker.pod")
_levels = logging.getLogger("worker.pod")


def http_protocol(*, idle_s: float, head_s: float) -> type[asyncio.Protocol]:
    """uvicorn's HTTP protocol (httptools where installed, else h11) with both limits."""
    if importlib.util.find_spec("httptools") is not None:  # uvicorn's own choice: the faster parser
        from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol as Base
    else:  # pragma: no cover - depends on the install
        from uvicorn.protocols.http.h11_impl import H11Protocol as Base  # type: ignore[assignment]

    class LimitedConnection(Base):  # type: ignore[misc, valid-type]
        _timer: asyncio.TimerHandle | None = None
        _timing_head = False
        _cycle_when_armed: Any = None

        def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
            super().connection_made(transport)
            self._arm(idle_s, timing_head=False)

        def data_received(self, data: bytes) -> None:
            before = self.cycle
            if not self._timing_head and (before is None or before.response_complete):
                self._arm(head_s, timing_head=True)  # the first bytes of a new request head
            super().data_received(data)
            if self.cycle is not before:  # the head is complete: the request is the app's now
                self._disarm()

        def connection_lost(self, exc: Exception | None) -> None:
            self._disarm()
            super().connection_lost(exc)

        def _arm(self, seconds: float, *, timing_head: bool) -> None:
            self._disarm()
            self._timing_head, self._cycle_when_armed = timing_head, self.cycle
            self._timer = self.loop.call_later(seconds, self._expire)

        def _disarm(self) -> None:
            if self._timer is not None:
                self._timer.cancel()
            self._timer, self._timing_head = None, False

        def _expire(self) -> None:
            waiting = self.cycle is self._cycle_when_armed and (self.cycle is None or self.cycle.response_complete)
            reason = "request_head_too_slow" if self._timing_head else "idle_without_request"
            self._timer, self._timing_head = None, False
            if waiting and not self.transport.is_closing():
                if _levels.isEnabledFor(logging.DEBUG):
                    log.debug("connection_closed", reason=reason, client=self.client)
                self.transport.close()

    return LimitedConnection
