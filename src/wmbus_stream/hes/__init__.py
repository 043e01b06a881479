"""``wmbus-stream receive``: the reference head-end system (HES) for report pushes, one idea per module.

``report`` parses and validates a report as it streams in; ``store`` says what is kept and
the contract of a store, ``sqlite`` is the embedded one; ``edge`` is the HTTP side;
``coverage`` the planning figure from the stored receptions; ``cli`` the command line.
"""

from __future__ import annotations

from .edge import DEFAULT_MAX_BODY, DEFAULT_MAX_CONNECTIONS, HEAD_SECONDS, PostSummary, ReceiveServer, ReceiveStats
from .report import ReportLine, ReportParser, parse_line, parse_report, parse_wired
from .sqlite import SqliteStore
from .store import Heard, Reading, Store

__all__ = [
    "DEFAULT_MAX_BODY", "DEFAULT_MAX_CONNECTIONS", "HEAD_SECONDS", "Heard", "PostSummary", "Reading", "ReceiveServer",
    "ReceiveStats", "ReportLine", "ReportParser", "SqliteStore", "Store", "parse_line", "parse_report",
    "parse_wired",
]
