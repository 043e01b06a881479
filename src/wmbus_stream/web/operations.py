"""What the pages and the JSON API both do: push by hand, the backup archive, the analyzer CSV, upload limits."""

from __future__ import annotations

import io
import time
from typing import TYPE_CHECKING

from ..core.analyzer import Analyzer, MeterRow
from .request import Request, Response
from .routing import Site
from .views import AnalyzerQuery

if TYPE_CHECKING:
    from ..host import PushOutcome

__all__ = ["IMPORT_LIMIT", "RESTORE_LIMIT", "analyzer_csv", "analyzer_rows", "backup_bytes", "push_outcome"]

IMPORT_LIMIT = 64 * 1024
# The HTTP edge's request-body limit (docs/web.md), below the archive limit the gateway's restore
# checks (state/archive.py BackupLimits.archive, 256 MiB): the web server holds a request body in
# memory and reads it through a web client's connection, so it takes less at its edge.
RESTORE_LIMIT = 64 * 1024 * 1024


def push_outcome(app: Site) -> PushOutcome | None:
    """Push now in the gateway's one push slot, as the control socket does; None if one is in flight."""
    return app.gateway.push_by_hand()


def backup_bytes(app: Site) -> tuple[bytes, str]:
    """A backup archive of the running gateway, and the name to download it as."""
    buffer = io.BytesIO()
    app.gateway.backup(buffer)
    name = f"wmbus-stream-backup-{app.gateway.config.gateway_serial}-{time.strftime('%Y%m%d-%H%M%S', time.gmtime())}"
    return buffer.getvalue(), name + ".tar.gz"


def analyzer_rows(app: Site, q: AnalyzerQuery) -> list[MeterRow]:
    analyzer = app.gateway.analyzer
    if analyzer is None:
        return []
    return analyzer.rows(only_allowed=q.only_allowed, allow_ids=app.gateway.config.filter_device_id)


def analyzer_csv(app: Site, req: Request) -> Response:
    """The CSV of ``wmbus-stream analyzer --csv`` (``only=0`` is ``--all``)."""
    cfg = app.gateway.config
    q = AnalyzerQuery.from_query({"only": req.query.get("only", "")}, default_only=cfg.show_only_filtered)
    text = Analyzer.to_csv(analyzer_rows(app, q))
    name = f"analyzer-{cfg.gateway_serial}-{time.strftime('%Y%m%d-%H%M%S', time.gmtime())}.csv"
    return Response(200, text.encode("utf-8"), "text/csv; charset=utf-8",
                    [("Content-Disposition", f'attachment; filename="{name}"')])
