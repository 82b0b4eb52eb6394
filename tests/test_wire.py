"""Request parsing of /sync/v1: valid bodies parse; anything else raises InvalidInput only."""

from __future__ import annotations

import json
import math
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from crdt_sync.errors import InvalidInput
from crdt_sync.vector_clock import VectorClock
from protocol import wire
from protocol.errors import BadRequest, PayloadTooLarge

PROPS = settings(max_examples=200, deadline=None)


def mutation(**overrides: Any) -> dict[str, Any]:
    m: dict[str, Any] = {
        "mutation_id": "6f1c0a52-2c7e-4c1e-9a53-4f1f8b0c2d11",
        "entity_type": "progress",
        "entity_id": "course-7",
        "op": "put",
        "payload": {"completion": 0.8, "score": 92, "completed": ["m1"]},
        "clock": {"dev-a": 3},
    }
    m.update(overrides)
    return {k: v for k, v in m.items() if v is not DROP}


DROP = object()


def push_body(*mutations: dict[str, Any]) -> bytes:
    return json.dumps({"mutations": list(mutations)}).encode()


def rejects(parse: Any, body: Any, *words: str) -> InvalidInput:
    """Assert `parse(body)` raises InvalidInput whose message names every word."""
    with pytest.raises(InvalidInput) as info:
        parse(body)
    error = info.value
    assert error.message and str(error) == error.message
    for word in words:
        assert word in error.message, (word, error.message)
    return error


# -- push ---------------------------------------------------------------------------------


def test_push_example_from_the_contract() -> None:
    [m] = wire.parse_push(push_body(mutation()))
    assert m.mutation_id == "6f1c0a52-2c7e-4c1e-9a53-4f1f8b0c2d11"
    assert (m.entity_type, m.entity_id, m.op) == ("progress", "course-7", "put")
    assert m.payload == {"completion": 0.8, "score": 92, "completed": ["m1"]}
    assert m.clock == VectorClock.of({"dev-a": 3})
    assert m.ts is None


def test_push_delete_ts_and_order() -> None:
    body = push_body(
        mutation(mutation_id="a", op="delete", payload=None, ts=1_800_000_000_000),
        mutation(mutation_id="b", op="delete", payload=DROP, clock={"dev-a": 4, "server": 0}),
        mutation(mutation_id="c"),
    )
    first, second, third = wire.parse_push(body)
    assert [first.mutation_id, second.mutation_id, third.mutation_id] == ["a", "b", "c"]
    assert first.op == "delete" and first.payload is None and first.ts == 1_800_000_000_000
    assert second.payload is None and second.clock == VectorClock.of({"dev-a": 4})


def test_push_empty_and_full_batches() -> None:
    assert wire.parse_push(b'{"mutations": []}') == []
    full = [mutation(mutation_id=f"m{i}") for i in range(wire.MAX_BATCH)]
    assert len(wire.parse_push(push_body(*full))) == wire.MAX_BATCH


def test_push_501_mutations_is_batch_too_large() -> None:
    body = push_body(*[mutation(mutation_id=f"m{i}") for i in range(wire.MAX_BATCH + 1)])
    error = rejects(wire.parse_push, body, "500")
    assert isinstance(error, PayloadTooLarge)
    assert error.code == "batch_too_large"
    # the limit is checked before the items, so it is reported even for junk items
    junk = json.dumps({"mutations": [0] * (wire.MAX_BATCH + 1)}).encode()
    assert rejects(wire.parse_push, junk).code == "batch_too_large"
    assert wire.parse_push(push_body(mutation(), mutation()), max_batch=2)
    assert rejects(lambda b: wire.parse_push(b, max_batch=1), push_body(mutation(), mutation()))


NOT_JSON = [
    b"",
    b"   ",
    b"{",
    b"mutations",
    b"{'mutations': []}",
    b'{"mutations": []',
    b'{"mutations": [NaN]}',
    b'{"mutations": [], "x": NaN}',
    b'{"x": Infinity}',
    b'{"x": -Infinity}',
    b'{"x": 1e400}',
    b'{"x": -1e999}',
    b"\xff\xfe{}",
    b'{"x": "\xff"}',
    b'{"x": "\xed\xa0\x80"}',  # a UTF-8-encoded surrogate
    b'{"x": "\\ud800"}',  # a lone surrogate escape
    b'{"x": "\\udfff tail"}',
    b'{"\\ud83d": 1}',  # a half pair as a key
    b"[" * 100_000 + b"]" * 100_000,
    b'{"mutations": []} trailing',
]


@pytest.mark.parametrize("body", NOT_JSON, ids=lambda b: repr(b[:30]))
@pytest.mark.parametrize("parse", [wire.parse_push, wire.parse_object, wire.parse_json])
def test_not_json(parse: Any, body: bytes) -> None:
    assert rejects(parse, body, "JSON").code == "invalid_request"


def test_surrogate_pairs_and_escapes_are_fine() -> None:
    assert wire.parse_object(b'{"x": "\\ud83d\\ude00 \\u00e9"}') == {"x": "\U0001f600 é"}
    assert wire.parse_object('{"x": "\U0001f600"}'.encode()) == {"x": "\U0001f600"}
    assert wire.parse_object(b'{"x": "\\\\ud800"}') == {"x": "\\ud800"}  # an escaped backslash
    assert wire.parse_object(b'{"big": 1e308, "n": -0.0}') == {"big": 1e308, "n": -0.0}


@pytest.mark.parametrize(
    "body",
    [b"[]", b"[1]", b'"mutations"', b"null", b"1", b"true", b'[{"mutations": []}]'],
)
def test_push_body_must_be_an_object(body: bytes) -> None:
    rejects(wire.parse_push, body, "object")


@pytest.mark.parametrize(
    ("body", "words"),
    [
        (b"{}", ["mutations", "missing"]),
        (b'{"mutation": []}', ["mutations"]),
        (b'{"mutations": {}}', ["mutations", "type"]),
        (b'{"mutations": null}', ["mutations", "type"]),
        (b'{"mutations": "[]"}', ["mutations", "type"]),
        (b'{"mutations": true}', ["mutations", "type"]),
        (b'{"mutations": [null]}', ["mutations[0]", "object"]),
        (b'{"mutations": [[]]}', ["mutations[0]", "object"]),
        (b'{"mutations": ["put"]}', ["mutations[0]"]),
    ],
)
def test_push_envelope(body: bytes, words: list[str]) -> None:
    error = rejects(wire.parse_push, body, *words)
    assert isinstance(error, BadRequest)


BAD_MUTATIONS: list[tuple[dict[str, Any], list[str]]] = [
    (mutation(mutation_id=DROP), ["mutation_id", "missing"]),
    (mutation(entity_type=DROP), ["entity_type", "missing"]),
    (mutation(entity_id=DROP), ["entity_id", "missing"]),
    (mutation(op=DROP), ["op", "missing"]),
    (mutation(clock=DROP), ["clock", "missing"]),
    (mutation(mutation_id=7), ["mutation_id", "type"]),
    (mutation(mutation_id=None), ["mutation_id"]),
    (mutation(mutation_id=""), ["mutation_id"]),
    (mutation(mutation_id="x" * 201), ["mutation_id"]),
    (mutation(entity_type=["progress"]), ["entity_type"]),
    (mutation(entity_id=True), ["entity_id"]),
    (mutation(entity_id="a\u0000b"), ["entity_id"]),
    (mutation(op="patch"), ["op"]),
    (mutation(op="PUT"), ["op"]),
    (mutation(op=None), ["op"]),
    (mutation(op=1), ["op"]),
    (mutation(payload=None), ["put", "payload"]),
    (mutation(payload=DROP), ["put", "payload"]),
    (mutation(payload=[1, 2]), ["payload"]),
    (mutation(payload="{}"), ["payload"]),
    (mutation(op="delete"), ["delete", "payload"]),
    (mutation(op="delete", payload={}), ["delete", "payload"]),
    (mutation(op="delete", payload=0), ["delete", "payload"]),
    (mutation(clock=[]), ["clock"]),
    (mutation(clock=None), ["clock"]),
    (mutation(clock="dev-a:3"), ["clock"]),
    (mutation(clock={}), ["clock"]),
    (mutation(clock={"dev-a": 0}), ["clock"]),
    (mutation(clock={"dev-a": -1}), ["clock"]),
    (mutation(clock={"dev-a": 1.5}), ["clock"]),
    (mutation(clock={"dev-a": 3.0}), ["clock"]),
    (mutation(clock={"dev-a": True}), ["clock"]),
    (mutation(clock={"dev-a": "3"}), ["clock"]),
    (mutation(clock={"dev-a": None}), ["clock"]),
    (mutation(clock={"dev-a": 2**53}), ["clock"]),
    (mutation(clock={"": 1}), ["clock"]),
    (mutation(clock={"x" * 201: 1}), ["clock"]),
    (mutation(clock={f"d{i}": 1 for i in range(1001)}), ["clock"]),
    (mutation(ts=-1), ["ts"]),
    (mutation(ts=1.5), ["ts"]),
    (mutation(ts=1e3), ["ts"]),
    (mutation(ts=True), ["ts"]),
    (mutation(ts=False), ["ts"]),
    (mutation(ts="1800000000000"), ["ts"]),
    (mutation(ts=[1]), ["ts"]),
]


@pytest.mark.parametrize(("bad", "words"), BAD_MUTATIONS, ids=lambda v: repr(v)[:60])
def test_bad_mutations_are_bad_requests(bad: dict[str, Any], words: list[str]) -> None:
    # the broken mutation sits at index 1, after a good one; the message says where
    error = rejects(wire.parse_push, push_body(mutation(), bad), "mutations[1]", *words)
    assert isinstance(error, BadRequest)
    assert error.code == "invalid_request"


@pytest.mark.parametrize(("bad", "words"), BAD_MUTATIONS[:12], ids=lambda v: repr(v)[:60])
def test_parse_mutation_directly(bad: dict[str, Any], words: list[str]) -> None:
    rejects(lambda obj: wire.parse_mutation(obj, 4), bad, "mutations[4]", *words)


@pytest.mark.parametrize("value", [None, [], "m", 1, True])
def test_parse_mutation_needs_an_object(value: Any) -> None:
    rejects(lambda obj: wire.parse_mutation(obj, 0), value, "mutations[0]", "object")


# -- object, cursor, limit ----------------------------------------------------------------


def test_parse_object() -> None:
    assert wire.parse_object(b'{"a": [1, 2.5, null, true, "x", {}]}') == {
        "a": [1, 2.5, None, True, "x", {}]
    }
    assert wire.parse_object(b'\xef\xbb\xbf{"bom": 1}') == {"bom": 1}
    for body in (b"[]", b"null", b'"x"', b"3"):
        rejects(wire.parse_object, body, "object")


def test_parse_cursor_body() -> None:
    assert wire.parse_cursor_body(b'{"cursor": "abc.def"}') == "abc.def"
    rejects(wire.parse_cursor_body, b"{}", "cursor", "missing")
    for value in (b"null", b"1", b"true", b"[]", b'{"c": 1}'):
        rejects(wire.parse_cursor_body, b'{"cursor": ' + value + b"}", "cursor")


@pytest.mark.parametrize(
    ("raw", "expected"), [(None, 500), ("1", 1), ("1000", 1000), ("250", 250), (" 7 ", 7)]
)
def test_parse_limit(raw: str | None, expected: int) -> None:
    assert wire.parse_limit(raw, 500, 1000) == expected


@pytest.mark.parametrize(
    "raw", ["0", "-1", "1001", "", "ten", "1.5", "1e3", "0x10", "9" * 5000, "NaN", "inf"]
)
def test_parse_limit_rejects(raw: str) -> None:
    rejects(lambda r: wire.parse_limit(r, 500, 1000), raw, "limit")


# -- device registration, resolution ------------------------------------------------------


def test_parse_device_registration() -> None:
    assert wire.parse_device_registration(b'{"device_id": "dev-a"}') == ("dev-a", "", "")
    body = b'{"device_id": "dev-a", "name": "Phone", "platform": "ios", "extra": 1}'
    assert wire.parse_device_registration(body) == ("dev-a", "Phone", "ios")


@pytest.mark.parametrize(
    ("obj", "words"),
    [
        ({}, ["device_id", "missing"]),
        ({"device_id": 5}, ["device_id"]),
        ({"device_id": None}, ["device_id"]),
        ({"device_id": True}, ["device_id"]),
        ({"device_id": ""}, ["device_id"]),
        ({"device_id": "d" * 201}, ["device_id"]),
        ({"device_id": "a\u0000"}, ["device_id"]),
        ({"device_id": "d", "name": 5}, ["name"]),
        ({"device_id": "d", "name": None}, ["name"]),
        ({"device_id": "d", "platform": ["ios"]}, ["platform"]),
        ({"device_id": "d", "name": "n" * 201}, ["name", "200"]),
        ({"device_id": "d", "platform": "p" * 201}, ["platform", "200"]),
    ],
    ids=repr,
)
def test_parse_device_registration_rejects(obj: dict[str, Any], words: list[str]) -> None:
    rejects(wire.parse_device_registration, json.dumps(obj).encode(), *words)


def test_parse_resolution() -> None:
    assert wire.parse_resolution(b'{"choice": "server"}') == ("server", None)
    assert wire.parse_resolution(b'{"choice": "custom", "payload": {"t": 1}}') == (
        "custom",
        {"t": 1},
    )
    assert wire.parse_resolution(b'{"choice": "client", "payload": null}') == ("client", None)


@pytest.mark.parametrize(
    ("obj", "words"),
    [
        ({}, ["choice", "missing"]),
        ({"choice": 1}, ["choice"]),
        ({"choice": None}, ["choice"]),
        ({"choice": True}, ["choice"]),
        ({"choice": "custom", "payload": [1]}, ["payload", "object"]),
        ({"choice": "custom", "payload": "x"}, ["payload", "object"]),
        ({"choice": "custom", "payload": 0}, ["payload", "object"]),
    ],
    ids=repr,
)
def test_parse_resolution_rejects(obj: dict[str, Any], words: list[str]) -> None:
    rejects(wire.parse_resolution, json.dumps(obj).encode(), *words)


# -- fuzz: parse or raise InvalidInput, nothing else --------------------------------------

PARSERS = [
    wire.parse_push,
    wire.parse_object,
    wire.parse_cursor_body,
    wire.parse_device_registration,
    wire.parse_resolution,
]

json_leaf = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.floats(allow_nan=False, allow_infinity=False),
    st.text(max_size=8),
)
json_values = st.recursive(
    json_leaf,
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=6), inner, max_size=4)
    ),
    max_leaves=15,
)
field_values = st.one_of(
    json_values,
    st.sampled_from(["put", "delete", "progress", "", "x" * 201, "a\x00"]),
    st.dictionaries(st.sampled_from(["dev-a", "server", ""]), json_leaf, max_size=3),
    st.integers(-2, 2**54),
)
mutation_like = st.dictionaries(
    st.sampled_from(
        ["mutation_id", "entity_type", "entity_id", "op", "payload", "clock", "ts", "extra"]
    ),
    field_values,
)
bodies = st.one_of(
    json_values,
    st.fixed_dictionaries({"mutations": st.lists(mutation_like | json_values, max_size=4)}),
    st.dictionaries(
        st.sampled_from(["cursor", "device_id", "name", "platform", "choice", "payload"]),
        field_values,
    ),
)


def parse_or_invalid(parse: Any, body: bytes) -> Any:
    try:
        return parse(body)
    except InvalidInput as exc:
        assert exc.message
        return exc


@PROPS
@given(st.binary(max_size=300))
def test_random_bytes_parse_or_raise_invalid_input(body: bytes) -> None:
    for parse in PARSERS:
        parse_or_invalid(parse, body)


@PROPS
@given(bodies)
def test_random_json_parses_or_raises_invalid_input(value: Any) -> None:
    body = json.dumps(value).encode()
    for parse in PARSERS:
        parse_or_invalid(parse, body)


@PROPS
@given(st.lists(mutation_like, min_size=1, max_size=4))
def test_parsed_mutations_are_valid_domain_values(items: list[dict[str, Any]]) -> None:
    result = parse_or_invalid(wire.parse_push, push_body(*items))
    if isinstance(result, InvalidInput):
        return
    for raw, m in zip(items, result, strict=True):
        assert m.op == raw["op"] in ("put", "delete")
        assert (m.payload is None) == (m.op == "delete")
        assert m.clock and m.clock == VectorClock.from_json(raw["clock"])
        assert m.ts is None or (type(m.ts) is int and m.ts >= 0)


@PROPS
@given(st.binary(max_size=64), st.integers(0, 60))
def test_random_bytes_inside_a_valid_body(junk: bytes, at: int) -> None:
    body = push_body(mutation())
    at = min(at, len(body))
    mangled = body[:at] + junk + body[at:]
    result = parse_or_invalid(wire.parse_push, mangled)
    if not isinstance(result, InvalidInput):
        for m in result:
            assert all(
                not isinstance(v, float) or math.isfinite(v) for v in (m.payload or {}).values()
            )


@PROPS
@given(st.text(max_size=12) | st.none())
def test_random_limits(raw: str | None) -> None:
    result = parse_or_invalid(lambda r: wire.parse_limit(r, 500, 1000), raw)
    if not isinstance(result, InvalidInput):
        assert 1 <= result <= 1000


JSON_LEAF = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**53), 2**53),
    st.text(),
    st.floats(allow_nan=False, allow_infinity=False),
)
JSON_OBJECT = st.dictionaries(
    st.text(),
    st.recursive(
        JSON_LEAF, lambda inner: st.lists(inner) | st.dictionaries(st.text(), inner), max_leaves=8
    ),
)


@settings(max_examples=200)
@given(
    st.lists(
        st.tuples(
            st.text(min_size=1),
            st.text(min_size=1),
            st.none() | JSON_OBJECT,
            st.dictionaries(st.text(min_size=1, max_size=5), st.integers(1, 2**53 - 1), max_size=3),
        ),
        max_size=5,
    ),
    st.text(),
    st.booleans(),
)
def test_pull_body_is_the_json_of_the_changes(
    rows: list[tuple[str, str, dict[str, Any] | None, dict[str, int]]], cursor: str, more: bool
) -> None:
    """The pull response is assembled from stored JSON text; it must parse to exactly what
    encoding the decoded changes would give, whatever the ids and payloads hold."""
    from crdt_sync.canonical import canonical_json
    from crdt_sync.model import Change

    changes = [
        Change(
            etype,
            eid,
            payload is None,
            seq,
            None if payload is None else canonical_json(payload),
            canonical_json(VectorClock.of(clock).to_json()),
        )
        for seq, (etype, eid, payload, clock) in enumerate(rows, start=1)
    ]
    body = wire.pull_body(changes, cursor, more)
    expected = {
        "changes": [
            {
                "entity_type": etype,
                "entity_id": eid,
                "op": "delete" if payload is None else "put",
                "payload": payload,
                "clock": VectorClock.of(clock).to_json(),
            }
            for etype, eid, payload, clock in rows
        ],
        "cursor": cursor,
        "has_more": more,
    }
    assert json.loads(body) == expected
    body.encode("utf-8")  # what the response sends: no lone surrogates from the ids


@settings(max_examples=200)
@given(
    st.lists(
        st.tuples(
            st.text(min_size=1),
            st.sampled_from(["applied", "merged", "conflict", "stale", "duplicate", "rejected"]),
            st.none() | st.dictionaries(st.text(min_size=1, max_size=5), st.integers(1, 2**53 - 1)),
            st.none() | st.text(min_size=1),
            st.none() | st.fixed_dictionaries({"code": st.text(), "message": st.text()}),
        ),
        max_size=5,
    )
)
def test_push_body_is_the_json_of_the_results(
    rows: list[tuple[str, str, dict[str, int] | None, str | None, dict[str, str] | None]],
) -> None:
    """The push response is assembled from each result's stored encoding; it must parse to
    exactly the results' JSON, whatever the ids, clocks and error texts hold."""
    from crdt_sync.model import MutationResult, Status

    results = [
        MutationResult(mid, Status(status), None if c is None else VectorClock.of(c), cid, err)
        for mid, status, c, cid, err in rows
    ]
    body = json.loads(wire.push_body(results))
    assert body == {"results": [r.to_json() for r in results]}
