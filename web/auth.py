"""Bearer JWTs: verification with an algorithm allow-list, and minting for the CLI."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import jwt

from protocol.errors import AuthError
from web.config import Config, JwtKey

ROLES = frozenset({"learner", "author", "admin", "service"})
LEEWAY_S = 30


@dataclass(frozen=True)
class Principal:
    tenant_id: str
    user_id: str
    roles: frozenset[str]
    device_id: str | None = None
    generation: int | None = None  # device tokens: the registration they were issued for

    def has(self, *roles: str) -> bool:
        return bool(self.roles.intersection(roles))


def _claim_id(claims: dict[str, Any], name: str) -> str:
    value = claims.get(name)
    if not isinstance(value, str) or not 0 < len(value) <= 200 or "\x00" in value:
        raise AuthError(f"the token's {name!r} claim must be 1..200 characters without NUL")
    return value


def verification_keys(config: Config) -> list[JwtKey]:
    keys = list(config.jwt_keys)
    if config.jwt_secret:
        keys.append(JwtKey(config.jwt_signing_kid, "HS256", config.jwt_secret))
    return keys


class TokenCache:
    """`verify_token` for a server's config, remembering the tokens it verified until they
    expire. A device sends the same token with every request; verifying its signature each
    time was a tenth of the CPU of a small request. Only what decoding establishes is
    remembered (the token text maps to its claims); the device binding (revocation,
    re-registration) is still checked on every request, and failures are not remembered."""

    def __init__(self, config: Config, size: int = 16384) -> None:
        self.config = config
        self.size = size
        self._verified: dict[str, tuple[Principal, float]] = {}

    def decode(self, token: str) -> Principal:
        hit = self._verified.get(token)
        if hit is not None:
            if time.time() <= hit[1] + LEEWAY_S:
                return hit[0]
            del self._verified[token]
        principal, expires = verify_token(self.config, token)
        if len(self._verified) >= self.size:
            del self._verified[next(iter(self._verified))]  # the oldest
        self._verified[token] = (principal, expires)
        return principal


def verify_token(config: Config, token: str) -> tuple[Principal, float]:
    """Verify a bearer JWT: the key is chosen by `kid`, the algorithm must be that key's
    (never `none`), `exp`, `sub` and `tid` are required, with a small leeway. Returns the
    principal and the token's `exp`."""
    try:
        header = jwt.get_unverified_header(token)
    except jwt.PyJWTError as exc:
        raise AuthError(f"invalid token: {exc}") from None
    kid = header.get("kid")
    candidates = [
        k for k in verification_keys(config) if k.kid == kid and k.algorithm == header.get("alg")
    ]
    if not candidates:
        raise AuthError("the token's kid/alg matches no configured key")
    claims: dict[str, Any] | None = None
    for candidate in candidates:
        try:
            claims = jwt.decode(
                token,
                candidate.key,
                algorithms=[candidate.algorithm],
                options={"require": ["exp", "sub", "tid"]},
                leeway=LEEWAY_S,
            )
            break
        except jwt.InvalidSignatureError:
            continue
        except jwt.ExpiredSignatureError:
            raise AuthError("the token has expired") from None
        except jwt.PyJWTError as exc:
            raise AuthError(f"invalid token: {exc}") from None
    if claims is None:
        raise AuthError("invalid token: signature verification failed")
    roles = claims.get("roles", [])
    if not isinstance(roles, list) or not all(isinstance(r, str) for r in roles):
        raise AuthError("the token's 'roles' claim must be a list of strings")
    did = claims.get("did")
    principal = Principal(
        tenant_id=_claim_id(claims, "tid"),
        user_id=_claim_id(claims, "sub"),
        roles=frozenset(roles) & ROLES,
        device_id=None if did is None else _claim_id(claims, "did"),
        generation=_generation(claims),
    )
    return principal, float(claims["exp"])


def _generation(claims: dict[str, Any]) -> int | None:
    gen = claims.get("gen")
    if gen is None:
        return None
    if isinstance(gen, bool) or not isinstance(gen, int):
        raise AuthError("the token's 'gen' claim must be an integer")
    return gen


def bearer(header: str | None) -> str:
    if not header:
        raise AuthError("missing bearer token")
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise AuthError("the Authorization header must be 'Bearer <token>'")
    return token.strip()


def mint_token(
    secret: str,
    *,
    tenant: str,
    user: str,
    roles: list[str],
    device: str | None = None,
    ttl_s: int = 3600,
    now: float | None = None,
    kid: str | None = None,
    generation: int | None = None,
) -> str:
    issued = int(now if now is not None else time.time())
    claims: dict[str, Any] = {
        "sub": user,
        "tid": tenant,
        "roles": roles,
        "iat": issued,
        "exp": issued + ttl_s,
    }
    if device is not None:
        claims["did"] = device
    if generation is not None:
        claims["gen"] = generation
    headers = {"kid": kid} if kid else None
    return jwt.encode(claims, secret, algorithm="HS256", headers=headers)
