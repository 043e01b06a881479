"""The sans-IO wire core: CRC, frame formats A/B, link header, wired container, report, filters.

The hot functions come from the compiled twins (``wmbus_stream.wire._cwire`` and ``_cstream``,
built from ``ext/``) when they are present and allowed, else from the pure twins ``_pywire``
and ``_pystream``.
"""

from __future__ import annotations

from .._select import select

_impl = select("wmbus_stream.wire._cwire", "wmbus_stream.wire._pywire")

crc16 = _impl.crc16
strip_a = _impl.strip_a
strip_b = _impl.strip_b
check_telegram = _impl.check_telegram
parse_header = _impl.parse_header
parse_cmex50 = _impl.parse_cmex50
rssi_code = _impl.rssi_code
build_report = _impl.build_report
Matcher = _impl.Matcher
check_batch = _impl.check_batch

# The cmex50 stream scanner: framing, check and filter of a read chunk in one call.
_stream = select("wmbus_stream.wire._cstream", "wmbus_stream.wire._pystream")
Cmex50Scanner = _stream.Cmex50Scanner
crc_loop = _stream.crc_loop
x25 = _stream.x25

from ._pywire import (  # noqa: E402  (constants are shared by both twins)
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
    OK,
)

RESULT_NAMES = ("ok", "crc", "length", "header", "filter.manufacturer", "filter.device.type", "filter.device.id", "radio.mode")

__all__ = [
    "crc16", "strip_a", "strip_b", "check_telegram", "parse_header", "parse_cmex50", "rssi_code",
    "build_report", "Matcher", "check_batch", "Cmex50Scanner", "crc_loop", "x25", "RESULT_NAMES",
    "OK", "CRC", "LENGTH", "HEADER", "FILTER_MANUFACTURER", "FILTER_DEVICE_TYPE", "FILTER_ID",
    "FILTER_MODE", "FORMAT_NONE", "FORMAT_A", "FORMAT_B", "MANUFACTURER_MASK",
    "CONTAINER_MAX", "LONG_FORM",
]
