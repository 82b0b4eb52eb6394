"""`make bench`'s pipeline end to end at smoke size: every benchmark against crdt-sync and the
installed peers, then the targets table and the chart, all from that run's JSON. Structure only:
no latency is asserted (performance lives in bench/ and docs/benchmarks.md)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bench import all as bench_all
from bench.peers import peers_missing
from tests.conftest import require
from tests.interop_client import node_available

pytestmark = pytest.mark.slow


def test_bench_all_smoke_writes_targets_and_chart(tmp_path: Path) -> None:
    reason = node_available() or peers_missing()
    if reason is not None:
        require("NODE", reason)
    code = bench_all.main(["--smoke", "--out-dir", str(tmp_path)])
    assert code == 0
    for name in ("ws_rooms", "http_sync", "open_loop", "sqlite_writes"):
        assert (tmp_path / f"{name}.json").stat().st_size > 0
    doc = (tmp_path / "benchmarks.md").read_text()
    assert bench_all.BEGIN in doc and bench_all.END in doc
    table = doc[doc.index(bench_all.BEGIN) : doc.index(bench_all.END)]
    for measure in ("room propagation", "idle room connections", "push 100", "pull 500"):
        assert measure in table
    assert "open loop" in table
    # the peers ran in the same run as crdt-sync
    ws = json.loads((tmp_path / "ws_rooms.json").read_text())
    assert {r["target"] for r in ws["fanout"]} >= {"crdt-sync", "hocuspocus", "y-websocket"}
    http = json.loads((tmp_path / "http_sync.json").read_text())
    assert {r["target"] for r in http["results"]} == {"crdt-sync", "pouchdb"}
    png = (tmp_path / "bench-latency.png").read_bytes()
    assert png.startswith(b"\x89PNG")
