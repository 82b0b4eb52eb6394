"""/admin/v1 routes (role `admin`, always within the token's tenant): entities, snapshots,
conflicts, devices. Document snapshots are added by the rooms module."""

from __future__ import annotations

import json
from typing import Any

from quart import Blueprint, Response, jsonify, request

from crdt_sync.errors import InvalidInput, NotFound
from crdt_sync.model import EntityKey, check_id, rfc3339
from crdt_sync.ports import Snapshot
from crdt_sync.services import entity_to_json
from protocol import wire
from web.auth import Principal
from web.runtime import authenticate, request_body, require_bound_device, runtime
from web.runtime import revoke_device as revoke

bp = Blueprint("admin_v1", __name__, url_prefix="/admin/v1")
bp.before_request(require_bound_device)  # a revoked device's token keeps no admin access


def admin() -> Principal:
    """The admin principal; then every id in the route is checked (1..200 characters, no NUL:
    a NUL reached PostgreSQL as a 500, an over-long id was looked up as if valid)."""
    principal = authenticate("admin")
    for name, value in (request.view_args or {}).items():
        check_id(value, name)
    return principal


def snapshot_meta(s: Snapshot) -> dict[str, Any]:
    return {
        "snapshot_id": s.snapshot_id,
        "created_at": rfc3339(s.created_at),
        "expires_at": rfc3339(s.expires_at),
        "reason": s.reason,
        "size_bytes": s.size_bytes,
        "device_id": s.device_id or None,
    }


def _entity_key(principal: Principal, entity_type: str, entity_id: str) -> EntityKey:
    owner = request.args.get("owner", "")
    return runtime().service.admin_key(principal.tenant_id, entity_type, entity_id, owner)


@bp.get("/entities/<entity_type>/<path:entity_id>/snapshots")
async def entity_snapshots(entity_type: str, entity_id: str) -> Response:
    principal = admin()
    key = _entity_key(principal, entity_type, entity_id)
    found = await runtime().store.list_snapshots(
        key.tenant_id, "entity", key.entity_type, key.entity_id, key.owner
    )
    return jsonify({"snapshots": [snapshot_meta(s) for s in found]})


async def _entity_snapshot(entity_type: str, entity_id: str, snapshot_id: str) -> Snapshot:
    principal = admin()
    key = _entity_key(principal, entity_type, entity_id)
    snap = await runtime().store.get_snapshot(principal.tenant_id, snapshot_id)
    if (
        snap is None
        or snap.kind != "entity"
        or (snap.entity_type, snap.entity_id, snap.owner)
        != (key.entity_type, key.entity_id, key.owner)
    ):
        raise NotFound("no such snapshot")
    return snap


@bp.get("/entities/<entity_type>/<path:entity_id>/snapshots/<snapshot_id>")
async def entity_snapshot(entity_type: str, entity_id: str, snapshot_id: str) -> Response:
    snap = await _entity_snapshot(entity_type, entity_id, snapshot_id)
    return jsonify({**snapshot_meta(snap), "content": json.loads(snap.content)})


@bp.get("/entities/<entity_type>/<path:entity_id>/snapshots/<snapshot_id>/diff")
async def entity_snapshot_diff(entity_type: str, entity_id: str, snapshot_id: str) -> Response:
    snap = await _entity_snapshot(entity_type, entity_id, snapshot_id)
    rt = runtime()
    before = json.loads(snap.content)
    key = EntityKey(snap.tenant_id, snap.entity_type, snap.entity_id, snap.owner)
    current = await rt.store.get_entity(key)
    now_payload = None if current is None else current.payload
    return jsonify(
        {
            **snapshot_meta(snap),
            "snapshot": before.get("payload"),
            "current": now_payload,
            "rows": field_diff(before.get("payload") or {}, now_payload or {}),
        }
    )


def field_diff(old: dict[str, Any], new: dict[str, Any]) -> list[dict[str, Any]]:
    """Side by side, one row per top-level field."""
    rows = []
    for name in sorted(old.keys() | new.keys()):
        a, b = old.get(name), new.get(name)
        change = (
            "added"
            if name not in old
            else "removed"
            if name not in new
            else "same"
            if a == b
            else "changed"
        )
        rows.append({"path": name, "before": a, "after": b, "change": change})
    return rows


@bp.post("/entities/<entity_type>/<path:entity_id>/snapshots/<snapshot_id>/restore")
async def entity_snapshot_restore(entity_type: str, entity_id: str, snapshot_id: str) -> Response:
    snap = await _entity_snapshot(entity_type, entity_id, snapshot_id)
    pre_id, state = await runtime().service.restore_entity(snap.tenant_id, snap.snapshot_id)
    return jsonify({"pre_restore_snapshot_id": pre_id, "entity": entity_to_json(state)})


@bp.put("/entities/<entity_type>/<path:entity_id>")
async def put_entity(entity_type: str, entity_id: str) -> Response:
    principal = admin()
    key = _entity_key(principal, entity_type, entity_id)
    payload = wire.parse_object(await request_body())
    state = await runtime().service.admin_write(key, payload)
    return jsonify(entity_to_json(state))


@bp.delete("/entities/<entity_type>/<path:entity_id>")
async def delete_entity(entity_type: str, entity_id: str) -> tuple[str, int]:
    principal = admin()
    key = _entity_key(principal, entity_type, entity_id)
    await runtime().service.admin_write(key, None)
    return "", 204


@bp.get("/conflicts")
async def list_conflicts() -> Response:
    principal = admin()
    status = request.args.get("status")
    if status not in (None, "open", "resolved"):
        raise InvalidInput("status must be 'open' or 'resolved'")
    found = await runtime().store.list_conflicts(principal.tenant_id, status)
    return jsonify({"conflicts": [c.to_json() for c in found]})


@bp.get("/conflicts/<conflict_id>")
async def get_conflict(conflict_id: str) -> Response:
    principal = admin()
    record = await runtime().store.get_conflict(principal.tenant_id, conflict_id)
    if record is None:
        raise NotFound("no such conflict")
    return jsonify(record.to_json())


@bp.post("/conflicts/<conflict_id>/resolve")
async def resolve_conflict(conflict_id: str) -> Response:
    principal = admin()
    choice, payload = wire.parse_resolution(await request_body())
    state = await runtime().service.resolve_conflict(
        principal.tenant_id, conflict_id, choice, payload
    )
    return jsonify(entity_to_json(state))


@bp.get("/devices")
async def list_devices() -> Response:
    principal = admin()
    rt = runtime()
    head, _ = await rt.store.head(principal.tenant_id)
    out = []
    for d in await rt.store.list_devices(principal.tenant_id):
        out.append(
            {
                "device_id": d.registration.device_id,
                "user_id": d.registration.user_id,
                "name": d.registration.name,
                "platform": d.registration.platform,
                "last_seen_at": rfc3339(d.last_seen_at) if d.last_seen_at else None,
                "last_ack_at": rfc3339(d.last_ack_at) if d.last_ack_at else None,
                "lag": max(0, head - d.last_ack_seq),
                "full_resyncs": d.full_resyncs,
                "revoked": d.registration.revoked,
            }
        )
    return jsonify({"devices": out})


@bp.delete("/devices/<path:device_id>")
async def revoke_device(device_id: str) -> tuple[str, int]:
    principal = admin()
    await revoke(principal.tenant_id, device_id, None)
    return "", 204
