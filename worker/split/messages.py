"""What a front process and the model process say to each other: msgspec structs in msgpack.

A job's pairs travel as token ids, not text: every distinct id sequence of the job once, each as
one ``int32`` buffer, and each pair as three integers (its premise's sequence, its hypothesis's,
its assembled length). Its logits come back as ``float32`` rows, pairs x labels. Neither side
builds a Python object per token to send them, and the model process builds a sequence's tuple
once for every job that sends it (``SequenceCache``).

The model process's answers of one kind that follow each other before its next write go as one
message: the jobs accepted from one read of the socket (``Accepted``), the jobs a batch finished
(``Results``, their rows in one buffer). A front's jobs take a message each (``Submit``), but a
loop tick's leave in one write.
"""

from __future__ import annotations

from array import array
from collections.abc import Iterator, Sequence

import msgspec
import numpy as np

from batching import DeadlineExceeded, InferenceFailed, InvalidInput, Overloaded, ServiceError, Unavailable
from worker.pairs import PairTokens
from worker.split.frames import Sender


class Submit(msgspec.Struct, tag=True, array_like=True):
    """A front's job: admit its pairs (or refuse them), run them, answer ``Result``."""

    job: int
    """The front's number for the job, unique on its connection."""
    sequences: list[bytes]
    """The job's distinct id sequences, each ``int32``."""
    pairs: list[int]
    """Per pair, flat: premise sequence, hypothesis sequence, assembled length."""
    timeout_s: float | None
    wait_for_room: bool


class Cancel(msgspec.Struct, tag=True, array_like=True):
    """The front gave the job up: drop its queued pairs."""

    job: int


class Ping(msgspec.Struct, tag=True, array_like=True):
    """Answer ``Pong`` once every message sent before this one is taken."""

    key: int


class Pong(msgspec.Struct, tag=True, array_like=True):
    """The answer to ``Ping``, with what the shared queue holds now (a pod's ``/health``)."""

    key: int
    queued_pairs: int
    queued_tokens: int


class Scrape(msgspec.Struct, tag=True, array_like=True):
    """Answer ``Exposition``: the model process's metrics, for the pod's one ``/metrics``."""

    key: int


class Exposition(msgspec.Struct, tag=True, array_like=True):
    key: int
    text: bytes
    """OpenMetrics' text format, which keeps every family's type whole for the pod to merge."""


class Hello(msgspec.Struct, tag=True, array_like=True):
    """The model process's first message on a connection: what it serves, and where."""

    model: str
    device: str
    dtype: str


class Accepted(msgspec.Struct, tag=True, array_like=True):
    """These jobs' pairs are in the shared queue: they will not be refused for lack of room."""

    jobs: list[int]


class Results(msgspec.Struct, tag=True, array_like=True):
    """How these jobs ended well: each one's logits, one job after another."""

    jobs: list[int]
    pairs: list[int]
    """Each job's number of pairs: its rows of ``logits``."""
    logits: bytearray
    """``float32`` [pairs, labels], row-major, every job's rows in ``jobs``' order."""


class Failed(msgspec.Struct, tag=True, array_like=True):
    """The job was refused (before ``Accepted``) or failed (after it)."""

    job: int
    code: str
    message: str
    retry_after_s: float | None = None


ToModel = Submit | Cancel | Ping | Scrape
ToFront = Accepted | Results | Failed | Pong | Exposition | Hello

_ERRORS: dict[str, type[ServiceError]] = {
    cls.code: cls for cls in (InvalidInput, Overloaded, Unavailable, DeadlineExceeded, InferenceFailed)
}


def submit(job: int, tokens: Sequence[PairTokens], *, timeout_s: float | None, wait_for_room: bool) -> Submit:
    """The ``Submit`` of a job's tokenized pairs; a sequence shared by pairs is sent once."""
    index: dict[tuple[int, ...], int] = {}
    triples: list[int] = []
    for pair in tokens:
        premise = index.setdefault(pair.premise_ids, len(index))
        hypothesis = index.setdefault(pair.hypothesis_ids, len(index))
        triples += (premise, hypothesis, pair.length)
    return Submit(job, [array("i", ids).tobytes() for ids in index], triples, timeout_s, wait_for_room)


class SequenceCache:
    """Id sequences by their bytes, so the same headline or hypothesis sent in many jobs, from
    any front, becomes one tuple: identical pairs then merge in a batch, compared by identity
    first. Forgets everything once it holds ``size``."""

    def __init__(self, size: int = 16_384) -> None:
        self.size = size
        self._tuples: dict[bytes, tuple[int, ...]] = {}

    def pairs(self, message: Submit) -> list[PairTokens]:
        """The ``PairTokens`` a ``Submit`` carries."""
        tuples = self._tuples
        if len(tuples) > self.size:
            tuples.clear()
        sequences = [tuples.get(key) or self._add(key) for key in message.sequences]
        triples = iter(message.pairs)
        make = PairTokens._make
        return [make((sequences[p], sequences[h], n)) for p, h, n in zip(triples, triples, triples)]

    def _add(self, key: bytes) -> tuple[int, ...]:
        ids = array("i")
        ids.frombytes(key)
        sequence = self._tuples[key] = tuple(ids)
        return sequence


def failed(job: int, err: ServiceError) -> Failed:
    return Failed(job, err.code, err.message, getattr(err, "retry_after_s", None))


def error_of(message: Failed) -> ServiceError:
    """The ``ServiceError`` a ``Failed`` names: the same code, message and retry hint."""
    cls = _ERRORS.get(message.code, ServiceError)
    if cls is Overloaded:
        return Overloaded(message.message, retry_after_s=message.retry_after_s or 1.0)
    return cls(message.message)


MERGED_JOBS = 65_536
"""The most jobs one ``Accepted`` names; past it a new one starts."""
MERGED_LOGITS_BYTES = 1 << 20
"""A ``Results`` whose logits reach this takes no more jobs: a front that reads slowly while its
jobs keep finishing gets many messages, never one past ``frames.MAX_FRAME_BYTES``."""


def accept(sender: Sender[ToFront], job: int) -> None:
    """Send ``Accepted`` for ``job``: added to the one just queued, if it is one."""
    last = sender.last
    if type(last) is Accepted and len(last.jobs) < MERGED_JOBS:
        last.jobs.append(job)
    else:
        sender.send(Accepted([job]))


def answer(sender: Sender[ToFront], job: int, rows: Sequence[np.ndarray]) -> None:
    """Send ``job``'s logits (a ``float32`` row a pair, as ``NliModel.run`` gives them): added
    to the ``Results`` just queued, if it is one, so a batch's jobs go back in one message."""
    last = sender.last
    if type(last) is not Results or len(last.logits) >= MERGED_LOGITS_BYTES:
        last = Results([], [], bytearray())
        sender.send(last)
    last.jobs.append(job)
    last.pairs.append(len(rows))
    last.logits += b"".join(rows)  # bytes-like rows joined in C (a ndarray's += would add them)


def logits_of(message: Results, labels: int) -> Iterator[tuple[int, np.ndarray]]:
    """Each job of a ``Results`` with its logits, ``[pairs, labels]`` float32 (writable views of
    the message's buffer, one job's apart from another's)."""
    logits = np.frombuffer(message.logits, np.float32).reshape(-1, labels)
    start = 0
    for job, pairs in zip(message.jobs, message.pairs):
        yield job, logits[start : start + pairs]
        start += pairs
