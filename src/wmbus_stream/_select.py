"""Chooses between a compiled extension and its pure-Python twin, once per process.

``WMBUS_STREAM_NO_EXTENSIONS=1`` forces the pure twins; ``WMBUS_STREAM_REQUIRE_EXTENSIONS=1``
turns a missing extension into ``ExtensionMissingError`` instead of a silent fallback.
"""

from __future__ import annotations

import importlib
import os
from types import ModuleType

from .errors import ExtensionMissingError

__all__ = ["select", "implementation"]

_chosen: dict[str, str] = {}


def _flag(name: str) -> bool:
    return os.environ.get(name, "").strip().lower() in {"1", "true", "yes", "on"}


def select(compiled: str, pure: str) -> ModuleType:
    """Import the compiled module when allowed and present, else the pure one."""
    if not _flag("WMBUS_STREAM_NO_EXTENSIONS"):
        try:
            module = importlib.import_module(compiled)
        except ImportError as exc:
            if _flag("WMBUS_STREAM_REQUIRE_EXTENSIONS"):
                raise ExtensionMissingError(
                    f"compiled extension {compiled} is missing ({exc}); reinstall with a C compiler"
                    " or unset WMBUS_STREAM_REQUIRE_EXTENSIONS"
                ) from exc
        else:
            _chosen[compiled] = "compiled"
            return module
    _chosen[compiled] = "pure"
    return importlib.import_module(pure)


def implementation() -> str:
    """``compiled`` when every selected module is compiled, else ``pure``."""
    from . import wire  # noqa: F401  (importing selects the twins)

    return "compiled" if _chosen and all(v == "compiled" for v in _chosen.values()) else "pure"
