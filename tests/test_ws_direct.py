"""The frames rooms write straight to a client's socket (web/ws_direct.py), read back by
wsproto's client side: every length encoding RFC 6455 has (7-bit, 16-bit, 64-bit)."""

from __future__ import annotations

import random

import pytest
from wsproto import ConnectionType
from wsproto.connection import Connection
from wsproto.events import BytesMessage

from web.ws_direct import binary_frame


@pytest.mark.parametrize("size", [0, 1, 125, 126, 127, 65535, 65536, 300_000])
def test_binary_frame_reads_back_as_one_binary_message(size: int) -> None:
    payload = random.Random(size).randbytes(size)
    client = Connection(ConnectionType.CLIENT)
    frame = binary_frame(payload)
    client.receive_data(frame[:1])  # split across reads, as a socket may deliver it
    client.receive_data(frame[1:])
    events = list(client.events())
    assert len(events) == 1
    message = events[0]
    assert isinstance(message, BytesMessage)
    assert message.message_finished and bytes(message.data) == payload


def test_two_frames_back_to_back_stay_apart() -> None:
    client = Connection(ConnectionType.CLIENT)
    client.receive_data(binary_frame(b"\x00\x01") + binary_frame(b"x" * 200))
    assert [bytes(e.data) for e in client.events()] == [b"\x00\x01", b"x" * 200]
