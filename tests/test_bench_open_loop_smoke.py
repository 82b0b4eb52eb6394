"""The open-loop "10k devices" benchmark runs end to end at smoke size (200 devices, 100 idle
room connections, 1x and 3x for 5 s): structure and sanity only, never latency values."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from bench.ws_clients import node_missing
from tests.conftest import require

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_open_loop_smoke_run(tmp_path: Path) -> None:
    out = tmp_path / "open_loop.json"
    proc = subprocess.run(
        [sys.executable, "-m", "bench.open_loop", "--smoke", "--out", str(out)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=240,
        check=False,
    )
    assert proc.returncode == 0, f"stdout:\n{proc.stdout}\nstderr:\n{proc.stderr}"
    result = json.loads(out.read_text())
    assert result["failures"] == []
    assert result["meta"]["server"]["exit_code"] == 0, result["meta"]["server"]
    assert result["meta"]["setup"]["devices"] == 200

    assert [r["scale"] for r in result["runs"]] == [1.0, 3.0]
    for run in result["runs"]:
        assert [e["endpoint"] for e in run["endpoints"]] == ["push", "pull", "ack"]
        assert run["unfinished"] == 0, run
        assert run["server_rss_mib_peak"] > 0, run
        for e in run["endpoints"]:
            assert e["offered_per_s"] > 0, e
            assert e["scheduled"] > 0, e
            assert e["ok"] > 0, e
            assert e["p95_ms"] is not None, e
            # the server answered everything it was asked with a 2xx (a client-side timeout is
            # about speed, which this test does not judge)
            assert set(e["error_codes"]) <= {"timeout"}, e
        push = run["endpoints"][0]
        assert push["statuses"].get("applied", 0) > 0, push
        assert set(push["statuses"]) <= {"applied", "stale", "duplicate"}, push

    reason = node_missing()
    if reason:
        require("NODE", f"the idle room connections were skipped: {reason}")
    idle = result["idle"]
    assert idle["connections"] == 100
    assert idle["connected"] == 100, idle
    assert all(r["idle_synced_after"] == 100 for r in result["runs"]), result["runs"]
