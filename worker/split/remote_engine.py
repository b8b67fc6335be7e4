"""The ``Engine`` a front process holds: it tokenizes here and sends the ids to the model process,
whose one engine admits and batches the pairs of every front.

To the service path (``worker/service.py``) it is an engine like ``NliEngine``: ``enqueue`` checks
a job's hypotheses and raises ``InvalidInput`` naming a bad pair at once; the jobs of a loop tick
have their new premises tokenized in one call (off the loop when there is much new text), as
admission does in one process, and are sent together. The handle ``enqueue`` returns has
``accepted()`` (the model process queued the pairs, or the error that refused them: ``overloaded``
arrives here, not from ``enqueue``) and ``logits()``. Cancelling either wait, or the job's
deadline passing (the front keeps its clock, as ``Ticket.result`` does in one process), sends
``Cancel``, and the model process drops the job's queued pairs. When the connection ends (the
model process stopped or died), every job in flight fails ``unavailable``, and so does every new
one until the front has connected again: it tries every ``RECONNECT_S``, so a model process
restarted on the same socket serves it again without the front restarting. With ``rerun_lost``
(the serverless worker's: RunPod does not retry a job a worker took and failed), jobs are held
instead: the ones in flight are sent again, once, when a model process listens again, and new
ones wait for it; a job whose model process stops a second time fails ``unavailable``.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import AsyncIterator, Sequence
from contextlib import aclosing, asynccontextmanager
from pathlib import Path

import anyio
import numpy as np
import structlog
from anyio.abc import SocketStream

from batching import DeadlineExceeded, Unavailable
from worker.model import NliModel
from worker.settings import Settings
from worker.split.frames import FrameError, Sender, receive
from worker.split.messages import (
    Accepted, Cancel, Exposition, Hello, Ping, Pong, Results, Scrape, ToFront, ToModel, error_of, logits_of,
    submit,
)  # fmt: skip
from worker.tokenizing import Pair, PairTokenizer, premises_of

log = structlog.get_logger("worker.split.remote_engine")

RECONNECT_S = 0.25
"""How often a front that lost its model process tries its socket again (unless ``Knock``ed)."""


class Knock:
    """A front's attempts to reach its model process, on demand: between two attempts it waits
    ``RECONNECT_S``, or less once someone ``knock``s (a job arrived and would be refused)."""

    def __init__(self) -> None:
        self._wake = anyio.Event()
        self._failed = anyio.Event()

    async def knock(self) -> None:
        """Have an attempt made now; return once one has found no model process to serve."""
        failed = self._failed
        self._wake.set()
        await failed.wait()

    async def pause(self) -> None:
        """Between two attempts."""
        with anyio.move_on_after(RECONNECT_S):
            await self._wake.wait()
        self._wake = anyio.Event()

    def failed(self) -> None:
        """An attempt found nothing listening, or a process that did not say ``Hello``."""
        self._failed.set()
        self._failed = anyio.Event()


class RemoteJob:
    """One job sent to the model process: await ``accepted()``, then ``logits()``."""

    __slots__ = (
        "_engine", "key", "pairs", "hypotheses", "timeout_s", "wait_for_room", "sent", "rerun", "queued",
        "_deadline", "_accepted", "_done", "_error", "_logits",
    )  # fmt: skip

    def __init__(
        self, engine: RemoteEngine, key: int, pairs: Sequence[Pair], hypotheses: list[tuple[int, ...]],
        timeout_s: float | None, wait_for_room: bool,
    ) -> None:  # fmt: skip
        self._engine = engine
        self.key = key
        self.pairs = pairs
        self.hypotheses = hypotheses
        self.timeout_s = timeout_s
        self.wait_for_room = wait_for_room
        self.sent = False
        """Whether its ``Submit`` has left (after its tick's tokenizing)."""
        self.rerun = False
        """Whether it was sent again after its model process stopped (``rerun_lost``)."""
        self.queued = False
        """Whether the model process said ``Accepted``: what ends it later is its result's."""
        self._deadline = math.inf if timeout_s is None else anyio.current_time() + timeout_s
        self._accepted = anyio.Event()
        self._done = anyio.Event()
        self._error: Exception | None = None
        self._logits: np.ndarray | None = None

    async def accepted(self) -> None:
        """Return once the pairs are in the model process's queue; raise what kept them out.
        Only a job held for room runs out of time here: any other is answered at once (a local
        round trip, which may outlast a very short deadline), and its deadline is its result's."""
        await self._wait(self._accepted, timed=self.wait_for_room)
        if self._error is not None and not self.queued:
            raise self._error

    async def logits(self) -> np.ndarray:
        """``[pairs, labels]`` float32; raises the job's ``ServiceError``."""
        await self._wait(self._done)
        if self._error is not None:
            raise self._error
        assert self._logits is not None
        return self._logits

    async def _wait(self, event: anyio.Event, *, timed: bool = True) -> None:
        try:
            if self._deadline == math.inf or not timed:
                await event.wait()
                return
            with anyio.move_on_after(self._deadline - anyio.current_time()):
                await event.wait()
        except BaseException:
            self._give_up()
            raise
        if not event.is_set():  # past the deadline: the front keeps the job's clock
            self._give_up()
            waited_for = "result" if self._accepted.is_set() else "room in the queue"
            self.end(DeadlineExceeded(f"no {waited_for} within {self.timeout_s:g} s"))

    def _give_up(self) -> None:
        if not self._done.is_set():
            self._engine._cancel(self)

    def accept(self) -> None:
        self.queued = True
        self._accepted.set()

    def end(self, error: Exception | None, logits: np.ndarray | None = None) -> None:
        """The job's end: its logits, or its error (a ``ServiceError``; anything else is a bug,
        answered ``internal``). The first end counts."""
        if self._done.is_set():
            return
        self._error, self._logits = error, logits
        self._accepted.set()
        self._done.set()


class RemoteEngine:
    """A front's view of the model process: ``async with RemoteEngine.connect(...) as engine``."""

    def __init__(
        self, model: NliModel, settings: Settings, path: Path, *, rerun_lost: bool = False, knock: Knock | None = None
    ) -> None:
        self.model = model
        """The model's tokenizer and labels, without weights (``NliModel.load_head``)."""
        self.settings = settings
        self.path = path
        """The model process's socket."""
        self.rerun_lost = rerun_lost
        """Hold jobs while the model process is gone, and send the lost ones again once."""
        self.knock = knock or Knock()
        self._held: list[RemoteJob] = []
        """Jobs waiting for a model process to listen again (``rerun_lost``)."""
        self._closed = False
        self.tokenizer = PairTokenizer(model, settings.premise_cache_size)
        self._sender: Sender[ToModel] | None = None
        """The current connection's, None while there is none."""
        self._jobs: dict[int, RemoteJob] = {}
        """Jobs not ended yet: in this tick, or sent and not answered."""
        self._keys = itertools.count()
        self._tick: list[RemoteJob | _Question] = []
        self._ticked = anyio.Event()
        self._questions: dict[int, _Question] = {}
        """``Ping`` and ``Scrape`` sent and not answered yet."""
        self.hello: Hello | None = None
        """What the model process serves, and where (its first message on a connection)."""
        self._unavailable: Unavailable | None = Unavailable("not connected to the model process yet")
        self._connected = anyio.Event()
        self._lost = anyio.Event()

    @classmethod
    @asynccontextmanager
    async def connect(
        cls, settings: Settings, path: str | Path, *, model: NliModel | None = None, connect_timeout_s: float = 0.0,
        rerun_lost: bool = False, knock: Knock | None = None,
    ) -> AsyncIterator[RemoteEngine]:  # fmt: skip
        """Connect to the model process on the Unix socket ``path`` (waiting up to
        ``connect_timeout_s`` for it to listen: ``Unavailable`` after that) and serve jobs until
        exit, connecting again whenever the connection ends. ``model`` defaults to
        ``NliModel.load_head(settings.model_name)``."""
        head = model or NliModel.load_head(settings.model_name)
        engine = cls(head, settings, Path(path), rerun_lost=rerun_lost, knock=knock)
        stream = await _connect(engine.path, connect_timeout_s, engine.knock)
        async with anyio.create_task_group() as tasks:
            tasks.start_soon(engine._stay_connected, stream, name="nli-model-connection")
            tasks.start_soon(engine._send_ticks, name="nli-front-tokenizer")
            try:
                await engine._connected.wait()
                yield engine
            finally:
                engine._closed = True
                engine._end_all(Unavailable("the front process is shutting down"))
                tasks.cancel_scope.cancel()

    @property
    def connected(self) -> bool:
        """Whether jobs can be sent now: the model process is connected."""
        return self._unavailable is None

    @property
    def unavailable(self) -> Unavailable | None:
        """What a job is refused with now, while the model process is not connected."""
        return self._unavailable

    async def wait_connected(self) -> None:
        """Return once connected to a model process (at once if connected now)."""
        await self._connected.wait()

    async def wait_disconnected(self) -> None:
        """Return once the connection in use now ends: the model process stopped or died."""
        await self._lost.wait()

    @property
    def inflight_jobs(self) -> int:
        """Jobs enqueued and not ended yet."""
        return len(self._jobs)

    def enqueue(
        self, pairs: Sequence[Pair], *, timeout_s: float | None = None, wait_for_room: bool = False
    ) -> RemoteJob:
        """Take the job into this tick, whose jobs are tokenized and sent together; raises
        ``InvalidInput`` naming a pair whose hypothesis cannot fit, or ``Unavailable`` once the
        model process is gone (unless ``rerun_lost``: then it waits for the model process).
        ``timeout_s`` can shorten ``JOB_TIMEOUT_S``, not extend it."""
        if self._unavailable is not None and (self._closed or not self.rerun_lost):
            raise self._unavailable
        hypotheses = self.tokenizer.hypotheses(pairs)
        timeout = self.settings.job_timeout(timeout_s)
        job = RemoteJob(self, next(self._keys), pairs, hypotheses, timeout, wait_for_room)
        self._jobs[job.key] = job
        self._tick.append(job)
        self._ticked.set()
        return job

    async def sync(self) -> Pong:
        """Return once the model process has taken every job enqueued before (admitted, held or
        refused them) and this front has read what it answered so far; its answer says what the
        shared queue holds now."""
        question = self._ask()
        self._tick.append(question)  # after the jobs of this tick: the model process takes them first
        self._ticked.set()
        answer = await question.answered()
        assert isinstance(answer, Pong)
        return answer

    async def scrape(self) -> bytes:
        """The model process's metrics, in OpenMetrics' text format."""
        question = self._ask()
        assert self._sender is not None
        self._sender.send(Scrape(question.key))
        answer = await question.answered()
        assert isinstance(answer, Exposition)
        return answer.text

    def _ask(self) -> _Question:
        if self._unavailable is not None:
            raise self._unavailable
        question = _Question(self, next(self._keys))
        self._questions[question.key] = question
        return question

    def _cancel(self, job: RemoteJob) -> None:
        if self._jobs.pop(job.key, None) is not None and job.sent and self._sender is not None:
            self._sender.send(Cancel(job.key))

    async def _send_ticks(self) -> None:
        """Forever: tokenize a tick's live jobs together and send them, in arrival order."""
        while True:
            await self._ticked.wait()
            self._ticked = anyio.Event()
            jobs, self._tick = self._tick, []
            questions = [job for job in jobs if isinstance(job, _Question)]
            live = [job for job in jobs if isinstance(job, RemoteJob) and job.key in self._jobs]
            pairs = [job.pairs for job in live]
            try:
                premises = await self.tokenizer.premise_ids_off_loop(premises_of(pairs))
                tokens = self.tokenizer.pairs(pairs, [job.hypotheses for job in live], premises)
            except Exception as err:  # the tokenizer failed: every job of the tick ends with it
                for job in live:
                    self._jobs.pop(job.key, None)
                    job.end(err)
                continue
            sender = self._sender
            if sender is None:  # the connection was lost while the tick tokenized (or before it)
                if self.rerun_lost:  # else its jobs have ended
                    self._held.extend(job for job in live if job.key in self._jobs)
                continue
            for job, job_tokens in zip(live, tokens):
                if job.key in self._jobs:  # not cancelled while the tick was tokenizing
                    job.sent = True
                    message = submit(job.key, job_tokens, timeout_s=job.timeout_s, wait_for_room=job.wait_for_room)
                    sender.send(message)
            for question in questions:  # after the tick's jobs: the model process takes them first
                if question.key in self._questions:
                    sender.send(Ping(question.key))

    async def _stay_connected(self, stream: SocketStream) -> None:
        """Forever: serve jobs over the connection until it ends, end every job in flight
        ``unavailable``, and connect again.

        A connection counts once the model process's ``Hello`` has arrived: a process being
        killed can still take a connection on its socket, and would lose whatever was sent."""
        while True:
            async with stream, aclosing(receive(stream, ToFront)) as messages:  # closed however it ends
                try:
                    hello = await anext(messages, None)
                except (FrameError, OSError):
                    hello = None
                if isinstance(hello, Hello):
                    self.hello = hello
                    await self._serve_connection(stream, messages)
            if isinstance(hello, Hello):
                self._connection_ended()
            else:
                self.knock.failed()
                await self.knock.pause()
            stream = await _connect(self.path, math.inf, self.knock)

    async def _serve_connection(self, stream: SocketStream, messages: AsyncIterator[ToFront]) -> None:
        """Send and receive over one connection (its ``Hello`` read) until it ends."""
        async with anyio.create_task_group() as connection:
            self._sender = Sender(stream)
            connection.start_soon(self._sender.run, name="nli-model-sender")
            self._unavailable = None
            self._connected.set()
            log.info("model_process_connected", socket=str(self.path), held_jobs=len(self._held))
            if self._held:  # before any job enqueued since: they came first
                self._tick[:0], self._held = self._held, []
                self._ticked.set()
            await self._receive(messages)
            connection.cancel_scope.cancel()

    def _connection_ended(self) -> None:
        """End (or, with ``rerun_lost``, hold) every job the connection had."""
        self._sender, self._connected = None, anyio.Event()
        stopped = Unavailable("the model process stopped")
        failing = len(self._jobs)
        if self.rerun_lost:
            failing = self._hold_lost()
            self._unavailable = stopped
            self._end_questions()
        else:
            self._end_all(stopped)
        self._lost.set()
        self._lost = anyio.Event()
        log.warning("model_process_gone", failed_jobs=failing, held_jobs=len(self._jobs))

    async def _receive(self, messages: AsyncIterator[ToFront]) -> None:
        """Hand each answer to its job until the connection ends."""
        labels = len(self.model.labels)
        jobs = self._jobs
        try:
            async for message in messages:
                if isinstance(message, Results):
                    for key, logits in logits_of(message, labels):
                        if (job := jobs.pop(key, None)) is not None:
                            job.end(None, logits)
                elif isinstance(message, Accepted):
                    for key in message.jobs:
                        if (job := jobs.get(key)) is not None:
                            job.accept()
                elif isinstance(message, (Pong, Exposition)):
                    if (question := self._questions.pop(message.key, None)) is not None:
                        question.answer = message
                        question.done.set()
                elif isinstance(message, Hello):
                    self.hello = message
                elif (job := jobs.pop(message.job, None)) is not None:
                    error = error_of(message)
                    # A stopping model process fails what it holds before its socket goes.
                    if self.rerun_lost and isinstance(error, Unavailable):
                        self._lose(job)
                    else:
                        job.end(error)
        except FrameError as err:
            log.error("model_process_sent_garbage", error=str(err))

    def _hold_lost(self) -> int:
        """The connection ended with ``rerun_lost``: the jobs it had are lost; how many failed."""
        lost = [job for job in self._jobs.values() if job.sent]
        return sum(not self._lose(job) for job in lost)

    def _lose(self, job: RemoteJob) -> bool:
        """A job whose model process stopped under it (``rerun_lost``): held to be sent again
        once a model process listens (True), or ended if it was its second run (False)."""
        if job.rerun:
            self._jobs.pop(job.key, None)
            job.end(Unavailable("the model process stopped twice while this job was in it"))
            return False
        job.rerun, job.sent = True, False
        self._jobs[job.key] = job
        self._held.append(job)
        return True

    def _end_all(self, error: Unavailable) -> None:
        """Refuse new jobs with ``error`` and end every one in flight (or held) with it."""
        self._unavailable = error
        jobs, self._jobs, self._held = self._jobs, {}, []
        for job in jobs.values():
            job.end(error)
        self._end_questions()

    def _end_questions(self) -> None:
        questions, self._questions = self._questions, {}
        for question in questions.values():
            question.done.set()


class _Question:
    """A ``Ping`` or ``Scrape`` awaiting its answer; the connection's end answers it with none."""

    __slots__ = ("_engine", "key", "done", "answer")

    def __init__(self, engine: RemoteEngine, key: int) -> None:
        self._engine = engine
        self.key = key
        self.done = anyio.Event()
        self.answer: Pong | Exposition | None = None

    async def answered(self) -> Pong | Exposition:
        try:
            await self.done.wait()
        finally:
            self._engine._questions.pop(self.key, None)
        if self.answer is None:
            raise self._engine._unavailable or Unavailable("the model process stopped")
        return self.answer


async def _connect(path: Path, timeout_s: float, knock: Knock) -> SocketStream:
    """A connection to ``path``, tried every ``RECONNECT_S`` (or when knocked) for ``timeout_s``
    while no model process listens there."""
    with anyio.move_on_after(timeout_s):
        while True:
            try:
                return await anyio.connect_unix(path)
            except OSError:
                knock.failed()
                await knock.pause()
    try:
        return await anyio.connect_unix(path)
    except OSError as err:
        raise Unavailable(f"no model process listens on {path}: {err.strerror}") from err
