"""Sync now: run the configuration sync by hand and show its outcome on the Overview."""

from __future__ import annotations

import re

from ...errors import WmbusStreamError
from ..request import Request, Response, redirect
from ..routing import Site
from .layout import flash

__all__ = ["sync_now"]


def sync_now(app: Site, req: Request, match: re.Match[str]) -> Response:
    sync_now = getattr(app.gateway, "sync_now", None)
    if sync_now is None:
        flash(req, "Configuration sync is not available in this version.", "warn")
        return redirect("/")
    try:
        result = sync_now()
    except WmbusStreamError as exc:
        flash(req, f"Sync failed: {exc}", "error")
        return redirect("/")
    text = getattr(result, "summary", None)
    flash(req, "Sync: " + (text() if callable(text) else str(result)))
    return redirect("/")
