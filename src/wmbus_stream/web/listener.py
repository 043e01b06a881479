"""Listening and connections: the accept loop, the connection caps, TLS and the deadlines of each read.

One accept thread plus one thread per connection. A client must not hold a thread without
finishing a request: the TLS handshake and the request head (idle keep-alive time included)
each have one deadline in all (``head_seconds``), not a timeout per byte. Connections are
capped in all (``max_connections``) and per source address (``per_address``, an IPv6 /64
counting as one), and the last ``reserve`` slots go only to sources holding fewer than two,
so the owner still gets in while other addresses hold their cap; a connection over a limit
gets a short 503 and is closed. TLS is negotiated in the connection's own thread, never in
the accept loop. What a request means is the ``Dispatcher``'s business (``server.WebServer``).
"""

from __future__ import annotations

import contextlib
import io
import logging
import socket
import socketserver
import ssl
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Protocol

from ..io.connections import DeadlineReader, Late
from .auth import source_of

__all__ = ["Dispatcher", "Listener", "RequestHandler"]

log = logging.getLogger("wmbus_stream.web")


class Dispatcher(Protocol):
    """What the listener needs of the application it serves: its limits, TLS context and request path."""

    timeout: float
    head_seconds: float
    max_connections: int
    per_address: int
    reserve: int
    tls: ssl.SSLContext | None

    def serve(self, handler: RequestHandler) -> None: ...


class RequestHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "wmbus-stream"
    sys_version = ""
    server: Listener
    reader: DeadlineReader
    body_read = False  # set per request by WebServer.serve / _read_body
    body_length = 0  # set per request by _framing

    def setup(self) -> None:
        super().setup()
        self.rfile.close()  # the plain socket file, replaced by one that keeps deadlines
        self.reader = DeadlineReader(self.connection, self.server.app.timeout)
        self.rfile = io.BufferedReader(self.reader)

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
                log.info("web: %s did not send a request head within %g s", self.client_address[0], seconds)
                self._plain(408, b"the request head did not arrive in time\n")
        finally:
            self.reader.stop()

    def parse_request(self) -> bool:
        try:
            return super().parse_request()
        finally:
            self.reader.stop()

    def _serve(self) -> None:
        self.server.app.serve(self)

    do_GET = do_HEAD = do_POST = do_PUT = do_PATCH = do_DELETE = _serve  # noqa: N815

    def version_string(self) -> str:
        return self.server_version

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
        log.debug("%s %s", self.client_address[0], (format % args).encode("ascii", "backslashreplace").decode())

    def send_error(self, code: int, message: str | None = None, explain: str | None = None) -> None:
        # Malformed request lines and headers: a short plain answer, never an echo of the input.
        self._plain(code, b"bad request\n")

    def _plain(self, code: int, body: bytes) -> None:
        """A short plain-text answer that ends the connection."""
        self.close_connection = True
        try:
            self.send_response_only(code)
            self.send_header("Server", self.server_version)
            self.send_header("Content-Type", "text/plain; charset=utf-8")
            self.send_header("Content-Length", str(len(body)))
            self.send_header("Connection", "close")
            self.end_headers()
            self.wfile.write(body)
        except (OSError, ssl.SSLError):
            pass


class Listener(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 64

    def __init__(self, address: tuple[str, int], app: Dispatcher, family: int) -> None:
        self.address_family = family
        self.app = app
        self.connections: set[socket.socket] = set()
        self.connections_lock = threading.Lock()
        self.held: dict[str, int] = {}  # open connections per source (auth.source_of)
        self.active = 0
        self.refused_total = 0
        super().__init__(address, RequestHandler)

    def server_bind(self) -> None:
        # HTTPServer.server_bind resolves the host name (getfqdn), which can hang offline.
        if self.address_family == socket.AF_INET6:
            with contextlib.suppress(OSError):
                self.socket.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        socketserver.TCPServer.server_bind(self)
        host, port = self.server_address[:2]
        self.server_name, self.server_port = str(host), int(port)

    def process_request(self, request: Any, client_address: Any) -> None:
        source = source_of(client_address[0])
        refused = self._admit(source)
        if refused:
            log.debug("web: refused a connection from %s: %s", client_address[0], refused)
            if self.app.tls is None:  # a TLS client could not read a plain answer
                body = f"{refused}; try again later\n".encode()
                with contextlib.suppress(OSError):
                    request.sendall(b"HTTP/1.1 503 Service Unavailable\r\nServer: wmbus-stream\r\n"
                                    b"Content-Type: text/plain; charset=utf-8\r\nRetry-After: 10\r\n"
                                    b"Content-Length: %d\r\nConnection: close\r\n\r\n%s" % (len(body), body))
            self.shutdown_request(request)
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
                refused = f"{self.active} connections are open, the most this gateway takes"
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
                log.debug("TLS handshake with %s failed: %s", client_address[0], exc)
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

