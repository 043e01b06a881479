"""The counters every receiver framer keeps.

A framer is sans-IO: ``feed(bytes)`` returns the frames completed so far (``core.received.Received``),
keeps at most one maximal frame of unfinished bytes, and never raises for bad input. Bytes
that cannot start a frame are skipped and counted; a frame that is complete but broken
(checksum, FCS, unparsable text) comes out with ``error`` set, so the check stage counts it.
"""

from __future__ import annotations

from dataclasses import dataclass, field

__all__ = ["FramerStats"]


@dataclass(slots=True)
class FramerStats:
    """Counters a framer keeps: frames out, broken frames out, garbage bytes skipped."""

    frames: int = 0
    bad_frames: int = 0
    skipped_bytes: int = 0
    extra: dict[str, int] = field(default_factory=dict)
