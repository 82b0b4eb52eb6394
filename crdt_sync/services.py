"""Application services: push, pull, ack, devices, admin writes, conflict resolution, restore.

Written against the ports in `ports.py`; the web layer authenticates, decodes and calls these.
"""

from __future__ import annotations

import itertools
import json
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from typing import Any

from crdt_sync.canonical import canonical_json
from crdt_sync.errors import Conflict, Forbidden, InvalidInput, NotFound, ResyncRequired
from crdt_sync.model import (
    Change,
    ConflictRecord,
    ConflictStatus,
    EntityKey,
    EntityState,
    LocalMutation,
    MutationResult,
    Status,
    SyncCursor,
    SyncRegistration,
    check_id,
)
from crdt_sync.policies import Decision, Write
from crdt_sync.ports import Clock, ReadTx, Snapshot, SyncStore, WriteTx
from crdt_sync.registry import MAX_PAYLOAD_BYTES, EntityRegistry, EntityType
from crdt_sync.vector_clock import SERVER_NODE, Ordering, VectorClock

DAY = 86400.0

# Snapshots taken in one transaction share `created_at`; the archive lists newest first by
# (created_at, snapshot_id), so ids must grow in creation order: a per-process counter seeded
# from the wall clock (16 hex digits) plus randomness.
_snapshot_seq = itertools.count(time.time_ns())


def new_snapshot_id() -> str:
    return f"{next(_snapshot_seq):016x}{uuid.uuid4().hex[:16]}"


@dataclass(frozen=True)
class Settings:
    archive_retention_s: float = 30 * DAY
    tombstone_retention_s: float = 30 * DAY
    cursor_max_age_s: float = 90 * DAY
    max_future_skew_ms: int = 60_000
    max_batch: int = 500
    default_pull_limit: int = 500
    max_pull_limit: int = 1000
    # Decide a push on reads made before its write transaction, and in the transaction only
    # check that nothing it read changed (else decide again there): with several processes
    # writing one store, the write lock is then held for the writes, not for the decisions.
    optimistic_push: bool = False


def _encoded(results: dict[str, MutationResult]) -> dict[str, str]:
    return {mutation_id: result.encoded for mutation_id, result in results.items()}


class _Plan:
    """A push decided on reads outside its write transaction (`Settings.optimistic_push`). It
    stands in for the transaction: it reads through `reads` and remembers what it saw (the
    seq of each entity, the idempotency records), and records the writes. In the transaction,
    `holds` reads the same again: every write moves an entity's seq, so equal reads mean the
    same decisions, and `replay` makes the recorded writes (seqs are taken there)."""

    def __init__(self, reads: ReadTx) -> None:
        self._reads = reads
        self._seen_results: list[tuple[str, list[str], dict[str, str]]] = []
        self._seen_entities: list[tuple[list[EntityKey], dict[EntityKey, int]]] = []
        self._writes: list[tuple[str, tuple[Any, ...]]] = []

    async def get_entities(self, keys: Sequence[EntityKey]) -> dict[EntityKey, EntityState]:
        found = await self._reads.get_entities(keys)
        self._seen_entities.append((list(keys), {k: s.seq for k, s in found.items()}))
        return found

    async def get_results(
        self, device_id: str, mutation_ids: Sequence[str]
    ) -> dict[str, MutationResult]:
        found = await self._reads.get_results(device_id, mutation_ids)
        self._seen_results.append((device_id, list(mutation_ids), _encoded(found)))
        return found

    async def entity_seqs(self, keys: Sequence[EntityKey]) -> dict[EntityKey, int]:
        return await self._reads.entity_seqs(keys)

    async def put_entity(self, state: EntityState) -> EntityState:
        self._writes.append(("put_entity", (state,)))
        return state

    async def put_results(self, device_id: str, results: Sequence[MutationResult]) -> None:
        for r in results:
            _ = r.encoded  # now, outside the transaction (with it, each entity's clock's)
        self._writes.append(("put_results", (device_id, results)))

    async def put_conflict(self, record: ConflictRecord) -> None:
        self._writes.append(("put_conflict", (record,)))

    async def archive(self, snapshot: Snapshot) -> None:
        self._writes.append(("archive", (snapshot,)))

    async def get_conflict(self, conflict_id: str) -> ConflictRecord | None:
        raise RuntimeError("a push does not read conflicts")

    async def append_doc_updates(self, doc_id: str, updates: Sequence[bytes]) -> int:
        raise RuntimeError("a push does not write documents")

    async def holds(self, tx: WriteTx) -> bool:
        for device_id, ids, seen in self._seen_results:
            # by content: a pruned record and a retry's new one would have the same ids
            if _encoded(await tx.get_results(device_id, ids)) != seen:
                return False
        for keys, seqs in self._seen_entities:
            if await tx.entity_seqs(keys) != seqs:
                return False
        return True

    async def replay(self, tx: WriteTx) -> None:
        for name, args in self._writes:
            await getattr(tx, name)(*args)


@dataclass(frozen=True)
class DeviceContext:
    """Who is calling: an authenticated device bound to (tenant, user)."""

    tenant_id: str
    user_id: str
    device_id: str


@dataclass(frozen=True)
class PullPage:
    changes: list[Change]
    cursor: SyncCursor
    has_more: bool


def entity_snapshot_content(state: EntityState | None) -> bytes:
    body: dict[str, Any] = {"exists": state is not None}
    if state is not None:
        body.update(
            payload=state.payload,
            deleted=state.deleted,
            clock=state.clock.to_json(),
            ts=state.ts,
            device_id=state.device_id,
        )
    return canonical_json(body).encode()


def entity_to_json(state: EntityState) -> dict[str, Any]:
    return {
        "entity_type": state.key.entity_type,
        "entity_id": state.key.entity_id,
        "op": state.op,
        "payload": state.payload,
        "clock": state.clock.to_json(),
    }


class SyncService:
    def __init__(
        self,
        store: SyncStore,
        registry: EntityRegistry,
        clock: Clock,
        settings: Settings | None = None,
    ) -> None:
        self.store = store
        self.registry = registry
        self.clock = clock
        self.settings = settings or Settings()
        # optimistic pushes whose reads had changed by their transaction
        self.pushes_decided_again = 0

    # -- helpers ------------------------------------------------------------------------

    def key_for(self, tenant_id: str, etype: EntityType, entity_id: str, user_id: str) -> EntityKey:
        return EntityKey(tenant_id, etype.name, entity_id, user_id if etype.scope == "user" else "")

    def _snapshot(
        self,
        key: EntityKey,
        state: EntityState | None,
        reason: str,
        now: datetime,
        device_id: str = "",
    ) -> Snapshot:
        return Snapshot(
            snapshot_id=new_snapshot_id(),
            tenant_id=key.tenant_id,
            kind="entity",
            entity_type=key.entity_type,
            entity_id=key.entity_id,
            owner=key.owner,
            created_at=now,
            expires_at=now + timedelta(seconds=self.settings.archive_retention_s),
            reason=reason,
            content=entity_snapshot_content(state),
            device_id=device_id,
        )

    # -- push ---------------------------------------------------------------------------

    async def push(
        self, ctx: DeviceContext, mutations: Sequence[LocalMutation]
    ) -> list[MutationResult]:
        if len(mutations) > self.settings.max_batch:
            raise InvalidInput(
                f"at most {self.settings.max_batch} mutations per push", code="batch_too_large"
            )
        now = self.clock.now()
        plan: _Plan | None = None
        if self.settings.optimistic_push:
            async with self.store.reading(ctx.tenant_id) as reads:
                plan = _Plan(reads)
                planned = await self._push_in(plan, ctx, mutations, now)
        async with self.store.write(ctx.tenant_id, now) as tx:
            if plan is not None:
                if await plan.holds(tx):
                    await plan.replay(tx)
                    return planned
                self.pushes_decided_again += 1
            return await self._push_in(tx, ctx, mutations, now)

    async def _push_in(
        self, tx: WriteTx, ctx: DeviceContext, mutations: Sequence[LocalMutation], now: datetime
    ) -> list[MutationResult]:
        prior = await tx.get_results(ctx.device_id, [m.mutation_id for m in mutations])
        # each mutation's entity key, None for an unknown type (rejected by _apply)
        keys: list[EntityKey | None] = []
        for m in mutations:
            etype = self.registry.get(m.entity_type)
            keys.append(
                None
                if etype is None
                else self.key_for(ctx.tenant_id, etype, m.entity_id, ctx.user_id)
            )
        states = await tx.get_entities([k for k in keys if k is not None])
        results: list[MutationResult] = []
        fresh: list[MutationResult] = []
        for m, key in zip(mutations, keys, strict=True):
            first = prior.get(m.mutation_id)
            if first is not None:
                results.append(replace(first, status=Status.DUPLICATE))
                continue
            result = await self._apply(tx, ctx, m, key, states, now)
            prior[m.mutation_id] = result
            fresh.append(result)
            results.append(result)
        await tx.put_results(ctx.device_id, fresh)
        return results

    async def _apply(
        self,
        tx: WriteTx,
        ctx: DeviceContext,
        m: LocalMutation,
        key: EntityKey | None,
        states: dict[EntityKey, EntityState],
        now: datetime,
    ) -> MutationResult:
        def rejected(code: str, message: str) -> MutationResult:
            return MutationResult(
                m.mutation_id, Status.REJECTED, error={"code": code, "message": message}
            )

        etype = self.registry.get(m.entity_type)
        if etype is None or key is None:
            return rejected("unknown_entity_type", f"no entity type {m.entity_type!r}")
        if not etype.device_writable:
            return rejected("read_only", f"{etype.name!r} is written by the server only")
        payload_json = None
        if m.payload is not None:
            payload_json = canonical_json(m.payload)
            if len(payload_json.encode()) > MAX_PAYLOAD_BYTES:
                return rejected("payload_too_large", f"payload over {MAX_PAYLOAD_BYTES} bytes")
            problems = etype.shape.problems(m.entity_id, m.payload)
            if problems:
                return rejected("invalid_payload", "; ".join(problems))

        stored = states.get(key)
        now_ms = int(now.timestamp() * 1000)
        ts = now_ms if m.ts is None else min(m.ts, now_ms + self.settings.max_future_skew_ms)
        write = Write(m, ctx.device_id, ts)
        policy = etype.policy
        decision: Decision
        if stored is None:
            decision = policy.on_dominating(None, write)
        else:
            order = m.clock.compare(stored.clock)
            if order is Ordering.AFTER:
                decision = policy.on_dominating(stored, write)
            elif order is Ordering.CONCURRENT:
                decision = policy.on_concurrent(stored, write)
            else:
                decision = policy.on_stale(stored, write)

        status = decision.status
        if status is Status.REJECTED:
            return rejected(decision.error_code or "rejected", decision.error_message or "")
        if status is Status.STALE:
            assert stored is not None
            return MutationResult(m.mutation_id, Status.STALE, clock=stored.clock)
        if status is Status.CONFLICT:
            assert stored is not None
            await tx.archive(self._snapshot(key, stored, "conflict", now, ctx.device_id))
            record = ConflictRecord(
                conflict_id=uuid.uuid4().hex,
                key=key,
                server_payload=stored.payload,
                server_clock=stored.clock,
                client_payload=m.payload,
                client_clock=m.clock,
                client_device=ctx.device_id,
                created_at=now,
            )
            await tx.put_conflict(record)
            return MutationResult(
                m.mutation_id, Status.CONFLICT, clock=stored.clock, conflict_id=record.conflict_id
            )

        if status is Status.MERGED:
            assert stored is not None
            await tx.archive(self._snapshot(key, stored, "merge", now, ctx.device_id))
            clock = stored.clock.merge(m.clock).increment(SERVER_NODE)
            winner_ts, winner_dev = (
                (ts, ctx.device_id) if decision.from_incoming else (stored.ts, stored.device_id)
            )
        else:  # APPLIED
            clock = m.clock if stored is None else stored.clock.merge(m.clock)
            winner_ts, winner_dev = ts, ctx.device_id
        payload = None if decision.deleted else decision.payload
        if payload is not m.payload:
            # a merged payload: encoded here, where a planned push still holds no lock
            payload_json = None if payload is None else canonical_json(payload)
        new_state = EntityState(
            key=key,
            payload=payload,
            clock=clock,
            deleted=decision.deleted,
            ts=winner_ts,
            device_id=winner_dev,
            payload_json=payload_json,
        )
        states[key] = await tx.put_entity(new_state)
        return MutationResult(m.mutation_id, status, clock=clock)

    # -- pull and ack -------------------------------------------------------------------

    def scope_token(self) -> str:
        return self.registry.scope_token()

    async def check_cursor(self, ctx: DeviceContext, cursor: SyncCursor) -> None:
        if cursor.tenant_id != ctx.tenant_id or cursor.device_id != ctx.device_id:
            raise Forbidden("this cursor was issued to another device", code="device_mismatch")

    async def pull(self, ctx: DeviceContext, cursor: SyncCursor | None, limit: int) -> PullPage:
        if not 1 <= limit <= self.settings.max_pull_limit:
            raise InvalidInput(f"limit must be 1..{self.settings.max_pull_limit}")
        now = self.clock.now()
        head, horizon = await self.store.head(ctx.tenant_id)
        if cursor is None:
            after, snapshot_seq = 0, head
        else:
            await self.check_cursor(ctx, cursor)
            self._servable(cursor, head, horizon, now)
            after, snapshot_seq = cursor.seq, cursor.snapshot_seq or 0
        rows = await self.store.read_changes(
            ctx.tenant_id, ctx.user_id, after, limit + 1, skip_tombstones_upto=snapshot_seq
        )
        if cursor is not None:
            # Retention may have pruned tombstones after this cursor between the look at the
            # head and the read: then the rows lack those deletes, and the device must resync.
            _, horizon_now = await self.store.head(ctx.tenant_id)
            if cursor.seq < horizon_now:
                raise ResyncRequired(
                    "tombstone_horizon", "deletes after this cursor were already pruned"
                )
        has_more = len(rows) > limit
        rows = rows[:limit]
        # Without more rows, everything up to `head` (all committed) has been seen.
        position = rows[-1].seq if has_more else max([after, head, *(r.seq for r in rows)])
        next_cursor = SyncCursor(
            tenant_id=ctx.tenant_id,
            device_id=ctx.device_id,
            seq=position,
            scope=self.scope_token(),
            issued_at=int(now.timestamp()),
            snapshot_seq=snapshot_seq if snapshot_seq > position else None,
        )
        return PullPage(rows, next_cursor, has_more)

    def _servable(self, cursor: SyncCursor, head: int, horizon: int, now: datetime) -> None:
        if cursor.scope != self.scope_token():
            raise ResyncRequired("scope_changed", "the set of synced types changed")
        if now.timestamp() - cursor.issued_at > self.settings.cursor_max_age_s:
            raise ResyncRequired("cursor_expired", "the cursor is too old")
        if cursor.seq > head:
            raise ResyncRequired("invalid_cursor", "the cursor is ahead of this server's log")
        if cursor.seq < horizon:
            raise ResyncRequired(
                "tombstone_horizon", "deletes after this cursor were already pruned"
            )

    async def ack(self, ctx: DeviceContext, cursor: SyncCursor) -> None:
        await self.check_cursor(ctx, cursor)
        await self.store.record_ack(ctx.tenant_id, ctx.device_id, cursor.seq, self.clock.now())

    # -- devices ------------------------------------------------------------------------

    async def register_device(
        self, tenant_id: str, user_id: str, device_id: str, name: str = "", platform: str = ""
    ) -> SyncRegistration:
        if device_id == SERVER_NODE:
            raise InvalidInput(f"{SERVER_NODE!r} is the server's clock node, not a device id")
        existing = await self.store.get_device(tenant_id, device_id)
        if existing is not None and existing.registration.user_id != user_id:
            raise Conflict("this device id is registered to another user", code="device_taken")
        generation = 1 if existing is None else existing.registration.generation + 1
        registration = SyncRegistration(
            tenant_id, device_id, user_id, generation, False, name, platform
        )
        await self.store.save_device(registration, self.clock.now())
        return registration

    async def revoke_device(
        self, tenant_id: str, device_id: str, by_user: str | None
    ) -> SyncRegistration:
        """Revoke; `by_user` None means an admin of the tenant."""
        check_id(device_id, "device_id")  # a NUL would reach PostgreSQL (a 500)
        existing = await self.store.get_device(tenant_id, device_id)
        if existing is None or (by_user is not None and existing.registration.user_id != by_user):
            raise NotFound("no such device")
        revoked = replace(existing.registration, revoked=True)
        await self.store.save_device(revoked, self.clock.now())
        return revoked

    # -- admin: server-authored state, conflicts, restore -------------------------------

    def admin_key(self, tenant_id: str, entity_type: str, entity_id: str, owner: str) -> EntityKey:
        etype = self.registry.get(entity_type)
        if etype is None:
            raise NotFound(f"no entity type {entity_type!r}", code="unknown_entity_type")
        if etype.scope == "user" and not owner:
            raise InvalidInput(f"{entity_type!r} is per user: give ?owner=USER")
        if etype.scope == "tenant" and owner:
            raise InvalidInput(f"{entity_type!r} is tenant-wide: leave owner out")
        return EntityKey(tenant_id, entity_type, entity_id, owner)

    async def admin_write(self, key: EntityKey, payload: dict[str, Any] | None) -> EntityState:
        """A server-authored put (payload) or delete (None): a new version that dominates."""
        etype = self.registry.get(key.entity_type)
        assert etype is not None
        if payload is not None:
            problems = etype.shape.problems(key.entity_id, payload)
            if problems:
                raise InvalidInput("; ".join(problems), code="invalid_payload")
        now = self.clock.now()
        async with self.store.write(key.tenant_id, now) as tx:
            stored = (await tx.get_entities([key])).get(key)
            clock = (stored.clock if stored else VectorClock()).increment(SERVER_NODE)
            state = EntityState(
                key, payload, clock, payload is None, int(now.timestamp() * 1000), ""
            )
            return await tx.put_entity(state)

    async def resolve_conflict(
        self, tenant_id: str, conflict_id: str, choice: str, payload: dict[str, Any] | None
    ) -> EntityState:
        if choice not in ("server", "client", "custom"):
            raise InvalidInput("choice must be 'server', 'client' or 'custom'")
        if (choice == "custom") != isinstance(payload, dict):
            raise InvalidInput("a payload object goes with choice 'custom' only")
        now = self.clock.now()
        async with self.store.write(tenant_id, now) as tx:
            record = await tx.get_conflict(conflict_id)
            if record is None:
                raise NotFound("no such conflict")
            if record.status is ConflictStatus.RESOLVED:
                raise Conflict("this conflict is already resolved", code="already_resolved")
            chosen = {
                "server": record.server_payload,
                "client": record.client_payload,
                "custom": payload,
            }[choice]
            key = record.key
            stored = (await tx.get_entities([key])).get(key)
            await tx.archive(self._snapshot(key, stored, "conflict_resolution", now))
            base = stored.clock if stored else VectorClock()
            clock = base.merge(record.client_clock).increment(SERVER_NODE)
            state = await tx.put_entity(
                EntityState(key, chosen, clock, chosen is None, int(now.timestamp() * 1000), "")
            )
            await tx.put_conflict(
                replace(
                    record,
                    status=ConflictStatus.RESOLVED,
                    resolved_at=now,
                    resolution=choice,
                    resolved_payload=chosen,
                )
            )
            return state

    async def restore_entity(self, tenant_id: str, snapshot_id: str) -> tuple[str, EntityState]:
        """Make the entity equal to the snapshot, as a new version; archive the state first.
        Returns the id of the pre-restore snapshot and the new state."""
        snapshot = await self.store.get_snapshot(tenant_id, snapshot_id)
        if snapshot is None or snapshot.kind != "entity":
            raise NotFound("no such snapshot")
        content = json.loads(snapshot.content)
        key = EntityKey(tenant_id, snapshot.entity_type, snapshot.entity_id, snapshot.owner)
        now = self.clock.now()
        async with self.store.write(tenant_id, now) as tx:
            stored = (await tx.get_entities([key])).get(key)
            pre = self._snapshot(key, stored, "restore", now)
            await tx.archive(pre)
            base = stored.clock if stored else VectorClock()
            payload = content.get("payload") if content.get("exists") else None
            deleted = payload is None
            state = await tx.put_entity(
                EntityState(
                    key,
                    payload,
                    base.increment(SERVER_NODE),
                    deleted,
                    int(now.timestamp() * 1000),
                    "",
                )
            )
        return pre.snapshot_id, state
