"""Map every error to the `{"error": {"code", "message"}}` body with a fitting status."""

from __future__ import annotations

import logging
import math
from typing import Any

from quart import Quart, Response, jsonify
from werkzeug.exceptions import HTTPException

from crdt_sync.errors import (
    Conflict,
    Forbidden,
    InvalidInput,
    NotFound,
    ResyncRequired,
    SyncError,
)
from protocol.errors import AuthError, BodyTooLarge, PayloadTooLarge
from web.limits import RateLimited

log = logging.getLogger("crdt_sync.web")

STATUS: list[tuple[type[SyncError], int]] = [
    (PayloadTooLarge, 413),
    (BodyTooLarge, 413),
    (RateLimited, 429),
    (InvalidInput, 400),
    (AuthError, 401),
    (Forbidden, 403),
    (NotFound, 404),
    (Conflict, 409),
    (ResyncRequired, 410),
]


def error_response(status: int, code: str, message: str, **extra: Any) -> Response:
    response = jsonify({"error": {"code": code, "message": message, **extra}})
    response.status_code = status
    return response


def status_of(exc: SyncError) -> int:
    for kind, status in STATUS:
        if isinstance(exc, kind):
            return status
    return 400


def install(app: Quart) -> None:
    @app.errorhandler(SyncError)
    async def _sync_error(exc: SyncError) -> Response:
        extra = {"reason": exc.reason} if isinstance(exc, ResyncRequired) else {}
        response = error_response(status_of(exc), exc.code, exc.message, **extra)
        if isinstance(exc, RateLimited):
            response.headers["Retry-After"] = str(max(1, math.ceil(exc.retry_after_s)))
        return response

    @app.errorhandler(HTTPException)
    async def _http_error(exc: HTTPException) -> Response:
        status = exc.code or 500
        codes = {
            404: "not_found",
            405: "method_not_allowed",
            413: "body_too_large",
            400: "invalid_request",
        }
        code = codes.get(status, "http_error")
        return error_response(status, code, exc.description or exc.name)

    @app.errorhandler(Exception)
    async def _unexpected(exc: Exception) -> Response:
        log.exception("unexpected error")
        return error_response(500, "internal", "internal error; the incident was logged")
