"""The batch policy: pure functions over queued items' costs, so they can be tested on plain lists.

An item's cost is its sequence length in tokens. A batch runs padded to its longest item, rounded
up to a multiple of ``length_multiple`` (the shapes the model runner compiles and warms) but never
past ``max_padded_len`` (the model's position limit), so the budget is in *padded* tokens:
``n × padded_len ≤ max_batch_tokens``. ``padded_length`` is the one rule, and the model runner
pads with it too.
"""

from __future__ import annotations

from bisect import bisect_left, bisect_right
from collections.abc import Sequence
from dataclasses import dataclass
from itertools import accumulate

import numpy as np


@dataclass(frozen=True, slots=True, kw_only=True)
class BatchPolicy:
    """The numbers that shape batches and bound the queue."""

    max_batch_tokens: int = 16_384
    """Padded tokens a batch may hold: n × padded_len."""
    max_batch_items: int = 512
    """Items (pairs) a batch may hold."""
    window_items: int = 2_048
    """How many of the oldest queued items the policy looks over when it cuts a batch."""
    max_wait_ms: float = 5.0
    """While the runner is busy, the longest a queued item waits before its batch is prepared."""
    length_multiple: int = 8
    """Padded lengths are multiples of this (the runner pads the same way)."""
    max_padded_len: int | None = None
    """Padded lengths never exceed this: the model's position embeddings (None: no cap)."""
    max_queue_items: int = 50_000
    """Admission: items queued across all jobs; past it, jobs are refused with ``overloaded``."""
    max_queue_tokens: int = 2_000_000
    """Admission: tokens queued across all jobs."""
    merge_identical: bool = True
    """Run identical items of one batch once and hand each the one result: a headline asked
    about by several jobs at once costs one row. Payloads must then be hashable, and results
    treated as read-only."""

    def __post_init__(self) -> None:
        for name in ("max_batch_tokens", "max_batch_items", "window_items", "length_multiple",
                     "max_queue_items", "max_queue_tokens"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1, got {getattr(self, name)}")
        if self.max_wait_ms < 0:
            raise ValueError(f"max_wait_ms must not be negative, got {self.max_wait_ms}")


MIN_WHOLE_EFFICIENCY = 0.5
"""Below this share of real tokens, a window that fits one batch is still split by length."""


def padded_length(cost: int, multiple: int, cap: int | None = None) -> int:
    """The sequence length an item of ``cost`` tokens runs at: rounded up to ``multiple``, at
    most ``cap`` (an item's cost never exceeds the cap; only the rounding stops there)."""
    rounded = -(-cost // multiple) * multiple
    return rounded if cap is None else max(cost, min(rounded, cap))


def padded_tokens(costs: Sequence[int], multiple: int, cap: int | None = None) -> int:
    """Tokens a batch of these costs occupies once padded: n × padded longest."""
    return len(costs) * padded_length(max(costs), multiple, cap) if costs else 0


def select_batch(
    costs: Sequence[int],
    *,
    max_tokens: int,
    max_items: int,
    window: int,
    multiple: int = 8,
    cap: int | None = None,
    pinned: int = 1,
) -> list[int]:
    """Choose the next batch from queued items in arrival order; returns their indices.

    The oldest item (index 0) is always chosen: nothing starves. If the whole look-ahead window
    fits the budget with at least ``MIN_WHOLE_EFFICIENCY`` of its padded tokens real, it is
    taken whole: items held back would need a batch of their own. Otherwise the window is
    sorted by cost and the batch is a contiguous run of that order holding the oldest item, so
    batch-mates have similar lengths; among the runs that fit, the one with the most useful work
    net of padding wins (score ``2 × real − padded``): an item joins only if it fills at least
    half of its padded slot. An oldest item longer than the budget runs alone rather than never.

    ``pinned`` > 1: the first ``pinned`` items are all chosen (the batcher pins a small job this
    way, so it is not split across batches), plus the run of the others that scores best beside
    them; if they cannot share a batch, only the oldest is pinned.
    """
    if not costs:
        return []
    size = min(len(costs), window)
    # The window in numpy: its sums, sort and runs take a few C passes over thousands of items,
    # where Python's passes were the largest cost of a cut on the event loop.
    values = np.fromiter(costs, np.int64, size)
    whole = size * padded_length(int(values.max()), multiple, cap)
    if size <= max_items and whole <= max_tokens and int(values.sum()) >= MIN_WHOLE_EFFICIENCY * whole:
        return list(range(size))
    pinned = max(1, min(pinned, size))
    if pinned > 1:
        chosen = _around_pinned(costs[:size], pinned, max_tokens=max_tokens, max_items=max_items, multiple=multiple,
                                cap=cap)  # fmt: skip
        if chosen is not None:
            return chosen
    return _best_run(values, max_tokens=max_tokens, max_items=max_items, multiple=multiple, cap=cap)


def _best_run(costs: np.ndarray, *, max_tokens: int, max_items: int, multiple: int, cap: int | None) -> list[int]:
    """``select_batch``'s search: the best-scoring run of the cost order that holds the oldest item.

    It scores two runs per distinct cost, not one per item. Among the runs that end on items of
    one cost (the same padded length, so the same fit), the score moves one way as the run
    grows: by the same amount per item while the run only adds items, then upwards once it is
    full and each item it adds drops a shorter one. So the best of them is the first or the
    last, and scoring those two, in the order an item-by-item scan would, finds the run the
    scan finds (``tests/test_policy.py`` holds the scan and checks this).
    """
    order = np.argsort(costs, kind="stable")  # equal costs keep their arrival order
    ordered = costs[order]
    group_starts = np.flatnonzero(np.concatenate(([True], ordered[1:] != ordered[:-1])))
    distinct: list[int] = ordered[group_starts].tolist()
    starts: list[int] = [*group_starts.tolist(), len(costs)]  # where each cost's items begin; then the end
    tokens_before: list[int] = np.concatenate(([0], np.cumsum(ordered)))[starts].tolist()  # the tokens before them

    def tokens_up_to(position: int) -> int:
        group = bisect_right(starts, position) - 1
        if group == len(distinct):
            return tokens_before[group]
        return tokens_before[group] + (position - starts[group]) * distinct[group]

    first = bisect_left(distinct, int(costs[0]))
    oldest = starts[first]  # the oldest item leads its equals in the (stable) cost order
    best_range, best_score = (oldest, oldest), None
    for group in range(first, len(distinct)):
        start = starts[group]
        padded = padded_length(distinct[group], multiple, cap)
        fit = max(1, min(max_items, max_tokens // padded))
        last = min(starts[group + 1], oldest + fit) - 1  # past it, a run cannot reach the oldest
        if last < start:
            break  # longer items only fit fewer
        half_full = min(oldest, starts[bisect_left(distinct, (padded + 1) // 2)])
        for hi in (start, last) if last > start else (start,):
            lo = max(hi - fit + 1, half_full)
            score = 2 * (tokens_up_to(hi + 1) - tokens_up_to(lo)) - (hi - lo + 1) * padded
            if best_score is None or score > best_score:
                best_range, best_score = (lo, hi), score
    lo, hi = best_range
    chosen: list[int] = order[lo : hi + 1].tolist()
    return chosen


def _around_pinned(
    costs: Sequence[int], pinned: int, *, max_tokens: int, max_items: int, multiple: int, cap: int | None
) -> list[int] | None:
    """Items ``0..pinned-1`` together, plus the contiguous run (in cost order) of the others that
    adds the most useful work net of padding; None when the pinned items alone do not fit."""
    floor = max(costs[:pinned])
    pinned_real = sum(costs[:pinned])
    if pinned > max_items or pinned * padded_length(floor, multiple, cap) > max_tokens:
        return None
    rest = sorted(range(pinned, len(costs)), key=costs.__getitem__)
    rest_costs = [costs[i] for i in rest]
    prefix = list(accumulate(rest_costs, initial=0))
    best_run, best_score = (0, 0), 2 * pinned_real - pinned * padded_length(floor, multiple, cap)  # the pinned alone
    for hi in range(len(rest)):
        padded = padded_length(max(floor, rest_costs[hi]), multiple, cap)
        room = min(max_items, max_tokens // padded) - pinned
        if room < 1:
            if rest_costs[hi] > floor:
                break  # longer items only leave less room
            continue
        lo = max(hi - room + 1, bisect_left(rest_costs, (padded + 1) // 2, 0, hi + 1))
        if lo > hi:
            continue
        score = 2 * (pinned_real + prefix[hi + 1] - prefix[lo]) - (pinned + hi - lo + 1) * padded
        if score > best_score:
            best_run, best_score = (lo, hi + 1), score
    lo, end = best_run
    return [*range(pinned), *rest[lo:end]]


def holds_full_batch(queued_items: int, queued_tokens: int, policy: BatchPolicy, max_tokens: int) -> bool:
    """Whether enough is queued to fill a batch, so preparing it now loses nothing by waiting."""
    return queued_items >= policy.max_batch_items or queued_tokens >= max_tokens
