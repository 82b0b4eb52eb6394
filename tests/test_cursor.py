"""Cursor tokens: round-trip, and any tampering is `invalid_cursor`, never another error."""

from __future__ import annotations

import base64
import json
import string
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from crdt_sync.errors import ResyncRequired
from crdt_sync.model import MAX_ID, SyncCursor
from protocol.cursor import CursorCodec

PROPS = settings(max_examples=150, deadline=None)
KEY = b"k" * 32
CODEC = CursorCodec(KEY)
B64URL = string.ascii_letters + string.digits + "-_"

ids = st.text(
    st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00"),
    min_size=1,
    max_size=MAX_ID,
)
cursors = st.builds(
    SyncCursor,
    tenant_id=ids,
    device_id=ids,
    seq=st.integers(0, 2**63 - 1),
    scope=st.text(max_size=20),
    issued_at=st.integers(0, 2**40),
    snapshot_seq=st.none() | st.integers(0, 2**63 - 1),
)
SAMPLE = SyncCursor("tenant-1", "dev-a", 42, "0123456789abcdef", 1_800_000_000, snapshot_seq=99)
TOKEN = CODEC.encode(SAMPLE)


def assert_invalid(codec: CursorCodec, token: Any) -> None:
    with pytest.raises(ResyncRequired) as info:
        codec.decode(token)
    assert info.value.reason == "invalid_cursor"
    assert info.value.code == "full_resync_required"


@PROPS
@given(cursors)
def test_round_trip(cursor: SyncCursor) -> None:
    token = CODEC.encode(cursor)
    assert CODEC.decode(token) == cursor
    assert set(token) <= set(B64URL + ".")  # safe in a query string as is


def test_the_longest_ids_fit_in_a_token() -> None:
    for char in ("x", "é", "\U0001f600"):
        cursor = SyncCursor(char * MAX_ID, char * MAX_ID, 2**63 - 1, "f" * 16, 2**40, 2**63 - 1)
        assert CODEC.decode(CODEC.encode(cursor)) == cursor


def test_token_is_opaque_but_deterministic() -> None:
    assert CODEC.encode(SAMPLE) == TOKEN
    assert "tenant-1" not in TOKEN
    assert CursorCodec(b"other key").encode(SAMPLE) != TOKEN


@PROPS
@given(cursors, st.data())
def test_flipping_any_character_is_invalid(cursor: SyncCursor, data: st.DataObject) -> None:
    token = CODEC.encode(cursor)
    index = data.draw(st.integers(0, len(token) - 1), label="index")
    replacement = data.draw(
        st.sampled_from(B64URL + ".=+/ ") | st.characters(), label="replacement"
    )
    if replacement == token[index]:
        return
    assert_invalid(CODEC, token[:index] + replacement + token[index + 1 :])


def test_flipping_each_character_of_one_token_to_each_alphabet_letter() -> None:
    for index, original in enumerate(TOKEN):
        for replacement in B64URL + ".=+/":
            if replacement != original:
                assert_invalid(CODEC, TOKEN[:index] + replacement + TOKEN[index + 1 :])


def test_standard_base64_spelling_is_invalid() -> None:
    spelled = TOKEN.replace("-", "+").replace("_", "/")
    forced = TOKEN[:-1] + ("+" if TOKEN[-1] != "+" else "/")
    for token in (spelled, forced, TOKEN + "=", TOKEN + "==", TOKEN.replace(".", "=.")):
        if token != TOKEN:
            assert_invalid(CODEC, token)


@PROPS
@given(cursors, st.data())
def test_truncation_and_extension_are_invalid(cursor: SyncCursor, data: st.DataObject) -> None:
    token = CODEC.encode(cursor)
    cut = data.draw(st.integers(0, len(token) - 1), label="cut")
    assert_invalid(CODEC, token[:cut])
    assert_invalid(CODEC, token[cut + 1 :])
    assert_invalid(CODEC, token + data.draw(st.text(min_size=1, max_size=4), label="tail"))


@PROPS
@given(cursors)
def test_another_key_is_invalid(cursor: SyncCursor) -> None:
    assert_invalid(CursorCodec(b"another key"), CODEC.encode(cursor))


@PROPS
@given(st.text(max_size=300) | st.text(B64URL + ".", max_size=300))
def test_random_strings_are_invalid(text: str) -> None:
    assert_invalid(CODEC, text)


@PROPS
@given(st.binary(max_size=200))
def test_random_bytes_and_non_strings_are_invalid(data: bytes) -> None:
    assert_invalid(CODEC, data)
    assert_invalid(CODEC, data.decode("latin-1"))


@pytest.mark.parametrize("value", [None, 0, 1.5, [], {}, ["a.b"], "", ".", "a.", ".a", "a.b.c"])
def test_odd_values_are_invalid(value: Any) -> None:
    assert_invalid(CODEC, value)


def test_oversized_token_is_invalid() -> None:
    assert_invalid(CODEC, TOKEN + "A" * 10_000)


def _forge(body: Any, key: bytes = KEY) -> str:
    """A correctly signed token around any JSON body (the server's key leaked or changed)."""
    raw = json.dumps(body, separators=(",", ":")).encode()
    tag = CursorCodec(key)._tag(raw)
    b64 = base64.urlsafe_b64encode
    return b64(raw).rstrip(b"=").decode() + "." + b64(tag).rstrip(b"=").decode()


@pytest.mark.parametrize(
    "body",
    [
        [2, "t", "d", 1, "s", 1, None],  # another version
        [1, "t", "d", 1, "s", 1],  # too short
        [1, "t", "d", 1, "s", 1, None, 0],  # too long
        [1, "t", "d", -1, "s", 1, None],  # negative seq
        [1, "t", "d", "x", "s", 1, None],
        [1, "t", "d", None, "s", 1, None],
        [1, "t", "d", 1e400, "s", 1, None],
        [1, "t", "d", 1, "s", 1, -5],
        [1, "t", "d", 1, "s", 1, "x"],
        [1, "", "d", 1, "s", 1, None],
        [1, None, "d", 1, "s", 1, None],
        [1, "t", "d", 1, None, 1, None],
        {"v": 1},
        "cursor",
        None,
        7,
    ],
    ids=repr,
)
def test_signed_but_malformed_bodies_are_invalid(body: Any) -> None:
    assert_invalid(CODEC, _forge(body))


def test_forged_body_decodes_only_with_the_key() -> None:
    body = [1, "t", "d", 5, "s", 10, None]
    assert CODEC.decode(_forge(body)) == SyncCursor("t", "d", 5, "s", 10)
    assert_invalid(CODEC, _forge(body, key=b"guess"))
