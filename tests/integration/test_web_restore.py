"""Restore uploads through the web API: other compressions, decompression bombs and databases
that are not the gateway's are refused with 422, every problem named, nothing changed."""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fleet_harness import hostile_compressions, hostile_databases
from web_harness import ADMIN, PASSWORD, WebGateway, start_gateway


@pytest.fixture(scope="module")
def gw(tmp_path_factory: pytest.TempPathFactory) -> Iterator[WebGateway]:
    running = start_gateway(tmp_path_factory.mktemp("web-restore"))
    try:
        yield running
    finally:
        running.close()


def unchanged(gw: WebGateway) -> dict[str, Any]:
    """What a refused restore must leave as it was: configuration, history, files, no staging left."""
    state = gw.state
    return {"config": gw.config_path.read_bytes(),
            "history": hashlib.sha256((state / "history.sqlite").read_bytes()).hexdigest(),
            "entries": sorted(p.name for p in state.iterdir() if not p.name.startswith("store.sqlite")),
            "files": sorted(str(p.relative_to(state)) for p in state.rglob("*") if "files" in p.parts),
            "raw": dict(gw.gateway.config.raw)}


def test_hostile_restore_uploads_are_refused_with_422_and_change_nothing(gw: WebGateway, tmp_path: Path) -> None:
    status, _, genuine = gw.request("GET", "/api/v1/backup", auth=(ADMIN, PASSWORD))
    assert status == 200
    before = unchanged(gw)
    failures = []
    for what, upload, expected in hostile_compressions(genuine) + hostile_databases(genuine, tmp_path):
        status, _, body = gw.request("POST", "/api/v1/restore", upload, {"Content-Type": "application/octet-stream"},
                                     auth=(ADMIN, PASSWORD))
        reason = str(json.loads(body).get("reason"))
        if status != 422 or not re.search(expected, reason) or "nothing was changed" not in reason:
            failures.append(f"{what}: {status} {reason!r} lacks {expected!r}")
        if unchanged(gw) != before:
            failures.append(f"{what}: changed something")
    assert not failures, "\n".join(failures)
    status, _, body = gw.request("POST", "/api/v1/restore", genuine, {"Content-Type": "application/octet-stream"},
                                 auth=(ADMIN, PASSWORD))
    assert status == 200, body  # the genuine backup it was all made from is restored
    entry = json.loads(body)["entry"]  # the answer names the history entry the restore was saved as
    assert entry["origin"] == "restore" and entry["number"] >= 1, entry
