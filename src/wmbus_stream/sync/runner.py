"""The running gateway's side of the sync: when to run one, in which thread, what to remember.

Strategy: the gateway's main loop calls ``poll(now)`` every pass; when ``sync.enabled`` and
``configuration.server.cron`` say a sync is due, it runs in its own thread, so a slow or
hostile server never blocks the receiver, the flushes or the push. At most one sync runs at
a time (``run_now`` from the control socket waits for a running one, then runs its own).
The schedule and the switch are read from the running configuration at every poll, so a
sync that turns sync off or changes the cron or the server takes effect for the next one.
The last result is kept in memory for ``status`` and in the state database's meta table,
so it survives a restart.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable
from datetime import datetime
from typing import Any

from ..config.manage import ConfigManager
from ..config.model import Config
from ..core.schedule import Ticker
from ..errors import GatewayIOError
from ..host import Counts, SyncStatus
from ..io.store import Store
from .cad import RESULT_ERROR
from .procedure import SyncResult, run_sync

__all__ = ["SyncRunner", "LAST_SYNC_META"]

log = logging.getLogger("wmbus_stream.sync")

LAST_SYNC_META = "last_sync"


class SyncRunner:
    """Schedules, runs and remembers configuration syncs for one gateway.

    It is given what it reads at each use: the running configuration, the configuration
    manager (None without a configuration file), the state database (replaced by a
    restore) and the gateway's stop event.
    """

    def __init__(self, config: Callable[[], Config], manager: Callable[[], ConfigManager | None],
                 store: Callable[[], Store | None], stop_event: threading.Event) -> None:
        self._config, self._manager, self._store, self._stop_event = config, manager, store, stop_event
        self.last: dict[str, Any] | None = None
        self.next_at: datetime | None = None
        self.runs = {"ok": 0, "failed": 0}
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._ticker: Ticker | None = None
        self._schedule_key: tuple[str, str] | None = None

    def load(self) -> None:
        """Read the last result a previous run saved."""
        store = self._store()
        saved = store.get_meta(LAST_SYNC_META) if store is not None else None
        if saved:
            try:
                self.last = json.loads(saved)
            except ValueError:
                self.last = None

    def in_flight(self) -> bool:
        """Whether a sync runs now."""
        return self._thread is not None and self._thread.is_alive()

    def poll(self, now: datetime) -> None:
        """Start a sync in its own thread when one is due."""
        config = self._config()
        if not (config.sync_enabled and config.sync_url) or self._manager() is None:
            self._ticker, self._schedule_key, self.next_at = None, None, None
            return
        key = (config.sync_cron.expression, repr(config.timezone))
        if self._ticker is None or key != self._schedule_key:
            self._ticker, self._schedule_key = Ticker(config.sync_cron), key
        tick = self._ticker.poll(now)
        self.next_at = tick.next_at
        if tick.due and not self.in_flight():
            self._thread = threading.Thread(target=self._scheduled, name="sync", daemon=True)
            self._thread.start()

    def _scheduled(self) -> None:
        try:
            self.run_now()
        except Exception:  # noqa: BLE001  (a bug must not kill the gateway; it is logged with its trace)
            log.exception("sync failed unexpectedly")

    def run_now(self) -> SyncResult:
        """Run one sync in the calling thread and remember its result."""
        with self._lock:
            manager = self._manager()
            if manager is None:
                result = SyncResult(RESULT_ERROR, f"{RESULT_ERROR} the gateway runs without a configuration file",
                                    at=time.time())
            else:
                result = run_sync(manager, self._config(), stop_event=self._stop_event)
            self.runs["ok" if result.ok else "failed"] += 1
            self.last = result.as_dict()
            store = self._store()
            if store is not None and not self._stop_event.is_set():
                try:
                    store.set_meta(LAST_SYNC_META, json.dumps(self.last))
                except GatewayIOError as exc:
                    log.debug("last sync result not saved: %s", exc)
        return result

    def join(self, timeout: float) -> None:
        """Wait up to ``timeout`` for a sync in flight."""
        if self._thread is not None:
            self._thread.join(timeout)

    def status(self) -> SyncStatus:
        """The sync part of the gateway's status."""
        config = self._config()
        return SyncStatus(config.sync_enabled, config.sync_endpoint, str(config.sync_cron), self.next_at,
                          self.in_flight(), Counts(self.runs["ok"], self.runs["failed"]), self.last)
