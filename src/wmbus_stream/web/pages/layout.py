"""What every page shares: the document, the header and navigation, flash messages, upload fields.

Every value reaches HTML through ``templates.html``/``escape``; the only page-level state is
the session's flash list, shown once by the next page.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from ... import __version__
from ..request import Request, Response
from ..routing import Site
from ..templates import Markup, html, join, raw
from ..views import fmt_time

__all__ = ["NAV", "NOTHING", "csrf_input", "error_page", "flash", "layout", "page", "simple_page", "upload", "when"]


NOTHING = Markup("")  # an empty fragment, the default of optional parts
NAV = (("/", "Overview"), ("/settings", "Settings"), ("/analyzer", "Analyzer"), ("/help", "Help"))


def page(title: str, body: Markup, *, nav: Markup = NOTHING, status: int = 200,
         scripts: Iterable[str] = (), headers: list[tuple[str, str]] | None = None) -> Response:
    script_tags = join(html('<script src="/static/{0}" defer></script>', name) for name in scripts)
    document = html(
        '<!doctype html>\n<html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        '<title>{title} - wmbus-stream</title><link rel="stylesheet" href="/static/app.css">{scripts}</head>'
        '<body>{nav}<main>{body}</main>'
        '<footer>wmbus-stream {version} &middot; <a href="/help">Help</a></footer></body></html>\n',
        title=title, scripts=script_tags, nav=nav, body=body, version=__version__,
    )
    return Response(status, document.encode("utf-8"), headers=headers or [])


def csrf_input(req: Request) -> Markup:
    token = req.session.csrf if req.session else ""
    return html('<input type="hidden" name="csrf" value="{0}">', token)


def layout(app: Site, req: Request, title: str, body: Markup, *, active: str, status: int = 200,
           scripts: Iterable[str] = ()) -> Response:
    links = join(
        html('<a href="{href}"{cls}>{label}</a>', href=href, label=label,
             cls=raw(' class="active" aria-current="page"') if href == active else raw(""))
        for href, label in NAV
    )
    cfg = app.gateway.config
    logout = (html('<form method="post" action="/logout" class="inline">{csrf}<button class="link">Log out</button>'
                   '</form>', csrf=csrf_input(req)) if req.via == "session" else Markup(""))
    nav = html(
        '<header><div class="brand"><span class="logo">wmbus-stream</span> <span class="serial">gateway {serial}</span>'
        '</div><nav>{links}</nav><div class="user">{user} {logout}</div></header>',
        serial=cfg.gateway_serial, links=links, user=req.user or "", logout=logout,
    )
    flashes = Markup("")
    if req.session is not None and req.session.flash:
        flashes = join(html('<p class="flash {kind}" role="status">{text}</p>', kind=kind, text=text)
                       for kind, text in req.session.flash)
        req.session.flash.clear()
    return page(title, html("{0}{1}", flashes, body), nav=nav, status=status, scripts=scripts)


def flash(req: Request, text: str, kind: str = "ok") -> None:
    if req.session is not None:
        req.session.flash.append((kind, text))
        del req.session.flash[:-5]


def simple_page(title: str, text: str, status: int) -> Response:
    return page(title, html('<section class="narrow"><h1>{0}</h1><p>{1}</p></section>', title, text), status=status)


def error_page(app: Site, req: Request, status: int, reason: str) -> Response:
    titles = {400: "Bad request", 403: "Refused", 404: "Not found", 405: "Not allowed", 411: "Length required",
              413: "Too large", 429: "Too many attempts"}
    title = titles.get(status, "Error")
    body = html('<section class="narrow"><h1>{0}</h1><p class="error">{1}</p><p><a href="/">Back to the overview'
                '</a></p></section>', title, reason)
    if req.user:
        return layout(app, req, title, body, active="", status=status)
    return page(title, body, status=status)


def upload(req: Request, limit: int) -> bytes | str:
    part = req.parts().get("file")
    if part is None or part.filename is None:
        return "Choose a file to upload."
    if len(part.data) > limit:
        return f"The file is larger than {limit} bytes; nothing was changed."
    if not part.data:
        return "The file is empty; nothing was changed."
    return part.data


def when(value: Any) -> str:
    if isinstance(value, (int, float)):
        return fmt_time(value)
    return str(value)
