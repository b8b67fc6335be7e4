"""Admission: a job's pairs are accepted, refused or (serverless) held for room, in arrival order.

Every check runs before a front end says "accepted". At ``admit``: a job larger than the whole
queue is ``InvalidInput`` naming the limit, a pair whose hypothesis leaves no room for a premise
is ``InvalidInput`` naming the pair, and (pod) a queue already full of pairs is ``Overloaded``.
The job then waits one event-loop tick: every job admitted in that tick has its new premises
tokenized in one call, which the tokenizer's Rust backend spreads over the cores without the GIL
while the loop is free for the threads that collate and run batches. With its tokens known, each
job's pairs enter the batcher's queue in admission order, or:

- a pod job that the tokens no longer fit is ``Overloaded``; the pod awaits ``accepted()``
  before it answers, so that job is a 429, never a 200 that fails later;
- a serverless job (``wait_for_room``) is never failed for lack of room: RunPod does not retry a
  job a worker took. It waits in the waiting room, strictly first come first served (a big job
  is not overtaken by small ones), until the queue has room for all its pairs and tokens, or
  its deadline passes (``timed_out``).

Tokenizing itself, and the premise cache, are ``worker/tokenizing.py``'s. A split worker's model
process admits pairs its front processes tokenized (``admit_tokens``): no tick to wait for.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import anyio
import numpy as np

from batching import Batcher, DeadlineExceeded, InvalidInput, ServiceError, Ticket, Unavailable, clock
from worker.model import NliModel
from worker.pairs import PairTokens
from worker.tokenizing import Pair, PairTokenizer, premises_of

@dataclass(eq=False, slots=True)
class _Admitted:
    pairs: Sequence[Pair] | Sequence[PairTokens]
    """The job's pairs as text, or as ids when a front process tokenized them; counted by length."""
    hypotheses: list[tuple[int, ...]]
    timeout_s: float | None
    deadline: float
    """``clock()`` past which it ends ``timed_out`` (``math.inf``: none)."""
    wait_for_room: bool
    settled: anyio.Event
    """Set once the pairs are in the batcher's queue (``ticket``) or never will be (``error``).
    The jobs of a tick share one event, set when the tick's jobs are queued; a job sent to the
    waiting room gets its own."""
    tokens: list[PairTokens] | None = None
    costs: list[int] | None = None
    """Each pair's length in tokens, once tokenized."""
    token_count: int = 0
    ticket: Ticket[np.ndarray] | None = None
    error: BaseException | None = None
    abandoned: bool = False


class QueuedPairs:
    """One job's admitted pairs: await ``logits()`` for them (cancel that await to drop them).

    The one handle a front end holds, from admission to result, whether the pairs are still
    tokenizing, waiting for room or queued in the batcher; a cancelled wait ends the job through
    one path (``_abandon``) in any of those states.
    """

    __slots__ = ("_job", "_labels", "_admission")

    def __init__(self, job: _Admitted, labels: int, admission: Admission) -> None:
        self._job = job
        self._labels = labels
        self._admission = admission

    async def accepted(self) -> None:
        """Return once the pairs are in the shared queue; raise what kept them out
        (``Overloaded`` on tokens, ``timed_out`` in the waiting room, ``Unavailable``)."""
        try:
            await self._settle()
        except BaseException:
            self._abandon()
            raise
        if self._job.error is not None:
            raise self._job.error

    async def logits(self) -> np.ndarray:
        """``[pairs, labels]`` float32; raises the job's ``ServiceError``."""
        job = self._job
        try:
            await self._settle()
            if job.error is not None:
                raise job.error
            assert job.ticket is not None
            rows = await job.ticket.result()
        except BaseException:
            self._abandon()
            raise
        return self._stacked(rows)

    @property
    def in_queue(self) -> bool:
        """Whether the pairs are in the batcher's queue already (not tokenizing, not waiting for
        room, not refused): ``when_done`` can follow them."""
        return self._job.ticket is not None

    def when_done(self, callback: Callable[[list[np.ndarray] | None, ServiceError | None], None]) -> None:
        """For pairs ``in_queue``: call ``callback(rows, error)`` once they end, instead of
        awaiting ``logits()`` (``Ticket.when_done``): each pair's row of logits, unstacked, for
        a caller that copies them out anyway; ``(None, None)`` once ``drop``ped."""
        assert self._job.ticket is not None
        self._job.ticket.when_done(callback)

    def drop(self) -> None:
        """Give the job up wherever it is, without waiting."""
        self._abandon()

    def _stacked(self, rows: list[np.ndarray]) -> np.ndarray:
        # np.array stacks a job's rows (views of its batches' logits) faster than np.stack.
        return np.array(rows) if rows else np.zeros((0, self._labels), dtype=np.float32)

    async def _settle(self) -> None:
        """Wait until the pairs are queued or refused; past the deadline, refuse them here."""
        job = self._job
        while job.ticket is None and job.error is None:
            settled = job.settled  # a job sent to the waiting room gets a new event: look again
            if job.deadline == math.inf:
                await settled.wait()
                continue
            with anyio.move_on_after(job.deadline - clock()):
                await settled.wait()
            if job.ticket is None and job.error is None and clock() >= job.deadline:
                job.error = DeadlineExceeded(f"no room in the queue within {job.timeout_s:g} s")
                self._abandon()

    def _abandon(self) -> None:
        """End the job wherever it is: not queued yet, it never will be; queued, its items are
        dropped before compute (a no-op once it has ended); waiting, the jobs behind it move up."""
        job = self._job
        job.abandoned = True
        if job.ticket is not None:
            job.ticket.drop()
        elif job.wait_for_room:
            self._admission.queue_waiting()


class Admission:
    """Admits jobs' pairs for one model and batcher; ``run()`` tokenizes and queues them, and
    ``serve_waiting_room()`` queues held jobs as room frees up."""

    def __init__(self, model: NliModel, batcher: Batcher, premise_cache_size: int) -> None:
        self.model = model
        self.batcher = batcher
        self.tokenizer = PairTokenizer(model, premise_cache_size)
        self._admitted: list[_Admitted] = []
        self._admitted_pairs = 0
        self._tick = anyio.Event()
        self._settled = anyio.Event()  # the jobs admitted this tick wait on it
        self._waiting: deque[_Admitted] = deque()
        self._waiting_pairs = 0
        self._waiting_tokens = 0

    @property
    def admitted_pairs(self) -> int:
        """Pairs accepted and not in the batcher's queue yet: tokenizing this tick, or waiting
        for room."""
        return self._admitted_pairs + self._waiting_pairs

    @property
    def admitted_jobs(self) -> int:
        return len(self._admitted) + len(self._waiting)

    @property
    def waiting_tokens(self) -> int:
        """Tokens of the jobs in the waiting room."""
        return self._waiting_tokens

    @property
    def waiting_jobs(self) -> int:
        """Jobs held in the waiting room until the queue has room for them."""
        return len(self._waiting)

    def admit(
        self, pairs: Sequence[Pair], *, timeout_s: float | None = None, wait_for_room: bool = False
    ) -> QueuedPairs:
        """Accept the pairs, or raise the ``ServiceError`` that refuses them; nothing is queued
        or tokenized for a refused job. ``wait_for_room``: hold the job until the queue has room
        (bounded by ``timeout_s``) instead of refusing it as ``Overloaded``."""
        if len(pairs) > self.batcher.policy.max_queue_items:
            raise self._too_big(len(pairs))
        if wait_for_room:
            if not self.batcher.running:
                raise Unavailable("the batcher is not running")
        else:
            self.batcher.check_admission(len(pairs), reserved_items=self.admitted_pairs)
        deadline = math.inf if timeout_s is None else clock() + timeout_s
        job = _Admitted(pairs, self.tokenizer.hypotheses(pairs), timeout_s, deadline, wait_for_room, self._settled)
        self._admitted.append(job)
        self._admitted_pairs += len(pairs)
        self._tick.set()
        return QueuedPairs(job, len(self.model.labels), self)

    def admit_tokens(
        self, tokens: Sequence[PairTokens], *, timeout_s: float | None = None, wait_for_room: bool = False
    ) -> QueuedPairs:
        """``admit`` for pairs already tokenized (by a front process): with their tokens known
        there is no tick to wait for, so they are queued, held for room or refused now, by the
        same rules and behind the same waiting room."""
        costs = [pair.length for pair in tokens]
        token_count = sum(costs)
        policy = self.batcher.policy
        if len(tokens) > policy.max_queue_items or token_count > policy.max_queue_tokens:
            raise self._too_big(len(tokens), token_count)
        if wait_for_room:
            if not self.batcher.running:
                raise Unavailable("the batcher is not running")
        else:
            self.batcher.check_admission(len(tokens), token_count, reserved_items=self.admitted_pairs)
        deadline = math.inf if timeout_s is None else clock() + timeout_s
        # ``settled`` is awaited only by a job held for room, which gets its own event there.
        job = _Admitted(tokens, [], timeout_s, deadline, wait_for_room, self._settled, list(tokens), costs, token_count)
        if wait_for_room and (self._waiting or not self.batcher.has_room(len(tokens), token_count)):
            self._hold(job)
        else:
            self._enqueue(job)
        return QueuedPairs(job, len(self.model.labels), self)

    async def run(self) -> None:
        """Forever: wait for a tick's admitted jobs, tokenize their premises together, queue them."""
        while True:
            await self._tick.wait()
            self._tick = anyio.Event()
            jobs, settled = self._take_admitted()
            try:
                await self._queue(jobs)
            finally:  # cancelled (the engine is stopping) or broken: no job of the tick is left hanging
                for job in jobs:
                    if job.ticket is None and job.error is None and job.settled is settled:
                        job.error = Unavailable("the engine shut down")
                settled.set()

    async def serve_waiting_room(self) -> None:
        """Forever: each time the batcher frees room, queue the waiting jobs that now fit."""
        while True:
            await self.batcher.room_freed()
            if self._waiting:
                self.queue_waiting()

    def refuse_admitted(self, error: ServiceError | None = None) -> None:
        """End every job accepted and not queued yet with ``error`` (the engine is stopping)."""
        jobs, settled = self._take_admitted()
        waiting, self._waiting, self._waiting_pairs, self._waiting_tokens = list(self._waiting), deque(), 0, 0
        for job in [*jobs, *waiting]:
            job.error = error or Unavailable("the engine shut down")
            job.settled.set()
        settled.set()

    def _take_admitted(self) -> tuple[list[_Admitted], anyio.Event]:
        """The jobs admitted so far and the event they wait on; the next tick starts empty."""
        taken = self._admitted, self._settled
        self._admitted, self._admitted_pairs, self._settled = [], 0, anyio.Event()
        return taken

    async def _queue(self, jobs: list[_Admitted]) -> None:
        """Tokenize a tick's live jobs together; queue each, or send it to the waiting room."""
        live = [job for job in jobs if not job.abandoned]
        pairs = [job.pairs for job in live]
        try:
            premises = await self.tokenizer.premise_ids_off_loop(premises_of(pairs))
            tokens = self.tokenizer.pairs(pairs, [job.hypotheses for job in live], premises)
        except Exception as err:  # the tokenizer failed: every job ends with it (logged as internal)
            for job in live:
                job.error = err
            return
        if self._waiting:
            self.queue_waiting()  # the waiting go first
        max_tokens = self.batcher.policy.max_queue_tokens
        for job, job_tokens in zip(live, tokens):
            job.tokens, job.costs = job_tokens, [t.length for t in job_tokens]
            job.token_count = sum(job.costs)
            if job.token_count > max_tokens:
                job.error = self._too_big(len(job_tokens), job.token_count)
                continue
            if job.wait_for_room and (self._waiting or not self.batcher.has_room(len(job_tokens), job.token_count)):
                self._hold(job)
            else:
                self._enqueue(job)

    def _too_big(self, pairs: int, tokens: int | None = None) -> InvalidInput:
        """The refusal of a job larger than the whole queue, naming the settings it exceeds."""
        policy = self.batcher.policy
        size = f"{pairs} pairs" if tokens is None else f"{pairs} pairs and {tokens} tokens"
        return InvalidInput(
            f"job has {size}; the queue holds at most MAX_QUEUE_PAIRS={policy.max_queue_items} pairs "
            f"and MAX_QUEUE_TOKENS={policy.max_queue_tokens} tokens: split it into smaller jobs"
        )

    def _hold(self, job: _Admitted) -> None:
        """Send a job to the back of the waiting room."""
        job.settled = anyio.Event()
        self._waiting.append(job)
        self._waiting_pairs += len(job.pairs)
        self._waiting_tokens += job.token_count

    def queue_waiting(self) -> None:
        """Queue waiting jobs in arrival order while the oldest fits; it is never overtaken."""
        waiting = self._waiting
        while waiting:
            job = waiting[0]
            if not job.abandoned and not self.batcher.has_room(len(job.pairs), job.token_count):
                return
            waiting.popleft()
            self._waiting_pairs -= len(job.pairs)
            self._waiting_tokens -= job.token_count
            if not job.abandoned:
                self._enqueue(job)
                job.settled.set()

    def _enqueue(self, job: _Admitted) -> None:
        assert job.tokens is not None and job.costs is not None
        timeout_s = None if job.deadline == math.inf else max(job.deadline - clock(), 0.0)
        try:
            job.ticket = self.batcher.enqueue(job.tokens, job.costs, timeout_s=timeout_s)
        except Exception as err:  # Overloaded on tokens, or Unavailable: this job's error
            job.error = err

