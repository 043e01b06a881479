"""What a receiver framer hands to the check stage: one frame, before the link-layer check.

A frame that is complete but broken (checksum, FCS, unparsable text) has ``error`` set and
empty ``data``; the check stage counts it as broken. ``frame_format`` says which link-CRC
layout ``data`` has, so the check stage knows how to strip it.
"""

from __future__ import annotations

from typing import NamedTuple

__all__ = ["Received", "FORMAT_AUTO"]

# Frame formats: wire.FORMAT_NONE (0, telegram without link CRCs), FORMAT_A (1), FORMAT_B (2),
# and FORMAT_AUTO (3): decide by wire.frame.strip_any (the ``hex`` receiver's rule).
FORMAT_AUTO = 3


class Received(NamedTuple):
    """One frame from a receiver, before the link-layer check.

    A named tuple rather than a frozen dataclass: one is made per telegram on the hot path,
    and a tuple is built several times faster.
    """

    data: bytes
    frame_format: int
    rssi_dbm: int | None = None
    mode: int = 0
    receiver_address: str | None = None
    wired: bytes | None = None
    error: str | None = None
