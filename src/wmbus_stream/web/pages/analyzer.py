"""The Analyzer: every meter heard this period, its verdict and signal, with an inline SVG chart."""

from __future__ import annotations

import re
import time
from urllib.parse import urlencode

from ...core.analyzer import MeterRow
from .. import views
from ..operations import analyzer_csv, analyzer_rows
from ..request import Request, Response, redirect
from ..routing import Site
from ..templates import Markup, attr_checked, html, join, raw
from ..views import BAND_WIDTH, BANDS, AnalyzerQuery, fmt_dbm, fmt_time, quality
from .layout import csrf_input, flash, layout

__all__ = ["download_csv", "histogram_svg", "reset_analyzer", "show_analyzer", "signal_bar"]


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
    for i, (low, n) in enumerate(zip(BANDS, counts, strict=True)):
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


def show_analyzer(app: Site, req: Request, match: re.Match[str]) -> Response:
    cfg = app.gateway.config
    q = AnalyzerQuery.from_query(req.query, default_only=cfg.show_only_filtered, per_page=100)
    all_rows = analyzer_rows(app, q)
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
        csv=csv_href, csrf=csrf_input(req), totals=totals_html, chart=histogram_svg(all_rows, q), switch=switch,
        label=switch_label, total=total, band=band_note, head=join(head),
        rows=body_rows or raw('<tr><td colspan="13" class="muted">No meters heard yet.</td></tr>'), pager=pager,
    )
    return layout(app, req, "Analyzer", body, active="/analyzer")


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


def download_csv(app: Site, req: Request, match: re.Match[str]) -> Response:
    return analyzer_csv(app, req)


def reset_analyzer(app: Site, req: Request, match: re.Match[str]) -> Response:
    app.gateway.reset_analyzer(time.time())
    flash(req, "Analyzer reset: a new period starts now. Pending reports were not touched.")
    return redirect("/analyzer")
