"""``GET /openapi.json``: the pod's contract, generated from the msgspec types that decode and
encode it (the job inputs with this pod's limits, ``RunRequest``, ``JobView``, ``HealthView``,
``ErrorBody``), so the document cannot drift from the server. CI fuzzes the live pod from it
(``tests/test_fuzz.py``).
"""

from __future__ import annotations

from typing import Any

import msgspec

from schemas import build_job_schema
from schemas.runpod import ErrorBody, HealthView, JobView, PurgeResult, RunPolicy
from worker.pod.requests import RUNSYNC_DEFAULT_WAIT_MS, RUNSYNC_MAX_WAIT_MS
from worker.settings import Settings

_REF = "#/components/schemas/{name}"

_ERRORS = {
    "400": "invalid_input: the body, a field of the job, or a query parameter (the message names it)",
    "401": "unauthorized: no or a wrong API key",
    "404": "not_found: no such job (never accepted, or forgotten) or route",
    "405": "method_not_allowed",
    "413": "payload_too_large: the body is over MAX_BODY_BYTES",
    "415": "unsupported_media_type: the body is compressed (Content-Encoding); send it uncompressed",
    "429": "overloaded: the queue is full; retry after Retry-After",
    "503": "unavailable: loading, draining or failed; retry after Retry-After",
}


def openapi_document(settings: Settings) -> dict[str, Any]:
    """The OpenAPI 3.1 document of a pod with ``settings`` (its limits, whether it needs a key)."""
    operation_type = build_job_schema(settings.limits).operation_type
    run_request = msgspec.defstruct(
        "RunRequest",
        [("input", operation_type), ("policy", RunPolicy | None, None), ("webhook", str | None, None)],
        kw_only=True,
        forbid_unknown_fields=False,
    )
    (run, job, health, purge, error), components = msgspec.json.schema_components(
        [run_request, JobView, HealthView, PurgeResult, ErrorBody], ref_template=_REF
    )
    job_id = {"name": "job_id", "in": "path", "required": True, "schema": {"type": "string"}}
    wait = {
        "name": "wait", "in": "query", "required": False,
        "description": f"milliseconds to wait for the job to end (default {RUNSYNC_DEFAULT_WAIT_MS})",
        "schema": {"type": "integer", "minimum": 0, "maximum": RUNSYNC_MAX_WAIT_MS},
    }  # fmt: skip
    secured = [{"bearer": []}] if settings.api_key else []

    def operation(summary: str, ok: dict, *, body: dict | None = None, params: list | None = None,
                  errors: tuple[str, ...] = (), open_: bool = False) -> dict[str, Any]:  # fmt: skip
        spec: dict[str, Any] = {"summary": summary, "responses": {"200": _json(ok)}}
        if body is not None:
            spec["requestBody"] = {"required": True, "content": {"application/json": {"schema": body}}}
        if params:
            spec["parameters"] = params
        if not open_:
            spec["security"] = secured
            errors = (*errors, "401") if secured else errors
        for status in errors:
            spec["responses"][status] = {**_json(error), "description": _ERRORS[status]}
        return spec

    submit_errors = ("400", "413", "415", "429", "503")
    paths = {
        "/run": {"post": operation("Submit a job; it runs in the background", job, body=run, errors=submit_errors)},
        "/runsync": {"post": operation("Submit a job and wait for it to end (or for `wait` to run out)", job,
                                       body=run, params=[wait], errors=submit_errors)},  # fmt: skip
        "/status/{job_id}": {
            method: operation("A job's status, and its output or error once it has ended", job,
                              params=[job_id], errors=("404",))  # fmt: skip
            for method in ("get", "post")
        },
        "/cancel/{job_id}": {"post": operation("Cancel a job that has not ended", job, params=[job_id], errors=("404",))},
        "/purge-queue": {"post": operation("Cancel the jobs no task has picked up yet", purge)},
        "/health": {"get": operation("Job counts, the model, the queue", health)},
        "/ping": {"get": {
            "summary": "Ready (200), loading (204), or failed or draining (503); needs no key",
            "responses": {"200": _json({"type": "object"}), "204": {"description": "loading"},
                          "503": {**_json(error), "description": _ERRORS["503"]}},
        }},  # fmt: skip
        "/metrics": {"get": {
            "summary": "Prometheus metrics; needs no key",
            "responses": {"200": {"description": "text exposition", "content": {"text/plain": {"schema": {"type": "string"}}}}},
        }},  # fmt: skip
    }
    document: dict[str, Any] = {
        "openapi": "3.1.0",
        "info": {
            "title": "burst-nli pod",
            "version": "1",
            "description": "RunPod's job API for zero-shot NLI jobs. Every path is served under "
            "/v2/{endpoint_id} too, as on a RunPod endpoint.",
        },
        "paths": paths,
        "components": {"schemas": components},
    }
    if secured:
        document["components"]["securitySchemes"] = {"bearer": {"type": "http", "scheme": "bearer"}}
    return document


def _json(schema: dict[str, Any]) -> dict[str, Any]:
    return {"description": "JSON", "content": {"application/json": {"schema": schema}}}
