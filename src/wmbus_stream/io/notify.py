"""POST of a sync's result to ``Sync-Notify-URL``: acknowledged only by HTTP 200 with body ``OK``.

One attempt per call, after the caller's ``check`` (as for ``fetch``), no redirect
followed. Every failure is an ``HttpError`` marked retryable, whatever the status (a result
is a few bytes, and docs/fleet.md promises that anything but ``OK`` is tried again); the
sync procedure retries it under ``retry``'s policy.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

import urllib3
from urllib3.util import parse_url

from .http import (
    DEFAULT_TIMEOUTS,
    DEFAULT_USER_AGENT,
    HttpError,
    Timeouts,
    body_excerpt,
    parse_target,
    read_excerpt,
    read_limited,
    request_headers,
    request_to,
    status_text,
    unreachable,
)

__all__ = ["notify"]

sync_log = logging.getLogger("wmbus_stream.sync")


def notify(
    url: str,
    text: str,
    *,
    timeouts: Timeouts = DEFAULT_TIMEOUTS,
    ca_file: str | None = None,
    user_agent: str = DEFAULT_USER_AGENT,
    username: str | None = None,
    password: str | None = None,
    check: Callable[[str], str | None] | None = None,
    clock: Callable[[], float] = time.monotonic,
) -> None:
    """POST a short plain-text result; acknowledged only by HTTP 200 with body ``OK``.

    A trailing line break after ``OK`` is tolerated. ``check`` is asked first, as for
    ``fetch``; no redirect is followed. Raises HttpError otherwise.
    """
    try:
        target = parse_target(url, username, password)
    except ValueError as exc:
        raise HttpError(str(exc), retryable=False) from None
    what = f"POST {target.display}"
    body = text.encode("utf-8")
    headers = request_headers(target, user_agent, {"Content-Type": "text/plain; charset=utf-8"})
    deadline = clock() + timeouts.total
    connections, connect_t, read_t = request_to(target, what, check, ca_file, timeouts, deadline, clock)
    try:
        try:
            response = connections.urlopen(
                "POST", parse_url(target.url).request_uri, body=body, headers=headers, retries=False,
                redirect=False, preload_content=False, decode_content=False,
                timeout=urllib3.Timeout(connect=connect_t, read=read_t),
            )
        except Exception as exc:  # noqa: BLE001
            raise unreachable(what, exc, target.netloc, connect_t, read_t) from None
        try:
            if response.status == 200:
                answer = read_limited(response, target, 1024, deadline, read_t, clock, "POST")
            else:
                answer = read_excerpt(response)
        except HttpError:
            answer = b"?"
        finally:
            response.close()
        if response.status != 200 or answer.rstrip(b"\r\n") != b"OK":
            if response.status == 200:
                message = f"HTTP 200 but the body is '{body_excerpt(answer)}', not 'OK'"
                public = "HTTP 200 but the body is not 'OK'"
            else:
                message = status_text(response.status, response.reason, answer)
                public = f"HTTP {response.status}"
            raise HttpError(f"{what}: {message}", status=response.status, retryable=True, public=f"{what}: {public}")
        sync_log.info("result posted to %s: acknowledged", target.display)
    finally:
        connections.close()
