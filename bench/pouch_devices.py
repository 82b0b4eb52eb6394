"""Simulated devices against pouchdb-server, the peer of bench/http_sync.py's crdt-sync devices.

They run in the same client worker processes and closed loop as `bench.sync_devices` (one
`httpx.AsyncClient`, one keep-alive connection, per device) and send CouchDB's nearest
equivalents of the three /sync/v1 calls:

- push → ``POST /bench_push/_bulk_docs`` with `batch` new documents: the same JSON objects
  as crdt-sync's mutations (`push_body`), `_id` a fresh UUID in place of `mutation_id`;
- pull → ``GET /bench_pull/_changes?limit=pull_size&include_docs=true&since=S``. The parent
  fills the database before the cell (`prepare`: pull_size x devices documents, in bulks of
  `batch`) and finds the `since` value at every page boundary; device k starts at page
  k mod pages and pages through the feed, wrapping around, so every pull returns pull_size
  changes with their documents;
- ack → the replication checkpoint ``PUT /bench_ack/_local/<device>`` with the previous
  `_rev`: what PouchDB's replication writes to record how far it got.

pouchdb-server runs without users ("admin party"): no credentials are sent.
"""

from __future__ import annotations

import asyncio
import json
import time
from dataclasses import dataclass, field
from typing import Any

import httpx

from bench.sync_devices import (
    CellStats,
    DeviceSpec,
    RequestResult,
    Settings,
    SetupError,
    new_client,
    uuid4_strings,
)

DATABASES = {"push": "bench_push", "pull": "bench_pull", "ack": "bench_ack"}
JSON = {"Content-Type": "application/json"}


def supports(workload: str) -> bool:
    return workload in DATABASES


@dataclass
class PouchDevice:
    spec: DeviceSpec
    client: httpx.AsyncClient
    counter: int = 0  # this device's own vector-clock entry (kept in the documents)
    boundaries: list[Any] = field(default_factory=list)  # pull: `since` of every page
    page: int = 0  # pull: the next page
    local_rev: str | None = None  # ack: the checkpoint document's current _rev
    seq: Any = 0  # ack: the sequence the checkpoint records

    async def request(self, workload: str, settings: Settings) -> RequestResult:
        db = DATABASES[workload]
        if workload == "push":
            method, path = "POST", f"/{db}/_bulk_docs"
            body: bytes | None = bulk_docs_body(self.spec.device_id, self.counter, settings.batch)
            self.counter += settings.batch
            params: dict[str, Any] | None = None
        elif workload == "pull":
            method, path, body = "GET", f"/{db}/_changes", None
            params = {
                "limit": settings.pull_size,
                "include_docs": "true",
                "since": self.boundaries[self.page],
            }
        else:
            method, path = "PUT", f"/{db}/_local/{self.spec.device_id}"
            self.counter += 1
            body = checkpoint_body(self.local_rev, self.counter)
            params = None
        headers = JSON if body is not None else None
        t0 = time.perf_counter()
        try:
            resp = await self.client.request(
                method, path, content=body, params=params, headers=headers
            )
        except httpx.HTTPError as exc:
            return time.perf_counter() - t0, None, f"transport {type(exc).__name__}"
        return time.perf_counter() - t0, resp, None

    def count_items(
        self, resp: httpx.Response, workload: str, settings: Settings, stats: CellStats
    ) -> int:
        data = resp.json()
        if workload == "push":
            for r in data:
                stats.statuses["ok" if r.get("ok") else str(r.get("error"))] += 1
            return len(data)
        if workload == "pull":
            n = len(data["results"])
            if n != settings.pull_size:
                stats.statuses["short_pull"] += 1
            self.page = (self.page + 1) % len(self.boundaries)
            return n
        self.local_rev = str(data["rev"])
        return 0


def bulk_docs_body(device_id: str, clock: int, batch: int, first_entity: int = 0) -> bytes:
    """`batch` new documents shaped like crdt-sync's push mutations (see `push_body`), the
    device's clock entry counting on from `clock`."""
    device = json.dumps(device_id)
    parts = []
    for i, uid in enumerate(uuid4_strings(batch)):
        n = clock + i + 1
        parts.append(
            f'{{"_id":"{uid}","entity_type":"progress",'
            f'"entity_id":"course-{first_entity + i}","op":"put",'
            f'"payload":{{"completion":{n / (n + 1000):.6f},"score":{min(100, n // 50)}}},'
            f'"clock":{{{device}:{n}}}}}'
        )
    return b'{"docs":[' + ",".join(parts).encode() + b"]}"


def checkpoint_body(rev: str | None, seq: int) -> bytes:
    doc: dict[str, Any] = {"last_seq": seq, "session_id": "bench", "version": 1}
    if rev is not None:
        doc["_rev"] = rev
    return json.dumps(doc, separators=(",", ":")).encode()


# -- the parent's preparation -----------------------------------------------------------------


def _ok(resp: httpx.Response, what: str) -> Any:
    if not resp.is_success:
        raise SetupError(f"pouchdb {what}: HTTP {resp.status_code} {resp.text[:300]}")
    return resp.json()


def prepare(base_url: str, workload: str, devices: int, settings: Settings) -> Any:
    """Create the workload's database (and fill it, for pull); return what every device
    needs at setup: the `since` of each page of the pull feed, else None."""
    try:
        return _prepare(base_url, workload, devices, settings)
    except (httpx.HTTPError, KeyError, TypeError, ValueError) as exc:
        raise SetupError(f"pouchdb {workload} preparation: {type(exc).__name__}: {exc}") from None


def _prepare(base_url: str, workload: str, devices: int, settings: Settings) -> Any:
    db = DATABASES[workload]
    with httpx.Client(base_url=base_url, timeout=settings.timeout_s, trust_env=False) as client:
        _ok(client.put(f"/{db}"), f"create {db}")
        if workload != "pull":
            return None
        total = settings.pull_size * max(1, devices)
        for start in range(0, total, settings.batch):
            body = bulk_docs_body("filler", start, min(settings.batch, total - start), start)
            results = _ok(client.post(f"/{db}/_bulk_docs", content=body, headers=JSON), "fill")
            bad = [r for r in results if not r.get("ok")]
            if bad:
                raise SetupError(f"pouchdb fill: {bad[:3]}")
        boundaries: list[Any] = [0]
        while True:
            params = {"limit": settings.pull_size, "since": boundaries[-1]}
            page = _ok(client.get(f"/{db}/_changes", params=params), "page")
            if len(page["results"]) < settings.pull_size:
                break
            boundaries.append(page["last_seq"])
        boundaries.pop()  # the end of the feed: nothing after it
        if len(boundaries) * settings.pull_size != total:
            raise SetupError(
                f"pouchdb feed of {total} documents gave {len(boundaries)} full pages "
                f"of {settings.pull_size}"
            )
        return boundaries


# -- in the worker ----------------------------------------------------------------------------


async def _seed(dev: PouchDevice, workload: str, extra: Any) -> None:
    if workload == "pull":
        dev.boundaries = list(extra)
        dev.page = dev.spec.index % len(dev.boundaries)
    elif workload == "ack":
        path = f"/{DATABASES['ack']}/_local/{dev.spec.device_id}"
        resp = await dev.client.put(path, content=checkpoint_body(None, 0), headers=JSON)
        if not resp.is_success:
            raise SetupError(f"pouchdb first checkpoint: HTTP {resp.status_code} {resp.text}")
        dev.local_rev = str(resp.json()["rev"])


async def setup(
    specs: list[DeviceSpec], workload: str, settings: Settings, extra: Any
) -> list[PouchDevice]:
    if not supports(workload):
        raise SetupError(f"pouchdb has no equivalent of {workload!r}")
    devices = [PouchDevice(spec=spec, client=new_client(settings)) for spec in specs]
    try:
        await asyncio.gather(*(_seed(dev, workload, extra) for dev in devices))
    except (SetupError, httpx.HTTPError, KeyError, ValueError) as exc:
        for dev in devices:
            await dev.client.aclose()
        raise SetupError(f"pouchdb {workload} setup: {type(exc).__name__}: {exc}") from None
    return devices
