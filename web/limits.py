"""Request limits: sizes, batch, per-device request rate, unauthenticated upgrade rate.

Defaults apply to every tenant; a limits file (`CRDT_SYNC_LIMITS_FILE`) can override them
per tenant: `{"defaults": {...}, "tenants": {"acme": {"device_rate_per_s": 100}}}`.
Rates are token buckets kept in this process.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import Any

from crdt_sync.errors import SyncError


class RateLimited(SyncError):
    code = "rate_limited"

    def __init__(self, retry_after_s: float) -> None:
        super().__init__(f"too many requests; retry after {math.ceil(retry_after_s)} s")
        self.retry_after_s = retry_after_s


@dataclass(frozen=True)
class Limits:
    max_body_bytes: int = 4 * 1024 * 1024
    max_batch: int = 500
    ws_max_message_bytes: int = 8 * 1024 * 1024
    device_rate_per_s: float = 50.0
    device_burst: float = 200.0
    upgrade_fail_rate_per_s: float = 5.0  # refused (unauthenticated) upgrades per client IP
    upgrade_fail_burst: float = 20.0

    @classmethod
    def from_json(cls, base: Limits, data: dict[str, Any]) -> Limits:
        known = {f.name: f.type for f in fields(cls)}
        unknown = set(data) - set(known)
        if unknown:
            raise ValueError(f"unknown limits: {sorted(unknown)}")
        values: dict[str, Any] = {}
        for name, value in data.items():
            if isinstance(value, bool) or not isinstance(value, int | float) or value <= 0:
                raise ValueError(f"limit {name} must be a positive number")
            values[name] = int(value) if known[name] in ("int", int) else float(value)
        if any(known[n] in ("int", int) and values[n] != data[n] for n in values):
            raise ValueError("sizes and counts are whole numbers")
        if values.get("max_batch", 1) > 500:
            raise ValueError("max_batch is at most 500 (the protocol's limit)")
        return replace(base, **values)


@dataclass
class LimitsConfig:
    defaults: Limits
    tenants: dict[str, Limits]

    def for_tenant(self, tenant_id: str) -> Limits:
        return self.tenants.get(tenant_id, self.defaults)

    @classmethod
    def load(cls, path: Path | None) -> LimitsConfig:
        if path is None:
            return cls(Limits(), {})
        doc = json.loads(path.read_text())
        defaults = Limits.from_json(Limits(), doc.get("defaults", {}))
        tenants = {
            tenant: Limits.from_json(defaults, values)
            for tenant, values in doc.get("tenants", {}).items()
        }
        return cls(defaults, tenants)

    @property
    def largest_body(self) -> int:
        return max(
            [self.defaults.max_body_bytes, *(t.max_body_bytes for t in self.tenants.values())]
        )

    @property
    def largest_ws_message(self) -> int:
        return max(
            [
                self.defaults.ws_max_message_bytes,
                *(t.ws_max_message_bytes for t in self.tenants.values()),
            ]
        )


class Buckets:
    """Token buckets by key; idle buckets are dropped so memory stays bounded."""

    def __init__(self, max_keys: int = 100_000) -> None:
        self._buckets: dict[Any, tuple[float, float]] = {}
        self._max_keys = max_keys

    def take(self, key: Any, rate: float, burst: float, now: float | None = None) -> None:
        now = time.monotonic() if now is None else now
        tokens, stamp = self._buckets.get(key, (burst, now))
        tokens = min(burst, tokens + (now - stamp) * rate)
        if tokens < 1.0:
            self._buckets[key] = (tokens, now)
            raise RateLimited((1.0 - tokens) / rate)
        if len(self._buckets) >= self._max_keys and key not in self._buckets:
            self._evict(now, rate, burst)
        self._buckets[key] = (tokens - 1.0, now)

    def _evict(self, now: float, rate: float, burst: float) -> None:
        full = [k for k, (t, s) in self._buckets.items() if t + (now - s) * rate >= burst]
        for key in full or list(self._buckets)[: len(self._buckets) // 2]:
            del self._buckets[key]
