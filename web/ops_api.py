"""Operations endpoints: liveness, readiness, Prometheus metrics."""

from __future__ import annotations

from quart import Blueprint, Response, current_app, jsonify

from web.errors import error_response
from web.runtime import runtime
from web.sync_workers import merged_metrics

bp = Blueprint("ops", __name__)


@bp.get("/healthz")
async def healthz() -> Response:
    return jsonify({"status": "ok"})


@bp.get("/readyz")
async def readyz() -> Response:
    if "crdt_sync" not in current_app.extensions:
        return error_response(503, "starting", "the server is starting")
    try:
        await runtime().store.ping()
    except Exception as exc:  # the database is down: not ready, and say why
        return error_response(503, "database_unavailable", str(exc)[:200])
    return jsonify({"status": "ready"})


@bp.get("/metrics")
async def metrics() -> Response:
    rt = runtime()
    workers = rt.extras.get("sync_workers")
    if workers is None:
        body = rt.metrics.render()
    else:
        body = merged_metrics(rt.metrics.registry, await workers.metrics())
    return Response(body, content_type="text/plain; version=0.0.4")
