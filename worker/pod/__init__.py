"""The pod front end: RunPod's job API over HTTP (Starlette on uvicorn), always on.

``POST /run`` decodes and admits a job synchronously through the service path the serverless
handler uses (``admit_job``), so a bad job, a full queue or a loading model is answered at once
(400, 429, 503), then finishes it in a background task; ``/runsync`` does the same and waits.
Jobs live in a ``JobStore`` (statuses, retention); ``/cancel`` cancels a job's task, and the
batcher drops its queued pairs as the cancellation passes through it.

``PodApp`` owns everything with a lifetime: the engine, which loads in one background task (the
batcher's anyio task group must be entered and left by one task) while the HTTP server already
answers (``/ping`` 204 until ready), and the jobs' tasks. Enter it with ``async with`` (tests, an
already-loaded model, httpx's ``ASGITransport``, which runs no lifespan) or let uvicorn's lifespan
enter it (``serve``). Every ``ServiceError`` becomes an HTTP response in ``error_response`` alone.
"""

from worker.pod.app import DRAIN_READ_S, PodApp
from worker.pod.auth import OPEN_PATHS, BearerAuth, bind_refusal
from worker.pod.requests import RUNSYNC_DEFAULT_WAIT_MS, RUNSYNC_MAX_WAIT_MS
from worker.pod.serving import GRACEFUL_SHUTDOWN_S, running_server, serve

__all__ = [
    "DRAIN_READ_S",
    "GRACEFUL_SHUTDOWN_S",
    "OPEN_PATHS",
    "RUNSYNC_DEFAULT_WAIT_MS",
    "RUNSYNC_MAX_WAIT_MS",
    "BearerAuth",
    "PodApp",
    "bind_refusal",
    "running_server",
    "serve",
]
