"""wmbus-stream: an open Wireless M-Bus stream-mode gateway (CMe3100 Stream Plugin conventions)."""

from __future__ import annotations

__version__ = "0.1.0"

__all__ = ["__version__", "implementation"]


def implementation() -> str:
    """``compiled`` when every package with twins runs its compiled ones, else ``pure`` (what status shows)."""
    from . import _select, wire  # noqa: F401  (importing a package with twins makes its choice)

    return _select.implementation()
