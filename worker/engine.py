"""The NLI engine: the model runner behind the micro-batcher, with text pairs in and logits out.

Operations call ``enqueue`` once per job with all of that job's pairs, so one job's pairs enter the
shared queue together and ride in the same batches as every other job in flight. Admission
(``worker/admission.py``) accepts or refuses a job at once and tokenizes the premises of a loop
tick's jobs together.
"""

from __future__ import annotations

import gc
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from dataclasses import replace

import anyio
import numpy as np
import structlog

from batching import Batcher, BatchStats
from worker.admission import Admission, QueuedPairs
from worker.metrics import Metrics
from worker.model import NliModel
from worker.pairs import PairTokens
from worker.settings import Settings
from worker.tokenizing import PairTokenizer

log = structlog.get_logger("worker.engine")


class NliEngine:
    """One model, one batcher: ``async with NliEngine.start(settings, model=model) as engine``.

    The front ends start it through ``worker.engine_host.EngineHost``, which loads, warms and
    times the model first."""

    def __init__(self, model: NliModel, batcher: Batcher, settings: Settings) -> None:
        self.model = model
        self.batcher = batcher
        self.settings = settings
        self.admission = Admission(model, batcher, settings.premise_cache_size)

    @classmethod
    @asynccontextmanager
    async def start(
        cls,
        settings: Settings,
        *,
        model: NliModel,
        on_batch: Callable[[BatchStats], None] | None = None,
        metrics: Metrics | None = None,
    ) -> AsyncIterator[NliEngine]:
        """Run the batcher over ``model`` until exit.

        Every batch is logged (one line: pairs, tokens, padding efficiency, ms) and, with
        ``metrics``, observed; ``on_batch`` sees it too.
        """
        # The batcher budgets padded lengths as the model pads them (batching.policy.padded_length).
        policy = settings.batch_policy(on_gpu=model.device.type == "cuda")
        policy = replace(policy, length_multiple=model.length_multiple, max_padded_len=model.max_padded_len)
        tune_garbage_collector()  # nearly free when the engine's host has done it already
        log.info(
            "engine_started",
            model=model.name,
            device=str(model.device),
            dtype=str(model.dtype).removeprefix("torch."),
            labels=list(model.labels),
            max_batch_tokens=policy.max_batch_tokens,
            max_batch_pairs=policy.max_batch_items,
        )

        def observe(batch: BatchStats) -> None:
            _log_batch(batch)
            if metrics is not None:
                metrics.observe_batch(batch)
            if on_batch is not None:
                on_batch(batch)

        async with Batcher(model, policy, on_batch=observe) as batcher, anyio.create_task_group() as tasks:
            engine = cls(model, batcher, settings)
            tasks.start_soon(engine.admission.run, name="nli-admission")
            tasks.start_soon(engine.admission.serve_waiting_room, name="nli-waiting-room")
            if metrics is not None:
                metrics.watch_queue(
                    lambda: engine.queued_pairs, lambda: engine.queued_tokens, lambda: engine.inflight_jobs,
                    limit_pairs=policy.max_queue_items, limit_tokens=policy.max_queue_tokens,
                )  # fmt: skip
                metrics.watch_budget_shrinks(lambda: batcher.stats.budget_shrinks)
            try:
                yield engine
            finally:
                tasks.cancel_scope.cancel()
                engine.admission.refuse_admitted()

    @property
    def labels(self) -> tuple[str, ...]:
        return self.model.labels

    @property
    def queued_pairs(self) -> int:
        """Pairs waiting for a batch: queued, or admitted and tokenizing this tick."""
        return self.batcher.queued_items + self.admission.admitted_pairs

    @property
    def queued_tokens(self) -> int:
        """Tokens of the pairs waiting for a batch, those waiting for room in the queue included."""
        return self.batcher.queued_tokens + self.admission.waiting_tokens

    @property
    def inflight_jobs(self) -> int:
        return self.batcher.inflight_jobs + self.admission.admitted_jobs

    @property
    def tokenizer(self) -> PairTokenizer:
        """What turns jobs' pairs into token ids, premises through its cache (admission's)."""
        return self.admission.tokenizer

    def tokenize(self, pairs: Sequence[tuple[str, str]]) -> list[PairTokens]:
        """Token ids for each pair, as admission makes them (premises through its cache)."""
        return self.tokenizer.tokenize(pairs)

    async def infer(self, pairs: Sequence[tuple[str, str]]) -> np.ndarray:
        """Logits ``[len(pairs), len(labels)]`` for (premise, hypothesis) pairs, in order: ``enqueue``
        and wait, for callers without a job to account for (tests, benchmarks)."""
        return await self.enqueue(pairs).logits()

    def enqueue(
        self, pairs: Sequence[tuple[str, str]], *, timeout_s: float | None = None, wait_for_room: bool = False
    ) -> QueuedPairs:
        """Admit the pairs now, or raise what refuses them (``Overloaded`` when the queue is
        full, ``InvalidInput`` for a hypothesis too long or a job larger than the whole queue);
        await ``.accepted()`` to know they are queued, ``.logits()`` for their results.
        ``timeout_s`` (a job's own deadline, e.g. RunPod's ``policy.executionTimeout``) can
        shorten ``JOB_TIMEOUT_S``, not extend it. ``wait_for_room``: a full queue holds the job,
        in arrival order, until it has room or the deadline passes (``worker/admission.py``)."""
        timeout = self.settings.job_timeout(timeout_s)
        return self.admission.admit(pairs, timeout_s=timeout, wait_for_room=wait_for_room)


YOUNG_COLLECTION_THRESHOLD = 10_000
"""Net new container objects between two collections of the youngest generation (Python's
default: 700). Jobs in flight hold many small live objects, so at 700 the collector runs every
few hundred jobs, moves those still-live objects to older generations and so sets off full
collections too: under sustained load a large share of the CPU goes there. At 10,000 young
collections are far fewer, and short (BENCHMARKS.md)."""


def tune_garbage_collector() -> None:
    """Move what start-up built (torch, transformers, the model: ~400k objects) out of the
    collector's reach, after collecting what is already garbage, and collect the young
    generation less often.

    Otherwise every full collection walks them all, a pause that stalls the event loop, and so
    admission, for every job in flight (RELIABILITY.md). The first call is itself such a
    collection (hundreds of ms): ``EngineHost`` makes it once the model is warm, before a front
    end takes jobs, and later calls only collect what is new.
    """
    gc.collect()
    gc.freeze()
    _, middle, oldest = gc.get_threshold()
    gc.set_threshold(YOUNG_COLLECTION_THRESHOLD, middle, oldest)


def _log_batch(batch: BatchStats) -> None:
    log.info(
        "batch",
        pairs=batch.items,
        merged=batch.merged_items,
        jobs=batch.jobs,
        tokens=batch.real_tokens,
        padded_tokens=batch.padded_tokens,
        padded_len=batch.padded_len,
        padding_efficiency=round(batch.padding_efficiency, 3),
        compute_ms=round(batch.compute_s * 1e3, 2),
        collate_ms=round(batch.collate_s * 1e3, 2),
        idle_gap_ms=round(batch.idle_gap_s * 1e3, 2),
        max_queue_wait_ms=round(float(batch.queue_wait_s.max(initial=0.0)) * 1e3, 2),
    )
