"""Errors of the wire layer. Each has a stable code and the HTTP status it maps to."""

from __future__ import annotations

from crdt_sync.errors import InvalidInput, SyncError


class BadRequest(InvalidInput):
    """The request is not well-formed (not JSON, missing or mistyped fields)."""

    code = "invalid_request"


class AuthError(SyncError):
    """Authentication or integrity failed (401)."""

    code = "unauthorized"


class PayloadTooLarge(InvalidInput):
    code = "batch_too_large"


class BodyTooLarge(InvalidInput):
    code = "body_too_large"
