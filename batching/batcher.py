"""The async micro-batcher: many jobs' items in one queue, one loop cutting them into batches.

Two coroutines share the work. The *former* waits for items, cuts the next batch with the pure
policy, collates it in a collate thread and hands it to one dedicated model thread, which runs
batches in the order cut; the *executor* waits for each batch's results and fans them out to the
jobs. They meet on a channel of size zero, so batch N+1 is cut and collated while batch N
computes, and no later. The model thread takes N+1 the moment N is done, without waiting for
the event loop, which in a burst has hundreds of jobs to wake and answer first. A batch cut
while the runner is idle has nothing to overlap: the model thread collates and runs it in one
call, a thread hop fewer on a lone job's latency.

Identical items that land in one batch (a headline asked about by several jobs at once) run
once and share the result (``BatchPolicy.merge_identical``).

A job is a list of items (payload + cost). ``submit`` returns when every item has a result, or
raises the job's error. A job that is cancelled, expires or fails loses its queued items before
compute; results for items already computing are ignored, never set twice.

Fair share: the queue keeps each job's items apart, in arrival order. A batch is cut from a
look-ahead window anchored on the oldest item, so nothing starves; but while the oldest job is
bigger than a batch, every other batch is anchored instead on the job with the fewest queued
items and holds all of them, so a small job that arrives behind a flood of big ones is served
within a few batches rather than after the whole flood, and the flood still gets every other
batch.

The window persists from one cut to the next: the items a batch did not take stay in it, in
order, and each cut only tops it up from the jobs behind. In a burst a batch takes a fifth of
the window, so rebuilding it from the jobs and putting the rest back would handle each item
several times before it runs.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass
from itertools import compress, count, repeat
from typing import Any, Generic, Protocol, TypeVar

import anyio
import numpy as np
import structlog
from anyio.abc import ObjectReceiveStream, ObjectSendStream

from batching.errors import (
    DeadlineExceeded,
    InferenceFailed,
    InvalidInput,
    Overloaded,
    ResourceExhausted,
    ServiceError,
    Unavailable,
)
from batching.policy import BatchPolicy, holds_full_batch, padded_length, select_batch
from batching.stats import BatchStats, EngineStats

P = TypeVar("P")
C = TypeVar("C")
R = TypeVar("R")

log = structlog.get_logger("batching")

clock = time.monotonic
"""The batcher's clock, on the loop and the model thread alike: asyncio's loop clock, read
without the backend lookup ``anyio.current_time()`` makes, a cost of every job. Deadlines kept
beside the batcher's (admission's) read it too."""

_RECOVER_AFTER_BATCHES = 64
"""Successful batches at a shrunk token budget before it is doubled back towards the policy's."""


class Runner(Protocol[P, C, R]):
    """What the batcher drives: collate a batch's payloads, then run it (in one thread)."""

    def collate(self, payloads: Sequence[P]) -> C: ...

    def run(self, batch: C) -> Sequence[R]: ...


@dataclass(eq=False, slots=True)
class _Job:
    results: list[Any]
    remaining: int
    deadline: float
    queued_items: int
    queued_tokens: int
    done: anyio.Event | None = None
    """Made by the first ``result()`` that waits: a job followed by ``when_done`` needs none."""
    error: ServiceError | None = None
    finished: bool = False
    on_done: Callable[[list[Any] | None, ServiceError | None], None] | None = None

    async def wait(self) -> None:
        """Until the job has finished."""
        if not self.finished:
            if self.done is None:
                self.done = anyio.Event()
            await self.done.wait()


@dataclass(eq=False, slots=True)
class _Entry:
    job: _Job
    index: int
    payload: Any
    cost: int
    enqueued_at: float


def _queued_items(job: _Job) -> int:
    return job.queued_items


@dataclass(slots=True)
class _Prepared:
    entries: list[_Entry]
    collated: Any | None
    """None when not collated yet (the runner was idle) or when collating failed: the model
    thread then collates and runs it in one call, and bisects on failure."""
    rows: list[int] | None
    """Entry i's result is the runner's output ``rows[i]`` (identical payloads share a row);
    None: output i."""
    collate_s: float


@dataclass(slots=True)
class _Launched:
    """A batch handed to the model thread: ``ran`` resolves once the thread has run it."""

    entries: list[_Entry]
    ran: Future[_Ran]


@dataclass(slots=True)
class _Ran:
    """What the model thread did with a batch."""

    entries: list[_Entry]
    """The entries it ran: those whose jobs had not ended by the time it took the batch."""
    rows: list[int] | None = None
    outputs: Sequence[Any] = ()
    error: Exception | None = None
    collate_s: float = 0.0
    started: float = 0.0
    """``clock()``, the clock the items' queueing times use; uvloop's loop reads the same clock,
    coarser."""
    ended: float = 0.0


def merge_identical(payloads: Sequence[Any]) -> tuple[list[Any], list[int] | None]:
    """(distinct payloads in first-seen order, each payload's row among them), or the payloads
    and None when all are distinct."""
    first_row: dict[Any, int] = {}
    rows = [first_row.setdefault(payload, len(first_row)) for payload in payloads]
    if len(first_row) == len(rows):
        return list(payloads), None
    return list(first_row), rows


class _DedicatedThread:
    """One long-lived thread: model work stays on the thread that warmed it up."""

    def __init__(self, name: str) -> None:
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix=name)

    def submit(self, fn: Callable[..., R], *args: Any) -> Future[R]:
        """Queue ``fn`` behind the thread's earlier work, without waiting for it."""
        return self._pool.submit(fn, *args)

    async def run(self, fn: Callable[..., R], *args: Any) -> R:
        return await asyncio.wrap_future(self.submit(fn, *args))

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)


class Ticket(Generic[R]):
    """A job whose items are queued: await ``result()`` for them (cancel that await to drop them)."""

    __slots__ = ("_batcher", "_job", "_timeout_s")

    def __init__(self, batcher: Batcher[Any, Any, R], job: _Job, timeout_s: float | None) -> None:
        self._batcher = batcher
        self._job = job
        self._timeout_s = timeout_s

    def drop(self) -> None:
        """Give the job up without waiting: its queued items are dropped before compute."""
        self._batcher._finish(self._job, None)

    def when_done(self, callback: Callable[[list[R] | None, ServiceError | None], None]) -> None:
        """Call ``callback(results, error)`` on the event loop once the job ends, instead of
        awaiting ``result()``: for a caller that follows many jobs without a task for each (a
        split worker's model process). ``(None, None)``: it was dropped. Nobody waits on the
        job's deadline then: items past it are left out before compute, and the caller keeps
        its own clock."""
        job = self._job
        if job.finished:
            callback(job.results if job.error is None and job.remaining == 0 else None, job.error)
        else:
            job.on_done = callback

    async def result(self) -> list[R]:
        """Wait for every item's result; raises the job's error, or re-raises cancellation
        after dropping the job's queued items."""
        job = self._job
        try:
            if job.deadline == math.inf:  # no cancel scope to build: a cost per job in a burst
                await job.wait()
            else:
                with anyio.move_on_after(job.deadline - anyio.current_time()) as waiting:
                    await job.wait()
                if waiting.cancelled_caught:
                    self._batcher._finish(job, DeadlineExceeded(f"no result within {self._timeout_s:g} s"))
        except BaseException:
            self._batcher._finish(job, None)  # cancelled: drop what is still queued, then propagate
            raise
        if job.error is not None:
            raise job.error
        return job.results


class Batcher(Generic[P, C, R]):
    """Merge the items of concurrent jobs into shared batches for one runner.

    Use as ``async with Batcher(runner, policy) as batcher: await batcher.submit(...)``.
    ``on_batch`` is called on the event loop once per batch that ran (logs and metrics).
    """

    def __init__(
        self,
        runner: Runner[P, C, R],
        policy: BatchPolicy,
        *,
        on_batch: Callable[[BatchStats], None] | None = None,
    ) -> None:
        self._runner = runner
        self.policy = policy
        self._on_batch = on_batch
        self.stats = EngineStats()
        self._queue: dict[_Job, deque[_Entry]] = {}
        """Every job with queued items, in arrival order (it leaves once none are), and those of
        its items not in the window yet."""
        self._window: list[_Entry] = []
        """The oldest queued items, up to ``window_items``, in queue order: what a batch is cut
        from. It holds whole jobs but for its last one, whose next items are still in its deque."""
        self._window_stale = False
        """Whether the window may hold items of jobs that ended: they go before the next cut."""
        self._size_turn = False
        self._queued_items = 0
        self._queued_tokens = 0
        self._jobs: set[_Job] = set()
        self._budget_tokens = policy.max_batch_tokens
        self._batches_since_shrink = 0
        self._runner_busy = False
        self._last_batch_end: float | None = None
        self._changed = anyio.Event()
        self._room = anyio.Event()
        self._open = False
        self._stack: AsyncExitStack | None = None

    # ---- public surface -------------------------------------------------------------------

    @property
    def queued_items(self) -> int:
        return self._queued_items

    @property
    def queued_tokens(self) -> int:
        return self._queued_tokens

    @property
    def inflight_jobs(self) -> int:
        return len(self._jobs)

    @property
    def running(self) -> bool:
        """Whether jobs can be queued: the batcher has started and not stopped."""
        return self._open

    @property
    def budget_tokens(self) -> int:
        """The token budget in force: the policy's, or less after the runner ran out of memory."""
        return self._budget_tokens

    async def __aenter__(self) -> Batcher[P, C, R]:
        self._stack = AsyncExitStack()
        await self._stack.enter_async_context(self._running())
        return self

    async def __aexit__(self, *exc_info: object) -> bool | None:
        assert self._stack is not None
        return await self._stack.__aexit__(*exc_info)

    async def submit(
        self, payloads: Sequence[P], costs: Sequence[int], *, timeout_s: float | None = None
    ) -> list[R]:
        """Queue one job's items and wait for all their results, in the order given.

        Raises ``Overloaded`` at once when the queue is full, ``DeadlineExceeded`` after
        ``timeout_s``, ``InferenceFailed`` when the runner raised on one of its items, and
        re-raises cancellation after dropping the job's queued items.
        """
        return await self.enqueue(payloads, costs, timeout_s=timeout_s).result()

    def enqueue(self, payloads: Sequence[P], costs: Sequence[int], *, timeout_s: float | None = None) -> Ticket[R]:
        """Admit and queue one job's items now, without waiting: ``submit`` in two steps.

        A front end that must answer "accepted" or "overloaded" before the job runs (the pod
        server's ``/run``) calls this, then awaits ``Ticket.result()`` in the background.
        Raises ``Unavailable`` or ``Overloaded`` (or ``InvalidInput`` for a job larger than the
        whole queue) before anything is queued.
        """
        if not self._open:
            raise Unavailable("the batcher is not running")
        if len(payloads) != len(costs):
            raise ValueError(f"{len(payloads)} payloads but {len(costs)} costs")
        now = clock()
        deadline = math.inf if timeout_s is None else now + timeout_s
        job = _Job([None] * len(payloads), len(payloads), deadline, len(payloads), sum(costs))
        if not payloads:
            job.finished = True
            return Ticket(self, job, timeout_s)
        self._admit(len(costs), job.queued_tokens)
        self._queue[job] = deque(map(_Entry, repeat(job), count(), payloads, costs, repeat(now)))
        self._queued_items += job.queued_items
        self._queued_tokens += job.queued_tokens
        self._jobs.add(job)
        self.stats.jobs_submitted += 1
        self._notify()
        return Ticket(self, job, timeout_s)

    # ---- admission and job bookkeeping ---------------------------------------------------------

    def check_admission(self, items: int, tokens: int = 0, *, reserved_items: int = 0) -> None:
        """Raise what ``enqueue`` would for a job of this size, without queueing anything.

        Lets a caller refuse an overloaded job before paying for its tokenization.
        ``reserved_items`` are admitted by that caller and not queued yet (still tokenizing).
        """
        if not self._open:
            raise Unavailable("the batcher is not running")
        self._admit(items, tokens, count=False, reserved_items=reserved_items)

    def has_room(self, items: int, tokens: int) -> bool:
        """Whether a job of this size would be queued now rather than refused as ``Overloaded``."""
        policy = self.policy
        return (
            self._queued_items + items <= policy.max_queue_items
            and self._queued_tokens + tokens <= policy.max_queue_tokens
        )

    async def room_freed(self) -> None:
        """Return the next time queued items leave the queue (into a batch, or dropped)."""
        await self._room.wait()

    def _admit(self, items: int, tokens: int, *, count: bool = True, reserved_items: int = 0) -> None:
        policy = self.policy
        if items > policy.max_queue_items or tokens > policy.max_queue_tokens:
            raise InvalidInput(
                f"job has {items} items and {tokens} tokens; the queue holds at most "
                f"{policy.max_queue_items} items and {policy.max_queue_tokens} tokens"
            )
        if not self.has_room(items + reserved_items, tokens):
            queued_items = self._queued_items + reserved_items
            self.stats.jobs_rejected += count
            raise Overloaded(
                f"queue full ({queued_items} items, {self._queued_tokens} tokens queued); "
                "retry shortly",
                retry_after_s=1.0,
            )

    def _finish(self, job: _Job, error: ServiceError | None) -> None:
        """End a job once: set its error (None: it completed or its caller left) and wake it."""
        if job.finished:
            return
        job.finished = True
        job.error = error
        if job.queued_items > len(self._queue.pop(job, None) or ()):  # some of its items are in the window
            self._window_stale = True
        if job.queued_items:
            self.stats.items_dropped += job.queued_items
            self._queued_items -= job.queued_items
            self._queued_tokens -= job.queued_tokens
            job.queued_items = job.queued_tokens = 0
            self._free_room()
        self._jobs.discard(job)
        if job.done is not None:
            job.done.set()
        # Let go of the hook first: it holds whoever follows the job, who holds the job, a cycle
        # that would leave every job's bookkeeping to the garbage collector.
        on_done, job.on_done = job.on_done, None
        if on_done is not None:
            try:
                on_done(job.results if error is None and job.remaining == 0 else None, error)
            except Exception:
                log.exception("on_done_hook_failed")

    def _notify(self) -> None:
        self._changed.set()  # the former takes a fresh event before it looks: one a wake, not one a job

    def _free_room(self) -> None:
        self._room.set()
        self._room = anyio.Event()

    # ---- the loop ---------------------------------------------------------------------------------

    @asynccontextmanager
    async def _running(self):  # type: ignore[no-untyped-def]
        collate_thread = _DedicatedThread("nli-collate")
        model_thread = _DedicatedThread("nli-model")
        send, receive = anyio.create_memory_object_stream[_Launched](0)
        try:
            async with anyio.create_task_group() as tg:
                tg.start_soon(self._form_batches, send, collate_thread, model_thread)
                tg.start_soon(self._run_batches, receive, model_thread)
                self._open = True
                try:
                    yield self
                finally:
                    self._open = False
                    for job in list(self._jobs):
                        self._finish(job, Unavailable("the batcher shut down"))
                    self._queue.clear()
                    self._window.clear()
                    tg.cancel_scope.cancel()
        finally:
            collate_thread.close()
            model_thread.close()

    async def _form_batches(
        self, send: ObjectSendStream[_Launched], collate_thread: _DedicatedThread, model_thread: _DedicatedThread
    ) -> None:
        async with send:
            while True:
                await self._wait_until_worth_cutting()
                entries = self._cut_batch()
                if not entries:
                    continue
                if self._runner_busy:  # collate now, while the running batch computes
                    prepared = await self._collate(entries, collate_thread)
                else:  # nothing to overlap: the model thread collates it, one thread hop fewer
                    prepared = _Prepared(entries, None, None, 0.0)
                ran = model_thread.submit(self._take_and_run, prepared)
                await send.send(_Launched(entries, ran))
                self._runner_busy = True  # the executor took it; cleared when it is done

    async def _wait_until_worth_cutting(self) -> None:
        """Return when a batch should be cut: at once if the runner is idle, else when a full
        batch is queued or the oldest item has waited ``max_wait_ms``."""
        while True:
            changed = self._changed
            if changed.is_set():  # what it announced is looked at below
                changed = self._changed = anyio.Event()
            if not self._queued_items:
                await changed.wait()
                continue
            if not self._runner_busy or holds_full_batch(
                self._queued_items, self._queued_tokens, self.policy, self._budget_tokens
            ):
                return
            oldest = self._window[0] if self._window else next(iter(self._queue.values()))[0]
            wait_s = oldest.enqueued_at + self.policy.max_wait_ms / 1000 - clock()
            if wait_s <= 0:
                return
            with anyio.move_on_after(wait_s):
                await changed.wait()

    def _cut_batch(self) -> list[_Entry]:
        """Take the next batch out of the window; drop expired jobs on the way.

        Runs on the event loop once a batch over up to ``window_items`` entries (thousands
        during a burst), so the loop is kept to plain list work: no per-entry calls.
        """
        self._fill_window()
        window = self._window
        anchor = self._anchor_job()
        if anchor is None:
            candidates, pinned = window, 1
        else:
            candidates, pinned = self._led_by(anchor)
        chosen = select_batch(
            [e.cost for e in candidates],
            max_tokens=self._budget_tokens,
            max_items=self.policy.max_batch_items,
            window=len(candidates),
            multiple=self.policy.length_multiple,
            cap=self.policy.max_padded_len,
            pinned=pinned,
        )
        whole = len(chosen) == len(candidates)  # then chosen in order
        batch = candidates if whole else [candidates[i] for i in chosen]
        if anchor is not None:
            self._unlead(anchor, candidates, batch)
        elif whole:
            self._window = []
        else:
            stays = [True] * len(window)
            for i in chosen:
                stays[i] = False
            self._window = list(compress(window, stays))
        queue = self._queue
        tokens = 0
        for entry in batch:
            job = entry.job
            job.queued_items -= 1
            job.queued_tokens -= entry.cost
            tokens += entry.cost
            if not job.queued_items:
                queue.pop(job, None)
        self._queued_items -= len(batch)
        self._queued_tokens -= tokens
        if batch:
            self._free_room()
        return batch

    def _fill_window(self) -> None:
        """Drop the items of jobs that ended or expired, then top the window up to
        ``window_items`` from the jobs behind it, in order."""
        now = clock()
        expired: list[_Job] = []
        if self._window_stale:
            self._drop_ended_from_window()
        window = self._window
        room = self.policy.window_items - len(window)
        for job, entries in self._queue.items():  # the jobs in the window first, all of it in it but the last
            if job.deadline <= now:
                expired.append(job)
                continue
            if not entries:  # all of it in the window already
                continue
            if room <= 0:
                break
            if len(entries) <= room:  # the common case in a burst of small jobs: all of it, at C speed
                window += entries
                room -= len(entries)
                entries.clear()
            else:
                window += [entries.popleft() for _ in range(room)]
                break
        if expired:
            for job in expired:
                self._finish(job, DeadlineExceeded("expired before compute"))
            self._drop_ended_from_window()

    def _drop_ended_from_window(self) -> None:
        self._window = [e for e in self._window if not e.job.finished]
        self._window_stale = False

    def _anchor_job(self) -> _Job | None:
        """The job to put first in this cut, or None: the oldest item leads. While the oldest job
        holds more than a batch, every other cut is led by the job with the fewest queued items,
        all of them pinned (up to a batch), so a small job is not split across batches."""
        queue = self._queue
        if len(queue) < 2:
            return None
        oldest = next(iter(queue))
        if oldest.queued_items > self.policy.max_batch_items:
            self._size_turn = not self._size_turn
            if self._size_turn:
                smallest = min(queue, key=_queued_items)
                if smallest is not oldest:
                    return smallest
        return None

    def _led_by(self, anchor: _Job) -> tuple[list[_Entry], int]:
        """The window as if ``anchor`` had come first: its items (those in its deque brought in),
        then the others' in order, up to ``window_items``; and how many of them lead."""
        limit = self.policy.window_items
        window = self._window
        own = [e for e in window if e.job is anchor]
        outside = self._queue[anchor]
        own += [outside.popleft() for _ in range(min(len(outside), limit - len(own)))]
        others = [e for e in window if e.job is not anchor]
        return own + others[: limit - len(own)], min(anchor.queued_items, self.policy.max_batch_items)

    def _unlead(self, anchor: _Job, candidates: list[_Entry], batch: list[_Entry]) -> None:
        """After a cut led by ``anchor``: the window keeps its order without the batch, and
        ``anchor``'s items brought in and not taken go back to the front of its deque."""
        taken = set(batch)
        in_window = set(self._window)
        self._window = [e for e in self._window if e not in taken]
        outside = self._queue[anchor]
        for entry in reversed(candidates):
            if entry.job is anchor and entry not in taken and entry not in in_window:
                outside.appendleft(entry)

    async def _collate(self, entries: list[_Entry], thread: _DedicatedThread) -> _Prepared:
        started = clock()
        try:
            collated, rows = await thread.run(self._merge_and_collate, [e.payload for e in entries])
        except Exception:
            log.exception("collate_failed", items=len(entries))
            collated = rows = None
        return _Prepared(entries, collated, rows, clock() - started)

    def _merge_and_collate(self, payloads: list[Any]) -> tuple[Any, list[int] | None]:
        """(collated batch, rows): in a thread, since hashing a batch's payloads takes a while."""
        distinct, rows = merge_identical(payloads) if self.policy.merge_identical else (payloads, None)
        return self._runner.collate(distinct), rows

    async def _run_batches(self, receive: ObjectReceiveStream[_Launched], thread: _DedicatedThread) -> None:
        async with receive:
            async for launched in receive:
                try:
                    await self._settle(launched.entries, await asyncio.wrap_future(launched.ran), thread)
                finally:
                    self._runner_busy = False
                    self._notify()

    def _take_and_run(self, prepared: _Prepared) -> _Ran:
        """On the model thread, once the batch before is done: leave out the items of jobs that
        ended or expired while the batch waited, collate unless done, run.

        Never raises: a failure comes back in ``_Ran.error`` and the loop bisects the batch.
        """
        now = clock()
        entries = [e for e in prepared.entries if not e.job.finished and e.job.deadline > now]
        if not entries:
            return _Ran(entries)
        collated, rows, collate_s = prepared.collated, prepared.rows, prepared.collate_s
        try:
            if collated is None or len(entries) < len(prepared.entries):
                collating = time.perf_counter()
                collated, rows = self._merge_and_collate([e.payload for e in entries])
                collate_s += time.perf_counter() - collating
            started = clock()
            outputs = self._runner.run(collated)
            ended = clock()
            expected = len(entries) if rows is None else max(rows) + 1
            if len(outputs) != expected:
                raise RuntimeError(f"runner returned {len(outputs)} results for {expected} items")
        except Exception as err:  # noqa: BLE001 - handed to the loop, which bisects
            return _Ran(entries, error=err)
        return _Ran(entries, rows, outputs, None, collate_s, started, ended)

    def _drop_left_out(self, taken: list[_Entry], ran: list[_Entry]) -> None:
        """Count the items the model thread left out (taken from the queue already, so not
        counted yet) and end the jobs among them that expired before compute."""
        if len(ran) == len(taken):
            return
        self.stats.items_dropped += len(taken) - len(ran)
        now = clock()
        for entry in taken:
            if not entry.job.finished and entry.job.deadline <= now:
                self._finish(entry.job, DeadlineExceeded("expired before compute"))

    async def _settle(self, taken: list[_Entry], ran: _Ran, thread: _DedicatedThread) -> None:
        """Account for what the model thread left out of ``taken``, fan the results out and
        record the batch; on failure, find the item at fault."""
        self._drop_left_out(taken, ran.entries)
        if not ran.entries:
            return
        if ran.error is not None:
            if isinstance(ran.error, ResourceExhausted):
                self._shrink_budget()
            await self._retry_in_halves(ran.entries, ran.error, thread)
            return
        outputs = ran.outputs if ran.rows is None else [ran.outputs[row] for row in ran.rows]
        self._fan_out(ran.entries, outputs)
        self._record(ran.entries, ran.rows, ran.started, ran.ended, ran.collate_s)

    async def _retry_in_halves(self, entries: list[_Entry], err: Exception, thread: _DedicatedThread) -> None:
        """Find the item at fault: split and re-run; an item that fails alone fails its job."""
        if len(entries) == 1:
            self.stats.items_failed += 1
            log.error("item_failed", error=repr(err), exc_info=err)
            failure = InferenceFailed(f"the model failed on this job's input: {type(err).__name__}")
            failure.__cause__ = err
            self._finish(entries[0].job, failure)
            return
        self.stats.batch_splits += 1
        log.warning("batch_failed_splitting", items=len(entries), error=repr(err))
        middle = len(entries) // 2
        for half in (entries[:middle], entries[middle:]):
            alive = [e for e in half if not e.job.finished]
            if alive:
                ran = await thread.run(self._take_and_run, _Prepared(alive, None, None, 0.0))
                await self._settle(alive, ran, thread)

    def _shrink_budget(self) -> None:
        floor = padded_length(1, self.policy.length_multiple, self.policy.max_padded_len)
        self._budget_tokens = max(floor, self._budget_tokens // 2)
        self._batches_since_shrink = 0
        self.stats.budget_shrinks += 1
        log.warning("budget_shrunk", max_batch_tokens=self._budget_tokens)

    def _fan_out(self, entries: list[_Entry], outputs: Sequence[Any]) -> None:
        for entry, output in zip(entries, outputs):
            job = entry.job
            if job.finished:
                continue
            job.results[entry.index] = output
            job.remaining -= 1
            if job.remaining == 0:
                self._finish(job, None)

    def _record(
        self, entries: list[_Entry], rows: list[int] | None, started: float, ended: float, collate_s: float
    ) -> None:
        costs = [e.cost for e in entries]
        if rows is not None:  # the tokens that ran: each distinct payload's once
            costs = list({row: cost for row, cost in zip(rows, costs)}.values())
        padded_len = padded_length(max(costs), self.policy.length_multiple, self.policy.max_padded_len)
        enqueued_at = np.fromiter([e.enqueued_at for e in entries], np.float64, len(entries))
        first_queued = float(enqueued_at.min())
        idle_since = max(self._last_batch_end or first_queued, first_queued)
        batch = BatchStats(
            items=len(entries),
            merged_items=len(entries) - len(costs),
            jobs=len({e.job for e in entries}),
            real_tokens=sum(costs),
            padded_tokens=padded_len * len(costs),
            padded_len=padded_len,
            queue_wait_s=np.maximum(started - enqueued_at, 0.0),
            collate_s=collate_s,
            compute_s=ended - started,
            idle_gap_s=max(0.0, started - idle_since),
        )
        self.stats.record(batch)
        self._last_batch_end = ended
        self._recover_budget()
        if self._on_batch is not None:
            try:
                self._on_batch(batch)
            except Exception:
                log.exception("on_batch_hook_failed")

    def _recover_budget(self) -> None:
        if self._budget_tokens >= self.policy.max_batch_tokens:
            return
        self._batches_since_shrink += 1
        if self._batches_since_shrink >= _RECOVER_AFTER_BATCHES:
            self._budget_tokens = min(self.policy.max_batch_tokens, self._budget_tokens * 2)
            self._batches_since_shrink = 0
