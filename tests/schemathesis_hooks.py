"""Schemathesis hooks for tests/test_schemathesis.py (loaded by `st run` through
SCHEMATHESIS_HOOKS=tests.schemathesis_hooks; configured by the CRDT_SYNC_ST environment
variable, a JSON object the test writes).

- every request gets the bearer token its route needs (admin, user or device token);
- /sync/v1 requests with a body are HMAC-signed over the exact bytes sent, as a device would;
- path, query and body examples name resources the test created, so the examples phase
  reaches the 200 responses of the snapshot, diff, restore and conflict routes.
"""

from __future__ import annotations

import copy
import json
import os
import time
from typing import Any
from urllib.parse import urlsplit

import requests
import schemathesis

from protocol.integrity import sign

SETTINGS: dict[str, Any] = json.loads(os.environ.get("CRDT_SYNC_ST", "{}"))
SIGNED = {("POST", "/sync/v1/push"), ("POST", "/sync/v1/ack"), ("POST", "/sync/v1/docs/{doc_id}")}


class HmacAuth(requests.auth.AuthBase):
    """Signs the prepared request: its final body bytes and its path as sent."""

    def __call__(self, r: requests.PreparedRequest) -> requests.PreparedRequest:
        body = r.body or b""
        if isinstance(body, str):
            body = body.encode()
        path = urlsplit(r.url or "").path
        ts = str(int(time.time()))
        r.headers["X-Sync-Timestamp"] = ts
        r.headers["X-Sync-Signature"] = sign(
            SETTINGS["device_secret"], ts, r.method or "", path, SETTINGS["device_id"], body
        )
        return r


def token_for(method: str, path: str) -> str:
    if path.startswith("/admin/"):
        return str(SETTINGS["admin_token"])
    if path.startswith("/sync/v1/devices"):
        # Another user than the device's: registering or revoking can never touch it.
        return str(SETTINGS["registrar_token"])
    return str(SETTINGS["device_token"])


@schemathesis.hook
def before_call(context: Any, case: Any, kwargs: dict[str, Any]) -> None:
    method, path = case.operation.method.upper(), case.operation.path
    headers = {**(case.headers or {}), "Authorization": f"Bearer {token_for(method, path)}"}
    if "X-Sync-Device-Id" in headers:
        # A generated one names another device: 403 before the body is even read.
        headers["X-Sync-Device-Id"] = SETTINGS["device_id"]
    case.headers = headers
    if (method, path) in SIGNED:
        kwargs["auth"] = HmacAuth()


@schemathesis.hook
def before_load_schema(context: Any, raw_schema: dict[str, Any]) -> None:
    add_examples(raw_schema)


def add_examples(raw_schema: dict[str, Any]) -> None:
    """Give the operations named in the settings examples: their parameters are inlined at the
    operation (which overrides the path item's) with an `example` each."""
    examples: dict[str, dict[str, Any]] = SETTINGS.get("examples", {})
    parameters = raw_schema.get("components", {}).get("parameters", {})
    for path, item in raw_schema["paths"].items():
        for method, op in item.items():
            key = f"{method.upper()} {path}"
            if key not in examples:
                continue
            wanted = examples[key]
            inlined = []
            for param in [*item.get("parameters", []), *op.get("parameters", [])]:
                if "$ref" in param:
                    param = copy.deepcopy(parameters[param["$ref"].rsplit("/", 1)[1]])
                if param["name"] in wanted:
                    param = {**param, "example": wanted[param["name"]]}
                inlined.append(param)
            op["parameters"] = inlined
            if "body" in wanted:
                for media in op["requestBody"]["content"].values():
                    media["example"] = wanted["body"]
