"""The pod server's ASGI app through httpx's ASGI transport: every route, status and error."""

from __future__ import annotations

import gzip
import logging
import re
import threading
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import anyio
import httpx
import msgspec
import pytest
import structlog
from held_model import hold_batches, held_batches
from structlog.testing import capture_logs

from batching import Unavailable
from schemas import DEFAULT_SCHEMA, OPERATIONS
from schemas.trace import TraceRecorder, read_trace
from schemas.runpod import CANCELLED, COMPLETED, FAILED, IN_PROGRESS, IN_QUEUE
from worker.job_store import JobStore
from worker.model import NliModel
from worker.operations import plan_job
from worker.pod import RUNSYNC_MAX_WAIT_MS, PodApp, bind_refusal, serve
from worker.settings import Settings

SETTINGS = Settings(model_name="synthetic:tiny", device="cpu", warmup_max_len=16)
CLASSIFY = {"operation": "classify", "headline": "Apple Declares $0.25 Dividend"}


@asynccontextmanager
async def pod_client(
    model: NliModel | None, settings: Settings = SETTINGS, *, ready: bool = True, headers: dict | None = None,
    **pod_options: Any,
) -> AsyncIterator[tuple[PodApp, httpx.AsyncClient]]:  # fmt: skip
    """A started ``PodApp`` and a client on its ASGI app (the transport runs no lifespan)."""
    async with PodApp(settings, model=model, **pod_options) as pod:
        if ready:
            await pod.wait_ready()
        transport = httpx.ASGITransport(pod.app)
        async with httpx.AsyncClient(transport=transport, base_url="http://pod", headers=headers) as client:
            yield pod, client


async def wait_done(pod: PodApp, job_id: str) -> None:
    record = pod.store.get(job_id)
    assert record is not None
    with anyio.fail_after(30):
        await record.done.wait()


async def run_job(client: httpx.AsyncClient, job_input: dict, **body: Any) -> str:
    response = await client.post("/run", json={"input": job_input, **body})
    assert response.status_code == 200, response.text
    assert response.json()["status"] == IN_QUEUE
    return response.json()["id"]


# ---- the job routes ---------------------------------------------------------------------------------


async def test_run_then_status_completes_every_operation(tiny_model, example_jobs, check_job_output) -> None:
    async with pod_client(tiny_model) as (pod, client):
        ids = {op: await run_job(client, {"operation": op, **example_jobs[op]}) for op in OPERATIONS}
        assert len(set(ids.values())) == len(OPERATIONS)
        for operation, job_id in ids.items():
            await wait_done(pod, job_id)
            method = "GET" if operation != "nli" else "POST"  # /status takes both, as RunPod's does
            body = (await client.request(method, f"/status/{job_id}")).json()
            assert body["id"] == job_id and body["status"] == COMPLETED
            assert isinstance(body["delayTime"], int) and isinstance(body["executionTime"], int)
            assert body["delayTime"] >= 0 and body["executionTime"] >= 0
            check_job_output(operation, example_jobs[operation], body["output"])
        health = (await client.get("/health")).json()
    assert health["jobs"] == {
        "inQueue": 0, "inProgress": 0, "completed": len(OPERATIONS), "failed": 0, "cancelled": 0, "timedOut": 0,
    }  # fmt: skip
    assert health["model"] == {"name": "synthetic:tiny", "device": "cpu", "dtype": "float32", "ready": True}
    assert health["queue"] == {"pairs": 0, "tokens": 0}


async def test_runsync_returns_the_output_or_the_status_when_the_wait_runs_out(
    tiny_model, check_job_output, monkeypatch
) -> None:
    async with pod_client(tiny_model) as (pod, client):
        done = (await client.post("/runsync", json={"input": CLASSIFY})).json()
        assert done["status"] == COMPLETED
        check_job_output("classify", CLASSIFY, done["output"])
        with held_batches(tiny_model, monkeypatch) as (entered, release):
            waiting = (await client.post("/runsync?wait=0", json={"input": CLASSIFY})).json()
            assert set(waiting) <= {"id", "status", "delayTime"}
            assert waiting["status"] in (IN_QUEUE, IN_PROGRESS)
            release.set()
            await wait_done(pod, waiting["id"])
        later = (await client.get(f"/status/{waiting['id']}")).json()
        assert later["status"] == COMPLETED and later["output"]["headline"] == CLASSIFY["headline"]
        # "²" passes str.isdigit() and once made a 500; other scripts' digits are not milliseconds either
        for bad in ("-1", "1.5", "soon", str(RUNSYNC_MAX_WAIT_MS + 1), "%C2%B2", "%EF%BC%91%EF%BC%92", "%D9%A1", "9" * 5000):
            refused = await client.post(f"/runsync?wait={bad}", json={"input": CLASSIFY})
            assert refused.status_code == 400
            assert refused.json()["error"].startswith("invalid_input: wait: expected milliseconds from 0 to 300000")
        assert pod.store.counts()[COMPLETED] == 2  # refused waits never became jobs


async def test_cancel_drops_a_queued_jobs_pairs_and_harms_no_other(tiny_model, monkeypatch) -> None:
    async with pod_client(tiny_model) as (pod, client):
        engine = await pod.wait_ready()
        with held_batches(tiny_model, monkeypatch) as (entered, release):
            first = await run_job(client, {"operation": "classify", "headline": "a"})
            await anyio.to_thread.run_sync(entered.wait, 30)
            victim = await run_job(client, {"operation": "classify", "headline": "b c"})
            others = [await run_job(client, {"operation": "classify", "headline": f"h {i}"}) for i in range(5)]
            await anyio.wait_all_tasks_blocked()
            assert (await client.get(f"/status/{victim}")).json()["status"] == IN_PROGRESS
            cancelled = await client.post(f"/cancel/{victim}")
            assert cancelled.json() == {"id": victim, "status": CANCELLED}
            release.set()
            for job_id in (first, *others):
                await wait_done(pod, job_id)
        statuses = {job_id: (await client.get(f"/status/{job_id}")).json() for job_id in (first, victim, *others)}
        again = await client.post(f"/cancel/{first}")  # a finished job is left as it is
        health = (await client.get("/health")).json()
    assert statuses[victim]["status"] == CANCELLED and "output" not in statuses[victim]
    assert all(statuses[job_id]["status"] == COMPLETED for job_id in (first, *others))
    assert again.json() == {"id": first, "status": COMPLETED}
    assert engine.batcher.stats.items_dropped == 5  # the victim's five pairs never reached the model
    assert health["jobs"]["cancelled"] == 1 and health["jobs"]["completed"] == 6


async def test_a_job_past_its_execution_timeout_is_timed_out(tiny_model, monkeypatch) -> None:
    async with pod_client(tiny_model) as (pod, client):
        with held_batches(tiny_model, monkeypatch) as (entered, release):
            first = await run_job(client, CLASSIFY)
            await anyio.to_thread.run_sync(entered.wait, 30)
            body = {"input": {"operation": "classify", "headline": "late"}, "policy": {"executionTimeout": 1}}
            late = (await client.post("/runsync", json=body)).json()  # waits for the deadline, not the model
            release.set()
            await wait_done(pod, first)
        health = (await client.get("/health")).json()
    assert late["status"] == "TIMED_OUT"
    assert late["error"].startswith("timed_out: ")  # its 1 ms passed while the model held another batch
    assert "output" not in late and late["executionTime"] >= 0
    assert health["jobs"]["timedOut"] == 1 and health["jobs"]["completed"] == 1


# ---- refusals -----------------------------------------------------------------------------------------


BAD_BODIES: list[tuple[bytes, str]] = [
    (b"", 'invalid_input: body: missing; send {"input": {"operation": ...}}'),
    (b"{nope", "invalid_input: body: malformed JSON:"),
    (b'["classify"]', "invalid_input: body: expected an object, got array"),
    (b"{}", "invalid_input: input: missing"),
    (b'{"input": null}', "invalid_input: input: missing"),
    (b'{"input": [1, 2]}', "invalid_input: input: expected an object, got array"),
    (b'{"input": "classify x"}', "invalid_input: input: expected an object, got str"),
    (b'{"input": {"operation": "classify"}}', "invalid_input: headline: missing required field"),
    (b'{"input": {"operation": "classify", "headline": "  "}}', "invalid_input: headline: must not be blank"),
    (b'{"input": {"operation": "explode"}}', "invalid_input: operation: unknown operation 'explode'"),
    (b'{"input": {"operation": "nli", "pairs": [["a"]]}}', "invalid_input: pairs[0]: expected exactly 2 items"),
    (b'{"input": {"operation": "classify", "headline": "x"}, "policy": {"executionTimeout": "1s"}}',
     "invalid_input: policy.executionTimeout: expected int or null, got str"),
    (b'{"input": {"operation": "classify", "headline": "x"}, "policy": {"executionTimeout": 0}}',
     "invalid_input: policy.executionTimeout: expected int >= 1"),
]  # fmt: skip


@pytest.mark.parametrize("path", ["/run", "/runsync"])
async def test_bad_bodies_are_400_naming_the_field(tiny_model, path: str) -> None:
    async with pod_client(tiny_model) as (pod, client):
        for body, expected in BAD_BODIES:
            response = await client.post(path, content=body, headers={"content-type": "application/json"})
            assert response.status_code == 400, (body, response.text)
            assert response.headers["content-type"] == "application/json"
            assert response.json()["error"].startswith(expected), (body, response.json())
        metrics = (await client.get("/metrics")).text
    assert len(pod.store) == 0  # nothing refused became a job
    assert f'nli_rejected_total{{reason="invalid_input"}} {float(len(BAD_BODIES))}' in metrics


async def test_unknown_ids_routes_and_methods(tiny_model) -> None:
    async with pod_client(tiny_model) as (pod, client):
        for response in (await client.get("/status/nope"), await client.post("/cancel/nope")):
            assert response.status_code == 404
            assert response.json()["error"].startswith("not_found: no job 'nope': never accepted, or finished")
        unknown_route = await client.get("/jobs")
        wrong_method = await client.get("/run")
        delete = await client.delete("/status/x")
    assert unknown_route.status_code == 404 and unknown_route.json() == {"error": "not_found: no route /jobs"}
    assert wrong_method.status_code == 405 and wrong_method.headers["allow"] == "POST"
    assert wrong_method.json() == {"error": "method_not_allowed: GET /run; allowed: POST"}
    assert delete.status_code == 405 and set(delete.headers["allow"].split(", ")) >= {"GET", "POST"}


async def test_bodies_over_the_limit_are_413_by_length_or_as_they_stream(tiny_model) -> None:
    settings = msgspec.structs.replace(SETTINGS, max_body_bytes=100)
    big = msgspec.json.encode({"input": {"operation": "classify", "headline": "x" * 200}})

    async def chunks() -> AsyncIterator[bytes]:  # no Content-Length: chunked
        for start in range(0, len(big), 40):
            yield big[start:start + 40]

    async with pod_client(tiny_model, settings) as (pod, client):
        declared = await client.post("/run", content=big)
        streamed = await client.post("/runsync", content=chunks())
        fits = await client.post("/runsync", json={"input": {"operation": "classify", "headline": "x"}})
    assert declared.status_code == 413
    assert declared.json() == {"error": f"payload_too_large: body of {len(big)} bytes is over MAX_BODY_BYTES=100"}
    assert streamed.status_code == 413
    assert streamed.json() == {"error": "payload_too_large: body is over MAX_BODY_BYTES=100"}
    assert fits.json()["status"] == COMPLETED


async def test_a_compressed_body_is_415_naming_its_content_encoding_and_makes_no_job(tiny_model) -> None:
    job = msgspec.json.encode({"input": {"operation": "classify", "headline": "Apple Declares Dividend"}})
    async with pod_client(tiny_model) as (pod, client):
        gzipped = await client.post("/run", content=gzip.compress(job), headers={"Content-Encoding": "gzip"})
        plain = await client.post("/runsync", content=job, headers={"Content-Encoding": "identity"})
        jobs = pod.store.counts()
    assert gzipped.status_code == 415
    assert gzipped.json() == {"error": "unsupported_media_type: Content-Encoding 'gzip': send the JSON body uncompressed"}
    assert plain.json()["status"] == COMPLETED
    assert sum(jobs.values()) == jobs[COMPLETED] == 1  # the plain one; the gzipped body made none


async def test_a_full_queue_is_429_with_retry_after(tiny_model, monkeypatch) -> None:
    # One pair a batch: while the model holds the first pair, the next one waits collated and
    # the rest stay queued, so the queue's fill is known exactly.
    settings = msgspec.structs.replace(SETTINGS, max_batch_pairs=1, max_queue_pairs=8)
    async with pod_client(tiny_model, settings) as (pod, client):
        engine = await pod.wait_ready()
        with held_batches(tiny_model, monkeypatch) as (entered, release):
            first = await run_job(client, {"operation": "nli", "pairs": [["a", "b"]] * 5})
            await anyio.to_thread.run_sync(entered.wait, 30)
            await anyio.wait_all_tasks_blocked()
            free = 8 - engine.batcher.queued_items
            too_many = {"operation": "nli", "pairs": [["c", "d"]] * (free + 1)}
            refused = await client.post("/run", json={"input": too_many})
            admitted = await run_job(client, {"operation": "nli", "pairs": [["c", "d"]] * free})
            release.set()
            await wait_done(pod, first)
            await wait_done(pod, admitted)
        metrics = (await client.get("/metrics")).text
    assert refused.status_code == 429
    assert refused.headers["retry-after"] == "1"
    assert refused.json()["error"].startswith("overloaded: queue full")
    assert 'nli_rejected_total{reason="overloaded"} 1.0' in metrics
    assert pod.store.counts()[COMPLETED] == 2


async def test_a_job_whose_tokens_do_not_fit_is_429_never_accepted_then_failed(tiny_model, monkeypatch) -> None:
    # The queue has pairs to spare but tokens for two of these jobs: the third is refused before
    # it has an id, and every job that got one completes.
    long = {"operation": "classify", "headline": "Apple Declares A Special Dividend Of Two Dollars Fifty " * 4}
    pairs = plan_job(DEFAULT_SCHEMA.decode_input(long), tiny_model).pairs
    one_job = sum(tiny_model.pair(tiny_model.encode_text(p), tiny_model.hypothesis_ids(h)).length for p, h in pairs)
    settings = msgspec.structs.replace(SETTINGS, max_batch_pairs=64, max_wait_ms=60_000, max_queue_tokens=2 * one_job)
    async with pod_client(tiny_model, settings) as (pod, client):
        await pod.wait_ready()
        with held_batches(tiny_model, monkeypatch) as (entered, release):
            first = await run_job(client, {"operation": "nli", "pairs": [["x", "y"]]})
            await anyio.to_thread.run_sync(entered.wait, 30)
            answers = [await client.post("/run", json={"input": long}) for _ in range(4)]
            release.set()
            accepted = [answer.json()["id"] for answer in answers if answer.status_code == 200]
            for job_id in [first, *accepted]:
                await wait_done(pod, job_id)
    assert [answer.status_code for answer in answers] == [200, 200, 429, 429]
    refused = answers[2]
    assert refused.headers["retry-after"] == "1" and refused.json()["error"].startswith("overloaded: queue full")
    assert "id" not in refused.json()
    assert pod.store.counts()[COMPLETED] == 3 and pod.store.counts().get("FAILED", 0) == 0


async def test_a_runsync_open_when_the_drain_ends_gets_its_job_as_json(tiny_model, monkeypatch) -> None:
    async with pod_client(tiny_model) as (pod, client):
        await pod.wait_ready()
        with held_batches(tiny_model, monkeypatch) as (entered, release):
            answers: list[httpx.Response] = []
            async with anyio.create_task_group() as tg:
                tg.start_soon(lambda: _append_answer(answers, client.post("/runsync?wait=300000",
                                                                          json={"input": CLASSIFY})))  # fmt: skip
                await anyio.to_thread.run_sync(entered.wait, 30)
                await pod.drain(timeout_s=0.05)  # the model is held: the drain runs out
            ping = await client.get("/ping")
            release.set()
    (answer,) = answers
    assert answer.status_code == 200 and answer.json()["status"] == IN_PROGRESS
    assert ping.status_code == 503


async def _append_answer(answers: list, request) -> None:
    answers.append(await request)


async def test_while_the_model_loads_ping_is_204_and_jobs_are_503(tiny_model) -> None:
    loading, began = threading.Event(), threading.Event()
    load_began: list[float] = []

    def load() -> NliModel:
        load_began.append(time.perf_counter())
        began.set()
        loading.wait(30)
        return tiny_model

    try:
        async with pod_client(None, ready=False, load_model=load) as (pod, client):
            ping = await client.get("/ping")
            run = await client.post("/run", json={"input": CLASSIFY})
            health = (await client.get("/health")).json()
            await anyio.to_thread.run_sync(began.wait, 30)
            held_s = time.perf_counter() - load_began[0]
            loading.set()
            await pod.wait_ready()
            load_metric = pod.metrics.registry.get_sample_value("nli_model_load_seconds")
            ready_ping = await client.get("/ping")
            after = await client.post("/runsync", json={"input": CLASSIFY})
    finally:
        loading.set()
    assert ping.status_code == 204 and ping.content == b""
    assert run.status_code == 503 and run.headers["retry-after"] == "1"
    assert run.json() == {"error": "unavailable: the model is loading; retry shortly"}
    assert health["model"]["ready"] is False and "queue" not in health
    assert ready_ping.status_code == 200 and ready_ping.json() == {"status": "healthy"}
    assert after.json()["status"] == COMPLETED
    assert load_metric is not None and load_metric >= held_s  # the load as it took, not the engine's start


async def test_a_model_that_fails_to_load_is_503_everywhere() -> None:
    settings = msgspec.structs.replace(SETTINGS, model_name="synthetic:no-such-model")
    async with pod_client(None, settings, ready=False) as (pod, client):
        with pytest.raises(Unavailable, match="model failed to load"):
            await pod.wait_ready()
        ping = await client.get("/ping")
        run = await client.post("/run", json={"input": CLASSIFY})
        health = (await client.get("/health")).json()
    expected = "unavailable: model failed to load: ValueError: unknown synthetic model"
    assert ping.status_code == 503 and ping.json()["error"].startswith(expected)
    assert run.status_code == 503 and run.json()["error"].startswith(expected)
    assert health["model"]["ready"] is False and health["model"]["error"].startswith(expected)


async def test_shutdown_fails_jobs_in_flight_unavailable_and_does_not_hang(tiny_model, monkeypatch) -> None:
    pod = PodApp(SETTINGS, model=tiny_model)
    release = threading.Event()
    try:
        async with httpx.AsyncClient(transport=httpx.ASGITransport(pod.app), base_url="http://pod") as client:
            with anyio.fail_after(30):
                async with pod:
                    await pod.wait_ready()
                    entered, release = hold_batches(tiny_model, monkeypatch)
                    held = await run_job(client, CLASSIFY)
                    await anyio.to_thread.run_sync(entered.wait, 30)
                    queued = await run_job(client, {"operation": "classify", "headline": "queued"})
                # left while the model still holds the first batch
                late = await client.post("/run", json={"input": CLASSIFY})
                ping = await client.get("/ping")
    finally:
        release.set()
    records = [pod.store.get(held), pod.store.get(queued)]
    for record in records:
        assert record is not None and record.status == "FAILED"
        assert record.error == "unavailable: the batcher shut down"
    assert late.status_code == 503 and late.json() == {"error": "unavailable: the server is shutting down"}
    assert ping.status_code == 503


# ---- auth --------------------------------------------------------------------------------------------


async def test_with_an_api_key_every_route_but_ping_and_metrics_needs_it(tiny_model) -> None:
    settings = msgspec.structs.replace(SETTINGS, api_key="s3cret")
    async with pod_client(tiny_model, settings) as (pod, client):
        refused = [
            await client.post("/run", json={"input": CLASSIFY}),
            await client.post("/runsync", json={"input": CLASSIFY}, headers={"Authorization": "Bearer wrong"}),
            await client.get("/health", headers={"Authorization": "s3cret"}),  # no scheme
            await client.get("/status/x", headers={"Authorization": "Basic s3cret"}),
            await client.post("/cancel/x"),
            await client.get("/no-such-route"),
        ]
        ping, metrics = await client.get("/ping"), await client.get("/metrics")
        good = {"Authorization": "Bearer s3cret"}
        done = await client.post("/runsync", json={"input": CLASSIFY}, headers=good)
        status = await client.get(f"/status/{done.json()['id']}", headers={"authorization": "bearer s3cret"})
    for response in refused:
        assert response.status_code == 401
        assert response.headers["www-authenticate"].startswith("Bearer")
        assert response.json() == {"error": "unauthorized: send 'Authorization: Bearer <API_KEY>'"}
    assert len(pod.store) == 1  # only the authorised job ran
    assert ping.status_code == 200 and metrics.status_code == 200
    assert done.json()["status"] == COMPLETED and status.json()["status"] == COMPLETED


async def test_without_an_api_key_no_header_is_needed(tiny_model) -> None:
    async with pod_client(tiny_model) as (pod, client):
        assert (await client.post("/runsync", json={"input": CLASSIFY})).json()["status"] == COMPLETED
        assert (await client.get("/health")).status_code == 200


def test_serve_refuses_to_bind_beyond_loopback_without_a_key(capsys) -> None:
    assert serve(SETTINGS, host="0.0.0.0", port=8000) == 2
    message = capsys.readouterr().err
    assert message.startswith("error: refusing to serve on 0.0.0.0 without an API key")
    assert "Set API_KEY" in message and "--insecure" in message
    assert bind_refusal("::", SETTINGS, insecure=False) is not None
    assert bind_refusal("pod.example.com", SETTINGS, insecure=False) is not None
    for host in ("127.0.0.1", "127.0.0.2", "::1", "localhost"):
        assert bind_refusal(host, SETTINGS, insecure=False) is None
    assert bind_refusal("0.0.0.0", SETTINGS, insecure=True) is None
    assert bind_refusal("0.0.0.0", msgspec.structs.replace(SETTINGS, api_key="k"), insecure=False) is None


def test_serve_refuses_a_record_path_it_cannot_open(tmp_path: Path, capsys) -> None:
    assert serve(SETTINGS, host="127.0.0.1", port=8000, record=str(tmp_path / "missing" / "t.jsonl")) == 2
    assert capsys.readouterr().err.startswith(f"error: --record {tmp_path / 'missing' / 't.jsonl'}:")


# ---- retention -------------------------------------------------------------------------------------------


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


async def test_finished_jobs_are_forgotten_after_their_ttl(tiny_model) -> None:
    clock = FakeClock()
    settings = msgspec.structs.replace(SETTINGS, job_ttl_s=60)
    async with pod_client(tiny_model, settings, clock=clock) as (pod, client):
        job_id = (await client.post("/runsync", json={"input": CLASSIFY})).json()["id"]
        clock.now += 59.9
        kept = await client.get(f"/status/{job_id}")
        clock.now += 0.1
        gone = await client.get(f"/status/{job_id}")
        health = (await client.get("/health")).json()
    assert kept.json()["status"] == COMPLETED
    assert gone.status_code == 404 and "JOB_TTL_S=60 s" in gone.json()["error"]
    assert health["jobs"]["completed"] == 0


async def test_beyond_max_finished_jobs_the_oldest_are_forgotten_first(tiny_model) -> None:
    settings = msgspec.structs.replace(SETTINGS, max_finished_jobs=2)
    async with pod_client(tiny_model, settings) as (pod, client):
        ids = [(await client.post("/runsync", json={"input": CLASSIFY})).json()["id"] for _ in range(3)]
        statuses = [(await client.get(f"/status/{job_id}")).status_code for job_id in ids]
        health = (await client.get("/health")).json()
    assert statuses == [404, 200, 200]
    assert health["jobs"]["completed"] == 2


async def test_the_job_store_counts_every_move_and_ends_a_job_once() -> None:
    clock = FakeClock()
    store = JobStore(ttl_s=10, max_finished=100, clock=clock)
    a, b, c = store.add("classify"), store.add("nli"), store.add("nli")
    assert store.counts()[IN_QUEUE] == 3
    store.start(a)
    clock.now += 0.25
    assert store.finish(a, COMPLETED, output={"ok": True})
    assert not store.finish(a, CANCELLED)  # ended once, for good
    assert store.finish(b, CANCELLED)  # before it was picked up
    store.start(b)  # too late: it stays cancelled
    as_sent = msgspec.json.decode(msgspec.json.encode(a.view()))  # the output is kept as JSON, sent as it is
    assert as_sent == {"id": a.id, "status": COMPLETED, "delayTime": 0, "executionTime": 250, "output": {"ok": True}}
    assert msgspec.to_builtins(b.view()) == {"id": b.id, "status": CANCELLED, "delayTime": 250, "executionTime": 0}
    assert store.counts() == {**dict.fromkeys(store.counts(), 0), IN_QUEUE: 1, COMPLETED: 1, CANCELLED: 1}
    clock.now += 10
    assert store.get(a.id) is None and store.get(b.id) is None and store.get(c.id) is c
    assert store.counts()[IN_QUEUE] == 1 and len(store) == 1
    with pytest.raises(ValueError, match="not a final status"):
        store.finish(c, IN_PROGRESS)


async def test_the_job_store_is_bounded_in_bytes_too_forgetting_the_oldest_first() -> None:
    # 100 jobs' worth of count, but bytes for two of these outputs: a third evicts the first.
    output = {"results": [{"headline": "x" * 100}] * 10}
    weight = len(msgspec.json.encode(output))
    store = JobStore(ttl_s=600, max_finished=100, max_bytes=2 * weight + 10, clock=FakeClock())
    jobs = [store.add("classify_batch") for _ in range(3)]
    for job in jobs:
        store.finish(job, COMPLETED, output=output)
    assert store.get(jobs[0].id) is None and store.get(jobs[1].id) is jobs[1] and store.get(jobs[2].id) is jobs[2]
    assert store.finished_bytes == 2 * weight and store.counts()[COMPLETED] == 2
    failed = store.add("classify")
    store.finish(failed, FAILED, error="invalid_input: headline: must not be blank")
    assert store.get(jobs[1].id) is None and store.get(failed.id) is failed  # an error weighs too


async def test_metrics_show_what_the_job_store_holds(tiny_model) -> None:
    async with pod_client(tiny_model) as (pod, client):
        await client.post("/runsync", json={"input": CLASSIFY})
        text = (await client.get("/metrics")).text
    stored = float(re.search(r"^nli_stored_bytes (\S+)$", text, re.MULTILINE)[1])
    assert stored == pod.store.finished_bytes > 0
    assert re.search(r"^nli_stored_jobs 1\.0$", text, re.MULTILINE)


# ---- metrics, logs and recording ------------------------------------------------------------------------


async def test_metrics_serve_the_nli_series(tiny_model) -> None:
    async with pod_client(tiny_model) as (pod, client):
        await client.post("/runsync", json={"input": CLASSIFY})
        plain = await client.get("/metrics")
        open_metrics = await client.get("/metrics", headers={"Accept": "application/openmetrics-text"})
    assert plain.headers["content-type"].startswith("text/plain; version=0.0.4")
    text = plain.text
    assert 'nli_jobs_total{operation="classify",status="completed"} 1.0' in text
    assert 'nli_job_latency_seconds_count{operation="classify"} 1.0' in text
    assert "nli_batch_pairs_sum 5.0" in text  # classify without a company: 5 pairs
    for name in ("nli_queue_wait_seconds", "nli_batch_tokens", "nli_padding_efficiency_ratio", "nli_batch_seconds",
                 "nli_gpu_idle_seconds", "nli_queue_pairs", "nli_inflight_jobs", "nli_model_load_seconds"):  # fmt: skip
        assert f"# TYPE {name} " in text, name
    assert "nli_model_ready 1.0" in text
    assert open_metrics.headers["content-type"].startswith("application/openmetrics-text")
    assert open_metrics.text.endswith("# EOF\n")


async def test_every_log_line_of_a_job_carries_its_id_and_operation(tiny_model, caplog) -> None:
    caplog.set_level(logging.DEBUG)  # the per-job debug lines are built only at DEBUG
    async with pod_client(tiny_model) as (pod, client):
        with capture_logs(processors=[structlog.contextvars.merge_contextvars]) as logs:
            job_id = (await client.post("/runsync", json={"input": CLASSIFY})).json()["id"]
            refused_status = (await client.post("/run", json={"input": {"operation": "classify"}})).status_code
    job_lines = [line for line in logs if line.get("job_id") == job_id]
    assert {"job_accepted", "job_done", "job_ended"} <= {line["event"] for line in job_lines}
    assert all(line["operation"] == "classify" for line in job_lines)
    assert all(line.get("operation") for line in logs if "job_id" in line)
    ended = next(line for line in job_lines if line["event"] == "job_ended")
    assert ended["status"] == COMPLETED and ended["log_level"] == "info"
    batches = [line for line in logs if line["event"] == "batch"]
    assert batches and batches[0]["pairs"] == 5 and "padding_efficiency" in batches[0]
    refused = [line for line in logs if line["event"] == "job_refused"]
    assert refused_status == 400 and refused[0]["operation"] == "classify" and refused[0]["job_id"]


async def test_record_appends_every_accepted_jobs_input_to_a_trace(tiny_model, tmp_path: Path) -> None:
    path = tmp_path / "recorded.jsonl"
    jobs = [CLASSIFY, {"operation": "nli", "pairs": [["a", "b"]]}, {"headline": "x", "operation": "classify"}]
    with TraceRecorder(path) as recorder:
        async with pod_client(tiny_model, recorder=recorder) as (pod, client):
            await client.post("/runsync", json={"input": jobs[0]})
            await client.post("/run", json={"input": {"operation": "classify"}})  # refused: not recorded
            await client.post("/run", json={"input": jobs[1]})
            await client.post("/runsync", content=b'{"input": {"headline": "x", "operation": "classify"}}')
    trace = read_trace(path)
    assert [job.input for job in trace.jobs] == jobs
    assert all(job.t >= 0 for job in trace.jobs)
    assert trace.header.name == "recording"
