"""A real Prometheus scrapes the pod server's /metrics: the ``nli_`` series dashboards read.

Needs the ``prometheus`` binary (Debian's package; ``.ci/run`` installs it). Without it the test
is skipped, unless ``BURST_NLI_REQUIRE_PROMETHEUS=1`` (CI) makes a missing binary a failure.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import anyio
import httpx
import pytest

PROMETHEUS = shutil.which("prometheus")
SERIES = (
    "nli_jobs_total", "nli_job_latency_seconds_count", "nli_batch_pairs_count", "nli_batch_tokens_sum",
    "nli_queue_pairs", "nli_inflight_jobs", "nli_model_load_seconds",
)  # fmt: skip


def require_prometheus() -> str:
    if PROMETHEUS is not None:
        return PROMETHEUS
    if os.environ.get("BURST_NLI_REQUIRE_PROMETHEUS") == "1":
        pytest.fail("BURST_NLI_REQUIRE_PROMETHEUS=1 but no prometheus binary on PATH (apt-get install prometheus)")
    pytest.skip("no prometheus binary on PATH (apt-get install prometheus)")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def write_config(directory: Path, target: str, *, honor_labels: bool = False) -> Path:
    """Scrape ``target`` every second as job ``burst-nli`` (``honor_labels``: keep the pushed
    ``job`` and ``worker`` labels of a Pushgateway's series)."""
    config = directory / "prometheus.yml"
    config.write_text(
        "global:\n"
        "  scrape_interval: 1s\n"
        "  scrape_timeout: 1s\n"
        "scrape_configs:\n"
        "  - job_name: burst-nli\n"
        f"    honor_labels: {str(honor_labels).lower()}\n"
        "    metrics_path: /metrics\n"
        "    static_configs:\n"
        f"      - targets: ['{target}']\n",
        encoding="utf-8",
    )
    return config


@contextmanager
def running(command: list[str], log: Path) -> Iterator[subprocess.Popen[bytes]]:
    """A server binary (Prometheus, the Pushgateway) for the block; stopped and reaped after."""
    with log.open("wb") as out:
        process = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT)
    try:
        yield process
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def prometheus_command(binary: str, config: Path, data: Path, port: int) -> list[str]:
    return [binary, f"--config.file={config}", f"--storage.tsdb.path={data}", f"--web.listen-address=127.0.0.1:{port}"]


async def wait_ready(client: httpx.AsyncClient, timeout_s: float = 90) -> None:
    """Poll Prometheus's readiness endpoint until it answers 200: its query API answers 503
    until its storage has started."""
    with anyio.fail_after(timeout_s):
        while True:
            try:
                if (await client.get("/-/ready")).status_code == 200:
                    return
            except httpx.TransportError:
                pass  # not listening yet
            await anyio.sleep(0.25)


async def query(client: httpx.AsyncClient, expression: str) -> list[dict]:
    response = await client.get("/api/v1/query", params={"query": expression})
    response.raise_for_status()
    return response.json()["data"]["result"]


async def wait_for_series(client: httpx.AsyncClient, process: subprocess.Popen[bytes]) -> dict[str, list[dict]]:
    """Poll the query API until every series in ``SERIES`` has come back (bounded)."""
    found: dict[str, list[dict]] = {}
    for _ in range(240):
        assert process.poll() is None, "prometheus exited"
        try:
            for name in SERIES:
                found[name] = found.get(name) or await query(client, f'{name}{{job="burst-nli"}}')
        except httpx.TransportError:
            pass  # still starting
        if all(found.get(name) for name in SERIES):
            return found
        await anyio.sleep(0.25)  # Prometheus's own start and 1 s scrape interval
    missing = [name for name in SERIES if not found.get(name)]
    raise AssertionError(f"prometheus never returned {missing}")


async def test_prometheus_scrapes_the_nli_series(pod_server, tmp_path: Path) -> None:
    binary = require_prometheus()
    jobs = [{"operation": "classify", "headline": f"Apple Declares ${i}.25 Dividend"} for i in range(3)]
    async with pod_server() as base_url, httpx.AsyncClient(base_url=base_url, timeout=30) as pod:
        for job in jobs:
            assert (await pod.post("/runsync", json={"input": job})).json()["status"] == "COMPLETED"
        port = free_port()
        config = write_config(tmp_path, base_url.removeprefix("http://"))
        with running(prometheus_command(binary, config, tmp_path / "data", port), tmp_path / "prometheus.log") as process:
            async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=5) as prometheus:
                await wait_ready(prometheus)
                with anyio.fail_after(90):
                    found = await wait_for_series(prometheus, process)
                up = await query(prometheus, 'up{job="burst-nli"}')
    completed = [s for s in found["nli_jobs_total"] if s["metric"].get("status") == "completed"]
    assert completed and completed[0]["metric"]["operation"] == "classify"
    assert float(completed[0]["value"][1]) == len(jobs)
    assert float(found["nli_batch_pairs_count"][0]["value"][1]) >= 1
    assert float(found["nli_queue_pairs"][0]["value"][1]) == 0
    assert up and up[0]["value"][1] == "1"
