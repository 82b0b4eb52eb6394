"""The crdt-sync server under test as a subprocess, its PostgreSQL database, and CPU sampling.

The server is started exactly as an operator would (`crdt-sync serve …` from the same virtual
environment as the benchmark), with a random HS256 secret in `CRDT_SYNC_JWT_SECRET` so the
benchmark can mint user tokens itself, and stopped with SIGTERM (SIGKILL after a grace period).
"""

from __future__ import annotations

import asyncio
import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

PG_ADMIN_DSN = "postgresql://postgres@127.0.0.1:5432/postgres"
PG_SERVER_URL = "postgresql+asyncpg://postgres@127.0.0.1:5432/{db}"


class ServerError(Exception):
    """The server under test did not start, or died."""


def find_cli() -> Path:
    """`crdt-sync` of the virtual environment that runs this benchmark."""
    cli = Path(sys.executable).parent / "crdt-sync"
    if not cli.exists():
        raise ServerError(f"{cli} not found: install crdt-sync into this venv (make venv)")
    return cli


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# Each simulated device runs a closed loop far faster than a real player would; the
# per-device rate limit (a protection, not a capacity) is lifted so it is not what we measure.
BENCH_LIMITS = {"defaults": {"device_rate_per_s": 1_000_000, "device_burst": 1_000_000}}


def _clean_env(secret: str, data_dir: Path) -> dict[str, str]:
    # Inherited CRDT_SYNC_* settings (a database URL, another secret) must not leak in:
    # the flags name the backend, and the secret is the one the benchmark signs with.
    env = {k: v for k, v in os.environ.items() if not k.startswith("CRDT_SYNC_")}
    env["CRDT_SYNC_JWT_SECRET"] = secret
    limits = data_dir / "bench-limits.json"
    data_dir.mkdir(parents=True, exist_ok=True)
    limits.write_text(json.dumps(BENCH_LIMITS))
    env["CRDT_SYNC_LIMITS_FILE"] = str(limits)
    return env


@dataclass
class ServerProcess:
    data_dir: Path
    database_url: str | None = None
    host: str = "127.0.0.1"
    port: int = 0
    jwt_secret: str = ""
    proc: subprocess.Popen[bytes] | None = None
    exit_code: int | None = None
    shutdown_s: float | None = None
    sync_workers: int = 0  # `crdt-sync serve --sync-workers N`

    @property
    def base_url(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def log_path(self) -> Path:
        return self.data_dir / "server.log"

    def command(self) -> list[str]:
        cmd = [str(find_cli()), "serve", "--host", self.host, "--port", str(self.port)]
        cmd += ["--data-dir", str(self.data_dir)]
        if self.database_url:
            cmd += ["--database-url", self.database_url]
        if self.sync_workers:
            cmd += ["--sync-workers", str(self.sync_workers)]
        return cmd

    def start(self, ready_timeout: float = 60.0) -> None:
        self.port = self.port or free_port()
        self.jwt_secret = self.jwt_secret or secrets.token_urlsafe(32)
        self.data_dir.mkdir(parents=True, exist_ok=True)
        with self.log_path.open("wb") as log:
            self.proc = subprocess.Popen(
                self.command(),
                env=_clean_env(self.jwt_secret, self.data_dir),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # a Ctrl-C of the benchmark must not race our SIGTERM
            )
        self._wait_ready(ready_timeout)

    def _wait_ready(self, timeout: float) -> None:
        assert self.proc is not None
        deadline = time.monotonic() + timeout
        last = "no answer"
        with httpx.Client(base_url=self.base_url, timeout=2.0, trust_env=False) as client:
            while time.monotonic() < deadline:
                if self.proc.poll() is not None:
                    raise ServerError(
                        f"server exited with {self.proc.returncode}\n{self.log_tail()}"
                    )
                try:
                    resp = client.get("/readyz")
                    if resp.status_code == 200:
                        return
                    last = f"HTTP {resp.status_code}"
                except httpx.HTTPError as exc:
                    last = type(exc).__name__
                time.sleep(0.1)
        self.stop()
        raise ServerError(f"/readyz not 200 after {timeout:.0f} s ({last})\n{self.log_tail()}")

    def stop(self, grace: float = 10.0) -> None:
        if self.proc is None or self.exit_code is not None:
            return
        self.shutdown_s = terminate(self.proc, grace)
        self.exit_code = self.proc.returncode

    def log_tail(self, lines: int = 40) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return "(no server log)"
        return "\n".join(text.splitlines()[-lines:])

    def cpu_seconds(self) -> float:
        """CPU time (user + system) of the server process and all its descendants."""
        if self.proc is None:
            return 0.0
        return process_tree_cpu(self.proc.pid)


_TICK = os.sysconf("SC_CLK_TCK")


def _stat_fields(pid: int) -> list[str] | None:
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # the command name (field 2) may contain spaces; everything after its ")" is fixed
    return raw[raw.rindex(")") + 2 :].split()


def process_tree_cpu(root: int) -> float:
    children: dict[int, list[int]] = {}
    ticks: dict[int, int] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        fields = _stat_fields(int(entry))
        if fields is None:
            continue
        # after the name: state(0) ppid(1) … utime(11) stime(12)
        children.setdefault(int(fields[1]), []).append(int(entry))
        ticks[int(entry)] = int(fields[11]) + int(fields[12])
    total, todo = 0, [root]
    while todo:
        pid = todo.pop()
        total += ticks.get(pid, 0)
        todo.extend(children.get(pid, []))
    return total / _TICK


def machine_cpu_ticks() -> tuple[int, int]:
    """(busy, total) jiffies of all cores from /proc/stat."""
    first = Path("/proc/stat").read_text().splitlines()[0].split()[1:]
    values = [int(v) for v in first[:8]]  # user nice system idle iowait irq softirq steal
    idle = values[3] + values[4]
    return sum(values) - idle, sum(values)


# -- PostgreSQL ------------------------------------------------------------------------------


async def _pg_admin(statement: str) -> str:
    import asyncpg

    conn = await asyncpg.connect(PG_ADMIN_DSN, timeout=5)
    try:
        if statement:
            await conn.execute(statement)
        return str(await conn.fetchval("SHOW server_version"))
    finally:
        await conn.close()


def pg_version() -> str | None:
    """The PostgreSQL server version, or None when it is not reachable."""
    try:
        return asyncio.run(_pg_admin(""))
    except (TimeoutError, OSError, ImportError) as exc:
        print(f"note: PostgreSQL at {PG_ADMIN_DSN} not reachable ({exc!r})", file=sys.stderr)
        return None
    except Exception as exc:  # asyncpg's own errors (auth, missing role) have no common base
        print(f"note: PostgreSQL at {PG_ADMIN_DSN} unusable ({exc!r})", file=sys.stderr)
        return None


def create_database() -> tuple[str, str]:
    """Create a fresh `crdt_bench_<random>` database; return (name, server URL)."""
    name = f"crdt_bench_{secrets.token_hex(6)}"
    asyncio.run(_pg_admin(f'CREATE DATABASE "{name}"'))
    return name, PG_SERVER_URL.format(db=name)


def drop_database(name: str) -> None:
    asyncio.run(_pg_admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


def terminate(proc: subprocess.Popen[Any], grace: float) -> float:
    """SIGTERM, then SIGKILL after `grace` seconds; the seconds it took to exit."""
    t0 = time.monotonic()
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    return round(time.monotonic() - t0, 3)
