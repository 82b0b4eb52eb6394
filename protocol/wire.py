"""Request bodies of /sync/v1 and /admin/v1: JSON in, validated domain values out.

Every malformed input raises `BadRequest` (400) with a message that says what is wrong;
nothing else escapes these functions.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Sequence
from json.encoder import encode_basestring_ascii as _quote
from typing import Any

from crdt_sync.errors import InvalidInput
from crdt_sync.model import Change, LocalMutation, MutationResult, check_id
from crdt_sync.vector_clock import VectorClock
from protocol.errors import BadRequest, PayloadTooLarge

MAX_BATCH = 500


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


# A `\uD800`-`\uDFFF` escape: JSON syntax allows a lone one, but it is no Unicode text and
# cannot be stored (UTF-8 encoding fails deep in the store, a 500). Checked only when present.
_SURROGATE_ESCAPE = re.compile(rb"\\u[dD][89a-fA-F]")


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):  # 1e400 parses to inf, which JSON cannot carry back out
        raise ValueError(f"the number {text[:40]} is out of range")
    return value


def parse_json(body: bytes) -> Any:
    try:
        # JSON is UTF-8 (RFC 8259). Decoding strictly here also refuses UTF-8-encoded
        # surrogates, which json.loads(bytes) would let through ('surrogatepass').
        text = body.decode("utf-8-sig")
        value = json.loads(text, parse_constant=_reject_constant, parse_float=_finite_float)
        if _SURROGATE_ESCAPE.search(body):
            json.dumps(value, ensure_ascii=False).encode("utf-8")  # UnicodeEncodeError
        return value
    except (ValueError, UnicodeDecodeError, RecursionError) as exc:
        raise BadRequest(f"the body is not valid JSON: {exc}") from None


def parse_object(body: bytes) -> dict[str, Any]:
    value = parse_json(body)
    if not isinstance(value, dict):
        raise BadRequest("the body must be a JSON object")
    return value


def _field(obj: dict[str, Any], name: str, kind: type | tuple[type, ...], where: str) -> Any:
    if name not in obj:
        raise BadRequest(f"{where}: missing field {name!r}")
    value = obj[name]
    if isinstance(value, bool) and bool not in (kind if isinstance(kind, tuple) else (kind,)):
        raise BadRequest(f"{where}: field {name!r} has the wrong type")
    if not isinstance(value, kind):
        raise BadRequest(f"{where}: field {name!r} has the wrong type")
    return value


def parse_mutation(obj: Any, index: int) -> LocalMutation:
    where = f"mutations[{index}]"
    if not isinstance(obj, dict):
        raise BadRequest(f"{where} must be an object")
    op = _field(obj, "op", str, where)
    if op not in ("put", "delete"):
        raise BadRequest(f"{where}: op must be 'put' or 'delete'")
    payload = obj.get("payload")
    if op == "put" and not isinstance(payload, dict):
        raise BadRequest(f"{where}: a put needs an object payload")
    if op == "delete" and payload is not None:
        raise BadRequest(f"{where}: a delete has a null payload")
    ts = obj.get("ts")
    if ts is not None and (isinstance(ts, bool) or not isinstance(ts, int) or ts < 0):
        raise BadRequest(f"{where}: ts must be a non-negative integer")
    try:
        return LocalMutation(
            mutation_id=_field(obj, "mutation_id", str, where),
            entity_type=_field(obj, "entity_type", str, where),
            entity_id=_field(obj, "entity_id", str, where),
            op=op,
            payload=payload,
            clock=VectorClock.from_json(_field(obj, "clock", dict, where)),
            ts=ts,
        )
    except BadRequest:
        raise
    except InvalidInput as exc:
        raise BadRequest(f"{where}: {exc.message}") from None


def parse_push(body: bytes, max_batch: int = MAX_BATCH) -> list[LocalMutation]:
    obj = parse_object(body)
    mutations = _field(obj, "mutations", list, "body")
    if len(mutations) > max_batch:
        raise PayloadTooLarge(f"at most {max_batch} mutations per push, got {len(mutations)}")
    return [parse_mutation(m, i) for i, m in enumerate(mutations)]


def parse_cursor_body(body: bytes) -> str:
    obj = parse_object(body)
    cursor = _field(obj, "cursor", str, "body")
    return str(cursor)


def parse_device_registration(body: bytes) -> tuple[str, str, str]:
    obj = parse_object(body)
    device_id = _field(obj, "device_id", str, "body")
    name = obj.get("name", "")
    platform = obj.get("platform", "")
    if not isinstance(name, str) or not isinstance(platform, str):
        raise BadRequest("name and platform must be strings")
    if len(name) > 200 or len(platform) > 200:
        raise BadRequest("name and platform have at most 200 characters")
    if "\x00" in name or "\x00" in platform:  # PostgreSQL text cannot hold NUL (a 500)
        raise BadRequest("name and platform must not contain NUL")
    try:
        check_id(device_id, "device_id")
    except InvalidInput as exc:
        raise BadRequest(exc.message) from None
    return device_id, name, platform


def parse_resolution(body: bytes) -> tuple[str, dict[str, Any] | None]:
    obj = parse_object(body)
    choice = _field(obj, "choice", str, "body")
    payload = obj.get("payload")
    if payload is not None and not isinstance(payload, dict):
        raise BadRequest("payload must be an object")
    return choice, payload


def parse_limit(raw: str | None, default: int, maximum: int) -> int:
    if raw is None:
        return default
    # Plain ASCII digits only: int() would also take "5_0", "+5" and non-ASCII digits.
    text = raw.strip()
    if not (text.isascii() and text.isdigit() and len(text) <= 12):
        raise BadRequest("limit must be an integer")
    value = int(text)
    if not 1 <= value <= maximum:
        raise BadRequest(f"limit must be 1..{maximum}")
    return value


def pull_body(changes: Sequence[Change], cursor: str, has_more: bool) -> str:
    """The pull response. Each change's payload and clock go out as the JSON text they were
    stored as (`Change`: canonical JSON of validated input), which makes serving a page of
    500 changes string assembly instead of decoding and re-encoding 500 objects."""
    items = ",".join(
        f'{{"entity_type":{_quote(c.entity_type)},"entity_id":{_quote(c.entity_id)},'
        f'"op":"{c.op}","payload":{"null" if c.payload_json is None else c.payload_json},'
        f'"clock":{c.clock_json}}}'
        for c in changes
    )
    more = "true" if has_more else "false"
    return f'{{"changes":[{items}],"cursor":{_quote(cursor)},"has_more":{more}}}'


def push_body(results: Sequence[MutationResult]) -> str:
    """The push response, from the JSON each result was stored as (`MutationResult.encoded`)."""
    return '{"results":[' + ",".join(r.encoded for r in results) + "]}"
