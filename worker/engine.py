"""The NLI engine: the model runner behind the micro-batcher, with text pairs in and logits out.

Operations call ``infer`` once per job with all of that job's pairs, so one job's pairs enter the
shared queue together and ride in the same batches as every other job in flight.
"""

from __future__ import annotations

import functools
import gc
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass

import anyio
import numpy as np
import structlog

from batching import Batcher, BatchStats, InvalidInput, Ticket
from worker.metrics import Metrics
from worker.model import NliModel, PairTokens
from worker.settings import Settings

log = structlog.get_logger("worker.engine")


@dataclass(frozen=True, slots=True)
class StartupReport:
    model_load_s: float
    warmup_s: float


class NliEngine:
    """One model, one batcher. Start it with ``async with NliEngine.start(settings) as engine``."""

    def __init__(self, model: NliModel, batcher: Batcher, settings: Settings, startup: StartupReport) -> None:
        self.model = model
        self.batcher = batcher
        self.settings = settings
        self.startup = startup
        # Recent premises' ids: the headline service makes several calls about one headline at
        # once, and a headline tokenized once is one tuple, so its pairs in those jobs compare
        # (and merge, in the batcher) at the cost of a pointer.
        self._premise_ids = functools.lru_cache(maxsize=settings.premise_cache_size)(model.encode_text)

    @classmethod
    @asynccontextmanager
    async def start(
        cls,
        settings: Settings,
        *,
        on_batch: Callable[[BatchStats], None] | None = None,
        model: NliModel | None = None,
        metrics: Metrics | None = None,
    ) -> AsyncIterator[NliEngine]:
        """Load (off the event loop) and warm the model, then run the batcher until exit.

        Every batch is logged (one line: pairs, tokens, padding efficiency, ms) and, with
        ``metrics``, observed; ``on_batch`` sees it too. ``model`` skips loading: tests share one
        already-loaded model across engines.
        """
        started = anyio.current_time()
        if model is None:
            model = await anyio.to_thread.run_sync(
                lambda: NliModel.load(settings.model_name, device=settings.device, dtype=settings.dtype)
            )
        loaded = anyio.current_time()
        policy = settings.batch_policy(on_gpu=model.device.type == "cuda")
        warmup_s = await anyio.to_thread.run_sync(model.warm_up, settings.warmup_max_len)
        _freeze_startup_objects()
        startup = StartupReport(model_load_s=loaded - started, warmup_s=warmup_s)
        log.info(
            "engine_started",
            model=model.name,
            device=str(model.device),
            dtype=str(model.dtype).removeprefix("torch."),
            labels=list(model.labels),
            max_batch_tokens=policy.max_batch_tokens,
            max_batch_pairs=policy.max_batch_items,
            model_load_s=round(startup.model_load_s, 3),
            warmup_s=round(warmup_s, 3),
        )

        def observe(batch: BatchStats) -> None:
            _log_batch(batch)
            if metrics is not None:
                metrics.observe_batch(batch)
            if on_batch is not None:
                on_batch(batch)

        async with Batcher(model, policy, on_batch=observe) as batcher:
            if metrics is not None:
                metrics.observe_startup(startup.model_load_s, startup.warmup_s)
                metrics.watch_queue(
                    lambda: batcher.queued_items, lambda: batcher.queued_tokens, lambda: batcher.inflight_jobs
                )
            try:
                yield cls(model, batcher, settings, startup)
            finally:
                if metrics is not None:
                    metrics.model_ready.set(0)

    @property
    def labels(self) -> tuple[str, ...]:
        return self.model.labels

    def tokenize(self, pairs: Sequence[tuple[str, str]]) -> list[PairTokens]:
        """Token ids for each pair, premises and hypotheses through their caches: a headline
        that several jobs ask about at once is tokenized once (12 against 50 µs a 6-pair job on
        a 2-core CPU; a new headline costs 3 µs more)."""
        premise_ids, hypothesis_ids, pair = self._premise_ids, self.model.hypothesis_ids, self.model.pair
        tokens = []
        for index, (premise, hypothesis) in enumerate(pairs):
            try:
                tokens.append(pair(premise_ids(premise), hypothesis_ids(hypothesis)))
            except ValueError as err:
                raise InvalidInput(f"pairs[{index}]: {err}") from err
        return tokens

    async def infer(self, pairs: Sequence[tuple[str, str]]) -> np.ndarray:
        """Logits ``[len(pairs), len(labels)]`` for (premise, hypothesis) pairs, in order."""
        return await self.enqueue(pairs).logits()

    def enqueue(self, pairs: Sequence[tuple[str, str]], *, timeout_s: float | None = None) -> QueuedPairs:
        """Tokenize and queue the pairs now (raising ``Overloaded`` at once when the queue is
        full); await ``.logits()`` on the result for them. ``timeout_s`` (a job's own deadline,
        e.g. RunPod's ``policy.executionTimeout``) can shorten ``JOB_TIMEOUT_S``, not extend it."""
        self.batcher.check_admission(len(pairs))  # refuse when full before tokenizing
        tokens = self.tokenize(pairs)
        deadlines = [t for t in (timeout_s, self.settings.job_timeout_s) if t is not None]
        ticket = self.batcher.enqueue(tokens, [t.length for t in tokens], timeout_s=min(deadlines, default=None))
        return QueuedPairs(ticket, len(self.labels))


@dataclass(frozen=True, slots=True)
class QueuedPairs:
    """One job's pairs, admitted to the shared queue."""

    ticket: Ticket[np.ndarray]
    labels: int

    async def logits(self) -> np.ndarray:
        rows = await self.ticket.result()
        return np.stack(rows) if rows else np.zeros((0, self.labels), dtype=np.float32)


def _freeze_startup_objects() -> None:
    """Move what start-up built (torch, transformers, the model: ~400k objects) out of the
    collector's reach, after collecting what is already garbage.

    Otherwise every full collection walks them all, a pause of about 400 ms on a 2-core CPU
    that stalls the event loop, and so admission, for every job in flight (RELIABILITY.md).
    """
    gc.collect()
    gc.freeze()


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
        max_queue_wait_ms=round(max(batch.queue_wait_s, default=0.0) * 1e3, 2),
    )
