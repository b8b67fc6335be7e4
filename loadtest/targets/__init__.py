"""Where a replay sends its jobs: a small ``Target`` protocol and one module per kind of target.

A target is opened as an async context manager (start an engine, open a connection pool...),
then ``submit`` is awaited once per job, concurrently, and returns how the job ended. The replayer
owns timing, concurrency caps and its own timeout (it cancels ``submit``), so a target only sends.

``open_target(spec, options)`` picks the module by the spec's scheme (``_MODULES``); each module
provides ``open_target(spec, options) -> AbstractAsyncContextManager[Target]``:

- ``inproc``: ``loadtest.targets.inproc``, the worker's service path in this process.
- ``http://host:port`` (a pod) and ``runpod://ENDPOINT_ID`` (a RunPod endpoint, key from
  ``RUNPOD_API_KEY``): ``loadtest.targets.api``, the RunPod job API over ``burst_nli_client``
  (``/run`` + ``/status`` polling, or ``/runsync`` with ``--mode runsync``).

A new kind of target is a module with that ``open_target`` and a line in ``_MODULES``.
"""

from __future__ import annotations

import importlib
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from typing import Any, Protocol

COMPLETED = "completed"
REJECTED_STATUSES = frozenset({"overloaded", "unavailable"})
"""Statuses that mean the server refused the job for lack of room (the worker's retryable codes)."""


class TargetError(ValueError):
    """A target spec or its options are unusable; the message says why (exit status 2)."""


@dataclass(frozen=True, slots=True)
class JobResult:
    """How one job ended, as the caller saw it."""

    status: str
    """``completed``, or the error's code (``overloaded``, ``invalid_input``, ``timed_out``...)."""
    error: str | None = None
    """The caller's error text, ``<code>: <message>``."""
    pairs: int | None = None
    """NLI pairs the job ran, where the target knows it."""

    @classmethod
    def from_output(cls, output: dict[str, Any], pairs: int | None = None) -> JobResult:
        """From a job's output dict: ``{"error": "<code>: <message>"}`` or a result."""
        error = output.get("error") if isinstance(output, dict) else None
        if isinstance(error, str):
            return cls(status=error.partition(":")[0].strip() or "internal", error=error, pairs=pairs)
        return cls(status=COMPLETED, pairs=pairs)


@dataclass(frozen=True, slots=True)
class BatchRecord:
    """One batch the target ran, where it can see them (in process)."""

    at: float
    """``anyio.current_time()`` when the batch finished."""
    pairs: int
    jobs: int
    real_tokens: int
    padded_tokens: int
    compute_s: float
    merged_pairs: int = 0
    """Pairs that shared the row of an identical pair: the model ran ``pairs - merged_pairs``."""


class Target(Protocol):
    name: str
    """What the reports call it: ``inproc synthetic:tiny on cpu``, ``http://127.0.0.1:8000``."""
    batches: list[BatchRecord] | None
    """Batches run so far, appended as they finish; ``None`` where the target cannot see them."""

    async def submit(self, job_input: dict[str, Any]) -> JobResult:
        """Send one job and wait for its end; cancelling it abandons (and, where possible,
        cancels) the job."""
        ...


@dataclass(frozen=True, slots=True)
class TargetOptions:
    """The replay command's options that targets read; each target uses the ones it needs."""

    model: str = "synthetic:distilbert-mnli"
    """inproc: the model to load."""
    device: str | None = None
    """inproc: ``cuda``, ``cpu``...; unset: CUDA when available."""
    log_level: str = "WARNING"
    """inproc: the worker's log level."""
    mode: str = "run"
    """http, runpod: ``run`` (``/run`` then ``/status`` polling) or ``runsync``."""
    max_connections: int = 1024
    """http, runpod: open connections at most; above the jobs in flight, so it never throttles."""


_MODULES = {
    "inproc": "loadtest.targets.inproc",
    "http": "loadtest.targets.api",
    "https": "loadtest.targets.api",
    "runpod": "loadtest.targets.api",
}


def open_target(spec: str, options: TargetOptions) -> AbstractAsyncContextManager[Target]:
    """The target ``spec`` names (``inproc``, ``http://host:port``, ``runpod://ENDPOINT_ID``),
    ready to open with ``async with``; raises ``TargetError`` for a spec it cannot serve."""
    scheme = spec.partition("://")[0] if "://" in spec else spec
    module_name = _MODULES.get(scheme)
    if module_name is None:
        raise TargetError(f"--target: expected inproc, http://host:port or runpod://ENDPOINT_ID, got {spec!r}")
    return importlib.import_module(module_name).open_target(spec, options)  # type: ignore[no-any-return]
