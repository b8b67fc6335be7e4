"""Prometheus metrics, shared by the serverless and pod front ends.

The names are a contract with dashboards (docs/METRICS.md): change them only with a note. A
registry is passed in, so tests and several workers in one process never collide on the global
one. Sizes use power-of-two buckets (batches are cut to powers of two and padded to multiples of
8); times run from a tenth of a millisecond to tens of seconds.

Job ``status`` is ``completed``, ``cancelled`` or the error code the job ended with
(``invalid_input``, ``overloaded``, ``timed_out``, ``unavailable``, ``inference_failed``,
``internal``); ``nli_rejected_total{reason}`` counts jobs refused before any work.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from prometheus_client import (
    GC_COLLECTOR,
    PLATFORM_COLLECTOR,
    PROCESS_COLLECTOR,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    Info,
)
from prometheus_client.core import CounterMetricFamily, HistogramMetricFamily
from prometheus_client.registry import Collector
from prometheus_client.utils import floatToGoString

from batching import BatchStats

TIME_BUCKETS = (
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05,
    0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
)  # fmt: skip
PAIR_BUCKETS = tuple(float(2**k) for k in range(13))  # 1 .. 4096 pairs
TOKEN_BUCKETS = tuple(float(2**k) for k in range(3, 19))  # 8 .. 262144 padded tokens
EFFICIENCY_BUCKETS = (0.25, 0.5, 0.6, 0.7, 0.75, 0.8, 0.85, 0.9, 0.95, 0.98, 1.0)


class Metrics:
    """The ``nli_`` series in one registry, and the calls that feed them."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.registry = registry
        for collector in _PROCESS_COLLECTORS:  # process_*, python_gc_*, python_info: CPU, memory, pauses
            registry.register(collector)
        self.build = Info("nli_build", "The worker's version, model, device and dtype.", registry=registry)
        self._shrinks = _BudgetShrinks()
        registry.register(self._shrinks)
        self._job_children: dict[tuple[str, str], tuple[Any, Any]] = {}
        self.jobs = Counter(
            "nli_jobs", "Jobs ended, by operation and how they ended.", ["operation", "status"], registry=registry
        )
        self.job_latency = Histogram(
            "nli_job_latency_seconds",
            "From a job's arrival to its result (or error), by operation.",
            ["operation"],
            buckets=TIME_BUCKETS,
            registry=registry,
        )
        self.queue_wait = _ManyAtOnce(
            "nli_queue_wait_seconds", "A pair's wait from submission to the start of its batch's compute.", TIME_BUCKETS
        )
        registry.register(self.queue_wait)
        self.batch_pairs = Histogram("nli_batch_pairs", "Pairs in a batch.", buckets=PAIR_BUCKETS, registry=registry)
        self.pairs_merged = Counter(
            "nli_pairs_merged", "Pairs that shared the row of an identical pair in their batch.", registry=registry
        )
        self.batch_tokens = Histogram(
            "nli_batch_tokens", "Padded tokens in a batch (rows that ran x padded length).", buckets=TOKEN_BUCKETS,
            registry=registry,
        )  # fmt: skip
        self.padding_efficiency = Histogram(
            "nli_padding_efficiency_ratio", "Real tokens / padded tokens of a batch.", buckets=EFFICIENCY_BUCKETS,
            registry=registry,
        )  # fmt: skip
        self.batch_seconds = Histogram(
            "nli_batch_seconds", "A batch's model time (forward pass and copies).", buckets=TIME_BUCKETS,
            registry=registry,
        )  # fmt: skip
        self.gpu_idle = Histogram(
            "nli_gpu_idle_seconds",
            "Idle gap of the model thread before a batch while its pairs were already queued.",
            buckets=TIME_BUCKETS,
            registry=registry,
        )
        self.queue_pairs = Gauge("nli_queue_pairs", "Pairs queued, not yet in a batch.", registry=registry)
        self.queue_tokens = Gauge("nli_queue_tokens", "Tokens of the queued pairs.", registry=registry)
        self.inflight_jobs = Gauge("nli_inflight_jobs", "Jobs submitted and not yet ended.", registry=registry)
        self.queue_limit_pairs = Gauge(
            "nli_queue_limit_pairs", "MAX_QUEUE_PAIRS: pairs the queue holds before jobs wait or are refused.",
            registry=registry,
        )  # fmt: skip
        self.queue_limit_tokens = Gauge(
            "nli_queue_limit_tokens", "MAX_QUEUE_TOKENS: tokens the queue holds before jobs wait or are refused.",
            registry=registry,
        )  # fmt: skip
        self.stored_jobs = Gauge("nli_stored_jobs", "Pod: jobs whose status is kept, ended or not.", registry=registry)
        self.stored_bytes = Gauge(
            "nli_stored_bytes", "Pod: what the kept outputs and errors of ended jobs weigh, as JSON.", registry=registry
        )
        self.rejected = Counter(
            "nli_rejected", "Jobs refused before any work, by reason.", ["reason"], registry=registry
        )
        self.webhooks = Counter(
            "nli_webhooks", "Pod: ended jobs POSTed to their webhook, by result (delivered, failed).", ["result"],
            registry=registry,
        )  # fmt: skip
        self.model_load = Gauge("nli_model_load_seconds", "Time to load the model's weights.", registry=registry)
        self.model_warmup = Gauge(
            "nli_model_warmup_seconds", "Time to warm every length bucket at start-up.", registry=registry
        )
        self.model_ready = Gauge("nli_model_ready", "1 while the model serves jobs, else 0.", registry=registry)

    def observe_batch(self, batch: BatchStats) -> None:
        """The engine's ``on_batch`` hook."""
        self.batch_pairs.observe(batch.items)
        self.pairs_merged.inc(batch.merged_items)
        self.batch_tokens.observe(batch.padded_tokens)
        self.padding_efficiency.observe(batch.padding_efficiency)
        self.batch_seconds.observe(batch.compute_s)
        self.gpu_idle.observe(batch.idle_gap_s)
        self.queue_wait.observe_many(batch.queue_wait_s)

    def observe_build(self, *, model: str, device: str, dtype: str) -> None:
        """``nli_build_info``: which code runs which model where (set once the model has loaded)."""
        self.build.info({"version": _version(), "model": model, "device": device, "dtype": dtype})

    def watch_budget_shrinks(self, shrinks: Callable[[], int]) -> None:
        """``nli_budget_shrinks_total``: out-of-memory halvings of the batch budget, read at scrape time."""
        self._shrinks.read = shrinks

    def observe_job(self, operation: str, status: str, latency_s: float) -> None:
        # The labelled children are looked up once per (operation, status): ``labels()`` checks
        # and sorts its arguments on every call, most of what observing a job costs otherwise.
        children = self._job_children.get((operation, status))
        if children is None:
            children = self._job_children[operation, status] = (
                self.jobs.labels(operation=operation, status=status),
                self.job_latency.labels(operation=operation),
            )
        children[0].inc()
        children[1].observe(latency_s)

    def observe_rejection(self, reason: str) -> None:
        self.rejected.labels(reason=reason).inc()

    def observe_startup(self, model_load_s: float, warmup_s: float) -> None:
        self.model_load.set(model_load_s)
        self.model_warmup.set(warmup_s)
        self.model_ready.set(1)

    def watch_job_store(self, jobs: Callable[[], float], finished_bytes: Callable[[], float]) -> None:
        """Read what the pod's job store holds at scrape time."""
        self.stored_jobs.set_function(jobs)
        self.stored_bytes.set_function(finished_bytes)

    def watch_queue(
        self,
        queued_pairs: Callable[[], float],
        queued_tokens: Callable[[], float],
        inflight: Callable[[], float],
        *,
        limit_pairs: int,
        limit_tokens: int,
    ) -> None:
        """Read the gauges from the running engine at scrape time (no bookkeeping per job); the
        limits beside them, so an alert can say "near full" whatever they are set to."""
        self.queue_limit_pairs.set(limit_pairs)
        self.queue_limit_tokens.set(limit_tokens)
        self.queue_pairs.set_function(queued_pairs)
        self.queue_tokens.set_function(queued_tokens)
        self.inflight_jobs.set_function(inflight)


_PROCESS_COLLECTORS = (PROCESS_COLLECTOR, PLATFORM_COLLECTOR, GC_COLLECTOR)
"""prometheus-client's own collectors, read-only views of this process: safe in several registries."""


class _ManyAtOnce(Collector):
    """A histogram observed a batch of values at a time: one per pair of a batch, where
    ``Histogram.observe`` a value at a time would cost more than the rest of a job's metrics."""

    def __init__(self, name: str, documentation: str, buckets: tuple[float, ...]) -> None:
        self.name, self.documentation = name, documentation
        self._bounds = np.array(buckets)
        self._counts = np.zeros(len(buckets) + 1, dtype=np.int64)  # the last: above every bound
        self._sum = 0.0
        self._lock = threading.Lock()  # a scrape may read from another thread (METRICS_PORT, the pusher)

    def observe_many(self, values: Sequence[float]) -> None:
        observed = np.asarray(values, dtype=np.float64)
        slots = np.searchsorted(self._bounds, observed, side="left")  # the first bound ``le`` each value
        counts = np.bincount(slots, minlength=len(self._counts))
        with self._lock:
            self._counts += counts
            self._sum += float(observed.sum())

    def collect(self) -> Any:
        with self._lock:
            cumulative, total = np.cumsum(self._counts), self._sum
        buckets = [(floatToGoString(bound), int(count)) for bound, count in zip(self._bounds, cumulative)]
        buckets.append(("+Inf", int(cumulative[-1])))
        yield HistogramMetricFamily(self.name, self.documentation, buckets=buckets, sum_value=total)


class _BudgetShrinks(Collector):
    """A counter the batcher keeps (``EngineStats.budget_shrinks``), exposed as it stands."""

    def __init__(self) -> None:
        self.read: Callable[[], int] = lambda: 0

    def collect(self) -> Any:
        yield CounterMetricFamily(
            "nli_budget_shrinks", "Times out-of-memory halved the batch token budget.", value=self.read()
        )


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("burst-nli")
    except PackageNotFoundError:
        return "unknown"
