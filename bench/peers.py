"""The peer servers the benchmarks run side by side with crdt-sync, and a launcher for them.

Each peer is a start script under bench/peers/ that takes `--port N [--host H]`, prints one line
`listening <port>` on stdout once it accepts connections, keeps everything in memory, and exits
0 on SIGTERM/SIGINT. The Node peers' packages are pinned in bench/peers/package.json (`npm ci`
there); pycrdt-websocket is the one installed in this virtual environment.

    with start_peer("hocuspocus") as peer:
        peer.pid, peer.protocol, peer.url_for("doc-1")   # ws://127.0.0.1:PORT

:data:`PEERS` says, per peer, how to start it, where a document's id goes (the URL path, or
inside every message on one URL), and which protocol its clients speak ("y-websocket",
"hocuspocus"; None for an HTTP peer, whose `url_for` is the document's base URL).
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Literal
from urllib.parse import quote

from bench.server_process import free_port, terminate

PEERS_DIR = Path(__file__).resolve().parent / "peers"
NODE_MODULES = PEERS_DIR / "node_modules"
READY_TIMEOUT_S = 30.0
STOP_GRACE_S = 10.0
_LISTENING = re.compile(rb"^listening (\d+)\s*$", re.MULTILINE)


@dataclass(frozen=True)
class PeerSpec:
    """How to run one peer server and how clients reach a document on it."""

    name: str
    runtime: Literal["node", "python"]
    script: str  # under bench/peers/
    scheme: Literal["ws", "http"]
    # "path": one URL per document, its id the last path segment (url_for(doc) = base/doc);
    # "message": one URL for all, the document named inside every message (url_for = base)
    doc_in: Literal["path", "message"]
    protocol: str | None  # what its WebSocket clients speak; None for an HTTP peer
    node_packages: tuple[str, ...] = ()  # needed under bench/peers/node_modules
    python_modules: tuple[str, ...] = ()  # needed in this interpreter
    # the versions that identify it: node packages (bench/peers) or Python distributions
    versions_of: tuple[str, ...] = ()
    about: str = ""

    def argv(self, host: str, port: int) -> list[str]:
        runner = "node" if self.runtime == "node" else sys.executable
        return [runner, str(PEERS_DIR / self.script), "--host", host, "--port", str(port)]


PEERS: dict[str, PeerSpec] = {
    "hocuspocus": PeerSpec(
        name="hocuspocus",
        runtime="node",
        script="hocuspocus.mjs",
        scheme="ws",
        doc_in="message",
        protocol="hocuspocus",
        node_packages=("@hocuspocus/server", "yjs", "ws"),
        versions_of=("@hocuspocus/server", "yjs", "ws"),
        about="Hocuspocus v3 Server, in memory, no auth hook",
    ),
    "y-websocket": PeerSpec(
        name="y-websocket",
        runtime="node",
        script="y-websocket.mjs",
        scheme="ws",
        doc_in="path",
        protocol="y-websocket",
        node_packages=("@y/websocket-server", "yjs", "ws"),
        versions_of=("@y/websocket-server", "yjs", "ws"),
        about="the y-websocket reference server (setupWSConnection over `ws`), in memory",
    ),
    "pycrdt-websocket": PeerSpec(
        name="pycrdt-websocket",
        runtime="python",
        script="pycrdt_ws.py",
        scheme="ws",
        doc_in="path",
        protocol="y-websocket",
        python_modules=("pycrdt.websocket", "hypercorn"),
        versions_of=("pycrdt-websocket", "pycrdt", "hypercorn"),
        about="stock pycrdt-websocket WebsocketServer + ASGIServer on Hypercorn, no store",
    ),
}


def _node_package_version(package: str) -> str | None:
    try:
        meta = json.loads((NODE_MODULES / package / "package.json").read_text())
        return str(meta["version"])
    except (OSError, ValueError, KeyError):
        return None


def _module_present(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        return False


def peer_missing(name: str) -> str | None:
    """Why peer `name` cannot run here, or None when it can."""
    spec = PEERS.get(name)
    if spec is None:
        return f"unknown peer {name!r} (known: {', '.join(PEERS)})"
    if spec.runtime == "node" and shutil.which("node") is None:
        return "node is not installed"
    lacking = [p for p in spec.node_packages if not (NODE_MODULES / p).is_dir()]
    if lacking:
        return f"{NODE_MODULES} lacks {', '.join(lacking)}: run `npm ci` in {PEERS_DIR}"
    gone = [m for m in spec.python_modules if not _module_present(m)]
    if gone:
        return f"{sys.executable} cannot import {', '.join(gone)}"
    return None


def peers_missing(names: list[str] | None = None) -> str | None:
    """Why some of the peers (all by default) cannot run here, or None when all can."""
    reasons = [f"{n}: {r}" for n in (names or list(PEERS)) if (r := peer_missing(n))]
    return "; ".join(reasons) or None


def peer_versions(name: str) -> dict[str, str | None]:
    out: dict[str, str | None] = {}
    spec = PEERS[name]
    for package in spec.versions_of:
        if spec.runtime == "node":
            out[package] = _node_package_version(package)
        else:
            try:
                out[package] = metadata.version(package)
            except metadata.PackageNotFoundError:
                out[package] = None
    return out


class PeerError(RuntimeError):
    """A peer server did not start, or died."""


@dataclass
class RunningPeer:
    spec: PeerSpec
    host: str
    port: int
    proc: subprocess.Popen[bytes]
    log_path: Path
    exit_code: int | None = None
    shutdown_s: float | None = None
    kept_log: Path | None = None
    _stopped: bool = field(default=False, repr=False)

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def pid(self) -> int:
        return self.proc.pid

    @property
    def protocol(self) -> str | None:
        return self.spec.protocol

    @property
    def base_url(self) -> str:
        return f"{self.spec.scheme}://{self.host}:{self.port}"

    def url_for(self, doc: str) -> str:
        """Where a client of document `doc` connects (no token: peers have no auth)."""
        if self.spec.doc_in == "message":
            return self.base_url
        return f"{self.base_url}/{quote(doc, safe='')}"

    def log_tail(self, lines: int = 20) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return "(no log)"
        return "\n".join(text.splitlines()[-lines:]) or "(empty log)"

    def stop(self, grace: float = STOP_GRACE_S) -> None:
        """SIGTERM, then SIGKILL after `grace` seconds; records exit code and shutdown time."""
        if self._stopped:
            return
        self._stopped = True
        shutdown_s = terminate(self.proc, grace)
        self.shutdown_s = shutdown_s
        self.exit_code = self.proc.returncode


def _wait_listening(peer: RunningPeer, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError):
            match = _LISTENING.search(peer.log_path.read_bytes())
            if match:
                if int(match.group(1)) != peer.port:
                    said = match.group(1).decode()
                    raise PeerError(f"{peer.name} listens on {said}, not {peer.port}")
                return
        if peer.proc.poll() is not None:
            raise PeerError(
                f"{peer.name} exited with {peer.proc.returncode} before listening:\n"
                + peer.log_tail()
            )
        time.sleep(0.05)
    raise PeerError(f"{peer.name}: no `listening` line after {timeout:.0f} s:\n{peer.log_tail()}")


@contextlib.contextmanager
def start_peer(
    name: str,
    port: int | None = None,
    host: str = "127.0.0.1",
    ready_timeout: float = READY_TIMEOUT_S,
    stop_grace: float = STOP_GRACE_S,
    keep_failed_log: Path | None = None,
) -> Iterator[RunningPeer]:
    """Run peer `name` on `port` (a free one by default) until the block exits; the process's
    stdout and stderr go to a temporary log (`.log_path`), removed afterwards unless the peer
    exited with another status than 0 and `keep_failed_log` names where to copy it
    (`.kept_log`)."""
    missing = peer_missing(name)
    if missing:
        raise PeerError(missing)
    spec = PEERS[name]
    port = port or free_port()
    workdir = Path(tempfile.mkdtemp(prefix=f"crdt-bench-peer-{name}-"))
    log_path = workdir / "peer.log"
    # the peers take no settings from the environment; keep the benchmark's CRDT_SYNC_* out
    env = {k: v for k, v in os.environ.items() if not k.startswith("CRDT_SYNC_")}
    with log_path.open("wb") as log:
        proc = subprocess.Popen(
            spec.argv(host, port),
            cwd=PEERS_DIR,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # a Ctrl-C of the benchmark must not race our SIGTERM
        )
    peer = RunningPeer(spec=spec, host=host, port=port, proc=proc, log_path=log_path)
    try:
        _wait_listening(peer, ready_timeout)
        yield peer
    finally:
        peer.stop(stop_grace)
        if keep_failed_log is not None and peer.exit_code != 0:
            with contextlib.suppress(OSError):
                keep_failed_log.parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(log_path, keep_failed_log)
                peer.kept_log = keep_failed_log
        shutil.rmtree(workdir, ignore_errors=True)
