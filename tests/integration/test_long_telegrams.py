"""Long telegrams end to end: on-air frames A and B -> the real gateway -> a real ``wmbus-stream receive``.

Real public telegrams of 202, 207 and 230 bytes (valid CRCs) go through a pty to
``wmbus-stream run`` (compiled twin, then pure), whose report carries them in the 0F long
form; ``wmbus-stream receive`` (its own process, with authentication and an SQLite file)
must store every one byte for byte, and the gateway must count them in its status and in
``/metrics``.
"""

from __future__ import annotations

import http.client
import json
import os
import signal
import socket
import sqlite3
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from gwkit import RSSI, SPEC_TELEGRAM, VECTORS, wait_for, with_id
from wmbus_stream import wire
from wmbus_stream.receivers import hex as hexproto
from wmbus_stream.wire.frame import build_a, build_b

pytestmark = pytest.mark.integration

NO_EXTENSIONS = os.environ.get("WMBUS_STREAM_NO_EXTENSIONS", "").strip().lower() in {"1", "true", "yes", "on"}


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


class ReceiveProcess:
    """``python -m wmbus_stream receive`` with basic auth and an SQLite file."""

    def __init__(self, folder: Path) -> None:
        self.db = folder / "hes.sqlite"
        secret = folder / "hes-password"
        secret.write_text("hes-s3cret\n")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "wmbus_stream", "receive", "--listen", "127.0.0.1:0", "--db", str(self.db),
             "--username", "gw", "--password-file", str(secret)],
            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )
        assert self.proc.stdout is not None
        banner = self.proc.stdout.readline()
        assert banner.startswith("receiving reports on http://127.0.0.1:"), banner
        self.url = banner.split()[3]

    def telegrams(self) -> list[bytes]:
        if not self.db.exists():
            return []
        db = sqlite3.connect(self.db, timeout=5)
        try:
            return sorted(bytes(row[0]) for row in db.execute("SELECT telegram FROM reading"))
        except sqlite3.OperationalError:
            return []
        finally:
            db.close()

    def stop(self) -> str:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        out, _ = self.proc.communicate(timeout=15)
        return out


@pytest.fixture
def receive(tmp_path: Path) -> Iterator[ReceiveProcess]:
    process = ReceiveProcess(tmp_path)
    try:
        yield process
    finally:
        if process.proc.poll() is None:
            process.proc.kill()
        process.proc.communicate()


@pytest.mark.parametrize("implementation", ["compiled", "pure"])
def test_long_telegrams_in_frames_a_and_b_reach_the_hes_byte_exact(
        implementation, monkeypatch, config, pty_receiver, gateway, receive) -> None:
    if implementation == "compiled" and NO_EXTENSIONS:
        pytest.skip("WMBUS_STREAM_NO_EXTENSIONS=1")
    monkeypatch.setenv("WMBUS_STREAM_NO_EXTENSIONS" if implementation == "pure" else "WMBUS_STREAM_REQUIRE_EXTENSIONS", "1")
    lines = VECTORS.read_text(encoding="utf-8").splitlines()
    found = {bytes.fromhex(json.loads(raw)["telegram"]) for raw in lines if raw.strip()}
    long_ones = sorted((t for t in found if len(t) > wire.CONTAINER_MAX), key=len)
    assert [len(t) for t in long_ones] == [202, 202, 207, 230]
    # Each as a meter of its own in format A, and again for another meter in format B; plus the spec's.
    sent = [(with_id(t, 80000001 + i), build_a(with_id(t, 80000001 + i))) for i, t in enumerate(long_ones)]
    sent += [(with_id(t, 90000001 + i), build_b(with_id(t, 90000001 + i))) for i, t in enumerate(long_ones)]
    sent.append((SPEC_TELEGRAM, build_a(SPEC_TELEGRAM)))
    web = free_port()
    config.write({
        "receiver.protocol": "hex", "receiver.port": str(pty_receiver.link), "receiving.server.url": receive.url,
        "receiving.server.username": "gw", "receiving.server.password": "hes-s3cret",
        "web.enabled": "true", "web.listen": f"127.0.0.1:{web}", "web.metrics.public": "true",
    })
    gw = gateway(config)
    assert gw.wait_connected()["implementation"] == implementation
    pty_receiver.write(b"".join(hexproto.encode(frame, rssi_dbm=RSSI) for _, frame in sent))
    status = gw.wait_ok(len(sent))
    expected = sorted(t for t, _ in sent)
    wait_for(lambda: receive.telegrams() == expected, "every telegram stored by wmbus-stream receive", 20,
             context=lambda: f"\nstored {len(receive.telegrams())} of {len(expected)}{gw.tail()}")
    status = gw.wait_status(lambda s: s["meters_pending"] == 0, "nothing pending")
    assert status["telegrams"]["ok"] == len(sent) and status["telegrams_long_form"] == 2 * len(long_ones)
    conn = http.client.HTTPConnection("127.0.0.1", web, timeout=10)
    try:
        conn.request("GET", "/metrics")
        metrics = conn.getresponse().read().decode()
    finally:
        conn.close()
    assert f"wmbus_stream_telegrams_long_form_total {2 * len(long_ones)}.0" in metrics
    gw.stop()
    assert " 0 refused," in receive.stop()  # the stop summary: every POST was accepted
    assert receive.proc.returncode == 0
