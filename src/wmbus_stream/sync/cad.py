"""Strict parser of ``.cad`` configuration files (spec section 8): bytes in, ``CadFile`` out.

Strategy: a ``.cad`` file comes from a server, so every byte is hostile until proven
otherwise. The parser is pure (no IO, no clock) and total: it returns a ``CadFile`` or
raises ``CadError(code, reason)`` with ``code`` 920 (``Sync-Mode`` missing or not
``server``) or 921 (anything else), and never any other exception.

Grammar
- At most ``MAX_BYTES`` bytes, UTF-8, an optional BOM; lines end in LF or CRLF and hold
  at most ``MAX_LINE`` bytes. A CR anywhere else, a control character or a Unicode line
  separator is an error (it could smuggle a second line into a value).
- Blank lines and lines starting with ``#`` are ignored. Every other line is
  ``Name: value``; names are compared without regard to case, spaces and tabs around the
  value are dropped.
- ``Sync-Mode: server`` exactly once. It is checked first: a readable file without it or
  with another mode is not judged on the rest (920). When no ``Sync-Mode`` line could be
  read and some line could not be read at all (not UTF-8, a stray CR, a control character,
  overlong), that line is the reason (921).
- ``Sync-Id`` (at most once; letters, digits, ``. _ : -``, 64 characters) and
  ``Sync-Notify-URL`` (at most once; http or https) are recovered even when another line
  is wrong, so that a 920 or 921 can still be reported to the server.
- ``Sync-Config-<n>: <key>=<value>|<target>``: the key must be a configuration key that a
  server can ever set (not one of ``keys.SYNC_NEVER``: the serial, the state directory,
  the owner's allow lists), the value must pass that key's validator, the target must be
  ``/currentpluginconfig/stream.cfg``; one line per key. Whether this gateway's owner lets
  a sync set an owner-only key is the procedure's question (it needs the local file).
- ``Sync-File-<n>-URL: <http(s) URL>,<local name>``: the local name is a relative path
  inside the gateway's files folder (``check_local_name``); one line per local name. No
  ``user:password@`` in this URL nor in ``Sync-Notify-URL``: credentials belong to the
  gateway's configuration, never to a URL a server hands out.
- ``<n>`` is written without leading zeros; the numbers of each kind start at 0 and are
  continuous, without duplicates.

Values are checked key by key here; the complete configuration they produce is validated
again by the sync procedure with the same code as ``config check`` (cross-key rules).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from ..config import properties
from ..config.filenames import check_local_name
from ..config.keys import BY_NAME, KEYS, SYNC_NEVER, http_url
from ..config.model import _shown
from ..errors import WmbusStreamError
from ..text import printable

__all__ = [
    "CONFIG_TARGET",
    "FORBIDDEN_KEYS",
    "MAX_BYTES",
    "MAX_CONFIGS",
    "MAX_FILES",
    "MAX_LINE",
    "RESULT_ERROR",
    "RESULT_MODE",
    "RESULT_OK",
    "CadError",
    "CadFile",
    "ConfigLine",
    "FileLine",
    "parse",
]

RESULT_OK, RESULT_MODE, RESULT_ERROR = 900, 920, 921

MAX_BYTES = 64 * 1024
MAX_LINE = 4096
MAX_CONFIGS = 256
MAX_FILES = 16

CONFIG_TARGET = "/currentpluginconfig/stream.cfg"
# Keys no server may set (keys.SYNC_NEVER): the identity the server keys on, where this
# gateway keeps its state, and the owner's own allow lists (a sync must not widen them).
FORBIDDEN_KEYS = frozenset(key.name for key in KEYS if key.sync == SYNC_NEVER)

_SYNC_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:-]{0,63}")
_CONFIG = re.compile(r"sync-config-([0-9]+)", re.IGNORECASE)
_FILE = re.compile(r"sync-file-([0-9]+)-url", re.IGNORECASE)
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9-]*")
_KEY = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")
_BLANKS = " \t"


class CadError(WmbusStreamError, ValueError):
    """A ``.cad`` file was refused: ``code`` 920 or 921 and a one-line ``reason``.

    ``sync_id`` and ``notify_url`` hold what could be read of them anyway, so the result
    can still be posted to the server.
    """

    def __init__(self, code: int, reason: str, *, sync_id: str | None = None,
                 notify_url: str | None = None) -> None:
        super().__init__(f"{code} {reason}")
        self.code = code
        self.reason = reason
        self.sync_id = sync_id
        self.notify_url = notify_url


@dataclass(frozen=True, slots=True)
class ConfigLine:
    """``Sync-Config-<n>``: set ``key`` to ``value`` in this gateway's configuration."""

    n: int
    line: int
    key: str
    value: str


@dataclass(frozen=True, slots=True)
class FileLine:
    """``Sync-File-<n>-URL``: download ``url`` to ``local`` inside the files folder."""

    n: int
    line: int
    url: str
    local: str


@dataclass(frozen=True, slots=True)
class CadFile:
    """A parsed, checked ``.cad`` file."""

    sync_id: str | None
    notify_url: str | None
    configs: tuple[ConfigLine, ...]
    files: tuple[FileLine, ...]

    def changes(self) -> dict[str, str]:
        """The configuration changes, key -> value, in numbering order."""
        return {c.key: c.value for c in self.configs}

    def line_of(self, key: str) -> ConfigLine | None:
        """The ``Sync-Config`` line that sets ``key``, if any."""
        return next((c for c in self.configs if c.key == key), None)


@dataclass(slots=True)
class _Line:
    number: int
    name: str
    value: str


def _lines(data: bytes) -> tuple[list[_Line], str | None, str | None]:
    """The ``Name: value`` lines, the first unreadable line and the first misshapen one (or None)."""
    if data.startswith(b"\xef\xbb\xbf"):
        data = data[3:]
    chunks = data.split(b"\n")
    if chunks and chunks[-1] == b"":
        chunks.pop()
    lines: list[_Line] = []
    unreadable: str | None = None
    misshapen: str | None = None

    def fail(reason: str) -> None:
        nonlocal unreadable
        if unreadable is None:
            unreadable = reason

    for number, raw in enumerate(chunks, 1):
        if raw.endswith(b"\r"):
            raw = raw[:-1]
        where = f"line {number}"
        if len(raw) > MAX_LINE:
            fail(f"{where}: longer than {MAX_LINE} bytes")
            continue
        if b"\r" in raw:
            fail(f"{where}: carriage return inside the line (lines end in LF or CRLF)")
            continue
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            fail(f"{where}: not UTF-8 text (byte 0x{raw[exc.start]:02X} at column {exc.start + 1})")
            continue
        bad = properties.bad_character(text)
        if bad is not None:
            fail(f"{where}: control character U+{ord(bad):04X}")
            continue
        stripped = text.strip(_BLANKS)
        if not stripped or stripped.startswith("#"):
            continue
        name, sep, value = stripped.partition(":")
        name = name.strip(_BLANKS)
        if not sep or not _NAME.fullmatch(name):
            if misshapen is None:
                misshapen = f"{where}: expected 'Name: value', got '{printable(stripped)}'"
            continue
        lines.append(_Line(number, name, value.strip(_BLANKS)))
    return lines, unreadable, misshapen


def _number(text: str, where: str) -> int:
    if len(text) > 1 and text.startswith("0"):
        raise ValueError(f"{where}: number {text!r} has a leading zero")
    if len(text) > 3:
        raise ValueError(f"{where}: number {text} is too large")
    return int(text)


def _check_numbering(kind: str, numbers: dict[int, list[int]]) -> str | None:
    for n, where in sorted(numbers.items()):
        if len(where) > 1:
            return f"{kind}-{n} appears more than once (lines {', '.join(map(str, where))})"
    for expected, n in enumerate(sorted(numbers)):
        if n != expected:
            return (f"{kind} numbering has a gap: {kind}-{expected} is missing"
                    " (numbers start at 0 and are continuous)")
    return None


def _bare_url(url: str) -> None:
    """An http(s) URL without user info; ValueError saying why not."""
    parts = http_url(url)
    if parts.username is not None or parts.password is not None:
        raise ValueError("user:password@ is not allowed (credentials are never taken from a server's URL)")


def _config_line(n: int, line: _Line) -> ConfigLine:
    where = f"line {line.number}: Sync-Config-{n}"
    setting, bar, target = line.value.rpartition("|")
    if not bar:
        raise ValueError(f"{where}: expected 'key=value|{CONFIG_TARGET}'")
    target = target.strip(_BLANKS)
    if target != CONFIG_TARGET:
        raise ValueError(f"{where}: target '{printable(target)}' is not allowed (only {CONFIG_TARGET})")
    key, eq, value = setting.partition("=")
    key, value = key.strip(_BLANKS), value.strip(_BLANKS)
    if not eq or not _KEY.fullmatch(key):
        raise ValueError(f"{where}: expected 'key=value|{CONFIG_TARGET}'")
    spec = BY_NAME.get(key)
    if spec is None:
        raise ValueError(f"{where}: unknown configuration key '{printable(key)}'")
    if key in FORBIDDEN_KEYS:
        raise ValueError(f"{where}: {key} cannot be set by a configuration server (only on the gateway)")
    try:
        spec.parse(value)
    except ValueError as exc:
        detail = f" ({exc})" if str(exc) else ""
        shown = printable(_shown(spec, value))
        raise ValueError(f"{where}: {key}: invalid value {shown!r}; allowed: {spec.allowed}{detail}") from None
    return ConfigLine(n, line.number, key, value)


def _file_line(n: int, line: _Line) -> FileLine:
    where = f"line {line.number}: Sync-File-{n}-URL"
    url, comma, local = line.value.rpartition(",")
    if not comma:
        raise ValueError(f"{where}: expected '<http(s) URL>,<local file name>'")
    url, local = url.strip(_BLANKS), local.strip(_BLANKS)
    try:
        _bare_url(url)
    except ValueError as exc:
        raise ValueError(f"{where}: URL '{printable(_shown(None, url))}' refused: {exc}") from None
    reason = check_local_name(local)
    if reason is not None:
        raise ValueError(f"{where}: {reason}")
    return FileLine(n, line.number, url, local)


def parse(data: bytes) -> CadFile:
    """Parse and check a whole ``.cad`` file; raises ``CadError`` (920 or 921) when refused."""
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise CadError(RESULT_ERROR, "the .cad file must be bytes")
    data = bytes(data)
    if len(data) > MAX_BYTES:
        raise CadError(RESULT_ERROR, f"the .cad file has {len(data)} bytes, more than the limit of {MAX_BYTES}")
    if not data.strip():
        raise CadError(RESULT_MODE, "the .cad file is empty (Sync-Mode: server is required)")
    lines, unreadable, misshapen = _lines(data)

    by_name: dict[str, list[_Line]] = {}
    for line in lines:
        by_name.setdefault(line.name.lower(), []).append(line)

    # What can be told to the server even when the file is refused.
    sync_id = notify_url = None
    id_lines = by_name.get("sync-id", [])
    if len(id_lines) == 1 and _SYNC_ID.fullmatch(id_lines[0].value):
        sync_id = id_lines[0].value
    notify_lines = by_name.get("sync-notify-url", [])
    notify_problem = None
    if len(notify_lines) == 1:
        try:
            _bare_url(notify_lines[0].value)
            notify_url = notify_lines[0].value
        except ValueError as exc:
            notify_problem = f"line {notify_lines[0].number}: Sync-Notify-URL refused: {exc}"

    def refuse(code: int, reason: str) -> CadError:
        return CadError(code, reason, sync_id=sync_id, notify_url=notify_url)

    modes = by_name.get("sync-mode", [])
    if not modes:
        if unreadable is not None:
            # An unreadable line might have held the mode: the file as a whole cannot be read.
            raise refuse(RESULT_ERROR, unreadable)
        raise refuse(RESULT_MODE, "Sync-Mode line missing (Sync-Mode: server is required)")
    if len(modes) > 1:
        raise refuse(RESULT_ERROR, f"Sync-Mode appears more than once (lines {', '.join(str(m.number) for m in modes)})")
    if modes[0].value != "server":
        raise refuse(RESULT_MODE, f"Sync-Mode is '{printable(modes[0].value)}', not 'server'")
    if unreadable is not None or misshapen is not None:
        raise refuse(RESULT_ERROR, str(unreadable or misshapen))
    for name in ("sync-id", "sync-notify-url"):
        found = by_name.get(name, [])
        if len(found) > 1:
            label = found[0].name
            raise refuse(RESULT_ERROR, f"{label} appears more than once (lines {', '.join(str(f.number) for f in found)})")
    if id_lines and sync_id is None:
        raise refuse(RESULT_ERROR, f"line {id_lines[0].number}: Sync-Id '{printable(id_lines[0].value)}' is not"
                                   " allowed (1-64 letters, digits, '.', '_', ':' or '-')")
    if notify_problem is not None:
        raise refuse(RESULT_ERROR, notify_problem)

    config_numbers: dict[int, list[int]] = {}
    file_numbers: dict[int, list[int]] = {}
    config_lines: list[tuple[int, _Line]] = []
    file_lines: list[tuple[int, _Line]] = []
    try:
        for line in lines:
            lowered = line.name.lower()
            if lowered in ("sync-mode", "sync-id", "sync-notify-url"):
                continue
            if (match := _CONFIG.fullmatch(line.name)) is not None:
                n = _number(match.group(1), f"line {line.number}: {line.name}")
                config_numbers.setdefault(n, []).append(line.number)
                config_lines.append((n, line))
            elif (match := _FILE.fullmatch(line.name)) is not None:
                n = _number(match.group(1), f"line {line.number}: {line.name}")
                file_numbers.setdefault(n, []).append(line.number)
                file_lines.append((n, line))
            else:
                raise ValueError(f"line {line.number}: unknown line '{printable(line.name)}'")
    except ValueError as exc:
        raise refuse(RESULT_ERROR, str(exc)) from None
    if len(config_lines) > MAX_CONFIGS:
        raise refuse(RESULT_ERROR, f"{len(config_lines)} Sync-Config lines, more than the limit of {MAX_CONFIGS}")
    if len(file_lines) > MAX_FILES:
        raise refuse(RESULT_ERROR, f"{len(file_lines)} Sync-File lines, more than the limit of {MAX_FILES}")
    for kind, numbers in (("Sync-Config", config_numbers), ("Sync-File", file_numbers)):
        reason = _check_numbering(kind, numbers)
        if reason is not None:
            raise refuse(RESULT_ERROR, reason)

    try:
        configs = [_config_line(n, line) for n, line in sorted(config_lines, key=lambda p: p[0])]
        files = [_file_line(n, line) for n, line in sorted(file_lines, key=lambda p: p[0])]
    except ValueError as exc:
        raise refuse(RESULT_ERROR, str(exc)) from None
    seen: dict[str, ConfigLine] = {}
    for config in configs:
        if config.key in seen:
            raise refuse(RESULT_ERROR, f"{config.key} is set twice (Sync-Config-{seen[config.key].n} and"
                                       f" Sync-Config-{config.n})")
        seen[config.key] = config
    names: dict[str, FileLine] = {}
    for file in files:
        if file.local in names:
            raise refuse(RESULT_ERROR, f"local file {file.local!r} is named twice (Sync-File-{names[file.local].n}-URL"
                                       f" and Sync-File-{file.n}-URL)")
        # A file and a folder of the same name cannot both exist.
        for other in names:
            if other.startswith(file.local + "/") or file.local.startswith(other + "/"):
                raise refuse(RESULT_ERROR, f"local files {other!r} and {file.local!r} collide (one is the other's folder)")
        names[file.local] = file
    return CadFile(sync_id, notify_url, tuple(configs), tuple(files))
