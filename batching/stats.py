"""What the batcher reports: one record per batch, and running totals for the engine."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True, slots=True, kw_only=True)
class BatchStats:
    """One batch that ran; handed to the batcher's ``on_batch`` hook (logs, metrics)."""

    items: int
    """Items served, merged ones included."""
    merged_items: int = 0
    """Items that shared an identical item's row: the runner ran ``items - merged_items``."""
    jobs: int
    real_tokens: int
    """Tokens of the rows that ran (a merged item's are not counted again)."""
    padded_tokens: int
    """Rows that ran × ``padded_len``."""
    padded_len: int
    queue_wait_s: np.ndarray
    """Per item: from submission to the start of this batch's compute (float64)."""
    collate_s: float
    compute_s: float
    idle_gap_s: float
    """How long the runner sat idle while this batch's items were already queued."""

    @property
    def padding_efficiency(self) -> float:
        return self.real_tokens / self.padded_tokens if self.padded_tokens else 1.0


@dataclass(slots=True)
class EngineStats:
    """Running totals since the batcher started."""

    jobs_submitted: int = 0
    jobs_rejected: int = 0
    batches: int = 0
    items: int = 0
    items_merged: int = 0
    """Items that rode on an identical item's row in their batch."""
    real_tokens: int = 0
    padded_tokens: int = 0
    compute_s: float = 0.0
    idle_gap_s: float = 0.0
    items_dropped: int = 0
    """Queued items of cancelled, expired or failed jobs, dropped before compute."""
    items_failed: int = 0
    """Items the runner raised on even alone."""
    batch_splits: int = 0
    """Batches split in two after the runner raised on them."""
    budget_shrinks: int = 0
    """Times the token budget was halved after the runner ran out of memory."""

    def record(self, batch: BatchStats) -> None:
        self.batches += 1
        self.items += batch.items
        self.items_merged += batch.merged_items
        self.real_tokens += batch.real_tokens
        self.padded_tokens += batch.padded_tokens
        self.compute_s += batch.compute_s
        self.idle_gap_s += batch.idle_gap_s

    @property
    def mean_batch_items(self) -> float:
        return self.items / self.batches if self.batches else 0.0

    @property
    def padding_efficiency(self) -> float:
        return self.real_tokens / self.padded_tokens if self.padded_tokens else 1.0
