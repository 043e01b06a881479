"""Gateway configuration: the key table, the strict properties file and the typed model.

``load(path)`` reads and validates a file, ``parse(mapping)`` validates text values, and
both raise ``ConfigError`` listing every problem; a ``Config`` is immutable and passed
around explicitly.
"""

from __future__ import annotations

from .keys import KEYS, MASK, Key
from .model import Config, check_file, defaults, load, parse, save, split_credentials, to_text

__all__ = [
    "KEYS",
    "MASK",
    "Key",
    "Config",
    "check_file",
    "defaults",
    "load",
    "parse",
    "save",
    "split_credentials",
    "to_text",
]
