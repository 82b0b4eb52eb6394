"""Conflict policies (design.md §4), delete-vs-update precedence, and the entity registry."""

from __future__ import annotations

import math
from typing import Any

import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from crdt_sync.canonical import canonical_json
from crdt_sync.errors import InvalidInput
from crdt_sync.model import EntityKey, EntityState, LocalMutation, Status
from crdt_sync.policies import (
    POLICIES,
    AppendOnly,
    Decision,
    LastWriterWins,
    Manual,
    Monotonic,
    ServerAuthored,
    Write,
    monotonic_merge,
)
from crdt_sync.registry import YDOC_TYPE, EntityRegistry, EntityType, PayloadShape
from crdt_sync.vector_clock import VectorClock

PROPS = settings(max_examples=150, deadline=None)
KEY = EntityKey("t", "progress", "course-7", "u")
CLOCK = VectorClock.of({"dev-a": 1})


def stored(
    payload: dict[str, Any] | None, *, ts: int = 1000, device: str = "dev-s", deleted: bool = False
) -> EntityState:
    return EntityState(KEY, payload, CLOCK, deleted or payload is None, ts, device)


def write(payload: dict[str, Any] | None, *, ts: int = 2000, device: str = "dev-w") -> Write:
    op = "delete" if payload is None else "put"
    m = LocalMutation("m-1", KEY.entity_type, KEY.entity_id, op, payload, CLOCK, ts)
    return Write(m, device, ts)


def final(decision: Decision) -> tuple[bool, str | None]:
    """The state a decision leaves, comparable across decisions."""
    return decision.deleted, None if decision.deleted else canonical_json(decision.payload)


# -- statement: append_only ---------------------------------------------------------------

STATEMENT = {"id": "s-1", "actor": {"mbox": "a@x"}, "verb": {"id": "v"}, "object": {"id": "o"}}


def test_append_only_writes_once() -> None:
    policy = AppendOnly()
    first = policy.on_dominating(None, write(STATEMENT))
    assert first.status is Status.APPLIED and first.payload == STATEMENT


@pytest.mark.parametrize("hook", ["on_dominating", "on_concurrent", "on_stale"])
def test_append_only_same_payload_again_is_harmless(hook: str) -> None:
    reordered = dict(reversed(list(STATEMENT.items())))
    decision = getattr(AppendOnly(), hook)(stored(STATEMENT), write(reordered))
    assert decision.status is Status.STALE


@pytest.mark.parametrize("hook", ["on_dominating", "on_concurrent", "on_stale"])
def test_append_only_other_payload_is_immutable(hook: str) -> None:
    changed = {**STATEMENT, "verb": {"id": "other"}}
    decision = getattr(AppendOnly(), hook)(stored(STATEMENT), write(changed))
    assert decision.status is Status.REJECTED
    assert decision.error_code == "immutable"
    assert decision.error_message


@pytest.mark.parametrize("hook", ["on_dominating", "on_concurrent", "on_stale"])
def test_append_only_rejects_deletes(hook: str) -> None:
    decision = getattr(AppendOnly(), hook)(stored(STATEMENT), write(None))
    assert decision.status is Status.REJECTED and decision.error_code == "immutable"
    assert AppendOnly().on_dominating(None, write(None)).error_code == "immutable"


def test_append_only_put_over_a_server_tombstone_applies() -> None:
    decision = AppendOnly().on_concurrent(stored(None), write(STATEMENT))
    assert decision.status is Status.APPLIED and decision.payload == STATEMENT


# -- progress: monotonic ------------------------------------------------------------------

# Progress-like payloads: each field keeps one JSON type across versions.
progress = st.fixed_dictionaries(
    {},
    optional={
        "completion": st.floats(0, 1, allow_nan=False),
        "score": st.integers(0, 100),
        "completed": st.lists(st.sampled_from(["m1", "m2", "m3", "m4"]), max_size=4),
        "passed": st.booleans(),
        "attempts": st.lists(st.fixed_dictionaries({"n": st.integers(0, 3)}), max_size=2),
        "modules": st.fixed_dictionaries(
            {},
            optional={
                "m1": st.floats(0, 1, allow_nan=False),
                "seen": st.booleans(),
                "pages": st.lists(st.integers(0, 5), max_size=3),
            },
        ),
    },
)


def at_least(merged: Any, older: Any) -> bool:
    """Every monotonic part of `older` is ≤ the same part of `merged`."""
    if isinstance(older, bool):
        return isinstance(merged, bool) and (merged or not older)
    if isinstance(older, int | float):
        return isinstance(merged, int | float) and not isinstance(merged, bool) and merged >= older
    if isinstance(older, list):
        have = {canonical_json(x) for x in merged}
        return isinstance(merged, list) and all(canonical_json(x) in have for x in older)
    if isinstance(older, dict):
        return isinstance(merged, dict) and all(
            k in merged and at_least(merged[k], v) for k, v in older.items()
        )
    return True


def normal(value: Any) -> Any:
    """Compare as sets/numbers: list order and 1 vs 1.0 do not matter."""
    if isinstance(value, bool):
        return value
    if isinstance(value, int | float):
        return float(value)
    if isinstance(value, list):
        return sorted({canonical_json(normal(x)) for x in value})
    if isinstance(value, dict):
        return {k: normal(v) for k, v in value.items()}
    return value


@PROPS
@given(progress, progress, st.booleans())
def test_monotonic_merge_never_goes_backwards(a: Any, b: Any, b_wins: bool) -> None:
    merged = monotonic_merge(a, b, b_wins)
    assert at_least(merged, a)
    assert at_least(merged, b)
    assert set(merged) == set(a) | set(b)


@PROPS
@given(progress, progress)
def test_monotonic_merge_is_commutative(a: Any, b: Any) -> None:
    assert normal(monotonic_merge(a, b, True)) == normal(monotonic_merge(b, a, True))
    assert normal(monotonic_merge(a, b, False)) == normal(monotonic_merge(b, a, False))


@PROPS
@given(progress, st.booleans())
def test_monotonic_merge_is_idempotent(a: Any, b_wins: bool) -> None:
    assert monotonic_merge(a, a, b_wins) == a


@PROPS
@given(progress, progress, progress)
def test_monotonic_merge_is_associative(a: Any, b: Any, c: Any) -> None:
    left = monotonic_merge(monotonic_merge(a, b, True), c, True)
    right = monotonic_merge(a, monotonic_merge(b, c, True), True)
    assert normal(left) == normal(right)


def test_monotonic_merge_examples() -> None:
    a = {"completion": 0.8, "score": 92, "completed": ["m1"], "passed": True}
    b = {"completion": 0.5, "score": 95, "completed": ["m2", "m1"], "passed": False}
    assert monotonic_merge(a, b, True) == {
        "completion": 0.8,
        "score": 95,
        "completed": ["m1", "m2"],
        "passed": True,
    }


def test_booleans_are_not_numbers_in_monotonic_merge() -> None:
    # True is an int in Python; a merge must not treat max(True, 5) as a number.
    assert monotonic_merge({"x": True}, {"x": 5}, True) == {"x": 5}
    assert monotonic_merge({"x": True}, {"x": 5}, False) == {"x": True}
    assert monotonic_merge({"x": False}, {"x": True}, False) == {"x": True}


def test_non_monotonic_fields_fall_back_to_last_writer() -> None:
    assert monotonic_merge({"s": "old"}, {"s": "new"}, True) == {"s": "new"}
    assert monotonic_merge({"s": "old"}, {"s": "new"}, False) == {"s": "old"}
    assert monotonic_merge({"n": 1}, {"n": "one"}, False) == {"n": 1}


@PROPS
@given(progress, progress)
def test_monotonic_policy_concurrent_merges_and_keeps_both(a: Any, b: Any) -> None:
    decision = Monotonic().on_concurrent(stored(a), write(b))
    assert decision.status is Status.MERGED and not decision.deleted
    assert at_least(decision.payload, a) and at_least(decision.payload, b)


@PROPS
@given(progress, progress)
def test_monotonic_policy_dominating_never_goes_backwards(a: Any, b: Any) -> None:
    decision = Monotonic().on_dominating(stored(a), write(b))
    assert at_least(decision.payload, a) and at_least(decision.payload, b)
    if decision.status is Status.APPLIED:
        assert decision.payload == b
    else:
        assert decision.status is Status.MERGED and not decision.from_incoming


def test_monotonic_policy_dominating_ahead_applies_as_sent() -> None:
    decision = Monotonic().on_dominating(
        stored({"completion": 0.2, "completed": ["m1"]}),
        write({"completion": 0.5, "completed": ["m1", "m2"]}),
    )
    assert decision.status is Status.APPLIED
    assert decision.payload == {"completion": 0.5, "completed": ["m1", "m2"]}


def test_monotonic_policy_dominating_behind_is_merged_forward() -> None:
    decision = Monotonic().on_dominating(stored({"completion": 0.9}), write({"completion": 0.1}))
    assert decision.status is Status.MERGED
    assert decision.payload == {"completion": 0.9}


def test_monotonic_policy_first_write() -> None:
    decision = Monotonic().on_dominating(None, write({"score": 1}))
    assert decision.status is Status.APPLIED and decision.payload == {"score": 1}


# -- delete vs update (the table at the top of policies.py) -------------------------------


def test_monotonic_put_wins_over_concurrent_delete() -> None:
    # concurrent delete against a live entity: the entity stays
    kept = Monotonic().on_concurrent(stored({"score": 5}), write(None))
    assert kept.status is Status.MERGED and not kept.deleted and kept.payload == {"score": 5}
    assert not kept.from_incoming
    # concurrent put against a tombstone: the put comes back
    revived = Monotonic().on_concurrent(stored(None), write({"score": 7}))
    assert revived.status is Status.MERGED and not revived.deleted
    assert revived.payload == {"score": 7}


def test_monotonic_dominating_delete_applies() -> None:
    decision = Monotonic().on_dominating(stored({"score": 5}), write(None))
    assert decision.status is Status.APPLIED and decision.deleted


@pytest.mark.parametrize(
    ("stored_ts", "stored_dev", "write_ts", "write_dev", "incoming_wins"),
    [
        (1000, "dev-s", 2000, "dev-w", True),  # later ts
        (3000, "dev-s", 2000, "dev-w", False),  # earlier ts loses
        (2000, "dev-a", 2000, "dev-b", True),  # tie: larger device id
        (2000, "dev-b", 2000, "dev-a", False),
        (2000, "dev-z", 1999, "zzz", False),  # ts first, device only breaks ties
    ],
)
@pytest.mark.parametrize(("stored_deleted", "write_deleted"), [(0, 0), (0, 1), (1, 0), (1, 1)])
def test_lww_delete_is_one_more_write(
    stored_ts: int,
    stored_dev: str,
    write_ts: int,
    write_dev: str,
    incoming_wins: bool,
    stored_deleted: int,
    write_deleted: int,
) -> None:
    old = stored(None if stored_deleted else {"page": 3}, ts=stored_ts, device=stored_dev)
    new = write(None if write_deleted else {"page": 9}, ts=write_ts, device=write_dev)
    decision = LastWriterWins().on_concurrent(old, new)
    assert decision.status is Status.MERGED
    assert decision.from_incoming is incoming_wins
    winner = new if incoming_wins else old
    assert decision.deleted is bool(winner.deleted)
    assert decision.payload == winner.payload


def test_lww_dominating_write_applies_even_with_an_older_ts() -> None:
    decision = LastWriterWins().on_dominating(stored({"page": 3}, ts=9999), write(None, ts=1))
    assert decision.status is Status.APPLIED and decision.deleted


bookmark_writes = st.tuples(
    st.none() | st.fixed_dictionaries({"page": st.integers(0, 9)}),
    st.integers(0, 5),
    st.sampled_from(["dev-a", "dev-b", "dev-c"]),
)


@PROPS
@given(bookmark_writes, bookmark_writes)
def test_lww_converges_whichever_write_arrives_first(x: Any, y: Any) -> None:
    assume((x[1], x[2]) != (y[1], y[2]))  # distinct (ts, device): a total order
    (px, tx, dx), (py, ty, dy) = x, y
    y_after_x = LastWriterWins().on_concurrent(
        stored(px, ts=tx, device=dx), write(py, ts=ty, device=dy)
    )
    x_after_y = LastWriterWins().on_concurrent(
        stored(py, ts=ty, device=dy), write(px, ts=tx, device=dx)
    )
    assert final(y_after_x) == final(x_after_y)
    later = max((tx, dx, px), (ty, dy, py), key=lambda w: (w[0], w[1]))
    assert final(y_after_x) == (
        later[2] is None,
        None if later[2] is None else canonical_json(later[2]),
    )


# -- note: manual -------------------------------------------------------------------------


@pytest.mark.parametrize("incoming", [{"text": "client"}, None])
@pytest.mark.parametrize("current", [{"text": "server"}, None])
def test_manual_concurrent_writes_conflict(incoming: Any, current: Any) -> None:
    decision = Manual().on_concurrent(stored(current), write(incoming))
    assert decision.status is Status.CONFLICT
    assert not decision.from_incoming
    assert decision.payload == current and decision.deleted is (current is None)


@pytest.mark.parametrize("incoming", [{"text": "client"}, None])
def test_manual_dominating_write_applies(incoming: Any) -> None:
    decision = Manual().on_dominating(stored({"text": "server"}), write(incoming))
    assert decision.status is Status.APPLIED
    assert decision.payload == incoming and decision.deleted is (incoming is None)


# append_only judges stale writes by their payload (tested above)
@pytest.mark.parametrize(
    "policy", [p for p in POLICIES.values() if p.name != "append_only"], ids=lambda p: p.name
)
def test_stale_writes_change_nothing(policy: Any) -> None:
    decision = policy.on_stale(stored({"a": 1}), write({"a": 2}))
    assert decision.status is Status.STALE


# -- server-authored ----------------------------------------------------------------------


@pytest.mark.parametrize("incoming", [{"course": "c"}, None])
def test_server_authored_is_read_only_to_devices(incoming: Any) -> None:
    policy = ServerAuthored()
    assert policy.device_writable is False
    for decision in (
        policy.on_dominating(None, write(incoming)),
        policy.on_dominating(stored({"course": "x"}), write(incoming)),
        policy.on_concurrent(stored({"course": "x"}), write(incoming)),
    ):
        assert decision.status is Status.REJECTED and decision.error_code == "read_only"


def test_policy_table() -> None:
    assert set(POLICIES) == {"lww", "monotonic", "manual", "append_only", "server_authored"}
    assert [p.name for p in POLICIES.values() if not p.device_writable] == ["server_authored"]


# -- registry -----------------------------------------------------------------------------


def test_builtin_types() -> None:
    registry = EntityRegistry.default()
    table = {t.name: (t.scope, t.policy.name, t.device_writable) for t in registry}
    assert table == {
        "statement": ("user", "append_only", True),
        "progress": ("user", "monotonic", True),
        "bookmark": ("user", "lww", True),
        "note": ("user", "manual", True),
        "enrollment": ("user", "server_authored", False),
        "certificate": ("user", "server_authored", False),
        "bundle": ("tenant", "server_authored", False),
    }
    assert registry.names() == sorted(table)
    assert registry.get("nope") is None
    assert registry.get(YDOC_TYPE) is None


def test_statement_shape() -> None:
    shape = EntityRegistry.default().get("statement").shape  # type: ignore[union-attr]
    assert shape.problems("s-1", STATEMENT) == []
    assert shape.problems("s-1", {k: v for k, v in STATEMENT.items() if k != "id"}) == []
    assert shape.problems("s-2", STATEMENT) == ["field 'id' must equal the entity id"]
    missing = shape.problems("s-1", {"id": "s-1", "actor": {}, "verb": "v"})
    assert missing == ["field 'verb' must be a object", "field 'object' must be a object"]


def test_from_config_registers_a_type() -> None:
    registry = EntityRegistry.from_config(
        {
            "entity_types": [
                {
                    "name": "quiz_answer",
                    "scope": "user",
                    "policy": "lww",
                    "required": {"question": "string", "choice": "integer"},
                    "id_field": "id",
                },
                {"name": "catalog", "scope": "tenant", "policy": "server_authored"},
            ]
        }
    )
    quiz = registry.get("quiz_answer")
    assert quiz is not None and quiz.scope == "user" and quiz.policy.name == "lww"
    assert quiz.shape.problems("q", {"question": "?", "choice": 2}) == []
    assert quiz.shape.problems("q", {"question": "?", "choice": "2"})
    catalog = registry.get("catalog")
    assert catalog is not None and catalog.scope == "tenant" and not catalog.device_writable
    assert set(registry.names()) == set(EntityRegistry.default().names()) | {
        "quiz_answer",
        "catalog",
    }


def test_from_config_defaults_and_replacement() -> None:
    registry = EntityRegistry.from_config(
        {"entity_types": [{"name": "note", "policy": "lww"}, {"name": "x", "policy": "manual"}]}
    )
    assert registry.get("note").policy.name == "lww"  # type: ignore[union-attr]
    assert registry.get("x").scope == "user"  # type: ignore[union-attr]
    assert EntityRegistry.from_config({}).names() == EntityRegistry.default().names()


@pytest.mark.parametrize(
    "config",
    [
        {"entity_types": {"name": "x"}},
        {"entity_types": "x"},
        {"entity_types": ["x"]},
        {"entity_types": [None]},
        {"entity_types": [{"name": "x"}]},  # no policy
        {"entity_types": [{"name": "x", "policy": "fifo"}]},
        {"entity_types": [{"name": "x", "policy": ["lww"]}]},
        {"entity_types": [{"name": "x", "policy": {"lww": 1}}]},
        {"entity_types": [{"name": "x", "policy": None}]},
        {"entity_types": [{"policy": "lww"}]},  # no name
        {"entity_types": [{"name": "", "policy": "lww"}]},
        {"entity_types": [{"name": 5, "policy": "lww"}]},
        {"entity_types": [{"name": "x" * 201, "policy": "lww"}]},
        {"entity_types": [{"name": "x", "policy": "lww", "scope": "global"}]},
        {"entity_types": [{"name": "x", "policy": "lww", "scope": None}]},
        {"entity_types": [{"name": "x", "policy": "lww", "required": ["a"]}]},
        {"entity_types": [{"name": "x", "policy": "lww", "required": "a"}]},
        {"entity_types": [{"name": "x", "policy": "lww", "required": {"a": "date"}}]},
        {"entity_types": [{"name": "x", "policy": "lww", "required": {"a": ["string"]}}]},
        {"entity_types": [{"name": "x", "policy": "lww", "required": {"a": None}}]},
        {"entity_types": [{"name": "x", "policy": "lww", "id_field": 3}]},
        {"entity_types": [{"name": YDOC_TYPE, "policy": "lww"}]},
        [],
        None,
    ],
    ids=repr,
)
def test_from_config_rejects_bad_config(config: Any) -> None:
    with pytest.raises(InvalidInput):
        EntityRegistry.from_config(config)


def test_ydoc_is_reserved() -> None:
    registry = EntityRegistry.default()
    with pytest.raises(InvalidInput, match="reserved"):
        registry.register(EntityType(YDOC_TYPE, "tenant", POLICIES["lww"]))
    assert registry.get(YDOC_TYPE) is None


def test_entity_type_invariants() -> None:
    with pytest.raises(InvalidInput):
        EntityType("x", "everyone", POLICIES["lww"])  # type: ignore[arg-type]
    with pytest.raises(InvalidInput):
        EntityType("", "user", POLICIES["lww"])


def test_scope_token_changes_when_types_change() -> None:
    base = EntityRegistry.default()
    token = base.scope_token()
    assert token == EntityRegistry.default().scope_token()
    assert token == EntityRegistry(reversed(list(base))).scope_token()  # order-independent
    added = EntityRegistry.from_config({"entity_types": [{"name": "x", "policy": "lww"}]})
    assert added.scope_token() != token
    rescoped = EntityRegistry.from_config(
        {"entity_types": [{"name": "note", "scope": "tenant", "policy": "manual"}]}
    )
    assert rescoped.scope_token() != token
    fewer = EntityRegistry([t for t in base if t.name != "bundle"])
    assert fewer.scope_token() != token
    assert len({token, added.scope_token(), rescoped.scope_token(), fewer.scope_token()}) == 4


# -- PayloadShape -------------------------------------------------------------------------

SHAPE_CASES: list[tuple[str, Any, bool]] = [
    ("number", 1, True),
    ("number", 1.5, True),
    ("number", True, False),
    ("number", False, False),
    ("number", "1", False),
    ("number", None, False),
    ("integer", 3, True),
    ("integer", 3.0, False),
    ("integer", True, False),
    ("boolean", True, True),
    ("boolean", False, True),
    ("boolean", 0, False),
    ("boolean", "true", False),
    ("string", "", True),
    ("string", 1, False),
    ("object", {}, True),
    ("object", [], False),
    ("array", [], True),
    ("array", {}, False),
    ("array", "[]", False),
]


@pytest.mark.parametrize(("kind", "value", "ok"), SHAPE_CASES, ids=repr)
def test_payload_shape_types(kind: str, value: Any, ok: bool) -> None:
    shape = PayloadShape(required={"f": kind})
    assert (shape.problems("e", {"f": value}) == []) is ok
    assert shape.problems("e", {}) == [f"field 'f' must be a {kind}"]


def test_payload_shape_id_field() -> None:
    shape = PayloadShape(id_field="id")
    assert shape.problems("e-1", {}) == []
    assert shape.problems("e-1", {"id": "e-1"}) == []
    assert shape.problems("e-1", {"id": "e-2"}) == ["field 'id' must equal the entity id"]
    assert shape.problems("1", {"id": 1}) == ["field 'id' must equal the entity id"]


def test_payload_shape_rejects_unknown_kinds() -> None:
    with pytest.raises(InvalidInput):
        PayloadShape(required={"f": "float"})


@PROPS
@given(st.floats(allow_nan=False) | st.integers())
def test_numbers_are_numbers(value: float) -> None:
    assert PayloadShape(required={"n": "number"}).problems("e", {"n": value}) == []
    is_int = isinstance(value, int)
    assert (PayloadShape(required={"n": "integer"}).problems("e", {"n": value}) == []) is is_int
    assert not math.isnan(value)
