"""Statistics, the Markdown report, the machine description and the docs/benchmarks.md section."""

from __future__ import annotations

import math
import os
import platform
import sqlite3
import subprocess
import sys
from collections import Counter
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
DOCS_BEGIN = "<!-- http_sync:begin -->"
DOCS_END = "<!-- http_sync:end -->"
NOISY_OTHER_CPU_PCT = 25.0
PACKAGES = (
    "crdt-sync",
    "quart",
    "hypercorn",
    "sqlalchemy",
    "aiosqlite",
    "asyncpg",
    "pyjwt",
    "httpx",
    "pycrdt",
)

WHAT_IS_MEASURED = """\
What is measured: simulated player devices in separate client processes (multiprocessing,
one asyncio loop and one `httpx.AsyncClient` per device: HTTP/1.1 keep-alive over loopback)
against `crdt-sync serve` started by the benchmark. Each device is its own user of one tenant,
registered with `POST /sync/v1/devices`; every request carries the device token and the HMAC
headers. Closed loop: a device sends its next request as soon as the last one returned. Each
cell runs a warm-up, then the measured window; a request counts when it *completes* inside the
window. Latency is client-side, from just before sending to the full response body.

- **push**: `POST /sync/v1/push` with {batch} `progress` puts (`course-0…{batch_last}` of the
  device's user, a fresh `mutation_id` each, the device's own clock entry incremented per
  mutation, so each is `applied` over the previous version: an update, not an insert).
- **pull**: a 500-entity delta. Before the cell each device takes cursor C0 on its empty user,
  pushes {pull_size} `progress` entities, and checks that `pull?cursor=C0&limit={pull_size}`
  returns exactly {pull_size} changes. The measured request repeats that same delta pull from
  C0 (nothing is written meanwhile), so every pull serializes {pull_size} changes.
- **pull_full** (only with `--workloads`): the same seed, pulled without a cursor (a full resync
  page of the current state).
- **ack**: `POST /sync/v1/ack` with a cursor the device got from a pull → `204`.

req/s is per cell (all devices); items/s counts mutations (push) or changes (pull). Any non-2xx
or transport failure is an error, counted over warm-up and window, by status and error code.
CPU over the measured window: client = the busiest client process / all client processes,
server = `crdt-sync` and its children, other = the rest of the machine (PostgreSQL's processes,
or anything else that ran), each in % of one core; machine = all cores busy, in % of the whole
machine. Saturation = the highest req/s seen over the concurrency levels. A crdt-sync backend
named `sqlite+2w` is the server started with `--sync-workers 2` (push, pull and ack run in two
worker processes beside the main one: web/sync_workers.py); plain `sqlite` is one process.
"""

MODES = {
    "full": "default full-CouchDB",  # what the pouchdb-server CLI serves
    "minimum": "minimumForPouchDB (no auth, security, validation or log layers)",
}
PEER_MEASURED = """**The peer, side by side** (target `pouchdb`): pouchdb-server {pouchdb_server}
(`bench/peers/pouchdb.mjs`: express-pouchdb in its {mode} mode over
pouchdb-core {pouchdb_core} with the memory adapter, one Node {node} process, started by the
benchmark), driven by the same client processes and closed loop, one keep-alive connection per
device, with CouchDB's nearest equivalents:

- **push** ↔ `POST /bench_push/_bulk_docs` with {batch} *new* documents, each the same JSON
  object as a crdt-sync mutation with `_id` (a fresh UUID) in place of `mutation_id`.
- **pull** ↔ `GET /bench_pull/_changes?limit={pull_size}&include_docs=true&since=S`. Before the
  cell the database is filled with {pull_size} documents per device (most devices of the run),
  in bulks of {batch}; device k starts at page k and pages through the feed, wrapping around,
  so every pull returns {pull_size} changes with their documents.
- **ack** ↔ the replication checkpoint `PUT /bench_ack/_local/<device>` with its previous
  `_rev` (what PouchDB replication writes to record how far it got).

Not like for like, on purpose: pouchdb-server keeps everything in memory and runs without users
(no authentication; no per-request log either, crdt-sync writes none), while every crdt-sync
request verifies a JWT and an HMAC signature, applies the per-type merge policy to each
mutation and commits durably to its database (SQLite: WAL, `synchronous=FULL`; or PostgreSQL).
Server CPU of a pouchdb row is the Node process's. Ratio = crdt-sync req/s / pouchdb req/s
with the same number of devices.
"""


def percentile(sorted_values: list[float], q: float) -> float | None:
    """Linear interpolation between closest ranks (numpy's default)."""
    if not sorted_values:
        return None
    pos = (len(sorted_values) - 1) * q / 100.0
    lo, hi = math.floor(pos), math.ceil(pos)
    frac = pos - lo
    return sorted_values[lo] * (1 - frac) + sorted_values[hi] * frac


def _r(value: float | None, digits: int = 2) -> float | None:
    return None if value is None else round(value, digits)


def summarize_cell(
    backend: str,
    workload: str,
    concurrency: int,
    worker_stats: list[dict[str, Any]],
    duration: float,
    server_cpu_s: float,
    machine_busy_pct: float,
    target: str = "crdt-sync",
) -> dict[str, Any]:
    """Merge the workers' samples of one cell into one result row."""
    latencies = sorted(x for w in worker_stats for x in w["latencies_ms"])
    errors: Counter[str] = Counter()
    statuses: Counter[str] = Counter()
    for w in worker_stats:
        errors.update(w["errors"])
        statuses.update(w["statuses"])
    requests = sum(w["requests"] for w in worker_stats)
    items = sum(w["items"] for w in worker_stats)
    active = [w for w in worker_stats if w["window_s"] > 0]
    ncpu = os.cpu_count() or 1
    server_pct = 100.0 * server_cpu_s / duration
    cpu_pcts = [100.0 * w["cpu_s"] / w["window_s"] for w in active]
    return {
        "target": target,
        "backend": backend,
        "endpoint": workload,
        "concurrency": concurrency,
        "requests": requests,
        "rps": _r(requests / duration),
        "items_per_s": _r(items / duration, 1) if workload != "ack" else None,
        "p50_ms": _r(percentile(latencies, 50)),
        "p95_ms": _r(percentile(latencies, 95)),
        "p99_ms": _r(percentile(latencies, 99)),
        "mean_ms": _r(sum(latencies) / len(latencies) if latencies else None),
        "max_ms": _r(latencies[-1] if latencies else None),
        "errors": sum(errors.values()),
        "error_codes": dict(errors),
        "statuses": dict(statuses),
        "client_processes": len(worker_stats),
        "client_cpu_pct_max": _r(max(cpu_pcts, default=0.0), 1),
        "client_cpu_pct_total": _r(sum(cpu_pcts), 1),
        "server_cpu_pct": _r(server_pct, 1),
        "machine_cpu_pct": _r(machine_busy_pct, 1),
        # what neither the client nor the server used: PostgreSQL, or anything else running
        "other_cpu_pct": _r(max(0.0, machine_busy_pct * ncpu - sum(cpu_pcts) - server_pct), 1),
    }


def _target(row: dict[str, Any]) -> str:
    return str(row.get("target", "crdt-sync"))  # results written before there were peers


def saturation(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    best: dict[tuple[str, str, str], dict[str, Any]] = {}
    for row in rows:
        key = (_target(row), row["backend"], row["endpoint"])
        if key not in best or row["rps"] > best[key]["rps"]:
            best[key] = row
    return [
        {
            "target": t,
            "backend": b,
            "endpoint": e,
            "max_rps": row["rps"],
            "at_concurrency": row["concurrency"],
            "p95_ms": row["p95_ms"],
            "items_per_s": row["items_per_s"],
        }
        for (t, b, e), row in best.items()
    ]


def log(msg: str) -> None:
    """Progress lines go to stderr; stdout carries the report."""
    print(msg, file=sys.stderr, flush=True)


def stamp(moment: datetime) -> str:
    return moment.isoformat(timespec="seconds").replace("+00:00", "Z")


def run_meta(
    command: str,
    started: datetime,
    load0: tuple[float, ...],
    nofile: Any,
    pg_version: Any,
) -> dict[str, Any]:
    """What every benchmark's JSON says about its run: when, what, which commit, where."""
    return {
        "started_at": stamp(started),
        "finished_at": stamp(datetime.now(UTC)),
        "command": command,
        "commit": git_commit(),
        "machine": machine_info(),
        "postgresql_version": pg_version,
        "loadavg_at_start": list(load0),
        "loadavg_at_end": list(os.getloadavg()),
        "nofile": list(nofile),
    }


def md_cell(value: Any, yes: str = "yes", no: str = "**NO**") -> str:
    """A Markdown table cell: "-" for None, `yes`/`no` for booleans, 1 or 2 decimals for
    floats, thousands separators for integers."""
    if value is None:
        return "-"
    if isinstance(value, bool):
        return yes if value else no
    if isinstance(value, float):
        return f"{value:,.1f}" if value >= 10 else f"{value:.2f}"
    if isinstance(value, int):
        return f"{value:,}"
    return str(value)


def md_row(cells: list[Any], yes: str = "yes", no: str = "**NO**") -> str:
    return "| " + " | ".join(md_cell(c, yes, no) for c in cells) + " |"


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:,.1f}" if value >= 10 else f"{value:.2f}"
    return str(value)


def _errors_cell(row: dict[str, Any]) -> str:
    if not row["errors"]:
        return "0"
    codes = ", ".join(f"{k} x{v}" for k, v in sorted(row["error_codes"].items()))
    return f"{row['errors']} ({codes})"


def _latencies_cell(row: dict[str, Any]) -> str:
    return " / ".join(_cell(row[k]) for k in ("p50_ms", "p95_ms", "p99_ms"))


def _ratio(ours: Any, peer: Any) -> str:
    if not ours or not peer:
        return "-"
    return f"{ours / peer:.2f}"


def comparison_table(rows: list[dict[str, Any]]) -> list[str]:
    """crdt-sync and pouchdb side by side per (endpoint, devices); empty without both."""
    peers = {(r["endpoint"], r["concurrency"]): r for r in rows if _target(r) == "pouchdb"}
    ours = [r for r in rows if _target(r) == "crdt-sync"]
    if not peers or not ours:
        return []
    lines = [
        "| endpoint | devices | crdt-sync (backend) req/s | p50 / p95 / p99 ms | server CPU % "
        "| pouchdb req/s | p50 / p95 / p99 ms | server CPU % | req/s ratio crdt-sync/pouchdb "
        "| errors crdt-sync / pouchdb | client CPU % max (crdt-sync / pouchdb) |",
        "|" + "---|" * 11,
    ]
    for r in ours:
        peer = peers.get((r["endpoint"], r["concurrency"]))
        empty = {k: None for k in r}
        q = peer or empty
        cells = [
            r["endpoint"],
            r["concurrency"],
            f"{_cell(r['rps'])} ({r['backend']})",
            _latencies_cell(r),
            r["server_cpu_pct"],
            q["rps"],
            _latencies_cell(q),
            q["server_cpu_pct"],
            _ratio(r["rps"], q["rps"]),
            f"{r['errors']} / {_cell(q['errors'])}",
            f"{_cell(r['client_cpu_pct_max'])} / {_cell(q['client_cpu_pct_max'])}",
        ]
        lines.append("| " + " | ".join(_cell(c) for c in cells) + " |")
    return lines


def markdown_tables(report: dict[str, Any]) -> str:
    lines: list[str] = []
    side_by_side = comparison_table(report["results"])
    if side_by_side:
        lines += ["Side by side (crdt-sync and pouchdb-server, same clients and devices):", ""]
        lines += [*side_by_side, "", "Every cell:", ""]
    head = (
        "| target | backend | endpoint | devices | requests | req/s | items/s | p50 ms | p95 ms "
        "| p99 ms | errors | client CPU % (max/all) | server CPU % | other CPU % "
        "| machine CPU % |"
    )
    lines += [head, "|" + "---|" * 15]
    for r in report["results"]:
        cpu = f"{_cell(r['client_cpu_pct_max'])} / {_cell(r['client_cpu_pct_total'])}"
        cells = [
            _target(r),
            r["backend"],
            r["endpoint"],
            r["concurrency"],
            r["requests"],
            r["rps"],
            r["items_per_s"],
            r["p50_ms"],
            r["p95_ms"],
            r["p99_ms"],
            _errors_cell(r),
            cpu,
            r["server_cpu_pct"],
            r["other_cpu_pct"],
            r["machine_cpu_pct"],
        ]
        lines.append("| " + " | ".join(_cell(c) for c in cells) + " |")
    lines += ["", "Saturation (highest req/s over the concurrency levels):", ""]
    lines += ["| target | backend | endpoint | max req/s | at devices | p95 ms there | items/s |"]
    lines += ["|---|---|---|---|---|---|---|"]
    for s in report["saturation"]:
        cells = [
            _target(s),
            s["backend"],
            s["endpoint"],
            s["max_rps"],
            s["at_concurrency"],
            s["p95_ms"],
            s["items_per_s"],
        ]
        lines.append("| " + " | ".join(_cell(c) for c in cells) + " |")
    # On SQLite nothing but the client and the server should be busy; PostgreSQL rows count
    # the database's own processes as "other", so only SQLite rows can reveal a noisy machine.
    noisy = [r["other_cpu_pct"] for r in report["results"] if r["backend"] == "sqlite"]
    if noisy and max(noisy) > NOISY_OTHER_CPU_PCT:
        lines.append(
            f"\nWARNING: other processes used up to {max(noisy):.0f}% of a core during the "
            "SQLite cells: the machine was not quiet, and these numbers understate the server."
        )
    # crdt-sync pushes answer "applied" per mutation, pouchdb's bulk_docs "ok" per document
    odd = [r for r in report["results"] if set(r["statuses"]) - {"applied", "ok"}]
    for r in odd:
        lines.append(
            f"\nNote: {_target(r)} {r['backend']} {r['endpoint']} x{r['concurrency']}: result "
            f"statuses {r['statuses']}"
        )
    for s in report["skipped"]:
        what = " ".join(str(s[k]) for k in ("target", "backend", "endpoint") if k in s)
        lines.append(f"\nSkipped {what}: {s['reason']}")
    for f in report["failures"]:
        what = " ".join(str(f[k]) for k in ("target", "backend", "endpoint") if k in f)
        lines.append(f"\nFAILED {what}: {f['error']}")
    return "\n".join(lines)


def _meminfo_total() -> str:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                kib = int(line.split()[1])
                return f"{kib / 1024 / 1024:.1f} GiB"
    except OSError:
        pass
    return "unknown"


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _version(package: str) -> str | None:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return None


def git_commit() -> str | None:
    def git(*args: str) -> str:
        out = subprocess.run(["git", *args], cwd=REPO, capture_output=True, text=True, check=True)
        return out.stdout.strip()

    try:
        commit = git("rev-parse", "--short", "HEAD")
        dirty = git("status", "--porcelain", "--untracked-files=no")
    except (OSError, subprocess.CalledProcessError):
        return None
    return f"{commit}-dirty" if dirty else commit


def machine_info() -> dict[str, Any]:
    return {
        "nproc": os.cpu_count(),
        "cpu": _cpu_model(),
        "memory": _meminfo_total(),
        "kernel": platform.release(),
        "python": platform.python_version(),
        "sqlite": sqlite3.sqlite_version,
        "packages": {p: _version(p) for p in PACKAGES},
        "executable": sys.executable,
    }


def docs_section(report: dict[str, Any]) -> str:
    meta = report["meta"]
    m = meta["machine"]
    pkgs = ", ".join(f"{k} {v}" for k, v in m["packages"].items() if v)
    params = meta["params"]
    pg = meta.get("postgresql_version")
    measured = WHAT_IS_MEASURED.format(
        batch=params["batch"], batch_last=params["batch"] - 1, pull_size=params["pull_size"]
    )
    peer = meta.get("peers", {}).get("pouchdb")
    peer_line = ""
    if peer and any(_target(r) == "pouchdb" for r in report["results"]):
        measured += "\n" + PEER_MEASURED.format(
            pouchdb_server=peer.get("pouchdb-server"),
            pouchdb_core=peer.get("pouchdb-core"),
            node=peer.get("node"),
            mode=MODES.get(params.get("pouchdb_mode", "full"), "?"),
            batch=params["batch"],
            pull_size=params["pull_size"],
        )
        peer_line = (
            f" Peer: Node {peer.get('node')}, pouchdb-server {peer.get('pouchdb-server')}, "
            f"express-pouchdb {peer.get('express-pouchdb')}, pouchdb-core "
            f"{peer.get('pouchdb-core')}, pouchdb-adapter-memory "
            f"{peer.get('pouchdb-adapter-memory')}."
        )
    return "\n".join(
        [
            DOCS_BEGIN,
            "## HTTP sync: push / pull / ack",
            "",
            f"Measured {meta['finished_at']} at commit `{meta['commit'] or 'uncommitted'}` with",
            "",
            "```",
            meta["command"],
            "```",
            "",
            f"Machine: {m['nproc']} CPUs ({m['cpu']}), {m['memory']} memory, Linux {m['kernel']},",
            f"Python {m['python']}, SQLite {m['sqlite']}"
            + (f", PostgreSQL {pg}" if pg else "")
            + f"; {pkgs}."
            + peer_line,
            f"Client processes: {params['workers']}; {params['duration']} s per cell after "
            f"{params['warmup']} s warm-up. Client and server share the machine; load average "
            f"at the start: {' '.join(f'{x:.2f}' for x in meta['loadavg_at_start'])}.",
            "",
            measured,
            markdown_tables(report),
            DOCS_END,
        ]
    )


def update_docs(path: Path, section: str, begin: str = DOCS_BEGIN, end: str = DOCS_END) -> None:
    """Replace the section between the `begin` and `end` markers of `path` (every benchmark
    owns one pair), or append it when the markers are not there yet."""
    if path.exists():
        text = path.read_text()
    else:
        text = (
            "# Benchmarks\n\nReproducible numbers for crdt-sync; every section names the command "
            "and the commit it measured. Regenerate a section with its command plus "
            "`--write-docs`.\n"
        )
    if begin in text and end in text:
        before = text[: text.index(begin)]
        after = text[text.index(end) + len(end) :]
        text = before + section + after
    else:
        text = text.rstrip("\n") + "\n\n" + section + "\n"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
