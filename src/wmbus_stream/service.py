"""The running gateway: receiver thread -> pipeline -> store, flushes, scheduled pushes, reload.

Threads: the receiver reader (or the simulator), at most one push worker, the control
socket, and the main loop that owns the schedule, the flushes and the signals. The store
and analyzer lock themselves; the pipeline runs on the receiver thread only, and a reload
swaps its settings object in one assignment. Nothing pending is ever dropped by a reload,
a failed push or a stop: only an acknowledged push removes rows, and only those whose
generation is unchanged.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import random
import signal
import socket
import socketserver
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from . import __version__, _signals, implementation
from .atomic import clean_stale, clean_stale_dir, open_private
from .config import control as config_control
from .config import model as config_model
from .config.manage import ConfigManager
from .config.model import Config
from .core import report
from .core.analyzer import Analyzer
from .core.check import Settings
from .core.pipeline import Pipeline
from .core.schedule import Ticker
from .core.store import Store, StoreWriteError
from .errors import ConfigError, GatewayIOError
from .io import systemd
from .io.push import push
from .io.receiver import ReceiverReader, SimulatedReceiver
from .receivers import framer as make_framer
from .sync.procedure import SyncResult
from .sync.runner import SyncRunner
from .wire.filters import matcher

STOP_DRAIN_SECONDS = 5.0  # how long SIGTERM waits for a push in flight

__all__ = ["Gateway", "PushOutcome", "control_request", "locate", "settings_of"]

log = logging.getLogger("wmbus_stream.gateway")

STORE_FILE = "store.sqlite"
LOCK_FILE = "gateway.lock"
CONTROL_SOCKET = "control.sock"
ANALYZER_META = "analyzer"
LAST_PUSH_META = "last_push"
ANALYZER_SAVE_SECONDS = 60.0
RECEIVER_KEYS = ("receiver.protocol", "receiver.port", "usb.baud.rate", "radio.mode",
                 "receiver.reconnect.seconds", "receiver.silence.minutes", "simulator.meters", "receiver.address")


@dataclass(frozen=True, slots=True)
class PushOutcome:
    """What the last push did, for status output and logs."""

    at: float
    ok: bool
    lines: int
    status: int | None
    attempts: int
    error: str | None
    duration: float

    def summary(self) -> str:
        when = datetime.fromtimestamp(self.at, timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")
        if self.ok and not self.attempts:
            return f"{when}: nothing pending, nothing sent"
        if self.ok:
            return f"{when}: acknowledged, {self.lines} lines, HTTP {self.status}, {self.duration:.2f} s"
        if not self.attempts:
            return f"{when}: not sent: {self.error}; {self.lines} meters kept"
        return f"{when}: failed after {self.attempts} attempt(s): {self.error}; {self.lines} meters kept"


def settings_of(config: Config) -> Settings:
    """The pipeline settings a configuration asks for."""
    return Settings(
        matcher(config.filter_manufacturer, config.filter_device_type, config.filter_device_id, config.radio_mode),
        config.receiver_address,
        config.wired_address,
    )


def user_agent(config: Config) -> str:
    return f"wmbus-stream/{__version__} (serial {config.gateway_serial})"


class Gateway:
    """One gateway process: open with ``start()``, drive with ``tick()``, end with ``shutdown()``."""

    def __init__(self, config: Config, config_path: str | os.PathLike[str] | None = None) -> None:
        self.config = config
        self.config_path = Path(config_path) if config_path else None
        # What this process runs on for its whole life: a new state.directory waits for a restart.
        self.state_directory = config.state_directory
        self.identity = {"config": os.path.realpath(config_path) if config_path else None,
                         "state_directory": str(self.state_directory), "pid": os.getpid()}
        self.stop_event = threading.Event()
        self.started_at = time.time()
        self.store: Store | None = None
        self.analyzer: Analyzer | None = None
        self.pipeline: Pipeline | None = None
        self.reader: threading.Thread | None = None
        self._reader_stop = threading.Event()
        self._push_thread: threading.Thread | None = None
        self._push_again = False
        self._push_lock = threading.Lock()
        self._push_ticker = Ticker(config.push_cron)
        self._next_push: datetime | None = None
        self._last_flush = 0.0
        self._last_analyzer_save = 0.0
        self._lock_fd: int | None = None
        self._control: socketserver.BaseServer | None = None
        self._reload_requested = False
        self._store_error_logged = False
        self.last_push: PushOutcome | None = None
        self.pushes = {"ok": 0, "failed": 0}
        self.lines_acknowledged = 0
        self.store_errors = 0
        self.push_attempts_total = 0  # HTTP attempts of all pushes (metrics)
        self.push_seconds_total = 0.0  # time spent pushing (metrics)
        self.last_push_success_at: float | None = None
        self.web: Any = None  # the web UI server (wmbus_stream.web) when web.enabled
        # Configuration management and sync (wmbus_stream.config.manage, wmbus_stream.sync).
        self.manager: ConfigManager | None = None
        self.syncer = SyncRunner(self)
        self._reload_lock = threading.RLock()  # reloads come from the main loop, a sync or the web UI
        self._state_lock = threading.RLock()  # store use vs. a restore swapping the store
        self._swap_lock = threading.Lock()  # arrivals vs. a restore; not held by flushes (slow flash)
        self._state_epoch = 0  # bumped by a restore: a push of the old state must not acknowledge

    # -- lifecycle ------------------------------------------------------------------------

    def start(self, *, receiver: bool = True, control: bool = True, web: bool = True) -> None:
        """Take the state directory, open the store, start the receiver and the control socket."""
        state = self.state_directory
        state.mkdir(parents=True, exist_ok=True, mode=0o700)
        self._lock_fd = _take_lock(state / LOCK_FILE)
        clean_stale_dir(state)  # temp files of a write cut by a power loss
        if self.config_path is not None:
            clean_stale(self.config_path)
            self.manager = ConfigManager(self.config_path, state, on_applied=self.reload,
                                         before_backup=self._before_backup, replace_state=self._replace_state)
            if self.manager.recovered:
                self.config = self._pinned(config_model.load(self.config_path))
        self._open_state()
        last = self.store.get_meta(LAST_PUSH_META)
        if last:
            try:
                self.last_push = PushOutcome(**json.loads(last))
            except (ValueError, TypeError):
                pass
            if self.last_push is not None and self.last_push.ok:
                self.last_push_success_at = self.last_push.at
        self.pipeline = Pipeline(settings_of(self.config), self.store, self.analyzer)
        self._last_flush = self._last_analyzer_save = time.monotonic()
        log.info(
            "wmbus-stream %s (%s) started: serial %s, %d meters pending, pushing to %s at '%s'",
            __version__, implementation(), self.config.gateway_serial, self.store.pending(),
            self.config.push_endpoint or "(no receiving.server.url)", self.config.push_cron,
        )
        if control:
            self._control = _start_control(state / CONTROL_SOCKET, self)
        if web and self.config.web_enabled:
            from .web import start_web  # its own threads; a failure to listen is logged, not fatal

            self.web = start_web(self)
        if receiver and self.config.service_enabled:
            self._start_receiver()
        elif not self.config.service_enabled:
            log.warning("service.enabled=false: receiver and pushes paused")

    def _start_receiver(self) -> None:
        cfg = self.config
        self._reader_stop = threading.Event()
        framer = make_framer(cfg.receiver_protocol if cfg.receiver_protocol != "simulator" else "cmex50",
                             receiver_address=cfg.receiver_address)

        def deliver(data: bytes, final: bool, now: float) -> int:
            return self._deliver(framer, data, final, now)

        if cfg.receiver_protocol == "simulator":
            from .receivers.simulator import Simulator

            sim = Simulator(meters=cfg.simulator_meters, seed=int(cfg.gateway_serial), protocol="cmex50",
                            receiver_address=cfg.receiver_address or "62001772")
            self.reader = SimulatedReceiver(sim, framer, deliver, self._reader_stop)
        else:
            setup = framer.setup_commands(cfg.radio_mode)
            self.reader = ReceiverReader(cfg.receiver_port, cfg.baud_rate, framer, deliver, self._reader_stop,
                                         setup=setup, max_backoff=cfg.reconnect_seconds,
                                         silence_seconds=cfg.silence_minutes * 60.0)
        self.reader.start()

    def _stop_receiver(self) -> None:
        self._reader_stop.set()
        if self.reader is not None:
            self.reader.join(timeout=5)
            self.reader = None

    def _deliver(self, framer: Any, data: bytes, final: bool, now: float) -> int:
        assert self.pipeline is not None
        with self._swap_lock:  # a restore swapping the store makes arrivals wait: none is lost
            return self.pipeline.feed(framer, data, now, final)

    def shutdown(self) -> None:
        """Stop everything; a push in flight finishes or is abandoned; state is flushed."""
        self.stop_event.set()
        if self.web is not None:
            self.web.stop()
            self.web = None
        self._stop_receiver()
        if self._push_thread is not None:
            # A push waiting on a silent HES is not worth more than a few seconds of the stop:
            # it has not been acknowledged, so its meters are still pending on disk.
            self._push_thread.join(timeout=STOP_DRAIN_SECONDS)
            if self._push_thread.is_alive():
                log.warning("push still in flight at stop: abandoned; its meters stay pending")
        self.syncer.join(timeout=5)
        if self._control is not None:
            self._control.shutdown()
            self._control.server_close()
            try:
                (self.state_directory / CONTROL_SOCKET).unlink()
            except OSError:
                pass
        if self.store is not None:
            with self._state_lock:
                self._state_epoch += 1  # an abandoned push that still gets its 2xx acknowledges nothing
                self._save_analyzer()
                self.store.close()
            log.info("stopped: %d meters pending, state flushed", self.store.pending())
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None

    # -- the main loop --------------------------------------------------------------------

    def run(self, *, once: bool = False) -> int:
        """Run until SIGTERM/SIGINT (or, with ``once``, until the capture ends and one push)."""
        # A reload or stop kept since the command's first line (``_signals.hold``) is applied now.
        _signals.install({signal.SIGTERM: self.stop_event.set, signal.SIGINT: self.stop_event.set,
                          signal.SIGHUP: self._request_reload})
        if self.stop_event.is_set():
            log.info("stopped before the start: nothing was opened")
            return 0
        self.start()
        systemd.notify("READY=1")
        watchdog = systemd.watchdog_interval()
        last_ping = 0.0
        try:
            if once:
                return self._run_once()
            while not self.stop_event.wait(0.25):
                self.tick()
                if watchdog and time.monotonic() - last_ping >= watchdog:
                    systemd.notify("WATCHDOG=1")
                    last_ping = time.monotonic()
            return 0
        finally:
            systemd.notify("STOPPING=1")
            self.shutdown()

    def _run_once(self) -> int:
        reader = self.reader
        if isinstance(reader, ReceiverReader) and reader.is_alive():
            while reader.is_alive() and reader.state not in ("finished", "stopped") and not self.stop_event.is_set():
                reader.join(0.2)
        self.flush()
        outcome = self.push_by_hand()
        if outcome is None:  # someone pushed by hand meanwhile: wait for it, then push what is left
            while self._push_in_flight():
                time.sleep(0.1)
            outcome = self.push_by_hand()
        return 0 if outcome is not None and outcome.ok else 1

    def _request_reload(self) -> None:
        self._reload_requested = True

    def tick(self) -> None:
        """One pass of the main loop: reload, flush, schedule, analyzer period."""
        if self._reload_requested:
            self._reload_requested = False
            self.reload()
        now_mono = time.monotonic()
        if now_mono - self._last_flush >= self.config.flush_seconds:
            self.flush()
        if now_mono - self._last_analyzer_save >= ANALYZER_SAVE_SECONDS:
            self._save_analyzer()
        assert self.analyzer is not None
        self.analyzer.maybe_reset(time.time(), self.config.analyzer_reset_hours)
        self.syncer.poll(datetime.now(timezone.utc))
        if not self.config.service_enabled:
            return
        tick = self._push_ticker.poll(datetime.now(timezone.utc))
        self._next_push = tick.next_at
        if tick.due:
            if tick.missed:
                log.info("%d missed push slot(s) coalesced into one push", tick.missed)
            self._start_push(scheduled=True)
        elif self._push_again and not self._push_in_flight():
            self._push_again = False
            self._start_push(scheduled=False)

    def flush(self) -> None:
        """Write new arrivals to disk; an IO failure keeps them in memory for the next flush."""
        assert self.store is not None
        self._last_flush = time.monotonic()
        try:
            with self._state_lock:
                self.store.flush()
        except StoreWriteError as exc:
            self.store_errors += 1
            if not self._store_error_logged:
                log.error("cannot write state to %s: %s; keeping pending telegrams in memory and retrying",
                          self.state_directory, exc)
                self._store_error_logged = True
            return
        if self._store_error_logged:
            log.info("state writes work again")
            self._store_error_logged = False

    def _save_analyzer(self) -> None:
        self._last_analyzer_save = time.monotonic()
        if self.store is not None and self.analyzer is not None:
            try:
                self.store.set_meta(ANALYZER_META, self.analyzer.dump())
            except GatewayIOError as exc:
                log.debug("analyzer not saved: %s", exc)

    # -- reload ---------------------------------------------------------------------------

    def reload(self, new: Config | None = None) -> bool:
        """Apply a new configuration (re-read from the file when none is given); never a bad one."""
        with self._reload_lock:
            return self._reload(new)

    def _reload(self, new: Config | None) -> bool:
        if new is None:
            if self.config_path is None:
                return False
            try:
                new = config_model.require(config_model.load(self.config_path), before=self.config)
            except ConfigError as exc:
                for problem in exc.problems:
                    log.error("reload refused: %s", problem)
                log.error("keeping the running configuration")
                return False
        if new.state_directory != self.state_directory:
            log.warning("state.directory changed to %s: takes effect after a restart; running on %s until then",
                        new.state_directory, self.state_directory)
            new = self._pinned(new)
        old, self.config = self.config, new
        assert self.pipeline is not None
        self.pipeline.settings = settings_of(new)
        if str(new.push_cron) != str(old.push_cron) or new.timezone != old.timezone:
            self._push_ticker = Ticker(new.push_cron, datetime.now(timezone.utc))
        receiver_changed = any(old.get(k) != new.get(k) for k in RECEIVER_KEYS)
        if receiver_changed or new.service_enabled != old.service_enabled:
            self._stop_receiver()
            if new.service_enabled:
                self._start_receiver()
        log.info("configuration reloaded%s", " (receiver restarted)" if receiver_changed else "")
        return True

    def _pinned(self, config: Config) -> Config:
        """``config`` with the state directory this process runs on (everything else as given)."""
        if config.state_directory == self.state_directory:
            return config
        return config.with_changes({"state.directory": str(self.state_directory)})

    # -- pushing --------------------------------------------------------------------------

    def _push_in_flight(self) -> bool:
        return self._push_thread is not None and self._push_thread.is_alive()

    def _start_push(self, *, scheduled: bool) -> None:
        with self._push_lock:
            if self._push_in_flight():
                self._push_again = True  # coalesce: one more push right after this one
                return
            self._push_thread = threading.Thread(target=self._push_worker, args=(scheduled,), name="push", daemon=True)
            self._push_thread.start()

    def push_by_hand(self) -> PushOutcome | None:
        """Push now in the one push slot and wait for the outcome; None when a push is in flight."""
        result: list[PushOutcome | BaseException] = []

        def work() -> None:
            try:
                result.append(self.push_now())
            except BaseException as exc:  # handed to the caller's thread
                result.append(exc)

        with self._push_lock:
            if self._push_in_flight():
                return None
            thread = threading.Thread(target=work, name="push", daemon=True)
            self._push_thread = thread
            thread.start()
        thread.join()
        if isinstance(result[0], BaseException):
            raise result[0]
        return result[0]

    def _push_worker(self, scheduled: bool) -> None:
        if scheduled and self.config.push_jitter > 0:
            if self.stop_event.wait(random.uniform(0, self.config.push_jitter)):
                return
        self.push_now()

    def _deadline(self) -> float | None:
        """The next push slot on the monotonic clock: retries never run into it."""
        nxt = self.config.push_cron.next_after(datetime.now(timezone.utc))
        return time.monotonic() + max(1.0, (nxt - datetime.now(timezone.utc)).total_seconds() - 1.0)

    def push_now(self) -> PushOutcome:
        """Push what is pending now (in the calling thread) and acknowledge it on a 2xx.

        Every attempt sends a fresh snapshot, so a retry carries telegrams that arrived
        during the backoff; only the snapshot of the acknowledged attempt is acknowledged.
        """
        assert self.store is not None
        cfg = self.config
        with self._state_lock:
            sent = (self._state_epoch, self.store.snapshot())
        now = time.time()
        if not cfg.push_url:
            outcome = PushOutcome(now, False, len(sent[1]), None, 0, "receiving.server.url is not set", 0.0)
        elif not len(sent[1]):
            outcome = PushOutcome(now, True, 0, None, 0, None, 0.0)
            log.info("push: nothing pending")
            self.last_push = outcome
            return outcome
        else:
            def body() -> Iterable[bytes]:
                nonlocal sent
                if attempts_made:  # the first attempt sends the snapshot taken above
                    with self._state_lock:
                        sent = (self._state_epoch, self.store.snapshot())
                attempts_made.append(1)
                return report.body(sent[1], cfg.gateway_serial, cfg.timezone)

            attempts_made: list[int] = []
            credentials = cfg.push_credentials
            result = push(
                cfg.push_endpoint or cfg.push_url,
                body,
                username=credentials[0] if credentials else None,
                password=credentials[1] if credentials else None,
                ca_file=str(cfg.push_ca_file) if cfg.push_ca_file else None,
                connect_timeout=cfg.push_connect_timeout,
                read_timeout=cfg.push_read_timeout,
                attempts=cfg.push_retries + 1,  # the first attempt, then the configured retries
                deadline=self._deadline(),
                user_agent=user_agent(cfg),
                stop_event=self.stop_event,
            )
            epoch, snapshot = sent
            outcome = PushOutcome(now, result.ok, len(snapshot), result.status, result.attempts,
                                  result.error, result.duration)
            if result.ok:
                self.lines_acknowledged += len(snapshot)
                try:
                    with self._state_lock:
                        if epoch == self._state_epoch:  # else a restore replaced the state meanwhile
                            self.store.acknowledge(snapshot)
                except StoreWriteError as exc:
                    # Forgotten in memory already; the next flush retries the disk delete.
                    self.store_errors += 1
                    log.error("acknowledged rows not yet deleted on disk (%s); retrying at the next flush", exc)
        self.pushes["ok" if outcome.ok else "failed"] += 1
        self.push_attempts_total += outcome.attempts
        self.push_seconds_total += outcome.duration
        if outcome.ok:
            self.last_push_success_at = outcome.at
        self.last_push = outcome
        (log.info if outcome.ok else log.warning)("push %s", outcome.summary())
        try:
            self.store.set_meta(LAST_PUSH_META, json.dumps(_asdict(outcome)))
        except GatewayIOError:
            pass
        return outcome

    # -- status ---------------------------------------------------------------------------

    def status(self) -> dict[str, Any]:
        """Everything a field engineer asks first, as plain JSON values."""
        cfg = self.config
        reader = self.reader
        counts = dict(self.pipeline.counts) if self.pipeline else {}
        return {
            "version": __version__,
            "implementation": implementation(),
            "enabled": cfg.service_enabled,
            "uptime_seconds": round(time.time() - self.started_at, 1),
            "gateway_serial": cfg.gateway_serial,
            "receiver": {
                "protocol": cfg.receiver_protocol,
                "port": cfg.receiver_port if cfg.receiver_protocol != "simulator" else "simulator",
                "state": getattr(reader, "state", "stopped"),
                "reconnects": getattr(reader, "reconnects", 0),
                "last_error": getattr(reader, "last_error", None),
                "bytes_read": getattr(reader, "bytes_read", 0),
                "last_data_at": getattr(reader, "last_data_at", None),
                "silent": getattr(reader, "silent", False),
                "silence_alarms": getattr(reader, "silence_alarms", 0),
                "skipped_bytes": reader.framer.stats.skipped_bytes if reader else 0,
                "bad_frames": reader.framer.stats.bad_frames if reader else 0,
            },
            "telegrams": counts,
            "telegrams_long_form": self.pipeline.long_form if self.pipeline else 0,
            "meters_pending": self.store.pending() if self.store else 0,
            "store_write_errors": self.store_errors,
            "pushes": dict(self.pushes),
            "push_in_flight": self._push_in_flight(),
            "last_push": _asdict(self.last_push) if self.last_push else None,
            "next_push": self._next_push.isoformat() if self._next_push else None,
            "sync": self.syncer.status(),
        }

    # -- configuration sync, backup and restore -------------------------------------------

    def sync_now(self) -> SyncResult:
        """Run a configuration sync now (in the calling thread) and keep its result."""
        return self.syncer.run_now()

    def _before_backup(self) -> None:
        """A backup copies the database: write what is only in memory first."""
        self.flush()
        self._save_analyzer()

    def _replace_state(self, swap: Callable[[], None]) -> None:
        """Close the store, let a restore put new state files in place, reopen everything."""
        with self._state_lock, self._swap_lock:
            self._state_epoch += 1
            if self.store is not None:
                self._save_analyzer()
                self.store.close()
            try:
                swap()
            finally:
                self._open_state()
                if self.pipeline is not None:
                    self.pipeline.store, self.pipeline.analyzer = self.store, self.analyzer
                log.info("state reopened: %d meters pending", self.store.pending())

    def _open_state(self) -> None:
        """Open the store of the state directory with the analyzer and sync state it saved."""
        self.store = Store.open(self.state_directory / STORE_FILE)
        self.analyzer = Analyzer(time.time())
        saved = self.store.get_meta(ANALYZER_META)
        if saved:
            try:
                self.analyzer.load(saved)
            except ValueError as exc:
                log.warning("saved analyzer state could not be read (%s); starting a new period", exc)
        self.syncer.load()


def _asdict(outcome: PushOutcome) -> dict[str, Any]:
    return {name: getattr(outcome, name) for name in PushOutcome.__slots__}


def _take_lock(path: Path) -> int:
    fd = open_private(path, os.O_RDWR)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        os.close(fd)
        raise GatewayIOError(f"another wmbus-stream process is using {path.parent}") from None
    return fd


# -- control socket: `push now`, `status` and `analyzer` talk to the running gateway ---------


class _ControlHandler(socketserver.StreamRequestHandler):
    def handle(self) -> None:
        gateway: Gateway = self.server.gateway  # type: ignore[attr-defined]
        command = self.rfile.readline(100).decode("ascii", "replace").strip()
        if command == "push":
            outcome = gateway.push_by_hand()
            answer: Any = _asdict(outcome) if outcome else {"error": "a push is already in flight"}
        elif command == "status":
            answer = gateway.status()
        elif command == "analyzer":
            answer = {"dump": gateway.analyzer.dump().decode() if gateway.analyzer else None}
        elif command == "identity":
            answer = gateway.identity
        elif command == "reload":
            answer = {"ok": gateway.reload()}
        elif command == "sync":
            answer = gateway.sync_now().as_dict()
        elif command == "backup":
            config_control.serve_backup(gateway.manager, self.wfile)
            return
        elif command.startswith("restore "):
            answer = config_control.serve_restore(gateway.manager, command, self.rfile)
        else:
            answer = {"error": f"unknown command {command!r}; allowed: push, status, analyzer, identity, reload,"
                               " sync, backup, restore"}
        self.wfile.write(json.dumps(answer).encode() + b"\n")


class _ControlServer(socketserver.ThreadingMixIn, socketserver.UnixStreamServer):
    daemon_threads = True


def _start_control(path: Path, gateway: Gateway) -> socketserver.BaseServer:
    try:
        path.unlink()
    except FileNotFoundError:
        pass
    old = os.umask(0o177)  # socket usable by this user only
    try:
        server = _ControlServer(str(path), _ControlHandler)
    finally:
        os.umask(old)
    server.gateway = gateway  # type: ignore[attr-defined]
    threading.Thread(target=server.serve_forever, name="control", daemon=True).start()
    return server


def control_request(state_directory: Path, command: str, timeout: float = 300.0) -> dict[str, Any] | None:
    """Ask a running gateway; None when none is running for this state directory."""
    path = state_directory / CONTROL_SOCKET
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.settimeout(timeout)
            sock.connect(str(path))
            sock.sendall(command.encode() + b"\n")
            data = b""
            while not data.endswith(b"\n"):
                chunk = sock.recv(65536)
                if not chunk:
                    break
                data += chunk
    except (FileNotFoundError, ConnectionRefusedError):
        return None
    return json.loads(data)


def _live_state_directories() -> list[Path]:
    """Folders of the listening control sockets on this machine that hold a gateway lock (Linux)."""
    found: list[Path] = []
    try:
        with open("/proc/net/unix", encoding="utf-8", errors="replace") as table:
            next(table, None)
            for line in table:
                fields = line.rstrip("\n").split(maxsplit=7)  # Num RefCount Protocol Flags Type St Inode Path
                # A listening socket (flag __SO_ACCEPTCON) named control.sock beside a gateway lock.
                if len(fields) == 8 and fields[3] == "00010000" and fields[7].endswith("/" + CONTROL_SOCKET):
                    folder = Path(fields[7]).parent
                    if (folder / LOCK_FILE).exists():
                        found.append(folder)
    except OSError:
        pass
    return found


def locate(config_path: str | os.PathLike[str]) -> Path:
    """The state directory of the gateway running with ``config_path``, else the one the file names.

    The file may have been edited since that gateway started (a new ``state.directory`` takes
    effect only at a restart) or be broken: the gateway's own answer decides, not the file.
    The folder the file names is asked first, then every other live control socket.
    """
    named = config_model.state_directory_of(config_path)
    wanted = os.path.realpath(config_path)
    for folder in dict.fromkeys([named, *_live_state_directories()]):
        try:
            answer = control_request(folder, "identity", timeout=2)  # a healthy gateway answers at once
        except (OSError, ValueError):
            continue
        if answer is not None and answer.get("config") == wanted:
            return folder
    return named
