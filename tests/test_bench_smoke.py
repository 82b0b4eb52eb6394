"""The HTTP sync benchmark runs end to end against a real server and, where its packages are
installed, against pouchdb-server side by side (tiny settings, no timing assertions)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from bench.pouch import pouch_missing
from tests.conftest import require

REPO = Path(__file__).resolve().parents[1]
ENDPOINTS = ("push", "pull", "ack")


@pytest.fixture(scope="module")
def smoke_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict[str, Any], str]:
    """One `--smoke` run shared by the tests of this module: (JSON report, stdout)."""
    out = tmp_path_factory.mktemp("http_sync") / "http_sync.json"
    proc = subprocess.run(
        [sys.executable, "-m", "bench.http_sync", "--smoke", "--out", str(out)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=240,
        check=False,
    )
    assert proc.returncode == 0, f"stdout:\n{proc.stdout}\nstderr:\n{proc.stderr}"
    report: dict[str, Any] = json.loads(out.read_text())
    return report, proc.stdout


def _cells_are_sane(rows: list[dict[str, Any]]) -> None:
    for endpoint in ENDPOINTS:
        mine = [r for r in rows if r["endpoint"] == endpoint]
        assert sorted(r["concurrency"] for r in mine) == [1, 2], mine
        for row in mine:
            assert row["requests"] > 0, row
            assert row["errors"] == 0, row
            assert row["p95_ms"] is not None, row


@pytest.mark.slow
def test_http_sync_smoke_run(smoke_run: tuple[dict[str, Any], str]) -> None:
    report, _ = smoke_run
    assert report["failures"] == []
    rows = [r for r in report["results"] if r["target"] == "crdt-sync"]
    # one process, and with one sync worker (`--sync-workers 1`, the smoke preset)
    assert {r["backend"] for r in rows} == {"sqlite", "sqlite+1w"}
    for backend in ("sqlite", "sqlite+1w"):
        _cells_are_sane([r for r in rows if r["backend"] == backend])
    assert all(set(r["statuses"]) <= {"applied"} for r in rows if r["endpoint"] == "push")
    assert all(r["statuses"] == {} for r in rows if r["endpoint"] != "push")
    ours = [s for s in report["meta"]["servers"] if s["target"] == "crdt-sync"]
    assert [s["exit_code"] for s in ours] == [0, 0], ours


@pytest.mark.slow
def test_http_sync_smoke_run_pouchdb(request: pytest.FixtureRequest) -> None:
    reason = pouch_missing()
    if reason:
        require("NODE", f"pouchdb-server cannot run: {reason}")
    report, stdout = request.getfixturevalue("smoke_run")
    assert report["failures"] == []
    rows = [r for r in report["results"] if r["target"] == "pouchdb"]
    assert {r["backend"] for r in rows} == {"memory"}
    _cells_are_sane(rows)
    # every bulk_docs document was stored; every _changes page was full
    assert all(set(r["statuses"]) == {"ok"} for r in rows if r["endpoint"] == "push")
    assert all(r["statuses"] == {} for r in rows if r["endpoint"] != "push")
    peers = [s for s in report["meta"]["servers"] if s["target"] == "pouchdb"]
    assert [s["exit_code"] for s in peers] == [0], peers
    assert report["meta"]["peers"]["pouchdb"]["pouchdb-server"] == "4.2.0"
    assert "Side by side" in stdout
