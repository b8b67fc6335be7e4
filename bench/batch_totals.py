"""What the engine's batches did during a phase, and the CPU its process spent, read from its
Prometheus metrics.

The in-process engine and the pod both publish the ``nli_batch_*`` histograms and
``process_cpu_seconds_total`` (the in-process one to a registry the benchmark hands it, the pod on
``/metrics``), so one reading serves both rows: totals before and after a phase, and the
difference. The process's CPU a job is the cost that bounds how fast one process can feed a GPU
(docs/PROCESSES.md): every thread counts, the tokenizer's and the model thread's included.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from prometheus_client import CollectorRegistry
from prometheus_client.metrics_core import Metric
from prometheus_client.parser import text_string_to_metric_families

_SAMPLES = {
    "nli_batch_pairs_count": "batches",
    "nli_batch_pairs_sum": "pairs",
    "nli_padding_efficiency_ratio_sum": "efficiency_sum",
    "nli_batch_seconds_sum": "compute_s",
    "nli_gpu_idle_seconds_sum": "idle_gap_s",
    "process_cpu_seconds_total": "cpu_s",
}


@dataclass(frozen=True, slots=True)
class BatchTotals:
    """Running sums of the batch histograms; subtract two readings for one phase."""

    batches: float = 0.0
    pairs: float = 0.0
    efficiency_sum: float = 0.0
    compute_s: float = 0.0
    idle_gap_s: float = 0.0
    cpu_s: float = 0.0
    """The serving process's CPU time, all threads (in ticks of the kernel's clock: 10 ms)."""
    all_cpu_s: float = 0.0
    """In a pod of several processes, every process's CPU time (fronts, model process)."""

    def __sub__(self, before: BatchTotals) -> BatchTotals:
        return BatchTotals(*(getattr(self, name) - getattr(before, name) for name in self.__slots__))

    def summary(self, wall_s: float, jobs: int) -> dict[str, float | None]:
        """Mean batch, mean padding efficiency of the batches, the model's busy share and idle gap,
        and the process's CPU µs a job."""
        batches = int(round(self.batches))
        return {
            "batches": batches,
            "mean_batch_pairs": round(self.pairs / batches, 1) if batches else None,
            "padding_efficiency": round(self.efficiency_sum / batches, 3) if batches else None,
            "busy": round(self.compute_s / wall_s, 3) if wall_s and batches else None,
            "idle_gap_ms": round(self.idle_gap_s * 1000, 1) if batches else None,
            "cpu_us_a_job": round(self.cpu_s / jobs * 1e6, 1) if jobs and self.cpu_s else None,
            "all_cpu_us_a_job": round(self.all_cpu_s / jobs * 1e6, 1) if jobs and self.all_cpu_s else None,
        }


def totals_of(families: Iterable[Metric], process: str | None = None) -> BatchTotals:
    """``process``: only the samples of that process of a pod of several (its ``process`` label);
    every process's CPU is summed apart."""
    values = {field: 0.0 for field in _SAMPLES.values()}
    all_cpu_s = 0.0
    for family in families:
        for sample in family.samples:
            field = _SAMPLES.get(sample.name)
            if field is not None and (process is None or sample.labels.get("process") == process):
                values[field] += sample.value
            if process is not None and sample.name == "process_cpu_seconds_total":
                all_cpu_s += sample.value
    return BatchTotals(**values, all_cpu_s=all_cpu_s)


def registry_totals(registry: CollectorRegistry) -> BatchTotals:
    return totals_of(registry.collect())


def text_totals(exposition: str, process: str | None = None) -> BatchTotals:
    """From ``/metrics`` text (Prometheus format)."""
    return totals_of(text_string_to_metric_families(exposition), process)
