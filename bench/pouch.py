"""pouchdb-server (in memory) as a benchmark peer: start it on a free port, stop it, measure it.

    with pouchdb() as peer:          # node bench/peers/pouchdb.mjs --port N
        print(peer.base_url, peer.pid)

The server is bench/peers/pouchdb.mjs (pouchdb-server 4.2.0's express-pouchdb over
pouchdb-core with the memory adapter, from bench/peers/node_modules; `npm ci` there). It
prints `listening <port>` when it is ready and exits on SIGTERM. `PouchProcess` has the
interface `bench.http_sync` measures a server by (`base_url`, `cpu_seconds()`, `stop()`,
`exit_code`, `shutdown_s`, `log_tail()`); the launcher of bench/peers.py can wrap it.
"""

from __future__ import annotations

import json
import os
import select
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from bench import server_process

PEERS_DIR = Path(__file__).resolve().parent / "peers"
SCRIPT = PEERS_DIR / "pouchdb.mjs"
MODULES = PEERS_DIR / "node_modules"
# what pouchdb.mjs requires (pouchdb-server's own dependencies; the CLI itself is not used)
REQUIRED = (
    "pouchdb-server",
    "express",
    "express-pouchdb",
    "pouchdb-core",
    "pouchdb-adapter-http",
    "pouchdb-adapter-memory",
    "pouchdb-replication",
    "pouchdb-mapreduce",
    "memdown",
)


class PouchError(Exception):
    """pouchdb-server could not be started, or died."""


def pouch_missing() -> str | None:
    """Why pouchdb-server cannot run here, or None when it can."""
    if shutil.which("node") is None:
        return "node is not installed"
    missing = [p for p in REQUIRED if not (MODULES / p / "package.json").is_file()]
    if missing:
        return f"{MODULES} lacks {', '.join(missing)}: run `npm ci` in {PEERS_DIR}"
    return None


def versions() -> dict[str, str | None]:
    """node and the pouchdb packages that serve the requests."""
    out: dict[str, str | None] = {}
    try:
        node = subprocess.run(["node", "--version"], capture_output=True, text=True, check=True)
        out["node"] = node.stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        out["node"] = None
    for pkg in ("pouchdb-server", "express-pouchdb", "pouchdb-core", "pouchdb-adapter-memory"):
        try:
            meta = json.loads((MODULES / pkg / "package.json").read_text())
            out[pkg] = str(meta["version"])
        except (OSError, ValueError, KeyError):
            out[pkg] = None
    return out


@dataclass
class PouchProcess:
    """One pouchdb-server process; `start()` it, `stop()` it (or use `pouchdb()`)."""

    host: str = "127.0.0.1"
    port: int = 0
    mode: str = "full"  # express-pouchdb's fullCouchDB (what the CLI serves) or "minimum"
    proc: subprocess.Popen[bytes] | None = None
    exit_code: int | None = None
    shutdown_s: float | None = None
    log_dir: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="pouch-")))

    @property
    def base_url(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc is not None else None

    @property
    def log_path(self) -> Path:
        return self.log_dir / "pouchdb.log"

    def command(self) -> list[str]:
        return [
            "node",
            str(SCRIPT),
            "--host",
            self.host,
            "--port",
            str(self.port),
            "--mode",
            self.mode,
            "--exit-with-parent",
        ]

    def start(self, ready_timeout: float = 30.0) -> None:
        missing = pouch_missing()
        if missing:
            raise PouchError(missing)
        self.port = self.port or server_process.free_port()
        with self.log_path.open("wb") as log:
            self.proc = subprocess.Popen(
                self.command(),
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=log,
                start_new_session=True,  # a Ctrl-C of the benchmark must not race our SIGTERM
            )
        self._wait_listening(ready_timeout)
        self._check_root()

    def _wait_listening(self, timeout: float) -> None:
        assert self.proc is not None and self.proc.stdout is not None
        deadline = time.monotonic() + timeout
        buf = b""
        fd = self.proc.stdout.fileno()
        while b"\n" not in buf:
            left = deadline - time.monotonic()
            if left <= 0:
                self.stop()
                raise PouchError(f"no `listening` line after {timeout:.0f} s\n{self.log_tail()}")
            ready, _, _ = select.select([fd], [], [], min(left, 0.2))
            if ready:
                chunk = os.read(fd, 4096)
                if not chunk:
                    self.stop()
                    raise PouchError(f"pouchdb-server exited ({self.exit_code})\n{self.log_tail()}")
                buf += chunk
        line = buf.split(b"\n", 1)[0].decode(errors="replace").split()
        if len(line) != 2 or line[0] != "listening" or not line[1].isdigit():
            self.stop()
            raise PouchError(f"unexpected first line {buf[:200]!r}\n{self.log_tail()}")
        self.port = int(line[1])

    def _check_root(self) -> None:
        with httpx.Client(base_url=self.base_url, timeout=5.0, trust_env=False) as client:
            try:
                resp = client.get("/")
            except httpx.HTTPError as exc:
                self.stop()
                raise PouchError(f"GET / failed: {exc!r}\n{self.log_tail()}") from None
        if resp.status_code != 200 or "pouchdb-adapters" not in resp.text:
            self.stop()
            raise PouchError(f"GET / answered {resp.status_code} {resp.text[:200]}")

    def stop(self, grace: float = 10.0) -> None:
        if self.proc is None or self.exit_code is not None:
            return
        shutdown_s = server_process.terminate(self.proc, grace)
        if self.proc.stdout is not None:
            self.proc.stdout.close()
        self.shutdown_s = shutdown_s
        self.exit_code = self.proc.returncode

    def log_tail(self, lines: int = 40) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return "(no pouchdb-server log)"
        return "\n".join(text.splitlines()[-lines:]) or "(empty pouchdb-server log)"

    def cpu_seconds(self) -> float:
        """CPU time (user + system) of the server process and all its descendants."""
        if self.proc is None:
            return 0.0
        return server_process.process_tree_cpu(self.proc.pid)

    def cleanup(self) -> None:
        shutil.rmtree(self.log_dir, ignore_errors=True)


@contextmanager
def pouchdb(mode: str = "full", ready_timeout: float = 30.0) -> Iterator[PouchProcess]:
    """A running in-memory pouchdb-server on a free port of 127.0.0.1; stopped afterwards."""
    peer = PouchProcess(mode=mode)
    try:
        peer.start(ready_timeout)
        yield peer
    finally:
        peer.stop()
        peer.cleanup()
