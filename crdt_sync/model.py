"""Aggregates and value objects of the sync domain, validated on construction."""

from __future__ import annotations

import enum
import functools
import json
from dataclasses import dataclass, field
from datetime import datetime
from json.encoder import encode_basestring  # type: ignore[attr-defined]
from typing import Any, Literal, TypeVar

from crdt_sync.canonical import canonical_json
from crdt_sync.errors import InvalidInput
from crdt_sync.vector_clock import VectorClock

MAX_ID = 200
T = TypeVar("T")
Op = Literal["put", "delete"]
Scope = Literal["user", "tenant"]


def check_id(value: Any, what: str) -> str:
    """Ids are opaque strings of 1..200 characters: data, never parsed."""
    if not isinstance(value, str) or not 0 < len(value) <= MAX_ID:
        raise InvalidInput(f"{what} must be a string of 1..{MAX_ID} characters")
    if "\x00" in value:
        raise InvalidInput(f"{what} must not contain NUL")
    return value


def _unchecked(cls: type[T], **fields: Any) -> T:
    """An instance of a frozen dataclass (no slots) from all of its fields, without running
    `__post_init__`: only for values that passed it before, such as rows the store wrote."""
    obj = object.__new__(cls)
    obj.__dict__.update(fields)
    return obj


def check_count(value: Any, what: str, minimum: int = 0) -> int:
    """Counters and positions are ints (not bools) of at least `minimum`."""
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise InvalidInput(f"{what} must be an integer of at least {minimum}")
    return value


class Status(enum.StrEnum):
    APPLIED = "applied"
    MERGED = "merged"
    CONFLICT = "conflict"
    STALE = "stale"
    DUPLICATE = "duplicate"
    REJECTED = "rejected"


@dataclass(frozen=True)
class EntityKey:
    """Where an entity lives: tenant, type, id and owner ('' for tenant-scoped types)."""

    tenant_id: str
    entity_type: str
    entity_id: str
    owner: str = ""

    def __post_init__(self) -> None:
        check_id(self.tenant_id, "tenant id")
        check_id(self.entity_type, "entity_type")
        check_id(self.entity_id, "entity_id")
        if self.owner != "":
            check_id(self.owner, "owner")

    @classmethod
    def from_stored(cls, tenant_id: str, entity_type: str, entity_id: str, owner: str) -> EntityKey:
        """A key as the store holds it (it passed the checks when written): not checked again,
        which a push would do for each of the entities it reads."""
        return _unchecked(
            cls, tenant_id=tenant_id, entity_type=entity_type, entity_id=entity_id, owner=owner
        )


@dataclass(frozen=True)
class EntityState:
    """The stored current state of one entity; a delete leaves a tombstone (deleted=True)."""

    key: EntityKey
    payload: dict[str, Any] | None
    clock: VectorClock
    deleted: bool = False
    ts: int = 0  # hybrid logical time (ms) of the write that produced it
    device_id: str = ""  # who wrote it ('' for the server)
    seq: int = 0  # position in the tenant's commit-ordered change log
    # `canonical_json(payload)` where the writer already had it (a push measured it), so the
    # store does not encode the same payload again; not part of the state's identity.
    payload_json: str | None = field(default=None, compare=False, repr=False)

    def __post_init__(self) -> None:
        if not isinstance(self.key, EntityKey) or not isinstance(self.clock, VectorClock):
            raise InvalidInput("an entity state has an EntityKey and a VectorClock")
        if self.deleted and self.payload is not None:
            raise InvalidInput("a tombstone has no payload")
        if not self.deleted and not isinstance(self.payload, dict):
            raise InvalidInput("a live entity has an object payload")
        check_count(self.ts, "ts")
        check_count(self.seq, "seq")

    @property
    def op(self) -> Op:
        return "delete" if self.deleted else "put"

    @classmethod
    def from_stored(
        cls,
        key: EntityKey,
        payload: dict[str, Any] | None,
        clock: VectorClock,
        deleted: bool,
        ts: int,
        device_id: str,
        seq: int,
    ) -> EntityState:
        """A state as the store holds it (it passed the checks when written): not checked
        again."""
        return _unchecked(
            cls,
            key=key,
            payload=payload,
            clock=clock,
            deleted=deleted,
            ts=ts,
            device_id=device_id,
            seq=seq,
            payload_json=None,
        )

    def at(self, seq: int) -> EntityState:
        """This state at log position `seq`: a copy that skips the checks it already passed
        (`dataclasses.replace` would run them all again, for every entity a push writes)."""
        check_count(seq, "seq")
        return _unchecked(EntityState, **{**self.__dict__, "seq": seq})


@dataclass(frozen=True, slots=True)
class Change:
    """One entry of a pull page as the store holds it: payload and clock stay the canonical
    JSON they were stored as (`canonical_json`), so a page of hundreds of changes is served
    without decoding and re-encoding each of them; `payload` decodes on demand."""

    entity_type: str
    entity_id: str
    deleted: bool
    seq: int
    payload_json: str | None
    clock_json: str

    @property
    def op(self) -> Op:
        return "delete" if self.deleted else "put"

    @property
    def payload(self) -> dict[str, Any] | None:
        return None if self.payload_json is None else json.loads(self.payload_json)


@dataclass(frozen=True)
class LocalMutation:
    """One mutation a device made offline, as pushed."""

    mutation_id: str
    entity_type: str
    entity_id: str
    op: Op
    payload: dict[str, Any] | None
    clock: VectorClock
    ts: int | None = None

    def __post_init__(self) -> None:
        check_id(self.mutation_id, "mutation_id")
        check_id(self.entity_type, "entity_type")
        check_id(self.entity_id, "entity_id")
        if self.op not in ("put", "delete"):
            raise InvalidInput("op must be 'put' or 'delete'")
        if self.op == "put" and not isinstance(self.payload, dict):
            raise InvalidInput("a put needs an object payload")
        if self.op == "delete" and self.payload is not None:
            raise InvalidInput("a delete has a null payload")
        if not isinstance(self.clock, VectorClock) or not self.clock:
            raise InvalidInput("clock must name at least one node")
        if self.ts is not None and (
            isinstance(self.ts, bool) or not isinstance(self.ts, int) or self.ts < 0
        ):
            raise InvalidInput("ts must be a non-negative integer (ms since the epoch)")


@dataclass(frozen=True)
class MutationResult:
    mutation_id: str
    status: Status
    clock: VectorClock | None = None
    conflict_id: str | None = None
    error: dict[str, str] | None = None

    @functools.cached_property
    def encoded(self) -> str:
        """`canonical_json(self.to_json())`, once: a push stores it as the idempotency record
        and sends it back in the response. Assembled in sorted key order around the clock's
        own remembered encoding (the stored entity's row already made it)."""
        parts = ['{"clock":', "null" if self.clock is None else self.clock.canonical]
        if self.conflict_id is not None:
            parts += [',"conflict_id":', encode_basestring(self.conflict_id)]
        if self.error is not None:
            parts += [',"error":', canonical_json(self.error)]
        parts += [',"mutation_id":', encode_basestring(self.mutation_id)]
        parts += [',"status":', encode_basestring(self.status.value), "}"]
        return "".join(parts)

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "mutation_id": self.mutation_id,
            "status": self.status.value,
            "clock": self.clock.to_json() if self.clock is not None else None,
        }
        if self.conflict_id is not None:
            out["conflict_id"] = self.conflict_id
        if self.error is not None:
            out["error"] = self.error
        return out

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> MutationResult:
        clock = data.get("clock")
        return cls(
            mutation_id=data["mutation_id"],
            status=Status(data["status"]),
            clock=VectorClock.from_json(clock) if clock is not None else None,
            conflict_id=data.get("conflict_id"),
            error=data.get("error"),
        )


@dataclass(frozen=True)
class SyncRegistration:
    """A device's binding to (tenant, user). Revoked devices never sync again."""

    tenant_id: str
    device_id: str
    user_id: str
    generation: int = 1  # bumps on every re-registration, rotating the device secret
    revoked: bool = False
    name: str = ""
    platform: str = ""

    def __post_init__(self) -> None:
        check_id(self.tenant_id, "tenant id")
        check_id(self.device_id, "device_id")
        check_id(self.user_id, "user id")
        check_count(self.generation, "generation", 1)

    def owned_by(self, tenant_id: str, user_id: str) -> bool:
        return self.tenant_id == tenant_id and self.user_id == user_id


@dataclass(frozen=True)
class SyncCursor:
    """A position in a tenant's change log, issued to one device.

    `seq` is the last change the device has been sent. While `snapshot_seq` is set the device
    is still paging through the initial state taken at that seq: tombstones at or below it are
    skipped (the device never had those entities), later ones are sent.
    """

    tenant_id: str
    device_id: str
    seq: int
    scope: str
    issued_at: int  # unix seconds
    snapshot_seq: int | None = None

    def __post_init__(self) -> None:
        check_id(self.tenant_id, "cursor tenant id")
        check_id(self.device_id, "cursor device id")
        if not isinstance(self.scope, str):
            raise InvalidInput("cursor scope is a string")
        check_count(self.seq, "cursor seq")
        check_count(self.issued_at, "cursor issued_at")
        if self.snapshot_seq is not None:
            check_count(self.snapshot_seq, "cursor snapshot seq")


class ConflictStatus(enum.StrEnum):
    OPEN = "open"
    RESOLVED = "resolved"


@dataclass(frozen=True)
class ConflictRecord:
    """Both sides of a concurrent write under a `manual` policy, until an admin resolves it."""

    conflict_id: str
    key: EntityKey
    server_payload: dict[str, Any] | None
    server_clock: VectorClock
    client_payload: dict[str, Any] | None
    client_clock: VectorClock
    client_device: str
    created_at: datetime
    status: ConflictStatus = ConflictStatus.OPEN
    resolved_at: datetime | None = None
    resolution: str | None = None
    resolved_payload: dict[str, Any] | None = field(default=None)

    def __post_init__(self) -> None:
        check_id(self.conflict_id, "conflict_id")
        if (self.status is ConflictStatus.RESOLVED) != (self.resolved_at is not None):
            raise InvalidInput("a conflict has resolved_at exactly when it is resolved")
        if self.status is ConflictStatus.RESOLVED and self.resolution not in (
            "server",
            "client",
            "custom",
        ):
            raise InvalidInput("a resolved conflict names its choice")

    def to_json(self) -> dict[str, Any]:
        return {
            "conflict_id": self.conflict_id,
            "entity_type": self.key.entity_type,
            "entity_id": self.key.entity_id,
            "owner": self.key.owner or None,
            "status": self.status.value,
            "created_at": rfc3339(self.created_at),
            "resolved_at": rfc3339(self.resolved_at) if self.resolved_at else None,
            "resolution": self.resolution,
            "server": {"payload": self.server_payload, "clock": self.server_clock.to_json()},
            "client": {
                "payload": self.client_payload,
                "clock": self.client_clock.to_json(),
                "device_id": self.client_device,
            },
        }


def rfc3339(moment: datetime) -> str:
    return moment.strftime("%Y-%m-%dT%H:%M:%SZ")


def same_json(a: Any, b: Any) -> bool:
    """`canonical_json(a) == canonical_json(b)` for decoded JSON, without encoding either:
    types must match too (1 is not 1.0, true is not 1, 0.0 is not -0.0)."""
    if type(a) is not type(b):
        return False
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(same_json(v, b[k]) for k, v in a.items())
    if isinstance(a, list):
        return len(a) == len(b) and all(map(same_json, a, b))
    if isinstance(a, float):
        return repr(a) == repr(b)
    return bool(a == b)
