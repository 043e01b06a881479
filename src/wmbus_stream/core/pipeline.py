"""The receive path: received frames -> check -> filters -> analyzer -> latest-per-meter store.

Sans-IO: frames and the arrival time come in as arguments; nothing here touches a port, a
clock or a file (the store's flush is the service's business). Every frame is counted
exactly once under one result name; ``counts["read"]`` is their sum in every snapshot,
because a batch's counts are published at once as a new ``Counter``. ``long_form`` counts
the accepted telegrams longer than ``wire.CONTAINER_MAX``, whose report uses the 0F long form
(also counted by the analyzer). This loop runs once per telegram, so it avoids per-telegram
objects beyond the ones the store keeps.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping
from typing import NamedTuple

from .. import wire
from ..errors import FrameError
from ..receivers.base import FORMAT_AUTO, Received
from ..wire.frame import strip_any
from ..wire.modes import mode_name

__all__ = ["Pipeline", "Settings", "Tally", "tally"]

_STRIP = {wire.FORMAT_NONE: wire.check_telegram, wire.FORMAT_A: wire.strip_a, wire.FORMAT_B: wire.strip_b,
          FORMAT_AUTO: lambda data: strip_any(data)[0]}
_VERDICTS = ("Accepted",) + wire.RESULT_NAMES[1:]
FILTERED = wire.RESULT_NAMES[wire.FILTER_MANUFACTURER:]  # the filter verdicts: filter.* and radio.mode


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


class Settings:
    """What the pipeline needs from the configuration, swapped atomically on reload."""

    __slots__ = ("matcher", "receiver_address", "wired_address")

    def __init__(self, matcher: wire.Matcher, receiver_address: str | None, wired_address: int) -> None:
        self.matcher = matcher
        self.receiver_address = receiver_address
        self.wired_address = wired_address


class Pipeline:
    """Turns received frames into store entries and analyzer records, counting each outcome."""

    def __init__(self, settings: Settings, store, analyzer) -> None:
        self.settings = settings
        self.store = store
        self.analyzer = analyzer
        self.counts: Counter[str] = Counter()
        self.long_form = 0

    def process(self, items: Iterable[Received], now: float) -> None:
        """Handle frames that arrived at ``now`` (epoch seconds)."""
        settings = self.settings  # one consistent view even if a reload swaps it meanwhile
        verdict_of = settings.matcher.verdict
        record = self.analyzer.record
        put = self.store.put
        results = [0] * len(wire.RESULT_NAMES)  # counted locally, published once per call
        broken: Counter[str] = Counter()
        read = 0
        for item in items:
            read += 1
            try:
                if item.error is not None:
                    raise FrameError(item.error)
                telegram = _STRIP[item.frame_format](item.data)
                verdict = verdict_of(telegram, item.mode)
                report = None
                if not verdict:
                    report = item.wired
                    if report is None:
                        report = wire.build_report(telegram, item.receiver_address or settings.receiver_address,
                                                   item.rssi_dbm, settings.wired_address)
            except FrameError as exc:
                broken[exc.kind] += 1
                self.analyzer.record_broken(now, exc.kind)
                continue
            key = telegram[2:10]  # manufacturer, ID, version, device type: the meter's link address
            meter_id = telegram[7:3:-1].hex().upper()
            record(key, meter_id, telegram[9], _VERDICTS[verdict], item.rssi_dbm, mode_name(item.mode), now)
            results[verdict] += 1
            if report is not None:
                put(key, meter_id, now, report)
                if len(telegram) > wire.CONTAINER_MAX:
                    self.long_form += 1
                    self.analyzer.record_long_form()
        counts = self.counts + broken
        counts["read"] += read
        for verdict, count in enumerate(results):
            if count:
                counts[wire.RESULT_NAMES[verdict]] += count
        self.counts = counts  # one assignment: a reader never sees half a batch
