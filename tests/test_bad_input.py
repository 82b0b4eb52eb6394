"""Bad input over a real socket: the documented status and code, the error body shape, never a
500, and the stored data unchanged (design.md §3: Errors, Identity, Integrity, Push, Pull).

Each case runs against one server per backend; the whole store is snapshotted before and
after every case (device bookkeeping columns that legitimately change are left out).
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import httpx
import jwt
import pytest
from sqlalchemy import select

from protocol.integrity import sign
from storage.schema import metadata
from tests.conftest import Server
from tests.sync_client import Device
from web.auth import mint_token

pytestmark = pytest.mark.anyio

TENANT = "acme"
PUSH = "/sync/v1/push"
ACK = "/sync/v1/ack"
PULL = "/sync/v1/pull"
# Columns a rejected request may still change: device health bookkeeping.
VOLATILE = {"devices": {"last_seen_at", "last_ack_at", "full_resyncs"}}

Snapshot = dict[str, list[tuple[Any, ...]]]


async def snapshot(server: Server) -> Snapshot:
    out: Snapshot = {}
    async with server.runtime.store.engine.connect() as conn:
        for table in metadata.sorted_tables:
            skip = VOLATILE.get(table.name, set())
            cols = [c for c in table.columns if c.name not in skip]
            rows = (await conn.execute(select(*cols))).all()
            out[table.name] = sorted((tuple(r) for r in rows), key=repr)
    return out


def check_error_shape(r: httpx.Response) -> dict[str, Any]:
    assert r.headers.get("content-type", "").startswith("application/json"), r.text
    body = r.json()
    assert isinstance(body, dict) and set(body) == {"error"}, body
    error = body["error"]
    assert isinstance(error, dict), body
    assert isinstance(error.get("code"), str) and error["code"], body
    assert isinstance(error.get("message"), str), body
    return error


@dataclass
class World:
    server: Server
    http: httpx.AsyncClient
    a: Device  # alice's device
    b: Device  # alice's second device
    bob: Device
    revoked: Device
    user_token: str

    def signed(
        self,
        dev: Device,
        path: str,
        body: bytes,
        *,
        secret: str | None = None,
        device_id: str | None = None,
        ts_offset: float = 0,
        sign_path: str | None = None,
        sign_body: bytes | None = None,
        token: str | None = None,
    ) -> dict[str, str]:
        ts = str(int(self.server.clock.time() + ts_offset))
        return {
            "Authorization": f"Bearer {token or dev.token}",
            "X-Sync-Timestamp": ts,
            "X-Sync-Signature": sign(
                secret or dev.secret,
                ts,
                "POST",
                sign_path or path,
                device_id or dev.device_id,
                body if sign_body is None else sign_body,
            ),
            "Content-Type": "application/json",
        }

    async def post(self, dev: Device, path: str, body: bytes, **kw: Any) -> httpx.Response:
        return await self.http.post(path, content=body, headers=self.signed(dev, path, body, **kw))

    async def raw(
        self, method: str, path: str, body: bytes = b"", headers: Any = None, **kw: Any
    ) -> httpx.Response:
        return await self.http.request(method, path, content=body, headers=headers, **kw)


def mutation(entity_id: str = "e1", **overrides: Any) -> dict[str, Any]:
    m: dict[str, Any] = {
        "mutation_id": str(uuid.uuid4()),
        "entity_type": "bookmark",
        "entity_id": entity_id,
        "op": "put",
        "payload": {"position": 1},
        "clock": {"dev-a": 100},
    }
    m.update(overrides)
    return m


def push_body(*mutations: Any) -> bytes:
    return json.dumps({"mutations": list(mutations)}).encode()


Case = Callable[[World], Awaitable[httpx.Response]]
CASES: list[tuple[str, int, str, Case]] = []


def case(name: str, status: int, code: str) -> Callable[[Case], Case]:
    def register(fn: Case) -> Case:
        CASES.append((name, status, code, fn))
        return fn

    return register


def bad_push(name: str, body: bytes) -> None:
    async def run(w: World) -> httpx.Response:
        return await w.post(w.a, PUSH, body)

    CASES.append((name, 400, "invalid_request", run))


# -- not well-formed: 400 invalid_request ------------------------------------------------

bad_push("malformed JSON", b'{"mutations": [')
bad_push("empty body", b"")
bad_push("not UTF-8", b'{"mutations": ["\xff\xfe"]}')
bad_push("NaN", b'{"mutations": [], "x": NaN}')
bad_push("deeply nested", b"[" * 100_000 + b"]" * 100_000)
bad_push("JSON array body", b"[]")
bad_push("JSON string body", b'"mutations"')
bad_push("missing mutations", b"{}")
bad_push("mutations is an object", b'{"mutations": {}}')
bad_push("mutations is null", b'{"mutations": null}')
bad_push("mutation is a string", push_body("m"))
bad_push("mutation_id is an int", push_body(mutation(mutation_id=7)))
bad_push(
    "mutation_id missing",
    push_body({k: v for k, v in mutation().items() if k != "mutation_id"}),
)
bad_push("op missing", push_body({k: v for k, v in mutation().items() if k != "op"}))
bad_push("entity_id is empty", push_body(mutation(entity_id="")))
bad_push("entity_id is too long", push_body(mutation(entity_id="x" * 201)))
bad_push("entity_id has NUL", push_body(mutation(entity_id="a\x00b")))
bad_push("entity_type is a list", push_body(mutation(entity_type=["bookmark"])))
bad_push("op unknown", push_body(mutation(op="upsert")))
bad_push("op is a bool", push_body(mutation(op=True)))
bad_push("put with null payload", push_body(mutation(payload=None)))
bad_push("put with list payload", push_body(mutation(payload=[1, 2])))
bad_push("delete with payload", push_body(mutation(op="delete")))
bad_push("clock is a list", push_body(mutation(clock=[["dev-a", 1]])))
bad_push("clock is empty", push_body(mutation(clock={})))
bad_push("clock counter is a string", push_body(mutation(clock={"dev-a": "1"})))
bad_push("clock counter is negative", push_body(mutation(clock={"dev-a": -1})))
bad_push("clock counter is a float", push_body(mutation(clock={"dev-a": 1.5})))
bad_push("clock counter is a bool", push_body(mutation(clock={"dev-a": True})))
bad_push("clock counter is huge", push_body(mutation(clock={"dev-a": 2**60})))
bad_push("clock node is empty", push_body(mutation(clock={"": 1})))
bad_push("ts is a string", push_body(mutation(ts="5")))
bad_push("ts is negative", push_body(mutation(ts=-1)))
bad_push("ts is a bool", push_body(mutation(ts=True)))
bad_push("ts is a float", push_body(mutation(ts=1.5)))
# A lone UTF-16 surrogate is valid JSON syntax but no Unicode text: it cannot be stored.
bad_push("lone surrogate in a payload", push_body(mutation()).replace(b'"position"', b'"\\ud800"'))
bad_push(
    "lone surrogate in entity_id", push_body(mutation(entity_id="@")).replace(b"@", b"\\udfff")
)
bad_push(
    "lone surrogate in a clock node", push_body(mutation(clock={"@": 1})).replace(b"@", b"\\ud83d")
)
bad_push(
    "one bad mutation among good ones",
    push_body(mutation("g1"), mutation("g2", clock={"dev-a": "x"}), mutation("g3")),
)


@case("ack: malformed JSON", 400, "invalid_request")
async def _ack_malformed(w: World) -> httpx.Response:
    return await w.post(w.a, ACK, b"{cursor")


@case("ack: cursor missing", 400, "invalid_request")
async def _ack_missing(w: World) -> httpx.Response:
    return await w.post(w.a, ACK, b"{}")


@case("ack: cursor is a number", 400, "invalid_request")
async def _ack_number(w: World) -> httpx.Response:
    return await w.post(w.a, ACK, b'{"cursor": 12}')


@case("register: malformed JSON", 400, "invalid_request")
async def _register_malformed(w: World) -> httpx.Response:
    headers = {"Authorization": f"Bearer {w.user_token}", "Content-Type": "application/json"}
    return await w.raw("POST", "/sync/v1/devices", b"{device", headers)


@case("register: device_id too long", 400, "invalid_request")
async def _register_long(w: World) -> httpx.Response:
    headers = {"Authorization": f"Bearer {w.user_token}"}
    return await w.http.post("/sync/v1/devices", json={"device_id": "d" * 201}, headers=headers)


@case("register: name is a number", 400, "invalid_request")
async def _register_name(w: World) -> httpx.Response:
    headers = {"Authorization": f"Bearer {w.user_token}"}
    return await w.http.post(
        "/sync/v1/devices", json={"device_id": "dev-new", "name": 5}, headers=headers
    )


@case("register: lone surrogate in device_id", 400, "invalid_request")
async def _register_surrogate(w: World) -> httpx.Response:
    headers = {"Authorization": f"Bearer {w.user_token}", "Content-Type": "application/json"}
    return await w.raw("POST", "/sync/v1/devices", b'{"device_id": "d\\ud800"}', headers)


@case("register: device of another user", 409, "device_taken")
async def _register_taken(w: World) -> httpx.Response:
    headers = {"Authorization": f"Bearer {w.server.token(TENANT, 'bob')}"}
    return await w.http.post("/sync/v1/devices", json={"device_id": "dev-a"}, headers=headers)


for _limit in ("0", "1001", "x", "-5"):

    @case(f"pull: limit={_limit}", 400, "invalid_request")
    async def _pull_limit(w: World, limit: str = _limit) -> httpx.Response:
        headers = {"Authorization": f"Bearer {w.a.token}"}
        return await w.http.get(PULL, params={"limit": limit}, headers=headers)


# -- size limits: 413 ---------------------------------------------------------------------


@case("batch of 501", 413, "batch_too_large")
async def _batch_501(w: World) -> httpx.Response:
    body = push_body(*(mutation(f"e{i}") for i in range(501)))
    return await w.post(w.a, PUSH, body)


@case("body over the size limit", 413, "body_too_large")
async def _too_big(w: World) -> httpx.Response:
    limit = w.server.config.max_body_bytes
    body = push_body(mutation(payload={"blob": "x" * limit}))
    return await w.post(w.a, PUSH, body)


# -- cursors ------------------------------------------------------------------------------


@case("pull: garbage cursor", 410, "full_resync_required")
async def _pull_garbage(w: World) -> httpx.Response:
    headers = {"Authorization": f"Bearer {w.a.token}"}
    return await w.http.get(PULL, params={"cursor": "garbage.cursor"}, headers=headers)


@case("ack: garbage cursor", 410, "full_resync_required")
async def _ack_garbage(w: World) -> httpx.Response:
    return await w.post(w.a, ACK, b'{"cursor": "garbage.cursor"}')


@case("pull: cursor of device B", 403, "device_mismatch")
async def _pull_foreign(w: World) -> httpx.Response:
    return await w.a.pull_page(w.b.cursor)


@case("ack: cursor of device B", 403, "device_mismatch")
async def _ack_foreign(w: World) -> httpx.Response:
    return await w.post(w.a, ACK, json.dumps({"cursor": w.b.cursor}).encode())


# -- integrity: 401 -------------------------------------------------------------------------


@case("missing signature and timestamp", 401, "signature_required")
async def _no_sig(w: World) -> httpx.Response:
    headers = {"Authorization": f"Bearer {w.a.token}"}
    return await w.raw("POST", PUSH, push_body(mutation()), headers)


@case("missing signature", 401, "signature_required")
async def _no_sig_only(w: World) -> httpx.Response:
    body = push_body(mutation())
    headers = w.signed(w.a, PUSH, body)
    del headers["X-Sync-Signature"]
    return await w.raw("POST", PUSH, body, headers)


@case("missing timestamp", 401, "signature_required")
async def _no_ts(w: World) -> httpx.Response:
    body = push_body(mutation())
    headers = w.signed(w.a, PUSH, body)
    del headers["X-Sync-Timestamp"]
    return await w.raw("POST", PUSH, body, headers)


@case("wrong signature", 401, "bad_signature")
async def _wrong_sig(w: World) -> httpx.Response:
    body = push_body(mutation())
    headers = w.signed(w.a, PUSH, body)
    headers["X-Sync-Signature"] = "0" * 64
    return await w.raw("POST", PUSH, body, headers)


@case("signature is not hex", 401, "bad_signature")
async def _sig_not_hex(w: World) -> httpx.Response:
    body = push_body(mutation())
    headers = w.signed(w.a, PUSH, body)
    headers["X-Sync-Signature"] = "not a signature"
    return await w.raw("POST", PUSH, body, headers)


@case("signature has non-ASCII bytes", 401, "bad_signature")
async def _sig_latin1(w: World) -> httpx.Response:
    body = push_body(mutation())
    headers: dict[str, Any] = w.signed(w.a, PUSH, body)
    headers["X-Sync-Signature"] = b"\xe9" * 64
    return await w.raw("POST", PUSH, body, headers)


@case("timestamp is not a number", 401, "bad_signature")
async def _ts_text(w: World) -> httpx.Response:
    body = push_body(mutation())
    headers = w.signed(w.a, PUSH, body)
    headers["X-Sync-Timestamp"] = "yesterday"
    return await w.raw("POST", PUSH, body, headers)


@case("timestamp 301 s in the past", 401, "stale_timestamp")
async def _ts_past(w: World) -> httpx.Response:
    return await w.post(w.a, PUSH, push_body(mutation()), ts_offset=-302)


@case("timestamp 301 s in the future", 401, "stale_timestamp")
async def _ts_future(w: World) -> httpx.Response:
    return await w.post(w.a, PUSH, push_body(mutation()), ts_offset=302)


@case("tampered body", 401, "bad_signature")
async def _tampered_body(w: World) -> httpx.Response:
    signed = push_body(mutation(payload={"position": 1}))
    sent = signed.replace(b'"position": 1', b'"position": 9')
    assert sent != signed
    return await w.post(w.a, PUSH, sent, sign_body=signed)


@case("tampered path", 401, "bad_signature")
async def _tampered_path(w: World) -> httpx.Response:
    return await w.post(w.a, PUSH, push_body(mutation()), sign_path=ACK)


@case("ack: tampered path", 401, "bad_signature")
async def _tampered_ack_path(w: World) -> httpx.Response:
    body = json.dumps({"cursor": w.a.cursor}).encode()
    return await w.post(w.a, ACK, body, sign_path=PUSH)


@case("signed with device B's secret", 401, "bad_signature")
async def _foreign_secret(w: World) -> httpx.Response:
    return await w.post(w.a, PUSH, push_body(mutation()), secret=w.b.secret)


@case("signed as device B", 401, "bad_signature")
async def _foreign_device_sig(w: World) -> httpx.Response:
    return await w.post(
        w.a, PUSH, push_body(mutation()), secret=w.b.secret, device_id=w.b.device_id
    )


@case("header names device B", 403, "device_mismatch")
async def _header_foreign(w: World) -> httpx.Response:
    body = push_body(mutation())
    headers = {**w.signed(w.a, PUSH, body), "X-Sync-Device-Id": w.b.device_id}
    return await w.raw("POST", PUSH, body, headers)


# -- identity: 401 / 403 ------------------------------------------------------------------


def token_case(name: str, make: Callable[[World], str | None], status: int, code: str) -> None:
    for method, path in (("POST", PUSH), ("GET", PULL), ("POST", ACK)):

        async def run(
            w: World, method: str = method, path: str = path, make: Any = make
        ) -> httpx.Response:
            token = make(w)
            body = push_body(mutation()) if path == PUSH else b""
            if path == ACK:
                body = json.dumps({"cursor": w.a.cursor}).encode()
            headers = w.signed(w.a, path, body) if method == "POST" else {}
            if token is None:
                headers.pop("Authorization", None)
            else:
                headers["Authorization"] = token.encode("latin-1")  # type: ignore[assignment]
            return await w.raw(method, path, body, headers)

        CASES.append((f"{name} ({method} {path})", status, code, run))


def _expired(w: World) -> str:
    token = mint_token(
        w.server.config.jwt_secret or "",
        tenant=TENANT,
        user="alice",
        roles=["learner"],
        device="dev-a",
        ttl_s=60,
        now=time.time() - 3600,
    )
    return f"Bearer {token}"


def _alg_none(w: World) -> str:
    claims = jwt.decode(w.a.token, options={"verify_signature": False})
    return f"Bearer {jwt.encode(claims, None, algorithm='none')}"


def _other_secret(w: World) -> str:
    token = mint_token(
        "another-secret-entirely-32-bytes-long!",
        tenant=TENANT,
        user="alice",
        roles=["learner"],
        device="dev-a",
    )
    return f"Bearer {token}"


def _no_tid(w: World) -> str:
    claims = {"sub": "alice", "did": "dev-a", "exp": int(time.time()) + 600}
    return f"Bearer {jwt.encode(claims, w.server.config.jwt_secret, algorithm='HS256')}"


def _device_token(user: str, device: str) -> Callable[[World], str]:
    def make(w: World) -> str:
        secret = w.server.config.jwt_secret or ""
        token = mint_token(secret, tenant=TENANT, user=user, roles=["learner"], device=device)
        return f"Bearer {token}"

    return make


token_case("no token", lambda w: None, 401, "unauthorized")
token_case("empty bearer", lambda w: "Bearer", 401, "unauthorized")
token_case("not a bearer", lambda w: f"Basic {w.a.token}", 401, "unauthorized")
token_case("garbage token", lambda w: "Bearer not.a.jwt", 401, "unauthorized")
token_case("non-ASCII token", lambda w: "Bearer \xe9\xe9.\xe9.\xe9", 401, "unauthorized")
token_case("expired token", _expired, 401, "unauthorized")
token_case("alg none token", _alg_none, 401, "unauthorized")
token_case("token of another key", _other_secret, 401, "unauthorized")
token_case("token without tid", _no_tid, 401, "unauthorized")
token_case("user token without did", lambda w: f"Bearer {w.user_token}", 401, "unauthorized")
token_case("did of an unregistered device", _device_token("alice", "nope"), 401, "unknown_device")
token_case(
    "did of another user's device", _device_token("mallory", "dev-a"), 403, "device_mismatch"
)
token_case("revoked device", lambda w: f"Bearer {w.revoked.token}", 401, "device_revoked")


@case("learner on an admin route", 403, "forbidden")
async def _learner_admin(w: World) -> httpx.Response:
    headers = {"Authorization": f"Bearer {w.user_token}"}
    return await w.http.put("/admin/v1/entities/bundle/b1", json={"x": 1}, headers=headers)


@case("unknown route", 404, "not_found")
async def _unknown_route(w: World) -> httpx.Response:
    return await w.http.get("/sync/v1/nothing-here")


@case("wrong method", 405, "method_not_allowed")
async def _wrong_method(w: World) -> httpx.Response:
    return await w.http.get(PUSH, headers={"Authorization": f"Bearer {w.a.token}"})


# -- the tests ------------------------------------------------------------------------------


async def make_world(server: Server) -> World:
    http = server.http()
    user_token = server.token(TENANT, "alice")
    a = await Device.register(http, user_token, "dev-a", server.clock.time)
    b = await Device.register(http, user_token, "dev-b", server.clock.time)
    bob = await Device.register(http, server.token(TENANT, "bob"), "dev-bob", server.clock.time)
    revoked = await Device.register(http, user_token, "dev-revoked", server.clock.time)
    r = await http.delete(
        "/sync/v1/devices/dev-revoked", headers={"Authorization": f"Bearer {user_token}"}
    )
    assert r.status_code == 204, r.text
    results = await a.push(
        [a.mutation("bookmark", "e1", {"position": 0}), a.mutation("progress", "c1", {"x": 1})]
    )
    assert [r["status"] for r in results] == ["applied", "applied"]
    await bob.push([bob.mutation("bookmark", "e1", {"position": 5})])
    for dev in (a, b, bob):
        await dev.pull_all()
        assert (await dev.ack()).status_code == 204
    return World(server, http, a, b, bob, revoked, user_token)


async def test_bad_input_is_4xx_with_code_and_changes_nothing(server: Server) -> None:
    world = await make_world(server)
    failures: list[str] = []
    for name, status, code, run in CASES:
        before = await snapshot(server)
        try:
            r = await run(world)
        except httpx.HTTPError as exc:
            failures.append(f"{name}: transport error {exc!r}")
            continue
        if r.status_code >= 500:
            failures.append(f"{name}: {r.status_code} {r.text[:200]}")
            continue
        try:
            error = check_error_shape(r)
        except (AssertionError, ValueError) as exc:
            failures.append(f"{name}: bad error body {r.status_code} {exc}")
            continue
        if (r.status_code, error["code"]) != (status, code):
            failures.append(
                f"{name}: want {status} {code}, got {r.status_code} {error['code']}"
                f" ({error['message'][:120]})"
            )
        if status == 410 and error.get("reason") != "invalid_cursor":
            failures.append(f"{name}: reason {error.get('reason')!r}, want invalid_cursor")
        after = await snapshot(server)
        changed = [t for t in before if before[t] != after[t]]
        if changed:
            failures.append(f"{name}: the store changed ({', '.join(changed)})")
    assert not failures, f"{len(failures)} of {len(CASES)} cases failed:\n" + "\n".join(failures)

    # The devices still work afterwards: nothing got stuck or half-applied.
    results = await world.a.push([world.a.mutation("bookmark", "after", {"position": 1})])
    assert results[0]["status"] == "applied"
    changes = await world.b.pull_all()
    assert [(c["entity_id"], c["payload"]) for c in changes] == [("after", {"position": 1})]


async def test_unknown_entity_type_rejects_that_mutation_only(server: Server) -> None:
    world = await make_world(server)
    a = world.a
    before = await snapshot(server)
    batch = [
        a.mutation("bookmark", "k1", {"position": 1}),
        a.mutation("no-such-type", "k2", {"position": 2}),
        a.mutation("progress", "k3", {"completion": 0.5}),
        a.mutation("certificate", "k4", {"id": "x"}),  # server-authored: read-only to devices
    ]
    results = await a.push(batch)
    assert [r["mutation_id"] for r in results] == [m["mutation_id"] for m in batch]
    assert [r["status"] for r in results] == ["applied", "rejected", "applied", "rejected"]
    assert results[1]["error"]["code"] == "unknown_entity_type"
    assert results[3]["error"]["code"] == "read_only"
    for r in (results[1], results[3]):
        assert isinstance(r["error"]["message"], str)

    after = await snapshot(server)
    cols = [c.name for c in metadata.tables["entities"].columns]
    new_rows = set(after["entities"]) - set(before["entities"])
    assert {(r[cols.index("entity_type")], r[cols.index("entity_id")]) for r in new_rows} == {
        ("bookmark", "k1"),
        ("progress", "k3"),
    }
    assert set(before["entities"]) <= set(after["entities"])
    for table in ("snapshots", "conflicts", "doc_updates", "doc_checkpoints", "crdt_meta"):
        assert before[table] == after[table], table
    changes = await world.b.pull_all()
    assert sorted(c["entity_id"] for c in changes) == ["k1", "k3"]

    # A replay is all duplicates with the first results; nothing changes.
    again = await snapshot(server)
    replay = await a.push(batch)
    assert [r["status"] for r in replay] == ["duplicate"] * 4
    for first, dup in zip(results, replay, strict=True):
        assert {k: v for k, v in dup.items() if k != "status"} == {
            k: v for k, v in first.items() if k != "status"
        }
    assert await snapshot(server) == again
