"""Optional py-spy profile of the server during a fan-out window (`--profile`).

py-spy (``pip install py-spy`` into the venv) samples the server process without pausing it
(``--nonblocking``) and writes collapsed stacks; :func:`top_frames` turns them into the
functions with the most samples on top of the stack (self) and anywhere on it (total).
"""

from __future__ import annotations

import asyncio
import linecache
import os
import re
import shutil
import sys
from collections import Counter
from functools import cache
from pathlib import Path
from typing import Any

_LINE = re.compile(r":\d+\)$")
_FRAME = re.compile(r"^(?P<func>.*) \((?P<path>[^()]*):(?P<line>\d+)\)$")
# a leaf frame on such a line is a thread waiting (the event loop's poll, aiosqlite's queue)
_WAIT = re.compile(r"\.(get|wait|poll|select|acquire|recv|accept)\(")


def py_spy() -> str | None:
    found = Path(sys.executable).parent / "py-spy"
    if found.exists():
        return str(found)
    return shutil.which("py-spy")


async def record(pid: int, seconds: float, out: Path, rate: int = 200) -> Path | None:
    """Sample `pid` for `seconds`; the collapsed stacks go to `out` (None without py-spy)."""
    exe = py_spy()
    if exe is None:
        print("note: py-spy not found: pip install py-spy", file=sys.stderr)
        return None
    out.parent.mkdir(parents=True, exist_ok=True)
    proc = await asyncio.create_subprocess_exec(
        exe,
        "record",
        "--pid",
        str(pid),
        "--duration",
        str(max(1, round(seconds))),
        "--rate",
        str(rate),
        "--format",
        "raw",
        "--nonblocking",
        "--output",
        str(out),
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE,
    )
    _, err = await proc.communicate()
    if proc.returncode != 0 or not out.exists():
        print(f"note: py-spy failed: {err.decode(errors='replace')[-500:]}", file=sys.stderr)
        return None
    return out


@cache
def _source_line(path: str, line: int) -> str:
    candidates = [path] if os.path.isabs(path) else [os.path.join(p, path) for p in sys.path]
    for candidate in candidates:
        if os.path.isfile(candidate):
            return linecache.getline(candidate, line)
    return ""


def is_waiting(leaf: str) -> bool:
    """Whether a stack ending in `leaf` is a thread blocked on a wait; py-spy's
    --nonblocking samples count those too."""
    m = _FRAME.match(leaf.strip())
    if m is None:
        return False
    return bool(_WAIT.search(_source_line(m["path"], int(m["line"]))))


def _function(frame: str) -> str:
    """`send (hypercorn/protocol/ws_stream.py:312)` → `send (hypercorn/protocol/ws_stream.py)`."""
    frame = _LINE.sub(")", frame.strip())
    return frame.replace(str(Path(sys.prefix)) + "/", "")


def top_frames(path: Path, limit: int = 15) -> dict[str, Any]:
    self_counts: Counter[str] = Counter()
    total_counts: Counter[str] = Counter()
    samples = waiting = 0
    for line in path.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        n = int(count)
        # py-spy puts the thread (and process) name first; keep only Python frames
        raw = [f for f in stack.split(";") if "(" in f]
        if not raw:
            continue
        if is_waiting(raw[-1]):
            waiting += n
            continue
        frames = [_function(f) for f in raw]
        samples += n
        self_counts[frames[-1]] += n
        for f in set(frames):
            total_counts[f] += n

    def share(counter: Counter[str]) -> list[dict[str, Any]]:
        return [
            {"frame": f, "samples": c, "pct": round(100.0 * c / max(1, samples), 1)}
            for f, c in counter.most_common(limit)
        ]

    return {
        "samples": samples,
        "waiting_samples": waiting,
        "self": share(self_counts),
        "total": share(total_counts),
    }


def markdown(profile: dict[str, Any]) -> str:
    variant = (", light" if profile.get("light") else "") + (
        "" if profile.get("deflate", True) else ", no deflate"
    )
    lines = [
        f"Server profile (py-spy, {profile['samples']:,} busy samples, {profile['backend']}, "
        f"fan-out {profile['clients']} editors{variant}): top frames by self time / by total "
        "time, in % of the busy samples (threads blocked in a wait left out)",
        "",
        "| self % | frame | | total % | frame |",
        "|---|---|---|---|---|",
    ]
    for own, tot in zip(profile["self"], profile["total"], strict=False):
        lines.append(f"| {own['pct']} | `{own['frame']}` | | {tot['pct']} | `{tot['frame']}` |")
    return "\n".join(lines)
