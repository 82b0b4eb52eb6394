from __future__ import annotations

import pytest

from tests.conftest import Server
from tests.sync_client import Device

pytestmark = pytest.mark.anyio


async def test_register_push_pull(server: Server) -> None:
    http = server.http()
    dev = await Device.register(http, server.token("acme", "alice"), "dev-a", server.clock.time)
    results = await dev.push([dev.mutation("progress", "course-1", {"completion": 0.5})])
    assert [r["status"] for r in results] == ["applied"]
    changes = await dev.pull_all()
    assert [(c["entity_id"], c["payload"]) for c in changes] == [("course-1", {"completion": 0.5})]
    assert (await dev.ack()).status_code == 204
