"""Client worker processes of bench/open_loop.py: simulated player devices on an open loop.

A worker owns a share of the devices, one event loop and one pool of keep-alive connections
(`bench.lite_http`: httpx costs ~3 ms of CPU per request here, this client ~0.2 ms). The
parent drives it over a `multiprocessing` pipe:

- ``("setup", [DeviceSpec…])`` registers every device (`POST /sync/v1/devices` with its
  user's token) and takes its first cursor (a pull without one); answers ``("ok", info)``;
- ``("run", RunParams)`` builds this worker's schedule and plays it: from wall time
  `start_at`, for `warmup + duration` seconds, each device pushes a batch every
  `push_period` seconds and pulls every `pull_period` seconds, at random phases (or Poisson
  arrivals), and acks the cursor of every pull as soon as the pull returns. A request is sent
  at its scheduled time whatever earlier requests are doing (open loop); its latency runs from
  the scheduled time to the end of the response, so time spent waiting for the client's event
  loop or for a free connection counts (no coordinated omission). Answers with per-endpoint
  statistics of the requests *scheduled* in the measured window (after the warm-up);
- ``("close",)`` closes the pool and ends the process.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import random
import time
from collections import Counter
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from typing import Any
from urllib.parse import quote, urlencode

from bench.lite_http import Pool, Response, TransportError
from bench.sync_devices import ACK_PATH, DEVICES_PATH, PULL_PATH, PUSH_PATH, uuid4_strings

ENDPOINTS = ("push", "pull", "ack")


@dataclass(frozen=True)
class DeviceSpec:
    index: int
    user_id: str
    device_id: str
    user_token: str


@dataclass(frozen=True)
class WorkerSettings:
    host: str
    port: int
    connections: int  # this worker's pool size
    batch: int  # mutations per push
    pull_limit: int  # `limit` of every pull
    timeout_s: float  # a request not answered this long after its scheduled time fails
    setup_parallelism: int = 16
    idle_s: float = 25.0  # keep-alive connections older than this are not reused (server: 30 s)


@dataclass(frozen=True)
class RunParams:
    start_at: float  # wall clock
    warmup: float
    duration: float
    push_period: float  # seconds between two pushes of one device
    pull_period: float
    arrivals: str  # "uniform": fixed period, random phase; "poisson": exponential gaps
    seed: int


@dataclass
class Device:
    spec: DeviceSpec
    token: str = ""
    secret: str = ""
    cursor: str | None = None
    counter: int = 0  # this device's own vector-clock entry


@dataclass
class EndpointStats:
    scheduled: int = 0  # requests scheduled in the measured window
    ok: int = 0  # of those, answered with a 2xx
    completed_in_window: int = 0  # 2xx answers that arrived inside the window (throughput)
    latencies_ms: list[float] = field(default_factory=list)  # of the `ok` ones
    errors: Counter[str] = field(default_factory=Counter)  # of the scheduled ones, by kind
    items: int = 0  # mutations pushed / changes pulled by the `ok` ones
    statuses: Counter[str] = field(default_factory=Counter)  # push result statuses

    def as_dict(self) -> dict[str, Any]:
        return {
            "scheduled": self.scheduled,
            "ok": self.ok,
            "completed_in_window": self.completed_in_window,
            "latencies_ms": self.latencies_ms,
            "errors": dict(self.errors),
            "items": self.items,
            "statuses": dict(self.statuses),
        }


class SetupError(Exception):
    """A device could not be registered or could not take its first cursor."""


def _sign(dev: Device, ts: str, method: str, path: str, body: bytes) -> str:
    digest = hashlib.sha256(body).hexdigest()
    message = f"{ts}\n{method}\n{path}\n{dev.spec.device_id}\n{digest}"
    return hmac.new(dev.secret.encode(), message.encode(), hashlib.sha256).hexdigest()


def _headers(dev: Device, method: str, path: str, body: bytes | None) -> dict[str, str]:
    ts = str(int(time.time()))
    headers = {
        "Authorization": f"Bearer {dev.token}",
        "X-Sync-Timestamp": ts,
        "X-Sync-Signature": _sign(dev, ts, method, path, body or b""),
    }
    if body is not None:
        headers["Content-Type"] = "application/json"
    return headers


def push_body(dev: Device, batch: int) -> bytes:
    """`batch` progress puts on course-0…, each with the device's next clock entry (the same
    mutations as bench.sync_devices' push workload)."""
    device = json.dumps(dev.spec.device_id)
    parts = []
    for i, mid in enumerate(uuid4_strings(batch)):
        dev.counter += 1
        n = dev.counter
        parts.append(
            f'{{"mutation_id":"{mid}","entity_type":"progress","entity_id":"course-{i}",'
            f'"op":"put","payload":{{"completion":{n / (n + 1000):.6f},'
            f'"score":{min(100, n // 50)}}},"clock":{{{device}:{n}}}}}'
        )
    return b'{"mutations":[' + ",".join(parts).encode() + b"]}"


def _pull_target(dev: Device, limit: int) -> str:
    query = {"limit": limit} if dev.cursor is None else {"cursor": dev.cursor, "limit": limit}
    return f"{PULL_PATH}?{urlencode(query, quote_via=quote)}"


def _error_key(resp: Response) -> str:
    code = "?"
    try:
        body = resp.json()
        if isinstance(body, dict) and isinstance(body.get("error"), dict):
            code = str(body["error"].get("code", "?"))
    except ValueError:
        pass
    return f"{resp.status} {code}"


# -- setup ------------------------------------------------------------------------------------


async def _register(dev: Device, pool: Pool, s: WorkerSettings) -> None:
    body = json.dumps(
        {"device_id": dev.spec.device_id, "name": "open-loop", "platform": "bench"}
    ).encode()
    headers = {"Authorization": f"Bearer {dev.spec.user_token}", "Content-Type": "application/json"}
    async with asyncio.timeout(s.timeout_s * 2):
        resp = await pool.request("POST", DEVICES_PATH, headers, body)
        if resp.status != 201:
            raise SetupError(
                f"register {dev.spec.device_id}: HTTP {resp.status} {resp.body[:200]!r}"
            )
        data = resp.json()
        dev.token, dev.secret = data["device_token"], data["device_secret"]
        target = _pull_target(dev, s.pull_limit)
        resp = await pool.request("GET", target, _headers(dev, "GET", PULL_PATH, None))
        if resp.status != 200:
            raise SetupError(f"first pull {dev.spec.device_id}: HTTP {resp.status}")
        dev.cursor = resp.json()["cursor"]


async def setup(specs: list[DeviceSpec], pool: Pool, s: WorkerSettings) -> list[Device]:
    devices = [Device(spec) for spec in specs]
    gate = asyncio.Semaphore(s.setup_parallelism)

    async def one(dev: Device) -> None:
        async with gate:
            await _register(dev, pool, s)

    try:
        async with asyncio.TaskGroup() as tg:
            for dev in devices:
                tg.create_task(one(dev))
    except* (SetupError, TransportError, TimeoutError, KeyError, ValueError) as group:
        first = group.exceptions[0]
        raise SetupError(f"{type(first).__name__}: {first}") from None
    return devices


# -- the open loop ----------------------------------------------------------------------------

PUSH, PULL = 0, 1


def schedule(n_devices: int, p: RunParams, rng: random.Random) -> list[tuple[float, int, int]]:
    """(seconds after the start, PUSH or PULL, device) for the whole run, in time order."""
    total = p.warmup + p.duration
    events: list[tuple[float, int, int]] = []
    for i in range(n_devices):
        for kind, period in ((PUSH, p.push_period), (PULL, p.pull_period)):
            if p.arrivals == "poisson":
                t = rng.expovariate(1.0 / period)
                while t < total:
                    events.append((t, kind, i))
                    t += rng.expovariate(1.0 / period)
            else:
                t = rng.uniform(0.0, period)
                while t < total:
                    events.append((t, kind, i))
                    t += period
    events.sort()
    return events


class Run:
    def __init__(self, devices: list[Device], pool: Pool, s: WorkerSettings, p: RunParams):
        self.devices = devices
        self.pool = pool
        self.s = s
        self.p = p
        self.loop = asyncio.get_running_loop()
        self.t0 = self.loop.time() + (p.start_at - time.time())
        self.t_meas = self.t0 + p.warmup
        self.t_end = self.t_meas + p.duration
        self.stats = {name: EndpointStats() for name in ENDPOINTS}
        self.lags_ms: list[float] = []  # scheduled time -> the request's task ran (measured)
        self.cpu_s = 0.0
        self.window_s = 0.0
        self.unfinished = 0

    def measured(self, scheduled: float) -> bool:
        return self.t_meas <= scheduled < self.t_end

    def started(self, scheduled: float) -> None:
        """A scheduled push or pull starts: how late the client is (its own lag)."""
        if self.measured(scheduled):
            self.lags_ms.append((self.loop.time() - scheduled) * 1000.0)

    async def call(
        self,
        name: str,
        scheduled: float,
        method: str,
        target: str,
        headers: dict[str, str],
        body: bytes | None,
    ) -> Response | None:
        """One request; its statistics when it was scheduled in the window. None if it failed."""
        measured = self.measured(scheduled)
        st = self.stats[name]
        if measured:
            st.scheduled += 1
        error: str | None = None
        resp: Response | None = None
        try:
            async with asyncio.timeout_at(scheduled + self.s.timeout_s):
                resp = await self.pool.request(method, target, headers, body)
        except TimeoutError:
            error = "timeout"
        except TransportError as exc:
            error = f"transport: {str(exc)[:60]}"
        done = self.loop.time()
        if resp is not None and not resp.ok:
            error = _error_key(resp)
        if error is not None:
            if measured:
                st.errors[error] += 1
            return None
        if measured:
            st.ok += 1
            st.latencies_ms.append((done - scheduled) * 1000.0)
        if self.t_meas <= done < self.t_end:
            st.completed_in_window += 1
        return resp

    async def push(self, dev: Device, scheduled: float) -> None:
        self.started(scheduled)
        body = push_body(dev, self.s.batch)
        headers = _headers(dev, "POST", PUSH_PATH, body)
        resp = await self.call("push", scheduled, "POST", PUSH_PATH, headers, body)
        if resp is not None and self.measured(scheduled):
            st = self.stats["push"]
            try:
                results = resp.json()["results"]
                st.statuses.update(str(r.get("status")) for r in results)
                st.items += len(results)
            except (KeyError, TypeError, ValueError):
                st.errors[f"{resp.status} malformed_body"] += 1

    async def pull_and_ack(self, dev: Device, scheduled: float) -> None:
        self.started(scheduled)
        headers = _headers(dev, "GET", PULL_PATH, None)
        target = _pull_target(dev, self.s.pull_limit)
        resp = await self.call("pull", scheduled, "GET", target, headers, None)
        if resp is None:
            return
        try:
            data = resp.json()
            cursor, changes = str(data["cursor"]), len(data["changes"])
        except (KeyError, TypeError, ValueError):
            if self.measured(scheduled):
                self.stats["pull"].errors[f"{resp.status} malformed_body"] += 1
            return
        if self.measured(scheduled):
            self.stats["pull"].items += changes
        dev.cursor = cursor
        acked_at = self.loop.time()
        if acked_at >= self.t_end:
            return  # the run is over: nothing new is sent
        body = json.dumps({"cursor": cursor}).encode()
        await self.call(
            "ack", acked_at, "POST", ACK_PATH, _headers(dev, "POST", ACK_PATH, body), body
        )

    async def _cpu_window(self) -> None:
        await asyncio.sleep(max(0.0, self.t_meas - self.loop.time()))
        cpu0, w0 = time.process_time(), self.loop.time()
        await asyncio.sleep(max(0.0, self.t_end - self.loop.time()))
        self.cpu_s = time.process_time() - cpu0
        self.window_s = self.loop.time() - w0

    async def play(self) -> dict[str, Any]:
        events = schedule(len(self.devices), self.p, random.Random(self.p.seed))
        tasks: set[asyncio.Task[None]] = set()
        cpu = asyncio.create_task(self._cpu_window())
        for offset, kind, i in events:
            when = self.t0 + offset
            delay = when - self.loop.time()
            if delay > 0:
                await asyncio.sleep(delay)
            dev = self.devices[i]
            coro = self.push(dev, when) if kind == PUSH else self.pull_and_ack(dev, when)
            task = asyncio.create_task(coro)
            tasks.add(task)
            task.add_done_callback(tasks.discard)
        await cpu
        if tasks:  # every request has its deadline; an ack may start late in a pull's task
            _, pending = await asyncio.wait(set(tasks), timeout=2 * self.s.timeout_s + 5.0)
            for task in pending:
                task.cancel()
            self.unfinished = len(pending)
        return {
            "endpoints": {name: st.as_dict() for name, st in self.stats.items()},
            "lags_ms": self.lags_ms,
            "cpu_s": self.cpu_s,
            "window_s": self.window_s,
            "unfinished": self.unfinished,
            "connections_opened": self.pool.opened,
        }


# -- the process ------------------------------------------------------------------------------


async def _serve(conn: Connection, s: WorkerSettings) -> None:
    loop = asyncio.get_running_loop()
    pool = Pool(s.host, s.port, s.connections, idle_s=s.idle_s)
    devices: list[Device] = []
    try:
        while True:
            cmd = await loop.run_in_executor(None, conn.recv)
            kind = cmd[0]
            if kind == "close":
                break
            try:
                if kind == "setup":
                    t0 = time.monotonic()
                    devices = await setup(cmd[1], pool, s)
                    took = time.monotonic() - t0
                    conn.send(("ok", {"devices": len(devices), "seconds": took}))
                elif kind == "run":
                    conn.send(("ok", await Run(devices, pool, s, cmd[1]).play()))
                else:
                    conn.send(("error", f"unknown command {kind!r}"))
            except Exception as exc:  # reported to the parent, which fails the run
                conn.send(("error", f"{type(exc).__name__}: {exc}"))
    finally:
        await pool.aclose()
    conn.send(("ok", None))


def worker_main(conn: Connection, s: WorkerSettings) -> None:
    """Entry point of one client worker process (spawned: its own event loop)."""
    asyncio.run(_serve(conn, s))
