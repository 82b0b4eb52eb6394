"""bench.sqlite_writes at smoke size: every cell writes what it says through the store's schema
and statements, and the report names each cell. Structure only: no time is asserted."""

from __future__ import annotations

import json
from pathlib import Path

from bench import sqlite_writes


def test_sqlite_writes_smoke_writes_what_each_cell_names(tmp_path: Path) -> None:
    out = tmp_path / "sqlite_writes.json"
    assert sqlite_writes.main(["--smoke", "--out", str(out)]) == 0
    result = json.loads(out.read_text())
    cfg = sqlite_writes.parse_args(["--smoke"])
    pushes = cfg.history * cfg.devices + cfg.pushes
    cells = {(r["name"], r["connections"]): r for r in result["results"]}
    assert set(cells) == {(n, c) for n in sqlite_writes.WRITES for c in (1, 2)}
    for (name, _), cell in cells.items():
        assert cell["body_ms"]["mean"] > 0 and cell["commit_ms"]["mean"] > 0
        entities = cfg.devices * cfg.batch if "entities" in sqlite_writes.WRITES[name] else 0
        records = pushes * cfg.batch if "records" in sqlite_writes.WRITES[name] else 0
        assert cell["rows"] == {"entities": entities, "mutation_results": records}, name
    section = sqlite_writes.docs_section(result)
    assert section.startswith(sqlite_writes.DOCS_BEGIN)
    assert section.endswith(sqlite_writes.DOCS_END)
    for name in sqlite_writes.WRITES:
        assert section.count(f"| {name} |") == 2
