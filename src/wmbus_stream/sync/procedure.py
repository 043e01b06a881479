"""One configuration sync (spec section 8): fetch, check, download, apply all or nothing, report.

Strategy (the trust model is ``trust``'s and docs/fleet.md's)
1. GET ``configuration.server.url`` with the section 8 ``User-Agent`` (``user_agent``), TLS
   verified (system CAs plus ``configuration.server.ca.file``), connect/read/total time
   limits and a size limit. Basic auth comes from the URL's user info, if any. Plain http
   is refused before any request unless the owner set ``configuration.server.allow.http``.
2. Parse the file strictly (``cad.parse``): 920 or 921 with a reason.
3. Refuse a ``Sync-Config`` line of an owner-only key the owner did not allow, build the new
   configuration from this gateway's file plus every change, validate it with the same code
   as ``config check``, and refuse a change that would send the HES credentials to another
   origin.
4. Download every ``Sync-File`` (same TLS, limits per file and in total; never from http
   when the ``.cad`` came over https; only from the configuration server's own origin or
   one the owner allowed, each redirect checked the same way; the configuration server's
   credentials only to its own origin), into memory only, and check that each local name
   can be written inside the files folder without following a link.
5. Apply the configuration text and the files as one transaction
   (``ConfigManager.apply_bundle``, which also checks every CA or key file a changed key
   points at): everything or nothing, also across a power cut. A sync identical to the
   last one writes nothing.
6. POST the result to ``Sync-Notify-URL`` when the file has one and its origin is allowed:
   ``900``, ``920`` or ``921 <error>`` on the first line, ``Sync-Id: <id>`` on the second
   when the file has one. Only HTTP 200 with body ``OK`` acknowledges; failures that a
   retry may fix are retried with exponential backoff and jitter, like a push, within
   ``notify_seconds``.

Invariants: nothing is written before every check has passed; the result text is one
printable line in the gateway's own words (``HttpError.public``: no excerpt of another
server's answer, one wording for every way of not reaching a host; ``detail`` keeps the
full story for the log); no secret appears in it (values of secret keys are masked).
"""

from __future__ import annotations

import logging
import platform
import random
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any
from urllib.parse import urlsplit

from .. import __version__
from ..config.keys import origin
from ..config.manage import ConfigManager
from ..config.model import Config, split_credentials
from ..errors import ConfigError
from ..io import retry
from ..io.fetch import fetch as http_fetch
from ..io.http import HttpError, Timeouts
from ..io.notify import notify as http_notify
from ..text import printable
from . import cad, trust
from .cad import RESULT_ERROR, RESULT_OK, CadError

__all__ = ["MODEL", "RESULT_TEXT_MAX", "SyncLimits", "SyncResult", "run_sync", "user_agent"]

log = logging.getLogger("wmbus_stream.sync")

MODEL = "wmbus-stream"
RESULT_TEXT_MAX = 400


@dataclass(frozen=True, slots=True)
class SyncLimits:
    """Sizes (bytes) and times (seconds) a sync may use."""

    cad_bytes: int = cad.MAX_BYTES
    file_bytes: int = 1024 * 1024
    total_bytes: int = 8 * 1024 * 1024
    timeouts: Timeouts = field(default_factory=lambda: Timeouts(connect=10.0, read=30.0, total=120.0))
    notify_seconds: float = 300.0

    @classmethod
    def for_config(cls, config: Config) -> SyncLimits:
        """The default limits with each request capped at ``configuration.server.timeout``."""
        total = config.sync_timeout
        return cls(timeouts=Timeouts(connect=min(10.0, total), read=min(30.0, total), total=total))


@dataclass(frozen=True, slots=True)
class SyncResult:
    """What one sync did. ``text`` is the result line: ``900``, ``920 ...`` or ``921 ...``."""

    code: int
    text: str
    sync_id: str | None = None
    at: float = 0.0
    duration: float = 0.0
    config_changed: bool = False
    history: int | None = None
    files: tuple[str, ...] = ()
    notify_url: str | None = None
    notified: bool | None = None
    notify_error: str | None = None
    detail: str | None = None  # the result with every local detail, for the log (``text`` is what is told)

    @property
    def ok(self) -> bool:
        return self.code == RESULT_OK

    def body(self) -> str:
        """The notification body: the result line, then ``Sync-Id: <id>`` when known."""
        lines = [self.text]
        if self.sync_id:
            lines.append(f"Sync-Id: {self.sync_id}")
        return "\n".join(lines) + "\n"

    def as_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["files"] = list(self.files)
        if self.notify_url:
            data["notify_url"] = _display(self.notify_url)
        return data

    def summary(self) -> str:
        """One log or status line."""
        parts = [self.detail or self.text]
        if self.sync_id:
            parts.append(f"(Sync-Id {self.sync_id})")
        if self.ok:
            if self.config_changed:
                parts.append(f"configuration changed (history #{self.history})")
            if self.files:
                parts.append(f"files written: {', '.join(self.files)}")
            if not self.config_changed and not self.files:
                parts.append("nothing changed")
        if self.notified is True:
            parts.append("result acknowledged by the server")
        elif self.notified is False:
            parts.append(f"result not acknowledged: {self.notify_error}")
        return "; ".join(parts)


def _token(text: str) -> str:
    """A User-Agent field value: no spaces or slashes (servers split on them)."""
    cleaned = "".join(ch if ch.isascii() and ch.isprintable() and ch not in " /;()" else "-" for ch in text)
    return cleaned or "unknown"


def user_agent(config: Config) -> str:
    """The section 8 User-Agent, filled from this gateway.

    ``TC65i/<IMEI>``: the gateway has no modem, so its serial stands in for the IMEI;
    ``Model/wmbus-stream``; ``Hardware/`` the machine type (``platform.machine()``, e.g.
    ``aarch64``); ``Firmware/`` and ``Application/`` this package's version;
    ``Serial/`` ``gateway.serial``.
    """
    serial = _token(config.gateway_serial)
    return (f"TC65i/{serial} Profile/IMP-NG Configuration/CLDC-1.1 Model/{MODEL}"
            f" Hardware/{_token(platform.machine())} Firmware/{_token(__version__)}"
            f" Application/{_token(__version__)} Serial/{serial}")


def _one_line(text: str) -> str:
    """The result text: one line of printable ASCII (see ``text.printable``), at most RESULT_TEXT_MAX."""
    return printable(" ".join(text.split()), RESULT_TEXT_MAX - 3)


def _display(url: str) -> str:
    bare = split_credentials(url)[0]
    parts = urlsplit(bare)
    return f"{parts.scheme}://{parts.netloc}{parts.path}" + ("?..." if parts.query else "")


def run_sync(
    manager: ConfigManager,
    config: Config,
    *,
    stop_event: threading.Event | None = None,
    sleep: Callable[[float], object] | None = None,
    rand: Callable[[], float] = random.random,
) -> SyncResult:
    """Run one sync for the gateway whose configuration file ``manager`` manages.

    ``config`` is the running configuration (server URL, CA, retries, timeout); the new one
    is built on the file's content; the limits are ``SyncLimits.for_config(config)``.
    """
    started_wall, started = time.time(), time.monotonic()
    limits = SyncLimits.for_config(config)
    agent = user_agent(config)
    ca_file = str(config.sync_ca_file) if config.sync_ca_file else None
    url, username, password = split_credentials(config.sync_url) if config.sync_url else ("", None, None)
    reach = trust.Reach.of(config)

    def credentials(target: str) -> dict[str, str | None]:
        """The configuration server's credentials, for its own origin only."""
        try:
            same = origin(target) == reach.home
        except ValueError:
            same = False
        return {"username": username if same else None, "password": password if same else None}

    def finish(code: int, reason: str, *, sync_id: str | None = None, notify_url: str | None = None,
               detail: str | None = None, **kw: Any) -> SyncResult:
        text = str(code) if code == RESULT_OK else _one_line(f"{code} {reason}")
        full = _one_line(f"{code} {detail}") if detail and detail != reason else None
        result = SyncResult(code, text, sync_id, started_wall, 0.0, notify_url=notify_url, detail=full, **kw)
        if notify_url:
            notified, error = _notify(notify_url, result.body(), config, limits, stop_event, sleep,
                                      rand, ca_file=ca_file, user_agent=agent, check=reach.refused,
                                      **credentials(notify_url))
            result = _replace(result, notified=notified, notify_error=error)
        result = _replace(result, duration=round(time.monotonic() - started, 3))
        (log.info if result.ok else log.warning)("sync: %s", result.summary())
        return result

    if not config.sync_url:
        return finish(RESULT_ERROR, "configuration.server.url is not set")
    if urlsplit(url).scheme.lower() != "https" and not config.sync_allow_http:
        return finish(RESULT_ERROR, "configuration.server.url is plain http://, where anyone on the path can play the"
                                    " configuration server: use https:// (or the owner sets"
                                    " configuration.server.allow.http=true)")
    try:
        data = http_fetch(url, max_bytes=limits.cad_bytes, timeouts=limits.timeouts, ca_file=ca_file,
                          user_agent=agent, username=username, password=password, check=reach.refused)
    except HttpError as exc:
        return finish(RESULT_ERROR, f"cannot fetch the .cad file: {exc.public}",
                      detail=f"cannot fetch the .cad file: {exc}")
    try:
        parsed = cad.parse(data)
    except CadError as exc:
        return finish(exc.code, exc.reason, sync_id=exc.sync_id, notify_url=exc.notify_url)

    def refuse(reason: str, detail: str | None = None) -> SyncResult:
        return finish(RESULT_ERROR, reason, sync_id=parsed.sync_id, notify_url=parsed.notify_url, detail=detail)

    reason = trust.refused_key(parsed, config)
    if reason is not None:
        return refuse(reason)
    try:
        base = manager.current()
    except ConfigError as exc:
        return refuse(f"this gateway's configuration file is invalid ({exc.problems[0]}); fix it locally first")
    try:
        new = base.with_changes(parsed.changes())
        text = manager.render(new)
    except ConfigError as exc:
        first = exc.problems[0]
        line = parsed.line_of(first.key)
        where = f"Sync-Config-{line.n}: " if line else ""
        more = f" (and {len(exc.problems) - 1} more problems)" if len(exc.problems) > 1 else ""
        return refuse(f"{where}{first}{more}")
    reason = trust.moved_credentials(parsed, base, new)
    if reason is not None:
        return refuse(reason)

    https_only = urlsplit(url).scheme.lower() == "https"
    downloads: dict[str, bytes] = {}
    total = 0
    for item in parsed.files:
        label = f"Sync-File-{item.n}-URL"
        reason = manager.check_file_name(item.local)
        if reason is not None:
            return refuse(f"{label}: {item.local}: {reason}")
        if https_only and urlsplit(item.url).scheme.lower() != "https":
            return refuse(f"{label}: plain http download refused (the .cad file came over https)")
        if stop_event is not None and stop_event.is_set():
            return refuse("stopped before all files were downloaded")
        left = limits.total_bytes - total
        try:
            own = credentials(item.url)
            content = http_fetch(item.url, max_bytes=min(limits.file_bytes, left), timeouts=limits.timeouts,
                                 ca_file=ca_file, user_agent=agent, check=reach.refused,
                                 username=own["username"], password=own["password"])
        except HttpError as exc:
            extra = " (all files together)" if left < limits.file_bytes else ""
            return refuse(f"{label}: download failed: {exc.public}{extra}", f"{label}: download failed: {exc}{extra}")
        total += len(content)
        downloads[item.local] = content

    try:
        applied = manager.apply_bundle(text, "sync", f"Sync-Id {parsed.sync_id}" if parsed.sync_id else "",
                                       files=downloads)
    except ConfigError as exc:
        return refuse(f"not applied: {exc.problems[0]}")
    except OSError as exc:
        return refuse(f"not applied: cannot write ({exc.strerror or exc})")
    return finish(RESULT_OK, "", sync_id=parsed.sync_id, notify_url=parsed.notify_url,
                  config_changed=applied.config_changed,
                  history=applied.entry.number if applied.entry and applied.config_changed else None,
                  files=applied.files_written)


def _replace(result: SyncResult, **changes: Any) -> SyncResult:
    data = {name: getattr(result, name) for name in SyncResult.__slots__}
    data.update(changes)
    return SyncResult(**data)


def _notify(url: str, body: str, config: Config, limits: SyncLimits,
            stop_event: threading.Event | None, sleep: Callable[[float], object] | None,
            rand: Callable[[], float], **request: Any) -> tuple[bool, str | None]:
    """POST the result (``request``: the keywords of ``io.notify.notify``); retried under the push's
    policy (``retry``: backoff with jitter, within ``limits.notify_seconds``) while a retry may help."""
    clock = time.monotonic
    deadline = clock() + limits.notify_seconds
    policy = retry.Policy(max(1, config.push_retries), deadline, clock, rand)
    error: str | None = None
    for attempt in range(1, policy.attempts + 1):
        left = deadline - clock()
        if left <= 0:
            break
        timeouts = Timeouts(min(limits.timeouts.connect, left), min(limits.timeouts.read, left),
                            min(limits.timeouts.total, left))
        try:
            http_notify(url, body, timeouts=timeouts, **request)
            return True, None
        except HttpError as exc:
            error = str(exc)
            step = policy.after(attempt, exc.retryable)
        if step.stop is not None:
            break
        log.warning("sync result to %s not acknowledged (%s); retrying in %.1f s", _display(url), error, step.delay)
        if retry.pause(step.delay, sleep, stop_event):
            break
    return False, error
