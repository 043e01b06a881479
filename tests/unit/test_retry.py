"""The one retry policy of push, fetch and notify: which answers are retried, the backoff
schedule and its cap, Retry-After (urllib3's parser) and its bound, the deadline, the stop."""

from __future__ import annotations

import email.utils
import threading
import time

import pytest

from wmbus_stream.io import retry
from wmbus_stream.io.retry import Next, Policy, Stop


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.mark.parametrize(("status", "expected"), [(408, True), (429, True), (500, True), (503, True), (599, True),
                                                  (400, False), (404, False), (413, False), (301, False),
                                                  (101, False), (600, False)])
def test_which_statuses_a_retry_may_fix(status: int, expected: bool) -> None:
    assert retry.retryable(status) is expected


def test_backoff_doubles_with_full_jitter_up_to_the_cap() -> None:
    assert [retry.backoff(n, lambda: 1.0) for n in range(1, 10)] == [1, 2, 4, 8, 16, 32, 60, 60, 60]
    assert [retry.backoff(n, lambda: 0.25) for n in (1, 2, 7)] == [0.25, 0.5, 15.0]


def test_retry_after_reads_seconds_and_http_dates_and_ignores_the_rest() -> None:
    assert retry.retry_after("7") == 7.0 and retry.retry_after(" 120 ") == 120.0
    soon = retry.retry_after(email.utils.formatdate(time.time() + 30, usegmt=True))
    assert soon is not None and 27 <= soon <= 31
    assert retry.retry_after(email.utils.formatdate(time.time() - 3600, usegmt=True)) == 0.0  # past: at once
    for unreadable in (None, "", "soon", "\u00b2", "-5", "1.5", "12 s"):
        assert retry.retry_after(unreadable) is None, unreadable


def test_the_policy_stops_for_each_reason_in_order() -> None:
    clock = Clock()
    policy = Policy(attempts=3, deadline=clock.now + 10, clock=clock, rand=lambda: 1.0)
    assert policy.after(1, False, 5.0) == Next(stop=Stop.NOT_RETRYABLE)
    assert policy.after(3, True) == Next(stop=Stop.ATTEMPTS)
    assert policy.after(1, True) == Next(1.0)
    assert policy.after(2, True, 4.0) == Next(4.0, asked=True)
    assert policy.after(2, True, retry.RETRY_AFTER_MAX + 1) == Next(retry.RETRY_AFTER_MAX + 1, Stop.RETRY_AFTER, True)
    assert policy.after(2, True, 10.0) == Next(10.0, Stop.DEADLINE, True)  # ending at the deadline is past it
    clock.now += 8
    assert policy.after(2, True) == Next(2.0, Stop.DEADLINE)


def test_without_a_deadline_only_attempts_and_retry_after_max_bound_the_waits() -> None:
    policy = Policy(attempts=9, rand=lambda: 1.0)
    assert [policy.after(n, True).delay for n in range(1, 9)] == [1, 2, 4, 8, 16, 32, 60, 60]
    assert policy.after(1, True, retry.RETRY_AFTER_MAX) == Next(retry.RETRY_AFTER_MAX, asked=True)


def test_a_pause_is_cut_short_by_the_stop_event() -> None:
    stop = threading.Event()
    slept: list[float] = []
    assert retry.pause(3.0, slept.append, None) is False and slept == [3.0]
    stop.set()
    assert retry.pause(3600.0, None, stop) is True  # returns at once: the event is set
    assert retry.pause(3.0, slept.append, stop) is True and slept == [3.0, 3.0]
