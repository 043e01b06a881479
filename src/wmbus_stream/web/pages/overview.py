"""The Overview: service, receiver, telegram, report and sync state, refreshed live; and Push now."""

from __future__ import annotations

import re
from collections.abc import Iterable
from datetime import datetime
from typing import Any

from ... import __version__
from ...core.pipeline import tally
from ..operations import push_outcome
from ..request import Request, Response, redirect
from ..routing import Site
from ..templates import Markup, html, join
from ..views import fmt_duration, fmt_time
from .layout import csrf_input, flash, layout

__all__ = ["overview_fragment", "push_now", "show_overview"]


def _sync_text(status: dict[str, Any]) -> str:
    """The last sync's result line and time from the status' ``sync`` part, or ``none yet``."""
    sync = status.get("sync")
    last = sync.get("last") if isinstance(sync, dict) else None
    if not isinstance(last, dict):
        return "none yet"
    text = str(last.get("text") or last.get("code") or "")
    when = last.get("at")
    if isinstance(when, (int, float)) and when:
        text += " at " + fmt_time(when)
    return text.strip() or "none yet"


def _iso_time(text: Any) -> str:
    """An ISO time from the status (any offset) shown like the other times: UTC, no ``T``."""
    if not isinstance(text, str):
        return "-"
    try:
        return fmt_time(datetime.fromisoformat(text).timestamp())
    except ValueError:
        return text.replace("T", " ")


def _dl(items: Iterable[tuple[str, Any]]) -> Markup:
    return join(html('<div><dt>{0}</dt><dd>{1}</dd></div>', k, v) for k, v in items)


def overview_fragment(app: Site, req: Request) -> Markup:
    gw = app.gateway
    status = gw.status()
    telegrams = tally(status.get("telegrams", {}))
    receiver = status.get("receiver", {})
    last = status.get("last_push")
    if last:
        result = (f"acknowledged (HTTP {last.get('status')})" if last.get("ok")
                  else f"failed: {last.get('error') or 'HTTP ' + str(last.get('status'))}")
        push_items = [("Last push", fmt_time(last.get("at"))), ("Result", result), ("Lines", last.get("lines", 0)),
                      ("Duration", f"{last.get('duration', 0):.2f} s")]
    else:
        push_items = [("Last push", "none yet")]
    next_push = status.get("next_push")
    pushes = status.get("pushes", {})
    state = str(receiver.get("state", "stopped"))
    service = [
        ("Enabled", "yes" if status.get("enabled") else "no (paused)"),
        ("Version", status.get("version", __version__)),
        ("Implementation", status.get("implementation", "")),
        ("Uptime", fmt_duration(status.get("uptime_seconds", 0))),
        ("Gateway serial", status.get("gateway_serial", "")),
    ]
    receiver_items = [
        ("Protocol", receiver.get("protocol", "")), ("Port", receiver.get("port", "")),
        ("State", html('<span class="state {0}">{0}</span>', state)),
        ("Reconnects", receiver.get("reconnects", 0)),
        ("Last error", receiver.get("last_error") or "-"),
    ]
    telegram_items = [
        ("Read", telegrams.read), ("OK (accepted)", telegrams.accepted), ("Broken", telegrams.broken),
        ("Filtered out", telegrams.filtered), ("Meters pending", status.get("meters_pending", 0)),
    ]
    push_items += [
        ("Next push", _iso_time(next_push)),
        ("Pushes ok / failed", f"{pushes.get('ok', 0)} / {pushes.get('failed', 0)}"),
        ("Push in flight", "yes" if status.get("push_in_flight") else "no"),
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
    sync_button = (html('<form method="post" action="/sync" class="inline">{0}<button>Sync now</button></form>',
                        csrf_input(req)) if hasattr(app.gateway, "sync_now") else Markup(""))
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
