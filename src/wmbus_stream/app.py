"""The composition root: one gateway process built and wired, then run until a stop.

``Gateway`` builds the long-lived objects (the state database and analyzer, the pipeline,
the receiver reader, the push slot, the sync runner, the control socket, the web server),
hands each one what it uses, and drives them: open with ``start()``, one pass of the main
loop with ``tick()``, end with ``shutdown()``; ``run()`` is all three with the signals.

Threads: the receiver reader (or the simulator), at most one push, at most one sync, the
control socket, the web server, and the main loop that owns the schedule, the flushes and
the signals. The store and analyzer lock themselves; the pipeline runs on the receiver
thread only, and a reload swaps its settings object in one assignment. Nothing pending is
ever dropped by a reload, a failed push or a stop: only an acknowledged push removes
rows, and only those whose state epoch is unchanged (a restore bumps it).
"""

from __future__ import annotations

import logging
import os
import signal
import threading
import time
from collections.abc import Callable
from datetime import datetime, UTC
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO

from . import __version__, _signals, implementation
from .atomic import clean_stale, clean_stale_dir
from .config import model as config_model
from .config.manage import ConfigManager
from .config.model import Config
from .core.analyzer import Analyzer
from .core.check import Settings
from .core.pipeline import Pipeline
from .core.schedule import Ticker
from .core.latest import Snapshot
from .io.store import Store, StoreWriteError
from .errors import BackupError, ConfigError, GatewayIOError, WmbusStreamError
from .host import PushOutcome, PushTotals, ReceiverStatus, RestoreResult, Status
from .io import systemd
from .io.control import LOCK_FILE, ControlServer, take_lock
from .io.receiver import ReceiverReader, SimulatedReceiver
from .pusher import LAST_PUSH_META, Pusher
from .receivers import Framer
from .receivers import framer as make_framer
from .state import backup as state_backup
from .state.archive import BackupLimits
from .state.backup import STORE_FILE
from .sync.procedure import SyncResult
from .sync.runner import SyncRunner
from .wire.filters import matcher

if TYPE_CHECKING:
    from .web import WebServer

__all__ = ["ANALYZER_META", "Gateway", "settings_of"]

log = logging.getLogger("wmbus_stream.gateway")

STOP_DRAIN_SECONDS = 5.0  # how long SIGTERM waits for a push in flight
ANALYZER_META = "analyzer"
ANALYZER_SAVE_SECONDS = 60.0
RECEIVER_KEYS = ("receiver.protocol", "receiver.port", "usb.baud.rate", "radio.mode",
                 "receiver.reconnect.seconds", "receiver.silence.minutes", "simulator.meters", "receiver.address")


def settings_of(config: Config) -> Settings:
    """The pipeline settings a configuration asks for."""
    return Settings(
        matcher(config.filter_manufacturer, config.filter_device_type, config.filter_device_id, config.radio_mode),
        config.receiver_address,
        config.wired_address,
    )


class _State:
    """The state database and analyzer of one state directory, as a push, a flush and a restore share them.

    A restore closes the store, swaps the files and reopens it: the state lock keeps store
    use out meanwhile, the swap lock keeps arrivals waiting (not the flushes: slow flash),
    and the epoch tells a push of the old state that it must not acknowledge.
    """

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.store: Store | None = None
        self.analyzer: Analyzer | None = None
        self.lock = threading.RLock()
        self.swap_lock = threading.Lock()
        self.epoch = 0
        self.errors = 0  # state writes that failed since the start
        self._error_logged = False

    def open(self) -> None:
        """Open the store of the state directory with the analyzer it saved."""
        self.store = Store.open(self.directory / STORE_FILE)
        self.analyzer = Analyzer(time.time(), lock=threading.Lock())
        saved = self.store.get_meta(ANALYZER_META)
        if saved:
            try:
                self.analyzer.load(saved)
            except ValueError as exc:
                log.warning("saved analyzer state could not be read (%s); starting a new period", exc)

    def opened(self) -> Store:
        assert self.store is not None, "the state is opened by Gateway.start()"
        return self.store

    def take(self) -> tuple[int, Snapshot]:
        with self.lock:
            return self.epoch, self.opened().snapshot()

    def acknowledge(self, epoch: int, snapshot: Snapshot) -> None:
        try:
            with self.lock:
                if epoch == self.epoch:  # else a restore replaced the state meanwhile
                    self.opened().acknowledge(snapshot)
        except StoreWriteError as exc:
            # Forgotten in memory already; the next flush retries the disk delete.
            self.errors += 1
            log.error("acknowledged rows not yet deleted on disk (%s); retrying at the next flush", exc)

    def set_meta(self, name: str, value: bytes | str) -> None:
        self.opened().set_meta(name, value)

    def flush(self) -> None:
        """Write new arrivals to disk; an IO failure keeps them in memory for the next flush."""
        try:
            with self.lock:
                self.opened().flush()
        except StoreWriteError as exc:
            self.errors += 1
            if not self._error_logged:
                log.error("cannot write state to %s: %s; keeping pending telegrams in memory and retrying",
                          self.directory, exc)
                self._error_logged = True
            return
        if self._error_logged:
            log.info("state writes work again")
            self._error_logged = False

    def save_analyzer(self) -> None:
        if self.store is not None and self.analyzer is not None:
            try:
                self.store.set_meta(ANALYZER_META, self.analyzer.dump())
            except GatewayIOError as exc:
                log.debug("analyzer not saved: %s", exc)

    def close(self) -> None:
        """Save the analyzer and close the store; a push still in flight acknowledges nothing."""
        with self.lock:
            self.epoch += 1  # an abandoned push that still gets its 2xx acknowledges nothing
            self.save_analyzer()
            self.opened().close()


class Gateway:
    """One gateway process: open with ``start()``, drive with ``tick()``, end with ``shutdown()``."""

    def __init__(self, config: Config, config_path: str | os.PathLike[str] | None = None) -> None:
        self._config = config
        self.config_path = Path(config_path) if config_path else None
        # What this process runs on for its whole life: a new state.directory waits for a restart.
        self.state_directory = config.state_directory
        self._identity: dict[str, object] = {
            "config": os.path.realpath(config_path) if config_path else None,
            "state_directory": str(self.state_directory), "pid": os.getpid()}
        self.stop_event = threading.Event()
        self._started_at = time.time()
        self._state = _State(self.state_directory)
        self.pipeline: Pipeline | None = None
        self.reader: ReceiverReader | SimulatedReceiver | None = None
        self._reader_stop = threading.Event()
        self._manager: ConfigManager | None = None
        self.pusher = Pusher(lambda: self._config, self._state, self.stop_event)
        self.syncer = SyncRunner(lambda: self._config, lambda: self._manager, lambda: self._state.store,
                                 self.stop_event)
        self._push_ticker = Ticker(config.push_cron)
        self._next_push: datetime | None = None
        self._last_flush = 0.0
        self._last_analyzer_save = 0.0
        self._lock_fd: int | None = None
        self._control: ControlServer | None = None
        self.web: WebServer | None = None  # the web UI server when web.enabled
        self._reload_requested = False
        self._reload_lock = threading.RLock()  # reloads come from the main loop, a sync or the web UI

    # -- what the web UI and the control socket see (``host.Host``) -----------------------

    @property
    def config(self) -> Config:
        return self._config

    @property
    def manager(self) -> ConfigManager | None:
        return self._manager

    @property
    def analyzer(self) -> Analyzer | None:
        return self._state.analyzer

    @property
    def started_at(self) -> float:
        return self._started_at

    @property
    def identity(self) -> dict[str, object]:
        return self._identity

    def push_by_hand(self) -> PushOutcome | None:
        """Push now in the one push slot and wait for the outcome; None when a push is in flight."""
        return self.pusher.by_hand()

    def push_totals(self) -> PushTotals:
        return self.pusher.totals()

    def sync_now(self) -> SyncResult:
        """Run a configuration sync now (in the calling thread) and keep its result."""
        return self.syncer.run_now()

    def backup(self, dest: BinaryIO) -> None:
        """Write a backup archive of the running gateway to ``dest``."""
        state_backup.backup(self._managed(), dest)

    def restore(self, source: BinaryIO, size: int, keep_serial: bool) -> RestoreResult:
        """Put the ``size``-byte backup archive read from ``source`` in place of this gateway's state."""
        manager = self._managed()
        if size > BackupLimits().archive:
            raise BackupError(f"archive larger than the limit of {BackupLimits().archive} bytes")
        return state_backup.restore(manager, source, keep_serial=keep_serial)

    def _managed(self) -> ConfigManager:
        if self._manager is None:
            raise WmbusStreamError("the gateway runs without a configuration file")
        return self._manager

    def reset_analyzer(self, now: float) -> None:
        """Start a new analyzer period at ``now``."""
        if self._state.analyzer is not None:
            self._state.analyzer.reset(now)

    # -- lifecycle ------------------------------------------------------------------------

    def start(self, *, receiver: bool = True, control: bool = True, web: bool = True) -> None:
        """Take the state directory, open the store, start the receiver and the control socket."""
        state = self.state_directory
        state.mkdir(parents=True, exist_ok=True, mode=0o700)
        self._lock_fd = take_lock(state / LOCK_FILE)
        clean_stale_dir(state)  # temp files of a write cut by a power loss
        if self.config_path is not None:
            clean_stale(self.config_path)
            self._manager = ConfigManager(self.config_path, state, on_applied=self.reload,
                                          before_backup=self._before_backup, replace_state=self._replace_state)
            if self._manager.recovered:
                self._config = self._pinned(config_model.load(self.config_path))
        self._open_state()
        store = self._state.opened()
        self.pusher.load(store.get_meta(LAST_PUSH_META))
        self.pipeline = Pipeline(settings_of(self._config), store, self._state.analyzer)
        self._last_flush = self._last_analyzer_save = time.monotonic()
        log.info(
            "wmbus-stream %s (%s) started: serial %s, %d meters pending, pushing to %s at '%s'",
            __version__, implementation(), self._config.gateway_serial, store.pending(),
            self._config.push_endpoint or "(no receiving.server.url)", self._config.push_cron,
        )
        if control:
            self._control = ControlServer(state, self)
        if web and self._config.web_enabled:
            from .web import start_web  # imported only when enabled: a gateway without the UI never loads it

            self.web = start_web(self)  # its own threads; a failure to listen is logged, not fatal
        if receiver and self._config.service_enabled:
            self._start_receiver()
        elif not self._config.service_enabled:
            log.warning("service.enabled=false: receiver and pushes paused")

    def _start_receiver(self) -> None:
        cfg = self._config
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

    def _deliver(self, framer: Framer, data: bytes, final: bool, now: float) -> int:
        assert self.pipeline is not None
        with self._state.swap_lock:  # a restore swapping the store makes arrivals wait: none is lost
            return self.pipeline.feed(framer, data, now, final)

    def shutdown(self) -> None:
        """Stop everything; a push in flight finishes or is abandoned; state is flushed."""
        self.stop_event.set()
        if self.web is not None:
            self.web.stop()
            self.web = None
        self._stop_receiver()
        # A push waiting on a silent HES is not worth more than a few seconds of the stop:
        # it has not been acknowledged, so its meters are still pending on disk.
        if not self.pusher.join(STOP_DRAIN_SECONDS):
            log.warning("push still in flight at stop: abandoned; its meters stay pending")
        self.syncer.join(timeout=5)
        if self._control is not None:
            self._control.close()
        if self._state.store is not None:
            self._state.close()
            log.info("stopped: %d meters pending, state flushed", self._state.store.pending())
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
            while self.pusher.in_flight():
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
        if now_mono - self._last_flush >= self._config.flush_seconds:
            self.flush()
        if now_mono - self._last_analyzer_save >= ANALYZER_SAVE_SECONDS:
            self._save_analyzer()
        assert self._state.analyzer is not None
        self._state.analyzer.maybe_reset(time.time(), self._config.analyzer_reset_hours)
        self.syncer.poll(datetime.now(UTC))
        if not self._config.service_enabled:
            return
        tick = self._push_ticker.poll(datetime.now(UTC))
        self._next_push = tick.next_at
        if tick.due:
            if tick.missed:
                log.info("%d missed push slot(s) coalesced into one push", tick.missed)
            self.pusher.start(scheduled=True)
        else:
            self.pusher.start_again()

    def flush(self) -> None:
        """Write new arrivals to disk; an IO failure keeps them in memory for the next flush."""
        self._last_flush = time.monotonic()
        self._state.flush()

    def _save_analyzer(self) -> None:
        self._last_analyzer_save = time.monotonic()
        self._state.save_analyzer()

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
                new = config_model.require(config_model.load(self.config_path), before=self._config)
            except ConfigError as exc:
                for problem in exc.problems:
                    log.error("reload refused: %s", problem)
                log.error("keeping the running configuration")
                return False
        if new.state_directory != self.state_directory:
            log.warning("state.directory changed to %s: takes effect after a restart; running on %s until then",
                        new.state_directory, self.state_directory)
            new = self._pinned(new)
        old, self._config = self._config, new
        assert self.pipeline is not None
        self.pipeline.settings = settings_of(new)
        if str(new.push_cron) != str(old.push_cron) or new.timezone != old.timezone:
            self._push_ticker = Ticker(new.push_cron, datetime.now(UTC))
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

    # -- status ---------------------------------------------------------------------------

    def status(self) -> Status:
        """Everything a field engineer asks first."""
        cfg = self._config
        store = self._state.store
        return Status(
            version=__version__,
            implementation=implementation(),
            enabled=cfg.service_enabled,
            uptime_seconds=round(time.time() - self._started_at, 1),
            gateway_serial=cfg.gateway_serial,
            receiver=self._receiver_status(),
            telegrams=dict(self.pipeline.counts) if self.pipeline else {},
            telegrams_long_form=self.pipeline.long_form if self.pipeline else 0,
            meters_pending=store.pending() if store else 0,
            store_write_errors=self._state.errors,
            pushes=self.pusher.pushes(),
            push_in_flight=self.pusher.in_flight(),
            last_push=self.pusher.last,
            next_push=self._next_push,
            sync=self.syncer.status(),
        )

    def _receiver_status(self) -> ReceiverStatus:
        cfg = self._config
        port = cfg.receiver_port if cfg.receiver_protocol != "simulator" else "simulator"
        reader = self.reader
        if reader is None:
            return ReceiverStatus(cfg.receiver_protocol, port, "stopped", 0, None, 0, None, False, 0, 0, 0)
        stats = reader.framer.stats
        return ReceiverStatus(cfg.receiver_protocol, port, reader.state, reader.reconnects, reader.last_error,
                              reader.bytes_read, reader.last_data_at, reader.silent, reader.silence_alarms,
                              stats.skipped_bytes, stats.bad_frames)

    # -- backup and restore ---------------------------------------------------------------

    def _before_backup(self) -> None:
        """A backup copies the database: write what is only in memory first."""
        self.flush()
        self._save_analyzer()

    def _replace_state(self, swap: Callable[[], None]) -> None:
        """Close the store, let a restore put new state files in place, reopen everything."""
        state = self._state
        with state.lock, state.swap_lock:
            state.epoch += 1
            if state.store is not None:
                state.save_analyzer()
                state.store.close()
            try:
                swap()
            finally:
                self._open_state()
                if self.pipeline is not None:
                    self.pipeline.store, self.pipeline.analyzer = state.store, state.analyzer
                log.info("state reopened: %d meters pending", state.opened().pending())

    def _open_state(self) -> None:
        """Open the store of the state directory with the analyzer and sync state it saved."""
        self._state.open()
        self.syncer.load()
