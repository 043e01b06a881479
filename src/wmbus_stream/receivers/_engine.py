"""The two scanning engines the framers share: start-byte binary frames, and text lines.

Binary engine (``BinaryFramer``, used by cmex50, im871a, amb8465)
    Strategy: find the protocol's start byte; ask the subclass how long the frame that
    starts there is (``_measure``); when that many bytes are buffered, let the subclass
    decode them (``_decode``). A frame whose checksum fails has untrusted boundaries: it is
    reported once, and scanning resumes at the byte after its start byte, so a valid frame
    hidden inside it (a frame cut by an unplug and followed by the next one) is still found.

    Invariants:
    * ``feed`` and ``flush`` never raise on any input; every byte is either part of an
      emitted frame, part of a reported broken frame, or counted in ``skipped_bytes``
      (never twice: bytes of a reported broken frame that are rescanned are "covered").
    * A broken candidate that starts inside an already reported broken frame is not
      reported (payload bytes of a damaged frame often look like a start byte and a
      header); its bytes beyond the reported frame are skipped unless a valid frame
      claims them. The cost: when two damaged frames overlap, the second one's bytes are
      counted as skipped bytes instead of as a second bad frame.
    * After ``feed`` returns, the pending buffer is shorter than ``MAX_FRAME``: it holds
      only the start of the one candidate still waiting for bytes.
    * After ``flush`` the framer is empty and ready for a new stream (a replugged port).

Line engine (``LineFramer``, used by rtlwmbus, hex)
    Lines end with ``\\n`` (a ``\\r`` before it is dropped). Blank lines and ``#`` lines are
    ignored without counting. A line longer than ``MAX_LINE`` is skipped and counted, also
    when it arrives in pieces: the engine then discards up to the next newline, so the
    pending buffer never exceeds ``MAX_LINE`` bytes. ``flush`` treats an unterminated last
    line as a line (capture files often lack the final newline).
"""

from __future__ import annotations

from typing import ClassVar

from ..core.check import Batch, Settings, check_all
from ..core.received import Received
from .base import FramerStats

__all__ = ["BinaryFramer", "LineFramer", "Decoded"]

# What ``_decode`` returns: (result or None for a message that is not a telegram, trusted).
# ``trusted`` is False when the frame's own checksum failed, i.e. its length may be wrong.
Decoded = tuple[Received | None, bool]


def _check_chunk(framer: BinaryFramer | LineFramer, data: bytes, final: bool, settings: Settings) -> Batch:
    """A read chunk framed (``final`` ends the stream) and its frames through the check stage."""
    items = framer.feed(data)
    if final:
        items += framer.flush()
    return check_all(items, settings)


class BinaryFramer:
    """Scans a byte stream for frames that begin with ``START``; subclasses measure and decode."""

    name: ClassVar[str] = ""
    START: ClassVar[int] = 0
    MAX_FRAME: ClassVar[int] = 0

    def __init__(self) -> None:
        self.stats = FramerStats()
        self._buf = bytearray()
        self._covered = 0  # head bytes of _buf that belong to an already reported broken frame

    @property
    def pending(self) -> bytes:
        """The bytes held while waiting for the rest of a frame."""
        return bytes(self._buf)

    @property
    def max_pending(self) -> int:
        """Upper bound of ``len(pending)`` between calls: one maximal frame."""
        return self.MAX_FRAME

    def feed(self, data: bytes) -> list[Received]:
        """Add bytes from the receiver; return the frames they complete."""
        if data:
            self._buf += data
        return self._scan(final=False)

    def flush(self) -> list[Received]:
        """End of input: report a cut frame as broken, skip the rest, start empty."""
        out = self._scan(final=True)
        self._buf.clear()
        self._covered = 0
        return out

    def scan(self, data: bytes, final: bool, settings: Settings) -> Batch:
        """Frame a read chunk and check its frames (the pipeline's input)."""
        return _check_chunk(self, data, final, settings)

    # Subclass hooks -------------------------------------------------------------------

    def _measure(self, buf: bytearray, pos: int) -> int:
        """Length of the frame starting at ``pos``: >0 known, 0 need more header, -1 not a frame."""
        raise NotImplementedError

    def _decode(self, frame: bytes) -> Decoded:
        """Decode one complete candidate frame."""
        raise NotImplementedError

    # Engine ---------------------------------------------------------------------------

    def _skip(self, start: int, end: int) -> None:
        start = max(start, self._covered)
        if end > start:
            self.stats.skipped_bytes += end - start

    def _broken(self, out: list[Received], pos: int, end: int, error: str) -> None:
        # Report a candidate with untrusted boundaries unless it starts inside a broken one.
        if pos >= self._covered:
            out.append(Received(b"", 0, error=error))
            self.stats.bad_frames += 1
            self._covered = end

    def _scan(self, final: bool) -> list[Received]:
        buf = self._buf
        out: list[Received] = []
        n = len(buf)
        pos = 0
        while pos < n:
            start = buf.find(self.START, pos)
            if start < 0:
                self._skip(pos, n)
                pos = n
                break
            self._skip(pos, start)
            pos = start
            size = self._measure(buf, pos)
            if size < 0:
                self._skip(pos, pos + 1)
                pos += 1
                continue
            if size == 0 or pos + size > n:
                if not final:
                    break  # wait for more bytes
                if size > 0:
                    self._broken(out, pos, n, f"{self.name}: frame cut after {n - pos} of {size} bytes")
                else:
                    self._skip(pos, pos + 1)
                pos += 1
                continue
            result, trusted = self._decode(bytes(buf[pos : pos + size]))
            if not trusted:
                assert result is not None and result.error is not None
                self._broken(out, pos, pos + size, result.error)
                pos += 1  # resynchronise inside the broken frame
                continue
            if result is not None:
                out.append(result)
                if result.error is None:
                    self.stats.frames += 1
                else:
                    self.stats.bad_frames += 1
            pos += size
        del buf[:pos]
        self._covered = max(0, self._covered - pos)
        return out

    def _count_extra(self, key: str) -> None:
        self.stats.extra[key] = self.stats.extra.get(key, 0) + 1


class LineFramer:
    """Splits a byte stream into bounded text lines; subclasses parse one line each."""

    name: ClassVar[str] = ""
    MAX_LINE: ClassVar[int] = 2048

    def __init__(self) -> None:
        self.stats = FramerStats()
        self._buf = bytearray()
        self._discarding = False  # inside an overlong line: drop bytes up to the next newline

    @property
    def pending(self) -> bytes:
        """The bytes of the unfinished line."""
        return bytes(self._buf)

    @property
    def max_pending(self) -> int:
        """Upper bound of ``len(pending)`` between calls: one maximal line."""
        return self.MAX_LINE

    def feed(self, data: bytes) -> list[Received]:
        """Add bytes from the receiver; return the frames of the lines they complete."""
        out: list[Received] = []
        buf = self._buf
        if data:
            buf += data
        start = 0
        while True:
            end = buf.find(b"\n", start)
            if end < 0:
                break
            if self._discarding:
                self.stats.skipped_bytes += end + 1 - start
                self._discarding = False
            else:
                self._line(bytes(buf[start:end]), end + 1 - start, out)
            start = end + 1
        del buf[:start]
        if self._discarding or len(buf) > self.MAX_LINE:
            self.stats.skipped_bytes += len(buf)
            buf.clear()
            self._discarding = True
        return out

    def flush(self) -> list[Received]:
        """End of input: the unterminated last line is handled as a line."""
        out: list[Received] = []
        if self._discarding:
            self.stats.skipped_bytes += len(self._buf)
        elif self._buf:
            self._line(bytes(self._buf), len(self._buf), out)
        self._buf.clear()
        self._discarding = False
        return out

    def scan(self, data: bytes, final: bool, settings: Settings) -> Batch:
        """Split a read chunk into lines and check their frames (the pipeline's input)."""
        return _check_chunk(self, data, final, settings)

    def _line(self, raw: bytes, size: int, out: list[Received]) -> None:
        # ``size`` counts the newline too, so skipped bytes add up to the input.
        if len(raw) > self.MAX_LINE:
            self.stats.skipped_bytes += size
            return
        text = raw.decode("ascii", errors="replace").strip()
        if not text or text.startswith("#"):
            return
        items = self._parse(text)
        if items is None:
            self.stats.skipped_bytes += size
            return
        for item in items:
            out.append(item)
            if item.error is None:
                self.stats.frames += 1
            else:
                self.stats.bad_frames += 1

    def _parse(self, text: str) -> list[Received] | None:
        """Frames of one stripped, non-empty line; None when the line is not a frame at all."""
        raise NotImplementedError
