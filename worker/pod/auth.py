"""Who may call the pod: a bearer API key on every route but the open ones, and where it may bind.

A pod without ``API_KEY`` serves only on loopback unless told ``--insecure``.
"""

from __future__ import annotations

import hmac
import ipaddress

from starlette.types import ASGIApp, Receive, Scope, Send

from worker.pod.http import ApiKeyRefused, error_response
from worker.settings import Settings

OPEN_PATHS = frozenset({"/ping", "/metrics", "/openapi.json"})
"""Routes that need no API key: load-balancer health checks, Prometheus scrapes, the contract."""


class BearerAuth:
    """Every route but ``OPEN_PATHS`` needs ``Authorization: Bearer <API_KEY>`` (constant time)."""

    def __init__(self, app: ASGIApp, api_key: str) -> None:
        self.app = app
        self._expected = b"bearer " + api_key.encode()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] in OPEN_PATHS or self._authorized(scope):
            await self.app(scope, receive, send)
            return
        response = error_response(ApiKeyRefused("send 'Authorization: Bearer <API_KEY>'"))
        await response(scope, receive, send)

    def _authorized(self, scope: Scope) -> bool:
        given = next((value for name, value in scope["headers"] if name == b"authorization"), b"")
        scheme, _, key = given.partition(b" ")
        return hmac.compare_digest(scheme.lower() + b" " + key.strip(), self._expected)


def bind_refusal(host: str, settings: Settings, *, insecure: bool) -> str | None:
    """Why serving on ``host`` is refused (beyond loopback with no API key), or None."""
    if settings.api_key or insecure or _is_loopback(host):
        return None
    return (
        f"refusing to serve on {host} without an API key: beyond loopback anyone who can reach "
        "the port could submit jobs. Set API_KEY (clients then send 'Authorization: Bearer "
        "<key>'), or pass --insecure to serve without authentication."
    )


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False
