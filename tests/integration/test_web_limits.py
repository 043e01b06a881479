"""The web UI stays up and reachable for its owner, and its HTTP parser refuses what is malformed.

Everything goes through real sockets to a real gateway's web server: slow clients that never
finish a request head, floods of connections and of wrong passwords from many addresses, and
malformed framing, Host headers and JSON. Linux routes all of 127/8 to the loopback device,
so a client socket bound to 127.0.0.2 is "another address" (the owner) while 127.0.0.1 or
127.0.0.10..40 are the attackers. Memory is read from the gateway process's
``/proc/<pid>/status``; nothing here asserts how long anything took.
"""

from __future__ import annotations

import base64
import http.client
import json
import re
import socket
import ssl
import threading
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlencode

import pytest
from web_harness import fresh_limiter  # noqa: F401  (autouse)
from web_harness import ADMIN, PASSWORD, WebGateway, free_port, start_gateway, wait_until

import gwkit
from wmbus_stream.web import auth
from wmbus_stream.web.auth import Credential, write_password
from wmbus_stream.web.server import HEAD_SECONDS

pytestmark = pytest.mark.integration

OWNER = "127.0.0.2"


def basic(user: str, password: str) -> dict[str, str]:
    """The Authorization header of HTTP basic auth."""
    return {"Authorization": "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()}


def request(port: int, method: str, path: str, body: bytes | None = None, headers: dict[str, str] | None = None,
            *, source: str = OWNER, context: ssl.SSLContext | None = None) -> tuple[int, dict[str, str], bytes]:
    """One HTTP request from ``source``: status, headers (lower-case names) and body."""
    if context is None:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60, source_address=(source, 0))
    else:
        conn = http.client.HTTPSConnection("127.0.0.1", port, timeout=60, source_address=(source, 0),
                                           context=context)
    try:
        conn.request(method, path, body=body, headers=headers or {})
        answer = conn.getresponse()
        return answer.status, {k.lower(): v for k, v in answer.getheaders()}, answer.read()
    finally:
        conn.close()


def connect(port: int, source: str = "127.0.0.1") -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port), timeout=60, source_address=(source, 0))
    return sock


def raw(port: int, data: bytes, source: str = OWNER) -> bytes:
    """Send ``data`` on a new connection and read until the gateway closes it."""
    with connect(port, source) as sock:
        sock.sendall(data)
        got = b""
        while chunk := sock.recv(65536):
            got += chunk
        return got


def answered(sock: socket.socket) -> bytes | None:
    """What the gateway sent on ``sock`` so far without waiting (None: nothing yet, b'' once closed)."""
    sock.setblocking(False)
    try:
        return sock.recv(65536)
    except BlockingIOError:
        return None
    except ConnectionResetError:
        return b""
    finally:
        sock.setblocking(True)


class Drip:
    """Sockets that send one byte of an endless request head every ``every`` seconds."""

    def __init__(self, socks: list[socket.socket], every: float) -> None:
        self.socks, self.every = socks, every
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        while not self.stop.wait(self.every):
            for sock in self.socks:
                try:
                    sock.send(b"x")
                except OSError:
                    pass

    def close(self) -> None:
        self.stop.set()
        self.thread.join(5)
        for sock in self.socks:
            sock.close()


@pytest.fixture(scope="module")
def gw(tmp_path_factory: pytest.TempPathFactory) -> Iterator[WebGateway]:
    running = start_gateway(tmp_path_factory.mktemp("web-limits"), meters=5)
    try:
        yield running
    finally:
        running.close()


def head(port: int) -> bytes:
    return f"GET /api/v1/status HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nX-Slow: ".encode()


# -- slow clients and connection limits -----------------------------------------------------------


def test_slow_clients_from_one_or_several_addresses_leave_room_for_the_owner(gw: WebGateway) -> None:
    web = gw.web
    web.head_seconds = 600.0  # here the slow heads must outlast the test; the deadline has its own test
    opened: dict[str, list[socket.socket]] = {}
    seen: dict[socket.socket, bytes] = {}

    def open_slow(source: str, count: int) -> None:
        for _ in range(count):
            sock = connect(gw.port, source)
            sock.sendall(head(gw.port))
            opened.setdefault(source, []).append(sock)

    def refused(source: str) -> int:
        for sock in opened[source]:
            seen[sock] = seen.get(sock, b"") + (answered(sock) or b"")
        return sum(1 for sock in opened[source] if seen[sock].startswith(b"HTTP/1.1 503"))

    def wait_refused(source: str, count: int) -> None:
        wait_until(lambda: refused(source) == count or None, f"{count} connections from {source} answered 503")

    wait_until(lambda: web.open_connections == 0 or None, "no connection left open by earlier tests")
    refused_before = web.refused_connections
    try:
        # 40 slow connections from 127.0.0.1: it may hold per_address of them, the rest get 503 at once
        open_slow("127.0.0.1", 40)
        wait_refused("127.0.0.1", 40 - web.per_address)
        assert all(b"from this address" in seen[s] for s in opened["127.0.0.1"] if seen[s])
        status, _, _ = request(gw.port, "GET", "/api/v1/status", headers=basic(ADMIN, PASSWORD))
        assert status == 200, "the owner, from another address, is served"
        wait_until(lambda: web.open_connections == web.per_address or None, "the owner's connection released")

        # two more addresses take their cap, which fills all but the reserve; two more get two each
        filled = web.max_connections - web.reserve
        for n in range((filled - web.per_address) // web.per_address):
            open_slow(f"127.0.0.{10 + n}", web.per_address + 1)
            wait_refused(f"127.0.0.{10 + n}", 1)
        for source in ("127.0.0.20", "127.0.0.21"):
            open_slow(source, 4)
            wait_refused(source, 2)
        status, _, _ = request(gw.port, "GET", "/api/v1/status", headers=basic(ADMIN, PASSWORD))
        assert status == 200, "the owner is served while four addresses hold connections"
        held = [sock for socks in opened.values() for sock in socks if not seen[sock]]
        assert len(held) == filled + 4
        assert all(answered(sock) is None for sock in held), "the slow heads are all still held"
        assert web.refused_connections - refused_before == 40 - web.per_address + 2 + 2 * 2
    finally:
        for socks in opened.values():
            for sock in socks:
                sock.close()
        web.head_seconds = HEAD_SECONDS


def test_a_request_head_or_body_must_arrive_by_its_deadline_however_it_trickles(gw: WebGateway) -> None:
    # a byte every half second: a timeout per read never fires, the deadline for the whole head does
    sock = connect(gw.port)
    sock.sendall(head(gw.port))
    drip = Drip([sock], 0.5)
    try:
        got = wait_until(lambda: answered(sock) or None, "an answer to a head that never ends", timeout=90)
        assert got.startswith(b"HTTP/1.1 408") and b"did not arrive in time" in got
        assert b"Server: wmbus-stream\r\n" in got
    finally:
        drip.close()

    # the body of the login form, trickled: 408 once its deadline (grace + length at the least rate) passes
    sock = connect(gw.port)
    sock.sendall(f"POST /login HTTP/1.1\r\nHost: 127.0.0.1:{gw.port}\r\nOrigin: {gw.base}\r\n"
                 "Content-Type: application/x-www-form-urlencoded\r\nContent-Length: 4000\r\n\r\nuser=".encode())
    drip = Drip([sock], 0.5)
    try:
        got = wait_until(lambda: answered(sock) or None, "an answer to a body that trickles", timeout=90)
        assert got.startswith(b"HTTP/1.1 408") and b"did not arrive within" in got, got[:300]
    finally:
        drip.close()

    # an idle keep-alive connection is closed without an answer
    sock = connect(gw.port)
    got = []

    def closed() -> bool:
        chunk = answered(sock)
        got.append(chunk or b"")
        return chunk == b""

    try:
        sock.sendall(f"GET /login HTTP/1.1\r\nHost: 127.0.0.1:{gw.port}\r\n\r\n".encode())
        wait_until(closed, "the idle keep-alive connection closed", timeout=90)
        assert b"".join(got).startswith(b"HTTP/1.1 200") and b"".join(got).count(b"HTTP/1.1 ") == 1
    finally:
        sock.close()
    status, _, _ = request(gw.port, "GET", "/login", source="127.0.0.1")
    assert status == 200, "127.0.0.1 is served again once its slow connections are gone"


# -- password checks: memory, throttling, the owner's login -----------------------------------------


def vm(pid: int) -> dict[str, int]:
    """VmHWM and VmRSS of a process in bytes."""
    found = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        name, _, value = line.partition(":")
        if name in ("VmHWM", "VmRSS"):
            found[name] = int(value.split()[0]) * 1024
    return found


def test_concurrent_wrong_guesses_keep_the_gateway_memory_bounded(
        config: gwkit.ConfigFile, gateway: object) -> None:
    port = free_port()
    config.write({"receiver.protocol": "simulator", "simulator.meters": "5", "web.enabled": "true",
                  "web.listen": f"127.0.0.1:{port}", "receiving.server.url": f"http://127.0.0.1:{free_port()}/in"})
    write_password(config.state, ADMIN, PASSWORD)
    cred = Credential.parse((config.state / auth.PASSWORD_FILE).read_text())
    process = gateway(config)  # type: ignore[operator]
    process.wait_log(r"web UI on http://127\.0\.0\.1")
    assert request(port, "GET", "/api/v1/status", headers=basic(ADMIN, "warm-up-guess"), source="127.0.0.99")[0] == 401
    before = vm(process.pid)

    statuses: list[int] = []
    lock = threading.Lock()
    start = threading.Barrier(32)

    def guess(n: int) -> None:
        start.wait()
        status = request(port, "GET", "/api/v1/status", headers=basic(ADMIN, f"wrong-{n}"), source=f"127.0.1.{n + 1}")[0]
        with lock:
            statuses.append(status)

    threads = [threading.Thread(target=guess, args=(n,)) for n in range(32)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    after = vm(process.pid)
    assert sorted(set(statuses)) <= [401, 429] and len(statuses) == 32, statuses
    assert statuses.count(401) >= auth.WORKERS, "guesses were checked"
    bound = auth.WORKERS * cred.memory + 16 * 1024 * 1024  # the checks' memory, and room for 32 threads
    growth = after["VmHWM"] - before["VmHWM"]
    assert growth < bound, (f"32 concurrent guesses grew the gateway's peak memory by {growth >> 20} MiB "
                            f"(at most {bound >> 20} MiB: {auth.WORKERS} checks of {cred.memory >> 20} MiB)")
    assert request(port, "GET", "/api/v1/status", headers=basic(ADMIN, PASSWORD))[0] == 200
    assert process.alive()


def test_the_right_password_gets_in_whatever_others_and_the_same_address_guess(gw: WebGateway) -> None:
    limiter = gw.web.limiter
    before = limiter.failures_total
    stop = threading.Event()
    guessers = [f"127.0.0.{10 + n}" for n in range(13)]

    def guess(source: str) -> None:
        n = 0
        while not stop.is_set():
            n += 1
            try:
                request(gw.port, "GET", "/api/v1/status", headers=basic(ADMIN, f"guess-{n}"), source=source)
            except OSError:
                pass

    threads = [threading.Thread(target=guess, args=(source,), daemon=True) for source in guessers]
    for thread in threads:
        thread.start()
    try:
        wait_until(lambda: (limiter.failures_total - before > limiter.global_per_minute
                            and limiter.failures(guessers[0]) > limiter.free) or None,
                   "more failed logins than the global limit a minute, and one address past its free ones",
                   timeout=60)
        form = urlencode({"user": ADMIN, "password": PASSWORD}).encode()
        status, headers, _ = request(gw.port, "POST", "/login", form,
                                     {"Content-Type": "application/x-www-form-urlencoded", "Origin": gw.base})
        assert status == 303 and "wmbus_session=" in headers["set-cookie"], "the owner's form login from another address"
        status, _, _ = request(gw.port, "GET", "/api/v1/status", headers=basic(ADMIN, PASSWORD), source=guessers[0])
        assert status == 200, "the right password from an address that is guessing too"
        status, _, _ = request(gw.port, "GET", "/api/v1/status", headers=basic(ADMIN, "not-it"), source=OWNER)
        assert status == 401
    finally:
        stop.set()
        limiter.clear()
        for thread in threads:
            thread.join(90)


# -- the parser -------------------------------------------------------------------------------------


def test_content_length_must_be_one_number_in_ascii_digits(gw: WebGateway) -> None:
    login = f"POST /login HTTP/1.1\r\nHost: 127.0.0.1:{gw.port}\r\nOrigin: {gw.base}\r\n" \
            "Content-Type: application/x-www-form-urlencoded\r\n"
    body = b"user=admin&password=x"
    cases = {
        "a superscript two": (b"Content-Length: \xb2\r\n", 400, b"ASCII digits"),
        "a sign": (b"Content-Length: +21\r\n", 400, b"ASCII digits"),
        "hex": (b"Content-Length: 0x15\r\n", 400, b"ASCII digits"),
        "two numbers": (b"Content-Length: 21, 21\r\n", 400, b"ASCII digits"),
        "thirteen digits": (b"Content-Length: 0000000000021\r\n", 400, b"ASCII digits"),
        "two headers, the same": (b"Content-Length: 21\r\nContent-Length: 21\r\n", 400, b"Content-Length is given 2 times"),
        "two headers, different": (b"Content-Length: 5\r\nContent-Length: 21\r\n", 400, b"Content-Length is given 2 times"),
        "chunked": (b"Transfer-Encoding: chunked\r\n", 411, b"not a chunked body"),
        "chunked and a length": (b"Transfer-Encoding: chunked\r\nContent-Length: 21\r\n", 400, b"not both"),
    }
    for what, (framing, status, reason) in cases.items():
        got = raw(gw.port, login.encode() + framing + b"\r\n" + body)
        assert got.startswith(f"HTTP/1.1 {status} ".encode()), f"{what}: {got[:200]!r}"
        assert reason in got and b"Traceback" not in got, what
    got = raw(gw.port, login.encode() + b"Content-Length: 21\r\nConnection: close\r\n\r\n" + body)
    assert got.startswith(b"HTTP/1.1 401"), "one plain Content-Length is read"


def test_malformed_headers_get_a_4xx_never_a_500(gw: WebGateway) -> None:
    host = f"Host: 127.0.0.1:{gw.port}\r\n"
    form = "Content-Type: application/x-www-form-urlencoded\r\nContent-Length: 10\r\n\r\nuser=admin"
    cases = {
        "basic auth that is not ASCII": (f"GET /api/v1/status HTTP/1.1\r\n{host}Authorization: Basic \xff\xfe\r\n"
                                         "Connection: close\r\n\r\n", 401),
        "basic auth that is not base64": (f"GET /api/v1/status HTTP/1.1\r\n{host}Authorization: Basic ***\r\n"
                                          "Connection: close\r\n\r\n", 401),
        "a Referer that is no URL": (f"POST /login HTTP/1.1\r\n{host}Referer: http://[::1\r\n{form}", 403),
        "an Origin that is not ASCII": (f"POST /login HTTP/1.1\r\n{host}Origin: http://\xe9vil\r\n{form}", 403),
        "a cookie that is not ASCII": (f"GET / HTTP/1.1\r\n{host}Cookie: wmbus_session=\xff; x=\"\r\n"
                                       "Connection: close\r\n\r\n", 401),
    }
    for what, (text, status) in cases.items():
        got = raw(gw.port, text.encode("latin-1"))
        assert got.startswith(f"HTTP/1.1 {status} ".encode()), f"{what}: {got[:120]!r}"


def test_json_that_is_too_deep_or_not_text_is_a_400_with_the_reason(gw: WebGateway) -> None:
    auth_json = {"Content-Type": "application/json", **basic(ADMIN, PASSWORD)}
    cases = {
        "nested 30,000 deep": (b"[" * 30000 + b"]" * 30000, "nested more than"),
        "nested in an object": (b'{"changes": ' + b'{"a": ' * 40 + b"1" + b"}" * 41, "nested more than"),
        "not UTF-8": (b'{"changes": {"filter.manufacturer": "\xff\xfe"}}', "not UTF-8"),
        "a lone surrogate": (b'{"changes": {"filter.manufacturer": "\\ud800"}}', "lone surrogate"),
        "a lone surrogate in a key": (b'{"changes": {"\\udc00": "x"}}', "lone surrogate"),
        "NaN": (b'{"changes": {}, "note": NaN}', "not a JSON number"),
    }
    for what, (body, reason) in cases.items():
        for method, path in (("PATCH", "/api/v1/config"), ("POST", "/api/v1/config/check"),
                             ("PUT", "/api/v1/config")):
            status, _, data = request(gw.port, method, path, body, auth_json)
            assert status == 400, f"{what}: {method} {path} answered {status} {data[:200]!r}"
            answer = json.loads(data)
            assert answer["error"] == "bad_request" and reason in answer["reason"], (what, answer)
    assert gw.gateway.config.filter_manufacturer == ()


def test_only_the_names_the_gateway_answers_to_are_accepted_in_host(gw: WebGateway) -> None:
    """A page served under an attacker's DNS name (rebound to the gateway) is refused, not same-origin."""
    evil = f"evil.example:{gw.port}"
    form = urlencode({"user": ADMIN, "password": PASSWORD}).encode()
    status, headers, data = request(gw.port, "POST", "/login", form,
                                    {"Host": evil, "Origin": f"http://{evil}",
                                     "Content-Type": "application/x-www-form-urlencoded"})
    assert status == 421 and "set-cookie" not in headers, status
    assert b"'evil.example'" in data and b"web.hosts" in data
    assert request(gw.port, "GET", "/api/v1/status", headers={"Host": evil, **basic(ADMIN, PASSWORD)})[0] == 421

    for host in (f"127.0.0.1:{gw.port}", f"localhost:{gw.port}", "localhost", "127.0.0.1", "LOCALHOST.",
                 f"{socket.gethostname()}:{gw.port}"):
        assert request(gw.port, "GET", "/login", headers={"Host": host})[0] == 200, host
    for host, status in (("127.0.0.3", 421), ("[::1]", 421), ("evil.example", 421), ("a b", 400),
                         ("evil.example@127.0.0.1", 400), ("", 400)):
        assert request(gw.port, "GET", "/login", headers={"Host": host})[0] == status, host
    two = raw(gw.port, f"GET /login HTTP/1.1\r\nHost: 127.0.0.1:{gw.port}\r\nHost: evil.example\r\n\r\n".encode())
    assert two.startswith(b"HTTP/1.1 400") and b"Host is given 2 times" in two
    none = raw(gw.port, b"GET /login HTTP/1.1\r\nConnection: close\r\n\r\n")
    assert none.startswith(b"HTTP/1.1 400") and b"needs a Host header" in none

    # a name the owner adds to web.hosts is accepted at once, same-origin checks and all
    status, body = gw.api("PATCH", "/api/v1/config", {"changes": {"web.hosts": "Evil.Example"}})
    assert status == 200, body
    try:
        status, headers, _ = request(gw.port, "POST", "/login", form,
                                     {"Host": evil, "Origin": f"http://{evil}",
                                      "Content-Type": "application/x-www-form-urlencoded"})
        assert status == 303 and "wmbus_session=" in headers["set-cookie"]
    finally:
        assert gw.api("PATCH", "/api/v1/config", {"changes": {"web.hosts": None}})[0] == 200
    assert request(gw.port, "GET", "/login", headers={"Host": evil})[0] == 421


def test_server_header_has_no_version_and_tls_answers_carry_hsts(gw: WebGateway, tmp_path: Path) -> None:
    for method, path, headers in (("GET", "/login", {}), ("GET", "/api/v1/status", {}),
                                  ("GET", "/api/v1/status", basic(ADMIN, PASSWORD))):
        status, answer, _ = request(gw.port, method, path, headers=headers)
        assert answer["server"] == "wmbus-stream", (path, status, answer["server"])
        assert "strict-transport-security" not in answer, "no HSTS over plain HTTP"
    malformed = raw(gw.port, b"GET /login HTTP/1.1\r\n" + b"X: y\r\n" * 101 + b"\r\n")  # too many headers
    assert malformed.startswith(b"HTTP/1.1 431"), malformed[:200]
    assert re.search(rb"^Server: wmbus-stream\r$", malformed, re.MULTILINE), malformed[:200]

    trustme = pytest.importorskip("trustme")
    ca = trustme.CA()
    leaf = ca.issue_cert("127.0.0.1")
    cert, key = tmp_path / "web.pem", tmp_path / "web.key"
    cert.write_bytes(b"".join(blob.bytes() for blob in leaf.cert_chain_pems))
    leaf.private_key_pem.write_to_path(str(key))
    (tmp_path / "gw").mkdir()
    secure = start_gateway(tmp_path / "gw", {"web.tls.cert": str(cert), "web.tls.key": str(key)}, meters=5)
    try:
        context = ssl.create_default_context()
        ca.configure_trust(context)
        for headers in ({}, basic(ADMIN, PASSWORD)):
            status, answer, _ = request(secure.port, "GET", "/api/v1/status", headers=headers, context=context)
            assert answer["strict-transport-security"] == "max-age=31536000", status
            assert answer["server"] == "wmbus-stream"
    finally:
        secure.close()
