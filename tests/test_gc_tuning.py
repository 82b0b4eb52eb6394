"""The server's collector settings (web/cli.py): startup objects frozen, thresholds raised.
Measured effect in docs/benchmarks.md (10,000 idle room connections)."""

from __future__ import annotations

import gc

from web.cli import GC_THRESHOLDS, tune_gc


def test_tune_gc_freezes_startup_objects_and_raises_thresholds() -> None:
    before = gc.get_threshold()
    try:
        loaded: list[int] = [1]  # alive at startup, as the app's modules are
        assert gc.is_tracked(loaded) and any(o is loaded for o in gc.get_objects())
        tune_gc()
        assert gc.get_threshold() == GC_THRESHOLDS
        assert gc.get_freeze_count() > 0
        assert not any(o is loaded for o in gc.get_objects())  # frozen: never traversed
    finally:
        gc.unfreeze()
        gc.set_threshold(*before)
