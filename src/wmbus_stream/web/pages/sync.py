"""Sync now: run the configuration sync by hand and show its outcome on the Overview."""

from __future__ import annotations

import re

from ...errors import WmbusStreamError
from ..request import Request, Response, redirect
from ..routing import Site
from .layout import flash

__all__ = ["sync_now"]


def sync_now(app: Site, req: Request, match: re.Match[str]) -> Response:
    try:
        result = app.gateway.sync_now()
    except WmbusStreamError as exc:
        flash(req, f"Sync failed: {exc}", "error")
        return redirect("/")
    flash(req, "Sync: " + result.summary())
    return redirect("/")
