"""Opaque cursor tokens: the SyncCursor as compact JSON, base64url, with an HMAC tag.

A token that does not decode or whose tag is wrong raises ResyncRequired('invalid_cursor'):
clients cannot forge positions, and a server whose key changed sends them to a full resync.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json

from crdt_sync.errors import InvalidInput, ResyncRequired
from crdt_sync.model import SyncCursor

VERSION = 1
TAG_BYTES = 16
# Two 200-character ids of astral characters are 2 x 2400 bytes as escaped JSON.
MAX_TOKEN = 8192


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


class CursorCodec:
    def __init__(self, key: bytes) -> None:
        self._key = key

    def _tag(self, body: bytes) -> bytes:
        return hmac.new(self._key, b"cursor\n" + body, hashlib.sha256).digest()[:TAG_BYTES]

    def encode(self, cursor: SyncCursor) -> str:
        fields = [
            VERSION,
            cursor.tenant_id,
            cursor.device_id,
            cursor.seq,
            cursor.scope,
            cursor.issued_at,
            cursor.snapshot_seq,
        ]
        body = json.dumps(fields, separators=(",", ":")).encode()
        return _b64(body) + "." + _b64(self._tag(body))

    def decode(self, token: str) -> SyncCursor:
        invalid = ResyncRequired("invalid_cursor", "the cursor is not one this server issued")
        if not isinstance(token, str) or not 0 < len(token) <= MAX_TOKEN or token.count(".") != 1:
            raise invalid
        body_text, tag_text = token.split(".")
        try:
            body, tag = _unb64(body_text), _unb64(tag_text)
        except (binascii.Error, ValueError):
            raise invalid from None
        # base64 is malleable (unused trailing bits, '+' for '-', stray characters are
        # skipped): accept only the one spelling `encode` produces.
        if _b64(body) != body_text or _b64(tag) != tag_text:
            raise invalid
        if not hmac.compare_digest(tag, self._tag(body)):
            raise invalid
        try:
            version, tenant, device, seq, scope, issued, snap = json.loads(body)
            if version != VERSION:
                raise invalid
            return SyncCursor(tenant, device, seq, scope, issued, snap)
        except (ValueError, TypeError, InvalidInput):
            raise invalid from None
