"""The micro-batcher driven by a fake runner held on events: no sleeps, no timing assertions."""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Sequence

import anyio
import pytest

from batching import (
    Batcher,
    BatchPolicy,
    BatchStats,
    DeadlineExceeded,
    InferenceFailed,
    InvalidInput,
    Overloaded,
    ResourceExhausted,
    Ticket,
    Unavailable,
)

HOLD_S = 10  # safety net only: a held runner is always released by the test


class FakeRunner:
    """Records batches; ``hold()`` parks the model thread inside ``run`` until ``release()``."""

    def __init__(self, *, poison: str | None = None, oom_above: int | None = None) -> None:
        self.poison = poison
        self.oom_above = oom_above
        self.batches: list[list[str]] = []
        self.collated: list[list[str]] = []
        self.started = threading.Event()
        self.collate_seen = threading.Event()
        self._gate = threading.Event()
        self._gate.set()

    def hold(self) -> None:
        self._gate.clear()

    def release(self) -> None:
        self._gate.set()

    def collate(self, payloads: Sequence[str]) -> list[str]:
        if "bad-collate" in payloads:
            raise ValueError("cannot collate")
        self.collated.append(list(payloads))
        self.collate_seen.set()
        return list(payloads)

    def run(self, batch: list[str]) -> list[str]:
        self.batches.append(batch)
        self.started.set()
        assert self._gate.wait(HOLD_S)
        if self.oom_above is not None and len(batch) > self.oom_above:
            raise ResourceExhausted(f"{len(batch)} items")
        if self.poison in batch:
            raise ValueError("poisoned item")
        if "wrong-count" in batch:
            return []
        return [f"out:{p}" for p in batch]

    def ran(self) -> list[str]:
        return [p for batch in self.batches for p in batch]


async def until(event: threading.Event) -> None:
    with anyio.fail_after(HOLD_S):
        await anyio.to_thread.run_sync(event.wait)


def policy(**overrides) -> BatchPolicy:
    return BatchPolicy(**{"max_wait_ms": 60_000, **overrides})


def job(name: str, n: int) -> list[str]:
    return [f"{name}.{i}" for i in range(n)]


async def submit_all(batcher: Batcher, jobs: dict[str, list[str]], results: dict, **kw) -> None:
    async def one(name: str, payloads: list[str]) -> None:
        try:
            results[name] = await batcher.submit(payloads, [10] * len(payloads), **kw)
        except Exception as err:  # noqa: BLE001 - the test inspects it
            results[name] = err

    async with anyio.create_task_group() as tg:
        for name, payloads in jobs.items():
            tg.start_soon(one, name, payloads)


async def queue_behind_a_running_batch(batcher: Batcher, runner: FakeRunner, jobs: dict[str, list[str]]) -> dict:
    """Submit ``jobs`` while the runner holds a first batch, then let it go: every job is queued
    before the next batch is cut. Each job's results (or error), "first" included."""
    results: dict = {}
    runner.hold()
    async with anyio.create_task_group() as tg:
        tg.start_soon(submit_all, batcher, {"first": ["first"]}, results)
        await until(runner.started)
        tg.start_soon(submit_all, batcher, jobs, results)
        await anyio.wait_all_tasks_blocked()
        runner.release()
    return results


async def test_one_job_gets_its_results_in_order():
    runner = FakeRunner()
    async with Batcher(runner, policy()) as batcher:
        assert await batcher.submit(job("a", 3), [5, 50, 20]) == ["out:a.0", "out:a.1", "out:a.2"]


async def test_jobs_queued_while_the_runner_is_busy_share_one_batch():
    runner = FakeRunner()
    runner.hold()
    results: dict = {}
    async with Batcher(runner, policy()) as batcher, anyio.create_task_group() as tg:
        tg.start_soon(submit_all, batcher, {"first": job("first", 2)}, results)
        await until(runner.started)
        jobs = {f"j{i}": job(f"j{i}", 3) for i in range(10)}
        tg.start_soon(submit_all, batcher, jobs, results)
        await anyio.wait_all_tasks_blocked()
        assert batcher.queued_items == 30
        runner.release()
    assert [len(b) for b in runner.batches] == [2, 30]
    for name, payloads in jobs.items():
        assert results[name] == [f"out:{p}" for p in payloads]
    assert batcher.stats.batches == 2
    assert batcher.stats.mean_batch_items == 16


async def test_the_item_budget_cuts_batches():
    runner = FakeRunner()
    runner.hold()
    results: dict = {}
    async with Batcher(runner, policy(max_batch_items=4)) as batcher, anyio.create_task_group() as tg:
        tg.start_soon(submit_all, batcher, {"first": ["x"]}, results)
        await until(runner.started)
        tg.start_soon(submit_all, batcher, {"many": job("m", 10)}, results)
        await anyio.wait_all_tasks_blocked()
        runner.release()
    assert [len(b) for b in runner.batches] == [1, 4, 4, 2]
    assert results["many"] == [f"out:m.{i}" for i in range(10)]


async def test_the_token_budget_cuts_batches_and_the_oldest_goes_first():
    runner = FakeRunner()
    runner.hold()
    order: list[str] = []
    async with Batcher(runner, policy(max_batch_tokens=64)) as batcher, anyio.create_task_group() as tg:
        async def submit(name: str, cost: int) -> None:
            await batcher.submit([name], [cost])
            order.append(name)

        tg.start_soon(submit, "first", 8)
        await until(runner.started)
        tg.start_soon(submit, "long-oldest", 60)  # 64 padded: a batch of its own
        await anyio.wait_all_tasks_blocked()
        for i in range(3):
            tg.start_soon(submit, f"short{i}", 8)
        await anyio.wait_all_tasks_blocked()
        runner.release()
    assert runner.batches[1] == ["long-oldest"]
    assert sorted(runner.batches[2]) == ["short0", "short1", "short2"]


async def test_an_idle_runner_launches_at_once_without_waiting():
    runner = FakeRunner()
    async with Batcher(runner, policy(max_wait_ms=60_000)) as batcher:
        with anyio.fail_after(HOLD_S):  # would take a minute if it waited for max_wait_ms
            assert await batcher.submit(["a"], [5]) == ["out:a"]


async def test_a_busy_runner_gets_the_next_batch_prepared_after_max_wait():
    runner = FakeRunner()
    runner.hold()
    results: dict = {}
    async with Batcher(runner, policy(max_wait_ms=1)) as batcher, anyio.create_task_group() as tg:
        tg.start_soon(submit_all, batcher, {"first": ["first"]}, results)
        await until(runner.started)
        runner.collate_seen.clear()
        tg.start_soon(submit_all, batcher, {"second": ["second"]}, results)
        await until(runner.collate_seen)  # prepared while "first" still computes
        assert runner.collated[-1] == ["second"]
        assert runner.batches == [["first"]]
        runner.release()
    assert results["second"] == ["out:second"]


async def test_a_busy_runner_gets_a_full_batch_prepared_without_waiting():
    runner = FakeRunner()
    runner.hold()
    results: dict = {}
    async with Batcher(runner, policy(max_batch_items=4)) as batcher, anyio.create_task_group() as tg:
        tg.start_soon(submit_all, batcher, {"first": ["first"]}, results)
        await until(runner.started)
        runner.collate_seen.clear()
        tg.start_soon(submit_all, batcher, {"full": job("full", 4)}, results)
        await until(runner.collate_seen)
        assert runner.collated[-1] == job("full", 4)
        runner.release()


async def hand_over_behind_a_running_batch(batcher: Batcher, runner: FakeRunner, tg, results: dict,
                                          other: list[str], **kw) -> Ticket:
    """With "first" computing, queue "kept" and then ``other`` (2 items each, the batch of 4 the
    policy cuts) and return once that batch is collated and handed to the model thread:
    ``other``'s ticket, nobody waiting on it yet."""
    runner.hold()
    tg.start_soon(submit_all, batcher, {"first": ["first"]}, results)
    await until(runner.started)
    runner.started.clear()
    tg.start_soon(submit_all, batcher, {"kept": job("kept", 2)}, results)
    await anyio.wait_all_tasks_blocked()
    ticket = batcher.enqueue(other, [10] * len(other), **kw)
    await until(runner.collate_seen)
    await anyio.wait_all_tasks_blocked()  # the former is blocked: the batch is on the model thread
    assert runner.collated[-1] == [*job("kept", 2), *other]
    return ticket


async def test_the_model_thread_takes_the_next_batch_while_the_event_loop_is_busy():
    """In a burst the loop has hundreds of jobs to answer: the GPU must not wait for it."""
    runner = FakeRunner()
    results: dict = {}
    async with Batcher(runner, policy(max_batch_items=4)) as batcher, anyio.create_task_group() as tg:
        ticket = await hand_over_behind_a_running_batch(batcher, runner, tg, results, job("next", 2))
        runner.release()
        # Block the event loop itself: only the model thread can start the next batch now.
        assert runner.started.wait(HOLD_S), "the next batch waited for the event loop"
        assert runner.batches == [["first"], [*job("kept", 2), *job("next", 2)]]
        assert await ticket.result() == ["out:next.0", "out:next.1"]
    assert results["kept"] == ["out:kept.0", "out:kept.1"]


async def test_a_job_cancelled_after_its_batch_was_handed_over_never_reaches_the_runner():
    runner = FakeRunner()
    results: dict = {}
    async with Batcher(runner, policy(max_batch_items=4)) as batcher, anyio.create_task_group() as tg:
        ticket = await hand_over_behind_a_running_batch(batcher, runner, tg, results, job("doomed", 2))
        with anyio.CancelScope() as doomed:
            doomed.cancel()
            await ticket.result()
        runner.release()
    assert runner.batches == [["first"], job("kept", 2)]
    assert results["kept"] == ["out:kept.0", "out:kept.1"]
    assert batcher.stats.items_dropped == 2


async def test_a_job_that_expires_while_its_batch_waits_on_the_model_thread_is_left_out_and_times_out():
    runner = FakeRunner()
    results: dict = {}
    async with Batcher(runner, policy(max_batch_items=4)) as batcher, anyio.create_task_group() as tg:
        late = await hand_over_behind_a_running_batch(batcher, runner, tg, results, job("late", 2), timeout_s=0.01)
        time.sleep(0.02)  # the loop is busy past the deadline: no timer of the loop's ends the job
        runner.release()
        assert runner.started.wait(HOLD_S)
        with pytest.raises(DeadlineExceeded, match="timed_out"):
            await late.result()
    assert runner.batches == [["first"], job("kept", 2)]
    assert results["kept"] == ["out:kept.0", "out:kept.1"]


async def test_a_full_queue_rejects_at_once_with_a_retryable_error():
    runner = FakeRunner()
    runner.hold()
    results: dict = {}
    async with Batcher(runner, policy(max_queue_items=5)) as batcher, anyio.create_task_group() as tg:
        tg.start_soon(submit_all, batcher, {"first": ["first"]}, results)
        await until(runner.started)
        tg.start_soon(submit_all, batcher, {"queued": job("q", 3)}, results)
        await anyio.wait_all_tasks_blocked()
        with pytest.raises(Overloaded) as caught:
            await batcher.submit(job("over", 3), [10] * 3)
        assert caught.value.retryable and caught.value.http_status == 429
        assert str(caught.value).startswith("overloaded: queue full")
        with pytest.raises(InvalidInput, match="at most 5 items"):
            await batcher.submit(job("huge", 6), [10] * 6)
        runner.release()
    assert results["queued"] == ["out:q.0", "out:q.1", "out:q.2"]
    assert batcher.stats.jobs_rejected == 1


async def test_a_cancelled_job_propagates_cancellation_and_never_reaches_the_runner():
    runner = FakeRunner()
    runner.hold()
    results: dict = {}
    cancelled = anyio.Event()
    async with Batcher(runner, policy()) as batcher, anyio.create_task_group() as tg:
        tg.start_soon(submit_all, batcher, {"first": ["first"]}, results)
        await until(runner.started)

        async def doomed() -> None:
            with anyio.CancelScope() as scope:
                doomed_scope.append(scope)
                try:
                    await batcher.submit(job("doomed", 3), [10] * 3)
                except anyio.get_cancelled_exc_class():
                    cancelled.set()
                    raise

        doomed_scope: list[anyio.CancelScope] = []
        tg.start_soon(doomed)
        tg.start_soon(submit_all, batcher, {"kept": job("kept", 2)}, results)
        await anyio.wait_all_tasks_blocked()
        assert batcher.queued_items == 5
        doomed_scope[0].cancel()
        await cancelled.wait()
        assert batcher.queued_items == 2
        runner.release()
    assert not any(p.startswith("doomed") for p in runner.ran())
    assert results["kept"] == ["out:kept.0", "out:kept.1"]
    assert batcher.stats.items_dropped == 3
    assert batcher.inflight_jobs == 0


async def test_a_job_cancelled_while_its_batch_computes_is_ignored_and_the_loop_goes_on():
    runner = FakeRunner()
    runner.hold()
    async with Batcher(runner, policy()) as batcher:
        async with anyio.create_task_group() as tg:
            tg.start_soon(batcher.submit, ["running"], [5])
            await until(runner.started)
            tg.cancel_scope.cancel()
        runner.release()
        assert await batcher.submit(["after"], [5]) == ["out:after"]


async def test_an_expired_job_times_out_and_its_items_never_run():
    runner = FakeRunner()
    runner.hold()
    results: dict = {}
    async with Batcher(runner, policy()) as batcher, anyio.create_task_group() as tg:
        tg.start_soon(submit_all, batcher, {"first": ["first"]}, results)
        await until(runner.started)
        with pytest.raises(DeadlineExceeded, match="timed_out"):
            await batcher.submit(job("late", 2), [10, 10], timeout_s=0.01)
        assert batcher.queued_items == 0
        runner.release()
    assert runner.ran() == ["first"]


async def test_a_poisoned_item_fails_only_its_own_job():
    runner = FakeRunner(poison="j3.1")
    jobs = {f"j{i}": job(f"j{i}", 2) for i in range(8)}
    async with Batcher(runner, policy()) as batcher:
        results = await queue_behind_a_running_batch(batcher, runner, jobs)
    assert isinstance(results["j3"], InferenceFailed)
    assert str(results["j3"]) == "inference_failed: the model failed on this job's input: ValueError"
    for name in jobs.keys() - {"j3"}:
        assert results[name] == [f"out:{p}" for p in jobs[name]]
    assert batcher.stats.items_failed == 1
    assert batcher.stats.batch_splits >= 1


@pytest.mark.parametrize("bad", ["bad-collate", "wrong-count"])
async def test_the_loop_survives_a_runner_that_misbehaves(bad: str):
    runner = FakeRunner()
    async with Batcher(runner, policy()) as batcher:
        with pytest.raises(InferenceFailed):
            await batcher.submit([bad], [5])
        assert await batcher.submit(["fine"], [5]) == ["out:fine"]


async def test_out_of_memory_splits_and_shrinks_the_budget_without_failing_jobs():
    runner = FakeRunner(oom_above=4)
    jobs = {f"j{i}": job(f"j{i}", 4) for i in range(4)}
    async with Batcher(runner, policy(max_batch_tokens=4096)) as batcher:
        results = await queue_behind_a_running_batch(batcher, runner, jobs)
    for name, payloads in jobs.items():
        assert results[name] == [f"out:{p}" for p in payloads]
    assert batcher.budget_tokens < 4096
    assert batcher.stats.budget_shrinks >= 1


async def test_shutdown_fails_waiting_jobs_instead_of_hanging_them():
    runner = FakeRunner()
    runner.hold()
    results: dict = {}
    async with anyio.create_task_group() as tg:
        async with Batcher(runner, policy()) as batcher:
            tg.start_soon(submit_all, batcher, {"running": ["running"], "queued": ["queued"]}, results)
            await until(runner.started)
            await anyio.wait_all_tasks_blocked()
        runner.release()
    assert isinstance(results["running"], Unavailable)
    assert isinstance(results["queued"], Unavailable)
    with pytest.raises(Unavailable):
        await batcher.submit(["late"], [5])


async def test_every_batch_is_reported_with_its_shape():
    runner = FakeRunner()
    seen: list[BatchStats] = []
    async with Batcher(runner, policy(), on_batch=seen.append) as batcher:
        await batcher.submit(["a", "b"], [9, 20])
    (stats,) = seen
    assert (stats.items, stats.jobs, stats.real_tokens, stats.padded_len) == (2, 1, 29, 24)
    assert stats.padded_tokens == 48
    assert stats.padding_efficiency == pytest.approx(29 / 48)
    assert len(stats.queue_wait_s) == 2


async def test_enqueue_admits_or_refuses_before_returning_and_the_ticket_waits():
    runner = FakeRunner()
    runner.hold()
    async with Batcher(runner, policy(max_queue_items=4)) as batcher:
        first = batcher.enqueue(job("a", 3), [10] * 3)  # no await in between: queued now
        assert batcher.queued_items == 3
        with pytest.raises(Overloaded):
            batcher.enqueue(job("b", 2), [10] * 2)
        assert batcher.queued_items == 3  # the refused job left nothing behind
        assert await batcher.enqueue([], []).result() == []
        runner.release()
        assert await first.result() == ["out:a.0", "out:a.1", "out:a.2"]
    with pytest.raises(Unavailable):
        batcher.enqueue(job("late", 1), [10])


async def test_identical_items_queued_at_once_run_once_and_every_job_gets_the_result():
    runner = FakeRunner()
    seen: list[BatchStats] = []
    # Three jobs ask about the same headline; one of them asks the same pair twice.
    jobs = {"a": ["h.0", "h.1", "x"], "b": ["h.0", "h.1"], "c": ["h.1", "h.0", "h.1"]}
    async with Batcher(runner, policy(), on_batch=seen.append) as batcher:
        results = await queue_behind_a_running_batch(batcher, runner, jobs)
    assert runner.batches[1] == ["h.0", "h.1", "x"]  # distinct payloads, first-seen order
    for name, payloads in jobs.items():
        assert results[name] == [f"out:{p}" for p in payloads]
    merged = seen[1]
    assert (merged.items, merged.merged_items, merged.jobs) == (8, 5, 3)
    assert (merged.real_tokens, merged.padded_tokens) == (30, 48)  # the three rows that ran
    assert batcher.stats.items == 9 and batcher.stats.items_merged == 5


async def test_merging_can_be_turned_off():
    runner = FakeRunner()
    async with Batcher(runner, policy(merge_identical=False)) as batcher:
        results = await queue_behind_a_running_batch(batcher, runner, {"a": ["h", "h"], "b": ["h"]})
    assert runner.batches[1] == ["h", "h", "h"]
    assert results["a"] == ["out:h", "out:h"] and results["b"] == ["out:h"]
    assert batcher.stats.items_merged == 0


async def test_a_poisoned_item_asked_by_two_jobs_fails_both_and_no_other():
    runner = FakeRunner(poison="bad")
    async with Batcher(runner, policy()) as batcher:
        results = await queue_behind_a_running_batch(batcher, runner, {"a": ["ok", "bad"], "b": ["bad"], "c": ["ok", "other"]})
    assert isinstance(results["a"], InferenceFailed) and isinstance(results["b"], InferenceFailed)
    assert results["c"] == ["out:ok", "out:other"]


# --- fair share: a flood of big jobs does not hold a small one back ---------------------------------


async def test_a_small_job_behind_a_flood_of_big_ones_runs_in_the_next_batches():
    runner = FakeRunner()
    async with Batcher(runner, policy(max_batch_items=4, window_items=16)) as batcher:
        results = await queue_behind_a_running_batch(
            batcher, runner, {"big1": job("big1", 40), "big2": job("big2", 40), "small": job("small", 2)}
        )
    assert all(not isinstance(r, Exception) for r in results.values())
    after_first = runner.batches[1:]
    small_batch = next(i for i, batch in enumerate(after_first) if "small.0" in batch)
    assert small_batch <= 1, f"the small job waited {small_batch} batches behind 80 queued items"
    assert set(job("small", 2)) <= set(after_first[small_batch])
    # ... and the flood is not starved in exchange: its oldest item rides every other batch at least.
    anchors = [i for i, batch in enumerate(after_first) if any(p.startswith("big1.") for p in batch)]
    assert anchors[0] == 0 and all(b - a <= 2 for a, b in zip(anchors, anchors[1:]))


async def test_a_burst_of_small_jobs_keeps_arrival_order():
    runner = FakeRunner()
    jobs = {f"j{i}": job(f"j{i}", 2) for i in range(6)}
    async with Batcher(runner, policy(max_batch_items=4, window_items=4)) as batcher:
        await queue_behind_a_running_batch(batcher, runner, jobs)
    assert runner.batches[1:] == [[*job("j0", 2), *job("j1", 2)], [*job("j2", 2), *job("j3", 2)],
                                  [*job("j4", 2), *job("j5", 2)]]  # fmt: skip


async def test_a_job_followed_by_a_callback_hears_once_how_it_ended_without_a_task():
    """The model process of a split worker follows each job this way instead of awaiting it."""
    runner = FakeRunner(poison="bad.0")
    heard: dict[str, list] = {"done": [], "failed": [], "dropped": [], "empty": []}
    both = anyio.Event()

    def hear(name: str):
        def callback(results, error) -> None:
            heard[name].append((results, error))
            if heard["done"] and heard["failed"]:
                both.set()

        return callback

    async with Batcher(runner, policy(max_batch_items=8)) as batcher:
        runner.hold()
        running = batcher.enqueue(["first"], [10])
        await until(runner.started)
        batcher.enqueue(job("a", 2), [10] * 2).when_done(hear("done"))
        batcher.enqueue(["bad.0"], [10]).when_done(hear("failed"))
        gone = batcher.enqueue(job("c", 1), [10])
        gone.when_done(hear("dropped"))
        gone.drop()  # given up before its batch: heard at once
        assert heard["dropped"] == [(None, None)]
        batcher.enqueue([], []).when_done(hear("empty"))  # ended already: heard at once
        assert heard["empty"] == [([], None)]
        runner.release()
        await running.result()
        with anyio.fail_after(HOLD_S):
            await both.wait()
    assert heard["done"] == [(["out:a.0", "out:a.1"], None)]
    [(results, error)] = heard["failed"]
    assert results is None and isinstance(error, InferenceFailed)
    assert "c.0" not in runner.ran() and heard["dropped"] == [(None, None)]


# --- the look-ahead window: what a batch leaves stays for the next, and ended jobs leave it ---------


async def cut_with_a_remainder(batcher: Batcher, runner: FakeRunner, jobs: dict[str, list[str]]) -> dict[str, Ticket]:
    """Queue ``jobs`` behind a held first batch and let the next batch be cut: the window keeps
    what that batch did not take. The runner is still held when this returns."""
    runner.hold()
    tickets = {"first": batcher.enqueue(["first"], [10])}
    await until(runner.started)
    tickets |= {name: batcher.enqueue(payloads, [10] * len(payloads)) for name, payloads in jobs.items()}
    await anyio.wait_all_tasks_blocked()
    return tickets


async def test_a_job_dropped_while_its_items_wait_in_the_window_never_runs_and_the_next_batch_fills_up():
    runner = FakeRunner()
    async with Batcher(runner, policy(max_batch_items=4, window_items=8)) as batcher:
        tickets = await cut_with_a_remainder(batcher, runner, {name: job(name, 2) for name in "abcde"})
        assert batcher.queued_items == 6  # the second batch took a and b; c and d wait in the window
        tickets["c"].drop()
        assert batcher.queued_items == 4
        runner.release()
        for name in "abde":
            assert await tickets[name].result() == [f"out:{p}" for p in job(name, 2)]
    assert runner.batches[1:] == [[*job("a", 2), *job("b", 2)], [*job("d", 2), *job("e", 2)]]
    assert batcher.stats.items_dropped == 2 and batcher.inflight_jobs == 0


async def test_a_job_that_expires_in_the_window_times_out_and_the_jobs_behind_it_move_up(monkeypatch):
    clock = [time.monotonic()]
    monkeypatch.setattr("batching.batcher.clock", lambda: clock[0])
    runner = FakeRunner()
    async with Batcher(runner, policy(max_batch_items=4, window_items=8)) as batcher:
        runner.hold()
        tickets = {"first": batcher.enqueue(["first"], [10])}
        await until(runner.started)
        for name in "abcde":
            tickets[name] = batcher.enqueue(job(name, 2), [10, 10], timeout_s=60 if name == "c" else None)
        await anyio.wait_all_tasks_blocked()
        assert batcher.queued_items == 6
        clock[0] += 120  # c's deadline passes while its items wait in the window
        runner.release()
        for name in "abde":
            assert await tickets[name].result() == [f"out:{p}" for p in job(name, 2)]
        with pytest.raises(DeadlineExceeded, match="expired before compute"):
            await tickets["c"].result()
    assert runner.batches[1:] == [[*job("a", 2), *job("b", 2)], [*job("d", 2), *job("e", 2)]]


@pytest.mark.parametrize("seed", range(8))
@pytest.mark.parametrize(("items", "tokens", "window"), [(6, 128, 16), (8, 512, 8)])
async def test_every_item_of_every_job_kept_runs_exactly_once_whatever_the_lengths_and_drops(
    seed: int, items: int, tokens: int, window: int
):
    """Mixed lengths (batches take items out of the window's middle, or all of it), jobs bigger
    than a batch (cuts led by the smallest job), and jobs dropped with their items in the window."""
    rng = random.Random(seed)
    runner = FakeRunner()
    jobs = {f"j{i}": job(f"j{i}", rng.choice([1, 2, 3, 6, 9, 17])) for i in range(40)}
    costs = {name: [rng.randint(3, 60) for _ in payloads] for name, payloads in jobs.items()}
    policy_ = policy(max_batch_items=items, max_batch_tokens=tokens, window_items=window, merge_identical=False)
    async with Batcher(runner, policy_) as batcher:
        runner.hold()
        first = batcher.enqueue(["first"], [10])
        await until(runner.started)
        tickets = {name: batcher.enqueue(payloads, costs[name]) for name, payloads in jobs.items()}
        await anyio.wait_all_tasks_blocked()
        dropped = set(rng.sample(sorted(jobs), 10))
        for name in dropped:
            tickets[name].drop()
        runner.release()
        with anyio.fail_after(HOLD_S):  # an item lost from the queue would hang its job
            await first.result()
            for name in sorted(set(jobs) - dropped):
                assert await tickets[name].result() == [f"out:{p}" for p in jobs[name]]
        assert batcher.queued_items == batcher.queued_tokens == batcher.inflight_jobs == 0
    ran = runner.ran()
    assert sorted(ran) == sorted(["first", *(p for name in set(jobs) - dropped for p in jobs[name])])
