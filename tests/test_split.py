"""A worker split in two (docs/PROCESSES.md): what only a front process beside a model process
can get wrong. What must hold in both layouts runs in both (``tests/layouts.py``)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys

import anyio
import numpy as np
import pytest
from held_model import held_batches
from layouts import connected, model_process, settled, started

from batching import DeadlineExceeded, Unavailable
from schemas import DEFAULT_SCHEMA, OPERATIONS
from worker.service import execute_job
from worker.settings import Settings

HEADLINE = "Apple Declares $0.25 Dividend"
HYPOTHESES = ("This is an opinion piece or editorial.", "This text is about Apple.")
ROOMY_BATCHES = {"max_batch_pairs": 64, "max_wait_ms": 60_000}
"""While the model is held, what is queued stays queued until the test releases it."""


def settings(**overrides) -> Settings:
    return Settings(model_name="synthetic:tiny", warmup_max_len=16, **overrides)


def pairs_about(headline: str) -> list[tuple[str, str]]:
    return [(headline, hypothesis) for hypothesis in HYPOTHESES]


async def stop_while_one_runs_and_one_waits(served, front, model, monkeypatch) -> tuple:
    """Stop ``served``'s model process while one of ``front``'s jobs is in a batch and another is
    queued behind it; return once the front has seen it go: ``(running, queued)``."""
    with held_batches(model, monkeypatch) as (entered, release):
        running = front.enqueue(pairs_about("Fed Holds Rates"))
        await anyio.to_thread.run_sync(entered.wait, 30)
        queued = front.enqueue(pairs_about(HEADLINE))
        await settled(front)
        served.host.stop()
        with anyio.fail_after(30):
            await front.wait_disconnected()
        release.set()
    return running, queued


async def test_every_operation_answers_as_in_one_process(tiny_model, example_jobs, check_job_output):
    outputs = {}
    for layout in ("one-process", "split"):
        async with started(layout, settings(), tiny_model) as (front, _):
            for operation in OPERATIONS:
                job = {"operation": operation, **example_jobs[operation]}
                outcome = await execute_job(front, DEFAULT_SCHEMA, job)
                check_job_output(operation, example_jobs[operation], outcome.to_output())
                outputs[layout, operation] = outcome.to_output()
    for operation in OPERATIONS:
        assert outputs["split", operation] == outputs["one-process", operation]  # the same batches, the same numbers


async def test_bad_input_is_refused_with_the_same_words_in_the_front(tiny_model):
    job = {"operation": "nli", "pairs": [["a premise", "$1" * 1000]]}  # 2,000 characters, 2,000 tokens
    async with started("split", settings(max_queue_pairs=4), tiny_model) as (front, engine):
        too_long = await execute_job(front, DEFAULT_SCHEMA, job)
        too_many = await execute_job(front, DEFAULT_SCHEMA, {"operation": "nli", "pairs": [["a", "b"]] * 5})
        assert engine.batcher.stats.jobs_submitted == 0
    assert str(too_long.error).startswith("invalid_input: pairs[0]: hypothesis of")
    assert str(too_many.error).startswith("invalid_input: job has 5 pairs")
    assert "MAX_QUEUE_PAIRS=4" in str(too_many.error)


async def test_the_same_headline_from_two_fronts_merges_in_one_batch(tiny_model, monkeypatch):
    async with model_process(settings(**ROOMY_BATCHES), tiny_model) as model:
        engine = model.engine
        first_front, second_front = (connected(settings(), model.path, tiny_model) for _ in range(2))
        async with first_front as first, second_front as second:
            with held_batches(tiny_model, monkeypatch) as (entered, release):
                holding = first.enqueue([("something else", "x")])  # the model holds it; the rest queue
                await anyio.to_thread.run_sync(entered.wait, 30)
                jobs = [front.enqueue(pairs_about(HEADLINE)) for front in (first, second)]
                await settled(first)
                await settled(second)
                release.set()
                logits = [await job.logits() for job in jobs]
                await holding.logits()
    np.testing.assert_allclose(logits[0], logits[1], atol=1e-6)
    assert engine.batcher.stats.items_merged == 2  # the second front's two pairs rode on the first's


async def test_a_front_that_goes_loses_only_its_own_jobs(tiny_model, monkeypatch):
    async with model_process(settings(**ROOMY_BATCHES), tiny_model) as model:
        engine = model.engine
        async with connected(settings(), model.path, tiny_model) as staying:
            with held_batches(tiny_model, monkeypatch) as (entered, release):
                running = staying.enqueue(pairs_about("Fed Holds Rates"))
                await anyio.to_thread.run_sync(entered.wait, 30)
                async with connected(settings(), model.path, tiny_model) as leaving:
                    leaving.enqueue(pairs_about("Tesla Recalls Cars") * 3)
                    await settled(leaving)
                    assert engine.queued_pairs == 6
                kept = staying.enqueue(pairs_about(HEADLINE))
                await settled(staying)
                assert engine.queued_pairs == 2, "the leaving front's pairs were dropped"
                release.set()
                assert (await kept.logits()).shape == (2, 3)
                assert (await running.logits()).shape == (2, 3)
        assert engine.batcher.stats.items == 4 and engine.batcher.stats.items_dropped == 6


async def test_a_job_cancelled_in_the_front_is_dropped_from_the_model_queue(tiny_model, monkeypatch):
    async with started("split", settings(**ROOMY_BATCHES), tiny_model) as (front, engine):
        with held_batches(tiny_model, monkeypatch) as (entered, release):
            running = front.enqueue(pairs_about("Fed Holds Rates"))
            await anyio.to_thread.run_sync(entered.wait, 30)
            gone = front.enqueue(pairs_about(HEADLINE) * 2)
            await settled(front)
            assert engine.queued_pairs == 4
            with anyio.CancelScope() as scope:
                scope.cancel()
                await gone.logits()
            await settled(front)
            assert engine.queued_pairs == 0 and engine.inflight_jobs == 1
            release.set()
            await running.logits()
        assert engine.batcher.stats.items == 2 and front.inflight_jobs == 0


async def test_a_queued_job_past_its_deadline_times_out_and_leaves_the_model_queue(tiny_model, monkeypatch):
    async with started("split", settings(**ROOMY_BATCHES), tiny_model) as (front, engine):
        with held_batches(tiny_model, monkeypatch) as (entered, release):
            running = front.enqueue(pairs_about("Fed Holds Rates"))
            await anyio.to_thread.run_sync(entered.wait, 30)
            late = front.enqueue(pairs_about(HEADLINE), timeout_s=0.05)
            with pytest.raises(DeadlineExceeded, match=r"^timed_out: no result within 0.05 s"):
                await late.logits()
            await settled(front)
            assert engine.queued_pairs == 0 and engine.inflight_jobs == 1
            release.set()
            await running.logits()
        assert engine.batcher.stats.items == 2


async def test_a_job_whose_deadline_is_shorter_than_a_round_trip_is_accepted_and_then_times_out(tiny_model):
    # The pod answers /run once a job is accepted; a deadline of a microsecond must not turn that
    # answer into a timeout (the fuzzer's 504 from a pod of fronts), as in one process.
    for layout in ("one-process", "split"):
        async with started(layout, settings(), tiny_model) as (front, _):
            job = front.enqueue(pairs_about(HEADLINE), timeout_s=1e-6)
            await job.accepted()
            with pytest.raises(DeadlineExceeded):
                await job.logits()


async def test_answers_of_one_kind_go_as_one_message_in_order_each_job_with_its_own_rows(tmp_path):
    from batching import Overloaded
    from worker.split.frames import Sender, receive
    from worker.split.messages import Accepted, Failed, Results, ToFront, accept, answer, failed, logits_of

    rows = np.arange(15, dtype=np.float32).reshape(5, 3)
    async with await anyio.create_unix_listener(tmp_path / "s.sock") as listener:
        async with await anyio.connect_unix(tmp_path / "s.sock") as front, await listener.accept() as model:
            sender: Sender[ToFront] = Sender(model)
            accept(sender, 1)
            accept(sender, 2)
            answer(sender, 1, list(rows[:1]))
            sender.send(failed(3, Overloaded("queue full", retry_after_s=1.0)))
            accept(sender, 4)
            answer(sender, 2, list(rows[1:3]))
            answer(sender, 4, list(rows[3:]))
            async with anyio.create_task_group() as tasks:
                tasks.start_soon(sender.run)
                with anyio.fail_after(10):
                    replies = receive(front, ToFront)
                    got = [await anext(replies) for _ in range(5)]
                tasks.cancel_scope.cancel()
    assert [type(message) for message in got] == [Accepted, Results, Failed, Accepted, Results]
    assert got[0].jobs == [1, 2] and got[3].jobs == [4]  # each job accepted before it ends, as sent
    assert got[2].job == 3
    ended = [dict(logits_of(got[1], 3)), dict(logits_of(got[4], 3))]
    assert list(ended[0]) == [1] and list(ended[1]) == [2, 4]
    assert ended[0][1].tolist() == rows[:1].tolist()
    assert ended[1][2].tolist() == rows[1:3].tolist() and ended[1][4].tolist() == rows[3:].tolist()


async def test_garbage_on_the_model_socket_ends_only_that_connection(tiny_model):
    import msgspec

    from worker.split.frames import receive
    from worker.split.messages import Failed, Hello, Submit, ToFront

    async with model_process(settings(), tiny_model) as model:
        assert model.path.stat().st_mode & 0o777 == 0o600  # its user's fronts alone may connect
        async with connected(settings(), model.path, tiny_model) as front:
            async with await anyio.connect_unix(model.path) as garbage:
                await garbage.send(b"\x05\x00\x00\x00hello")  # a frame, but not msgpack of ours
                with anyio.fail_after(10), pytest.raises((anyio.EndOfStream, anyio.BrokenResourceError)):
                    await garbage.receive()  # the model process hung up on it
            async with await anyio.connect_unix(model.path) as careless:
                bad = msgspec.msgpack.encode(Submit(7, [b"\x01\x00\x00\x00"], [0, 5, 3], None, False))
                await careless.send(len(bad).to_bytes(4, "little") + bad)  # a pair naming no sequence
                with anyio.fail_after(10):
                    replies = receive(careless, ToFront)
                    hello, answer = await anext(replies), await anext(replies)
                assert isinstance(hello, Hello)  # what it serves comes first on every connection
                assert isinstance(answer, Failed) and (answer.job, answer.code) == (7, "internal")
            assert (await front.enqueue(pairs_about(HEADLINE)).logits()).shape == (2, 3)


async def test_when_the_model_process_stops_jobs_fail_unavailable_until_it_is_back(tiny_model, monkeypatch):
    async with model_process(settings(**ROOMY_BATCHES), tiny_model) as model:
        async with connected(settings(), model.path, tiny_model) as front:
            running, queued = await stop_while_one_runs_and_one_waits(model, front, tiny_model, monkeypatch)
            for job in (running, queued):
                with pytest.raises(Unavailable):
                    await job.logits()
            with pytest.raises(Unavailable, match="the model process stopped"):
                front.enqueue(pairs_about(HEADLINE))
            assert not model.path.exists()
            async with model_process(settings(), tiny_model, model.path) as restarted:  # on the same socket
                with anyio.fail_after(30):
                    await front.wait_connected()  # the front connects again by itself
                assert (await front.enqueue(pairs_about(HEADLINE)).logits()).shape == (2, 3)
                assert restarted.engine.batcher.stats.items == 2


async def test_a_serverless_front_holds_its_jobs_through_one_model_process_restart(tiny_model, monkeypatch):
    # rerun_lost: RunPod does not retry a job a worker took and failed, so a model process that
    # stops costs the jobs in it a second run, not their end; a second stop under a job ends it.
    from worker.split.remote_engine import RemoteEngine

    async with model_process(settings(**ROOMY_BATCHES), tiny_model) as first:
        async with RemoteEngine.connect(settings(), first.path, model=tiny_model, rerun_lost=True) as front:
            running, queued = await stop_while_one_runs_and_one_waits(first, front, tiny_model, monkeypatch)
            waiting = front.enqueue(pairs_about("Tesla Recalls Cars"))  # taken while it is gone: held, not refused
            await anyio.wait_all_tasks_blocked()
            assert front.inflight_jobs == 3 and not front.connected
            async with model_process(settings(**ROOMY_BATCHES), tiny_model, first.path) as second:
                with held_batches(tiny_model, monkeypatch) as (entered, release):  # before the front is back
                    await anyio.to_thread.run_sync(entered.wait, 30)  # all three sent again, in one batch
                    second.host.stop()
                    with anyio.fail_after(30):
                        await front.wait_disconnected()
                    release.set()
                for job in (running, queued):  # their second run was lost too
                    with pytest.raises(Unavailable, match="stopped twice while this job was in it"):
                        await job.logits()
                async with model_process(settings(), tiny_model, first.path) as third:
                    with anyio.fail_after(30):
                        assert (await waiting.logits()).shape == (2, 3)  # its first run was lost: run again
                    assert third.engine.batcher.stats.items == 2
            assert second.engine.batcher.stats.jobs_submitted == 3


async def test_a_job_arriving_before_the_front_reaches_a_listening_model_process_is_not_refused(tiny_model, monkeypatch):
    # Fronts try the model process's socket every RECONNECT_S; a pod whose other front is ready
    # already sends this one jobs in between. Asking now (connect_now) reaches it at once.
    import tempfile
    from pathlib import Path

    from worker.split import remote_engine
    from worker.split.remote_host import RemoteHost

    monkeypatch.setattr(remote_engine, "RECONNECT_S", 3600.0)  # no attempt but those asked for
    with tempfile.TemporaryDirectory(prefix="burst-nli-") as folder:
        path = Path(folder) / "model.sock"
        host = RemoteHost(settings(), path, model=tiny_model)
        async with anyio.create_task_group() as tasks:
            tasks.start_soon(host.serve)
            with anyio.fail_after(30):
                await host.connect_now()  # nothing listens yet: it says so at once
            assert host.engine is None
            async with model_process(settings(), tiny_model, path):
                with anyio.fail_after(30):
                    await host.connect_now()
                assert host.engine is not None
                assert (await host.engine.enqueue(pairs_about(HEADLINE)).logits()).shape == (2, 3)
                host.stop()


@pytest.mark.parametrize("stop", [signal.SIGTERM, signal.SIGKILL], ids=["sigterm", "sigkill"])
def test_a_model_process_that_stops_mid_burst_leaves_no_job_hanging_or_wrong(tmp_path, stop):
    path = tmp_path / "model.sock"
    from bench.servers import free_port

    port = free_port()
    env = {**os.environ, "MODEL_NAME": "synthetic:tiny", "WARMUP_MAX_LEN": "16", "DEVICE": "cpu",
           "METRICS_PORT": str(port)}
    process = subprocess.Popen([sys.executable, "-m", "worker", "model-process", "--socket", str(path)], env=env)
    try:

        async def front() -> list:
            from worker.split.remote_engine import RemoteEngine

            async with RemoteEngine.connect(settings(), path, connect_timeout_s=60) as engine:
                ok = await execute_job(engine, DEFAULT_SCHEMA, {"operation": "classify", "headline": HEADLINE})
                assert ok.error is None, ok.error
                scraped = await anyio.to_thread.run_sync(_scrape, f"http://127.0.0.1:{port}/metrics")
                assert "nli_model_ready 1.0" in scraped  # the model process's own metrics, for Prometheus
                assert "nli_batch_pairs_count 1.0" in scraped  # warm-up is not counted: the job's one batch
                flood = [engine.enqueue(pairs_about(f"{HEADLINE} {i}")) for i in range(200)]
                await flood[0].logits()
                process.send_signal(stop)  # mid-burst: no job may hang or end otherwise
                ends = []
                with anyio.fail_after(30):
                    for job in flood:
                        try:
                            ends.append((await job.logits()).shape)
                        except Unavailable as err:
                            ends.append(str(err))
                return ends

        ends = anyio.run(front)
        assert process.wait(30) == (0 if stop == signal.SIGTERM else -signal.SIGKILL)
        assert all(end == (2, 3) or end.startswith("unavailable: ") for end in ends), set(map(str, ends))
        assert stop == signal.SIGKILL or not path.exists()
    finally:
        process.kill()
        process.wait()


def _scrape(url: str) -> str:
    from urllib.request import urlopen

    with urlopen(url, timeout=10) as response:
        return response.read().decode()


def test_a_model_process_that_cannot_load_tells_its_fronts_why(tmp_path, tiny_model):
    from worker.split.model_process import run
    from worker.split.remote_host import RemoteHost

    path = tmp_path / "model.sock"
    front = RemoteHost(settings(), path, model=tiny_model)
    assert front.failure is None  # nothing said yet: still loading, as far as a front can tell
    assert run(Settings(model_name=str(tmp_path / "no-such-model")), str(path)) == 1
    assert str(front.failure).startswith("unavailable: the model process failed to start: model failed to load")
    assert not path.exists()  # it never listened
