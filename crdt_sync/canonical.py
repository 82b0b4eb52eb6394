"""Canonical JSON text: what the store keeps and hashes compare (sorted keys, no spaces,
UTF-8 kept as is). Below `model` and `vector_clock`, which both encode with it."""

from __future__ import annotations

import json
from typing import Any


def canonical_json(value: Any) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
