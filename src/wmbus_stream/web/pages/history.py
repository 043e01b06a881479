"""The configuration history: the table on Settings, one entry's text, and reverting to it."""

from __future__ import annotations

import re
from typing import TYPE_CHECKING

from ...errors import ConfigError
from ..request import Request, Response, redirect
from ..routing import Site
from ..templates import Markup, html, join, raw
from .layout import csrf_input, error_page, flash, layout, when

if TYPE_CHECKING:
    from ...config.manage import ConfigManager

__all__ = ["history_table", "revert", "show_entry"]


def history_table(app: Site, req: Request, limit: int = 20) -> Markup:
    manager = app.manager()
    if manager is None:
        return Markup("")
    entries = list(manager.history())
    entries.sort(key=lambda e: e.number, reverse=True)
    rows = join(
        html('<tr><td class="num">{n}</td><td class="time">{when}</td><td>{origin}</td><td>{note}</td>'
             '<td><a href="/settings/history/{n}">view</a></td><td>{revert}</td></tr>',
             n=e.number, when=when(e.time), origin=e.origin, note=e.note or "",
             revert=(html('<form method="post" action="/settings/history/{n}/revert" class="inline">{csrf}'
                          '<button class="small" id="revert-{n}">Revert to this</button></form>', n=e.number,
                          csrf=csrf_input(req)) if i else raw('<span class="muted">current</span>')))
        for i, e in enumerate(entries[:limit])
    )
    more = html('<p class="muted">{0} older entries are kept; see the API for all.</p>', len(entries) - limit) \
        if len(entries) > limit else Markup("")
    return html(
        '<section class="card wide"><h2>History</h2><table class="history"><thead><tr><th>#</th><th>When</th>'
        '<th>Origin</th><th>Note</th><th></th><th></th></tr></thead><tbody>{0}</tbody></table>{1}</section>',
        rows or raw('<tr><td colspan="6" class="muted">No history yet.</td></tr>'), more)


def show_entry(app: Site, req: Request, match: re.Match[str]) -> Response:
    manager = app.manager()
    number = int(match["n"])
    entry = next((e for e in manager.history() if e.number == number), None) if manager else None
    if entry is None:
        return error_page(app, req, 404, f"No configuration #{number} in the history.")
    body = html(
        '<div class="title"><h1>Configuration #{n}</h1><div class="actions">'
        '<form method="post" action="/settings/history/{n}/revert" class="inline">{csrf}<button>Revert to this'
        '</button></form></div></div><p>{when} &middot; {origin} &middot; {note}</p><pre class="config">{text}</pre>'
        '<p><a href="/settings">Back to the settings</a></p>',
        n=number, csrf=csrf_input(req), when=when(entry.time), origin=entry.origin, note=entry.note or "",
        text=entry.masked_text,
    )
    return layout(app, req, f"Configuration #{number}", body, active="/settings")


def revert(app: Site, req: Request, match: re.Match[str], manager: ConfigManager) -> Response:
    try:
        entry = manager.revert(int(match["n"]), origin="revert")
    except ConfigError as exc:
        flash(req, f"Revert refused, nothing was changed: {exc}", "error")
        return redirect("/settings")
    except (KeyError, LookupError, ValueError) as exc:
        flash(req, f"Revert refused: {exc}", "error")
        return redirect("/settings")
    flash(req, f"Reverted to configuration #{match['n']}; saved as #{entry.number}.")
    return redirect("/settings")
