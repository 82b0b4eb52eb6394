"""Fuzzing the y-websocket decoders (protocol/yprotocol.py): any bytes either decode or raise
YProtocolError, never anything else; valid messages with tails, truncations and flipped bytes
behave the same way; and the encoders round-trip through the decoders.
"""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from pycrdt import Array, Doc, Map, Text

from protocol import yprotocol as yp

# Random bytes into each decoder: 2,000 cases each. Structured cases cost more to generate.
FUZZ = settings(max_examples=2000, deadline=None, suppress_health_check=[HealthCheck.too_slow])
STRUCTURED = settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
PROPERTY = settings(max_examples=300, deadline=None)
MAX_U53 = 2**53 - 1

u53 = st.integers(min_value=0, max_value=MAX_U53)
json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**63), max_value=2**63)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(), inner, max_size=4),
    max_leaves=12,
)
entries = st.lists(
    st.builds(yp.AwarenessEntry, client_id=u53, clock=u53, state=json_values), max_size=6
)


def encode_state_vector(sv: dict[int, int]) -> bytes:
    out = bytearray(yp.varuint(len(sv)))
    for client, clock in sv.items():
        out += yp.varuint(client) + yp.varuint(clock)
    return bytes(out)


def decodes_or_refuses(decoder: Any, data: bytes) -> Any:
    """The decoder's result, or None when it raised YProtocolError; anything else fails."""
    try:
        return decoder(data)
    except yp.YProtocolError:
        return None


@st.composite
def valid_messages(draw: st.DrawFn) -> bytes:
    """A valid y-websocket message of any type."""
    kind = draw(st.sampled_from(["step1", "step2", "update", "awareness", "auth", "query"]))
    if kind == "step1":
        sv = draw(st.dictionaries(u53, u53, max_size=5))
        return yp.sync_step1(encode_state_vector(sv))
    if kind == "awareness":
        return yp.awareness_message(yp.encode_awareness(draw(entries)))
    if kind == "auth":
        return b"\x02" + yp.varuint(draw(u53)) + yp.varbytes(draw(st.binary(max_size=40)))
    if kind == "query":
        return b"\x03"
    payload = draw(st.binary(max_size=200))
    return {"step2": yp.sync_step2, "update": yp.sync_update}[kind](payload)


# -- random bytes -------------------------------------------------------------------------


@FUZZ
@given(st.binary(max_size=300))
@example(b"")
@example(b"\x00\x03\x00")  # unknown sync type
@example(b"\x04")  # unknown message type
@example(b"\x00\x00\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\x01")  # varuint too long
def test_decode_random_bytes(data: bytes) -> None:
    message = decodes_or_refuses(yp.decode, data)
    if message is not None:
        assert isinstance(message.type, yp.MessageType)
        assert isinstance(message.payload, bytes)
        assert len(message.payload) < len(data)


@FUZZ
@given(st.binary(max_size=300))
@example(b"\x01\x01\x01\x03\xff\xfe\xfd")  # state is not UTF-8
@example(b"\x01\x01\x01\x03NaN")  # state is not JSON
@example(b"\xff\xff\xff\xff\x0f")  # a huge entry count
def test_decode_awareness_random_bytes(data: bytes) -> None:
    found = decodes_or_refuses(yp.decode_awareness, data)
    if found is not None:
        assert all(isinstance(e, yp.AwarenessEntry) for e in found)


@FUZZ
@given(st.binary(max_size=300))
@example(b"\xff\xff\xff\xff\x0f")
@example(b"\x01\x01")
def test_decode_state_vector_random_bytes(data: bytes) -> None:
    sv = decodes_or_refuses(yp.decode_state_vector, data)
    if sv is not None:
        assert all(isinstance(k, int) and isinstance(v, int) for k, v in sv.items())


# -- structured fuzz ----------------------------------------------------------------------


@STRUCTURED
@given(valid_messages(), st.binary(min_size=1, max_size=50))
def test_a_valid_message_with_a_tail_is_refused(message: bytes, tail: bytes) -> None:
    yp.decode(message)
    with pytest.raises(yp.YProtocolError):
        yp.decode(message + tail)


@STRUCTURED
@given(valid_messages(), st.data())
def test_every_truncation_of_a_valid_message_is_refused(
    message: bytes, data: st.DataObject
) -> None:
    cut = data.draw(st.integers(min_value=0, max_value=len(message) - 1))
    with pytest.raises(yp.YProtocolError):
        yp.decode(message[:cut])


def test_byte_by_byte_prefixes_are_all_refused() -> None:
    entry = yp.AwarenessEntry(7, 3, {"user": {"name": "ü", "color": "#f00"}})
    for message in (
        yp.sync_step1(encode_state_vector({1: 2, 300: 70000})),
        yp.sync_update(b"\x01\x02\x03" * 50),
        yp.awareness_message(yp.encode_awareness([entry])),
    ):
        assert yp.decode(message).payload
        for cut in range(len(message)):
            with pytest.raises(yp.YProtocolError):
                yp.decode(message[:cut])


@STRUCTURED
@given(valid_messages(), st.data())
def test_flipped_bytes_decode_or_are_refused(message: bytes, data: st.DataObject) -> None:
    mutated = bytearray(message)
    for _ in range(data.draw(st.integers(min_value=1, max_value=3))):
        index = data.draw(st.integers(min_value=0, max_value=len(mutated) - 1))
        mutated[index] = data.draw(st.integers(min_value=0, max_value=255))
    found = decodes_or_refuses(yp.decode, bytes(mutated))
    if found is not None and found.type is yp.MessageType.AWARENESS:
        decodes_or_refuses(yp.decode_awareness, found.payload)
    if found is not None and found.sync_type is yp.SyncType.STEP1:
        decodes_or_refuses(yp.decode_state_vector, found.payload)


@STRUCTURED
@given(entries, st.data())
def test_awareness_with_tails_truncations_and_flips(found: list[Any], data: st.DataObject) -> None:
    update = yp.encode_awareness(found)
    tail = data.draw(st.binary(min_size=1, max_size=20))
    with pytest.raises(yp.YProtocolError):
        yp.decode_awareness(update + tail)
    cut = data.draw(st.integers(min_value=0, max_value=len(update) - 1))
    with pytest.raises(yp.YProtocolError):
        yp.decode_awareness(update[:cut])
    flipped = bytearray(update)
    index = data.draw(st.integers(min_value=0, max_value=len(flipped) - 1))
    flipped[index] ^= data.draw(st.integers(min_value=1, max_value=255))
    decodes_or_refuses(yp.decode_awareness, bytes(flipped))


JSONISH = st.text(alphabet='[]{}":,0123456789.eE+-ntrufalsNaIiy \\u', max_size=400)


@FUZZ
@given(st.one_of(JSONISH, st.integers(0, 20_000).map(lambda n: "[" * n + "]" * n)))
@example("[" * 100_000)
@example('{"a":' * 50_000)
@example("NaN")
@example("-Infinity")
@example('{"x": Infinity}')
@example("-1E999")
def test_awareness_state_text_is_json_or_refused(text: str) -> None:
    update = yp.varuint(1) + yp.varuint(5) + yp.varuint(1) + yp.varbytes(text.encode())
    found = decodes_or_refuses(yp.decode_awareness, update)
    if found is not None:
        # What is accepted can be relayed: it encodes back to JSON that JavaScript can parse.
        relayed = yp.encode_awareness(found)
        assert b"NaN" not in relayed
        assert b"Infinity" not in relayed


@pytest.mark.parametrize(
    "text", ["NaN", "Infinity", "-Infinity", '{"x":[1,NaN]}', "1e999", '{"x":[-2.5E400]}']
)
def test_awareness_state_must_be_json(text: str) -> None:
    """JSON has no NaN/Infinity; relayed, they would break JSON.parse in every other client."""
    update = yp.varuint(1) + yp.varuint(5) + yp.varuint(1) + yp.varbytes(text.encode())
    with pytest.raises(yp.YProtocolError):
        yp.decode_awareness(update)


def test_deeply_nested_awareness_state_is_refused() -> None:
    for text in ("[" * 100_000 + "]" * 100_000, '{"a":' * 100_000):
        update = yp.varuint(1) + yp.varuint(5) + yp.varuint(1) + yp.varbytes(text.encode())
        with pytest.raises(yp.YProtocolError):
            yp.decode_awareness(update)


# -- round trips --------------------------------------------------------------------------


@PROPERTY
@given(st.binary(max_size=500))
def test_sync_messages_round_trip(payload: bytes) -> None:
    for encode, sync_type in (
        (yp.sync_step1, yp.SyncType.STEP1),
        (yp.sync_step2, yp.SyncType.STEP2),
        (yp.sync_update, yp.SyncType.UPDATE),
    ):
        assert yp.decode(encode(payload)) == yp.Message(yp.MessageType.SYNC, sync_type, payload)


@PROPERTY
@given(entries)
def test_awareness_round_trips(found: list[yp.AwarenessEntry]) -> None:
    message = yp.decode(yp.awareness_message(yp.encode_awareness(found)))
    assert message.type is yp.MessageType.AWARENESS
    assert yp.decode_awareness(message.payload) == found


@PROPERTY
@given(st.dictionaries(u53, u53, max_size=20))
def test_state_vectors_round_trip(sv: dict[int, int]) -> None:
    assert yp.decode_state_vector(encode_state_vector(sv)) == sv


@PROPERTY
@given(u53)
def test_varuint_round_trips(value: int) -> None:
    reader = yp.Reader(yp.varuint(value))
    assert reader.varuint() == value
    assert reader.done()


def test_varuint_matches_lib0() -> None:
    assert [yp.varuint(v) for v in (0, 1, 127, 128, 300, 2**14, MAX_U53)] == [
        b"\x00",
        b"\x01",
        b"\x7f",
        b"\x80\x01",
        b"\xac\x02",
        b"\x80\x80\x01",
        b"\xff\xff\xff\xff\xff\xff\xff\x0f",
    ]
    with pytest.raises(ValueError):
        yp.varuint(-1)


@PROPERTY
@given(st.lists(st.tuples(st.sampled_from(["t", "m", "a"]), st.text(max_size=8)), max_size=12))
def test_real_pycrdt_messages_decode(edits: list[tuple[str, str]]) -> None:
    """What pycrdt produces (state vectors, updates) frames and decodes like a Yjs peer's."""
    doc = Doc()
    text, map_, array = doc.get("t", type=Text), doc.get("m", type=Map), doc.get("a", type=Array)
    for root, value in edits:
        if root == "t":
            text += value
        elif root == "m":
            map_[value] = len(value)
        else:
            array.append(value)
    state, update = doc.get_state(), doc.get_update()
    assert yp.decode(yp.sync_step1(state)).payload == state
    assert yp.decode(yp.sync_step2(update)).payload == update
    assert set(yp.decode_state_vector(state)) <= {doc.client_id}
