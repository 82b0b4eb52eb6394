"""Yjs documents on pycrdt: merge detection, content as JSON, diff, restore, compaction.

Pure functions over Yjs v1 bytes (updates, state vectors); no I/O. Every decoder raises
`YDocError` (a `ValueError`) on bad input, never another exception. Each update is parsed here
before pycrdt sees it: yrs decodes nested `Any` values recursively and overflows the native stack
(a segfault, not an exception) at ~1000 levels on a 256 KiB thread stack, i.e. from a 2 KiB
update, so we refuse nesting deeper than `MAX_DEPTH`.
"""

from __future__ import annotations

import base64
import difflib
import json
import secrets
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from functools import partial
from itertools import accumulate
from typing import Any, Literal, NamedTuple, TypeVar

import pycrdt
from pycrdt import Array, Doc, Map, Text, TransactionEvent, XmlElement, XmlFragment, XmlText

StateVector = dict[int, int]
"""client id -> clock: that client's operations below the clock are known."""
Ranges = dict[int, list[tuple[int, int]]]
"""client id -> sorted, merged [start, end) clock ranges."""
SV = bytes | Mapping[int, int]
"""A state vector, encoded or decoded."""
RootKind = Literal["text", "map", "array", "xml"]
MAX_DEPTH = 100
"""Deepest nesting of `Any` values (in updates) and of shared types (in content) we accept."""
EMPTY_UPDATE = b"\x00\x00"
_SHARED = (Text, Array, Map, XmlFragment, XmlElement, XmlText, Doc)
_VIEWS: dict[RootKind, Any] = {"text": Text, "map": Map, "array": Array, "xml": XmlFragment}
T = TypeVar("T")


class YDocError(ValueError):
    """Bytes that are not a usable Yjs v1 update or state vector, or content we cannot walk."""


# --- lib0 / Yjs v1 decoding ----------------------------------------------------------------


class _Reader:
    """lib0 decoding. Reading past the end raises IndexError, which `_decode` turns into a
    YDocError (cheaper than checking bounds per byte)."""

    __slots__ = ("buf", "pos")

    def __init__(self, buf: bytes) -> None:
        self.buf, self.pos = buf, 0

    def u8(self) -> int:
        self.pos += 1
        return self.buf[self.pos - 1]

    def uint(self) -> int:
        buf, pos = self.buf, self.pos
        byte = buf[pos]
        num, shift = byte & 0x7F, 0
        while byte >= 0x80:
            pos, shift = pos + 1, shift + 7
            byte = buf[pos]
            num |= (byte & 0x7F) << shift
            if shift > 63:
                raise YDocError("varuint too long")
        self.pos = pos + 1
        if num >= 1 << 64:
            raise YDocError("varuint out of range")
        return num

    def raw(self, n: int) -> bytes:
        self.pos += n
        if self.pos > len(self.buf):
            raise IndexError
        return self.buf[self.pos - n : self.pos]

    def string(self) -> str:
        return self.raw(self.uint()).decode("utf-8")  # UnicodeDecodeError is a ValueError

    def any(self, depth: int = 0) -> None:
        """Skip one lib0 `Any` value, checking its shape and nesting depth."""
        if depth > MAX_DEPTH:
            raise YDocError(f"value nested deeper than {MAX_DEPTH}")
        tag = self.u8()
        if tag == 125:  # signed varint
            self.uint()
        elif tag in (124, 123, 122, 119, 116):  # float32, float64, bigint64, string, bytes
            self.raw({124: 4, 123: 8, 122: 8}.get(tag) or self.uint())
        elif tag in (118, 117):  # object, array
            for _ in range(self.uint()):
                if tag == 118:
                    self.string()
                self.any(depth + 1)
        elif tag not in (127, 126, 121, 120):  # undefined, null, false, true
            raise YDocError(f"unknown Any tag {tag}")


def _decode(data: bytes, body: Callable[[_Reader], T]) -> T:
    if not isinstance(data, bytes | bytearray):
        raise YDocError("expected bytes")
    r = _Reader(data)
    try:
        result = body(r)
    except (IndexError, UnicodeDecodeError) as exc:
        raise YDocError("truncated or malformed data") from exc
    if r.pos != len(data):
        raise YDocError("trailing bytes")
    return result


def _merged(ranges: Ranges) -> Ranges:
    out: Ranges = {}
    for client, spans in ranges.items():
        lst = out.setdefault(client, [])
        for start, end in sorted(spans) if len(spans) > 1 else spans:
            if lst and start <= lst[-1][1]:
                lst[-1] = (lst[-1][0], max(end, lst[-1][1]))
            elif end > start:
                lst.append((start, end))
    return {c: lst for c, lst in out.items() if lst}


class UpdateInfo(NamedTuple):
    """What a Yjs v1 update contains, from its bytes alone. `structs`: clock ranges of the
    operations it carries (items and GC'd structs; skips are gaps). `deletes`: its delete set.
    `refs`: per client, 1 + the highest clock its items name as origin or parent - operations
    the sender must have known."""

    structs: Ranges
    deletes: Ranges
    refs: StateVector


Update = bytes | UpdateInfo
"""An update, raw or already parsed (parse once, ask several questions)."""


def update_info(update: bytes) -> UpdateInfo:
    """Parse a Yjs v1 update completely (also the validity check before pycrdt sees it).

    Layout: varuint number of client groups; per group varuint #structs, client, start clock,
    then the structs; then the delete set. Struct lengths depend on their content (a string's
    is its UTF-16 length), so every struct is decoded - an update that does not start at clock
    0 cannot be measured by applying it to an empty Doc (its operations stay pending there)."""
    return _decode(update, _update_info)


def _update_info(r: _Reader) -> UpdateInfo:
    structs: Ranges = {}
    refs: StateVector = {}

    def ref() -> None:
        client, clock = r.uint(), r.uint()
        refs[client] = max(refs.get(client, 0), clock + 1)

    for _ in range(r.uint()):
        count, client, clock = r.uint(), r.uint(), r.uint()
        spans = structs.setdefault(client, [])
        for _ in range(count):
            info = r.u8()
            kind = info & 0x1F
            if kind in (0, 10):  # GC, Skip
                length = r.uint()
            else:
                if info & 0x80:
                    ref()  # origin
                if info & 0x40:
                    ref()  # right origin
                if not info & 0xC0:  # no origins: the parent is written out
                    r.string() if r.uint() == 1 else ref()  # root name, or parent item id
                    if info & 0x20:
                        r.string()  # key within a map
                length = _content_length(r, kind)
            if kind != 10 and spans and spans[-1][1] == clock:
                spans[-1] = (spans[-1][0], clock + length)
            elif kind != 10:
                spans.append((clock, clock + length))
            clock += length
    deletes: Ranges = {}
    for _ in range(r.uint()):
        spans = deletes.setdefault(r.uint(), [])
        for _ in range(r.uint()):
            start = r.uint()
            spans.append((start, start + r.uint()))
    return UpdateInfo(_merged(structs), _merged(deletes), refs)


def _content_length(r: _Reader, kind: int) -> int:
    if kind == 1:  # deleted
        return r.uint()
    if kind in (2, 8):  # JSON strings, Any values
        count = r.uint()
        for _ in range(count):
            r.string() if kind == 2 else r.any()
        return count
    if kind == 4:  # string
        return len(r.string().encode("utf-16-le")) // 2
    if kind == 3:  # binary
        r.raw(r.uint())
    elif kind in (5, 6):  # embed (JSON); format (key, JSON)
        r.string()
        if kind == 6:
            r.string()
    elif kind == 7:  # nested shared type
        type_ref = r.uint()
        if type_ref in (3, 5):  # XmlElement, XmlHook carry a name
            r.string()
        elif type_ref > 6:
            raise YDocError(f"unsupported type ref {type_ref}")
    elif kind == 9:  # subdocument: guid, options
        r.string()
        r.any()
    else:
        raise YDocError(f"unknown content ref {kind}")
    return 1


# --- state vectors and merge detection ------------------------------------------------------


def decode_state_vector(data: bytes) -> StateVector:
    """Decode a Yjs v1 state vector: varuint count, then (client, clock) varuint pairs."""

    def body(r: _Reader) -> StateVector:
        sv: StateVector = {}
        for _ in range(r.uint()):
            client = r.uint()
            sv[client] = max(sv.get(client, 0), r.uint())
        return sv

    return _decode(data, body)


def encode_state_vector(sv: Mapping[int, int]) -> bytes:
    pairs = sorted((c, k) for c, k in sv.items() if k > 0)
    return b"".join(map(pycrdt.write_var_uint, (len(pairs), *(n for pair in pairs for n in pair))))


def _sv(sv: SV) -> StateVector:
    return decode_state_vector(sv) if isinstance(sv, bytes | bytearray) else dict(sv)


def _info(update: Update) -> UpdateInfo:
    return update if isinstance(update, UpdateInfo) else update_info(update)


def lacks(known: SV, other: SV) -> bool:
    """Whether `other` has an operation `known` does not (`other` is not <= `known`)."""
    mine = _sv(known)
    return any(clock > mine.get(c, 0) for c, clock in _sv(other).items())


def sv_union(a: SV, b: SV) -> StateVector:
    """Pointwise max: what a client knows once it also received everything `b` covers."""
    out = _sv(a)
    for c, clock in _sv(b).items():
        out[c] = max(out.get(c, 0), clock)
    return out


def advance_sv(known: SV, update: Update) -> StateVector:
    """`known` after its owner received `update` (a room forwarding an update to a client).

    Only ranges contiguous with what is known advance it: an operation past a gap stays
    pending at the receiver, so it is not known yet."""
    out = _sv(known)
    for c, ranges in _info(update).structs.items():
        for start, end in ranges:
            if start <= out.get(c, 0) < end:
                out[c] = end
    return out


def brings_new(server_sv: SV, update: Update, server_deletes: Update | None = None) -> bool:
    """Whether `update` changes the server's document.

    New operations: a clock range past `server_sv`. New deletions, only when `server_deletes`
    is given (any update holding the server's delete set; cheapest is
    `doc.get_update(doc.get_state())`): a deleted range within `server_sv` that the server has
    not deleted. Without it deletions are ignored: every sync step 2 carries the sender's whole
    delete set, so counting it blindly would flag nearly every reconnect."""
    sv, info = _sv(server_sv), _info(update)
    if any(rs[-1][1] > sv.get(c, 0) for c, rs in info.structs.items()):
        return True
    if server_deletes is None:
        return False
    done = _info(server_deletes).deletes
    for c, rs in info.deletes.items():
        for start, end in rs:
            for d_start, d_end in done.get(c, []):
                if d_start <= start < d_end:
                    start = d_end
            if start < min(end, sv.get(c, 0)):
                return True
    return False


def is_merge(
    server_sv: SV, client_sv: SV | None, update: Update, *, server_deletes: Update | None = None
) -> bool:
    """A Yjs merge: `brings_new(server_sv, update, server_deletes)` and `lacks(client_sv,
    server_sv)` - the update brings the server something new from a sender that lacked
    something the server had (design.md §4).

    `server_sv`: the server's state vector before applying `update`. `client_sv`: what the
    sender knew when it made `update` - for the sync step 2 a client sends in reply to the
    server's step 1, the state vector of the client's own step 1 (its handshake), even if the
    server's step 2 went out meanwhile; for live updates, the state vector the room tracks per
    client (`sv_union` with what it sent in its step 2, `advance_sv` per forwarded update), so a
    synced editor's keystrokes are never merges; over HTTP, the poster's `sv`. `None` means
    unknown: we take the lower bound the update itself proves (its own operations and the ids it
    references), which errs towards archiving. State vectors do not record deletions, so a
    sender that lacked only deletions of the server is not detected."""
    info = _info(update)
    if not brings_new(server_sv, info, server_deletes):
        return False
    if client_sv is None:
        client_sv = sv_union({c: rs[-1][1] for c, rs in info.structs.items()}, info.refs)
    return lacks(client_sv, server_sv)


# --- loading, root discovery, content as JSON ----------------------------------------------


def _guard(action: Callable[[], T], what: str) -> T:
    """Run pycrdt code; any failure (ValueError, RuntimeError, a Rust panic) -> YDocError."""
    try:
        return action()
    except (YDocError, KeyboardInterrupt, SystemExit):
        raise
    except BaseException as exc:  # pyo3's PanicException derives from BaseException
        raise YDocError(f"{what}: {exc}") from exc


def _load(update: bytes, client_id: int | None = None, *, checked: bool = False) -> Doc[Any]:
    if not checked:
        update_info(update)  # refuse what could crash yrs before it sees the bytes
    doc: Doc[Any] = Doc(client_id=client_id)
    _guard(partial(doc.apply_update, update), "cannot apply update")
    return doc


def _kind(doc: Doc[Any], name: str) -> RootKind | None:
    """A root's type, read from its live content: a Yjs update does not record root types.

    pycrdt lists root names (`doc.keys()`) with an undefined type until one is asked for, and
    each typed view (`doc.get(name, type=...)`) reads any root; so we look through them: live
    map entries -> map; a string or plain embed in the text view -> text; only XML nodes ->
    xml; other items -> array. A root without live content has no detectable type: None."""
    if next(iter(doc.get(name, type=Map).keys()), None) is not None:
        return "map"
    if any(not isinstance(v, _SHARED) for v, _ in doc.get(name, type=Text).diff()):
        return "text"
    count = len(doc.get(name, type=Array))
    if not count:
        return None
    return "xml" if len(list(doc.get(name, type=XmlFragment).children)) == count else "array"


def _roots(doc: Doc[Any]) -> dict[str, tuple[RootKind, Any]]:
    found = {name: _kind(doc, name) for name in sorted(doc.keys())}
    return {n: (k, doc.get(n, type=_VIEWS[k])) for n, k in found.items() if k is not None}


def root_kinds(update: bytes) -> dict[str, RootKind]:
    """The roots that have live content, with their detected types."""
    doc = _load(update)
    return _guard(lambda: {n: k for n, (k, _) in _roots(doc).items()}, "cannot read roots")


def content_json(update: bytes) -> dict[str, Any]:
    """The document's content as JSON: root name -> value, for the roots with live content.

    Text: a str, or a Quill delta `[{"insert", "attributes"?}]` when it has formatting or
    embeds. Map: dict. Array: list. XmlFragment (y-prosemirror's "default"): a list of nodes,
    `{"element": tag, "attributes": {...}, "children": [...]}` or `{"text": str | delta,
    "attributes"?: {...}}` (marks are the delta's attributes). Integral numbers are ints,
    binary is `{"binary": base64}`, a subdocument `{"subdoc": guid}`."""
    doc = _load(update)
    return _guard(lambda: {n: _json(r) for n, (_, r) in _roots(doc).items()}, "cannot read")


def _plain(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in sorted(value.items())}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    if isinstance(value, bytes | bytearray):
        return {"binary": base64.b64encode(value).decode()}
    if isinstance(value, float) and value.is_integer() and abs(value) < 2**53:
        return int(value)
    return value


def _json(value: Any, depth: int = 0) -> Any:
    if depth > MAX_DEPTH:
        raise YDocError(f"content nested deeper than {MAX_DEPTH}")
    if isinstance(value, Map):
        return {k: _json(value[k], depth + 1) for k in sorted(value.keys())}
    if isinstance(value, Array | XmlFragment):
        items = value.children if isinstance(value, XmlFragment) else value
        return [_json(v, depth + 1) for v in items]
    if isinstance(value, Text):
        return _text_json(value.diff(), depth)
    if isinstance(value, XmlElement | XmlText):
        attrs = _plain(_attributes(value))
        if isinstance(value, XmlText):
            text = {"text": _text_json(value.diff(), depth)}
            return text | ({"attributes": attrs} if attrs else {})
        children = [_json(c, depth + 1) for c in value.children]
        return {"element": value.tag, "attributes": attrs, "children": children}
    if isinstance(value, Doc):
        return {"subdoc": value.guid}
    return _plain(value)


def _attributes(node: XmlElement | XmlText) -> dict[str, Any]:
    return dict(node.attributes.__iter__())  # its __iter__ is typed Iterable, not Iterator


def _attrs(attrs: Mapping[str, Any] | None) -> dict[str, Any]:
    return {k: v for k, v in (attrs or {}).items() if v is not None}


def _text_json(chunks: list[tuple[Any, Any]], depth: int) -> str | list[dict[str, Any]]:
    ops: list[dict[str, Any]] = []
    for value, raw in chunks:
        attrs = _plain(_attrs(raw))
        ins = value if isinstance(value, str) else _json(value, depth + 1)
        last = ops[-1] if ops else {}
        if (
            isinstance(ins, str)
            and isinstance(last.get("insert"), str)
            and (last.get("attributes", {}) == attrs)
        ):
            last["insert"] += ins
        else:
            ops.append({"insert": ins} | ({"attributes": attrs} if attrs else {}))
    if all(isinstance(op["insert"], str) and "attributes" not in op for op in ops):
        return "".join(op["insert"] for op in ops)
    return ops


def _canon(value: Any) -> str:
    return json.dumps([type(value).__name__, _json(value)], sort_keys=True)


# --- side-by-side diff -----------------------------------------------------------------------


def diff(old: Mapping[str, Any], new: Mapping[str, Any]) -> list[dict[str, Any]]:
    """Side-by-side diff of two `content_json` results, for the admin console.

    Rows `{"root", "path", "before", "after", "change": "added"|"removed"|"changed"|"same"}`;
    `path` is a JSON Pointer into `new` (into `old` for removed rows); an unchanged subtree is
    one "same" row; list items are aligned by difflib, unequal stretches again by XML tag / JSON
    type, so an edited paragraph pairs with its old self. A text root is one row with `"lines"`:
    `{"before", "after", "before_line", "after_line", "change"}` (embeds shown as U+FFFC)."""
    rows: list[dict[str, Any]] = []
    for root in sorted(set(old) | set(new)):
        a, b = old.get(root), new.get(root)
        change = None if root in old and root in new else "added" if root in new else "removed"
        text = all(v is None or _is_text(v) for v in (a, b))
        if text and change is None:
            change = "same" if _key(a) == _key(b) else "changed"
        _diff_value(rows, root, ("", ""), a, b, change)
        if text:
            rows[-1]["lines"] = _line_diff(_plain_text(a), _plain_text(b))
    return rows


def _row(root: str, path: str, before: Any, after: Any, change: str) -> dict[str, Any]:
    return {"root": root, "path": path, "before": before, "after": after, "change": change}


def _is_text(value: Any) -> bool:
    ops = value if isinstance(value, list) and value else [None]
    return isinstance(value, str) or all(isinstance(op, dict) and "insert" in op for op in ops)


def _plain_text(value: Any) -> str:
    if not isinstance(value, list):
        return value or ""
    return "".join(op["insert"] if isinstance(op["insert"], str) else "\ufffc" for op in value)


def _key(value: Any) -> str:
    return json.dumps(value, sort_keys=True)


def _shape(value: Any) -> str:
    if isinstance(value, dict) and "element" in value:
        return f"element:{value['element']}"
    return type(value).__name__


def _align(a: list[Any], b: list[Any]) -> list[tuple[str, int, int, int, int]]:
    """difflib opcodes from `a` to `b`. The common prefix and suffix are trimmed first (cheap,
    the usual case); a middle that would hit difflib's quadratic worst case (long and
    repetitive) becomes one block."""
    p, q, most = 0, 0, min(len(a), len(b))
    while p < most and a[p] == b[p]:
        p += 1
    while q < most - p and a[-1 - q] == b[-1 - q]:
        q += 1
    mid_a, mid_b = a[p : len(a) - q], b[p : len(b) - q]
    tag = "replace" if mid_a and mid_b else "delete" if mid_a else "insert"
    ops: Sequence[tuple[str, int, int, int, int]] = [(tag, 0, len(mid_a), 0, len(mid_b))]
    counts = Counter(mid_b)  # difflib's work grows with how often a's items recur in b
    if tag == "replace" and sum(counts[x] for x in mid_a) <= 300_000:
        ops = difflib.SequenceMatcher(None, mid_a, mid_b, autojunk=False).get_opcodes()
    ends = [("equal", 0, p, 0, p), ("equal", len(a) - q, len(a), len(b) - q, len(b))]
    middle = [
        (t, i1 + p, i2 + p, j1 + p, j2 + p) for t, i1, i2, j1, j2 in ops if i2 > i1 or j2 > j1
    ]
    return [op for op in (ends[0], *middle, ends[1]) if op[2] > op[1] or op[4] > op[3]]


def _diff_value(
    rows: list[dict[str, Any]],
    root: str,
    paths: tuple[str, str],
    a: Any,
    b: Any,
    change: str | None = None,
) -> None:
    if change or _key(a) == _key(b):
        rows.append(_row(root, paths[0 if change == "removed" else 1], a, b, change or "same"))
    elif isinstance(a, dict) and isinstance(b, dict):
        for key in sorted(set(a) | set(b)):
            k = key.replace("~", "~0").replace("/", "~1")
            gone = "added" if key not in a else "removed" if key not in b else None
            sub = (f"{paths[0]}/{k}", f"{paths[1]}/{k}")
            _diff_value(rows, root, sub, a.get(key), b.get(key), gone)
    elif isinstance(a, list) and isinstance(b, list):
        keys_a, keys_b = [_key(x) for x in a], [_key(x) for x in b]
        for tag, i1, i2, j1, j2 in _align(keys_a, keys_b):
            pieces = [(i1, i2, j1, j2)]
            if tag == "replace":  # align again by XML tag / JSON type
                shapes = _align([_shape(x) for x in a[i1:i2]], [_shape(x) for x in b[j1:j2]])
                pieces = [(i1 + x1, i1 + x2, j1 + y1, j1 + y2) for _, x1, x2, y1, y2 in shapes]
            for x1, x2, y1, y2 in pieces:
                for k in range(max(x2 - x1, y2 - y1)):
                    x, y = x1 + k, y1 + k
                    sub = (f"{paths[0]}/{x}", f"{paths[1]}/{y}")
                    if k < x2 - x1 and k < y2 - y1:
                        same = keys_a[x] == keys_b[y]
                        _diff_value(rows, root, sub, a[x], b[y], "same" if same else None)
                    elif k < x2 - x1:
                        rows.append(_row(root, sub[0], a[x], None, "removed"))
                    else:
                        rows.append(_row(root, sub[1], None, b[y], "added"))
    else:
        rows.append(_row(root, paths[1], a, b, "changed"))


def _line_diff(a: str, b: str) -> list[dict[str, Any]]:
    la, lb = a.splitlines(), b.splitlines()
    out: list[dict[str, Any]] = []
    for tag, i1, i2, j1, j2 in _align(la, lb):
        for k in range(max(i2 - i1, j2 - j1)):
            x = la[i1 + k] if k < i2 - i1 else None
            y = lb[j1 + k] if k < j2 - j1 else None
            change = "removed" if y is None else "added" if x is None else "changed"
            out.append({
                "before": x, "after": y, "change": "same" if tag == "equal" else change,
                "before_line": None if x is None else i1 + k + 1,
                "after_line": None if y is None else j1 + k + 1,
            })  # fmt: skip
    return out


# --- restore ---------------------------------------------------------------------------------


def restore_update(current: bytes, snapshot: bytes) -> bytes:
    """A forward update that makes `current`'s content equal to `snapshot`'s.

    Authored by a fresh random client id (in neither document) on top of `current`, so every
    replica holding `current` converges to the snapshot's content once it applies it; the
    snapshot's operations are only read, never re-sent (we never use `Doc.from_snapshot`, which
    keeps the source client id). Edits are minimal-ish: sequences (text, arrays, XML children)
    are aligned by difflib - equal items stay, changed same-typed nodes (same XML tag) are
    edited in place, the rest replaced; maps and attributes change per key; text formatting
    and embeds are restored. Roots are typed by `_kind` on a separate probe copy of `current`,
    so the working doc is only ever viewed with the right type. `EMPTY_UPDATE` when nothing
    differs."""
    taken = set(update_info(current).structs) | set(update_info(snapshot).structs)
    client_id = 0
    while client_id in taken or not client_id:
        client_id = secrets.randbits(32)  # Yjs client ids are uint32
    source, probe = _load(snapshot, checked=True), _load(current, checked=True)
    work = _load(current, client_id, checked=True)

    def run() -> bytes:
        wanted, have = _roots(source), {n: k for n, (k, _) in _roots(probe).items()}
        captured: list[bytes] = []

        def capture(event: TransactionEvent) -> None:
            captured.append(event.update)  # this transaction's operations and deletions only

        sub = work.observe(capture)
        with work.transaction():
            for name in sorted(set(wanted) | set(have)):
                kind, src = wanted.get(name, (None, None))
                if have.get(name) not in (None, kind):
                    _clear(work.get(name, type=_VIEWS[have[name]]))
                if kind is not None:
                    _sync(work.get(name, type=_VIEWS[kind]), src, 0)
        work.unobserve(sub)
        return captured[0] if captured else EMPTY_UPDATE

    return _guard(run, "cannot restore")


def _clear(view: Any) -> None:
    if isinstance(view, Map):
        for key in list(view.keys()):
            del view[key]
    else:
        seq = view.children if isinstance(view, XmlFragment) else view
        del seq[0 : len(seq)]


def _same_shape(cur: Any, src: Any) -> bool:
    """Whether `cur` can be edited in place into `src` (same shared type, same XML tag)."""
    if type(cur) is not type(src) or not isinstance(src, _SHARED) or isinstance(src, Doc):
        return False
    return not isinstance(src, XmlElement) or bool(cur.tag == src.tag)


def _native(value: Any) -> Any:
    """A value read from pycrdt, as pycrdt accepts it back (it reads binary as bytearray)."""
    if isinstance(value, dict):
        return {k: _native(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_native(v) for v in value]
    return bytes(value) if isinstance(value, bytearray) else value


def _put(insert: Callable[[Any], Any], src: Any, depth: int) -> None:
    """Insert a copy of `src`: an empty shared type that `_sync` then fills, or the value."""
    if isinstance(src, XmlFragment):
        raise YDocError("nested XmlFragment values are not supported")
    if isinstance(src, Doc):
        insert(Doc(guid=src.guid))
    elif isinstance(src, _SHARED):
        value = XmlElement(src.tag) if isinstance(src, XmlElement) else type(src)()
        inserted = insert(value)
        _sync(inserted if inserted is not None else value, src, depth + 1)
    else:
        insert(_native(src))


def _sync(target: Any, src: Any, depth: int) -> None:
    """Edit `target` (in the working doc) until its content equals `src` (snapshot doc)."""
    if depth > MAX_DEPTH:
        raise YDocError(f"content nested deeper than {MAX_DEPTH}")
    if isinstance(src, Map):
        want = set(src.keys())
        for key in [k for k in target if k not in want]:
            del target[key]
        for key in sorted(want):
            value, cur = src[key], target.get(key)
            if key in target and _canon(cur) == _canon(value):
                continue
            if key in target and _same_shape(cur, value):
                _sync(cur, value, depth + 1)
            else:
                _put(partial(target.__setitem__, key), value, depth)
    elif isinstance(src, Text | XmlText):
        _sync_text(target, src, depth)
    elif isinstance(src, Array | XmlFragment | XmlElement):
        seq = target if isinstance(src, Array) else target.children
        items = src if isinstance(src, Array) else src.children
        _sync_seq(seq, list(seq), list(items), depth)
    if isinstance(src, XmlElement | XmlText):
        have, want_attrs = _attributes(target), _attributes(src)
        for key in have.keys() - want_attrs.keys():
            del target.attributes[key]
        for key, value in want_attrs.items():
            if key not in have or _canon(have[key]) != _canon(value):
                target.attributes[key] = _native(value)


def _edits(a: list[Any], b: list[Any]) -> list[tuple[str, int, int, int, int]]:
    """The non-equal opcodes, last first: earlier indices stay valid while we edit."""
    return [op for op in reversed(_align(a, b)) if op[0] != "equal"]


def _sync_seq(seq: Any, cur: list[Any], src: list[Any], depth: int) -> None:
    """Keep equal items; pair changed ones and edit same-typed pairs in place."""
    for _, i1, i2, j1, j2 in _edits([_canon(x) for x in cur], [_canon(x) for x in src]):
        pairs = min(i2 - i1, j2 - j1)
        if i2 - i1 > pairs:
            del seq[i1 + pairs : i2]
        for k in range(pairs):
            if _same_shape(cur[i1 + k], src[j1 + k]):
                _sync(cur[i1 + k], src[j1 + k], depth + 1)
            else:
                del seq[i1 + k : i1 + k + 1]
                _put(partial(seq.insert, i1 + k), src[j1 + k], depth)
        for k in range(pairs, j2 - j1):
            _put(partial(seq.insert, i1 + k), src[j1 + k], depth)


def _text_units(chunks: list[tuple[Any, Any]]) -> list[tuple[str, str, Any, dict[str, Any]]]:
    """(key, attributes key, value, attributes) per character or embed."""
    units: list[tuple[str, str, Any, dict[str, Any]]] = []
    for value, raw in chunks:
        attrs = _attrs(raw)
        akey = json.dumps(_plain(attrs), sort_keys=True)
        if isinstance(value, str):
            units.extend((ch, akey, ch, attrs) for ch in value)
        else:
            units.append((_canon(value), akey, value, attrs))
    return units


def _sync_text(target: Any, src: Any, depth: int) -> None:
    cur, want = _text_units(target.diff()), _text_units(src.diff())
    # pycrdt indexes text by UTF-8 bytes; an embed counts 1
    offsets = list(
        accumulate((len(u[2].encode()) if isinstance(u[2], str) else 1 for u in cur), initial=0)
    )
    for _, i1, i2, j1, j2 in _edits([u[:2] for u in cur], [u[:2] for u in want]):
        pos = offsets[i1]
        if i2 > i1:
            del target[pos : offsets[i2]]
        i = j1
        while i < j2:  # attributes always explicit (even {}): else yrs inherits the left ones
            _, akey, value, attrs = want[i]
            j = i + 1
            if isinstance(value, str):
                while j < j2 and isinstance(want[j][2], str) and want[j][1] == akey:
                    j += 1
                text = "".join(u[2] for u in want[i:j])
                target.insert(pos, text, attrs)
                pos += len(text.encode())
            else:
                _put(partial(target.insert_embed, pos, attrs=attrs), value, depth)
                pos += 1
            i = j


# --- compaction ------------------------------------------------------------------------------


def compact(updates: Iterable[bytes], checkpoint: bytes | None = None) -> bytes:
    """One update equivalent to `checkpoint` plus `updates` (in any order).

    Applied to one Doc and re-encoded: ~30x faster than `pycrdt.merge_updates` over many small
    updates (design.md §5). yrs silently drops pending operations (those waiting for a missing
    one) when it encodes a Doc, so the parts of inputs it could not integrate are merged back
    in, as Yjs does: a gap in the log never loses data."""
    parts = ([checkpoint] if checkpoint is not None else []) + list(updates)
    infos = [update_info(u) for u in parts]
    doc: Doc[Any] = Doc()

    def run() -> bytes:
        with doc.transaction():
            for update in parts:
                doc.apply_update(update)
        sv = decode_state_vector(doc.get_state())
        rest = [
            u
            for u, info in zip(parts, infos, strict=True)
            if any(
                rs[-1][1] > sv.get(c, 0)
                for ranges in (info.structs, info.deletes)
                for c, rs in ranges.items()
            )
        ]
        if not rest:
            return doc.get_update()
        state = encode_state_vector(sv)
        parts_left = (pycrdt.get_update(u, state) for u in rest)
        return pycrdt.merge_updates(doc.get_update(), *parts_left)

    return _guard(run, "cannot compact")
