"""Markdown tables, targets and the docs/benchmarks.md section of bench/ws_rooms.py."""

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

WHAT_IS_MEASURED = """\
What is measured: `crdt-sync serve` (one process) started by the benchmark, and stock Yjs
clients — `yjs` {yjs} + `y-websocket` {ywebsocket} `WebsocketProvider` over `ws`, the packages of
`tests/interop` — hosted many to a Node process (`bench/ws/load.mjs`), in processes separate from
the server. Every client is an `author` of one tenant with its own HS256 token in `?token=`.
Like browsers, `ws` offers permessage-deflate and the server accepts it, unless a row says
*no deflate* (`--client-deflate off`).

- **fan-out**: N clients join one fresh room. From a common start, each inserts one character
  at a random index of a shared `Y.Text`, {rate:g} times a second with a random phase (open
  loop), for {warmup:g} s warm-up plus {duration:g} s measured. Latency = wall-clock time at
  which an insert became part of a receiving client's doc - time just before the origin made
  it (same host; the provider sends synchronously inside the insert), for every (insert,
  other client) pair of the inserts sent in the measured window. *all p95* is the p95 of the
  time until the *last* other client had an insert. Deliveries/s = those pairs / window.
  Converged = after the sending stopped, every client holds every insert, all texts are
  identical, and the text holds exactly as many characters of each client as it inserted.
  Rows marked *light* (`--receivers light`): all but 2 clients of the room are protocol-level
  clients — the same y-websocket messages on the wire (sync step 1/2, their own inserts made
  by a real `Y.Doc`), but they only read which inserts an update carries
  (`Y.parseUpdateMeta`) instead of integrating it, and hold no awareness state; the 2 stock
  clients check the text, the light ones that they received every insert. They exist because
  50 stock clients integrating 24,500 updates/s need more CPU than the server (see client CPU
  µs/delivery).
- **idle**: a fresh server per row; {warm} warm-up clients join first, then the clients open
  their connection and finish the sync handshake (socket creation → the provider's `sync`
  event; at most {conc} handshakes in flight), spread round-robin over the rooms, then stay
  idle for {hold:g} s. Stock clients keep an awareness state unless the row says
  otherwise (each join is broadcast to the room, renewed every 15 s). KiB/conn = (server RSS
  after the hold - before connecting) / connections. Server CPU ms/conn covers the connect
  phase (handshakes, authentication, awareness fan-out).

CPU in % of one core over the measured window (fan-out) or the connect phase (idle): server =
`crdt-sync` and its children; CPU wait = time the server's threads were runnable but had no
CPU (`/proc/PID/task/*/schedstat`; high when other processes starve it); client = the busiest
Node process / all of them; other = the rest of the machine (concurrent jobs, PostgreSQL);
machine = all cores, in % of the machine. CPU µs/delivery = CPU seconds from the first edit
to convergence / every delivered (insert, client) pair, all work included (the server also
stores each update, the clients also edit): it hardly depends on what else runs, so
"deliveries/s per core" = 10^6 / that is the rate one whole core would carry (50 editors x 10
edits/s need 24,500 deliveries/s).
"""


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "**NO**"
    if isinstance(value, float):
        return f"{value:,.1f}" if value >= 10 else f"{value:.2f}"
    if isinstance(value, int):
        return f"{value:,}"
    return str(value)


def _row(cells: list[Any]) -> str:
    return "| " + " | ".join(_cell(c) for c in cells) + " |"


def _errors(row: dict[str, Any]) -> str:
    if not row["errors"]:
        return "0"
    kinds = ", ".join(f"{k} x{v}" for k, v in sorted(row["error_kinds"].items()))
    return f"{row['errors']} ({kinds})"


def fanout_target(row: dict[str, Any]) -> str:
    if row["clients"] != TARGET_P95_AT or row["p95_ms"] is None:
        return "-"
    verdict = "met" if row["p95_ms"] <= TARGET_P95_MS else "**missed**"
    return f"p95 ≤ {TARGET_P95_MS:g} ms: {verdict}"


def idle_target(row: dict[str, Any]) -> str:
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


def fanout_table(rows: list[dict[str, Any]]) -> list[str]:
    head = (
        "| backend | editors | edits/s | deliveries/s | p50 ms | p95 ms | p99 ms | max ms "
        "| all p95 ms | target | converged | errors | server CPU % (CPU wait %) | server RSS MiB "
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
        variant = [f"light, {r['full_clients']} full"] if r["light"] else []
        variant += [] if r["deflate"] else ["no deflate"]
        editors = f"{r['clients']}" + (f" ({', '.join(variant)})" if variant else "")
        cells: list[Any] = [r["backend"], editors, r["edits_per_s"], delivered]
        cells += [r["p50_ms"], r["p95_ms"], r["p99_ms"], r["max_ms"], r["all_received_p95_ms"]]
        server = f"{_cell(r['server_cpu_pct'])} ({_cell(r['server_cpu_wait_pct'])})"
        cells += [fanout_target(r), r["converged"], _errors(r), server]
        cost = f"{_cell(r['server_cpu_us_per_delivery'])} ({_cell(r['deliveries_per_core_s'])})"
        cells += [r["server_rss_mib"], cost, r["client_cpu_us_per_delivery"], client]
        cells += [r["other_cpu_pct"], r["machine_cpu_pct"]]
        lines.append(_row(cells))
    return lines


def idle_table(rows: list[dict[str, Any]]) -> list[str]:
    head = (
        "| backend | connections | rooms | synced (after hold) | connect s | conn/s "
        "| handshake p50 / p95 / p99 ms | server RSS MiB before / after / closed | KiB/conn "
        "| target | server CPU ms/conn | server CPU % connect (CPU wait %) / hold "
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
        cells: list[Any] = [r["backend"], r["connections"], r["rooms"], synced, r["connect_s"]]
        cells += [r["conn_per_s"], hs, rss, r["rss_per_conn_kib"], idle_target(r)]
        cells += [r["server_cpu_ms_per_conn"], cpu, client, r["connect_other_cpu_pct"]]
        cells.append(_errors(r))
        lines.append(_row(cells))
    return lines


def busy_note(result: dict[str, Any]) -> str | None:
    meta = result["meta"]
    ncpu = meta["machine"]["nproc"] or 1
    load = max(meta["loadavg_at_start"][0], meta["loadavg_at_end"][0])
    other = [(r["other_cpu_pct"], r) for r in result["fanout"] if r["backend"] == "sqlite"]
    other += [(r["connect_other_cpu_pct"], r) for r in result["idle"] if r["backend"] == "sqlite"]
    noisy = [(pct, r) for pct, r in other if pct > report.NOISY_OTHER_CPU_PCT]
    if not noisy and load < ncpu:
        return None
    rows = ", ".join(f"{_label(r)} ({pct:.0f}%)" for pct, r in noisy)
    during = f"; other processes used over {report.NOISY_OTHER_CPU_PCT:.0f}% of a core " + (
        f"during these SQLite rows: {rows}" if rows else "during no SQLite row"
    )
    return (
        f"WARNING: the machine was not quiet (concurrent jobs) — load average up to "
        f"{load:.2f} on {ncpu} CPUs{during}. Those figures understate the server."
    )


def _label(r: dict[str, Any]) -> str:
    what = f"{r['workload']} x{r.get('clients') or r.get('connections')}"
    what += ", light" if r.get("light") else ""
    what += ", no awareness" if r.get("awareness") is False else ""
    return what + ("" if r["deflate"] else ", no deflate")


def markdown(result: dict[str, Any]) -> str:
    lines: list[str] = []
    if result["fanout"]:
        lines += ["Fan-out (one room, every editor typing):", ""]
        lines += fanout_table(result["fanout"])
    if result["idle"]:
        lines += ["", "Idle connections (after the sync handshake):", ""]
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
        lines.append(f"\nSkipped {s['backend']}: {s['reason']}")
    for f in result["failures"]:
        lines.append(f"\nFAILED {f['backend']} {f.get('workload', '')}: {f['error']}")
    return "\n".join(lines).lstrip("\n")


def docs_section(result: dict[str, Any], notes: str = "") -> str:
    meta = result["meta"]
    m = meta["machine"]
    params = meta["params"]
    pkgs = ", ".join(f"{k} {v}" for k, v in m["packages"].items() if v)
    node = meta["node"]
    measured = WHAT_IS_MEASURED.format(
        yjs=node.get("yjs"),
        ywebsocket=node.get("y-websocket"),
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
        "Targets: propagation p95 ≤ 20 ms with 50 editors in one room; ≥ 5,000 idle "
        "connections per process under 1 GiB RSS (≤ 50 KiB per connection at 10,000).",
        "",
        markdown(result),
    ]
    if notes:
        lines += ["", notes.strip()]
    lines.append(DOCS_END)
    return "\n".join(lines)
