"""Rows <-> domain objects."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

from crdt_sync.canonical import canonical_json
from crdt_sync.model import (
    ConflictRecord,
    ConflictStatus,
    EntityKey,
    EntityState,
    SyncRegistration,
)
from crdt_sync.ports import DeviceHealth, Snapshot
from crdt_sync.vector_clock import VectorClock
from storage.schema import entities


def to_ts(moment: datetime) -> float:
    return moment.timestamp()


def from_ts(value: float | None) -> datetime | None:
    return None if value is None else datetime.fromtimestamp(value, UTC)


# `entities`' columns in table order: the order of an entity row's values and of a
# `select(entities)` row
ENTITY_COLUMNS = tuple(entities.c.keys())


def entity_values(state: EntityState, now: datetime) -> tuple[Any, ...]:
    """An entity's row, as values in `ENTITY_COLUMNS` order."""
    key = state.key
    payload = state.payload
    return (
        key.tenant_id,
        key.entity_type,
        key.entity_id,
        key.owner,
        None if payload is None else state.payload_json or canonical_json(payload),
        state.clock.canonical,
        state.deleted,
        state.ts,
        state.device_id,
        state.seq,
        to_ts(now),
    )


def entity_from_row(row: Any) -> EntityState:
    """An entity from a row of `select(entities)` (or values in `ENTITY_COLUMNS` order)."""
    tenant_id, entity_type, entity_id, owner, payload, clock, deleted, ts, device, seq, _ = row
    return EntityState.from_stored(
        EntityKey.from_stored(tenant_id, entity_type, entity_id, owner),
        None if payload is None else json.loads(payload),
        VectorClock.from_stored(clock),
        bool(deleted),
        int(ts),
        device,
        int(seq),
    )


def device_from_row(row: Any) -> DeviceHealth:
    """A device from a row of `select(devices)` (values in the table's column order)."""
    (
        tenant_id,
        device_id,
        user_id,
        name,
        platform,
        generation,
        revoked,
        created_at,
        last_seen_at,
        last_ack_at,
        last_ack_seq,
        full_resyncs,
    ) = row
    created = from_ts(created_at)
    assert created is not None
    return DeviceHealth(
        registration=SyncRegistration(
            tenant_id=tenant_id,
            device_id=device_id,
            user_id=user_id,
            generation=int(generation),
            revoked=bool(revoked),
            name=name,
            platform=platform,
        ),
        created_at=created,
        last_seen_at=from_ts(last_seen_at),
        last_ack_at=from_ts(last_ack_at),
        last_ack_seq=int(last_ack_seq),
        full_resyncs=int(full_resyncs),
    )


def conflict_row(record: ConflictRecord) -> dict[str, Any]:
    data = {
        "server_payload": record.server_payload,
        "server_clock": record.server_clock.to_json(),
        "client_payload": record.client_payload,
        "client_clock": record.client_clock.to_json(),
        "client_device": record.client_device,
        "resolved_payload": record.resolved_payload,
    }
    return {
        "conflict_id": record.conflict_id,
        "tenant_id": record.key.tenant_id,
        "entity_type": record.key.entity_type,
        "entity_id": record.key.entity_id,
        "owner": record.key.owner,
        "status": record.status.value,
        "created_at": to_ts(record.created_at),
        "resolved_at": None if record.resolved_at is None else to_ts(record.resolved_at),
        "resolution": record.resolution,
        "data": canonical_json(data),
    }


def conflict_from_row(row: Any) -> ConflictRecord:
    data = json.loads(row.data)
    created = from_ts(row.created_at)
    assert created is not None
    return ConflictRecord(
        conflict_id=row.conflict_id,
        key=EntityKey(row.tenant_id, row.entity_type, row.entity_id, row.owner),
        server_payload=data["server_payload"],
        server_clock=VectorClock.of(data["server_clock"]),
        client_payload=data["client_payload"],
        client_clock=VectorClock.of(data["client_clock"]),
        client_device=data["client_device"],
        created_at=created,
        status=ConflictStatus(row.status),
        resolved_at=from_ts(row.resolved_at),
        resolution=row.resolution,
        resolved_payload=data.get("resolved_payload"),
    )


def snapshot_row(snapshot: Snapshot) -> dict[str, Any]:
    return {
        "snapshot_id": snapshot.snapshot_id,
        "tenant_id": snapshot.tenant_id,
        "kind": snapshot.kind,
        "entity_type": snapshot.entity_type,
        "entity_id": snapshot.entity_id,
        "owner": snapshot.owner,
        "created_at": to_ts(snapshot.created_at),
        "expires_at": to_ts(snapshot.expires_at),
        "reason": snapshot.reason,
        "device_id": snapshot.device_id,
        "content": snapshot.content,
    }


def snapshot_from_row(row: Any) -> Snapshot:
    created, expires = from_ts(row.created_at), from_ts(row.expires_at)
    assert created is not None and expires is not None
    return Snapshot(
        snapshot_id=row.snapshot_id,
        tenant_id=row.tenant_id,
        kind=row.kind,
        entity_type=row.entity_type,
        entity_id=row.entity_id,
        owner=row.owner,
        created_at=created,
        expires_at=expires,
        reason=row.reason,
        content=bytes(row.content),
        device_id=row.device_id,
    )
