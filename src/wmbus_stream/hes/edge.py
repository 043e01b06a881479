"""The HTTP edge of the reference HES: report POSTs in, validated and stored before the answer.

Strategy
- A stdlib ``ThreadingHTTPServer`` (one thread per connection, HTTP/1.1 keep-alive) with a
  connection cap in all (``max_connections``) and per source address (``per_address``, an
  IPv6 /64 counting as one): a connection over either gets no thread; one shared thread
  answers it ``503`` with ``Retry-After`` (over TLS it is closed, since an answer would need
  a handshake). A client must not hold its thread without sending a request: the TLS
  handshake and each request head, idle keep-alive time before it included, have one
  deadline in all (``head_seconds``, not a timeout per byte); a late head is answered
  ``408``, an idle connection is closed.
- The head decides how the body is framed, so it must say it once: a second
  Content-Length, Transfer-Encoding, Host or Authorization, a Content-Length that is not
  ASCII digits, both Content-Length and Transfer-Encoding, a folded or malformed header
  line are ``400`` and the connection is closed (request smuggling). The stdlib does not
  decode ``Transfer-Encoding: chunked`` request bodies, so the handler decodes them itself;
  ``Content-Length`` bodies are accepted too (a buffering proxy such as nginx turns the
  gateway's chunked POST into one).
- TLS, when configured, is negotiated in the connection's own thread, so a client that
  connects and never completes a handshake cannot stall the accept loop.
- Path and credentials are checked from the request head, before any body byte is read:
  ``Expect: 100-continue`` is answered only after them, and a refusal closes the connection.
  Authentication is the command line's default (``--no-auth`` turns it off); an empty user
  name or a blank password is refused when the server is made, never served.
- A body is read in pieces and validated line by line as it arrives (spec section 5): five
  fields, 8-digit gateway serial, 8 hex-digit meter ID, ``YYYY-MM-DD hh:mm:ss``, ``00``,
  even-length uppercase hex holding a wired RSP_UD telegram (C=08, CI=72, optional receiver
  records in their order, then the ``0D FD 3B n`` container with exactly n bytes or the
  ``0F`` long form running to the end, a wireless telegram whose L-field fits) whose meter ID
  equals the line's and the container's. The first bad line answers ``400 line N: reason``
  at once, and crossing ``max_body`` answers ``413`` at once; either way the rest of the
  body is not waited for and nothing of it is stored. Only validated lines are kept.
- Storage is deduplicated: one reading per distinct wireless telegram (key: SHA-256 of the
  telegram bytes, which cover manufacturer, ID, version, device type, access number and
  payload), plus one ``heard_by`` row per (reading, gateway, reception time). The same
  telegram from three gateways is one reading heard three times; a re-push of the same
  report (at-least-once delivery) adds nothing.

Invariants
- All or nothing per POST: a body is stored in one transaction, and the 2xx answer is sent
  only after it committed. A 2xx therefore means durable, so the gateway may forget the lines.
- Credentials are compared in constant time and never logged.
- Every answer goes through ``_reply`` (the busy ``503`` through ``_Server``), which counts
  each refusal by status, so the command line's summary counts every refused request.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import hmac
import io
import logging
import queue
import re
import select
import socket
import socketserver
import ssl
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from email.message import Message
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Protocol

from .. import __version__
from ..errors import ReportError
from ..io.connections import DeadlineReader, Late, source_of
from .report import ReportLine, ReportParser
from .sqlite import SqliteStore
from .store import Store

__all__ = ["DEFAULT_MAX_BODY", "DEFAULT_MAX_CONNECTIONS", "HEAD_SECONDS", "PostSummary", "ReceiveServer",
           "ReceiveStats", "check_credentials", "default_per_address", "split_listen"]

log = logging.getLogger("wmbus_stream.hes")


DEFAULT_MAX_BODY = 256 * 1024 * 1024
DEFAULT_MAX_CONNECTIONS = 64
# The TLS handshake, and each request head with the idle keep-alive time before it.
HEAD_SECONDS = 10.0
# Validated lines are handed to the store's transaction in batches of this many.
STAGE_LINES = 4096
# A body is read and validated in pieces of at most this size.
READ_SIZE = 64 * 1024
# Longest chunk-size or trailer line accepted; real ones are a few bytes.
MAX_LINE = 1024
MAX_TRAILERS = 32
# After refusing a request early, read at most this much of its body so the client sees
# our answer instead of a connection reset.
DRAIN_LIMIT = 4 * 1024 * 1024
DRAIN_SECONDS = 2.0

_SERIAL = re.compile(r"[0-9]{8}")
_METER_ID = re.compile(r"[0-9A-Fa-f]{8}")
_DATE = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2} [0-9]{2}:[0-9]{2}:[0-9]{2}")
_HEX = re.compile(r"[0-9A-F]*")
_LENGTH = re.compile(r"[0-9]{1,15}")
# Headers that must come at most once: they decide the body's framing, the target or who is asking.
_SINGLE_HEADERS = ("Content-Length", "Transfer-Encoding", "Host", "Authorization")


@dataclass(frozen=True, slots=True)
class ReceiveStats:
    """Counters since start: accepted POSTs, lines (long form among them), new readings and
    heard_by rows; refused requests (every answer of 400 or more, connections turned away
    included) in all and ``refused`` by status; of them unauthorized POSTs and connections
    turned away over a cap (``busy``)."""

    posts: int = 0
    lines: int = 0
    readings: int = 0
    heard: int = 0
    rejected: int = 0
    unauthorized: int = 0
    long_form: int = 0
    busy: int = 0
    refused: tuple[tuple[int, int], ...] = ()  # (status, count), by status


@dataclass(frozen=True, slots=True)
class PostSummary:
    """What happened to one POST, for the command line's log."""

    client: str
    path: str
    status: int
    lines: int
    new_readings: int
    gateways: tuple[str, ...]
    error: str | None = None


_COUNTERS = tuple(name for name in ReceiveStats.__slots__ if name != "refused")


class _BadBody(Exception):
    """The request body's framing is broken; the connection cannot be reused."""


class _TooLarge(Exception):
    """The request body is over the limit."""


class _Cut(Exception):
    """The client closed the connection before its body ended."""


class _Reader(Protocol):
    def readline(self, size: int = -1, /) -> bytes: ...
    def read(self, size: int = -1, /) -> bytes: ...


def _length_pieces(rfile: _Reader, size: int) -> Iterator[bytes]:
    """A ``Content-Length`` body in pieces of at most READ_SIZE bytes."""
    left = size
    while left:
        data = rfile.read(min(left, READ_SIZE))
        if not data:
            raise _Cut(f"connection closed after {size - left} of {size} body bytes")
        left -= len(data)
        yield data


def _chunked_pieces(rfile: _Reader, limit: int) -> Iterator[bytes]:
    """A chunked request body (RFC 9112 section 7.1) in pieces; _TooLarge before passing ``limit``."""
    total = 0
    while True:
        line = rfile.readline(MAX_LINE + 1)
        if not line:
            raise _BadBody("connection closed inside the chunked body")
        if len(line) > MAX_LINE or not line.endswith(b"\n"):
            raise _BadBody("chunk size line too long")
        size_text = line.split(b";", 1)[0].strip()
        if not size_text or len(size_text) > 16 or any(c not in b"0123456789abcdefABCDEF" for c in size_text):
            raise _BadBody(f"bad chunk size line {line[:40]!r}")
        size = int(size_text, 16)
        if size == 0:
            break
        total += size
        if total > limit:
            raise _TooLarge()
        while size:
            data = rfile.read(min(size, READ_SIZE))
            if not data:
                raise _BadBody("connection closed inside a chunk")
            size -= len(data)
            yield data
        if rfile.readline(3) not in (b"\r\n", b"\n"):
            raise _BadBody("chunk data not followed by CRLF")
    for _ in range(MAX_TRAILERS):
        line = rfile.readline(MAX_LINE + 1)
        if line in (b"\r\n", b"\n"):
            return
        if not line or len(line) > MAX_LINE:
            raise _BadBody("broken trailer section")
    raise _BadBody("too many trailer lines")


def _head_problem(headers: Message) -> str | None:
    """What makes a request head ambiguous about its body, target or sender (request smuggling); None if nothing."""
    if headers.defects or headers.get_payload():
        return "a header line is not 'Name: value' (no space may come before the colon)"
    for name in _SINGLE_HEADERS:
        count = len(headers.get_all(name) or ())
        if count > 1:
            return f"{name} is given {count} times; send it once"
    if any("\r" in value or "\n" in value for value in headers.values()):
        return "a header is folded onto a following line; send each header on one line"
    length = headers.get("Content-Length")
    if length is not None:
        if headers.get("Transfer-Encoding") is not None:
            return "both Content-Length and Transfer-Encoding; send one of them"
        if not _LENGTH.fullmatch(length.strip(" \t")):
            return f"Content-Length {ascii(length[:20])} is not a number of bytes in ASCII digits"
    return None


class _Handler(BaseHTTPRequestHandler):
    """Request handler; the work is in ReceiveServer so it can be configured per instance."""

    protocol_version = "HTTP/1.1"
    server_version = f"wmbus-stream-hes/{__version__}"
    sys_version = ""
    server: _Server
    reader: DeadlineReader
    continued = False  # 100 Continue sent for the current request
    # Until a request line is parsed (an answer to a late or broken first head needs them).
    requestline, request_version, command = "", "HTTP/1.1", ""

    def setup(self) -> None:
        super().setup()
        self.rfile.close()  # the plain socket file, replaced by one that keeps deadlines
        self.reader = DeadlineReader(self.connection, self.server.app.timeout)
        self.rfile = io.BufferedReader(self.reader)

    def handle_one_request(self) -> None:
        # The head, with the idle time before it, must be complete within head_seconds: a
        # client sending a byte now and then does not keep its thread (parse_request stops
        # the clock before the body).
        seconds = self.server.app.head_seconds
        self.reader.start(seconds)
        try:
            super().handle_one_request()
        except Late:
            self.close_connection = True
            if self.reader.got:  # a late head gets 408; an idle connection is just closed
                log.info("%s did not send a request head within %g s; connection closed", self.client_address[0], seconds)
                with contextlib.suppress(OSError):
                    self.server.app._reply(self, 408, f"the request head did not arrive within {seconds:g} s\n",
                                           close=True)
        finally:
            self.reader.stop()

    def parse_request(self) -> bool:
        try:
            if not super().parse_request():
                return False
        finally:
            self.reader.stop()
        self.continued = False  # for this request: no 100 Continue sent yet
        problem = _head_problem(self.headers)
        if problem is not None:
            self.server.app._refuse_head(self, problem)
            return False
        return True

    def send_error(self, code: int, message: str | None = None, explain: str | None = None) -> None:
        """A malformed request line or head: a short plain-text answer (not http.server's HTML), then close."""
        reason = (message or self.responses.get(code, ("error",))[0]).encode("ascii", "backslashreplace").decode()
        log.info("%s: %d %s", self.client_address[0], code, reason[:200])
        # parse_request leaves HTTP/0.9 (no status line, no headers) until it has read a version.
        self.request_version = self.protocol_version
        self.server.app._reply(self, code, f"bad request: {reason[:200]}\n", close=True)

    def do_POST(self) -> None:  # noqa: N802  (http.server's naming)
        self.server.app._handle_post(self)

    def handle_expect_100(self) -> bool:
        """Defer ``100 Continue``: ``_handle_post`` sends it once path and credentials are checked."""
        return True

    def _not_allowed(self) -> None:
        self.server.app._reply(self, 405, "only POST is accepted here\n", {"Allow": "POST"}, close=True)

    do_GET = do_PUT = do_DELETE = do_PATCH = _not_allowed  # noqa: N815

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
        log.debug("%s %s", self.address_string(), format % args)


class _Busy:
    """Turns away connections over the cap from one thread for all of them.

    Each gets the ``503`` answer and a half-close; what the client already sent is read (up
    to DRAIN_LIMIT, for at most a second) so that the close does not reset the connection
    before the client reads the answer. At most ``MAX_OPEN`` wait at once; more are closed.
    """

    MAX_OPEN = 256

    def __init__(self, answers: bool) -> None:
        self._answers = answers  # False: close without an answer (TLS would need a handshake)
        self._new: queue.SimpleQueue[tuple[socket.socket, bytes] | None] = queue.SimpleQueue()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="hes-busy", daemon=True)
        self._thread.start()

    def refuse(self, sock: socket.socket, reason: str) -> None:
        """Answer ``sock`` 503 saying ``reason`` and close it."""
        text = f"busy: {reason}; retry later\n"
        answer = (
            "HTTP/1.1 503 Service Unavailable\r\nRetry-After: 5\r\nContent-Type: text/plain; charset=utf-8\r\n"
            f"Content-Length: {len(text)}\r\nConnection: close\r\n\r\n{text}"
        ).encode("ascii")
        self._new.put((sock, answer))

    def close(self) -> None:
        self._stop.set()
        self._new.put(None)  # wakes the thread
        self._thread.join(5)

    def _admit(self, sock: socket.socket, answer: bytes, waiting: dict[socket.socket, tuple[float, int]]) -> None:
        if not self._answers or len(waiting) >= self.MAX_OPEN:
            _close(sock)
            return
        try:
            sock.setblocking(False)
            sock.send(answer)
            sock.shutdown(socket.SHUT_WR)
        except OSError:
            _close(sock)
            return
        waiting[sock] = (time.monotonic() + 1.0, 0)

    def _run(self) -> None:
        waiting: dict[socket.socket, tuple[float, int]] = {}
        while not self._stop.is_set():
            try:
                item = self._new.get(timeout=0.05 if waiting else None)
                while item is not None:
                    self._admit(*item, waiting)
                    item = self._new.get_nowait()
            except queue.Empty:
                pass
            if not waiting:
                continue
            with contextlib.suppress(OSError, ValueError):
                readable, _, _ = select.select(list(waiting), [], [], 0.05)
                for sock in readable:
                    deadline, drained = waiting[sock]
                    try:
                        data = sock.recv(65536)
                    except OSError:
                        data = b""
                    if data and drained + len(data) < DRAIN_LIMIT:
                        waiting[sock] = (deadline, drained + len(data))
                    else:
                        del waiting[sock]
                        _close(sock)
            now = time.monotonic()
            for sock in [s for s, (deadline, _) in waiting.items() if deadline <= now]:
                del waiting[sock]
                _close(sock)
        for sock in waiting:
            _close(sock)


def _close(sock: socket.socket) -> None:
    with contextlib.suppress(OSError):
        sock.close()


class _Server(ThreadingHTTPServer):
    """ThreadingHTTPServer with TLS per connection, connection caps (in all, per address) and a registry of connections."""

    daemon_threads = True

    def __init__(self, address: tuple[str, int], app: ReceiveServer, family: int):
        self.address_family = family
        self.app = app
        self.connections: set[socket.socket] = set()
        self.connections_lock = threading.Lock()
        self.active = 0  # accepted connections with a thread, TLS handshake included
        self.held: dict[str, int] = {}  # of them per source (connections.source_of)
        self.busy = _Busy(answers=app._ssl is None)
        # The socket timeout of every connection (idle keep-alive, slow bodies) is per server.
        handler = type("_TimedHandler", (_Handler,), {"timeout": app.timeout})
        super().__init__(address, handler)

    def process_request(self, request: Any, client_address: Any) -> None:
        source = source_of(client_address[0])
        refused = self._admit(source)
        if refused is not None:
            self.app._count(busy=1, refused=503)
            log.info("connection from %s turned away: %s", client_address[0], refused)
            self.busy.refuse(request, refused)
            return
        try:
            super().process_request(request, client_address)
        except BaseException:
            self._release(source)
            raise

    def _admit(self, source: str) -> str | None:
        """Take a connection slot for ``source``; why not, when it may not have one."""
        app = self.app
        with self.connections_lock:
            held = self.held.get(source, 0)
            if self.active >= app.max_connections:
                return f"{self.active} connections are open, the most this HES serves"
            if held >= app.per_address:
                return f"{held} connections from this address are open, the most one address may have"
            self.held[source] = held + 1
            self.active += 1
            return None

    def _release(self, source: str) -> None:
        with self.connections_lock:
            self.active -= 1
            if self.held[source] <= 1:
                del self.held[source]
            else:
                self.held[source] -= 1

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:
            self._release(source_of(client_address[0]))

    def server_close(self) -> None:
        super().server_close()
        self.busy.close()

    def server_bind(self) -> None:
        # HTTPServer.server_bind does a reverse DNS lookup (getfqdn) that can hang offline.
        socketserver.TCPServer.server_bind(self)
        host, port = self.server_address[:2]
        self.server_name, self.server_port = str(host), int(port)

    def finish_request(self, request: Any, client_address: Any) -> None:
        request.settimeout(self.app.timeout)
        context = self.app._ssl
        conn = request
        if context is not None:
            try:
                # The handshake's timeout is one deadline for all of it (ssl's do_handshake).
                request.settimeout(self.app.head_seconds)
                conn = context.wrap_socket(request, server_side=True)
                conn.settimeout(self.app.timeout)
            except (ssl.SSLError, OSError) as exc:
                log.info("TLS handshake with %s failed: %s", client_address[0], getattr(exc, "reason", None) or exc)
                return
        with self.connections_lock:
            self.connections.add(conn)
        try:
            self.RequestHandlerClass(conn, client_address, self)  # type: ignore[arg-type]
        finally:
            with self.connections_lock:
                self.connections.discard(conn)
            if conn is not request:
                with contextlib.suppress(OSError):
                    conn.close()

    def handle_error(self, request: Any, client_address: Any) -> None:
        exc = sys.exc_info()[1]
        if isinstance(exc, (ConnectionError, TimeoutError, ssl.SSLError)):
            log.info("connection from %s ended: %s", client_address[0], exc)
        else:
            log.exception("unexpected error serving %s", client_address[0])


def default_per_address(max_connections: int) -> int:
    """Connections one address may hold unless told: half the cap, so one address cannot hold all."""
    return max(1, max_connections // 2)


def split_listen(listen: str) -> tuple[str, int]:
    """``host:port``, ``[v6]:port`` or ``port`` -> (host, port)."""
    text = listen.strip()
    if text.isdigit():
        return "127.0.0.1", int(text)
    if text.startswith("["):
        host, sep, port = text[1:].partition("]:")
    else:
        host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit() or int(port) > 65535:
        raise ValueError(f"--listen {listen!r} is not HOST:PORT")
    return host or "0.0.0.0", int(port)


def check_credentials(username: str | None, password: str | None) -> None:
    """Refuse credentials that would let anyone in or that no client can send: ValueError says which."""
    if (username is None) != (password is None):
        raise ValueError("basic auth needs both a user name and a password")
    if username is None or password is None:
        return
    if not username.strip():
        raise ValueError("the basic-auth user name is empty; give the name the gateways push as")
    if ":" in username:
        raise ValueError(f"the basic-auth user name {username!r} holds ':', which basic auth cannot carry")
    if not password.strip():
        raise ValueError("the basic-auth password is empty or only blanks; give the password the gateways push with")


class ReceiveServer:
    """The reference HES: validates report POSTs and stores them deduplicated."""

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        store: Store | None = None,
        username: str | None = None,
        password: str | None = None,
        tls_cert: str | None = None,
        tls_key: str | None = None,
        path: str | None = None,
        max_body: int = DEFAULT_MAX_BODY,
        max_connections: int = DEFAULT_MAX_CONNECTIONS,
        per_address: int | None = None,
        ok_status: int = 204,
        timeout: float = 60.0,
        head_seconds: float = HEAD_SECONDS,
        on_post: Callable[[PostSummary], None] | None = None,
    ):
        check_credentials(username, password)
        if tls_key is not None and tls_cert is None:
            raise ValueError("a TLS key needs its certificate")
        if ok_status not in (200, 204):
            raise ValueError("ok_status must be 200 or 204")
        if max_connections < 1:
            raise ValueError("max_connections must be at least 1")
        per_address = default_per_address(max_connections) if per_address is None else per_address
        if not 1 <= per_address <= max_connections:
            raise ValueError(f"per_address must be 1 to max_connections ({max_connections})")
        self.host = host
        self._requested_port = port
        self._owns_store = store is None
        self.store: Store = store if store is not None else SqliteStore()
        self._credentials = (
            (username.encode("utf-8"), password.encode("utf-8")) if username is not None and password is not None else None
        )
        self._ssl: ssl.SSLContext | None = None
        if tls_cert is not None:
            context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            context.minimum_version = ssl.TLSVersion.TLSv1_2
            context.load_cert_chain(tls_cert, tls_key)
            self._ssl = context
        self.path = path
        self.max_body = max_body
        self.max_connections = max_connections
        self.per_address = per_address
        self.head_seconds = head_seconds
        self.ok_status = ok_status
        self.timeout = timeout
        self.on_post = on_post
        self._stats = ReceiveStats()
        self._stats_lock = threading.Lock()
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None

    # -- life cycle ---------------------------------------------------------------------------

    def start(self) -> ReceiveServer:
        """Bind and serve in a background thread."""
        family = socket.AF_INET6 if ":" in self.host else socket.AF_INET
        self._server = _Server((self.host, self._requested_port), self, family)
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.05},
                                        name=f"hes-{self.port}", daemon=True)
        self._thread.start()
        log.info("HES receiving on %s", self.url)
        return self

    def stop(self, grace: float = 2.0) -> None:
        """Stop accepting, give running requests ``grace`` seconds, then cut the rest."""
        server = self._server
        if server is None:
            return
        server.shutdown()
        end = time.monotonic() + grace
        while time.monotonic() < end:
            with server.connections_lock:
                busy = bool(server.connections)
            if not busy:
                break
            time.sleep(0.02)
        with server.connections_lock:
            for conn in list(server.connections):
                with contextlib.suppress(OSError):
                    conn.shutdown(socket.SHUT_RDWR)
        server.server_close()
        if self._thread is not None:
            self._thread.join(5)
        self._server = None
        if self._owns_store:
            self.store.close()

    def __enter__(self) -> ReceiveServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def port(self) -> int:
        """The bound port (useful with port 0)."""
        if self._server is None:
            raise RuntimeError("server not started")
        return int(self._server.server_address[1])

    @property
    def url(self) -> str:
        """The URL a gateway pushes to."""
        scheme = "https" if self._ssl is not None else "http"
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{scheme}://{host}:{self.port}{self.path or '/'}"

    @property
    def stats(self) -> ReceiveStats:
        """A snapshot of the counters."""
        with self._stats_lock:
            return self._stats

    def _count(self, refused: int | None = None, **increments: int) -> None:
        """Add to the counters; ``refused`` is the status of a refusal (counted in ``rejected`` too)."""
        with self._stats_lock:
            stats = self._stats
            values = {name: getattr(stats, name) + increments.get(name, 0) for name in _COUNTERS}
            by_status = dict(stats.refused)
            if refused is not None:
                values["rejected"] += 1
                by_status[refused] = by_status.get(refused, 0) + 1
            self._stats = ReceiveStats(**values, refused=tuple(sorted(by_status.items())))

    # -- requests -----------------------------------------------------------------------------

    def _reply(
        self, handler: _Handler, status: int, text: str = "", headers: dict[str, str] | None = None, *, close: bool = False
    ) -> None:
        """Send a plain-text answer with a Content-Length so keep-alive works; count it if it refuses."""
        if status >= 400:
            self._count(refused=status)
        body = text.encode("utf-8")
        handler.send_response(status)
        for name, value in (headers or {}).items():
            handler.send_header(name, value)
        if status != 204:
            handler.send_header("Content-Type", "text/plain; charset=utf-8")
            handler.send_header("X-Content-Type-Options", "nosniff")
            handler.send_header("Content-Length", str(len(body)))
        if close:
            handler.send_header("Connection", "close")
            handler.close_connection = True
        handler.end_headers()
        if status != 204 and body:
            handler.wfile.write(body)
        handler.wfile.flush()

    def _refuse_early(self, handler: _Handler, status: int, text: str, headers: dict[str, str] | None = None) -> None:
        """Answer before the body has ended and close; read (not keep) some of it so the client sees the answer."""
        self._reply(handler, status, text, headers, close=True)
        if _expects_continue(handler) and not handler.continued:
            return  # the client waits for 100 Continue and sends no body: nothing to read
        # Closing with unread data makes the kernel send a reset that can destroy our answer
        # in the client's receive buffer; reading the body (bounded) first avoids that.
        with contextlib.suppress(OSError, ValueError):
            handler.connection.settimeout(0.5)
            end = time.monotonic() + DRAIN_SECONDS
            drained = 0
            while drained < DRAIN_LIMIT and time.monotonic() < end:
                data = handler.rfile.read1(65536)
                if not data:
                    break
                drained += len(data)

    def _authorized(self, handler: _Handler) -> bool:
        if self._credentials is None:
            return True
        scheme, _, encoded = handler.headers.get("Authorization", "").partition(" ")
        if scheme.lower() != "basic":
            return False
        try:
            decoded = base64.b64decode(encoded.strip(), validate=True)
        except (binascii.Error, ValueError):
            return False
        user, sep, secret = decoded.partition(b":")
        want_user, want_secret = self._credentials
        # Both compared every time, so timing does not tell which one was wrong.
        user_ok = hmac.compare_digest(user, want_user)
        secret_ok = hmac.compare_digest(secret, want_secret)
        return bool(sep) and user_ok and secret_ok

    def _tell(self, handler: _Handler, status: int, error: str | None, lines: int = 0, gateways: tuple[str, ...] = (),
              new: int = 0) -> None:
        """Report what became of a POST to ``on_post`` (the command line's log)."""
        if self.on_post is None or handler.command != "POST":
            return
        path = handler.path.split("?", 1)[0]
        try:
            self.on_post(PostSummary(handler.client_address[0], path, status, lines, new, gateways, error))
        except Exception:  # a broken observer must not turn a stored POST into an error
            log.exception("on_post callback failed")

    def _refuse_head(self, handler: _Handler, problem: str) -> None:
        """Refuse a request whose head is ambiguous (``_head_problem``): 400, nothing read, connection closed."""
        log.info("%s %s from %s: 400 %s; nothing stored", handler.command, handler.path[:200], handler.client_address[0],
                 problem)
        self._tell(handler, 400, problem)
        self._refuse_early(handler, 400, f"bad request head: {problem}\n")

    def _handle_post(self, handler: _Handler) -> None:
        client = handler.client_address[0]
        request_path = handler.path.split("?", 1)[0]

        def refuse(status: int, error: str, text: str, headers: dict[str, str] | None = None) -> None:
            log.info("POST %s from %s: %d %s; nothing stored", request_path, client, status, error)
            self._tell(handler, status, error)
            self._refuse_early(handler, status, text, headers)

        # Everything up to the 100 Continue is decided from the request head alone (its
        # framing was checked by _Handler.parse_request).
        if self.path is not None and request_path != self.path:
            refuse(404, f"not {self.path}", f"reports are received at {self.path}\n")
            return
        if not self._authorized(handler):
            self._count(unauthorized=1)
            refuse(401, "missing or wrong credentials", "authentication required\n",
                   {"WWW-Authenticate": 'Basic realm="wmbus-stream HES", charset="UTF-8"'})
            return
        transfer = handler.headers.get("Transfer-Encoding")
        length = handler.headers.get("Content-Length")
        if transfer is not None and transfer.strip().lower() != "chunked":
            refuse(501, f"Transfer-Encoding {transfer!r}", f"Transfer-Encoding {transfer!r} is not supported\n")
            return
        if length is not None and int(length) > self.max_body:
            refuse(413, "body too large", f"body larger than {self.max_body} bytes\n")
            return
        if _expects_continue(handler):
            handler.send_response_only(100)
            handler.end_headers()
            handler.continued = True
        if transfer is not None:
            pieces = _chunked_pieces(handler.rfile, self.max_body)
        else:
            pieces = _length_pieces(handler.rfile, int(length or 0))
        parser = ReportParser()
        ingest = self.store.begin()
        gateways: dict[str, None] = {}

        def stage(lines: list[ReportLine]) -> None:
            gateways.update(dict.fromkeys(line.gateway for line in lines))
            ingest.stage(lines)

        try:
            try:
                for piece in pieces:
                    parser.feed(piece)
                    if len(parser.lines) >= STAGE_LINES:
                        stage(parser.take())
                stage(parser.finish())
            except _TooLarge:
                refuse(413, "body too large", f"body larger than {self.max_body} bytes\n")
                return
            except _BadBody as exc:
                refuse(400, f"bad body framing ({exc})", f"bad request body: {exc}\n")
                return
            except ReportError as exc:
                if parser.ended:
                    log.info("POST %s from %s: 400 %s; nothing stored", request_path, client, exc)
                    self._tell(handler, 400, str(exc))
                    self._reply(handler, 400, f"{exc}\n")  # the body has ended: the connection stays usable
                else:
                    refuse(400, str(exc), f"{exc}\n")  # the rest of the body is not waited for
                return
            except (_Cut, TimeoutError, OSError) as exc:
                log.info("POST from %s: body not received (%s); nothing stored", client, exc)
                handler.close_connection = True
                return
            try:
                new_readings, new_heard = ingest.commit()
            except Exception as exc:  # noqa: BLE001  (the gateway keeps the report and retries)
                log.error("POST from %s: storing %d lines failed: %s", client, parser.count, exc)
                self._tell(handler, 500, f"storage failed: {exc}")
                self._reply(handler, 500, f"storage failed: {exc}\n")
                return
        finally:
            ingest.abort()  # nothing is left staged after a commit; after a refusal, this drops it
        count = parser.count
        self._count(posts=1, lines=count, readings=new_readings, heard=new_heard, long_form=parser.long_form)
        # Reported before the answer, so a log reader sees POSTs in the order clients saw them.
        self._tell(handler, self.ok_status, None, count, tuple(gateways), new_readings)
        if self.ok_status == 204:
            self._reply(handler, 204)
        else:
            self._reply(handler, 200, f"OK {count} lines, {new_readings} new readings\n")


def _expects_continue(handler: _Handler) -> bool:
    """Whether the client waits for ``100 Continue`` before sending its body."""
    return handler.request_version != "HTTP/1.0" and handler.headers.get("Expect", "").strip().lower() == "100-continue"

