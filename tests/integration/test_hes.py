"""The reference HES (``wmbus-stream receive``) over real sockets on 127.0.0.1.

Requests are made with the stdlib ``http.client`` or raw sockets (independent of the
gateway's own client) except where the gateway's push is the point (dedup across gateways).
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import http.client
import json
import logging
import os
import select
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterable, Iterator
from pathlib import Path

import pytest

import wmbus_stream
from wmbus_stream import wire
from report_lines import AGE, RECEIVER, RSSI, SPEC_WIRED, TELEGRAM, line, telegram_for, wired
from wmbus_stream.hes import PostSummary, ReceiveServer, SqliteStore, parse_line, parse_report
from wmbus_stream.hes.cli import add_arguments, main
from wmbus_stream.io import push as client

pytestmark = pytest.mark.integration

def post(server: ReceiveServer, body: bytes | Iterable[bytes], *, chunked: bool = True, auth: tuple[str, str] | None = None,
         path: str = "/", headers: dict[str, str] | None = None) -> tuple[int, str, dict[str, str]]:
    """One POST with http.client: chunked from an iterable, or with Content-Length."""
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=10)
    try:
        all_headers = {"Content-Type": "text/plain; charset=us-ascii", **(headers or {})}
        if auth:
            all_headers["Authorization"] = "Basic " + base64.b64encode(f"{auth[0]}:{auth[1]}".encode()).decode()
        if chunked:
            pieces = [body] if isinstance(body, bytes) else list(body)
            conn.request("POST", path, body=iter(pieces), headers=all_headers, encode_chunked=True)
        else:
            conn.request("POST", path, body=body if isinstance(body, bytes) else b"".join(body), headers=all_headers)
        response = conn.getresponse()
        return response.status, response.read().decode(), {k.lower(): v for k, v in response.getheaders()}
    finally:
        conn.close()


@pytest.fixture
def hes() -> Iterator[ReceiveServer]:
    with ReceiveServer() as server:
        yield server


def test_spec_vector_line_is_accepted_and_decoded(hes: ReceiveServer) -> None:
    assert wired().hex().upper() == SPEC_WIRED
    status, text, _ = post(hes, (line() + "\n").encode())
    assert (status, text) == (204, "")
    (reading,) = hes.store.readings()
    assert (reading.manufacturer, reading.meter_id, reading.version, reading.device_type) == ("ELV", "61000164", 1, 0x1B)
    assert reading.ci == 0x7A and reading.access_number == 0x97 and reading.telegram == TELEGRAM
    (heard,) = hes.store.heard()
    assert (heard.gateway, heard.date, heard.rssi_code, heard.receiver, heard.age_minutes) == (
        "00000161", "2026-11-24 10:15:02", 0x1C, "62001772", None)


def test_optional_records_may_be_absent_or_all_present(hes: ReceiveServer) -> None:
    body = "\n".join([
        line(records=b""),
        line(serial="00000162", records=RECEIVER + AGE + RSSI),
        line(serial="00000163", records=RSSI, tail=b"\x0f"),
    ]) + "\n"
    assert post(hes, body.encode())[0] == 204
    assert len(hes.store.readings()) == 1
    heard = {h.gateway: h for h in hes.store.heard()}
    assert heard["00000161"].rssi_code is None and heard["00000161"].receiver is None
    assert heard["00000162"].age_minutes == 5 and heard["00000162"].rssi_code == 0x1C
    assert heard["00000163"].receiver is None


BAD_LINES = [
    ("00000161;61000164;2026-11-24 10:15:02;00", "4 fields"),
    (line() + ";extra", "6 fields"),
    (line(serial="0000161"), "gateway serial"),
    (line(serial="0000016X"), "gateway serial"),
    (line(meter="6100016"), "meter id"),
    (line(meter="6100016G"), "meter id"),
    (line(date="2026-11-24T10:15:02"), "YYYY-MM-DD hh:mm:ss"),
    (line(date="2026-13-24 10:15:02"), "not a valid date"),
    (line(count="01"), "value data count"),
    (line(hex_text=SPEC_WIRED.lower()), "uppercase hex"),
    (line(hex_text=SPEC_WIRED[:-1]), "odd number"),
    (line(hex_text=""), "empty"),
    (line(hex_text="0800720102"), "shorter than the 15-byte"),
    (line(c=0x09), "C-field is 0x09"),
    (line(ci=0x70), "CI-field is 0x70"),
    (line(n=len(TELEGRAM) + 1), "container says"),
    (line(tail=b"\x00\x00"), "container says"),
    (line(telegram=b"\x5f" + TELEGRAM[1:]), "L-field"),
    (line(meter="61000165"), "differs from 61000164"),
    (line(header=bytes.fromhex("65010061") + TELEGRAM[2:4] + TELEGRAM[8:10]), "of the wired header differs"),
    (line(header=TELEGRAM[4:8] + TELEGRAM[2:4] + b"\x02\x1b"), "version or device type"),
    (line(records=RSSI + RECEIVER), "out of order"),
    (line(records=RSSI + RSSI), "out of order"),
    (line(records=b"\x04\x13\x00\x00\x00\x00"), "unexpected bytes"),
    (line(records=b"\x01\xfd\x71\x50"), "RSSI code 80"),
    (line(records=b"\x0c\x78\x01"), "unexpected bytes"),
    ("", "empty line"),
    (line()[:-2] + "\u00c9F", "not ASCII"),
    (line().replace(";", ";\t", 1), "control character"),
]


@pytest.mark.parametrize(("bad", "reason"), BAD_LINES, ids=[reason for _, reason in BAD_LINES])
def test_malformed_line_is_400_with_its_number_and_nothing_is_stored(hes: ReceiveServer, bad: str, reason: str) -> None:
    good = [line(serial="00000161"), line(serial="00000162", telegram=telegram_for(61000165), meter="61000165")]
    body = ("\n".join([*good, bad, line(serial="00000163")]) + "\n").encode("utf-8")
    status, text, _ = post(hes, body)
    assert status == 400
    assert text.startswith("line 3: ") and reason in text, text
    assert hes.store.readings() == [] and hes.store.heard() == []
    assert hes.stats.rejected == 1 and hes.stats.posts == 0


def test_parse_report_line_breaks() -> None:
    assert parse_report(b"") == []
    assert len(parse_report((line() + "\r\n" + line(serial="00000162")).encode())) == 2


def test_same_telegram_from_three_gateways_is_one_reading_heard_three_times(hes: ReceiveServer) -> None:
    def push(serial: str, rssi: int) -> client.PushResult:
        wired_bytes = wire.build_report(TELEGRAM, "62001772", rssi, 0)
        text = f"{serial};61000164;2026-11-24 10:15:0{serial[-1]};00;{wired_bytes.hex().upper()}\n".encode()
        return client.push(hes.url, lambda: [text], deadline=None)

    gateways = {"00000161": -74, "00000162": -90, "00000163": -60}
    results: list[client.PushResult] = []
    threads = [threading.Thread(target=lambda s=s, r=r: results.append(push(s, r))) for s, r in gateways.items()]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(10)
    assert len(results) == 3 and all(r.ok for r in results)
    assert len(hes.store.readings()) == 1
    heard = {h.gateway: h.rssi_code for h in hes.store.heard()}
    assert heard == {s: wire.rssi_code(r) for s, r in gateways.items()}
    # The same reports again (at-least-once delivery): nothing new.
    for serial, rssi in gateways.items():
        assert push(serial, rssi).ok
    assert len(hes.store.readings()) == 1 and len(hes.store.heard()) == 3
    # A new telegram of the same meter (next access number) is a new reading.
    text = line(telegram=telegram_for(61000164, access=0x98)) + "\n"
    assert post(hes, text.encode())[0] == 204
    assert [r.access_number for r in hes.store.readings()] == [0x97, 0x98]
    assert hes.stats.readings == 2 and hes.stats.posts == 7


def test_auth_is_required_when_configured() -> None:
    body = (line() + "\n").encode()
    with ReceiveServer(username="gw", password="s3cret") as server:
        status, _, headers = post(server, body)
        assert status == 401 and headers["www-authenticate"].startswith("Basic realm=")
        assert post(server, body, auth=("gw", "wrong"))[0] == 401
        assert post(server, body, auth=("other", "s3cret"))[0] == 401
        assert post(server, body, chunked=False, headers={"Authorization": "Basic !!!"})[0] == 401
        assert server.store.readings() == [] and server.stats.unauthorized == 4
        assert post(server, body, auth=("gw", "s3cret"))[0] == 204
        assert len(server.store.readings()) == 1


def test_unauthorized_big_upload_still_gets_its_401() -> None:
    lines = [(line(meter=f"{61000000 + i:08d}", telegram=telegram_for(61000000 + i)) + "\n").encode() for i in range(3000)]
    with ReceiveServer(username="gw", password="s3cret") as server:
        result = client.push(server.url, lambda: lines, username="gw", password="nope", deadline=None)
        assert result.status == 401 and result.attempts == 1
        result = client.push(server.url, lambda: lines, username="gw", password="s3cret", deadline=None)
        assert result.ok and len(server.store.readings()) == 3000


def test_content_length_body_and_keep_alive(hes: ReceiveServer) -> None:
    conn = http.client.HTTPConnection("127.0.0.1", hes.port, timeout=10)
    try:
        for serial in ("00000161", "00000162"):
            conn.request("POST", "/any/path", body=(line(serial=serial) + "\n").encode())
            response = conn.getresponse()
            assert response.status == 204
            response.read()
    finally:
        conn.close()
    assert len(hes.store.heard()) == 2


def test_limits_and_framing_errors() -> None:
    with ReceiveServer(max_body=1000, path="/report") as server:
        big = ((line() + "\n") * 5).encode()
        assert post(server, big, path="/report")[0] == 413
        assert post(server, big, path="/report", chunked=False)[0] == 413
        assert post(server, b"x", path="/elsewhere")[0] == 404
        status, text, _ = post(server, b"", path="/report", chunked=False,
                               headers={"Transfer-Encoding": "chunked", "Content-Length": "5"})
        assert status == 400 and "both" in text
        assert post(server, b"", path="/report", chunked=False, headers={"Transfer-Encoding": "gzip"})[0] == 501
        with socket.create_connection(("127.0.0.1", server.port), timeout=5) as raw:
            raw.sendall(b"POST /report HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n")
            assert raw.recv(100).startswith(b"HTTP/1.1 400")
        conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=5)
        conn.request("GET", "/report")
        assert conn.getresponse().status == 405
        conn.close()
        assert server.store.readings() == []
        assert post(server, b"", path="/report?x=1")[0] == 204  # an empty report is fine


def test_body_cut_mid_chunk_stores_nothing(hes: ReceiveServer) -> None:
    first = (line() + "\n").encode()
    with socket.create_connection(("127.0.0.1", hes.port), timeout=5) as raw:
        raw.sendall(b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n")
        raw.sendall(b"%x\r\n%s\r\n" % (len(first), first))
        raw.sendall(b"4000\r\n" + first[:100])
    time.sleep(0.2)
    assert hes.store.readings() == [] and hes.stats.posts == 0
    assert post(hes, first)[0] == 204


def test_on_post_summary(hes: ReceiveServer) -> None:
    seen: list[PostSummary] = []
    hes.on_post = seen.append
    post(hes, ("\n".join([line(), line(serial="00000162")]) + "\n").encode(), path="/x")
    post(hes, b"bad\n")
    assert seen[0].status == 204 and seen[0].lines == 2 and seen[0].new_readings == 1
    assert seen[0].gateways == ("00000161", "00000162") and seen[0].path == "/x"
    assert seen[1].status == 400 and seen[1].error.startswith("line 1: ")


def test_the_sqlite_file_persists_and_keeps_deduplicating(tmp_path: Path) -> None:
    path = str(tmp_path / "hes.sqlite3")
    store = SqliteStore(path)
    with ReceiveServer(store=store) as server:
        assert post(server, ("\n".join([line(), line(serial="00000162")]) + "\n").encode())[0] == 204
    store.close()
    store = SqliteStore(path)
    with ReceiveServer(store=store) as server:
        assert post(server, ("\n".join([line(serial="00000162"), line(serial="00000163")]) + "\n").encode())[0] == 204
        assert len(store.readings()) == 1
        assert [h.gateway for h in store.heard()] == ["00000161", "00000162", "00000163"]
    store.close()


def test_tls_server(tmp_path: Path) -> None:
    trustme = pytest.importorskip("trustme")
    ca = trustme.CA()
    leaf = ca.issue_cert("127.0.0.1")
    cert, key, ca_file = tmp_path / "c.pem", tmp_path / "k.pem", tmp_path / "ca.pem"
    cert.write_bytes(b"".join(blob.bytes() for blob in leaf.cert_chain_pems))
    leaf.private_key_pem.write_to_path(str(key))
    ca.cert_pem.write_to_path(str(ca_file))
    with ReceiveServer(tls_cert=str(cert), tls_key=str(key), username="gw", password="pw") as server:
        # A client that connects and never handshakes must not block others.
        with socket.create_connection(("127.0.0.1", server.port)):
            result = client.push(server.url, lambda: [(line() + "\n").encode()], username="gw", password="pw",
                                 ca_file=str(ca_file), deadline=None)
        assert result.ok and len(server.store.readings()) == 1


def test_cli_receive_prints_one_line_per_post(tmp_path: Path) -> None:
    secret = tmp_path / "password"
    secret.write_text("pw\n")
    store = tmp_path / "hes.sqlite"
    src = os.path.dirname(os.path.dirname(wmbus_stream.__file__))
    code = ("import argparse, sys; from wmbus_stream.hes import cli as hes; p = argparse.ArgumentParser(); hes.add_arguments(p);"
            " sys.exit(hes.main(p.parse_args(sys.argv[1:])))")
    env = {**os.environ, "PYTHONPATH": src + os.pathsep + os.environ.get("PYTHONPATH", "")}
    with subprocess.Popen(
        [sys.executable, "-c", code, "--listen", "127.0.0.1:0", "--db", str(store), "--username", "gw",
         "--password-file", str(secret), "--path", "/in"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
    ) as process:
        try:
            banner = process.stdout.readline()
            assert banner.startswith("receiving reports on http://127.0.0.1:"), banner + process.stderr.read()
            url = banner.split()[3]
            assert url.endswith("/in")
            body = ("\n".join([line(), line(serial="00000162")]) + "\n").encode()
            result = client.push(url, lambda: [body], username="gw", password="pw", deadline=None)
            assert result.ok
            shown = process.stdout.readline()
            assert "POST /in: 2 lines, 1 new readings, gateway 00000161,00000162" in shown
            process.send_signal(signal.SIGTERM)
            assert process.wait(10) == 0
            assert "stopped: 1 POSTs, 2 lines, 1 new readings" in process.stdout.read()
        finally:
            if process.poll() is None:
                process.kill()
    with contextlib.closing(SqliteStore(str(store))) as kept:
        assert len(kept.readings()) == 1


def test_cli_rejects_bad_options_as_usage_errors() -> None:
    parser = argparse.ArgumentParser()
    add_arguments(parser)

    assert main(parser.parse_args(["--username", "gw"])) == 2
    with pytest.raises(SystemExit) as parsed:
        parser.parse_args(["--listen", "nonsense"])
    assert parsed.value.code == 2
    assert main(parser.parse_args(["--tls-key", "k.pem", "--no-auth"])) == 2
    assert main(parser.parse_args(["--password-file", "/nonexistent/password", "--username", "gw"])) == 1


# -- long telegrams ----------------------------------------------------------------------------


def vector_telegrams_longer_than(size: int) -> list[bytes]:
    path = Path(__file__).resolve().parents[1] / "vectors" / "telegrams.jsonl"
    found = {bytes.fromhex(json.loads(raw)["telegram"]) for raw in path.read_text().splitlines() if raw.strip()}
    return sorted((t for t in found if len(t) > size), key=len)


def test_long_form_lines_are_read_and_stored_byte_exact(hes: ReceiveServer) -> None:
    # 202, 207 and 230 bytes: past a 0D FD 3B length byte (0xBF) and, for 230, past a long frame.
    long_ones = vector_telegrams_longer_than(wire.CONTAINER_MAX)
    assert [len(t) for t in long_ones] == [202, 202, 207, 230]
    body = "".join(
        f"{i:08d};{t[7:3:-1].hex().upper()};2026-11-24 10:15:02;00;{wire.build_report(t, '62001772', -74, 0).hex().upper()}\n"
        for i, t in enumerate(long_ones, 1)
    )
    assert post(hes, body.encode())[0] == 204
    assert sorted(r.telegram for r in hes.store.readings()) == sorted(long_ones)
    assert {h.rssi_code for h in hes.store.heard()} == {0x1C} and hes.stats.long_form == 4
    assert all(h.receiver == "62001772" for h in hes.store.heard())


def test_long_container_of_older_gateways_is_still_read_as_a_length(hes: ReceiveServer) -> None:
    telegram = vector_telegrams_longer_than(wire.CONTAINER_MAX)[0]
    meter = telegram[7:3:-1].hex().upper()
    assert post(hes, (line(meter=meter, telegram=telegram) + "\n").encode())[0] == 204  # 0D FD 3B CA ...
    assert [r.telegram for r in hes.store.readings()] == [telegram] and hes.stats.long_form == 0


LONG = vector_telegrams_longer_than(0xBF)[0]
LONG_WIRED = wire.build_report(LONG, "62001772", -74, 0)
LONG_METER = LONG[7:3:-1].hex().upper()
BAD_LONG_LINES = [
    (LONG_WIRED[:-1], "L-field"),  # 0F runs to the end of the line: the L-field must say so
    (LONG_WIRED + b"\x0f", "L-field"),
    (LONG_WIRED[:25] + b"\x0f", "shorter than 11"),
    (LONG_WIRED[:25] + b"\x0f\x0f" + LONG, "L-field"),
    (LONG_WIRED[:15] + b"\x0f" + LONG[:-1], "L-field"),
]


@pytest.mark.parametrize(("wired_bytes", "reason"), BAD_LONG_LINES, ids=[str(i) for i in range(len(BAD_LONG_LINES))])
def test_malformed_long_form_is_400(hes: ReceiveServer, wired_bytes: bytes, reason: str) -> None:
    status, text, _ = post(hes, (line(meter=LONG_METER, hex_text=wired_bytes.hex().upper()) + "\n").encode())
    assert status == 400 and text.startswith("line 1: ") and reason in text and "long form" in text, text
    assert hes.store.readings() == []


# -- the trust boundary: connection cap, streaming limits, credentials before the body ---------


def raw_request(port: int, head: str, body: bytes = b"") -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port), timeout=10)
    sock.sendall(head.replace("\n", "\r\n").encode() + b"\r\n" + body)
    return sock


def read_answer(sock: socket.socket) -> bytes:
    """Everything the server sends until it closes (or the 10 s socket timeout fails the test)."""
    data = b""
    while chunk := sock.recv(65536):
        data += chunk
    return data


def test_connections_over_the_cap_get_503_without_a_thread_each() -> None:
    with ReceiveServer(max_connections=2, per_address=2) as server:
        idle = [socket.create_connection(("127.0.0.1", server.port), timeout=10) for _ in range(2)]
        assert wait_until(lambda: server._server.active == 2)
        threads = threading.active_count()
        excess = [socket.create_connection(("127.0.0.1", server.port), timeout=10) for _ in range(40)]
        answers = [read_answer(sock) for sock in excess]
        assert all(a.startswith(b"HTTP/1.1 503 ") and b"Retry-After: 5\r\n" in a for a in answers), answers[0]
        assert threading.active_count() <= threads + 1  # no thread per turned-away connection
        assert server.stats.busy == 40
        for sock in idle + excess:
            sock.close()
        assert wait_until(lambda: server._server.active == 0)
        assert post(server, (line() + "\n").encode())[0] == 204


def test_expect_100_continue_is_answered_only_after_the_credentials() -> None:
    body = (line() + "\n").encode()
    head = f"POST / HTTP/1.1\nHost: x\nContent-Length: {len(body)}\nExpect: 100-continue\n"
    good = "Authorization: Basic " + base64.b64encode(b"gw:s3cret").decode() + "\n"
    with ReceiveServer(username="gw", password="s3cret", max_body=10_000) as server:
        with raw_request(server.port, head) as sock:  # no credentials, no body sent: 401 at once
            answer = read_answer(sock)
        assert answer.startswith(b"HTTP/1.1 401 ") and b"100 Continue" not in answer
        big = f"POST / HTTP/1.1\nHost: x\nContent-Length: 20000\nExpect: 100-continue\n{good}"
        with raw_request(server.port, big) as sock:  # over the limit: 413 without 100 Continue
            answer = read_answer(sock)
        assert answer.startswith(b"HTTP/1.1 413 ") and b"100 Continue" not in answer
        with raw_request(server.port, head + good) as sock:
            assert sock.recv(100).startswith(b"HTTP/1.1 100 Continue\r\n")
            sock.sendall(body)
            assert sock.recv(100).startswith(b"HTTP/1.1 204 ")
        assert len(server.store.readings()) == 1 and server.stats.unauthorized == 1


def test_a_bad_line_is_answered_before_the_body_ends(hes: ReceiveServer) -> None:
    first = (line(serial="0000016X") + "\n").encode()
    head = "POST / HTTP/1.1\nHost: x\nTransfer-Encoding: chunked\n"
    with raw_request(hes.port, head, b"%x\r\n%s\r\n" % (len(first), first)) as sock:  # the body never ends
        answer = read_answer(sock)
    assert answer.startswith(b"HTTP/1.1 400 ") and b"line 1: gateway serial" in answer
    assert hes.store.readings() == [] and hes.stats.rejected == 1


def test_a_body_over_the_limit_is_413_as_soon_as_it_crosses_it() -> None:
    piece = (line() + "\n").encode()
    with ReceiveServer(max_body=100_000) as server:
        head = "POST / HTTP/1.1\nHost: x\nTransfer-Encoding: chunked\n"
        chunks = b"".join(b"%x\r\n%s\r\n" % (len(piece), piece) for _ in range(100_000 // len(piece) + 2))
        with raw_request(server.port, head, chunks) as sock:  # past the limit, and never ended
            answer = read_answer(sock)
        assert answer.startswith(b"HTTP/1.1 413 ")
        assert server.store.readings() == [] and server.stats.posts == 0


def wait_until(predicate, timeout: float = 10.0) -> bool:
    """Poll ``predicate`` until it holds (True) or the deadline passes (False)."""
    end = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > end:
            return False
        time.sleep(0.02)
    return True


def run_receive(*args: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "wmbus_stream", "receive", "--listen", "127.0.0.1:0", *args],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def refused(*args: str) -> str:
    """stderr of a ``receive`` that must exit 2 (a usage error) at once (killed if it starts serving instead)."""
    process = run_receive(*args)
    try:
        _, error = process.communicate(timeout=20)
    finally:
        if process.poll() is None:
            process.kill()
            process.communicate()
    assert process.returncode == 2, error
    return error


def test_cli_receive_requires_credentials_unless_no_auth() -> None:
    error = refused()
    assert "refusing to start without authentication" in error and "--no-auth" in error
    assert "exclude each other" in refused("--no-auth", "--username", "gw", "--password", "x")
    process = run_receive("--no-auth", "--max-connections", "4")
    try:
        banner = process.stdout.readline()
        assert "NO AUTHENTICATION" in banner, banner + process.stderr.read()
        url = banner.split()[3]
        assert client.push(url, lambda: [(line() + "\n").encode()], deadline=None).ok
    finally:
        process.send_signal(signal.SIGTERM)
        assert process.wait(10) == 0
        process.stdout.close()
        process.stderr.close()


def test_the_long_form_example_of_the_integration_guide_parses() -> None:
    guide = (Path(__file__).resolve().parents[2] / "docs" / "hes-integration.md").read_text(encoding="utf-8")
    (example,) = [text for text in guide.splitlines() if text.startswith("00000161;54423117;")]
    parsed = parse_line(example)
    assert parsed.long_form and parsed.telegram in vector_telegrams_longer_than(wire.CONTAINER_MAX)
    assert parsed.wired == wire.build_report(parsed.telegram, "62001772", -74, 0)
    assert (parsed.receiver, parsed.rssi_code, len(parsed.telegram)) == ("62001772", 0x1C, 202)



# -- credentials that let anyone in, heads that are ambiguous, clients that hold slots ----------


AUTH = "Authorization: Basic " + base64.b64encode(b"gw:s3cret").decode() + "\n"


@pytest.mark.parametrize("content", ["", "\n", "  \t\r\n", "\nsecret\n"], ids=["empty", "newline", "blank", "second-line"])
def test_cli_receive_refuses_a_password_file_without_a_password(tmp_path: Path, content: str) -> None:
    secret = tmp_path / "password"
    secret.write_text(content)
    error = refused("--username", "gw", "--password-file", str(secret))
    assert f"--password-file {secret} holds no password on its first line" in error


@pytest.mark.parametrize(("args", "reason"), [
    (("--username", "gw", "--password", ""), "password is empty or only blanks"),
    (("--username", "gw", "--password", "   "), "password is empty or only blanks"),
    (("--username", "", "--password", "s3cret"), "user name is empty"),
    (("--username", " ", "--password", "s3cret"), "user name is empty"),
    (("--username", "g:w", "--password", "s3cret"), "holds ':'"),
], ids=["empty-password", "blank-password", "empty-user", "blank-user", "colon-user"])
def test_cli_receive_refuses_empty_credentials(args: tuple[str, ...], reason: str) -> None:
    assert reason in refused(*args)


@pytest.mark.parametrize(("username", "password"), [("gw", ""), ("gw", " \n"), ("", "s3cret"), ("a:b", "s3cret")])
def test_receive_server_refuses_empty_credentials(username: str, password: str) -> None:
    # Without the check, an empty password let ``curl -u 'gw:'`` store readings.
    with pytest.raises(ValueError, match="user name|password"):
        ReceiveServer(username=username, password=password)


AMBIGUOUS_HEADS = [
    ("Content-Length: {n}\nContent-Length: 3\n", "Content-Length is given 2 times"),
    ("Content-Length: 3\nContent-Length: {n}\n", "Content-Length is given 2 times"),
    ("Content-Length: {n}\nContent-Length: {n}\n", "Content-Length is given 2 times"),
    ("Content-Length: {n}\nTransfer-Encoding: chunked\n", "both Content-Length and Transfer-Encoding"),
    ("Transfer-Encoding: chunked\nTransfer-Encoding: chunked\n", "Transfer-Encoding is given 2 times"),
    ("Content-Length: {n}\nHost: y\n", "Host is given 2 times"),
    ("Content-Length: {n}\n" + AUTH, "Authorization is given 2 times"),
    ("Content-Length: +{n}\n", "is not a number of bytes in ASCII digits"),
    ("Content-Length: 0x{n}\n", "is not a number of bytes in ASCII digits"),
    ("Content-Length: \u00b2\n", "is not a number of bytes in ASCII digits"),  # a digit to str.isdigit
    ("Content-Length : {n}\n", "no space may come before the colon"),
    ("X-Note\nContent-Length: {n}\n", "is not 'Name: value'"),
    ("Content-Length: {n}\n 0\n", "folded"),
]


@pytest.mark.parametrize(("headers", "reason"), AMBIGUOUS_HEADS, ids=[f"{i}-{r[:20]}" for i, (_, r) in enumerate(AMBIGUOUS_HEADS)])
def test_an_ambiguous_request_head_is_400_and_closed_and_stores_nothing(headers: str, reason: str) -> None:
    body = (line() + "\n").encode()
    head = "POST / HTTP/1.1\nHost: x\n" + AUTH + headers.format(n=len(body))
    with ReceiveServer(username="gw", password="s3cret") as server:
        with socket.create_connection(("127.0.0.1", server.port), timeout=30) as sock:
            sock.sendall(head.replace("\n", "\r\n").encode("latin-1") + b"\r\n" + body)
            answer = read_answer(sock)  # returns: the server closed the connection
        status, _, rest = answer.partition(b"\r\n")
        assert status.startswith(b"HTTP/1.1 400 "), answer
        assert b"Content-Type: text/plain; charset=utf-8\r\n" in rest and b"Connection: close\r\n" in rest
        assert reason.encode() in answer.split(b"\r\n\r\n", 1)[1], answer
        assert answer.count(b"HTTP/1.1 ") == 1  # the body was not read as a second request
        assert server.store.readings() == [] and server.stats.posts == 0
        assert server.stats.refused == ((400, 1),)


def test_a_malformed_request_line_is_a_plain_400_not_html(hes: ReceiveServer) -> None:
    with raw_request(hes.port, "POST / HTTP/1.1 extra\nHost: x\n") as sock:
        answer = read_answer(sock)
    assert answer.startswith(b"HTTP/1.1 400 ") and b"text/plain" in answer and b"<html" not in answer.lower(), answer
    assert hes.stats.refused == ((400, 1),)


def test_a_head_that_never_ends_is_408_and_closed_before_it_frees_its_slot() -> None:
    with ReceiveServer(max_connections=4, per_address=4, head_seconds=1) as server:
        stalled = [raw_request(server.port, "POST / HTTP/1.1") for _ in range(4)]  # the request line, then nothing
        for sock in stalled:
            sock.settimeout(30)
            answer = read_answer(sock)  # the server answers and closes well before our 30 s timeout
            assert answer.startswith(b"HTTP/1.1 408 ") and b"within 1 s" in answer, answer
            sock.close()
        assert wait_until(lambda: server._server.active == 0)
        assert post(server, (line() + "\n").encode())[0] == 204
        assert server.stats.refused == ((408, 4),)


def test_a_head_trickled_byte_by_byte_is_cut_off_at_its_deadline() -> None:
    head = b"POST / HTTP/1.1\r\nHost: x\r\n" + b"X-Slow: " + b"a" * 10_000
    with ReceiveServer(head_seconds=1) as server:
        with socket.create_connection(("127.0.0.1", server.port), timeout=30) as sock:
            answer = b""
            for byte in head:  # a byte every 50 ms: each read is quick, the head never completes
                try:
                    sock.sendall(bytes((byte,)))
                except OSError:
                    break
                readable, _, _ = select.select([sock], [], [], 0.05)
                if readable:
                    answer = read_answer(sock)
                    break
        assert answer.startswith(b"HTTP/1.1 408 "), answer


def test_an_idle_keep_alive_connection_is_closed_after_the_head_deadline(hes: ReceiveServer) -> None:
    # The default deadline (10 s): the server closes before our 30 s read timeout (60 s before).
    body = (line() + "\n").encode()
    with raw_request(hes.port, f"POST / HTTP/1.1\nHost: x\nContent-Length: {len(body)}\n", body) as sock:
        sock.settimeout(30)
        assert sock.recv(100).startswith(b"HTTP/1.1 204 ")
        assert read_answer(sock) == b""  # closed without an answer: it was idle, not late
    assert hes.stats.rejected == 0 and len(hes.store.readings()) == 1


def test_one_address_cannot_hold_every_connection() -> None:
    with ReceiveServer(max_connections=4, per_address=2) as server:
        held = [socket.create_connection(("127.0.0.1", server.port), timeout=10) for _ in range(2)]
        assert wait_until(lambda: server._server.active == 2)
        with socket.create_connection(("127.0.0.1", server.port), timeout=10) as third:
            answer = read_answer(third)
        assert answer.startswith(b"HTTP/1.1 503 ") and b"from this address" in answer, answer
        conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=10, source_address=("127.0.0.2", 0))
        conn.request("POST", "/", body=(line() + "\n").encode())
        assert conn.getresponse().status == 204  # another address still gets in
        conn.close()
        for sock in held:
            sock.close()
        assert server.stats.busy == 1 and server.stats.refused == ((503, 1),)


def test_cli_receive_cuts_stalled_heads_and_counts_every_refusal(tmp_path: Path) -> None:
    secret = tmp_path / "password"
    secret.write_text("s3cret\n")
    process = run_receive("--username", "gw", "--password-file", str(secret), "--max-connections", "6", "--path", "/in")
    try:
        banner = process.stdout.readline()
        assert "(basic auth)" in banner, banner + process.stderr.read()
        port = int(banner.split()[3].rsplit(":", 1)[1].split("/")[0])
        # Three connections from one address send a request line and then nothing: with the
        # default cap of half the connections, that address is full; others are served.
        stalled = [raw_request(port, "POST /in HTTP/1.1") for _ in range(3)]
        with socket.create_connection(("127.0.0.1", port), timeout=30) as fourth:
            assert read_answer(fourth).startswith(b"HTTP/1.1 503 ")
        body = (line() + "\n").encode()

        def post_from(host: str, path: str = "/in", auth: str = "gw:s3cret", data: bytes = body) -> int:
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30, source_address=(host, 0))
            headers = {"Authorization": "Basic " + base64.b64encode(auth.encode()).decode(), "Connection": "close"}
            try:
                conn.request("POST", path, body=data, headers=headers)
                return conn.getresponse().status
            finally:
                conn.close()

        assert post_from("127.0.0.2") == 204
        assert post_from("127.0.0.3", auth="gw:wrong") == 401
        assert post_from("127.0.0.4", data=b"bad\n") == 400
        assert post_from("127.0.0.5", path="/elsewhere") == 404
        for sock in stalled:  # each is answered 408 and closed at the default 10 s deadline
            sock.settimeout(30)
            assert read_answer(sock).startswith(b"HTTP/1.1 408 ")
            sock.close()
        process.send_signal(signal.SIGTERM)
        assert process.wait(20) == 0
        out = process.stdout.read()
        assert ("stopped: 1 POSTs, 1 lines, 1 new readings, 7 refused (400: 1, 401: 1, 404: 1, 408: 3, 503: 1),"
                " 1 connections turned away as busy") in out, out
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
        process.stdout.close()
        process.stderr.close()


@pytest.mark.parametrize("request_bytes, status, reason", [
    (b"POST /stream\r\n\r\n", 400, b"bad request line"),
    (b"POST /stream HTTP/2.0\r\nHost: x\r\n\r\n", 505, b"only HTTP/1.0 and HTTP/1.1"),
    (b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n", 505, b"only HTTP/1.0 and HTTP/1.1"),
    (b"POST /" + b"a" * 70000 + b" HTTP/1.1\r\n\r\n", 414, b"too long"),
    (b"POST / HTTP/1.1\r\nHost: x\r\nX-A: " + b"a" * 70000 + b"\r\n\r\n", 431, b"too long"),
    (b"POST / HTTP/1.1\r\nHost: x\r\n" + b"X-A: a\r\n" * 120 + b"\r\n", 431, b"too many headers"),
    (b"POST / x HTTP/1.1\r\nHost: x\r\n\r\n", 400, b"bad request line"),
    (b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03\r\n\r\n", 400, b"bad request line"),
    (b"POST / HTTP/1.1\r\nHost: x\r\n: x\r\nContent-Length: 0\r\n\r\n", 400, b"header name is empty"),
    (b"POST / HTTP/1.1\r\nHost: x\r\nX-A: a\x00b\r\nContent-Length: 0\r\n\r\n", 400, b"control character"),
    (b"POST / HTTP/1.1\r\nContent-Length: 0\r\n\r\n", 400, b"needs a Host header"),
    (b"POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n", 400, b"HTTP/1.0 request"),
])
def test_what_the_parser_refuses_is_a_plain_counted_answer_never_a_traceback(
        hes: ReceiveServer, caplog: pytest.LogCaptureFixture, request_bytes: bytes, status: int, reason: bytes) -> None:
    with socket.create_connection(("127.0.0.1", hes.port), timeout=10) as sock:
        sock.sendall(request_bytes)
        answer = read_answer(sock)
    assert answer.startswith(f"HTTP/1.1 {status} ".encode()) and reason in answer, answer[:300]
    assert b"a" * 100 not in answer  # nothing of the input is echoed
    assert hes.stats.refused == ((status, 1),) and hes.store.readings() == []
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR], [r.getMessage() for r in caplog.records]


def test_an_empty_line_before_the_request_line_is_ignored(hes: ReceiveServer) -> None:
    body = (line() + "\n").encode()
    with raw_request(hes.port, f"\nPOST / HTTP/1.1\nHost: x\nContent-Length: {len(body)}\nConnection: close\n",
                     body) as sock:
        assert read_answer(sock).startswith(b"HTTP/1.1 204 ")
    assert len(hes.store.readings()) == 1
