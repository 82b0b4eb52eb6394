"""The WebSocket rooms benchmark runs end to end against a real server (tiny settings, no
timing assertions): stock Yjs clients in Node processes, fan-out and idle connections."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import require

REPO = Path(__file__).resolve().parents[1]
MODULES = REPO / "tests" / "interop" / "node_modules"


def _node_missing() -> str | None:
    if shutil.which("node") is None:
        return "node is not installed"
    missing = [p for p in ("yjs", "y-websocket", "ws") if not (MODULES / p).is_dir()]
    return f"{MODULES} lacks {', '.join(missing)} (make interop)" if missing else None


@pytest.mark.slow
def test_ws_rooms_smoke_run(tmp_path: Path) -> None:
    reason = _node_missing()
    if reason:
        require("NODE", reason)
    out = tmp_path / "ws_rooms.json"
    proc = subprocess.run(
        [sys.executable, "-m", "bench.ws_rooms", "--smoke", "--out", str(out)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )
    assert proc.returncode == 0, f"stdout:\n{proc.stdout}\nstderr:\n{proc.stderr}"
    result = json.loads(out.read_text())
    assert result["failures"] == []
    assert all(s["exit_code"] == 0 for s in result["meta"]["servers"]), result["meta"]["servers"]

    (fanout,) = result["fanout"]
    assert fanout["clients"] == 2
    assert fanout["converged"] is True, fanout
    assert fanout["distinct_texts"] == 1, fanout
    assert fanout["edits"] > 0, fanout
    assert fanout["deliveries"] > 0, fanout
    assert fanout["deliveries"] == fanout["deliveries_expected"], fanout
    assert fanout["text_length"] == fanout["edits_total"], fanout
    assert fanout["p95_ms"] is not None, fanout
    assert fanout["errors"] == 0, fanout

    (idle,) = result["idle"]
    assert idle["connections"] == 50
    assert idle["connected"] == 50, idle
    assert idle["failed"] == 0, idle
    assert idle["still_synced_after_hold"] == 50, idle
    assert idle["handshake_p95_ms"] is not None, idle
    assert idle["rss_after_mib"] > 0, idle
    assert idle["errors"] == 0, idle
