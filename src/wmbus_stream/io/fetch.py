"""GET of a small file for the configuration sync (the ``.cad`` file, its downloads).

Strategy: the caller's ``check`` is asked before every request, the first one and each
redirect (where the caller may go is its policy); redirects are followed up to a limit,
never from https to http nor to a URL with user info, and credentials go only to the origin
(scheme, host, port) they came with. The body is read as it arrives within a size and a
total time limit (``http.read_limited``). Only 200 with identity encoding is a file; every
failure is an ``HttpError`` naming the cause, ``retryable`` by ``retry``'s rules, with a
``public`` wording fit for a remote party. Not retried here: a failed sync is retried at the
next sync.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from urllib.parse import urljoin

import urllib3
from urllib3.util import parse_url

from ..text import printable
from . import retry
from .http import (
    DEFAULT_TIMEOUTS,
    DEFAULT_USER_AGENT,
    REDIRECT_STATUS,
    HttpError,
    Target,
    Timeouts,
    origin_of,
    parse_target,
    read_excerpt,
    read_limited,
    request_headers,
    request_to,
    status_text,
    unreachable,
)

__all__ = ["fetch"]


def fetch(
    url: str,
    *,
    max_bytes: int = 1 << 20,
    timeouts: Timeouts = DEFAULT_TIMEOUTS,
    ca_file: str | None = None,
    user_agent: str = DEFAULT_USER_AGENT,
    username: str | None = None,
    password: str | None = None,
    max_redirects: int = 5,
    check: Callable[[str], str | None] | None = None,
    clock: Callable[[], float] = time.monotonic,
) -> bytes:
    """GET a small file within a size and a total time limit; raises HttpError naming the cause.

    ``check(url)`` is asked before every request, the first one and each redirect, and says
    why that URL may not be requested (or None): where the caller may go is its policy.
    Redirects are followed up to ``max_redirects``, never from https to http nor to a URL
    with user info; credentials go only to the origin (scheme, host, port) they came with.
    """
    deadline = clock() + timeouts.total
    try:
        target = parse_target(url, username, password)
    except ValueError as exc:
        raise HttpError(str(exc), retryable=False) from None
    origin = origin_of(target)
    for _hop in range(max_redirects + 1):
        what = f"GET {target.display}"
        connections, connect_t, read_t = request_to(target, what, check, ca_file, timeouts, deadline, clock)
        try:
            try:
                response = connections.urlopen(
                    "GET", parse_url(target.url).request_uri, headers=request_headers(target, user_agent), retries=False,
                    redirect=False, preload_content=False, decode_content=False,
                    timeout=urllib3.Timeout(connect=connect_t, read=read_t),
                )
            except Exception as exc:  # noqa: BLE001
                raise unreachable(what, exc, target.netloc, connect_t, read_t) from None
            try:
                if response.status in REDIRECT_STATUS:
                    target = _redirect(target, response, origin, what)
                    continue
                if response.status != 200:
                    raise HttpError(
                        f"{what}: {status_text(response.status, response.reason, read_excerpt(response))}",
                        status=response.status, retryable=retry.retryable(response.status),
                        public=f"{what}: HTTP {response.status}",
                    )
                encoding = response.headers.get("Content-Encoding", "identity").strip().lower()
                if encoding not in ("", "identity"):
                    raise HttpError(f"{what}: unsupported Content-Encoding {encoding!r}", status=200, retryable=False,
                                    public=f"{what}: compressed answer (only identity encoding is accepted)")
                length = response.headers.get("Content-Length")
                if length and length.isdigit() and int(length) > max_bytes:
                    message = f"{what}: file of {length} bytes exceeds the limit of {max_bytes}"
                    raise HttpError(message, status=200, retryable=False)
                return read_limited(response, target, max_bytes, deadline, read_t, clock)
            finally:
                response.close()
        finally:
            connections.close()
    raise HttpError(f"GET {target.display}: more than {max_redirects} redirects", retryable=False)


def _redirect(target: Target, response: urllib3.BaseHTTPResponse, origin: str, what: str) -> Target:
    """The next request of a redirect, or HttpError when it may not be followed."""
    status = response.status
    location = response.headers.get("Location")
    if not location:
        raise HttpError(f"{what}: HTTP {status} without Location", status=status)
    try:
        new = parse_target(urljoin(target.url, location), None, None)
    except ValueError as exc:
        raise HttpError(f"{what}: redirect refused: {printable(str(exc))}", status=status, retryable=False) from None
    if target.scheme == "https" and new.scheme != "https":
        raise HttpError(f"{what}: redirect from https to http refused ({new.display})", status=status,
                        retryable=False)
    if new.authorization is not None:
        raise HttpError(f"{what}: redirect refused: user:password@ in the Location ({new.display})",
                        status=status, retryable=False)
    # Credentials go only to the origin they were configured for.
    auth = target.authorization if origin_of(new) == origin else None
    return Target(new.url, new.scheme, new.netloc, new.display, auth)
