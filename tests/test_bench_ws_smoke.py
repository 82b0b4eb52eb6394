"""The WebSocket rooms benchmark runs end to end against real servers (tiny settings, no
timing assertions): stock Yjs clients in Node processes, fan-out and idle connections, against
crdt-sync and against each peer server of bench/peers.py whose packages are installed."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from bench.peers import PEERS, peer_missing
from bench.ws_clients import node_missing
from tests.conftest import require

REPO = Path(__file__).resolve().parents[1]


def _smoke(tmp_path: Path, *targets: str) -> tuple[subprocess.CompletedProcess[str], Any]:
    out = tmp_path / "ws_rooms.json"
    cmd = [sys.executable, "-m", "bench.ws_rooms", "--smoke", "--out", str(out)]
    cmd += ["--targets", ",".join(targets)]
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=240, check=False)
    assert out.exists(), f"stdout:\n{proc.stdout}\nstderr:\n{proc.stderr}"
    return proc, json.loads(out.read_text())


def _check_rows(result: dict[str, Any], target: str, log: str) -> None:
    assert [f for f in result["failures"] if f.get("target") == target] == [], log
    servers = [s for s in result["meta"]["servers"] if s["target"] == target]
    assert servers and all(s["exit_code"] == 0 for s in servers), servers

    (fanout,) = [r for r in result["fanout"] if r["target"] == target]
    assert fanout["clients"] == 2
    assert fanout["converged"] is True, fanout
    assert fanout["distinct_texts"] == 1, fanout
    assert fanout["edits"] > 0, fanout
    assert fanout["deliveries"] > 0, fanout
    assert fanout["deliveries"] == fanout["deliveries_expected"], fanout
    assert fanout["text_length"] == fanout["edits_total"], fanout
    assert fanout["p95_ms"] is not None, fanout
    assert fanout["errors"] == 0, fanout

    (idle,) = [r for r in result["idle"] if r["target"] == target]
    assert idle["connections"] == 50
    assert idle["connected"] == 50, idle
    assert idle["failed"] == 0, idle
    assert idle["still_synced_after_hold"] == 50, idle
    assert idle["handshake_p95_ms"] is not None, idle
    assert idle["rss_after_mib"] > 0, idle
    assert idle["errors"] == 0, idle


@pytest.mark.slow
@pytest.mark.node
def test_ws_rooms_smoke_run(tmp_path: Path) -> None:
    reason = node_missing("y-websocket")
    if reason:
        require("NODE", reason)
    proc, result = _smoke(tmp_path, "crdt-sync")
    log = f"stdout:\n{proc.stdout}\nstderr:\n{proc.stderr}"
    assert proc.returncode == 0, log
    assert result["failures"] == [], log
    _check_rows(result, "crdt-sync", log)
    assert "Fan-out, side by side" in proc.stdout


@pytest.mark.slow
@pytest.mark.node
@pytest.mark.parametrize("peer", sorted(n for n, spec in PEERS.items() if spec.protocol))
def test_ws_rooms_smoke_peer(tmp_path: Path, peer: str) -> None:
    """The same smoke against one peer (its rows, exit status, shutdown). Skips where node or
    the peer's packages (`npm ci` in bench/peers) are absent; CRDT_SYNC_REQUIRE_NODE=1 /
    CRDT_SYNC_REQUIRE_PEERS=1 turn that into a failure."""
    protocol = PEERS[peer].protocol
    assert protocol is not None
    reason = node_missing(protocol)
    if reason and (protocol == "y-websocket" or shutil.which("node") is None):
        require("NODE", reason)  # node, or the y-websocket clients of tests/interop
    reason = reason or peer_missing(peer)
    if reason:
        require("PEERS", f"{peer}: {reason}")
    proc, result = _smoke(tmp_path, peer)
    log = f"stdout:\n{proc.stdout}\nstderr:\n{proc.stderr}"
    assert proc.returncode == 0, log
    _check_rows(result, peer, log)
    assert result["meta"]["peers"][peer]["versions"], result["meta"]["peers"]


def test_exit_status_fails_for_our_rows_and_reports_a_peers() -> None:
    from bench.ws_rooms import exit_status

    def result(target: str, converged: bool, connected: int) -> dict[str, Any]:
        return {
            "failures": [],
            "fanout": [{"target": target, "converged": converged}],
            "idle": [{"target": target, "connections": 10, "connected": connected}],
        }

    assert exit_status(result("crdt-sync", True, 10)) == 0
    assert exit_status(result("crdt-sync", False, 10)) == 1
    assert exit_status(result("crdt-sync", True, 9)) == 1
    # a peer that falls over under the load is a measured finding, shown in its row
    assert exit_status(result("pycrdt-websocket", False, 3)) == 0
    assert exit_status({**result("hocuspocus", True, 10), "failures": [{"target": "x"}]}) == 1
