"""Reading a request: the body within its byte limit, ``/runsync``'s ``?wait=``.

The body's JSON is RunPod's ``RunRequest``, decoded by ``schemas.runpod.decode_run_request``.
"""

from __future__ import annotations

from starlette.requests import Request

from batching import InvalidInput
from worker.pod.http import PayloadTooLarge, UnsupportedMediaType

RUNSYNC_DEFAULT_WAIT_MS = 90_000
RUNSYNC_MAX_WAIT_MS = 300_000
"""``/runsync?wait=`` is in milliseconds, as on RunPod's endpoints (1000 to 300000 there)."""

async def read_body(request: Request, limit: int) -> bytes:
    """The body, refused with 413 past ``limit`` by its Content-Length or as it streams in, and
    with 415 if it is compressed: a gzip body read as JSON would fail as "malformed JSON", and
    decompressing it would let a small body grow past the limit."""
    encoding = request.headers.get("content-encoding", "identity").strip().lower()
    if encoding not in ("", "identity"):
        raise UnsupportedMediaType(f"Content-Encoding {encoding[:40]!r}: send the JSON body uncompressed")
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        raise PayloadTooLarge(f"body of {declared} bytes is over MAX_BODY_BYTES={limit}")
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise PayloadTooLarge(f"body is over MAX_BODY_BYTES={limit}")
        chunks.append(chunk)
    return b"".join(chunks)


def parse_wait_ms(raw: str | None) -> int:
    """``/runsync``'s ``?wait=``: whole milliseconds, like RunPod's."""
    if raw is None:
        return RUNSYNC_DEFAULT_WAIT_MS
    # ASCII digits only: str.isdigit() also takes "²" (int() then fails) and other scripts' digits.
    if not (raw.isascii() and raw.isdigit()) or len(raw) > 7 or int(raw) > RUNSYNC_MAX_WAIT_MS:
        raise InvalidInput(f"wait: expected milliseconds from 0 to {RUNSYNC_MAX_WAIT_MS}, got {raw[:20]!r}")
    return int(raw)
