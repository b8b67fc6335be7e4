"""An async client for the RunPod job API: a RunPod serverless endpoint or a burst-nli pod.

Both speak the same routes (``/run``, ``/runsync``, ``/status/{id}``, ``/cancel/{id}``,
``/health``), so one class serves both; only the base URL differs::

    async with Client.for_endpoint("abc123") as client:          # key from RUNPOD_API_KEY
        job = await client.run({"operation": "classify", "headline": "Apple Declares $0.25 Dividend"})
        result = await job.wait(timeout_s=60)                     # raises JobFailed(.error) etc.
        print(result.output)

Why not the runpod SDK's ``Endpoint``: it is synchronous (requests), its ``run_sync`` returns
``None`` for a failed job and drops the error message, and it retries POSTs blindly. Here:

* **Retries** (bounded by ``RetryPolicy.max_attempts``) on 429, 502, 503, 504 and connection
  errors, with exponential backoff and jitter, never shorter than the server's ``Retry-After``.
* **No silent double submission.** ``/run`` and ``/runsync`` create a job, so they are retried
  only when the job certainly was not created: the connection was refused before the request
  was sent, or the server answered 429 or 503 (it refused the job). A request that may have
  reached the server (a timeout, a dropped connection, a gateway's 502 or 504) raises
  ``SubmissionUncertain`` instead: resubmitting is the caller's decision (these jobs are pure
  reads, so a duplicate costs only compute). Status, health and cancel are idempotent and are
  retried on every retryable failure.
* **Typed errors** that keep the server's words: ``JobFailed.error`` is the job's error string
  (``"invalid_input: headline: must not be blank"``) and ``.code`` its stable code;
  ``HttpError`` has the status and the body; ``Unauthorized`` for 401/403.
* **Explicit timeouts**: per request (connect and total) and a total for ``wait``/``runsync``.

``/runsync?wait=`` is in milliseconds: 1000 to 300000 on RunPod, 0 to 300000 on the pod (default
90000 on both); ``runsync(wait_s=...)`` converts and clamps to the range both accept. A
``/runsync`` that runs out of wait returns the job still IN_QUEUE/IN_PROGRESS: ``runsync`` then
polls ``/status`` until its total timeout.
"""

from __future__ import annotations

import asyncio
import email.utils
import os
import random
import re
import time
from collections.abc import Awaitable, Callable, Mapping
from types import TracebackType
from typing import Any, Self

import aiohttp
import msgspec

from schemas.runpod import CANCELLED, COMPLETED, FAILED, TIMED_OUT, JobView

RUNPOD_API_URL = "https://api.runpod.ai/v2"
RUNSYNC_WAIT_MS = (1000, 300_000)
"""RunPod's bounds for ``/runsync?wait=`` (milliseconds)."""

RETRY_STATUSES = frozenset({429, 502, 503, 504})
REFUSED_STATUSES = frozenset({429, 503})
"""Answers that mean the server did not take the job: safe to resubmit."""
_CODE = re.compile(r"([a-z][a-z_]*): ")


# --- what comes back ----------------------------------------------------------------------------


_decode_view = msgspec.json.Decoder(JobView).decode
_decode_any = msgspec.json.Decoder().decode
_encode = msgspec.json.Encoder().encode


# --- errors -------------------------------------------------------------------------------------


def error_code(message: str | None) -> str | None:
    """The stable code at the head of a burst-nli error (``"overloaded: ..."`` → ``"overloaded"``)."""
    match = _CODE.match(message or "")
    return match.group(1) if match else None


class ClientError(Exception):
    """Base of everything this client raises."""


class HttpError(ClientError):
    """The server answered with an error status (after any retries)."""

    def __init__(self, method: str, url: str, status: int, body: str, *, retry_after_s: float | None = None) -> None:
        self.method, self.url, self.status, self.body = method, url, status, body
        self.retry_after_s = retry_after_s
        self.error = _error_field(body)
        """The body's ``"error"`` string, when it is JSON with one (burst-nli's pod always is)."""
        super().__init__(f"{method} {url}: HTTP {status}: {self.error or body[:500]}")

    @property
    def code(self) -> str | None:
        return error_code(self.error)


class Unauthorized(HttpError):
    """401 or 403: a missing or wrong API key (RUNPOD_API_KEY, or the pod's API_KEY)."""


class NotFound(HttpError):
    """404: no such job (never accepted, or its result has expired), or no such route."""


class ConnectionFailed(ClientError):
    """The server could not be reached (or kept timing out) on every attempt."""


class SubmissionUncertain(ClientError):
    """``/run`` or ``/runsync`` may or may not have created a job; it was not resubmitted.

    The request may have reached the server before the connection dropped, timed out or a
    gateway answered 5xx. Resubmit only if a duplicate job is acceptable.
    """


class WaitTimeout(ClientError, TimeoutError):
    """``wait`` or ``runsync`` ran out of time; the job itself may still finish (or be cancelled)."""

    def __init__(self, job_id: str, timeout_s: float, last: JobView | None) -> None:
        self.job_id, self.timeout_s, self.last = job_id, timeout_s, last
        seen = f", last seen {last.status}" if last is not None else ""
        super().__init__(f"job {job_id} did not finish within {timeout_s:g} s{seen}")


class JobError(ClientError):
    """A job ended without an output; ``status`` is its final ``JobView``."""

    def __init__(self, status: JobView, message: str) -> None:
        self.job_id, self.status = status.id, status
        super().__init__(message)


class JobFailed(JobError):
    """The job ended FAILED; ``error`` is its error message, exactly as the server gave it."""

    def __init__(self, status: JobView) -> None:
        error = status.error
        self.error: str = error if isinstance(error, str) else _encode(error).decode()
        super().__init__(status, f"job {status.id} failed: {self.error}")

    @property
    def code(self) -> str | None:
        """``invalid_input``, ``overloaded``, ``timed_out``, ``unavailable``, ... (None if not ours)."""
        return error_code(self.error)

    @property
    def retryable(self) -> bool:
        """True for ``overloaded``: the job was refused before any work; submit it again later."""
        return self.code == "overloaded"


class JobTimedOut(JobError):
    """The job ended TIMED_OUT: it passed the endpoint's (or its policy's) execution timeout."""

    def __init__(self, status: JobView) -> None:
        super().__init__(status, f"job {status.id} timed out on the server")


class JobCancelled(JobError):
    """The job ended CANCELLED."""

    def __init__(self, status: JobView) -> None:
        super().__init__(status, f"job {status.id} was cancelled")


def raise_for_job(status: JobView) -> JobView:
    """Return a COMPLETED status; raise the matching JobError for any other final one."""
    if status.status == COMPLETED:
        return status
    if status.status == FAILED:
        raise JobFailed(status)
    if status.status == TIMED_OUT:
        raise JobTimedOut(status)
    if status.status == CANCELLED:
        raise JobCancelled(status)
    raise ValueError(f"job {status.id} has not ended: {status.status}")


def _error_field(body: str) -> str | None:
    try:
        decoded = _decode_any(body)
    except (msgspec.DecodeError, UnicodeDecodeError):
        return None
    error = decoded.get("error") if isinstance(decoded, dict) else None
    return error if isinstance(error, str) else None


# --- policies -----------------------------------------------------------------------------------


class Backoff(msgspec.Struct, frozen=True, kw_only=True):
    """Exponential delays with jitter: ``min(max_s, initial_s × factor^n)``, less up to ``jitter``."""

    initial_s: float = 0.5
    factor: float = 2.0
    max_s: float = 10.0
    jitter: float = 0.5
    """The fraction of each delay drawn at random, so many clients do not retry in step."""

    def delay_s(self, attempt: int, rng: random.Random) -> float:
        base = min(self.max_s, self.initial_s * self.factor ** max(attempt, 0))
        return base * (1.0 - self.jitter * rng.random())


class RetryPolicy(msgspec.Struct, frozen=True, kw_only=True):
    """How often and how long to retry one request."""

    max_attempts: int = 5
    """Tries per request, the first included."""
    backoff: Backoff = Backoff()
    max_retry_after_s: float = 60.0
    """A ``Retry-After`` longer than this is not waited out: the error is raised instead."""


class Timeouts(msgspec.Struct, frozen=True, kw_only=True):
    connect_s: float = 10.0
    request_s: float = 30.0
    """One request, connect to last byte (a ``/runsync`` also gets its ``wait`` on top)."""


DEFAULT_TIMEOUTS = Timeouts()
DEFAULT_RETRY = RetryPolicy()
POLL = Backoff(initial_s=0.1, factor=1.5, max_s=2.0, jitter=0.25)
"""``wait``'s polling: fast for the first second, then every 1.5 to 2 s."""


# --- the client ---------------------------------------------------------------------------------


class SubmittedJob:
    """A handle on a submitted job: its id, and ``status``/``wait``/``cancel`` through its client."""

    def __init__(self, client: Client, submitted: JobView) -> None:
        self.client = client
        self.id = submitted.id
        self.submitted = submitted

    def __repr__(self) -> str:
        return f"SubmittedJob(id={self.id!r})"

    async def status(self) -> JobView:
        return await self.client.status(self.id)

    async def wait(self, *, timeout_s: float = 300.0) -> JobView:
        return await self.client.wait(self.id, timeout_s=timeout_s)

    async def cancel(self) -> JobView:
        return await self.client.cancel(self.id)


class Client:
    """``async with Client(base_url, api_key=...) as client:``; see the module docstring."""

    def __init__(
        self,
        base_url: str,
        *,
        api_key: str | None = None,
        timeouts: Timeouts = DEFAULT_TIMEOUTS,
        retry: RetryPolicy = DEFAULT_RETRY,
        poll: Backoff = POLL,
        max_connections: int = 100,
        session: aiohttp.ClientSession | None = None,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        rng: random.Random | None = None,
    ) -> None:
        """``base_url`` is where the routes hang: ``https://api.runpod.ai/v2/<endpoint_id>`` or a pod's root.

        ``session`` (optional) is used as given and left open; ``sleep`` and ``rng`` are for tests.
        """
        self.base_url = base_url.rstrip("/")
        self.timeouts, self.retry, self.poll = timeouts, retry, poll
        self._headers = {"Content-Type": "application/json", "Accept": "application/json"}
        if api_key:
            self._headers["Authorization"] = f"Bearer {api_key}"
        self._max_connections = max_connections
        self._session = session
        self._owns_session = session is None
        self._sleep = sleep
        self._rng = rng or random.Random()

    @classmethod
    def for_endpoint(cls, endpoint_id: str, *, api_key: str | None = None, api_url: str = RUNPOD_API_URL,
                     **options: Any) -> Client:  # fmt: skip
        """A RunPod serverless endpoint; the key defaults to ``RUNPOD_API_KEY``."""
        api_key = api_key or os.environ.get("RUNPOD_API_KEY")
        if not api_key:
            raise ValueError("a RunPod endpoint needs an API key: pass api_key or set RUNPOD_API_KEY")
        return cls(f"{api_url.rstrip('/')}/{endpoint_id}", api_key=api_key, **options)

    @classmethod
    def for_pod(cls, base_url: str, *, api_key: str | None = None, **options: Any) -> Client:
        """A burst-nli pod (``python -m worker pod``) at ``http://host:port``; key: its API_KEY."""
        return cls(base_url, api_key=api_key, **options)

    @classmethod
    def for_target(cls, target: str, **options: Any) -> Client:
        """``runpod://ENDPOINT_ID`` (key from RUNPOD_API_KEY) or ``http(s)://host:port`` (key from API_KEY)."""
        if target.startswith("runpod://"):
            return cls.for_endpoint(target.removeprefix("runpod://").strip("/"), **options)
        if target.startswith(("http://", "https://")):
            options.setdefault("api_key", os.environ.get("API_KEY"))
            return cls.for_pod(target, **options)
        raise ValueError(f"target {target!r}: expected runpod://ENDPOINT_ID or http(s)://host:port")

    # --- lifetime ---

    async def __aenter__(self) -> Self:
        self._open()
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                        tb: TracebackType | None) -> None:  # fmt: skip
        await self.aclose()

    async def aclose(self) -> None:
        if self._session is not None and self._owns_session:
            await self._session.close()
            self._session = None

    def _open(self) -> aiohttp.ClientSession:
        if self._session is None:
            connector = aiohttp.TCPConnector(limit=self._max_connections)
            self._session = aiohttp.ClientSession(connector=connector)
            self._owns_session = True
        return self._session

    # --- the API ---

    async def run(self, job_input: Mapping[str, Any], *, policy: Mapping[str, Any] | None = None,
                  webhook: str | None = None) -> SubmittedJob:  # fmt: skip
        """Submit a job (``POST /run``) and return its handle at once."""
        body = _request_body(job_input, policy, webhook)
        return SubmittedJob(self, await self._call_status("POST", "/run", body, submits=True))

    async def runsync(
        self, job_input: Mapping[str, Any], *, wait_s: float = 90.0, timeout_s: float = 300.0,
        policy: Mapping[str, Any] | None = None,
    ) -> JobView:  # fmt: skip
        """Submit and wait (``POST /runsync?wait=``), polling ``/status`` if the server's wait runs out.

        Returns the COMPLETED status (``.output``); raises JobFailed, JobTimedOut, JobCancelled,
        or WaitTimeout after ``timeout_s`` in all.
        """
        low, high = RUNSYNC_WAIT_MS
        wait_ms = int(min(max(min(wait_s, timeout_s) * 1000, low), high))
        started = time.monotonic()
        body = _request_body(job_input, policy, None)
        status = await self._call_status(
            "POST", f"/runsync?wait={wait_ms}", body, submits=True, extra_timeout_s=wait_ms / 1000
        )
        if status.done:
            return raise_for_job(status)
        return await self.wait(status.id, timeout_s=max(timeout_s - (time.monotonic() - started), 0.0), last=status)

    async def status(self, job_id: str) -> JobView:
        """``GET /status/{id}``: where the job is, and its output or error once it has ended."""
        return await self._call_status("GET", f"/status/{job_id}")

    async def wait(self, job_id: str, *, timeout_s: float = 300.0, last: JobView | None = None) -> JobView:
        """Poll ``/status`` (backoff with jitter) until the job ends; the COMPLETED status, or raise."""
        attempt = 0
        try:
            async with asyncio.timeout(timeout_s):
                while True:
                    last = await self.status(job_id)
                    if last.done:
                        return raise_for_job(last)
                    await self._sleep(self.poll.delay_s(attempt, self._rng))
                    attempt += 1
        except TimeoutError as err:
            if isinstance(err, ClientError):  # a WaitTimeout from within is already ours
                raise
            raise WaitTimeout(job_id, timeout_s, last) from None

    async def cancel(self, job_id: str) -> JobView:
        """``POST /cancel/{id}``; an already-ended job keeps its status."""
        return await self._call_status("POST", f"/cancel/{job_id}")

    async def health(self) -> dict[str, Any]:
        """``GET /health``: job counts (and workers on RunPod, the model on a pod), as the server sends them."""
        decoded = _decode_any(await self._call("GET", "/health"))
        if not isinstance(decoded, dict):
            raise ClientError(f"GET {self.base_url}/health: expected a JSON object, got {type(decoded).__name__}")
        return decoded

    async def ping(self) -> bool:
        """``GET /ping`` (pods and load-balancing endpoints): True when ready, False while loading."""
        _, status = await self._request("GET", "/ping", None, submits=False, extra_timeout_s=0.0, max_attempts=1)
        return status == 200

    # --- the HTTP underneath ---

    async def _call_status(self, method: str, path: str, body: bytes | None = None, *, submits: bool = False,
                           extra_timeout_s: float = 0.0) -> JobView:  # fmt: skip
        raw = await self._call(method, path, body, submits=submits, extra_timeout_s=extra_timeout_s)
        try:
            return _decode_view(raw)
        except msgspec.DecodeError as err:
            raise ClientError(f"{method} {self.base_url}{path}: not a job status: {err}: {raw[:300]!r}") from err

    async def _call(self, method: str, path: str, body: bytes | None = None, *, submits: bool = False,
                    extra_timeout_s: float = 0.0) -> bytes:  # fmt: skip
        raw, _ = await self._request(method, path, body, submits=submits, extra_timeout_s=extra_timeout_s)
        return raw

    async def _request(self, method: str, path: str, body: bytes | None, *, submits: bool,
                       extra_timeout_s: float, max_attempts: int | None = None) -> tuple[bytes, int]:  # fmt: skip
        """One call with its retries. ``submits``: it creates a job, so retry only certain refusals."""
        session = self._open()
        url = f"{self.base_url}{path}"
        timeout = aiohttp.ClientTimeout(
            total=self.timeouts.request_s + extra_timeout_s, sock_connect=self.timeouts.connect_s
        )
        attempts = max_attempts or self.retry.max_attempts
        for attempt in range(1, attempts + 1):
            failure: ClientError
            retry_after: float | None = None
            try:
                async with session.request(method, url, data=body, headers=self._headers, timeout=timeout) as response:
                    raw = await response.read()
                    if response.status < 400:
                        return raw, response.status
                    retry_after = _retry_after_s(response.headers.get("Retry-After"))
                    failure = _http_error(method, url, response.status, raw, retry_after)
            except aiohttp.ClientConnectorError as err:  # never connected: nothing was sent
                failure = ConnectionFailed(f"{method} {url}: {err} (attempt {attempt} of {attempts})")
                failure.__cause__ = err
            except (aiohttp.ClientError, TimeoutError) as err:  # sent: the server may have acted on it
                if submits:
                    raise SubmissionUncertain(
                        f"{method} {url}: {type(err).__name__}: {err}; the job may have been created, "
                        "so it was not resubmitted"
                    ) from err
                reason = f"{type(err).__name__}: {err}"
                failure = ConnectionFailed(f"{method} {url}: {reason} (attempt {attempt} of {attempts})")
                failure.__cause__ = err
            else:
                self._check_retryable(failure, submits=submits)
            if attempt == attempts:
                raise failure
            delay = self.retry.backoff.delay_s(attempt - 1, self._rng)
            await self._sleep(max(delay, retry_after or 0.0))
        raise AssertionError("unreachable: the last attempt returns or raises")  # pragma: no cover

    def _check_retryable(self, error: HttpError, *, submits: bool) -> None:
        """Raise ``error`` (or SubmissionUncertain) unless another attempt may succeed and is safe."""
        if error.status not in RETRY_STATUSES:
            raise error
        if submits and error.status not in REFUSED_STATUSES:  # a gateway's 502/504: the job may exist
            raise SubmissionUncertain(
                f"{error.method} {error.url}: HTTP {error.status}; the job may have been created, so it was "
                "not resubmitted"
            ) from error
        if error.retry_after_s is not None and error.retry_after_s > self.retry.max_retry_after_s:
            raise error


def _request_body(job_input: Mapping[str, Any], policy: Mapping[str, Any] | None, webhook: str | None) -> bytes:
    body: dict[str, Any] = {"input": dict(job_input)}
    if policy is not None:
        body["policy"] = dict(policy)
    if webhook is not None:
        body["webhook"] = webhook
    return _encode(body)


def _http_error(method: str, url: str, status: int, raw: bytes, retry_after: float | None) -> HttpError:
    text = raw.decode("utf-8", errors="replace")
    kind = Unauthorized if status in (401, 403) else NotFound if status == 404 else HttpError
    return kind(method, url, status, text, retry_after_s=retry_after)


def _retry_after_s(value: str | None) -> float | None:
    """``Retry-After`` as seconds: a number of seconds or an HTTP date; None if absent or unreadable."""
    if not value:
        return None
    try:
        return max(float(value), 0.0)
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(when.timestamp() - time.time(), 0.0)
