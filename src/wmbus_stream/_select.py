"""Whether compiled twins are wanted, and which ones each process ended up with.

``WMBUS_STREAM_NO_EXTENSIONS=1`` forces the pure twins; ``WMBUS_STREAM_REQUIRE_EXTENSIONS=1``
turns a missing extension into ``ExtensionMissingError`` instead of a silent fallback.

A package with twins selects them with static imports, so a type checker sees the pure
twin's annotated signatures and the compiled names only replace them at run time
(``wire/__init__.py`` is the example)::

    from .._select import compiled
    from ._pyfoo import bar, baz

    if not TYPE_CHECKING and compiled("wmbus_stream.pkg._cfoo"):
        from ._cfoo import bar, baz

To add a twin, add such a pair of imports for it: the same names from both modules, the
compiled module named once as a string for the probe. A twin in a package other than
``wire`` also adds that package to the import in ``wmbus_stream.implementation()``, which
imports every package with twins and reports what they chose. This module imports nothing
of the gateway's but its errors, so the packages depend on it and never the reverse.
"""

from __future__ import annotations

import importlib
import os

from .errors import ExtensionMissingError

__all__ = ["compiled", "implementation"]

_chosen: dict[str, str] = {}


def _flag(name: str) -> bool:
    return os.environ.get(name, "").strip().lower() in {"1", "true", "yes", "on"}


def compiled(module: str) -> bool:
    """Whether to use the compiled twin ``module``: wanted and importable (the choice is recorded)."""
    if not _flag("WMBUS_STREAM_NO_EXTENSIONS"):
        try:
            importlib.import_module(module)
        except ImportError as exc:
            if _flag("WMBUS_STREAM_REQUIRE_EXTENSIONS"):
                raise ExtensionMissingError(
                    f"compiled extension {module} is missing ({exc}); reinstall with a C compiler"
                    " or unset WMBUS_STREAM_REQUIRE_EXTENSIONS"
                ) from exc
        else:
            _chosen[module] = "compiled"
            return True
    _chosen[module] = "pure"
    return False


def implementation() -> str:
    """``compiled`` when every twin chosen so far is compiled, else ``pure``."""
    return "compiled" if _chosen and all(v == "compiled" for v in _chosen.values()) else "pure"
