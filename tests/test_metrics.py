"""The ``nli_`` Prometheus series as the service and engine feed them (names are a dashboard contract)."""

from __future__ import annotations

import functools

import anyio
import pytest
from prometheus_client import CollectorRegistry, generate_latest

from batching import Overloaded
from schemas import DEFAULT_SCHEMA
from worker.engine import NliEngine
from worker.engine_host import hosted_engine
from worker.metrics import Metrics
from worker.model import NliModel
from worker.service import admit_job, execute_job, finish_job
from worker.settings import Settings

CONTRACT = (
    "nli_jobs_total", "nli_job_latency_seconds", "nli_queue_wait_seconds", "nli_batch_pairs", "nli_batch_tokens",
    "nli_padding_efficiency_ratio", "nli_batch_seconds", "nli_gpu_idle_seconds", "nli_queue_pairs", "nli_inflight_jobs",
    "nli_rejected_total", "nli_model_load_seconds", "nli_pairs_merged_total",
)  # fmt: skip


def value(metrics: Metrics, name: str, **labels: str) -> float:
    found = metrics.registry.get_sample_value(name, labels)
    return 0.0 if found is None else found


async def test_jobs_batches_rejections_and_gauges_are_counted(tiny_model: NliModel) -> None:
    metrics = Metrics(CollectorRegistry())
    settings = Settings(device="cpu", max_queue_pairs=20)
    async with hosted_engine(settings, model=tiny_model, metrics=metrics) as (engine, _):
        assert value(metrics, "nli_model_ready") == 1
        jobs = [{"operation": "classify", "headline": f"Apple Declares ${i}.25 Dividend"} for i in range(3)]
        async with anyio.create_task_group() as tg:
            for job in jobs:
                tg.start_soon(functools.partial(execute_job, engine, DEFAULT_SCHEMA, job, metrics=metrics))
        bad = await execute_job(engine, DEFAULT_SCHEMA, {"operation": "classify"}, metrics=metrics)
        assert bad.status == "invalid_input" and bad.operation == "classify"
        queued = admit_job(engine, DEFAULT_SCHEMA, {"operation": "nli", "pairs": [["a", "b"]] * 15}, metrics=metrics)
        assert value(metrics, "nli_queue_pairs") == 15 and value(metrics, "nli_inflight_jobs") == 1
        with pytest.raises(Overloaded):
            admit_job(engine, DEFAULT_SCHEMA, {"operation": "nli", "pairs": [["a", "b"]] * 6}, metrics=metrics)
        assert (await finish_job(queued)).status == "completed"
    text = generate_latest(metrics.registry).decode()
    for name in CONTRACT:
        assert f"\n{name}" in text or text.startswith(name) or f"# TYPE {name}" in text, name
    assert value(metrics, "nli_jobs_total", operation="classify", status="completed") == 3
    assert value(metrics, "nli_jobs_total", operation="classify", status="invalid_input") == 1
    assert value(metrics, "nli_jobs_total", operation="nli", status="overloaded") == 1
    assert value(metrics, "nli_rejected_total", reason="overloaded") == 1
    assert value(metrics, "nli_rejected_total", reason="invalid_input") == 1
    assert value(metrics, "nli_job_latency_seconds_count", operation="classify") == 4
    pairs = value(metrics, "nli_batch_pairs_sum")
    assert pairs == 3 * 5 + 15  # classify without a company: 5 pairs a headline
    assert value(metrics, "nli_queue_wait_seconds_count") == pairs
    assert value(metrics, "nli_batch_pairs_count") == value(metrics, "nli_batch_seconds_count") >= 1
    assert 0 < value(metrics, "nli_padding_efficiency_ratio_sum") <= value(metrics, "nli_padding_efficiency_ratio_count")
    assert value(metrics, "nli_pairs_merged_total") == 14  # the nli job's 15 identical pairs ran as one row
    assert value(metrics, "nli_model_ready") == 0  # the engine stopped


async def test_a_cancelled_job_is_counted_as_cancelled(tiny_model: NliModel) -> None:
    metrics = Metrics(CollectorRegistry())
    async with NliEngine.start(Settings(device="cpu"), model=tiny_model, metrics=metrics) as engine:
        job = admit_job(engine, DEFAULT_SCHEMA, {"operation": "classify", "headline": "Fed Raises Rates"},
                        metrics=metrics)  # fmt: skip
        with anyio.CancelScope() as scope:
            scope.cancel()
            await finish_job(job)
    assert value(metrics, "nli_jobs_total", operation="classify", status="cancelled") == 1


async def test_build_process_and_budget_series_are_in_the_workers_registry(tiny_model: NliModel) -> None:
    """What an operator reads beside the nli_ series: which build runs which model, the process's
    CPU and memory (in our own registry, not prometheus-client's global one), and OOM shrinks."""
    metrics = Metrics(CollectorRegistry())
    async with hosted_engine(Settings(device="cpu", warmup_max_len=16), model=tiny_model, metrics=metrics) as (engine, _):
        engine.batcher._shrink_budget()  # what an out-of-memory batch does
        build = metrics.registry.get_sample_value(
            "nli_build_info", {"version": "0.1.0", "model": tiny_model.name, "device": "cpu",
                               "dtype": "float32"})  # fmt: skip
        shrinks = value(metrics, "nli_budget_shrinks_total")
    assert build == 1
    assert shrinks == 1
    assert value(metrics, "process_resident_memory_bytes") > 0
    assert value(metrics, "process_cpu_seconds_total") > 0
    assert Metrics(CollectorRegistry()).registry is not None  # a second worker's registry takes the same collectors


def test_a_pod_of_several_processes_counts_each_series_once_labelled_by_its_process() -> None:
    from prometheus_client import generate_latest
    from prometheus_client.openmetrics.exposition import generate_latest as openmetrics
    from prometheus_client.parser import text_string_to_metric_families

    from worker.split.process_metrics import MODEL, Families, merge, not_ready, parse

    fronts = [Metrics(CollectorRegistry()) for _ in range(2)]
    model = Metrics(CollectorRegistry())
    for front, jobs in zip(fronts, (3, 5)):
        for _ in range(jobs):
            front.observe_job("classify", "completed", 0.01)
    model.batch_pairs.observe(8)
    model.model_ready.set(1)
    parts = [("front-0", fronts[0].registry.collect()), ("front-1", parse(openmetrics(fronts[1].registry))),
             (MODEL, parse(openmetrics(model.registry)))]  # fmt: skip
    samples: dict[str, dict[str, float]] = {}
    for family in text_string_to_metric_families(generate_latest(Families(merge(parts))).decode()):
        for sample in family.samples:
            samples.setdefault(sample.name, {})[sample.labels["process"]] = sample.value
    assert samples["nli_jobs_total"] == {"front-0": 3, "front-1": 5}  # the fronts keep the job series
    assert samples["nli_batch_pairs_count"] == {"model": 1}  # the model process keeps the batch series
    assert samples["nli_model_ready"] == {"model": 1}  # not the fronts' idle copies, which read 0
    assert set(samples["process_cpu_seconds_total"]) == {"front-0", "front-1", "model"}  # each its own
    assert samples["nli_queue_pairs"] == {"model": 0}
    down = merge([("front-0", fronts[0].registry.collect()), (MODEL, not_ready())])
    ready = [s for family in down if family.name == "nli_model_ready" for s in family.samples]
    assert [(s.labels, s.value) for s in ready] == [({"process": "model"}, 0)]  # an alert on it fires


def test_a_job_id_names_the_front_that_holds_it() -> None:
    from worker.pod.peers import Peers

    peers = Peers(front=0, fronts=3, run_dir="/nonexistent")
    mine, theirs = peers.new_job_id(), Peers(front=2, fronts=3, run_dir="/nonexistent").new_job_id()
    assert mine.startswith("0-") and theirs.startswith("2-")
    assert peers.owner(mine) is None and peers.owner(theirs) == 2  # relay only what another front holds
    strangers = ("3-x", "99999-x", "x-1", "1", "", "-1-x", "a1b2c3d4-0000-4000-8000-000000000000", "²-x", "１-x", "٢-x")
    for stranger in strangers:  # unicode digits too: "²" is a digit to str.isdigit, not to int()
        assert peers.owner(stranger) is None, stranger  # not a front of this pod: answered here (404)


def test_the_queue_wait_histogram_reads_as_prometheus_clients_own_would() -> None:
    # Observed a batch at a time (one value a pair), it must expose what observing each would.
    from prometheus_client import Histogram, generate_latest

    from worker.metrics import TIME_BUCKETS

    waits = [0.0, 0.0001, 0.00011, 0.003, 0.5, 29.9, 30.0, 100.0]
    ours = Metrics(CollectorRegistry())
    ours.queue_wait.observe_many(waits[:3])
    ours.queue_wait.observe_many(waits[3:])
    theirs = CollectorRegistry()
    histogram = Histogram("nli_queue_wait_seconds", "", buckets=TIME_BUCKETS, registry=theirs)
    for wait in waits:
        histogram.observe(wait)

    def samples(registry: CollectorRegistry) -> list[str]:
        text = generate_latest(registry).decode()
        return [line for line in text.splitlines() if line.startswith("nli_queue_wait_seconds") and "_created" not in line]

    assert samples(ours.registry) == samples(theirs)
    assert value(ours, "nli_queue_wait_seconds_count") == len(waits)
