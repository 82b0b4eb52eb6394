"""Markdown tables, goals and the docs/benchmarks.md section of bench/ws_rooms.py.

Rows carry the server under test in "target" (crdt-sync, or a peer of bench/peers.py) and
"backend" (crdt-sync's sqlite/postgresql; memory for the peers). Results written before the
peers were added have no "target": they are crdt-sync's.
"""

from __future__ import annotations

from typing import Any

from bench import report

DOCS_BEGIN = "<!-- ws_rooms:begin -->"
DOCS_END = "<!-- ws_rooms:end -->"
TARGET_P95_MS = 20.0
TARGET_P95_AT = 50  # editors in one room
TARGET_IDLE_CONNS = 5000
TARGET_IDLE_RSS_MIB = 1024.0
TARGET_KIB_PER_CONN = 50.0
TARGET_KIB_AT = 10000

CRDT_SYNC = "crdt-sync"

WHAT_IS_MEASURED = """\
What is measured: the servers under test (*targets*), one at a time, each a single process
started fresh by the benchmark for every row, with the same workloads: `crdt-sync serve`
and the peers below, all on loopback. The clients are stock Yjs clients — `yjs` {yjs} +
`y-websocket` {ywebsocket} `WebsocketProvider` over `ws` for crdt-sync and the y-websocket-protocol
peers, `yjs` + `@hocuspocus/provider` {hocuspocus} `HocuspocusProvider` (each on its own
`HocuspocusProviderWebsocket`, one socket per client) for Hocuspocus — hosted many to a Node
process (`bench/ws/load.mjs`), in processes separate from the server. For crdt-sync every client
is an `author` of one tenant with its own HS256 token in `?token=`; the peers have no auth (an
empty token in Hocuspocus's Auth message). Like browsers, `ws` offers permessage-deflate unless
a row says *no deflate* (`--client-deflate off`); the *deflate* column says whether the server
accepted it.
{peers}
The workloads, the same for every target:

- **fan-out**: N clients join one fresh room (the first alone, then the others). From a common
  start, each inserts one character at a random index of a shared `Y.Text`, {rate:g} times a
  second with a random phase (open loop), for {warmup:g} s warm-up plus {duration:g} s
  measured. Latency = wall-clock time at which an insert became part of a receiving client's
  doc - time just before the origin made it (same host; the provider sends synchronously
  inside the insert), for every (insert, other client) pair of the inserts sent in the
  measured window. *all p95* is the p95 of the time until the *last* other client had an
  insert. Deliveries/s = those pairs / window.
  Converged = after the sending stopped, every client holds every insert, all texts are
  identical, and the text holds exactly as many characters of each client as it inserted.
  Rows marked *light* (`--receivers light`): all but 2 clients of the room are protocol-level
  clients — the same messages on the wire as the target's stock provider (sync step 1/2, their
  own inserts made by a real `Y.Doc`; for Hocuspocus each prefixed with the document name,
  after an Auth message), but they only read which inserts an update carries
  (`Y.parseUpdateMeta`) instead of integrating it, and hold no awareness state; the 2 stock
  clients check the text, the light ones that they received every insert. They exist because
  50 stock clients integrating 24,500 updates/s need more CPU than the server (see client CPU
  µs/delivery).
- **idle**: a fresh server per row; {warm} warm-up clients join first, then the clients open
  their connection and finish the sync handshake (socket creation → the provider's first
  `sync`/`synced` event; at most {conc} handshakes in flight), spread round-robin over the
  rooms — the first client of every room first, then the others (stock pycrdt-websocket
  0.16.5 hangs a client that joins a room still starting until the provider reconnects 30 s
  later) — then stay idle for {hold:g} s. Stock clients keep an awareness state unless the row says
  otherwise (each join is broadcast to the room, renewed every 15 s). KiB/conn = (server RSS
  after the hold - before connecting) / connections. Server CPU ms/conn covers the connect
  phase (handshakes, authentication, awareness fan-out).

CPU in % of one core over the measured window (fan-out) or the connect phase (idle): server =
the target's process and its children (sampled by pid, RSS likewise); CPU wait = time the
server's threads were runnable but had no CPU (`/proc/PID/task/*/schedstat`; high when other
processes starve it); client = the busiest Node process / all of them; other = the rest of the
machine (concurrent jobs, PostgreSQL); machine = all cores, in % of the machine. CPU
µs/delivery = CPU seconds from the first edit to convergence / every delivered (insert, client)
pair, all work included (crdt-sync also stores each update, the peers only hold it in memory;
the clients also edit): it hardly depends on what else runs, so "deliveries/s per core" = 10^6
/ that is the rate one whole core would carry (50 editors x 10 edits/s need 24,500
deliveries/s). Side by side: crdt-sync/target = crdt-sync's figure over the
target's, in the same row of the same run (below 1: crdt-sync is faster or leaner).
"""


def _cell(value: Any) -> str:
    return report.md_cell(value)


def _row(cells: list[Any]) -> str:
    return report.md_row(cells)


def _errors(row: dict[str, Any]) -> str:
    if not row["errors"]:
        return "0"
    kinds = ", ".join(f"{k} x{v}" for k, v in sorted(row["error_kinds"].items()))
    return f"{row['errors']} ({kinds})"


def target_of(row: dict[str, Any]) -> str:
    return str(row.get("target", CRDT_SYNC))


def label(row: dict[str, Any]) -> str:
    """ "crdt-sync (sqlite)", "hocuspocus (memory)"."""
    return f"{target_of(row)} ({row['backend']})"


def _deflate(row: dict[str, Any]) -> str:
    if not row["deflate"]:
        return "not offered"
    if "deflate_negotiated" not in row:
        return "-"
    return "yes" if row["deflate_negotiated"] else "no"


def fanout_goal(row: dict[str, Any]) -> str:
    if row["clients"] != TARGET_P95_AT or row["p95_ms"] is None:
        return "-"
    verdict = "met" if row["p95_ms"] <= TARGET_P95_MS else "**missed**"
    return f"p95 ≤ {TARGET_P95_MS:g} ms: {verdict}"


def idle_goal(row: dict[str, Any]) -> str:
    kib = row["rss_per_conn_kib"]
    parts = []
    if row["connections"] >= TARGET_IDLE_CONNS:
        ok = row["rss_after_mib"] < TARGET_IDLE_RSS_MIB and row["connected"] >= row["connections"]
        parts.append(f"< 1 GiB at {row['connections']:,}: {'met' if ok else '**missed**'}")
    else:
        projected = row["rss_before_mib"] + TARGET_IDLE_CONNS * kib / 1024
        verdict = "on track" if projected < TARGET_IDLE_RSS_MIB else "**off track**"
        parts.append(f"5k ≈ {projected:,.0f} MiB: {verdict}")
    verdict = "met" if kib <= TARGET_KIB_PER_CONN else "**missed**"
    label = "" if row["connections"] >= TARGET_KIB_AT else " (10k target)"
    parts.append(f"≤ {TARGET_KIB_PER_CONN:g} KiB/conn{label}: {verdict}")
    return "; ".join(parts)


def _fanout_variant(r: dict[str, Any]) -> str:
    variant = [f"light, {r['full_clients']} full"] if r["light"] else []
    variant += [] if r["deflate"] else ["no deflate"]
    return f"{r['clients']}" + (f" ({', '.join(variant)})" if variant else "")


def _idle_variant(r: dict[str, Any]) -> str:
    variant = [] if r["awareness"] else ["no awareness"]
    variant += [] if r["deflate"] else ["no deflate"]
    return f"{r['connections']:,}" + (f" ({', '.join(variant)})" if variant else "")


def _fanout_key(r: dict[str, Any]) -> tuple[Any, ...]:
    return (r["light"], r["deflate"], r["clients"])


def _idle_key(r: dict[str, Any]) -> tuple[Any, ...]:
    return (r["awareness"], r["deflate"], r["connections"], r["rooms"])


def ratio(ours: float | None, theirs: float | None) -> str:
    """crdt-sync's figure over the peer's: '0.50' (half the peer's), '-' when undefined."""
    if ours is None or theirs is None or ours <= 0 or theirs <= 0:
        return "-"
    return f"{ours / theirs:.2f}" if ours / theirs < 100 else f"{ours / theirs:,.0f}"


def _groups(
    rows: list[dict[str, Any]], key: Any
) -> list[tuple[dict[str, Any] | None, list[dict[str, Any]]]]:
    """Rows of the same workload together (in run order), each group with its reference: the
    first crdt-sync row of the group (None when crdt-sync did not run it)."""
    groups: dict[tuple[Any, ...], list[dict[str, Any]]] = {}
    for r in rows:
        groups.setdefault(key(r), []).append(r)
    out = []
    for members in groups.values():
        ref = next((r for r in members if target_of(r) == CRDT_SYNC), None)
        out.append((ref, members))
    return out


def _reference_note(pairs: list[tuple[dict[str, Any] | None, list[dict[str, Any]]]]) -> str:
    refs = sorted({label(ref) for ref, _ in pairs if ref is not None})
    return f"ratios against {' / '.join(refs)}" if refs else "no crdt-sync row to compare with"


def fanout_side_by_side(rows: list[dict[str, Any]]) -> list[str]:
    """One line per (workload, target), the targets of a workload together, with the ratio of
    crdt-sync's p95 latency to the target's."""
    pairs = _groups(rows, _fanout_key)
    head = (
        "| editors | target | p50 ms | p95 ms | p99 ms | crdt-sync/target p95 | deliveries/s "
        "| converged | errors | server CPU % | server RSS MiB | server CPU µs/delivery "
        "| deflate |"
    )
    lines = [f"Fan-out, side by side ({_reference_note(pairs)}):", "", head, "|" + "---|" * 13]
    for ref, members in pairs:
        for r in members:
            delivered = _cell(r["deliveries_per_s"])
            if r["deliveries"] != r["deliveries_expected"]:
                delivered += f" ({r['deliveries']:,} of {r['deliveries_expected']:,})"
            vs = "-" if ref is None or r is ref else ratio(ref["p95_ms"], r["p95_ms"])
            cells: list[Any] = [_fanout_variant(r), label(r), r["p50_ms"], r["p95_ms"]]
            cells += [r["p99_ms"], vs, delivered, r["converged"], _errors(r)]
            cells += [r["server_cpu_pct"], r["server_rss_mib"], r["server_cpu_us_per_delivery"]]
            cells.append(_deflate(r))
            lines.append(_row(cells))
    return lines


def idle_side_by_side(rows: list[dict[str, Any]]) -> list[str]:
    """One line per (workload, target), with the ratio of crdt-sync's RSS per connection to
    the target's."""
    pairs = _groups(rows, _idle_key)
    head = (
        "| connections | target | synced | conn/s | handshake p95 ms | server RSS MiB after "
        "| KiB/conn | crdt-sync/target KiB/conn | server CPU ms/conn | errors | deflate |"
    )
    lines = [f"Idle, side by side ({_reference_note(pairs)}):", "", head, "|" + "---|" * 11]
    for ref, members in pairs:
        for r in members:
            synced = f"{r['connected']:,}"
            missing = r["failed"] + r.get("not_started", 0)
            if missing:
                synced += f", **{missing:,} failed**"
            kib = r["rss_per_conn_kib"]
            vs = "-" if ref is None or r is ref else ratio(ref["rss_per_conn_kib"], kib)
            cells: list[Any] = [_idle_variant(r), label(r), synced, r["conn_per_s"]]
            cells += [r["handshake_p95_ms"], r["rss_after_mib"], kib, vs]
            cells += [r["server_cpu_ms_per_conn"], _errors(r), _deflate(r)]
            lines.append(_row(cells))
    return lines


def fanout_table(rows: list[dict[str, Any]]) -> list[str]:
    head = (
        "| target | editors | edits/s | deliveries/s | p50 ms | p95 ms | p99 ms | max ms "
        "| all p95 ms | goal | converged | errors | server CPU % (CPU wait %) | server RSS MiB "
        "| server CPU µs/delivery (deliveries/s per core) | client CPU µs/delivery "
        "| client CPU % max/all (procs) | other CPU % | machine CPU % |"
    )
    lines = [head, "|" + "---|" * 19]
    for r in rows:
        delivered = f"{_cell(r['deliveries_per_s'])}"
        if r["deliveries"] != r["deliveries_expected"]:
            delivered += f" ({r['deliveries']:,} of {r['deliveries_expected']:,})"
        client = (
            f"{_cell(r['client_cpu_pct_max'])} / {_cell(r['client_cpu_pct_total'])} "
            f"({r['client_processes']})"
        )
        cells: list[Any] = [label(r), _fanout_variant(r), r["edits_per_s"], delivered]
        cells += [r["p50_ms"], r["p95_ms"], r["p99_ms"], r["max_ms"], r["all_received_p95_ms"]]
        server = f"{_cell(r['server_cpu_pct'])} ({_cell(r['server_cpu_wait_pct'])})"
        cells += [fanout_goal(r), r["converged"], _errors(r), server]
        cost = f"{_cell(r['server_cpu_us_per_delivery'])} ({_cell(r['deliveries_per_core_s'])})"
        cells += [r["server_rss_mib"], cost, r["client_cpu_us_per_delivery"], client]
        cells += [r["other_cpu_pct"], r["machine_cpu_pct"]]
        lines.append(_row(cells))
    return lines


def idle_table(rows: list[dict[str, Any]]) -> list[str]:
    head = (
        "| target | connections | rooms | synced (after hold) | connect s | conn/s "
        "| handshake p50 / p95 / p99 ms | server RSS MiB before / after / closed | KiB/conn "
        "| goal | server CPU ms/conn | server CPU % connect (CPU wait %) / hold "
        "| client CPU % (procs) "
        "| other CPU % | errors |"
    )
    lines = [head, "|" + "---|" * 15]
    for r in rows:
        synced = f"{r['connected']:,} ({r['still_synced_after_hold']:,})"
        missing = r["failed"] + r.get("not_started", 0)
        if missing:
            synced += f", **{missing:,} failed**"
        if not r["awareness"]:
            synced += ", no awareness"
        if not r["deflate"]:
            synced += ", no deflate"
        hs = " / ".join(
            _cell(r[k]) for k in ("handshake_p50_ms", "handshake_p95_ms", "handshake_p99_ms")
        )
        rss = " / ".join(_cell(r[k]) for k in ("rss_before_mib", "rss_after_mib", "rss_closed_mib"))
        cpu = (
            f"{_cell(r['connect_server_cpu_pct'])} ({_cell(r['connect_server_cpu_wait_pct'])}) "
            f"/ {_cell(r['hold_server_cpu_pct'])}"
        )
        client = f"{_cell(r['connect_client_cpu_pct_total'])} ({r['client_processes']})"
        cells: list[Any] = [label(r), r["connections"], r["rooms"], synced, r["connect_s"]]
        cells += [r["conn_per_s"], hs, rss, r["rss_per_conn_kib"], idle_goal(r)]
        cells += [r["server_cpu_ms_per_conn"], cpu, client, r["connect_other_cpu_pct"]]
        cells.append(_errors(r))
        lines.append(_row(cells))
    return lines


def busy_note(result: dict[str, Any]) -> str | None:
    meta = result["meta"]
    ncpu = meta["machine"]["nproc"] or 1
    load = max(meta["loadavg_at_start"][0], meta["loadavg_at_end"][0])
    # PostgreSQL's own processes are "other" CPU by design: only rows without it count
    quiet = [r for r in result["fanout"] + result["idle"] if r["backend"] != "postgresql"]
    other = [
        (r["other_cpu_pct"] if r["workload"] == "fanout" else r["connect_other_cpu_pct"], r)
        for r in quiet
    ]
    noisy = [(pct, r) for pct, r in other if pct > report.NOISY_OTHER_CPU_PCT]
    if not noisy and load < ncpu:
        return None
    rows = ", ".join(f"{_label(r)} ({pct:.0f}%)" for pct, r in noisy)
    during = f"; other processes used over {report.NOISY_OTHER_CPU_PCT:.0f}% of a core " + (
        f"during these rows: {rows}" if rows else "during no row (PostgreSQL's not counted)"
    )
    return (
        f"WARNING: the machine was not quiet (concurrent jobs) — load average up to "
        f"{load:.2f} on {ncpu} CPUs{during}. Those figures understate the servers."
    )


def _label(r: dict[str, Any]) -> str:
    what = f"{label(r)} {r['workload']} x{r.get('clients') or r.get('connections')}"
    what += ", light" if r.get("light") else ""
    what += ", no awareness" if r.get("awareness") is False else ""
    return what + ("" if r["deflate"] else ", no deflate")


def markdown(result: dict[str, Any]) -> str:
    lines: list[str] = []
    if result["fanout"]:
        lines += [*fanout_side_by_side(result["fanout"]), ""]
    if result["idle"]:
        lines += [*idle_side_by_side(result["idle"]), ""]
    if result["fanout"]:
        lines += ["", "Fan-out in detail (one room, every editor typing):", ""]
        lines += fanout_table(result["fanout"])
    if result["idle"]:
        lines += ["", "Idle connections in detail (after the sync handshake):", ""]
        lines += idle_table(result["idle"])
    for r in result["fanout"] + result["idle"]:
        code = r.get("server_exit_code")
        if code not in (0, None):
            what = _label(r)
            took = r.get("server_shutdown_s")
            hung = f" (SIGKILL: its shutdown hung for {took} s)" if code == -9 else ""
            lines += ["", f"Note: the server of the {what} row exited with {code}{hung}."]
    note = busy_note(result)
    if note:
        lines += ["", note]
    for s in result["skipped"]:
        what = " ".join(str(s[k]) for k in ("target", "backend") if s.get(k))
        lines.append(f"\nSkipped {what}: {s['reason']}")
    for f in result["failures"]:
        what = " ".join(str(f[k]) for k in ("target", "backend", "workload") if f.get(k))
        lines.append(f"\nFAILED {what}: {f['error']}")
    return "\n".join(lines).lstrip("\n")


def peers_paragraph(peers: dict[str, Any]) -> str:
    if not peers:
        return ""
    lines = ["", "The peers (bench/peers.py, start scripts in bench/peers/; in memory, no auth):"]
    lines.append("")
    for name, info in peers.items():
        versions = ", ".join(f"`{k}` {v}" for k, v in info["versions"].items())
        lines.append(f"- **{name}**: {info['about']} ({versions})")
    return "\n".join(lines) + "\n"


def docs_section(result: dict[str, Any], notes: str = "") -> str:
    meta = result["meta"]
    m = meta["machine"]
    params = meta["params"]
    pkgs = ", ".join(f"{k} {v}" for k, v in m["packages"].items() if v)
    node = meta["node"]
    measured = WHAT_IS_MEASURED.format(
        yjs=node.get("yjs"),
        ywebsocket=node.get("y-websocket"),
        hocuspocus=node.get("@hocuspocus/provider"),
        peers=peers_paragraph(meta.get("peers", {})),
        rate=params["rate"],
        warmup=params["warmup"],
        duration=params["duration"],
        warm=params["idle_warm_clients"],
        conc=params["connect_concurrency"],
        hold=params["hold"],
    )
    load = " ".join(f"{x:.2f}" for x in meta["loadavg_at_start"])
    load_end = " ".join(f"{x:.2f}" for x in meta["loadavg_at_end"])
    lines = [
        DOCS_BEGIN,
        "## WebSocket rooms: fan-out and idle connections",
        "",
        f"Measured {meta['finished_at']} at commit `{meta['commit'] or 'uncommitted'}` with",
        "",
        "```",
        meta["command"],
        "```",
        "",
        f"Machine: {m['nproc']} CPUs ({m['cpu']}), {m['memory']} memory, Linux {m['kernel']},",
        f"Python {m['python']}, SQLite {m['sqlite']}, Node {node.get('node')}; {pkgs}.",
        f"Client and server share the machine; load average at the start: {load}, at the end: "
        f"{load_end}. Open-files limit: {meta['nofile']}.",
        "",
        measured,
        "crdt-sync's goals (the *goal* columns, shown for every target): propagation p95 ≤ 20 ms "
        "with 50 editors in one room; ≥ 5,000 idle connections per process under 1 GiB RSS "
        "(≤ 50 KiB per connection at 10,000).",
        "",
        markdown(result),
    ]
    if notes:
        lines += ["", notes.strip()]
    lines.append(DOCS_END)
    return "\n".join(lines)
