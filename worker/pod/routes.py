"""The pod's routes over a ``PodApp``: RunPod's job API, health, ping and metrics.

Every route answers both bare (``/run``) and under RunPod's prefix (``/v2/<endpoint_id>/run``),
so a client built for a RunPod endpoint, the SDK's ``runpod.Endpoint`` included, works against a
pod with only its base URL changed. With ``RUNPOD_ENDPOINT_ID`` set, only that id is served.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING

from prometheus_client.exposition import choose_encoder
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route
from starlette.types import ASGIApp, Receive, Scope, Send

from batching import ServiceError, Unavailable
from schemas.runpod import JobView, PurgeResult
from worker.pod.auth import BearerAuth
from worker.pod.http import MethodNotAllowed, NoSuchResource, error_response, json_response
from worker.pod.openapi import openapi_document
from worker.pod.requests import parse_wait_ms

if TYPE_CHECKING:
    from worker.pod.app import PodApp


def build_app(pod: PodApp) -> Starlette:
    """The ASGI app over ``pod``; its lifespan enters ``pod`` unless something already has."""

    async def run(request: Request) -> Response:
        record = await pod.submit(request)
        return json_response(JobView(id=record.id, status=record.status))

    async def runsync(request: Request) -> Response:
        wait_ms = parse_wait_ms(request.query_params.get("wait"))
        record = await pod.submit(request)
        await pod.wait_answerable(record, wait_ms / 1000)
        return json_response(record.view())

    async def status(request: Request) -> Response:
        job_id = request.path_params["job_id"]
        if (answer := await pod.relayed(request, job_id)) is not None:
            return answer
        return json_response(pod.job(job_id).view())

    async def cancel(request: Request) -> Response:
        job_id = request.path_params["job_id"]
        if (answer := await pod.relayed(request, job_id)) is not None:
            return answer
        record = pod.cancel(job_id)
        return json_response(JobView(id=record.id, status=record.status))

    async def health(request: Request) -> Response:
        return json_response(await pod.health(request))

    async def purge_queue(request: Request) -> Response:
        return json_response(PurgeResult(await pod.purge_pod_queue(request)))

    async def ping(request: Request) -> Response:
        if pod.engine is not None and not pod.closing:
            return json_response({"status": "healthy"})
        if pod.failure is None and not pod.closing:
            return Response(status_code=204)  # loading: RunPod's load balancer waits
        return error_response(pod.failure or Unavailable("the server is shutting down"))

    document = openapi_document(pod.settings)

    async def openapi(request: Request) -> Response:
        return json_response(document)

    async def metrics(request: Request) -> Response:
        encode, content_type = choose_encoder(request.headers.get("accept"))
        return Response(encode(await pod.metrics_view(request)), headers={"Content-Type": content_type})

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        if pod.entered:  # by its owner (tests, an in-process server)
            yield
            return
        async with pod:
            yield

    routes = [
        Route("/run", run, methods=["POST"]),
        Route("/runsync", runsync, methods=["POST"]),
        Route("/status/{job_id}", status, methods=["GET", "POST"]),
        Route("/cancel/{job_id}", cancel, methods=["POST"]),
        Route("/health", health, methods=["GET"]),
        Route("/purge-queue", purge_queue, methods=["POST"]),
        Route("/ping", ping, methods=["GET"]),
        Route("/metrics", metrics, methods=["GET"]),
        Route("/openapi.json", openapi, methods=["GET"]),
    ]
    middleware = [Middleware(EndpointPrefix, endpoint_id=pod.settings.runpod_endpoint_id)]
    if pod.settings.api_key:
        middleware.append(Middleware(BearerAuth, api_key=pod.settings.api_key))
    return Starlette(
        routes=routes,
        middleware=middleware,
        exception_handlers={ServiceError: _service_error, HTTPException: _http_error},  # type: ignore[dict-item]
        lifespan=lifespan,
    )


async def _service_error(request: Request, err: ServiceError) -> Response:
    return error_response(err)


async def _http_error(request: Request, exc: HTTPException) -> Response:
    """Starlette's own 404 (no such route) and 405 (wrong method), as our JSON errors."""
    path = request.url.path
    if exc.status_code == 405:
        allowed = (exc.headers or {}).get("Allow", "")
        return error_response(MethodNotAllowed(f"{request.method} {path}; allowed: {allowed}"), exc.headers)
    if exc.status_code == 404:
        return error_response(NoSuchResource(f"no route {path}"))
    return json_response({"error": f"http_{exc.status_code}: {exc.detail}"}, exc.status_code, exc.headers)


class EndpointPrefix:
    """``/v2/<endpoint_id>/<route>`` is ``/<route>``: RunPod's URL layout, for any id or only
    ``endpoint_id`` when one is configured."""

    def __init__(self, app: ASGIApp, endpoint_id: str | None) -> None:
        self.app = app
        self.endpoint_id = endpoint_id

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        path = scope.get("path", "") if scope["type"] == "http" else ""
        if path.startswith("/v2/"):
            endpoint_id, slash, rest = path[len("/v2/") :].partition("/")
            if self.endpoint_id is not None and endpoint_id != self.endpoint_id:
                response = error_response(NoSuchResource(f"no endpoint {endpoint_id[:64]!r} here"))
                await response(scope, receive, send)
                return
            scope = {**scope, "path": slash + rest, "raw_path": (slash + rest).encode()}
        await self.app(scope, receive, send)
