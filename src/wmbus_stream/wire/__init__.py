"""The sans-IO wire core: CRC, frame formats A/B, link header, wired container, report, filters.

The hot functions come from the compiled twins (``wmbus_stream.wire._cwire`` and ``_cstream``,
built from ``ext/``) when they are present and allowed, else from the pure twins ``_pywire``
and ``_pystream``: a static selection (see ``wmbus_stream._select``), so type checkers read
the pure twins' signatures. ``_cwire`` and ``_pywire``, ``_cstream`` and ``_pystream`` accept and refuse the same
arguments: ``wire.domain`` declares them.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from .._select import compiled
from ._pywire import (
    Matcher,
    build_report,
    check_batch,
    check_telegram,
    crc16,
    parse_cmex50,
    parse_header,
    rssi_code,
    strip_a,
    strip_b,
)

if not TYPE_CHECKING and compiled("wmbus_stream.wire._cwire"):
    from ._cwire import (
        Matcher,
        build_report,
        check_batch,
        check_telegram,
        crc16,
        parse_cmex50,
        parse_header,
        rssi_code,
        strip_a,
        strip_b,
    )

# The cmex50 stream scanner: framing, check and filter of a read chunk in one call.
from ._pystream import Cmex50Scanner, crc_loop, rssi_dbm, x25

if not TYPE_CHECKING and compiled("wmbus_stream.wire._cstream"):
    from ._cstream import Cmex50Scanner, crc_loop, rssi_dbm, x25

from .domain import (
    CONTAINER_MAX,
    CRC,
    FILTER_DEVICE_TYPE,
    FILTER_ID,
    FILTER_MANUFACTURER,
    FILTER_MODE,
    FORMAT_A,
    FORMAT_B,
    FORMAT_NONE,
    HEADER,
    LENGTH,
    LONG_FORM,
    MANUFACTURER_MASK,
    MAX_FRAME,
    OK,
)

RESULT_NAMES = ("ok", "crc", "length", "header", "filter.manufacturer", "filter.device.type", "filter.device.id",
                "radio.mode")

__all__ = [
    "crc16", "strip_a", "strip_b", "check_telegram", "parse_header", "parse_cmex50", "rssi_code",
    "build_report", "Matcher", "check_batch", "Cmex50Scanner", "crc_loop", "rssi_dbm", "x25", "RESULT_NAMES",
    "OK", "CRC", "LENGTH", "HEADER", "FILTER_MANUFACTURER", "FILTER_DEVICE_TYPE", "FILTER_ID",
    "FILTER_MODE", "FORMAT_NONE", "FORMAT_A", "FORMAT_B", "MANUFACTURER_MASK",
    "CONTAINER_MAX", "LONG_FORM", "MAX_FRAME",
]
