"""Helpers for tests that run the pod: jobs on real headlines, polling, ``python -m worker pod``
as a subprocess with its JSON log read as it goes."""

from __future__ import annotations

import json
import os
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import anyio
import anyio.abc
import httpx
import pytest

from schemas import OPERATIONS

ROOT = Path(__file__).resolve().parents[1]
HEADLINES = [
    line.strip()
    for line in (ROOT / "tests" / "data" / "example_headlines.txt").read_text(encoding="utf-8").splitlines()
    if line.strip()
]
POLL_INTERVAL_S = 0.05
POLL_ROUNDS = 400
"""Bounded polling: at most this many rounds of ``/status`` over the pending jobs."""


def job_input(examples: dict[str, dict], i: int) -> tuple[str, dict]:
    """A valid job of each operation in turn, on real headlines."""
    operation = OPERATIONS[i % len(OPERATIONS)]
    job = dict(examples[operation])
    for key in ("headline", "text"):
        if key in job:
            job[key] = HEADLINES[i % len(HEADLINES)]
    return operation, {"operation": operation, **job}


async def poll_until_done(client: httpx.AsyncClient, ids: list[str]) -> dict[str, dict]:
    """Poll ``/status`` until every job has ended (bounded in rounds and in time)."""
    done: dict[str, dict] = {}
    with anyio.fail_after(60):
        for _ in range(POLL_ROUNDS):
            pending = [job_id for job_id in ids if job_id not in done]
            if not pending:
                return done
            async with anyio.create_task_group() as tg:
                for job_id in pending:
                    tg.start_soon(_poll_one, client, job_id, done)
            await anyio.sleep(POLL_INTERVAL_S)  # a client's poll interval, not synchronisation
    raise AssertionError(f"{len(ids) - len(done)} jobs still running after {POLL_ROUNDS} rounds")



async def _poll_one(client: httpx.AsyncClient, job_id: str, done: dict[str, dict]) -> None:
    response = await client.get(f"/status/{job_id}")
    assert response.status_code == 200, response.text
    body = response.json()
    if body["status"] not in ("IN_QUEUE", "IN_PROGRESS"):
        done[job_id] = body


@asynccontextmanager
async def pod_process(
    cwd: Path, lines: list[dict], env: dict[str, str], *args: str, port: int | None = 0
) -> AsyncIterator[tuple[anyio.abc.Process, JsonLines, httpx.AsyncClient]]:
    """``python -m worker pod`` on a free loopback port (``port=None``: as ``PORT`` says) with
    ``synthetic:tiny`` and ``env``; yields it, its log reader (lines read land in ``lines``) and a
    client once it serves. Killed on error."""
    env = {**{k: v for k, v in os.environ.items() if k != "API_KEY"}, "MODEL_NAME": "synthetic:tiny",
           "DEVICE": "cpu", "WARMUP_MAX_LEN": "16", "PYTHONPATH": str(ROOT), **env}  # fmt: skip
    ports = [] if port is None else ["--port", str(port)]
    command = [sys.executable, "-m", "worker", "pod", "--host", "127.0.0.1", *ports, *args]
    async with await anyio.open_process(command, env=env, stderr=None, cwd=cwd) as process:
        assert process.stdout is not None
        try:
            reader = JsonLines(process.stdout)
            started = await reader.until(lambda line: line["event"] == "pod_listening", lines)
            async with httpx.AsyncClient(base_url=started["url"], timeout=30) as client:
                await wait_until_ready(client)
                yield process, reader, client
        except BaseException:
            process.kill()
            raise


async def wait_until_ready(client: httpx.AsyncClient) -> None:
    """Poll ``/ping`` as RunPod's load balancer does: 204 while loading, 200 once ready."""
    for _ in range(400):
        try:
            if (await client.get("/ping")).status_code == 200:
                return
        except httpx.TransportError:
            pass
        await anyio.sleep(0.05)
    pytest.fail("the pod never became ready")


class JsonLines:
    """Our JSON log lines from a process's stdout (other lines are skipped)."""

    def __init__(self, stream: anyio.abc.ByteReceiveStream) -> None:
        self._stream = stream
        self._buffer = b""

    async def until(self, wanted, seen: list[dict]) -> dict:  # type: ignore[no-untyped-def]
        while True:
            while b"\n" in self._buffer:
                raw, self._buffer = self._buffer.split(b"\n", 1)
                if raw.startswith(b"{"):
                    line = json.loads(raw)
                    seen.append(line)
                    if wanted(line):
                        return line
            self._buffer += await self._stream.receive()
