"""The pod's OpenAPI contract, fuzzed against a live pod with Schemathesis.

Cases come from ``GET /openapi.json`` as the pod generates it (the same msgspec types decode the
jobs), with a fixed seed and a bounded number of cases an operation. Every answer must be what
the contract says: never a 5xx, every 4xx the project's ``{"error": "<code>: ..."}``, bodies and
statuses as documented. Jobs submitted before the fuzzing run beside it and must all complete,
and the pod must still serve when it is over. It runs against the pod in one process and against
a pod of two fronts (``--front-processes 2``), whose fronts relay requests for each other's
jobs. RELIABILITY.md reports the count of cases.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import hypothesis
import pytest
import schemathesis
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from worker.pod.openapi import openapi_document
from worker.settings import Settings

ROOT = Path(__file__).resolve().parents[1]
KEY = "fuzz-key"
SETTINGS = Settings(model_name="synthetic:tiny", device="cpu", warmup_max_len=16, api_key=KEY)
CASES_AN_OPERATION = 40
ERROR = re.compile(r"[a-z_]+: .+", re.DOTALL)
BESIDE = [{"operation": "classify_batch", "headlines": [f"Fed Holds Rates, Story {i}.{j}" for j in range(16)]}
          for i in range(12)]  # fmt: skip
tried: list[tuple[str, int]] = []

schema = schemathesis.openapi.from_dict(openapi_document(SETTINGS))


@schema.hook
def map_body(context: schemathesis.HookContext, body: object) -> object:
    """No ``webhook``: an accepted one would make the pod call out, and tests reach only loopback
    (tests/test_webhooks.py checks the field, refusals and delivery)."""
    if isinstance(body, dict):
        body.pop("webhook", None)
    return body


@pytest.fixture(scope="module", params=[(), ("--front-processes", "2")], ids=["one-process", "two-fronts"])
def live_pod(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory):
    """``python -m worker pod`` on a free port with the settings the document was made from; jobs
    are submitted to it before the fuzzing starts. Yields (base URL, their ids)."""
    env = {**os.environ, "MODEL_NAME": "synthetic:tiny", "DEVICE": "cpu", "WARMUP_MAX_LEN": "16", "API_KEY": KEY,
           "PYTHONPATH": str(ROOT)}  # fmt: skip
    log = tmp_path_factory.mktemp("fuzz") / "pod.log"
    with log.open("wb") as out:
        process = subprocess.Popen([sys.executable, "-m", "worker", "pod", "--port", "0", *request.param], env=env,
                                   stdout=out, stderr=subprocess.STDOUT)  # fmt: skip
    try:
        url = _wait_listening(log, process)
        _wait_ready(url)
        ids = [_call(url, "/run", {"input": job})["id"] for job in BESIDE]
        yield url, ids
    finally:
        process.send_signal(signal.SIGTERM)
        process.wait(timeout=60)


@schema.parametrize()
@hypothesis.settings(
    max_examples=CASES_AN_OPERATION, derandomize=True, deadline=None, database=None,
    suppress_health_check=list(hypothesis.HealthCheck), phases=[hypothesis.Phase.explicit, hypothesis.Phase.generate],
)  # fmt: skip
def test_the_live_pod_answers_every_fuzzed_request_as_its_contract_says(case, live_pod) -> None:
    url, _ = live_pod
    response = case.call(base_url=url, headers={"Authorization": f"Bearer {KEY}"}, timeout=30)
    tried.append((case.operation.label, response.status_code))
    assert response.status_code < 500, (case.operation.label, response.status_code, response.text[:500])
    if response.status_code >= 400:
        assert ERROR.fullmatch(response.json()["error"]), response.text[:500]
    case.validate_response(
        response,
        checks=(not_a_server_error, status_code_conformance, content_type_conformance, response_schema_conformance),
    )


def test_jobs_beside_the_fuzzing_all_completed_and_the_pod_still_serves(live_pod) -> None:
    url, ids = live_pod
    statuses = [_wait_ended(url, job_id) for job_id in ids]
    assert [status["status"] for status in statuses] == ["COMPLETED"] * len(ids)
    assert all(len(status["output"]["results"]) == 16 for status in statuses)
    assert _call(url, "/runsync", {"input": {"operation": "classify", "headline": "Still Serving"}})["status"] == "COMPLETED"
    assert len(tried) > 100, len(tried)
    print(f"\nfuzzed {len(tried)} requests over {len({label for label, _ in tried})} operations; "
          f"statuses {sorted({status for _, status in tried})}")


def _call(url: str, path: str, body: dict | None = None) -> dict:
    request = urllib.request.Request(
        url + path, data=None if body is None else json.dumps(body).encode(), method="GET" if body is None else "POST",
        headers={"Authorization": f"Bearer {KEY}", "Content-Type": "application/json"},
    )  # fmt: skip
    with urllib.request.urlopen(request, timeout=60) as answer:
        return json.loads(answer.read())


def _wait_listening(log: Path, process: subprocess.Popen) -> str:
    for _ in range(600):
        for line in log.read_text().splitlines():
            if line.startswith("{") and json.loads(line).get("event") == "pod_listening":
                return json.loads(line)["url"]
        assert process.poll() is None, log.read_text()[-2000:]
        time.sleep(0.1)
    raise AssertionError("the pod never listened")


def _wait_ready(url: str) -> None:
    for _ in range(600):
        try:
            with urllib.request.urlopen(url + "/ping", timeout=5) as answer:
                if answer.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.1)
    raise AssertionError("the pod never became ready")


def _wait_ended(url: str, job_id: str) -> dict:
    for _ in range(1200):
        status = _call(url, f"/status/{job_id}")
        if status["status"] not in ("IN_QUEUE", "IN_PROGRESS"):
            return status
        time.sleep(0.1)
    raise AssertionError(f"job {job_id} never ended")
