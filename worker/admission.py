"""Admission: a job's pairs are accepted or refused at once, and tokenized with the loop tick's.

A job is refused on the spot, as before anything is queued: ``Overloaded`` when the queue is full,
``InvalidInput`` naming the pair whose hypothesis leaves no room for a premise. An accepted job
waits one event-loop tick: every job admitted in that tick has its new premises tokenized in one
call, which the tokenizer's Rust backend spreads over the cores without the GIL (a 339-job burst:
25 against 58 µs a headline on 2 cores, and the loop is free meanwhile for the threads that
collate and run batches). Then each job's pairs enter the batcher's queue, in the order the jobs
were admitted.

Premises go through a small LRU (``PREMISE_CACHE_SIZE``): the headline service makes several calls
about one headline at once, and the headline is tokenized once for all of them (12 against 50 µs
a 6-pair job on 2 cores); its pairs in those jobs share one tuple, which the batcher's merging of
identical pairs compares by identity.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import anyio
import numpy as np

from batching import Batcher, InvalidInput, ServiceError, Ticket, Unavailable
from worker.model import NliModel, PairTokens

Pair = tuple[str, str]


class PremiseCache:
    """Recent premises' token ids; the least recently used goes first. Size 0 keeps none."""

    def __init__(self, size: int) -> None:
        self.size = size
        self._ids: OrderedDict[str, tuple[int, ...]] = OrderedDict()

    def __len__(self) -> int:
        return len(self._ids)

    def lookup(self, texts: Iterable[str]) -> tuple[dict[str, tuple[int, ...]], list[str]]:
        """(the ids of the texts held, the texts not held)."""
        found: dict[str, tuple[int, ...]] = {}
        missing = []
        for text in texts:
            ids = self._ids.get(text)
            if ids is None:
                missing.append(text)
            else:
                self._ids.move_to_end(text)
                found[text] = ids
        return found, missing

    def add(self, text: str, ids: tuple[int, ...]) -> None:
        if self.size < 1:
            return
        self._ids[text] = ids
        if len(self._ids) > self.size:
            self._ids.popitem(last=False)


@dataclass(eq=False, slots=True)
class _Admitted:
    pairs: Sequence[Pair]
    hypotheses: list[tuple[int, ...]]
    timeout_s: float | None
    queued: anyio.Event
    """Set once the pairs are in the batcher's queue (``ticket``) or could not be (``error``):
    one event for every job of a tick, set when the tick's jobs are queued."""
    ticket: Ticket[np.ndarray] | None = None
    error: BaseException | None = None
    abandoned: bool = False


class QueuedPairs:
    """One job's admitted pairs: await ``logits()`` for them (cancel that await to drop them)."""

    __slots__ = ("_job", "_labels")

    def __init__(self, job: _Admitted, labels: int) -> None:
        self._job = job
        self._labels = labels

    async def logits(self) -> np.ndarray:
        """``[pairs, labels]`` float32; raises the job's ``ServiceError``."""
        job = self._job
        try:
            await job.queued.wait()
        except BaseException:
            job.abandoned = True  # not queued yet: it never will be
            if job.ticket is not None:  # queued: its items are dropped before compute
                job.ticket.drop()
            raise
        if job.error is not None:
            raise job.error
        assert job.ticket is not None
        rows = await job.ticket.result()
        # np.array stacks a job's rows (views of its batches' logits) in 1.3 µs, np.stack in 4.9.
        return np.array(rows) if rows else np.zeros((0, self._labels), dtype=np.float32)


class Admission:
    """Admits jobs' pairs for one model and batcher; ``run()`` tokenizes and queues them."""

    def __init__(self, model: NliModel, batcher: Batcher, premise_cache_size: int) -> None:
        self.model = model
        self.batcher = batcher
        self.premises = PremiseCache(premise_cache_size)
        self._admitted: list[_Admitted] = []
        self._admitted_pairs = 0
        self._tick = anyio.Event()
        self._queued = anyio.Event()  # the jobs admitted this tick wait on it

    @property
    def admitted_pairs(self) -> int:
        """Pairs accepted and not in the batcher's queue yet (tokenizing this tick)."""
        return self._admitted_pairs

    @property
    def admitted_jobs(self) -> int:
        return len(self._admitted)

    def admit(self, pairs: Sequence[Pair], *, timeout_s: float | None = None) -> QueuedPairs:
        """Accept the pairs, or raise the ``ServiceError`` that refuses them; nothing is queued
        or tokenized for a refused job."""
        self.batcher.check_admission(len(pairs), reserved_items=self._admitted_pairs)
        job = _Admitted(pairs, self._hypotheses(pairs), timeout_s, self._queued)
        self._admitted.append(job)
        self._admitted_pairs += len(pairs)
        self._tick.set()
        return QueuedPairs(job, len(self.model.labels))

    def tokenize(self, pairs: Sequence[Pair]) -> list[PairTokens]:
        """Token ids of one job's pairs, now."""
        return self.tokenize_tick([pairs])[0]

    def tokenize_tick(self, jobs: Sequence[Sequence[Pair]]) -> list[list[PairTokens]]:
        """Token ids of many jobs' pairs, their new premises in one call: what a tick costs."""
        return self._pairs(jobs, [self._hypotheses(pairs) for pairs in jobs])

    async def run(self) -> None:
        """Forever: wait for a tick's admitted jobs, tokenize their premises together, queue them."""
        while True:
            await self._tick.wait()
            self._tick = anyio.Event()
            jobs, queued = self._take_admitted()
            try:
                self._queue(jobs)
            finally:
                queued.set()

    def refuse_admitted(self, error: ServiceError | None = None) -> None:
        """End every job accepted and not queued yet with ``error`` (the engine is stopping)."""
        jobs, queued = self._take_admitted()
        for job in jobs:
            job.error = error or Unavailable("the engine shut down")
        queued.set()

    def _take_admitted(self) -> tuple[list[_Admitted], anyio.Event]:
        """The jobs admitted so far and the event they wait on; the next tick starts empty."""
        taken = self._admitted, self._queued
        self._admitted, self._admitted_pairs, self._queued = [], 0, anyio.Event()
        return taken

    def _hypotheses(self, pairs: Sequence[Pair]) -> list[tuple[int, ...]]:
        """Each pair's hypothesis ids (cached); ``InvalidInput`` naming a pair that cannot fit."""
        hypotheses = []
        for index, (_, hypothesis) in enumerate(pairs):
            ids = self.model.hypothesis_ids(hypothesis)
            try:
                self.model.check_hypothesis(ids)
            except ValueError as err:
                raise InvalidInput(f"pairs[{index}]: {err}") from err
            hypotheses.append(ids)
        return hypotheses

    def _premise_ids(self, texts: Iterable[str]) -> dict[str, tuple[int, ...]]:
        """Each text's ids: the cached ones, and the rest tokenized in one call."""
        found, missing = self.premises.lookup(texts)
        for text, ids in zip(missing, self.model.encode_texts(missing)):
            found[text] = ids
            self.premises.add(text, ids)
        return found

    def _pairs(
        self, jobs: Sequence[Sequence[Pair]], hypotheses: Sequence[list[tuple[int, ...]]]
    ) -> list[list[PairTokens]]:
        premises = self._premise_ids(dict.fromkeys(premise for pairs in jobs for premise, _ in pairs))
        pair = self.model.pair
        return [
            [pair(premises[premise], ids) for (premise, _), ids in zip(pairs, job_hypotheses)]
            for pairs, job_hypotheses in zip(jobs, hypotheses)
        ]

    def _queue(self, jobs: list[_Admitted]) -> None:
        live = [job for job in jobs if not job.abandoned]
        try:
            tokens = self._pairs([job.pairs for job in live], [job.hypotheses for job in live])
        except Exception as err:  # the tokenizer failed: every job ends with it (logged as internal)
            for job in live:
                job.error = err
            return
        for job, job_tokens in zip(live, tokens):
            try:
                job.ticket = self.batcher.enqueue(job_tokens, [t.length for t in job_tokens], timeout_s=job.timeout_s)
            except Exception as err:  # Overloaded on tokens, or Unavailable: this job's error
                job.error = err
