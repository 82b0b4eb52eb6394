"""Invariants of the aggregates and value objects in crdt_sync.model."""

from __future__ import annotations

import dataclasses
import json
from datetime import UTC, datetime
from types import SimpleNamespace
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from crdt_sync.canonical import canonical_json
from crdt_sync.errors import InvalidInput
from crdt_sync.model import (
    MAX_ID,
    ConflictRecord,
    ConflictStatus,
    EntityKey,
    EntityState,
    LocalMutation,
    MutationResult,
    Status,
    SyncCursor,
    SyncRegistration,
    check_id,
    rfc3339,
    same_json,
)
from crdt_sync.vector_clock import VectorClock
from storage import codec
from storage.schema import devices

PROPS = settings(max_examples=100, deadline=None)

ids = st.text(
    st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00"),
    min_size=1,
    max_size=MAX_ID,
)
clocks = st.dictionaries(st.sampled_from(["a", "b", "server"]), st.integers(1, 50), min_size=1).map(
    VectorClock.of
)
json_leaf = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**53), 2**53),
    st.floats(allow_nan=False, allow_infinity=False),
    st.text(st.characters(blacklist_categories=("Cs",)), max_size=10),
)
json_values = st.recursive(
    json_leaf,
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3)
    ),
    max_leaves=10,
)
payloads = st.dictionaries(st.text(max_size=8), json_values, max_size=4)

BAD_IDS: list[Any] = ["", "x" * (MAX_ID + 1), "a\x00b", None, 7, b"bytes", ["a"], True]
CLOCK = VectorClock.of({"dev-a": 1})
NOW = datetime(2026, 11, 27, 22, 20, 12, tzinfo=UTC)


# -- ids ----------------------------------------------------------------------------------


@pytest.mark.parametrize("value", BAD_IDS, ids=repr)
def test_check_id_rejects(value: Any) -> None:
    with pytest.raises(InvalidInput, match="widget"):
        check_id(value, "widget")


@PROPS
@given(ids)
def test_check_id_accepts_opaque_strings(value: str) -> None:
    assert check_id(value, "x") == value


def test_check_id_takes_path_and_sql_like_text_as_data() -> None:
    for value in ["../../etc/passwd", "'; DROP TABLE entities; --", "a/b?c=d#e", "x" * MAX_ID]:
        assert check_id(value, "id") == value


# -- EntityKey ----------------------------------------------------------------------------


@pytest.mark.parametrize("field", ["tenant_id", "entity_type", "entity_id", "owner"])
@pytest.mark.parametrize("value", [v for v in BAD_IDS if v != ""], ids=repr)
def test_entity_key_rejects_bad_ids(field: str, value: Any) -> None:
    fields = {"tenant_id": "t", "entity_type": "note", "entity_id": "n1", "owner": "u"}
    fields[field] = value
    with pytest.raises(InvalidInput):
        EntityKey(**fields)


@pytest.mark.parametrize("field", ["tenant_id", "entity_type", "entity_id"])
def test_entity_key_needs_non_empty_ids(field: str) -> None:
    fields = {"tenant_id": "t", "entity_type": "note", "entity_id": "n1"}
    fields[field] = ""
    with pytest.raises(InvalidInput):
        EntityKey(**fields)


@PROPS
@given(ids, ids, ids, st.one_of(st.just(""), ids))
def test_entity_key_round_trips(tenant: str, etype: str, eid: str, owner: str) -> None:
    key = EntityKey(tenant, etype, eid, owner)
    again = EntityKey(*dataclasses.astuple(key))
    assert again == key and hash(again) == hash(key)
    assert EntityKey(tenant, etype, eid) == EntityKey(tenant, etype, eid, "")


# -- EntityState --------------------------------------------------------------------------

KEY = EntityKey("t", "progress", "course-7", "u")


def test_entity_state_live_and_tombstone() -> None:
    live = EntityState(KEY, {"score": 1}, CLOCK)
    assert live.op == "put" and not live.deleted
    tomb = EntityState(KEY, None, CLOCK, deleted=True)
    assert tomb.op == "delete"


@pytest.mark.parametrize(
    "kwargs",
    [
        {"payload": {"a": 1}, "deleted": True},  # a tombstone has no payload
        {"payload": None, "deleted": False},  # a live entity has a payload
        {"payload": [1, 2]},  # payloads are objects
        {"payload": "text"},
        {"payload": {"a": 1}, "clock": {"dev-a": 1}},  # a clock is a VectorClock
        {"payload": {"a": 1}, "ts": -1},
        {"payload": {"a": 1}, "ts": 1.5},
        {"payload": {"a": 1}, "seq": -1},
        {"payload": {"a": 1}, "seq": None},
        {"payload": {"a": 1}, "key": ("t", "progress", "c", "u")},
    ],
    ids=repr,
)
def test_entity_state_invariants(kwargs: dict[str, Any]) -> None:
    fields: dict[str, Any] = {"key": KEY, "clock": CLOCK, **kwargs}
    with pytest.raises(InvalidInput):
        EntityState(**fields)


@PROPS
@given(
    payloads,
    clocks,
    st.booleans(),
    st.integers(0, 2**53),
    st.one_of(st.just(""), ids),
    st.integers(0, 2**40),
)
def test_entity_state_round_trips_through_its_row(
    payload: dict[str, Any], clock: VectorClock, deleted: bool, ts: int, device: str, seq: int
) -> None:
    state = EntityState(KEY, None if deleted else payload, clock, deleted, ts, device, seq)
    values = codec.entity_values(state, NOW)
    assert len(values) == len(codec.ENTITY_COLUMNS)
    assert json.loads(json.dumps(values)) == list(values)  # plain JSON-able data
    row = dict(zip(codec.ENTITY_COLUMNS, values, strict=True))
    assert row["clock"] == canonical_json(clock.to_json())
    assert row["payload"] == (None if deleted else canonical_json(payload))
    back = codec.entity_from_row(values)  # built without re-running the checks
    assert back == state and back.payload_json is None
    assert {state.key: 1}[back.key] == 1  # found under the key a push computes


# -- LocalMutation ------------------------------------------------------------------------


def mutation(**overrides: Any) -> LocalMutation:
    fields: dict[str, Any] = {
        "mutation_id": "m-1",
        "entity_type": "progress",
        "entity_id": "course-7",
        "op": "put",
        "payload": {"completion": 0.5},
        "clock": CLOCK,
        "ts": None,
    }
    fields.update(overrides)
    return LocalMutation(**fields)


def test_local_mutation_valid() -> None:
    assert mutation().op == "put"
    assert mutation(op="delete", payload=None).payload is None
    assert mutation(ts=0).ts == 0
    assert mutation(ts=2**53).ts == 2**53


@pytest.mark.parametrize(
    "overrides",
    [
        {"mutation_id": ""},
        {"mutation_id": None},
        {"entity_type": "x" * (MAX_ID + 1)},
        {"entity_id": "a\x00"},
        {"op": "patch"},
        {"op": "PUT"},
        {"op": None},
        {"op": "put", "payload": None},
        {"op": "put", "payload": [1]},
        {"op": "delete", "payload": {}},
        {"op": "delete", "payload": {"a": 1}},
        {"clock": VectorClock()},
        {"clock": VectorClock.of({"a": 0})},
        {"clock": {"dev-a": 1}},
        {"ts": -1},
        {"ts": True},
        {"ts": 1.0},
        {"ts": "5"},
    ],
    ids=repr,
)
def test_local_mutation_invariants(overrides: dict[str, Any]) -> None:
    with pytest.raises(InvalidInput):
        mutation(**overrides)


@PROPS
@given(ids, ids, ids, st.one_of(payloads, st.none()), clocks, st.none() | st.integers(0, 2**53))
def test_local_mutation_round_trips(
    mid: str, etype: str, eid: str, payload: dict[str, Any] | None, clock: VectorClock, ts: Any
) -> None:
    op = "delete" if payload is None else "put"
    m = LocalMutation(mid, etype, eid, op, payload, clock, ts)
    assert LocalMutation(**{f.name: getattr(m, f.name) for f in dataclasses.fields(m)}) == m


# -- MutationResult -----------------------------------------------------------------------

results = st.builds(
    MutationResult,
    mutation_id=ids,
    status=st.sampled_from(list(Status)),
    clock=st.none() | clocks,
    conflict_id=st.none() | ids,
    error=st.none()
    | st.fixed_dictionaries({"code": st.text(max_size=10), "message": st.text(max_size=20)}),
)


@PROPS
@given(results)
def test_mutation_result_json_round_trip(result: MutationResult) -> None:
    data = result.to_json()
    # through real JSON text, as the store keeps it
    assert result.encoded == canonical_json(data)  # what a push stores and answers
    again = MutationResult.from_json(json.loads(result.encoded))
    assert again == result
    assert data["status"] == result.status.value
    assert ("conflict_id" in data) == (result.conflict_id is not None)
    assert ("error" in data) == (result.error is not None)


def test_mutation_result_json_shape() -> None:
    result = MutationResult("m", Status.CONFLICT, VectorClock.of({"a": 2}), conflict_id="c-1")
    assert result.to_json() == {
        "mutation_id": "m",
        "status": "conflict",
        "clock": {"a": 2},
        "conflict_id": "c-1",
    }
    rejected = MutationResult("m", Status.REJECTED, error={"code": "immutable", "message": "x"})
    assert rejected.to_json() == {
        "mutation_id": "m",
        "status": "rejected",
        "clock": None,
        "error": {"code": "immutable", "message": "x"},
    }


def test_status_values_are_the_contract() -> None:
    assert {s.value for s in Status} == {
        "applied",
        "merged",
        "conflict",
        "stale",
        "duplicate",
        "rejected",
    }


# -- SyncRegistration ---------------------------------------------------------------------


def test_registration_valid() -> None:
    reg = SyncRegistration("t", "dev-a", "u", generation=3, name="Phone", platform="ios")
    assert reg.owned_by("t", "u")
    assert not reg.owned_by("t", "other")
    assert not reg.owned_by("t2", "u")
    assert dataclasses.replace(reg, revoked=True).revoked


@pytest.mark.parametrize(
    "overrides",
    [
        {"tenant_id": ""},
        {"device_id": None},
        {"user_id": "x" * (MAX_ID + 1)},
        {"generation": 0},
        {"generation": -1},
        {"generation": "1"},
        {"generation": None},
        {"generation": 1.0},
        {"generation": True},
    ],
    ids=repr,
)
def test_registration_invariants(overrides: dict[str, Any]) -> None:
    fields: dict[str, Any] = {"tenant_id": "t", "device_id": "d", "user_id": "u", **overrides}
    with pytest.raises(InvalidInput):
        SyncRegistration(**fields)


@PROPS
@given(ids, ids, ids, st.integers(1, 2**31), st.booleans())
def test_registration_round_trips_through_its_row(
    tenant: str, device: str, user: str, generation: int, revoked: bool
) -> None:
    reg = SyncRegistration(tenant, device, user, generation, revoked, "n", "p")
    row = dict(
        **dataclasses.asdict(reg),
        created_at=NOW.timestamp(),
        last_seen_at=None,
        last_ack_at=None,
        last_ack_seq=0,
        full_resyncs=0,
    )
    values = tuple(row[c.name] for c in devices.c)  # a row in the table's column order
    assert codec.device_from_row(values).registration == reg


# -- SyncCursor ---------------------------------------------------------------------------


def test_cursor_valid() -> None:
    cursor = SyncCursor("t", "d", 0, "scope", 0)
    assert cursor.snapshot_seq is None
    assert SyncCursor("t", "d", 5, "scope", 10, snapshot_seq=9).snapshot_seq == 9


@pytest.mark.parametrize(
    "overrides",
    [
        {"seq": -1},
        {"seq": None},
        {"seq": "3"},
        {"seq": 1.5},
        {"seq": True},
        {"snapshot_seq": -1},
        {"snapshot_seq": "1"},
        {"issued_at": None},
        {"issued_at": "now"},
        {"tenant_id": ""},
        {"device_id": None},
        {"scope": None},
    ],
    ids=repr,
)
def test_cursor_invariants(overrides: dict[str, Any]) -> None:
    fields: dict[str, Any] = {
        "tenant_id": "t",
        "device_id": "d",
        "seq": 1,
        "scope": "s",
        "issued_at": 0,
        **overrides,
    }
    with pytest.raises(InvalidInput):
        SyncCursor(**fields)


# -- ConflictRecord -----------------------------------------------------------------------


def conflict(**overrides: Any) -> ConflictRecord:
    fields: dict[str, Any] = {
        "conflict_id": "c-1",
        "key": EntityKey("t", "note", "n1", "u"),
        "server_payload": {"text": "server"},
        "server_clock": VectorClock.of({"a": 1}),
        "client_payload": {"text": "client"},
        "client_clock": VectorClock.of({"b": 1}),
        "client_device": "b",
        "created_at": NOW,
    }
    fields.update(overrides)
    return ConflictRecord(**fields)


def test_conflict_open_and_resolved() -> None:
    assert conflict().status is ConflictStatus.OPEN
    for choice in ("server", "client", "custom"):
        record = conflict(status=ConflictStatus.RESOLVED, resolved_at=NOW, resolution=choice)
        assert record.status is ConflictStatus.RESOLVED


@pytest.mark.parametrize(
    "overrides",
    [
        {"status": ConflictStatus.RESOLVED},  # resolved without resolved_at
        {"status": ConflictStatus.RESOLVED, "resolved_at": NOW},  # without its choice
        {"status": ConflictStatus.RESOLVED, "resolved_at": NOW, "resolution": "mine"},
        {"resolved_at": NOW},  # open but with resolved_at
        {"conflict_id": ""},
        {"conflict_id": None},
    ],
    ids=repr,
)
def test_conflict_invariants(overrides: dict[str, Any]) -> None:
    with pytest.raises(InvalidInput):
        conflict(**overrides)


def test_conflict_to_json() -> None:
    record = conflict(
        status=ConflictStatus.RESOLVED,
        resolved_at=datetime(2026, 11, 28, 1, 2, 3, tzinfo=UTC),
        resolution="client",
        resolved_payload={"text": "client"},
    )
    assert record.to_json() == {
        "conflict_id": "c-1",
        "entity_type": "note",
        "entity_id": "n1",
        "owner": "u",
        "status": "resolved",
        "created_at": "2026-11-27T22:20:12Z",
        "resolved_at": "2026-11-28T01:02:03Z",
        "resolution": "client",
        "server": {"payload": {"text": "server"}, "clock": {"a": 1}},
        "client": {"payload": {"text": "client"}, "clock": {"b": 1}, "device_id": "b"},
    }
    tenant_wide = conflict(key=EntityKey("t", "bundle", "b1"))
    assert tenant_wide.to_json()["owner"] is None


@PROPS
@given(
    st.one_of(payloads, st.none()),
    st.one_of(payloads, st.none()),
    clocks,
    clocks,
    st.sampled_from([None, "server", "client", "custom"]),
)
def test_conflict_round_trips_through_its_row(
    server: Any, client: Any, sclock: VectorClock, cclock: VectorClock, choice: str | None
) -> None:
    resolved = {}
    if choice is not None:
        resolved = {
            "status": ConflictStatus.RESOLVED,
            "resolved_at": NOW,
            "resolution": choice,
            "resolved_payload": client,
        }
    record = conflict(
        server_payload=server,
        client_payload=client,
        server_clock=sclock,
        client_clock=cclock,
        **resolved,
    )
    assert codec.conflict_from_row(SimpleNamespace(**codec.conflict_row(record))) == record


def test_rfc3339_is_utc_with_z() -> None:
    assert rfc3339(NOW) == "2026-11-27T22:20:12Z"


def test_canonical_json_is_key_order_independent() -> None:
    assert canonical_json({"b": 1, "a": [1, {"d": 2, "c": 3}]}) == canonical_json(
        {"a": [1, {"c": 3, "d": 2}], "b": 1}
    )
    assert canonical_json({"é": 1}) == '{"é":1}'


# floats, bools and ints that compare equal in Python but encode differently
close_scalars = st.sampled_from([0, 0.0, -0.0, 1, 1.0, True, False, None, "1", ""])
json_like = st.recursive(
    close_scalars | json_values,
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=3), inner, max_size=3)
    ),
    max_leaves=8,
)


@given(json_like, json_like)
@settings(max_examples=500)
def test_same_json_agrees_with_canonical_json(a: Any, b: Any) -> None:
    assert same_json(a, b) == (canonical_json(a) == canonical_json(b))
    assert same_json(a, a) and same_json(b, b)


@pytest.mark.parametrize(
    ("a", "b"),
    [
        ({"x": 1}, {"x": 1.0}),
        ({"x": 1}, {"x": True}),
        ([0.0], [-0.0]),
        ({"x": 1}, {"x": 1, "y": 2}),
    ],
)
def test_same_json_tells_apart_what_python_calls_equal(a: Any, b: Any) -> None:
    assert a == b or a.keys() != b.keys()
    assert not same_json(a, b)


@PROPS
@given(payloads, clocks, st.integers(0, 2**40))
def test_entity_state_at_a_seq_is_a_checked_copy(
    payload: dict[str, Any], clock: VectorClock, seq: int
) -> None:
    state = EntityState(KEY, payload, clock, ts=5, device_id="d", payload_json="{}")
    moved = state.at(seq)
    assert moved == dataclasses.replace(state, seq=seq) and moved is not state
    assert state.seq == 0 and moved.payload_json == "{}"
    with pytest.raises(InvalidInput):
        state.at(-1)
