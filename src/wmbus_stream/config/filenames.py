"""Names of the files a configuration brings along: what may be written inside the files folder.

One rule for every writer of that folder: a ``.cad`` file's ``Sync-File`` lines, a change
applied with files (``ConfigManager.apply_bundle``) and a backup's ``files/`` members.
Pure: a name in, a reason or None out; whether the path on disk has a link on the way is
the journal's check (``journal.check_target``).
"""

from __future__ import annotations

import re

from ..text import printable
from . import properties

__all__ = ["MAX_NAME", "MAX_NAME_DEPTH", "MAX_NAME_PART", "check_local_name"]

MAX_NAME = 200
MAX_NAME_PART = 100
MAX_NAME_DEPTH = 4
_PART = re.compile(r"[A-Za-z0-9_][A-Za-z0-9._-]*")


def check_local_name(name: str) -> str | None:
    """Why ``name`` cannot be a file inside the files folder, or None when it can.

    Allowed: a relative path of at most 4 parts separated by ``/``, each made of letters,
    digits, ``.``, ``_`` and ``-``, not starting with ``.`` (no ``.``, ``..``, hidden
    names). Refused with a reason: absolute paths, backslashes, percent escapes, control
    characters, empty parts, anything longer than 200 characters.
    """
    if name == "":
        return "empty local file name"
    bad = properties.bad_character(name)
    if bad is not None or "\t" in name:
        return f"control character U+{ord(bad or chr(9)):04X} in the local file name"
    if name.startswith("/"):
        return "absolute local file name (it must be relative to the files folder)"
    if "\\" in name:
        return "backslash in the local file name"
    if "%" in name:
        return "percent-encoded characters in the local file name"
    if len(name) > MAX_NAME:
        return f"local file name longer than {MAX_NAME} characters"
    parts = name.split("/")
    if any(part == ".." for part in parts):
        return "'..' in the local file name"
    if any(part == "." for part in parts):
        return "'.' part in the local file name"
    if any(part == "" for part in parts):
        return "empty part ('//' or a trailing '/') in the local file name"
    if len(parts) > MAX_NAME_DEPTH:
        return f"more than {MAX_NAME_DEPTH} folder levels in the local file name"
    for part in parts:
        if part.startswith("."):
            return f"hidden name '{printable(part)}' (starting with '.') in the local file name"
        if len(part) > MAX_NAME_PART or not _PART.fullmatch(part):
            return (f"'{printable(part)}' in the local file name: only letters, digits, '.', '_'"
                    f" and '-' are allowed, at most {MAX_NAME_PART} per part")
    return None
