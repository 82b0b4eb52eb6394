"""Run the app on Hypercorn, with the settings we choose on purpose (design.md §5)."""

from __future__ import annotations

import asyncio
import signal
from collections.abc import Awaitable, Callable

from hypercorn.asyncio import serve
from hypercorn.config import Config as HyperConfig
from hypercorn.protocol import ws_stream
from quart import Quart
from wsproto.extensions import PerMessageDeflate

from web.config import Config


class _DeclinedDeflate(PerMessageDeflate):
    """permessage-deflate that answers every offer with "no" (RFC 7692 lets a server decline)."""

    def accept(self, offer: str) -> None:
        return None


def set_ws_compression(enabled: bool) -> None:
    """Hypercorn 0.18 accepts permessage-deflate whenever a client offers it and has no setting
    for it; its handshake builds the extension from this module global, so swap the class."""
    ws_stream.PerMessageDeflate = PerMessageDeflate if enabled else _DeclinedDeflate  # type: ignore[attr-defined,misc]


def hypercorn_config(config: Config) -> HyperConfig:
    set_ws_compression(config.ws_compression)
    hc = HyperConfig()
    hc.bind = [f"{config.host}:{config.port}"]
    hc.graceful_timeout = config.graceful_timeout_s  # finish requests before rooms flush
    hc.websocket_max_message_size = config.ws_max_message_bytes  # larger: close 1009
    hc.websocket_ping_interval = config.ws_ping_interval_s
    hc.keep_alive_timeout = 30.0
    hc.accesslog = None
    hc.errorlog = "-"
    return hc


async def serve_app(
    app: Quart,
    config: Config,
    shutdown: Callable[[], Awaitable[None]] | None = None,
) -> None:
    """Serve until SIGINT/SIGTERM (or `shutdown` returns); the app's after_serving hooks
    store everything before the process exits."""
    if shutdown is None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)

        async def _wait() -> None:
            await stop.wait()

        shutdown = _wait
    wait_for_stop = shutdown

    async def _trigger() -> None:
        await wait_for_stop()
        # Before Hypercorn waits for open connections: rooms store what they hold and close
        # their sockets (1001), so shutdown does not sit out the graceful timeout.
        runtime = app.extensions.get("crdt_sync")
        for hook in [] if runtime is None else runtime.extras.get("on_stop", []):
            await hook()

    await serve(app, hypercorn_config(config), shutdown_trigger=_trigger)  # type: ignore[arg-type]
