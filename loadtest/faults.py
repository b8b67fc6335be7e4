"""Fault injection for reliability runs: a model whose forward pass fails, runs out of memory or holds.

``FaultyModel.wrap(model)`` returns a copy of an ``NliModel`` whose torch module is wrapped, so the
real runner, batcher and service paths see the faults exactly as they would see the real ones
(an out-of-memory error goes through ``NliModel.run``'s own translation to ``ResourceExhausted``).
The hooks run in the model thread; they only count, compare and raise, and switch with plain
attributes, so tests and the chaos command can change them between phases.
"""

from __future__ import annotations

import copy
import threading
from collections.abc import Callable
from typing import Any

import torch

from worker.model import NliModel


class FaultyModule(torch.nn.Module):
    """Wraps a sequence-classification module's forward with injectable faults."""

    def __init__(self, inner: torch.nn.Module) -> None:
        super().__init__()
        self.inner = inner
        self.poison_id: int | None = None
        """A token id that makes the forward raise (a poison pair)."""
        self.oom_above_pairs: int | None = None
        """Batches of more pairs raise a CUDA-style out-of-memory error."""
        self.gate = threading.Event()
        self.gate.set()
        """Cleared: every forward waits here until it is set again (a held GPU)."""
        self.on_forward: Callable[[int], None] | None = None
        """Called with the batch's pair count as a forward starts (e.g. to cancel jobs mid-batch)."""
        self.rows_seen = 0
        self.forwards = 0

    def forward(self, input_ids: torch.Tensor, **inputs: Any) -> Any:
        pairs = int(input_ids.shape[0])
        self.forwards += 1
        if self.on_forward is not None:
            self.on_forward(pairs)
        if not self.gate.wait(60):
            raise TimeoutError("the fault gate stayed closed for 60 s")
        if self.oom_above_pairs is not None and pairs > self.oom_above_pairs:
            raise torch.OutOfMemoryError(
                f"CUDA out of memory. Tried to allocate 2.00 GiB for {pairs} pairs (injected)"
            )
        if self.poison_id is not None and bool((input_ids == self.poison_id).any()):
            raise RuntimeError("CUDA error: device-side assert triggered (injected poison pair)")
        self.rows_seen += pairs
        return self.inner(input_ids=input_ids, **inputs)


class FaultyModel:
    """Builds the faulty copy of a loaded model."""

    @staticmethod
    def wrap(model: NliModel) -> tuple[NliModel, FaultyModule]:
        """A shallow copy of ``model`` (same weights and tokenizer) with its module wrapped."""
        faulty = copy.copy(model)
        module = FaultyModule(model.model)
        faulty.model = module  # type: ignore[assignment]
        return faulty, module


def poison_token_id(model: NliModel, word: str = "zebra") -> int:
    """The single token id of ``word``, for a headline that will poison its batch."""
    ids = model.encode_text(word)
    if len(ids) != 1:
        raise ValueError(f"{word!r} is not a single token for {model.name}")
    return ids[0]
