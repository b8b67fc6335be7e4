"""What a front process and the model process say to each other: msgspec structs in msgpack.

A job's pairs travel as token ids, not text: every distinct id sequence of the job once, each as
one ``int32`` buffer, and each pair as three integers (its premise's sequence, its hypothesis's,
its assembled length). Its logits come back as one ``float32`` buffer of pairs x labels. Neither
side builds a Python object per token to send them, and the model process builds a sequence's
tuple once for every job that sends it (``SequenceCache``).
"""

from __future__ import annotations

from array import array
from collections.abc import Sequence

import msgspec
import numpy as np

from batching import DeadlineExceeded, InferenceFailed, InvalidInput, Overloaded, ServiceError, Unavailable
from worker.pairs import PairTokens


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
    """The job's pairs are in the shared queue: it will not be refused for lack of room."""

    job: int


class Result(msgspec.Struct, tag=True, array_like=True):
    job: int
    logits: bytes
    """``float32`` [pairs, labels], row-major."""


class Failed(msgspec.Struct, tag=True, array_like=True):
    """The job was refused (before ``Accepted``) or failed (after it)."""

    job: int
    code: str
    message: str
    retry_after_s: float | None = None


ToModel = Submit | Cancel | Ping | Scrape
ToFront = Accepted | Result | Failed | Pong | Exposition | Hello

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
        flat = message.pairs
        return [PairTokens(sequences[p], sequences[h], n) for p, h, n in zip(flat[::3], flat[1::3], flat[2::3])]

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


def logits_of(message: Result, labels: int) -> np.ndarray:
    """A ``Result``'s logits, ``[pairs, labels]`` float32 (a writable copy of the buffer)."""
    return np.frombuffer(message.logits, np.float32).reshape(-1, labels).copy()
