"""The report parser of the reference HES: strict, streaming, one line at a time (spec section 5).

The code is in two twins chosen once per process (``wmbus_stream._select``): the compiled
``_creport`` (``ext/_creport.pyx``) when present and allowed, else the pure ``_pyreport``,
which is the readable specification of both (read it for the line format and the checks).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from .._select import compiled
from ._pyreport import (
    MAX_REPORT_LINE,
    STORE_COLUMNS,
    ReportLine,
    ReportParser,
    check_line,
    parse_line,
    parse_report,
    parse_wired,
    store_rows,
)

if not TYPE_CHECKING and compiled("wmbus_stream.hes._creport"):
    from ._creport import ReportParser, check_line, parse_line, parse_report, parse_wired, store_rows

__all__ = ["MAX_REPORT_LINE", "STORE_COLUMNS", "ReportLine", "ReportParser", "check_line", "parse_line", "parse_report",
           "parse_wired", "store_rows"]
