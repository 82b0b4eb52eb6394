"""The ports the application services are written against (implemented in `storage`)."""

from __future__ import annotations

from collections.abc import Sequence
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Protocol

from crdt_sync.model import (
    Change,
    ConflictRecord,
    EntityKey,
    EntityState,
    MutationResult,
    SyncRegistration,
)


class Clock(Protocol):
    def now(self) -> datetime:
        """An aware UTC datetime."""
        ...


class SystemClock:
    def now(self) -> datetime:
        return datetime.now(UTC)


@dataclass
class ManualClock:
    """A clock tests move by hand (the 7-days-offline and retention tests)."""

    moment: datetime = field(default_factory=lambda: datetime.now(UTC))

    def now(self) -> datetime:
        return self.moment

    def advance(self, **delta: float) -> None:
        self.moment = self.moment + timedelta(**delta)


@dataclass(frozen=True)
class Snapshot:
    """A pre-merge archive entry. `kind` is 'entity' (content: JSON of the state) or 'doc'
    (content: the full Yjs v1 update of the document before the merge)."""

    snapshot_id: str
    tenant_id: str
    kind: str
    entity_type: str
    entity_id: str
    owner: str
    created_at: datetime
    expires_at: datetime
    reason: str
    content: bytes
    device_id: str = ""

    @property
    def size_bytes(self) -> int:
        return len(self.content)


@dataclass(frozen=True)
class DeviceHealth:
    registration: SyncRegistration
    created_at: datetime
    last_seen_at: datetime | None
    last_ack_at: datetime | None
    last_ack_seq: int
    full_resyncs: int


@dataclass(frozen=True)
class DocUpdate:
    id: int
    update: bytes


class ReadTx(Protocol):
    """What a push reads, without the write lock (an optimistic push plans on it)."""

    async def get_entities(self, keys: Sequence[EntityKey]) -> dict[EntityKey, EntityState]: ...

    async def entity_seqs(self, keys: Sequence[EntityKey]) -> dict[EntityKey, int]: ...

    async def get_results(
        self, device_id: str, mutation_ids: Sequence[str]
    ) -> dict[str, MutationResult]: ...


class WriteTx(Protocol):
    """One write transaction of one tenant. Writes of a tenant are serialised, and the
    change-log positions (`seq`) they take become visible in the order they were assigned."""

    async def get_entities(self, keys: Sequence[EntityKey]) -> dict[EntityKey, EntityState]:
        """Current states (including this transaction's own writes) of the keys that exist."""
        ...

    async def entity_seqs(self, keys: Sequence[EntityKey]) -> dict[EntityKey, int]:
        """The seq of each key that exists: what `get_entities` would give, without decoding."""
        ...

    async def put_entity(self, state: EntityState) -> EntityState:
        """Store the new current state at the next seq; returns it with that seq."""
        ...

    async def get_results(
        self, device_id: str, mutation_ids: Sequence[str]
    ) -> dict[str, MutationResult]: ...

    async def put_results(self, device_id: str, results: Sequence[MutationResult]) -> None: ...

    async def put_conflict(self, record: ConflictRecord) -> None: ...

    async def get_conflict(self, conflict_id: str) -> ConflictRecord | None: ...

    async def archive(self, snapshot: Snapshot) -> None: ...

    async def append_doc_updates(self, doc_id: str, updates: Sequence[bytes]) -> int:
        """Append Yjs updates to the doc's log; returns the last one's id."""
        ...


class SyncStore(Protocol):
    def write(self, tenant_id: str, now: datetime) -> AbstractAsyncContextManager[WriteTx]: ...

    def reading(self, tenant_id: str) -> AbstractAsyncContextManager[ReadTx]:
        """Reads of one tenant's entities and results outside any write transaction."""
        ...

    async def head(self, tenant_id: str) -> tuple[int, int]:
        """(head seq, tombstone horizon): every change at or below head is committed."""
        ...

    async def read_changes(
        self,
        tenant_id: str,
        user_id: str,
        after_seq: int,
        limit: int,
        skip_tombstones_upto: int,
    ) -> list[Change]:
        """Entities of the tenant (owner '' or `user_id`) with seq > after_seq, in seq order;
        tombstones with seq <= skip_tombstones_upto are left out."""
        ...

    async def get_entity(self, key: EntityKey) -> EntityState | None: ...

    async def get_device(self, tenant_id: str, device_id: str) -> DeviceHealth | None: ...

    async def save_device(self, registration: SyncRegistration, now: datetime) -> None: ...

    async def list_devices(self, tenant_id: str) -> list[DeviceHealth]: ...

    async def touch_device(self, tenant_id: str, device_id: str, now: datetime) -> None: ...

    async def record_ack(self, tenant_id: str, device_id: str, seq: int, now: datetime) -> None: ...

    async def record_full_resync(self, tenant_id: str, device_id: str) -> None: ...

    async def list_conflicts(self, tenant_id: str, status: str | None) -> list[ConflictRecord]: ...

    async def get_conflict(self, tenant_id: str, conflict_id: str) -> ConflictRecord | None: ...

    async def list_snapshots(
        self, tenant_id: str, kind: str, entity_type: str, entity_id: str, owner: str
    ) -> list[Snapshot]: ...

    async def get_snapshot(self, tenant_id: str, snapshot_id: str) -> Snapshot | None: ...

    async def prune(self, now: datetime, tombstone_retention_s: float) -> dict[str, int]: ...

    async def load_doc(self, tenant_id: str, doc_id: str) -> tuple[bytes | None, list[DocUpdate]]:
        """The doc's checkpoint (a Yjs v1 update, or None) and the updates after it."""
        ...

    async def compact_doc(
        self, tenant_id: str, doc_id: str, checkpoint: bytes, upto_update_id: int, now: datetime
    ) -> None:
        """Replace the checkpoint and the updates with id <= upto_update_id by `checkpoint`."""
        ...

    async def doc_stored_bytes(self, tenant_id: str, doc_id: str) -> int: ...

    async def ping(self) -> None: ...

    async def close(self) -> None: ...
