"""The HTTP load driver: several ``bench/http_worker.py`` processes driven as one client.

The benchmark's event loop may itself serve the server under test (burst-nli's pod in process),
so the client lives in other processes and this side only hands out commands and merges the
answers: a burst's wall time is from the shared start to the last answer of any process.
"""

from __future__ import annotations

import sys
import time
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

import anyio
import msgspec
from anyio.abc import Process

from loadtest.stats import latency_summary_ms

WORKER = Path(__file__).with_name("http_worker.py")
START_DELAY_S = 0.1
"""How far ahead of now a phase's shared start is set: room to hand every process its command."""
_decode = msgspec.json.Decoder(list[tuple[float, float, bool]])


@dataclass(frozen=True, slots=True)
class HttpEndpoint:
    """Where jobs go and how a job's body is written: RunPod's ``{"input": ...}`` or the job bare."""

    name: str
    url: str
    wrap_input: bool = True
    expect_completed: bool = True

    def body(self, job_input: dict) -> str:
        return msgspec.json.encode({"input": job_input} if self.wrap_input else job_input).decode()


@dataclass(frozen=True, slots=True)
class PhaseResult:
    """A phase's requests merged over the processes: how many, how long, and their latencies."""

    requests: int
    failed: int
    wall_s: float
    latencies_s: list[float]

    @property
    def per_s(self) -> float:
        return self.requests / self.wall_s if self.wall_s else 0.0

    def latency_ms(self) -> dict[str, float]:
        return latency_summary_ms(self.latencies_s)


class ClientPool:
    """``procs`` client processes; ``burst``, ``sustained`` and ``idle`` split work across them."""

    def __init__(self, processes: list[Process]) -> None:
        self.processes = processes
        self._lines = [_LineReader(p) for p in processes]

    async def burst(self, target: HttpEndpoint, job_inputs: Sequence[dict]) -> PhaseResult:
        """Every job sent at once, dealt round-robin over the processes."""
        shares = [list(job_inputs[i :: len(self.processes)]) for i in range(len(self.processes))]
        commands = [self._command("burst", target, share) for share in shares]
        return await self._run(commands)

    async def sustained(self, target: HttpEndpoint, job_inputs: Sequence[dict], *, concurrency: int,
                        duration_s: float) -> PhaseResult:
        """``concurrency`` jobs kept in flight for ``duration_s`` (closed loop), split over the processes."""
        per_process = [concurrency // len(self.processes) + (i < concurrency % len(self.processes))
                       for i in range(len(self.processes))]
        commands = [self._command("sustained", target, job_inputs, concurrency=n, duration_s=duration_s)
                    for n in per_process if n]
        return await self._run(commands)

    async def idle(self, target: HttpEndpoint, job_inputs: Sequence[dict]) -> PhaseResult:
        """Jobs one at a time from the first process: a lone job's latency."""
        return await self._run([self._command("idle", target, job_inputs)])

    def _command(self, phase: str, target: HttpEndpoint, job_inputs: Sequence[dict], **extra: object) -> dict:
        bodies = [target.body(job_input) for job_input in job_inputs]
        return {"phase": phase, "url": target.url, "bodies": bodies, "expect_completed": target.expect_completed,
                **extra}

    async def _run(self, commands: list[dict]) -> PhaseResult:
        start_at = time.time() + START_DELAY_S
        for process, command in zip(self.processes[: len(commands)], commands, strict=True):
            assert process.stdin is not None
            await process.stdin.send(msgspec.json.encode({**command, "start_at": start_at}) + b"\n")
        outcomes = [o for reader in self._lines[: len(commands)] for o in _decode.decode(await reader.line())]
        if not outcomes:
            return PhaseResult(0, 0, 0.0, [])
        wall_s = max(end for _, end, _ in outcomes) - min(start for start, _, _ in outcomes)
        return PhaseResult(
            requests=len(outcomes),
            failed=sum(not ok for _, _, ok in outcomes),
            wall_s=wall_s,
            latencies_s=[end - start for start, end, ok in outcomes if ok],
        )


class _LineReader:
    """Whole lines from a process's stdout (a result can span many reads)."""

    def __init__(self, process: Process) -> None:
        assert process.stdout is not None
        self._stream = process.stdout
        self._buffer = b""

    async def line(self) -> bytes:
        while b"\n" not in self._buffer:
            chunk = await self._stream.receive()
            self._buffer += chunk
        line, _, self._buffer = self._buffer.partition(b"\n")
        return line


@asynccontextmanager
async def client_pool(procs: int) -> AsyncIterator[ClientPool]:
    """Start ``procs`` client processes; closing their stdin ends them."""
    processes: list[Process] = []
    try:
        for _ in range(procs):
            processes.append(await anyio.open_process([sys.executable, str(WORKER)], stderr=None))
        yield ClientPool(processes)
    finally:
        for process in processes:
            assert process.stdin is not None
            await process.stdin.aclose()
        with anyio.move_on_after(10):
            for process in processes:
                await process.wait()
        for process in processes:
            if process.returncode is None:
                process.kill()
