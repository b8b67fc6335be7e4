"""Serverless metrics that arrive: a worker pushes its registry to a Prometheus Pushgateway.

RunPod exposes no port of a serverless worker, so nothing can scrape one. With
``METRICS_PUSH_URL`` set, the worker pushes every ``nli_`` series (and its process's) to that
Pushgateway every ``METRICS_PUSH_INTERVAL_S``, grouped by ``job="burst-nli"``, ``endpoint``
(``RUNPOD_ENDPOINT_ID``) and ``worker`` (``RUNPOD_POD_ID``), and Prometheus scrapes the gateway.
When the worker stops it deletes its group, so a fleet that scaled down does not leave stale
workers behind; a worker that died without doing so shows as a stale ``push_time_seconds``
(the ``BurstNliWorkerStoppedPushing`` alert).

Why the Pushgateway and not OTLP: prometheus-client pushes natively (no new dependency, no
collector to run), and the pushed series are exactly those the pod exposes to a scrape, so one
dashboard and one set of alerts read both modes.
"""

from __future__ import annotations

import socket
import threading

import structlog
from prometheus_client import CollectorRegistry, delete_from_gateway, push_to_gateway

log = structlog.get_logger("worker.metrics_push")

JOB = "burst-nli"


class MetricsPusher:
    """Pushes ``registry`` in a background thread until ``stop``, which deletes the group."""

    def __init__(
        self, url: str, registry: CollectorRegistry, *, endpoint: str | None, worker: str | None, interval_s: float
    ) -> None:
        self.url, self.registry, self.interval_s = url, registry, interval_s
        self.grouping = {"endpoint": endpoint or "local", "worker": worker or socket.gethostname()}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="metrics-push", daemon=True)
        self._failing = False

    def start(self) -> None:
        log.info("metrics_pushing", url=self.url, interval_s=self.interval_s, **self.grouping)
        self._thread.start()

    def stop(self) -> None:
        """Push once more, stop, and delete this worker's group from the gateway."""
        if self._stop.is_set():
            return
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=self.interval_s + 10)
        try:
            delete_from_gateway(self.url, job=JOB, grouping_key=self.grouping, timeout=5)
        except OSError as err:
            log.warning("metrics_push_delete_failed", error=str(err), **self.grouping)

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            self.push()

    def push(self) -> None:
        """One push; a failure is logged once until a push succeeds again (the gateway may be down)."""
        try:
            push_to_gateway(self.url, job=JOB, registry=self.registry, grouping_key=self.grouping, timeout=5)
        except OSError as err:
            if not self._failing:
                log.warning("metrics_push_failed", error=str(err), **self.grouping)
            self._failing = True
            return
        if self._failing:
            log.info("metrics_push_recovered", **self.grouping)
        self._failing = False
