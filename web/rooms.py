"""Yjs rooms: one in-memory `pycrdt.Doc` per (tenant, doc id), durable in the shared store.

Theory of operation
- Joining is race-free: the room object enters the registry synchronously, before any await,
  and every joiner awaits the same `ready` event (stock pycrdt-websocket can leave a second
  simultaneous joiner waiting forever on the room's start lock; design.md §5).
- Every accepted update goes through the room's single flusher, which takes everything queued
  (group commit), applies it to the doc, writes the updates, any pre-merge snapshot and the
  doc's `ydoc` change-log entry in ONE transaction, and only then forwards the updates to the
  other clients, all of them merged into one message per flush. Whatever a client has
  received is therefore stored.
- Sync step 2 answers are built under the same lock, so they never contain an update that is
  applied but not yet stored.
- A *merge* (design.md §4) is a connection whose sync step 1 state vector both lacks
  operations the server has and has operations the server lacks (an editor reconnecting
  after offline edits); its first update that brings something new archives the full
  pre-merge state first. Live keystrokes of a synced editor never qualify: their operations
  are newer than the state vector the editor announced.
- Each client has a bounded send queue; a client that falls behind is disconnected (it
  resyncs on reconnect) rather than letting memory grow.
- A room with no clients unloads after a grace period, once its updates are stored;
  compaction into a checkpoint runs in the background through a `Doc` (never
  `merge_updates`) in a worker process, at most once per `compact_min_interval_s` per room.
"""

from __future__ import annotations

import asyncio
import base64
import collections
import contextlib
import logging
import multiprocessing
from collections.abc import Awaitable, Callable, Coroutine
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

from pycrdt import Doc, merge_updates

from crdt_sync import ydoc
from crdt_sync.model import EntityKey, EntityState
from crdt_sync.ports import Snapshot
from crdt_sync.registry import YDOC_TYPE
from crdt_sync.services import new_snapshot_id
from crdt_sync.vector_clock import SERVER_NODE, VectorClock
from protocol import yprotocol as yp
from web.ws_direct import DirectSocket, binary_frame

log = logging.getLogger("crdt_sync.rooms")

CLOSE_PROTOCOL_ERROR = 4400  # garbage or truncated message (stock clients do not retry)
CLOSE_REVOKED = 4401  # the device was revoked
CLOSE_TOO_SLOW = 1013  # "try again later": the send queue overflowed
CLOSE_SERVER_ERROR = 1011
CLOSE_GOING_AWAY = 1001
CLOSE_TOO_BIG = 1009  # over the tenant's message size limit
MAX_QUEUED_UPDATES = 256
# awareness copies clients send back, recognised without parsing: kept for this many relays,
# with the "own entry left out" variants of a relay while hashing them all stays under this
# many bytes (a relay of n entries has n variants of its own size: the cost is quadratic)
ECHO_RELAYS = 8
ECHO_VARIANT_BYTES = 1 << 20
# client ids one connection may speak for (a y-websocket client has one; a page with several
# documents on one provider, a few); beyond it the connection is refused as a protocol error
MAX_AWARENESS_IDS = 64
# how long the last clock of a client that left is kept (late copies of its state come from
# other clients' echoes within a relay or two, and its own reconnect within seconds)
DEPARTED_KEEP_S = 60.0
# direct writes: a client whose socket buffer drains below this is keeping up, and its count
# of messages behind starts again
DIRECT_LOW_WATER = 64 * 1024


@dataclass
class RoomSettings:
    send_queue: int = 2048  # messages queued for one client
    send_queue_bytes: int = 32 * 1024 * 1024  # and their bytes: whichever fills first
    # write each client's socket from the room (one frame for all, see ws_direct) where the
    # server allows it; off: a queue and a send task per client through the ASGI send
    direct_writes: bool = True
    unload_after_s: float = 30.0
    awareness_tick_s: float = 0.05  # awareness changes: one relay per room this often
    awareness_renew_s: float = 10.0  # unchanged renewals: this often (y-protocols expires at 30 s)
    flush_interval_s: float = 0.005  # at most one group commit (and broadcast) this often
    compact_every: int = 500  # updates in the log tail before a checkpoint is written
    # and at most one automatic compaction per room this often: each one re-encodes the whole
    # document, so a busy room would otherwise spend its CPU re-compacting every few seconds
    compact_min_interval_s: float = 10.0
    archive_retention_s: float = 30 * 86400.0


def _resolve(future: asyncio.Future[bool], value: bool) -> None:
    if not future.done():
        future.set_result(value)


_compactor: ProcessPoolExecutor | None = None


async def run_compaction(updates: list[bytes], checkpoint: bytes | None) -> bytes:
    """`ydoc.compact` in a worker process. It is CPU-bound Python (it parses every update);
    in a thread it would hold the GIL in 5 ms slices against the event loop, and every socket
    write of a busy room (each releases and retakes the GIL) would wait for one: compaction
    of a 50-editor room tripled its p95 propagation latency that way (docs/benchmarks.md)."""
    global _compactor
    if _compactor is None:
        _compactor = ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn"))
    loop = asyncio.get_running_loop()
    try:
        return await loop.run_in_executor(_compactor, ydoc.compact, updates, checkpoint)
    except BrokenProcessPool:
        _compactor = None  # the worker died (OOM?): a new one next time
        raise


class Peer:
    """One connected client as the room sees it (transport-agnostic)."""

    def __init__(
        self,
        send: Callable[[bytes], Awaitable[None]],
        close: Callable[[int, str], Awaitable[None]],
        *,
        writable: bool,
        device_id: str | None,
        user_id: str,
        queue_size: int,
        queue_bytes: int = 32 * 1024 * 1024,
        direct: DirectSocket | None = None,
    ) -> None:
        self._send = send
        self._direct = direct
        self._max_messages = queue_size
        self._max_bytes = queue_bytes
        self.queued_bytes = 0
        self._backlog = 0  # direct: messages written while the socket buffer was not empty
        self._close = close
        self.writable = writable
        self.device_id = device_id
        self.user_id = user_id
        self.queue: asyncio.Queue[bytes | None] = asyncio.Queue(queue_size)
        self.awareness_ids: set[int] = set()
        self.pending_merge = False
        self.closed = False
        self.sender: asyncio.Task[None] | None = None

    @property
    def writes_directly(self) -> bool:
        return self._direct is not None

    def start(self) -> None:
        if self._direct is None:  # a direct socket is written in place: no send task
            self.sender = asyncio.create_task(self._pump())

    async def _pump(self) -> None:
        while True:
            message = await self.queue.get()
            if message is None:
                return
            self.queued_bytes -= len(message)
            try:
                await self._send(message)
            except Exception:  # the socket is gone; the receive side cleans up
                return

    def offer(self, message: bytes, frame: bytes | None = None) -> bool:
        """Send a message (`frame`: it already framed, see `ws_direct`); False when the client
        is too far behind (count or bytes), and the caller closes it."""
        if self.closed:
            return True
        if self._direct is not None:
            return self._write(self._direct, binary_frame(message) if frame is None else frame)
        if self.queued_bytes + len(message) > self._max_bytes:
            return False
        try:
            self.queue.put_nowait(message)
        except asyncio.QueueFull:
            return False
        self.queued_bytes += len(message)
        return True

    def _write(self, direct: DirectSocket, frame: bytes) -> bool:
        """The same bound as the queue's: what the transport holds beyond the kernel's buffer
        is this client's backlog, in bytes and in messages written since it last emptied."""
        if not direct.open():  # closing: the receive side cleans up
            return True
        buffered = direct.buffered()
        if buffered <= DIRECT_LOW_WATER:
            self._backlog = 0
        elif self._backlog >= self._max_messages or buffered + len(frame) > self._max_bytes:
            return False
        else:
            self._backlog += 1
        direct.write(frame)
        return True

    @property
    def unsent_bytes(self) -> int:
        """What is written or queued for this client and not yet taken by its socket."""
        return self._direct.buffered() if self._direct is not None else self.queued_bytes

    def abort(self) -> None:
        """Drop a client that does not even take its close frame (direct writes: with what its
        socket still buffers; queued: the handler ending closes the connection)."""
        self.closed = True
        if self._direct is not None:
            self._direct.abort()

    async def close(self, code: int, reason: str) -> None:
        if self.closed:
            return
        self.closed = True
        if self.sender is not None and self.sender is not asyncio.current_task():
            # What is still queued is moot once we close (the client resyncs); and a sender
            # stuck on a full socket holds the transport, which would keep the close frame out.
            self.sender.cancel()
        with contextlib.suppress(Exception):
            await self._close(code, reason)

    async def stop(self) -> None:
        self.closed = True
        if self.sender is not None:
            self.sender.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self.sender


@dataclass
class _Pending:
    update: bytes
    origin: Peer | None
    source: str
    archive_reason: str | None
    device_id: str
    snapshot_id: str
    done: asyncio.Future[bool] = field(
        default_factory=lambda: asyncio.get_running_loop().create_future()
    )


class Room:
    def __init__(self, manager: RoomManager, tenant_id: str, doc_id: str) -> None:
        self.manager = manager
        self.tenant_id = tenant_id
        self.doc_id = doc_id
        self.doc: Doc[Any] = Doc()
        self.peers: set[Peer] = set()
        # client id -> (clock, state JSON as its client sent it) of the clients present, and
        # the last clock of every client seen (also those gone: y-protocols keeps them too, so
        # a late copy of an old state cannot bring a client back)
        self.awareness: dict[int, tuple[int, bytes]] = {}
        self._awareness_clocks: dict[int, int] = {}
        self._awareness_owner: dict[int, Peer] = {}  # the connection that sent each state
        self._departed: dict[int, float] = {}  # client id -> when it left, oldest first
        self._awareness_changed: dict[int, tuple[int, bytes]] = {}
        self._echoes: collections.deque[set[int]] = collections.deque(maxlen=ECHO_RELAYS)
        self._awareness_renewed: set[int] = set()
        self._awareness_tick: asyncio.TimerHandle | None = None
        self._awareness_renewal: asyncio.TimerHandle | None = None
        self.ready = asyncio.Event()
        self.failed: BaseException | None = None
        self.lock = asyncio.Lock()
        self._pending: list[_Pending] = []
        self._wake = asyncio.Event()
        self._flusher: asyncio.Task[None] | None = None
        self._unload: asyncio.TimerHandle | None = None
        self._compacting: asyncio.Task[None] | None = None
        self._compacted_at = float("-inf")
        self.tail_updates = 0
        self.last_update_id = 0
        self._tasks: set[asyncio.Task[Any]] = set()

    def _spawn(self, coro: Coroutine[Any, Any, Any]) -> None:
        """Run a side task (closing a peer) without awaiting it in the hot path."""
        task = asyncio.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # -- lifecycle ----------------------------------------------------------------------

    async def load(self) -> None:
        try:
            checkpoint, updates = await self.manager.store.load_doc(self.tenant_id, self.doc_id)
            if checkpoint is not None:
                self.doc.apply_update(checkpoint)
            for item in updates:
                self.doc.apply_update(item.update)
            self.tail_updates = len(updates)
            self.last_update_id = updates[-1].id if updates else 0
            self._flusher = asyncio.create_task(self._flush_forever())
        except BaseException as exc:
            self.failed = exc
            raise
        finally:
            self.ready.set()

    async def close(self, code: int = CLOSE_GOING_AWAY, reason: str = "server shutdown") -> None:
        """Store everything queued, then disconnect everyone."""
        await self.drain()
        for peer in list(self.peers):
            await peer.close(code, reason)
        # Updates that arrived while the peers were being closed: store them too, or the
        # flusher would be cancelled in the middle of writing them.
        await self.drain()
        self._stop_awareness()
        if self._flusher is not None:
            self._flusher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._flusher
        if self._compacting is not None:
            with contextlib.suppress(Exception):
                await self._compacting

    async def drain(self) -> None:
        """Wait until every update queued so far is stored (or failed)."""
        waiting = [p.done for p in self._pending]
        if waiting:
            await asyncio.gather(*waiting, return_exceptions=True)
        async with self.lock:
            pass

    # -- updates ------------------------------------------------------------------------

    def submit(
        self,
        update: bytes,
        origin: Peer | None,
        source: str,
        archive_reason: str | None = None,
        device_id: str = "",
        snapshot_id: str | None = None,
    ) -> asyncio.Future[bool]:
        """Queue an update for the flusher; the future is True once it is stored and
        forwarded, False if it was invalid."""
        item = _Pending(
            update, origin, source, archive_reason, device_id, snapshot_id or new_snapshot_id()
        )
        self._pending.append(item)
        self._wake.set()
        return item.done

    async def _flush_forever(self) -> None:
        loop = asyncio.get_running_loop()
        interval = self.manager.settings.flush_interval_s
        last = float("-inf")
        while True:
            await self._wake.wait()
            # At most one flush per `flush_interval_s`: a lone keystroke goes out at once, a
            # busy room gathers what arrives meanwhile into one transaction and one message
            # per client instead of many small ones (each costs a commit and a send per peer).
            wait = last + interval - loop.time()
            if wait > 0:
                await asyncio.sleep(wait)
            last = loop.time()
            self._wake.clear()
            batch, self._pending = self._pending, []
            if not batch:
                continue
            try:
                await self._flush(batch)
            except Exception:  # never let the flusher die silently: drop the room instead
                log.exception("room %s/%s failed; dropping it", self.tenant_id, self.doc_id)
                self._drop(batch, "the room failed", "room failure")
                return

    async def _flush(self, batch: list[_Pending]) -> None:
        metrics = self.manager.metrics
        async with self.lock:
            accepted: list[_Pending] = []
            snapshots: list[Snapshot] = []
            now = self.manager.clock.now()
            for item in batch:
                origin = item.origin
                want_archive = item.archive_reason or (
                    "merge" if origin is not None and origin.pending_merge else None
                )
                before_state = self.doc.get_state() if want_archive else b""
                before_full = self.doc.get_update() if want_archive else b""
                parsed = False
                try:
                    # The full parse refuses what would crash yrs (absurd nesting) or is not
                    # an update at all, before the room's document sees it.
                    info = ydoc.update_info(item.update)
                    parsed = True
                    if not info.structs and not info.deletes and not item.archive_reason:
                        # An empty update (a synced writer's sync step 2): nothing to store.
                        _resolve(item.done, True)
                        continue
                    self.doc.apply_update(item.update)
                except (KeyboardInterrupt, SystemExit):
                    raise
                except BaseException:  # yrs raises ValueError, RuntimeError, even panics
                    # (synchronous code: no cancellation can be swallowed here)
                    _resolve(item.done, False)
                    if origin is not None:
                        self._spawn(origin.close(CLOSE_PROTOCOL_ERROR, "invalid update"))
                    if parsed:
                        # yrs may have integrated part of it (or kept parts pending) before
                        # failing: rebuild from the store plus what this batch accepted, so
                        # memory never holds operations the store lacks.
                        try:
                            self.doc = await self._rebuilt([a.update for a in accepted])
                        except Exception:  # memory may be ahead of the store: drop the room
                            log.exception("rebuilding %s/%s failed", self.tenant_id, self.doc_id)
                            self._drop([], "", "storage failure")
                    continue
                if want_archive and (item.archive_reason or self.doc.get_state() != before_state):
                    snapshots.append(
                        self._snapshot(
                            item.snapshot_id, before_full, want_archive, item.device_id, now
                        )
                    )
                    metrics.doc_merges.labels(item.source).inc()
                    if origin is not None:
                        origin.pending_merge = False
                accepted.append(item)
            if not accepted:
                return
            try:
                await self._persist([a.update for a in accepted], snapshots, now)
            except BaseException as exc:
                # Memory is now ahead of the store: drop the room, clients resend on reconnect.
                log.exception("storing updates of %s/%s failed", self.tenant_id, self.doc_id)
                self._drop(accepted, "the update could not be stored", "storage failure")
                if isinstance(exc, asyncio.CancelledError):
                    raise
                return
            self._broadcast_batch(accepted)
            for item in accepted:
                metrics.doc_updates.labels(item.source).inc()
                _resolve(item.done, True)
        settings = self.manager.settings
        if (
            self.tail_updates >= settings.compact_every
            and self._compacting is None
            and asyncio.get_running_loop().time() - self._compacted_at
            >= settings.compact_min_interval_s
        ):
            self._compacting = asyncio.create_task(self._compact())

    def _drop(self, waiting: list[_Pending], error: str, reason: str) -> None:
        """Memory may be ahead of the store: fail what waits, forget the room and close its
        clients (1011); they resync from the store on reconnect."""
        for item in waiting:
            if not item.done.done():
                item.done.set_exception(RuntimeError(error))
        self.manager.discard(self)
        for peer in list(self.peers):
            self._spawn(peer.close(CLOSE_SERVER_ERROR, reason))

    def _broadcast_batch(self, accepted: list[_Pending]) -> None:
        """Forward what one flush stored as ONE update message to every client.

        The cost of a room is messages x clients (every message is a frame, a socket write
        and a client-side transaction per receiver), so a flush that stored k updates sends one
        merged update instead of k. Batches grow exactly when the room is busy (more arrives
        while a flush is being stored), which keeps the cost per tick, not per keystroke.
        An origin receives its own update back only inside a merge with others' (Yjs
        ignores what it already has), never alone."""
        updates = [item.update for item in accepted]
        origins = {item.origin for item in accepted}
        update = updates[0] if len(updates) == 1 else merge_updates(*updates)
        self.broadcast(yp.sync_update(update), exclude=origins.pop() if len(origins) == 1 else None)

    async def _rebuilt(self, unstored: list[bytes]) -> Doc[Any]:
        """A fresh Doc of what is stored plus `unstored` (under the lock)."""
        checkpoint, updates = await self.manager.store.load_doc(self.tenant_id, self.doc_id)
        doc: Doc[Any] = Doc()
        for update in ([checkpoint] if checkpoint else []) + [u.update for u in updates] + unstored:
            doc.apply_update(update)
        return doc

    def _snapshot(
        self, snapshot_id: str, content: bytes, reason: str, device_id: str, now: Any
    ) -> Snapshot:
        return Snapshot(
            snapshot_id=snapshot_id,
            tenant_id=self.tenant_id,
            kind="doc",
            entity_type=YDOC_TYPE,
            entity_id=self.doc_id,
            owner="",
            created_at=now,
            expires_at=now + timedelta(seconds=self.manager.settings.archive_retention_s),
            reason=reason,
            content=content,
            device_id=device_id,
        )

    async def _persist(self, updates: list[bytes], snapshots: list[Snapshot], now: Any) -> None:
        key = EntityKey(self.tenant_id, YDOC_TYPE, self.doc_id, "")
        state_vector = base64.urlsafe_b64encode(self.doc.get_state()).rstrip(b"=").decode()
        async with self.manager.store.write(self.tenant_id, now) as tx:
            for snap in snapshots:
                await tx.archive(snap)
            self.last_update_id = await tx.append_doc_updates(self.doc_id, updates)
            stored = (await tx.get_entities([key])).get(key)
            clock = (stored.clock if stored else VectorClock()).increment(SERVER_NODE)
            ms = int(now.timestamp() * 1000)
            await tx.put_entity(
                EntityState(key, {"state_vector": state_vector}, clock, False, ms, "")
            )
        self.tail_updates += len(updates)

    async def _compact(self) -> None:
        """Fold the stored tail into a new checkpoint, from the store's own rows (so nothing
        in memory but not yet stored can slip in), through a Doc in a worker process."""
        self._compacted_at = asyncio.get_running_loop().time()
        try:
            checkpoint, updates = await self.manager.store.load_doc(self.tenant_id, self.doc_id)
            if updates:
                merged = await run_compaction([u.update for u in updates], checkpoint)
                await self.manager.store.compact_doc(
                    self.tenant_id, self.doc_id, merged, updates[-1].id, self.manager.clock.now()
                )
                self.tail_updates = max(0, self.tail_updates - len(updates))
        except Exception:
            log.exception("compacting %s/%s failed; retried later", self.tenant_id, self.doc_id)
        finally:
            self._compacting = None

    async def compact_now(self) -> None:
        await self.drain()
        if self._compacting is not None:
            await self._compacting
        self._compacting = asyncio.create_task(self._compact())
        await self._compacting

    def broadcast(self, message: bytes, exclude: Peer | None = None) -> None:
        frame = binary_frame(message)  # encoded once for every directly written client
        for peer in list(self.peers):
            if peer is exclude or peer.closed:
                continue
            if not peer.offer(message, frame):
                self._spawn(peer.close(CLOSE_TOO_SLOW, "send queue overflow"))

    # -- connections --------------------------------------------------------------------

    async def greet(self, peer: Peer) -> None:
        """What the server sends first: its sync step 1 and the current awareness."""
        peer.offer(yp.sync_step1(self.doc.get_state()))
        self._send_awareness(peer)

    def _send_awareness(self, peer: Peer) -> None:
        if self.awareness:
            payload = self._awareness_payload(list(self.awareness.items()), own_left_out=False)
            peer.offer(yp.awareness_message(payload))

    async def receive(self, peer: Peer, data: bytes) -> None:
        """Handle one message from a client; raises YProtocolError on garbage."""
        message = yp.decode(data)
        if message.type is yp.MessageType.SYNC:
            if message.sync_type is yp.SyncType.STEP1:
                await self._answer_step1(peer, message.payload)
            elif not peer.writable:
                self.manager.metrics.readonly_dropped.inc()
            else:
                done = self.submit(
                    message.payload, peer, "websocket", device_id=peer.device_id or ""
                )
                if len(self._pending) > MAX_QUEUED_UPDATES:
                    # Back-pressure: stop reading this socket until it is stored. Shielded: the
                    # future belongs to the flusher, and cancelling it (this handler closing)
                    # must not break the flusher's set_result.
                    await asyncio.shield(done)
        elif message.type is yp.MessageType.AWARENESS:
            self._receive_awareness(peer, message.payload)
        elif message.type is yp.MessageType.QUERY_AWARENESS:
            self._send_awareness(peer)

    async def _answer_step1(self, peer: Peer, state_vector: bytes) -> None:
        client = yp.decode_state_vector(state_vector)
        async with self.lock:
            server = yp.decode_state_vector(self.doc.get_state())
            try:
                diff = self.doc.get_update(state_vector)
            except ValueError:
                raise yp.YProtocolError("invalid state vector") from None
        client_ahead = any(clock > server.get(c, 0) for c, clock in client.items())
        server_ahead = any(clock > client.get(c, 0) for c, clock in server.items())
        peer.pending_merge = peer.writable and client_ahead and server_ahead
        peer.offer(yp.sync_step2(diff))

    # Awareness follows y-protocols: an entry counts only with a clock above the last one
    # seen for its client (or the same clock and a null state: a removal). Every y-websocket
    # client sends back each awareness update it is relayed (its provider broadcasts every
    # awareness "update", not only local ones), so most entries a room receives are copies of
    # what it sent; they change nothing, and their JSON is not even parsed.

    def _receive_awareness(self, peer: Peer, payload: bytes) -> None:
        if peer.awareness_ids and any(hash(payload) in echoes for echoes in self._echoes):
            # the copy of a relay that this client was expected to send back (not so the first
            # message of a connection: a client back from a lost one announces its own state,
            # which may be the very bytes relayed before; see `returning` below)
            return
        clocks = self._awareness_clocks
        news: list[tuple[int, int, bytes, bool]] = []
        returning: list[int] = []
        for cid, clock, raw in yp.read_awareness(payload):
            known = clocks.get(cid, 0)
            present = cid in self.awareness
            removal = raw.strip() == b"null"
            if clock > known or (clock == known and removal and present):
                # refuses what is not JSON, before anything of the message is applied
                news.append((cid, clock, raw, removal or yp.awareness_state(raw) is None))
            elif not removal and not present and cid in self._departed:
                returning.append(cid)
        claimed = {cid for cid, _, _, removal in news if not removal} - peer.awareness_ids
        if len(peer.awareness_ids) + len(claimed) > MAX_AWARENESS_IDS:
            raise yp.YProtocolError("too many awareness client ids on one connection")
        now = asyncio.get_running_loop().time()
        for cid, clock, raw, removal in news:
            present_entry = self.awareness.get(cid)
            if removal:
                if present_entry is None and cid not in clocks:
                    continue  # never seen: nothing to remember it by
                clocks[cid] = clock
                if present_entry is not None:
                    self._depart(cid, now)
                    self._awareness_changed[cid] = (clock, b"null")
                continue
            clocks[cid] = clock
            self._departed.pop(cid, None)
            owner = self._awareness_owner.get(cid)
            if owner is not peer:
                if owner is not None:
                    owner.awareness_ids.discard(cid)
                self._awareness_owner[cid] = peer
                peer.awareness_ids.add(cid)
            self.awareness[cid] = (clock, raw)
            if present_entry is None or present_entry[1] != raw:
                self._awareness_changed[cid] = (clock, raw)
            else:  # a renewal: same state, next clock (every 15 s per client)
                self._awareness_renewed.add(cid)
        if returning:
            # A client back from a lost connection announces its state with the clock it had,
            # which its removal here already passed: y-protocols would ignore it until its
            # second renewal (30 s). Told it was removed at that clock, a y-protocols client
            # re-announces itself at once with the next one.
            removed = [yp.awareness_entry(cid, clocks[cid], b"null") for cid in returning]
            peer.offer(yp.awareness_message(yp.awareness_update(removed)))
        self._schedule_awareness()

    def leave_awareness(self, peer: Peer) -> None:
        # a peer's awareness_ids are exactly the present states it owns (`_depart` and a change
        # of owner take an id out of its set)
        now = asyncio.get_running_loop().time()
        for cid in list(peer.awareness_ids):
            clock = self.awareness[cid][0] + 1
            self._awareness_clocks[cid] = clock
            self._awareness_changed[cid] = (clock, b"null")
            self._depart(cid, now)
        self._schedule_awareness()

    def _depart(self, cid: int, now: float) -> None:
        """`cid` is no longer present; its last clock is kept for `DEPARTED_KEEP_S`, and the
        clocks of clients gone longer than that are forgotten (a busy room sees many)."""
        self.awareness.pop(cid, None)
        owner = self._awareness_owner.pop(cid, None)
        if owner is not None:
            owner.awareness_ids.discard(cid)
        self._departed.pop(cid, None)
        self._departed[cid] = now
        for old, since in list(self._departed.items()):
            if now - since < DEPARTED_KEEP_S:
                break
            del self._departed[old]
            self._awareness_clocks.pop(old, None)

    def _awareness_payload(
        self, entries: list[tuple[int, tuple[int, bytes]]], *, own_left_out: bool
    ) -> bytes:
        """The awareness update of `entries`, noting what its receivers will send back: the
        same bytes (states are relayed as their clients wrote them, and a client re-encodes a
        state to exactly those bytes), or, for a relay, the same with each receiver's own entry
        left out (a client does not take its own state from a relay). Kept for a few relays."""
        parts = [yp.awareness_entry(cid, clock, raw) for cid, (clock, raw) in entries]
        payload = yp.awareness_update(parts)
        echoes = {hash(payload)}
        if own_left_out and len(parts) > 1 and len(payload) * len(parts) <= ECHO_VARIANT_BYTES:
            shorter = yp.varuint(len(parts) - 1)
            for i in range(len(parts)):
                echoes.add(hash(shorter + b"".join(parts[:i]) + b"".join(parts[i + 1 :])))
        self._echoes.append(echoes)
        return payload

    # Awareness is relayed in batches. Relaying every message to every client at once is
    # O(clients^2) per room: 10,000 idle clients in rooms of 100 renew their state every 15 s,
    # 66,000 relays a second for nothing. Changes (a join, a leave, a moved cursor) go out
    # within `awareness_tick_s`, all of a room's in one message; renewals, whose only purpose
    # is to keep a state from expiring after y-protocols' 30 s, go out every
    # `awareness_renew_s`, so a state is never older than 15 + 10 s anywhere.

    def _schedule_awareness(self) -> None:
        loop = asyncio.get_running_loop()
        settings = self.manager.settings
        if self._awareness_changed and self._awareness_tick is None:
            self._awareness_tick = loop.call_later(settings.awareness_tick_s, self._relay_changes)
        if self._awareness_renewed and self._awareness_renewal is None:
            self._awareness_renewal = loop.call_later(
                settings.awareness_renew_s, self._relay_renewals
            )

    def _relay_changes(self) -> None:
        self._awareness_tick = None
        entries, self._awareness_changed = list(self._awareness_changed.items()), {}
        self._awareness_renewed.difference_update(cid for cid, _ in entries)
        if entries:
            payload = self._awareness_payload(entries, own_left_out=True)
            self.broadcast(yp.awareness_message(payload))

    def _relay_renewals(self) -> None:
        self._awareness_renewal = None
        ids, self._awareness_renewed = self._awareness_renewed, set()
        entries = [(cid, self.awareness[cid]) for cid in ids if cid in self.awareness]
        if entries:
            payload = self._awareness_payload(entries, own_left_out=True)
            self.broadcast(yp.awareness_message(payload))

    def _stop_awareness(self) -> None:
        for handle in (self._awareness_tick, self._awareness_renewal):
            if handle is not None:
                handle.cancel()
        self._awareness_tick = self._awareness_renewal = None

    def schedule_unload(self) -> None:
        if self._unload is not None:
            self._unload.cancel()
        loop = asyncio.get_running_loop()
        self._unload = loop.call_later(
            self.manager.settings.unload_after_s,
            lambda: asyncio.ensure_future(self.manager.unload(self)),
        )

    def cancel_unload(self) -> None:
        if self._unload is not None:
            self._unload.cancel()
            self._unload = None


class RoomManager:
    def __init__(self, store: Any, clock: Any, metrics: Any, settings: RoomSettings) -> None:
        self.store = store
        self.clock = clock
        self.metrics = metrics
        self.settings = settings
        self.rooms: dict[tuple[str, str], Room] = {}
        self._closing = False

    async def get(self, tenant_id: str, doc_id: str) -> Room:
        """The loaded room; created and loaded once however many callers race here."""
        key = (tenant_id, doc_id)
        room = self.rooms.get(key)
        if room is None:
            room = Room(self, tenant_id, doc_id)
            self.rooms[key] = room
            self.metrics.rooms.set(len(self.rooms))
            try:
                await room.load()
            except BaseException:
                self.discard(room)
                raise
        else:
            await room.ready.wait()
            if room.failed is not None:
                raise RuntimeError("the room failed to load")
        return room

    async def join(self, tenant_id: str, doc_id: str, peer: Peer) -> Room:
        if self._closing:
            raise RuntimeError("the server is shutting down")
        room = await self.get(tenant_id, doc_id)
        room.cancel_unload()
        room.peers.add(peer)
        self.metrics.room_connections.inc()
        peer.start()
        await room.greet(peer)
        return room

    async def leave(self, room: Room, peer: Peer) -> None:
        if peer in room.peers:
            room.peers.discard(peer)
            self.metrics.room_connections.dec()
            room.leave_awareness(peer)
        await peer.stop()
        if not room.peers and self.rooms.get((room.tenant_id, room.doc_id)) is room:
            room.schedule_unload()

    def discard(self, room: Room) -> None:
        if self.rooms.get((room.tenant_id, room.doc_id)) is room:
            del self.rooms[(room.tenant_id, room.doc_id)]
            self.metrics.rooms.set(len(self.rooms))

    async def unload(self, room: Room) -> None:
        if room.peers or self.rooms.get((room.tenant_id, room.doc_id)) is not room:
            return
        await room.drain()
        if room.peers:  # someone joined while we stored
            return
        self.discard(room)
        if room.tail_updates:
            await room.compact_now()
        await room.close()

    async def disconnect_device(self, tenant_id: str, device_id: str) -> int:
        closed = 0
        for room in list(self.rooms.values()):
            if room.tenant_id != tenant_id:
                continue
            for peer in list(room.peers):
                if peer.device_id == device_id:
                    await peer.close(CLOSE_REVOKED, "device revoked")
                    closed += 1
        return closed

    async def shutdown(self) -> None:
        """Store everything queued in every room, then close all connections."""
        self._closing = True
        for room in list(self.rooms.values()):
            await room.close()
        self.rooms.clear()
