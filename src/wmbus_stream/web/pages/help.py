"""Help: what the gateway does, its pages, the report format, and where the API and docs are."""

from __future__ import annotations

import re

from ... import __version__
from .. import views
from ..request import Request, Response
from ..routing import Site
from ..templates import html
from .layout import layout

__all__ = ["show_help"]


def show_help(app: Site, req: Request, match: re.Match[str]) -> Response:
    cfg = app.gateway.config
    body = html(
        '<h1>Help</h1><div class="prose">'
        '<h2>What this gateway does</h2>'
        '<p>wmbus-stream reads Wireless M-Bus telegrams from a radio receiver ({receiver}), checks '
        'them (CRC, length, header), filters them (manufacturer, device type, meter allow-list, radio mode) and '
        'keeps the latest telegram of each meter. On a schedule (<code>{cron}</code>) it pushes one report with '
        'those telegrams to the head-end system (HES) with an HTTP POST and forgets what the HES acknowledged. '
        'It never decrypts and never changes the telegrams: the HES removes duplicates and decodes them.</p>'
        '<h2>The pages</h2><dl class="plain">'
        '<dt>Overview</dt><dd>Is the gateway running, is the receiver connected, how many telegrams were read, '
        'accepted and broken, how many meters wait for the next push, and how the last push and sync went. It '
        'refreshes itself every few seconds.</dd>'
        '<dt>Settings</dt><dd>Every configuration key with its value (secrets masked). Saving checks every value '
        'the way <code>wmbus-stream config check</code> does and applies all changes or none; each applied '
        'configuration is kept in the history and can be reverted to. Export gives a file for other gateways '
        '(no serial number, no secrets); a backup holds configuration and state for a replacement device.</dd>'
        '<dt>Analyzer</dt><dd>Every meter heard in the current period (reset by hand or every '
        '{reset} h): its filter verdict, telegram count and signal strength. Use it to place receivers: meters '
        'in the red bars of the chart (average below {weak} dBm) are heard unreliably.</dd></dl>'
        '<h2>The report format</h2><p>One line per meter, fields separated by <code>;</code>:</p>'
        '<pre>&lt;gateway serial&gt;;&lt;meter id&gt;;&lt;date&gt;;&lt;value data count&gt;;&lt;telegram&gt;\n'
        '00000161;61000164;2026-11-24 10:15:02;00;080072640100619615011B...</pre>'
        '<p>The date is when the gateway received the telegram, in {tz}; the telegram is the wired M-Bus '
        'RSP_UD (without start, checksum and stop bytes) holding the receiver address, the RSSI and the whole '
        'wireless telegram in a <code>0D FD 3B</code> container (a telegram of 192 bytes or more follows '
        '<code>0F</code> instead, the long form: see docs/formats.md).</p>'
        '<h2>API and metrics</h2><p>Everything these pages do is also available as JSON under '
        '<code>/api/v1/</code> (session or HTTP basic auth; the description is at '
        '<a href="/api/v1/openapi.json">/api/v1/openapi.json</a>). Prometheus metrics are at '
        '<a href="/metrics">/metrics</a>.</p>'
        '<h2>More</h2><p>The documentation is in the <code>docs/</code> folder of the source distribution '
        '(configuration keys, command line, web UI and API, report format); on the device, '
        '<code>wmbus-stream --help</code> lists the commands. The administrator password is set with '
        '<code>wmbus-stream passwd</code> on the device.</p>'
        '<p class="muted">wmbus-stream {version}, {impl}.</p></div>',
        receiver=("the built-in simulator" if cfg.receiver_protocol == "simulator"
                  else f"{cfg.receiver_protocol} on {cfg.receiver_port}"),
        cron=str(cfg.get("receiving.server.push.cron")), reset=cfg.analyzer_reset_hours, weak=views.WEAK_BELOW,
        tz=cfg.get("report.timezone"), version=__version__, impl=app.gateway.status().implementation,
    )
    return layout(app, req, "Help", body, active="/help")
