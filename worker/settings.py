"""Settings: one frozen Struct read from the environment once, then passed explicitly.

Every field is read from the upper-cased variable of the same name (``max_batch_tokens`` from
``MAX_BATCH_TOKENS``). Batch-policy numbers left unset take the defaults of the device the model
runs on, from measurement (see BENCHMARKS.md): a GPU wants big padded batches, a small CPU wants
a few dozen pairs.
"""

from __future__ import annotations

import os
from collections.abc import Mapping

import msgspec

from batching import BatchPolicy
from schemas import Limits
from worker.hypotheses import Thresholds


class SettingsError(ValueError):
    """A setting has a bad value; raised at start-up, naming the variable."""


class Settings(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    model_name: str = "typeform/distilbert-base-uncased-mnli"
    """Hugging Face id, local directory, or ``synthetic:tiny`` / ``synthetic:distilbert-mnli``."""
    device: str | None = None
    """``cuda``, ``cuda:1``, ``cpu``; unset: CUDA when available."""
    dtype: str | None = None
    """``float16``, ``bfloat16``, ``float32``; unset: float16 on CUDA, float32 on CPU."""
    max_concurrency: int = 512
    """Jobs one serverless worker takes at once (constant: a changing value stalls the SDK)."""
    max_batch_tokens: int | None = None
    """Padded tokens a batch may hold (pairs × padded length). Unset: 16384 GPU, 512 CPU."""
    max_batch_pairs: int | None = None
    """Pairs a batch may hold. Unset: 512 GPU, 16 CPU."""
    window_pairs: int = 2048
    """Oldest queued pairs the policy sorts by length when it cuts a batch."""
    max_wait_ms: float = 2.0
    """While a batch computes, the longest a queued pair waits before the next is prepared."""
    merge_identical_pairs: bool = True
    """Identical pairs in one batch (a headline several jobs ask about at once) run once."""
    premise_cache_size: int = 1024
    """Recent premises whose token ids are kept, so the calls about one headline tokenize it
    once; 0 keeps none (benchmarks of new headlines set it, so that repeats do not hit it)."""
    max_queue_pairs: int = 50_000
    """Admission: pairs queued across jobs. Past it a pod refuses a job (429 ``overloaded``); a
    serverless worker holds a job it has taken until there is room (``worker/admission.py``)."""
    max_queue_tokens: int = 2_000_000
    """Admission: tokens queued across jobs."""
    job_timeout_s: float | None = None
    """Per-job deadline; a job past it fails with ``timed_out`` and its pairs are dropped."""
    warmup_max_len: int = 128
    """Sequence-length buckets up to this are run once at start-up."""
    log_level: str = "INFO"
    api_key: str | None = None
    """Pod mode: when set, every route but ``/ping`` and ``/metrics`` needs ``Authorization: Bearer <key>``."""
    job_ttl_s: float = 600.0
    """Pod mode: how long a finished job's status and output stay readable."""
    max_finished_jobs: int = 100_000
    """Pod mode: finished jobs kept at most; the oldest are forgotten first."""
    max_finished_bytes: int = 268_435_456
    """Pod mode: what finished jobs' outputs and errors may weigh (as JSON) at most; past it the
    oldest are forgotten first."""
    drain_timeout_s: float = 30.0
    """Pod mode: after SIGTERM, how long jobs in flight may take to finish (new ones are refused
    with 503) before the rest end ``unavailable`` and the process exits."""
    max_body_bytes: int = 1_048_576
    """Pod mode: larger request bodies are refused with 413."""
    keep_alive_s: float = 75.0
    """Pod mode: how long an idle HTTP connection stays open. Longer than clients' pools (httpx
    5 s, aiohttp 15 s) and any load balancer in front keep one, so they close it first: a request
    sent as the server closed the connection would be reset unanswered."""
    webhook_attempts: int = 3
    """Pod mode: tries to POST an ended job to its ``webhook`` (RunPod: 3)."""
    webhook_retry_s: float = 10.0
    """Pod mode: the wait between two tries of a webhook (RunPod: 10 s)."""
    webhook_timeout_s: float = 10.0
    """Pod mode: how long one try of a webhook may take."""
    webhook_allow_private: bool = False
    """Pod mode: allow webhooks to loopback, private and other internal addresses (off: a
    caller could otherwise make the pod call services behind its firewall)."""
    header_timeout_s: float = 10.0
    """Pod mode: a request head must arrive whole within this many seconds of its first byte,
    or the connection is closed (slow clients, slowloris); a connection that sends nothing is
    closed after ``keep_alive_s``."""
    port: int | None = None
    """Pod mode: the port to serve on when ``--port`` is not given (8000 without either), as
    RunPod's load-balancing endpoints set it."""
    port_health: int | None = None
    """Pod mode: a second port that answers only ``/ping``, as RunPod's load-balancing endpoints
    probe it; unset or equal to the port, ``/ping`` is on the port itself."""
    runpod_endpoint_id: str | None = None
    """The endpoint's id, which RunPod sets on its workers: a pod serves ``/v2/<id>/...`` only for
    it (unset, any id); a serverless worker labels its pushed metrics with it."""
    metrics_port: int | None = None
    """Serverless mode: serve Prometheus ``/metrics`` on this port (pod mode serves it on its own
    port). RunPod exposes no port of a serverless worker: use ``metrics_push_url`` there."""
    metrics_push_url: str | None = None
    """Serverless mode: push the metrics to this Prometheus Pushgateway (``worker/metrics_push.py``)."""
    metrics_push_interval_s: float = 5.0
    """Serverless mode: how often the metrics are pushed."""
    runpod_pod_id: str | None = None
    """The worker's id, which RunPod sets: the ``worker`` label of pushed metrics (unset: the host name)."""
    limits: Limits = Limits()
    thresholds: Thresholds = Thresholds()
    """Decision thresholds, each read from ``<NAME>_THRESHOLD`` (``OPINION_THRESHOLD``, ...)."""

    def __post_init__(self) -> None:
        for name in (
            "max_concurrency", "window_pairs", "max_queue_pairs", "max_queue_tokens", "warmup_max_len",
            "max_finished_jobs", "max_finished_bytes", "max_body_bytes",
        ):  # fmt: skip
            if getattr(self, name) < 1:
                raise SettingsError(f"{name.upper()}: must be at least 1, got {getattr(self, name)}")
        if self.premise_cache_size < 0:
            raise SettingsError(f"PREMISE_CACHE_SIZE: must not be negative, got {self.premise_cache_size}")
        for name in ("max_batch_tokens", "max_batch_pairs"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise SettingsError(f"{name.upper()}: must be at least 1, got {value}")
        if self.max_wait_ms < 0:
            raise SettingsError(f"MAX_WAIT_MS: must not be negative, got {self.max_wait_ms}")
        if self.job_timeout_s is not None and self.job_timeout_s <= 0:
            raise SettingsError(f"JOB_TIMEOUT_S: must be positive, got {self.job_timeout_s}")
        if self.job_ttl_s <= 0:
            raise SettingsError(f"JOB_TTL_S: must be positive, got {self.job_ttl_s}")
        if self.drain_timeout_s < 0:
            raise SettingsError(f"DRAIN_TIMEOUT_S: must not be negative, got {self.drain_timeout_s}")
        if self.keep_alive_s <= 0:
            raise SettingsError(f"KEEP_ALIVE_S: must be positive, got {self.keep_alive_s}")
        if self.metrics_port is not None and not 0 < self.metrics_port < 65536:
            raise SettingsError(f"METRICS_PORT: must be a TCP port (1-65535), got {self.metrics_port}")
        if self.api_key is not None and not self.api_key.strip():
            raise SettingsError("API_KEY: must not be blank")
        if self.log_level.upper() not in ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"):
            raise SettingsError(f"LOG_LEVEL: expected DEBUG, INFO, WARNING, ERROR or CRITICAL, got {self.log_level!r}")

    def __repr__(self) -> str:
        """Like msgspec's, with the API key masked: settings may be logged or printed."""
        fields = ", ".join(
            f"{name}={'***' if name == 'api_key' and self.api_key else repr(getattr(self, name))}"
            for name in self.__struct_fields__
        )
        return f"Settings({fields})"

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, **overrides: object) -> Settings:
        """Read every field from its variable; ``overrides`` (e.g. from the command line) win."""
        environ = os.environ if environ is None else environ
        raw: dict[str, object] = {}
        for name in cls.__struct_fields__:
            if name in ("limits", "thresholds"):
                continue
            if environ.get(name.upper(), "") != "":
                raw[name] = environ[name.upper()]
        limits = {name: environ[name.upper()] for name in Limits.__struct_fields__ if environ.get(name.upper())}
        if limits:
            raw["limits"] = limits
        thresholds = {
            name: environ[f"{name.upper()}_THRESHOLD"]
            for name in Thresholds.__struct_fields__
            if environ.get(f"{name.upper()}_THRESHOLD")
        }
        if thresholds:
            raw["thresholds"] = thresholds
        raw.update({k: v for k, v in overrides.items() if v is not None})
        try:
            return msgspec.convert(raw, cls, strict=False)
        except msgspec.ValidationError as err:
            raise SettingsError(_explain(err)) from err

    def job_timeout(self, timeout_s: float | None) -> float | None:
        """A job's timeout: its own (e.g. RunPod's ``policy.executionTimeout``) can shorten
        ``JOB_TIMEOUT_S``, not extend it; None when neither is set."""
        return min((t for t in (timeout_s, self.job_timeout_s) if t is not None), default=None)

    def batch_policy(self, *, on_gpu: bool) -> BatchPolicy:
        """The batcher's numbers, filling unset budgets with the device's defaults."""
        return BatchPolicy(
            max_batch_tokens=self.max_batch_tokens or (16_384 if on_gpu else 512),
            max_batch_items=self.max_batch_pairs or (512 if on_gpu else 16),
            window_items=self.window_pairs,
            max_wait_ms=self.max_wait_ms,
            merge_identical=self.merge_identical_pairs,
            max_queue_items=self.max_queue_pairs,
            max_queue_tokens=self.max_queue_tokens,
        )


def _explain(err: msgspec.ValidationError) -> str:
    """msgspec says "Expected `int`, got `str` - at `$.max_batch_tokens`"; name the variable."""
    message = str(err)
    reason, _, path = message.rpartition(" - at `")
    if not reason:
        return message
    variable = path.rstrip("`").removeprefix("$.").removeprefix("limits.").upper()
    if variable.startswith("THRESHOLDS."):  # thresholds.opinion is read from OPINION_THRESHOLD
        variable = variable.removeprefix("THRESHOLDS.") + "_THRESHOLD"
    return f"{variable}: {reason[0].lower()}{reason[1:]}"
