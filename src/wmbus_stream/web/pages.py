"""The server-rendered pages: Overview, Settings, Analyzer, Help, login and the small ones.

Every value reaches HTML through ``templates.html``/``escape``: meter IDs, manufacturers,
verdicts, configuration values, history notes and error texts are escaped, control
characters shown as ``\\xNN``. Forms post back to the same origin with the session's CSRF
token; after a successful change the browser is redirected (POST/redirect/GET) and the
outcome is shown once as a message. Signal charts are inline SVG drawn here, so the only
JavaScript is the Overview's live refresh.
"""

from __future__ import annotations

import io
import re
import time
from collections.abc import Iterable
from datetime import datetime
from typing import TYPE_CHECKING, Any
from urllib.parse import urlencode

from .. import __version__
from ..config.keys import BAUD_RATES, KEYS, LOG_LEVELS, MASK, RADIO_MODES, RECEIVER_PROTOCOLS, Key, boolean
from ..core.analyzer import Analyzer, MeterRow
from ..core.pipeline import tally
from ..errors import ConfigError, Problem, WmbusStreamError
from . import views
from .request import Request, Response, redirect
from .templates import Markup, attr_checked, html, join, raw
from .views import BAND_WIDTH, BANDS, AnalyzerQuery, fmt_dbm, fmt_duration, fmt_time, quality

if TYPE_CHECKING:
    from ..config.manage import ConfigManager
    from .server import WebServer

__all__ = ["register", "login_page", "no_password", "error_page", "simple_page"]

IMPORT_LIMIT = 64 * 1024
RESTORE_LIMIT = 64 * 1024 * 1024
NAV = (("/", "Overview"), ("/settings", "Settings"), ("/analyzer", "Analyzer"), ("/help", "Help"))

SETTINGS_GROUPS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("Service and reports", ("service.enabled", "receiving.server.url", "receiving.server.push.cron",
                             "receiving.server.username", "receiving.server.password", "receiving.server.ca.file",
                             "receiving.server.connect.timeout", "receiving.server.read.timeout",
                             "receiving.server.retries", "push.jitter.seconds")),
    ("Filters and analyzer", ("filter.manufacturer", "filter.device.type", "filter.device.id", "radio.mode",
                              "show.only.filtered", "analyzer.reset.hours")),
    ("Receiver", ("receiver.protocol", "receiver.port", "usb.baud.rate", "receiver.address",
                  "receiver.reconnect.seconds", "simulator.meters")),
    ("Gateway", ("gateway.serial", "gateway.wired.address", "report.timezone", "state.directory",
                 "store.flush.seconds", "log.level")),
    ("Configuration server", ("sync.enabled", "configuration.server.url", "configuration.server.cron",
                              "configuration.server.ca.file", "configuration.server.allow.keys",
                              "configuration.server.allow.origins", "configuration.server.allow.http")),
    ("Web UI", ("web.enabled", "web.listen", "web.tls.cert", "web.tls.key", "web.metrics.public")),
)
CHOICES: dict[str, tuple[str, ...]] = {
    "radio.mode": RADIO_MODES,
    "receiver.protocol": RECEIVER_PROTOCOLS,
    "usb.baud.rate": tuple(map(str, BAUD_RATES)),
    "log.level": LOG_LEVELS,
}


# -- layout ---------------------------------------------------------------------------------


def _page(title: str, body: Markup, *, nav: Markup = Markup(""), status: int = 200,
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


def _csrf(req: Request) -> Markup:
    token = req.session.csrf if req.session else ""
    return html('<input type="hidden" name="csrf" value="{0}">', token)


def _layout(app: WebServer, req: Request, title: str, body: Markup, *, active: str, status: int = 200,
            scripts: Iterable[str] = ()) -> Response:
    links = join(
        html('<a href="{href}"{cls}>{label}</a>', href=href, label=label,
             cls=raw(' class="active" aria-current="page"') if href == active else raw(""))
        for href, label in NAV
    )
    cfg = app.gateway.config
    logout = (html('<form method="post" action="/logout" class="inline">{csrf}<button class="link">Log out</button>'
                   '</form>', csrf=_csrf(req)) if req.via == "session" else Markup(""))
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
    return _page(title, html("{0}{1}", flashes, body), nav=nav, status=status, scripts=scripts)


def _flash(req: Request, text: str, kind: str = "ok") -> None:
    if req.session is not None:
        req.session.flash.append((kind, text))
        del req.session.flash[:-5]


def simple_page(title: str, text: str, status: int) -> Response:
    return _page(title, html('<section class="narrow"><h1>{0}</h1><p>{1}</p></section>', title, text), status=status)


def error_page(app: WebServer, req: Request, status: int, reason: str) -> Response:
    titles = {400: "Bad request", 403: "Refused", 404: "Not found", 405: "Not allowed", 411: "Length required",
              413: "Too large", 429: "Too many attempts"}
    title = titles.get(status, "Error")
    body = html('<section class="narrow"><h1>{0}</h1><p class="error">{1}</p><p><a href="/">Back to the overview'
                '</a></p></section>', title, reason)
    if req.user:
        return _layout(app, req, title, body, active="", status=status)
    return _page(title, body, status=status)


def no_password(app: WebServer, req: Request) -> Response:
    """The only page shown before an administrator password exists (status 401)."""
    problem = app.passwords.problem
    extra = (html('<p class="error">The password file cannot be used: {0}</p>', problem) if problem else Markup(""))
    body = html(
        '<section class="narrow"><h1>Set a password on the device</h1>'
        '<p>This gateway has no administrator password yet, so its web UI and API are locked. '
        'There are no default credentials.</p>'
        '<p>On the gateway, run</p><pre>wmbus-stream passwd --config /etc/wmbus-stream/stream.cfg</pre>'
        '<p>(or add <code>--random</code> to have one generated and printed once), then reload this page.</p>{extra}'
        '</section>', extra=extra)
    return _page("Set a password", body, status=401)


def login_page(app: WebServer, req: Request, *, status: int = 200, error: str = "", user: str = "") -> Response:
    target = req.path if req.method == "GET" and req.path != "/login" else req.query.get("next", "/")
    if req.method == "GET" and req.query and req.path != "/login":
        target += "?" + urlencode(req.query)
    body = html(
        '<section class="narrow login"><h1>Log in</h1>{error}'
        '<form method="post" action="/login">'
        '<input type="hidden" name="next" value="{next}">'
        '<label>User name <input name="user" value="{user}" autocomplete="username" required autofocus></label>'
        '<label>Password <input name="password" type="password" autocomplete="current-password" required></label>'
        '<button type="submit">Log in</button></form></section>',
        error=html('<p class="error" role="alert">{0}</p>', error) if error else Markup(""),
        next=_local(target), user=user,
    )
    return _page("Log in", body, status=status)


def _local(target: str) -> str:
    """A redirect target on this server only (no scheme, no //host, no backslash tricks)."""
    if not target.startswith("/") or target.startswith("//") or "\\" in target or any(ord(c) < 0x20 for c in target):
        return "/"
    return target


# -- login / logout ---------------------------------------------------------------------------


def _login_get(app: WebServer, req: Request, match: re.Match[str]) -> Response:
    if app.passwords.credential() is None:
        return no_password(app, req)
    cred = app.passwords.credential()
    if cred and app.sessions.get(req.cookie("wmbus_session"), cred.digest[:8]) is not None:
        return redirect(_local(req.query.get("next", "/")))
    return login_page(app, req)


def _login_post(app: WebServer, req: Request, match: re.Match[str]) -> Response:
    form = req.form()
    user, password = form.get("user", ""), form.get("password", "")
    outcome = app.login(req, user, password)
    if isinstance(outcome, Response):
        if outcome.status == 401 and not outcome.body:
            req.query = {"next": form.get("next", "/")}
            return login_page(app, req, status=401, error="Wrong user name or password.", user=user[:64])
        return outcome
    response = redirect(_local(form.get("next", "/")))
    response.headers.append(app.session_cookie(outcome))
    return response


def _logout(app: WebServer, req: Request, match: re.Match[str]) -> Response:
    if req.session is not None:
        app.sessions.drop(req.session.token)
    response = redirect("/login")
    response.headers.append(app.session_cookie(None))
    return response


# -- overview ---------------------------------------------------------------------------------


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


def overview_fragment(app: WebServer, req: Request) -> Markup:
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


def _overview(app: WebServer, req: Request, match: re.Match[str]) -> Response:
    fragment = overview_fragment(app, req)
    if req.query.get("fragment"):
        return Response(200, fragment.encode("utf-8"))
    sync_button = (html('<form method="post" action="/sync" class="inline">{0}<button>Sync now</button></form>',
                        _csrf(req)) if hasattr(app.gateway, "sync_now") else Markup(""))
    body = html(
        '<div class="title"><h1>Overview</h1><div class="actions">'
        '<form method="post" action="/push" class="inline">{csrf}<button>Push now</button></form>{sync}</div></div>'
        '<div id="live" data-refresh="/?fragment=1">{fragment}</div>',
        csrf=_csrf(req), sync=sync_button, fragment=fragment,
    )
    return _layout(app, req, "Overview", body, active="/", scripts=("live.js",))


def _push(app: WebServer, req: Request, match: re.Match[str]) -> Response:
    from .api import push_outcome

    outcome = push_outcome(app)
    if outcome is None:
        _flash(req, "A push is already in flight; try again in a moment.", "warn")
    else:
        _flash(req, "Push " + outcome.summary(), "ok" if outcome.ok else "error")
    return redirect("/")


def _sync(app: WebServer, req: Request, match: re.Match[str]) -> Response:
    sync_now = getattr(app.gateway, "sync_now", None)
    if sync_now is None:
        _flash(req, "Configuration sync is not available in this version.", "warn")
        return redirect("/")
    try:
        result = sync_now()
    except WmbusStreamError as exc:
        _flash(req, f"Sync failed: {exc}", "error")
        return redirect("/")
    text = getattr(result, "summary", None)
    _flash(req, "Sync: " + (text() if callable(text) else str(result)))
    return redirect("/")


# -- analyzer ---------------------------------------------------------------------------------

_COLUMNS = (("id", "ID"), ("manufacturer", "Man."), ("type", "Type"), ("verdict", "Verdict"), ("count", "Count"),
            ("rssi_last", "RSSI"), ("rssi_min", "Min"), ("rssi_avg", "Avg"), ("rssi_max", "Max"),
            ("mode", "Mode"), ("first_seen", "First seen"), ("last_seen", "Last seen"))
_SCALE_LOW, _SCALE_HIGH = -120.0, -40.0


def _x(rssi: float, width: float) -> float:
    clamped = max(_SCALE_LOW, min(_SCALE_HIGH, rssi))
    return round((clamped - _SCALE_LOW) / (_SCALE_HIGH - _SCALE_LOW) * width, 1)


def signal_bar(r: MeterRow, width: int = 120) -> Markup:
    """An inline SVG: a bar as long as the meter's average RSSI, coloured by quality, with min..max drawn over it."""
    if r.rssi_avg is None or r.rssi_min is None or r.rssi_max is None:
        return raw('<span class="muted">no RSSI</span>')
    x0, x1, xa = _x(r.rssi_min, width), _x(r.rssi_max, width), _x(r.rssi_avg, width)
    return html(
        '<svg class="bar" width="{w}" height="12" viewBox="0 0 {w} 12" role="img" aria-label="{label}">'
        '<rect class="track" x="0" y="2" width="{w}" height="8"/>'
        '<rect class="range {q}" x="0" y="2" width="{xa}" height="8"/>'
        '<rect class="whisker" x="{x0}" y="5" width="{rw}" height="2"/></svg>',
        w=width, label=f"average {r.rssi_avg} dBm, {r.rssi_min} to {r.rssi_max}", q=quality(r.rssi_avg),
        xa=max(1.0, xa), x0=x0, rw=max(1.0, round(x1 - x0, 1)),
    )


def histogram_svg(rows: list[MeterRow], q: AnalyzerQuery) -> Markup:
    """Meters per 5 dB band of average RSSI, coloured weak/fair/good; each bar links to its meters."""
    counts, unknown = views.histogram(rows)
    width, height, pad, gap = 640, 170, 28, 4
    bar_w = (width - 2 * pad) / len(BANDS)
    top = max(counts) if any(counts) else 1
    bars = []
    for i, (low, n) in enumerate(zip(BANDS, counts)):
        h = 0 if n == 0 else max(2.0, round(n / top * (height - 2 * pad), 1))
        x = round(pad + i * bar_w + gap / 2, 1)
        y = round(height - pad - h, 1)
        params = q.params(band=low, page=1)
        bars.append(html(
            '<a href="/analyzer?{href}"><title>{low} to {high} dBm: {n} meters</title>'
            '<rect class="hist {q}{sel}" x="{x}" y="{y}" width="{bw}" height="{h}"/>'
            '<text class="count" x="{cx}" y="{ty}">{label}</text></a>',
            href=urlencode(params), low=low, high=low + BAND_WIDTH, n=n, q=quality(low + BAND_WIDTH / 2),
            sel=" selected" if q.band == low else "", x=x, y=y, bw=round(bar_w - gap, 1), h=h,
            cx=round(x + (bar_w - gap) / 2, 1), ty=y - 3, label=n if n else "",
        ))
    ticks = join(
        html('<text class="tick" x="{x}" y="{y}">{label}</text>', x=round(pad + i * bar_w, 1), y=height - 10, label=low)
        for i, low in enumerate(BANDS) if low % 10 == 0
    )
    caption = f"Meters by average signal strength (dBm); {unknown} without RSSI" if unknown else \
        "Meters by average signal strength (dBm)"
    return html(
        '<figure class="chart"><svg viewBox="0 0 {w} {h}" width="100%" role="img" aria-label="{caption}">'
        '<line class="axis" x1="{pad}" y1="{base}" x2="{end}" y2="{base}"/>{bars}{ticks}</svg>'
        '<figcaption>{caption}. Weak below {weak} dBm, good from {good} dBm; click a bar to list its meters.'
        '</figcaption></figure>',
        w=width, h=height, pad=pad, base=height - pad, end=width - pad, bars=join(bars), ticks=ticks,
        caption=caption, weak=views.WEAK_BELOW, good=views.GOOD_FROM,
    )


def _analyzer_rows(app: WebServer, q: AnalyzerQuery) -> list[MeterRow]:
    analyzer = app.gateway.analyzer
    if analyzer is None:
        return []
    return analyzer.rows(only_allowed=q.only_allowed, allow_ids=app.gateway.config.filter_device_id)


def _analyzer(app: WebServer, req: Request, match: re.Match[str]) -> Response:
    cfg = app.gateway.config
    q = AnalyzerQuery.from_query(req.query, default_only=cfg.show_only_filtered, per_page=100)
    all_rows = _analyzer_rows(app, q)
    shown, total = views.query_rows(all_rows, q)
    analyzer = app.gateway.analyzer
    totals = analyzer.totals() if analyzer else None

    head = []
    for key, label in _COLUMNS:
        desc = q.sort == key and not q.descending
        arrow = (" \u25b2" if not q.descending else " \u25bc") if q.sort == key else ""
        head.append(html('<th><a href="/analyzer?{href}">{label}{arrow}</a></th>',
                         href=urlencode(q.params(sort=key, dir="desc" if desc else "asc", page=1)),
                         label=label, arrow=arrow))
    head.append(raw("<th>Signal (-120 .. -40 dBm)</th>"))
    body_rows = join(
        html('<tr class="{cls}"><td class="mono">{id}</td><td class="mono">{man}</td><td>{type} <span class="muted">'
             '{code}</span></td><td>{verdict}</td><td class="num">{count}</td><td class="num">{last}</td>'
             '<td class="num">{min}</td><td class="num">{avg}</td><td class="num">{max}</td><td>{bar}</td>'
             '<td>{mode}</td><td class="time" title="{first_full}">{first}</td>'
             '<td class="time" title="{seen_full}">{seen}</td></tr>',
             cls="rejected" if r.verdict != "Accepted" else "", id=r.id, man=r.manufacturer,
             type=r.device_type_name, code=f"{r.device_type:02X}", verdict=r.verdict, count=r.count,
             last=fmt_dbm(r.rssi_last), min=fmt_dbm(r.rssi_min), avg=fmt_dbm(r.rssi_avg, 1),
             max=fmt_dbm(r.rssi_max), bar=signal_bar(r), mode=r.mode or "-",
             first=fmt_time(r.first_seen)[5:-4], seen=fmt_time(r.last_seen)[5:-4],
             first_full=fmt_time(r.first_seen), seen_full=fmt_time(r.last_seen))
        for r in shown
    )
    # columns: the bar sits after Max so weak meters stand out next to their numbers
    head = head[:9] + [head[-1]] + head[9:-1]
    pages = max(1, -(-total // q.per_page))
    pager = _pager(q, pages)
    broken = ", ".join(f"{k} {v}" for k, v in totals.broken_by_kind) if totals and totals.broken_by_kind else "none"
    totals_html = html(
        '<dl class="totals"><div><dt>Running since</dt><dd>{since}</dd></div><div><dt>Meters found</dt><dd>{found}</dd>'
        '</div><div><dt>Telegrams OK</dt><dd>{ok}</dd></div><div><dt>Telegrams broken</dt><dd>{broken} ({kinds})</dd>'
        '</div><div><dt>Long telegrams (0F long form)</dt><dd>{long}</dd></div></dl>',
        since=fmt_time(totals.running_since) if totals else "-", found=totals.meters_found if totals else 0,
        ok=totals.telegrams_ok if totals else 0, broken=totals.telegrams_broken if totals else 0, kinds=broken,
        long=totals.long_form if totals else 0,
    )
    switch_label = ("Showing allow-listed meters only" if q.only_allowed and cfg.filter_device_id
                    else "Showing all meters")
    switch = html(
        '<form method="get" action="/analyzer" class="inline switch">'
        '<input type="hidden" name="only" value="0"><label><input type="checkbox" name="only" value="1"{checked} '
        'id="only-switch"> show only allow-listed meters</label>'
        '<input name="q" value="{search}" placeholder="ID, manufacturer, type" aria-label="search">'
        '<input type="hidden" name="sort" value="{sort}"><input type="hidden" name="dir" value="{dir}">'
        '<select name="per" aria-label="rows per page">{per}</select>'
        '<button>Show</button></form>',
        checked=attr_checked(q.only_allowed), search=q.search, sort=q.sort, dir="desc" if q.descending else "asc",
        per=join(html('<option value="{0}"{1}>{0} per page</option>', n, raw(" selected") if n == q.per_page else raw(""))
                 for n in views.PER_PAGE_CHOICES),
    )
    band_note = (html(' &middot; average {0} to {1} dBm <a href="/analyzer?{2}">show every band</a>', q.band,
                      q.band + BAND_WIDTH, urlencode(q.params(band="", page=1)))
                 if q.band is not None else Markup(""))
    csv_href = urlencode({"only": "1" if q.only_allowed else "0"})
    body = html(
        '<div class="title"><h1>Analyzer</h1><div class="actions">'
        '<a class="button" href="/analyzer.csv?{csv}" download>Export CSV</a>'
        '<form method="post" action="/analyzer/reset" class="inline">{csrf}'
        '<button class="danger" id="reset">Reset analyzer</button></form></div></div>'
        '{totals}{chart}<div class="toolbar">{switch}<span class="muted">{label}; {total} meters match{band}</span>'
        '</div><div class="tablewrap"><table class="analyzer"><thead><tr>{head}</tr></thead><tbody>{rows}</tbody>'
        '</table></div>{pager}',
        csv=csv_href, csrf=_csrf(req), totals=totals_html, chart=histogram_svg(all_rows, q), switch=switch,
        label=switch_label, total=total, band=band_note, head=join(head),
        rows=body_rows or raw('<tr><td colspan="13" class="muted">No meters heard yet.</td></tr>'), pager=pager,
    )
    return _layout(app, req, "Analyzer", body, active="/analyzer")


def _pager(q: AnalyzerQuery, pages: int) -> Markup:
    if pages <= 1:
        return Markup("")
    numbers = sorted({1, pages, *range(max(1, q.page - 3), min(pages, q.page + 3) + 1)})
    links, previous = [], 0
    for n in numbers:
        if n - previous > 1:
            links.append(raw('<span class="gap">&hellip;</span>'))
        if n == q.page:
            links.append(html('<span class="current">{0}</span>', n))
        else:
            links.append(html('<a href="/analyzer?{0}">{1}</a>', urlencode(q.params(page=n)), n))
        previous = n
    return html('<nav class="pager" aria-label="pages">Page {0}</nav>', join(links, " "))


def analyzer_csv(app: WebServer, req: Request) -> Response:
    """The CSV of ``wmbus-stream analyzer --csv`` (``only=0`` is ``--all``)."""
    cfg = app.gateway.config
    q = AnalyzerQuery.from_query({"only": req.query.get("only", "")}, default_only=cfg.show_only_filtered)
    text = Analyzer.to_csv(_analyzer_rows(app, q))
    name = f"analyzer-{cfg.gateway_serial}-{time.strftime('%Y%m%d-%H%M%S', time.gmtime())}.csv"
    return Response(200, text.encode("utf-8"), "text/csv; charset=utf-8",
                    [("Content-Disposition", f'attachment; filename="{name}"')])


def _analyzer_csv(app: WebServer, req: Request, match: re.Match[str]) -> Response:
    return analyzer_csv(app, req)


def _analyzer_reset(app: WebServer, req: Request, match: re.Match[str]) -> Response:
    if app.gateway.analyzer is not None:
        app.gateway.analyzer.reset(time.time())
    _flash(req, "Analyzer reset: a new period starts now. Pending reports were not touched.")
    return redirect("/analyzer")


# -- settings ---------------------------------------------------------------------------------


def _groups() -> list[tuple[str, list[Key]]]:
    by_name = {key.name: key for key in KEYS}
    placed: set[str] = set()
    groups = []
    for title, names in SETTINGS_GROUPS:
        keys = [by_name[n] for n in names if n in by_name]
        placed.update(k.name for k in keys)
        groups.append((title, keys))
    rest = [key for key in KEYS if key.name not in placed]
    if rest:
        groups.append(("Other", rest))
    return groups


def _field(key: Key, value: str) -> Markup:
    name = key.name
    if key.parse is boolean or name in CHOICES:
        options = ("true", "false") if key.parse is boolean else CHOICES[name]
        current = value.lower() if key.parse is boolean else value
        if current not in options:
            options = (current, *options)
        return html('<select name="{name}" id="k-{name}">{opts}</select>', name=name,
                    opts=join(html('<option{sel}>{v}</option>', v=v, sel=raw(" selected") if v == current else raw(""))
                              for v in options))
    if key.secret:
        return html('<input type="password" name="{name}" id="k-{name}" value="{value}" autocomplete="new-password">',
                    name=name, value=value)
    return html('<input name="{name}" id="k-{name}" value="{value}" spellcheck="false">', name=name, value=value)


def settings_form(app: WebServer, req: Request, values: dict[str, str], errors: dict[str, list[str]],
                  note: str = "") -> Markup:
    sections = []
    for title, keys in _groups():
        rows = []
        for key in keys:
            flags = [word for word, on in (("secret", key.secret), ("device-specific", key.device_specific),
                                           ("restart", key.restart)) if on]
            errs = errors.get(key.name, [])
            rows.append(html(
                '<tr class="{cls}" id="row-{name}"><th><label for="k-{name}">{name}</label>{flags}</th>'
                '<td>{field}{errs}<div class="help">{desc} <span class="muted">Allowed: {allowed}. Default: '
                '{default}.</span></div></td></tr>',
                cls="invalid" if errs else "", name=key.name, field=_field(key, values.get(key.name, "")),
                flags=join(html(' <span class="flag">{0}</span>', f) for f in flags),
                errs=join(html('<p class="error field-error" data-key="{k}">{e}</p>', k=key.name, e=e) for e in errs),
                desc=key.description, allowed=key.allowed, default=key.default or "(empty)",
            ))
        sections.append(html('<fieldset><legend>{0}</legend><table class="settings">{1}</table></fieldset>',
                             title, join(rows)))
    return html(
        '<form method="post" action="/settings" id="settings-form">{csrf}{sections}'
        '<div class="savebar"><label>Note for the history <input name="note" value="{note}" maxlength="200"></label>'
        '<button type="submit" id="save">Save</button></div></form>',
        csrf=_csrf(req), sections=join(sections), note=note,
    )


def _shown_values(app: WebServer) -> dict[str, str]:
    manager = app.manager()
    config = manager.current() if manager is not None else app.gateway.config
    return config.masked()


def _history_table(app: WebServer, req: Request, limit: int = 20) -> Markup:
    manager = app.manager()
    if manager is None:
        return Markup("")
    entries = list(manager.history())
    entries.sort(key=lambda e: e.number, reverse=True)
    rows = join(
        html('<tr><td class="num">{n}</td><td class="time">{when}</td><td>{origin}</td><td>{note}</td>'
             '<td><a href="/settings/history/{n}">view</a></td><td>{revert}</td></tr>',
             n=e.number, when=_when(e.time), origin=e.origin, note=e.note or "",
             revert=(html('<form method="post" action="/settings/history/{n}/revert" class="inline">{csrf}'
                          '<button class="small" id="revert-{n}">Revert to this</button></form>', n=e.number,
                          csrf=_csrf(req)) if i else raw('<span class="muted">current</span>')))
        for i, e in enumerate(entries[:limit])
    )
    more = html('<p class="muted">{0} older entries are kept; see the API for all.</p>', len(entries) - limit) \
        if len(entries) > limit else Markup("")
    return html(
        '<section class="card wide"><h2>History</h2><table class="history"><thead><tr><th>#</th><th>When</th>'
        '<th>Origin</th><th>Note</th><th></th><th></th></tr></thead><tbody>{0}</tbody></table>{1}</section>',
        rows or raw('<tr><td colspan="6" class="muted">No history yet.</td></tr>'), more)


def _when(value: Any) -> str:
    if isinstance(value, (int, float)):
        return fmt_time(value)
    return str(value)


def _maintenance(req: Request) -> Markup:
    return html(
        '<section class="card wide"><h2>Export, import, backup</h2><div class="maint">'
        '<div><h3>Export</h3><p>The configuration without device-specific keys and secrets, for other gateways.</p>'
        '<a class="button" href="/settings/export" download id="export">Download export</a></div>'
        '<div><h3>Import</h3><form method="post" action="/settings/import" enctype="multipart/form-data">{csrf}'
        '<input type="file" name="file" accept=".cfg,.txt,text/plain" required id="import-file">'
        '<button id="import">Import and apply</button></form><p class="muted">At most {ilimit} KiB; validated '
        'completely, applied all-or-nothing.</p></div>'
        '<div><h3>Backup</h3><p>Configuration and state (pending reports, analyzer) for a replacement device.</p>'
        '<a class="button" href="/settings/backup" download id="backup">Download backup</a></div>'
        '<div><h3>Restore</h3><form method="post" action="/settings/restore" enctype="multipart/form-data">{csrf}'
        '<input type="file" name="file" required id="restore-file"><label><input type="checkbox" name="keep_serial" '
        'value="1" checked> keep this gateway\'s serial number</label><button class="danger" id="restore">Restore'
        '</button></form><p class="muted">At most {rlimit} MiB; checked completely before anything is written.</p>'
        '</div></div></section>',
        csrf=_csrf(req), ilimit=IMPORT_LIMIT // 1024, rlimit=RESTORE_LIMIT // (1024 * 1024),
    )


def _settings_page(app: WebServer, req: Request, values: dict[str, str], errors: dict[str, list[str]],
                   *, status: int = 200, note: str = "", banner: Markup = Markup("")) -> Response:
    manager = app.manager()
    missing = Markup("") if manager is not None else raw(
        '<p class="flash warn">Configuration management is not available here (no configuration file); '
        'the values below are read-only.</p>')
    body = html('<div class="title"><h1>Settings</h1></div>{banner}{missing}{form}{maint}{history}',
                banner=banner, missing=missing, form=settings_form(app, req, values, errors, note),
                maint=_maintenance(req) if manager is not None else Markup(""),
                history=_history_table(app, req))
    return _layout(app, req, "Settings", body, active="/settings", status=status)


def _settings(app: WebServer, req: Request, match: re.Match[str]) -> Response:
    return _settings_page(app, req, _shown_values(app), {})


def changes_from_form(current: dict[str, str], form: dict[str, str]) -> dict[str, str | None]:
    """The keys whose submitted text differs from the current (masked) value."""
    changes: dict[str, str | None] = {}
    for key in KEYS:
        if key.name not in form:
            continue
        value = form[key.name]
        if key.secret and value == MASK:
            continue  # the masked value sent back unchanged keeps the secret
        if value.strip(" \t") != current.get(key.name, ""):
            changes[key.name] = value
    return changes


_SECRETS = frozenset(key.name for key in KEYS if key.secret)


def problems_by_key(problems: Iterable[Problem]) -> dict[str, list[str]]:
    """Each problem's reason under its key (a secret's value is never shown back)."""
    errors: dict[str, list[str]] = {}
    for p in problems:
        value = "(hidden)" if p.key in _SECRETS else repr(p.value)
        errors.setdefault(p.key, []).append(f"Invalid value {value}; allowed: {p.allowed}")
    return errors


def problems_banner(intro: str, errors: dict[str, list[str]]) -> Markup:
    """The alert above the form: what happened, then every wrong key with its reason, linked to its field."""
    items = join(html('<li><a href="#row-{key}"><code>{key}</code></a>: {reason}</li>', key=key, reason=reason)
                 for key, reasons in errors.items() for reason in reasons)
    return html('<div class="flash error" role="alert"><p>{0}</p><ul class="problems">{1}</ul></div>', intro, items)


def _settings_post(app: WebServer, req: Request, match: re.Match[str]) -> Response:
    manager = app.manager()
    form = req.form()
    current = _shown_values(app)
    if manager is None:
        return error_page(app, req, 409, "Configuration management is not available on this gateway.")
    unknown = [name for name in form if name not in ("csrf", "note") and name not in current]
    changes = changes_from_form(current, form)
    note = form.get("note", "")[:200]
    if unknown:
        errors = {name: ["Unknown key; allowed: the keys listed on this page"] for name in unknown}
        banner = problems_banner(f"{len(unknown)} unknown key(s); nothing was changed.", errors)
        return _settings_page(app, req, current, errors, status=422, note=note, banner=banner)
    if not changes:
        _flash(req, "Nothing changed: every value is as it was.", "warn")
        return redirect("/settings")
    try:
        entry = manager.set(changes, origin="web", note=note)
    except ConfigError as exc:
        errors = problems_by_key(exc.problems)
        shown = {**current, **{k: ("" if v is None else v) for k, v in changes.items()}}
        for name in _SECRETS & changes.keys():  # never echo a secret back into the page
            shown[name] = current.get(name, "")
        banner = problems_banner(f"{len(exc.problems)} invalid value(s); nothing was changed.", errors)
        return _settings_page(app, req, shown, errors, status=422, note=note, banner=banner)
    restart = [name for name in changes if any(k.name == name and k.restart for k in KEYS)]
    text = f"Saved as configuration #{getattr(entry, 'number', '?')}: {', '.join(sorted(changes))} changed."
    if restart:
        text += f" {', '.join(sorted(restart))} take(s) effect after a restart."
    _flash(req, text)
    return redirect("/settings")


def _history_entry(app: WebServer, req: Request, match: re.Match[str]) -> Response:
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
        n=number, csrf=_csrf(req), when=_when(entry.time), origin=entry.origin, note=entry.note or "",
        text=entry.masked_text,
    )
    return _layout(app, req, f"Configuration #{number}", body, active="/settings")


def _revert(app: WebServer, req: Request, match: re.Match[str], manager: ConfigManager) -> Response:
    try:
        entry = manager.revert(int(match["n"]), origin="revert")
    except ConfigError as exc:
        _flash(req, f"Revert refused, nothing was changed: {exc}", "error")
        return redirect("/settings")
    except (KeyError, LookupError, ValueError) as exc:
        _flash(req, f"Revert refused: {exc}", "error")
        return redirect("/settings")
    _flash(req, f"Reverted to configuration #{match['n']}; saved as #{getattr(entry, 'number', '?')}.")
    return redirect("/settings")


def _export(app: WebServer, req: Request, match: re.Match[str], manager: ConfigManager) -> Response:
    name = f"stream-{app.gateway.config.gateway_serial}.cfg"
    return Response(200, manager.export_text().encode("utf-8"), "text/plain; charset=utf-8",
                    [("Content-Disposition", f'attachment; filename="{name}"')])


def _upload(req: Request, limit: int) -> bytes | str:
    part = req.parts().get("file")
    if part is None or part.filename is None:
        return "Choose a file to upload."
    if len(part.data) > limit:
        return f"The file is larger than {limit} bytes; nothing was changed."
    if not part.data:
        return "The file is empty; nothing was changed."
    return part.data


def _import(app: WebServer, req: Request, match: re.Match[str], manager: ConfigManager) -> Response:
    data = _upload(req, IMPORT_LIMIT)
    if isinstance(data, str):
        _flash(req, data, "error")
        return redirect("/settings")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        _flash(req, "The file is not UTF-8 text; nothing was changed.", "error")
        return redirect("/settings")
    try:
        entry = manager.import_text(text, origin="import")
    except ConfigError as exc:
        errors = problems_by_key(exc.problems)
        banner = problems_banner(f"The imported file has {len(exc.problems)} problem(s); nothing was changed.", errors)
        return _settings_page(app, req, _shown_values(app), errors, status=422, banner=banner)
    _flash(req, f"Imported and applied as configuration #{getattr(entry, 'number', '?')}.")
    return redirect("/settings")


def _backup(app: WebServer, req: Request, match: re.Match[str], manager: ConfigManager) -> Response:
    from .api import backup_bytes

    data, name = backup_bytes(app, manager)
    return Response(200, data, "application/octet-stream", [("Content-Disposition", f'attachment; filename="{name}"')])


def _restore(app: WebServer, req: Request, match: re.Match[str], manager: ConfigManager) -> Response:
    data = _upload(req, RESTORE_LIMIT)
    if isinstance(data, str):
        _flash(req, data, "error")
        return redirect("/settings")
    keep = req.form().get("keep_serial", "") in ("1", "on", "true")
    try:
        result = manager.restore(io.BytesIO(data), keep_serial=keep)
    except ConfigError as exc:
        _flash(req, f"Restore refused, nothing was changed: {exc}", "error")
        return redirect("/settings")
    except (WmbusStreamError, ValueError, OSError) as exc:
        _flash(req, f"Restore refused, nothing was changed: {exc}", "error")
        return redirect("/settings")
    number = getattr(result, "number", None)
    _flash(req, "Backup restored" + (f" as configuration #{number}." if number is not None else "."))
    return redirect("/settings")


# -- help -------------------------------------------------------------------------------------


def _help(app: WebServer, req: Request, match: re.Match[str]) -> Response:
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
        tz=cfg.get("report.timezone"), version=__version__, impl=app.gateway.status().get("implementation", ""),
    )
    return _layout(app, req, "Help", body, active="/help")


# -- registration -----------------------------------------------------------------------------


def register(app: WebServer) -> None:
    def bind(handler: Any) -> Any:
        return lambda req, match: handler(app, req, match)

    def managed(handler: Any) -> Any:
        """Bind a handler that needs configuration management (409 when the gateway has no file)."""
        def route(req: Request, match: re.Match[str]) -> Response:
            manager = app.manager()
            if manager is None:
                return error_page(app, req, 409, "Configuration management is not available on this gateway.")
            return handler(app, req, match, manager)
        return route

    app.route("GET", r"/", bind(_overview))
    app.route("GET", r"/login", bind(_login_get), public=True)
    app.route("POST", r"/login", bind(_login_post), public=True, body_limit=8 * 1024)
    app.route("POST", r"/logout", bind(_logout))
    app.route("POST", r"/push", bind(_push))
    app.route("POST", r"/sync", bind(_sync))
    app.route("GET", r"/analyzer", bind(_analyzer))
    app.route("GET", r"/analyzer\.csv", bind(_analyzer_csv))
    app.route("POST", r"/analyzer/reset", bind(_analyzer_reset))
    app.route("GET", r"/settings", bind(_settings))
    app.route("POST", r"/settings", bind(_settings_post))
    app.route("GET", r"/settings/history/(?P<n>[0-9]{1,9})", bind(_history_entry))
    app.route("POST", r"/settings/history/(?P<n>[0-9]{1,9})/revert", managed(_revert))
    app.route("GET", r"/settings/export", managed(_export))
    app.route("POST", r"/settings/import", managed(_import), body_limit=IMPORT_LIMIT + 16 * 1024)
    app.route("GET", r"/settings/backup", managed(_backup))
    app.route("POST", r"/settings/restore", managed(_restore), body_limit=RESTORE_LIMIT + 16 * 1024)
    app.route("GET", r"/help", bind(_help))
