"""The gateway's status as frozen values gives the JSON every output has always shown, key for key."""

from __future__ import annotations

import dataclasses
import json
from datetime import UTC, datetime
from pathlib import Path

import pytest

from wmbus_stream.app import Gateway
from wmbus_stream.config import model
from wmbus_stream.host import Counts, PushOutcome, ReceiverStatus, Status, SyncStatus, as_json

STATUS_KEYS = ["version", "implementation", "enabled", "uptime_seconds", "gateway_serial", "receiver", "telegrams",
               "telegrams_long_form", "meters_pending", "store_write_errors", "pushes", "push_in_flight", "last_push",
               "next_push", "sync"]
RECEIVER_KEYS = ["protocol", "port", "state", "reconnects", "last_error", "bytes_read", "last_data_at", "silent",
                 "silence_alarms", "skipped_bytes", "bad_frames"]
SYNC_KEYS = ["enabled", "url", "cron", "next", "in_flight", "runs", "last"]
PUSH_KEYS = ["at", "ok", "lines", "status", "attempts", "error", "duration"]


def test_a_gateway_not_started_reports_a_stopped_receiver_in_the_documented_order(tmp_path: Path) -> None:
    config = model.parse({"state.directory": str(tmp_path / "state"), "receiver.protocol": "hex",
                          "receiver.port": "/dev/ttyUSB7", "gateway.serial": "00000161"})
    value = as_json(Gateway(config).status())
    assert list(value) == STATUS_KEYS
    assert list(value["receiver"]) == RECEIVER_KEYS and list(value["sync"]) == SYNC_KEYS
    assert value["receiver"] == {"protocol": "hex", "port": "/dev/ttyUSB7", "state": "stopped", "reconnects": 0,
                                 "last_error": None, "bytes_read": 0, "last_data_at": None, "silent": False,
                                 "silence_alarms": 0, "skipped_bytes": 0, "bad_frames": 0}
    assert value["pushes"] == {"ok": 0, "failed": 0} and value["last_push"] is None and value["next_push"] is None
    assert value["gateway_serial"] == "00000161" and value["meters_pending"] == 0 and value["telegrams"] == {}
    json.dumps(value)  # plain JSON values only


def test_times_become_iso_8601_and_a_push_outcome_reads_back_from_its_json() -> None:
    at = datetime(2026, 12, 2, 1, 30, tzinfo=UTC)
    outcome = PushOutcome(1_700_000_000.5, True, 12, 204, 1, None, 0.25)
    status = Status("0.1.0", "pure", True, 3.5, "00000161",
                    ReceiverStatus("simulator", "simulator", "connected", 0, None, 10, None, False, 0, 0, 0),
                    {"read": 2, "ok": 2}, 0, 1, 0, Counts(1, 0), False, outcome, at,
                    SyncStatus(False, None, "0 0 3 * * *", None, False, Counts(0, 0), {"code": 900, "files": []}))
    value = as_json(status)
    assert value["next_push"] == "2026-12-02T01:30:00+00:00"
    assert list(value["last_push"]) == PUSH_KEYS
    assert PushOutcome(**value["last_push"]) == outcome  # what ``push now`` does with the control socket's answer
    assert value["sync"]["last"] == {"code": 900, "files": []}
    with pytest.raises(dataclasses.FrozenInstanceError):
        status.meters_pending = 2  # type: ignore[misc]
