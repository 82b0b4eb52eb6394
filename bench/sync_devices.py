"""Simulated player devices for the /sync/v1 HTTP benchmark, run in client worker processes.

Theory of operation: a worker process owns a share of the devices, one `httpx.AsyncClient`
(HTTP/1.1, keep-alive, one connection) per device, and one event loop. The parent drives it
over a `multiprocessing` pipe with three commands:

- ``("setup", workload, [DeviceSpec…], extra)`` registers the devices and seeds what the
  workload needs (see `_seed`), then answers ``("ok", None)``. `Settings.target` names the
  server: ``crdt-sync`` (this module's `Device`) or ``pouchdb`` (`bench.pouch_devices`, which
  gets `extra` from the parent's preparation of the databases);
- ``("run", workload, active, start_at, warmup, duration)`` runs one closed-loop cell: every
  device with ``index < active`` sends its next request as soon as the last one returned,
  from wall time ``start_at`` for ``warmup + duration`` seconds, and answers with a `CellStats`
  dict. Only requests that *complete* inside the measured window (after the warm-up) give
  latency samples; errors are counted over warm-up and window alike;
- ``("close",)`` closes the clients and ends the process.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import importlib.util
import json
import os
import sys
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from typing import Any, Protocol

import httpx

WORKLOADS = ("push", "pull", "pull_full", "ack")
TARGETS = ("crdt-sync", "pouchdb")
PUSH_PATH = "/sync/v1/push"
PULL_PATH = "/sync/v1/pull"
ACK_PATH = "/sync/v1/ack"
DEVICES_PATH = "/sync/v1/devices"


class SetupError(Exception):
    """A device could not be registered or seeded: the cell cannot be measured."""


@dataclass(frozen=True)
class DeviceSpec:
    index: int
    tenant: str
    user_id: str
    device_id: str
    user_token: str


@dataclass(frozen=True)
class Settings:
    base_url: str
    batch: int  # mutations per push request
    pull_size: int  # entities seeded per pull device, and the `limit` of each measured pull
    timeout_s: float = 60.0
    setup_parallelism: int = 4  # devices seeded at once per worker (seeding is not measured)
    target: str = "crdt-sync"  # which server the devices talk to (TARGETS)


RequestResult = tuple[float, httpx.Response | None, str | None]  # latency s, response, error


class SimDevice(Protocol):
    """What the closed loop needs of a simulated device, whatever server it talks to."""

    @property
    def spec(self) -> DeviceSpec: ...

    @property
    def client(self) -> httpx.AsyncClient: ...

    async def request(self, workload: str, settings: Settings) -> RequestResult:
        """Send the workload's next request; return (latency s, response, transport error)."""
        ...

    def count_items(
        self, resp: httpx.Response, workload: str, settings: Settings, stats: CellStats
    ) -> int:
        """Check a 2xx body and return its items; odd results go to `stats.statuses`.
        Raises KeyError/TypeError/ValueError on a malformed body."""
        ...


@dataclass
class Device:
    spec: DeviceSpec
    client: httpx.AsyncClient
    device_token: str = ""
    secret: str = ""
    counter: int = 0  # this device's own vector-clock entry
    base_cursor: str | None = None  # pull cursor taken before the seeded changes
    ack_cursor: str | None = None

    async def request(self, workload: str, settings: Settings) -> RequestResult:
        return await _one_request(self, workload, settings)

    def count_items(
        self, resp: httpx.Response, workload: str, settings: Settings, stats: CellStats
    ) -> int:
        return _count_items(resp, workload, settings, stats)


@dataclass
class CellStats:
    latencies_ms: list[float] = field(default_factory=list)
    requests: int = 0  # completed in the measured window with a 2xx
    items: int = 0  # mutations pushed / changes pulled in the measured window
    errors: Counter[str] = field(default_factory=Counter)  # "<status> <code>" -> count
    statuses: Counter[str] = field(default_factory=Counter)  # push results, pull anomalies
    cpu_s: float = 0.0  # this process's CPU time over the measured window
    window_s: float = 0.0

    def as_dict(self) -> dict[str, Any]:
        return {
            "latencies_ms": self.latencies_ms,
            "requests": self.requests,
            "items": self.items,
            "errors": dict(self.errors),
            "statuses": dict(self.statuses),
            "cpu_s": self.cpu_s,
            "window_s": self.window_s,
        }


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def sign(secret: str, ts: str, method: str, path: str, device_id: str, body: bytes) -> str:
    """The contract's canonical form: ts, METHOD, path (no query), device id, body hash."""
    message = f"{ts}\n{method}\n{path}\n{device_id}\n{sha256_hex(body)}"
    return hmac.new(secret.encode(), message.encode(), hashlib.sha256).hexdigest()


def error_key(resp: httpx.Response) -> str:
    code = "?"
    try:
        body = resp.json()
        if isinstance(body, dict) and isinstance(body.get("error"), dict):
            code = str(body["error"].get("code", "?"))
    except ValueError:
        pass
    return f"{resp.status_code} {code}"


async def _send(
    dev: Device, method: str, path: str, body: bytes | None, params: dict[str, Any] | None = None
) -> httpx.Response:
    ts = str(int(time.time()))
    headers = {
        "Authorization": f"Bearer {dev.device_token}",
        "X-Sync-Timestamp": ts,
        # GETs carry a signature of the empty body too: harmless where it is not required.
        "X-Sync-Signature": sign(dev.secret, ts, method, path, dev.spec.device_id, body or b""),
    }
    if body is not None:
        headers["Content-Type"] = "application/json"
    return await dev.client.request(method, path, content=body, params=params, headers=headers)


# Mutations are written as JSON text directly: json.dumps of 100 dicts plus uuid.uuid4 costs
# ~2 ms of client CPU per push, as much as the HTTP round trip itself; this costs ~0.3 ms.


def uuid4_strings(n: int) -> list[str]:
    """`n` random (version 4, RFC 4122 variant) UUIDs in canonical text form."""
    raw = bytearray(os.urandom(16 * n))
    for i in range(0, 16 * n, 16):
        raw[i + 6] = (raw[i + 6] & 0x0F) | 0x40
        raw[i + 8] = (raw[i + 8] & 0x3F) | 0x80
    h = raw.hex()
    return [
        f"{h[o : o + 8]}-{h[o + 8 : o + 12]}-{h[o + 12 : o + 16]}-{h[o + 16 : o + 20]}-"
        f"{h[o + 20 : o + 32]}"
        for o in range(0, 32 * n, 32)
    ]


def push_body(dev: Device, batch: int, first_entity: int = 0) -> bytes:
    """A push of `batch` progress puts on course-{first_entity}…, each with the next clock."""
    device = json.dumps(dev.spec.device_id)
    parts = []
    for i, mid in enumerate(uuid4_strings(batch)):
        dev.counter += 1
        n = dev.counter
        # Progress only grows, as a player's does: a smaller number would be merged (max)
        # by the monotonic policy instead of applied, and push would measure another path.
        parts.append(
            f'{{"mutation_id":"{mid}","entity_type":"progress",'
            f'"entity_id":"course-{first_entity + i}","op":"put",'
            f'"payload":{{"completion":{n / (n + 1000):.6f},"score":{min(100, n // 50)}}},'
            f'"clock":{{{device}:{n}}}}}'
        )
    return b'{"mutations":[' + ",".join(parts).encode() + b"]}"


def _dumps(obj: Any) -> bytes:
    return json.dumps(obj, separators=(",", ":")).encode()


def _pull_params(cursor: str | None, limit: int) -> dict[str, Any]:
    return {"limit": limit} if cursor is None else {"cursor": cursor, "limit": limit}


async def _checked(resp: httpx.Response, what: str, expect: int | None = None) -> Any:
    ok = resp.status_code == expect if expect is not None else resp.is_success
    if not ok:
        raise SetupError(f"{what}: HTTP {resp.status_code} {resp.text[:300]}")
    return resp.json() if resp.content else None


async def register(dev: Device) -> None:
    body = {"device_id": dev.spec.device_id, "name": "bench", "platform": "bench"}
    resp = await dev.client.post(
        DEVICES_PATH, json=body, headers={"Authorization": f"Bearer {dev.spec.user_token}"}
    )
    data = await _checked(resp, f"register {dev.spec.device_id}", expect=201)
    dev.device_token = data["device_token"]
    dev.secret = data["device_secret"]


async def _seed(dev: Device, workload: str, settings: Settings) -> None:
    """What each workload needs before it is measured.

    - push: nothing (each measured push upserts `course-0…batch-1` with a newer clock);
    - pull / pull_full: take cursor C0 on the fresh (empty) user, push `pull_size` progress
      entities, check that `pull?cursor=C0&limit=pull_size` returns exactly `pull_size`
      changes; the measured pull repeats that delta pull from C0 (pull_full: no cursor);
    - ack: push one batch, pull, and keep the returned cursor; the measured loop acks it.
    """
    await register(dev)
    name = dev.spec.device_id
    if workload in ("pull", "pull_full"):
        resp = await _send(dev, "GET", PULL_PATH, None, _pull_params(None, settings.pull_size))
        first = await _checked(resp, f"initial pull {name}")
        dev.base_cursor = first["cursor"]
        for start in range(0, settings.pull_size, settings.batch):
            n = min(settings.batch, settings.pull_size - start)
            body = push_body(dev, n, first_entity=start)
            data = await _checked(await _send(dev, "POST", PUSH_PATH, body), f"seed push {name}")
            bad = [r for r in data["results"] if r.get("status") != "applied"]
            if bad:
                raise SetupError(f"seed push {name}: not applied: {bad[:3]}")
        cursor = None if workload == "pull_full" else dev.base_cursor
        params = _pull_params(cursor, settings.pull_size)
        data = await _checked(await _send(dev, "GET", PULL_PATH, None, params), f"pull {name}")
        if len(data["changes"]) != settings.pull_size:
            raise SetupError(
                f"pull {name} with cursor={cursor!r} returned {len(data['changes'])} changes, "
                f"expected {settings.pull_size} (has_more={data.get('has_more')})"
            )
        dev.ack_cursor = data["cursor"]
    elif workload == "ack":
        body = push_body(dev, settings.batch)
        await _checked(await _send(dev, "POST", PUSH_PATH, body), f"seed push {name}")
        resp = await _send(dev, "GET", PULL_PATH, None, _pull_params(None, settings.pull_size))
        dev.ack_cursor = (await _checked(resp, f"pull {name}"))["cursor"]
        resp = await _send(dev, "POST", ACK_PATH, _dumps({"cursor": dev.ack_cursor}))
        await _checked(resp, f"first ack {name}")


async def _one_request(dev: Device, workload: str, settings: Settings) -> RequestResult:
    """Send one request of the workload; return (latency s, response, transport error)."""
    if workload == "push":
        body: bytes | None = push_body(dev, settings.batch)
        method, path, params = "POST", PUSH_PATH, None
    elif workload in ("pull", "pull_full"):
        body, method, path = None, "GET", PULL_PATH
        cursor = dev.base_cursor if workload == "pull" else None
        params = _pull_params(cursor, settings.pull_size)
    else:
        body = _dumps({"cursor": dev.ack_cursor})
        method, path, params = "POST", ACK_PATH, None
    t0 = time.perf_counter()
    try:
        resp = await _send(dev, method, path, body, params)
    except httpx.HTTPError as exc:
        return time.perf_counter() - t0, None, f"transport {type(exc).__name__}"
    return time.perf_counter() - t0, resp, None


def _count_items(resp: httpx.Response, workload: str, settings: Settings, stats: CellStats) -> int:
    """Check a 2xx body and return its items; odd results go to `stats.statuses`."""
    if workload == "ack":
        if resp.status_code != 204:
            stats.statuses[f"ack_status_{resp.status_code}"] += 1
        return 0
    data = resp.json()
    if workload == "push":
        results = data["results"]
        stats.statuses.update(str(r.get("status")) for r in results)
        return len(results)
    n = len(data["changes"])
    if n != settings.pull_size:
        stats.statuses["short_pull"] += 1
    return n


async def _device_loop(
    dev: SimDevice,
    workload: str,
    settings: Settings,
    t_meas: float,
    t_end: float,
    stats: CellStats,
) -> None:
    while time.perf_counter() < t_end:
        latency, resp, transport_error = await dev.request(workload, settings)
        done = time.perf_counter()
        in_window = t_meas <= done <= t_end
        if resp is None or not resp.is_success:
            key = transport_error if resp is None else error_key(resp)
            stats.errors[key or "?"] += 1
            if resp is None:
                await asyncio.sleep(0.05)  # a dead server must not turn into a busy loop
            continue
        try:
            items = dev.count_items(resp, workload, settings, stats)
        except (KeyError, TypeError, ValueError):
            stats.errors[f"{resp.status_code} malformed_body"] += 1
            continue
        if in_window:
            stats.requests += 1
            stats.items += items
            stats.latencies_ms.append(latency * 1000.0)


async def _sleep_until(t: float) -> None:
    delay = t - time.perf_counter()
    if delay > 0:
        await asyncio.sleep(delay)


async def run_cell(
    devices: Sequence[SimDevice],
    workload: str,
    settings: Settings,
    start_at: float,
    warmup: float,
    duration: float,
) -> CellStats:
    stats = CellStats()
    offset = time.perf_counter() - time.time()
    t_start = start_at + offset
    t_meas = t_start + warmup
    t_end = t_meas + duration

    async def cpu_window() -> None:
        await _sleep_until(t_meas)
        cpu0, w0 = time.process_time(), time.perf_counter()
        await _sleep_until(t_end)
        stats.cpu_s = time.process_time() - cpu0
        stats.window_s = time.perf_counter() - w0

    async def start_device(dev: SimDevice) -> None:
        await _sleep_until(t_start)
        await _device_loop(dev, workload, settings, t_meas, t_end, stats)

    async with asyncio.TaskGroup() as tg:
        tg.create_task(cpu_window())
        for dev in devices:
            tg.create_task(start_device(dev))
    return stats


def new_client(settings: Settings) -> httpx.AsyncClient:
    return httpx.AsyncClient(
        base_url=settings.base_url,
        timeout=settings.timeout_s,
        limits=httpx.Limits(max_connections=1, max_keepalive_connections=1),
        trust_env=False,  # never send loopback traffic through a proxy from the environment
    )


async def _setup(specs: list[DeviceSpec], workload: str, settings: Settings) -> list[Device]:
    devices = [Device(spec=spec, client=new_client(settings)) for spec in specs]
    gate = asyncio.Semaphore(settings.setup_parallelism)

    async def one(dev: Device) -> None:
        async with gate:
            await _seed(dev, workload, settings)

    try:
        async with asyncio.TaskGroup() as tg:
            for dev in devices:
                tg.create_task(one(dev))
    except* (SetupError, httpx.HTTPError, KeyError, ValueError) as group:
        for dev in devices:
            await dev.client.aclose()
        first = group.exceptions[0]
        raise SetupError(f"{workload} setup: {type(first).__name__}: {first}") from None
    return devices


async def _setup_target(
    specs: list[DeviceSpec], workload: str, settings: Settings, extra: Any
) -> Sequence[SimDevice]:
    if settings.target == "pouchdb":
        from bench import pouch_devices  # it imports this module

        return await pouch_devices.setup(specs, workload, settings, extra)
    return await _setup(specs, workload, settings)


async def _serve(conn: Connection, settings: Settings) -> None:
    loop = asyncio.get_running_loop()
    devices: dict[str, Sequence[SimDevice]] = {}
    try:
        while True:
            cmd = await loop.run_in_executor(None, conn.recv)
            kind = cmd[0]
            if kind == "close":
                break
            try:
                if kind == "setup":
                    _, workload, specs, extra = cmd
                    devices[workload] = await _setup_target(specs, workload, settings, extra)
                    conn.send(("ok", None))
                elif kind == "run":
                    _, workload, active, start_at, warmup, duration = cmd
                    chosen = [d for d in devices.get(workload, []) if d.spec.index < active]
                    stats = await run_cell(chosen, workload, settings, start_at, warmup, duration)
                    conn.send(("ok", stats.as_dict()))
                else:
                    conn.send(("error", f"unknown command {kind!r}"))
            except Exception as exc:  # reported to the parent, which fails the run
                conn.send(("error", f"{type(exc).__name__}: {exc}"))
    finally:
        for group in devices.values():
            for dev in group:
                await dev.client.aclose()
    conn.send(("ok", None))


def _skip_missing_sniffio() -> None:
    """Make httpcore's per-request `import sniffio` cheap where sniffio is not installed.

    httpcore imports sniffio inside `current_async_library()`, several times per request; anyio
    4.x no longer pulls sniffio in, and a failing import searches sys.path every time (about a
    third of the client's CPU per request here). A `None` entry in sys.modules makes the import
    fail at once, and httpcore then assumes asyncio, which is what we run.
    """
    if importlib.util.find_spec("sniffio") is None:
        sys.modules["sniffio"] = None  # type: ignore[assignment]


def worker_main(conn: Connection, settings: Settings) -> None:
    """Entry point of one client worker process (spawned, so it has its own event loop)."""
    _skip_missing_sniffio()
    asyncio.run(_serve(conn, settings))
