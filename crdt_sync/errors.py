"""Domain errors. Each carries a stable snake_case code; the web layer maps it to a status."""

from __future__ import annotations

from typing import Any


class SyncError(Exception):
    """Base of every error the core raises on purpose."""

    code = "sync_error"

    def __init__(self, message: str, *, code: str | None = None, **details: Any) -> None:
        super().__init__(message)
        self.message = message
        if code is not None:
            self.code = code
        self.details = details


class InvalidInput(SyncError):
    """A request or value that is not well-formed (maps to 400)."""

    code = "invalid_request"


class MutationRejected(SyncError):
    """A well-formed mutation that fails validation or policy (a per-mutation `rejected`)."""

    code = "rejected"


class NotFound(SyncError):
    code = "not_found"


class Forbidden(SyncError):
    code = "forbidden"


class Conflict(SyncError):
    """A request that clashes with stored state (maps to 409)."""

    code = "conflict"


class ResyncRequired(SyncError):
    """A cursor that can no longer be served (maps to 410 full_resync_required)."""

    code = "full_resync_required"

    def __init__(self, reason: str, message: str | None = None) -> None:
        super().__init__(message or f"full resync required: {reason}", reason=reason)
        self.reason = reason
