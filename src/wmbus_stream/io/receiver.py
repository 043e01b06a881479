"""The receiver reader thread: bytes from a pyserial URL or a capture file into a framer.

A port that disappears, errors or returns no data ("device reports readiness to read but
returned no data") is closed and reopened with backoff capped at ``max_backoff`` seconds;
while it is away the thread logs at most one line per 30 s. A port that stays open but
delivers no frame for ``silence_seconds`` raises the silent-receiver alarm: one warning per
silent period, ``silent`` set until a frame (good or broken) arrives again, and a reopen of
the port (the reset that revives a hung USB receiver). A capture file (``-`` or a regular
file) is read once to its end.
"""

from __future__ import annotations

import logging
import os
import sys
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import serial

from ..receivers import Framer

if TYPE_CHECKING:
    from ..receivers.simulator import Simulator

__all__ = ["ReceiverReader", "is_capture"]

log = logging.getLogger("wmbus_stream.receiver")

# Hands a read chunk to the pipeline: (bytes, end of stream, arrival time) -> frames read.
Deliver = Callable[[bytes, bool, float], int]


def is_capture(port: str) -> bool:
    """A capture is ``-`` or an existing regular file; anything else is a serial port or URL."""
    return port == "-" or (os.path.isfile(port) and not port.startswith("/dev/"))


class _Silent(serial.SerialException):
    """The port is open but has delivered no frame for the silence limit."""


class ReceiverReader(threading.Thread):
    """Reads the receiver until ``stop`` is set; ``state`` tells the service how it goes."""

    def __init__(
        self,
        port: str,
        baud: int,
        framer: Framer,
        deliver: Deliver,
        stop: threading.Event,
        *,
        setup: bytes = b"",
        max_backoff: float = 2.0,
        silence_seconds: float = 0.0,
    ) -> None:
        super().__init__(name="receiver", daemon=True)
        self.port = port
        self.baud = baud
        self.framer = framer
        self.deliver = deliver
        self.stop_event = stop
        self.setup = setup
        self.max_backoff = max_backoff
        self.silence_seconds = silence_seconds
        self.state = "starting"
        self.reconnects = 0
        self.bytes_read = 0
        self.last_error: str | None = None
        self.last_data_at: float | None = None  # wall clock of the last frame read
        self.silent = False  # no frame for silence_seconds; cleared by the next frame
        self.silence_alarms = 0
        self._connected_once = False

    def run(self) -> None:
        if is_capture(self.port):
            self._read_capture()
            return
        backoff = 0.1
        last_log = 0.0
        while not self.stop_event.is_set():
            try:
                port = serial.serial_for_url(self.port, baudrate=self.baud, timeout=0.25, do_not_open=False)
            except (serial.SerialException, OSError, ValueError) as exc:
                self._lost(str(exc))
                if time.monotonic() - last_log >= 30:
                    log.warning("receiver %s not available (%s); retrying every %.1f s", self.port, exc, self.max_backoff)
                    last_log = time.monotonic()
                self.stop_event.wait(backoff)
                backoff = min(backoff * 2, self.max_backoff)
                continue
            backoff, last_log = 0.1, 0.0
            if self._connected_once:
                self.reconnects += 1
            self._connected_once = True
            self.state = "connected"
            log.info("receiver %s connected (%s, %d Bd)", self.port, self.framer.name, self.baud)
            try:
                self._pump(port)
            except _Silent:  # logged once by _pump; reopen at once
                self._flush_framer()
            except (serial.SerialException, OSError) as exc:
                self._lost(str(exc))
                log.warning("receiver %s lost (%s); reopening", self.port, exc)
            finally:
                try:
                    port.close()
                except (serial.SerialException, OSError):
                    pass
        self.state = "stopped"

    def _lost(self, reason: str) -> None:
        self.state = "disconnected"
        self.last_error = reason
        self._flush_framer()

    def _flush_framer(self) -> None:
        """A frame cut by an unplug or a reset must not be glued to the first bytes after it."""
        if self.framer.pending:
            self.deliver(b"", True, time.time())
        else:
            self.framer.flush()  # nothing held, so no frame: only the framer's state restarts

    def _pump(self, port: Any) -> None:
        if self.setup:
            port.write(self.setup)
        quiet_since = time.monotonic()
        while not self.stop_event.is_set():
            data = port.read(1)
            if data:
                waiting = port.in_waiting
                if waiting:
                    data += port.read(waiting)
                # Only frames end a silence: a deaf receiver still answers the setup commands.
                if self._feed(data):
                    quiet_since = time.monotonic()
                    if self.silent:
                        self.silent = False
                        log.info("receiver %s delivers telegrams again", self.port)
            elif self.silence_seconds and time.monotonic() - quiet_since > self.silence_seconds:
                if not self.silent:  # one alarm per silent period, however many resets it takes
                    self.silent = True
                    self.silence_alarms += 1
                    log.warning("receiver %s silent: no telegrams for %s; reopening it (check the receiver,"
                                " its antenna and the meters' radio mode)", self.port, _duration(self.silence_seconds))
                self.last_error = f"no telegrams for {_duration(self.silence_seconds)}"
                raise _Silent(self.last_error)

    def _feed(self, data: bytes) -> int:
        """Deliver ``data`` to be framed and checked; the number of frames (good or broken) it completed."""
        self.bytes_read += len(data)
        now = time.time()
        frames = self.deliver(data, False, now)
        if frames:
            self.last_data_at = now
        return frames

    def _read_capture(self) -> None:
        self.state = "connected"
        try:
            source = sys.stdin.buffer if self.port == "-" else open(self.port, "rb")  # noqa: SIM115
        except OSError as exc:
            self.state, self.last_error = "disconnected", str(exc)
            log.error("capture %s cannot be opened: %s", self.port, exc.strerror)
            return
        with source:
            while not self.stop_event.is_set():
                chunk = source.read(65536)
                if not chunk:
                    break
                self._feed(chunk)
        self._flush_framer()
        self.state = "finished"
        log.info("capture %s read to its end (%d bytes)", self.port, self.bytes_read)


def _duration(seconds: float) -> str:
    return f"{seconds / 60:g} min" if seconds >= 60 else f"{seconds:g} s"


class SimulatedReceiver(threading.Thread):
    """Plays the built-in simulator's bytes into a framer in real time (demos, tests)."""

    def __init__(self, simulator: Simulator, framer: Framer, deliver: Deliver, stop: threading.Event) -> None:
        super().__init__(name="simulator", daemon=True)
        self.simulator = simulator
        self.framer = framer
        self.deliver = deliver
        self.stop_event = stop
        self.state = "connected"
        self.reconnects = 0
        self.bytes_read = 0
        self.last_error: str | None = None
        self.last_data_at: float | None = None  # as ReceiverReader: the simulator is never silent
        self.silent = False
        self.silence_alarms = 0

    def run(self) -> None:
        for at, data in self.simulator.events(time.time()):
            if self.stop_event.wait(max(0.0, at - time.time())):
                break
            self.bytes_read += len(data)
            self.deliver(data, False, time.time())
        self.state = "stopped"
