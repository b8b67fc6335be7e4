"""burst_nli_client: retries, Retry-After, backoff and typed errors on a scripted server; then the real pod
server and the local RunPod queue (with a real serverless worker) on loopback."""

from __future__ import annotations

import asyncio
import contextlib
import email.utils
import json
import os
import random
import signal
import subprocess
import sys
import threading
import time
from collections import defaultdict, deque
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import anyio
import pytest
from aiohttp import web

from burst_nli_client import (
    Backoff,
    Client,
    ConnectionFailed,
    HttpError,
    JobCancelled,
    JobFailed,
    JobTimedOut,
    JobView,
    NotFound,
    RetryPolicy,
    SubmissionUncertain,
    Timeouts,
    Unauthorized,
    WaitTimeout,
)

ROOT = Path(__file__).resolve().parents[1]
CLASSIFY = {"operation": "classify", "headline": "Apple Declares $0.25 Dividend", "company": "Apple"}


# --- a scripted RunPod API on loopback ---------------------------------------------------------------


class Sleeps(list[float]):
    """The client's ``sleep``: records each delay and yields without waiting."""

    async def __call__(self, seconds: float) -> None:
        self.append(seconds)
        await asyncio.sleep(0)


class ScriptedApi:
    """Each route (``"POST /run"``, ``"GET /status"``...) answers from its own queue of scripted
    responses, then with its default; every request is recorded."""

    def __init__(self) -> None:
        self.scripts: dict[str, deque[Any]] = defaultdict(deque)
        self.requests: list[tuple[str, str, dict[str, str], Any]] = []
        self.release = asyncio.Event()

    def script(self, route: str, *responses: Any) -> None:
        self.scripts[route].extend(responses)

    def count(self, route: str) -> int:
        return sum(1 for method, path, _, _ in self.requests if route == f"{method} /{path.split('/')[3]}")

    async def handle(self, request: web.Request) -> web.StreamResponse:
        parts = request.path.split("/")  # /v2/<endpoint>/<route>[/<id>]
        route = f"{request.method} /{parts[3]}"
        body = await request.read()
        self.requests.append((request.method, request.path_qs, dict(request.headers), json.loads(body or "null")))
        script = self.scripts[route]
        answer = script.popleft() if script else self.default(route, parts)
        if answer == "drop":  # the request arrived; the connection dies before any answer
            assert request.transport is not None
            request.transport.close()
            return web.Response()
        if answer == "hang":
            await self.release.wait()
            return web.Response(status=503)
        status, payload, headers = answer
        text = payload if isinstance(payload, str) else json.dumps(payload)
        return web.Response(status=status, text=text, headers=headers, content_type="application/json")

    def default(self, route: str, parts: list[str]) -> tuple[int, Any, dict[str, str]]:
        job_id = parts[4] if len(parts) > 4 else "job-1"
        return {
            "POST /run": (200, {"id": "job-1", "status": "IN_QUEUE"}, {}),
            "POST /runsync": (200, {"id": "job-1", "status": "COMPLETED", "output": {"ok": True}}, {}),
            "GET /status": (200, {"id": job_id, "status": "COMPLETED", "output": {"ok": True}}, {}),
            "POST /cancel": (200, {"id": job_id, "status": "CANCELLED"}, {}),
            "GET /health": (200, {"jobs": {"inQueue": 0}, "workers": {"idle": 1}}, {}),
            "GET /ping": (200, {"status": "healthy"}, {}),
        }.get(route, (404, {"error": f"not_found: {route}"}, {}))


@asynccontextmanager
async def scripted_api(api: ScriptedApi) -> AsyncIterator[str]:
    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", api.handle)
    runner = web.AppRunner(app, handle_signals=False, access_log=None, shutdown_timeout=1)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    try:
        yield f"http://127.0.0.1:{runner.addresses[0][1]}/v2/endpoint"
    finally:
        api.release.set()
        await runner.cleanup()


def make_client(base_url: str, sleeps: Sleeps, **options: Any) -> Client:
    options.setdefault("retry", RetryPolicy(max_attempts=4, backoff=Backoff(initial_s=0.5, max_s=4.0)))
    return Client(base_url, api_key="secret", sleep=sleeps, rng=random.Random(7), **options)


def status(job_id: str, state: str, **fields: Any) -> tuple[int, dict[str, Any], dict[str, str]]:
    return 200, {"id": job_id, "status": state, **fields}, {}


# --- the happy path and the wire format --------------------------------------------------------------


async def test_run_wait_and_the_wire_format() -> None:
    api, sleeps = ScriptedApi(), Sleeps()
    api.script("GET /status", status("job-1", "IN_QUEUE"), status("job-1", "IN_PROGRESS", delayTime=12),
               status("job-1", "COMPLETED", output={"is_opinion": False}, delayTime=12, executionTime=30))  # fmt: skip
    async with scripted_api(api) as url, make_client(url, sleeps) as client:
        job = await client.run(CLASSIFY, policy={"executionTimeout": 10_000})
        assert job.id == "job-1" and job.submitted.status == "IN_QUEUE"
        done = await job.wait(timeout_s=30)
    assert done == JobView(id="job-1", status="COMPLETED", output={"is_opinion": False}, delay_time_ms=12,
                             execution_time_ms=30)  # fmt: skip
    method, path, headers, body = api.requests[0]
    assert (method, path) == ("POST", "/v2/endpoint/run")
    assert body == {"input": CLASSIFY, "policy": {"executionTimeout": 10_000}}
    assert headers["Authorization"] == "Bearer secret" and headers["Content-Type"] == "application/json"
    assert [p for _, p, _, _ in api.requests[1:]] == ["/v2/endpoint/status/job-1"] * 3
    # polling: exponential from 0.1 s, jittered down by at most a quarter
    assert len(sleeps) == 2 and 0.075 <= sleeps[0] <= 0.1 and 0.1125 <= sleeps[1] <= 0.15


async def test_status_cancel_health_and_ping() -> None:
    api, sleeps = ScriptedApi(), Sleeps()
    api.script("GET /ping", (204, "", {}))
    async with scripted_api(api) as url, make_client(url, sleeps) as client:
        assert (await client.status("abc")).status == "COMPLETED"
        assert await client.cancel("abc") == JobView(id="abc", status="CANCELLED")
        assert await client.health() == {"jobs": {"inQueue": 0}, "workers": {"idle": 1}}
        assert await client.ping() is False  # 204: loading
        assert await client.ping() is True
    assert [(m, p) for m, p, _, _ in api.requests[:2]] == [("GET", "/v2/endpoint/status/abc"),
                                                           ("POST", "/v2/endpoint/cancel/abc")]  # fmt: skip


@pytest.mark.parametrize(("wait_s", "expected_ms"), [(2.5, 2500), (0.1, 1000), (1000.0, 300_000)])
async def test_runsync_sends_its_wait_in_milliseconds(wait_s: float, expected_ms: int) -> None:
    api, sleeps = ScriptedApi(), Sleeps()
    async with scripted_api(api) as url, make_client(url, sleeps) as client:
        result = await client.runsync(CLASSIFY, wait_s=wait_s, timeout_s=600)
    assert result.output == {"ok": True}
    assert api.requests[0][1] == f"/v2/endpoint/runsync?wait={expected_ms}"


async def test_runsync_polls_when_the_servers_wait_runs_out() -> None:
    api, sleeps = ScriptedApi(), Sleeps()
    api.script("POST /runsync", status("sync-1", "IN_PROGRESS"))
    api.script("GET /status", status("sync-1", "IN_PROGRESS"), status("sync-1", "COMPLETED", output=[1, 2]))
    async with scripted_api(api) as url, make_client(url, sleeps) as client:
        result = await client.runsync(CLASSIFY, wait_s=1)
    assert result.id == "sync-1" and result.output == [1, 2]
    assert api.count("GET /status") == 2


# --- jobs that end without an output -------------------------------------------------------------


async def test_a_failed_job_keeps_its_error_message() -> None:
    api, sleeps = ScriptedApi(), Sleeps()
    error = "invalid_input: headline: must not be blank"
    api.script("GET /status", status("job-1", "FAILED", error=error))
    api.script("POST /runsync", status("job-2", "FAILED", error="overloaded: 50000 pairs queued"))
    async with scripted_api(api) as url, make_client(url, sleeps) as client:
        with pytest.raises(JobFailed) as failed:
            await client.wait("job-1")
        with pytest.raises(JobFailed) as refused:
            await client.runsync(CLASSIFY)
    assert failed.value.error == error and failed.value.code == "invalid_input" and not failed.value.retryable
    assert failed.value.job_id == "job-1" and str(failed.value) == f"job job-1 failed: {error}"
    assert refused.value.code == "overloaded" and refused.value.retryable


async def test_an_error_that_is_not_a_string_is_kept_as_json() -> None:
    api, sleeps = ScriptedApi(), Sleeps()
    raised = {"error_type": "<class 'ValueError'>", "error_message": "bad"}  # a handler that raised
    api.script("GET /status", status("job-1", "FAILED", error=raised))
    async with scripted_api(api) as url, make_client(url, sleeps) as client:
        with pytest.raises(JobFailed) as failed:
            await client.wait("job-1")
    assert json.loads(failed.value.error) == raised and failed.value.code is None


@pytest.mark.parametrize(("state", "error"), [("TIMED_OUT", JobTimedOut), ("CANCELLED", JobCancelled)])
async def test_timed_out_and_cancelled_jobs_raise_their_own_errors(state: str, error: type[Exception]) -> None:
    api, sleeps = ScriptedApi(), Sleeps()
    api.script("GET /status", status("job-1", state))
    async with scripted_api(api) as url, make_client(url, sleeps) as client:
        with pytest.raises(error) as raised:
            await client.wait("job-1")
    assert raised.value.status.status == state  # type: ignore[attr-defined]


async def test_wait_gives_up_after_its_total_timeout() -> None:
    api = ScriptedApi()
    api.script("GET /status", *[status("job-1", "IN_PROGRESS")] * 1000)
    fast = Backoff(initial_s=0.01, max_s=0.02)
    async with scripted_api(api) as url, Client(url, poll=fast) as client:
        with pytest.raises(WaitTimeout) as timed_out:
            await client.wait("job-1", timeout_s=0.3)
    assert timed_out.value.job_id == "job-1" and timed_out.value.last is not None
    assert timed_out.value.last.status == "IN_PROGRESS" and isinstance(timed_out.value, TimeoutError)


# --- retries ----------------------------------------------------------------------------------------


async def test_429_is_retried_no_sooner_than_retry_after() -> None:
    api, sleeps = ScriptedApi(), Sleeps()
    api.script("POST /run", (429, {"error": "overloaded: queue full"}, {"Retry-After": "3"}),
               (429, {"error": "overloaded: queue full"}, {"Retry-After": "0"}))  # fmt: skip
    async with scripted_api(api) as url, make_client(url, sleeps) as client:
        job = await client.run(CLASSIFY)
    assert job.id == "job-1" and api.count("POST /run") == 3
    assert sleeps[0] == 3.0  # Retry-After wins over the shorter backoff
    assert 0.5 <= sleeps[1] <= 1.0  # then the backoff (attempt 2: 1.0 s, less up to half)


async def test_retry_after_as_an_http_date() -> None:
    api, sleeps = ScriptedApi(), Sleeps()
    later = email.utils.formatdate(time.time() + 30, usegmt=True)
    api.script("GET /status", (503, "busy", {"Retry-After": later}))
    async with scripted_api(api) as url, make_client(url, sleeps) as client:
        await client.status("job-1")
    assert 25 <= sleeps[0] <= 30


async def test_a_retry_after_past_the_limit_is_not_waited_out() -> None:
    api, sleeps = ScriptedApi(), Sleeps()
    api.script("POST /run", (429, {"error": "rate limited"}, {"Retry-After": "3600"}))
    async with scripted_api(api) as url, make_client(url, sleeps) as client:
        with pytest.raises(HttpError) as raised:
            await client.run(CLASSIFY)
    assert raised.value.status == 429 and raised.value.retry_after_s == 3600 and sleeps == []


async def test_5xx_on_idempotent_calls_is_retried_with_backoff() -> None:
    api, sleeps = ScriptedApi(), Sleeps()
    api.script("GET /status", (502, "<html>bad gateway</html>", {}), (503, "", {}), (504, "", {}))
    async with scripted_api(api) as url, make_client(url, sleeps) as client:
        assert (await client.status("job-1")).status == "COMPLETED"
    assert len(sleeps) == 3
    for attempt, delay in enumerate(sleeps):  # 0.5, 1, 2 s, each less up to half
        assert 0.5 * 2**attempt * 0.5 <= delay <= 0.5 * 2**attempt


async def test_retries_are_bounded() -> None:
    api, sleeps = ScriptedApi(), Sleeps()
    api.script("POST /run", *[(429, {"error": "overloaded: queue full"}, {"Retry-After": "1"})] * 10)
    async with scripted_api(api) as url, make_client(url, sleeps) as client:
        with pytest.raises(HttpError) as raised:
            await client.run(CLASSIFY)
    assert api.count("POST /run") == 4 and len(sleeps) == 3
    assert raised.value.status == 429 and raised.value.code == "overloaded"


@pytest.mark.parametrize(
    ("answer", "error", "fields"),
    [
        ((500, {"error": "internal: see the log"}, {}), HttpError, {"status": 500, "error": "internal: see the log"}),
        ((400, {"error": "invalid_input: headline: missing"}, {}), HttpError, {"status": 400, "code": "invalid_input"}),
        ((401, {"error": "unauthorized: send a key"}, {}), Unauthorized, {"status": 401}),
        ((403, "forbidden", {}), Unauthorized, {"status": 403, "body": "forbidden", "error": None}),
        ((404, {"error": "not_found: no job 'x'"}, {}), NotFound, {"status": 404}),
    ],
)
async def test_other_errors_are_raised_at_once_with_status_and_body(
    answer: tuple[int, Any, dict[str, str]], error: type[HttpError], fields: dict[str, Any]
) -> None:
    api, sleeps = ScriptedApi(), Sleeps()
    api.script("GET /status", answer)
    async with scripted_api(api) as url, make_client(url, sleeps) as client:
        with pytest.raises(error) as raised:
            await client.status("x")
    assert type(raised.value) is error and sleeps == [] and api.count("GET /status") == 1
    for name, value in fields.items():
        assert getattr(raised.value, name) == value


async def test_a_refused_connection_is_retried_even_for_run() -> None:
    """Nothing was sent, so resubmitting cannot create a second job."""
    api = ScriptedApi()
    async with scripted_api(api) as url:
        pass  # the server is gone: its port now refuses connections
    sleeps = Sleeps()
    async with make_client(url, sleeps) as client:
        with pytest.raises(ConnectionFailed, match="attempt 4 of 4"):
            await client.run(CLASSIFY)
        with pytest.raises(ConnectionFailed):
            await client.health()
    assert len(sleeps) == 6


async def test_run_is_never_resubmitted_once_the_request_may_have_arrived() -> None:
    api, sleeps = ScriptedApi(), Sleeps()
    api.script("POST /run", "drop", (502, "bad gateway", {}))
    api.script("GET /status", "drop")  # a status read is retried instead
    async with scripted_api(api) as url, make_client(url, sleeps) as client:
        with pytest.raises(SubmissionUncertain, match="not resubmitted"):
            await client.run(CLASSIFY)
        with pytest.raises(SubmissionUncertain, match="HTTP 502"):
            await client.run(CLASSIFY)
        assert (await client.status("job-1")).status == "COMPLETED"
    assert api.count("POST /run") == 2 and api.count("GET /status") == 2


async def test_a_run_that_times_out_is_not_resubmitted() -> None:
    api, sleeps = ScriptedApi(), Sleeps()
    api.script("POST /run", "hang")
    async with scripted_api(api) as url, make_client(url, sleeps, timeouts=Timeouts(request_s=0.2)) as client:
        with pytest.raises(SubmissionUncertain, match="TimeoutError"):
            await client.run(CLASSIFY)
    assert api.count("POST /run") == 1 and sleeps == []


# --- construction -----------------------------------------------------------------------------------


def test_endpoint_urls_and_keys(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RUNPOD_API_KEY", "rp-key")
    endpoint = Client.for_endpoint("abc123")
    assert endpoint.base_url == "https://api.runpod.ai/v2/abc123"
    assert endpoint._headers["Authorization"] == "Bearer rp-key"
    assert Client.for_target("runpod://abc123").base_url == "https://api.runpod.ai/v2/abc123"
    monkeypatch.setenv("API_KEY", "pod-key")
    pod = Client.for_target("http://10.0.0.5:8000/")
    assert pod.base_url == "http://10.0.0.5:8000" and pod._headers["Authorization"] == "Bearer pod-key"
    monkeypatch.delenv("RUNPOD_API_KEY")
    with pytest.raises(ValueError, match="RUNPOD_API_KEY"):
        Client.for_endpoint("abc123")
    with pytest.raises(ValueError, match="expected runpod://"):
        Client.for_target("ftp://x")


def test_backoff_grows_to_its_cap_with_jitter() -> None:
    backoff, rng = Backoff(initial_s=0.5, factor=2.0, max_s=4.0, jitter=0.5), random.Random(1)
    for attempt, cap in enumerate([0.5, 1.0, 2.0, 4.0, 4.0, 4.0]):
        delays = [backoff.delay_s(attempt, rng) for _ in range(50)]
        assert all(cap / 2 <= d <= cap for d in delays) and len(set(delays)) > 1


# --- against the real pod server ---------------------------------------------------------------------


def hold_batches(model, monkeypatch: pytest.MonkeyPatch) -> threading.Event:
    """From now on batches wait on the returned event; set it to let them run.

    Called once the server is up: the engine's warm-up runs the model too.
    """
    gate = threading.Event()
    run = model.run

    def held(batch):
        gate.wait(timeout=60)
        return run(batch)

    monkeypatch.setattr(model, "run", held)
    return gate


async def test_pod_run_wait_runsync_health_and_ping(pod_server, check_job_output, example_jobs) -> None:
    async with pod_server() as base_url, Client.for_pod(base_url) as client:
        assert await client.ping() is True
        job = await client.run(CLASSIFY)
        done = await job.wait(timeout_s=60)
        check_job_output("classify", CLASSIFY, done.output)
        assert done.delay_time_ms is not None and done.execution_time_ms is not None
        batch = {"operation": "classify_batch", **example_jobs["classify_batch"]}
        result = await client.runsync(batch, wait_s=30)
        check_job_output("classify_batch", example_jobs["classify_batch"], result.output)
        jobs = await asyncio.gather(*(client.run(CLASSIFY) for _ in range(20)))
        outputs = await asyncio.gather(*(j.wait(timeout_s=60) for j in jobs))
        assert len({j.id for j in jobs}) == 20
        for output in (o.output for o in outputs):  # the same headline, batched with others
            assert output["scores"] == pytest.approx(done.output["scores"], abs=1e-4)
        health = await client.health()
    assert health["jobs"]["completed"] == 22 and health["model"]["ready"] is True


async def test_pod_bad_input_is_refused_with_its_message(pod_server) -> None:
    async with pod_server() as base_url, Client.for_pod(base_url) as client:
        with pytest.raises(HttpError) as refused:
            await client.run({"operation": "classify"})
    assert refused.value.status == 400 and refused.value.code == "invalid_input"
    assert refused.value.error == "invalid_input: headline: missing required field"


async def test_pod_failed_job_keeps_its_error(pod_server, tiny_model, monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(batch):
        raise RuntimeError("the GPU caught fire")

    async with pod_server() as base_url, Client.for_pod(base_url) as client:
        monkeypatch.setattr(tiny_model, "run", broken)  # after the warm-up
        with pytest.raises(JobFailed) as failed:
            await client.runsync(CLASSIFY, wait_s=30)
    assert failed.value.code == "inference_failed" and failed.value.status.status == "FAILED"
    assert failed.value.error.startswith("inference_failed: ")


async def test_pod_cancel_and_timeout(pod_server, tiny_model, monkeypatch: pytest.MonkeyPatch) -> None:
    async with pod_server() as base_url, Client.for_pod(base_url) as client:
        gate = hold_batches(tiny_model, monkeypatch)
        try:
            await held_jobs_end_cancelled_or_timed_out(client)
        finally:
            gate.set()


async def held_jobs_end_cancelled_or_timed_out(client: Client) -> None:
    held = await client.run(CLASSIFY)
    cancelled = await client.cancel(held.id)
    assert cancelled.status == "CANCELLED"
    with pytest.raises(JobCancelled):
        await held.wait(timeout_s=30)
    with pytest.raises(JobTimedOut) as timed_out:
        await client.runsync(CLASSIFY, policy={"executionTimeout": 50}, wait_s=30)
    assert timed_out.value.status.error.startswith("timed_out")
    with pytest.raises(NotFound):
        await client.status("no-such-job")


async def test_pod_overload_and_auth(pod_server, tiny_model, monkeypatch: pytest.MonkeyPatch) -> None:
    async with pod_server(api_key="pod-key", max_queue_pairs=8) as base_url:
        gate = hold_batches(tiny_model, monkeypatch)
        try:
            async with Client.for_pod(base_url) as anonymous:
                assert await anonymous.ping() is True  # /ping needs no key
                with pytest.raises(Unauthorized) as refused:
                    await anonymous.run(CLASSIFY)
                assert refused.value.status == 401 and refused.value.code == "unauthorized"
            once = RetryPolicy(max_attempts=1)
            async with Client.for_pod(base_url, api_key="pod-key", retry=once) as client:
                accepted = []
                with pytest.raises(HttpError) as overloaded:  # 6 pairs a job, behind the held model
                    for _ in range(4):
                        accepted.append(await client.run(CLASSIFY))
                assert 1 <= len(accepted) <= 3
                assert overloaded.value.status == 429 and overloaded.value.code == "overloaded"
                assert overloaded.value.retry_after_s is not None and overloaded.value.retry_after_s >= 1
                gate.set()
                for job in accepted:
                    assert (await job.wait(timeout_s=60)).status == "COMPLETED"
        finally:
            gate.set()


# --- against the local RunPod queue, with a real serverless worker -----------------------------------


def start_worker(worker_env: dict[str, str], cwd: Path) -> subprocess.Popen[bytes]:
    env = {**os.environ, **worker_env, "MODEL_NAME": "synthetic:tiny", "DEVICE": "cpu", "WARMUP_MAX_LEN": "16",
           "PYTHONPATH": str(ROOT)}  # fmt: skip
    return subprocess.Popen(
        [sys.executable, "-m", "worker", "serverless"], cwd=cwd, env=env,
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
    )  # fmt: skip


def stop(worker: subprocess.Popen[bytes]) -> None:
    """SIGTERM, then SIGKILL to the worker's whole process group: the SDK's heartbeat runs in a
    child process that outlives a terminated parent."""
    group = worker.pid  # its own session, so its process group has its pid
    with contextlib.suppress(ProcessLookupError):
        os.killpg(group, signal.SIGTERM)
    try:
        worker.wait(timeout=20)
    except subprocess.TimeoutExpired:
        pass
    with contextlib.suppress(ProcessLookupError):
        os.killpg(group, signal.SIGKILL)
    worker.wait()


async def test_runpod_emulator_end_to_end(runpod_emulator, tmp_path: Path, check_job_output) -> None:
    async with runpod_emulator(api_key="rp-key") as emu:
        assert emu.base_url.endswith(f"/v2/{emu.endpoint_id}")
        api_url = emu.base_url.removesuffix(f"/{emu.endpoint_id}")
        async with Client.for_endpoint(emu.endpoint_id, api_key="rp-key", api_url=api_url) as client:
            # no worker yet: a queued job can be cancelled, and runsync's own wait runs out
            queued = await client.run(CLASSIFY)
            assert (await client.cancel(queued.id)).status == "CANCELLED"
            with pytest.raises(JobCancelled):
                await queued.wait(timeout_s=10)
            pending = asyncio.create_task(client.runsync(CLASSIFY, wait_s=1, timeout_s=90))
            await asyncio.sleep(0)
            worker = start_worker(emu.worker_env, tmp_path)
            try:
                with anyio.fail_after(100):
                    synced = await pending  # the wait ran out; runsync went on polling /status
                check_job_output("classify", CLASSIFY, synced.output)
                job = await client.run(CLASSIFY)
                check_job_output("classify", CLASSIFY, (await job.wait(timeout_s=60)).output)
                bad = await client.run({"operation": "classify", "headline": " "})
                with pytest.raises(JobFailed) as failed:
                    await bad.wait(timeout_s=60)
                assert failed.value.error == "invalid_input: headline: must not be blank"
                health = await client.health()
            finally:
                stop(worker)
        async with Client.for_endpoint(emu.endpoint_id, api_key="wrong", api_url=api_url) as intruder:
            with pytest.raises(Unauthorized):
                await intruder.health()
    assert health["jobs"]["completed"] >= 2 and health["jobs"]["failed"] >= 1
