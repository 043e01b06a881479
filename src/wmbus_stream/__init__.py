"""wmbus-stream: an open Wireless M-Bus stream-mode gateway (CMe3100 Stream Plugin conventions)."""

from __future__ import annotations

__version__ = "0.1.0"

from ._select import implementation

__all__ = ["__version__", "implementation"]
