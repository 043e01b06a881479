"""The receive path: received frames -> check -> filters -> analyzer -> latest-per-meter store.

Sans-IO: frames and the arrival time come in as arguments; nothing here touches a port, a
clock or a file (the store's flush is the service's business). Every frame is counted
exactly once under one result name; ``counts["read"]`` is their sum.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable

from .. import wire
from ..errors import FrameError
from ..receivers.base import Received
from ..wire.modes import mode_name
from .check import check

__all__ = ["Pipeline", "Settings"]


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

    def process(self, items: Iterable[Received], now: float) -> None:
        """Handle frames that arrived at ``now`` (epoch seconds)."""
        settings = self.settings  # one consistent view even if a reload swaps it meanwhile
        counts = self.counts
        for item in items:
            counts["read"] += 1
            try:
                checked = check(item)
                telegram = checked.telegram
                verdict = settings.matcher.verdict(telegram, item.mode)
                report = None if verdict else checked.report_telegram(settings.receiver_address, settings.wired_address)
            except FrameError as exc:
                counts[exc.kind] += 1
                self.analyzer.record_broken(now, exc.kind)
                continue
            key = telegram[2:10]  # manufacturer, ID, version, device type: the meter's link address
            meter_id = telegram[7:3:-1].hex().upper()
            result = wire.RESULT_NAMES[verdict]
            self.analyzer.record(
                key, meter_id, telegram[9], "Accepted" if not verdict else result,
                item.rssi_dbm, mode_name(item.mode), now,
            )
            counts[result] += 1
            if report is not None:
                self.store.put(key, meter_id, now, report)
