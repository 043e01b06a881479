"""Exporting the configuration for other gateways and importing such a file."""

from __future__ import annotations

import re
from typing import TYPE_CHECKING

from ...errors import ConfigError
from ..operations import IMPORT_LIMIT
from ..request import Request, Response, redirect
from ..routing import Site
from .layout import flash, upload
from .settings import problems_banner, problems_by_key, settings_page, shown_values

if TYPE_CHECKING:
    from ...config.manage import ConfigManager

__all__ = ["export", "import_file"]


def export(app: Site, req: Request, match: re.Match[str], manager: ConfigManager) -> Response:
    name = f"stream-{app.gateway.config.gateway_serial}.cfg"
    return Response(200, manager.export_text().encode("utf-8"), "text/plain; charset=utf-8",
                    [("Content-Disposition", f'attachment; filename="{name}"')])


def import_file(app: Site, req: Request, match: re.Match[str], manager: ConfigManager) -> Response:
    data = upload(req, IMPORT_LIMIT)
    if isinstance(data, str):
        flash(req, data, "error")
        return redirect("/settings")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        flash(req, "The file is not UTF-8 text; nothing was changed.", "error")
        return redirect("/settings")
    try:
        entry = manager.import_text(text, origin="import")
    except ConfigError as exc:
        errors = problems_by_key(exc.problems)
        banner = problems_banner(f"The imported file has {len(exc.problems)} problem(s); nothing was changed.", errors)
        return settings_page(app, req, shown_values(app), errors, status=422, banner=banner)
    flash(req, f"Imported and applied as configuration #{entry.number}.")
    return redirect("/settings")
