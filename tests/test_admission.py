"""Admission: jobs refused or accepted at once; a loop tick's premises tokenized in one call."""

from __future__ import annotations

import anyio
import numpy as np
import pytest

from batching import InvalidInput, Overloaded, Unavailable
from schemas import DEFAULT_SCHEMA
from worker.admission import PremiseCache
from worker.engine import NliEngine
from worker.service import execute_job
from worker.settings import Settings

HYPOTHESES = ("This is an opinion piece or editorial.", "This text is about Apple.")
HEADLINES = ("Apple Declares $0.25 Dividend", "Fed Holds Rates Steady", "Tesla Recalls 2,000 Cars")


def settings(**overrides) -> Settings:
    return Settings(model_name="synthetic:tiny", warmup_max_len=16, **overrides)


def pairs_about(headline: str) -> list[tuple[str, str]]:
    return [(headline, hypothesis) for hypothesis in HYPOTHESES]


@pytest.fixture
def encode_calls(tiny_model, monkeypatch) -> list[list[str]]:
    """Every ``encode_texts`` call's texts, in order."""
    calls: list[list[str]] = []
    encode_texts = tiny_model.encode_texts
    monkeypatch.setattr(tiny_model, "encode_texts", lambda texts: calls.append(list(texts)) or encode_texts(texts))
    return calls


async def test_the_jobs_of_one_tick_have_their_new_premises_tokenized_in_one_call(tiny_model, encode_calls):
    jobs = [pairs_about(HEADLINES[i % 3]) for i in range(6)]
    async with NliEngine.start(settings(), model=tiny_model) as engine:
        alone = [await engine.infer(pairs_about(headline)) for headline in HEADLINES]
        engine.admission.premises = PremiseCache(1024)  # forget them: the tick below must tokenize
        encode_calls.clear()
        queued = [engine.enqueue(pairs) for pairs in jobs]  # one tick: no await in between
        assert engine.queued_pairs == 12 and engine.inflight_jobs == 6
        together = [await each.logits() for each in queued]
    assert len(encode_calls) == 1 and sorted(encode_calls[0]) == sorted(HEADLINES)
    for i, logits in enumerate(together):
        np.testing.assert_allclose(logits, alone[i % 3], atol=1e-5)


async def test_a_full_queue_counts_the_pairs_still_tokenizing(tiny_model):
    async with NliEngine.start(settings(max_queue_pairs=10), model=tiny_model) as engine:
        first = engine.enqueue(pairs_about(HEADLINES[0]) * 3)  # 6 pairs, not in the batcher yet
        with pytest.raises(Overloaded, match=r"queue full \(6 items"):
            engine.enqueue(pairs_about(HEADLINES[1]) * 3)
        assert (await first.logits()).shape == (6, 3)


async def test_a_hypothesis_too_long_is_refused_at_once_and_nothing_is_tokenized(tiny_model, encode_calls):
    async with NliEngine.start(settings(), model=tiny_model) as engine:
        with pytest.raises(InvalidInput, match=r"^invalid_input: pairs\[1\]: hypothesis of \d+ tokens"):
            engine.enqueue([("short", "fine"), ("a premise", "word " * 600)])
        assert engine.inflight_jobs == 0
    assert encode_calls == []


async def test_a_job_cancelled_while_admitted_never_reaches_the_model(tiny_model):
    async with NliEngine.start(settings(), model=tiny_model) as engine:
        queued = engine.enqueue(pairs_about(HEADLINES[2]))
        with anyio.CancelScope() as scope:
            scope.cancel()
            await queued.logits()
        await engine.infer(pairs_about(HEADLINES[0]))
        assert engine.batcher.stats.items == 2  # the second job's pairs alone ran
        assert engine.inflight_jobs == 0 and engine.queued_pairs == 0


async def test_a_tokenizer_failure_ends_that_ticks_jobs_as_internal_and_the_next_tick_serves(tiny_model, monkeypatch):
    encode_texts = tiny_model.encode_texts
    failures = iter([RuntimeError("tokenizer crashed")])

    def failing_once(texts):
        for failure in failures:
            raise failure
        return encode_texts(texts)

    monkeypatch.setattr(tiny_model, "encode_texts", failing_once)
    job = {"operation": "classify", "headline": HEADLINES[1]}
    async with NliEngine.start(settings(), model=tiny_model) as engine:
        outcomes: list = []
        async with anyio.create_task_group() as tg:
            for _ in range(2):
                tg.start_soon(lambda: _append(outcomes, execute_job(engine, DEFAULT_SCHEMA, job)))
        after = await execute_job(engine, DEFAULT_SCHEMA, job)
    assert [outcome.status for outcome in outcomes] == ["internal", "internal"]
    assert after.status == "completed"


async def _append(outcomes: list, awaitable) -> None:
    outcomes.append(await awaitable)


async def test_jobs_still_tokenizing_at_shutdown_end_unavailable(tiny_model):
    async with NliEngine.start(settings(), model=tiny_model) as engine:
        queued = engine.enqueue(pairs_about(HEADLINES[0]))
    with pytest.raises(Unavailable, match="shut down"):
        await queued.logits()


def test_the_premise_cache_keeps_the_most_recently_used():
    cache = PremiseCache(2)
    cache.add("a", (1,))
    cache.add("b", (2,))
    assert cache.lookup(["a"]) == ({"a": (1,)}, [])  # "a" is now the most recent
    cache.add("c", (3,))
    assert cache.lookup(["a", "b", "c"]) == ({"a": (1,), "c": (3,)}, ["b"])
    off = PremiseCache(0)
    off.add("a", (1,))
    assert len(off) == 0
