"""The pod server for real: uvicorn on a loopback port, concurrent clients, and the CLI."""

from __future__ import annotations

import signal
from pathlib import Path

import anyio
import anyio.abc
import httpx
import pytest
from held_model import held_batches
from pod_subprocess import job_input, pod_process, poll_until_done

from schemas.trace import read_trace


async def test_a_burst_of_300_jobs_and_runsync_on_a_real_server(pod_server, example_jobs, check_job_output) -> None:
    jobs = [job_input(example_jobs, i) for i in range(300)]
    ids: list[str | None] = [None] * len(jobs)

    async def submit(client: httpx.AsyncClient, i: int) -> None:
        response = await client.post("/run", json={"input": jobs[i][1]})
        assert response.status_code == 200, response.text
        assert response.json()["status"] == "IN_QUEUE"
        ids[i] = response.json()["id"]

    limits = httpx.Limits(max_connections=100)
    async with pod_server() as base_url, httpx.AsyncClient(base_url=base_url, limits=limits, timeout=30) as client:
        async with anyio.create_task_group() as tg:
            for i in range(len(jobs)):
                tg.start_soon(submit, client, i)
        assert len(set(ids)) == len(jobs)
        results = await poll_until_done(client, ids)  # type: ignore[arg-type]
        sync = (await client.post("/runsync?wait=30000", json={"input": jobs[0][1]})).json()
        health = (await client.get("/health")).json()
        metrics = (await client.get("/metrics")).text
    for (operation, job), job_id in zip(jobs, ids):
        assert results[job_id]["status"] == "COMPLETED", results[job_id]
        check_job_output(operation, job, results[job_id]["output"])
    assert sync["status"] == "COMPLETED"
    check_job_output(jobs[0][0], jobs[0][1], sync["output"])
    assert health["jobs"]["completed"] == len(jobs) + 1 and health["queue"]["pairs"] == 0
    completed = sum(
        float(line.rsplit(" ", 1)[1]) for line in metrics.splitlines()
        if line.startswith("nli_jobs_total{") and 'status="completed"' in line
    )  # fmt: skip
    batches = float(next(line for line in metrics.splitlines() if line.startswith("nli_batch_pairs_count")).split()[1])
    assert completed == len(jobs) + 1
    assert batches < len(jobs)  # the jobs' pairs shared batches


async def _get_ping(stream: anyio.abc.SocketStream) -> bytes:
    """One ``GET /ping`` on an open connection; the whole response, or b"" if the server closed it."""
    await stream.send(b"GET /ping HTTP/1.1\r\nHost: test\r\n\r\n")
    response = b""
    with anyio.fail_after(10):
        while not (b"\r\n\r\n" in response and response.endswith(b"}")):
            try:
                response += await stream.receive()
            except (anyio.EndOfStream, anyio.BrokenResourceError):
                return response
    return response


async def test_an_idle_keep_alive_connection_outlives_the_clients_pool(pod_server) -> None:
    # A client pool (httpx, aiohttp) reuses a connection idle for up to 5-15 s. Had the server
    # closed it first (uvicorn's default is 5 s), a /run sent on it that moment would be reset.
    async with pod_server() as base_url:
        host, port = base_url.removeprefix("http://").split(":")
        async with await anyio.connect_tcp(host, int(port)) as stream:
            assert (await _get_ping(stream)).startswith(b"HTTP/1.1 200")
            await anyio.sleep(6)  # idle longer than httpx's pool keeps a connection
            assert (await _get_ping(stream)).startswith(b"HTTP/1.1 200")


async def test_keep_alive_s_sets_how_long_an_idle_connection_stays_open(pod_server) -> None:
    async with pod_server(keep_alive_s=0.2) as base_url:
        host, port = base_url.removeprefix("http://").split(":")
        async with await anyio.connect_tcp(host, int(port)) as stream:
            assert (await _get_ping(stream)).startswith(b"HTTP/1.1 200")
            with anyio.fail_after(10):
                with pytest.raises((anyio.EndOfStream, anyio.BrokenResourceError)):
                    await stream.receive()  # the server closes the idle connection


async def test_cancel_and_overload_on_a_real_server(pod_server, tiny_model, monkeypatch) -> None:
    # One pair a batch: while the model holds one pair of the first job and the next waits
    # collated, its other three stay queued, so the queue (8 pairs) has room for 5 at most.
    def nli(pairs: int) -> dict:
        return {"input": {"operation": "nli", "pairs": [["premise", "hypothesis"]] * pairs}}

    burst: list[httpx.Response] = []
    async with pod_server(max_batch_pairs=1, max_queue_pairs=8) as base_url, httpx.AsyncClient(
        base_url=base_url, timeout=30
    ) as client:
        with held_batches(tiny_model, monkeypatch) as (entered, release):
            first = (await client.post("/run", json=nli(5))).json()["id"]
            await anyio.to_thread.run_sync(entered.wait, 30)
            victim = (await client.post("/run", json=nli(3))).json()["id"]
            cancelled = (await client.post(f"/cancel/{victim}")).json()

            async def submit() -> None:
                burst.append(await client.post("/run", json=nli(5)))

            async with anyio.create_task_group() as tg:
                for _ in range(10):
                    tg.start_soon(submit)
            admitted = [r.json()["id"] for r in burst if r.status_code == 200]
            release.set()
            results = await poll_until_done(client, [first, victim, *admitted])
    assert cancelled == {"id": victim, "status": "CANCELLED"} and results[victim]["status"] == "CANCELLED"
    refused = [r for r in burst if r.status_code == 429]
    assert len(admitted) <= 1 and len(refused) == len(burst) - len(admitted)  # the victim's room was freed
    for response in refused:
        assert response.headers["retry-after"] == "1"
        assert response.json()["error"].startswith("overloaded: queue full")
    for job_id in (first, *admitted):
        assert results[job_id]["status"] == "COMPLETED" and len(results[job_id]["output"]["results"]) == 5


# ---- the command: python -m worker pod ------------------------------------------------------------------


async def test_the_pod_command_serves_with_a_key_records_and_stops_on_sigterm(tmp_path: Path) -> None:
    trace = tmp_path / "recorded.jsonl"
    lines: list[dict] = []
    with anyio.fail_after(90):
        async with pod_process(tmp_path, lines, {"API_KEY": "k3y"}, "--record", str(trace)) as (process, reader, client):
            headers = {"Authorization": "Bearer k3y"}
            job = {"operation": "classify", "headline": "Apple Declares $0.25 Dividend"}
            unauthorised = await client.post("/runsync", json={"input": job})
            done = (await client.post("/runsync", json={"input": job}, headers=headers)).json()
            process.send_signal(signal.SIGTERM)
            await reader.until(lambda line: line["event"] == "pod_stopped", lines)
            returncode = await process.wait()
    assert returncode == 0  # a graceful shutdown on SIGTERM
    assert unauthorised.status_code == 401
    assert done["status"] == "COMPLETED" and done["output"]["headline"] == job["headline"]
    events = {line["event"] for line in lines}
    assert {"engine_started", "engine_ready", "batch", "job_ended", "pod_stopped"} <= events
    ended = next(line for line in lines if line["event"] == "job_ended")
    assert ended["job_id"] == done["id"] and ended["operation"] == "classify" and ended["level"] == "info"
    assert [recorded.input for recorded in read_trace(trace).jobs] == [job]


async def test_sigterm_mid_burst_drains_the_jobs_in_flight_then_exits_0(tmp_path: Path) -> None:
    # A burst that takes the CPU model seconds; SIGTERM right after it is accepted. The pod must
    # refuse new work at once (/ping and /run 503, Retry-After), finish every job it accepted,
    # keep their results readable, and exit 0.
    long = "Apple Declares A Special Dividend And Raises Its Guidance For The Full Year " * 6
    burst = [{"operation": "classify_batch", "headlines": [f"{j}.{i} {long}" for i in range(32)]} for j in range(10)]
    lines: list[dict] = []
    with anyio.fail_after(150):
        async with pod_process(tmp_path, lines, {"DRAIN_TIMEOUT_S": "120"}) as (process, reader, client):
            ids = [(await client.post("/run", json={"input": job})).json()["id"] for job in burst]
            process.send_signal(signal.SIGTERM)
            await reader.until(lambda line: line["event"] == "pod_draining", lines)
            ping = await client.get("/ping")
            refused = await client.post("/run", json={"input": burst[0]})
            results = await poll_until_done(client, ids)
            await reader.until(lambda line: line["event"] == "pod_stopped", lines)
            returncode = await process.wait()
    draining = next(line for line in lines if line["event"] == "pod_draining")
    assert draining["jobs_in_flight"] > 0, "the burst was still running when SIGTERM came"
    assert ping.status_code == 503
    assert refused.status_code == 503 and refused.headers["retry-after"] == "1"
    assert refused.json()["error"] == "unavailable: the server is shutting down"
    assert [results[job_id]["status"] for job_id in ids] == ["COMPLETED"] * len(ids)
    assert all(len(results[job_id]["output"]["results"]) == 32 for job_id in ids)
    assert returncode == 0


# ---- RunPod parity: the SDK's own client, the /v2 prefix, the load balancer's ports -----------------


async def test_the_runpod_sdks_endpoint_client_drives_the_pod(pod_server, monkeypatch) -> None:
    # A trading pipeline written against a RunPod endpoint with runpod.Endpoint: only the base
    # URL changes (RUNPOD_ENDPOINT_BASE_URL, which the SDK reads at import; set here directly).
    import runpod

    job = {"operation": "classify", "headline": "Apple Declares $0.25 Dividend", "company": "Apple"}
    async with pod_server(api_key="k3y") as base_url:
        monkeypatch.setattr(runpod, "endpoint_url_base", f"{base_url}/v2")

        def as_a_caller_would() -> tuple:
            endpoint = runpod.Endpoint("any-endpoint-id", api_key="k3y")
            submitted = endpoint.run(job)
            output = submitted.output(timeout=60)
            status = submitted.status()
            synced = endpoint.run_sync({"input": job}, timeout=60)
            cancelled = endpoint.run({"input": job}).cancel()
            return submitted.job_id, output, status, synced, cancelled, endpoint.health(), endpoint.purge_queue()

        job_id, output, status, synced, cancelled, health, purged = await anyio.to_thread.run_sync(as_a_caller_would)
    assert status == "COMPLETED" and output["headline"] == job["headline"] and "is_about_company" in output
    assert synced == output  # the same job, the same scores
    assert cancelled["status"] in ("CANCELLED", "COMPLETED")  # it may have finished before the cancel
    assert health["jobs"]["completed"] >= 2 and health["model"]["ready"] is True
    assert purged == {"removed": 0, "status": "completed"}
    assert len(job_id) == 36


async def test_a_configured_endpoint_id_serves_only_its_own_prefix(pod_server) -> None:
    job = {"input": {"operation": "classify", "headline": "Fed Raises Rates"}}
    async with pod_server(runpod_endpoint_id="abc123") as base_url, httpx.AsyncClient(base_url=base_url) as client:
        ours = await client.post("/v2/abc123/runsync", json=job)
        bare = await client.post("/runsync", json=job)
        other = await client.post("/v2/someone-else/runsync", json=job)
        ping = await client.get("/v2/abc123/ping")
    assert ours.json()["status"] == bare.json()["status"] == "COMPLETED"
    assert other.status_code == 404 and other.json() == {"error": "not_found: no endpoint 'someone-else' here"}
    assert ping.status_code == 200


async def test_silent_and_slow_connections_are_closed(pod_server) -> None:
    # One connects and never sends; one sends half a request head and stops (slowloris). Both
    # would hold a connection for ever; a client that sends its request in time is served.
    async with pod_server(keep_alive_s=0.5, header_timeout_s=0.5) as base_url:
        host, port = base_url.removeprefix("http://").split(":")
        async with (
            await anyio.connect_tcp(host, int(port)) as silent,
            await anyio.connect_tcp(host, int(port)) as slow,
            await anyio.connect_tcp(host, int(port)) as prompt,
        ):
            assert (await _get_ping(prompt)).startswith(b"HTTP/1.1 200")  # sent at once: served
            await slow.send(b"GET /ping HTTP/1.1\r\nHost: x\r\n")  # and the rest never comes
            with anyio.fail_after(10):
                for stream in (silent, slow):
                    with pytest.raises((anyio.EndOfStream, anyio.BrokenResourceError)):
                        await stream.receive()  # the server closed it


async def test_port_and_port_health_as_a_load_balancing_endpoint_sets_them(tmp_path: Path) -> None:
    import socket

    def free_port() -> int:
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            return sock.getsockname()[1]

    port, health = free_port(), free_port()
    env = {"PORT": str(port), "PORT_HEALTH": str(health)}
    lines: list[dict] = []
    with anyio.fail_after(90):
        async with pod_process(tmp_path, lines, env, port=None) as (process, reader, client):
            assert str(client.base_url).endswith(f":{port}")
            async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{health}") as probe:
                health_ping = await probe.get("/ping")
                health_run = await probe.post("/run", json={"input": {"operation": "classify", "headline": "x"}})
            main_ping = await client.get("/ping")
            process.send_signal(signal.SIGTERM)
            assert await process.wait() == 0
    assert health_ping.status_code == main_ping.status_code == 200
    assert health_run.status_code == 404 and health_run.json()["error"].startswith("not_found: port")
