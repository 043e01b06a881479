"""The static assets under ``/static/`` (stylesheet, live-refresh script, icons), read once at start."""

from __future__ import annotations

import re
from importlib.resources import files
from pathlib import Path

from .request import Request, Response
from .routing import Routes, Site

__all__ = ["register"]

_STATIC_TYPES = {".css": "text/css; charset=utf-8", ".js": "text/javascript; charset=utf-8",
                 ".svg": "image/svg+xml", ".ico": "image/x-icon"}


def _load_static() -> dict[str, tuple[bytes, str]]:
    found: dict[str, tuple[bytes, str]] = {}
    folder = files("wmbus_stream.web").joinpath("static")
    for entry in folder.iterdir():
        suffix = Path(entry.name).suffix
        if entry.is_file() and suffix in _STATIC_TYPES:
            found[entry.name] = (entry.read_bytes(), _STATIC_TYPES[suffix])
    return found


def register(routes: Routes, site: Site) -> None:
    """Add ``/static/<name>``, public, answered from the files read now."""
    static = _load_static()

    def serve(req: Request, match: re.Match[str]) -> Response:
        found = static.get(match["name"])
        if found is None:
            return Response(404, b"not found\n", "text/plain; charset=utf-8")
        body, ctype = found
        return Response(200, body, ctype, [("Cache-Control", "private, max-age=300")])

    routes.add("GET", r"/static/(?P<name>[A-Za-z0-9_.-]+)", serve, public=True)
