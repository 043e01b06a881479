"""The HTTP edge of the reference HES: report POSTs in, validated as they stream, stored before the answer.

Strategy
- The listener (``io.listener``, shared with the web UI) caps connections in all and per
  source address, keeps one deadline on each TLS handshake and request head, refuses an
  ambiguous head (request smuggling) and stops within ``grace`` on SIGTERM.
- Path and credentials are checked from the request head, before any body byte is read:
  ``Expect: 100-continue`` is answered only after them, and a refusal closes the connection.
  Credentials are one shared user and password, or one per gateway (``credentials``): a
  gateway authenticates as its serial and a line of another serial is ``403``.
- A body (``Content-Length`` or chunked, which the stdlib does not decode for a server) is
  read in pieces and validated line by line as it arrives (``report``); validated lines go
  to the store's transaction in batches (``Store.begin``), so memory stays bounded. The
  first bad line answers ``400 line N: reason`` at once, crossing ``max_body`` answers
  ``413`` at once; either way the rest is not waited for and nothing of it is stored.

Invariants
- All or nothing per POST: a body is stored in one transaction, and the 2xx answer is sent
  only after it committed. A 2xx therefore means durable, so the gateway may forget the lines.
- Credentials are compared in constant time and never logged.
- Every refusal is counted by status (``stats``), connections turned away included.
"""

from __future__ import annotations

import logging
import ssl
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Protocol

from .. import __version__
from ..errors import ReportError
from ..io.listener import Listener, RequestHandler
from ..io.tls import server_context
from .credentials import Caller, SharedCredential
from .report import ReportLine, ReportParser
from .sqlite import SqliteStore
from .store import Store

__all__ = ["DEFAULT_MAX_BODY", "DEFAULT_MAX_CONNECTIONS", "HEAD_SECONDS", "Checker", "PostSummary", "ReceiveServer",
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


class Checker(Protocol):
    """Who may push: ``check`` the Authorization header (or None); the caller, or None when refused."""

    def check(self, header: str | None) -> Caller | None: ...


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


class _Forbidden(Exception):
    """A line of another gateway than the one the credentials belong to."""


class _Cut(Exception):
    """The client closed the connection before its body ended."""


class _Reader(Protocol):
    """What the body readers need of a connection's buffered reader."""

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

    reserve = 0  # (the listener's slots kept for other addresses: not needed here)

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        store: Store | None = None,
        username: str | None = None,
        password: str | None = None,
        credentials: Checker | None = None,
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
        on_commit: Callable[[int], None] | None = None,
    ):
        check_credentials(username, password)
        if credentials is not None and username is not None:
            raise ValueError("give either one shared user and password or per-gateway credentials, not both")
        if tls_key is not None and tls_cert is None:
            raise ValueError("a TLS key needs its certificate")
        if ok_status not in (200, 204):
            raise ValueError("ok_status must be 200 or 204")
        if max_connections < 1:
            raise ValueError("max_connections must be at least 1")
        per_address = default_per_address(max_connections) if per_address is None else per_address
        if not 1 <= per_address <= max_connections:
            raise ValueError(f"per_address must be 1 to max_connections ({max_connections})")
        self.name = f"wmbus-stream-hes/{__version__}"
        self.host = host
        self._requested_port = port
        self._owns_store = store is None
        self.store: Store = store if store is not None else SqliteStore()
        if username is not None and password is not None:
            credentials = SharedCredential(username, password)
        self.credentials = credentials
        self.tls: ssl.SSLContext | None = server_context(tls_cert, tls_key) if tls_cert is not None else None
        self.path = path
        self.max_body = max_body
        self.max_connections = max_connections
        self.per_address = per_address
        self.head_seconds = head_seconds
        self.ok_status = ok_status
        self.timeout = timeout
        self.on_post = on_post
        self.on_commit = on_commit
        self._stats = ReceiveStats()
        self._stats_lock = threading.Lock()
        self._server: Listener | None = None
        self._stopping = False

    def start(self) -> ReceiveServer:
        """Bind and serve in a background thread."""
        self._server = Listener((self.host, self._requested_port), self).start(f"hes-{self._requested_port}")
        log.info("HES receiving on %s", self.url)
        return self

    def stop(self, grace: float = 1.0) -> None:
        """Stop accepting, give running requests ``grace`` seconds, then cut the rest (nothing half stored)."""
        server, self._server = self._server, None
        if server is None:
            return
        self._stopping = True
        server.stop(grace)
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
        return self._server.port

    @property
    def url(self) -> str:
        """The URL a gateway pushes to."""
        scheme = "https" if self.tls is not None else "http"
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

    def refused(self, status: int, reason: str) -> None:
        """Count a refusal (the listener's own too: busy, late or bad heads)."""
        self._count(refused=status, busy=int(status == 503))

    # -- requests -----------------------------------------------------------------------------

    def _reply(self, handler: RequestHandler, status: int, text: str = "") -> None:
        """Send a plain-text answer with a Content-Length so keep-alive works; count it if it refuses."""
        if status >= 400:
            self._count(refused=status)
        body = text.encode("utf-8")
        try:
            handler.send_response(status)
            if status != 204:
                handler.send_header("Content-Type", "text/plain; charset=utf-8")
                handler.send_header("Content-Length", str(len(body)))
            handler.end_headers()
            if status != 204:
                handler.wfile.write(body)
            handler.wfile.flush()
        except (OSError, ssl.SSLError) as exc:
            handler.close_connection = True
            log.info("answer %d to %s not delivered: %s", status, handler.client_address[0], exc)

    def _tell(self, handler: RequestHandler, status: int, error: str | None, lines: int = 0,
              gateways: tuple[str, ...] = (), new: int = 0) -> None:
        """Report what became of a POST to ``on_post`` (the command line's log)."""
        if self.on_post is None:
            return
        path = handler.path.split("?", 1)[0]
        try:
            self.on_post(PostSummary(handler.client_address[0], path, status, lines, new, gateways, error))
        except Exception:  # a broken observer must not turn a stored POST into an error
            log.exception("on_post callback failed")

    def serve(self, handler: RequestHandler) -> None:
        """Answer one request: a report POST, or 405."""
        if handler.command != "POST":
            handler.refuse(405, "only POST is accepted here\n", {"Allow": "POST"})
            return
        self._handle_post(handler)

    def _handle_post(self, handler: RequestHandler) -> None:
        client = handler.client_address[0]
        request_path = handler.path.split("?", 1)[0]

        def refuse(status: int, error: str, text: str, headers: dict[str, str] | None = None) -> None:
            log.info("POST %s from %s: %d %s; nothing stored", request_path[:200], client, status, error)
            self._tell(handler, status, error)
            handler.refuse(status, text, headers)

        # Everything up to the 100 Continue is decided from the request head alone (its
        # framing was checked by the listener).
        if self.path is not None and request_path != self.path:
            refuse(404, f"not {self.path}", f"reports are received at {self.path}\n")
            return
        caller = None
        if self.credentials is not None:
            caller = self.credentials.check(handler.headers.get("Authorization"))
            if caller is None:
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
        handler.continue_body()
        if transfer is not None:
            pieces = _chunked_pieces(handler.rfile, self.max_body)
        else:
            pieces = _length_pieces(handler.rfile, int(length or 0))
        own = caller.serial if caller is not None else None
        parser = ReportParser()
        ingest = self.store.begin()
        gateways: dict[str, None] = {}

        def stage(lines: list[ReportLine]) -> None:
            if own is not None:
                first = parser.count - len(lines) + 1
                for number, line in enumerate(lines, first):
                    if line.gateway != own:
                        raise _Forbidden(f"line {number}: gateway {line.gateway} in a report of gateway {own}, which"
                                         " may only report its own serial")
            else:
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
                if self._stopping:  # cut by stop(): the client retries, nothing of it was stored
                    log.info("POST from %s: cut by the receiver stopping; nothing stored", client)
                    handler.close_connection = True
                    return
                refuse(400, f"bad body framing ({exc})", f"bad request body: {exc}\n")
                return
            except _Forbidden as exc:
                refuse(403, str(exc), f"{exc}\n")
                return
            except ReportError as exc:
                if parser.ended:
                    log.info("POST %s from %s: 400 %s; nothing stored", request_path[:200], client, exc)
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
        if new_readings and self.on_commit is not None:
            self.on_commit(new_readings)
        # Reported before the answer, so a log reader sees POSTs in the order clients saw them.
        self._tell(handler, self.ok_status, None, count, (own,) if own else tuple(gateways), new_readings)
        if self.ok_status == 204:
            self._reply(handler, 204)
        else:
            self._reply(handler, 200, f"OK {count} lines, {new_readings} new readings\n")
