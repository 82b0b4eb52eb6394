"""Vector clocks over device ids (plus `server` for versions the server makes).

A clock maps node id -> counter (a positive int); absent nodes count as 0, so a clock never
stores zeros and two clocks that differ only by explicit zeros are equal.
"""

from __future__ import annotations

import enum
import functools
import json
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

from crdt_sync.canonical import canonical_json
from crdt_sync.errors import InvalidInput

SERVER_NODE = "server"
MAX_NODE_ID = 200
MAX_COUNTER = 2**53 - 1  # stays exact in JSON numbers and JavaScript clients
MAX_NODES = 1000


class Ordering(enum.Enum):
    BEFORE = "before"
    AFTER = "after"
    EQUAL = "equal"
    CONCURRENT = "concurrent"


@dataclass(frozen=True)
class VectorClock(Mapping[str, int]):
    _entries: tuple[tuple[str, int], ...] = field(default=())

    def __post_init__(self) -> None:
        seen: set[str] = set()
        for node, counter in self._entries:
            if not isinstance(node, str) or not 0 < len(node) <= MAX_NODE_ID:
                raise InvalidInput(f"clock node id must be a string of 1..{MAX_NODE_ID} chars")
            if node in seen:
                raise InvalidInput(f"clock node {node!r} appears twice")
            seen.add(node)
            if (
                isinstance(counter, bool)
                or not isinstance(counter, int)
                or not 0 < counter <= MAX_COUNTER
            ):
                raise InvalidInput(f"clock counter for {node!r} must be a positive integer")

    @classmethod
    def of(cls, entries: Mapping[str, int] | None = None) -> VectorClock:
        """Build a clock, dropping zero counters (they mean the same as absent)."""
        if not entries:
            return cls()
        if len(entries) > MAX_NODES:
            raise InvalidInput(f"a clock has at most {MAX_NODES} nodes")
        items = []
        for node, counter in entries.items():
            if isinstance(counter, int) and not isinstance(counter, bool) and counter == 0:
                continue
            items.append((node, counter))
        return cls(tuple(sorted(items, key=lambda kv: str(kv[0]))))

    @classmethod
    def from_stored(cls, text: str) -> VectorClock:
        """A clock as the store wrote it (`canonical_json(clock.to_json())` of a clock that
        passed these checks, nodes in sorted order): decoded without checking it again,
        which on a push or a pull is done for every entity read."""
        clock = object.__new__(cls)
        object.__setattr__(clock, "_entries", tuple(json.loads(text).items()))
        clock.__dict__["canonical"] = text
        return clock

    @classmethod
    def from_json(cls, value: Any) -> VectorClock:
        if not isinstance(value, dict):
            raise InvalidInput("clock must be an object of node id -> counter")
        return cls.of(value)

    def to_json(self) -> dict[str, int]:
        return dict(self._entries)

    @functools.cached_property
    def canonical(self) -> str:
        """`canonical_json(self.to_json())`, encoded once per clock (a push stores a new
        entity's clock and sends it back in the result)."""
        return canonical_json(dict(self._entries))

    # Mapping protocol
    def __getitem__(self, node: str) -> int:
        for key, counter in self._entries:
            if key == node:
                return counter
        raise KeyError(node)

    def __iter__(self) -> Iterator[str]:
        return (key for key, _ in self._entries)

    def __len__(self) -> int:
        return len(self._entries)

    def get_count(self, node: str) -> int:
        return dict(self._entries).get(node, 0)

    def compare(self, other: VectorClock) -> Ordering:
        mine, theirs = dict(self._entries), dict(other._entries)
        less = greater = False
        for node in mine.keys() | theirs.keys():
            a, b = mine.get(node, 0), theirs.get(node, 0)
            if a < b:
                less = True
            elif a > b:
                greater = True
            if less and greater:
                return Ordering.CONCURRENT
        if less:
            return Ordering.BEFORE
        if greater:
            return Ordering.AFTER
        return Ordering.EQUAL

    def merge(self, other: VectorClock) -> VectorClock:
        merged = dict(self._entries)
        for node, counter in other._entries:
            if counter > merged.get(node, 0):
                merged[node] = counter
        return VectorClock.of(merged)

    def increment(self, node: str) -> VectorClock:
        entries = dict(self._entries)
        entries[node] = entries.get(node, 0) + 1
        return VectorClock.of(entries)

    def dominates(self, other: VectorClock) -> bool:
        return self.compare(other) is Ordering.AFTER

    def __repr__(self) -> str:
        return f"VectorClock({dict(self._entries)!r})"
