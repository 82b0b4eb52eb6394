"""Schemathesis against a real server: every documented operation, with generated valid and
invalid input, must never answer 5xx and must answer as documented (status code, content
type, body schema, headers).

The schemathesis CLI (`st run`, phases examples + coverage + fuzzing, positive and negative
input) runs as a subprocess against a server this test starts in its own event loop, once per
backend. tests/schemathesis_hooks.py gives each request its token and signs /sync/v1 bodies
with the device secret, so generated input gets past the auth checks to the parsers; the
examples name a seeded conflict and snapshots, so their 200 responses are checked too.
A subprocess rather than schemathesis' pytest plugin or Python API: its transport blocks
(requests), which would stall the server sharing this event loop, and the CLI runs every phase.

More or other cases: CRDT_SYNC_ST_EXAMPLES (per operation, default 25), CRDT_SYNC_ST_SEED.
A failing run prints schemathesis' report with a curl line per failure.
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import sys
from pathlib import Path
from typing import Any

import httpx
import pytest
import schemathesis
from pycrdt import Doc, Text

from tests.conftest import Server, run_server
from tests.sync_client import Device
from web.config import Config
from web.limits import Limits, LimitsConfig
from web.openapi import OPENAPI_PATH, document

pytestmark = pytest.mark.anyio

TENANT = "acme"
USER = "st-user"
DEVICE = "st-device-7f3a9c"  # one schemathesis will not guess
PEER = "st-peer-device"
CHECKS = ",".join(
    [
        "not_a_server_error",
        "status_code_conformance",
        "content_type_conformance",
        "response_headers_conformance",
        "response_schema_conformance",
    ]
)
MAX_EXAMPLES = int(os.environ.get("CRDT_SYNC_ST_EXAMPLES", "25"))
SEED = os.environ.get("CRDT_SYNC_ST_SEED", "20261127")
ROOT = Path(__file__).resolve().parent.parent


def test_document_is_valid_openapi() -> None:
    """schemathesis validates the document against the OpenAPI 3.1 meta-schema."""
    schema = schemathesis.openapi.from_dict(document())
    schema.validate()
    operations = list(schema.get_all_operations())
    assert len(operations) == len(document_operations()) == 23  # 8 sync, 15 admin
    assert all(op.ok() for op in operations), [op.err() for op in operations if not op.ok()]


def test_meta_validation_can_fail() -> None:
    broken = document()
    broken["paths"]["/sync/v1/push"]["post"]["responses"] = "nope"
    with pytest.raises(Exception, match="nope"):
        schemathesis.openapi.from_dict(broken).validate()


def document_operations() -> list[tuple[str, str]]:
    methods = {"get", "put", "post", "delete"}
    return [(m, p) for p, item in document()["paths"].items() for m in item if m in methods]


def unlimited(config: Config) -> None:
    """Generated traffic is far over the per-device request rate; 429 is not under test."""
    big = Limits(device_rate_per_s=1e6, device_burst=1e6)
    config.limits = LimitsConfig(big, {})


async def seed(server: Server) -> dict[str, Any]:
    """Resources for the examples: a conflict, entity and document snapshots."""
    http = server.http()
    user_token = server.token(TENANT, USER, "author")
    admin_token = server.token(TENANT, "st-admin", "admin")
    dev = await Device.register(http, user_token, DEVICE)
    peer = await Device.register(http, user_token, PEER)
    await dev.push([dev.mutation("note", "n-1", {"text": "mine"})])
    [conflict] = await peer.push([peer.mutation("note", "n-1", {"text": "theirs"})])
    await dev.push([dev.mutation("progress", "course-1", {"completion": 0.5})])
    [merged] = await peer.push([peer.mutation("progress", "course-1", {"completion": 0.7})])
    assert (conflict["status"], merged["status"]) == ("conflict", "merged")

    ours, theirs = Doc(), Doc()
    ours["text"] = Text("hello")
    theirs["text"] = Text("world")
    doc = "/sync/v1/docs/doc-1"
    r = await dev.post(doc, raw=ours.get_update())
    assert r.status_code == 200, r.text
    # From behind: the poster lacks "hello", the server lacks "world": a merge, archived.
    sv = base64.urlsafe_b64encode(theirs.get_state()).rstrip(b"=").decode()
    body = theirs.get_update()
    r = await http.post(
        doc, params={"sv": sv}, content=body, headers=dev.headers("POST", doc, body)
    )
    assert r.status_code == 200, r.text

    admin = {"Authorization": f"Bearer {admin_token}"}
    entity = "/admin/v1/entities/progress/course-1/snapshots"
    r = await http.get(entity, params={"owner": USER}, headers=admin)
    entity_snapshot = r.json()["snapshots"][0]["snapshot_id"]
    r = await http.get("/admin/v1/docs/doc-1/snapshots", headers=admin)
    doc_snapshot = r.json()["snapshots"][0]["snapshot_id"]

    ent = {"entity_type": "progress", "entity_id": "course-1", "owner": USER}
    ent_snap = {**ent, "snapshot_id": entity_snapshot}
    doc_snap = {"doc_id": "doc-1", "snapshot_id": doc_snapshot}
    base = "/admin/v1/entities/{entity_type}/{entity_id}"
    docs = "/admin/v1/docs/{doc_id}"
    conflict_id = {"conflict_id": conflict["conflict_id"]}
    examples = {
        f"PUT {base}": {**ent, "body": {"completion": 0.9}},
        f"GET {base}/snapshots": ent,
        f"GET {base}/snapshots/{{snapshot_id}}": ent_snap,
        f"GET {base}/snapshots/{{snapshot_id}}/diff": ent_snap,
        f"POST {base}/snapshots/{{snapshot_id}}/restore": ent_snap,
        f"GET {docs}/snapshots": {"doc_id": "doc-1"},
        f"GET {docs}/snapshots/{{snapshot_id}}": doc_snap,
        f"GET {docs}/snapshots/{{snapshot_id}}/diff": doc_snap,
        f"POST {docs}/snapshots/{{snapshot_id}}/restore": doc_snap,
        "GET /admin/v1/conflicts/{conflict_id}": conflict_id,
        "POST /admin/v1/conflicts/{conflict_id}/resolve": {
            **conflict_id,
            "body": {"choice": "client"},
        },
        "GET /sync/v1/docs/{doc_id}": {"doc_id": "doc-1"},
    }
    return {
        "admin_token": admin_token,
        "registrar_token": server.token(TENANT, "st-registrar", "learner"),
        "device_token": dev.token,
        "device_secret": dev.secret,
        "device_id": DEVICE,
        "examples": examples,
    }


async def run_schemathesis(server: Server, settings: dict[str, Any], report: Path) -> str:
    env = {
        **os.environ,
        "CRDT_SYNC_ST": json.dumps(settings),
        "SCHEMATHESIS_HOOKS": "tests.schemathesis_hooks",
        "PYTHONPATH": str(ROOT),
        "NO_COLOR": "1",
    }
    args = [
        sys.executable,
        "-m",
        "schemathesis.cli",
        "run",
        f"{server.url}{OPENAPI_PATH}",
        "--checks",
        CHECKS,
        "--phases",
        "examples,coverage,fuzzing",
        "--mode",
        "all",
        "--max-examples",
        str(MAX_EXAMPLES),
        "--seed",
        SEED,
        # One worker: coverage-phase threads trip a CPython 3.11 ast.parse race
        # ("AST constructor recursion depth mismatch") inside hypothesis.
        "--workers",
        "1",
        "--request-timeout",
        "20",
        "--generation-database",
        "none",
        "--suppress-health-check",
        "all",
        "--report",
        "json",
        "--report-json-path",
        str(report),
        "--no-color",
    ]
    proc = await asyncio.create_subprocess_exec(
        *args,
        cwd=report.parent,  # its crash cache (.schemathesis/) goes there, not into the repo
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    try:
        out, _ = await asyncio.wait_for(proc.communicate(), 240)
    except TimeoutError:
        proc.kill()
        await proc.wait()
        raise
    text = out.decode(errors="replace")
    assert proc.returncode == 0, text[-20000:]
    return text


async def test_schemathesis_finds_no_server_error_and_no_schema_violation(
    tmp_path: Path, backend: str, database_url: str | None
) -> None:
    async with run_server(tmp_path / "data", database_url, backend, configure=unlimited) as server:
        settings = await seed(server)
        text = await run_schemathesis(server, settings, tmp_path / "report.json")
        async with httpx.AsyncClient(base_url=server.url) as http:
            assert (await http.get("/readyz")).status_code == 200
    report = json.loads((tmp_path / "report.json").read_text())
    assert (report["failures"], report["errors"]) == ([], []), text[-20000:]
    # Every documented operation but the document itself was exercised, in every phase.
    assert report["operations"]["tested"] == len(document_operations()) - 1
    phases = {name: p["status"] for name, p in report["phases"].items()}
    assert phases == {
        "examples": "success",
        "coverage": "success",
        "fuzzing": "success",
        "stateful": "skip",
    }
    assert report["test_cases"]["generated"] >= 40 * report["operations"]["tested"], report
