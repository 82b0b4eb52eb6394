"""Conflict policies: what a mutation does to the stored state of its entity.

The engine (`SyncService._apply` in `services.py`) settles the cases every policy shares:
a mutation whose clock is before or equal to the stored one is `stale`. A policy decides
the rest: a mutation whose clock dominates (`on_dominating`) and one that is concurrent
(`on_concurrent`).

Delete-vs-update precedence, per policy:
- `lww`: a delete is one more write; the later (ts, device id) wins, delete or put.
- `monotonic`: a put wins over a concurrent delete (progress never goes backwards); a delete
  whose clock dominates (it saw everything) applies.
- `manual`: a concurrent delete is a conflict like any other write.
- `append_only`: deletes are rejected (`immutable`).
- `server_authored`: devices cannot write at all (`read_only`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

from crdt_sync.canonical import canonical_json
from crdt_sync.model import EntityState, LocalMutation, Status, same_json


@dataclass(frozen=True)
class Write:
    """An incoming write with the server-side facts the policies need."""

    mutation: LocalMutation
    device_id: str
    ts: int  # hybrid logical time after clamping

    @property
    def deleted(self) -> bool:
        return self.mutation.op == "delete"

    @property
    def payload(self) -> dict[str, Any] | None:
        return self.mutation.payload


@dataclass(frozen=True)
class Decision:
    """What a policy decided. `payload`/`deleted` are the new state when status changes it."""

    status: Status
    payload: dict[str, Any] | None = None
    deleted: bool = False
    from_incoming: bool = True  # whether the surviving value is the incoming write's
    error_code: str | None = None
    error_message: str | None = None


class Policy(Protocol):
    name: str
    device_writable: bool

    def on_dominating(self, stored: EntityState | None, write: Write) -> Decision: ...

    def on_concurrent(self, stored: EntityState, write: Write) -> Decision: ...

    def on_stale(self, stored: EntityState, write: Write) -> Decision:
        """The stored clock already covers the write; nearly always `stale`."""
        ...


class _Base:
    def on_stale(self, stored: EntityState, write: Write) -> Decision:
        return Decision(Status.STALE)


def _as_incoming(write: Write) -> Decision:
    return Decision(Status.APPLIED, payload=write.payload, deleted=write.deleted)


def lww_wins(write: Write, stored: EntityState) -> bool:
    """Last writer wins on (hybrid timestamp, device id)."""
    return (write.ts, write.device_id) > (stored.ts, stored.device_id)


class LastWriterWins(_Base):
    name = "lww"
    device_writable = True

    def on_dominating(self, stored: EntityState | None, write: Write) -> Decision:
        return _as_incoming(write)

    def on_concurrent(self, stored: EntityState, write: Write) -> Decision:
        if lww_wins(write, stored):
            return Decision(Status.MERGED, payload=write.payload, deleted=write.deleted)
        return Decision(
            Status.MERGED, payload=stored.payload, deleted=stored.deleted, from_incoming=False
        )


def monotonic_merge(a: Any, b: Any, b_wins_ties: bool) -> Any:
    """Join of two values that never goes backwards.

    numbers take the max, booleans OR, lists the union (a's order, then b's new items),
    objects merge key by key; any other pair (strings, mismatched types) falls back to
    last-writer-wins, which `b_wins_ties` says.
    """
    if isinstance(a, bool) and isinstance(b, bool):
        return a or b
    if (
        isinstance(a, int | float)
        and isinstance(b, int | float)
        and not isinstance(a, bool)
        and not isinstance(b, bool)
    ):
        return max(a, b)
    if isinstance(a, list) and isinstance(b, list):
        seen = {canonical_json(item) for item in a}
        out = list(a)
        for item in b:
            marker = canonical_json(item)
            if marker not in seen:
                seen.add(marker)
                out.append(item)
        return out
    if isinstance(a, dict) and isinstance(b, dict):
        merged = dict(a)
        for key, value in b.items():
            merged[key] = monotonic_merge(a[key], value, b_wins_ties) if key in a else value
        return merged
    return b if b_wins_ties else a


class Monotonic(_Base):
    name = "monotonic"
    device_writable = True

    def _merge(self, stored: EntityState | None, write: Write, dominating: bool) -> Decision:
        if write.deleted:
            if dominating:
                return _as_incoming(write)
            assert stored is not None
            return Decision(
                Status.MERGED, payload=stored.payload, deleted=stored.deleted, from_incoming=False
            )
        if stored is None or stored.deleted:
            status = Status.APPLIED if dominating else Status.MERGED
            return Decision(status, payload=write.payload)
        assert write.payload is not None and stored.payload is not None
        later = dominating or lww_wins(write, stored)
        merged = monotonic_merge(stored.payload, write.payload, later)
        if dominating and same_json(merged, write.payload):
            return Decision(Status.APPLIED, payload=write.payload)
        return Decision(Status.MERGED, payload=merged, from_incoming=False)

    def on_dominating(self, stored: EntityState | None, write: Write) -> Decision:
        return self._merge(stored, write, dominating=True)

    def on_concurrent(self, stored: EntityState, write: Write) -> Decision:
        return self._merge(stored, write, dominating=False)


class Manual(_Base):
    name = "manual"
    device_writable = True

    def on_dominating(self, stored: EntityState | None, write: Write) -> Decision:
        return _as_incoming(write)

    def on_concurrent(self, stored: EntityState, write: Write) -> Decision:
        return Decision(
            Status.CONFLICT, payload=stored.payload, deleted=stored.deleted, from_incoming=False
        )


class AppendOnly:
    """Immutable records (xAPI statements): written once, the same again is harmless."""

    name = "append_only"
    device_writable = True

    def _decide(self, stored: EntityState | None, write: Write) -> Decision:
        if write.deleted:
            return Decision(
                Status.REJECTED,
                error_code="immutable",
                error_message="records of this type cannot be deleted",
            )
        if stored is None or stored.deleted:
            return _as_incoming(write)
        if not same_json(stored.payload, write.payload):
            return Decision(
                Status.REJECTED,
                error_code="immutable",
                error_message="a record with this id exists with another payload",
            )
        return Decision(Status.STALE)

    def on_dominating(self, stored: EntityState | None, write: Write) -> Decision:
        return self._decide(stored, write)

    def on_concurrent(self, stored: EntityState, write: Write) -> Decision:
        return self._decide(stored, write)

    def on_stale(self, stored: EntityState, write: Write) -> Decision:
        return self._decide(stored, write)


class ServerAuthored(_Base):
    """Written by the server (admin API) only; devices read it."""

    name = "server_authored"
    device_writable = False

    def on_dominating(self, stored: EntityState | None, write: Write) -> Decision:
        return _read_only()

    def on_concurrent(self, stored: EntityState, write: Write) -> Decision:
        return _read_only()


def _read_only() -> Decision:
    return Decision(
        Status.REJECTED, error_code="read_only", error_message="this type is written by the server"
    )


POLICIES: dict[str, Policy] = {
    p.name: p for p in (LastWriterWins(), Monotonic(), Manual(), AppendOnly(), ServerAuthored())
}
