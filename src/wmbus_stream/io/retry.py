"""The one retry policy of the gateway's HTTP client, for the push, fetch and notify.

- Retryable: 408, 429 and 5xx answers (``retryable``), and every connection or timeout
  failure (``http.describe`` says which); any other status, a TLS verification failure or a
  bad configuration is not: repeating the same request cannot fix it.
- The wait before the next try is exactly ``Retry-After`` when the server sent one
  (delta-seconds or an HTTP date, read by urllib3's ``Retry.parse_retry_after``; a value it
  cannot read counts as absent), else exponential backoff with full jitter:
  ``rand() * min(BACKOFF_CAP, BACKOFF_BASE * 2 ** (tries - 1))``.
- ``Policy.after`` stops instead of waiting after the last allowed try, when Retry-After
  asks for more than ``RETRY_AFTER_MAX`` (the caller's thread is not parked for it) or when
  the wait would end at or past the deadline (the next cron tick of a push, the time given
  to a sync's notification).
- ``pause`` waits, cut short by the stop event.

The retry loops stay with their callers (``push.push``, ``sync.procedure``): what is sent
again and what is logged differ; when and whether to try again does not.
"""

from __future__ import annotations

import enum
import random
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from urllib3.exceptions import InvalidHeader
from urllib3.util import Retry

__all__ = ["BACKOFF_BASE", "BACKOFF_CAP", "RETRYABLE_STATUS", "RETRY_AFTER_MAX", "Next", "Policy", "Stop", "backoff",
           "pause", "retry_after", "retryable"]

BACKOFF_BASE = 1.0
BACKOFF_CAP = 60.0
# A Retry-After longer than this (with no deadline to bound it) ends the push instead of
# parking the caller's thread; the caller sees it in PushResult.retry_after.
RETRY_AFTER_MAX = 900.0
RETRYABLE_STATUS = frozenset({408, 429})
# Only its parser is used: urllib3's own retrying is off for every request (``retries=False``).
_PARSER = Retry(total=False)


def retryable(status: int) -> bool:
    """Whether an answer with this status may be followed by another try."""
    return status in RETRYABLE_STATUS or 500 <= status < 600


def backoff(tries: int, rand: Callable[[], float]) -> float:
    """Seconds to wait after ``tries`` failed tries: full jitter below a doubling cap."""
    return rand() * min(BACKOFF_CAP, BACKOFF_BASE * 2 ** (tries - 1))


def retry_after(value: str | None) -> float | None:
    """Seconds to wait from a Retry-After header (delta-seconds or an HTTP date, never negative), or None."""
    if not value:
        return None
    try:
        return float(_PARSER.parse_retry_after(value))
    except (InvalidHeader, ValueError, OverflowError):  # not a number nor a date, or a date out of range
        return None


class Stop(enum.Enum):
    """Why no further try follows a failed one."""

    NOT_RETRYABLE = "not retryable"
    ATTEMPTS = "every attempt used"
    RETRY_AFTER = "Retry-After longer than RETRY_AFTER_MAX"
    DEADLINE = "the wait would pass the deadline"


@dataclass(frozen=True, slots=True)
class Next:
    """After a failed try: wait ``delay`` seconds and try again, unless ``stop`` says why not."""

    delay: float = 0.0
    stop: Stop | None = None
    asked: bool = False  # the delay is the server's Retry-After


@dataclass(frozen=True, slots=True)
class Policy:
    """When to try again: at most ``attempts`` tries, no wait ending at or past ``deadline`` (``clock`` scale)."""

    attempts: int
    deadline: float | None = None
    clock: Callable[[], float] = time.monotonic
    rand: Callable[[], float] = random.random

    def after(self, tries: int, may_retry: bool, asked: float | None = None) -> Next:
        """What follows ``tries`` tries whose last failed; ``asked`` is its Retry-After in seconds."""
        if not may_retry:
            return Next(stop=Stop.NOT_RETRYABLE)
        if tries >= self.attempts:
            return Next(stop=Stop.ATTEMPTS)
        if asked is not None and asked > RETRY_AFTER_MAX:
            return Next(asked, Stop.RETRY_AFTER, asked=True)
        delay = asked if asked is not None else backoff(tries, self.rand)
        if self.deadline is not None and self.clock() + delay >= self.deadline:
            return Next(delay, Stop.DEADLINE, asked is not None)
        return Next(delay, None, asked is not None)


def pause(seconds: float, sleep: Callable[[float], object] | None, stop_event: threading.Event | None) -> bool:
    """Wait (``sleep`` when given, else on the stop event); True when the stop event is set."""
    if sleep is not None:
        sleep(seconds)
    elif stop_event is not None:
        return stop_event.wait(seconds)
    else:
        time.sleep(seconds)
    return stop_event is not None and stop_event.is_set()
