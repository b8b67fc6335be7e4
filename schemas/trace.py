"""The load-test trace format: JSON Lines, a header line, then one job a line.

    {"trace": 1, "name": "peak-minute", "created": "2026-11-23T14:10:00Z", "description": "..."}
    {"t": 0.0, "input": {"operation": "classify", "headline": "..."}}
    {"t": 0.013, "input": {...}}

``t`` is seconds from the start of the trace; ``input`` is a job's input exactly as a caller
sends it (``/run``'s ``{"input": ...}`` without the wrapper). The generator writes traces, the pod
server's ``--record`` appends to one, and the replayer reads them. A reader rejects a malformed
line with its line number; job inputs are not validated here (a trace may hold bad jobs on
purpose), only their framing.
"""

from __future__ import annotations

import datetime as dt
import os
import threading
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any, BinaryIO

import msgspec

from schemas.decoding import explain_validation_error, why_not_json

TRACE_VERSION = 1


class TraceError(ValueError):
    """A trace file is malformed; the message names the file and line."""


class TraceHeader(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    trace: int
    name: str
    created: str
    """ISO 8601 UTC time the trace starts at; a recording's ``t`` counts from it."""
    description: str = ""


class TraceJob(msgspec.Struct, forbid_unknown_fields=True):
    t: float
    input: Any


class Trace(msgspec.Struct):
    header: TraceHeader
    jobs: list[TraceJob]
    """In arrival order (sorted by ``t``, stable)."""

    @property
    def duration_s(self) -> float:
        return self.jobs[-1].t if self.jobs else 0.0


_encoder = msgspec.json.Encoder()
_header_decoder = msgspec.json.Decoder(TraceHeader)
_job_decoder = msgspec.json.Decoder(TraceJob)


def utc_now_iso() -> str:
    return dt.datetime.now(dt.UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def new_header(name: str, description: str = "", created: str | None = None) -> TraceHeader:
    return TraceHeader(trace=TRACE_VERSION, name=name, created=created or utc_now_iso(), description=description)


def read_trace(path: str | os.PathLike[str]) -> Trace:
    """Read and check a whole trace; raises ``TraceError`` naming the first bad line."""
    path = Path(path)
    try:
        lines = path.read_bytes().splitlines()
    except OSError as err:
        raise TraceError(f"{path}: cannot read: {err.strerror or err}") from err
    numbered = [(number, line) for number, line in enumerate(lines, start=1) if line.strip()]
    if not numbered:
        raise TraceError(f"{path}: empty file; a trace starts with a header line")
    number, line = numbered[0]
    header = _decode(_header_decoder, line, path, number, 'a header {"trace": 1, "name", "created"}')
    _check_header(header, path, number)
    jobs = []
    for number, line in numbered[1:]:
        job = _decode(_job_decoder, line, path, number, 'a job {"t": <seconds>, "input": {...}}')
        if not (job.t >= 0 and job.t != float("inf")):
            raise TraceError(f"{path}:{number}: t must be a finite number of seconds >= 0, got {job.t}")
        if not isinstance(job.input, dict):
            raise TraceError(f"{path}:{number}: input must be a JSON object, got {type(job.input).__name__}")
        jobs.append(job)
    jobs.sort(key=lambda job: job.t)
    return Trace(header=header, jobs=jobs)


def write_trace(path: str | os.PathLike[str], header: TraceHeader, jobs: Iterable[TraceJob]) -> int:
    """Write a whole trace (replacing the file); returns the number of jobs written."""
    count = 0
    with open(path, "wb") as out:
        out.write(_encoder.encode(header) + b"\n")
        for job in jobs:
            out.write(_encoder.encode(job) + b"\n")
            count += 1
    return count


class TraceRecorder:
    """Appends accepted jobs to a trace as they arrive (the pod server's ``--record``).

    A new or empty file gets a header whose ``created`` is now; an existing trace is appended to,
    with ``t`` still counted from its header's ``created``, so restarts keep one timeline. Each
    line is written and flushed whole under a lock: a crash loses at most the line in flight.
    """

    def __init__(self, path: str | os.PathLike[str], *, name: str = "recording", description: str = "") -> None:
        self.path = Path(path)
        self._lock = threading.Lock()
        header = _reopen(self.path)
        self._file = open(self.path, "ab")  # noqa: SIM115 - closed by close()
        if header is None:
            header = new_header(name, description or "jobs accepted by a burst-nli pod server")
            self._file.write(_encoder.encode(header) + b"\n")
            self._file.flush()
        self._start_wall = _parse_time(header.created, str(self.path))
        self._start_mono = time.monotonic()
        self._offset = time.time() - self._start_wall
        self.recorded = 0

    def record(self, job_input: Any) -> None:
        t = round(self._offset + time.monotonic() - self._start_mono, 6)
        line = _encoder.encode(TraceJob(t=max(t, 0.0), input=job_input)) + b"\n"
        with self._lock:
            self._file.write(line)
            self._file.flush()
            self.recorded += 1

    def close(self) -> None:
        with self._lock:
            self._file.close()

    def __enter__(self) -> TraceRecorder:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _reopen(path: Path) -> TraceHeader | None:
    """The header of an existing, non-empty trace (``None`` for a new or empty file).

    A line cut short by a crash (no final newline) is truncated away first, so appending
    continues on a line of its own and the file still reads.
    """
    try:
        with open(path, "r+b") as file:
            size = file.seek(0, os.SEEK_END)
            if size and _byte_at(file, size - 1) != b"\n":
                file.truncate(_after_last_newline(file, size))
            file.seek(0)
            first = file.readline()
    except FileNotFoundError:
        return None
    if not first.strip():
        return None
    header = _decode(_header_decoder, first, path, 1, 'a header {"trace": 1, "name", "created"}')
    _check_header(header, path, 1)
    return header


def _byte_at(file: BinaryIO, offset: int) -> bytes:
    file.seek(offset)
    return file.read(1)


def _after_last_newline(file: BinaryIO, size: int, chunk: int = 65536) -> int:
    """The offset just past the file's last newline (0 when it has none), read from the end."""
    end = size
    while end > 0:
        start = max(end - chunk, 0)
        file.seek(start)
        found = file.read(end - start).rfind(b"\n")
        if found >= 0:
            return start + found + 1
        end = start
    return 0


def _decode(decoder: msgspec.json.Decoder, line: bytes, path: Path, number: int, expected: str) -> Any:
    try:
        return decoder.decode(line)
    except msgspec.ValidationError as err:  # a subclass of DecodeError: catch it first
        raise TraceError(f"{path}:{number}: expected {expected}: {explain_validation_error(str(err), root='line')}") from err
    except (msgspec.DecodeError, RecursionError, UnicodeDecodeError) as err:
        raise TraceError(f"{path}:{number}: expected {expected}: malformed JSON: {why_not_json(line)}") from err


def _check_header(header: TraceHeader, path: Path, number: int) -> None:
    if header.trace != TRACE_VERSION:
        raise TraceError(f"{path}:{number}: trace version {header.trace} is not supported (expected {TRACE_VERSION})")
    _parse_time(header.created, f"{path}:{number}")


def _parse_time(value: str, where: str) -> float:
    try:
        parsed = dt.datetime.fromisoformat(value)
    except ValueError as err:
        raise TraceError(f"{where}: created must be an ISO 8601 time, got {value!r}") from err
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=dt.UTC)
    return parsed.timestamp()
