"""Vector clocks: the algebra (design.md §4), checked as properties against a plain-dict model."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from crdt_sync.canonical import canonical_json
from crdt_sync.errors import InvalidInput
from crdt_sync.vector_clock import (
    MAX_COUNTER,
    MAX_NODE_ID,
    MAX_NODES,
    SERVER_NODE,
    Ordering,
    VectorClock,
)

PROPS = settings(max_examples=150, deadline=None)

# A small node alphabet makes shared nodes (and so every ordering) likely.
nodes = st.sampled_from(["a", "b", "c", "d", SERVER_NODE, "dev-é"])
counters = st.integers(min_value=0, max_value=6)
raw_clocks = st.dictionaries(nodes, counters, max_size=6)
clocks = raw_clocks.map(VectorClock.of)


def model_le(a: dict[str, int], b: dict[str, int]) -> bool:
    """a ≤ b pointwise, absent = 0 (the reference the implementation is checked against)."""
    return all(count <= b.get(node, 0) for node, count in a.items())


def nonzero(d: dict[str, int]) -> dict[str, int]:
    return {k: v for k, v in d.items() if v}


# -- algebra ------------------------------------------------------------------------------


@PROPS
@given(clocks, clocks)
def test_merge_is_commutative(a: VectorClock, b: VectorClock) -> None:
    assert a.merge(b) == b.merge(a)


@PROPS
@given(clocks, clocks, clocks)
def test_merge_is_associative(a: VectorClock, b: VectorClock, c: VectorClock) -> None:
    assert a.merge(b).merge(c) == a.merge(b.merge(c))


@PROPS
@given(clocks)
def test_merge_is_idempotent(a: VectorClock) -> None:
    assert a.merge(a) == a
    assert a.merge(VectorClock()) == a


@PROPS
@given(raw_clocks, raw_clocks)
def test_merge_is_pointwise_max(a: dict[str, int], b: dict[str, int]) -> None:
    expected = {n: max(a.get(n, 0), b.get(n, 0)) for n in a.keys() | b.keys()}
    assert VectorClock.of(a).merge(VectorClock.of(b)).to_json() == nonzero(expected)


@PROPS
@given(clocks, clocks)
def test_both_sides_are_at_most_the_merge(a: VectorClock, b: VectorClock) -> None:
    m = a.merge(b)
    assert a.compare(m) in (Ordering.BEFORE, Ordering.EQUAL)
    assert b.compare(m) in (Ordering.BEFORE, Ordering.EQUAL)


@PROPS
@given(raw_clocks, raw_clocks)
def test_compare_matches_the_pointwise_model(a: dict[str, int], b: dict[str, int]) -> None:
    le, ge = model_le(a, b), model_le(b, a)
    expected = {
        (True, True): Ordering.EQUAL,
        (True, False): Ordering.BEFORE,
        (False, True): Ordering.AFTER,
        (False, False): Ordering.CONCURRENT,
    }[(le, ge)]
    assert VectorClock.of(a).compare(VectorClock.of(b)) is expected


@PROPS
@given(clocks, clocks)
def test_compare_is_antisymmetric(a: VectorClock, b: VectorClock) -> None:
    mirror = {
        Ordering.BEFORE: Ordering.AFTER,
        Ordering.AFTER: Ordering.BEFORE,
        Ordering.EQUAL: Ordering.EQUAL,
        Ordering.CONCURRENT: Ordering.CONCURRENT,
    }
    assert b.compare(a) is mirror[a.compare(b)]
    assert (a.compare(b) is Ordering.EQUAL) == (a == b)
    assert a.dominates(b) == (a.compare(b) is Ordering.AFTER)


@PROPS
@given(clocks, clocks)
def test_compare_is_consistent_with_merge(a: VectorClock, b: VectorClock) -> None:
    le = a.compare(b) in (Ordering.BEFORE, Ordering.EQUAL)
    assert le == (a.merge(b) == b)


@PROPS
@given(clocks, clocks, clocks)
def test_order_is_transitive(a: VectorClock, b: VectorClock, c: VectorClock) -> None:
    le = (Ordering.BEFORE, Ordering.EQUAL)
    if a.compare(b) in le and b.compare(c) in le:
        assert a.compare(c) in le


@PROPS
@given(clocks, nodes)
def test_increment_strictly_dominates(a: VectorClock, node: str) -> None:
    bumped = a.increment(node)
    assert bumped.compare(a) is Ordering.AFTER
    assert a.compare(bumped) is Ordering.BEFORE
    assert bumped.dominates(a)
    assert bumped.get_count(node) == a.get_count(node) + 1
    for other in a:
        if other != node:
            assert bumped[other] == a[other]


@PROPS
@given(clocks, clocks)
def test_server_made_merge_dominates_both_sides(a: VectorClock, b: VectorClock) -> None:
    result = a.merge(b).increment(SERVER_NODE)
    assert result.dominates(a)
    assert result.dominates(b)


@PROPS
@given(raw_clocks, st.lists(nodes, max_size=4))
def test_zero_counters_equal_absence(entries: dict[str, int], zeros: list[str]) -> None:
    padded = dict(entries)
    for node in zeros:
        padded.setdefault(node, 0)
    a, b = VectorClock.of(entries), VectorClock.of(padded)
    assert a == b
    assert hash(a) == hash(b)
    assert a.compare(b) is Ordering.EQUAL
    assert 0 not in b.to_json().values()
    for node in zeros:
        assert b.get_count(node) == entries.get(node, 0)
    assert len(b) == len(nonzero(entries))


def test_empty_clock_and_all_zero_clock_are_equal() -> None:
    assert VectorClock.of({"a": 0, "b": 0}) == VectorClock() == VectorClock.of(None)
    assert VectorClock().compare(VectorClock.of({"a": 1})) is Ordering.BEFORE
    assert not VectorClock.of({"a": 0})


@PROPS
@given(raw_clocks)
def test_json_round_trip(entries: dict[str, int]) -> None:
    clock = VectorClock.of(entries)
    data = clock.to_json()
    assert data == nonzero(entries)
    assert VectorClock.from_json(data) == clock
    assert dict(clock) == data


@PROPS
@given(st.dictionaries(st.text(min_size=1, max_size=8), st.integers(0, 2**53 - 1), max_size=8))
def test_stored_round_trip(entries: dict[str, int]) -> None:
    """What the store writes reads back as the same clock (order, equality and hash), though
    `from_stored` skips the checks and the sorting."""
    clock = VectorClock.of(entries)
    text = canonical_json(clock.to_json())
    assert clock.canonical == text  # the encoding a clock remembers is the canonical one
    back = VectorClock.from_stored(text)
    assert back == clock and hash(back) == hash(clock)
    assert list(back) == list(clock)
    assert back.canonical == text


def test_mapping_access() -> None:
    clock = VectorClock.of({"b": 2, "a": 1})
    assert list(clock) == ["a", "b"]
    assert clock["b"] == 2
    assert clock.get_count("zzz") == 0
    with pytest.raises(KeyError):
        clock["zzz"]


# -- invalid input ------------------------------------------------------------------------

BAD_ENTRIES: list[Any] = [
    {"a": -1},
    {"a": True},
    {"a": False},
    {"a": 1.0},
    {"a": 0.0},
    {"a": "1"},
    {"a": None},
    {"a": MAX_COUNTER + 1},
    {1: 1},
    {None: 1},
    {("a",): 1},
    {"": 1},
    {"x" * (MAX_NODE_ID + 1): 1},
]


@pytest.mark.parametrize("entries", BAD_ENTRIES, ids=repr)
def test_invalid_entries_raise_invalid_input(entries: dict[Any, Any]) -> None:
    with pytest.raises(InvalidInput):
        VectorClock.of(entries)


@pytest.mark.parametrize("entries", [e for e in BAD_ENTRIES if all(isinstance(k, str) for k in e)])
def test_invalid_json_clocks_raise_invalid_input(entries: dict[str, Any]) -> None:
    with pytest.raises(InvalidInput):
        VectorClock.from_json(entries)


@pytest.mark.parametrize("value", [None, [], [["a", 1]], "a", 1, True])
def test_from_json_needs_an_object(value: Any) -> None:
    with pytest.raises(InvalidInput):
        VectorClock.from_json(value)


def test_limits_are_inclusive() -> None:
    assert VectorClock.of({"x" * MAX_NODE_ID: MAX_COUNTER})["x" * MAX_NODE_ID] == MAX_COUNTER
    assert len(VectorClock.of({f"n{i}": 1 for i in range(MAX_NODES)})) == MAX_NODES


def test_too_many_nodes() -> None:
    with pytest.raises(InvalidInput):
        VectorClock.of({f"n{i}": 1 for i in range(MAX_NODES + 1)})
    with pytest.raises(InvalidInput):
        VectorClock.from_json({f"n{i}": 1 for i in range(MAX_NODES + 1)})


def test_increment_past_the_maximum_is_invalid() -> None:
    with pytest.raises(InvalidInput):
        VectorClock.of({"a": MAX_COUNTER}).increment("a")


def test_direct_construction_is_validated() -> None:
    with pytest.raises(InvalidInput):
        VectorClock((("a", 1), ("a", 2)))
    with pytest.raises(InvalidInput):
        VectorClock((("a", 0),))


@PROPS
@given(
    st.dictionaries(
        st.one_of(st.text(max_size=3), st.integers(), st.none()),
        st.one_of(st.integers(), st.floats(), st.booleans(), st.text(max_size=2), st.none()),
        max_size=4,
    )
)
def test_arbitrary_entries_build_or_raise_invalid_input(entries: dict[Any, Any]) -> None:
    try:
        clock = VectorClock.of(entries)
    except InvalidInput:
        return
    for node, counter in clock.items():
        assert isinstance(node, str) and node
        assert type(counter) is int and 0 < counter <= MAX_COUNTER
