"""Scenarios against a pod of two front processes and a model process (``python -m worker pod
--front-processes 2``) as a real process tree: its model process, then one front, SIGKILLed
mid-load and started again by the pod's supervisor, its callers on ``burst_nli_client``; and the
soak, every process of the pod sampled."""

from __future__ import annotations

import time
from collections import Counter
from pathlib import Path

import aiohttp
from prometheus_client.parser import text_string_to_metric_families

from loadtest.chaos.ledger import Ledger, ScenarioReport, classify_inputs, run_all
from loadtest.chaos.loopback import NO_RETRY, paced, soak_inputs, soak_load, still_serves_http
from loadtest.chaos.restart import same_headlines, wait_through_restart, pod_under_test, submit_until_taken
from loadtest.headlines import headlines
from schemas import Limits
from worker.model import NliModel


async def process_restarts(
    model: NliModel, jobs: int = 300, jobs_per_s: float = 30.0, seed: int = 9, log_dir: str | Path | None = None
) -> ScenarioReport:
    """Scenario 13: a pod of two fronts as a real process tree, on a loopback port. Its model
    process is SIGKILLed a third of the way in (right after the pod accepts a 640-pair job), front
    1 two thirds of the way in; the supervisor starts each again. Jobs arrive at ``jobs_per_s``.

    Callers do what scenario 8's do (the client retries what is safe; ``SubmissionUncertain``
    and a 404 for a job the dead front held are resubmitted), and resubmit a job that ended
    FAILED ``unavailable``: it was in flight when the model process died, and says so. Every
    job must still complete, with its own output; the pod stays one port throughout.
    """
    report = ScenarioReport("process restarts")
    inputs = classify_inputs(jobs, seed)
    kill_model_at, kill_front_at = jobs // 3, 2 * jobs // 3
    pool = headlines()
    inputs[kill_model_at] = {
        "operation": "classify_batch",
        "headlines": [pool[i % len(pool)] for i in range(Limits().max_headlines_per_job)],
    }
    counts: Counter[str] = Counter()
    kills = {kill_model_at: "model", kill_front_at: "front-1"}
    pod_of_fronts = pod_under_test(model, log_dir, counts, prefix="burst-nli-processes-", front_processes=2)
    async with pod_of_fronts as (pod, client):

        async def one(index: int, ledger: Ledger) -> None:
            sent = time.perf_counter()
            while True:
                job = await submit_until_taken(client, inputs[index], counts)
                if isinstance(job, str):
                    ledger.end(index, job)
                    return
                if (name := kills.pop(index, None)) is not None:
                    pod.kill_child(name)  # dies holding this job and whatever else it had
                    counts[f"killed_{name}"] += 1
                state, output = await wait_through_restart(job)
                if state == "lost":  # its front died with it: resubmit
                    counts["lost_with_front"] += 1
                    continue
                if state == "unavailable":  # in flight when the model process died: resubmit
                    counts["failed_unavailable_resubmitted"] += 1
                    continue
                if state == "completed":
                    report.latencies_s.append(time.perf_counter() - sent)
                    report.wrong += not same_headlines(inputs[index], output)
                ledger.end(index, state)
                return

        await run_all(report, jobs, one, arrivals=paced(jobs_per_s))
        await pod.wait_ready(client)
        report.figures.update(await still_serves_http(client))
        died = [line for line in pod.log_path.read_text().splitlines() if '"worker_process_died"' in line]
    report.figures = {
        "model_killed": counts["killed_model"],
        "front_killed": counts["killed_front-1"],
        "restarts_logged": len(died),
        "failed_unavailable_resubmitted": counts["failed_unavailable_resubmitted"],
        "lost_with_front": counts["lost_with_front"],
        "uncertain_resubmitted": counts["uncertain_resubmitted"],
        "unreachable_resubmitted": counts["unreachable_resubmitted"],
        "refused_resubmitted": counts["refused_resubmitted"],
        "http_503_seen": counts["http_503"],
        **report.figures,
    }
    return report


async def soak_processes(
    model: NliModel, seconds: float = 120.0, jobs_per_s: float = 60.0, ttl_s: float = 3.0, sample_s: float = 0.5,
    log_dir: str | Path | None = None,
) -> ScenarioReport:  # fmt: skip
    """Scenario 7 against a pod of two fronts: the peak minute's jobs cycled at ``jobs_per_s`` for
    ``seconds`` (``JOB_TTL_S=ttl_s``; half ``/runsync``, half ``/run`` and polling), sampling every
    ``sample_s`` the memory of every process of the pod (``process_resident_memory_bytes`` from its
    own ``/metrics``, summed over ``process``) and the jobs the fronts hold (``/health``). Both must
    stay flat after the warm-up, and once the load stops and the TTL passes no front holds a job."""
    report = ScenarioReport("soak, pod of fronts")
    inputs = soak_inputs(max(1, int(seconds * jobs_per_s)))
    counts: Counter[str] = Counter()
    pod_of_fronts = pod_under_test(model, log_dir, counts, prefix="burst-nli-soak-", front_processes=2,
                                   env={"JOB_TTL_S": str(ttl_s)}, retry=NO_RETRY)  # fmt: skip
    async with pod_of_fronts as (pod, client), aiohttp.ClientSession() as scraper:
        processes: set[str] = set()

        async def every_process_mb() -> float:
            async with scraper.get(f"{pod.base_url}/metrics") as response:
                memory = _resident_bytes(await response.text())
            processes.update(memory)
            return sum(memory.values()) / 2**20

        figures = await soak_load(report, client, inputs, jobs_per_s, ttl_s, sample_s, every_process_mb)
    report.figures.update(processes_sampled=sorted(processes), **figures)
    return report


def _resident_bytes(exposition: str) -> dict[str, float]:
    """Each process's resident memory, by its ``process`` label, from the pod's one scrape."""
    return {
        sample.labels["process"]: sample.value
        for family in text_string_to_metric_families(exposition)
        for sample in family.samples
        if sample.name == "process_resident_memory_bytes"
    }
