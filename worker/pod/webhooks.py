"""Webhooks: a job submitted with ``"webhook": URL`` has its ended status POSTed there, as RunPod does.

The body is the job as ``/status`` shows it once it has ended. A delivery that fails (no
connection, a timeout, an answer other than 2xx) is tried again ``WEBHOOK_RETRY_S`` later, up to
``WEBHOOK_ATTEMPTS`` tries in all (RunPod: 3 tries, 10 s apart); the job's status stays readable
either way.

The pod is a server that makes requests on a caller's say-so, so the targets are guarded against
server-side request forgery: only ``http`` and ``https``, and no loopback, private, link-local
or otherwise internal address unless ``WEBHOOK_ALLOW_PRIVATE`` is set. Literal addresses are
refused when the job is submitted; a host name is resolved when the webhook is sent, every
address it resolves to is checked, and the connection goes to those checked addresses only (a
name that resolves elsewhere a second time cannot slip through).
"""

from __future__ import annotations

import ipaddress
import socket
from typing import Any
from urllib.parse import urlsplit

import aiohttp
import anyio
import structlog
from aiohttp.abc import AbstractResolver, ResolveResult

from batching import InvalidInput

log = structlog.get_logger("worker.pod")

MAX_URL_CHARS = 2048


class RefusedTarget(Exception):
    """The webhook's host resolves to an address the pod may not call."""


def check_webhook(url: str, *, allow_private: bool) -> str:
    """The URL if the pod may POST to it; else ``InvalidInput`` naming ``webhook``."""
    if len(url) > MAX_URL_CHARS:
        raise InvalidInput(f"webhook: longer than {MAX_URL_CHARS} characters")
    try:
        parts = urlsplit(url)
        _ = parts.port  # a port out of range raises here
    except ValueError as err:
        raise InvalidInput(f"webhook: not a URL: {err}") from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise InvalidInput("webhook: expected an http:// or https:// URL with a host")
    if parts.username or parts.password:
        raise InvalidInput("webhook: credentials in the URL are not sent; put a token in its path or query")
    if not allow_private:
        host = parts.hostname
        if host == "localhost" or host.endswith(".localhost"):
            raise InvalidInput("webhook: a loopback host; set WEBHOOK_ALLOW_PRIVATE=true to allow internal targets")
        try:
            address = ipaddress.ip_address(host)
        except ValueError:
            return url  # a name: checked when it is resolved, at delivery
        if not _public(address):
            raise InvalidInput(
                f"webhook: {address} is not a public address; set WEBHOOK_ALLOW_PRIVATE=true to allow internal targets"
            )
    return url


def _public(address: ipaddress.IPv4Address | ipaddress.IPv6Address) -> bool:
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    return address.is_global and not address.is_multicast


class _PublicOnly(AbstractResolver):
    """Resolves as aiohttp would, then refuses any name that resolves to an internal address."""

    def __init__(self) -> None:
        self._resolver = aiohttp.ThreadedResolver()

    async def resolve(self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET) -> list[ResolveResult]:
        results = await self._resolver.resolve(host, port, family)
        for result in results:
            if not _public(ipaddress.ip_address(result["host"])):
                raise RefusedTarget(f"{host} resolves to {result['host']}, not a public address")
        return results

    async def close(self) -> None:
        await self._resolver.close()


class WebhookSender:
    """POSTs ended jobs to their webhooks with bounded retries; one HTTP session for all."""

    def __init__(self, *, attempts: int, retry_s: float, timeout_s: float, allow_private: bool) -> None:
        self.attempts, self.retry_s, self.timeout_s = attempts, retry_s, timeout_s
        self.allow_private = allow_private
        self._session: aiohttp.ClientSession | None = None

    async def deliver(self, url: str, body: bytes, *, job_id: str) -> bool:
        """Try until a 2xx answer or ``attempts`` tries; whether it was delivered."""
        error: Any = None
        for attempt in range(1, self.attempts + 1):
            try:
                async with self._open().post(
                    url, data=body, headers={"Content-Type": "application/json"}, allow_redirects=False
                ) as answer:
                    if 200 <= answer.status < 300:
                        log.info("webhook_delivered", job_id=job_id, attempt=attempt, status=answer.status)
                        return True
                    error = f"HTTP {answer.status}"
            except RefusedTarget as err:
                log.warning("webhook_refused", job_id=job_id, error=str(err))
                return False
            except (aiohttp.ClientError, TimeoutError, OSError) as err:
                error = f"{type(err).__name__}: {err}"
            if attempt < self.attempts:
                await anyio.sleep(self.retry_s)
        log.warning("webhook_failed", job_id=job_id, attempts=self.attempts, error=error)
        return False

    def _open(self) -> aiohttp.ClientSession:
        if self._session is None:
            connector = aiohttp.TCPConnector(resolver=None if self.allow_private else _PublicOnly(), limit=256)
            timeout = aiohttp.ClientTimeout(total=self.timeout_s)
            self._session = aiohttp.ClientSession(connector=connector, timeout=timeout)
        return self._session

    async def aclose(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None
