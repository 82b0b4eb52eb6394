"""Token hygiene over real HTTP: exp required, algorithm allow-list, leeway, RS256/ES256
public keys, and two keys at once (kid) so keys can rotate."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from tests.conftest import Server, run_server
from web.config import Config, JwtKey

pytestmark = pytest.mark.anyio

ROTATED_SECRET = "rotated-secret-0123456789abcdef0123456789abcdef"


def _pem_public(private: Any) -> str:
    return (
        private.public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        .decode()
    )


RSA_KEY = rsa.generate_private_key(public_exponent=65537, key_size=2048)
EC_KEY = ec.generate_private_key(ec.SECP256R1())


@pytest.fixture
async def keyed_server(anyio_backend: str, tmp_path: Path) -> AsyncIterator[Server]:
    def configure(config: Config) -> None:
        config.jwt_keys = [
            JwtKey("rsa-1", "RS256", _pem_public(RSA_KEY)),
            JwtKey("ec-1", "ES256", _pem_public(EC_KEY)),
            JwtKey("hs-old", "HS256", ROTATED_SECRET),
        ]

    async with run_server(tmp_path, None, "sqlite", configure=configure) as srv:
        yield srv


def claims(**extra: Any) -> dict[str, Any]:
    now = int(time.time())
    return {"sub": "alice", "tid": "acme", "roles": ["learner"], "exp": now + 60, **extra}


async def status(server: Server, token: str) -> tuple[int, str]:
    http = server.http()
    r = await http.post(
        "/sync/v1/devices",
        json={"device_id": "d1"},
        headers={"Authorization": f"Bearer {token}"},
    )
    code = r.json()["error"]["code"] if r.status_code >= 400 else ""
    return r.status_code, code


async def test_each_configured_key_verifies_its_own_tokens(keyed_server: Server) -> None:
    assert keyed_server.config.jwt_secret
    tokens = [
        jwt.encode(claims(), RSA_KEY, algorithm="RS256", headers={"kid": "rsa-1"}),
        jwt.encode(claims(), EC_KEY, algorithm="ES256", headers={"kid": "ec-1"}),
        jwt.encode(claims(), ROTATED_SECRET, algorithm="HS256", headers={"kid": "hs-old"}),
        jwt.encode(claims(), keyed_server.config.jwt_secret, algorithm="HS256"),
    ]
    for token in tokens:
        assert await status(keyed_server, token) == (201, "")


async def test_bad_tokens_are_401(keyed_server: Server) -> None:
    secret = keyed_server.config.jwt_secret
    assert secret
    now = int(time.time())
    no_exp = claims()
    del no_exp["exp"]
    bad = {
        "expired": jwt.encode(claims(exp=now - 120), secret, algorithm="HS256"),
        "no exp": jwt.encode(no_exp, secret, algorithm="HS256"),
        "no tid": jwt.encode({k: v for k, v in claims().items() if k != "tid"}, secret),
        "alg none": jwt.encode(claims(), None, algorithm="none"),
        "unknown kid": jwt.encode(claims(), secret, algorithm="HS256", headers={"kid": "nope"}),
        "wrong key for kid": jwt.encode(
            claims(), EC_KEY, algorithm="ES256", headers={"kid": "rsa-1"}
        ),
        # Algorithm confusion: the RSA public key used as an HMAC secret must not verify.
        "rsa pubkey as hs secret": _hs_with_public_key(),
        "garbage": "not.a.token",
        "other secret": jwt.encode(claims(), "x" * 40, algorithm="HS256"),
    }
    for name, token in bad.items():
        assert await status(keyed_server, token) == (401, "unauthorized"), name


def _hs_with_public_key() -> str:
    import base64
    import hashlib
    import hmac
    import json

    def b64(data: bytes) -> str:
        return base64.urlsafe_b64encode(data).rstrip(b"=").decode()

    header = b64(json.dumps({"alg": "HS256", "kid": "rsa-1", "typ": "JWT"}).encode())
    body = b64(json.dumps(claims()).encode())
    mac = hmac.new(_pem_public(RSA_KEY).encode(), f"{header}.{body}".encode(), hashlib.sha256)
    return f"{header}.{body}.{b64(mac.digest())}"


async def test_small_leeway(keyed_server: Server) -> None:
    secret = keyed_server.config.jwt_secret
    assert secret
    just_expired = jwt.encode(claims(exp=int(time.time()) - 5), secret, algorithm="HS256")
    assert await status(keyed_server, just_expired) == (201, "")


async def test_missing_and_malformed_authorization(keyed_server: Server) -> None:
    http = keyed_server.http()
    for headers in ({}, {"Authorization": "Basic abc"}, {"Authorization": "Bearer"}):
        r = await http.post("/sync/v1/devices", json={"device_id": "d"}, headers=headers)
        assert r.status_code == 401
        assert r.json()["error"]["code"] == "unauthorized"


def test_remembered_tokens_still_expire_and_stay_per_server() -> None:
    """The server remembers verified tokens (web/auth.py TokenCache), but a remembered token
    stops working when it expires, and one server's tokens mean nothing to another's."""
    from protocol.errors import AuthError
    from web.auth import LEEWAY_S, TokenCache

    cache = TokenCache(Config(jwt_secret="one-secret-of-32-bytes-or-more!!"))
    other = TokenCache(Config(jwt_secret="another-secret-of-32-bytes-or-more"))
    # expires (leeway included) a second from now
    token = jwt.encode(
        claims(exp=int(time.time()) - LEEWAY_S + 2), cache.config.jwt_secret, algorithm="HS256"
    )
    first = cache.decode(token)
    assert cache.decode(token) is first  # remembered
    with pytest.raises(AuthError):
        other.decode(token)
    time.sleep(2.2)
    with pytest.raises(AuthError, match="expired"):
        cache.decode(token)


def test_remembered_tokens_are_bounded() -> None:
    from web.auth import TokenCache

    cache = TokenCache(Config(jwt_secret="one-secret-of-32-bytes-or-more!!"), size=3)
    tokens = [
        jwt.encode(claims(sub=f"u{n}"), cache.config.jwt_secret, algorithm="HS256")
        for n in range(5)
    ]
    for token in tokens:
        cache.decode(token)
    assert list(cache._verified) == tokens[2:]
