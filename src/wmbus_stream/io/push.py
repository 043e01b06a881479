"""The report push: one chunked POST per attempt, acknowledged only when the HES got all of it.

Strategy
- The push loop owns retrying (urllib3's is off) because a chunked body is a generator that
  cannot be rewound: ``body_factory()`` is called again for every attempt, so a retry always
  sends the complete report (A.7 #21). When to try again is ``retry``'s policy: 408, 429,
  5xx, connection and timeout failures are retried with exponential backoff and full jitter,
  or after exactly ``Retry-After`` when the server sends one. Other statuses, TLS
  verification failures and a bad configuration are not retried in this interval: a retry
  cannot fix them.
- One POST per attempt, ``Transfer-Encoding: chunked`` and never ``Content-Length``. Small
  pieces from the report generator are coalesced into chunks of up to ``CHUNK_SIZE`` bytes
  so the wire carries a few framed chunks instead of one per line; empty pieces are dropped
  because an empty chunk would end the body early.
- A 2xx acknowledges only a body that was sent whole: the report generator ran to its end,
  every chunk and the terminating zero chunk were written to the socket (counted in the
  connection's ``send``, where ``sendall`` returns), and the HES then closed the connection
  (every push asks for ``Connection: close``) without a reset and with nothing of ours left
  unacknowledged in the socket's send queue (``TIOCOUTQ``). urllib3 swallows a broken pipe
  or reset while sending so that it can read an early answer; such an answer, a reset after
  the answer or a body cut short any other way is a failed push (retried, the report kept),
  never an acknowledgement. Interim 1xx answers are skipped (``http.FinalResponse``).
- A wait never ends past ``deadline`` (the next cron tick, on the ``clock`` scale): the push
  stops instead and the caller's store keeps the report for that tick. Connect and read
  timeouts of an attempt are shortened to the time left before the deadline.
- A set ``stop_event`` abandons the push between chunks or during a wait; the connection is
  dropped, so the server sees an incomplete body and must store nothing of it.

Invariants
- Nothing is acknowledged that was not sent: ``PushResult.ok`` only for a 2xx to a body that
  reached the socket whole (see above); ``bytes_sent`` counts report bytes the socket took.
- Expected failures are results (``PushResult``) with a message naming the cause, logged as
  one line without a traceback; credentials never appear in them (``http.Target``).
"""

from __future__ import annotations

import fcntl
import logging
import os
import random
import socket
import struct
import termios
import threading
import time
from collections.abc import Callable, Generator, Iterable, Iterator
from dataclasses import dataclass
from typing import Any

import urllib3
from urllib3.connectionpool import HTTPConnectionPool, HTTPSConnectionPool
from urllib3.util import parse_url

from ..text import printable
from . import retry
from .http import (
    DEFAULT_USER_AGENT,
    REDIRECT_STATUS,
    FinalHTTPConnection,
    FinalHTTPSConnection,
    Target,
    describe,
    parse_target,
    pool,
    read_excerpt,
    status_text,
)

__all__ = ["CHUNK_SIZE", "PushResult", "push"]

log = logging.getLogger("wmbus_stream.push")

CHUNK_SIZE = 16 * 1024
# Timeouts shortened by a near deadline keep at least this much, so the attempt can succeed.
MIN_TIMEOUT = 0.5
# After a 2xx at most this much more is read while waiting for the HES to close the connection.
DRAIN_MAX = 64 * 1024


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


class _Stopped(Exception):
    """Raised inside the body generator when the stop event is set (not an OSError on purpose)."""


class _BodyFailed(Exception):
    """The caller's body generator raised; carried through urllib3 without being taken for IO."""


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


class _MeteredHTTPConnection(_MeteredConnection, FinalHTTPConnection):
    pass


class _MeteredHTTPSConnection(_MeteredConnection, FinalHTTPSConnection):
    pass


class _PushHTTPPool(HTTPConnectionPool):
    ConnectionCls = _MeteredHTTPConnection


class _PushHTTPSPool(HTTPSConnectionPool):
    ConnectionCls = _MeteredHTTPSConnection


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
    target: Target,
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
            message, retryable = describe(exc, target.netloc, connect_timeout, read_timeout)
            return _Attempt(False, None, message, retryable, None, meter.written)
        try:
            status = response.status
            if 200 <= status < 300:
                if not meter.complete():
                    return _Attempt(False, status, _incomplete(status, meter, pieces), True, None, meter.written)
                read_excerpt(response)  # the start of its answer; peer_problem reads on to the close
                problem = meter.peer_problem(read_timeout)
                if problem is not None:
                    return _Attempt(False, status, f"HES answered HTTP {status} {problem}", True, None, meter.written)
                return _Attempt(True, status, None, False, None, meter.written)
            excerpt = read_excerpt(response)
            message = status_text(status, response.reason, excerpt)
            if status in REDIRECT_STATUS:
                message += f" (redirect to '{printable(response.headers.get('Location', '?'))}' not followed for a push; fix the URL)"
            may_retry = retry.retryable(status)
            asked = retry.retry_after(response.headers.get("Retry-After")) if may_retry else None
            return _Attempt(False, status, message, may_retry, asked, meter.written)
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
        target = parse_target(url, username, password)
        meter = _BodyMeter()
        connections = pool(target, ca_file, _PushHTTPPool, _PushHTTPSPool, meter=meter)
    except ValueError as exc:
        log.error("push not attempted: %s", exc)
        return result(False, None, 0, str(exc), 0, retryable=False)

    # Connection: close, so the HES ends every push by closing: a clean close after its answer
    # shows it read the whole body, a reset shows it did not (see _BodyMeter.peer_problem).
    headers = {"User-Agent": user_agent, "Content-Type": "text/plain; charset=us-ascii", "Connection": "close"}
    if target.authorization:
        headers["Authorization"] = target.authorization

    policy = retry.Policy(attempts, deadline, clock, rand)
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
            last = _post_once(connections, meter, target, body_factory, headers, connect_t, read_t, stop_event)
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
            step = policy.after(tries, last.retryable, last.retry_after)
            if step.stop is retry.Stop.NOT_RETRYABLE:
                log.error("%s; not retried (fix the cause; the report is kept for the next tick)", where)
                return result(False, last.status, tries, last.error, last.bytes_sent, retryable=False)
            if step.stop is retry.Stop.ATTEMPTS:
                log.error("%s; giving up for this interval, the report is kept for the next tick", where)
                return result(False, last.status, tries, last.error, last.bytes_sent, retry_after=last.retry_after)
            if step.stop is retry.Stop.RETRY_AFTER:
                log.error("%s; server asks to wait %.0f s (Retry-After), trying again at the next tick", where,
                          step.delay)
                return result(False, last.status, tries, last.error, last.bytes_sent, retry_after=step.delay)
            if step.stop is retry.Stop.DEADLINE:
                log.error(
                    "%s; next try in %.1f s would pass the next scheduled push, stopping here (report kept)",
                    where, step.delay,
                )
                return result(False, last.status, tries, last.error, last.bytes_sent, retry_after=last.retry_after)
            why = "as the server asked (Retry-After)" if step.asked else "backoff"
            log.warning("%s; retrying in %.1f s (%s)", where, step.delay, why)
            if retry.pause(step.delay, sleep, stop_event):
                log.info("push to %s abandoned during the retry wait: stopping", target.display)
                return result(False, last.status, tries, "stopped", last.bytes_sent, stopped=True)
    finally:
        connections.close()
