"""The OpenAPI document (web/openapi.py) describes exactly the app's HTTP routes under /sync/v1
and /admin/v1, is internally consistent, and is served without auth."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
from quart import Quart

from tests.conftest import make_config
from web.app import create_app
from web.openapi import DOCUMENT, OPENAPI_PATH, document

pytestmark = pytest.mark.anyio

PREFIXES = ("/sync/v1/", "/admin/v1/")
IGNORED_METHODS = {"HEAD", "OPTIONS"}
HTTP_METHODS = {"get", "put", "post", "delete", "patch", "head", "options", "trace"}
# Werkzeug rule syntax: <name>, <converter:name>, <converter(args):name>
RULE_PARAM = re.compile(r"<(?:[a-zA-Z_][a-zA-Z0-9_]*(?:\([^)]*\))?:)?([a-zA-Z_][a-zA-Z0-9_]*)>")


@pytest.fixture
def app(tmp_path: Path) -> Quart:
    return create_app(make_config(tmp_path, None))


def openapi_template(rule: str) -> str:
    return RULE_PARAM.sub(r"{\1}", rule)


def app_operations(app: Quart) -> set[tuple[str, str]]:
    """(path template, method) of every HTTP route of /sync/v1 and /admin/v1."""
    out = set()
    for rule in app.url_map.iter_rules():
        if rule.websocket or not rule.rule.startswith(PREFIXES):
            continue
        for method in (rule.methods or set()) - IGNORED_METHODS:
            out.add((openapi_template(rule.rule), method.lower()))
    return out


def documented_operations(doc: dict[str, Any]) -> set[tuple[str, str]]:
    return {
        (path, method)
        for path, item in doc["paths"].items()
        for method in item
        if method in HTTP_METHODS
    }


def test_rule_templates() -> None:
    assert openapi_template("/a/<x>/<path:y>/<int(min=1):z>") == "/a/{x}/{y}/{z}"


def test_every_route_is_documented_and_nothing_else(app: Quart) -> None:
    routes = app_operations(app)
    documented = documented_operations(DOCUMENT)
    # Guard the guard: the app really has the routes we expect to compare.
    assert ("/sync/v1/push", "post") in routes
    assert ("/admin/v1/docs/{doc_id}/snapshots/{snapshot_id}/restore", "post") in routes
    assert (OPENAPI_PATH, "get") in routes
    assert not any("/rooms/" in path for path, _ in routes), "websocket rules are not HTTP"
    missing = routes - documented
    assert not missing, f"routes missing from the OpenAPI document: {sorted(missing)}"
    extra = documented - routes
    assert not extra, f"documented operations the app does not have: {sorted(extra)}"
    paths = {p for p, _ in routes}
    assert set(DOCUMENT["paths"]) == paths


def test_comparison_notices_a_missing_and_an_extra_route(app: Quart) -> None:
    doc = document()
    del doc["paths"]["/sync/v1/ack"]
    doc["paths"]["/sync/v1/nope"] = {"get": {"responses": {}}}
    routes, documented = app_operations(app), documented_operations(doc)
    assert routes - documented == {("/sync/v1/ack", "post")}
    assert documented - routes == {("/sync/v1/nope", "get")}


def _walk(node: Any, where: str = "#") -> Any:
    if isinstance(node, dict):
        for key, value in node.items():
            yield where, key, value
            yield from _walk(value, f"{where}/{key}")
    elif isinstance(node, list):
        for index, value in enumerate(node):
            yield from _walk(value, f"{where}/{index}")


def _resolve(doc: dict[str, Any], ref: str) -> Any:
    assert ref.startswith("#/"), ref
    node: Any = doc
    for part in ref[2:].split("/"):
        assert isinstance(node, dict) and part in node, f"unresolvable $ref {ref}"
        node = node[part]
    return node


def _deref(doc: dict[str, Any], node: dict[str, Any]) -> dict[str, Any]:
    while "$ref" in node:
        node = _resolve(doc, node["$ref"])
    return node


def test_every_ref_resolves() -> None:
    refs = [value for _, key, value in _walk(DOCUMENT) if key == "$ref"]
    assert len(refs) > 50
    for ref in refs:
        _resolve(DOCUMENT, ref)


def test_operations_declare_their_path_parameters_and_error_body() -> None:
    error_codes: set[str] = set()
    for path, item in DOCUMENT["paths"].items():
        template_params = set(re.findall(r"{([^}]+)}", path))
        shared = [_deref(DOCUMENT, p) for p in item.get("parameters", [])]
        for method, op in item.items():
            if method not in HTTP_METHODS:
                continue
            params = shared + [_deref(DOCUMENT, p) for p in op.get("parameters", [])]
            declared = {p["name"] for p in params if p["in"] == "path"}
            assert declared == template_params, (path, method)
            assert all(p["required"] for p in params if p["in"] == "path")
            responses = op["responses"]
            assert any(s.startswith("2") for s in responses), (path, method)
            if path == OPENAPI_PATH:
                assert op["security"] == [], "the document is served without auth"
                continue
            for status in ("400", "401", "403"):
                assert status in responses, (path, method, status)
            for status, response in responses.items():
                if status.startswith("2"):
                    continue
                body = _deref(DOCUMENT, response)["content"]["application/json"]["schema"]
                assert body["required"] == ["error"]
                detail = body["properties"]["error"]
                assert {"code", "message"} <= set(detail["required"])
                assert "reason" in detail["properties"]
                error_codes.update(detail["properties"]["code"]["enum"])
            signed = method in ("post", "put") and path.startswith("/sync/v1/")
            headers = {p["name"] for p in params if p["in"] == "header"}
            if signed and path != "/sync/v1/devices":
                assert {"X-Sync-Timestamp", "X-Sync-Signature"} <= headers, (path, method)
    # Every code of the docs/protocol.md table appears on some documented response.
    protocol_md = (Path(__file__).parent.parent / "docs" / "protocol.md").read_text()
    table_codes = set(re.findall(r"^\| \d{3} \| (.+?) \|", protocol_md, re.M))
    listed = {c for cell in table_codes for c in re.findall(r"`([a-z_]+)`", cell)}
    assert listed, "the protocol table was not found"
    assert listed <= error_codes, sorted(listed - error_codes)


def test_security_schemes_and_integrity_headers() -> None:
    schemes = DOCUMENT["components"]["securitySchemes"]
    assert schemes["bearerAuth"] == {**schemes["bearerAuth"], "type": "http", "scheme": "bearer"}
    assert DOCUMENT["security"] == [{"bearerAuth": []}]
    params = DOCUMENT["components"]["parameters"]
    assert params["SyncTimestamp"]["in"] == "header"
    assert params["SyncSignature"]["name"] == "X-Sync-Signature"


async def test_served_without_auth(app: Quart) -> None:
    client = app.test_client()
    r = await client.get(OPENAPI_PATH)
    assert r.status_code == 200
    assert r.content_type == "application/json"
    assert await r.get_json() == DOCUMENT
