"""Server configuration from flags, the environment and the data folder's secrets file."""

from __future__ import annotations

import json
import os
import secrets
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from web.limits import LimitsConfig

SECRETS_FILE = "secrets.json"


@dataclass(frozen=True)
class JwtKey:
    """One key that may verify tokens: tokens must name its `kid` (None: tokens without a
    kid) and use exactly its algorithm, so an RSA public key can never act as an HS secret."""

    kid: str | None
    algorithm: str  # HS256 | RS256 | ES256
    key: str

    def __post_init__(self) -> None:
        if self.algorithm not in ("HS256", "RS256", "ES256"):
            raise ValueError(f"unsupported JWT algorithm {self.algorithm!r}")


@dataclass
class Config:
    host: str = "127.0.0.1"
    port: int = 8000
    data_dir: Path = field(default_factory=lambda: Path("./var"))
    database_url: str | None = None
    jwt_secret: str | None = None  # HS256: verifies tokens without `kid`, signs device tokens
    jwt_signing_kid: str | None = None  # the `kid` put on tokens signed with jwt_secret
    # Extra verification keys, for RS256/ES256 and key rotation (see docs/security.md)
    jwt_keys: list[JwtKey] = field(default_factory=list)
    server_key: bytes = b""  # derives device secrets, tags cursors; never stored in the DB
    entity_types: dict[str, Any] = field(default_factory=dict)
    max_body_bytes: int = 4 * 1024 * 1024
    prune_interval_s: float = 3600.0
    # WebSocket keep-alive pings. Hypercorn's ping loop also notices a closed connection only
    # when it next wakes, so the interval bounds how long a closed socket lingers.
    ws_ping_interval_s: float = 10.0
    ws_max_message_bytes: int = 8 * 1024 * 1024
    # permessage-deflate on room sockets: off, as Hocuspocus and y-websocket's server ship.
    # Yjs updates are small and binary; compressing each one per client costs ~4x the CPU of a
    # delivery and ~100 KiB of zlib state per connection (docs/benchmarks.md).
    ws_compression: bool = False
    graceful_timeout_s: float = 10.0
    # Processes that run /sync/v1 push, pull and ack beside this one (web/sync_workers.py);
    # 0: this process runs them itself.
    sync_workers: int = 0
    limits: LimitsConfig = field(default_factory=lambda: LimitsConfig.load(None))

    @property
    def database_label(self) -> str:
        if self.database_url:
            return self.database_url.split("@")[-1]
        return f"sqlite:{self.data_dir / 'crdt-sync.db'}"


def _env(name: str) -> str | None:
    value = os.environ.get(name)
    return value if value else None


def load_secrets(data_dir: Path) -> dict[str, str]:
    """The data folder's secrets (created with mode 0600 on first start)."""
    path = data_dir / SECRETS_FILE
    if path.exists():
        loaded: dict[str, str] = json.loads(path.read_text())
        return loaded
    data_dir.mkdir(parents=True, exist_ok=True)
    values = {"jwt_secret": secrets.token_urlsafe(32), "server_key": secrets.token_hex(32)}
    tmp = path.with_suffix(".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as handle:
        json.dump(values, handle)
    os.replace(tmp, path)
    return values


def build_config(
    host: str | None = None,
    port: int | None = None,
    data_dir: str | None = None,
    database_url: str | None = None,
    sync_workers: int | None = None,
) -> Config:
    """Flags win over the environment, which wins over defaults."""
    cfg = Config()
    cfg.host = host or _env("CRDT_SYNC_HOST") or cfg.host
    port_text = str(port) if port is not None else _env("CRDT_SYNC_PORT")
    cfg.port = int(port_text) if port_text else cfg.port
    cfg.data_dir = Path(data_dir or _env("CRDT_SYNC_DATA_DIR") or cfg.data_dir)
    cfg.database_url = database_url or _env("CRDT_SYNC_DATABASE_URL")
    stored = load_secrets(cfg.data_dir)
    cfg.jwt_secret = _env("CRDT_SYNC_JWT_SECRET") or stored["jwt_secret"]
    limits_file = _env("CRDT_SYNC_LIMITS_FILE")
    cfg.limits = LimitsConfig.load(Path(limits_file) if limits_file else None)
    keys_file = _env("CRDT_SYNC_JWT_KEYS_FILE")
    if keys_file:
        cfg.jwt_keys, cfg.jwt_signing_kid = load_jwt_keys(Path(keys_file))
    cfg.server_key = bytes.fromhex(_env("CRDT_SYNC_SERVER_KEY") or stored["server_key"])
    types_file = _env("CRDT_SYNC_ENTITY_TYPES")
    if types_file:
        cfg.entity_types = json.loads(Path(types_file).read_text())
    compression = (_env("CRDT_SYNC_WS_COMPRESSION") or "off").lower()
    if compression not in ("on", "off"):
        raise ValueError("CRDT_SYNC_WS_COMPRESSION must be on or off")
    cfg.ws_compression = compression == "on"
    workers = sync_workers if sync_workers is not None else _env("CRDT_SYNC_SYNC_WORKERS")
    if workers is not None:
        try:
            cfg.sync_workers = int(workers)
        except ValueError:
            raise ValueError("CRDT_SYNC_SYNC_WORKERS must be a whole number") from None
        if not 0 <= cfg.sync_workers <= 64:
            raise ValueError("the number of sync workers must be between 0 and 64")
    return cfg


def load_jwt_keys(path: Path) -> tuple[list[JwtKey], str | None]:
    """`{"keys": [{"kid", "alg", "secret" | "public_key_file"}], "signing_kid"?}`: several
    keys at once so they can rotate; `signing_kid` labels tokens signed with jwt_secret."""
    doc = json.loads(path.read_text())
    keys = []
    for entry in doc.get("keys", []):
        if "secret" in entry:
            material = str(entry["secret"])
        else:
            material = (path.parent / entry["public_key_file"]).read_text()
        keys.append(JwtKey(entry.get("kid"), entry["alg"], material))
    return keys, doc.get("signing_kid")
