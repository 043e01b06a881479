"""The Overview: service, receiver, telegram, report and sync state, refreshed live; and Push now."""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from datetime import datetime
from typing import Any

from ...core.pipeline import tally
from ...host import Status
from ..operations import push_outcome
from ..request import Request, Response, redirect
from ..routing import Site
from ..templates import Markup, html, join
from ..views import fmt_duration, fmt_time
from .layout import csrf_input, flash, layout

__all__ = ["overview_fragment", "push_now", "show_overview"]


def _sync_text(status: Status) -> str:
    """The last sync's result line and time from the status' ``sync`` part, or ``none yet``."""
    last = status.sync.last
    if not isinstance(last, Mapping):  # a saved result that is not a JSON object shows as none
        return "none yet"
    text = str(last.get("text") or last.get("code") or "")
    when = last.get("at")
    if isinstance(when, (int, float)) and when:
        text += " at " + fmt_time(when)
    return text.strip() or "none yet"


def _iso_time(when: datetime | None) -> str:
    """A time from the status (any offset) shown like the other times: UTC, no ``T``."""
    return "-" if when is None else fmt_time(when.timestamp())


def _dl(items: Iterable[tuple[str, Any]]) -> Markup:
    return join(html('<div><dt>{0}</dt><dd>{1}</dd></div>', k, v) for k, v in items)


def overview_fragment(app: Site, req: Request) -> Markup:
    gw = app.gateway
    status = gw.status()
    telegrams = tally(status.telegrams)
    receiver = status.receiver
    last = status.last_push
    if last:
        result = (f"acknowledged (HTTP {last.status})" if last.ok
                  else f"failed: {last.error or 'HTTP ' + str(last.status)}")
        push_items = [("Last push", fmt_time(last.at)), ("Result", result), ("Lines", last.lines),
                      ("Duration", f"{last.duration:.2f} s")]
    else:
        push_items = [("Last push", "none yet")]
    service = [
        ("Enabled", "yes" if status.enabled else "no (paused)"),
        ("Version", status.version),
        ("Implementation", status.implementation),
        ("Uptime", fmt_duration(status.uptime_seconds)),
        ("Gateway serial", status.gateway_serial),
    ]
    receiver_items = [
        ("Protocol", receiver.protocol), ("Port", receiver.port),
        ("State", html('<span class="state {0}">{0}</span>', receiver.state)),
        ("Reconnects", receiver.reconnects),
        ("Last error", receiver.last_error or "-"),
    ]
    telegram_items = [
        ("Read", telegrams.read), ("OK (accepted)", telegrams.accepted), ("Broken", telegrams.broken),
        ("Filtered out", telegrams.filtered), ("Meters pending", status.meters_pending),
    ]
    push_items += [
        ("Next push", _iso_time(status.next_push)),
        ("Pushes ok / failed", f"{status.pushes.ok} / {status.pushes.failed}"),
        ("Push in flight", "yes" if status.push_in_flight else "no"),
    ]
    sync_items = [("Sync enabled", "yes" if gw.config.sync_enabled else "no"), ("Last sync", _sync_text(status))]
    return html(
        '<div class="cards">'
        '<section class="card"><h2>Service</h2><dl>{service}</dl></section>'
        '<section class="card"><h2>Receiver</h2><dl>{receiver}</dl></section>'
        '<section class="card"><h2>Telegrams</h2><dl>{telegrams}</dl></section>'
        '<section class="card"><h2>Reports</h2><dl>{push}</dl></section>'
        '<section class="card"><h2>Configuration sync</h2><dl>{sync}</dl></section>'
        '</div>',
        service=_dl(service), receiver=_dl(receiver_items), telegrams=_dl(telegram_items), push=_dl(push_items),
        sync=_dl(sync_items),
    )


def show_overview(app: Site, req: Request, match: re.Match[str]) -> Response:
    fragment = overview_fragment(app, req)
    if req.query.get("fragment"):
        return Response(200, fragment.encode("utf-8"))
    sync_button = html('<form method="post" action="/sync" class="inline">{0}<button>Sync now</button></form>',
                       csrf_input(req))
    body = html(
        '<div class="title"><h1>Overview</h1><div class="actions">'
        '<form method="post" action="/push" class="inline">{csrf}<button>Push now</button></form>{sync}</div></div>'
        '<div id="live" data-refresh="/?fragment=1">{fragment}</div>',
        csrf=csrf_input(req), sync=sync_button, fragment=fragment,
    )
    return layout(app, req, "Overview", body, active="/", scripts=("live.js",))


def push_now(app: Site, req: Request, match: re.Match[str]) -> Response:
    outcome = push_outcome(app)
    if outcome is None:
        flash(req, "A push is already in flight; try again in a moment.", "warn")
    else:
        flash(req, "Push " + outcome.summary(), "ok" if outcome.ok else "error")
    return redirect("/")
