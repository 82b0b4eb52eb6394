"""URL routing for ids: ids are opaque data of up to 200 characters (design.md §3), so an id
in a path takes every character a percent-encoded URL can carry.

The ASGI path is percent-decoded before routing, so Werkzeug's stock `path` converter
(`[^/].*?`, no DOTALL) missed ids that start with `/` or hold a line break (404), and slash
merging redirected `bundle//x` to `bundle/x` (308: another resource). Only an id that holds a
whole route suffix (say `x/snapshots`) stays ambiguous; clients should avoid such ids.
"""

from __future__ import annotations

from werkzeug.routing import Map, PathConverter


class IdPathConverter(PathConverter):
    """`<path:...>` for ids: any characters, `/` (also leading) and line breaks included."""

    regex = "(?s:.+?)"
    part_isolating = False  # set it: Werkzeug infers it from a "/" in the regex


def configure(url_map: Map) -> None:
    """Call before any route is added."""
    url_map.converters["path"] = IdPathConverter
    url_map.merge_slashes = False
