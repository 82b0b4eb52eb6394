"""The Quart app factory: wires store, services, routes, metrics and background tasks."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from dataclasses import replace

from quart import Quart, Response, g, request

from crdt_sync.ports import Clock, SystemClock
from crdt_sync.registry import EntityRegistry
from crdt_sync.services import Settings, SyncService
from protocol.cursor import CursorCodec
from storage.engine import open_store
from web import errors, routing
from web.admin_api import bp as admin_bp
from web.config import Config
from web.metrics import Metrics
from web.openapi import bp as openapi_bp
from web.ops_api import bp as ops_bp
from web.rooms import RoomManager, RoomSettings
from web.rooms_api import admin_docs_bp, rooms_bp
from web.runtime import Runtime
from web.sync_api import bp as sync_bp
from web.sync_workers import SyncDispatch, SyncWorkers

log = logging.getLogger("crdt_sync")


def create_app(
    config: Config,
    clock: Clock | None = None,
    settings: Settings | None = None,
    *,
    sync_worker: bool = False,
) -> Quart:
    """The server's app; `sync_worker`: the app a sync worker process runs (web/sync_workers.py):
    the same routes and store, without rooms, background tasks or workers of its own."""
    app = Quart("crdt_sync")
    routing.configure(app.url_map)  # ids in paths are data: before any route
    app.config["MAX_CONTENT_LENGTH"] = config.max_body_bytes
    app.config["PROPAGATE_EXCEPTIONS"] = False
    clock = clock or SystemClock()
    if config.sync_workers > 1:  # several processes write: decide pushes outside the lock
        settings = replace(settings or Settings(), optimistic_push=True)
    metrics = Metrics()
    registry = EntityRegistry.from_config(config.entity_types)

    @app.before_serving
    async def _start() -> None:
        store = await open_store(config.database_url, config.data_dir)
        service = SyncService(store, registry, clock, settings)
        metrics.count_from(
            "crdt_sync_pushes_decided_again_total",
            "Optimistic pushes whose reads had changed by their transaction",
            lambda: service.pushes_decided_again,
        )
        rt = Runtime(config, clock, store, service, CursorCodec(config.server_key), metrics)
        app.extensions["crdt_sync"] = rt
        if sync_worker:
            return
        rt.extras["pruner"] = asyncio.create_task(_prune_forever(rt))
        room_settings = RoomSettings(archive_retention_s=service.settings.archive_retention_s)
        rooms = RoomManager(store, clock, metrics, room_settings)
        rt.extras["rooms"] = rooms
        rt.extras["room_settings"] = room_settings
        rt.extras["on_revoke"] = rooms.disconnect_device
        rt.extras["on_shutdown"] = [rooms.shutdown]
        rt.extras["on_stop"] = [rooms.shutdown]
        if config.sync_workers:
            workers = SyncWorkers(config, settings)
            await workers.start()
            rt.extras["sync_workers"] = workers

    @app.after_serving
    async def _stop() -> None:
        rt: Runtime = app.extensions["crdt_sync"]
        workers = rt.extras.pop("sync_workers", None)
        if workers is not None:  # after Hypercorn finished the requests in flight
            await workers.stop()
        pruner = rt.extras.pop("pruner", None)
        if pruner is not None:
            pruner.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await pruner
        for hook in rt.extras.pop("on_shutdown", []):
            await hook()
        await rt.store.close()

    @app.before_request
    async def _timer() -> None:
        g.started = time.perf_counter()

    @app.after_request
    async def _count(response: Response) -> Response:
        rule = request.url_rule.rule if request.url_rule is not None else "unmatched"
        metrics.requests.labels(rule, str(response.status_code)).inc()
        started = getattr(g, "started", None)
        if started is not None:
            metrics.latency.labels(rule).observe(time.perf_counter() - started)
        return response

    errors.install(app)
    app.register_blueprint(sync_bp)
    app.register_blueprint(admin_bp)
    app.register_blueprint(ops_bp)
    app.register_blueprint(rooms_bp)
    app.register_blueprint(admin_docs_bp)
    app.register_blueprint(openapi_bp)
    if config.sync_workers and not sync_worker:

        def _workers() -> SyncWorkers | None:
            rt = app.extensions.get("crdt_sync")
            return None if rt is None else rt.extras.get("sync_workers")

        dispatch = SyncDispatch(app.asgi_app, _workers, config.max_body_bytes)  # type: ignore[arg-type]
        app.asgi_app = dispatch  # type: ignore[method-assign,assignment]
    return app


async def prune_once(rt: Runtime) -> dict[str, int]:
    counts = await rt.store.prune(rt.clock.now(), rt.service.settings.tombstone_retention_s)
    for kind, count in counts.items():
        rt.metrics.pruned.labels(kind).inc(count)
    return counts


async def _prune_forever(rt: Runtime) -> None:
    while True:
        await asyncio.sleep(rt.config.prune_interval_s)
        try:
            await prune_once(rt)
        except Exception:  # keep the server up; the next round retries
            log.exception("retention pruning failed")
