"""HMAC integrity (design.md §3), checked against an independent computation."""

from __future__ import annotations

import hashlib
import hmac
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from protocol.errors import AuthError
from protocol.integrity import (
    MAX_SKEW_S,
    canonical_message,
    derive_device_secret,
    sign,
    verify,
)

PROPS = settings(max_examples=150, deadline=None)
SECRET = "device-secret-ü"
NOW = 1_800_000_000.0

texts = st.text(st.characters(blacklist_categories=("Cs",)), max_size=60)
paths = st.text(st.characters(blacklist_categories=("Cs",)), min_size=1, max_size=60).map(
    lambda p: "/" + p
)
methods = st.sampled_from(["POST", "PUT", "DELETE", "PATCH", "GET"])
devices = st.text(
    st.characters(blacklist_categories=("Cs",), blacklist_characters="\n"), min_size=1, max_size=40
)


def reference_signature(
    secret: str, timestamp: str, method: str, path: str, device: str, body: bytes
) -> str:
    """The contract's formula, written out independently of protocol.integrity."""
    digest = hashlib.sha256(body).hexdigest()
    message = f"{timestamp}\n{method}\n{path}\n{device}\n{digest}"
    return hmac.new(secret.encode("utf-8"), message.encode("utf-8"), hashlib.sha256).hexdigest()


def check(**overrides: Any) -> None:
    request: dict[str, Any] = {
        "timestamp": str(int(NOW)),
        "method": "POST",
        "path": "/sync/v1/push",
        "device_id": "dev-a",
        "body": b'{"mutations":[]}',
        "now": NOW,
    }
    if "signature" not in overrides:
        request["signature"] = reference_signature(
            SECRET,
            request["timestamp"],
            request["method"],
            request["path"],
            request["device_id"],
            request["body"],
        )
    request.update(overrides)
    verify(SECRET, **request)


def code_of(**overrides: Any) -> str:
    with pytest.raises(AuthError) as info:
        check(**overrides)
    assert info.value.message
    return info.value.code


# -- the canonical form -------------------------------------------------------------------


def test_canonical_message_literal() -> None:
    body = b'{"mutations":[]}'
    digest = hashlib.sha256(body).hexdigest()
    assert canonical_message("1800000000", "post", "/sync/v1/push", "dev-a", body) == (
        f"1800000000\nPOST\n/sync/v1/push\ndev-a\n{digest}".encode()
    )
    # the empty body hashes like any other
    empty = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
    assert canonical_message("1", "GET", "/p", "d", b"").endswith(empty.encode())


@PROPS
@given(st.integers(0, 2**40).map(str), methods, paths, devices, st.binary(max_size=300))
def test_sign_matches_the_contract(
    timestamp: str, method: str, path: str, device: str, body: bytes
) -> None:
    signature = sign(SECRET, timestamp, method, path, device, body)
    assert signature == reference_signature(SECRET, timestamp, method, path, device, body)
    assert len(signature) == 64 and signature == signature.lower()
    assert sign(SECRET, timestamp, method.lower(), path, device, body) == signature


# -- verify -------------------------------------------------------------------------------


def test_a_correct_request_verifies() -> None:
    check()
    check(
        signature=reference_signature(
            SECRET, str(int(NOW)), "POST", "/sync/v1/push", "dev-a", b'{"mutations":[]}'
        ).upper()
    )


@pytest.mark.parametrize(
    "overrides",
    [
        {"timestamp": None},
        {"timestamp": ""},
        {"signature": None},
        {"signature": ""},
        {"timestamp": None, "signature": None},
    ],
    ids=repr,
)
def test_missing_header_is_signature_required(overrides: dict[str, Any]) -> None:
    assert code_of(**overrides) == "signature_required"


@pytest.mark.parametrize("offset", [-MAX_SKEW_S, MAX_SKEW_S, 0, 1, -1, 299])
def test_skew_up_to_300_s_is_fine(offset: int) -> None:
    check(now=NOW + offset)


@pytest.mark.parametrize("offset", [-MAX_SKEW_S - 1, MAX_SKEW_S + 1, 0.5 + MAX_SKEW_S, 86400])
def test_skew_over_300_s_is_stale(offset: float) -> None:
    assert code_of(now=NOW + offset) == "stale_timestamp"


def test_stale_timestamp_with_its_own_valid_signature() -> None:
    old = str(int(NOW) - 301)
    body = b"{}"
    signature = reference_signature(SECRET, old, "POST", "/p", "dev-a", body)
    assert code_of(timestamp=old, signature=signature, path="/p", body=body) == "stale_timestamp"


@pytest.mark.parametrize(
    "timestamp",
    ["soon", "1.8e9", "0x10", "9" * 5000, "1800000000.0", "\u0661\u0668\u0660\u0660x"],
    ids=lambda t: t[:20],
)
def test_timestamp_that_is_not_unix_seconds(timestamp: str) -> None:
    assert code_of(timestamp=timestamp) in ("bad_signature", "stale_timestamp")


@pytest.mark.parametrize("timestamp", ["9" * 400, "-" + "9" * 400, str(2**1100)])
def test_absurdly_large_timestamp_is_stale_not_a_crash(timestamp: str) -> None:
    assert code_of(timestamp=timestamp) == "stale_timestamp"


@pytest.mark.parametrize(
    "signature", ["é" * 64, "\u20ac", "ab\x00cd", "0" * 64, "g" * 64, "00", " ", "\udcff"]
)
def test_wrong_or_garbage_signature_is_bad_signature(signature: str) -> None:
    assert code_of(signature=signature) == "bad_signature"


@PROPS
@given(
    st.binary(max_size=200),
    paths,
    devices,
    methods,
    st.integers(-MAX_SKEW_S, MAX_SKEW_S),
    st.sampled_from(["body", "path", "timestamp", "device_id", "method", "secret"]),
    st.data(),
)
def test_tampering_is_bad_signature(
    body: bytes,
    path: str,
    device: str,
    method: str,
    skew: int,
    part: str,
    data: st.DataObject,
) -> None:
    timestamp = str(int(NOW) + skew)
    signature = reference_signature(SECRET, timestamp, method, path, device, body)
    signed = {
        "timestamp": timestamp,
        "signature": signature,
        "method": method,
        "path": path,
        "device_id": device,
        "body": body,
        "now": NOW,
    }
    verify(SECRET, **signed)  # as signed, it verifies

    secret = SECRET
    tampered = dict(signed)
    if part == "body":
        tampered["body"] = data.draw(st.binary(max_size=200).filter(lambda b: b != body))
    elif part == "path":
        tampered["path"] = data.draw(paths.filter(lambda p: p != path))
    elif part == "timestamp":
        # still fresh, so only the signature can object
        moved = data.draw(st.integers(-MAX_SKEW_S, MAX_SKEW_S).filter(lambda s: s != skew))
        tampered["timestamp"] = str(int(NOW) + moved)
    elif part == "device_id":
        tampered["device_id"] = data.draw(devices.filter(lambda d: d != device))
    elif part == "method":
        tampered["method"] = data.draw(methods.filter(lambda m: m != method))
    else:
        secret = data.draw(texts.filter(lambda s: s != SECRET))
    with pytest.raises(AuthError) as info:
        verify(secret, **tampered)
    assert info.value.code == "bad_signature"


@PROPS
@given(st.text(max_size=80), st.text(max_size=80) | st.none(), st.binary(max_size=50))
def test_arbitrary_headers_raise_only_auth_errors(
    timestamp: str, signature: str | None, body: bytes
) -> None:
    try:
        verify(
            SECRET,
            timestamp=timestamp,
            signature=signature,
            method="POST",
            path="/p",
            device_id="d",
            body=body,
            now=NOW,
        )
    except AuthError as exc:
        assert exc.code in ("signature_required", "stale_timestamp", "bad_signature")
    else:  # only a correct signature gets through
        assert signature is not None
        expected = reference_signature(SECRET, timestamp, "POST", "/p", "d", body)
        assert signature.strip().lower() == expected


def test_auth_error_is_a_401_kind() -> None:
    assert AuthError("x").code == "unauthorized"


# -- device secrets -----------------------------------------------------------------------


def test_device_secret_is_deterministic_and_independent() -> None:
    key = b"server-key"
    secret = derive_device_secret(key, "t", "d", 1)
    assert secret == derive_device_secret(key, "t", "d", 1)
    message = b'["device-secret", "t", "d", 1]'
    expected = hmac.new(key, message, hashlib.sha256).hexdigest()
    assert secret == expected


@PROPS
@given(
    st.tuples(texts, texts, st.integers(1, 10**6)),
    st.tuples(texts, texts, st.integers(1, 10**6)),
)
def test_device_secret_differs_per_tenant_device_generation(
    a: tuple[str, str, int], b: tuple[str, str, int]
) -> None:
    # any characters, newlines included: the fields cannot run into each other
    if a == b:
        return
    key = b"server-key"
    assert derive_device_secret(key, *a) != derive_device_secret(key, *b)


def test_device_secret_changes_with_each_input() -> None:
    key = b"server-key"
    base = derive_device_secret(key, "t", "d", 1)
    others = {
        derive_device_secret(key, "t2", "d", 1),
        derive_device_secret(key, "t", "d2", 1),
        derive_device_secret(key, "t", "d", 2),
        derive_device_secret(b"another key", "t", "d", 1),
    }
    assert base not in others and len(others) == 4


def test_device_secret_fields_cannot_run_together() -> None:
    key = b"server-key"
    assert derive_device_secret(key, "a\nb", "c", 1) != derive_device_secret(key, "a", "b\nc", 1)
