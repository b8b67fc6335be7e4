"""One set of metrics for a worker of several processes (a pod of fronts, or a serverless worker
with its model process): every front's series and the model process's, each sample labelled with
the ``process`` it came from (``front-0``, ``front-1``, ..., ``model``).

Each process keeps its own registry (``worker/metrics.py``); a scrape asks the others for theirs
in OpenMetrics' text format and merges them by family. A series is taken from the processes that
keep it: the job series (``FRONT_SERIES``) from the fronts, every other ``nli_`` series (batches,
the queue, the model) from the model process, and each process's own ``process_*`` and
``python_*`` series from all. Sums over ``process`` give what one process's series would.
While the model process does not answer, its part is ``nli_model_ready`` 0 alone.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence

from prometheus_client.metrics_core import GaugeMetricFamily, Metric
from prometheus_client.openmetrics.exposition import CONTENT_TYPE_LATEST as OPENMETRICS
from prometheus_client.openmetrics.parser import text_string_to_metric_families
from prometheus_client.registry import CollectorRegistry
from prometheus_client.samples import Sample

__all__ = ["FRONT_SERIES", "MODEL", "OPENMETRICS", "Families", "Merged", "merge", "not_ready", "parse"]

MODEL = "model"
"""The model process's ``process`` label; a front's is ``front-<number>``."""
FRONT_SERIES = frozenset(
    {"nli_jobs", "nli_job_latency_seconds", "nli_rejected", "nli_webhooks", "nli_stored_jobs", "nli_stored_bytes"}
)
"""The ``nli_`` families the fronts keep: jobs, refusals, webhooks, the job store."""


def parse(text: bytes) -> list[Metric]:
    """Families from OpenMetrics' text format (what another process of the pod answers)."""
    return list(text_string_to_metric_families(text.decode()))


def not_ready() -> list[Metric]:
    """The model process's part while it does not answer (stopped, restarting): ``nli_model_ready``
    0, so an alert on it fires as it would for one process whose model is down."""
    return [GaugeMetricFamily("nli_model_ready", "1 while the model serves jobs, else 0.", value=0)]


def merge(parts: Sequence[tuple[str, Iterable[Metric]]]) -> list[Metric]:
    """The families of every ``(process, families)``, each sample labelled with its process."""
    families: dict[str, Metric] = {}
    for process, metrics in parts:
        from_front = process != MODEL
        for family in metrics:
            if family.name.startswith("nli_") and (family.name in FRONT_SERIES) != from_front:
                continue  # the other kind of process keeps this series; this copy stands idle
            merged = families.get(family.name)
            if merged is None:
                merged = families[family.name] = Metric(family.name, family.documentation, family.type, family.unit)
            merged.samples.extend(
                Sample(s.name, {**s.labels, "process": process}, s.value, s.timestamp, s.exemplar)
                for s in family.samples
            )
    return list(families.values())


class Families(CollectorRegistry):
    """Merged families, as an encoder of ``prometheus_client`` takes a registry."""

    def __init__(self, families: list[Metric]) -> None:
        super().__init__(auto_describe=False)
        self._families = families

    def collect(self) -> Iterable[Metric]:
        return iter(self._families)


class Merged(CollectorRegistry):
    """A front's registry and its model process's series, merged at each collect: what a
    serverless worker with a model process serves on ``METRICS_PORT`` and pushes.
    ``model`` answers the model process's OpenMetrics text, or None while it does not answer."""

    def __init__(self, front: CollectorRegistry, model: Callable[[], bytes | None]) -> None:
        super().__init__(auto_describe=False)
        self._front, self._model = front, model

    def collect(self) -> Iterable[Metric]:
        text = self._model()
        model = parse(text) if text is not None else not_ready()
        return iter(merge([("front-0", self._front.collect()), (MODEL, model)]))
