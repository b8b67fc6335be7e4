"""Serverless metrics that arrive: a real worker under the local RunPod queue pushes to a real
Pushgateway, a real Prometheus scrapes the gateway, and the job counts come back through
Prometheus' query API; when the worker stops, its group leaves the gateway.

Needs ``prometheus`` and ``prometheus-pushgateway`` (Debian's packages; ``.ci/run`` installs them).
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import anyio
import httpx
import pytest
from test_emulator import serverless_worker, wait_all_final
from test_prometheus import (
    free_port,
    prometheus_command,
    query,
    require_prometheus,
    running,
    wait_ready,
    write_config,
)

ROOT = Path(__file__).resolve().parents[1]
JOBS = 20


def require_pushgateway() -> str:
    binary = shutil.which("prometheus-pushgateway") or shutil.which("pushgateway")
    if binary is not None:
        return binary
    if os.environ.get("BURST_NLI_REQUIRE_PROMETHEUS") == "1":
        pytest.fail("BURST_NLI_REQUIRE_PROMETHEUS=1 but no Pushgateway on PATH (apt-get install prometheus-pushgateway)")
    pytest.skip("no Pushgateway on PATH (apt-get install prometheus-pushgateway)")


async def poll(client: httpx.AsyncClient, expression: str, wanted, timeout_s: float = 90):  # type: ignore[no-untyped-def]
    """Query Prometheus until ``wanted(result)`` (its scrape and the pushes are periodic)."""
    result: list[dict] = []
    with anyio.fail_after(timeout_s):
        while True:
            try:
                result = await query(client, expression)
            except httpx.TransportError:
                result = []  # still starting
            if wanted(result):
                return result
            await anyio.sleep(0.25)


@pytest.mark.parametrize("layout", [(), ("--model-process",)], ids=["one-process", "model-process"])
async def test_a_serverless_worker_pushes_its_metrics_and_deletes_them_when_it_stops(
    runpod_emulator, tmp_path, layout: tuple[str, ...]
) -> None:
    prometheus_binary, gateway_binary = require_prometheus(), require_pushgateway()
    gateway_port, prometheus_port = free_port(), free_port()
    gateway_url = f"http://127.0.0.1:{gateway_port}"
    config = write_config(tmp_path, f"127.0.0.1:{gateway_port}", honor_labels=True)
    with (
        running([gateway_binary, f"--web.listen-address=127.0.0.1:{gateway_port}"], tmp_path / "gateway.log"),
        running(prometheus_command(prometheus_binary, config, tmp_path / "data", prometheus_port),
                tmp_path / "prometheus.log"),  # fmt: skip
    ):
        async with (
            runpod_emulator(long_poll_s=1.0) as emu,
            httpx.AsyncClient(base_url=f"http://127.0.0.1:{prometheus_port}", timeout=5) as prometheus,
            httpx.AsyncClient(base_url=gateway_url, timeout=5) as gateway,
        ):
            await wait_ready(prometheus)
            worker = emu.worker_env["RUNPOD_POD_ID"]
            env = {
                **{k: v for k, v in os.environ.items() if not k.startswith("RUNPOD_")}, **emu.worker_env,
                "MODEL_NAME": "synthetic:tiny", "WARMUP_MAX_LEN": "16", "PYTHONPATH": str(ROOT),
                "METRICS_PUSH_URL": gateway_url, "METRICS_PUSH_INTERVAL_S": "0.5",
            }  # fmt: skip
            async with (
                httpx.AsyncClient(base_url=emu.base_url, headers=emu.headers, timeout=30) as client,
                serverless_worker(env, tmp_path / "worker.log", tmp_path, layout),
            ):
                jobs = [{"operation": "classify", "headline": f"Fed Holds Rates, Take {i}"} for i in range(JOBS)]
                ids = [(await client.post("/run", json={"input": job})).json()["id"] for job in jobs]
                final = await wait_all_final(client, ids, timeout_s=120)
                selector = f'job="burst-nli",endpoint="{emu.endpoint_id}",worker="{worker}"'
                counted = await poll(
                    prometheus, f'sum(nli_jobs_total{{{selector},status="completed"}})',
                    lambda result: result and float(result[0]["value"][1]) == JOBS,
                )  # fmt: skip
                process_memory = await query(prometheus, f"process_resident_memory_bytes{{{selector}}}")
                model_ready = await query(prometheus, f"nli_model_ready{{{selector}}}")
            # The worker has stopped (SIGTERM, as RunPod stops it): its group is gone from the gateway.
            with anyio.fail_after(30):
                while worker in (await gateway.get("/api/v1/metrics")).text:
                    await anyio.sleep(0.25)
    assert [final[job_id]["status"] for job_id in ids] == ["COMPLETED"] * JOBS
    assert float(counted[0]["value"][1]) == JOBS
    assert process_memory and all(float(sample["value"][1]) > 0 for sample in process_memory)
    # With a model process, each of the two processes' series carries its own label.
    processes = {sample["metric"].get("process") for sample in process_memory}
    assert processes == ({"front-0", "model"} if layout else {None})
    assert [(sample["metric"].get("process"), sample["value"][1]) for sample in model_ready] == [
        ("model" if layout else None, "1")
    ]
