"""Configurable limits with per-tenant overrides: request rate (429 + Retry-After), batch
and body size (413), WebSocket message size (close 1009), refused upgrades per IP (429)."""

from __future__ import annotations

import base64
import json
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from tests.conftest import Server, run_server
from tests.interop_client import close_all
from tests.rooms_support import client, need_node
from tests.sync_client import Device
from web.config import Config
from web.limits import Limits, LimitsConfig

pytestmark = pytest.mark.anyio


@pytest.fixture
async def limited(anyio_backend: str, tmp_path: Path) -> AsyncIterator[Server]:
    def configure(config: Config) -> None:
        defaults = Limits(
            device_rate_per_s=1000,
            device_burst=1000,
            upgrade_fail_burst=3,
            upgrade_fail_rate_per_s=0.01,
        )
        small = Limits.from_json(
            defaults,
            {
                "max_batch": 10,
                "max_body_bytes": 2000,
                "device_rate_per_s": 0.5,
                "device_burst": 3,
                "ws_max_message_bytes": 1000,
            },
        )
        config.limits = LimitsConfig(defaults, {"small": small})

    async with run_server(tmp_path, None, "sqlite", configure=configure) as srv:
        yield srv


async def test_rate_limit_per_device_with_retry_after(limited: Server) -> None:
    http = limited.http()
    small = await Device.register(http, limited.token("small", "u"), "d", limited.clock.time)
    big = await Device.register(http, limited.token("acme", "u"), "d", limited.clock.time)
    statuses = [(await small.pull_page()).status_code for _ in range(5)]
    assert statuses[:3] == [200, 200, 200]
    assert 429 in statuses[3:]
    r = await small.pull_page()
    assert r.status_code == 429
    assert r.json()["error"]["code"] == "rate_limited"
    assert int(r.headers["Retry-After"]) >= 1
    # Another tenant's device (same device id) has its own, larger budget.
    assert all([(await big.pull_page()).status_code == 200 for _ in range(10)])


async def test_batch_and_body_limits_per_tenant(limited: Server) -> None:
    http = limited.http()
    small = await Device.register(http, limited.token("small", "u"), "d", limited.clock.time)
    big = await Device.register(http, limited.token("acme", "u"), "d", limited.clock.time)
    eleven = [small.mutation("bookmark", f"b{i}", {"at": i}) for i in range(11)]
    r = await small.post("/sync/v1/push", {"mutations": eleven})
    assert (r.status_code, r.json()["error"]["code"]) == (413, "batch_too_large")
    assert len(await big.push([big.mutation("bookmark", f"b{i}", {"at": i}) for i in range(11)]))
    bulky = [small.mutation("bookmark", "b", {"text": "x" * 3000})]
    r = await small.post("/sync/v1/push", {"mutations": bulky})
    assert (r.status_code, r.json()["error"]["code"]) == (413, "body_too_large")
    assert (await small.pull_page()).json()["changes"] == []


async def test_ws_message_limit_and_refused_upgrade_cap(limited: Server) -> None:
    need_node()
    good = await client(limited, "doc", limited.token("small", "u", "author"))
    try:
        big = bytes([0, 2]) + b"\x90\x10" + b"\x00" * 2100
        reply = await good.request("send_raw", base64=base64.b64encode(big).decode())
        assert reply["ok"], reply
        closed = await good.wait_event("closed", timeout=10)
        assert closed["code"] == 1009, closed
    finally:
        await close_all([good])
    codes = []
    for _ in range(5):
        bad = await client(limited, "doc", "not-a-token", synced=False, max_backoff_ms=60000)
        try:
            codes.append((await bad.wait_event("closed", timeout=10))["http_status"])
        finally:
            await close_all([bad])
    assert codes[:3] == [401, 401, 401], json.dumps(codes)
    assert codes[3:] == [429, 429]
