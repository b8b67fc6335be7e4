"""The local RunPod queue: its public API, its worker side as runpod 1.12 calls it, and a real worker."""

from __future__ import annotations

import asyncio
import bisect
import contextlib
import itertools
import json
import os
import re
import shlex
import signal
import socket
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import anyio
import httpx
import pytest

from loadtest.__main__ import main as loadtest_main
from loadtest.emulator import FINAL_STATUSES, RunpodQueue, build_app, worker_env
from loadtest.headlines import headlines

ROOT = Path(__file__).resolve().parents[1]
KEY = "test-key"
POD = "pod-a"
CLASSIFY = {"operation": "classify", "headline": "Apple Declares $0.25 Dividend"}


def emulator_client(
    queue: RunpodQueue, *, api_key: str | None = KEY, long_poll_s: float = 0.05
) -> httpx.AsyncClient:
    """The app in process; empty long-polls are held only ``long_poll_s``."""
    app = build_app(queue, api_key=api_key, long_poll_s=long_poll_s)
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://emulator")


class SdkCalls:
    """The worker-side requests exactly as runpod 1.12 builds them from ``worker_env``.

    rp_job: ``RUNPOD_WEBHOOK_GET_JOB`` with ``$ID`` → the pod id, ``/job-take/`` → ``/job-take-batch/``
    plus ``&batch_size=N`` when more than one is wanted, then ``&job_in_progress=0|1``; the stop
    channel is the job-take URL with ``/job-stop/``. rp_http: ``RUNPOD_WEBHOOK_POST_OUTPUT`` with
    ``$RUNPOD_POD_ID`` and ``$ID`` replaced, ``&isStream=false``, the result's JSON text sent
    form-encoded. Every request carries the bare ``RUNPOD_AI_API_KEY`` as ``Authorization``.
    """

    def __init__(self, client: httpx.AsyncClient, *, pod_id: str = POD, key: str = KEY) -> None:
        self.env = worker_env("http://emulator", "local", key)
        self.client, self.pod_id = client, pod_id
        self.headers = {"Authorization": self.env["RUNPOD_AI_API_KEY"]}
        self.take_url = self.env["RUNPOD_WEBHOOK_GET_JOB"].replace("$ID", pod_id)

    async def take(self, batch_size: int = 1) -> httpx.Response:
        url = self.take_url
        if batch_size > 1:
            url = url.replace("/job-take/", "/job-take-batch/") + f"&batch_size={batch_size}"
        return await self.client.get(url + "&job_in_progress=0", headers=self.headers)

    async def stops(self) -> httpx.Response:
        return await self.client.get(self.take_url.replace("/job-take/", "/job-stop/"), headers=self.headers)

    async def done(self, job_id: str, result: dict[str, Any], *, kind: str = "OUTPUT") -> httpx.Response:
        template = self.env[f"RUNPOD_WEBHOOK_POST_{kind}"].replace("$RUNPOD_POD_ID", self.pod_id)
        return await self.client.post(
            template.replace("$ID", job_id) + "&isStream=false",
            content=json.dumps(result, ensure_ascii=False),
            headers={**self.headers, "Content-Type": "application/x-www-form-urlencoded"},
        )


async def submit(client: httpx.AsyncClient, job_input: Any = CLASSIFY, **body: Any) -> str:
    response = await client.post("/v2/local/run", json={"input": job_input, **body}, headers=bearer())
    assert response.status_code == 200, response.text
    assert response.json()["status"] == "IN_QUEUE"
    return response.json()["id"]


async def status(client: httpx.AsyncClient, job_id: str) -> dict[str, Any]:
    response = await client.get(f"/v2/local/status/{job_id}", headers=bearer())
    assert response.status_code == 200, response.text
    return response.json()


def bearer(key: str = KEY) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


# --- the public API and the worker side, in process ------------------------------------------------


async def test_a_job_goes_from_run_through_a_worker_to_completed() -> None:
    queue = RunpodQueue()
    async with emulator_client(queue) as client:
        sdk = SdkCalls(client)
        job_id = await submit(client)
        assert await status(client, job_id) == {"id": job_id, "status": "IN_QUEUE"}
        assert (await client.get("/v2/local/health", headers=bearer())).json()["jobs"]["inQueue"] == 1

        taken = await sdk.take(batch_size=4)
        assert taken.status_code == 200 and taken.headers["content-type"] == "application/json"
        assert taken.json() == [{"id": job_id, "input": CLASSIFY}]
        running = await status(client, job_id)
        assert running["status"] == "IN_PROGRESS" and running["workerId"] == POD
        assert running["delayTime"] >= 0 and "executionTime" not in running
        health = (await client.get("/v2/local/health", headers=bearer())).json()
        assert health["jobs"]["inProgress"] == 1 and health["workers"] == {"idle": 0, "running": 1}

        assert (await sdk.done(job_id, {"output": {"is_opinion": False}})).status_code == 200
        done = await status(client, job_id)
        assert done["status"] == "COMPLETED" and done["output"] == {"is_opinion": False}
        assert done["executionTime"] >= 0 and "error" not in done
        health = (await client.get("/v2/local/health", headers=bearer())).json()
        assert health == {
            "jobs": {"completed": 1, "failed": 0, "inProgress": 0, "inQueue": 0, "retried": 0},
            "workers": {"idle": 1, "running": 0},
        }


async def test_single_job_take_is_fifo_one_object_and_204_when_empty() -> None:
    queue = RunpodQueue()
    async with emulator_client(queue) as client:
        sdk = SdkCalls(client)
        first, second = await submit(client, {"n": 1}), await submit(client, {"n": 2})
        assert (await sdk.take()).json() == {"id": first, "input": {"n": 1}}
        assert (await sdk.take(batch_size=8)).json() == [{"id": second, "input": {"n": 2}}]
        empty = await sdk.take(batch_size=8)  # held for long_poll_s, then nothing
        assert empty.status_code == 204 and empty.content == b""
        assert (await sdk.take()).status_code == 204
        assert (await sdk.stops()).status_code == 204


async def test_an_error_result_fails_the_job_and_retry_queues_it_again() -> None:
    queue = RunpodQueue()
    async with emulator_client(queue) as client:
        sdk = SdkCalls(client)
        job_id = await submit(client, {"operation": "classify"})
        await sdk.take()
        await sdk.done(job_id, {"error": "invalid_input: headline: missing required field"})
        failed = await status(client, job_id)
        assert failed["status"] == "FAILED"
        assert failed["error"] == "invalid_input: headline: missing required field" and "output" not in failed

        retried = await client.post(f"/v2/local/retry/{job_id}", headers=bearer())
        assert retried.json() == {"id": job_id, "status": "IN_QUEUE"}
        assert (await sdk.take()).json()["id"] == job_id
        await sdk.done(job_id, {"output": [1, 2]})
        assert (await status(client, job_id))["output"] == [1, 2]
        again = await client.post(f"/v2/local/retry/{job_id}", headers=bearer())
        assert again.status_code == 400 and "COMPLETED" in again.json()["error"]
        assert (await client.get("/v2/local/health", headers=bearer())).json()["jobs"]["retried"] == 1


async def test_a_cancelled_queued_job_is_never_handed_out() -> None:
    queue = RunpodQueue()
    async with emulator_client(queue) as client:
        sdk = SdkCalls(client)
        cancelled, kept = await submit(client, {"n": 1}), await submit(client, {"n": 2})
        response = await client.post(f"/v2/local/cancel/{cancelled}", headers=bearer())
        assert response.json() == {"id": cancelled, "status": "CANCELLED"}
        assert [job["id"] for job in (await sdk.take(batch_size=8)).json()] == [kept]
        assert (await sdk.stops()).status_code == 204  # nobody held it: nothing to stop
        assert (await status(client, cancelled))["status"] == "CANCELLED"


async def test_cancelling_a_running_job_stops_it_on_its_worker_and_drops_its_late_result() -> None:
    queue = RunpodQueue()
    async with emulator_client(queue) as client:
        holder, other = SdkCalls(client), SdkCalls(client, pod_id="pod-b")
        job_id = await submit(client)
        await holder.take()
        response = await client.post(f"/v2/local/cancel/{job_id}", headers=bearer())
        assert response.json() == {"id": job_id, "status": "CANCELLED"}

        assert (await other.stops()).status_code == 204
        stop = await holder.stops()
        assert stop.status_code == 200 and stop.json() == {"jobsToStop": [job_id]}
        assert (await holder.stops()).status_code == 204  # delivered once

        assert (await holder.done(job_id, {"output": {"late": True}})).status_code == 200
        late = await status(client, job_id)
        assert late["status"] == "CANCELLED" and "output" not in late
        again = await client.post(f"/v2/local/cancel/{job_id}", headers=bearer())
        assert again.json() == {"id": job_id, "status": "CANCELLED"}
    assert queue.stats.stops_delivered == 1 and queue.stats.results_discarded == 1


@pytest.mark.parametrize("per_job", [True, False])
async def test_a_job_past_its_execution_timeout_times_out_and_is_stopped(per_job: bool) -> None:
    queue = RunpodQueue(execution_timeout_s=None if per_job else 0.001)
    async with emulator_client(queue) as client:
        sdk = SdkCalls(client)
        body = {"policy": {"executionTimeout": 1}} if per_job else {}
        job_id = await submit(client, **body)
        await sdk.take()
        job = queue.get(job_id)
        assert job is not None
        await queue.wait_finished(job, 10)
        assert (await status(client, job_id))["status"] == "TIMED_OUT"
        assert (await sdk.stops()).json() == {"jobsToStop": [job_id]}
        await sdk.done(job_id, {"output": "too late"})
        assert (await status(client, job_id))["status"] == "TIMED_OUT"
        assert (await client.post(f"/v2/local/retry/{job_id}", headers=bearer())).json()["status"] == "IN_QUEUE"


@pytest.mark.parametrize(
    ("headers", "allowed"),
    [({}, False), (bearer("wrong"), False), ({"Authorization": "wrong"}, False),
     (bearer(), True), ({"Authorization": KEY}, True), ({"Authorization": f"bearer  {KEY}"}, True)],
)
async def test_every_route_needs_the_key(headers: dict[str, str], allowed: bool) -> None:
    queue = RunpodQueue()
    async with emulator_client(queue) as client:
        env = worker_env("http://emulator", "local", KEY)
        take_url = env["RUNPOD_WEBHOOK_GET_JOB"].replace("$ID", POD) + "&job_in_progress=0"
        calls = [
            client.post("/v2/local/run", json={"input": {}}, headers=headers),
            client.get("/v2/local/health", headers=headers),
            client.get("/health", headers=headers),
            client.get(take_url, headers=headers),
            client.get(env["RUNPOD_WEBHOOK_PING"].replace("$RUNPOD_POD_ID", POD), headers=headers),
        ]
        for call in calls:
            response = await call
            assert (response.status_code != 401) is allowed, response.text


async def test_without_a_key_no_header_is_needed() -> None:
    async with emulator_client(RunpodQueue(), api_key=None) as client:
        assert (await client.post("/run", json={"input": {}})).status_code == 200
        assert (await client.get("/v2/local/health")).status_code == 200


async def test_routes_without_the_prefix_and_the_errors_callers_see() -> None:
    queue = RunpodQueue()
    async with emulator_client(queue) as client:
        bare = await client.post("/run", json={"input": {"n": 1}}, headers=bearer())
        job_id = bare.json()["id"]
        assert (await client.post(f"/status/{job_id}", headers=bearer())).json()["status"] == "IN_QUEUE"
        assert (await client.post(f"/cancel/{job_id}", headers=bearer())).json()["status"] == "CANCELLED"
        assert (await client.get("/health", headers=bearer())).json()["jobs"]["inQueue"] == 0

        wrong_endpoint = await client.post("/v2/other/run", json={"input": {}}, headers=bearer())
        assert wrong_endpoint.status_code == 404 and "'local'" in wrong_endpoint.json()["error"]
        for path in ("/v2/local/status/nope", "/v2/local/cancel/nope", "/v2/local/stream/nope"):
            method = client.get if "status" in path else client.post
            response = await method(path, headers=bearer())
            assert response.status_code == 404 and response.json() == {"error": "request does not exist"}
        for body in (b"not json", b"[1]", b'{"inputs": {}}'):
            response = await client.post("/v2/local/run", content=body, headers=bearer())
            assert response.status_code == 400, body
        bad_policy = await client.post("/v2/local/run", json={"input": {}, "policy": {"executionTimeout": -5}},
                                       headers=bearer())
        assert bad_policy.status_code == 400
        sdk = SdkCalls(client)
        assert (await sdk.done("nope", {"output": 1})).status_code == 404
        bad_result = await sdk.client.post(
            sdk.env["RUNPOD_WEBHOOK_POST_OUTPUT"].replace("$RUNPOD_POD_ID", POD).replace("$ID", job_id),
            content=b"output=1", headers=sdk.headers,
        )
        assert bad_result.status_code == 400


async def test_runsync_answers_once_a_worker_has_finished_the_job() -> None:
    queue = RunpodQueue()
    async with emulator_client(queue, long_poll_s=5) as client:
        sdk = SdkCalls(client)
        runsync = asyncio.create_task(
            client.post("/v2/local/runsync?wait=60000", json={"input": {"n": 7}}, headers=bearer())
        )
        with anyio.fail_after(30):
            job = (await sdk.take()).json()
        assert job["id"].startswith("sync-") and job["input"] == {"n": 7}
        await sdk.done(job["id"], {"output": {"n": 7}})
        with anyio.fail_after(30):
            body = (await runsync).json()
    assert body["id"] == job["id"] and body["status"] == "COMPLETED" and body["output"] == {"n": 7}
    assert {"delayTime", "executionTime", "workerId"} <= set(body)


async def test_finished_jobs_are_kept_up_to_the_bound_and_purge_empties_the_queue() -> None:
    queue = RunpodQueue(max_finished=2)
    async with emulator_client(queue) as client:
        sdk = SdkCalls(client)
        ids = [await submit(client, {"n": n}) for n in range(3)]
        for job in (await sdk.take(batch_size=3)).json():
            await sdk.done(job["id"], {"output": job["input"]["n"]})
        assert (await client.get(f"/v2/local/status/{ids[0]}", headers=bearer())).status_code == 404
        assert [(await status(client, job_id))["output"] for job_id in ids[1:]] == [1, 2]

        queued = [await submit(client) for _ in range(3)]
        purge = await client.post("/v2/local/purge-queue", headers=bearer())
        assert purge.json() == {"removed": 3, "status": "completed"}
        assert (await sdk.take()).status_code == 204
        assert (await client.get(f"/v2/local/status/{queued[0]}", headers=bearer())).status_code == 404


async def test_streamed_outputs_are_handed_out_once() -> None:
    queue = RunpodQueue()
    async with emulator_client(queue) as client:
        sdk = SdkCalls(client)
        job_id = await submit(client)
        await sdk.take()
        for part in ("a", "b"):
            assert (await sdk.done(job_id, {"output": part}, kind="STREAM")).status_code == 200
        first = (await client.post(f"/v2/local/stream/{job_id}", headers=bearer())).json()
        assert first == {"id": job_id, "status": "IN_PROGRESS", "stream": [{"output": "a"}, {"output": "b"}]}
        assert (await client.get(f"/v2/local/stream/{job_id}", headers=bearer())).json()["stream"] == []


def test_print_env_prints_shell_exports_a_worker_can_eval(capsys) -> None:
    assert loadtest_main(["emulate-runpod", "--print-env", "--port", "9123", "--api-key", "k 1"]) == 0
    lines = [line for line in capsys.readouterr().out.splitlines() if not line.startswith("#")]
    env = dict(shlex.split(line.removeprefix("export "))[0].split("=", 1) for line in lines)
    assert env == worker_env("http://127.0.0.1:9123", "local", "k 1")
    assert env["RUNPOD_WEBHOOK_GET_JOB"] == "http://127.0.0.1:9123/v2/local/job-take/$ID?gpu=emulated"
    assert env["RUNPOD_WEBHOOK_POST_OUTPUT"].endswith("/job-done/$RUNPOD_POD_ID/$ID?gpu=emulated")
    assert env["RUNPOD_AI_API_KEY"] == "k 1" and env["RUNPOD_POD_ID"]


def test_binding_beyond_loopback_needs_a_key(capsys) -> None:
    assert loadtest_main(["emulate-runpod", "--host", "0.0.0.0", "--api-key", ""]) == 2
    assert "--api-key" in capsys.readouterr().err


# --- the SDK's own worker loop, in process, against a loopback emulator -----------------------------


async def test_the_sdk_worker_loop_takes_runs_reports_and_stops_jobs(runpod_emulator, monkeypatch) -> None:
    """runpod's JobScaler (batch job-take, job-done, the job-stop channel) and Heartbeat, unmodified.

    The SDK reads its URLs into module constants at import, so those are set here, the way its
    import would set them from ``emu.worker_env``.
    """
    from runpod.serverless.modules import rp_http, rp_job
    from runpod.serverless.modules.rp_logger import RunPodLogger
    from runpod.serverless.modules.rp_ping import Heartbeat
    from runpod.serverless.modules.rp_scale import JobScaler

    held_started, held_cancelled = asyncio.Event(), asyncio.Event()

    async def handler(job: dict[str, Any]) -> dict[str, Any]:
        n = job["input"]["n"]
        if n == "held":
            held_started.set()
            try:
                await asyncio.Event().wait()  # only a stop ends it
            except asyncio.CancelledError:
                held_cancelled.set()
                raise
        return {"error": "invalid_input: n: odd"} if n % 2 else {"n": n}

    monkeypatch.setattr(RunPodLogger(), "level", "ERROR")
    async with runpod_emulator(api_key=KEY, long_poll_s=0.5) as emu:
        env = emu.worker_env
        monkeypatch.setenv("RUNPOD_AI_API_KEY", env["RUNPOD_AI_API_KEY"])
        monkeypatch.setenv("RUNPOD_WEBHOOK_PING", env["RUNPOD_WEBHOOK_PING"])
        monkeypatch.setattr(rp_job, "JOB_GET_URL", env["RUNPOD_WEBHOOK_GET_JOB"].replace("$ID", "sdk-pod"))
        for name, kind in (("JOB_DONE_URL", "OUTPUT"), ("JOB_STREAM_URL", "STREAM")):
            monkeypatch.setattr(rp_http, name, env[f"RUNPOD_WEBHOOK_POST_{kind}"].replace("$RUNPOD_POD_ID", "sdk-pod"))
        scaler = JobScaler({"handler": handler, "concurrency_modifier": lambda current: 8})
        async with httpx.AsyncClient(base_url=emu.base_url, headers=emu.headers) as client:
            ids = [(await client.post("/run", json={"input": {"n": n}})).json()["id"] for n in range(6)]
            held = (await client.post("/run", json={"input": {"n": "held"}})).json()["id"]
            worker = asyncio.create_task(scaler.run())
            try:
                with anyio.fail_after(60):
                    await held_started.wait()
                    assert (await client.post(f"/cancel/{held}")).json()["status"] == "CANCELLED"
                    await held_cancelled.wait()  # the stop channel reached the handler's task
                    for job_id in ids:
                        job = emu.queue.get(job_id)
                        assert job is not None
                        await emu.queue.wait_finished(job, 60)
                heartbeat = Heartbeat()
                try:
                    await anyio.to_thread.run_sync(heartbeat._send_ping)
                finally:
                    heartbeat._session.close()
                health = (await client.get("/health")).json()
                results = [(await client.get(f"/status/{job_id}")).json() for job_id in [*ids, held]]
            finally:
                scaler.kill_worker()
                emu.queue.close()
                with anyio.fail_after(20):
                    await worker
    for n, result in enumerate(results[:-1]):
        if n % 2:
            assert result["status"] == "FAILED" and result["error"] == "invalid_input: n: odd"
        else:
            assert result["status"] == "COMPLETED" and result["output"] == {"n": n}
        assert result["workerId"] == "sdk-pod"
    assert results[-1]["status"] == "CANCELLED" and "output" not in results[-1]
    assert emu.queue.stats.stops_delivered == 1 and emu.queue.stats.results_discarded == 0
    assert health["jobs"]["completed"] == 3 and health["jobs"]["failed"] == 3
    assert health["workers"]["idle"] + health["workers"]["running"] == 2  # sdk-pod, and the ping's uuid


# --- end to end: the real `python -m worker serverless` in a subprocess ----------------------------


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextlib.asynccontextmanager
async def serverless_worker(
    env: dict[str, str], log_path: Path, cwd: Path, args: tuple[str, ...] = ()
) -> AsyncIterator[None]:
    """``python -m worker serverless [args]`` in its own process group (the SDK forks a heartbeat
    process; a model process runs in a group of its own and stops with the worker).

    Stopped with SIGTERM to the group (the SDK's graceful shutdown), SIGKILL if that takes too long.
    """
    with log_path.open("wb") as log_file:
        process = subprocess.Popen(
            [sys.executable, "-m", "worker", "serverless", *args],
            cwd=cwd, env=env, stdout=log_file, stderr=subprocess.STDOUT, start_new_session=True,
        )
    try:
        yield
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGTERM)
        try:
            await anyio.to_thread.run_sync(process.wait, 30)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            await anyio.to_thread.run_sync(process.wait, 30)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)  # a heartbeat process left behind


async def wait_all_final(client: httpx.AsyncClient, ids: list[str], timeout_s: float) -> dict[str, dict]:
    """Poll /status until every job is final (bounded in rounds and in time)."""
    final: dict[str, dict] = {}
    with anyio.fail_after(timeout_s):
        for _ in range(5000):
            pending = [job_id for job_id in ids if job_id not in final]
            if not pending:
                return final
            bodies = await asyncio.gather(*(client.get(f"/status/{job_id}") for job_id in pending))
            for body in (response.json() for response in bodies):
                if body["status"] in FINAL_STATUSES:
                    final[body["id"]] = body
            await asyncio.sleep(0.05)
    raise AssertionError(f"{len(ids) - len(final)} jobs never finished")


async def scrape(metrics_url: str, pattern: str) -> float | None:
    """One sample of the worker's Prometheus text, or None while it is not up or not there."""
    async with httpx.AsyncClient() as client:
        try:
            text = (await client.get(metrics_url)).text
        except httpx.TransportError:
            return None
    match = re.search(rf"^{pattern} (\S+)$", text, re.MULTILINE)
    return float(match.group(1)) if match else None


async def wait_metric(metrics_url: str, pattern: str, at_least: float, timeout_s: float) -> None:
    with anyio.fail_after(timeout_s):
        for _ in range(5000):
            value = await scrape(metrics_url, pattern)
            if value is not None and value >= at_least:
                return
            await asyncio.sleep(0.02)
    raise AssertionError(f"{pattern} never reached {at_least}")


async def test_the_real_serverless_worker_drains_a_burst_and_honours_a_cancel(runpod_emulator, tmp_path) -> None:
    texts = headlines()
    metrics_port = free_port()
    metrics_url = f"http://127.0.0.1:{metrics_port}/metrics"
    async with runpod_emulator(api_key=KEY, long_poll_s=1.0) as emu:
        env = {
            **{k: v for k, v in os.environ.items() if not k.startswith("RUNPOD_")},
            **emu.worker_env,
            "MODEL_NAME": "synthetic:tiny", "WARMUP_MAX_LEN": "16", "MAX_CONCURRENCY": "64",
            "METRICS_PORT": str(metrics_port), "PYTHONPATH": str(ROOT),
        }
        log_path = tmp_path / "worker.log"
        async with (
            httpx.AsyncClient(base_url=emu.base_url, headers=emu.headers, timeout=30) as client,
            serverless_worker(env, log_path, tmp_path),
        ):
            burst = [texts[i % len(texts)] for i in range(200)]
            submitted = await asyncio.gather(
                *(client.post("/run", json={"input": {"operation": "classify", "headline": h}}) for h in burst)
            )
            ids = [response.json()["id"] for response in submitted]
            final = await wait_all_final(client, ids, timeout_s=90)

            # A cancel while the handler runs: fillers keep the engine busy so the victim's pairs wait.
            # Their headlines are long (one pair fills a CPU batch), so the fillers take seconds,
            # not the fraction of a second short ones did: the victim is surely taken meanwhile.
            long = " ".join(texts)[:1900]
            batch = {"operation": "classify_batch", "headlines": [f"{i}: {long}" for i in range(128)]}
            fillers = [(await client.post("/run", json={"input": batch})).json()["id"] for _ in range(3)]
            victim = (await client.post("/run", json={"input": batch})).json()["id"]
            await wait_metric(metrics_url, "nli_inflight_jobs", len(fillers) + 1, timeout_s=30)
            cancel = await client.post(f"/cancel/{victim}")
            await wait_metric(
                metrics_url, 'nli_jobs_total{operation="classify_batch",status="cancelled"}', 1, timeout_s=30
            )
            after = await wait_all_final(client, [*fillers, victim], timeout_s=60)

    assert all(final[job_id]["status"] == "COMPLETED" for job_id in ids), [b for b in final.values()][:3]
    for job_id, headline in zip(ids, burst):
        output = final[job_id]["output"]
        assert output["headline"] == headline and isinstance(output["is_opinion"], bool)
    assert cancel.json() == {"id": victim, "status": "CANCELLED"}
    assert after[victim]["status"] == "CANCELLED" and "output" not in after[victim]
    assert all(after[job_id]["status"] == "COMPLETED" for job_id in fillers)
    assert emu.queue.stats.stops_delivered == 1

    records = [json.loads(line) for line in log_path.read_text().splitlines() if line.startswith("{")]
    batches = [r for r in records if r.get("event") == "batch"]
    burst_pairs = list(itertools.accumulate(b["pairs"] for b in batches))  # the burst ran first, alone
    burst_batches = batches[: bisect.bisect_left(burst_pairs, 200 * 5) + 1]
    assert sum(b["pairs"] for b in burst_batches) == 200 * 5
    assert max(b["jobs"] for b in burst_batches) > 1, "no batch held pairs of more than one job"
    assert len(burst_batches) < 200  # fewer forward passes than jobs


async def test_a_flood_of_big_jobs_all_complete_on_one_worker_none_failed_for_room(runpod_emulator, tmp_path) -> None:
    # DEPLOYMENT.md's recommended shape, classify_batch of 128, far past what the queue holds at
    # once (MAX_QUEUE_PAIRS lowered so the flood is a CI-sized one): RunPod does not retry a job
    # a worker took, so every taken job must wait for room and complete, none fail `overloaded`.
    texts = headlines()
    async with runpod_emulator(api_key=KEY, long_poll_s=1.0) as emu:
        env = {
            **{k: v for k, v in os.environ.items() if not k.startswith("RUNPOD_")},
            **emu.worker_env,
            "MODEL_NAME": "synthetic:tiny", "WARMUP_MAX_LEN": "16", "MAX_QUEUE_PAIRS": "1500",
            "PYTHONPATH": str(ROOT),
        }
        jobs = [
            {"operation": "classify_batch", "headlines": [f"{j} {texts[(j + i) % len(texts)]}" for i in range(128)]}
            for j in range(12)
        ]  # 640 pairs each: two fit in the queue at once, the other ten are held
        async with (
            httpx.AsyncClient(base_url=emu.base_url, headers=emu.headers, timeout=30) as client,
            serverless_worker(env, tmp_path / "worker.log", tmp_path),
        ):
            submitted = await asyncio.gather(*(client.post("/run", json={"input": job}) for job in jobs))
            ids = [response.json()["id"] for response in submitted]
            final = await wait_all_final(client, ids, timeout_s=180)
    statuses = [final[job_id]["status"] for job_id in ids]
    assert statuses == ["COMPLETED"] * len(jobs), [final[i].get("error") for i in ids if final[i]["status"] != "COMPLETED"]
    assert all(len(final[job_id]["output"]["results"]) == 128 for job_id in ids)
    assert emu.queue.stats.taken == len(jobs)


async def test_a_model_process_killed_mid_burst_costs_the_jobs_it_held_a_rerun_not_their_end(
    runpod_emulator, tmp_path
) -> None:
    # `serverless --model-process`: the model process SIGKILLed while it holds jobs. RunPod does
    # not retry a job a worker took and failed, so each one is run again on the model process
    # started in its place; one scrape of the worker shows both processes' series. Then SIGTERM
    # (RunPod scaling the worker down) while it holds more: it finishes them before it stops.
    texts = headlines()
    metrics_port = free_port()
    metrics_url = f"http://127.0.0.1:{metrics_port}/metrics"
    long = " ".join(texts)[:1900]  # one pair fills a CPU batch: the jobs take seconds, not milliseconds
    jobs = [{"operation": "classify_batch", "headlines": [f"{j}.{i}: {long}" for i in range(24)]} for j in range(6)]
    async with runpod_emulator(api_key=KEY, long_poll_s=1.0) as emu:
        env = {
            **{k: v for k, v in os.environ.items() if not k.startswith("RUNPOD_")},
            **emu.worker_env,
            "MODEL_NAME": "synthetic:tiny", "WARMUP_MAX_LEN": "16", "METRICS_PORT": str(metrics_port),
            "PYTHONPATH": str(ROOT),
        }  # fmt: skip
        log_path = tmp_path / "worker.log"
        async with httpx.AsyncClient(base_url=emu.base_url, headers=emu.headers, timeout=30) as client:
            async with serverless_worker(env, log_path, tmp_path, ("--model-process",)):
                ids = [(await client.post("/run", json={"input": job})).json()["id"] for job in jobs]
                await wait_metric(metrics_url, 'nli_inflight_jobs{process="model"}', len(jobs), timeout_s=60)
                started = [json.loads(line) for line in log_path.read_text().splitlines() if "worker_process_started" in line]
                os.kill(started[0]["pid"], signal.SIGKILL)
                final = await wait_all_final(client, ids, timeout_s=180)
                await wait_metric(metrics_url, 'nli_model_ready{process="model"}', 1, timeout_s=30)
                async with httpx.AsyncClient() as plain:
                    scraped = (await plain.get(metrics_url)).text
                last = [(await client.post("/run", json={"input": jobs[0]})).json()["id"]]
                await wait_metric(metrics_url, 'nli_inflight_jobs{process="model"}', 1, timeout_s=60)
            # serverless_worker has sent SIGTERM and waited for the worker to exit
            drained = await wait_all_final(client, last, timeout_s=10)

    assert [final[job_id]["status"] for job_id in ids] == ["COMPLETED"] * len(jobs), [final[i].get("error") for i in ids]
    assert all(len(final[job_id]["output"]["results"]) == 24 for job_id in ids)
    counted = [line for line in scraped.splitlines() if line.startswith("nli_jobs_total{")]
    assert counted == [f'nli_jobs_total{{operation="classify_batch",process="front-0",status="completed"}} {len(jobs)}.0']
    records = [json.loads(line) for line in log_path.read_text().splitlines() if line.startswith("{")]
    gone = [r for r in records if r["event"] == "model_process_gone"]
    assert len(gone) == 1 and gone[0]["failed_jobs"] == 0 and gone[0]["held_jobs"] == len(jobs)
    assert [r["process"] for r in records if r["event"] == "worker_process_died"] == ["model"]
    assert [drained[job_id]["status"] for job_id in last] == ["COMPLETED"] * len(last)
    events = [r["event"] for r in records]
    assert events.index("model_process_stopping") > max(i for i, r in enumerate(records) if r.get("logger") == "worker.engine")
    assert emu.queue.stats.taken == len(jobs) + len(last)
