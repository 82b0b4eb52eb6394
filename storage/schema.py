"""Tables of the shared store, and the migrations that create them.

Times are stored as float unix seconds (UTC) so SQLite and PostgreSQL behave the same;
JSON is stored as canonical text.
"""

from __future__ import annotations

from sqlalchemy import (
    BigInteger,
    Boolean,
    Column,
    Float,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Table,
    Text,
)

from storage.inline_sqlite import Conn

SCHEMA_VERSION = 2  # 2: ix_entities_owner_log
ID = String(200)

metadata = MetaData()

meta = Table(
    "crdt_meta",
    metadata,
    Column("key", String(64), primary_key=True),
    Column("value", Text, nullable=False),
)

# One row per tenant: the change-log head. Every write transaction locks it first, so the
# positions it hands out become visible in the order they were taken (design.md §5).
tenant_seq = Table(
    "tenant_seq",
    metadata,
    Column("tenant_id", ID, primary_key=True),
    Column("seq", BigInteger, nullable=False),
    Column("horizon", BigInteger, nullable=False),  # highest seq of a pruned tombstone
)

# Current state of every entity, tombstones included; `seq` is the position of its latest
# change, so the (tenant_id, seq) index *is* the commit-ordered change log, latest per entity.
entities = Table(
    "entities",
    metadata,
    Column("tenant_id", ID, primary_key=True),
    Column("entity_type", ID, primary_key=True),
    Column("entity_id", ID, primary_key=True),
    Column("owner", ID, primary_key=True),  # '' for tenant-scoped types
    Column("payload", Text, nullable=True),
    Column("clock", Text, nullable=False),
    Column("deleted", Boolean, nullable=False),
    Column("ts", BigInteger, nullable=False),
    Column("device_id", ID, nullable=False),
    Column("seq", BigInteger, nullable=False),
    Column("updated_at", Float, nullable=False),
    Index("ix_entities_log", "tenant_id", "seq", unique=True),
)
# a pull reads the tenant's shared entities (owner '') and its user's: one range of this
# index each, instead of every user's changes since the cursor from ix_entities_log
OWNER_LOG_INDEX = Index(
    "ix_entities_owner_log", entities.c.tenant_id, entities.c.owner, entities.c.seq
)

mutation_results = Table(
    "mutation_results",
    metadata,
    Column("tenant_id", ID, primary_key=True),
    Column("device_id", ID, primary_key=True),
    Column("mutation_id", ID, primary_key=True),
    Column("result", Text, nullable=False),
    Column("created_at", Float, nullable=False, index=True),
)

devices = Table(
    "devices",
    metadata,
    Column("tenant_id", ID, primary_key=True),
    Column("device_id", ID, primary_key=True),
    Column("user_id", ID, nullable=False),
    Column("name", String(200), nullable=False),
    Column("platform", String(200), nullable=False),
    Column("generation", Integer, nullable=False),
    Column("revoked", Boolean, nullable=False),
    Column("created_at", Float, nullable=False),
    Column("last_seen_at", Float, nullable=True),
    Column("last_ack_at", Float, nullable=True),
    Column("last_ack_seq", BigInteger, nullable=False),
    Column("full_resyncs", Integer, nullable=False),
)

conflicts = Table(
    "conflicts",
    metadata,
    Column("conflict_id", String(64), primary_key=True),
    Column("tenant_id", ID, nullable=False),
    Column("entity_type", ID, nullable=False),
    Column("entity_id", ID, nullable=False),
    Column("owner", ID, nullable=False),
    Column("status", String(16), nullable=False),
    Column("created_at", Float, nullable=False),
    Column("resolved_at", Float, nullable=True),
    Column("resolution", String(16), nullable=True),
    Column("data", Text, nullable=False),
    Index("ix_conflicts_tenant", "tenant_id", "status", "created_at"),
)

snapshots = Table(
    "snapshots",
    metadata,
    Column("snapshot_id", String(64), primary_key=True),
    Column("tenant_id", ID, nullable=False),
    Column("kind", String(16), nullable=False),
    Column("entity_type", ID, nullable=False),
    Column("entity_id", ID, nullable=False),
    Column("owner", ID, nullable=False),
    Column("created_at", Float, nullable=False),
    Column("expires_at", Float, nullable=False, index=True),
    Column("reason", String(64), nullable=False),
    Column("device_id", ID, nullable=False),
    Column("content", LargeBinary, nullable=False),
    Index("ix_snapshots_subject", "tenant_id", "kind", "entity_type", "entity_id", "owner"),
)

doc_updates = Table(
    "doc_updates",
    metadata,
    Column(
        "id", BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=True
    ),
    Column("tenant_id", ID, nullable=False),
    Column("doc_id", ID, nullable=False),
    Column("data", LargeBinary, nullable=False),
    Index("ix_doc_updates_doc", "tenant_id", "doc_id", "id"),
)

doc_checkpoints = Table(
    "doc_checkpoints",
    metadata,
    Column("tenant_id", ID, primary_key=True),
    Column("doc_id", ID, primary_key=True),
    Column("data", LargeBinary, nullable=False),
    Column("upto_id", BigInteger, nullable=False),
    Column("updated_at", Float, nullable=False),
)


async def migrate(conn: Conn) -> None:
    """Create missing tables and record the schema version. Later versions add steps here,
    each guarded by the stored version."""
    await conn.run_sync(metadata.create_all)
    result = await conn.execute(meta.select().where(meta.c.key == "schema_version"))
    row = result.first()
    if row is None:
        await conn.execute(meta.insert().values(key="schema_version", value=str(SCHEMA_VERSION)))
        return
    version = int(row.value)
    if version > SCHEMA_VERSION:
        raise RuntimeError(
            f"the database has schema version {row.value}, newer than this server's "
            f"{SCHEMA_VERSION}: upgrade crdt-sync"
        )
    if version < 2:  # create_all adds no index to a table that exists
        await conn.run_sync(lambda sync: OWNER_LOG_INDEX.create(sync, checkfirst=True))
    if version < SCHEMA_VERSION:
        await conn.execute(
            meta.update().where(meta.c.key == "schema_version").values(value=str(SCHEMA_VERSION))
        )
