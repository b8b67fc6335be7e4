"""What HTTP adds to the service's errors, and the one mapping of errors to responses.

Every ``ServiceError`` becomes a response in ``error_response`` alone: ``{"error": "<code>:
<message>"}`` with the error's status, and ``Retry-After`` when the caller may retry.
"""

from __future__ import annotations

import math
from typing import Any

import msgspec
from starlette.responses import Response

from batching import ServiceError
from schemas.runpod import ErrorBody

class NoSuchResource(ServiceError):
    code = "not_found"
    http_status = 404


class PayloadTooLarge(ServiceError):
    code = "payload_too_large"
    http_status = 413


class UnsupportedMediaType(ServiceError):
    code = "unsupported_media_type"
    http_status = 415


class ApiKeyRefused(ServiceError):
    code = "unauthorized"
    http_status = 401


class MethodNotAllowed(ServiceError):
    code = "method_not_allowed"
    http_status = 405


_encoder = msgspec.json.Encoder()


def json_response(body: Any, status_code: int = 200, headers: dict[str, str] | None = None) -> Response:
    return Response(_encoder.encode(body), status_code, headers, media_type="application/json")


def error_response(err: ServiceError, headers: dict[str, str] | None = None) -> Response:
    """``{"error": "<code>: <message>"}`` with the error's status; Retry-After when retryable."""
    headers = dict(headers or {})
    if err.retryable:
        headers["Retry-After"] = str(max(1, math.ceil(getattr(err, "retry_after_s", 1.0))))
    if isinstance(err, ApiKeyRefused):
        headers["WWW-Authenticate"] = 'Bearer realm="burst-nli"'
    return json_response(ErrorBody(str(err)), err.http_status, headers)
