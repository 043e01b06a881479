"""What every request of the gateway's HTTP client shares (``push``, ``fetch``, ``notify``).

- urllib3 2.x does the HTTP; its own retries and redirects are off (``retries=False``):
  retrying is ``retry``'s policy, redirects are followed (or not) by the callers.
- A URL becomes a ``Target``: what is sent, what is shown, the credentials. Credentials come
  from the arguments or the URL's user info; they are sent only as an ``Authorization``
  header and never appear in a log line, a result or an error message (URLs are shown
  without user info and with the query elided).
- Only the final status counts: interim answers (1xx other than 101, RFC 9110 §15.2) and
  their headers are skipped within ``INTERIM_MAX`` bytes together (``FinalResponse``, the
  response class of every connection here); 101 is a final status, hence a failure.
- Every pool holds one connection (``pool``); TLS settings and the CA file only for https
  (``tls``).
- A failed attempt is described for a field engineer (``describe``), with whether a retry
  may help. Text from the peer (status reason, body excerpt, Location, library messages
  quoting peer bytes) enters a message only through ``text.printable``: escaped, one line,
  bounded.
- ``fetch`` and ``notify`` share one prologue (``request_to``: the caller's policy check,
  the time left, the pool, the timeouts) and one bounded body reader (``read_limited``);
  their errors are ``HttpError`` with a ``public`` wording fit for a remote party.
"""

from __future__ import annotations

import base64
import http.client
import socket
import ssl
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any
from urllib.parse import unquote

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
from . import tls

__all__ = [
    "DEFAULT_TIMEOUTS",
    "DEFAULT_USER_AGENT",
    "ERROR_EXCERPT",
    "INTERIM_MAX",
    "REDIRECT_STATUS",
    "FinalHTTPConnection",
    "FinalHTTPPool",
    "FinalHTTPSConnection",
    "FinalHTTPSPool",
    "FinalResponse",
    "HttpError",
    "Target",
    "Timeouts",
    "body_excerpt",
    "describe",
    "origin_of",
    "parse_target",
    "pool",
    "read_excerpt",
    "read_limited",
    "request_headers",
    "request_to",
    "status_text",
    "time_left",
    "unreachable",
]

DEFAULT_USER_AGENT = f"wmbus-stream/{__version__}"
# How much of an error response is kept for the message (the HES says what was wrong there).
ERROR_EXCERPT = 300
# Interim answers (1xx but 101) before the final one may take at most this many bytes together.
INTERIM_MAX = 64 * 1024
REDIRECT_STATUS = frozenset({301, 302, 303, 307, 308})


@dataclass(frozen=True, slots=True)
class Timeouts:
    """Connect, per-read and total time limits in seconds for fetch and notify."""

    connect: float = 10.0
    read: float = 30.0
    total: float = 120.0


# The limits of a fetch or notify that is given none.
DEFAULT_TIMEOUTS = Timeouts()


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


@dataclass(frozen=True, slots=True)
class Target:
    """A URL split into what is sent, what is shown and the credentials."""

    url: str
    scheme: str
    netloc: str
    display: str
    authorization: str | None


def parse_target(url: str, username: str | None, password: str | None) -> Target:
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
    return Target(clean.url, scheme, netloc, display, authorization)


class FinalResponse(http.client.HTTPResponse):
    """An answer whose status is the final one: interim 1xx answers (not 101) are skipped, RFC 9110 §15.2."""

    def _read_status(self) -> tuple[str, int, str]:
        budget = INTERIM_MAX
        while True:
            version, status, reason = super()._read_status()  # type: ignore[misc]  # http.client's own step
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


class FinalHTTPConnection(HTTPConnection):
    response_class = FinalResponse


class FinalHTTPSConnection(HTTPSConnection):
    response_class = FinalResponse


class FinalHTTPPool(HTTPConnectionPool):
    ConnectionCls = FinalHTTPConnection


class FinalHTTPSPool(HTTPSConnectionPool):
    ConnectionCls = FinalHTTPSConnection


def pool(target: Target, ca_file: str | None, plain: type[HTTPConnectionPool] = FinalHTTPPool,
         secure: type[HTTPSConnectionPool] = FinalHTTPSPool, **extra: Any) -> HTTPConnectionPool:
    """A one-connection pool to ``target``; TLS settings (and the CA file, ValueError when unusable) only for https."""
    host, _, port = target.netloc.rpartition(":")
    host = host.strip("[]")
    if target.scheme == "https":
        return secure(host, int(port), maxsize=1, retries=False, ssl_context=tls.context(ca_file),
                      cert_reqs="CERT_REQUIRED", **extra)
    return plain(host, int(port), maxsize=1, retries=False, **extra)


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


def describe(exc: BaseException, netloc: str, connect_timeout: float, read_timeout: float) -> tuple[str, bool]:
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


def body_excerpt(data: bytes) -> str:
    """A short, printable, one-line excerpt of an error body (line breaks and runs of blanks as one space)."""
    return printable(b" ".join(data[:ERROR_EXCERPT + 1].split()), ERROR_EXCERPT)


def read_excerpt(response: urllib3.BaseHTTPResponse) -> bytes:
    """Up to ERROR_EXCERPT+1 bytes of a response body; a broken body reads as empty."""
    try:
        return response.read(ERROR_EXCERPT + 1, decode_content=False)
    except Exception:  # the status line already said what matters  # noqa: BLE001
        return b""


def status_text(status: int, reason: str | None, body: bytes) -> str:
    text = f"HTTP {status}" + (f" {printable(reason)}" if reason else "")
    excerpt = body_excerpt(body)
    return f"{text}: {excerpt}" if excerpt else text


def request_headers(target: Target, user_agent: str, extra: dict[str, str] | None = None) -> dict[str, str]:
    headers = {"User-Agent": user_agent, "Accept-Encoding": "identity"}
    if target.authorization:
        headers["Authorization"] = target.authorization
    if extra:
        headers.update(extra)
    return headers


def time_left(deadline: float, clock: Callable[[], float], what: str) -> float:
    """Seconds before the total deadline, or HttpError when it has passed."""
    left = deadline - clock()
    if left <= 0:
        raise HttpError(f"{what}: total time limit exceeded")
    return left


def origin_of(target: Target) -> str:
    return f"{target.scheme}://{target.netloc}"


def unreachable(what: str, exc: BaseException, netloc: str, connect_t: float, read_t: float) -> HttpError:
    """A transport failure: the full description for the log, one wording for a remote party.

    Refused, timed out, reset or unresolvable all read the same in ``public``, so a server
    cannot use the gateway's answers to map what answers where.
    """
    message, retryable = describe(exc, netloc, connect_t, read_t)
    if message.startswith("TLS verify failed"):
        return HttpError(f"{what}: {message}", retryable=retryable)
    return HttpError(f"{what}: {message}", retryable=retryable,
                     public=f"{what}: no answer (cannot connect, or the connection failed or timed out)")


def _checked(check: Callable[[str], str | None] | None, what: str, target: Target) -> None:
    """Raise HttpError when the caller's policy refuses this request."""
    reason = check(target.url) if check is not None else None
    if reason is not None:
        raise HttpError(f"{what}: refused: {reason}", retryable=False)


def request_to(target: Target, what: str, check: Callable[[str], str | None] | None, ca_file: str | None,
                timeouts: Timeouts, deadline: float, clock: Callable[[], float],
                ) -> tuple[urllib3.HTTPConnectionPool, float, float]:
    """The pool and the connect/read timeouts of one fetch or notify request, after the caller's policy allowed it."""
    _checked(check, what, target)
    left = time_left(deadline, clock, what)
    try:
        connections = pool(target, ca_file)
    except ValueError as exc:
        raise HttpError(f"{what}: {exc}", retryable=False) from None
    return connections, min(timeouts.connect, left), min(timeouts.read, left)


def read_limited(
    response: urllib3.BaseHTTPResponse,
    target: Target,
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
        left = time_left(deadline, clock, what)
        if sock is not None:
            # A server dripping one byte at a time must not outlive the total limit.
            sock.settimeout(min(read_timeout, left))
        try:
            piece = response.read1(min(65536, max_bytes + 1 - len(data)), decode_content=False)
        except Exception as exc:  # noqa: BLE001
            if clock() >= deadline:
                raise HttpError(f"{what}: total time limit exceeded") from None
            raise unreachable(what, exc, target.netloc, read_timeout, read_timeout) from None
        if not piece:
            return bytes(data)
        data += piece
        if len(data) > max_bytes:
            raise HttpError(f"{what}: file exceeds the limit of {max_bytes} bytes", status=200, retryable=False)
