"""The benchmark chart: p95 latency against concurrency, crdt-sync and each peer side by side,
drawn from the JSON results of one `make bench` run (never from typed-in numbers).

    python -m bench.chart                         # bench/results/*.json -> docs/bench-latency.png
    python -m bench.chart --out /tmp/chart.png --ws my_ws.json --http my_http.json

Panels: room fan-out (p95 per-update propagation against editors in the room), HTTP push and
HTTP pull (p95 against concurrent clients). A panel whose results are missing says so instead
of being left out silently.
"""

from __future__ import annotations

import argparse
import json
from collections import defaultdict
from pathlib import Path
from typing import Any

from bench import report

RESULTS = Path(__file__).resolve().parent / "results"
DEFAULT_OUT = report.REPO / "docs" / "bench-latency.png"


def _load(path: Path) -> dict[str, Any] | None:
    try:
        data: dict[str, Any] = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return data


def fanout_series(ws: dict[str, Any]) -> dict[str, list[tuple[float, float]]]:
    """target -> [(editors, p95 ms)] from the stock-client, no-deflate-forced fan-out rows."""
    series: dict[str, list[tuple[float, float]]] = defaultdict(list)
    for row in ws.get("fanout", []):
        if row.get("light") or row.get("p95_ms") is None:
            continue
        label = _label(row)
        series[label].append((float(row["clients"]), float(row["p95_ms"])))
    return {k: sorted(v) for k, v in series.items()}


def http_series(http: dict[str, Any], endpoint: str) -> dict[str, list[tuple[float, float]]]:
    series: dict[str, list[tuple[float, float]]] = defaultdict(list)
    for row in http.get("results", []):
        if row.get("endpoint") != endpoint or row.get("p95_ms") is None:
            continue
        series[_label(row)].append((float(row["concurrency"]), float(row["p95_ms"])))
    return {k: sorted(v) for k, v in series.items()}


def _label(row: dict[str, Any]) -> str:
    target = str(row.get("target", "crdt-sync"))
    backend = row.get("backend")
    if target == "crdt-sync" and backend:
        return f"crdt-sync ({backend})"
    return target


def draw(ws: dict[str, Any] | None, http: dict[str, Any] | None, out: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker

    panels: list[tuple[str, str, dict[str, list[tuple[float, float]]] | None]] = [
        (
            "Room fan-out: p95 propagation",
            "editors in one room (10 edits/s each)",
            None if ws is None else fanout_series(ws),
        ),
        (
            "HTTP push (100 mutations / _bulk_docs 100)",
            "concurrent clients (closed loop)",
            None if http is None else http_series(http, "push"),
        ),
        (
            "HTTP pull (500 entities / _changes 500)",
            "concurrent clients (closed loop)",
            None if http is None else http_series(http, "pull"),
        ),
    ]
    fig, axes = plt.subplots(1, len(panels), figsize=(5.2 * len(panels), 4.4))
    for ax, (title, xlabel, series) in zip(axes, panels, strict=True):
        ax.set_title(title, fontsize=10)
        ax.set_xlabel(xlabel)
        ax.set_ylabel("p95 latency, ms (log)")
        if not series:
            ax.text(0.5, 0.5, "no results in this run", ha="center", va="center")
            ax.set_axis_off()
            continue
        for label, points in sorted(series.items()):
            xs, ys = zip(*points, strict=True)
            style = "-o" if label.startswith("crdt-sync") else "--s"
            ax.plot(xs, ys, style, label=label, linewidth=2 if style == "-o" else 1)
        ax.set_yscale("log")
        ax.set_xscale("log")
        ticks = sorted({x for points in series.values() for x, _ in points})
        ax.xaxis.set_major_locator(matplotlib.ticker.FixedLocator(ticks))
        ax.xaxis.set_minor_locator(matplotlib.ticker.NullLocator())
        ax.xaxis.set_major_formatter(matplotlib.ticker.FormatStrFormatter("%g"))
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=8)
    commit = ""
    for data in (ws, http):
        if data and data.get("meta", {}).get("commit"):
            commit = str(data["meta"]["commit"])[:12]
            break
    fig.suptitle(f"crdt-sync and peers, same machine, same run (commit {commit or '?'})")
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.chart", description=__doc__)
    parser.add_argument("--ws", type=Path, default=RESULTS / "ws_rooms.json")
    parser.add_argument("--http", type=Path, default=RESULTS / "http_sync.json")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = parser.parse_args(argv)
    out = draw(_load(args.ws), _load(args.http), args.out)
    print(f"chart: {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
