"""The gateway's HTTP client: the report push, and fetch/notify for the configuration sync.

Strategy
- urllib3 2.x does the HTTP; its own retries and redirects are off (``retries=False``). The
  push loop here owns retrying because a chunked body is a generator that cannot be rewound:
  ``body_factory()`` is called again for every attempt, so a retry always sends the complete
  report (A.7 #21).
- One POST per attempt, ``Transfer-Encoding: chunked`` and never ``Content-Length``. Small
  pieces from the report generator are coalesced into chunks of up to ``CHUNK_SIZE`` bytes
  so the wire carries a few framed chunks instead of one per line; empty pieces are dropped
  because an empty chunk would end the body early.
- A 2xx acknowledges only a body that was sent whole: the report generator ran to its end,
  every chunk and the terminating zero chunk were written to the socket (counted in the
  connection's ``send``, where ``sendall`` returns), and the HES then closed the connection
  (every push asks for ``Connection: close``) without a reset and with nothing of ours left
  unacknowledged in the socket's send queue. urllib3 swallows a broken pipe or reset while
  sending so that it can read an early answer; such an answer, a reset after the answer or a
  body cut short any other way is a failed push (retried, the report kept), never an
  acknowledgement. 408, 429, 5xx, connection and timeout failures are retried with
  exponential backoff and full jitter (``BACKOFF_BASE`` doubling up to ``BACKOFF_CAP``), or
  after exactly ``Retry-After`` when the server sends one. Other statuses, TLS verification
  failures and a bad configuration are not retried in this interval: a retry cannot fix them.
- Only the final status counts: interim answers (1xx other than 101, RFC 9110 §15.2) and
  their headers are skipped within ``INTERIM_MAX`` bytes together (``_FinalResponse``, the
  response class of every connection here); 101 is a final status, hence a failure.
- A wait never ends past ``deadline`` (the next cron tick, on the ``clock`` scale): the push
  stops instead and the caller's store keeps the report for that tick. Connect and read
  timeouts of an attempt are shortened to the time left before the deadline.
- A set ``stop_event`` abandons the push between chunks or during a wait; the connection is
  dropped, so the server sees an incomplete body and must store nothing of it.

Invariants
- Nothing is acknowledged that was not sent: ``PushResult.ok`` only for a 2xx to a body that
  reached the socket whole (see above); ``bytes_sent`` counts report bytes the socket took.
- TLS verification is always on: system CAs plus an optional private CA file, hostname
  checked. There is no switch to turn it off.
- Credentials come from the arguments or the URL's user info; they are sent only as an
  ``Authorization`` header, only to the origin they came with (a redirect elsewhere drops
  them), and never appear in a log line, a result or an error message (URLs are shown
  without user info and with the query elided).
- ``fetch`` and ``notify`` ask the caller's ``check`` before every request (each redirect
  too), build TLS settings (and read the CA file) only for https requests, and give every
  error a ``public`` wording fit for a remote party.
- Text from the peer (status reason, body excerpt, Location, library messages quoting peer
  bytes) enters a message only through ``text.printable``: escaped, one line, bounded.
- Expected failures are results (``PushResult``) or ``HttpError`` with a message naming the
  cause, logged as one line without a traceback.
"""

from __future__ import annotations

import base64
import email.utils
import fcntl
import http.client
import logging
import os
import random
import socket
import ssl
import struct
import termios
import threading
import time
from collections.abc import Callable, Generator, Iterable, Iterator
from dataclasses import dataclass
from typing import Any
from urllib.parse import unquote, urljoin

import urllib3
from urllib3.connection import HTTPConnection, HTTPSConnection
from urllib3.connectionpool import HTTPConnectionPool, HTTPSConnectionPool
from urllib3.exceptions import (
    ConnectTimeoutError,
    LocationParseError,
    NameResolutionError,
    NewConnectionError,
    ReadTimeoutError,
)
from urllib3.util import parse_url

from .. import __version__
from ..errors import GatewayIOError
from ..text import printable

__all__ = [
    "PushResult",
    "Timeouts",
    "HttpError",
    "push",
    "fetch",
    "notify",
    "DEFAULT_USER_AGENT",
    "BACKOFF_BASE",
    "BACKOFF_CAP",
    "CHUNK_SIZE",
]

log = logging.getLogger("wmbus_stream.push")
sync_log = logging.getLogger("wmbus_stream.sync")

DEFAULT_USER_AGENT = f"wmbus-stream/{__version__}"
BACKOFF_BASE = 1.0
BACKOFF_CAP = 60.0
# A Retry-After longer than this (with no deadline to bound it) ends the push instead of
# parking the caller's thread; the caller sees it in PushResult.retry_after.
RETRY_AFTER_MAX = 900.0
CHUNK_SIZE = 16 * 1024
# Timeouts shortened by a near deadline keep at least this much, so the attempt can succeed.
MIN_TIMEOUT = 0.5
# How much of an error response is kept for the message (the HES says what was wrong there).
ERROR_EXCERPT = 300
# After a 2xx at most this much more is read while waiting for the HES to close the connection.
DRAIN_MAX = 64 * 1024
# Interim answers (1xx but 101) before the final one may take at most this many bytes together.
INTERIM_MAX = 64 * 1024
RETRYABLE_STATUS = frozenset({408, 429})
REDIRECT_STATUS = frozenset({301, 302, 303, 307, 308})


@dataclass(frozen=True, slots=True)
class PushResult:
    """Outcome of one push: acknowledged or not, and why not."""

    ok: bool
    status: int | None
    attempts: int
    error: str | None
    duration: float
    bytes_sent: int
    retryable: bool = True
    stopped: bool = False
    retry_after: float | None = None


@dataclass(frozen=True, slots=True)
class Timeouts:
    """Connect, per-read and total time limits in seconds for fetch and notify."""

    connect: float = 10.0
    read: float = 30.0
    total: float = 120.0


class HttpError(GatewayIOError):
    """A fetch or notify failed; the message names the cause, ``status`` the HTTP status if any.

    ``public`` is what may be told to a remote party (a sync's result): the same as the
    message unless that holds another server's words (an excerpt of its answer) or tells
    one way of not reaching a host from another.
    """

    def __init__(self, message: str, *, status: int | None = None, retryable: bool = True,
                 public: str | None = None):
        super().__init__(message)
        self.status = status
        self.retryable = retryable
        self.public = public if public is not None else message

    def __str__(self) -> str:
        return str(self.args[0])


class _Stopped(Exception):
    """Raised inside the body generator when the stop event is set (not an OSError on purpose)."""


class _BodyFailed(Exception):
    """The caller's body generator raised; carried through urllib3 without being taken for IO."""


@dataclass(frozen=True, slots=True)
class _Target:
    """A URL split into what is sent, what is shown and the credentials."""

    url: str
    scheme: str
    netloc: str
    display: str
    authorization: str | None


def _target(url: str, username: str | None, password: str | None) -> _Target:
    """Parse and check a http(s) URL; credentials from the arguments win over the user info."""
    try:
        parsed = parse_url(url.strip())
    except LocationParseError as exc:
        raise ValueError(f"invalid URL: {exc}") from None
    scheme = (parsed.scheme or "").lower()
    if scheme not in ("http", "https") or not parsed.host:
        raise ValueError(f"URL must be http:// or https:// with a host, got scheme {scheme or 'none'!r}")
    if username is None and parsed.auth:
        user, _, secret = parsed.auth.partition(":")
        username, password = unquote(user), unquote(secret)
    authorization = None
    if username is not None:
        # UTF-8 as RFC 7617 advertises it (urllib3's make_headers would use Latin-1).
        token = base64.b64encode(f"{username}:{password or ''}".encode()).decode("ascii")
        authorization = f"Basic {token}"
    port = parsed.port or (443 if scheme == "https" else 80)
    netloc = f"{parsed.host}:{port}"
    path = parsed.path or "/"
    clean = parsed._replace(scheme=scheme, auth=None, fragment=None, path=path)
    # Shown in every message; after a redirect it comes from the server's Location.
    display = printable(f"{scheme}://{netloc}{path}", 300) + ("?..." if parsed.query else "")
    return _Target(clean.url, scheme, netloc, display, authorization)


def _ssl_context(ca_file: str | None) -> ssl.SSLContext:
    """System CAs plus an optional private CA; verification and hostname check on."""
    context = ssl.create_default_context()
    if ca_file:
        try:
            context.load_verify_locations(cafile=ca_file)
        except (OSError, ssl.SSLError) as exc:
            reason = getattr(exc, "strerror", None) or getattr(exc, "reason", None) or str(exc)
            raise ValueError(f"CA file {ca_file} cannot be used: {reason}") from None
    return context


class _FinalResponse(http.client.HTTPResponse):
    """An answer whose status is the final one: interim 1xx answers (not 101) are skipped, RFC 9110 §15.2."""

    def _read_status(self) -> tuple[str, int, str]:
        budget = INTERIM_MAX
        while True:
            version, status, reason = super()._read_status()
            if not 100 <= status < 200 or status == 101:
                return version, status, reason
            budget -= len(version) + len(reason) + 5
            while budget >= 0:  # its header lines, up to the empty line
                line = self.fp.readline(budget + 1)
                budget -= len(line)
                if line in (b"\r\n", b"\n", b""):
                    break
            if budget < 0:
                raise http.client.HTTPException(f"more than {INTERIM_MAX} bytes of interim (1xx) answers")


class _HTTPConnection(HTTPConnection):
    response_class = _FinalResponse


class _HTTPSConnection(HTTPSConnection):
    response_class = _FinalResponse


class _HTTPPool(HTTPConnectionPool):
    ConnectionCls = _HTTPConnection


class _HTTPSPool(HTTPSConnectionPool):
    ConnectionCls = _HTTPSConnection


class _BodyMeter:
    """One attempt's body: what the report produced and what of it the socket took.

    The report generator (``_coalesce``) announces each chunk before urllib3 sends it; the
    connection's ``send`` confirms it once ``sendall`` returned. The first send of an
    attempt is the request head, a send after the generator's end is the zero chunk.
    """

    def __init__(self) -> None:
        self.wire: socket.socket | None = None
        self.reset()

    def reset(self) -> None:
        """Forget the previous attempt (and its socket)."""
        self.close()
        self.taken = 0  # bytes taken from the report generator
        self.produced = 0  # payload bytes handed to urllib3 as chunks
        self.written = 0  # payload bytes of chunks the socket took whole
        self.pending = 0  # payload of the chunk handed over and not yet written
        self.finished = False  # the report generator ran to its end
        self.terminated = False  # the terminating zero chunk was written
        self.fault: str | None = None  # why the body did not reach the socket whole

    def chunk(self, size: int) -> None:
        """The generator hands urllib3 a chunk of ``size`` payload bytes."""
        self.produced += size
        self.pending = size

    def sent(self, sock: socket.socket | None, size: int) -> None:
        """The connection's sendall took ``size`` bytes."""
        if self.wire is None and sock is not None:
            # Our own handle on the TCP socket, to see how the HES ends the connection after
            # its answer (http.client closes its socket object once the answer is read).
            self.wire = socket.socket(fileno=os.dup(sock.fileno()))
        if self.pending:
            framed = len(b"%x\r\n" % self.pending) + self.pending + 2
            if size == framed:
                self.written += self.pending
            elif self.fault is None:
                self.fault = f"a chunk of {self.pending} bytes went out as {size} bytes"
            self.pending = 0
        elif self.finished and size == len(b"0\r\n\r\n"):
            self.terminated = True

    def failed(self, exc: OSError) -> None:
        """A send failed (urllib3 may swallow it to read an early answer)."""
        if self.fault is None:
            self.fault = f"sending failed: {exc.strerror or type(exc).__name__}"
        self.pending = 0

    def complete(self) -> bool:
        """True when the whole body, zero chunk included, reached the socket."""
        return self.finished and self.terminated and self.fault is None and self.written == self.produced

    def peer_problem(self, timeout: float) -> str | None:
        """After a 2xx: None when the HES closed cleanly with every byte of ours received."""
        wire = self.wire
        if wire is None:
            return "but no connection was seen"
        # What is left of the answer (or a TLS close alert), within the read timeout and a
        # size limit: an HES that keeps the connection open, or keeps talking, is judged below.
        end, left_over = time.monotonic() + timeout, 0
        try:
            while (left := end - time.monotonic()) > 0 and left_over <= DRAIN_MAX:
                wire.settimeout(left)
                data = wire.recv(65536)
                if not data:
                    break
                left_over += len(data)
        except TimeoutError:
            pass
        except OSError as exc:
            # It may have read and stored everything: all that is known is that it did not close cleanly.
            how = "reset" if isinstance(exc, ConnectionResetError) else f"broke ({exc.strerror or type(exc).__name__})"
            return f"but {how} the connection after answering: not acknowledged, kept (a duplicate at worst)"
        try:
            unacked = struct.unpack("i", fcntl.ioctl(wire.fileno(), termios.TIOCOUTQ, b"\0" * 4))[0]
        except OSError:
            unacked = 0  # no send-queue figure on this socket: the clean close has to do
        if unacked:
            return f"and closed the connection with {unacked} bytes of the body not received: not acknowledged, kept"
        return None

    def close(self) -> None:
        if self.wire is not None:
            self.wire.close()
            self.wire = None


class _MeteredConnection:
    """A urllib3 connection whose ``send`` reports to the push's body meter."""

    def __init__(self, *args: Any, meter: _BodyMeter, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._meter = meter

    def send(self, data: Any) -> None:
        try:
            super().send(data)  # type: ignore[misc]
        except OSError as exc:
            self._meter.failed(exc)
            raise
        self._meter.sent(self.sock, len(data))  # type: ignore[attr-defined]


class _MeteredHTTPConnection(_MeteredConnection, _HTTPConnection):
    pass


class _MeteredHTTPSConnection(_MeteredConnection, _HTTPSConnection):
    pass


class _PushHTTPPool(HTTPConnectionPool):
    ConnectionCls = _MeteredHTTPConnection


class _PushHTTPSPool(HTTPSConnectionPool):
    ConnectionCls = _MeteredHTTPSConnection


def _push_pool(target: _Target, ca_file: str | None, meter: _BodyMeter) -> HTTPConnectionPool:
    """A one-connection pool to the push target whose connections report to ``meter``."""
    context = _ssl_context(ca_file) if target.scheme == "https" else None  # a CA file matters only for https
    parsed = parse_url(target.url)
    port = parsed.port or (443 if target.scheme == "https" else 80)
    if target.scheme == "https":
        return _PushHTTPSPool(parsed.host, port, retries=False, maxsize=1, cert_reqs="CERT_REQUIRED",
                              ssl_context=context, meter=meter)
    return _PushHTTPPool(parsed.host, port, retries=False, maxsize=1, meter=meter)


def _causes(exc: BaseException) -> Iterator[BaseException]:
    """The exception and everything it wraps (args, reason, cause, context), each once."""
    seen: set[int] = set()
    todo: list[BaseException] = [exc]
    while todo:
        e = todo.pop(0)
        if id(e) in seen:
            continue
        seen.add(id(e))
        yield e
        for nested in (*getattr(e, "args", ()), getattr(e, "reason", None), e.__cause__, e.__context__):
            if isinstance(nested, BaseException):
                todo.append(nested)


def _describe(exc: BaseException, netloc: str, connect_timeout: float, read_timeout: float) -> tuple[str, bool]:
    """A field engineer's description of a failed attempt, and whether a retry may help."""
    chain = list(_causes(exc))

    def first(kind: type[BaseException] | tuple[type[BaseException], ...]) -> BaseException | None:
        return next((e for e in chain if isinstance(e, kind)), None)

    if (e := first(ssl.SSLCertVerificationError)) is not None:
        reason = printable(getattr(e, "verify_message", None) or getattr(e, "reason", None) or str(e))
        return f"TLS verify failed: {reason} (server {netloc}; set the CA file if it uses a private CA)", False
    if first(ConnectionRefusedError) is not None:
        return f"connection refused by {netloc} (is the server running and listening there?)", True
    if (e := first(NameResolutionError)) is not None:
        return f"cannot resolve host name of {netloc} (DNS)", True
    if (e := first(ConnectTimeoutError)) is not None and not isinstance(e, NewConnectionError):
        return f"connect timeout: no connection to {netloc} within {connect_timeout:g} s", True
    if first(ReadTimeoutError) is not None:
        return f"timeout: no response from {netloc} within {read_timeout:g} s", True
    if first((TimeoutError, socket.timeout)) is not None:
        return f"timeout: {netloc} stopped reading the upload for {connect_timeout:g} s", True
    if (e := first(ssl.SSLError)) is not None:
        return f"TLS handshake with {netloc} failed: {printable(str(getattr(e, 'reason', None) or e))}", True
    if first(http.client.RemoteDisconnected) is not None:
        return f"connection closed by {netloc} before it answered", True
    if first((ConnectionResetError, BrokenPipeError, ConnectionAbortedError)) is not None:
        return f"connection reset by {netloc} during the request", True
    if first(http.client.IncompleteRead) is not None:
        return f"connection closed by {netloc} in the middle of its answer", True
    if (e := first(http.client.HTTPException)) is not None:
        return f"{netloc} answered what is not HTTP: {type(e).__name__}: {printable(str(e))}", True
    if isinstance(e := first(OSError), OSError) and e.strerror:
        return f"cannot connect to {netloc}: {e.strerror}", True
    if first(NewConnectionError) is not None:
        return f"cannot connect to {netloc}", True
    inner = chain[-1]
    return f"connection to {netloc} failed: {type(inner).__name__}: {printable(str(inner))}", True


def _retry_after(value: str | None, now_wall: float) -> float | None:
    """Seconds to wait from a Retry-After header (delta-seconds or an HTTP date), or None."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if when is None or when.tzinfo is None:
        return None
    return max(0.0, when.timestamp() - now_wall)


def _excerpt(data: bytes) -> str:
    """A short, printable, one-line excerpt of an error body (line breaks and runs of blanks as one space)."""
    return printable(b" ".join(data[:ERROR_EXCERPT + 1].split()), ERROR_EXCERPT)


def _read_excerpt(response: urllib3.BaseHTTPResponse) -> bytes:
    """Up to ERROR_EXCERPT+1 bytes of a response body; a broken body reads as empty."""
    try:
        return response.read(ERROR_EXCERPT + 1, decode_content=False)
    except Exception:  # the status line already said what matters  # noqa: BLE001
        return b""


def _status_text(status: int, reason: str | None, body: bytes) -> str:
    text = f"HTTP {status}" + (f" {printable(reason)}" if reason else "")
    excerpt = _excerpt(body)
    return f"{text}: {excerpt}" if excerpt else text


def _coalesce(pieces: Iterator[bytes], stop_event: threading.Event | None, meter: _BodyMeter) -> Generator[bytes, None, None]:
    """Chunks of up to CHUNK_SIZE from the caller's pieces, announced to the meter; honours stop."""
    buffer = bytearray()
    try:
        for piece in pieces:
            if stop_event is not None and stop_event.is_set():
                raise _Stopped()
            meter.taken += len(piece)
            buffer += piece
            while len(buffer) >= CHUNK_SIZE:
                chunk = bytes(buffer[:CHUNK_SIZE])
                del buffer[:CHUNK_SIZE]
                meter.chunk(len(chunk))
                yield chunk
    except _Stopped:
        raise
    except Exception as exc:
        raise _BodyFailed(exc) from exc
    if buffer:
        meter.chunk(len(buffer))
        yield bytes(buffer)
    meter.finished = True


def _report_size(meter: _BodyMeter, rest: Iterator[bytes]) -> str:
    """The size of the whole report for a message, counting what was never sent."""
    try:
        return str(meter.taken + sum(len(piece) for piece in rest))
    except Exception:  # noqa: BLE001  (only a message depends on it)
        return "?"


def _incomplete(status: int, meter: _BodyMeter, rest: Iterator[bytes]) -> str:
    """Why a 2xx for a body that did not reach the socket whole acknowledges nothing."""
    if not meter.finished or meter.written != meter.produced:
        where = f"after {meter.written} of {_report_size(meter, rest)} bytes"
    else:
        where = f"after all {meter.written} bytes but before the end of the body (the terminating chunk was not sent)"
    cause = f" ({meter.fault})" if meter.fault else ""
    return f"HES answered HTTP {status} {where}{cause}: not acknowledged, kept"


@dataclass(frozen=True, slots=True)
class _Attempt:
    """One POST's outcome, before the retry decision."""

    ok: bool
    status: int | None
    error: str | None
    retryable: bool
    retry_after: float | None
    bytes_sent: int
    stopped: bool = False
    body_error: bool = False


def _post_once(
    pool: HTTPConnectionPool,
    meter: _BodyMeter,
    target: _Target,
    body_factory: Callable[[], Iterable[bytes]],
    headers: dict[str, str],
    connect_timeout: float,
    read_timeout: float,
    stop_event: threading.Event | None,
) -> _Attempt:
    """Send one chunked POST with a freshly built body and classify the answer."""
    meter.reset()
    try:
        pieces = iter(body_factory())
    except Exception as exc:  # noqa: BLE001  (a report that cannot be built is the caller's bug)
        message = f"report body could not be built: {type(exc).__name__}: {exc}"
        return _Attempt(False, None, message, False, None, 0, body_error=True)
    body = _coalesce(pieces, stop_event, meter)
    try:
        try:
            response = pool.urlopen(
                "POST",
                parse_url(target.url).request_uri,
                body=body,
                headers=headers,
                chunked=True,
                retries=False,
                redirect=False,
                preload_content=False,
                timeout=urllib3.Timeout(connect=connect_timeout, read=read_timeout),
            )
        except _Stopped:
            return _Attempt(False, None, "stopped while sending", False, None, meter.written, stopped=True)
        except _BodyFailed as exc:
            inner = exc.__cause__ or exc
            message = f"report body failed while sending: {type(inner).__name__}: {inner}"
            return _Attempt(False, None, message, False, None, meter.written, body_error=True)
        except Exception as exc:  # noqa: BLE001  (every transport failure becomes a described result)
            message, retryable = _describe(exc, target.netloc, connect_timeout, read_timeout)
            return _Attempt(False, None, message, retryable, None, meter.written)
        try:
            status = response.status
            if 200 <= status < 300:
                if not meter.complete():
                    return _Attempt(False, status, _incomplete(status, meter, pieces), True, None, meter.written)
                _read_excerpt(response)  # the start of its answer; peer_problem reads on to the close
                problem = meter.peer_problem(read_timeout)
                if problem is not None:
                    return _Attempt(False, status, f"HES answered HTTP {status} {problem}", True, None, meter.written)
                return _Attempt(True, status, None, False, None, meter.written)
            excerpt = _read_excerpt(response)
            message = _status_text(status, response.reason, excerpt)
            if status in REDIRECT_STATUS:
                message += f" (redirect to '{printable(response.headers.get('Location', '?'))}' not followed for a push; fix the URL)"
            retryable = status in RETRYABLE_STATUS or 500 <= status < 600
            retry_after = _retry_after(response.headers.get("Retry-After"), time.time()) if retryable else None
            return _Attempt(False, status, message, retryable, retry_after, meter.written)
        finally:
            # The pool is private to this push; closing never leaves half-read bytes for reuse.
            response.close()
    finally:
        body.close()
        close = getattr(pieces, "close", None)
        if callable(close):
            close()
        meter.close()


def push(
    url: str,
    body_factory: Callable[[], Iterable[bytes]],
    *,
    username: str | None = None,
    password: str | None = None,
    ca_file: str | None = None,
    connect_timeout: float = 10.0,
    read_timeout: float = 30.0,
    attempts: int = 5,
    deadline: float | None,
    user_agent: str = DEFAULT_USER_AGENT,
    sleep: Callable[[float], object] | None = None,
    clock: Callable[[], float] = time.monotonic,
    stop_event: threading.Event | None = None,
    rand: Callable[[], float] = random.random,
) -> PushResult:
    """POST a report chunked, retrying inside the interval; never raises for expected failures.

    ``deadline`` is on the ``clock`` scale. ``sleep`` defaults to waiting on ``stop_event``
    (so a stop cuts a wait short) or ``time.sleep`` without one.
    """
    started = clock()

    def result(ok: bool, status: int | None, tries: int, error: str | None, sent: int, **kw: Any) -> PushResult:
        return PushResult(ok, status, tries, error, clock() - started, sent, **kw)

    try:
        target = _target(url, username, password)
        meter = _BodyMeter()
        pool = _push_pool(target, ca_file, meter)
    except ValueError as exc:
        log.error("push not attempted: %s", exc)
        return result(False, None, 0, str(exc), 0, retryable=False)

    # Connection: close, so the HES ends every push by closing: a clean close after its answer
    # shows it read the whole body, a reset shows it did not (see _BodyMeter.peer_problem).
    headers = {"User-Agent": user_agent, "Content-Type": "text/plain; charset=us-ascii", "Connection": "close"}
    if target.authorization:
        headers["Authorization"] = target.authorization

    def wait(seconds: float) -> bool:
        """Wait; True when the stop event ended the wait."""
        if sleep is not None:
            sleep(seconds)
        elif stop_event is not None:
            return stop_event.wait(seconds)
        else:
            time.sleep(seconds)
        return stop_event is not None and stop_event.is_set()

    tries = 0
    last: _Attempt | None = None
    try:
        while True:
            if stop_event is not None and stop_event.is_set():
                log.info("push to %s abandoned: stopping", target.display)
                status, sent = (last.status, last.bytes_sent) if last else (None, 0)
                return result(False, status, tries, "stopped", sent, stopped=True)
            tries += 1
            connect_t, read_t = connect_timeout, read_timeout
            if deadline is not None:
                left = max(deadline - clock(), MIN_TIMEOUT)
                connect_t, read_t = min(connect_t, left), min(read_t, left)
            t0 = clock()
            last = _post_once(pool, meter, target, body_factory, headers, connect_t, read_t, stop_event)
            took = clock() - t0
            if last.ok:
                log.info(
                    "push to %s acknowledged: HTTP %s, %d bytes in %.2f s (attempt %d)",
                    target.display, last.status, last.bytes_sent, took, tries,
                )
                return result(True, last.status, tries, None, last.bytes_sent, retryable=False)
            if last.stopped:
                log.info("push to %s abandoned while sending: stopping", target.display)
                return result(False, None, tries, last.error, last.bytes_sent, stopped=True)
            if last.body_error:
                log.error("push to %s aborted: %s", target.display, last.error)
                return result(False, None, tries, last.error, last.bytes_sent, retryable=False)
            where = f"push to {target.display} attempt {tries}/{attempts} failed: {last.error}"
            if not last.retryable:
                log.error("%s; not retried (fix the cause; the report is kept for the next tick)", where)
                return result(False, last.status, tries, last.error, last.bytes_sent, retryable=False)
            if tries >= attempts:
                log.error("%s; giving up for this interval, the report is kept for the next tick", where)
                return result(False, last.status, tries, last.error, last.bytes_sent, retry_after=last.retry_after)
            if last.retry_after is not None:
                delay, why = last.retry_after, "as the server asked (Retry-After)"
            else:
                delay, why = rand() * min(BACKOFF_CAP, BACKOFF_BASE * 2 ** (tries - 1)), "backoff"
            if last.retry_after is not None and delay > RETRY_AFTER_MAX:
                log.error("%s; server asks to wait %.0f s (Retry-After), trying again at the next tick", where, delay)
                return result(False, last.status, tries, last.error, last.bytes_sent, retry_after=delay)
            if deadline is not None and clock() + delay >= deadline:
                log.error(
                    "%s; next try in %.1f s would pass the next scheduled push, stopping here (report kept)",
                    where, delay,
                )
                return result(False, last.status, tries, last.error, last.bytes_sent, retry_after=last.retry_after)
            log.warning("%s; retrying in %.1f s (%s)", where, delay, why)
            if wait(delay):
                log.info("push to %s abandoned during the retry wait: stopping", target.display)
                return result(False, last.status, tries, "stopped", last.bytes_sent, stopped=True)
    finally:
        pool.close()


def _headers(target: _Target, user_agent: str, extra: dict[str, str] | None = None) -> dict[str, str]:
    headers = {"User-Agent": user_agent, "Accept-Encoding": "identity"}
    if target.authorization:
        headers["Authorization"] = target.authorization
    if extra:
        headers.update(extra)
    return headers


def _left(deadline: float, clock: Callable[[], float], what: str) -> float:
    """Seconds before the total deadline, or HttpError when it has passed."""
    left = deadline - clock()
    if left <= 0:
        raise HttpError(f"{what}: total time limit exceeded")
    return left


def _hop_pool(target: _Target, ca_file: str | None) -> urllib3.HTTPConnectionPool:
    """A connection pool for one request of fetch or notify; TLS settings (and the CA file) only for https."""
    host, _, port = target.netloc.rpartition(":")
    host = host.strip("[]")
    if target.scheme == "https":
        return _HTTPSPool(host, int(port), maxsize=1, retries=False,
                          ssl_context=_ssl_context(ca_file), cert_reqs="CERT_REQUIRED")
    return _HTTPPool(host, int(port), maxsize=1, retries=False)


def _origin(target: _Target) -> str:
    return f"{target.scheme}://{target.netloc}"


def _unreachable(what: str, exc: BaseException, netloc: str, connect_t: float, read_t: float) -> HttpError:
    """A transport failure: the full description for the log, one wording for a remote party.

    Refused, timed out, reset or unresolvable all read the same in ``public``, so a server
    cannot use the gateway's answers to map what answers where.
    """
    message, retryable = _describe(exc, netloc, connect_t, read_t)
    if message.startswith("TLS verify failed"):
        return HttpError(f"{what}: {message}", retryable=retryable)
    return HttpError(f"{what}: {message}", retryable=retryable,
                     public=f"{what}: no answer (cannot connect, or the connection failed or timed out)")


def _checked(check: Callable[[str], str | None] | None, what: str, target: _Target) -> None:
    """Raise HttpError when the caller's policy refuses this request."""
    reason = check(target.url) if check is not None else None
    if reason is not None:
        raise HttpError(f"{what}: refused: {reason}", retryable=False)


def _request_to(target: _Target, what: str, check: Callable[[str], str | None] | None, ca_file: str | None,
                timeouts: Timeouts, deadline: float, clock: Callable[[], float],
                ) -> tuple[urllib3.HTTPConnectionPool, float, float]:
    """The pool and the connect/read timeouts of one fetch or notify request, after the caller's policy allowed it."""
    _checked(check, what, target)
    left = _left(deadline, clock, what)
    try:
        pool = _hop_pool(target, ca_file)
    except ValueError as exc:
        raise HttpError(f"{what}: {exc}", retryable=False) from None
    return pool, min(timeouts.connect, left), min(timeouts.read, left)


def fetch(
    url: str,
    *,
    max_bytes: int = 1 << 20,
    timeouts: Timeouts = Timeouts(),
    ca_file: str | None = None,
    user_agent: str = DEFAULT_USER_AGENT,
    username: str | None = None,
    password: str | None = None,
    max_redirects: int = 5,
    check: Callable[[str], str | None] | None = None,
    clock: Callable[[], float] = time.monotonic,
) -> bytes:
    """GET a small file within a size and a total time limit; raises HttpError naming the cause.

    ``check(url)`` is asked before every request, the first one and each redirect, and says
    why that URL may not be requested (or None): where the caller may go is its policy.
    Redirects are followed up to ``max_redirects``, never from https to http nor to a URL
    with user info; credentials go only to the origin (scheme, host, port) they came with.
    """
    deadline = clock() + timeouts.total
    try:
        target = _target(url, username, password)
    except ValueError as exc:
        raise HttpError(str(exc), retryable=False) from None
    origin = _origin(target)
    for _hop in range(max_redirects + 1):
        what = f"GET {target.display}"
        pool, connect_t, read_t = _request_to(target, what, check, ca_file, timeouts, deadline, clock)
        try:
            try:
                response = pool.urlopen(
                    "GET", parse_url(target.url).request_uri, headers=_headers(target, user_agent), retries=False,
                    redirect=False, preload_content=False, decode_content=False,
                    timeout=urllib3.Timeout(connect=connect_t, read=read_t),
                )
            except Exception as exc:  # noqa: BLE001
                raise _unreachable(what, exc, target.netloc, connect_t, read_t) from None
            try:
                if response.status in REDIRECT_STATUS:
                    target = _redirect(target, response, origin, what)
                    continue
                if response.status != 200:
                    raise HttpError(
                        f"{what}: {_status_text(response.status, response.reason, _read_excerpt(response))}",
                        status=response.status, retryable=response.status in RETRYABLE_STATUS or response.status >= 500,
                        public=f"{what}: HTTP {response.status}",
                    )
                encoding = response.headers.get("Content-Encoding", "identity").strip().lower()
                if encoding not in ("", "identity"):
                    raise HttpError(f"{what}: unsupported Content-Encoding {encoding!r}", status=200, retryable=False,
                                    public=f"{what}: compressed answer (only identity encoding is accepted)")
                length = response.headers.get("Content-Length")
                if length and length.isdigit() and int(length) > max_bytes:
                    message = f"{what}: file of {length} bytes exceeds the limit of {max_bytes}"
                    raise HttpError(message, status=200, retryable=False)
                return _read_limited(response, target, max_bytes, deadline, read_t, clock)
            finally:
                response.close()
        finally:
            pool.close()
    raise HttpError(f"GET {target.display}: more than {max_redirects} redirects", retryable=False)


def _redirect(target: _Target, response: urllib3.BaseHTTPResponse, origin: str, what: str) -> _Target:
    """The next request of a redirect, or HttpError when it may not be followed."""
    status = response.status
    location = response.headers.get("Location")
    if not location:
        raise HttpError(f"{what}: HTTP {status} without Location", status=status)
    try:
        new = _target(urljoin(target.url, location), None, None)
    except ValueError as exc:
        raise HttpError(f"{what}: redirect refused: {printable(str(exc))}", status=status, retryable=False) from None
    if target.scheme == "https" and new.scheme != "https":
        raise HttpError(f"{what}: redirect from https to http refused ({new.display})", status=status,
                        retryable=False)
    if new.authorization is not None:
        raise HttpError(f"{what}: redirect refused: user:password@ in the Location ({new.display})",
                        status=status, retryable=False)
    # Credentials go only to the origin they were configured for.
    auth = target.authorization if _origin(new) == origin else None
    return _Target(new.url, new.scheme, new.netloc, new.display, auth)


def _read_limited(
    response: urllib3.BaseHTTPResponse,
    target: _Target,
    max_bytes: int,
    deadline: float,
    read_timeout: float,
    clock: Callable[[], float],
    method: str = "GET",
) -> bytes:
    """Read a body as it arrives, stopping at max_bytes or the total deadline."""
    what = f"{method} {target.display}"
    data = bytearray()
    sock = getattr(getattr(response, "connection", None), "sock", None)
    while True:
        left = _left(deadline, clock, what)
        if sock is not None:
            # A server dripping one byte at a time must not outlive the total limit.
            sock.settimeout(min(read_timeout, left))
        try:
            piece = response.read1(min(65536, max_bytes + 1 - len(data)), decode_content=False)
        except Exception as exc:  # noqa: BLE001
            if clock() >= deadline:
                raise HttpError(f"{what}: total time limit exceeded") from None
            raise _unreachable(what, exc, target.netloc, read_timeout, read_timeout) from None
        if not piece:
            return bytes(data)
        data += piece
        if len(data) > max_bytes:
            raise HttpError(f"{what}: file exceeds the limit of {max_bytes} bytes", status=200, retryable=False)


def notify(
    url: str,
    text: str,
    *,
    timeouts: Timeouts = Timeouts(),
    ca_file: str | None = None,
    user_agent: str = DEFAULT_USER_AGENT,
    username: str | None = None,
    password: str | None = None,
    check: Callable[[str], str | None] | None = None,
    clock: Callable[[], float] = time.monotonic,
) -> None:
    """POST a short plain-text result; acknowledged only by HTTP 200 with body ``OK``.

    A trailing line break after ``OK`` is tolerated. ``check`` is asked first, as for
    ``fetch``; no redirect is followed. Raises HttpError otherwise.
    """
    try:
        target = _target(url, username, password)
    except ValueError as exc:
        raise HttpError(str(exc), retryable=False) from None
    what = f"POST {target.display}"
    body = text.encode("utf-8")
    headers = _headers(target, user_agent, {"Content-Type": "text/plain; charset=utf-8"})
    deadline = clock() + timeouts.total
    pool, connect_t, read_t = _request_to(target, what, check, ca_file, timeouts, deadline, clock)
    try:
        try:
            response = pool.urlopen(
                "POST", parse_url(target.url).request_uri, body=body, headers=headers, retries=False,
                redirect=False, preload_content=False, decode_content=False,
                timeout=urllib3.Timeout(connect=connect_t, read=read_t),
            )
        except Exception as exc:  # noqa: BLE001
            raise _unreachable(what, exc, target.netloc, connect_t, read_t) from None
        try:
            if response.status == 200:
                answer = _read_limited(response, target, 1024, deadline, read_t, clock, "POST")
            else:
                answer = _read_excerpt(response)
        except HttpError:
            answer = b"?"
        finally:
            response.close()
        if response.status != 200 or answer.rstrip(b"\r\n") != b"OK":
            if response.status == 200:
                message = f"HTTP 200 but the body is '{_excerpt(answer)}', not 'OK'"
                public = "HTTP 200 but the body is not 'OK'"
            else:
                message = _status_text(response.status, response.reason, answer)
                public = f"HTTP {response.status}"
            raise HttpError(f"{what}: {message}", status=response.status, retryable=True, public=f"{what}: {public}")
        sync_log.info("result posted to %s: acknowledged", target.display)
    finally:
        pool.close()
