"""Settings: every configuration key in one form, saved all-or-nothing, with problems shown per key."""

from __future__ import annotations

import re
from collections.abc import Iterable

from ...config.keys import (
    BAUD_RATES,
    KEYS,
    LOG_LEVELS,
    MASK,
    RADIO_MODES,
    RECEIVER_PROTOCOLS,
    Key,
    boolean,
)
from ...errors import ConfigError, Problem
from ..operations import IMPORT_LIMIT, RESTORE_LIMIT
from ..request import Request, Response, redirect
from ..routing import Site
from ..templates import Markup, html, join, raw
from .history import history_table
from .layout import NOTHING, csrf_input, error_page, flash, layout

__all__ = ["changes_from_form", "problems_banner", "problems_by_key", "save_settings", "settings_form", "settings_page", "show_settings", "shown_values"]


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


def settings_form(app: Site, req: Request, values: dict[str, str], errors: dict[str, list[str]],
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
        csrf=csrf_input(req), sections=join(sections), note=note,
    )


def shown_values(app: Site) -> dict[str, str]:
    manager = app.manager()
    config = manager.current() if manager is not None else app.gateway.config
    return config.masked()


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
        csrf=csrf_input(req), ilimit=IMPORT_LIMIT // 1024, rlimit=RESTORE_LIMIT // (1024 * 1024),
    )


def settings_page(app: Site, req: Request, values: dict[str, str], errors: dict[str, list[str]],
                  *, status: int = 200, note: str = "", banner: Markup = NOTHING) -> Response:
    manager = app.manager()
    missing = Markup("") if manager is not None else raw(
        '<p class="flash warn">Configuration management is not available here (no configuration file); '
        'the values below are read-only.</p>')
    body = html('<div class="title"><h1>Settings</h1></div>{banner}{missing}{form}{maint}{history}',
                banner=banner, missing=missing, form=settings_form(app, req, values, errors, note),
                maint=_maintenance(req) if manager is not None else Markup(""),
                history=history_table(app, req))
    return layout(app, req, "Settings", body, active="/settings", status=status)


def show_settings(app: Site, req: Request, match: re.Match[str]) -> Response:
    return settings_page(app, req, shown_values(app), {})


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


def save_settings(app: Site, req: Request, match: re.Match[str]) -> Response:
    manager = app.manager()
    form = req.form()
    current = shown_values(app)
    if manager is None:
        return error_page(app, req, 409, "Configuration management is not available on this gateway.")
    unknown = [name for name in form if name not in ("csrf", "note") and name not in current]
    changes = changes_from_form(current, form)
    note = form.get("note", "")[:200]
    if unknown:
        errors = {name: ["Unknown key; allowed: the keys listed on this page"] for name in unknown}
        banner = problems_banner(f"{len(unknown)} unknown key(s); nothing was changed.", errors)
        return settings_page(app, req, current, errors, status=422, note=note, banner=banner)
    if not changes:
        flash(req, "Nothing changed: every value is as it was.", "warn")
        return redirect("/settings")
    try:
        entry = manager.set(changes, origin="web", note=note)
    except ConfigError as exc:
        errors = problems_by_key(exc.problems)
        shown = {**current, **{k: ("" if v is None else v) for k, v in changes.items()}}
        for name in _SECRETS & changes.keys():  # never echo a secret back into the page
            shown[name] = current.get(name, "")
        banner = problems_banner(f"{len(exc.problems)} invalid value(s); nothing was changed.", errors)
        return settings_page(app, req, shown, errors, status=422, note=note, banner=banner)
    restart = [name for name in changes if any(k.name == name and k.restart for k in KEYS)]
    text = f"Saved as configuration #{entry.number}: {', '.join(sorted(changes))} changed."
    if restart:
        text += f" {', '.join(sorted(restart))} take(s) effect after a restart."
    flash(req, text)
    return redirect("/settings")
