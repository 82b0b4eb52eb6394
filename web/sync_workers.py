"""/sync/v1 push, pull and ack in worker processes: the server's second core.

One Python process runs on one core, and HTTP sync is most of what a busy server does (a push
of 100 mutations is ~10 ms of CPU). These three routes need nothing the process holds in
memory (rooms, awareness) beyond the store, so `crdt-sync serve --sync-workers N` starts N
processes that run them on the same store:

- The main process keeps the listening socket, rooms, admin and everything else. For an HTTP
  request to exactly `/sync/v1/push`, `/sync/v1/pull` or `/sync/v1/ack` its ASGI entry
  (`SyncDispatch`, in front of Quart) reads the body and hands the request to a worker over a
  Unix socket pair; the worker runs it through the same Quart app (auth, HMAC, limits, the
  service) and sends back status, headers and body. One device's requests go to the same
  worker while it is up (its rate-limit bucket lives there; a request run in the main process,
  or under a new token, counts against another bucket).
- Writes from several processes: on SQLite each batch holds the file's writer lock
  (storage/inline_sqlite.py); PostgreSQL needs nothing new (design.md §6).
- A worker that dies fails nothing: its requests in flight, and the ones that come until it
  is back, run in the main process (a push that had committed answers `duplicate`, as any
  retry does), and a new worker is started.
- Metrics: /metrics adds the workers' counters to the main process' own.
- Shutdown: the main process stops taking requests and finishes the ones in flight, then
  closes the channels; each worker finishes, commits and exits. Workers ignore SIGINT and
  SIGTERM (a terminal's Ctrl-C or systemd reach the whole group): the main process leads.

Requests and replies cross the socket as length-prefixed pickles; both ends are this program.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import pickle
import signal
import socket
import struct
import sys
from collections.abc import Awaitable, Callable
from typing import Any

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.metrics_core import Metric
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.samples import Sample

from crdt_sync.services import Settings
from storage.engine import single_process_only
from web.config import Config

log = logging.getLogger("crdt_sync.sync_workers")

ROUTES = frozenset({"/sync/v1/push", "/sync/v1/pull", "/sync/v1/ack"})
# The parts of an ASGI HTTP scope a worker needs to rebuild the request.
SCOPE_KEYS = (
    "http_version",
    "method",
    "scheme",
    "path",
    "raw_path",
    "query_string",
    "root_path",
    "headers",
    "client",
    "server",
)
RESPAWN_DELAY_S = 1.0
STOP_TIMEOUT_S = 15.0
START_TIMEOUT_S = 60.0
# A worker that has not answered a request in this long is stuck: it is killed, and the
# request runs in the main process (a push is idempotent per mutation id).
REQUEST_TIMEOUT_S = 120.0
METRICS_TIMEOUT_S = 5.0
_HEADER = struct.Struct("!I")
_INTERNAL = b'{"error": {"code": "internal", "message": "internal error; the incident was logged"}}'

Scope = dict[str, Any]
Receive = Callable[[], Awaitable[dict[str, Any]]]
Send = Callable[[dict[str, Any]], Awaitable[None]]
AsgiApp = Callable[[Scope, Receive, Send], Awaitable[None]]


def _frame(message: tuple[Any, ...]) -> bytes:
    data = pickle.dumps(message, protocol=pickle.HIGHEST_PROTOCOL)
    return _HEADER.pack(len(data)) + data


async def _read(reader: asyncio.StreamReader) -> tuple[Any, ...] | None:
    """The next message, or None at the end of the stream."""
    try:
        (size,) = _HEADER.unpack(await reader.readexactly(_HEADER.size))
        message: tuple[Any, ...] = pickle.loads(await reader.readexactly(size))
    except asyncio.IncompleteReadError:
        return None
    return message


class WorkerLost(Exception):
    """The worker ended before it answered."""


class _Worker:
    def __init__(
        self,
        process: asyncio.subprocess.Process,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
    ) -> None:
        self.process = process
        self.reader = reader
        self.writer = writer
        self.pending: dict[int, asyncio.Future[tuple[Any, ...]]] = {}
        self.ids = itertools.count()
        self.alive = True
        self.listener: asyncio.Task[None] | None = None

    async def call(self, kind: str, *args: Any, timeout: float) -> tuple[Any, ...]:
        if not self.alive:
            raise WorkerLost("the worker has stopped")
        rid = next(self.ids)
        reply: asyncio.Future[tuple[Any, ...]] = asyncio.get_running_loop().create_future()
        self.pending[rid] = reply
        try:
            self.writer.write(_frame((kind, rid, *args)))
            await asyncio.wait_for(self._sent_and(reply), timeout)
            return reply.result()
        except TimeoutError:
            log.error("sync worker pid %d did not answer in %g s; killing it", self.pid, timeout)
            self.kill()
            raise WorkerLost("the worker did not answer") from None
        except (ConnectionError, RuntimeError) as exc:
            raise WorkerLost(str(exc)) from exc
        finally:
            self.pending.pop(rid, None)

    async def _sent_and(self, reply: asyncio.Future[tuple[Any, ...]]) -> None:
        await self.writer.drain()
        await asyncio.shield(reply)

    @property
    def pid(self) -> int:
        return self.process.pid

    def kill(self) -> None:
        with contextlib.suppress(ProcessLookupError):
            self.process.kill()

    async def listen(self) -> None:
        """Route replies to their callers until the worker's end closes."""
        try:
            while (message := await _read(self.reader)) is not None:
                _, rid, *rest = message
                reply = self.pending.get(rid)
                if reply is not None and not reply.done():
                    reply.set_result(tuple(rest))
        except (ConnectionError, OSError):
            pass
        except Exception:  # a garbled channel: this worker is of no use any more
            log.exception("sync worker pid %d: unreadable reply; killing it", self.pid)
            self.kill()
        finally:
            self.alive = False
            self.writer.close()
            for reply in self.pending.values():
                if not reply.done():
                    reply.set_exception(WorkerLost("the worker ended before it answered"))


class SyncWorkers:
    """The worker processes of one server and the channel to each."""

    def __init__(self, config: Config, settings: Settings | None = None) -> None:
        if single_process_only(config.database_url):
            raise ValueError(
                "sync workers need PostgreSQL or a SQLite file path, not an in-memory "
                "database or a file: URI"
            )
        self.config = config
        self.settings = settings
        self.slots: list[_Worker | None] = [None] * config.sync_workers
        self.stopping = False
        self._respawns: set[asyncio.Task[None]] = set()

    async def start(self) -> None:
        started = await asyncio.gather(*(self._spawn() for _ in self.slots), return_exceptions=True)
        failed = [w for w in started if isinstance(w, BaseException)]
        if failed:
            await asyncio.gather(*(self._close(w) for w in started if isinstance(w, _Worker)))
            raise failed[0]
        for index, worker in enumerate(started):
            assert isinstance(worker, _Worker)
            self._install(index, worker)

    async def _spawn(self) -> _Worker:
        ours, theirs = socket.socketpair()
        try:
            process = await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                "web.sync_workers",
                str(theirs.fileno()),
                pass_fds=(theirs.fileno(),),
            )
        finally:
            theirs.close()
        writer: asyncio.StreamWriter | None = None
        try:
            reader, writer = await asyncio.open_unix_connection(sock=ours)
            writer.write(_frame(("config", self.config, self.settings)))
            await writer.drain()
            ready = await asyncio.wait_for(_read(reader), START_TIMEOUT_S)
            if ready is None or ready[0] != "ready":
                raise RuntimeError("a sync worker failed to start (see its log above)")
        except BaseException:  # cancelled too: leave no process or socket behind
            if writer is not None:
                writer.close()
            else:
                ours.close()
            with contextlib.suppress(ProcessLookupError):
                process.kill()
            await asyncio.shield(process.wait())
            raise
        return _Worker(process, reader, writer)

    def _install(self, index: int, worker: _Worker) -> None:
        self.slots[index] = worker
        worker.listener = asyncio.create_task(self._watch(index, worker))

    async def _watch(self, index: int, worker: _Worker) -> None:
        await worker.listen()
        if self.stopping:
            return
        try:
            code = await asyncio.wait_for(worker.process.wait(), STOP_TIMEOUT_S)
        except TimeoutError:  # it closed its end but lives on
            worker.kill()
            code = await worker.process.wait()
        log.warning(
            "sync worker %d (pid %d) ended with %s; starting another",
            index,
            worker.pid,
            code,
        )
        self.slots[index] = None
        task = asyncio.create_task(self._respawn(index))
        self._respawns.add(task)
        task.add_done_callback(self._respawns.discard)

    async def _respawn(self, index: int) -> None:
        while not self.stopping:
            await asyncio.sleep(RESPAWN_DELAY_S)
            try:
                worker = await self._spawn()
            except Exception:
                log.exception("sync worker %d did not start; retrying", index)
                continue
            if self.stopping:
                await self._close(worker)
                return
            self._install(index, worker)
            return

    def pick(self, scope: Scope) -> _Worker | None:
        """The worker for this request's device (by its Authorization header), if it is up."""
        if self.stopping or not self.slots:
            return None
        auth = b""
        for name, value in scope["headers"]:
            if name == b"authorization":
                auth = value
                break
        worker = self.slots[hash(auth) % len(self.slots)]
        return worker if worker is not None and worker.alive else None

    async def forward(self, worker: _Worker, scope: Scope, body: bytes) -> tuple[Any, ...]:
        """(status, headers, body) of the request as the worker answered it."""
        request = {key: scope[key] for key in SCOPE_KEYS if key in scope}
        return await worker.call("http", request, body, timeout=REQUEST_TIMEOUT_S)

    async def metrics(self) -> list[str]:
        """Each live worker's metrics in the Prometheus text format."""
        live = [w for w in self.slots if w is not None and w.alive]
        replies = await asyncio.gather(
            *(w.call("metrics", timeout=METRICS_TIMEOUT_S) for w in live), return_exceptions=True
        )
        texts = []
        for reply in replies:
            if isinstance(reply, WorkerLost):
                continue
            if isinstance(reply, BaseException):
                raise reply
            texts.append(reply[0])
        return texts

    async def stop(self) -> None:
        self.stopping = True
        respawns = list(self._respawns)
        for task in respawns:
            task.cancel()
        await asyncio.gather(*respawns, return_exceptions=True)
        workers = [w for w in self.slots if w is not None]
        self.slots = [None] * len(self.slots)
        await asyncio.gather(*(self._close(w) for w in workers))

    async def _close(self, worker: _Worker) -> None:
        """End of stream: the worker finishes what it has, closes its store, exits."""
        with contextlib.suppress(ConnectionError, RuntimeError):
            worker.writer.close()
        try:
            await asyncio.wait_for(worker.process.wait(), STOP_TIMEOUT_S)
        except TimeoutError:
            log.error("sync worker pid %d did not stop; killing it", worker.pid)
            worker.kill()
            await worker.process.wait()
        if worker.listener is not None:
            worker.listener.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await worker.listener


class SyncDispatch:
    """ASGI entry in front of the Quart app: the sync routes go to a worker when one is up."""

    def __init__(self, app: AsgiApp, workers: Callable[[], SyncWorkers | None], max_body: int):
        self.app = app
        self.workers = workers
        self.max_body = max_body

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        workers = self.workers() if scope["type"] == "http" else None
        if workers is None or scope["path"] not in ROUTES:
            await self.app(scope, receive, send)
            return
        chunks: list[bytes] = []
        size = 0
        while True:
            event = await receive()
            if event["type"] == "http.disconnect":
                return
            chunk = event.get("body", b"")
            chunks.append(chunk)
            size += len(chunk)
            more = bool(event.get("more_body", False))
            if size > self.max_body:  # the app answers 413 as it always does
                await self.app(scope, _replay(b"".join(chunks), more, receive), send)
                return
            if not more:
                break
        body = b"".join(chunks)
        worker = workers.pick(scope)
        if worker is not None:
            try:
                status, headers, payload = await workers.forward(worker, scope, body)
            except WorkerLost:
                pass  # run it here; see the module docstring
            else:
                await send({"type": "http.response.start", "status": status, "headers": headers})
                await send({"type": "http.response.body", "body": payload})
                return
        await self.app(scope, _replay(body, False, receive), send)


def _replay(body: bytes, more: bool, receive: Receive) -> Receive:
    """A receive that gives `body` first, then whatever the client still sends."""
    given = False

    async def replay() -> dict[str, Any]:
        nonlocal given
        if not given:
            given = True
            return {"type": "http.request", "body": body, "more_body": more}
        return await receive()

    return replay


def merged_metrics(own: CollectorRegistry, others: list[str]) -> bytes:
    """One exposition of this process' metrics and the workers': same series add up."""
    families: dict[str, Metric] = {}
    values: dict[tuple[str, str, tuple[tuple[str, str], ...]], Sample] = {}
    sources = [list(own.collect())] + [list(text_string_to_metric_families(t)) for t in others]
    for source in sources:
        for family in source:
            families.setdefault(family.name, family)
            for sample in family.samples:
                key = (family.name, sample.name, tuple(sorted(sample.labels.items())))
                seen = values.get(key)
                if seen is None:
                    values[key] = sample
                elif sample.name.endswith("_created"):
                    values[key] = seen._replace(value=min(seen.value, sample.value))
                else:
                    values[key] = seen._replace(value=seen.value + sample.value)
    merged = []
    for name, family in families.items():
        out = Metric(name, family.documentation, family.type, family.unit)
        out.samples = [s for (fam, _, _), s in values.items() if fam == name]
        merged.append(out)

    class _Merged:
        def collect(self) -> list[Metric]:
            return merged

    registry = CollectorRegistry(auto_describe=False)
    registry.register(_Merged())  # type: ignore[arg-type]
    return generate_latest(registry)


# --- the worker process ---------------------------------------------------------------------


async def _run_request(app: Any, request: Scope, body: bytes) -> tuple[int, list[Any], bytes]:
    scope: Scope = {"type": "http", "asgi": {"version": "3.0"}, "extensions": {}, **request}
    status = 500
    headers: list[Any] = []
    parts: list[bytes] = []

    async def connected() -> dict[str, Any]:
        await asyncio.Event().wait()  # the client stays connected until the answer is sent
        raise AssertionError("unreachable")

    async def send(event: dict[str, Any]) -> None:
        nonlocal status, headers
        if event["type"] == "http.response.start":
            status = event["status"]
            headers = [(bytes(k), bytes(v)) for k, v in event.get("headers", [])]
        elif event["type"] == "http.response.body":
            parts.append(bytes(event.get("body", b"")))

    await app(scope, _replay(body, False, connected), send)
    return status, headers, b"".join(parts)


async def _worker_main(fd: int) -> None:
    reader, writer = await asyncio.open_unix_connection(sock=socket.socket(fileno=fd))
    first = await _read(reader)
    if first is None or first[0] != "config":
        raise SystemExit("sync worker: no configuration from the server")
    config: Config = first[1]
    from web.app import create_app
    from web.cli import tune_gc

    app = create_app(config, settings=first[2], sync_worker=True)
    await app.startup()
    tune_gc()
    writer.write(_frame(("ready",)))
    await writer.drain()
    running: set[asyncio.Task[None]] = set()

    async def answer(message: tuple[Any, ...]) -> None:
        kind, rid, *args = message
        try:
            if kind == "http":
                reply: tuple[Any, ...] = await _run_request(app, args[0], args[1])
            else:
                reply = (app.extensions["crdt_sync"].metrics.render().decode(),)
        except Exception:  # the app answers its own errors; this is a bug, but never a hang
            log.exception("sync worker: request failed outside the app")
            reply = (500, [(b"content-type", b"application/json")], _INTERNAL)
        writer.write(_frame((kind, rid, *reply)))
        with contextlib.suppress(ConnectionError):
            await writer.drain()

    try:
        while (message := await _read(reader)) is not None:
            task = asyncio.create_task(answer(message))
            running.add(task)
            task.add_done_callback(running.discard)
        if running:
            await asyncio.gather(*running, return_exceptions=True)
    finally:
        await app.shutdown()
        writer.close()


def main(argv: list[str]) -> int:
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, signal.SIG_IGN)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    asyncio.run(_worker_main(int(argv[0])))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
