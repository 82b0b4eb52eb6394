"""The command line contract: `crdt-sync token` and configuration precedence."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import jwt
import pytest

from web.config import build_config

CLI = [sys.executable, "-m", "web.cli"]


def test_token_is_signed_with_the_data_dir_secret(tmp_path: Path) -> None:
    out = subprocess.run(
        [
            *CLI,
            "token",
            "--data-dir",
            str(tmp_path),
            "--tenant",
            "acme",
            "--user",
            "alice",
            "--role",
            "author",
            "--role",
            "admin",
            "--device",
            "d1",
            "--ttl",
            "120",
        ],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    secret = json.loads((tmp_path / "secrets.json").read_text())["jwt_secret"]
    claims = jwt.decode(out, secret, algorithms=["HS256"])
    assert (claims["tid"], claims["sub"], claims["did"]) == ("acme", "alice", "d1")
    assert sorted(claims["roles"]) == ["admin", "author"]
    assert claims["exp"] - claims["iat"] == 120
    assert (tmp_path / "secrets.json").stat().st_mode & 0o077 == 0


def test_env_secret_wins_over_data_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CRDT_SYNC_JWT_SECRET", "from-env-0123456789abcdef0123456789abcdef")
    out = subprocess.run(
        [*CLI, "token", "--data-dir", str(tmp_path), "--tenant", "t", "--user", "u"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    claims = jwt.decode(out, "from-env-0123456789abcdef0123456789abcdef", algorithms=["HS256"])
    assert claims["roles"] == ["learner"]


def test_flags_win_over_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CRDT_SYNC_PORT", "9001")
    monkeypatch.setenv("CRDT_SYNC_HOST", "0.0.0.0")
    monkeypatch.setenv("CRDT_SYNC_DATA_DIR", str(tmp_path / "env"))
    monkeypatch.setenv("CRDT_SYNC_DATABASE_URL", "postgresql://x@h/db")
    from_env = build_config()
    assert (from_env.host, from_env.port, from_env.data_dir) == ("0.0.0.0", 9001, tmp_path / "env")
    assert from_env.database_url == "postgresql://x@h/db"
    flags = build_config("127.0.0.2", 9002, str(tmp_path / "flag"), "sqlite:///x.db")
    assert (flags.host, flags.port, flags.data_dir) == ("127.0.0.2", 9002, tmp_path / "flag")
    assert flags.database_url == "sqlite:///x.db"


def test_unknown_role_is_refused(tmp_path: Path) -> None:
    result = subprocess.run(
        [
            *CLI,
            "token",
            "--data-dir",
            str(tmp_path),
            "--tenant",
            "t",
            "--user",
            "u",
            "--role",
            "root",
        ],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 2
    assert "invalid choice" in result.stderr
