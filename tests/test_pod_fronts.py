"""A pod of several processes for real: ``python -m worker pod --front-processes 2``.

Two fronts share the port, and the kernel hands each connection to either; a caller must not
notice. Each test also talks to each front directly, on the Unix socket the fronts relay to one
another through (in the run directory the pod logs), so what one front answers for another's job
is checked whichever front the kernel would have chosen.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import subprocess
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import anyio
import httpx
from pod_subprocess import job_input, pod_process, poll_until_done, wait_until_ready
from prometheus_client.parser import text_string_to_metric_families

FRONTS = ("--front-processes", "2")
LONG = "Apple Declares A Special Dividend And Raises Its Guidance For The Full Year " * 6


def slow_burst(jobs: int) -> list[dict]:
    """Jobs that keep the CPU model busy for a while, so some are still queued when acted on."""
    return [{"operation": "classify_batch", "headlines": [f"{j}.{i} {LONG}" for i in range(32)]} for j in range(jobs)]


@asynccontextmanager
async def fronts(lines: list[dict], headers: dict[str, str]) -> AsyncIterator[list[httpx.AsyncClient]]:
    """A client on each front's own socket (a request there is answered as if it came to the
    port), once each front is ready: the pod's port answers 200 as soon as one is."""
    run_dir = next(line["run_dir"] for line in lines if line["event"] == "pod_listening")
    clients = [
        httpx.AsyncClient(transport=httpx.AsyncHTTPTransport(uds=f"{run_dir}/front-{front}.sock"),
                          base_url="http://pod", headers=headers, timeout=30)  # fmt: skip
        for front in range(2)
    ]
    async with clients[0], clients[1]:
        for client in clients:
            await wait_until_ready(client)
        yield clients


def started(lines: list[dict], process: str) -> int:
    """The pid of the newest ``process`` (``model``, ``front-0``...) the supervisor started."""
    return [line["pid"] for line in lines if line["event"] == "worker_process_started" and line["process"] == process][-1]


def jobs_total(metrics: str) -> dict[str, float]:
    """``nli_jobs_total`` by process, from one scrape."""
    totals: dict[str, float] = {}
    for family in text_string_to_metric_families(metrics):
        for sample in family.samples:
            if sample.name == "nli_jobs_total":
                totals[sample.labels["process"]] = totals.get(sample.labels["process"], 0) + sample.value
    return totals


async def test_every_front_answers_for_every_job_and_the_pod_is_counted_whole(
    tmp_path: Path, example_jobs, check_job_output
) -> None:
    key = {"Authorization": "Bearer k3y"}
    jobs = [job_input(example_jobs, i) for i in range(18)]
    lines: list[dict] = []
    with anyio.fail_after(120):
        async with pod_process(tmp_path, lines, {"API_KEY": "k3y"}, *FRONTS) as (process, reader, client):
            async with fronts(lines, key) as (front_0, front_1):
                ids = [(await each.post("/run", json={"input": job}, headers=key)).json()["id"]
                       for each, (_, job) in zip([front_0, front_1] * 9, jobs)]  # fmt: skip
                busy = [(await front_1.post("/run", json={"input": job})).json()["id"] for job in slow_burst(10)]
                cancelled = await front_0.post(f"/cancel/{busy[-1]}")  # a job front 1 holds, still queued
                results = {front: await poll_until_done(each, ids + busy) for front, each in enumerate((front_0, front_1))}
                health = [(await each.get("/health")).json() for each in (front_0, front_1)]
                scrape = (await client.get("/metrics")).text
                purged = (await client.post("/purge-queue", headers=key)).json()
                unknown = await front_0.get(f"/status/1-{ids[0].partition('-')[2]}")
                hostile = [await each.request(method, f"/{route}/{job_id}", headers=key)
                           for job_id in ("²-x", "１-x", "1-" + "a" * 4000, "1-a%3Fb", "1-%00", "0-ü", "99999-x")
                           for each in (front_0, front_1) for method, route in (("GET", "status"), ("POST", "cancel"))]  # fmt: skip
                unauthorised = await front_0.get(f"/status/{ids[1]}", headers={"Authorization": "Bearer nope"})
                told_to_stay_local = await client.get("/health", headers={**key, "x-burst-nli-relayed": "1"})
            process.send_signal(signal.SIGTERM)
            assert await process.wait() == 0
    assert {job_id.partition("-")[0] for job_id in ids} == {"0", "1"}  # each front names its own jobs
    assert results[0] == results[1]  # either front answers for every job, the other's too
    for job_id, (operation, job) in zip(ids, jobs):
        assert results[0][job_id]["status"] == "COMPLETED"
        check_job_output(operation, job, results[0][job_id]["output"])
    assert cancelled.json() == {"id": busy[-1], "status": "CANCELLED"}
    assert results[0][busy[-1]]["status"] == "CANCELLED"
    counts = {"completed": len(ids) + len(busy) - 1, "cancelled": 1, "inQueue": 0, "inProgress": 0}
    for each in health:  # the whole pod's jobs, whichever front is asked
        assert {status: each["jobs"][status] for status in counts} == counts
        assert each["model"]["ready"] is True and each["queue"] == {"pairs": 0, "tokens": 0}
    assert told_to_stay_local.json()["jobs"] == health[0]["jobs"]  # the relay header counts only between fronts
    assert jobs_total(scrape) == {"front-0": 9, "front-1": 9 + len(busy)}  # each front counts its own
    assert "process=\"model\"" in scrape and "nli_batch_pairs_count{process=\"model\"}" in scrape
    if shutil.which("promtool") or os.environ.get("BURST_NLI_REQUIRE_PROMETHEUS"):  # Prometheus' own linter
        lint = subprocess.run(["promtool", "check", "metrics"], input=scrape, capture_output=True, text=True)
        assert lint.returncode == 0, lint.stdout + lint.stderr
    assert purged == {"removed": 0, "status": "completed"}
    assert unknown.status_code == 404 and "no job" in unknown.json()["error"]
    assert [(answer.status_code, answer.json()["error"][:10]) for answer in hostile] == [(404, "not_found:")] * len(hostile)
    assert unauthorised.status_code == 401  # a front's own socket asks for the key too


async def test_sigterm_mid_burst_drains_every_front_then_stops_the_model(tmp_path: Path) -> None:
    lines: list[dict] = []
    with anyio.fail_after(150):
        async with pod_process(tmp_path, lines, {"DRAIN_TIMEOUT_S": "120"}, *FRONTS) as (process, reader, client):
            async with fronts(lines, {}) as (front_0, front_1):
                ids = [(await each.post("/run", json={"input": job})).json()["id"]
                       for each, job in zip([front_0, front_1] * 4, slow_burst(8))]  # fmt: skip
                process.send_signal(signal.SIGTERM)
                await reader.until(lambda line: line["event"] == "pod_draining", lines)
                ping = await front_1.get("/ping")
                refused = await front_0.post("/run", json={"input": slow_burst(1)[0]})
                results = await poll_until_done(front_0, ids)
            await reader.until(lambda line: line["event"] == "pod_stopped" and "front_processes" in line, lines)
            returncode = await process.wait()
    assert ping.status_code == 503
    assert refused.status_code == 503 and refused.json()["error"] == "unavailable: the server is shutting down"
    assert [results[job_id]["status"] for job_id in ids] == ["COMPLETED"] * len(ids)
    events = [line["event"] for line in lines]
    assert events.index("model_process_stopping") > max(i for i, e in enumerate(events) if e == "pod_drained")
    assert returncode == 0


async def test_a_killed_model_process_or_front_is_started_again(tmp_path: Path) -> None:
    lines: list[dict] = []
    with anyio.fail_after(150):
        async with pod_process(tmp_path, lines, {}, *FRONTS) as (process, reader, client):
            async with fronts(lines, {}) as (front_0, front_1):
                await reader.until(lambda line: line.get("process") == "front-1", lines)  # every pid is known
                ids = [(await front_0.post("/run", json={"input": job})).json()["id"] for job in slow_burst(6)]
                os.kill(started(lines, "model"), signal.SIGKILL)
                failed = await poll_until_done(front_1, ids)
                ping = await front_0.get("/ping")
                down = (await front_1.get("/metrics")).text
                await wait_until_ready(front_0)  # the model process was started again, and both fronts
                await wait_until_ready(front_1)  # connected to it
                served = (await front_0.post("/runsync", json={"input": slow_burst(1)[0]})).json()
                kept = (await front_1.post("/runsync", json={"input": slow_burst(1)[0]})).json()
                os.kill(started(lines, "front-1"), signal.SIGKILL)
                lost = await front_0.get(f"/status/{kept['id']}")
                still = await front_0.get(f"/status/{served['id']}")
                await reader.until(lambda line: line["event"] == "worker_process_died" and line["process"] == "front-1", lines)
                await wait_until_ready(front_1)  # started again
            process.send_signal(signal.SIGTERM)
            assert await process.wait() == 0
    for job_id in ids:  # in flight when the model process died: failed, and said why
        assert failed[job_id]["status"] == "FAILED"
        assert failed[job_id]["error"] == "unavailable: the model process stopped"
    assert ping.status_code == 503  # the load balancer stops sending until the model is back
    assert 'nli_model_ready{process="model"} 0.0' in down  # an alert on it fires, as for one process
    assert served["status"] == kept["status"] == "COMPLETED"
    assert lost.status_code == 404 and "the front process that took it has stopped" in lost.json()["error"]
    assert still.json()["status"] == "COMPLETED"  # a front that goes takes only its own jobs


async def test_a_full_queue_is_429_from_either_front_and_every_accepted_job_completes(tmp_path: Path) -> None:
    # Reliability scenario 4 over HTTP in a pod of fronts: the model process admits every front's
    # jobs against one queue, so a full queue is refused by whichever front took the job.
    lines: list[dict] = []
    with anyio.fail_after(150):
        async with pod_process(tmp_path, lines, {"MAX_QUEUE_PAIRS": "320"}, *FRONTS) as (process, reader, client):
            async with fronts(lines, {}) as (front_0, front_1):
                jobs = slow_burst(12)  # 160 pairs each, against room for 320
                answers = await asyncio.gather(
                    *(each.post("/run", json={"input": job}) for each, job in zip([front_0, front_1] * 6, jobs))
                )
                accepted = [answer.json()["id"] for answer in answers if answer.status_code == 200]
                refused = [answer for answer in answers if answer.status_code != 200]
                results = await poll_until_done(front_0, accepted)
                health = (await front_1.get("/health")).json()
                scrape = (await client.get("/metrics")).text
            process.send_signal(signal.SIGTERM)
            assert await process.wait() == 0
    assert accepted and refused
    for answer in refused:
        assert answer.status_code == 429 and float(answer.headers["retry-after"]) > 0
        assert answer.json()["error"].startswith("overloaded: ")
    assert [results[job_id]["status"] for job_id in accepted] == ["COMPLETED"] * len(accepted)
    assert health["jobs"]["completed"] == len(accepted) and health["jobs"]["failed"] == 0
    rejected = [sample for family in text_string_to_metric_families(scrape) for sample in family.samples
                if sample.name == "nli_rejected_total"]  # fmt: skip
    assert sum(sample.value for sample in rejected) == len(refused)  # each refusal counted once, by its front


async def test_the_pod_keeps_the_ended_jobs_max_finished_jobs_allows_however_many_fronts_share_it(
    tmp_path: Path, example_jobs
) -> None:
    """Each front keeps its share of the bound, so 2 fronts do not hold twice what the operator set."""
    lines: list[dict] = []
    with anyio.fail_after(120):
        async with pod_process(tmp_path, lines, {"MAX_FINISHED_JOBS": "4"}, *FRONTS) as (process, reader, client):
            async with fronts(lines, {}) as (front_0, front_1):
                ids: dict[int, list[str]] = {0: [], 1: []}
                for i in range(5):
                    for front, each in enumerate((front_0, front_1)):
                        answer = await each.post("/runsync", json={"input": job_input(example_jobs, i)[1]})
                        assert answer.json()["status"] == "COMPLETED"
                        ids[front].append(answer.json()["id"])
                health = (await client.get("/health")).json()
                newest = [(await client.get(f"/status/{ids[front][-1]}")).json()["status"] for front in (0, 1)]
                oldest = [(await client.get(f"/status/{ids[front][0]}")).status_code for front in (0, 1)]
            process.send_signal(signal.SIGTERM)
            assert await process.wait() == 0
    assert health["jobs"]["completed"] == 4  # 2 a front, the newest
    assert newest == ["COMPLETED", "COMPLETED"] and oldest == [404, 404]
