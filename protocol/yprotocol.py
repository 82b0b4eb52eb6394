"""Sans-I/O framing of the y-websocket protocol (the messages stock `y-websocket` speaks).

Theory of operation: every WebSocket binary message starts with a varuint message type.
`SYNC` (0) carries a varuint sync type — STEP1 (a state vector), STEP2 (an update answering a
step 1) or UPDATE (a live update) — followed by varbytes. `AWARENESS` (1) carries varbytes of
an awareness update: varuint count, then per client: varuint client id, varuint clock,
varstring JSON state ("null" when the client left). `AUTH` (2) and `QUERY_AWARENESS` (3)
complete the set. Decoding is strict: a message must be consumed exactly, and anything
malformed raises `YProtocolError` (and nothing else), so the transport can close the
connection with a documented code.
"""

from __future__ import annotations

import enum
import json
import math
from dataclasses import dataclass
from typing import Any

MAX_VARUINT_BITS = 53  # lib0 encodes JavaScript numbers


class YProtocolError(ValueError):
    """The peer sent bytes that are not a y-websocket message."""


class MessageType(enum.IntEnum):
    SYNC = 0
    AWARENESS = 1
    AUTH = 2
    QUERY_AWARENESS = 3


class SyncType(enum.IntEnum):
    STEP1 = 0
    STEP2 = 1
    UPDATE = 2


@dataclass(frozen=True)
class Message:
    type: MessageType
    sync_type: SyncType | None = None
    payload: bytes = b""


class Reader:
    def __init__(self, data: bytes) -> None:
        self.data = data
        self.pos = 0

    def varuint(self) -> int:
        value = 0
        shift = 0
        while True:
            if self.pos >= len(self.data):
                raise YProtocolError("truncated varuint")
            byte = self.data[self.pos]
            self.pos += 1
            value |= (byte & 0x7F) << shift
            if byte < 0x80:
                return value
            shift += 7
            if shift > MAX_VARUINT_BITS + 7:
                raise YProtocolError("varuint too long")

    def varbytes(self) -> bytes:
        length = self.varuint()
        end = self.pos + length
        if end > len(self.data):
            raise YProtocolError("truncated bytes")
        out = self.data[self.pos : end]
        self.pos = end
        return out

    def varstring(self) -> str:
        try:
            return self.varbytes().decode("utf-8")
        except UnicodeDecodeError:
            raise YProtocolError("invalid UTF-8 string") from None

    def done(self) -> bool:
        return self.pos == len(self.data)


def varuint(value: int) -> bytes:
    if value < 0:
        raise ValueError("varuint is non-negative")
    out = bytearray()
    while value >= 0x80:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def varbytes(data: bytes) -> bytes:
    return varuint(len(data)) + data


def decode(data: bytes) -> Message:
    reader = Reader(data)
    kind = reader.varuint()
    if kind == MessageType.SYNC:
        sync_kind = reader.varuint()
        if sync_kind not in (0, 1, 2):
            raise YProtocolError(f"unknown sync message type {sync_kind}")
        payload = reader.varbytes()
        message = Message(MessageType.SYNC, SyncType(sync_kind), payload)
    elif kind == MessageType.AWARENESS:
        message = Message(MessageType.AWARENESS, None, reader.varbytes())
    elif kind == MessageType.AUTH:
        reader.varuint()
        message = Message(MessageType.AUTH, None, reader.varbytes())
    elif kind == MessageType.QUERY_AWARENESS:
        message = Message(MessageType.QUERY_AWARENESS)
    else:
        raise YProtocolError(f"unknown message type {kind}")
    if not reader.done():
        raise YProtocolError("trailing bytes after the message")
    return message


def sync_step1(state_vector: bytes) -> bytes:
    return b"\x00\x00" + varbytes(state_vector)


def sync_step2(update: bytes) -> bytes:
    return b"\x00\x01" + varbytes(update)


def sync_update(update: bytes) -> bytes:
    return b"\x00\x02" + varbytes(update)


def awareness_message(update: bytes) -> bytes:
    return b"\x01" + varbytes(update)


@dataclass(frozen=True)
class AwarenessEntry:
    client_id: int
    clock: int
    state: Any  # None when the client left


def _not_json(name: str) -> Any:
    """NaN and Infinity are no JSON: relayed, they would break JSON.parse in every client."""
    raise ValueError(f"{name} is not JSON")


def _finite(text: str) -> float:
    """A JSON number too large for a double (1e999) parses to infinity in Python and in
    JavaScript alike; re-encoded it would be the non-JSON `Infinity`: refused as well."""
    value = float(text)
    if not math.isfinite(value):
        raise ValueError(f"{text} is out of range")
    return value


def read_awareness(update: bytes) -> list[tuple[int, int, bytes]]:
    """The entries of an awareness update as (client id, clock, state JSON as sent), without
    parsing the JSON: a room skips most entries it receives (every y-websocket client sends
    back what it is relayed) and parses only the news, with `awareness_state`."""
    reader = Reader(update)
    count = reader.varuint()
    if count > 10_000:
        raise YProtocolError("too many awareness entries")
    entries = [(reader.varuint(), reader.varuint(), reader.varbytes()) for _ in range(count)]
    if not reader.done():
        raise YProtocolError("trailing bytes after the awareness update")
    return entries


def awareness_state(raw: bytes) -> Any:
    """An entry's state, refusing what is not JSON (None: the client left)."""
    try:
        return json.loads(raw.decode("utf-8"), parse_constant=_not_json, parse_float=_finite)
    except UnicodeDecodeError:
        raise YProtocolError("invalid UTF-8 string") from None
    except (ValueError, RecursionError):  # deep nesting exhausts the parser's recursion
        raise YProtocolError("awareness state is not JSON") from None


def decode_awareness(update: bytes) -> list[AwarenessEntry]:
    return [
        AwarenessEntry(client_id, clock, awareness_state(raw))
        for client_id, clock, raw in read_awareness(update)
    ]


def awareness_entry(client_id: int, clock: int, raw: bytes) -> bytes:
    """One entry as encoded in an awareness update (state JSON as given)."""
    return varuint(client_id) + varuint(clock) + varbytes(raw)


def awareness_update(entries: list[bytes]) -> bytes:
    """An awareness update of entries encoded by `awareness_entry`."""
    return varuint(len(entries)) + b"".join(entries)


def encode_awareness(entries: list[AwarenessEntry]) -> bytes:
    return awareness_update(
        [
            awareness_entry(
                e.client_id, e.clock, json.dumps(e.state, separators=(",", ":")).encode()
            )
            for e in entries
        ]
    )


def decode_state_vector(data: bytes) -> dict[int, int]:
    """A Yjs v1 state vector: varuint count, then (client, clock) varuint pairs."""
    reader = Reader(data)
    count = reader.varuint()
    if count > 1_000_000:
        raise YProtocolError("state vector too large")
    out: dict[int, int] = {}
    for _ in range(count):
        client = reader.varuint()
        out[client] = reader.varuint()
    if not reader.done():
        raise YProtocolError("trailing bytes after the state vector")
    return out
