"""One HTTP client process of the load driver: aiohttp, commands on stdin, results on stdout.

``bench/http_load.py`` starts several of these so the client is never what limits a server (one
Python process tops out at a few thousand requests a second; an httpx client near a hundred, as
docs/MEASUREMENTS.md found). A process keeps one ``ClientSession`` for its life, so connections opened
by a warm-up phase are reused by the timed ones. It imports nothing of the project's and no torch:
it starts in well under a second.

Each command is one JSON line ``{"phase": ..., "url": ..., "bodies": [...], "start_at": <epoch s>,
...}``; the answer is one JSON line. Times are ``time.time()`` so processes can be compared.
"""

from __future__ import annotations

import asyncio
import itertools
import sys
import time
from typing import Any

import aiohttp
import msgspec

_decode = msgspec.json.Decoder()
_encode = msgspec.json.Encoder()
HEADERS = {"Content-Type": "application/json"}


class Outcome(msgspec.Struct, array_like=True):
    """One request: when it was sent and answered (epoch s), and whether it succeeded."""

    start: float
    end: float
    ok: bool


async def post(session: aiohttp.ClientSession, url: str, body: bytes, expect_completed: bool) -> Outcome:
    """POST one job; ``ok`` when the server answered 200 (and ``COMPLETED`` where it says)."""
    start = time.time()
    try:
        async with session.post(url, data=body, headers=HEADERS) as response:
            payload = await response.read()
            ok = response.status == 200
        if ok and expect_completed:
            ok = _decode.decode(payload).get("status") == "COMPLETED"
    except (aiohttp.ClientError, OSError, TimeoutError, msgspec.DecodeError):
        ok = False  # counted as failed: a load test must see refusals, not retry them away
    return Outcome(start, time.time(), ok)


async def wait_until(start_at: float) -> None:
    """Sleep to the shared start time, so every process's phase begins together."""
    await asyncio.sleep(max(0.0, start_at - time.time()))


async def burst(session: aiohttp.ClientSession, command: dict[str, Any]) -> list[Outcome]:
    """Every body sent at once."""
    await wait_until(command["start_at"])
    bodies = [body.encode() for body in command["bodies"]]
    return list(await asyncio.gather(*(post(session, command["url"], b, command["expect_completed"]) for b in bodies)))


async def sustained(session: aiohttp.ClientSession, command: dict[str, Any]) -> list[Outcome]:
    """Closed loop: ``concurrency`` senders, each sending its next job as soon as one returns,
    until ``duration_s`` has passed."""
    await wait_until(command["start_at"])
    stop_at = command["start_at"] + command["duration_s"]
    bodies = itertools.cycle([body.encode() for body in command["bodies"]])
    outcomes: list[Outcome] = []

    async def sender() -> None:
        while time.time() < stop_at:
            outcomes.append(await post(session, command["url"], next(bodies), command["expect_completed"]))

    await asyncio.gather(*(sender() for _ in range(command["concurrency"])))
    return outcomes


async def one_at_a_time(session: aiohttp.ClientSession, command: dict[str, Any]) -> list[Outcome]:
    """Each body alone, the next sent when the last returned: the latency of a quiet minute."""
    await wait_until(command["start_at"])
    return [await post(session, command["url"], body.encode(), command["expect_completed"])
            for body in command["bodies"]]


PHASES = {"burst": burst, "sustained": sustained, "idle": one_at_a_time}


async def serve_commands() -> None:
    """Answer commands from stdin until it closes."""
    loop = asyncio.get_running_loop()
    connector = aiohttp.TCPConnector(limit=0, ttl_dns_cache=None)
    timeout = aiohttp.ClientTimeout(total=None)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
        while line := await loop.run_in_executor(None, sys.stdin.readline):
            command = _decode.decode(line)
            outcomes = await PHASES[command["phase"]](session, command)
            sys.stdout.buffer.write(_encode.encode(outcomes) + b"\n")
            sys.stdout.flush()


if __name__ == "__main__":
    asyncio.run(serve_commands())
