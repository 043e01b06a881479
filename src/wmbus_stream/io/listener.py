"""The HTTP/1.1 server under the web UI and the reference HES: connections, caps, TLS, deadlines, a strict head.

One accept thread plus one thread per connection (cheap at the tens of connections a
gateway or a receiver instance serves; waitress was weighed and left: it has no TLS and
reads a whole body before the application sees the request, so credentials could not be
checked first). What a request means is the ``Dispatcher``'s business.

- Connections are capped in all (``max_connections``) and per source address
  (``per_address``, an IPv6 /64 counting as one); the last ``reserve`` slots go only to
  sources holding fewer than two. A connection over a limit gets no thread: one shared thread
  answers it ``503`` with ``Retry-After``, reads what the client already sent (bounded) so
  the close does not reset the answer away, and closes it. Over TLS it is just closed.
- A client must not hold a thread without finishing a request head: the TLS handshake and
  each head (idle keep-alive time included) have one deadline (``head_seconds``), not a
  timeout per byte; a late head gets ``408``, an idle connection is closed.
- The head must say once how the body is framed, whom it is for and who asks: a repeated
  Content-Length, Transfer-Encoding, Host or Authorization, both Content-Length and
  Transfer-Encoding, a Content-Length that is not digits, a folded or malformed line are
  ``400`` and the connection is closed (request smuggling).
- ``100 Continue`` is never sent on the client's say-so: the dispatcher sends it
  (``continue_body``) once it has checked the head, so a refused client sends no body.
- ``stop`` ends accepting, lets running requests finish for ``grace`` seconds and cuts the
  rest, so a service stops within a second or two whatever its clients do.
"""

from __future__ import annotations

import contextlib
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
from email import errors
from email.message import Message
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Protocol

from .connections import DeadlineReader, Late, source_of

__all__ = ["Dispatcher", "Listener", "RequestHandler", "head_problem"]

log = logging.getLogger("wmbus_stream.http")

# Headers that must come at most once: they decide the body's framing, the target or who is asking.
_SINGLE_HEADERS = ("Content-Length", "Transfer-Encoding", "Host", "Authorization")
_LENGTH = re.compile(r"[0-9]{1,12}")  # up to a terabyte
_TOKEN = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")  # RFC 9110 5.1: a field name
_CONTROL = re.compile(r"[\x00-\x08\x0a-\x1f\x7f]")  # (tab is allowed in a value)
# Answers to what http.server itself refuses, in words that echo nothing of the input.
_STDLIB_REFUSALS = {
    400: "bad request line: send METHOD /path HTTP/1.1",
    414: "request target too long",
    431: "a header line is too long or there are too many headers",
    501: "method not supported",
    505: "only HTTP/1.0 and HTTP/1.1 are served",
}
# After refusing a connection or a request early, read at most this much of what the client
# sends, for at most this long, so it sees our answer instead of a connection reset.
DRAIN_LIMIT = 4 * 1024 * 1024
DRAIN_SECONDS = 2.0


class Dispatcher(Protocol):
    """What the listener needs of the application it serves: its limits, TLS context and request path."""

    name: str  # in the Server header and the busy answer
    timeout: float
    head_seconds: float
    max_connections: int
    per_address: int
    reserve: int
    tls: ssl.SSLContext | None

    def serve(self, handler: RequestHandler) -> None:
        """Answer one request whose head ``handler`` has read and checked."""
        ...

    def refused(self, status: int, reason: str) -> None:
        """Count an answer the listener gave itself (503 busy, 408 late head, 400 bad head)."""
        ...


def head_problem(headers: Message, version: str = "HTTP/1.1") -> str | None:
    """What makes a request head ambiguous about its body, target or sender (request smuggling); None if nothing."""
    # (A multipart Content-Type without a body in the head is a defect of the email parser, not of the head.)
    if any(isinstance(d, errors.InvalidHeaderDefect) for d in headers.defects):
        return "a header name is empty or holds characters other than letters, digits and !#$%&'*+-.^_`|~"
    if any(isinstance(d, errors.MissingHeaderBodySeparatorDefect) for d in headers.defects) or headers.get_payload():
        return "a header line is not 'Name: value' (no space may come before the colon)"
    for name in _SINGLE_HEADERS:
        count = len(headers.get_all(name) or ())
        if count > 1:
            return f"{name} is given {count} times; send it once"
    if any("\r" in value or "\n" in value for value in headers.values()):
        return "a header is folded onto a following line; send each header on one line"
    if any(not _TOKEN.fullmatch(name) for name in headers.keys()):
        return "a header name is empty or holds characters other than letters, digits and !#$%&'*+-.^_`|~"
    if any(_CONTROL.search(value) for value in headers.values()):
        return "a header value holds a control character (NUL, ...); send printable text"
    if version != "HTTP/1.0" and headers.get("Host") is None:
        return "an HTTP/1.1 request needs a Host header"
    if version == "HTTP/1.0" and headers.get("Transfer-Encoding") is not None:
        return "Transfer-Encoding in an HTTP/1.0 request; send a Content-Length"
    length = headers.get("Content-Length")
    if length is not None:
        if headers.get("Transfer-Encoding") is not None:
            return "both Content-Length and Transfer-Encoding; send one of them, not both"
        if not _LENGTH.fullmatch(length.strip(" \t")):
            return f"Content-Length {ascii(length[:20])} is not a number of bytes in ASCII digits (at most 12)"
    return None


class RequestHandler(BaseHTTPRequestHandler):
    """One connection's requests: deadlines on each head, the strict head check, then the dispatcher."""

    protocol_version = "HTTP/1.1"
    sys_version = ""
    server: Listener
    reader: DeadlineReader
    continued = False  # 100 Continue sent for the current request
    body_read, body_length = False, 0  # the dispatcher's, per request
    raw_requestline: bytes
    # Until a request line is parsed (an answer to a late or broken first head needs them).
    requestline, request_version, command = "", "HTTP/1.1", ""

    def setup(self) -> None:
        super().setup()
        self.rfile.close()  # the plain socket file, replaced by one that keeps deadlines
        self.reader = DeadlineReader(self.connection, self.server.app.timeout)
        self.rfile = io.BufferedReader(self.reader)

    def version_string(self) -> str:
        return self.server.app.name

    def handle_one_request(self) -> None:
        # The head must be complete within head_seconds of starting to wait for it: a client
        # sending a byte now and then does not keep its thread (parse_request stops the clock).
        seconds = self.server.app.head_seconds
        self.reader.start(seconds)
        try:
            super().handle_one_request()
        except Late:
            self.close_connection = True
            if self.reader.got:  # silence for an idle keep-alive connection, 408 for a late head
                log.info("%s did not send a request head within %g s", self.client_address[0], seconds)
                self.refuse(408, f"the request head did not arrive in time (within {seconds:g} s)\n")
        finally:
            self.reader.stop()

    def parse_request(self) -> bool:
        try:
            # RFC 9112 2.2: an empty line before the request line (a stray CRLF after a body) is ignored.
            if self.raw_requestline in (b"\r\n", b"\n"):
                self.raw_requestline = self.rfile.readline(65537)
            if not super().parse_request():
                return False
        finally:
            self.reader.stop()
        self.continued = False
        problem = head_problem(self.headers, self.request_version)
        if problem is not None:
            log.info("%s %s from %s: 400 %s", self.command, self.path[:200].encode("ascii", "backslashreplace").decode(),
                     self.client_address[0], problem)
            self.refuse(400, f"bad request head: {problem}\n")
            return False
        return True

    def handle_expect_100(self) -> bool:
        """Defer ``100 Continue`` to the dispatcher (``continue_body``), after its checks of the head."""
        return True

    def expects_continue(self) -> bool:
        """Whether the client waits for ``100 Continue`` before it sends its body."""
        return self.request_version != "HTTP/1.0" and self.headers.get("Expect", "").strip().lower() == "100-continue"

    def continue_body(self) -> None:
        """Tell a client that waits for it to send its body now (once per request)."""
        if self.expects_continue() and not self.continued:
            self.send_response_only(100)
            self.end_headers()
            self.continued = True

    def _serve(self) -> None:
        self.server.app.serve(self)

    do_GET = do_HEAD = do_POST = do_PUT = do_PATCH = do_DELETE = do_OPTIONS = _serve  # noqa: N815

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
        log.debug("%s %s", self.client_address[0], (format % args).encode("ascii", "backslashreplace").decode())

    def send_error(self, code: int, message: str | None = None, explain: str | None = None) -> None:
        """A malformed request line or head: a short plain answer (never an echo of the input), then close."""
        # parse_request leaves HTTP/0.9 (no status line, no headers) until it has read a version.
        self.request_version = self.protocol_version
        reason = _STDLIB_REFUSALS.get(code, "bad request")
        log.info("%s: %d %s", self.client_address[0], code, reason)
        self.refuse(code, f"{reason}\n")

    def refuse(self, code: int, text: str, headers: dict[str, str] | None = None) -> None:
        """A plain-text answer that ends the connection, counted by the dispatcher."""
        self.server.app.refused(code, text.strip())
        self.close_connection = True
        body = text.encode("utf-8")
        try:
            self.send_response_only(code)
            self.send_header("Server", self.server.app.name)
            self.send_header("Content-Type", "text/plain; charset=utf-8")
            self.send_header("Content-Length", str(len(body)))
            for name, value in (headers or {}).items():
                self.send_header(name, value)
            self.send_header("Connection", "close")
            self.end_headers()
            self.wfile.write(body)
            self.wfile.flush()
        except (OSError, ssl.SSLError):
            return
        self.drain()

    def drain(self) -> None:
        """Read (not keep) some of an unread body before closing, so the client sees the answer, not a reset."""
        if getattr(self, "headers", None) is None:
            return  # refused before its head was read: there is no body to speak of
        if self.expects_continue() and not self.continued:
            return  # the client waits for 100 Continue and sends no body: nothing to read
        with contextlib.suppress(OSError, ValueError, ssl.SSLError):
            self.connection.settimeout(0.5)
            end = time.monotonic() + DRAIN_SECONDS
            drained = 0
            while drained < DRAIN_LIMIT and time.monotonic() < end:
                data = self.rfile.read1(65536)
                if not data:
                    break
                drained += len(data)


class _Busy:
    """Turns away connections over a cap from one thread for all of them: 503, a half-close, a bounded drain."""

    MAX_OPEN = 256

    def __init__(self, answers: bool, name: str) -> None:
        self._answers = answers  # False: close without an answer (TLS would need a handshake)
        self._name = name
        self._new: queue.SimpleQueue[tuple[socket.socket, bytes] | None] = queue.SimpleQueue()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"{name}-busy", daemon=True)
        self._thread.start()

    def refuse(self, sock: socket.socket, reason: str) -> None:
        """Answer ``sock`` 503 saying ``reason`` and close it."""
        text = f"busy: {reason}; try again later\n"
        answer = (
            f"HTTP/1.1 503 Service Unavailable\r\nServer: {self._name}\r\nRetry-After: 5\r\n"
            f"Content-Type: text/plain; charset=utf-8\r\nContent-Length: {len(text)}\r\nConnection: close\r\n\r\n{text}"
        ).encode("ascii")
        self._new.put((sock, answer))

    def close(self) -> None:
        self._stop.set()
        self._new.put(None)  # wakes the thread
        self._thread.join(5)

    def _admit(self, sock: socket.socket, answer: bytes, waiting: dict[socket.socket, float]) -> None:
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
        waiting[sock] = time.monotonic() + 1.0

    def _run(self) -> None:
        waiting: dict[socket.socket, float] = {}
        drained: dict[socket.socket, int] = {}
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
                    try:
                        data = sock.recv(65536)
                    except OSError:
                        data = b""
                    total = drained.get(sock, 0) + len(data)
                    if data and total < DRAIN_LIMIT:
                        drained[sock] = total
                    else:
                        del waiting[sock]
                        drained.pop(sock, None)
                        _close(sock)
            now = time.monotonic()
            for sock in [s for s, deadline in waiting.items() if deadline <= now]:
                del waiting[sock]
                drained.pop(sock, None)
                _close(sock)
        for sock in waiting:
            _close(sock)


def _close(sock: socket.socket) -> None:
    with contextlib.suppress(OSError):
        sock.close()


class Listener(ThreadingHTTPServer):
    """ThreadingHTTPServer with connection caps, TLS per connection, a registry of connections and a bounded stop."""

    daemon_threads = True
    request_queue_size = 64

    def __init__(self, address: tuple[str, int], app: Dispatcher) -> None:
        self.address_family = socket.AF_INET6 if ":" in address[0] else socket.AF_INET
        self.app = app
        self.connections: set[socket.socket] = set()
        self.connections_lock = threading.Lock()
        self.held: dict[str, int] = {}  # open connections per source (connections.source_of)
        self.active = 0  # accepted connections with a thread, TLS handshake included
        self.refused_total = 0
        self._thread: threading.Thread | None = None
        super().__init__(address, RequestHandler)
        self.busy = _Busy(answers=app.tls is None, name=app.name)

    def start(self, name: str) -> Listener:
        """Serve in a background thread called ``name``."""
        self._thread = threading.Thread(target=self.serve_forever, kwargs={"poll_interval": 0.05}, name=name,
                                        daemon=True)
        self._thread.start()
        return self

    def stop(self, grace: float = 1.0) -> None:
        """Stop accepting, let running requests finish for ``grace`` seconds, then cut the rest and close."""
        self.shutdown()
        end = time.monotonic() + grace
        while time.monotonic() < end:
            with self.connections_lock:
                if not self.connections:
                    break
            time.sleep(0.02)
        with self.connections_lock:
            for conn in list(self.connections):
                with contextlib.suppress(OSError):
                    conn.shutdown(socket.SHUT_RDWR)
        self.server_close()
        if self._thread is not None:
            self._thread.join(5)

    @property
    def port(self) -> int:
        return int(self.server_address[1])

    def server_bind(self) -> None:
        # HTTPServer.server_bind resolves the host name (getfqdn), which can hang offline.
        if self.address_family == socket.AF_INET6:
            with contextlib.suppress(OSError):
                self.socket.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        socketserver.TCPServer.server_bind(self)
        host, port = self.server_address[:2]
        self.server_name, self.server_port = str(host), int(port)

    def server_close(self) -> None:
        super().server_close()
        busy = getattr(self, "busy", None)  # (socketserver closes here when the bind failed, before it exists)
        if busy is not None:
            busy.close()

    def process_request(self, request: Any, client_address: Any) -> None:
        source = source_of(client_address[0])
        refused = self._admit(source)
        if refused:
            log.info("%s: turned a connection from %s away: %s", self.app.name, client_address[0], refused)
            self.app.refused(503, refused)
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
            if held >= app.per_address:
                refused = f"{held} connections from this address are open, the most one address may have"
            elif self.active >= app.max_connections:
                refused = f"{self.active} connections are open, the most this server takes"
            elif self.active >= app.max_connections - app.reserve and held >= 2:
                refused = (f"{held} connections from this address are open and the last {app.reserve} "
                           "are kept for other addresses")
            else:
                self.held[source] = held + 1
                self.active += 1
                return None
            self.refused_total += 1
            return refused

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

    def finish_request(self, request: Any, client_address: Any) -> None:
        request.settimeout(self.app.timeout)
        with contextlib.suppress(OSError):
            # Headers and body leave in two writes; with Nagle on, the body waits for the
            # client's delayed ACK of the headers (40 ms per keep-alive answer).
            request.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        conn = request
        if self.app.tls is not None:
            try:
                # The handshake's timeout is one deadline for all of it (ssl's do_handshake).
                request.settimeout(self.app.head_seconds)
                conn = self.app.tls.wrap_socket(request, server_side=True)
                conn.settimeout(self.app.timeout)
            except (ssl.SSLError, OSError) as exc:
                log.info("TLS handshake with %s failed: %s", client_address[0], getattr(exc, "reason", None) or exc)
                return
        with self.connections_lock:
            self.connections.add(conn)
        try:
            RequestHandler(conn, client_address, self)
        finally:
            with self.connections_lock:
                self.connections.discard(conn)
            if conn is not request:
                with contextlib.suppress(OSError):
                    conn.close()

    def handle_error(self, request: Any, client_address: Any) -> None:
        exc = sys.exc_info()[1]
        if isinstance(exc, (ConnectionError, TimeoutError, ssl.SSLError)):
            log.debug("connection from %s ended: %s", client_address[0], exc)
        else:
            log.exception("unexpected error serving %s", client_address[0])
