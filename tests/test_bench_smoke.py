"""The HTTP sync benchmark runs end to end against a real server (tiny settings, no timing)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_http_sync_smoke_run(tmp_path: Path) -> None:
    out = tmp_path / "http_sync.json"
    proc = subprocess.run(
        [sys.executable, "-m", "bench.http_sync", "--smoke", "--out", str(out)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )
    assert proc.returncode == 0, f"stdout:\n{proc.stdout}\nstderr:\n{proc.stderr}"
    report = json.loads(out.read_text())
    assert report["failures"] == []
    rows = report["results"]
    assert {r["backend"] for r in rows} == {"sqlite"}
    for endpoint in ("push", "pull", "ack"):
        mine = [r for r in rows if r["endpoint"] == endpoint]
        assert sorted(r["concurrency"] for r in mine) == [1, 2]
        for row in mine:
            assert row["requests"] > 0, row
            assert row["errors"] == 0, row
            assert row["p95_ms"] is not None, row
    assert all(set(r["statuses"]) <= {"applied"} for r in rows if r["endpoint"] == "push")
    assert all(r["statuses"] == {} for r in rows if r["endpoint"] != "push")
