"""`crdt-sync serve | token | prune` (design.md §3, command line: contract)."""

from __future__ import annotations

import argparse
import asyncio
import gc
import logging
import sys

from web.auth import ROLES, mint_token
from web.config import Config, build_config


def _common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--data-dir", default=None, help="data folder (default ./var)")
    parser.add_argument("--database-url", default=None, help="e.g. postgresql+asyncpg://...")


def parser() -> argparse.ArgumentParser:
    top = argparse.ArgumentParser(prog="crdt-sync", description=__doc__)
    sub = top.add_subparsers(dest="command", required=True)

    serve = sub.add_parser("serve", help="run the server")
    serve.add_argument("--host", default=None)
    serve.add_argument("--port", type=int, default=None)
    serve.add_argument(
        "--sync-workers",
        type=int,
        default=None,
        help="processes that run /sync/v1 push, pull and ack beside this one (default 0)",
    )
    _common(serve)

    token = sub.add_parser("token", help="print a signed token (development, operators)")
    token.add_argument("--tenant", required=True)
    token.add_argument("--user", required=True)
    token.add_argument("--role", action="append", choices=sorted(ROLES), default=None)
    token.add_argument("--device", default=None)
    token.add_argument("--ttl", type=int, default=3600, help="seconds (default 3600)")
    _common(token)

    prune = sub.add_parser("prune", help="delete expired snapshots and old tombstones now")
    _common(prune)
    return top


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    if args.command == "serve":
        config = build_config(
            args.host, args.port, args.data_dir, args.database_url, args.sync_workers
        )
        return _serve(config)
    config = build_config(data_dir=args.data_dir, database_url=args.database_url)
    if args.command == "token":
        if not config.jwt_secret:
            print("no HS256 secret configured", file=sys.stderr)
            return 2
        print(
            mint_token(
                config.jwt_secret,
                tenant=args.tenant,
                user=args.user,
                roles=args.role or ["learner"],
                device=args.device,
                ttl_s=args.ttl,
                kid=config.jwt_signing_kid,
            )
        )
        return 0
    if args.command == "prune":
        counts = asyncio.run(_prune(config))
        print(" ".join(f"{k}={v}" for k, v in counts.items()))
        return 0
    return 2  # pragma: no cover - argparse rejects unknown commands


# A server holding 10,000 connections has millions of long-lived objects; with CPython's
# default thresholds (700, 10, 10) its full collections ran every few seconds and took a third
# of the CPU (measured: 10k idle rooms clients, docs/benchmarks.md). Young collections run
# less often and a full one needs 100 middle ones (and CPython's own rule: long-lived objects
# grew by a quarter). What the app loaded at startup lives for the process: frozen, it is
# never traversed again.
GC_THRESHOLDS = (50_000, 20, 100)


def tune_gc() -> None:
    gc.collect()
    gc.freeze()
    gc.set_threshold(*GC_THRESHOLDS)


def _serve(config: Config) -> int:
    from web.app import create_app
    from web.server import serve_app

    app = create_app(config)
    tune_gc()
    url = f"http://{config.host}:{config.port}"
    print(f"crdt-sync serving on {url} (store: {config.database_label})", flush=True)
    print(
        f"  get a token:  crdt-sync token --data-dir {config.data_dir} --tenant acme "
        "--user alice --role learner",
        flush=True,
    )
    asyncio.run(serve_app(app, config))
    return 0


async def _prune(config: Config) -> dict[str, int]:
    from crdt_sync.ports import SystemClock
    from crdt_sync.services import Settings
    from storage.engine import open_store

    store = await open_store(config.database_url, config.data_dir)
    try:
        return await store.prune(SystemClock().now(), Settings().tombstone_retention_s)
    finally:
        await store.close()


if __name__ == "__main__":
    sys.exit(main())
