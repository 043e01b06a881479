"""Strict reader and writer of ``key=value`` configuration files.

Grammar (deliberately smaller than Java properties, so that what you see is what is read):

* UTF-8 text, lines ending in LF or CRLF, an optional UTF-8 BOM at the start;
* blank lines; comment lines whose first non-blank character is ``#`` or ``!``;
* ``key=value`` lines: the *first* ``=`` splits, spaces and tabs around the key and the
  value are dropped; ``:`` is not a separator, a backslash is an ordinary character, there
  are no escapes, no line continuations and no comments at the end of a value (URLs keep
  their ``#``);
* keys are letters, digits, ``.``, ``_`` and ``-``.

Reading never raises for bad content: each bad line becomes a ``Problem`` (no ``=``, a
duplicate key, a control character such as CR, NUL or DEL, bytes that are not UTF-8, a line
longer than ``MAX_LINE`` bytes, a file larger than ``MAX_FILE``), and the rest of the file is
still read so that *all* problems are reported at once. For a duplicate key the first value
is kept.

Writing refuses (``ConfigError``) what could not be read back identically: control
characters (a newline in a value would smuggle in a second key), spaces around a value,
overlong lines. It keeps the comments, blank lines and order of a template file, rewrites
only the entries whose value changed, drops removed keys and appends new ones.
"""

from __future__ import annotations

import os
import re
import stat
import unicodedata
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from types import MappingProxyType

from ..errors import ConfigError, Problem

__all__ = [
    "MAX_LINE",
    "MAX_FILE",
    "Line",
    "Properties",
    "parse",
    "read",
    "read_bytes",
    "render",
    "bad_character",
    "check_entry",
]

MAX_LINE = 4096
MAX_FILE = 1024 * 1024

_KEY = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")
_BLANKS = " \t"
_LINE_SHAPE = "key=value, a # or ! comment, or a blank line"


@dataclass(frozen=True, slots=True)
class Line:
    """One line of a file: an entry (key and value set), a comment, a blank or a bad line."""

    number: int
    text: str
    key: str | None = None
    value: str | None = None
    bad: bool = False


@dataclass(frozen=True, slots=True)
class Properties:
    """A read file: its lines in order, the values by key, and every problem found."""

    lines: tuple[Line, ...]
    values: Mapping[str, str]
    problems: tuple[Problem, ...]


def bad_character(text: str) -> str | None:
    """The first character that may not appear in a line (controls except TAB), or None."""
    for ch in text:
        if ch == "\t":
            continue
        # Cc covers NUL, CR, LF, ESC, DEL and the C1 range; the two Unicode separators
        # would be line breaks to str.splitlines and to many editors.
        if unicodedata.category(ch) == "Cc" or ch in "\u2028\u2029":
            return ch
    return None


def _shorten(text: str, limit: int = 60) -> str:
    return text if len(text) <= limit else text[:limit] + "..."


def _control_problem(key: str, value: str, ch: str) -> Problem:
    return Problem(key, value, f"text without control characters (found U+{ord(ch):04X})")


def _guess_key(raw: bytes) -> str | None:
    head, sep, _ = raw.partition(b"=")
    if not sep:
        return None
    try:
        key = head.decode("ascii").strip(_BLANKS)
    except UnicodeDecodeError:
        return None
    return key if _KEY.fullmatch(key) else None


def parse(data: bytes | str) -> Properties:
    """Read a whole file's content; every bad line becomes a problem, nothing raises."""
    raw_data = data.encode("utf-8", "surrogatepass") if isinstance(data, str) else bytes(data)
    if len(raw_data) > MAX_FILE:
        problem = Problem("<file>", f"{len(raw_data)} bytes", f"at most {MAX_FILE} bytes")
        return Properties((), MappingProxyType({}), (problem,))
    if raw_data.startswith(b"\xef\xbb\xbf"):
        raw_data = raw_data[3:]
    chunks = raw_data.split(b"\n")
    if chunks and chunks[-1] == b"":
        chunks.pop()

    lines: list[Line] = []
    values: dict[str, str] = {}
    first_line: dict[str, int] = {}
    problems: list[Problem] = []

    for number, raw in enumerate(chunks, start=1):
        if raw.endswith(b"\r"):
            raw = raw[:-1]
        where = f"line {number}"
        if len(raw) > MAX_LINE:
            key = _guess_key(raw[:MAX_LINE]) or where
            preview = raw[:40].decode("utf-8", "replace") + "..."
            problems.append(Problem(key, preview, f"lines of at most {MAX_LINE} bytes"))
            lines.append(Line(number, "", bad=True))
            continue
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError:
            key = _guess_key(raw) or where
            shown = _shorten(raw.decode("utf-8", "backslashreplace"))
            problems.append(Problem(key, shown, "UTF-8 text"))
            lines.append(Line(number, "", bad=True))
            continue
        stripped = text.strip(_BLANKS)
        if not stripped or stripped[0] in "#!":
            ch = bad_character(text)
            if ch is not None:
                problems.append(_control_problem(where, _shorten(stripped), ch))
                lines.append(Line(number, text, bad=True))
            else:
                lines.append(Line(number, text))
            continue
        key_text, sep, value_text = stripped.partition("=")
        key = key_text.strip(_BLANKS)
        value = value_text.strip(_BLANKS)
        if not sep:
            problems.append(Problem(where, _shorten(stripped), _LINE_SHAPE))
            lines.append(Line(number, text, bad=True))
            continue
        if not _KEY.fullmatch(key):
            # Name the line, not the key, when the key itself is empty or unprintable.
            shown = key if key and bad_character(key) is None else where
            allowed = "a key of letters, digits, '.', '_' or '-' before the '='"
            problems.append(Problem(shown, _shorten(stripped), allowed))
            lines.append(Line(number, text, bad=True))
            continue
        ch = bad_character(text)
        if ch is not None:
            problems.append(_control_problem(key, value, ch))
            lines.append(Line(number, text, key, value, bad=True))
            continue
        if key in values:
            problems.append(
                Problem(key, value, f"one definition per key (first set on line {first_line[key]})")
            )
            lines.append(Line(number, text, key, value, bad=True))
            continue
        values[key] = value
        first_line[key] = number
        lines.append(Line(number, text, key, value))

    return Properties(tuple(lines), MappingProxyType(values), tuple(problems))


_KINDS = ((stat.S_ISDIR, "a folder"), (stat.S_ISFIFO, "a FIFO"), (stat.S_ISCHR, "a character device"),
          (stat.S_ISBLK, "a block device"), (stat.S_ISSOCK, "a socket"))
_REGULAR = f"a regular file of at most {MAX_FILE} bytes"


def _refusal(path: str | os.PathLike[str], st: os.stat_result) -> Problem | None:
    """Why a file with status ``st`` is not read: not a regular file, or too large."""
    if not stat.S_ISREG(st.st_mode):
        kind = next((name for test, name in _KINDS if test(st.st_mode)), "not a regular file")
        return Problem("<file>", os.fspath(path), f"{_REGULAR} (this is {kind})")
    if st.st_size > MAX_FILE:
        return Problem("<file>", os.fspath(path), f"{_REGULAR} (this one has {st.st_size} bytes)")
    return None


def read_bytes(path: str | os.PathLike[str]) -> bytes:
    """The bytes of a configuration-like file, never blocking on what is not a regular file.

    A FIFO, a device or a socket could hold the caller forever on ``open`` or ``read`` (the
    main loop, ``config check``): they are refused from their status before being opened,
    and the open descriptor is checked again (``O_NONBLOCK``, ``fstat``) so a swap in between
    is refused too. At most ``MAX_FILE`` bytes are ever read. ``ConfigError`` names the
    path, what it is and what is allowed; ``OSError`` when it cannot be opened.
    """
    problem = _refusal(path, os.stat(path))
    if problem is not None:
        raise ConfigError(problem)
    flags = os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY | getattr(os, "O_CLOEXEC", 0)
    fd = os.open(path, flags)
    try:
        problem = _refusal(path, os.fstat(fd))
        if problem is not None:
            raise ConfigError(problem)
        chunks: list[bytes] = []
        size = 0
        while size <= MAX_FILE:
            chunk = os.read(fd, MAX_FILE + 1 - size)
            if not chunk:
                break
            chunks.append(chunk)
            size += len(chunk)
    finally:
        os.close(fd)
    return b"".join(chunks)


def read(path: str | os.PathLike[str]) -> Properties:
    """Read a file (``read_bytes``); OSError when it cannot be opened, problems for anything else."""
    try:
        data = read_bytes(path)
    except ConfigError as exc:  # not a regular file, or too large: refused unread
        return Properties((), MappingProxyType({}), tuple(exc.problems))
    return parse(data)


def check_entry(key: str, value: str) -> list[Problem]:
    """Why ``key=value`` could not be written and read back identically (empty if it can)."""
    problems: list[Problem] = []
    if not _KEY.fullmatch(key):
        problems.append(Problem(key, value, "a key of letters, digits, '.', '_' or '-'"))
        return problems
    ch = bad_character(value)
    if ch is not None:
        problems.append(_control_problem(key, value, ch))
    elif value != value.strip(_BLANKS):
        problems.append(Problem(key, value, "a value without leading or trailing spaces"))
    elif len(f"{key}={value}".encode()) > MAX_LINE:
        problems.append(Problem(key, _shorten(value), f"lines of at most {MAX_LINE} bytes"))
    return problems


def render(
    values: Mapping[str, str],
    template: Properties | None = None,
    header: Iterable[str] = (),
) -> str:
    """File text holding exactly ``values``; keeps a template's comments and order."""
    problems = [problem for key, value in values.items() for problem in check_entry(key, value)]
    comments = list(header)
    for comment in comments:
        ch = bad_character(comment)
        if ch is not None:
            problems.append(_control_problem("<header>", comment, ch))
    if problems:
        raise ConfigError(problems)

    out: list[str] = []
    written: set[str] = set()
    if template is not None:
        for line in template.lines:
            if line.bad:
                continue
            if line.key is None:
                out.append(line.text)
            elif line.key in values and line.key not in written:
                # An unchanged entry keeps its original spelling (spacing around '=').
                same = line.value == values[line.key]
                out.append(line.text if same else f"{line.key}={values[line.key]}")
                written.add(line.key)
    else:
        out.extend(f"# {comment}" if comment else "#" for comment in comments)
    for key, value in values.items():
        if key not in written:
            out.append(f"{key}={value}")
    return "".join(f"{line}\n" for line in out)
