"""What every receiver framer gives the pipeline, and the counters it keeps.

A framer is sans-IO: ``feed(bytes)`` returns the frames completed so far, keeps at most
one maximal frame of unfinished bytes, and never raises for bad input. Bytes that cannot
start a frame are skipped and counted; a frame that is complete but broken (checksum, FCS,
unparsable text) comes out with ``error`` set, so the pipeline counts it as broken.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import NamedTuple

__all__ = ["Received", "FramerStats", "FORMAT_AUTO"]

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


@dataclass(slots=True)
class FramerStats:
    """Counters a framer keeps: frames out, broken frames out, garbage bytes skipped."""

    frames: int = 0
    bad_frames: int = 0
    skipped_bytes: int = 0
    extra: dict[str, int] = field(default_factory=dict)
