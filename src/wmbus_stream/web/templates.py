"""A tiny HTML template helper that escapes every value unless it is already ``Markup``.

Strategy: templates are Python format strings (``"<td>{id}</td>"``); ``html()`` formats
them with a ``string.Formatter`` whose ``format_field`` escapes each value. Only ``Markup``
(the output of ``html()``, ``join()`` or ``raw()`` on a constant) passes through as it is,
so a value from a meter, a configuration file or a request can never become markup by
forgetting to escape it: escaping is the default, trusting is the explicit act.

Invariants: ``escape`` turns ``& < > " '`` into entities and every control character
(C0, DEL, C1, and the Unicode line/paragraph separators) into visible text such as
``\\x1b``, so a hostile value shows what it is and cannot break the page or its layout.
"""

from __future__ import annotations

import string
from collections.abc import Iterable
from typing import Any

__all__ = ["Markup", "escape", "html", "join", "raw", "attr_checked"]

_ENTITIES = {"&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#x27;", "`": "&#x60;"}


def _visible(ch: str) -> str:
    code = ord(ch)
    return f"\\x{code:02x}" if code <= 0xFF else f"\\u{code:04x}"


def _table() -> dict[int, str]:
    table = {ord(k): v for k, v in _ENTITIES.items()}
    for code in [*range(0x00, 0x20), *range(0x7F, 0xA0), 0x2028, 0x2029]:
        if chr(code) not in "\n\t":
            table[code] = _visible(chr(code))
    return table


_TABLE = _table()


class Markup(str):
    """Text that is already HTML (the result of ``html``/``join``/``raw``)."""

    __slots__ = ()

    def __html__(self) -> str:
        return str(self)


def escape(value: Any) -> Markup:
    """``value`` as text that is safe between tags and inside a quoted attribute."""
    if isinstance(value, Markup):
        return value
    if value is None:
        return Markup("")
    return Markup(str(value).translate(_TABLE))


class _Escaping(string.Formatter):
    def format_field(self, value: Any, format_spec: str) -> str:
        if isinstance(value, Markup):
            return value
        return escape(format(value, format_spec) if format_spec else ("" if value is None else value))


_FORMATTER = _Escaping()


def html(template: str, /, *args: Any, **values: Any) -> Markup:
    """Fill ``template`` (a constant format string) with escaped ``values``."""
    return Markup(_FORMATTER.format(template, *args, **values))


def join(parts: Iterable[Any], separator: str = "") -> Markup:
    """Concatenate parts, escaping the ones that are not ``Markup``."""
    return Markup(separator.join(escape(part) for part in parts))


def raw(constant: str) -> Markup:
    """Mark a constant of this package as HTML (never a value from outside)."""
    return Markup(constant)


def attr_checked(on: bool) -> Markup:
    """`` checked`` for a checkbox that is on."""
    return Markup(" checked") if on else Markup("")
