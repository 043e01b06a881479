"""Configuration sync from a ``.cad`` server (spec section 8).

``cad`` is the pure, strict parser of ``.cad`` files; ``procedure.run_sync`` fetches one,
checks everything, downloads the files and applies it all at once through the
``ConfigManager``, then reports ``900``/``920``/``921`` to the server.
"""

from __future__ import annotations

from .cad import CadError, CadFile, parse
from .procedure import SyncLimits, SyncResult, run_sync, user_agent

__all__ = ["CadError", "CadFile", "parse", "SyncLimits", "SyncResult", "run_sync", "user_agent"]
