"""HMAC integrity of /sync/v1 requests (design.md §3) and device-secret derivation.

Device secrets are never stored: each is derived from the server's key, the device's
(tenant, id) and its registration generation, so re-registration rotates it and a dump of
the database holds nothing a client could sign with.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import math

from protocol.errors import AuthError

MAX_SKEW_S = 300


def canonical_message(timestamp: str, method: str, path: str, device_id: str, body: bytes) -> bytes:
    body_hash = hashlib.sha256(body).hexdigest()
    return f"{timestamp}\n{method.upper()}\n{path}\n{device_id}\n{body_hash}".encode()


def sign(secret: str, timestamp: str, method: str, path: str, device_id: str, body: bytes) -> str:
    message = canonical_message(timestamp, method, path, device_id, body)
    return hmac.new(secret.encode(), message, hashlib.sha256).hexdigest()


def verify(
    secret: str,
    *,
    timestamp: str | None,
    signature: str | None,
    method: str,
    path: str,
    device_id: str,
    body: bytes,
    now: float,
    max_skew_s: float = MAX_SKEW_S,
) -> None:
    """Raise AuthError with the contract's code unless the request is signed and fresh."""
    if not timestamp or not signature:
        raise AuthError(
            "X-Sync-Timestamp and X-Sync-Signature are required", code="signature_required"
        )
    try:
        ts = int(timestamp)
    except ValueError:
        raise AuthError("X-Sync-Timestamp must be unix seconds", code="bad_signature") from None
    try:
        skew = abs(now - ts)
    except OverflowError:  # beyond a float's range: certainly not now (and not a 500)
        skew = math.inf
    if skew > max_skew_s:
        raise AuthError(
            f"X-Sync-Timestamp is more than {max_skew_s:g} s off", code="stale_timestamp"
        )
    expected = sign(secret, timestamp, method, path, device_id, body)
    # Compare bytes: a header with non-ASCII characters is a wrong signature, not a TypeError.
    given = signature.strip().lower().encode("utf-8", "replace")
    if not hmac.compare_digest(expected.encode(), given):
        raise AuthError("the request signature does not match", code="bad_signature")


def derive_device_secret(server_key: bytes, tenant_id: str, device_id: str, generation: int) -> str:
    # JSON keeps the fields apart: ids may contain any character, newlines included.
    message = json.dumps(["device-secret", tenant_id, device_id, generation]).encode()
    return hmac.new(server_key, message, hashlib.sha256).hexdigest()
