"""A small /sync/v1 device client for the tests: real HTTP over a socket, signed bodies."""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Callable
from typing import Any

import httpx

from protocol.integrity import sign


class Device:
    def __init__(
        self,
        http: httpx.AsyncClient,
        device_id: str,
        token: str,
        secret: str,
        now: Callable[[], float] = time.time,
    ) -> None:
        self.http = http
        self.device_id = device_id
        self.token = token
        self.secret = secret
        self.now = now
        self.counter = 0
        self.cursor: str | None = None

    @classmethod
    async def register(
        cls,
        http: httpx.AsyncClient,
        user_token: str,
        device_id: str,
        now: Callable[[], float] = time.time,
    ) -> Device:
        r = await http.post(
            "/sync/v1/devices",
            json={"device_id": device_id},
            headers={"Authorization": f"Bearer {user_token}"},
        )
        assert r.status_code == 201, r.text
        body = r.json()
        return cls(http, device_id, body["device_token"], body["device_secret"], now)

    def headers(self, method: str, path: str, body: bytes) -> dict[str, str]:
        ts = str(int(self.now()))
        return {
            "Authorization": f"Bearer {self.token}",
            "X-Sync-Timestamp": ts,
            "X-Sync-Signature": sign(self.secret, ts, method, path, self.device_id, body),
            "Content-Type": "application/json",
        }

    async def post(
        self, path: str, payload: Any = None, raw: bytes | None = None
    ) -> httpx.Response:
        body = raw if raw is not None else json.dumps(payload).encode()
        return await self.http.post(path, content=body, headers=self.headers("POST", path, body))

    def mutation(
        self,
        entity_type: str,
        entity_id: str,
        payload: dict[str, Any] | None,
        *,
        clock: dict[str, int] | None = None,
        ts: int | None = None,
        mutation_id: str | None = None,
    ) -> dict[str, Any]:
        if clock is None:
            self.counter += 1
            clock = {self.device_id: self.counter}
        out: dict[str, Any] = {
            "mutation_id": mutation_id or str(uuid.uuid4()),
            "entity_type": entity_type,
            "entity_id": entity_id,
            "op": "put" if payload is not None else "delete",
            "payload": payload,
            "clock": clock,
        }
        if ts is not None:
            out["ts"] = ts
        return out

    async def push(self, mutations: list[dict[str, Any]]) -> list[dict[str, Any]]:
        r = await self.post("/sync/v1/push", {"mutations": mutations})
        assert r.status_code == 200, r.text
        results: list[dict[str, Any]] = r.json()["results"]
        return results

    async def pull_page(
        self, cursor: str | None = None, limit: int | None = None
    ) -> httpx.Response:
        params: dict[str, Any] = {}
        if cursor is not None:
            params["cursor"] = cursor
        if limit is not None:
            params["limit"] = limit
        return await self.http.get(
            "/sync/v1/pull", params=params, headers={"Authorization": f"Bearer {self.token}"}
        )

    async def pull_all(self, limit: int | None = None) -> list[dict[str, Any]]:
        """Pull from the stored cursor until has_more is false; returns the changes."""
        changes: list[dict[str, Any]] = []
        while True:
            r = await self.pull_page(self.cursor, limit)
            assert r.status_code == 200, r.text
            body = r.json()
            changes.extend(body["changes"])
            self.cursor = body["cursor"]
            if not body["has_more"]:
                return changes

    async def ack(self, cursor: str | None = None) -> httpx.Response:
        return await self.post("/sync/v1/ack", {"cursor": cursor or self.cursor})
