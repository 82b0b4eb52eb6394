"""crdt_sync.ydoc: merge detection, content JSON, diff, restore, compaction, decoder hygiene."""

from __future__ import annotations

import random
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pycrdt import Array, Doc, Map, Text, XmlElement, XmlFragment, XmlText

from crdt_sync import ydoc
from crdt_sync.ydoc import (
    EMPTY_UPDATE,
    YDocError,
    advance_sv,
    compact,
    content_json,
    decode_state_vector,
    diff,
    encode_state_vector,
    is_merge,
    restore_update,
    root_kinds,
    sv_union,
    update_info,
)

PROPS = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])

# --- random documents -------------------------------------------------------------------------

WORDS = ["a", "hello ", "é", "😀", "\n", "line\nbreak", "xyz", " "]
FORMATS: list[dict[str, Any] | None] = [
    None,
    {"bold": True},
    {"italic": True},
    {"bold": None},
    {"link": {"href": "https://x"}},
    {"bold": {}},
]
VALUES: list[Any] = [0, 1, 2.5, True, None, "s", [1, "x"], {"k": [True]}, b"\x00\x01"]
TAGS = ["paragraph", "heading", "blockquote"]

KINDS = [0, 0, 1, 2, 3, 4, 5, 6, 7, 8, 8, 8, 9, 10, 10, 11, 11, 12, 13, 13]
op = st.tuples(
    st.sampled_from(KINDS), st.integers(0, 1000), st.integers(0, 1000), st.integers(0, 1000)
)
ops = st.lists(op, max_size=30)


def _byte_offset(text: Any, index: int) -> int:
    """pycrdt indexes text by UTF-8 bytes (an embed counts 1): a position on a boundary."""
    widths = [
        len(ch.encode())
        for value, _ in text.diff()
        for ch in (value if isinstance(value, str) else "?")
    ]
    return sum(widths[: index % (len(widths) + 1)])


def _texts(node: Any) -> list[Any]:
    found: list[Any] = []
    for child in node.children:
        if isinstance(child, XmlText):
            found.append(child)
        elif isinstance(child, XmlElement):
            found.extend(_texts(child))
    return found


def _elements(node: Any) -> list[Any]:
    found: list[Any] = []
    for child in node.children:
        if isinstance(child, XmlElement):
            found.append(child)
            found.extend(_elements(child))
    return found


def _edit_text(text: Any, kind: int, a: int, b: int, c: int) -> None:
    word, fmt = WORDS[b % len(WORDS)], FORMATS[c % len(FORMATS)]
    start = _byte_offset(text, a)
    if kind == 0:
        text.insert(start, word, fmt)
    elif kind == 1:
        end = _byte_offset(text, a + b % 5 + 1)
        if end > start:
            del text[start:end]
    elif kind == 2:
        end = _byte_offset(text, a + b % 7 + 1)
        if end > start and fmt:
            text.format(start, end, fmt)
    else:
        text.insert_embed(start, {"image": word}, fmt)


def apply_ops(doc: Doc[Any], program: list[tuple[int, int, int, int]]) -> None:
    """Random edits over the four root kinds a Yjs app uses (as Tiptap/y-prosemirror does)."""
    text = doc.get("t", type=Text)
    amap = doc.get("m", type=Map)
    arr = doc.get("a", type=Array)
    frag = doc.get("default", type=XmlFragment)
    for kind, a, b, c in program:
        with doc.transaction():
            if kind <= 3:
                _edit_text(text, kind, a, b, c)
            elif kind == 4:
                value = VALUES[b % len(VALUES)]
                if c % 3 == 0:
                    value = Map({"inner": value, "t": Text(WORDS[a % len(WORDS)])})
                elif c % 3 == 1:
                    value = Array([value, Text("n")])
                amap[f"k{a % 4}"] = value
            elif kind == 5:
                key = f"k{a % 4}"
                if key in amap:
                    inner = amap[key]
                    if isinstance(inner, Map) and isinstance(inner.get("t"), Text):
                        _edit_text(inner["t"], b % 3, a, b, c)
                    else:
                        del amap[key]
            elif kind == 6:
                value = VALUES[b % len(VALUES)]
                arr.insert(a % (len(arr) + 1), Map({"v": value}) if c % 2 else value)
            elif kind == 7 and len(arr):
                del arr[a % len(arr)]
            elif kind == 8:
                attrs = {"level": b % 3} if c % 2 else {"textAlign": "left"}
                node = XmlElement(TAGS[b % len(TAGS)], attrs, [XmlText(WORDS[c % len(WORDS)])])
                frag.children.insert(a % (len(frag.children) + 1), node)
            elif kind == 9 and len(frag.children):
                del frag.children[a % len(frag.children)]
            elif kind in (10, 11):
                texts = _texts(frag)
                if texts:
                    _edit_text(texts[a % len(texts)], (b + c) % 4, a, b, c)
            elif kind == 12:
                elements = _elements(frag)
                if elements:
                    el = elements[a % len(elements)]
                    if c % 3 == 0 and "textAlign" in el.attributes:
                        del el.attributes["textAlign"]
                    else:
                        el.attributes["textAlign"] = ["left", "center"][c % 2]
            elif kind == 13:
                elements = _elements(frag)
                if elements:
                    el = elements[a % len(elements)]
                    el.children.insert(b % (len(el.children) + 1), XmlElement("em", {}, ["x"]))


def build(*programs: list[tuple[int, int, int, int]], client_id: int = 1) -> list[bytes]:
    """Full-state updates of one document after each program."""
    doc: Doc[Any] = Doc(client_id=client_id)
    states = []
    for program in programs:
        apply_ops(doc, program)
        states.append(doc.get_update())
    return states


def applied(*updates: bytes) -> Doc[Any]:
    doc: Doc[Any] = Doc()
    for update in updates:
        doc.apply_update(update)
    return doc


def content_of(*updates: bytes) -> dict[str, Any]:
    return content_json(applied(*updates).get_update())


# --- restore ----------------------------------------------------------------------------------


@PROPS
@given(ops, ops)
def test_restore_makes_content_equal_to_the_snapshot(first: Any, then: Any) -> None:
    snapshot, current = build(first, then)
    update = restore_update(current, snapshot)
    assert content_of(current, update) == content_json(snapshot)
    fresh = set(update_info(update).structs)  # one new client id, nobody's old one
    assert len(fresh) <= 1
    assert not fresh & (set(update_info(current).structs) | set(update_info(snapshot).structs))


@PROPS
@given(ops, ops)
def test_restoring_the_pre_restore_state_brings_it_back(first: Any, then: Any) -> None:
    snapshot, current = build(first, then)
    restored = compact([current, restore_update(current, snapshot)])
    assert content_json(restored) == content_json(snapshot)
    back = restore_update(restored, current)
    assert content_of(restored, back) == content_json(current)


@PROPS
@given(ops, ops, ops)
def test_replicas_that_receive_the_restore_converge(first: Any, then: Any, other: Any) -> None:
    snapshot, current = build(first, then)
    update = restore_update(current, snapshot)
    a, b = applied(current), applied(current)
    b_before = b.get_state()
    apply_ops(b, other)  # a replica with its own concurrent edits
    concurrent = b.get_update(b_before)
    a.apply_update(update)
    assert content_json(a.get_update()) == content_json(snapshot)
    b.apply_update(update)
    a.apply_update(concurrent)
    assert content_json(a.get_update()) == content_json(b.get_update())


def test_restore_of_an_identical_state_is_empty() -> None:
    (state,) = build([(0, 1, 1, 1), (8, 0, 0, 1)])
    assert restore_update(state, state) == EMPTY_UPDATE


def test_restore_keeps_text_formatting_and_tiptap_structure() -> None:
    doc: Doc[Any] = Doc(client_id=5)
    frag = doc.get("default", type=XmlFragment)
    para = frag.children.append(XmlElement("paragraph", {"textAlign": "left"}))
    words = para.children.append(XmlText("Hello bold"))
    words.format(6, 10, {"bold": {}})
    heading = frag.children.append(XmlElement("heading", {"level": 1}, [XmlText("Title")]))
    doc.get("t", type=Text).insert(0, "plain ")
    doc.get("t", type=Text).insert(6, "bold", {"bold": True})
    snapshot = doc.get_update()
    words.insert(0, "Oh ", {"italic": True})
    words.format(0, 10, {"bold": None})
    heading.attributes["level"] = 2
    frag.children.insert(0, XmlElement("hr"))
    doc.get("t", type=Text).format(0, 10, {"bold": None})
    current = doc.get_update()
    assert content_of(current, restore_update(current, snapshot)) == content_json(snapshot)
    assert content_json(snapshot)["default"][0] == {
        "element": "paragraph",
        "attributes": {"textAlign": "left"},
        "children": [
            {"text": [{"insert": "Hello "}, {"insert": "bold", "attributes": {"bold": {}}}]}
        ],
    }
    assert content_json(snapshot)["default"][1]["attributes"] == {"level": 1}


def test_restore_of_a_root_the_snapshot_did_not_have() -> None:
    snapshot, current = build([(0, 1, 1, 0)], [(4, 1, 1, 1), (8, 0, 0, 0)])
    assert set(content_json(current)) == {"t", "m", "default"}
    assert content_of(current, restore_update(current, snapshot)) == {"t": "hello "}


# --- content, roots, diff -----------------------------------------------------------------------


def test_roots_of_unknown_type_are_discovered() -> None:
    doc: Doc[Any] = Doc()
    doc["t"] = Text("hi")
    doc["m"] = Map({"a": 1})
    doc["a"] = Array([1, Map({"x": "y"})])
    doc.get("default", type=XmlFragment).children.append(XmlElement("p", {}, ["x"]))
    doc["empty"] = Text("")
    update = doc.get_update()
    assert root_kinds(update) == {"t": "text", "m": "map", "a": "array", "default": "xml"}
    assert content_json(update) == {
        "t": "hi",
        "m": {"a": 1},
        "a": [1, {"x": "y"}],
        "default": [{"element": "p", "attributes": {}, "children": [{"text": "x"}]}],
    }


def test_diff_rows() -> None:
    old = {"t": "one\ntwo\nthree", "m": {"a": 1, "b": [1, 2]}, "gone": [1]}
    new = {"t": "one\n2\nthree\nfour", "m": {"a": 1, "b": [1, 3], "c": None}, "x": {}}
    rows = diff(old, new)
    by = {(r["root"], r["path"]): r for r in rows}
    assert by[("gone", "")]["change"] == "removed" and by[("x", "")]["change"] == "added"
    assert by[("m", "/a")]["change"] == "same"
    assert (by[("m", "/b/1")]["before"], by[("m", "/b/1")]["after"]) == (2, 3)
    assert by[("m", "/c")]["change"] == "added"
    lines = by[("t", "")]["lines"]
    assert [(ln["before"], ln["after"], ln["change"]) for ln in lines] == [
        ("one", "one", "same"),
        ("two", "2", "changed"),
        ("three", "three", "same"),
        (None, "four", "added"),
    ]
    assert lines[3]["after_line"] == 4 and lines[3]["before_line"] is None


def _at(doc: Any, path: str) -> Any:
    for part in path.split("/")[1:]:
        part = part.replace("~1", "/").replace("~0", "~")
        doc = doc[int(part)] if isinstance(doc, list) else doc[part]
    return doc


@PROPS
@given(ops, ops)
def test_diff_rows_are_consistent(first: Any, then: Any) -> None:
    snapshot, current = build(first, then)
    a, b = content_json(snapshot), content_json(current)
    assert all(r["change"] == "same" for r in diff(a, a))
    rows = diff(a, b)
    assert any(r["change"] != "same" for r in rows) == (a != b)
    for row in rows:
        if row["change"] in ("same", "changed"):
            assert (row["before"] == row["after"]) == (row["change"] == "same"), row
        if row["change"] != "removed":
            assert _at(b[row["root"]], row["path"]) == row["after"]
        else:
            assert _at(a[row["root"]], row["path"]) == row["before"]


def test_restore_edits_in_place() -> None:
    doc: Doc[Any] = Doc(client_id=2)
    frag = doc.get("default", type=XmlFragment)
    with doc.transaction():
        for i in range(200):
            frag.children.append(XmlElement("paragraph", {}, [XmlText(f"Paragraph {i} " * 5)]))
    snapshot = doc.get_update()
    with doc.transaction():
        frag.children[5].children[0].insert(0, "EDIT ")
        del frag.children[100]
        frag.children[150].attributes["textAlign"] = "center"
    current = doc.get_update()
    update = restore_update(current, snapshot)
    assert content_of(current, update) == content_json(snapshot)
    assert len(update) < 300  # the three spots, not the 95 paragraphs between them
    changes = [
        r for r in diff(content_json(current), content_json(snapshot)) if r["change"] != "same"
    ]
    assert [(r["path"], r["change"]) for r in changes] == [
        ("/5/children/0/text", "changed"),
        ("/100", "added"),
        ("/150/attributes/textAlign", "removed"),  # a removal points into `old` (current)
    ]


# --- merge detection ----------------------------------------------------------------------------


def _edit(doc: Doc[Any], word: str) -> bytes:
    before = doc.get_state()
    doc.get("t", type=Text).insert(0, word)
    return doc.get_update(before)


def test_merge_definition() -> None:
    server: Doc[Any] = Doc(client_id=1)
    _edit(server, "base ")
    editor, reader = applied(server.get_update()), applied(server.get_update())
    # a connected, synced editor (its sv equals the server's): keystrokes are not merges
    known = decode_state_vector(editor.get_state())
    keystroke = _edit(editor, "k")
    assert not is_merge(server.get_state(), known, keystroke)
    server.apply_update(keystroke)
    known = advance_sv(known, keystroke)
    # the editor and the reader go offline; the server gets an edit from someone else
    other = applied(server.get_update())
    server.apply_update(_edit(other, "server "))
    # the reader reconnects with nothing new: it only lacks the server's edit
    handshake = reader.get_state()
    assert not is_merge(server.get_state(), handshake, reader.get_update(server.get_state()))
    # the editor edited offline: its sync step 2 is a merge
    _edit(editor, "offline ")
    handshake = editor.get_state()
    step2 = editor.get_update(server.get_state())
    assert is_merge(server.get_state(), handshake, step2)
    assert is_merge(server.get_state(), None, step2)  # sv unknown: inferred from the update
    assert not is_merge(server.get_state(), server.get_state(), step2)
    # the room answers with what the editor lacks and tracks it; live typing resumes
    server_step2 = server.get_update(handshake)
    server.apply_update(step2)
    editor.apply_update(server_step2)
    known = advance_sv(handshake, server_step2)
    assert known == sv_union(handshake, decode_state_vector(editor.get_state()))
    assert not is_merge(server.get_state(), known, _edit(editor, "live"))


@PROPS
@given(ops, ops, ops)
def test_merge_iff_both_sides_moved(base: Any, on_server: Any, offline: Any) -> None:
    server: Doc[Any] = Doc(client_id=1)
    apply_ops(server, base)
    editor = Doc(client_id=2)
    editor.apply_update(server.get_update())
    # a live edit from a synced editor is never a merge
    keystroke = _edit(editor, "k")
    assert not is_merge(server.get_state(), server.get_state(), keystroke)
    server.apply_update(keystroke)
    synced = editor.get_state()
    other = Doc(client_id=3)
    other.apply_update(server.get_update())
    apply_ops(other, on_server)
    server.apply_update(other.get_update())
    apply_ops(editor, offline)
    handshake = editor.get_state()
    step2 = editor.get_update(server.get_state())
    server_moved = decode_state_vector(server.get_state()) != decode_state_vector(synced)
    editor_moved = decode_state_vector(handshake) != decode_state_vector(synced)
    assert is_merge(server.get_state(), handshake, step2) == (server_moved and editor_moved)
    if not editor_moved:  # it only lacks the server's operations
        assert not is_merge(server.get_state(), handshake, step2)


def test_offline_deletions_need_the_server_delete_set() -> None:
    server: Doc[Any] = Doc(client_id=1)
    _edit(server, "some text")
    client = applied(server.get_update())
    offline_sv = client.get_state()
    _edit(server, "server ")
    before = client.get_state()
    del client.get("t", type=Text)[0:4]
    deletion = client.get_update(before)
    deletes = server.get_update(server.get_state())
    assert not is_merge(server.get_state(), offline_sv, deletion)
    assert is_merge(server.get_state(), offline_sv, deletion, server_deletes=deletes)
    server.apply_update(deletion)
    deletes = server.get_update(server.get_state())
    assert not is_merge(server.get_state(), offline_sv, deletion, server_deletes=deletes)


def test_state_vectors_round_trip_and_update_ranges() -> None:
    doc: Doc[Any] = Doc(client_id=7)
    _edit(doc, "hello")
    sv = doc.get_state()
    update = _edit(doc, " world")
    assert decode_state_vector(sv) == {7: 5}
    assert encode_state_vector(decode_state_vector(doc.get_state())) == doc.get_state()
    info = update_info(update)
    assert info.structs == {7: [(5, 11)]} and info.refs == {7: 1}
    assert advance_sv({7: 5}, update) == {7: 11}
    assert advance_sv({7: 2}, update) == {7: 2}  # a gap: the receiver keeps it pending


# --- compaction ---------------------------------------------------------------------------------


@PROPS
@given(st.lists(ops, min_size=1, max_size=6), st.randoms(use_true_random=False))
def test_compact_keeps_content(programs: Any, rnd: random.Random) -> None:
    doc: Doc[Any] = Doc(client_id=3)
    increments = []
    for program in programs:
        before = doc.get_state()
        apply_ops(doc, program)
        increments.append(doc.get_update(before))
    expected = content_json(doc.get_update())
    shuffled = increments[:]
    rnd.shuffle(shuffled)
    assert content_json(compact(shuffled)) == expected
    half = len(increments) // 2
    checkpoint = compact(increments[:half])
    assert content_json(compact(increments[half:], checkpoint)) == expected


def test_compact_never_drops_updates_waiting_for_a_missing_one() -> None:
    doc: Doc[Any] = Doc(client_id=3)
    parts = [_edit(doc, w) for w in ("one ", "two ", "three ")]
    before = doc.get_state()
    del doc.get("t", type=Text)[0:3]
    parts.append(doc.get_update(before))
    gap = compact([parts[0], parts[2], parts[3]])
    assert content_of(gap, parts[1]) == content_json(doc.get_update())


# --- decoders never crash -----------------------------------------------------------------------

VALID = build([(0, 1, 1, 1), (4, 1, 1, 0), (6, 1, 1, 1), (8, 0, 0, 1), (2, 0, 9, 1)])[0]


def _decoders(data: bytes) -> list[Any]:
    return [
        lambda: update_info(data),
        lambda: decode_state_vector(data),
        lambda: content_json(data),
        lambda: root_kinds(data),
        lambda: restore_update(data, VALID),
        lambda: restore_update(VALID, data),
        lambda: compact([VALID, data]),
        lambda: is_merge(data, data, data),
        lambda: is_merge(b"\x00", None, VALID, server_deletes=data),
        lambda: advance_sv(data, data),
    ]


def _only_ydoc_errors(data: bytes) -> None:
    for decode in _decoders(data):
        try:
            decode()
        except YDocError:
            pass


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=64))
def test_random_bytes_decode_or_raise_ydoc_error(data: bytes) -> None:
    _only_ydoc_errors(data)


@settings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(st.integers(0, len(VALID) - 1), st.integers(0, 255)), max_size=4))
def test_mutated_updates_decode_or_raise_ydoc_error(flips: list[tuple[int, int]]) -> None:
    data = bytearray(VALID)
    for pos, byte in flips:
        data[pos] = byte
    _only_ydoc_errors(bytes(data))


def test_deep_nesting_is_refused_before_pycrdt_sees_it() -> None:
    # one Any value in root "r": arrays nested n deep around a null
    def nested(n: int) -> bytes:
        return b"\x01\x01\x01\x00\x08\x01\x01r\x01" + b"\x75\x01" * n + b"\x7e\x00"

    # 100k deep: yrs recurses on it and segfaults (no exception) - we refuse it first
    with pytest.raises(YDocError, match="nested"):
        content_json(nested(100_000))
    with pytest.raises(YDocError, match="nested"):
        compact([nested(ydoc.MAX_DEPTH + 1)])
    assert content_json(nested(3)) == {"r": [[[[None]]]]}
    assert content_json(nested(ydoc.MAX_DEPTH))["r"]
