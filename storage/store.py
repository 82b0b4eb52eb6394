"""`SqlStore`: the shared cursor/delta store on SQLAlchemy Core (SQLite or PostgreSQL)."""

from __future__ import annotations

import functools
import json
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import (
    BigInteger,
    and_,
    bindparam,
    delete,
    func,
    literal,
    or_,
    select,
    union_all,
    update,
)
from sqlalchemy.dialects import postgresql, sqlite

from crdt_sync.model import (
    Change,
    ConflictRecord,
    EntityKey,
    EntityState,
    MutationResult,
    SyncRegistration,
)
from crdt_sync.ports import DeviceHealth, DocUpdate, Snapshot
from storage import codec
from storage.inline_sqlite import Conn, Engine, InlineConnection
from storage.schema import (
    conflicts,
    devices,
    doc_checkpoints,
    doc_updates,
    entities,
    mutation_results,
    snapshots,
    tenant_seq,
)

# Parameters per statement stay well under SQLite's and asyncpg's limits.
CHUNK = 200


def _chunks(items: Sequence[Any], size: int = CHUNK) -> list[Sequence[Any]]:
    return [items[i : i + size] for i in range(0, len(items), size)]


@dataclass(frozen=True)
class _Statements:
    """The hot paths' statements, built once per dialect with bound parameters.

    SQLAlchemy memoises a statement object's cache key and compiled form; building the same
    statement afresh for every transaction redid that work each time (about half the CPU of
    a small write transaction on SQLite)."""

    lock_insert: Any
    lock_select: Any
    seq_update: Any
    entity_many: Any
    entity_seqs: Any
    entity_upsert: Any
    results_select: Any
    results_insert: Any
    doc_insert: Any
    head_select: Any
    device_select: Any
    device_touch: Any
    device_ack: Any
    device_resync: Any
    # read_changes by (number of owners, tombstones skipped up to a snapshot)
    changes: dict[tuple[int, bool], Any]


def _changes_select(owners: int, skip_tombstones: bool) -> Any:
    """The tenant's shared entities and the user's, each read in seq order from its own range
    of ix_entities_owner_log (at most `limit` rows each), then merged: the log index alone
    would walk every other user's changes since the cursor to find these."""
    c = entities.c

    def owned_by(owner: Any) -> Any:
        branch = select(c.entity_type, c.entity_id, c.deleted, c.seq, c.payload, c.clock)
        branch = branch.where(
            c.tenant_id == bindparam("b_tenant"), c.owner == owner, c.seq > bindparam("b_after")
        )
        if skip_tombstones:
            branch = branch.where(or_(c.deleted.is_(False), c.seq > bindparam("b_skip")))
        return select(branch.order_by(c.seq).limit(bindparam("b_limit")).subquery())

    branches = [owned_by(bindparam("b_user")), owned_by(literal(""))][:owners]
    merged = union_all(*branches).subquery()
    return select(merged).order_by(merged.c.seq).limit(bindparam("b_limit"))


RESULT_COLUMNS = tuple(mutation_results.c.keys())
_SQLITE = sqlite.dialect()

# On SQLite the store's prebuilt statements run on the driver itself (`InlineConnection.driver`,
# the same transaction), with SQL that SQLAlchemy compiles once: for statements of a few
# microseconds its per-execution and per-row parameter work cost more than SQLite's
# (docs/benchmarks.md, finding 13). PostgreSQL runs them through SQLAlchemy.


@dataclass(frozen=True)
class _Fixed:
    """A value built into a statement (a literal, SQLite's OFFSET 0), not a bound parameter."""

    value: Any


@functools.cache
def _sqlite_text(stmt: Any, columns: tuple[str, ...] = ()) -> tuple[str, tuple[Any, ...]]:
    """A prebuilt statement as SQLite SQL, and what its `?` take in order: the name of a bound
    `b_*` parameter, or a `_Fixed` value. `columns`: an insert's columns, in its rows' order."""
    compiled = stmt.compile(dialect=_SQLITE, column_keys=list(columns) or None)
    binds = compiled.binds
    order = tuple(
        name if name.startswith("b_") or name in columns else _Fixed(binds[name].effective_value)
        for name in compiled.positiontup or ()
    )
    if columns and order != columns:  # pragma: no cover - a programming error
        raise AssertionError(f"{stmt} takes {order}, not {columns}")
    return str(compiled), order


@functools.lru_cache(maxsize=4 * CHUNK)
def _sqlite_in(stmt: Any, params: tuple[str, ...], count: int) -> str:
    """Like `_sqlite_text` for a statement whose last parameter is the expanding `b_ids`,
    rendered for `count` ids: its `?` take the values of `params`, then the ids."""
    values = dict.fromkeys(params, "")  # placeholders: only the expansion is rendered
    compiled = stmt.params(**values, b_ids=[""] * count).compile(
        dialect=_SQLITE, compile_kwargs={"render_postcompile": True}
    )
    expected = (*params, *(f"b_ids_{i}" for i in range(1, count + 1)))
    if tuple(compiled.positiontup or ()) != expected:  # pragma: no cover - a programming error
        raise AssertionError(f"parameters {compiled.positiontup} are not {expected}")
    return str(compiled)


async def _fetch(
    conn: Conn, stmt: Any, params: dict[str, Any], ids: Sequence[str] | None = None
) -> Sequence[Sequence[Any]]:
    """All rows of a prebuilt statement with bound `b_*` parameters (none for an update), and
    the expanding `b_ids` where the statement has one."""
    if isinstance(conn, InlineConnection):
        if ids is None:
            sql, order = _sqlite_text(stmt)
            values = [p.value if isinstance(p, _Fixed) else params[p] for p in order]
        else:
            sql = _sqlite_in(stmt, tuple(params), len(ids))
            values = [*params.values(), *ids]
        return conn.driver.execute(sql, values).fetchall()  # type: ignore[no-any-return]
    if ids is not None:
        params = {**params, "b_ids": list(ids)}
    result = await conn.execute(stmt, params)
    return result.all() if result.returns_rows else []  # type: ignore[no-any-return]


@functools.cache
def _statements(dialect_name: str) -> _Statements:
    dialect = postgresql if dialect_name == "postgresql" else sqlite
    lock_insert = dialect.insert(tenant_seq).values(
        tenant_id=bindparam("b_tenant"), seq=0, horizon=0
    )
    upsert = dialect.insert(entities)
    entity_keys = ("tenant_id", "entity_type", "entity_id", "owner")
    device_is = (
        devices.c.tenant_id == bindparam("b_tenant"),
        devices.c.device_id == bindparam("b_device"),
    )
    device_update = update(devices).where(*device_is)
    entity_many = (
        entities.c.tenant_id == bindparam("b_tenant"),
        entities.c.entity_type == bindparam("b_type"),
        entities.c.owner == bindparam("b_owner"),
        entities.c.entity_id.in_(bindparam("b_ids", expanding=True)),
    )
    return _Statements(
        lock_insert=lock_insert.on_conflict_do_nothing(),
        lock_select=select(tenant_seq.c.seq)
        .where(tenant_seq.c.tenant_id == bindparam("b_tenant"))
        .with_for_update(),
        seq_update=update(tenant_seq)
        .where(tenant_seq.c.tenant_id == bindparam("b_tenant"))
        .values(seq=bindparam("b_seq")),
        # one (type, owner) and a list of ids: a primary-key lookup per id. A row-value IN
        # over (type, id, owner) made SQLite scan every entity of the tenant instead.
        entity_many=select(entities).where(*entity_many),
        entity_seqs=select(entities.c.entity_id, entities.c.seq).where(*entity_many),
        entity_upsert=upsert.on_conflict_do_update(
            index_elements=list(entity_keys),
            set_={c.name: upsert.excluded[c.name] for c in entities.c if c.name not in entity_keys},
        ),
        results_select=select(mutation_results.c.mutation_id, mutation_results.c.result).where(
            mutation_results.c.tenant_id == bindparam("b_tenant"),
            mutation_results.c.device_id == bindparam("b_device"),
            mutation_results.c.mutation_id.in_(bindparam("b_ids", expanding=True)),
        ),
        results_insert=mutation_results.insert(),
        doc_insert=doc_updates.insert().returning(doc_updates.c.id),
        head_select=select(tenant_seq.c.seq, tenant_seq.c.horizon).where(
            tenant_seq.c.tenant_id == bindparam("b_tenant")
        ),
        device_select=select(devices).where(*device_is),
        device_touch=device_update.values(last_seen_at=bindparam("b_now")),
        device_resync=device_update.values(full_resyncs=devices.c.full_resyncs + 1),
        device_ack=device_update.values(
            last_ack_at=bindparam("b_now"),
            last_ack_seq=(func.greatest if dialect_name == "postgresql" else func.max)(
                devices.c.last_ack_seq, bindparam("b_seq", type_=BigInteger)
            ),
        ),
        changes={
            (owners, skip): _changes_select(owners, skip)
            for owners in (1, 2)
            for skip in (False, True)
        },
    )


class SqlReadTx:
    """A push's reads of one tenant on a connection (`SqlStore.reading`)."""

    def __init__(self, conn: Conn, tenant_id: str) -> None:
        self._conn = conn
        self._sql = _statements(conn.dialect.name)
        self._tenant = tenant_id
        self._pending: dict[EntityKey, EntityState] = {}

    async def get_entities(self, keys: Sequence[EntityKey]) -> dict[EntityKey, EntityState]:
        found = {k: self._pending[k] for k in keys if k in self._pending}
        wanted = [k for k in keys if k not in found]
        for _, _, row in await self._by_key(self._sql.entity_many, wanted):
            state = codec.entity_from_row(row)
            found[state.key] = state
        return found

    async def entity_seqs(self, keys: Sequence[EntityKey]) -> dict[EntityKey, int]:
        found = {k: self._pending[k].seq for k in keys if k in self._pending}
        wanted = [k for k in keys if k not in found]
        by_id = {(k.entity_type, k.owner, k.entity_id): k for k in wanted}
        for etype, owner, (entity_id, seq) in await self._by_key(self._sql.entity_seqs, wanted):
            found[by_id[(etype, owner, entity_id)]] = int(seq)
        return found

    async def _by_key(self, stmt: Any, keys: Sequence[EntityKey]) -> list[tuple[str, str, Any]]:
        """(type, owner, row) of `stmt` (an entity lookup by ids) for these keys: one `IN`
        over ids per (type, owner), a primary-key lookup per id."""
        groups: dict[tuple[str, str], list[str]] = {}
        for k in dict.fromkeys(keys):
            groups.setdefault((k.entity_type, k.owner), []).append(k.entity_id)
        rows: list[tuple[str, str, Any]] = []
        for (etype, owner), ids in groups.items():
            params = {"b_tenant": self._tenant, "b_type": etype, "b_owner": owner}
            for part in _chunks(ids):
                rows.extend(
                    (etype, owner, row) for row in await _fetch(self._conn, stmt, params, part)
                )
        return rows

    async def get_results(
        self, device_id: str, mutation_ids: Sequence[str]
    ) -> dict[str, MutationResult]:
        out: dict[str, MutationResult] = {}
        params = {"b_tenant": self._tenant, "b_device": device_id}
        stmt = self._sql.results_select
        for part in _chunks(list(dict.fromkeys(mutation_ids))):
            for mutation_id, result in await _fetch(self._conn, stmt, params, part):
                out[mutation_id] = MutationResult.from_json(json.loads(result))
        return out


class SqlWriteTx(SqlReadTx):
    """A write transaction holding its tenant's log lock (see `SqlStore.write`)."""

    def __init__(self, conn: Conn, tenant_id: str, seq: int, now: datetime) -> None:
        super().__init__(conn, tenant_id)
        self._seq = seq
        self._now = now
        self._results: list[tuple[Any, ...]] = []  # in RESULT_COLUMNS order

    async def put_entity(self, state: EntityState) -> EntityState:
        if state.key.tenant_id != self._tenant:
            raise ValueError("entity of another tenant in this transaction")
        self._seq += 1
        stored = state.at(self._seq)
        self._pending.pop(state.key, None)
        self._pending[state.key] = stored  # insertion order = seq order
        return stored

    async def put_results(self, device_id: str, results: Sequence[MutationResult]) -> None:
        created = codec.to_ts(self._now)
        self._results.extend(
            (self._tenant, device_id, r.mutation_id, r.encoded, created) for r in results
        )

    async def put_conflict(self, record: ConflictRecord) -> None:
        row = codec.conflict_row(record)
        stmt = _upsert(self._conn, conflicts, ["conflict_id"], row)
        await self._conn.execute(stmt, row)

    async def get_conflict(self, conflict_id: str) -> ConflictRecord | None:
        stmt = select(conflicts).where(
            conflicts.c.tenant_id == self._tenant, conflicts.c.conflict_id == conflict_id
        )
        row = (await self._conn.execute(stmt)).first()
        return None if row is None else codec.conflict_from_row(row)

    async def archive(self, snapshot: Snapshot) -> None:
        await self._conn.execute(snapshots.insert(), [codec.snapshot_row(snapshot)])

    async def append_doc_updates(self, doc_id: str, updates: Sequence[bytes]) -> int:
        if not updates:
            return 0
        rows = [{"tenant_id": self._tenant, "doc_id": doc_id, "data": data} for data in updates]
        # One statement per chunk (SQLAlchemy's insertmanyvalues), not a round trip per update.
        stmt = self._sql.doc_insert
        ids = [row.id for part in _chunks(rows) for row in await self._conn.execute(stmt, part)]
        return int(max(ids))

    async def flush(self) -> None:
        if self._pending:
            rows = [codec.entity_values(s, self._now) for s in self._pending.values()]
            await self._insert_many(self._sql.entity_upsert, codec.ENTITY_COLUMNS, rows)
            self._pending.clear()
        if self._results:
            await self._insert_many(self._sql.results_insert, RESULT_COLUMNS, self._results)
            self._results.clear()
        await _fetch(
            self._conn, self._sql.seq_update, {"b_tenant": self._tenant, "b_seq": self._seq}
        )

    async def _insert_many(
        self, stmt: Any, columns: tuple[str, ...], rows: Sequence[tuple[Any, ...]]
    ) -> None:
        """A prebuilt insert (or upsert) of rows given as values in `columns` order."""
        conn = self._conn
        if isinstance(conn, InlineConnection):
            conn.driver.executemany(_sqlite_text(stmt, columns)[0], rows)
            return
        for part in _chunks(rows, 500):
            await conn.execute(stmt, [dict(zip(columns, row, strict=True)) for row in part])


def _upsert(conn: Conn, table: Any, keys: list[str], sample: dict[str, Any]) -> Any:
    dialect = postgresql if conn.dialect.name == "postgresql" else sqlite
    stmt = dialect.insert(table)
    changes = {c: stmt.excluded[c] for c in sample if c not in keys}
    return stmt.on_conflict_do_update(index_elements=keys, set_=changes)


class SqlStore:
    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self.dialect = engine.dialect.name

    @asynccontextmanager
    async def write(self, tenant_id: str, now: datetime) -> AsyncIterator[SqlWriteTx]:
        """A write transaction for one tenant. It locks the tenant's log-head row first:
        positions are handed out under that lock and published by the commit that releases
        it, so a reader never sees seq N+1 committed before seq N."""
        async with self._writing() as conn:
            seq = await self._lock_tenant(conn, tenant_id)
            tx = SqlWriteTx(conn, tenant_id, seq, now)
            yield tx
            await tx.flush()

    @asynccontextmanager
    async def reading(self, tenant_id: str) -> AsyncIterator[SqlReadTx]:
        async with self.engine.connect() as conn:
            yield SqlReadTx(conn, tenant_id)

    @asynccontextmanager
    async def _writing(self) -> AsyncIterator[Conn]:
        """Every write transaction. On SQLite the engine runs them one at a time and commits
        them in groups (storage/inline_sqlite.py); on PostgreSQL each is its own."""
        async with self.engine.begin() as conn:
            yield conn

    async def _lock_tenant(self, conn: Conn, tenant_id: str) -> int:
        sql = _statements(self.dialect)
        await _fetch(conn, sql.lock_insert, {"b_tenant": tenant_id})
        ((seq,),) = await _fetch(conn, sql.lock_select, {"b_tenant": tenant_id})
        return int(seq)

    # -- change log ---------------------------------------------------------------------

    async def head(self, tenant_id: str) -> tuple[int, int]:
        """(head seq, tombstone horizon) of the tenant's log, as committed."""
        async with self.engine.connect() as conn:
            sql = _statements(self.dialect)
            rows = await _fetch(conn, sql.head_select, {"b_tenant": tenant_id})
        return (int(rows[0][0]), int(rows[0][1])) if rows else (0, 0)

    async def read_changes(
        self,
        tenant_id: str,
        user_id: str,
        after_seq: int,
        limit: int,
        skip_tombstones_upto: int,
    ) -> list[Change]:
        skip = skip_tombstones_upto > after_seq
        stmt = _statements(self.dialect).changes[(1 if user_id == "" else 2, skip)]
        params = {"b_tenant": tenant_id, "b_user": user_id, "b_after": after_seq, "b_limit": limit}
        if skip:
            params["b_skip"] = skip_tombstones_upto
        async with self.engine.connect() as conn:
            rows = await _fetch(conn, stmt, params)  # one fetch, not one call per row
        return [
            Change(etype, eid, bool(deleted), seq, payload, clock)
            for etype, eid, deleted, seq, payload, clock in rows
        ]

    async def get_entity(self, key: EntityKey) -> EntityState | None:
        stmt = select(entities).where(
            entities.c.tenant_id == key.tenant_id,
            entities.c.entity_type == key.entity_type,
            entities.c.entity_id == key.entity_id,
            entities.c.owner == key.owner,
        )
        async with self.engine.connect() as conn:
            row = (await conn.execute(stmt)).first()
        return None if row is None else codec.entity_from_row(row)

    # -- devices ------------------------------------------------------------------------

    async def get_device(self, tenant_id: str, device_id: str) -> DeviceHealth | None:
        stmt = _statements(self.dialect).device_select
        async with self.engine.connect() as conn:
            rows = await _fetch(conn, stmt, {"b_tenant": tenant_id, "b_device": device_id})
        return codec.device_from_row(rows[0]) if rows else None

    async def save_device(self, registration: SyncRegistration, now: datetime) -> None:
        """Insert a device or replace its registration (user, generation, revoked, name)."""
        row = {
            "tenant_id": registration.tenant_id,
            "device_id": registration.device_id,
            "user_id": registration.user_id,
            "name": registration.name,
            "platform": registration.platform,
            "generation": registration.generation,
            "revoked": registration.revoked,
            "created_at": codec.to_ts(now),
            "last_seen_at": None,
            "last_ack_at": None,
            "last_ack_seq": 0,
            "full_resyncs": 0,
        }
        async with self._writing() as conn:
            dialect = postgresql if self.dialect == "postgresql" else sqlite
            stmt = dialect.insert(devices).values(row)
            keep = ("user_id", "name", "platform", "generation", "revoked")
            stmt = stmt.on_conflict_do_update(
                index_elements=["tenant_id", "device_id"],
                set_={c: stmt.excluded[c] for c in keep},
            )
            await conn.execute(stmt)

    async def list_devices(self, tenant_id: str) -> list[DeviceHealth]:
        stmt = select(devices).where(devices.c.tenant_id == tenant_id).order_by(devices.c.device_id)
        async with self.engine.connect() as conn:
            return [codec.device_from_row(row) for row in await conn.execute(stmt)]

    async def _update_device(
        self, stmt: Any, tenant_id: str, device_id: str, **params: Any
    ) -> None:
        """One of the prebuilt device updates (bound `b_*` parameters) in its own write."""
        async with self._writing() as conn:
            await _fetch(conn, stmt, {"b_tenant": tenant_id, "b_device": device_id, **params})

    async def touch_device(self, tenant_id: str, device_id: str, now: datetime) -> None:
        sql = _statements(self.dialect)
        await self._update_device(sql.device_touch, tenant_id, device_id, b_now=codec.to_ts(now))

    async def record_ack(self, tenant_id: str, device_id: str, seq: int, now: datetime) -> None:
        sql = _statements(self.dialect)
        await self._update_device(
            sql.device_ack, tenant_id, device_id, b_now=codec.to_ts(now), b_seq=seq
        )

    async def record_full_resync(self, tenant_id: str, device_id: str) -> None:
        sql = _statements(self.dialect)
        await self._update_device(sql.device_resync, tenant_id, device_id)

    # -- conflicts and archive ----------------------------------------------------------

    async def list_conflicts(self, tenant_id: str, status: str | None) -> list[ConflictRecord]:
        stmt = select(conflicts).where(conflicts.c.tenant_id == tenant_id)
        if status is not None:
            stmt = stmt.where(conflicts.c.status == status)
        stmt = stmt.order_by(conflicts.c.created_at.desc(), conflicts.c.conflict_id)
        async with self.engine.connect() as conn:
            return [codec.conflict_from_row(row) for row in await conn.execute(stmt)]

    async def get_conflict(self, tenant_id: str, conflict_id: str) -> ConflictRecord | None:
        stmt = select(conflicts).where(
            conflicts.c.tenant_id == tenant_id, conflicts.c.conflict_id == conflict_id
        )
        async with self.engine.connect() as conn:
            row = (await conn.execute(stmt)).first()
        return None if row is None else codec.conflict_from_row(row)

    async def list_snapshots(
        self, tenant_id: str, kind: str, entity_type: str, entity_id: str, owner: str
    ) -> list[Snapshot]:
        stmt = (
            select(snapshots)
            .where(
                snapshots.c.tenant_id == tenant_id,
                snapshots.c.kind == kind,
                snapshots.c.entity_type == entity_type,
                snapshots.c.entity_id == entity_id,
                snapshots.c.owner == owner,
            )
            .order_by(snapshots.c.created_at.desc(), snapshots.c.snapshot_id.desc())
        )
        async with self.engine.connect() as conn:
            return [codec.snapshot_from_row(row) for row in await conn.execute(stmt)]

    async def get_snapshot(self, tenant_id: str, snapshot_id: str) -> Snapshot | None:
        stmt = select(snapshots).where(
            snapshots.c.tenant_id == tenant_id, snapshots.c.snapshot_id == snapshot_id
        )
        async with self.engine.connect() as conn:
            row = (await conn.execute(stmt)).first()
        return None if row is None else codec.snapshot_from_row(row)

    async def prune(self, now: datetime, tombstone_retention_s: float) -> dict[str, int]:
        """Delete snapshots past `expires_at` (never before), and tombstones and idempotency
        records older than the retention; raise each tenant's horizon past pruned tombstones."""
        cutoff = codec.to_ts(now) - tombstone_retention_s
        async with self._writing() as conn:
            expired = await conn.execute(
                delete(snapshots).where(snapshots.c.expires_at <= codec.to_ts(now))
            )
            old = and_(entities.c.deleted.is_(True), entities.c.updated_at < cutoff)
            horizons = await conn.execute(
                select(entities.c.tenant_id, func.max(entities.c.seq).label("top"))
                .where(old)
                .group_by(entities.c.tenant_id)
            )
            for tenant_id, top in list(horizons):
                await conn.execute(
                    update(tenant_seq)
                    .where(tenant_seq.c.tenant_id == tenant_id, tenant_seq.c.horizon < top)
                    .values(horizon=top)
                )
            tombstones = await conn.execute(delete(entities).where(old))
            results = await conn.execute(
                delete(mutation_results).where(mutation_results.c.created_at < cutoff)
            )
        return {
            "snapshots": expired.rowcount or 0,
            "tombstones": tombstones.rowcount or 0,
            "mutation_results": results.rowcount or 0,
        }

    # -- Yjs documents ------------------------------------------------------------------

    async def load_doc(self, tenant_id: str, doc_id: str) -> tuple[bytes | None, list[DocUpdate]]:
        """Checkpoint and the updates after it. The updates are read first: a compaction
        committing between the two reads then only makes the checkpoint cover more of them,
        and those are filtered out; read the other way round, they would be lost."""
        async with self.engine.connect() as conn:
            rows = list(
                await conn.execute(
                    select(doc_updates.c.id, doc_updates.c.data)
                    .where(doc_updates.c.tenant_id == tenant_id, doc_updates.c.doc_id == doc_id)
                    .order_by(doc_updates.c.id)
                )
            )
            cp = (
                await conn.execute(
                    select(doc_checkpoints.c.data, doc_checkpoints.c.upto_id).where(
                        doc_checkpoints.c.tenant_id == tenant_id,
                        doc_checkpoints.c.doc_id == doc_id,
                    )
                )
            ).first()
        upto = 0 if cp is None else int(cp.upto_id)
        updates = [DocUpdate(int(r.id), bytes(r.data)) for r in rows if int(r.id) > upto]
        return (None if cp is None else bytes(cp.data)), updates

    async def compact_doc(
        self, tenant_id: str, doc_id: str, checkpoint: bytes, upto_update_id: int, now: datetime
    ) -> None:
        async with self.write(tenant_id, now) as tx:
            conn = tx._conn
            row = {
                "tenant_id": tenant_id,
                "doc_id": doc_id,
                "data": checkpoint,
                "upto_id": upto_update_id,
                "updated_at": codec.to_ts(now),
            }
            await conn.execute(_upsert(conn, doc_checkpoints, ["tenant_id", "doc_id"], row), row)
            # The row `upto_update_id` itself stays (load_doc skips it): SQLite hands out
            # max(rowid) + 1, so deleting the table's newest row would give the next update an
            # id <= upto_id, which load_doc would never read again.
            await conn.execute(
                delete(doc_updates).where(
                    doc_updates.c.tenant_id == tenant_id,
                    doc_updates.c.doc_id == doc_id,
                    doc_updates.c.id < upto_update_id,
                )
            )

    async def doc_stored_bytes(self, tenant_id: str, doc_id: str) -> int:
        async with self.engine.connect() as conn:
            upd = await conn.execute(
                select(func.coalesce(func.sum(func.length(doc_updates.c.data)), 0)).where(
                    doc_updates.c.tenant_id == tenant_id, doc_updates.c.doc_id == doc_id
                )
            )
            cp = await conn.execute(
                select(func.coalesce(func.sum(func.length(doc_checkpoints.c.data)), 0)).where(
                    doc_checkpoints.c.tenant_id == tenant_id, doc_checkpoints.c.doc_id == doc_id
                )
            )
            return int(upd.scalar_one()) + int(cp.scalar_one())

    async def ping(self) -> None:
        async with self.engine.connect() as conn:
            (await conn.execute(select(1))).scalar_one()

    async def close(self) -> None:
        await self.engine.dispose()
