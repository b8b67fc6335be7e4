"""Admission: jobs refused, accepted or held for room before any front end says "accepted"; a
loop tick's premises tokenized in one call. Each holds in both layouts (``tests/layouts.py``):
one process, and a front process beside a model process."""

from __future__ import annotations

import anyio
import numpy as np
import pytest
from held_model import held_batches
from layouts import LAYOUTS, settled, started

from batching import DeadlineExceeded, InvalidInput, Overloaded, Unavailable
from schemas import DEFAULT_SCHEMA
from worker.engine import NliEngine
from worker.service import Queued, execute_job
from worker.settings import Settings
from worker.tokenizing import PremiseCache

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


@pytest.fixture(params=LAYOUTS)
def layout(request) -> str:
    return request.param


async def test_the_jobs_of_one_tick_have_their_new_premises_tokenized_in_one_call(tiny_model, encode_calls, layout):
    jobs = [pairs_about(HEADLINES[i % 3]) for i in range(6)]
    async with started(layout, settings(), tiny_model) as (front, engine):
        alone = [await front.enqueue(pairs_about(headline)).logits() for headline in HEADLINES]
        front.tokenizer.premises = PremiseCache(1024)  # forget them: the tick below must tokenize
        encode_calls.clear()
        queued = [front.enqueue(pairs) for pairs in jobs]  # one tick: no await in between
        assert front.inflight_jobs == 6
        if front is engine:
            assert engine.queued_pairs == 12
        together = [await each.logits() for each in queued]
    assert len(encode_calls) == 1 and sorted(encode_calls[0]) == sorted(HEADLINES)
    for i, logits in enumerate(together):
        np.testing.assert_allclose(logits, alone[i % 3], atol=1e-5)


async def test_a_full_queue_counts_the_pairs_still_tokenizing(tiny_model, layout):
    async with started(layout, settings(max_queue_pairs=10), tiny_model) as (front, _):
        first = front.enqueue(pairs_about(HEADLINES[0]) * 3)  # 6 pairs, not in the batcher yet
        with pytest.raises(Overloaded, match=r"queue full \(6 items"):
            await front.enqueue(pairs_about(HEADLINES[1]) * 3).accepted()
        assert (await first.logits()).shape == (6, 3)


# --- room: pairs and tokens both counted before "accepted"; a taken job waits, never fails ----------

# Batches wait for a full batch or a minute while the model is busy, so what is queued stays
# queued until the test releases the model: the queue's fill is known exactly.
ROOMY_BATCHES = {"max_batch_pairs": 64, "max_wait_ms": 60_000}


async def six_of_eight_queued(front, entered) -> tuple[Queued, Queued]:
    """Two pairs held in the model, then six queued: a queue of 8 pairs with room for 2."""
    running = front.enqueue(pairs_about(HEADLINES[0]), wait_for_room=True)
    await anyio.to_thread.run_sync(entered.wait, 30)
    fills = front.enqueue(pairs_about(HEADLINES[1]) * 3, wait_for_room=True)
    return running, fills


async def test_a_job_that_must_wait_for_room_waits_in_arrival_order_and_completes(tiny_model, monkeypatch, layout):
    async with started(layout, settings(max_queue_pairs=8, **ROOMY_BATCHES), tiny_model) as (front, engine):
        with held_batches(tiny_model, monkeypatch) as (entered, release):
            running, fills = await six_of_eight_queued(front, entered)
            big = front.enqueue(pairs_about(HEADLINES[2]) * 2, wait_for_room=True)  # 4: no room
            small = front.enqueue(pairs_about(HEADLINES[0]), wait_for_room=True)  # 2 would fit: not before big
            await settled(front)
            assert engine.batcher.queued_items == 6 and engine.admission.waiting_jobs == 2
            with pytest.raises(Overloaded):  # a job that may be refused is, while others wait for room
                await front.enqueue(pairs_about(HEADLINES[1])).accepted()
            release.set()
            shapes = [(await queued.logits()).shape for queued in (running, fills, big, small)]
        assert shapes == [(2, 3), (6, 3), (4, 3), (2, 3)]
        assert engine.admission.waiting_jobs == 0 and engine.queued_pairs == 0


async def test_a_job_past_its_deadline_in_the_waiting_room_times_out_and_lets_the_next_in(
    tiny_model, monkeypatch, layout
):
    async with started(layout, settings(max_queue_pairs=8, **ROOMY_BATCHES), tiny_model) as (front, engine):
        with held_batches(tiny_model, monkeypatch) as (entered, release):
            running, fills = await six_of_eight_queued(front, entered)
            late = front.enqueue(pairs_about(HEADLINES[2]) * 2, wait_for_room=True, timeout_s=0.01)
            behind = front.enqueue(pairs_about(HEADLINES[0]), wait_for_room=True)
            with pytest.raises(DeadlineExceeded, match="no room in the queue within 0.01 s"):
                await late.logits()
            await behind.accepted()  # in the queue while the model is still held: the late job left room
            assert engine.batcher.queued_items == 8
            release.set()
            for queued in (running, fills, behind):
                await queued.logits()


async def test_a_job_cancelled_in_the_waiting_room_leaves_and_lets_the_next_in(tiny_model, monkeypatch, layout):
    async with started(layout, settings(max_queue_pairs=8, **ROOMY_BATCHES), tiny_model) as (front, engine):
        with held_batches(tiny_model, monkeypatch) as (entered, release):
            running, fills = await six_of_eight_queued(front, entered)
            gone = front.enqueue(pairs_about(HEADLINES[2]) * 2, wait_for_room=True)
            behind = front.enqueue(pairs_about(HEADLINES[0]), wait_for_room=True)
            await settled(front)
            assert engine.admission.waiting_jobs == 2
            with anyio.CancelScope() as scope:  # its caller leaves while it waits
                scope.cancel()
                await gone.logits()
            await behind.accepted()
            assert engine.admission.waiting_jobs == 0 and engine.batcher.queued_items == 8
            release.set()
            for queued in (running, fills, behind):
                await queued.logits()
        assert engine.batcher.stats.items == 2 + 6 + 2, "the cancelled job's pairs never ran"


async def test_a_job_larger_than_the_whole_queue_is_invalid_input_naming_the_limit(tiny_model, layout):
    async with started(layout, settings(max_queue_pairs=4), tiny_model) as (front, _):
        for wait_for_room in (False, True):
            with pytest.raises(InvalidInput, match=r"job has 6 pairs.*MAX_QUEUE_PAIRS=4"):
                await front.enqueue(pairs_about(HEADLINES[0]) * 3, wait_for_room=wait_for_room).accepted()
    async with started(layout, settings(max_queue_tokens=40), tiny_model) as (front, _):
        long = "Apple Declares A Special Dividend Of Two Dollars And Fifty Cents A Share"
        queued = front.enqueue(pairs_about(long) * 2, wait_for_room=True)
        with pytest.raises(InvalidInput, match=r"job has 4 pairs and \d+ tokens.*MAX_QUEUE_TOKENS=40"):
            await queued.accepted()


async def test_tokens_are_counted_before_acceptance_refused_or_waited_for(tiny_model, monkeypatch, layout):
    long = "Apple Declares A Special Dividend Of Two Dollars And Fifty Cents A Share"
    async with NliEngine.start(settings(**ROOMY_BATCHES), model=tiny_model) as engine:
        job_tokens = sum(t.length for t in engine.tokenize(pairs_about(long)))
    limits = settings(max_queue_tokens=job_tokens * 2, **ROOMY_BATCHES)
    async with started(layout, limits, tiny_model) as (front, engine):
        with held_batches(tiny_model, monkeypatch) as (entered, release):
            running = front.enqueue(pairs_about(HEADLINES[0]))
            await anyio.to_thread.run_sync(entered.wait, 30)
            fits = [front.enqueue(pairs_about(long)) for _ in range(2)]
            refused = front.enqueue(pairs_about(long))  # its pairs fit; its tokens do not
            waits = front.enqueue(pairs_about(long), wait_for_room=True)
            for queued in fits:
                await queued.accepted()
            with pytest.raises(Overloaded, match="queue full"):
                await refused.accepted()
            await settled(front)
            assert engine.admission.waiting_jobs == 1
            release.set()
            for queued in (running, *fits, waits):
                await queued.logits()


async def test_a_tick_of_much_new_text_is_tokenized_off_the_loop_which_keeps_answering(tiny_model, monkeypatch, layout):
    import threading

    from worker.tokenizing import INLINE_TOKENIZE_CHARS

    loop_thread, seen_in, release = threading.get_ident(), [], threading.Event()
    encode_texts = tiny_model.encode_texts

    def slow_encode(texts):
        seen_in.append(threading.get_ident())
        if sum(map(len, texts)) > INLINE_TOKENIZE_CHARS:
            assert release.wait(30)  # held until the test has seen the loop answer meanwhile
        return encode_texts(texts)

    monkeypatch.setattr(tiny_model, "encode_texts", slow_encode)
    long_texts = [f"{i} " + "word " * 400 for i in range(60)]  # 60 x ~2,000 new characters
    async with started(layout, settings(), tiny_model) as (front, _):
        big = [front.enqueue(pairs_about(text)) for text in long_texts]
        answered = []
        async with anyio.create_task_group() as tg:
            tg.start_soon(lambda: big[0].accepted())
            await anyio.wait_all_tasks_blocked()  # the tick waits on its tokenizing thread...
            answered.append(True)  # ...and this coroutine runs meanwhile: the loop is free
            release.set()
        for queued in big:
            assert (await queued.logits()).shape == (2, 3)
    assert answered and seen_in and all(thread != loop_thread for thread in seen_in)


async def test_a_hypothesis_too_long_is_refused_at_once_and_nothing_is_tokenized(tiny_model, encode_calls, layout):
    async with started(layout, settings(), tiny_model) as (front, _):
        with pytest.raises(InvalidInput, match=r"^invalid_input: pairs\[1\]: hypothesis of \d+ tokens"):
            front.enqueue([("short", "fine"), ("a premise", "word " * 600)])
        assert front.inflight_jobs == 0
    assert encode_calls == []


async def test_a_job_cancelled_while_admitted_never_reaches_the_model(tiny_model):
    # One process only: a front process has sent the job by the time its cancellation lands, and
    # the model process may batch it before the Cancel arrives (tests/test_split.py covers that).
    async with started("one-process", settings(), tiny_model) as (front, engine):
        queued = front.enqueue(pairs_about(HEADLINES[2]))
        with anyio.CancelScope() as scope:
            scope.cancel()
            await queued.logits()
        await front.enqueue(pairs_about(HEADLINES[0])).logits()
        await settled(front)
        assert engine.batcher.stats.items == 2  # the second job's pairs alone ran
        assert engine.inflight_jobs == 0 and engine.queued_pairs == 0 and front.inflight_jobs == 0


async def test_a_tokenizer_failure_ends_that_ticks_jobs_as_internal_and_the_next_tick_serves(
    tiny_model, monkeypatch, layout
):
    encode_texts = tiny_model.encode_texts
    failures = iter([RuntimeError("tokenizer crashed")])

    def failing_once(texts):
        for failure in failures:
            raise failure
        return encode_texts(texts)

    monkeypatch.setattr(tiny_model, "encode_texts", failing_once)
    job = {"operation": "classify", "headline": HEADLINES[1]}
    async with started(layout, settings(), tiny_model) as (front, _):
        outcomes: list = []
        async with anyio.create_task_group() as tg:
            for _ in range(2):
                tg.start_soon(lambda: _append(outcomes, execute_job(front, DEFAULT_SCHEMA, job)))
        after = await execute_job(front, DEFAULT_SCHEMA, job)
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
