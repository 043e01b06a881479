"""The push client against real servers on 127.0.0.1: the reference HES, a byte-recording
raw-socket server, TLS with a generated CA (trustme) and nginx as an independent server.

Waits between attempts are recorded through the injected ``sleep`` instead of slept, so
backoff and Retry-After are checked exactly without slowing the suite down.
"""

from __future__ import annotations

import base64
import email.utils
import http.server
import logging
import re
import shutil
import socket
import ssl
import struct
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from gwkit import finishes, stop_server
from wmbus_stream import wire
from wmbus_stream.hes import ReceiveServer
from wmbus_stream.io import push as client
from wmbus_stream.io.fetch import fetch
from wmbus_stream.io.http import INTERIM_MAX, HttpError, Timeouts
from wmbus_stream.io.notify import notify

pytestmark = pytest.mark.integration

try:
    import trustme
except ImportError:  # only the TLS and nginx tests need it; they skip
    trustme = None

# Spec section 5 test vector.
TELEGRAM = bytes.fromhex(
    "6044961564010061011B7A970400202F2F02653607426534078201652C072265320712653607626516075265560702FB1A0E"
    "0242FB1A0E028201FB1A0E0222FB1A0E0212FB1A0E0262FB1A090252FB1A0F0202FD1B20C30DFD0F05322E302E310F"
)
UA = "TC65i/0 Profile/IMP-NG Configuration/CLDC-1.1 Model/test Serial/00000161"


def telegram_for(meter: int) -> bytes:
    """The test vector with another meter ID (8 BCD digits from an int)."""
    ident = bytes.fromhex(f"{meter:08d}")[::-1]
    return TELEGRAM[:4] + ident + TELEGRAM[8:]


def line_for(meter: int, serial: str = "00000161", rssi: int = -74) -> bytes:
    """One report line for a meter as the gateway writes it."""
    wired = wire.build_report(telegram_for(meter), "62001772", rssi, 0)
    return f"{serial};{meter:08d};2026-11-24 10:15:02;00;{wired.hex().upper()}\n".encode("ascii")


def report(count: int, serial: str = "00000161") -> list[bytes]:
    return [line_for(61000000 + i, serial) for i in range(count)]


# -------------------------------------------------------------------------------------------
# A raw-socket server that records the exact bytes and answers from a script


@dataclass(frozen=True)
class Respond:
    status: int
    headers: dict[str, str] = field(default_factory=dict)
    body: bytes = b""
    hold: float = 0.0  # keep the connection open this long after answering (ignoring Connection: close)
    interim: bytes = b""  # interim (1xx) answers sent before the final one
    reset: bool = False  # reset the connection after answering instead of closing it


@dataclass(frozen=True)
class Cut:
    """Read the head and ``after`` body bytes, then reset the connection."""

    after: int


@dataclass(frozen=True)
class Hang:
    """Read the whole request and never answer."""


@dataclass(frozen=True)
class Early:
    """Read the head and ``after`` bytes of the body as they are on the wire (chunk framing
    included), answer ``status`` with ``Connection: close`` and close: a careless HES."""

    after: int
    status: int = 200


@dataclass
class Seen:
    raw: bytes
    headers: dict[str, str]
    body: bytes
    chunks: list[int]
    complete: bool
    framing_errors: list[str]


class RawServer:
    """One request per connection; action i answers connection i (the last one repeats)."""

    def __init__(self, *actions: Respond | Cut | Hang | Early):
        self.actions = list(actions)
        self.seen: list[Seen] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._sock = socket.create_server(("127.0.0.1", 0))
        self._sock.settimeout(0.1)
        self.port = self._sock.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}/report"
        self._threads: list[threading.Thread] = []
        self._accept = threading.Thread(target=self._serve, daemon=True)
        self._accept.start()

    def _serve(self) -> None:
        index = 0
        while not self._stop.is_set():
            try:
                conn, _ = self._sock.accept()
            except (TimeoutError, OSError):
                continue
            action = self.actions[min(index, len(self.actions) - 1)]
            index += 1
            thread = threading.Thread(target=self._handle, args=(conn, action), daemon=True)
            thread.start()
            self._threads.append(thread)

    def _handle(self, conn: socket.socket, action: Respond | Cut | Hang | Early) -> None:
        conn.settimeout(5)
        with conn:
            if isinstance(action, Early):
                # Unbuffered reads: what it does not read stays in the kernel, as in a real HES.
                head = bytearray()
                while not head.endswith(b"\r\n\r\n"):
                    head += conn.recv(1)
                body = bytearray()
                while len(body) < action.after and (data := conn.recv(min(65536, action.after - len(body)))):
                    body += data
                with self._lock:
                    self.seen.append(Seen(bytes(head + body), {}, bytes(body), [], False, []))
                conn.sendall(f"HTTP/1.1 {action.status} OK\r\nContent-Length: 0\r\nConnection: close\r\n\r\n".encode())
                return  # closing with the rest of the body unread: the kernel resets the connection
            seen = self._read(conn, action.after if isinstance(action, Cut) else None)
            with self._lock:
                self.seen.append(seen)
            if isinstance(action, Cut):
                # SO_LINGER 0: close with a reset, as a crashing proxy would.
                conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                return
            if isinstance(action, Hang):
                self._stop.wait(10)
                return
            reason = http.server.BaseHTTPRequestHandler.responses.get(action.status, ("",))[0]
            head = f"HTTP/1.1 {action.status} {reason}\r\nContent-Length: {len(action.body)}\r\nConnection: close\r\n"
            head += "".join(f"{k}: {v}\r\n" for k, v in action.headers.items())
            conn.sendall(action.interim + head.encode("latin-1") + b"\r\n" + action.body)  # as http.client reads it
            if action.reset:
                conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                return
            self._stop.wait(action.hold)

    @staticmethod
    def _read(conn: socket.socket, cut_after: int | None) -> Seen:
        stream = conn.makefile("rb")
        raw = bytearray()
        errors: list[str] = []

        def line() -> bytes:
            data = stream.readline(65537)
            raw.extend(data)
            return data

        def read(n: int) -> bytes:
            data = stream.read(n)
            raw.extend(data)
            return data

        headers: dict[str, str] = {}
        line()  # request line
        while (text := line()) not in (b"\r\n", b""):
            name, _, value = text.decode("latin-1").partition(":")
            headers[name.strip().lower()] = value.strip()
        body = bytearray()
        chunks: list[int] = []
        complete = False
        try:
            if headers.get("transfer-encoding", "").lower() == "chunked":
                while True:
                    size_line = line()
                    if not re.fullmatch(rb"[0-9a-fA-F]+\r\n", size_line):
                        errors.append(f"bad size line {size_line!r}")
                        break
                    size = int(size_line, 16)
                    if size == 0:
                        complete = line() == b"\r\n"
                        break
                    chunks.append(size)
                    body += read(size)
                    if read(2) != b"\r\n":
                        errors.append("chunk without CRLF")
                        break
                    if cut_after is not None and len(body) >= cut_after:
                        break
            elif "content-length" in headers:
                body += read(int(headers["content-length"]))
                complete = True
        except OSError as exc:
            errors.append(str(exc))
        return Seen(bytes(raw), headers, bytes(body), chunks, complete, errors)

    def close(self) -> None:
        self._stop.set()
        self._accept.join(2)
        for thread in self._threads:
            thread.join(2)
        self._sock.close()


@pytest.fixture
def raw_server() -> Iterator[Callable[..., RawServer]]:
    servers: list[RawServer] = []

    def make(*actions: Respond | Cut | Hang | Early) -> RawServer:
        server = RawServer(*actions)
        servers.append(server)
        return server

    yield make
    for server in servers:
        server.close()


class Factory:
    """A body factory that counts how often the body was rebuilt."""

    def __init__(self, lines: list[bytes]):
        self.lines = lines
        self.calls = 0

    def __call__(self) -> Iterator[bytes]:
        self.calls += 1
        return iter(self.lines)

    @property
    def body(self) -> bytes:
        return b"".join(self.lines)


# -------------------------------------------------------------------------------------------
# Against the reference HES


def test_push_to_receive_server_is_acknowledged_and_stored() -> None:
    lines = report(50)
    with ReceiveServer(username="gw", password="pa:ss wörd") as hes:
        result = client.push(hes.url, Factory(lines), username="gw", password="pa:ss wörd", deadline=None, user_agent=UA)
        assert result.ok and result.status == 204 and result.attempts == 1 and result.error is None
        assert result.bytes_sent == sum(map(len, lines))
        stored = hes.store.readings()
        assert [r.meter_id for r in stored] == [f"{61000000 + i:08d}" for i in range(50)]
        assert [r.telegram for r in stored] == [telegram_for(61000000 + i) for i in range(50)]
        assert hes.stats.posts == 1 and hes.stats.lines == 50 and hes.stats.readings == 50


def test_push_with_200_ack_and_generator_body() -> None:
    def body() -> Iterator[bytes]:
        yield from report(3)

    with ReceiveServer(ok_status=200) as hes:
        result = client.push(hes.url, body, deadline=None)
        assert result.ok and result.status == 200
        assert len(hes.store.readings()) == 3


# -------------------------------------------------------------------------------------------
# Exact bytes on the wire


def test_wire_format_chunked_auth_user_agent(raw_server, caplog: pytest.LogCaptureFixture) -> None:
    server = raw_server(Respond(204))
    lines = report(120)
    pieces = [b""] + [p for line in lines for p in (line, b"")]  # empty pieces must not end the body
    caplog.set_level(logging.DEBUG)
    result = client.push(server.url, lambda: iter(pieces), username="gw", password="s3cret", deadline=None, user_agent=UA)
    assert result.ok and result.status == 204
    (seen,) = server.seen
    assert seen.complete and not seen.framing_errors
    assert seen.headers["transfer-encoding"] == "chunked"
    assert "content-length" not in seen.headers
    assert seen.headers["authorization"] == "Basic " + base64.b64encode(b"gw:s3cret").decode()
    assert seen.headers["user-agent"] == UA
    assert seen.headers["content-type"] == "text/plain; charset=us-ascii"
    assert seen.raw.startswith(b"POST /report HTTP/1.1\r\n")
    assert seen.body == b"".join(lines)
    assert all(0 < size <= client.CHUNK_SIZE for size in seen.chunks) and len(seen.chunks) > 1
    assert "s3cret" not in caplog.text and base64.b64encode(b"gw:s3cret").decode() not in caplog.text


def test_credentials_from_url_user_info_are_sent_and_never_logged(raw_server, caplog: pytest.LogCaptureFixture) -> None:
    server = raw_server(Respond(503), Respond(204))
    caplog.set_level(logging.DEBUG)
    url = server.url.replace("http://", "http://gw%40site:p%3Ass@") + "?token=abc"
    result = client.push(url, Factory(report(2)), deadline=None, sleep=lambda s: None)
    assert result.ok and result.attempts == 2
    assert server.seen[0].headers["authorization"] == "Basic " + base64.b64encode(b"gw@site:p:ss").decode()
    assert server.seen[0].raw.startswith(b"POST /report?token=abc HTTP/1.1\r\n")
    assert "p:ss" not in caplog.text and "p%3Ass" not in caplog.text
    ours = "\n".join(r.getMessage() for r in caplog.records if r.name.startswith("wmbus_stream"))
    assert "token=abc" not in ours  # urllib3's own DEBUG lines show the path; ours elide queries
    assert f"http://127.0.0.1:{server.port}/report?..." in ours


# -------------------------------------------------------------------------------------------
# Retries


@pytest.mark.parametrize("status", [408, 429, 500, 502, 503, 504])
def test_retryable_status_then_success(raw_server, status: int) -> None:
    server = raw_server(Respond(status, body=b"busy"), Respond(200))
    waits: list[float] = []
    factory = Factory(report(5))
    result = client.push(server.url, factory, deadline=None, sleep=waits.append, rand=lambda: 0.5)
    assert result.ok and result.status == 200 and result.attempts == 2
    assert waits == [0.5]  # full jitter: rand * min(cap, base * 2**0)
    assert factory.calls == 2
    assert [s.body for s in server.seen] == [factory.body, factory.body]


def test_backoff_is_exponential_full_jitter_and_capped(raw_server) -> None:
    server = raw_server(Respond(500))
    waits: list[float] = []
    result = client.push(server.url, Factory(report(1)), attempts=9, deadline=None, sleep=waits.append, rand=lambda: 1.0)
    assert not result.ok and result.attempts == 9 and result.status == 500
    assert waits == [1, 2, 4, 8, 16, 32, 60, 60]
    assert result.error.startswith("HTTP 500")


def test_retry_after_seconds_and_http_date_are_honoured(raw_server) -> None:
    soon = email.utils.formatdate(time.time() + 30, usegmt=True)
    server = raw_server(
        Respond(503, {"Retry-After": "7"}),
        Respond(429, {"Retry-After": soon}),
        Respond(204),
    )
    waits: list[float] = []
    result = client.push(server.url, Factory(report(3)), deadline=None, sleep=waits.append, rand=lambda: 0.0)
    assert result.ok and result.attempts == 3
    assert waits[0] == 7
    assert 27 <= waits[1] <= 31


@pytest.mark.parametrize("value", ["\u00b2", "\u00b9\u00b3", "soon", "", "12 s"])
def test_an_unreadable_retry_after_means_backoff(raw_server, value: str) -> None:
    """Neither delta-seconds nor an HTTP date (a superscript digit is a digit to str.isdigit, not
    to RFC 9110): the backoff applies, and the push goes on."""
    server = raw_server(Respond(503, {"Retry-After": value}), Respond(204))
    waits: list[float] = []
    result = client.push(server.url, Factory(report(1)), deadline=None, sleep=waits.append, rand=lambda: 0.5)
    assert result.ok and result.attempts == 2
    assert waits == [0.5]


@pytest.mark.parametrize("status", [400, 401, 403, 404, 413, 301])
def test_client_errors_are_not_retried(raw_server, status: int) -> None:
    answer = b"line 1: meter id 'x' is not 8 hex digits\n"
    server = raw_server(Respond(status, {"Location": "http://elsewhere/"}, answer), Respond(204))
    waits: list[float] = []
    result = client.push(server.url, Factory(report(1)), deadline=None, sleep=waits.append)
    assert not result.ok and result.attempts == 1 and not result.retryable and result.status == status
    assert waits == [] and len(server.seen) == 1
    assert result.error.startswith(f"HTTP {status}")
    assert "line 1: meter id" in result.error


def test_connection_refused_is_retried_with_a_clear_error() -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    waits: list[float] = []
    result = client.push(f"http://127.0.0.1:{port}/", Factory(report(1)), attempts=3, deadline=None,
                         sleep=waits.append, rand=lambda: 1.0)
    assert not result.ok and result.attempts == 3 and result.status is None
    assert result.error.startswith("connection refused by 127.0.0.1:")
    assert waits == [1, 2]


def test_server_cutting_the_body_gets_the_complete_body_next_attempt(raw_server) -> None:
    server = raw_server(Cut(after=64 * 1024), Respond(204))
    factory = Factory(report(3000))  # about 1.7 MB, far more than the socket buffers
    waits: list[float] = []
    result = client.push(server.url, factory, deadline=None, sleep=waits.append)
    assert result.ok and result.attempts == 2 and factory.calls == 2
    first, second = server.seen
    assert not first.complete and len(first.body) < len(factory.body)
    assert second.complete and second.body == factory.body
    assert result.bytes_sent == len(factory.body)
    assert len(waits) == 1


def chunked(body: bytes) -> bytes:
    """The body as the push frames it on the wire: CHUNK_SIZE chunks and the zero chunk."""
    size = client.CHUNK_SIZE
    pieces = [body[i:i + size] for i in range(0, len(body), size)]
    return b"".join(b"%x\r\n%b\r\n" % (len(p), p) for p in pieces) + b"0\r\n\r\n"


def early_cut_points(body: bytes) -> dict[str, int]:
    """Places in the wire body where a careless HES stops reading and answers."""
    wire_body = chunked(body)
    last_chunk_data = wire_body.rindex(b"\r\n", 0, len(wire_body) - 5 - 2) + 2
    return {
        "before the body": 0,
        "in the first chunk": 1000,
        "in the middle": len(wire_body) // 2,
        "inside the last chunk": last_chunk_data + 10,
        "before the terminating zero chunk": len(wire_body) - 5,
        "inside the terminating zero chunk": len(wire_body) - 2,
    }


BIG_REPORT = report(1360)  # as many lines as the report of the field incident (about 400 kB)


@pytest.mark.parametrize("where", list(early_cut_points(b"".join(BIG_REPORT))))
def test_2xx_before_the_whole_body_was_read_acknowledges_nothing(where: str, raw_server, caplog: pytest.LogCaptureFixture) -> None:
    """The field incident: an HES answered 200 after reading part of the report and the gateway
    took it as an acknowledgement (urllib3 swallows the broken pipe and reads the early answer)."""
    factory = Factory(BIG_REPORT)
    after = early_cut_points(factory.body)[where]
    server = raw_server(Early(after))
    caplog.set_level(logging.INFO, logger="wmbus_stream.push")
    result = client.push(server.url, factory, attempts=1, read_timeout=5, deadline=None)
    (seen,) = server.seen
    assert len(seen.body) == after  # the HES did stop there
    assert not result.ok and result.status == 200 and result.retryable
    assert result.error.startswith("HES answered HTTP 200 ") and ": not acknowledged, kept" in result.error
    assert "acknowledged:" not in caplog.text
    assert re.search(r"attempt 1/1 failed: HES answered HTTP 200 .*: not acknowledged, kept.*; giving up", caplog.text)
    if result.bytes_sent < len(factory.body):  # the cut came while the gateway was still sending
        assert f"after {result.bytes_sent} of {len(factory.body)} bytes" in result.error


def test_2xx_after_the_whole_body_was_read_acknowledges(raw_server) -> None:
    """The same careless server reading the body to its end is a proper acknowledgement."""
    factory = Factory(BIG_REPORT)
    server = raw_server(Early(len(chunked(factory.body))))
    result = client.push(server.url, factory, attempts=1, read_timeout=5, deadline=None)
    assert result.ok and result.status == 200 and result.bytes_sent == len(factory.body)
    assert server.seen[0].body == chunked(factory.body)


def test_early_2xx_is_retried_and_the_next_complete_body_acknowledges(raw_server) -> None:
    factory = Factory(BIG_REPORT)
    server = raw_server(Early(64 * 1024), Respond(204))
    result = client.push(server.url, factory, deadline=None, sleep=lambda s: None)
    assert result.ok and result.status == 204 and result.attempts == 2 and factory.calls == 2
    assert server.seen[1].complete and server.seen[1].body == factory.body


def test_push_asks_the_hes_to_close_and_a_server_keeping_it_open_still_acknowledges(raw_server) -> None:
    """The clean close is how the HES shows it read everything; one that ignores
    ``Connection: close`` but took every byte is acknowledged after the read timeout."""
    factory = Factory(report(50))
    server = raw_server(Respond(204, hold=5))
    result = client.push(server.url, factory, attempts=1, read_timeout=0.3, deadline=None)
    assert result.ok and result.status == 204 and result.bytes_sent == len(factory.body)
    assert server.seen[0].headers["connection"] == "close" and server.seen[0].complete


PROCESSING = b"HTTP/1.1 102 Processing\r\n\r\n"
EARLY_HINTS = b"HTTP/1.1 103 Early Hints\r\nLink: </style.css>; rel=preload\r\nLink: </a.js>; rel=preload\r\n\r\n"
INTERIM = {
    "102": PROCESSING,
    "103 with headers": EARLY_HINTS,
    "100 then 102 then 103": b"HTTP/1.1 100 Continue\r\n\r\n" + PROCESSING + EARLY_HINTS,
    "fifty 102": PROCESSING * 50,
    "199 unknown": b"HTTP/1.1 199 Whatever\r\nX-A: 1\r\n\r\n",
}


@pytest.mark.parametrize("interim", list(INTERIM))
def test_interim_1xx_answers_are_skipped_and_the_final_2xx_acknowledges(interim: str, raw_server, caplog) -> None:
    """RFC 9110 §15.2: a client skips interim answers; a HES saying 102 Processing before its
    200 was taken for a failed push ("HTTP 102 Processing; not retried") and resent forever."""
    factory = Factory(report(50))
    server = raw_server(Respond(200, interim=INTERIM[interim]))
    caplog.set_level(logging.INFO, logger="wmbus_stream.push")
    result = client.push(server.url, factory, attempts=1, read_timeout=5, deadline=None)
    assert result.ok and result.status == 200 and result.bytes_sent == len(factory.body), result.error
    assert server.seen[0].complete and "acknowledged: HTTP 200" in caplog.text


def test_interim_answer_before_a_failure_status_keeps_the_failure(raw_server) -> None:
    server = raw_server(Respond(503, {"Retry-After": "7"}, interim=PROCESSING), Respond(204, interim=EARLY_HINTS))
    waits: list[float] = []
    result = client.push(server.url, Factory(report(5)), attempts=2, deadline=None, sleep=waits.append)
    assert result.ok and result.status == 204 and result.attempts == 2 and waits == [7.0]


def test_101_is_not_interim_and_fails_the_push(raw_server) -> None:
    server = raw_server(Respond(101, {"Upgrade": "h2c"}))
    result = client.push(server.url, Factory(report(5)), attempts=1, deadline=None)
    assert not result.ok and result.status == 101 and result.error.startswith("HTTP 101 ")


def test_interim_answers_without_end_are_bounded_and_fail_the_push(raw_server) -> None:
    flood = PROCESSING * (INTERIM_MAX // len(PROCESSING) + 10)
    server = raw_server(Respond(200, interim=flood))
    result = client.push(server.url, Factory(report(5)), attempts=1, read_timeout=5, deadline=None)
    assert not result.ok and result.retryable
    assert f"more than {INTERIM_MAX} bytes of interim (1xx) answers" in result.error


def test_interim_answers_are_skipped_by_fetch_and_notify(raw_server) -> None:
    server = raw_server(Respond(200, body=b"Sync-Mode: server\n", interim=PROCESSING + EARLY_HINTS),
                        Respond(200, body=b"OK", interim=PROCESSING))
    assert fetch(server.url) == b"Sync-Mode: server\n"
    notify(server.url, "900 Sync-Id: 7")
    assert server.seen[1].body == b"900 Sync-Id: 7"


def test_reset_after_a_2xx_to_a_whole_body_says_what_is_known(raw_server) -> None:
    """The HES read everything, answered 200 and reset: it may have stored the report, so the
    message must not claim it did not read the body; the report is kept (a duplicate at worst)."""
    factory = Factory(report(50))
    server = raw_server(Respond(200, reset=True))
    result = client.push(server.url, factory, attempts=1, read_timeout=5, deadline=None)
    assert server.seen[0].complete and server.seen[0].body == factory.body
    assert not result.ok and result.status == 200 and result.retryable
    assert result.error == ("HES answered HTTP 200 but reset the connection after answering:"
                            " not acknowledged, kept (a duplicate at worst)")


def test_peer_text_in_errors_is_escaped_and_bounded(raw_server) -> None:
    """Status lines and bodies come from the HES: control bytes never reach a message raw."""
    hostile = "\x00\x01\x1b[2J\rforged line " + "R" * 5000
    for raw in (f"HTTP/1.1 500 {hostile}\r\n\r\n", f"HTTP/1.1 5{hostile}\r\n\r\n"):
        server = raw_server(Respond(200, interim=raw.encode("latin-1")))
        result = client.push(server.url, Factory(report(5)), attempts=1, deadline=None)
        assert not result.ok and "\\x00\\x01\\x1b[2J\\rforged line RRR" in result.error, result.error
        assert result.error.isascii() and result.error.isprintable() and len(result.error) < 1000
        with pytest.raises(HttpError) as caught:
            fetch(server.url)
        message = str(caught.value)
        assert "\\x00\\x01\\x1b" in message and message.isascii() and message.isprintable() and len(message) < 1000
    server = raw_server(Respond(418, body=b"\x1b]0;title\x07" + b"B" * 5000))
    result = client.push(server.url, Factory(report(5)), attempts=1, deadline=None)
    assert result.error.startswith("HTTP 418 I'm a Teapot: \\x1b]0;title\\x07BBB")
    assert result.error.isascii() and result.error.isprintable() and len(result.error) < 1000


def test_body_generator_ending_in_an_error_after_a_2xx_cannot_acknowledge(raw_server) -> None:
    """A generator that breaks is the caller's fault and never acknowledges, whatever the HES says."""
    server = raw_server(Early(0))

    def body() -> Iterator[bytes]:
        yield from BIG_REPORT[:200]
        raise RuntimeError("store went away")

    result = client.push(server.url, body, attempts=3, deadline=None, sleep=lambda s: None)
    assert not result.ok and not result.retryable


def test_hung_server_hits_the_read_timeout(raw_server) -> None:
    server = raw_server(Hang())
    result = finishes(lambda: client.push(server.url, Factory(report(2)), read_timeout=0.3, attempts=1, deadline=None),
                      "a push with a 0.3 s read timeout against a hung HES")
    assert not result.ok and result.retryable
    assert result.error.startswith("timeout: no response from 127.0.0.1:")


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0
        self.waits: list[float] = []

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.waits.append(seconds)
        self.now += seconds


def test_retries_stop_before_the_deadline(raw_server) -> None:
    server = raw_server(Respond(503))
    clock = FakeClock()
    deadline = clock.now + 20
    result = client.push(server.url, Factory(report(1)), attempts=50, deadline=deadline, clock=clock,
                         sleep=clock.sleep, rand=lambda: 1.0)
    assert not result.ok and result.status == 503
    assert clock.waits == [1, 2, 4, 8]  # the next (16 s) would end past the deadline
    assert clock.now <= deadline and result.attempts == 5


def test_retry_after_past_the_deadline_stops_without_waiting(raw_server) -> None:
    server = raw_server(Respond(429, {"Retry-After": "120"}), Respond(204))
    clock = FakeClock()
    result = client.push(server.url, Factory(report(1)), deadline=clock.now + 60, clock=clock, sleep=clock.sleep)
    assert not result.ok and result.attempts == 1 and clock.waits == []
    assert result.retry_after == 120 and result.status == 429


def test_deadline_shortens_the_attempt_timeouts(raw_server) -> None:
    server = raw_server(Hang())
    result = finishes(lambda: client.push(server.url, Factory(report(1)), read_timeout=30, deadline=time.monotonic() + 0.6),
                      "a push with a 0.6 s deadline and a 30 s read timeout against a hung HES")
    assert not result.ok and result.attempts == 1 and "timeout" in result.error


# -------------------------------------------------------------------------------------------
# Stopping and broken bodies


def test_stop_event_ends_a_retry_wait(raw_server) -> None:
    server = raw_server(Respond(503, {"Retry-After": "30"}))
    stop = threading.Event()
    threading.Timer(0.2, stop.set).start()
    result = finishes(lambda: client.push(server.url, Factory(report(1)), deadline=None, stop_event=stop),
                      "a push told to stop 0.2 s into a 30 s Retry-After wait")
    assert result.stopped and not result.ok and result.attempts == 1


def test_stop_event_abandons_the_upload_and_the_hes_stores_nothing() -> None:
    stop = threading.Event()
    lines = report(2000)

    def body() -> Iterator[bytes]:
        for number, line in enumerate(lines):
            if number == 1000:
                stop.set()
            yield line

    with ReceiveServer() as hes:
        result = client.push(hes.url, body, deadline=None, stop_event=stop)
        assert result.stopped and not result.ok and result.attempts == 1
        assert 0 < result.bytes_sent < sum(map(len, lines))
        time.sleep(0.2)
        assert hes.store.readings() == [] and hes.stats.posts == 0


def test_failing_body_factory_is_reported_not_retried(raw_server) -> None:
    server = raw_server(Respond(204))

    def body() -> Iterator[bytes]:
        yield line_for(61000001)
        raise RuntimeError("store is closed")

    result = client.push(server.url, body, deadline=None, sleep=lambda s: None)
    assert not result.ok and not result.retryable and result.attempts == 1
    assert "report body failed" in result.error and "store is closed" in result.error


def test_bad_url_is_a_result_not_an_exception() -> None:
    result = client.push("ftp://example.org/x", Factory([]), deadline=None)
    assert not result.ok and result.attempts == 0 and "http" in result.error


# -------------------------------------------------------------------------------------------
# TLS


@pytest.fixture(scope="module")
def ca() -> trustme.CA:
    if trustme is None:
        pytest.skip("trustme is not installed (pip install trustme); it generates the test CA")
    return trustme.CA()


@pytest.fixture(scope="module")
def ca_file(ca: trustme.CA, tmp_path_factory: pytest.TempPathFactory) -> str:
    path = tmp_path_factory.mktemp("ca") / "ca.pem"
    ca.cert_pem.write_to_path(str(path))
    return str(path)


def issue(ca: trustme.CA, folder: Path, *names: str) -> tuple[str, str]:
    leaf = ca.issue_cert(*names)
    cert, key = folder / "cert.pem", folder / "key.pem"
    cert.write_bytes(b"".join(blob.bytes() for blob in leaf.cert_chain_pems))
    leaf.private_key_pem.write_to_path(str(key))
    return str(cert), str(key)


def test_tls_verified_with_private_ca(ca: trustme.CA, ca_file: str, tmp_path: Path) -> None:
    cert, key = issue(ca, tmp_path, "127.0.0.1", "localhost")
    with ReceiveServer(tls_cert=cert, tls_key=key) as hes:
        assert hes.url.startswith("https://")
        result = client.push(hes.url, Factory(report(4)), ca_file=ca_file, deadline=None)
        assert result.ok and len(hes.store.readings()) == 4


def test_tls_unknown_ca_fails_and_no_request_reaches_the_server(ca: trustme.CA, tmp_path: Path) -> None:
    cert, key = issue(ca, tmp_path, "127.0.0.1")
    with ReceiveServer(tls_cert=cert, tls_key=key) as hes:
        waits: list[float] = []
        result = client.push(hes.url, Factory(report(4)), deadline=None, sleep=waits.append)
        assert not result.ok and result.attempts == 1 and not result.retryable and waits == []
        assert result.error.startswith("TLS verify failed: ")
        assert "certificate" in result.error
        stats = hes.stats
        assert stats.posts == stats.rejected == stats.unauthorized == 0 and hes.store.readings() == []


def test_tls_hostname_mismatch_fails(ca: trustme.CA, ca_file: str, tmp_path: Path) -> None:
    cert, key = issue(ca, tmp_path, "hes.example.org")
    with ReceiveServer(tls_cert=cert, tls_key=key) as hes:
        result = client.push(hes.url, Factory(report(1)), ca_file=ca_file, deadline=None)
        assert not result.ok and result.error.startswith("TLS verify failed: ")
        assert "mismatch" in result.error
        assert hes.stats.posts == 0


def test_tls_expired_certificate_fails(ca: trustme.CA, ca_file: str, tmp_path: Path) -> None:
    """A.7 #23: a certificate of the right CA and name, but expired, is refused with its reason."""
    import datetime

    now = datetime.datetime.now(datetime.UTC)
    leaf = ca.issue_cert("127.0.0.1", "localhost", not_before=now - datetime.timedelta(days=30),
                         not_after=now - datetime.timedelta(days=1))
    cert, key = tmp_path / "expired.pem", tmp_path / "expired.key"
    leaf.cert_chain_pems[0].write_to_path(str(cert))
    leaf.private_key_pem.write_to_path(str(key))
    with ReceiveServer(tls_cert=str(cert), tls_key=str(key)) as hes:
        result = client.push(hes.url, Factory(report(1)), ca_file=ca_file, deadline=None)
        assert not result.ok and result.error.startswith("TLS verify failed: ")
        assert "expired" in result.error
        assert hes.stats.posts == 0


def test_unreadable_ca_file_is_reported_without_an_attempt(tmp_path: Path) -> None:
    result = client.push("https://127.0.0.1:9/", Factory([]), ca_file=str(tmp_path / "missing.pem"), deadline=None)
    assert not result.ok and result.attempts == 0 and "CA file" in result.error


# -------------------------------------------------------------------------------------------
# nginx as an independent server: TLS + basic auth in front of the reference HES

NGINX = shutil.which("nginx") or next((p for p in ("/usr/sbin/nginx",) if Path(p).exists()), None)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@dataclass
class Nginx:
    url: str
    hes: ReceiveServer


@pytest.fixture
def nginx(ca: trustme.CA, tmp_path: Path) -> Iterator[Nginx]:
    if NGINX is None:
        pytest.skip("nginx binary not found (apt-get install nginx-light); the push is covered against ReceiveServer")
    cert, key = issue(ca, tmp_path, "127.0.0.1")
    (tmp_path / "htpasswd").write_text("gw:{PLAIN}s3cret\n")
    for sub in ("body", "proxy", "fastcgi", "uwsgi", "scgi"):
        (tmp_path / sub).mkdir()
    hes = ReceiveServer().start()
    port = free_port()
    config = f"""
daemon off;
master_process off;
worker_processes 1;
pid {tmp_path}/nginx.pid;
error_log {tmp_path}/error.log info;
events {{ worker_connections 64; }}
http {{
    access_log {tmp_path}/access.log;
    client_body_temp_path {tmp_path}/body;
    proxy_temp_path {tmp_path}/proxy;
    fastcgi_temp_path {tmp_path}/fastcgi;
    uwsgi_temp_path {tmp_path}/uwsgi;
    scgi_temp_path {tmp_path}/scgi;
    server {{
        listen 127.0.0.1:{port} ssl;
        ssl_certificate {cert};
        ssl_certificate_key {key};
        auth_basic "HES";
        auth_basic_user_file {tmp_path}/htpasswd;
        client_max_body_size 64m;
        # Default: nginx buffers the chunked body and forwards it with Content-Length.
        location / {{ proxy_pass http://127.0.0.1:{hes.port}; }}
        # Streaming: chunked all the way through to the HES.
        location /stream/ {{
            proxy_pass http://127.0.0.1:{hes.port};
            proxy_http_version 1.1;
            proxy_request_buffering off;
        }}
    }}
}}
"""
    (tmp_path / "nginx.conf").write_text(config)
    process = subprocess.Popen(
        [NGINX, "-p", str(tmp_path), "-c", str(tmp_path / "nginx.conf"), "-e", str(tmp_path / "error.log")],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )
    try:
        end = time.monotonic() + 10
        while True:
            if process.poll() is not None:
                pytest.fail(f"nginx exited: {process.stderr.read().decode(errors='replace')}"
                            f"{(tmp_path / 'error.log').read_text(errors='replace')}")
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
                break
            except OSError:
                if time.monotonic() > end:
                    pytest.fail("nginx did not start listening within 10 s")
                time.sleep(0.05)
        yield Nginx(f"https://127.0.0.1:{port}", hes)
    finally:
        stop_server(process)
        hes.stop()


@pytest.mark.parametrize("path", ["/report", "/stream/report"])
def test_push_through_nginx_tls_and_basic_auth(nginx: Nginx, ca_file: str, path: str) -> None:
    factory = Factory(report(400))
    url = nginx.url.replace("https://", "https://gw:s3cret@") + path
    result = client.push(url, factory, ca_file=ca_file, deadline=None, user_agent=UA)
    assert result.ok and result.status == 204 and result.attempts == 1
    assert [r.telegram for r in nginx.hes.store.readings()] == [telegram_for(61000000 + i) for i in range(400)]


def test_nginx_wrong_password_is_401_not_retried(nginx: Nginx, ca_file: str) -> None:
    waits: list[float] = []
    result = client.push(nginx.url + "/report", Factory(report(400)), username="gw", password="wrong",
                         ca_file=ca_file, deadline=None, sleep=waits.append)
    assert not result.ok and result.status == 401 and result.attempts == 1 and waits == []
    assert nginx.hes.stats.posts == 0


def test_nginx_without_the_ca_fails_verification(nginx: Nginx) -> None:
    result = client.push(nginx.url + "/report", Factory(report(1)), username="gw", password="s3cret", deadline=None)
    assert not result.ok and result.error.startswith("TLS verify failed")
    assert nginx.hes.stats.posts == 0


# -------------------------------------------------------------------------------------------
# fetch and notify (the .cad sync's client)


class _Files(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    routes: dict[str, tuple[int, dict[str, str], bytes]] = {}
    posts: list[tuple[str, bytes, dict[str, str]]] = []

    def do_GET(self) -> None:  # noqa: N802
        if self.path == "/drip":
            self.send_response(200)
            self.send_header("Content-Length", "100")
            self.end_headers()
            for _ in range(100):
                try:
                    self.wfile.write(b"x")
                    self.wfile.flush()
                except OSError:
                    return
                time.sleep(0.1)
            return
        status, headers, body = self.routes.get(self.path, (404, {}, b"not here"))
        self.send_response(status)
        for name, value in headers.items():
            self.send_header(name, value.replace("{port}", str(self.server.server_address[1])))
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_POST(self) -> None:  # noqa: N802
        body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
        self.posts.append((self.path, body, dict(self.headers)))
        status, _, answer = self.routes.get(self.path, (404, {}, b""))
        self.send_response(status)
        self.send_header("Content-Length", str(len(answer)))
        self.end_headers()
        self.wfile.write(answer)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def files() -> Iterator[str]:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Files)
    server.daemon_threads = True
    _Files.routes = {
        "/cfg.cad": (200, {}, b"Sync-Mode: server\n"),
        "/big": (200, {}, b"y" * 5000),
        "/hop": (302, {"Location": "/cfg.cad"}, b""),
        "/loop": (302, {"Location": "/loop"}, b""),
        "/down": (302, {"Location": "http://127.0.0.1:{port}/cfg.cad"}, b""),
        "/gz": (200, {"Content-Encoding": "gzip"}, b"\x1f\x8b"),
        "/ok": (200, {}, b"OK\r\n"),
        "/nok": (200, {}, b"NOK"),
        "/err": (500, {}, b"oops"),
    }
    _Files.posts = []
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def test_fetch_follows_redirects_and_sends_the_user_agent(files: str) -> None:
    assert fetch(files + "/hop", user_agent=UA) == b"Sync-Mode: server\n"


def test_fetch_limits(files: str) -> None:
    with pytest.raises(HttpError, match="exceeds the limit"):
        fetch(files + "/big", max_bytes=1000)
    with pytest.raises(HttpError, match="redirects"):
        fetch(files + "/loop", max_redirects=3)
    with pytest.raises(HttpError, match="HTTP 404"):
        fetch(files + "/missing")
    with pytest.raises(HttpError, match="Content-Encoding"):
        fetch(files + "/gz")
    with pytest.raises(HttpError, match="http"):
        fetch("file:///etc/passwd")
    with pytest.raises(HttpError, match="total time limit"):
        finishes(lambda: fetch(files + "/drip", timeouts=Timeouts(connect=1, read=5, total=0.5)),
                 "a fetch with a 0.5 s total limit from a server that drips", timeout=4)


def test_fetch_refuses_https_to_http_redirect(ca: trustme.CA, ca_file: str, tmp_path: Path, files: str) -> None:
    cert, key = issue(ca, tmp_path, "127.0.0.1")
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)

    class Redirect(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_GET(self) -> None:  # noqa: N802
            self.send_response(301)
            self.send_header("Location", files + "/cfg.cad")
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Redirect)
    server.socket = context.wrap_socket(server.socket, server_side=True)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        with pytest.raises(HttpError, match="https to http refused"):
            fetch(f"https://127.0.0.1:{server.server_address[1]}/x", ca_file=ca_file)
    finally:
        server.shutdown()
        server.server_close()


def test_notify_needs_200_and_ok(files: str) -> None:
    notify(files + "/ok", "900 Sync-Id: 7", user_agent=UA)
    path, body, headers = _Files.posts[-1]
    assert body == b"900 Sync-Id: 7" and headers["User-Agent"] == UA
    with pytest.raises(HttpError, match="not 'OK'"):
        notify(files + "/nok", "900")
    with pytest.raises(HttpError, match="HTTP 500"):
        notify(files + "/err", "921 bad")
