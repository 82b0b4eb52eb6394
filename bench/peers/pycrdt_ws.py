"""Stock pycrdt-websocket as a benchmark peer: its `WebsocketServer` behind its `ASGIServer`,
served by Hypercorn with Hypercorn's defaults, no store (in memory), no auth.

    python bench/peers/pycrdt_ws.py --port 1234 [--host 127.0.0.1]

The room is the URL path (ws://host:port/<room>, as pycrdt-websocket names rooms by
`scope["path"]`). Prints one line `listening <port>` on stdout once the socket accepts
connections (the listening socket is bound before Hypercorn takes it over, so a client that
connects at once waits in the backlog rather than being refused); SIGTERM or SIGINT stops
Hypercorn (1 s for open connections) and the rooms, and exits 0 — or 3 when that stop is not
done after 5 s (the rooms' task groups can hang it with many clients).

Left as shipped on purpose: Hypercorn accepts permessage-deflate when a client offers it and
sends no WebSocket pings; the rooms are cleaned when their last client leaves. Only the
graceful timeout is shortened (Hypercorn's 3 s default) so a stop does not wait for clients.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import socket
import sys
import threading
from collections.abc import Callable
from types import FrameType

from hypercorn.asyncio import serve
from hypercorn.config import Config
from pycrdt.websocket import ASGIServer, WebsocketServer

GRACEFUL_TIMEOUT_S = 1.0
STOP_DEADLINE_S = 5.0  # then exit 3 without finishing the stop (the rooms can hang it)


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="pycrdt_ws.py", description=__doc__.split("\n")[0])
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=0, help="0: any free port (printed)")
    return p.parse_args(argv)


async def run(host: str, port: int) -> None:
    sock = socket.create_server((host, port))  # Hypercorn listens with its backlog (100)
    bound = sock.getsockname()[1]
    config = Config()
    config.bind = [f"fd://{sock.detach()}"]  # Hypercorn's socket object owns the fd from now
    config.graceful_timeout = GRACEFUL_TIMEOUT_S
    config.accesslog = None
    config.errorlog = "-"
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, _stopper(loop, stop))

    async def shutdown_trigger() -> None:
        await stop.wait()

    websocket_server = WebsocketServer()
    # the lower-level API: its `async with` form re-raises the cancellation of its own task
    # group at exit (0.16.5)
    running = asyncio.create_task(websocket_server.start())
    await websocket_server.started.wait()
    try:
        print(f"listening {bound}", flush=True)
        app = ASGIServer(websocket_server)
        await serve(app, config, shutdown_trigger=shutdown_trigger)  # type: ignore[arg-type]
    finally:
        await websocket_server.stop()
        await running


def _give_up() -> None:
    print(f"stop: not done after {STOP_DEADLINE_S:g} s, exiting with 3", file=sys.stderr)
    sys.stderr.flush()
    os._exit(3)


def _stopper(
    loop: asyncio.AbstractEventLoop, stop: asyncio.Event
) -> Callable[[int, FrameType | None], None]:
    """A plain signal handler, not the loop's: it runs between two bytecodes even while the
    loop works through a long queue of ready tasks, so the watchdog starts on time."""
    watchdogs: list[threading.Timer] = []

    def on_signal(signum: int, frame: FrameType | None) -> None:
        if not watchdogs:
            watchdogs.append(threading.Timer(STOP_DEADLINE_S, _give_up))
            watchdogs[0].daemon = True
            watchdogs[0].start()
        loop.call_soon_threadsafe(stop.set)

    return on_signal


def main(argv: list[str] | None = None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    asyncio.run(run(args.host, args.port))
    return 0


if __name__ == "__main__":
    sys.exit(main())
