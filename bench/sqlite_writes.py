"""What a push's writes cost SQLite itself: the entity upserts against the idempotency records.

    python -m bench.sqlite_writes               # ~1 min; prints the table, writes the JSON
    python -m bench.sqlite_writes --write-docs  # and its section of docs/benchmarks.md

A diagnostic, not a peer comparison: it times the SQL of a push of `--batch` progress updates
(the http_sync push workload: each device updates its user's course-0…N, fresh random
mutation ids) straight on the sqlite3 driver, without the server, so the figure is SQLite's
alone. The database is created by the store (`open_store`: the real schema and migrations),
the connections use the server's pragmas (WAL, `synchronous=FULL`), the statements are the
store's upsert and insert compiled by SQLAlchemy, and the rows come from the store's codec
(`entity_values`, `MutationResult.encoded`). Each cell is one write set on a fresh database:

- **push**: the entity upserts and the idempotency records, what a push writes;
- **entities only** / **records only**: each half alone;
- **push, time-ordered ids**: the push again, from a client whose mutation ids grow with time
  (UUIDv7-like) instead of random ones;

each written through one connection, and through two that take turns ("two connections": what
two sync workers do: each batch begins on a page cache that the other's commit invalidated).
Per push: body = BEGIN IMMEDIATE to the last insert, commit = the COMMIT (WAL frames and their
fsync). A warm-up of `--history` pushes per device first, so the B-trees are not empty.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sqlite3
import tempfile
import time
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from sqlalchemy.dialects import sqlite as sqlite_dialect

from bench import report
from crdt_sync.model import EntityKey, EntityState, MutationResult, Status
from crdt_sync.vector_clock import VectorClock
from storage import codec
from storage.engine import SQLITE_FILE, open_store
from storage.schema import entities, mutation_results

DOCS_BEGIN = "<!-- sqlite_writes:begin -->"
DOCS_END = "<!-- sqlite_writes:end -->"
DEFAULT_OUT = Path(__file__).resolve().parent / "results" / "sqlite_writes.json"
WRITES = {
    "push": ("entities", "records"),
    "entities only": ("entities",),
    "records only": ("records",),
    # the same push from a client whose mutation ids grow with time (UUIDv7-like)
    "push, time-ordered ids": ("entities", "records", "ordered"),
}
CONNECTIONS = (1, 2)


@dataclass(frozen=True)
class Config:
    devices: int
    batch: int
    history: int  # untimed pushes per device first
    pushes: int  # timed pushes in all
    out: Path
    write_docs: bool
    docs_path: Path = report.REPO / "docs" / "benchmarks.md"


def parse_args(argv: list[str] | None) -> Config:
    p = argparse.ArgumentParser(prog="python -m bench.sqlite_writes", description=__doc__)
    p.add_argument("--devices", type=int, default=20)
    p.add_argument("--batch", type=int, default=100, help="mutations per push")
    p.add_argument("--history", type=int, default=25, help="untimed pushes per device first")
    p.add_argument("--pushes", type=int, default=600, help="timed pushes per cell")
    p.add_argument("--smoke", action="store_true", help="tiny sizes (the test suite's run)")
    p.add_argument("--out", type=Path, default=DEFAULT_OUT)
    p.add_argument("--write-docs", action="store_true", help="update docs/benchmarks.md")
    a = p.parse_args(argv)
    if a.smoke:
        a.devices, a.batch, a.history, a.pushes = 2, 10, 2, 8
    if min(a.devices, a.batch, a.pushes) < 1 or a.history < 0:
        p.error("--devices, --batch and --pushes must be ≥ 1, --history ≥ 0")
    return Config(a.devices, a.batch, a.history, a.pushes, a.out, a.write_docs)


def _sql(stmt: Any) -> str:
    """The statement as SQLite SQL with `:column` parameters (rows are dicts)."""
    return str(stmt.compile(dialect=sqlite_dialect.dialect(paramstyle="named")))


def _statements() -> tuple[str, str]:
    keys = ["tenant_id", "entity_type", "entity_id", "owner"]
    upsert = sqlite_dialect.insert(entities)
    upsert = upsert.on_conflict_do_update(
        index_elements=keys,
        set_={c.name: upsert.excluded[c.name] for c in entities.c if c.name not in keys},
    )
    return _sql(upsert), _sql(mutation_results.insert())


class Workload:
    """The rows of each device's next push, as the store would write them."""

    def __init__(self, cfg: Config) -> None:
        self.cfg = cfg
        self.seq = 0
        self.counter = [0] * cfg.devices
        self.now = datetime.now(UTC)
        self.ordered = False

    def mutation_id(self) -> str:
        if not self.ordered:
            return str(uuid.uuid4())
        # 48 bits of milliseconds, then randomness: a UUIDv7's order, not its exact bits
        return str(uuid.UUID(int=(time.time_ns() // 1_000_000) << 80 | uuid.uuid4().int >> 48))

    def push(self, device: int) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
        device_id = f"device-{device:04d}"
        rows, records = [], []
        created = codec.to_ts(self.now)
        for i in range(self.cfg.batch):
            self.counter[device] += 1
            n = self.counter[device]
            self.seq += 1
            clock = VectorClock.from_json({device_id: n})
            state = EntityState(
                key=EntityKey("tenant-1", "progress", f"course-{i}", f"user-{device:04d}"),
                payload={"completion": round(n / (n + 1000), 6), "score": min(100, n // 50)},
                clock=clock,
                deleted=False,
                ts=1_800_000_000_000 + n,
                device_id=device_id,
                seq=self.seq,
            )
            rows.append(
                dict(zip(codec.ENTITY_COLUMNS, codec.entity_values(state, self.now), strict=True))
            )
            result = MutationResult(self.mutation_id(), Status.APPLIED, clock=clock)
            records.append(
                {
                    "tenant_id": "tenant-1",
                    "device_id": device_id,
                    "mutation_id": result.mutation_id,
                    "result": result.encoded,
                    "created_at": created,
                }
            )
        return rows, records


def _connect(path: Path) -> sqlite3.Connection:
    conn = sqlite3.connect(path, isolation_level=None)
    # the server's pragmas (storage/engine.py)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=FULL")
    conn.execute("PRAGMA foreign_keys=ON")
    return conn


async def _create(data_dir: Path) -> Path:
    store = await open_store(None, data_dir)
    await store.close()
    return data_dir / SQLITE_FILE


def run_cell(cfg: Config, writes: tuple[str, ...], connections: int) -> dict[str, Any]:
    upsert, insert = _statements()
    with tempfile.TemporaryDirectory(prefix="crdt-sync-sqlite-writes-") as tmp:
        db = asyncio.run(_create(Path(tmp)))
        conns = [_connect(db) for _ in range(connections)]
        work = Workload(cfg)
        work.ordered = "ordered" in writes
        body_ms: list[float] = []
        commit_ms: list[float] = []
        untimed = cfg.history * cfg.devices
        for n in range(untimed + cfg.pushes):
            conn = conns[n % connections]
            rows, records = work.push(n % cfg.devices)
            t0 = time.perf_counter()
            conn.execute("BEGIN IMMEDIATE")
            if "entities" in writes:
                conn.executemany(upsert, rows)
            if "records" in writes:
                conn.executemany(insert, records)
            t1 = time.perf_counter()
            conn.execute("COMMIT")
            t2 = time.perf_counter()
            if n >= untimed:
                body_ms.append((t1 - t0) * 1000)
                commit_ms.append((t2 - t1) * 1000)
        counts = {
            table: conns[0].execute(f"SELECT count(*) FROM {table}").fetchone()[0]
            for table in ("entities", "mutation_results")
        }
        for conn in conns:
            conn.close()
        size = db.stat().st_size
    return {
        "writes": " + ".join(w for w in writes if w != "ordered"),
        "connections": connections,
        "pushes": cfg.pushes,
        "body_ms": _stats(body_ms),
        "commit_ms": _stats(commit_ms),
        "total_ms_mean": round(sum(body_ms + commit_ms) / cfg.pushes, 3),
        "db_mib": round(size / 2**20, 1),
        "rows": counts,
    }


def _stats(values: list[float]) -> dict[str, float | None]:
    ordered = sorted(values)
    return {
        "mean": round(sum(ordered) / len(ordered), 3),
        "p50": report._r(report.percentile(ordered, 50), 3),
        "p95": report._r(report.percentile(ordered, 95), 3),
    }


def markdown(result: dict[str, Any]) -> str:
    rows = result["results"]
    push = {r["connections"]: r["total_ms_mean"] for r in rows if r["name"] == "push"}
    lines = [
        "| writes | connections | body ms mean / p95 | commit ms mean / p95 | body + commit ms "
        "(mean) | share of the push's |",
        "|---|---|---|---|---|---|",
    ]
    for r in rows:
        share = (
            r["total_ms_mean"] / push[r["connections"]] * 100 if push.get(r["connections"]) else 0
        )
        body, commit = r["body_ms"], r["commit_ms"]
        lines.append(
            f"| {r['name']} | {r['connections']} | {body['mean']:.2f} / {body['p95']:.2f} | "
            f"{commit['mean']:.2f} / {commit['p95']:.2f} | {r['total_ms_mean']:.2f} | "
            f"{share:.0f}% |"
        )
    return "\n".join(lines)


def docs_section(result: dict[str, Any]) -> str:
    meta, params = result["meta"], result["meta"]["params"]
    m = meta["machine"]
    return "\n".join(
        [
            DOCS_BEGIN,
            "## SQLite's own cost of a push's writes (diagnostic)",
            "",
            f"Measured {meta['finished_at']} at commit `{meta['commit'] or 'uncommitted'}` with",
            "",
            "```",
            meta["command"],
            "```",
            "",
            f"Machine: {m['nproc']} CPUs ({m['cpu']}), {m['memory']} memory, Python {m['python']},"
            f" SQLite {m['sqlite']}.",
            "",
            f"What is measured: the SQL a push of {params['batch']} `progress` updates writes "
            f"({params['devices']} devices, each updating its user's course-0…"
            f"{params['batch'] - 1} with fresh random mutation ids, after {params['history']} "
            f"untimed pushes per device), on the sqlite3 driver without the server: the store's "
            "schema, pragmas (WAL, `synchronous=FULL`), statements and row encodings. Body = "
            "BEGIN IMMEDIATE to the last insert; commit = the COMMIT (its WAL frames and fsync). "
            "*entities only* / *records only* write one half of the push (the upserts; the "
            "idempotency records, one per mutation, keyed by its random id); *time-ordered ids*: "
            "the whole push with mutation ids that grow with time (as UUIDv7s do). Two connections "
            "take turns, as two sync workers do. Share = of the push's body + commit on as many "
            f"connections; {params['pushes']} timed pushes per cell, one fresh database each.",
            "",
            markdown(result),
            DOCS_END,
        ]
    )


def main(argv: list[str] | None = None) -> int:
    cfg = parse_args(argv)
    started = datetime.now(UTC)
    load0 = os.getloadavg()
    rows = []
    for name, writes in WRITES.items():
        for connections in CONNECTIONS:
            cell = {"name": name, **run_cell(cfg, writes, connections)}
            report.log(
                f"{name}, {connections} connection(s): body {cell['body_ms']['mean']:.2f} ms, "
                f"commit {cell['commit_ms']['mean']:.2f} ms per push"
            )
            rows.append(cell)
    command = "python -m bench.sqlite_writes" + (" " + " ".join(argv) if argv else "")
    meta = report.run_meta(command, started, load0, (), None)
    meta["params"] = {
        "devices": cfg.devices,
        "batch": cfg.batch,
        "history": cfg.history,
        "pushes": cfg.pushes,
    }
    result = {"meta": meta, "results": rows}
    cfg.out.parent.mkdir(parents=True, exist_ok=True)
    cfg.out.write_text(json.dumps(result, indent=2))
    print(markdown(result))
    print(f"\nJSON: {cfg.out}")
    if cfg.write_docs:
        report.update_docs(cfg.docs_path, docs_section(result), DOCS_BEGIN, DOCS_END)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
