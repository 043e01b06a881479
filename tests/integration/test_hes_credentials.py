"""Per-gateway credentials of the reference HES: a gateway pushes as its serial, only its own lines, checked before the body."""

from __future__ import annotations

import base64
import contextlib
import os
import signal
import socket
import stat
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from report_lines import line
from test_hes import post, raw_request, read_answer, wait_until
from wmbus_stream.errors import HesError
from wmbus_stream.hes import ReceiveServer, SqliteStore
from wmbus_stream.hes.credentials import GatewayFile, parse_basic

A, B = "00000161", "00000162"


def basic(user: str, password: str) -> str:
    return "Authorization: Basic " + base64.b64encode(f"{user}:{password}".encode()).decode() + "\n"


@pytest.fixture
def fleet(tmp_path: Path) -> Iterator[tuple[ReceiveServer, GatewayFile, dict[str, str]]]:
    """A receiver with a gateways file of two gateways, and their generated passwords."""
    file = GatewayFile(tmp_path / "gateways")
    passwords = {serial: file.add(serial) for serial in (A, B)}
    with ReceiveServer(credentials=GatewayFile(tmp_path / "gateways")) as server:
        yield server, file, passwords


def test_a_gateway_pushes_its_own_lines_as_its_serial(fleet: tuple[ReceiveServer, GatewayFile, dict[str, str]]) -> None:
    server, _, passwords = fleet
    assert post(server, (line(serial=A) + "\n").encode(), auth=(A, passwords[A]))[0] == 204
    assert post(server, (line(serial=B) + "\n").encode(), auth=(B, passwords[B]))[0] == 204
    assert [h.gateway for h in server.store.heard()] == [A, B]


def test_a_line_of_another_serial_is_403_and_nothing_of_the_report_is_stored(
        fleet: tuple[ReceiveServer, GatewayFile, dict[str, str]]) -> None:
    server, _, passwords = fleet
    body = "".join(line(serial=s, date=f"2026-11-24 10:15:0{i}") + "\n" for i, s in enumerate((A, A, B))).encode()
    status, text, _ = post(server, body, auth=(A, passwords[A]))
    assert status == 403 and text.startswith(f"line 3: gateway {B} in a report of gateway {A}"), text
    assert server.store.heard() == [] and server.stats.refused == ((403, 1),)


@pytest.mark.parametrize("who", ["wrong password", "other gateway's password", "unknown serial", "no header",
                                 "not basic", "not base64", "no colon"])
def test_a_wrong_credential_is_refused_before_the_body(
        fleet: tuple[ReceiveServer, GatewayFile, dict[str, str]], who: str) -> None:
    server, _, passwords = fleet
    header = {
        "wrong password": basic(A, passwords[A] + "x"),
        "other gateway's password": basic(A, passwords[B]),
        "unknown serial": basic("00000999", passwords[A]),
        "no header": "",
        "not basic": f"Authorization: Bearer {passwords[A]}\n",
        "not base64": "Authorization: Basic %%%\n",
        "no colon": "Authorization: Basic " + base64.b64encode(A.encode()).decode() + "\n",
    }[who]
    # The client waits for 100 Continue before it sends its 50 MB body: it gets 401 instead.
    head = f"POST / HTTP/1.1\nHost: x\nContent-Length: 50000000\nExpect: 100-continue\n{header}"
    with raw_request(server.port, head) as sock:
        answer = read_answer(sock)
    assert answer.startswith(b"HTTP/1.1 401 ") and b"100 Continue" not in answer, answer[:200]
    # Without Expect: the answer comes while the body is still being sent, which is never finished.
    head = f"POST / HTTP/1.1\nHost: x\nContent-Length: 50000000\n{header}"
    with raw_request(server.port, head, (line(serial=A) + "\n").encode()) as sock:
        answer = read_answer(sock)
    assert answer.startswith(b"HTTP/1.1 401 ") and b"WWW-Authenticate: Basic" in answer
    assert server.store.heard() == [] and server.stats.unauthorized == 2


def test_the_file_is_read_again_when_it_changes(fleet: tuple[ReceiveServer, GatewayFile, dict[str, str]],
                                                 tmp_path: Path) -> None:
    server, file, passwords = fleet
    assert post(server, (line(serial=B) + "\n").encode(), auth=(B, passwords[B]))[0] == 204
    assert file.remove(B)
    assert wait_until(lambda: post(server, (line(serial=B, date="2026-11-24 10:16:00") + "\n").encode(),
                                   auth=(B, passwords[B]))[0] == 401)
    new = file.add("00000163")
    assert wait_until(lambda: post(server, (line(serial="00000163") + "\n").encode(),
                                   auth=("00000163", new))[0] == 204)
    # A broken edit keeps the credentials in force before it: A still gets in, nobody else does.
    with open(tmp_path / "gateways", "a", encoding="utf-8") as handle:
        handle.write("this is not a credential\n")
    os.utime(tmp_path / "gateways", ns=(1, 1))
    assert wait_until(lambda: post(server, (line(serial=A, date="2026-11-24 10:17:00") + "\n").encode(),
                                   auth=(A, passwords[A]))[0] == 204)
    assert post(server, (line(serial=A) + "\n").encode(), auth=(A, "guess"))[0] == 401


def test_the_file_is_0600_and_refuses_what_is_not_a_gateway_credential(tmp_path: Path) -> None:
    file = GatewayFile(tmp_path / "gateways")
    file.add(A)
    assert stat.S_IMODE(os.stat(tmp_path / "gateways").st_mode) == 0o600
    with pytest.raises(HesError, match="is not a gateway serial"):
        file.add("1234")
    with pytest.raises(HesError, match="at least 16 characters"):
        file.add(B, "short")
    text = (tmp_path / "gateways").read_text()
    for broken, reason in ((text + text, "listed twice"), (text.replace(A, "gw", 1), "not an 8-digit gateway serial"),
                           (text + "x:y\n", "line 2: not a wmbus-stream password line")):
        (tmp_path / "bad").write_text(broken)
        with pytest.raises(HesError, match=reason):
            GatewayFile(tmp_path / "bad")


def test_parse_basic() -> None:
    assert parse_basic("Basic " + base64.b64encode(b"a:b:c").decode()) == ("a", "b:c")
    assert parse_basic("basic " + base64.b64encode(b":").decode()) == ("", "")
    assert parse_basic(None) is None and parse_basic("Basic") is None
    assert parse_basic("Basic " + base64.b64encode(b"\xff:x").decode()) is None


def receive(*args: str) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, "-m", "wmbus_stream", "receive", *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "wmbus_stream", "receive", *args], capture_output=True, text=True,
                          timeout=60)


def test_the_command_line_manages_the_file_and_serves_it(tmp_path: Path) -> None:
    gateways = str(tmp_path / "gateways")
    added = cli("credentials", "add", A, "--gateways", gateways)
    assert added.returncode == 0, added.stderr
    password = added.stdout.split("password ")[1].split()[0]
    assert cli("credentials", "list", "--gateways", gateways).stdout == f"{A}\n"
    assert cli("credentials", "add", "12", "--gateways", gateways).returncode == 2
    assert "is not in" in cli("credentials", "remove", B, "--gateways", gateways).stderr
    missing = receive("--listen", "127.0.0.1:0", "--gateways", str(tmp_path / "none"))
    assert missing.wait(30) == 1 and "credentials add SERIAL" in missing.communicate()[1]
    db = str(tmp_path / "hes.sqlite")
    with receive("--listen", "127.0.0.1:0", "--gateways", gateways, "--db", db) as process:
        try:
            banner = process.stdout.readline()
            assert f"per-gateway credentials of {gateways}" in banner, banner + process.stderr.read()
            port = int(banner.split()[3].rsplit(":", 1)[1].strip("/"))
            head = f"POST / HTTP/1.1\nHost: x\nTransfer-Encoding: chunked\n{basic(A, password)}"
            body = (line(serial=A) + "\n").encode()
            with raw_request(port, head, b"%x\r\n%s\r\n0\r\n\r\n" % (len(body), body)) as sock:
                assert sock.recv(100).startswith(b"HTTP/1.1 204 ")
            # SIGTERM while a report is half sent: the receiver stops, storing nothing of it.
            other = (line(serial=A, date="2026-11-24 10:20:00") + "\n").encode()
            with raw_request(port, head, b"%x\r\n%s\r\n" % (len(other), other)):
                process.send_signal(signal.SIGTERM)
                assert process.wait(10) == 0
            out = process.stdout.read()
            assert "stopped: 1 POSTs, 1 lines, 1 new readings" in out, out
        finally:
            if process.poll() is None:
                process.kill()
    with contextlib.closing(SqliteStore(db)) as kept:
        assert [h.date for h in kept.heard()] == ["2026-11-24 10:15:02"]


def test_a_receiver_refuses_both_kinds_of_credential(tmp_path: Path) -> None:
    gateways = tmp_path / "gateways"
    GatewayFile(gateways).add(A)
    both = cli("--gateways", str(gateways), "--username", "gw", "--password", "x" * 12)
    assert both.returncode == 2 and "exclude each other" in both.stderr
    broken = tmp_path / "broken"
    broken.write_text("nonsense\n")
    refused = cli("--gateways", str(broken))
    assert refused.returncode == 2 and "line 1" in refused.stderr
    with pytest.raises(ValueError, match="not both"):
        ReceiveServer(username="gw", password="pw", credentials=GatewayFile(gateways))


def test_an_empty_gateways_file_is_warned_about_and_a_busy_port_is_named(tmp_path: Path) -> None:
    gateways = tmp_path / "gateways"
    gateways.write_text("")
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        run = cli("--listen", f"127.0.0.1:{port}", "--gateways", str(gateways))
    assert run.returncode == 1 and "Traceback" not in run.stderr, run.stderr
    assert "lists no gateway yet" in run.stderr and f"cannot listen on 127.0.0.1:{port}" in run.stderr, run.stderr
    cert = tmp_path / "cert.pem"
    cert.write_text("not a certificate\n")
    run = cli("--listen", "127.0.0.1:0", "--no-auth", "--tls-cert", str(cert))
    assert run.returncode == 1 and f"cannot use the TLS certificate {cert}" in run.stderr, run.stderr
    assert "at most 4096" in cli("--no-auth", "--max-body-mib", "5000").stderr
