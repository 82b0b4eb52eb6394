"""Room WebSockets, Yjs documents over HTTP, and the admin routes for document snapshots."""

from __future__ import annotations

import asyncio
import base64
import binascii
import uuid
from collections.abc import Awaitable, Callable
from typing import Any, NoReturn

from quart import Blueprint, Response, abort, jsonify, request, websocket

from crdt_sync import ydoc
from crdt_sync.errors import Forbidden, InvalidInput, NotFound, SyncError
from crdt_sync.model import check_id
from crdt_sync.ports import Snapshot
from protocol import yprotocol as yp
from web.admin_api import admin, snapshot_meta
from web.auth import Principal
from web.limits import Buckets, RateLimited
from web.rooms import CLOSE_PROTOCOL_ERROR, CLOSE_TOO_BIG, Peer, Room, RoomManager
from web.runtime import (
    device_binding,
    device_request,
    principal_from,
    require_bound_device,
    runtime,
)
from web.ws_direct import direct_socket

rooms_bp = Blueprint("rooms", __name__, url_prefix="/sync/v1")
admin_docs_bp = Blueprint("admin_docs", __name__, url_prefix="/admin/v1")
admin_docs_bp.before_request(require_bound_device)  # a revoked device keeps no admin access

WRITERS = ("author", "admin", "service")
READERS = ("learner", *WRITERS)
CLOSE_WAIT_S = 2.0  # longest wait for a close frame to go out before dropping the client


def manager() -> RoomManager:
    rooms: RoomManager = runtime().extras["rooms"]
    return rooms


def b64url_decode(text: str) -> bytes:
    try:
        return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    except (binascii.Error, ValueError):
        raise InvalidInput("sv must be base64url") from None


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


# -- WebSocket rooms ----------------------------------------------------------------------


async def _room_principal() -> Principal:
    """Authenticate the upgrade; refusals happen before accept, as HTTP 401/403."""
    token = websocket.args.get("token")
    header = websocket.headers.get("Authorization", "")
    if not token and header.lower().startswith("bearer "):
        token = header[7:].strip()
    try:
        if not token:
            raise SyncError("missing token")
        principal = principal_from(token)
        if principal.device_id is not None:
            await device_binding(principal)
    except Forbidden:
        _refused(403)
    except SyncError:
        _refused(401)
    if not principal.has(*READERS):
        _refused(403)
    return principal


def _refused(status: int) -> NoReturn:
    """Refuse the upgrade; a client IP that keeps failing is capped (429)."""
    rt = runtime()
    limits = rt.config.limits.defaults
    buckets: Buckets = rt.extras.setdefault("upgrade_buckets", Buckets())
    try:
        buckets.take(
            websocket.remote_addr, limits.upgrade_fail_rate_per_s, limits.upgrade_fail_burst
        )
    except RateLimited:
        abort(429)
    abort(status)


def _asgi_send(ws: Any) -> Any:
    """The ASGI send behind an accepted Quart websocket (the first argument Quart keeps in its
    `_send` partial), or None."""
    quart_send = getattr(ws, "_send", None)
    return getattr(quart_send, "args", (None,))[0] if quart_send is not None else None


def _direct_send(asgi_send: Any, ws: Any) -> Callable[[bytes], Awaitable[None]]:
    """Quart's `websocket.send` yields to the loop (`sleep(0)`), re-checks the accept and
    fires a signal on every message; a room sends one message per client per flush, so that
    is a loop iteration per delivery. After `accept()`, the ASGI send itself is all we need;
    Quart's path otherwise. (Under Hypercorn the room writes the socket itself: ws_direct.)"""
    if not callable(asgi_send):
        return ws.send  # type: ignore[no-any-return]

    async def send(data: bytes) -> None:
        await asgi_send({"type": "websocket.send", "bytes": data, "text": None})

    return send


@rooms_bp.websocket("/rooms/<path:doc_id>")
async def room_socket(doc_id: str) -> None:
    principal = await _room_principal()
    try:
        check_id(doc_id, "doc id")
    except InvalidInput:
        abort(400)
    rt = runtime()
    ws: Any = websocket._get_current_object()  # type: ignore[attr-defined]
    await ws.accept()
    handler = asyncio.current_task()

    async def close(code: int, reason: str) -> None:
        # A client that stops reading never takes the close frame (the send blocks on a full
        # socket buffer): give up waiting and end the handler, so it leaves the room anyway.
        try:
            await asyncio.wait_for(ws.close(code, reason), CLOSE_WAIT_S)
        except TimeoutError:
            peer.abort()  # and free what its socket still holds
            raise
        finally:
            if handler is not None and handler is not asyncio.current_task():
                handler.cancel()

    asgi_send = _asgi_send(ws)
    peer = Peer(
        _direct_send(asgi_send, ws),
        close,
        writable=principal.has(*WRITERS),
        device_id=principal.device_id,
        user_id=principal.user_id,
        queue_size=rt.extras["room_settings"].send_queue,
        queue_bytes=rt.extras["room_settings"].send_queue_bytes,
        direct=direct_socket(asgi_send) if rt.extras["room_settings"].direct_writes else None,
    )
    rooms = manager()
    max_message = rt.config.limits.for_tenant(principal.tenant_id).ws_max_message_bytes
    room = await rooms.join(principal.tenant_id, doc_id, peer)
    try:
        while not peer.closed:
            data = await ws.receive()
            if data is None:  # Quart hands an empty binary message over as None
                await peer.close(CLOSE_PROTOCOL_ERROR, "empty message")
                break
            if isinstance(data, bytes) and len(data) > max_message:
                await peer.close(CLOSE_TOO_BIG, "message too big")
                break
            if isinstance(data, str):
                await peer.close(CLOSE_PROTOCOL_ERROR, "y-websocket messages are binary")
                break
            try:
                await room.receive(peer, data)
            except yp.YProtocolError as exc:
                await peer.close(CLOSE_PROTOCOL_ERROR, str(exc)[:120])
                break
    finally:
        await rooms.leave(room, peer)


# -- Yjs documents over HTTP --------------------------------------------------------------


async def _room_for_http(tenant_id: str, doc_id: str) -> Room:
    rooms = manager()
    room = await rooms.get(tenant_id, doc_id)
    if not room.peers:
        room.schedule_unload()
    return room


@rooms_bp.get("/docs/<path:doc_id>")
async def get_doc(doc_id: str) -> Response:
    ctx, _ = await device_request(signed=False)
    doc_id = check_id(doc_id, "doc id")
    sv = request.args.get("sv")
    state_vector = None if sv is None else b64url_decode(sv)
    if state_vector is not None:
        try:
            yp.decode_state_vector(state_vector)
        except yp.YProtocolError as exc:
            raise InvalidInput(f"sv is not a Yjs state vector: {exc}") from None
    room = await _room_for_http(ctx.tenant_id, doc_id)
    async with room.lock:
        update = room.doc.get_update(state_vector) if state_vector else room.doc.get_update()
    return Response(update, content_type="application/octet-stream")


@rooms_bp.post("/docs/<path:doc_id>")
async def post_doc(doc_id: str) -> Response:
    ctx, body = await device_request(signed=True)
    doc_id = check_id(doc_id, "doc id")
    principal = principal_from(request.headers["Authorization"].split(" ", 1)[1])
    if not principal.has(*WRITERS):
        raise Forbidden("learners cannot write documents")
    if not body:
        raise InvalidInput("the body must be a Yjs v1 update")
    sv = request.args.get("sv")
    client_sv = None if sv is None else b64url_decode(sv)
    if client_sv is not None:
        _state_vector(client_sv)
    room = await _room_for_http(ctx.tenant_id, doc_id)
    async with room.lock:
        server_sv = room.doc.get_state()
    try:
        merge = ydoc.is_merge(server_sv, client_sv, body)
    except ydoc.YDocError as exc:
        raise InvalidInput(
            f"the body is not a Yjs v1 update: {exc}", code="invalid_update"
        ) from None
    reason = "merge" if merge else None
    stored = await room.submit(body, None, "http", reason, ctx.device_id)
    if not stored:
        raise InvalidInput("the body is not a Yjs v1 update", code="invalid_update")
    return jsonify({"state_vector": b64url(room.doc.get_state())})


def _state_vector(data: bytes) -> dict[int, int]:
    try:
        return yp.decode_state_vector(data)
    except yp.YProtocolError as exc:
        raise InvalidInput(f"sv is not a Yjs state vector: {exc}") from None


# -- admin: document snapshots ------------------------------------------------------------


async def _doc_snapshot(doc_id: str, snapshot_id: str) -> tuple[Principal, Snapshot]:
    principal = admin()
    snap = await runtime().store.get_snapshot(principal.tenant_id, snapshot_id)
    if snap is None or snap.kind != "doc" or snap.entity_id != doc_id:
        raise NotFound("no such snapshot")
    return principal, snap


@admin_docs_bp.get("/docs/<path:doc_id>/snapshots")
async def doc_snapshots(doc_id: str) -> Response:
    principal = admin()
    found = await runtime().store.list_snapshots(principal.tenant_id, "doc", "ydoc", doc_id, "")
    return jsonify({"snapshots": [snapshot_meta(s) for s in found]})


@admin_docs_bp.get("/docs/<path:doc_id>/snapshots/<snapshot_id>")
async def doc_snapshot(doc_id: str, snapshot_id: str) -> Response:
    _, snap = await _doc_snapshot(doc_id, snapshot_id)
    return jsonify({**snapshot_meta(snap), "content": ydoc.content_json(snap.content)})


@admin_docs_bp.get("/docs/<path:doc_id>/snapshots/<snapshot_id>/diff")
async def doc_snapshot_diff(doc_id: str, snapshot_id: str) -> Response:
    principal, snap = await _doc_snapshot(doc_id, snapshot_id)
    room = await _room_for_http(principal.tenant_id, doc_id)
    async with room.lock:
        current = room.doc.get_update()
    before, after = ydoc.content_json(snap.content), ydoc.content_json(current)
    return jsonify(
        {
            **snapshot_meta(snap),
            "snapshot": before,
            "current": after,
            "rows": ydoc.diff(before, after),
        }
    )


@admin_docs_bp.post("/docs/<path:doc_id>/snapshots/<snapshot_id>/restore")
async def doc_snapshot_restore(doc_id: str, snapshot_id: str) -> Response:
    principal, snap = await _doc_snapshot(doc_id, snapshot_id)
    room = await _room_for_http(principal.tenant_id, doc_id)
    async with room.lock:
        current = room.doc.get_update()
    update = ydoc.restore_update(current, snap.content)
    pre_id = await _submit_restore(room, update)
    return jsonify({"pre_restore_snapshot_id": pre_id})


async def _submit_restore(room: Room, update: bytes) -> str:
    pre_id = uuid.uuid4().hex
    stored = await room.submit(update, None, "restore", "restore", "", snapshot_id=pre_id)
    if not stored:  # pragma: no cover - restore updates come from our own Doc
        raise RuntimeError("the restore update was refused")
    return pre_id
