"""/sync/v1 HTTP routes: devices, push, pull, ack."""

from __future__ import annotations

from quart import Blueprint, Response, jsonify, request

from crdt_sync.errors import ResyncRequired
from protocol import wire
from web.auth import mint_token
from web.runtime import bound_principal, device_request, request_body, runtime
from web.runtime import revoke_device as revoke

bp = Blueprint("sync_v1", __name__, url_prefix="/sync/v1")

DEVICE_TOKEN_TTL_S = 30 * 86400


@bp.post("/devices")
async def register_device() -> tuple[Response, int]:
    principal = await bound_principal()
    rt = runtime()
    body = await request_body()
    device_id, name, platform = wire.parse_device_registration(body)
    reg = await rt.service.register_device(
        principal.tenant_id, principal.user_id, device_id, name, platform
    )
    if rt.config.jwt_secret is None:  # pragma: no cover - asymmetric keys mint elsewhere
        raise RuntimeError("device tokens need an HS256 secret")
    token = mint_token(
        rt.config.jwt_secret,
        tenant=principal.tenant_id,
        user=principal.user_id,
        roles=sorted(principal.roles),
        device=device_id,
        ttl_s=DEVICE_TOKEN_TTL_S,
        kid=rt.config.jwt_signing_kid,
        generation=reg.generation,
    )
    secret = rt.device_secret(principal.tenant_id, device_id, reg.generation)
    return jsonify({"device_id": device_id, "device_secret": secret, "device_token": token}), 201


@bp.delete("/devices/<path:device_id>")
async def revoke_device(device_id: str) -> tuple[str, int]:
    principal = await bound_principal()
    by_user = None if principal.has("admin") else principal.user_id
    await revoke(principal.tenant_id, device_id, by_user)
    return "", 204


@bp.post("/push")
async def push() -> Response:
    ctx, body = await device_request(signed=True)
    rt = runtime()
    max_batch = rt.config.limits.for_tenant(ctx.tenant_id).max_batch
    mutations = wire.parse_push(body, min(max_batch, rt.service.settings.max_batch))
    results = await rt.service.push(ctx, mutations)
    for result in results:
        rt.metrics.mutations.labels(result.status.value).inc()
    return Response(wire.push_body(results), content_type="application/json")


@bp.get("/pull")
async def pull() -> Response:
    ctx, _ = await device_request(signed=False)
    rt = runtime()
    settings = rt.service.settings
    limit = wire.parse_limit(
        request.args.get("limit"), settings.default_pull_limit, settings.max_pull_limit
    )
    token = request.args.get("cursor")
    try:
        cursor = None if token is None else rt.cursors.decode(token)
        page = await rt.service.pull(ctx, cursor, limit)
    except ResyncRequired as exc:
        rt.metrics.full_resyncs.labels(exc.reason).inc()
        await rt.store.record_full_resync(ctx.tenant_id, ctx.device_id)
        raise
    rt.metrics.pulled_changes.inc(len(page.changes))
    body = wire.pull_body(page.changes, rt.cursors.encode(page.cursor), page.has_more)
    return Response(body, content_type="application/json")


@bp.post("/ack")
async def ack() -> tuple[str, int]:
    ctx, body = await device_request(signed=True)
    rt = runtime()
    token = wire.parse_cursor_body(body)
    cursor = rt.cursors.decode(token)
    await rt.service.ack(ctx, cursor)
    return "", 204
