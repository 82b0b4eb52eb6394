"""What one running server holds: config, store, services, metrics; and request auth."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

from quart import current_app, request

from crdt_sync.errors import Forbidden
from crdt_sync.ports import Clock
from crdt_sync.services import DeviceContext, SyncService
from protocol.cursor import CursorCodec
from protocol.errors import AuthError, BodyTooLarge
from protocol.integrity import derive_device_secret, verify
from storage.store import SqlStore
from web.auth import Principal, TokenCache, bearer
from web.config import Config
from web.limits import Buckets
from web.metrics import Metrics

TOUCH_EVERY_S = 60.0


@dataclass
class Runtime:
    config: Config
    clock: Clock
    store: SqlStore
    service: SyncService
    cursors: CursorCodec
    metrics: Metrics
    extras: dict[str, Any] = field(default_factory=dict)
    buckets: Buckets = field(default_factory=Buckets)
    tokens: TokenCache = field(init=False)
    _last_touch: dict[tuple[str, str], float] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.tokens = TokenCache(self.config)

    def device_secret(self, tenant_id: str, device_id: str, generation: int) -> str:
        return derive_device_secret(self.config.server_key, tenant_id, device_id, generation)

    async def touch(self, tenant_id: str, device_id: str) -> None:
        """Record last_seen_at, at most once a minute per device (it costs a write)."""
        now = time.monotonic()
        key = (tenant_id, device_id)
        if now - self._last_touch.get(key, -TOUCH_EVERY_S) >= TOUCH_EVERY_S:
            self._last_touch[key] = now
            await self.store.touch_device(tenant_id, device_id, self.clock.now())


async def request_body() -> bytes:
    data = await request.get_data(cache=True, as_text=False)
    return data if isinstance(data, bytes) else data.encode()


def runtime() -> Runtime:
    rt: Runtime = current_app.extensions["crdt_sync"]
    return rt


def principal_from(token: str) -> Principal:
    return runtime().tokens.decode(token)


def authenticate(*roles: str) -> Principal:
    """The request's principal; 401 without a valid token, 403 without one of `roles`."""
    principal = principal_from(bearer(request.headers.get("Authorization")))
    if roles and not principal.has(*roles):
        raise Forbidden(f"this route needs one of the roles {sorted(roles)}")
    return principal


async def device_binding(principal: Principal) -> int:
    """Check that the token's device is registered to (tid, sub) and not revoked; return the
    registration generation (it keys the device secret)."""
    rt = runtime()
    if principal.device_id is None:
        raise AuthError("this route needs a device token (register the device first)")
    health = await rt.store.get_device(principal.tenant_id, principal.device_id)
    if health is None:
        raise AuthError("this device is not registered", code="unknown_device")
    reg = health.registration
    if reg.user_id != principal.user_id:
        raise Forbidden("this device is registered to another user", code="device_mismatch")
    if reg.revoked:
        raise AuthError("this device was revoked", code="device_revoked")
    if principal.generation is not None and principal.generation != reg.generation:
        # The device was registered again since: only the newest device token works.
        raise AuthError("this device token was superseded by a newer registration")
    return reg.generation


async def bound_principal() -> Principal:
    """`authenticate()` for the routes that take user tokens (device registration and
    revocation, /admin/v1): a device token there must still pass the device binding, or a
    revoked device could mint itself a new device, revoke others or reach /admin/v1."""
    principal = authenticate()
    if principal.device_id is not None:
        await device_binding(principal)
    return principal


async def require_bound_device() -> None:
    """A blueprint `before_request` doing `bound_principal()` (preflight OPTIONS aside)."""
    if request.method != "OPTIONS":
        await bound_principal()


async def device_request(*, signed: bool) -> tuple[DeviceContext, bytes]:
    """Authenticate a /sync/v1 device call: token, binding, and (for bodies) the HMAC."""
    principal = authenticate()
    generation = await device_binding(principal)
    assert principal.device_id is not None
    named = request.headers.get("X-Sync-Device-Id")
    if named is not None and named != principal.device_id:
        raise Forbidden("the request names another device", code="device_mismatch")
    rt = runtime()
    limits = rt.config.limits.for_tenant(principal.tenant_id)
    rt.buckets.take(
        (principal.tenant_id, principal.device_id), limits.device_rate_per_s, limits.device_burst
    )
    body = await request_body()
    if len(body) > limits.max_body_bytes:
        raise BodyTooLarge(f"the body is over {limits.max_body_bytes} bytes")
    if signed:
        secret = rt.device_secret(principal.tenant_id, principal.device_id, generation)
        _verify_signature(secret, principal.device_id, body, rt.clock.now().timestamp())
    await rt.touch(principal.tenant_id, principal.device_id)
    return DeviceContext(principal.tenant_id, principal.user_id, principal.device_id), body


def _verify_signature(secret: str, device_id: str, body: bytes, now: float) -> None:
    """The signed path is the one on the wire; clients that sign the decoded path (the
    same resource) are accepted too."""
    raw = request.scope.get("raw_path", b"").split(b"?", 1)[0].decode("latin-1")
    paths = [p for p in dict.fromkeys([raw, request.path]) if p]
    for index, path in enumerate(paths):
        try:
            verify(
                secret,
                timestamp=request.headers.get("X-Sync-Timestamp"),
                signature=request.headers.get("X-Sync-Signature"),
                method=request.method,
                path=path,
                device_id=device_id,
                body=body,
                now=now,
            )
            return
        except AuthError as exc:
            if exc.code != "bad_signature" or index == len(paths) - 1:
                raise


async def revoke_device(tenant_id: str, device_id: str, by_user: str | None) -> None:
    """Revoke (by the owner, or an admin when `by_user` is None), then close the device's
    open room connections."""
    rt = runtime()
    await rt.service.revoke_device(tenant_id, device_id, by_user)
    hook = rt.extras.get("on_revoke")
    if hook is not None:
        await hook(tenant_id, device_id)
