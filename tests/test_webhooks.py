"""Webhooks: an ended job is POSTed to its ``webhook``, retried as RunPod retries, and the pod
refuses targets that would let a caller reach internal services through it."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import anyio
import msgspec
import pytest
from aiohttp import web
from test_pod import CLASSIFY, SETTINGS, pod_client, run_job, wait_done

from worker.pod.webhooks import WebhookSender


@asynccontextmanager
async def receiver(answers: list[int]) -> AsyncIterator[tuple[str, list[dict]]]:
    """A webhook receiver on loopback: answers each POST with the next of ``answers`` (then 200);
    yields its URL and the bodies it got."""
    got: list[dict] = []
    arrived = anyio.Event()

    async def hook(request: web.Request) -> web.Response:
        got.append(json.loads(await request.read()))
        arrived.set()
        return web.Response(status=answers[len(got) - 1] if len(got) <= len(answers) else 200)

    app = web.Application()
    app.router.add_post("/hook", hook)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    try:
        yield f"http://127.0.0.1:{port}/hook", got
    finally:
        await runner.cleanup()


LOOPBACK_ALLOWED = msgspec.structs.replace(SETTINGS, webhook_allow_private=True, webhook_retry_s=0.01)


async def test_an_ended_job_is_posted_to_its_webhook_and_a_failed_delivery_is_retried(tiny_model) -> None:
    async with receiver([500]) as (url, got), pod_client(tiny_model, LOOPBACK_ALLOWED) as (pod, client):
        job_id = await run_job(client, CLASSIFY, webhook=url)
        await wait_done(pod, job_id)
        with anyio.fail_after(30):
            while len(got) < 2:
                await anyio.sleep(0.01)  # the receiver's side: polling what it got, not synchronising the pod
        status = (await client.get(f"/status/{job_id}")).json()
    assert got[0] == got[1] == status  # the body is the job as /status shows it, sent again after the 500
    assert status["status"] == "COMPLETED" and status["output"]["headline"] == CLASSIFY["headline"]
    assert pod.metrics.registry.get_sample_value("nli_webhooks_total", {"result": "delivered"}) == 1


async def test_a_webhook_that_never_answers_well_is_given_up_after_its_tries(tiny_model) -> None:
    settings = msgspec.structs.replace(LOOPBACK_ALLOWED, webhook_attempts=3)
    async with receiver([503, 503, 503, 503]) as (url, got), pod_client(tiny_model, settings) as (pod, client):
        job_id = await run_job(client, CLASSIFY, webhook=url)
        await wait_done(pod, job_id)
        with anyio.fail_after(30):
            while pod.metrics.registry.get_sample_value("nli_webhooks_total", {"result": "failed"}) != 1:
                await anyio.sleep(0.01)
        readable = (await client.get(f"/status/{job_id}")).json()
    assert len(got) == 3
    assert readable["status"] == "COMPLETED"  # the result stays readable for polling


@pytest.mark.parametrize(
    ("webhook", "why"),
    [
        ("file:///etc/passwd", "expected an http:// or https:// URL with a host"),
        ("gopher://example.com/", "expected an http:// or https:// URL with a host"),
        ("http://127.0.0.1:9000/hook", "127.0.0.1 is not a public address"),
        ("http://[::1]/hook", "::1 is not a public address"),
        ("http://169.254.169.254/latest/meta-data", "169.254.169.254 is not a public address"),
        ("http://10.1.2.3/hook", "10.1.2.3 is not a public address"),
        ("http://[::ffff:192.168.0.1]/hook", "is not a public address"),
        ("http://localhost:8000/run", "a loopback host"),
        ("http://user:secret@example.com/hook", "credentials in the URL are not sent"),
        ("http://example.com:99999/hook", "not a URL"),
    ],
)
async def test_webhooks_to_internal_or_odd_targets_are_refused_at_submission(tiny_model, webhook, why) -> None:
    async with pod_client(tiny_model) as (pod, client):
        answer = await client.post("/run", json={"input": CLASSIFY, "webhook": webhook})
    assert answer.status_code == 400
    assert answer.json()["error"].startswith("invalid_input: webhook: ") and why in answer.json()["error"]
    assert len(pod.store) == 0  # refused before it was a job


async def test_a_webhook_that_is_not_a_string_names_the_field(tiny_model) -> None:
    async with pod_client(tiny_model) as (_, client):
        answer = await client.post("/run", json={"input": CLASSIFY, "webhook": 5})
    assert answer.status_code == 400 and answer.json()["error"].startswith("invalid_input: webhook: expected str")


async def test_a_name_that_resolves_to_an_internal_address_is_not_called() -> None:
    # A public-looking name can point inside; it is checked when resolved, and nothing is sent.
    async with receiver([]) as (url, got):
        sender = WebhookSender(attempts=2, retry_s=0.01, timeout_s=5, allow_private=False)
        try:
            delivered = await sender.deliver(url.replace("127.0.0.1", "localhost"), b"{}", job_id="j")
        finally:
            await sender.aclose()
    assert delivered is False and got == []
