"""Room messages written straight to a client's socket, one encoded frame for every client.

A room sends each flush to every client in it. Through Quart and Hypercorn, every one of those
sends is an ASGI message, a wsproto frame build, a send lock, a `drain()` and a task switch
(our own send task per client): about as much CPU again as the socket write itself, per client
per flush. A server's frames are not masked (RFC 6455 §5.1), so the bytes of a frame are the
same for every client: the room encodes each message once and writes it to each client's
transport, which leaves one `transport.write` per client.

This needs Hypercorn's asyncio worker serving the WebSocket over HTTP/1.1 without an extension
(permessage-deflate would have to compress per connection): `direct_socket` finds the transport
behind Quart's ASGI send and answers None in every other case, where the room uses the
portable path (a bounded queue and a send task per client). Hypercorn's own frames (pings,
pongs, the close) still go through Hypercorn; every write is whole frames on the event loop,
so they interleave only between frames.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

from wsproto.connection import ConnectionState

_BINARY_FIN = 0x82  # FIN + opcode 2 (binary)


def binary_frame(payload: bytes) -> bytes:
    """One unmasked, unfragmented binary frame (server to client)."""
    n = len(payload)
    if n < 126:
        header = bytes((_BINARY_FIN, n))
    elif n < 1 << 16:
        header = bytes((_BINARY_FIN, 126)) + n.to_bytes(2, "big")
    else:
        header = bytes((_BINARY_FIN, 127)) + n.to_bytes(8, "big")
    return header + payload


class DirectSocket:
    """The client's transport, and the WebSocket state that says whether data may go out."""

    __slots__ = ("_connection", "_transport")

    def __init__(self, connection: Any, transport: asyncio.WriteTransport) -> None:
        self._connection = connection
        self._transport = transport

    def open(self) -> bool:
        """False once either side started the close (no data frame may follow a close)."""
        return bool(
            self._connection.state is ConnectionState.OPEN and not self._transport.is_closing()
        )

    def buffered(self) -> int:
        """Bytes written but not yet taken by the kernel (the client is behind)."""
        return self._transport.get_write_buffer_size()

    def write(self, frame: bytes) -> None:
        # a transport that started closing between open() and here refuses the write: the
        # receive side cleans up, as for any client that went away
        with contextlib.suppress(RuntimeError):
            self._transport.write(frame)

    def abort(self) -> None:
        """Drop the connection and what it still buffers (a client that stopped reading)."""
        self._transport.abort()


def direct_socket(asgi_send: Any) -> DirectSocket | None:
    """The socket behind an accepted WebSocket's ASGI send, where that is Hypercorn's asyncio
    HTTP/1.1 stream without an extension; None otherwise (then use the ASGI send)."""
    try:
        stream = asgi_send.__self__  # hypercorn.protocol.ws_stream.WSStream
        connection = stream.connection  # its wsproto Connection, set by the accept
        if type(stream).__name__ != "WSStream" or connection.state is not ConnectionState.OPEN:
            return None
        if any(ext.enabled() for ext in connection._proto.extensions):
            return None
        http11 = stream.send.__self__  # H11Protocol.stream_send (HTTP/2 streams differ)
        if type(http11).__name__ != "H11Protocol":
            return None
        transport = http11.send.__self__.writer.transport  # TCPServer.protocol_send
    except AttributeError:
        return None
    if not isinstance(transport, asyncio.WriteTransport):
        return None
    return DirectSocket(connection, transport)
