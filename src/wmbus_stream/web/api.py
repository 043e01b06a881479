"""The JSON API under ``/api/v1/``: everything the pages do, for scripts and integrations.

Documented in ``docs/api/openapi.json`` (also served at ``/api/v1/openapi.json``). Errors
are JSON: ``{"error": code, "reason": text, "key": key-or-null}``, and for an invalid
configuration also ``"problems": [{"key", "value", "allowed", "reason"}]``; nothing is
changed by a request that answers an error. Secrets are masked (``********``) in every
answer; a secret sent back as ``********`` keeps its value.
"""

from __future__ import annotations

import dataclasses
import io
import re
import time
from collections.abc import Callable
from importlib.resources import files
from typing import TYPE_CHECKING, Any

from ..config import model
from ..config.keys import BY_NAME, KEYS, MASK
from ..core.analyzer import Analyzer
from ..errors import ConfigError, WmbusStreamError
from ..host import as_json
from . import views
from .operations import (
    IMPORT_LIMIT,
    RESTORE_LIMIT,
    analyzer_csv,
    backup_bytes,
    push_outcome,
)
from .request import BadRequest, Request, Response, error_response, json_response
from .routing import Handler, Routes, Site

if TYPE_CHECKING:
    from ..config.history import HistoryEntry
    from ..config.manage import ConfigManager

__all__ = ["problems_json", "register"]

PREFIX = "/api/v1"


def problems_json(exc: ConfigError) -> list[dict[str, str]]:
    """One object per problem (the configuration model has already masked secret values)."""
    return [{"key": p.key, "value": p.value, "allowed": p.allowed, "reason": str(p)} for p in exc.problems]


def _invalid(exc: ConfigError) -> Response:
    return error_response(422, "invalid_configuration",
                          f"{len(exc.problems)} invalid value(s); nothing was changed", key=exc.key,
                          problems=problems_json(exc))


def _no_manager() -> Response:
    return error_response(409, "no_configuration_manager",
                          "configuration management is not available (the gateway runs without a configuration file)")


def _entry_json(entry: HistoryEntry, *, text: bool = False) -> dict[str, Any]:
    value: dict[str, Any] = {
        "number": entry.number,
        "time": views.iso(entry.time),
        "origin": entry.origin,
        "note": entry.note,
    }
    if text:
        value["text"] = entry.masked_text
    return value


def _config_json(app: Site) -> dict[str, Any]:
    manager = app.manager()
    config = manager.current() if manager is not None else app.gateway.config
    masked = config.masked()
    return {
        "values": masked,
        "keys": [
            {"name": k.name, "value": masked[k.name], "default": k.default, "allowed": k.allowed,
             "description": k.description, "secret": k.secret, "device_specific": k.device_specific,
             "restart": k.restart, "explicit": k.name in config.explicit}
            for k in KEYS
        ],
        "managed": manager is not None,
    }


def _string_map(value: Any, what: str) -> dict[str, str | None]:
    if not isinstance(value, dict):
        raise BadRequest(f"'{what}' must be an object of key: value")
    for name, item in value.items():
        if item is not None and not isinstance(item, str):
            raise BadRequest(f"the value of {name!r} must be a string or null")
    return value


# -- handlers ---------------------------------------------------------------------------------


def _status(app: Site, req: Request, match: re.Match[str]) -> Response:
    status = as_json(app.gateway.status())
    analyzer = app.gateway.analyzer
    if analyzer is not None:
        totals = analyzer.totals()
        status["analyzer"] = {"running_since": views.iso(totals.running_since), "meters_found": totals.meters_found,
                              "telegrams_ok": totals.telegrams_ok, "telegrams_broken": totals.telegrams_broken,
                              "telegrams_long_form": totals.long_form}
    return json_response(status)


def _config_get(app: Site, req: Request, match: re.Match[str]) -> Response:
    return json_response(_config_json(app))


def _applied(app: Site, entry: HistoryEntry | None) -> Response:
    value = _config_json(app)
    value["entry"] = _entry_json(entry) if entry is not None else None
    return json_response(value)


def _config_patch(app: Site, req: Request, match: re.Match[str], manager: ConfigManager) -> Response:
    body = req.json()
    if not isinstance(body, dict):
        raise BadRequest("send an object: {\"changes\": {key: value-or-null}, \"note\": text}")
    changes = _string_map(body.get("changes", {}), "changes")
    note = body.get("note", "")
    if not isinstance(note, str):
        raise BadRequest("'note' must be a string")
    unknown = [name for name in changes if name not in BY_NAME]
    if unknown:
        problems = [{"key": n, "value": "", "allowed": "a known key", "reason": f"{n}: unknown key"} for n in unknown]
        return error_response(422, "invalid_configuration", "unknown key(s); nothing was changed", key=unknown[0],
                              problems=problems)
    try:
        entry = manager.set(changes, origin="web", note=note[:200])
    except ConfigError as exc:
        return _invalid(exc)
    return _applied(app, entry)


def _config_put(app: Site, req: Request, match: re.Match[str], manager: ConfigManager) -> Response:
    body = req.json()
    if not isinstance(body, dict):
        raise BadRequest("send an object: {\"values\": {key: value}, \"note\": text}")
    values = _string_map(body.get("values"), "values")
    note = body.get("note", "")
    if not isinstance(note, str):
        raise BadRequest("'note' must be a string")
    current = manager.current()
    given: dict[str, str] = {}
    for name, value in values.items():
        if value is None:
            continue
        key = BY_NAME.get(name)
        given[name] = current.raw[name] if key is not None and key.secret and value == MASK else value
    try:
        new = model.parse(given)
        entry = manager.apply(new, "web", note[:200])
    except ConfigError as exc:
        return _invalid(exc)
    return _applied(app, entry)


def _config_check(app: Site, req: Request, match: re.Match[str]) -> Response:
    body = req.json()
    changes = _string_map(body.get("changes", {}) if isinstance(body, dict) else None, "changes")
    manager = app.manager()
    current = manager.current() if manager is not None else app.gateway.config
    try:
        current.with_changes(changes)
    except ConfigError as exc:
        return _invalid(exc)
    return json_response({"valid": True})


def _history(app: Site, req: Request, match: re.Match[str], manager: ConfigManager) -> Response:
    return json_response({"entries": [_entry_json(e) for e in manager.history()]})


def _history_entry(app: Site, req: Request, match: re.Match[str], manager: ConfigManager) -> Response:
    number = int(match["n"])
    for entry in manager.history():
        if entry.number == number:
            return json_response(_entry_json(entry, text=True))
    return error_response(404, "not_found", f"no configuration #{number} in the history")


def _revert(app: Site, req: Request, match: re.Match[str], manager: ConfigManager) -> Response:
    number = int(match["n"])
    if not any(e.number == number for e in manager.history()):
        return error_response(404, "not_found", f"no configuration #{number} in the history")
    try:
        entry = manager.revert(number, origin="revert")
    except ConfigError as exc:
        return _invalid(exc)
    return _applied(app, entry)


def _export(app: Site, req: Request, match: re.Match[str], manager: ConfigManager) -> Response:
    return Response(200, manager.export_text().encode("utf-8"), "text/plain; charset=utf-8")


def _import(app: Site, req: Request, match: re.Match[str], manager: ConfigManager) -> Response:
    if req.content_type not in ("text/plain", "application/octet-stream"):
        return error_response(415, "unsupported_media_type", "send the configuration file as text/plain")
    try:
        text = req.body.decode("utf-8")
    except UnicodeDecodeError:
        return error_response(400, "bad_request", "the file is not UTF-8 text; nothing was changed")
    try:
        entry = manager.import_text(text, origin="import")
    except ConfigError as exc:
        return _invalid(exc)
    return _applied(app, entry)


def _backup(app: Site, req: Request, match: re.Match[str], manager: ConfigManager) -> Response:
    data, name = backup_bytes(app)
    return Response(200, data, "application/octet-stream", [("Content-Disposition", f'attachment; filename="{name}"')])


def _restore(app: Site, req: Request, match: re.Match[str], manager: ConfigManager) -> Response:
    if req.content_type not in ("application/octet-stream", "application/gzip", "application/x-tar",
                                "application/x-gtar"):
        return error_response(415, "unsupported_media_type", "send the backup as application/octet-stream")
    if not req.body:
        return error_response(400, "bad_request", "the backup is empty; nothing was changed")
    keep = req.query.get("keep_serial", "true").lower() not in ("0", "false", "no")
    try:
        result = app.gateway.restore(io.BytesIO(req.body), len(req.body), keep_serial=keep)
    except ConfigError as exc:
        return _invalid(exc)
    except (WmbusStreamError, ValueError, OSError) as exc:
        return error_response(422, "invalid_backup", f"{exc}; nothing was changed")
    return _applied(app, result.entry)


def _analyzer(app: Site, req: Request, match: re.Match[str]) -> Response:
    cfg = app.gateway.config
    q = views.AnalyzerQuery.from_query(req.query, default_only=cfg.show_only_filtered, max_per_page=1_000_000,
                                       unlimited=True)
    analyzer: Analyzer | None = app.gateway.analyzer
    rows = analyzer.rows(only_allowed=q.only_allowed, allow_ids=cfg.filter_device_id) if analyzer else []
    shown, total = views.query_rows(rows, q)
    totals = analyzer.totals() if analyzer else None
    return json_response({
        "totals": None if totals is None else {
            "running_since": views.iso(totals.running_since), "meters_found": totals.meters_found,
            "telegrams_ok": totals.telegrams_ok, "telegrams_broken": totals.telegrams_broken,
            "broken_by_kind": dict(totals.broken_by_kind), "untracked": totals.untracked,
            "telegrams_long_form": totals.long_form,
        },
        "only_allowed": q.only_allowed,
        "total": total,
        "offset": (q.page - 1) * q.per_page if q.per_page else 0,
        "rows": [views.row_json(r) for r in shown],
    })


def _analyzer_csv(app: Site, req: Request, match: re.Match[str]) -> Response:
    return analyzer_csv(app, req)


def _analyzer_reset(app: Site, req: Request, match: re.Match[str]) -> Response:
    now = time.time()
    app.gateway.reset_analyzer(now)
    return json_response({"reset": True, "running_since": views.iso(now)})


def _push(app: Site, req: Request, match: re.Match[str]) -> Response:
    outcome = push_outcome(app)
    if outcome is None:
        return error_response(409, "push_in_flight", "a push is already in flight; try again in a moment")
    value = as_json(outcome)
    value["summary"] = outcome.summary()
    return json_response(value)


def _sync(app: Site, req: Request, match: re.Match[str]) -> Response:
    try:
        result = app.gateway.sync_now()
    except WmbusStreamError as exc:
        return error_response(502, "sync_failed", str(exc))
    return json_response(_jsonable(dataclasses.asdict(result)))


def _jsonable(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if value is None or isinstance(value, (str, int, float, bool)):
        return value
    return str(value)


def openapi_bytes() -> bytes:
    return files("wmbus_stream.web").joinpath("static/openapi.json").read_bytes()


def _openapi(app: Site, req: Request, match: re.Match[str]) -> Response:
    return Response(200, openapi_bytes(), "application/json")


def register(routes: Routes, app: Site) -> None:
    """Add the API's routes to ``routes``, each handler bound to ``app``."""
    def bind(handler: Callable[..., Response]) -> Handler:
        return lambda req, match: handler(app, req, match)

    def managed(handler: Callable[..., Response]) -> Handler:
        """Bind a handler that needs configuration management (409 when the gateway has no file)."""
        def route(req: Request, match: re.Match[str]) -> Response:
            manager = app.manager()
            return _no_manager() if manager is None else handler(app, req, match, manager)
        return route

    n = r"(?P<n>[0-9]{1,9})"
    routes.add("GET", PREFIX + r"/status", bind(_status))
    routes.add("GET", PREFIX + r"/config", bind(_config_get))
    routes.add("PUT", PREFIX + r"/config", managed(_config_put))
    routes.add("PATCH", PREFIX + r"/config", managed(_config_patch))
    routes.add("POST", PREFIX + r"/config/check", bind(_config_check))
    routes.add("GET", PREFIX + r"/config/history", managed(_history))
    routes.add("GET", PREFIX + r"/config/history/" + n, managed(_history_entry))
    routes.add("POST", PREFIX + r"/config/history/" + n + r"/revert", managed(_revert))
    routes.add("GET", PREFIX + r"/config/export", managed(_export))
    routes.add("POST", PREFIX + r"/config/import", managed(_import), body_limit=IMPORT_LIMIT)
    routes.add("GET", PREFIX + r"/backup", managed(_backup))
    routes.add("POST", PREFIX + r"/restore", managed(_restore), body_limit=RESTORE_LIMIT)
    routes.add("GET", PREFIX + r"/analyzer", bind(_analyzer))
    routes.add("GET", PREFIX + r"/analyzer\.csv", bind(_analyzer_csv))
    routes.add("POST", PREFIX + r"/analyzer/reset", bind(_analyzer_reset))
    routes.add("POST", PREFIX + r"/push", bind(_push))
    routes.add("POST", PREFIX + r"/sync", bind(_sync))
    routes.add("GET", PREFIX + r"/openapi\.json", bind(_openapi))

