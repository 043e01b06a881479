"""Downloading a backup of configuration and state, and restoring one."""

from __future__ import annotations

import io
import re
from typing import TYPE_CHECKING

from ...errors import WmbusStreamError
from ..operations import RESTORE_LIMIT, backup_bytes
from ..request import Request, Response, redirect
from ..routing import Site
from .layout import flash, upload

if TYPE_CHECKING:
    from ...config.manage import ConfigManager

__all__ = ["download_backup", "restore"]


def download_backup(app: Site, req: Request, match: re.Match[str], manager: ConfigManager) -> Response:
    data, name = backup_bytes(app)
    return Response(200, data, "application/octet-stream", [("Content-Disposition", f'attachment; filename="{name}"')])


def restore(app: Site, req: Request, match: re.Match[str], manager: ConfigManager) -> Response:
    data = upload(req, RESTORE_LIMIT)
    if isinstance(data, str):
        flash(req, data, "error")
        return redirect("/settings")
    keep = req.form().get("keep_serial", "") in ("1", "on", "true")
    try:
        result = app.gateway.restore(io.BytesIO(data), len(data), keep_serial=keep)
    except (WmbusStreamError, ValueError, OSError) as exc:  # ConfigError and BackupError among them
        flash(req, f"Restore refused, nothing was changed: {exc}", "error")
        return redirect("/settings")
    flash(req, "Backup restored" + (f" as configuration #{result.number}." if result.number is not None else "."))
    return redirect("/settings")
