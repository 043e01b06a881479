"""The push policy: one push slot, scheduled pushes with jitter, pushes by hand, retries up to the next slot.

At most one push runs at a time: a scheduled push that finds one in flight is coalesced
into one more right after it, a push by hand gets None. Every attempt sends a fresh
snapshot of what is pending, so a retry carries telegrams that arrived during the backoff;
only the snapshot of the acknowledged attempt is acknowledged, and only when no restore
replaced the state meanwhile (``Pending`` keeps that epoch). Retries never run into the
next push slot (``deadline``).
"""

from __future__ import annotations

import json
import logging
import random
import threading
import time
from collections.abc import Callable, Iterable
from datetime import datetime, UTC
from typing import Protocol

from . import __version__
from .config.model import Config
from .core import report
from .core.latest import Snapshot
from .errors import GatewayIOError
from .host import Counts, PushOutcome, PushTotals, as_json
from .io.push import push

__all__ = ["LAST_PUSH_META", "Pending", "Pusher", "deadline", "user_agent"]

log = logging.getLogger("wmbus_stream.gateway")

LAST_PUSH_META = "last_push"


def user_agent(config: Config) -> str:
    """The User-Agent of every request: version and gateway serial."""
    return f"wmbus-stream/{__version__} (serial {config.gateway_serial})"


def deadline(config: Config) -> float:
    """The next push slot on the monotonic clock, less a second: retries never run into it."""
    nxt = config.push_cron.next_after(datetime.now(UTC))
    return time.monotonic() + max(1.0, (nxt - datetime.now(UTC)).total_seconds() - 1.0)


class Pending(Protocol):
    """The gateway's pending telegrams as a push takes and acknowledges them."""

    def take(self) -> tuple[int, Snapshot]:
        """The state's epoch and a snapshot of what is pending now."""
        ...

    def acknowledge(self, epoch: int, snapshot: Snapshot) -> None:
        """Forget what ``snapshot`` holds, unless the state of ``epoch`` was replaced since."""
        ...

    def set_meta(self, name: str, value: bytes | str) -> None:
        """Keep ``value`` in the state database (GatewayIOError when it cannot)."""
        ...


class Pusher:
    """The gateway's one push slot and what its pushes did."""

    def __init__(self, config: Callable[[], Config], pending: Pending, stop_event: threading.Event) -> None:
        self._config = config
        self._pending = pending
        self._stop_event = stop_event
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()
        self._again = False
        self.last: PushOutcome | None = None
        self.counts = {"ok": 0, "failed": 0}
        self.lines_acknowledged = 0
        self._attempts_total = 0  # HTTP attempts of all pushes (metrics)
        self._seconds_total = 0.0  # time spent pushing (metrics)
        self._last_success_at: float | None = None

    def load(self, saved: bytes | None) -> None:
        """Take the last outcome a previous run kept (``LAST_PUSH_META``); an unreadable one is ignored."""
        if not saved:
            return
        try:
            self.last = PushOutcome(**json.loads(saved))
        except (ValueError, TypeError):
            return
        if self.last.ok:
            self._last_success_at = self.last.at

    def in_flight(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def pushes(self) -> Counts:
        return Counts(self.counts["ok"], self.counts["failed"])

    def totals(self) -> PushTotals:
        return PushTotals(self._attempts_total, self._seconds_total, self.lines_acknowledged, self._last_success_at)

    def start(self, *, scheduled: bool) -> None:
        """Push in a thread of its own; when one is in flight, push once more right after it."""
        with self._lock:
            if self.in_flight():
                self._again = True  # coalesce: one more push right after this one
                return
            self._thread = threading.Thread(target=self._worker, args=(scheduled,), name="push", daemon=True)
            self._thread.start()

    def start_again(self) -> None:
        """The push coalesced into the one in flight, once that one has ended."""
        if self._again and not self.in_flight():
            self._again = False
            self.start(scheduled=False)

    def by_hand(self) -> PushOutcome | None:
        """Push now in the one push slot and wait for the outcome; None when a push is in flight."""
        result: list[PushOutcome | BaseException] = []

        def work() -> None:
            try:
                result.append(self.push_now())
            except BaseException as exc:  # handed to the caller's thread
                result.append(exc)

        with self._lock:
            if self.in_flight():
                return None
            thread = threading.Thread(target=work, name="push", daemon=True)
            self._thread = thread
            thread.start()
        thread.join()
        if isinstance(result[0], BaseException):
            raise result[0]
        return result[0]

    def join(self, timeout: float) -> bool:
        """Wait up to ``timeout`` for a push in flight; whether none is left running."""
        if self._thread is not None:
            self._thread.join(timeout=timeout)
        return not self.in_flight()

    def _worker(self, scheduled: bool) -> None:
        jitter = self._config().push_jitter
        if scheduled and jitter > 0 and self._stop_event.wait(random.uniform(0, jitter)):
            return
        self.push_now()

    def push_now(self) -> PushOutcome:
        """Push what is pending now (in the calling thread) and acknowledge it on a 2xx."""
        cfg = self._config()
        sent = self._pending.take()
        now = time.time()
        if not cfg.push_url:
            outcome = PushOutcome(now, False, len(sent[1]), None, 0, "receiving.server.url is not set", 0.0)
        elif not len(sent[1]):
            outcome = PushOutcome(now, True, 0, None, 0, None, 0.0)
            log.info("push: nothing pending")
            self.last = outcome
            return outcome
        else:
            def body() -> Iterable[bytes]:
                nonlocal sent
                if attempts_made:  # the first attempt sends the snapshot taken above
                    sent = self._pending.take()
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
                deadline=deadline(cfg),
                user_agent=user_agent(cfg),
                stop_event=self._stop_event,
            )
            epoch, snapshot = sent
            outcome = PushOutcome(now, result.ok, len(snapshot), result.status, result.attempts,
                                  result.error, result.duration)
            if result.ok:
                self.lines_acknowledged += len(snapshot)
                self._pending.acknowledge(epoch, snapshot)
        self.counts["ok" if outcome.ok else "failed"] += 1
        self._attempts_total += outcome.attempts
        self._seconds_total += outcome.duration
        if outcome.ok:
            self._last_success_at = outcome.at
        self.last = outcome
        (log.info if outcome.ok else log.warning)("push %s", outcome.summary())
        try:
            self._pending.set_meta(LAST_PUSH_META, json.dumps(as_json(outcome)))
        except GatewayIOError:
            pass
        return outcome
