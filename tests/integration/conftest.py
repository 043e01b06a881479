"""Shared parts of the gateway fault tests: real HES servers, config files, gateway processes, ptys.

Everything here is real: the gateway runs as ``python -m wmbus_stream run --config FILE`` in
its own process (so SIGKILL, SIGHUP and SIGTERM are real signals), receivers are pty pairs
whose slave is reached through a symlink (pyserial opens the symlink; removing it and
closing the pty is an unplug), and the HES is the reference ``ReceiveServer`` or a small
raw-socket server that misbehaves on purpose. Nothing waits a fixed time: ``wait_for`` polls
a condition until a deadline and says what it was waiting for when it gives up.

The report lines a test expects are computed from the telegrams it sent, with the library's
own wire helpers (``wire.build_report``) or, for ``cmex50``, from the frames' own bytes; the
spec's literal test vector pins the helpers themselves.
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import re
import select
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import threading
import time
import tty
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from wmbus_stream import wire
from wmbus_stream.hes import ReceiveServer, ReportLine, SqliteStore, parse_report
from wmbus_stream.receivers import amb8465, cmex50, im871a, rtlwmbus
from wmbus_stream.receivers import hex as hexproto
from wmbus_stream.io.control import request as control_request
from wmbus_stream.wire.frame import build_a

# Test modules import the helpers below as ``gwkit``: two conftest.py files share the module
# name ``conftest``, so ``from conftest import ...`` could find the other one.
sys.modules.setdefault("gwkit", sys.modules[__name__])

SERIAL = "00000161"
RECEIVER = "62001772"
RSSI = -74
VECTORS = Path(__file__).resolve().parents[1] / "vectors" / "telegrams.jsonl"

# Spec section 5: the wireless telegram and the report telegram it must become
# (receiver 62001772, RSSI code 0x1C = -74 dBm, wired address 0).
SPEC_TELEGRAM = bytes.fromhex(
    "6044961564010061011B7A970400202F2F02653607426534078201652C072265320712653607626516075265560702FB1A0E"
    "0242FB1A0E028201FB1A0E0222FB1A0E0212FB1A0E0262FB1A090252FB1A0F0202FD1B20C30DFD0F05322E302E310F"
)
SPEC_REPORT_HEX = (
    "080072640100619615011B000000000C787217006201FD711C0DFD3B616044961564010061011B7A970400202F2F0265360742"
    "6534078201652C072265320712653607626516075265560702FB1A0E0242FB1A0E028201FB1A0E0222FB1A0E0212FB1A0E02"
    "62FB1A090252FB1A0F0202FD1B20C30DFD0F05322E302E310F"
)


# -------------------------------------------------------------------------------------------
# Waiting


def finishes(call: Callable[[], Any], what: str, timeout: float = 15.0) -> Any:
    """Run ``call`` in a thread and return its result, or fail if it has not ended by ``timeout``."""
    outcome: dict[str, Any] = {}

    def run() -> None:
        try:
            outcome["value"] = call()
        except BaseException as error:  # handed to the test's thread below
            outcome["error"] = error

    worker = threading.Thread(target=run, name=f"finishes: {what}", daemon=True)
    worker.start()
    worker.join(timeout)
    if worker.is_alive():
        raise AssertionError(f"{what} had not ended after {timeout:g} s")
    if "error" in outcome:
        raise outcome["error"]
    return outcome.get("value")


def caught(pid: int, sig: int) -> bool:
    """Whether process ``pid`` has a handler for ``sig`` (the SigCgt mask of /proc/PID/status)."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return False
    mask = next(line.split()[1] for line in status.splitlines() if line.startswith("SigCgt:"))
    return bool(int(mask, 16) >> (sig - 1) & 1)


def wait_for(predicate: Callable[[], Any], what: str, timeout: float = 10.0, *,
             interval: float = 0.05, context: Callable[[], str] | None = None) -> Any:
    """Poll ``predicate`` until it returns something truthy (returned) or fail after ``timeout``."""
    end = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() >= end:
            extra = context() if context is not None else ""
            raise AssertionError(f"timed out after {timeout:g} s waiting for {what}{extra}")
        time.sleep(interval)


def cron_at(when: datetime) -> str:
    """A 6-field cron that fires once, at ``when`` (UTC, whole second); next slot a year later."""
    when = when.astimezone(UTC)
    return f"{when.second} {when.minute} {when.hour} {when.day} {when.month} *"


def soon(seconds: float) -> datetime:
    """The whole UTC second at least ``seconds`` from now."""
    return (datetime.now(UTC) + timedelta(seconds=seconds + 1)).replace(microsecond=0)


# -------------------------------------------------------------------------------------------
# Telegrams and the report lines they must give


def meter_id(telegram: bytes) -> str:
    """The 8-digit meter ID of a wireless telegram as the report prints it."""
    return telegram[7:3:-1].hex().upper()


def meter_key(telegram: bytes) -> bytes:
    """What the gateway keys its latest-per-meter store on (manufacturer, ID, version, type)."""
    return telegram[2:10]


def with_id(telegram: bytes, number: int) -> bytes:
    """The same telegram for another meter ID (8 BCD digits from an int)."""
    return telegram[:4] + bytes.fromhex(f"{number:08d}")[::-1] + telegram[8:]


def variant(telegram: bytes, k: int) -> bytes:
    """Another reading of the same meter: the last payload byte changed (L stays right)."""
    return telegram[:-1] + bytes(((telegram[-1] + k) & 0xFF,))


def vector_telegrams(limit: int | None = None, max_len: int = 200) -> list[bytes]:
    """Telegrams of the public vectors, one per meter (first seen), short enough for every framer."""
    seen: dict[bytes, bytes] = {}
    with VECTORS.open(encoding="utf-8") as lines:
        for raw in lines:
            if not raw.strip():
                continue
            telegram = bytes.fromhex(json.loads(raw)["telegram"])
            if len(telegram) <= max_len:
                seen.setdefault(meter_key(telegram), telegram)
    out = list(seen.values())
    return out if limit is None else out[:limit]


@dataclass(frozen=True)
class Protocol:
    """How a receiver sends a telegram, and the report telegram the gateway must make of it."""

    name: str
    encode: Callable[[bytes], bytes]
    wired: Callable[[bytes], bytes]
    has_rssi: bool = True


def _cmex50_frame(telegram: bytes) -> bytes:
    return cmex50.encode(telegram, receiver_address=RECEIVER, rssi_dbm=RSSI)


PROTOCOLS: dict[str, Protocol] = {
    # A CMeX50 frame's own C..data bytes are forwarded unchanged.
    "cmex50": Protocol("cmex50", _cmex50_frame, lambda t: _cmex50_frame(t)[4:-2]),
    "im871a": Protocol("im871a", lambda t: im871a.encode(t, rssi=im871a.rssi_raw(RSSI)),
                       lambda t: wire.build_report(t, RECEIVER, im871a.rssi_dbm(im871a.rssi_raw(RSSI)), 0)),
    "amb8465": Protocol("amb8465", lambda t: amb8465.encode(t, rssi=amb8465.rssi_raw(RSSI)),
                        lambda t: wire.build_report(t, RECEIVER, amb8465.rssi_dbm(amb8465.rssi_raw(RSSI)), 0)),
    "rtlwmbus": Protocol("rtlwmbus", lambda t: rtlwmbus.encode(t, mode="T1", time=time.time()),
                         lambda t: wire.build_report(t, RECEIVER, None, 0), has_rssi=False),
    # On-air frame format A with its link CRCs: the hex receiver detects and strips them.
    "hex": Protocol("hex", lambda t: hexproto.encode(build_a(t), rssi_dbm=RSSI),
                    lambda t: wire.build_report(t, RECEIVER, RSSI, 0)),
}


def report_key(line: bytes) -> bytes:
    """The meter (ID, manufacturer, version, device type) a report line is about, from its telegram."""
    return bytes.fromhex(line.split(b";")[4].decode())[3:11]


def telegram_report_key(telegram: bytes) -> bytes:
    """``report_key`` of the line a wireless telegram gives (ID, manufacturer, version, type)."""
    return telegram[4:8] + telegram[2:4] + telegram[8:10]


def expected_lines(expected: Iterable[tuple[bytes, bytes]], received: Iterable[bytes], *,
                   serial: str = SERIAL, since: float | None = None) -> list[bytes]:
    """The lines the gateway must have sent for (telegram, report telegram) pairs, sorted.

    The date is the one thing the test cannot know in advance (the gateway's arrival time);
    it is taken from the received line with the same report telegram after checking it is a
    UTC time inside [since - 1 s, now + 1 s]. Every other byte comes from ``expected``.
    """
    dates: dict[bytes, bytes] = {}
    for line in received:
        fields = line.split(b";")
        assert len(fields) == 5, f"not a report line: {line!r}"
        dates[fields[4].rstrip(b"\n")] = fields[2]
    out = []
    now = time.time()
    low = (since if since is not None else now - 3600) - 1
    for telegram, wired in expected:
        hex_text = wired.hex().upper().encode()
        date = dates.get(hex_text)
        if date is not None:
            at = datetime.strptime(date.decode(), "%Y-%m-%d %H:%M:%S").replace(tzinfo=UTC).timestamp()
            assert low <= at <= now + 1, f"meter {meter_id(telegram)}: date {date!r} is outside the test's time window"
        else:
            date = b"<not received>"
        out.append(b";".join((serial.encode(), meter_id(telegram).encode(), date, b"00", hex_text)) + b"\n")
    return sorted(out)


def assert_report(received: list[bytes], expected: Iterable[tuple[bytes, bytes]], *, since: float | None = None,
                  serial: str = SERIAL) -> None:
    """``received`` holds exactly one line per meter, each byte-equal to the expected line."""
    keys = [report_key(line) for line in received]
    duplicates = sorted({k.hex() for k in keys if keys.count(k) > 1})
    assert not duplicates, f"meters sent more than once: {duplicates}"
    assert sorted(received) == expected_lines(expected, received, serial=serial, since=since)


def pairs(protocol: Protocol, telegrams: Iterable[bytes]) -> list[tuple[bytes, bytes]]:
    """(telegram, report telegram) for each telegram sent through ``protocol``."""
    return [(t, protocol.wired(t)) for t in telegrams]


# -------------------------------------------------------------------------------------------
# The reference HES, recording what it stored


def line_bytes(line: ReportLine) -> bytes:
    """A validated report line back as the bytes the gateway sent.

    ``parse_line`` accepts exactly one spelling of every field (8 digits, the meter ID equal
    to the telegram's, ``YYYY-MM-DD hh:mm:ss``, ``00``, uppercase hex), so this is the line.
    """
    return f"{line.gateway};{line.meter_id};{line.date};00;{line.wired.hex().upper()}\n".encode("ascii")


class RecordingStore(SqliteStore):
    """The HES's own SQLite store, also keeping every accepted POST's lines in order."""

    def __init__(self) -> None:
        super().__init__()
        self.posts: list[list[bytes]] = []
        self._posts_lock = threading.Lock()

    def begin(self):  # type: ignore[override]
        return _RecordingIngest(self, super().begin())

    def _record(self, lines: list[bytes]) -> None:
        with self._posts_lock:
            self.posts.append(lines)

    def snapshot(self) -> list[list[bytes]]:
        with self._posts_lock:
            return [list(post) for post in self.posts]


class _RecordingIngest:
    """A POST's transaction of a RecordingStore: the lines it staged are recorded once it committed."""

    def __init__(self, store: RecordingStore, ingest: Any) -> None:
        self._store, self._ingest, self._lines = store, ingest, []

    def stage(self, lines):
        self._lines.extend(line_bytes(line) for line in lines)
        self._ingest.stage(lines)

    def commit(self):
        result = self._ingest.commit()
        self._store._record(self._lines)
        self._lines = []
        return result

    def abort(self):
        self._lines = []
        self._ingest.abort()


class Hes:
    """A ReceiveServer on 127.0.0.1 that can be taken down and brought back on the same port."""

    def __init__(self, **options: Any) -> None:
        self.options = options
        self.store = RecordingStore()
        self.server: ReceiveServer | None = ReceiveServer(store=self.store, **options).start()
        self.port = self.server.port
        self.url = self.server.url

    @property
    def posts(self) -> list[list[bytes]]:
        return self.store.snapshot()

    def lines(self) -> list[bytes]:
        return [line for post in self.posts for line in post]

    def down(self) -> None:
        if self.server is not None:
            self.server.stop(grace=0.5)
            self.server = None

    def up(self) -> None:
        if self.server is None:
            self.server = ReceiveServer(port=self.port, store=self.store, **self.options).start()

    def wait_posts(self, count: int, timeout: float = 10.0, context: Callable[[], str] | None = None) -> list[list[bytes]]:
        return wait_for(lambda: (p := self.posts) and len(p) >= count and p, f"{count} POST(s) stored by the HES",
                        timeout, context=context)

    def close(self) -> None:
        self.down()
        self.store.close()


@pytest.fixture
def hes() -> Iterator[Hes]:
    """The reference HES (ReceiveServer) on a free port of 127.0.0.1."""
    server = Hes()
    try:
        yield server
    finally:
        server.close()


# -------------------------------------------------------------------------------------------
# A raw HES that misbehaves on purpose


@dataclass(frozen=True)
class Respond:
    """Read the whole request, answer ``status`` with ``headers``."""

    status: int
    headers: Mapping[str, str] = field(default_factory=dict)
    raw: bytes | None = None  # the answer's exact bytes instead of a status line and headers


@dataclass(frozen=True)
class Cut:
    """Read the head and ``after`` bytes of the body, then reset the connection."""

    after: int


@dataclass(frozen=True)
class Hang:
    """Read the whole request, then answer nothing until ``release`` is set (or ``seconds`` pass).

    After that, answer ``then`` (a status), or close without an answer when it is None.
    """

    release: threading.Event = field(default_factory=threading.Event)
    seconds: float = 60.0
    then: int | None = None


@dataclass
class Request:
    """One request as the raw server saw it."""

    action: Respond | Cut | Hang
    head_at: float
    headers: dict[str, str] = field(default_factory=dict)
    raw_head: bytes = b""
    body: bytes = b""
    complete: bool = False
    done_at: float | None = None
    answered: int | None = None
    client_gone: bool = False

    def lines(self) -> list[bytes]:
        return self.body.splitlines(keepends=True)


class ScriptedHes:
    """HTTP/1.1 on a raw socket: each connection gets the next scripted action (default 204).

    It decodes the chunked body itself (so it records the exact bytes the gateway sent),
    answers with ``Connection: close`` and counts how many requests are open at once.
    """

    def __init__(self, *actions: Respond | Cut | Hang, default: Respond | Hang = Respond(204),
                 listening: bool = True) -> None:
        self.script = list(actions)
        self.default = default
        self.requests: list[Request] = []
        self.active = 0
        self.max_active = 0
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._listening = threading.Event()
        # Bound but not listening: connections are refused (the HES is down) until listen().
        self._sock = socket.socket()
        self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._sock.bind(("127.0.0.1", 0))
        self._sock.settimeout(0.1)
        self.port = self._sock.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}/report"
        self._thread = threading.Thread(target=self._serve, name="scripted-hes", daemon=True)
        self._thread.start()
        if listening:
            self.listen()

    def listen(self) -> None:
        """Start accepting connections (until now they were refused)."""
        self._sock.listen(16)
        self._listening.set()

    def add(self, *actions: Respond | Cut | Hang) -> None:
        with self._lock:
            self.script.extend(actions)

    def _serve(self) -> None:
        while not self._listening.wait(0.05):
            if self._stop.is_set():
                return
        while not self._stop.is_set():
            try:
                conn, _ = self._sock.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            with self._lock:
                action = self.script.pop(0) if self.script else self.default
                request = Request(action, time.monotonic())
                self.requests.append(request)
                self.active += 1
                self.max_active = max(self.max_active, self.active)
            threading.Thread(target=self._handle, args=(conn, request), daemon=True).start()

    def _handle(self, conn: socket.socket, request: Request) -> None:
        action = request.action
        try:
            conn.settimeout(10)
            reader = conn.makefile("rb")
            head = b""
            while not head.endswith(b"\r\n\r\n"):
                line = reader.readline(65537)
                if not line:
                    return
                head += line
            request.raw_head = head
            for line in head.decode("latin-1").split("\r\n")[1:]:
                if ":" in line:
                    name, _, value = line.partition(":")
                    request.headers[name.strip().lower()] = value.strip()
            limit = action.after if isinstance(action, Cut) else None
            request.body, request.complete = self._read_body(reader, request.headers, limit)
            request.done_at = time.monotonic()
            if isinstance(action, Cut):
                conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
                return
            status: int | None
            headers: Mapping[str, str] = {}
            if isinstance(action, Hang):
                if not self._hang(conn, action):
                    request.client_gone = True
                    return
                status = None if self._stop.is_set() else action.then
            else:
                status, headers = action.status, action.headers
            if status is None:
                return
            reply = f"HTTP/1.1 {status} Scripted\r\nConnection: close\r\nContent-Length: 0\r\n"
            reply += "".join(f"{k}: {v}\r\n" for k, v in headers.items()) + "\r\n"
            raw = action.raw if isinstance(action, Respond) else None
            conn.sendall(reply.encode("latin-1") if raw is None else raw)
            request.answered = status
        except OSError:
            pass
        finally:
            with contextlib.suppress(OSError):
                conn.close()
            with self._lock:
                self.active -= 1

    def _hang(self, conn: socket.socket, action: Hang) -> bool:
        """Wait for the release; False as soon as the client closes its end (it gave up)."""
        end = time.monotonic() + action.seconds
        while not action.release.is_set() and not self._stop.is_set() and time.monotonic() < end:
            readable, _, _ = select.select([conn], [], [], 0.05)
            if readable:
                try:
                    if conn.recv(1, socket.MSG_PEEK) == b"":
                        return False
                except OSError:
                    return False
        return True

    @staticmethod
    def _read_body(reader, headers: Mapping[str, str], limit: int | None) -> tuple[bytes, bool]:
        """The body bytes (decoded from chunks) and whether it ended properly."""
        body = bytearray()
        if headers.get("transfer-encoding", "").lower() != "chunked":
            size = int(headers.get("content-length", "0"))
            body += reader.read(size if limit is None else min(size, limit))
            return bytes(body), len(body) == size
        while True:
            line = reader.readline(100)
            if not line:
                return bytes(body), False
            size = int(line.split(b";")[0].strip(), 16)
            if size == 0:
                reader.readline(100)
                return bytes(body), True
            if limit is not None and len(body) + size > limit:
                body += reader.read(limit - len(body))
                return bytes(body), False
            data = reader.read(size)
            body += data
            if len(data) != size:
                return bytes(body), False
            reader.readline(3)

    def complete_requests(self) -> list[Request]:
        with self._lock:
            return [r for r in self.requests if r.complete]

    def wait_requests(self, count: int, timeout: float = 10.0, *, complete: bool = True,
                      context: Callable[[], str] | None = None) -> list[Request]:
        def ready() -> list[Request] | None:
            with self._lock:
                done = [r for r in self.requests if r.done_at is not None and (r.complete or not complete)]
            return done if len(done) >= count else None

        return wait_for(ready, f"{count} request(s) at the scripted HES", timeout, context=context)

    def close(self) -> None:
        self._stop.set()
        with self._lock:
            for r in self.requests:
                if isinstance(r.action, Hang):
                    r.action.release.set()
        self._sock.close()
        self._thread.join(2)


@pytest.fixture
def scripted_hes() -> Iterator[Callable[..., ScriptedHes]]:
    """A factory of scripted raw HES servers, closed at the end of the test."""
    made: list[ScriptedHes] = []

    def make(*actions: Respond | Cut | Hang, default: Respond | Hang = Respond(204), listening: bool = True) -> ScriptedHes:
        server = ScriptedHes(*actions, default=default, listening=listening)
        made.append(server)
        return server

    yield make
    for server in made:
        server.close()


def body_ok(body: bytes) -> bytes:
    """A body the reference HES would accept (raises ReportError otherwise), returned unchanged."""
    parse_report(body)
    return body


# -------------------------------------------------------------------------------------------
# Configuration files


BASE_CONFIG = {
    "gateway.serial": SERIAL,
    "receiving.server.push.cron": "* * * * * *",
    "receiving.server.connect.timeout": "1",
    "receiving.server.read.timeout": "3",
    "receiving.server.retries": "2",
    "receiver.reconnect.seconds": "0.5",
    "receiver.address": RECEIVER,
    "store.flush.seconds": "0.2",
    "log.level": "info",
}


def write_config(path: Path, values: Mapping[str, str | None]) -> Path:
    """Write ``key=value`` lines atomically (a SIGHUP never sees half a file); None leaves a key out."""
    text = "# written by the gateway fault tests\n" + "".join(
        f"{key}={value}\n" for key, value in values.items() if value is not None)
    temp = path.with_name(path.name + ".tmp")
    temp.write_text(text, encoding="utf-8")
    os.replace(temp, path)
    return path


class ConfigFile:
    """The gateway's configuration file in the test's folder; ``write`` merges over the base."""

    def __init__(self, folder: Path) -> None:
        self.path = folder / "stream.cfg"
        self.state = folder / "state"
        self.values: dict[str, str | None] = {}

    def write(self, values: Mapping[str, str | None] | None = None) -> Path:
        """Base keys + state dir + ``values``; remembered, so a later write changes only what it names."""
        self.values = {**BASE_CONFIG, "state.directory": str(self.state), **self.values, **(values or {})}
        return write_config(self.path, self.values)

    def write_raw(self, text: str) -> Path:
        temp = self.path.with_name(self.path.name + ".tmp")
        temp.write_text(text, encoding="utf-8")
        os.replace(temp, self.path)
        return self.path

    def pending_on_disk(self) -> int:
        """Rows in the state database's pending table, read by a separate connection."""
        path = self.state / "store.sqlite"
        if not path.exists():
            return 0
        db = sqlite3.connect(path, timeout=5)
        try:
            return db.execute("SELECT count(*) FROM meters").fetchone()[0]
        except sqlite3.OperationalError:
            return 0
        finally:
            db.close()


@pytest.fixture
def config(tmp_path: Path) -> ConfigFile:
    """A configuration file writer for one gateway (state in ``tmp_path/state``)."""
    return ConfigFile(tmp_path)


# -------------------------------------------------------------------------------------------
# The gateway as a real process


class LoggedProcess:
    """``python -m wmbus_stream ARGS`` with its output lines (stdout and stderr) collected as they come."""

    title = "output"  # what ``tail`` calls the lines

    def __init__(self, *args: str) -> None:
        self.lines: list[str] = []
        self._lock = threading.Lock()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "wmbus_stream", *args],
            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
            text=True, bufsize=1, env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
        self.pid = self.proc.pid
        self._reader = threading.Thread(target=self._read, name=f"{args[0]}-log-{self.pid}", daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            with self._lock:
                self.lines.append(line.rstrip("\n"))

    def log(self) -> list[str]:
        with self._lock:
            return list(self.lines)

    def tail(self, n: int = 40) -> str:
        return f"\n--- {self.title} (last lines) ---\n" + "\n".join(self.log()[-n:])


class GatewayProcess(LoggedProcess):
    """``python -m wmbus_stream run --config FILE`` with its log lines collected as they come."""

    title = "gateway log"

    def __init__(self, config: ConfigFile, *args: str) -> None:
        self.config = config
        self.args = args
        super().__init__("run", "--config", str(config.path), *args)

    def mark(self) -> int:
        """A position in the log; ``wait_log(..., after=mark)`` looks only at later lines."""
        return len(self.log())

    def find(self, pattern: str, after: int = 0) -> list[str]:
        rx = re.compile(pattern)
        return [line for line in self.log()[after:] if rx.search(line)]

    def wait_log(self, pattern: str, timeout: float = 10.0, after: int = 0) -> str:
        def found() -> str | None:
            hits = self.find(pattern, after)
            if hits:
                return hits[0]
            if self.proc.poll() is not None:
                time.sleep(0.1)  # let the reader take the last lines
                hits = self.find(pattern, after)
                if hits:
                    return hits[0]
                raise AssertionError(f"gateway exited ({self.proc.returncode}) before logging /{pattern}/{self.tail()}")
            return None

        return wait_for(found, f"log line /{pattern}/", timeout, context=self.tail)

    def status(self, timeout: float = 5.0) -> dict[str, Any] | None:
        try:
            return control_request(self.config.state, "status", timeout=timeout)
        except (OSError, ValueError):
            return None

    def push_by_hand(self) -> threading.Thread:
        """Ask the gateway for a push now (``push now``'s control request) without waiting for its end.

        Tests that need a push after their telegrams arrived use this instead of a one-shot
        cron slot, which a gateway slow to start on a loaded machine can miss.
        """
        def ask() -> None:
            try:
                control_request(self.config.state, "push", timeout=120)
            except (OSError, ValueError):
                pass  # the gateway went away meanwhile: the test judges by the HES and the state

        worker = threading.Thread(target=ask, name=f"push-by-hand-{self.pid}", daemon=True)
        worker.start()
        return worker

    def wait_status(self, predicate: Callable[[dict[str, Any]], Any], what: str, timeout: float = 10.0) -> dict[str, Any]:
        def check() -> dict[str, Any] | None:
            if self.proc.poll() is not None:
                raise AssertionError(f"gateway exited ({self.proc.returncode}) while waiting for {what}{self.tail()}")
            status = self.status()
            return status if status is not None and predicate(status) else None

        return wait_for(check, what, timeout, context=lambda: f"\nlast status: {self.status()}{self.tail()}")

    def wait_started(self, timeout: float = 15.0) -> dict[str, Any]:
        self.wait_log(r"wmbus_stream\.gateway: wmbus-stream .* started", timeout)
        return self.wait_status(lambda s: True, "the control socket", timeout)

    def wait_connected(self, timeout: float = 10.0) -> dict[str, Any]:
        return self.wait_status(lambda s: s["receiver"]["state"] == "connected", "receiver connected", timeout)

    def wait_ok(self, count: int, timeout: float = 10.0) -> dict[str, Any]:
        return self.wait_status(lambda s: s["telegrams"].get("ok", 0) >= count, f"{count} telegrams accepted", timeout)

    def send_signal(self, sig: int) -> None:
        os.kill(self.pid, sig)

    def kill9(self) -> None:
        os.kill(self.pid, signal.SIGKILL)
        self.proc.wait(10)
        self._reader.join(2)

    def wait_exit(self, timeout: float = 15.0) -> int:
        try:
            code = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            raise AssertionError(f"gateway did not exit within {timeout:g} s{self.tail()}") from None
        self._reader.join(2)
        return code

    def alive(self) -> bool:
        return self.proc.poll() is None

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._reader.join(2)
        if self.proc.stdout is not None:
            self.proc.stdout.close()


@pytest.fixture
def gateway(request: pytest.FixtureRequest) -> Iterator[Callable[..., GatewayProcess]]:
    """Start gateway processes (``gateway(config)``); all still running are stopped at the end.

    A failed test gets the gateway logs in its report section.
    """
    started: list[GatewayProcess] = []

    def start(config: ConfigFile, *args: str, wait: bool = True) -> GatewayProcess:
        process = GatewayProcess(config, *args)
        started.append(process)
        if wait:
            process.wait_started()
        return process

    yield start
    for process in started:
        process.stop()
    for number, process in enumerate(started):
        request.node.add_report_section("teardown", f"gateway {number} (pid {process.pid})", "\n".join(process.log()))


def run_cli(*args: str, timeout: float = 30.0, input: bytes | None = None) -> subprocess.CompletedProcess[bytes]:
    """``python -m wmbus_stream ARGS`` to its end."""
    return subprocess.run([sys.executable, "-m", "wmbus_stream", *args], capture_output=True, timeout=timeout,
                          input=input, stdin=None if input is not None else subprocess.DEVNULL)


# -------------------------------------------------------------------------------------------
# A receiver on a pty, reached through a symlink


class PtyReceiver:
    """A pty pair standing in for a USB receiver; ``link`` is what the gateway opens.

    ``unplug`` closes both ends and removes the link (the device node disappears, as with a
    USB unplug); ``plug`` makes a new pty, whose slave has another name, and points the link
    at it (as udev does with a ``/dev/serial/by-id`` link).
    """

    def __init__(self, link: Path) -> None:
        self.link = link
        self.master: int | None = None
        self.slave: int | None = None
        self.names: list[str] = []
        self.plug()

    def plug(self) -> None:
        assert self.master is None, "already plugged"
        master, slave = os.openpty()
        if self.names and os.ttyname(slave) == self.names[-1]:
            # The kernel reuses the freed number; a replugged dongle usually gets another one.
            spare = (master, slave)
            master, slave = os.openpty()
            for fd in spare:
                os.close(fd)
        tty.setraw(slave)  # no echo, no line editing: bytes pass unchanged
        os.set_blocking(master, False)
        self.master, self.slave = master, slave
        name = os.ttyname(slave)
        self.names.append(name)
        temp = self.link.with_name(self.link.name + ".new")
        with contextlib.suppress(FileNotFoundError):
            temp.unlink()
        os.symlink(name, temp)
        os.replace(temp, self.link)

    def unplug(self) -> None:
        with contextlib.suppress(FileNotFoundError):
            self.link.unlink()
        for fd in (self.master, self.slave):
            if fd is not None:
                os.close(fd)
        self.master = self.slave = None

    @property
    def plugged(self) -> bool:
        return self.master is not None

    def write(self, data: bytes, timeout: float = 20.0) -> None:
        """Write everything (the gateway reads the other end; a full pty buffer waits for it)."""
        assert self.master is not None, "receiver unplugged"
        view = memoryview(data)
        end = time.monotonic() + timeout
        while view:
            left = end - time.monotonic()
            if left <= 0:
                raise AssertionError(f"pty write stalled: {len(view)} bytes not taken by the gateway")
            _, writable, _ = select.select([], [self.master], [], min(left, 0.5))
            if writable:
                try:
                    view = view[os.write(self.master, view):]
                except BlockingIOError:
                    pass

    def read(self, timeout: float = 1.0, until: int | None = None) -> bytes:
        """What the gateway wrote to the receiver (set-up commands), waiting up to ``timeout``."""
        assert self.master is not None
        data = b""
        end = time.monotonic() + timeout
        while time.monotonic() < end and (until is None or len(data) < until):
            readable, _, _ = select.select([self.master], [], [], 0.05)
            if readable:
                try:
                    data += os.read(self.master, 4096)
                except (BlockingIOError, OSError):
                    pass
        return data

    def close(self) -> None:
        if self.plugged:
            self.unplug()


@pytest.fixture
def pty_receiver(tmp_path: Path) -> Iterator[PtyReceiver]:
    """A receiver pty reachable as ``tmp_path/ttyWMBUS``."""
    receiver = PtyReceiver(tmp_path / "ttyWMBUS")
    try:
        yield receiver
    finally:
        receiver.close()


# -------------------------------------------------------------------------------------------
# nginx: TLS + basic auth in front of the reference HES

NGINX = shutil.which("nginx") or next((p for p in ("/usr/sbin/nginx",) if Path(p).exists()), None)
NGINX_USER, NGINX_PASSWORD = "gw", "s3cret"


@dataclass
class NginxHes:
    """An nginx TLS front (with basic auth) proxying to a recording reference HES."""

    url: str
    hes: Hes
    ca_file: Path
    access_log: Path


@pytest.fixture
def nginx_hes(tmp_path: Path) -> Iterator[NginxHes]:
    """nginx on 127.0.0.1 with a trustme CA's certificate, basic auth, proxying to the HES."""
    trustme = pytest.importorskip("trustme", reason="trustme makes the test CA (pip install trustme)")
    if NGINX is None:
        pytest.skip("nginx binary not found (apt-get install nginx-light)")
    folder = tmp_path / "nginx"
    folder.mkdir()
    ca = trustme.CA()
    ca_file = folder / "ca.pem"
    ca.cert_pem.write_to_path(str(ca_file))
    leaf = ca.issue_cert("127.0.0.1", "localhost")
    cert, key = folder / "cert.pem", folder / "key.pem"
    cert.write_bytes(b"".join(blob.bytes() for blob in leaf.cert_chain_pems))
    leaf.private_key_pem.write_to_path(str(key))
    crypt = "{PLAIN}" + NGINX_PASSWORD
    (folder / "htpasswd").write_text(f"{NGINX_USER}:{crypt}\n")
    for sub in ("body", "proxy", "fastcgi", "uwsgi", "scgi"):
        (folder / sub).mkdir()
    hes = Hes()
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    (folder / "nginx.conf").write_text(f"""
daemon off;
master_process off;
worker_processes 1;
pid {folder}/nginx.pid;
error_log {folder}/error.log info;
events {{ worker_connections 64; }}
http {{
    access_log {folder}/access.log;
    client_body_temp_path {folder}/body;
    proxy_temp_path {folder}/proxy;
    fastcgi_temp_path {folder}/fastcgi;
    uwsgi_temp_path {folder}/uwsgi;
    scgi_temp_path {folder}/scgi;
    server {{
        listen 127.0.0.1:{port} ssl;
        ssl_certificate {cert};
        ssl_certificate_key {key};
        auth_basic "HES";
        auth_basic_user_file {folder}/htpasswd;
        client_max_body_size 64m;
        location / {{
            proxy_pass http://127.0.0.1:{hes.port};
            proxy_http_version 1.1;
            proxy_request_buffering off;
        }}
    }}
}}
""")
    process = subprocess.Popen([NGINX, "-p", str(folder), "-c", str(folder / "nginx.conf"), "-e", str(folder / "error.log")],
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        def listening() -> bool:
            if process.poll() is not None:
                raise AssertionError(f"nginx exited: {process.stderr.read().decode(errors='replace')}")
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
                return True
            except OSError:
                return False

        wait_for(listening, "nginx listening", 10)
        yield NginxHes(f"https://127.0.0.1:{port}/report", hes, ca_file, folder / "access.log")
    finally:
        stop_server(process)
        hes.close()


def nginx_main_config(folder: Path, connections: int, servers: str = "") -> str:
    """A minimal nginx main configuration for a test in ``folder``: no daemon, its files there, ``site.conf``
    (the documented example under test) included, then ``servers`` (test-only server blocks)."""
    return f"""
daemon off;
master_process off;
worker_processes 1;
pid {folder}/nginx.pid;
error_log {folder}/error.log info;
events {{ worker_connections {connections}; }}
http {{
    access_log off;
    client_body_temp_path {folder}/body;
    proxy_temp_path {folder}/proxy;
    fastcgi_temp_path {folder}/fastcgi;
    uwsgi_temp_path {folder}/uwsgi;
    scgi_temp_path {folder}/scgi;
    include {folder}/site.conf;
{servers}}}
"""


def stop_server(process: subprocess.Popen[bytes]) -> None:
    """Stop a server process started with a stderr pipe: SIGTERM, SIGKILL after 5 s."""
    process.terminate()
    try:
        process.wait(5)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()
    if process.stderr is not None:
        process.stderr.close()


def basic_auth(user: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


# -------------------------------------------------------------------------------------------
# PostgreSQL: the session's throwaway cluster and a database per test (pg_harness.py)

from pg_harness import pg_cluster, pg_url  # noqa: E402,F401  (fixtures for every test module of this folder)
