"""The serverless front end: bursts, bad inputs, cancellation, lazy start and the SDK's local modes."""

from __future__ import annotations

import asyncio
import gc
import json
import logging
import os
import subprocess
import sys
import threading
from pathlib import Path

import anyio
import pytest
import structlog
from structlog.testing import capture_logs

from schemas import OPERATIONS
from worker.model import NliModel
from worker.serverless import ServerlessWorker
from worker.settings import Settings

ROOT = Path(__file__).resolve().parents[1]
SETTINGS = Settings(model_name="synthetic:tiny", warmup_max_len=16)
HEADLINES = [
    line.strip()
    for line in (ROOT / "tests" / "data" / "example_headlines.txt").read_text(encoding="utf-8").splitlines()
    if line.strip()
]

BAD_INPUTS: list[tuple[object, str]] = [
    ({"operation": "classify"}, "invalid_input: headline: missing required field"),
    ({"operation": "classify", "headline": 5}, "invalid_input: headline: expected str, got int"),
    ({"operation": "classify", "headline": ""}, "invalid_input: headline: must not be blank"),
    ({"operation": "company_relevance", "headline": "x", "company": "  "},
     "invalid_input: company: must not be blank"),
    ({"operation": "classify_batch", "headlines": ["x"] * 129},
     "invalid_input: headlines: expected at most 128 items"),
    ({"operation": "zero_shot", "text": "x", "labels": []}, "invalid_input: labels: expected at least 1 item"),
    ({"operation": "nli", "pairs": [["premise only"]]}, "invalid_input: pairs[0]: expected exactly 2 items"),
    ({"operation": "routine_operations", "headline": "x", "ticker_symbols": ["bac"]},
     "invalid_input: ticker_symbols[0]: must contain only"),
    ({"operation": "explode", "headline": "x"}, "invalid_input: operation: unknown operation 'explode'"),
    ({"headline": "x"}, "invalid_input: operation: missing required field"),
    ({"operation": "classify", "headline": "x", "colour": "red"}, "invalid_input: colour: unknown field"),
    (["classify", "x"], "invalid_input: input: expected an object, got array"),
    ("classify x", "invalid_input: input: expected an object, got str"),
    (None, "invalid_input: input: missing"),
]


def classify_job(job_id: str, headline: str) -> dict:
    return {"id": job_id, "input": {"operation": "classify", "headline": headline}}


def valid_job(examples: dict[str, dict], i: int) -> tuple[str, dict]:
    """A valid job of each operation in turn, on real headlines."""
    operation = OPERATIONS[i % len(OPERATIONS)]
    job = dict(examples[operation])
    headline = HEADLINES[i % len(HEADLINES)]
    for key in ("headline", "text"):
        if key in job:
            job[key] = headline
    if "headlines" in job:
        job["headlines"] = [headline, HEADLINES[(i + 1) % len(HEADLINES)]]
    return operation, job


async def test_burst_of_mixed_and_bad_jobs(tiny_model: NliModel, example_jobs, check_job_output) -> None:
    valid = [valid_job(example_jobs, i) for i in range(300)]
    jobs = [{"id": f"ok-{i}", "input": {"operation": op, **job}} for i, (op, job) in enumerate(valid)]
    bad_jobs = [{"id": f"bad-{i}", "input": bad} for i, (bad, _) in enumerate(BAD_INPUTS)]
    bad_jobs.append({"id": "no-input"})  # a RunPod job without its "input"
    burst = [job for pair in zip(jobs, bad_jobs) for job in pair] + jobs[len(bad_jobs):]
    async with ServerlessWorker(SETTINGS, model=tiny_model) as worker:
        with anyio.fail_after(100):
            outputs = await asyncio.gather(*(worker.handler(job) for job in burst))
        assert worker.engine is not None
        stats = worker.engine.batcher.stats
    by_id = {job["id"]: out for job, out in zip(burst, outputs)}
    for i, (operation, job) in enumerate(valid):
        check_job_output(operation, job, by_id[f"ok-{i}"])
    for i, (_, expected) in enumerate(BAD_INPUTS):
        assert by_id[f"bad-{i}"]["error"].startswith(expected), by_id[f"bad-{i}"]
        assert set(by_id[f"bad-{i}"]) == {"error"}
    assert by_id["no-input"] == {"error": "invalid_input: input: missing"}
    assert stats.jobs_submitted == len(jobs)  # bad jobs never reached the queue
    assert stats.batches < len(jobs)  # pairs of different jobs shared batches
    assert stats.items_dropped == 0


async def test_concurrent_first_jobs_share_one_engine(tiny_model: NliModel) -> None:
    async with ServerlessWorker(SETTINGS, model=tiny_model) as worker:
        assert worker.engine is None  # nothing starts before the first job
        engines = await asyncio.gather(*(worker.ready() for _ in range(20)))
        outputs = await asyncio.gather(
            *(worker.handler(classify_job(str(i), "x")) for i in range(20))
        )
    assert all(engine is engines[0] for engine in engines)
    assert all("error" not in out for out in outputs)


async def test_preload_warms_the_model_before_the_first_poll_and_the_engine_does_not_again(monkeypatch) -> None:
    worker = ServerlessWorker(SETTINGS)
    with capture_logs() as logs:
        worker.preload()  # what start() runs before the SDK asks RunPod for a job
    (loaded,) = [entry for entry in logs if entry["event"] == "model_loaded"]
    assert loaded["warmup_s"] > 0
    model = worker.host._model
    assert model is not None
    batches: list[object] = []
    run = model.run
    monkeypatch.setattr(model, "run", lambda batch: batches.append(batch) or run(batch))
    async with worker:
        await worker.ready()
        assert worker.host.startup is not None
        assert batches == [] and round(worker.host.startup.warmup_s, 3) == loaded["warmup_s"]
        assert "error" not in await worker.handler(classify_job("1", "x"))


def test_preload_takes_the_start_up_heap_out_of_the_collectors_reach_before_the_first_poll() -> None:
    """Otherwise the first job starts the engine and waits, on the SDK's loop, for a full
    collection of everything torch and transformers built."""
    gc.unfreeze()  # as in a new worker process: nothing frozen yet
    ServerlessWorker(SETTINGS).preload()
    assert gc.get_freeze_count() > 0


async def test_while_its_model_process_is_gone_a_worker_takes_no_jobs_and_holds_the_ones_it_has(
    tiny_model: NliModel,
) -> None:
    from layouts import model_process

    from worker.split.children import ModelChild

    child = ModelChild()  # not started: this test serves its socket in this event loop
    settings = Settings(model_name="synthetic:tiny", warmup_max_len=16, max_concurrency=64)
    try:
        worker = ServerlessWorker(settings, model=tiny_model, model_process=child)
        async with model_process(settings, tiny_model, child.path) as first:
            assert worker.concurrency(1) == 64
            engine = await worker.ready()
            assert "error" not in await worker.handler(classify_job("before", HEADLINES[0]))
            first.host.stop()
            with anyio.fail_after(30):
                await engine.wait_disconnected()  # type: ignore[attr-defined]
        assert worker.concurrency(64) == 1  # the SDK fetches nothing more until it is back
        async with anyio.create_task_group() as tasks:
            held: dict[str, dict] = {}
            answered = anyio.Event()

            async def taken_meanwhile() -> None:
                held["output"] = await worker.handler(classify_job("meanwhile", HEADLINES[1]))
                answered.set()

            tasks.start_soon(taken_meanwhile)
            await anyio.wait_all_tasks_blocked()
            assert not held  # it waits for the model process, it does not fail
            async with model_process(settings, tiny_model, child.path):
                with anyio.fail_after(30):
                    await answered.wait()
                assert worker.concurrency(1) == 64
        assert held["output"]["headline"] == HEADLINES[1]
        await worker.aclose()
    finally:
        child.stop()  # never started: removes its run directory
    assert not child.run_dir.exists()


@pytest.mark.parametrize("preload", [False, True])
async def test_failed_model_load_answers_every_job_unavailable(preload: bool) -> None:
    async with ServerlessWorker(Settings(model_name="synthetic:no-such-model")) as worker:
        with capture_logs() as logs:
            if preload:
                worker.preload()
            outputs = await asyncio.gather(
                *(worker.handler(classify_job(str(i), "x")) for i in range(5))
            )
            later = await worker.handler(classify_job("later", "x"))
    for out in [*outputs, later]:
        assert set(out) == {"error"}
        assert out["error"].startswith("unavailable: model failed to load: ValueError: unknown synthetic model")
    failures = [entry for entry in logs if entry["event"] == "model_load_failed"]
    assert len(failures) == 1 and failures[0]["log_level"] == "error"


async def test_cancelled_job_propagates_and_harms_no_other(tiny_model: NliModel, monkeypatch) -> None:
    async with ServerlessWorker(SETTINGS, model=tiny_model) as worker:
        engine = await worker.ready()
        # Hold the model thread inside the first batch, so the victim's pairs wait in the queue.
        entered, release = threading.Event(), threading.Event()
        run = tiny_model.run

        def held_run(batch):
            entered.set()
            release.wait(30)
            return run(batch)

        monkeypatch.setattr(tiny_model, "run", held_run)
        try:
            first = asyncio.create_task(worker.handler(classify_job("first", "a")))
            await anyio.to_thread.run_sync(entered.wait, 30)
            victim = asyncio.create_task(worker.handler(classify_job("victim", "b c")))
            others = [asyncio.create_task(worker.handler(classify_job(f"o{i}", f"h {i}"))) for i in range(10)]
            await anyio.wait_all_tasks_blocked()
            assert engine.batcher.stats.jobs_submitted == 12
            victim.cancel()
            with pytest.raises(asyncio.CancelledError):
                await victim
        finally:
            release.set()
        results = await asyncio.gather(first, *others)
        stats = engine.batcher.stats
    assert all("error" not in out for out in results)
    assert stats.items_dropped == 5  # the victim's five pairs, dropped before compute


async def test_module_handler_uses_the_installed_worker(tiny_model: NliModel, monkeypatch) -> None:
    import worker.serverless as serverless

    installed = ServerlessWorker(SETTINGS, model=tiny_model)
    monkeypatch.setattr(serverless, "_default", installed)
    async with installed:
        job = {"operation": "company_relevance", "headline": "Apple", "company": "Apple"}
        out = await serverless.handler({"id": "m", "input": job})
    assert out["company"] == "Apple"


def test_configure_logging_is_idempotent_and_quiets_the_sdk(capsys) -> None:
    from runpod.serverless.modules.rp_logger import RunPodLogger

    from worker.logs import configure_logging

    root = logging.getLogger()
    before_handlers, before_level, sdk_level = list(root.handlers), root.level, RunPodLogger().level
    try:
        configure_logging("INFO")
        configure_logging("info")
        ours = [h for h in root.handlers if h not in before_handlers]
        assert len(ours) == 1
        if not (os.environ.get("RUNPOD_LOG_LEVEL") or os.environ.get("RUNPOD_DEBUG_LEVEL")):
            assert RunPodLogger().level == "WARN"
        with structlog.contextvars.bound_contextvars(job_id="j-7"):
            structlog.get_logger("test").info("hello", answer=42)
        logging.getLogger("some.library").warning("from %s", "stdlib")
        lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
        assert {"event": "hello", "answer": 42, "job_id": "j-7", "level": "info"}.items() <= lines[0].items()
        assert lines[0]["timestamp"].endswith("Z") and "T" in lines[0]["timestamp"]
        assert lines[1]["event"] == "from stdlib" and lines[1]["level"] == "warning"
    finally:
        for handler in [h for h in root.handlers if h not in before_handlers]:
            root.removeHandler(handler)
        root.setLevel(before_level)
        RunPodLogger().level = sdk_level
        structlog.reset_defaults()


# --- the SDK's local modes, in a subprocess --------------------------------------------------------


def run_worker_cli(args: list[str], cwd: Path, model: str = "synthetic:tiny") -> subprocess.CompletedProcess[str]:
    env = {
        **os.environ,
        "MODEL_NAME": model,
        "WARMUP_MAX_LEN": "16",
        "PYTHONPATH": str(ROOT),
    }
    for name in ("RUNPOD_WEBHOOK_GET_JOB", "RUNPOD_LOG_LEVEL", "RUNPOD_DEBUG_LEVEL", "RUNPOD_ENDPOINT_ID"):
        env.pop(name, None)
    return subprocess.run(
        [sys.executable, "-m", "worker", "serverless", *args],
        cwd=cwd, env=env, capture_output=True, text=True, timeout=100,
    )


def test_sdk_test_input_flag(tmp_path: Path) -> None:
    job = {"input": {"operation": "classify", "headline": "Apple Declares $0.25 Dividend"}}
    done = run_worker_cli(["--test_input", json.dumps(job)], tmp_path)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "Job result:" in done.stdout and "'temporal_category'" in done.stdout
    events = [json.loads(line)["event"] for line in done.stdout.splitlines() if line.startswith("{")]
    assert "engine_started" in events  # our JSON log lines, on stdout


def test_a_model_process_that_cannot_load_answers_every_job_unavailable_saying_why(tmp_path: Path) -> None:
    job = {"input": {"operation": "classify", "headline": "Apple Declares $0.25 Dividend"}}
    done = run_worker_cli(["--model-process", "--test_input", json.dumps(job)], tmp_path, "synthetic:no-such-model")
    assert done.returncode == 1
    assert "unavailable: the model process failed to start: model failed to load: ValueError: unknown synthetic" in done.stdout
    events = [json.loads(line)["event"] for line in done.stdout.splitlines() if line.startswith("{")]
    assert events.count("worker_process_started") == 1  # a model that cannot load is not started again


def test_sdk_test_input_json_file(tmp_path: Path) -> None:
    headline = "Riskified Board Authorizes Repurchase Of Up To $75M"
    job = {"input": {"operation": "detect_quantitative_catalyst", "headline": headline}}
    (tmp_path / "test_input.json").write_text(json.dumps(job), encoding="utf-8")
    done = run_worker_cli([], tmp_path)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "'catalyst_values': ['$75M']" in done.stdout


def test_sdk_test_input_with_bad_input_fails(tmp_path: Path) -> None:
    done = run_worker_cli(["--test_input", json.dumps({"input": {"operation": "classify"}})], tmp_path)
    assert done.returncode == 1
    assert "invalid_input: headline: missing required field" in done.stdout
