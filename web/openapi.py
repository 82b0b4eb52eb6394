"""The OpenAPI 3.1 description of /sync/v1 and /admin/v1, written by hand, served (no auth) at
`GET /sync/v1/openapi.json`.

It is the contract of design.md §3 as implemented (docs/protocol.md): request schemas say
what `protocol/wire.py` accepts, response schemas what the routes return, and every error is
the `{"error": {"code", "message", "reason"?}}` body. tests/test_openapi.py keeps the paths in
step with the app's routes; tests/test_schemathesis.py checks real responses against it.
WebSocket rooms are not HTTP operations; they are described in `info.description`.
"""

from __future__ import annotations

import copy
from typing import Any

from quart import Blueprint, Response, jsonify

bp = Blueprint("openapi", __name__)

OPENAPI_PATH = "/sync/v1/openapi.json"
MAX_ID = 200
MAX_COUNTER = 2**53 - 1

Schema = dict[str, Any]


def _ref(kind: str, name: str) -> Schema:
    return {"$ref": f"#/components/{kind}/{name}"}


def _obj(required: dict[str, Schema], optional: dict[str, Schema] | None = None) -> Schema:
    return {
        "type": "object",
        "required": sorted(required),
        "properties": {**required, **(optional or {})},
    }


def _nullable(schema: Schema) -> Schema:
    return {"anyOf": [schema, {"type": "null"}]}


STRING: Schema = {"type": "string"}
ID: Schema = {
    "type": "string",
    "minLength": 1,
    "maxLength": MAX_ID,
    "pattern": "^[^\\x00]*$",
    "description": "An opaque id of 1..200 characters without NUL: data, never a path or SQL.",
}
LABEL: Schema = {"type": "string", "maxLength": MAX_ID, "pattern": "^[^\\x00]*$"}
TIME: Schema = {"type": "string", "format": "date-time", "description": "RFC 3339, UTC"}
ANY_OBJECT: Schema = {"type": "object"}

# -- errors ---------------------------------------------------------------------------------

ERROR_CODES: dict[int, tuple[str, list[str]]] = {
    400: (
        "Not well-formed: not JSON, missing or mistyped fields, a bad id or parameter.",
        ["invalid_request", "invalid_payload", "invalid_update"],
    ),
    401: (
        "Missing, malformed, expired or unsigned token; unknown or revoked device; "
        "missing, wrong or stale HMAC signature.",
        [
            "unauthorized",
            "unknown_device",
            "device_revoked",
            "signature_required",
            "bad_signature",
            "stale_timestamp",
        ],
    ),
    403: (
        "A valid token without the role, or naming another device.",
        ["forbidden", "device_mismatch"],
    ),
    404: (
        "No such conflict, snapshot, device or entity type.",
        ["not_found", "unknown_entity_type"],
    ),
    409: ("Clashes with stored state.", ["device_taken", "already_resolved"]),
    410: ("The cursor can no longer be served: pull again without one.", ["full_resync_required"]),
    413: (
        "Too many mutations, or a body over the size limit.",
        ["batch_too_large", "body_too_large"],
    ),
    429: ("The device sends too fast; retry after `Retry-After` seconds.", ["rate_limited"]),
}
ERROR_NAMES = {
    400: "BadRequest",
    401: "Unauthorized",
    403: "Forbidden",
    404: "NotFound",
    409: "Conflict",
    410: "ResyncRequired",
    413: "TooLarge",
    429: "RateLimited",
}
RESYNC_REASONS = ["cursor_expired", "tombstone_horizon", "scope_changed", "invalid_cursor"]


def _error_schema(codes: list[str] | None = None, reason: bool = False) -> Schema:
    code: Schema = {"type": "string", "pattern": "^[a-z][a-z0-9_]*$"}
    if codes:
        code = {"type": "string", "enum": codes}
    detail = _obj(
        {"code": code, "message": STRING},
        {"reason": {"type": "string", "enum": RESYNC_REASONS}},
    )
    if reason:
        detail["required"] = sorted([*detail["required"], "reason"])
    return _obj({"error": detail})


def _error_response(status: int) -> Schema:
    description, codes = ERROR_CODES[status]
    out: Schema = {
        "description": description,
        "content": {"application/json": {"schema": _error_schema(codes, reason=status == 410)}},
    }
    if status == 429:
        out["headers"] = {
            "Retry-After": {"schema": {"type": "string", "pattern": "^[0-9]+$"}, "required": True}
        }
    return out


def _responses(ok: dict[str, Schema], *errors: int) -> dict[str, Schema]:
    """`ok` plus the errors every authenticated route can give, plus `errors`."""
    statuses = sorted({400, 401, 403, *errors})
    return {**ok, **{str(s): _ref("responses", ERROR_NAMES[s]) for s in statuses}}


def _json(description: str, schema: Schema) -> Schema:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


NO_CONTENT: Schema = {"description": "Done; no body."}

# -- shared schemas -------------------------------------------------------------------------

SCHEMAS: dict[str, Schema] = {
    "Error": _error_schema(),
    "Clock": {
        "type": "object",
        "description": "A vector clock: node id (a device id, or `server`) -> positive counter.",
        "minProperties": 1,
        "maxProperties": 1000,
        "propertyNames": {"minLength": 1, "maxLength": MAX_ID},
        "additionalProperties": {"type": "integer", "minimum": 1, "maximum": MAX_COUNTER},
    },
    "Payload": {"type": "object", "description": "The entity's JSON object (at most 256 KiB)."},
    "Entity": _obj(
        {
            "entity_type": STRING,
            "entity_id": STRING,
            "op": {"type": "string", "enum": ["put", "delete"]},
            "payload": _nullable(_ref("schemas", "Payload")),
            "clock": _ref("schemas", "Clock"),
        }
    ),
    "PutMutation": _obj(
        {
            "mutation_id": ID,
            "entity_type": ID,
            "entity_id": ID,
            "op": {"type": "string", "enum": ["put"]},
            "payload": _ref("schemas", "Payload"),
            "clock": _ref("schemas", "Clock"),
        },
        {"ts": {"type": "integer", "minimum": 0, "description": "client HLC, ms since epoch"}},
    ),
    "DeleteMutation": _obj(
        {
            "mutation_id": ID,
            "entity_type": ID,
            "entity_id": ID,
            "op": {"type": "string", "enum": ["delete"]},
            "clock": _ref("schemas", "Clock"),
        },
        {"payload": {"type": "null"}, "ts": {"type": "integer", "minimum": 0}},
    ),
    "MutationResult": _obj(
        {
            "mutation_id": STRING,
            "status": {
                "type": "string",
                "enum": ["applied", "merged", "conflict", "stale", "duplicate", "rejected"],
            },
            "clock": _nullable(_ref("schemas", "Clock")),
        },
        {
            "conflict_id": STRING,
            "error": _obj(
                {
                    "code": {
                        "type": "string",
                        "enum": [
                            "unknown_entity_type",
                            "read_only",
                            "invalid_payload",
                            "payload_too_large",
                            "immutable",
                        ],
                    },
                    "message": STRING,
                }
            ),
        },
    ),
    "SnapshotMeta": _obj(
        {
            "snapshot_id": STRING,
            "created_at": TIME,
            "expires_at": TIME,
            "reason": STRING,
            "size_bytes": {"type": "integer", "minimum": 0},
            "device_id": _nullable(STRING),
        }
    ),
    "SnapshotList": _obj(
        {"snapshots": {"type": "array", "items": _ref("schemas", "SnapshotMeta")}}
    ),
    "Conflict": _obj(
        {
            "conflict_id": STRING,
            "entity_type": STRING,
            "entity_id": STRING,
            "owner": _nullable(STRING),
            "status": {"type": "string", "enum": ["open", "resolved"]},
            "created_at": TIME,
            "resolved_at": _nullable(TIME),
            "resolution": _nullable({"type": "string", "enum": ["server", "client", "custom"]}),
            "server": _obj({"payload": _nullable(ANY_OBJECT), "clock": _ref("schemas", "Clock")}),
            "client": _obj(
                {
                    "payload": _nullable(ANY_OBJECT),
                    "clock": _ref("schemas", "Clock"),
                    "device_id": STRING,
                }
            ),
        }
    ),
}


def _with_meta(extra: dict[str, Schema]) -> Schema:
    return {"allOf": [_ref("schemas", "SnapshotMeta"), _obj(extra)]}


CHANGE_ROW = {"type": "string", "enum": ["added", "removed", "changed", "same"]}
SCHEMAS.update(
    {
        "EntitySnapshot": _with_meta(
            {
                "content": _obj(
                    {"exists": {"type": "boolean"}},
                    {
                        "payload": _nullable(ANY_OBJECT),
                        "deleted": {"type": "boolean"},
                        "clock": {"type": "object"},
                        "ts": {"type": "integer"},
                        "device_id": STRING,
                    },
                )
            }
        ),
        "EntitySnapshotDiff": _with_meta(
            {
                "snapshot": _nullable(ANY_OBJECT),
                "current": _nullable(ANY_OBJECT),
                "rows": {
                    "type": "array",
                    "items": _obj(
                        {"path": STRING, "before": {}, "after": {}, "change": CHANGE_ROW}
                    ),
                },
            }
        ),
        "DocSnapshot": _with_meta({"content": ANY_OBJECT}),
        "DocSnapshotDiff": _with_meta(
            {
                "snapshot": ANY_OBJECT,
                "current": ANY_OBJECT,
                "rows": {
                    "type": "array",
                    "items": _obj(
                        {
                            "root": STRING,
                            "path": STRING,
                            "before": {},
                            "after": {},
                            "change": CHANGE_ROW,
                        },
                        {"lines": {"type": "array", "items": ANY_OBJECT}},
                    ),
                },
            }
        ),
    }
)

# -- parameters -----------------------------------------------------------------------------


def _path_param(name: str, description: str, slashes: bool) -> Schema:
    note = " It may contain `/` (percent-encode every reserved character)." if slashes else ""
    return {
        "name": name,
        "in": "path",
        "required": True,
        "description": description + note,
        "schema": ID,
    }


PARAMETERS: dict[str, Schema] = {
    "DeviceId": _path_param("device_id", "A device id of the token's tenant.", True),
    "DocId": _path_param("doc_id", "A Yjs document id of the token's tenant.", True),
    "EntityType": _path_param("entity_type", "A registered entity type.", False),
    "EntityId": _path_param("entity_id", "An entity id.", True),
    "SnapshotId": _path_param("snapshot_id", "A pre-merge archive snapshot.", False),
    "ConflictId": _path_param("conflict_id", "A conflict record.", False),
    "Owner": {
        "name": "owner",
        "in": "query",
        "required": False,
        "description": "The user of a user-scoped type; omitted for tenant-scoped types.",
        "schema": ID,
    },
    "StateVector": {
        "name": "sv",
        "in": "query",
        "required": False,
        "description": "A Yjs v1 state vector, base64url without padding.",
        "schema": {"type": "string", "pattern": "^[A-Za-z0-9_-]*$"},
    },
    "SyncTimestamp": {
        "name": "X-Sync-Timestamp",
        "in": "header",
        "required": True,
        "description": "Unix seconds; more than 300 s off the server's clock is "
        "`401 stale_timestamp`. Missing: `401 signature_required`.",
        "schema": {"type": "string", "pattern": "^[0-9]{1,12}$"},
    },
    "SyncSignature": {
        "name": "X-Sync-Signature",
        "in": "header",
        "required": True,
        "description": "Lowercase hex HMAC-SHA256 with the device secret (UTF-8) as key over "
        "`{timestamp}\\n{METHOD}\\n{path}\\n{device_id}\\n{sha256_hex(body)}` (the path as sent, "
        "without the query). Wrong: `401 bad_signature`; missing: `401 signature_required`.",
        "schema": {"type": "string", "pattern": "^[0-9a-f]{64}$"},
    },
    "SyncDeviceId": {
        "name": "X-Sync-Device-Id",
        "in": "header",
        "required": False,
        "description": "Optional; naming another device than the token's is `403 device_mismatch`.",
        "schema": ID,
    },
}
SIGNED = [_ref("parameters", n) for n in ("SyncTimestamp", "SyncSignature", "SyncDeviceId")]
UNSIGNED = [_ref("parameters", "SyncDeviceId")]


def _body(schema: Schema, media: str = "application/json") -> Schema:
    return {"required": True, "content": {media: {"schema": schema}}}


def _op(summary: str, responses: dict[str, Schema], **extra: Any) -> Schema:
    return {"summary": summary, "responses": responses, **extra}


# -- paths ----------------------------------------------------------------------------------

DEVICE_TOKEN = "Needs a device token whose device is registered to (`tid`, `sub`), not revoked."

SYNC_PATHS: dict[str, Schema] = {
    "/sync/v1/devices": {
        "post": _op(
            "Register a device (user token); returns its secret and device token.",
            _responses(
                {
                    "201": _json(
                        "Registered; a re-registration rotates the secret.",
                        _obj(
                            {"device_id": STRING, "device_secret": STRING, "device_token": STRING}
                        ),
                    )
                },
                409,
                413,
            ),
            tags=["devices"],
            requestBody=_body(
                _obj(
                    {"device_id": ID},
                    {"name": LABEL, "platform": LABEL},
                )
            ),
        )
    },
    "/sync/v1/devices/{device_id}": {
        "parameters": [_ref("parameters", "DeviceId")],
        "delete": _op(
            "Revoke a device (its owner's user token, or an admin token).",
            _responses({"204": NO_CONTENT}, 404),
            tags=["devices"],
        ),
    },
    "/sync/v1/push": {
        "post": _op(
            "Push mutations; one result per mutation, in order. " + DEVICE_TOKEN,
            _responses(
                {
                    "200": _json(
                        "The results.",
                        _obj(
                            {
                                "results": {
                                    "type": "array",
                                    "items": _ref("schemas", "MutationResult"),
                                }
                            }
                        ),
                    )
                },
                413,
                429,
            ),
            tags=["sync"],
            parameters=SIGNED,
            requestBody=_body(
                _obj(
                    {
                        "mutations": {
                            "type": "array",
                            "maxItems": 500,
                            "items": {
                                "oneOf": [
                                    _ref("schemas", "PutMutation"),
                                    _ref("schemas", "DeleteMutation"),
                                ]
                            },
                        }
                    }
                )
            ),
        )
    },
    "/sync/v1/pull": {
        "get": _op(
            "Pull changes after a cursor (everything visible without one). " + DEVICE_TOKEN,
            _responses(
                {
                    "200": _json(
                        "One page of changes.",
                        _obj(
                            {
                                "changes": {"type": "array", "items": _ref("schemas", "Entity")},
                                "cursor": STRING,
                                "has_more": {"type": "boolean"},
                            }
                        ),
                    )
                },
                410,
                429,
            ),
            tags=["sync"],
            parameters=[
                {
                    "name": "cursor",
                    "in": "query",
                    "required": False,
                    "description": "An opaque cursor from an earlier pull.",
                    "schema": STRING,
                },
                {
                    "name": "limit",
                    "in": "query",
                    "required": False,
                    "schema": {"type": "integer", "minimum": 1, "maximum": 1000, "default": 500},
                },
                *UNSIGNED,
            ],
        )
    },
    "/sync/v1/ack": {
        "post": _op(
            "Record the cursor the device has stored. " + DEVICE_TOKEN,
            _responses({"204": NO_CONTENT}, 410, 413, 429),
            tags=["sync"],
            parameters=SIGNED,
            requestBody=_body(_obj({"cursor": STRING})),
        )
    },
    "/sync/v1/docs/{doc_id}": {
        "parameters": [_ref("parameters", "DocId")],
        "get": _op(
            "What the client lacks of a Yjs document, as a Yjs v1 update. " + DEVICE_TOKEN,
            _responses(
                {
                    "200": {
                        "description": "A Yjs v1 update.",
                        "content": {
                            "application/octet-stream": {
                                "schema": {"type": "string", "format": "binary"}
                            }
                        },
                    }
                },
                429,
            ),
            tags=["docs"],
            parameters=[_ref("parameters", "StateVector"), *UNSIGNED],
        ),
        "post": _op(
            "Merge a Yjs v1 update (author, admin, service). " + DEVICE_TOKEN,
            _responses(
                {"200": _json("Merged.", _obj({"state_vector": STRING}))},
                413,
                429,
            ),
            tags=["docs"],
            parameters=[_ref("parameters", "StateVector"), *SIGNED],
            requestBody=_body({"type": "string", "format": "binary"}, "application/octet-stream"),
        ),
    },
    OPENAPI_PATH: {
        "get": {
            "summary": "This document.",
            "security": [],
            "tags": ["meta"],
            "responses": {"200": _json("OpenAPI 3.1.", ANY_OBJECT)},
        }
    },
}


def _snapshot_paths(base: str, params: list[Schema], tag: str, doc: bool) -> dict[str, Schema]:
    kind = "Doc" if doc else "Entity"
    snap = [*params, _ref("parameters", "SnapshotId")]
    restored = (
        _obj({"pre_restore_snapshot_id": STRING})
        if doc
        else _obj({"pre_restore_snapshot_id": STRING, "entity": _ref("schemas", "Entity")})
    )
    return {
        f"{base}/snapshots": {
            "parameters": params,
            "get": _op(
                "Pre-merge snapshots, newest first.",
                _responses({"200": _json("The list.", _ref("schemas", "SnapshotList"))}, 404),
                tags=[tag],
            ),
        },
        f"{base}/snapshots/{{snapshot_id}}": {
            "parameters": snap,
            "get": _op(
                "A snapshot's metadata and content.",
                _responses(
                    {"200": _json("The snapshot.", _ref("schemas", f"{kind}Snapshot"))}, 404
                ),
                tags=[tag],
            ),
        },
        f"{base}/snapshots/{{snapshot_id}}/diff": {
            "parameters": snap,
            "get": _op(
                "Side-by-side diff of a snapshot against the current content.",
                _responses(
                    {"200": _json("The diff.", _ref("schemas", f"{kind}SnapshotDiff"))}, 404
                ),
                tags=[tag],
            ),
        },
        f"{base}/snapshots/{{snapshot_id}}/restore": {
            "parameters": snap,
            "post": _op(
                "Restore the snapshot as a new forward change; the state before is archived.",
                _responses({"200": _json("Restored.", restored)}, 404),
                tags=[tag],
            ),
        },
    }


ENTITY = "/admin/v1/entities/{entity_type}/{entity_id}"
ENTITY_PARAMS = [_ref("parameters", n) for n in ("EntityType", "EntityId", "Owner")]
ADMIN_PATHS: dict[str, Schema] = {
    ENTITY: {
        "parameters": ENTITY_PARAMS,
        "put": _op(
            "Write server-authored state; it reaches devices on pull.",
            _responses({"200": _json("The stored entity.", _ref("schemas", "Entity"))}, 404, 413),
            tags=["admin"],
            requestBody=_body(ANY_OBJECT),
        ),
        "delete": _op(
            "Delete an entity as the server (a tombstone devices pull).",
            _responses({"204": NO_CONTENT}, 404),
            tags=["admin"],
        ),
    },
    **_snapshot_paths(ENTITY, ENTITY_PARAMS, "admin", doc=False),
    **_snapshot_paths("/admin/v1/docs/{doc_id}", [_ref("parameters", "DocId")], "admin", doc=True),
    "/admin/v1/conflicts": {
        "get": _op(
            "Conflict records of the tenant.",
            _responses(
                {
                    "200": _json(
                        "The list.",
                        _obj(
                            {"conflicts": {"type": "array", "items": _ref("schemas", "Conflict")}}
                        ),
                    )
                }
            ),
            tags=["admin"],
            parameters=[
                {
                    "name": "status",
                    "in": "query",
                    "required": False,
                    "schema": {"type": "string", "enum": ["open", "resolved"]},
                }
            ],
        )
    },
    "/admin/v1/conflicts/{conflict_id}": {
        "parameters": [_ref("parameters", "ConflictId")],
        "get": _op(
            "One conflict record.",
            _responses({"200": _json("The record.", _ref("schemas", "Conflict"))}, 404),
            tags=["admin"],
        ),
    },
    "/admin/v1/conflicts/{conflict_id}/resolve": {
        "parameters": [_ref("parameters", "ConflictId")],
        "post": _op(
            "Resolve a conflict; the result reaches devices on pull.",
            _responses(
                {"200": _json("The resolved entity.", _ref("schemas", "Entity"))}, 404, 409, 413
            ),
            tags=["admin"],
            requestBody=_body(
                _obj(
                    {"choice": {"type": "string", "enum": ["server", "client", "custom"]}},
                    {"payload": _nullable(ANY_OBJECT)},
                )
            ),
        ),
    },
    "/admin/v1/devices": {
        "get": _op(
            "Device health of the tenant.",
            _responses(
                {
                    "200": _json(
                        "The devices.",
                        _obj(
                            {
                                "devices": {
                                    "type": "array",
                                    "items": _obj(
                                        {
                                            "device_id": STRING,
                                            "user_id": STRING,
                                            "name": STRING,
                                            "platform": STRING,
                                            "last_seen_at": _nullable(TIME),
                                            "last_ack_at": _nullable(TIME),
                                            "lag": {"type": "integer", "minimum": 0},
                                            "full_resyncs": {"type": "integer", "minimum": 0},
                                            "revoked": {"type": "boolean"},
                                        }
                                    ),
                                }
                            }
                        ),
                    )
                }
            ),
            tags=["admin"],
        )
    },
    "/admin/v1/devices/{device_id}": {
        "parameters": [_ref("parameters", "DeviceId")],
        "delete": _op(
            "Revoke a device; its open room connections close.",
            _responses({"204": NO_CONTENT}, 404),
            tags=["admin"],
        ),
    },
}

DESCRIPTION = """\
Offline-first sync: HTTP push / pull / ack for entities, Yjs documents over HTTP, and the
admin API. Times are RFC 3339 in UTC; ids are opaque strings of 1..200 characters.

Every error is `{"error": {"code", "message"}}` (a 410 also has `reason`). Requests with a
body under /sync/v1 (except device registration) carry `X-Sync-Timestamp` and
`X-Sync-Signature` (HMAC-SHA256 with the device secret).

Rooms (not an HTTP operation): `ws://HOST:PORT/sync/v1/rooms/{doc_id}?token=JWT`, the standard
y-websocket protocol; refusals happen before the upgrade (401, 403).
"""

DOCUMENT: dict[str, Any] = {
    "openapi": "3.1.0",
    "info": {"title": "crdt-sync", "version": "1", "description": DESCRIPTION},
    "security": [{"bearerAuth": []}],
    "tags": [{"name": n} for n in ("devices", "sync", "docs", "admin", "meta")],
    "paths": {**SYNC_PATHS, **ADMIN_PATHS},
    "components": {
        "securitySchemes": {
            "bearerAuth": {
                "type": "http",
                "scheme": "bearer",
                "bearerFormat": "JWT",
                "description": "Claims `sub`, `tid`, `roles`, `exp`, and `did` for device tokens.",
            }
        },
        "schemas": SCHEMAS,
        "parameters": PARAMETERS,
        "responses": {ERROR_NAMES[s]: _error_response(s) for s in ERROR_NAMES},
    },
}


def document() -> dict[str, Any]:
    """A fresh copy of the document (callers may change theirs)."""
    return copy.deepcopy(DOCUMENT)


@bp.get(OPENAPI_PATH)
async def openapi_json() -> Response:
    return jsonify(DOCUMENT)
