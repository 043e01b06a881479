"""The receive path: a read chunk -> framing, check, filters -> analyzer -> latest-per-meter store.

Sans-IO: bytes (or received frames) and the arrival time come in as arguments; nothing here
touches a port, a clock or a file (the store's flush is the service's business). The check
stage (``core.check``) turns a chunk into a ``Batch``: a framer with a compiled scanner
frames, checks and filters the whole chunk in one call, any other framer's frames go
through ``check_all``. Every frame is counted exactly once under one result name;
``counts["read"]`` is their sum in every snapshot, because a batch's counts are published
at once as a new ``Counter``. ``long_form`` counts the accepted telegrams longer than
``wire.CONTAINER_MAX``, whose report uses the 0F long form (also counted by the analyzer).
The loop over a batch runs once per telegram, so it makes no objects of its own.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping
from typing import Any, NamedTuple, Protocol

from .. import wire
from .check import Batch, Settings, check_all
from .received import Received

__all__ = ["Pipeline", "Scanner", "Tally", "tally"]

FILTERED = wire.RESULT_NAMES[wire.FILTER_MANUFACTURER:]  # the filter verdicts: filter.* and radio.mode


class Scanner(Protocol):
    """What the pipeline needs of a receiver framer: a read chunk checked into a Batch."""

    def scan(self, data: bytes, final: bool, settings: Settings) -> Batch: ...


class Tally(NamedTuple):
    """Telegrams read, split the way the Overview and the demo show them: read = accepted + broken + filtered."""

    read: int
    accepted: int
    broken: int
    filtered: int


def tally(counts: Mapping[str, int]) -> Tally:
    """Sum a pipeline's counts; every result that is neither ``ok`` nor a filter verdict is a broken kind."""
    filtered = sum(counts.get(name, 0) for name in FILTERED)
    accepted = counts.get("ok", 0)
    broken = sum(v for k, v in counts.items() if k not in ("read", "ok") and k not in FILTERED)
    return Tally(counts.get("read", 0), accepted, broken, filtered)


class Pipeline:
    """Turns read chunks (or received frames) into store entries and analyzer records, counting each outcome."""

    def __init__(self, settings: Settings, store: Any, analyzer: Any) -> None:
        self.settings = settings
        self.store = store
        self.analyzer = analyzer
        self.counts: Counter[str] = Counter()
        self.long_form = 0

    def feed(self, framer: Scanner, data: bytes, now: float, final: bool = False) -> int:
        """Handle a chunk read at ``now`` (epoch seconds); ``final`` ends the stream. Returns the frames read.

        Counts are published when the chunk completed a frame, and at the end of the stream.
        """
        # One consistent view of the settings even if a reload swaps them meanwhile.
        return self._apply(framer.scan(data, final, self.settings), now, final)

    def process(self, items: Iterable[Received], now: float) -> None:
        """Handle frames that arrived at ``now`` (epoch seconds)."""
        self._apply(check_all(items, self.settings), now, True)

    def _apply(self, batch: Batch, now: float, publish: bool) -> int:
        records, broken, results, long_forms = batch
        record = self.analyzer.record
        put = self.store.put
        for key, _meter_id, _device_type, verdict, rssi_dbm, mode, report in records:
            record(key, verdict, rssi_dbm, mode, now)
            if report is not None:
                put(key, now, report)
        for kind in broken:
            self.analyzer.record_broken(now, kind)
        for _ in range(long_forms):
            self.analyzer.record_long_form()
        self.long_form += long_forms
        read = len(records) + len(broken)
        if read or publish:
            counts = self.counts + Counter(broken)
            counts["read"] += read
            for code, count in enumerate(results):
                if count:
                    counts[wire.RESULT_NAMES[code]] += count
            self.counts = counts  # one assignment: a reader never sees half a batch
        return read
