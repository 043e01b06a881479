"""The server-rendered pages: Overview, Settings, Analyzer, Help, login and the small ones, one module each.

Every value reaches HTML through ``templates.html``/``escape``: meter IDs, manufacturers,
verdicts, configuration values, history notes and error texts are escaped, control
characters shown as ``\\xNN``. Forms post back to the same origin with the session's CSRF
token; after a successful change the browser is redirected (POST/redirect/GET) and the
outcome is shown once as a message. Signal charts are inline SVG drawn here, so the only
JavaScript is the Overview's live refresh. ``register`` adds every page's route.
"""

from __future__ import annotations

import re
from collections.abc import Callable

from ..operations import IMPORT_LIMIT, RESTORE_LIMIT
from ..request import Request, Response
from ..routing import Handler, Routes, Site
from .analyzer import download_csv, reset_analyzer, show_analyzer
from .backup import download_backup, restore
from .help import show_help
from .history import revert, show_entry
from .layout import error_page
from .login import log_in, log_out, show_login
from .overview import push_now, show_overview
from .settings import save_settings, show_settings
from .sync import sync_now
from .transfer import export, import_file

__all__ = ["register"]


def register(routes: Routes, app: Site) -> None:
    """Add every page's route to ``routes``, each handler bound to ``app``."""
    def bind(handler: Callable[..., Response]) -> Handler:
        return lambda req, match: handler(app, req, match)

    def managed(handler: Callable[..., Response]) -> Handler:
        """Bind a handler that needs configuration management (409 when the gateway has no file)."""
        def route(req: Request, match: re.Match[str]) -> Response:
            manager = app.manager()
            if manager is None:
                return error_page(app, req, 409, "Configuration management is not available on this gateway.")
            return handler(app, req, match, manager)
        return route

    routes.add("GET", r"/", bind(show_overview))
    routes.add("GET", r"/login", bind(show_login), public=True)
    routes.add("POST", r"/login", bind(log_in), public=True, body_limit=8 * 1024)
    routes.add("POST", r"/logout", bind(log_out))
    routes.add("POST", r"/push", bind(push_now))
    routes.add("POST", r"/sync", bind(sync_now))
    routes.add("GET", r"/analyzer", bind(show_analyzer))
    routes.add("GET", r"/analyzer\.csv", bind(download_csv))
    routes.add("POST", r"/analyzer/reset", bind(reset_analyzer))
    routes.add("GET", r"/settings", bind(show_settings))
    routes.add("POST", r"/settings", bind(save_settings))
    routes.add("GET", r"/settings/history/(?P<n>[0-9]{1,9})", bind(show_entry))
    routes.add("POST", r"/settings/history/(?P<n>[0-9]{1,9})/revert", managed(revert))
    routes.add("GET", r"/settings/export", managed(export))
    routes.add("POST", r"/settings/import", managed(import_file), body_limit=IMPORT_LIMIT + 16 * 1024)
    routes.add("GET", r"/settings/backup", managed(download_backup))
    routes.add("POST", r"/settings/restore", managed(restore), body_limit=RESTORE_LIMIT + 16 * 1024)
    routes.add("GET", r"/help", bind(show_help))
