"""The batch policy on plain lists of costs."""

from __future__ import annotations

import random

import pytest

from batching.policy import BatchPolicy, padded_length, padded_tokens, select_batch


def select(costs, *, max_tokens=1024, max_items=64, window=1000, multiple=8, pinned=1):
    return select_batch(costs, max_tokens=max_tokens, max_items=max_items, window=window, multiple=multiple,
                        pinned=pinned)  # fmt: skip


def test_a_window_that_fits_one_batch_is_taken_whole():
    costs = [20, 30, 25, 12]
    assert sorted(select(costs)) == [0, 1, 2, 3]


def test_a_window_that_fits_but_is_mostly_padding_is_split_by_length():
    costs = [12, 14, 10, 200]
    assert sorted(costs[i] for i in select(costs, max_tokens=8192)) == [10, 12, 14]


def test_empty_queue_gives_empty_batch():
    assert select([]) == []


@pytest.mark.parametrize("cost, expected", [(1, 8), (8, 8), (9, 16), (28, 32), (512, 512)])
def test_padded_length_rounds_up_to_the_multiple(cost, expected):
    assert padded_length(cost, 8) == expected


@pytest.mark.parametrize("cost, expected", [(500, 504), (505, 509), (509, 509)])
def test_padded_length_stops_at_the_position_cap(cost, expected):
    assert padded_length(cost, 8, cap=509) == expected


def test_padded_token_budget_is_never_exceeded():
    rng = random.Random(7)
    for _ in range(200):
        costs = [rng.randint(5, 120) for _ in range(rng.randint(1, 300))]
        max_tokens = rng.choice([256, 1024, 4096])
        max_items = rng.choice([4, 32, 256])
        chosen = select(costs, max_tokens=max_tokens, max_items=max_items)
        assert 0 in chosen, "the oldest item is always in the next batch"
        assert len(chosen) <= max_items
        assert padded_tokens([costs[i] for i in chosen], 8) <= max_tokens
        assert len(set(chosen)) == len(chosen)


def test_item_budget_cuts_the_batch():
    assert len(select([10] * 100, max_items=16)) == 16


def test_token_budget_cuts_the_batch():
    # 32 tokens each once padded: 1024 // 32 = 32 fit
    assert len(select([30] * 100, max_tokens=1024, max_items=1000)) == 32


def test_oldest_item_is_always_chosen_even_when_it_is_the_longest():
    costs = [100] + [10] * 50
    chosen = select(costs, max_tokens=512)
    assert 0 in chosen


def test_pinned_items_are_all_chosen_and_the_budget_still_holds():
    rng = random.Random(11)
    for _ in range(200):
        costs = [rng.randint(5, 120) for _ in range(rng.randint(2, 300))]
        pinned = rng.randint(1, min(len(costs), 6))
        max_tokens, max_items = rng.choice([1024, 4096]), rng.choice([8, 32, 256])
        chosen = select(costs, max_tokens=max_tokens, max_items=max_items, pinned=pinned)
        assert 0 in chosen and len(chosen) <= max_items
        assert padded_tokens([costs[i] for i in chosen], 8) <= max_tokens
        if pinned * padded_length(max(costs[:pinned]), 8) <= max_tokens and pinned <= max_items:
            assert set(range(pinned)) <= set(chosen), "pinned items that fit together ride together"


def test_a_small_job_of_mixed_lengths_is_not_split_among_a_flood_of_one_length():
    # A job of 6 pairs (lengths 20 to 31) pinned ahead of 500 flood pairs of length 24: its
    # shorter and longer pairs join the batch instead of waiting for later ones.
    costs = [20, 22, 24, 26, 29, 31] + [24] * 500
    unpinned = select(costs, max_tokens=4096, max_items=64)
    pinned = select(costs, max_tokens=4096, max_items=64, pinned=6)
    assert not set(range(6)) <= set(unpinned)
    assert set(range(6)) <= set(pinned) and len(pinned) == 64


def test_pinned_items_that_cannot_share_a_batch_fall_back_to_the_oldest():
    assert select([400, 10, 300], max_tokens=512, pinned=3) == select([400, 10, 300], max_tokens=512)


def test_oldest_item_longer_than_the_budget_runs_alone():
    assert select([600, 10, 10], max_tokens=512) == [0]


def test_batch_mates_have_similar_lengths():
    # short and long items interleaved, more than one batch holds; the oldest is short
    costs = [12, 100, 14, 104, 10, 98, 16, 102]
    chosen = select(costs, max_tokens=256)
    assert sorted(costs[i] for i in chosen) == [10, 12, 14, 16]


def test_short_items_do_not_pad_up_to_a_long_oldest():
    # the long oldest item would waste most of the slots of short batch-mates
    costs = [200] + [10] * 20 + [190, 180]
    chosen = select(costs, max_tokens=8192)
    assert sorted(costs[i] for i in chosen) == [180, 190, 200]


def test_window_limits_what_is_looked_at():
    costs = [50] * 4 + [10] * 100
    chosen = select(costs, window=4, max_tokens=100_000, max_items=1000)
    assert sorted(chosen) == [0, 1, 2, 3]


def test_longer_runs_win_when_they_carry_more_useful_tokens():
    # oldest 30 tokens; above it 31..40 (pad 32 or 40) fill the batch better than stopping at 30
    costs = [30] + list(range(31, 41))
    chosen = select(costs, max_tokens=10_000)
    assert sorted(chosen) == list(range(len(costs)))


def test_policy_rejects_nonsense_numbers():
    with pytest.raises(ValueError, match="max_batch_tokens"):
        BatchPolicy(max_batch_tokens=0)
    with pytest.raises(ValueError, match="max_wait_ms"):
        BatchPolicy(max_wait_ms=-1)


def scan_every_run(costs, *, max_tokens, max_items, multiple, cap):
    """The search ``select_batch`` makes, item by item: every run of the cost order that holds
    the oldest item and fits, the first with the best score. The definition the per-cost
    search must agree with."""
    order = sorted(range(len(costs)), key=costs.__getitem__)
    ranked = [costs[i] for i in order]
    oldest = ranked.index(costs[0])
    best, best_score = None, None
    for hi in range(oldest, len(costs)):
        padded = padded_length(ranked[hi], multiple, cap)
        fit = max(1, min(max_items, max_tokens // padded))
        if hi - fit + 1 > oldest:
            break
        half_full = sum(1 for cost in ranked[:oldest] if cost < (padded + 1) // 2)
        lo = max(hi - fit + 1, half_full)
        score = 2 * sum(ranked[lo : hi + 1]) - (hi - lo + 1) * padded
        if best_score is None or score > best_score:
            best, best_score = order[lo : hi + 1], score
    return best


@pytest.mark.parametrize("seed", range(5))
def test_the_batch_is_the_best_run_an_item_by_item_scan_finds(seed):
    rng = random.Random(seed)
    for _ in range(400):
        n = rng.choice([2, 3, 10, 60, 300])
        low, high = rng.choice([(1, 12), (3, 80), (1, 600)])
        cap = rng.choice([None, 64, 512])
        costs = [rng.randint(low, high) if cap is None else min(cap, rng.randint(low, high)) for _ in range(n)]
        budget = {"max_tokens": rng.choice([16, 128, 512, 4096]), "max_items": rng.choice([1, 4, 64, 512]),
                  "multiple": rng.choice([1, 8, 64]), "cap": cap}  # fmt: skip
        chosen = select_batch(costs, window=n, **budget)
        whole = padded_tokens(costs, budget["multiple"], cap)
        if chosen == list(range(n)) and n <= budget["max_items"] and whole <= budget["max_tokens"]:
            continue  # taken whole, before any search
        assert chosen == scan_every_run(costs, **budget), (costs, budget)
