"""The engine: text pairs in, logits out, through the shared batcher and the tiny model."""

from __future__ import annotations

import gc
from collections import Counter

import anyio
import numpy as np
import pytest
from layouts import LAYOUTS, started

from batching import InvalidInput
from worker.engine import YOUNG_COLLECTION_THRESHOLD, NliEngine
from worker.settings import Settings

HYPOTHESES = ["This is an opinion piece or editorial.", "This is a factual news report.",
              "This text is about Apple."]


def settings(**overrides) -> Settings:
    return Settings(model_name="synthetic:tiny", warmup_max_len=16, **overrides)


@pytest.fixture(scope="module")
def headlines() -> list[str]:
    from pathlib import Path

    path = Path(__file__).parent / "data" / "example_headlines.txt"
    return [line.strip() for line in path.read_text().splitlines() if line.strip()][:40]


async def infer_together(engine, jobs: list[list[tuple[str, str]]]) -> list[np.ndarray]:
    """Every job's logits, the jobs submitted at once."""
    together: list = [None] * len(jobs)

    async def one(i: int) -> None:
        together[i] = await engine.enqueue(jobs[i]).logits()

    async with anyio.create_task_group() as tg:
        for i in range(len(jobs)):
            tg.start_soon(one, i)
    return together


@pytest.mark.parametrize("layout", LAYOUTS)
async def test_concurrent_jobs_share_batches_and_get_the_same_numbers_as_alone(tiny_model, headlines, layout):
    jobs = [[(h, hyp) for hyp in HYPOTHESES] for h in headlines]
    async with started(layout, settings(), tiny_model) as (front, engine):
        alone = [await front.enqueue(pairs).logits() for pairs in jobs[:5]]
        batches_before = engine.batcher.stats.batches
        together = await infer_together(front, jobs)
        batches = engine.batcher.stats.batches - batches_before
    assert batches < len(jobs)
    for i, logits in enumerate(alone):
        assert logits.shape == (3, 3)
        np.testing.assert_allclose(together[i], logits, atol=1e-5)


@pytest.mark.parametrize("multiple", [1, 8], ids=["cpu", "gpu-shaped"])
async def test_the_batcher_budgets_padded_lengths_as_the_model_pads_them(tiny_model, multiple):
    from worker.model import NliModel

    model = NliModel("padded", tiny_model.tokenizer, tiny_model.model)
    model.length_multiple = multiple
    pair = model.pair(model.encode_text("Apple Declares $0.25 Dividend"), model.hypothesis_ids(HYPOTHESES[0]))
    async with NliEngine.start(settings(), model=model) as engine:
        before = engine.batcher.stats.padded_tokens
        await engine.infer([("Apple Declares $0.25 Dividend", HYPOTHESES[0])])
        padded = engine.batcher.stats.padded_tokens - before
    assert engine.batcher.policy.length_multiple == multiple
    assert padded == model.collate([pair]).padded_tokens == -(-pair.length // multiple) * multiple


async def test_near_the_position_limit_the_budget_pads_to_the_shape_that_runs(tiny_model):
    """A model whose positions stop short of the next multiple: the batcher counts the batch as
    the model pads it (capped), not rounded past what the model can run."""
    from worker.model import NliModel
    from worker.pairs import PairLayout

    model = NliModel("capped", tiny_model.tokenizer, tiny_model.model)
    model.length_multiple, model.max_padded_len = 8, 509
    model.max_length = 505  # a pair of 505 tokens rounds to 512 by the multiple; the cap holds it at 509
    model.layout = PairLayout(model.template, model.max_length)
    premise = " ".join(["word"] * 600)  # cut to fill max_length
    pair = model.pair(model.encode_text(premise), model.hypothesis_ids(HYPOTHESES[0]))
    async with NliEngine.start(settings(), model=model) as engine:
        assert engine.batcher.policy.max_padded_len == 509
        await engine.infer([(premise, HYPOTHESES[0])])
        padded = engine.batcher.stats.padded_tokens
    assert pair.length == 505
    assert padded == model.collate([pair]).padded_tokens == 509


async def test_a_premise_is_tokenized_once_across_the_jobs_that_ask_about_it(tiny_model, monkeypatch):
    calls: list[str] = []
    encode = tiny_model.encode_text
    monkeypatch.setattr(tiny_model, "encode_text", lambda text: calls.append(text) or encode(text))
    headline = "Zoetis Declares $0.73 Dividend, Tokenized Once"
    async with NliEngine.start(settings(), model=tiny_model) as engine:
        first = engine.tokenize([(headline, h) for h in HYPOTHESES * 2])
        second = engine.tokenize([(headline, HYPOTHESES[0])])
    assert calls.count(headline) == 1
    assert second[0] == first[0] and second[0].premise_ids is first[0].premise_ids  # merging compares pointers


async def test_without_a_premise_cache_every_job_tokenizes_its_premise(tiny_model, monkeypatch):
    calls: list[str] = []
    encode = tiny_model.encode_text
    monkeypatch.setattr(tiny_model, "encode_text", lambda text: calls.append(text) or encode(text))
    async with NliEngine.start(settings(premise_cache_size=0), model=tiny_model) as engine:
        first = engine.tokenize([("Fed Holds Rates", HYPOTHESES[0])])
        second = engine.tokenize([("Fed Holds Rates", HYPOTHESES[0])])
    assert calls.count("Fed Holds Rates") == 2 and first == second


@pytest.mark.parametrize("layout", LAYOUTS)
async def test_a_hypothesis_too_long_for_the_model_is_invalid_input_naming_the_pair(tiny_model, layout):
    async with started(layout, settings(), tiny_model) as (front, _):
        with pytest.raises(InvalidInput, match=r"^invalid_input: pairs\[1\]: hypothesis of \d+ tokens"):
            await front.enqueue([("short", "fine"), ("a premise " * 10, "word " * 600)]).logits()


@pytest.mark.parametrize("layout", LAYOUTS)
async def test_the_same_pairs_asked_by_jobs_at_once_run_once_with_the_numbers_of_alone(tiny_model, headlines, layout):
    """The headline service asks classify and company_relevance of one headline together."""
    jobs = [[(h, hyp) for hyp in HYPOTHESES] for h in headlines[:4]] * 3
    async with started(layout, settings(), tiny_model) as (front, engine):
        alone = [await front.enqueue(pairs).logits() for pairs in jobs[:4]]
        before = engine.batcher.stats.items, engine.batcher.stats.items_merged
        together = await infer_together(front, jobs)
        items, merged = engine.batcher.stats.items - before[0], engine.batcher.stats.items_merged - before[1]
    assert items == 36
    assert merged >= 12  # 36 pairs, 12 of them distinct
    for i, logits in enumerate(together):
        np.testing.assert_allclose(logits, alone[i % 4], atol=1e-5)


async def test_a_started_engine_has_frozen_its_start_up_heap_and_collects_young_objects_rarely(tiny_model):
    """Jobs in flight are many small live objects: Python's default young threshold (700) would
    collect, promote and then fully collect them over and over under load (BENCHMARKS.md)."""
    gc.set_threshold(700, 10, 10)
    async with NliEngine.start(settings(), model=tiny_model):
        young, middle, oldest = gc.get_threshold()
        frozen = gc.get_freeze_count()
    assert (young, middle, oldest) == (YOUNG_COLLECTION_THRESHOLD, 10, 10)
    assert frozen > 0


@pytest.mark.parametrize("layout", LAYOUTS)
async def test_a_finished_job_is_freed_at_once_not_left_to_the_garbage_collector(tiny_model, headlines, layout):
    """A job's bookkeeping caught in a reference cycle lives on until the collector finds it: under
    sustained load those collections were the largest cost in a model process (BENCHMARKS.md)."""
    jobs = [[(h, hyp) for hyp in HYPOTHESES] for h in headlines[:8]]
    async with started(layout, settings(), tiny_model) as (front, _):
        await infer_together(front, jobs)  # warm: what a first job builds for good is not garbage
        gc.collect()
        gc.disable()
        try:
            await infer_together(front, jobs)
            gc.set_debug(gc.DEBUG_SAVEALL)
            gc.collect()
            left = Counter(type(thing).__qualname__ for thing in gc.garbage)
        finally:
            gc.set_debug(0)
            gc.garbage.clear()
            gc.enable()
    job_bookkeeping = {"_Job", "_Entry", "Ticket", "_Admitted", "QueuedPairs", "RemoteJob", "PairTokens"}
    assert not {name: n for name, n in left.items() if name in job_bookkeeping}
