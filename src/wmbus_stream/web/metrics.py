"""``/metrics``: the gateway's counters in the Prometheus text format (``prometheus_client``).

Strategy: one custom collector reads the gateway's own counters at scrape time (pipeline
counts, store, push outcomes, receiver, analyzer totals, sync result), so there is no second
copy of any state to drift. Labels have a fixed, small set of values (telegram results,
push results, sync results); there is no per-meter label and no configuration value, so
nothing secret and nothing unbounded can leak into a scrape.

Open without authentication only when ``web.metrics.public=true``; otherwise it needs a
session or basic auth like the API.
"""

from __future__ import annotations

import re
import time
from collections.abc import Iterator, Mapping

from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from prometheus_client.core import (
    CollectorRegistry,
    CounterMetricFamily,
    GaugeMetricFamily,
    Metric,
)

from .. import __version__, implementation
from ..host import SyncStatus
from ..wire import RESULT_NAMES
from .request import Request, Response
from .routing import Routes, Site

__all__ = ["TELEGRAM_RESULTS", "GatewayCollector", "Metrics", "register"]

# Every result a telegram can have: the wire results plus the framing kinds the checks raise.
TELEGRAM_RESULTS = tuple(dict.fromkeys((*RESULT_NAMES, "checksum", "frame")))
_NS = "wmbus_stream"


class GatewayCollector:
    """Yields the metric families of one gateway (and its web server) on each scrape."""

    def __init__(self, web: Site) -> None:
        self.web = web

    def describe(self) -> list[Metric]:
        return []  # no up-front description: families are built from live state

    def collect(self) -> Iterator[Metric]:
        gw = self.web.gateway
        status = gw.status()
        pushed = gw.push_totals()
        info = GaugeMetricFamily(f"{_NS}_info", "Version and implementation (compiled or pure) of the gateway",
                                 labels=["version", "implementation"])
        info.add_metric([__version__, implementation()], 1)
        yield info
        yield GaugeMetricFamily(f"{_NS}_start_time_seconds", "When the gateway started (Unix time)",
                                value=gw.started_at)
        yield GaugeMetricFamily(f"{_NS}_enabled", "1 when service.enabled=true, 0 when paused",
                                value=1 if status.enabled else 0)

        counts = status.telegrams
        read = CounterMetricFamily(f"{_NS}_telegrams_read", "Frames read from the receiver (every result)")
        read.add_metric([], counts.get("read", 0))
        yield read
        telegrams = CounterMetricFamily(
            f"{_NS}_telegrams", "Telegrams by result: ok (accepted), a broken kind (crc, length, header, checksum, "
            "frame) or the filter that rejected it (filter.manufacturer, filter.device.type, filter.device.id, "
            "radio.mode)", labels=["result"])
        for result in TELEGRAM_RESULTS:
            telegrams.add_metric([result], counts.get(result, 0))
        yield telegrams
        yield CounterMetricFamily(
            f"{_NS}_telegrams_long_form", "Accepted telegrams of 192 bytes or more, which the report carries in"
            " the 0F long form because a 0D FD 3B length byte cannot say their length",
            value=status.telegrams_long_form)

        yield GaugeMetricFamily(f"{_NS}_meters_pending", "Meters with a telegram waiting for the next push",
                                value=status.meters_pending)
        analyzer = gw.analyzer
        if analyzer is not None:
            totals = analyzer.totals()
            yield GaugeMetricFamily(f"{_NS}_analyzer_meters", "Meters heard in the current analyzer period",
                                    value=totals.meters_found)
            yield GaugeMetricFamily(f"{_NS}_analyzer_period_start_seconds",
                                    "Start of the current analyzer period (Unix time)", value=totals.running_since)

        push_results = CounterMetricFamily(f"{_NS}_pushes", "Report pushes by result", labels=["result"])
        push_results.add_metric(["ok"], status.pushes.ok)
        push_results.add_metric(["failed"], status.pushes.failed)
        yield push_results
        attempts = CounterMetricFamily(f"{_NS}_push_attempts", "HTTP attempts made by pushes (retries included)")
        attempts.add_metric([], pushed.attempts)
        yield attempts
        duration = CounterMetricFamily(f"{_NS}_push_duration_seconds", "Time spent pushing, summed over pushes")
        duration.add_metric([], pushed.seconds)
        yield duration
        lines = CounterMetricFamily(f"{_NS}_push_lines_acknowledged", "Report lines the HES acknowledged")
        lines.add_metric([], pushed.lines_acknowledged)
        yield lines
        last = status.last_push
        if last is not None:
            yield GaugeMetricFamily(f"{_NS}_push_last_duration_seconds", "Duration of the last push",
                                    value=last.duration)
            yield GaugeMetricFamily(f"{_NS}_push_last_lines", "Lines in the last push", value=last.lines)
        success = pushed.last_success_at
        if success is None and last is not None and last.ok:
            success = last.at
        if success is not None:
            yield GaugeMetricFamily(f"{_NS}_push_last_success_timestamp_seconds",
                                    "When the last acknowledged push started (Unix time)", value=success)
        yield GaugeMetricFamily(f"{_NS}_push_in_flight", "1 while a push is running",
                                value=1 if status.push_in_flight else 0)
        yield GaugeMetricFamily(f"{_NS}_store_write_errors", "State writes that failed since start (kept in memory)",
                                value=status.store_write_errors)

        receiver = status.receiver
        connected = GaugeMetricFamily(f"{_NS}_receiver_connected", "1 when the receiver is connected")
        connected.add_metric([], 1 if receiver.state == "connected" else 0)
        yield connected
        reconnects = CounterMetricFamily(f"{_NS}_receiver_reconnects", "Times the receiver was reopened")
        reconnects.add_metric([], receiver.reconnects)
        yield reconnects
        read_bytes = CounterMetricFamily(f"{_NS}_receiver_bytes", "Bytes read from the receiver")
        read_bytes.add_metric([], receiver.bytes_read)
        yield read_bytes
        skipped = CounterMetricFamily(f"{_NS}_receiver_skipped_bytes", "Bytes skipped as noise while framing")
        skipped.add_metric([], receiver.skipped_bytes)
        yield skipped
        yield GaugeMetricFamily(f"{_NS}_receiver_silent", "1 while the receiver has delivered no telegram for"
                                " receiver.silence.minutes", value=1 if receiver.silent else 0)
        yield CounterMetricFamily(f"{_NS}_receiver_silence_alarms", "Silent periods of the receiver",
                                  value=receiver.silence_alarms)

        yield from self._sync(status.sync)

        web = self.web
        failures = CounterMetricFamily(f"{_NS}_web_login_failures", "Failed web/API logins")
        failures.add_metric([], web.limiter.failures_total)
        yield failures
        yield GaugeMetricFamily(f"{_NS}_web_sessions", "Logged-in web sessions", value=len(web.sessions))
        yield GaugeMetricFamily(f"{_NS}_web_connections", "Open connections to the web server",
                                value=web.open_connections)
        yield CounterMetricFamily(f"{_NS}_web_connections_refused", "Connections refused over a connection limit",
                                  value=web.refused_connections)

    @staticmethod
    def _sync(sync: SyncStatus) -> Iterator[Metric]:
        """Sync runs by outcome and the last result code, from the status' ``sync`` part."""
        family = CounterMetricFamily(f"{_NS}_syncs", "Configuration syncs by outcome (ok: 900, failed: 920 or 921)",
                                     labels=["result"])
        family.add_metric(["ok"], sync.runs.ok)
        family.add_metric(["failed"], sync.runs.failed)
        yield family
        last = sync.last
        if isinstance(last, Mapping) and isinstance(last.get("code"), int):
            yield GaugeMetricFamily(f"{_NS}_sync_last_result_code",
                                    "Result code of the last configuration sync (900, 920, 921)", value=last["code"])
            if isinstance(last.get("at"), (int, float)):
                yield GaugeMetricFamily(f"{_NS}_sync_last_timestamp_seconds",
                                        "When the last configuration sync ran (Unix time)", value=last["at"])


class Metrics:
    """The registry and the ``/metrics`` handler."""

    def __init__(self, web: Site) -> None:
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(GatewayCollector(web))

    def text(self) -> bytes:
        return generate_latest(self.registry)

    def handle(self, req: Request, match: re.Match[str]) -> Response:
        started = time.perf_counter()
        body = self.text()
        return Response(200, body, CONTENT_TYPE_LATEST,
                        [("X-Scrape-Seconds", f"{time.perf_counter() - started:.4f}")])


def register(routes: Routes, web: Site) -> None:
    """Add ``/metrics``: public only while ``web.metrics.public=true``, else it needs a login like the API."""
    routes.add("GET", r"/metrics", Metrics(web).handle, public=lambda: web.gateway.config.web_metrics_public)
