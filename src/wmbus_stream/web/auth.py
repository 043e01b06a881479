"""Who may use the web UI and API: the administrator password, sessions, CSRF and login limits.

Strategy
    There are no default credentials. ``wmbus-stream passwd`` writes one administrator
    credential (user name, salted scrypt hash and its parameters) to ``web-password`` in the
    state directory, mode 0600; until that file exists the web server answers 401 to
    everything but a short "set a password on the device" page. The server re-reads the file
    when it changes, so a new password takes effect at once and ends every open session.

    A browser logs in with a form and gets a session cookie (random 256-bit token; HttpOnly,
    SameSite=Strict, Secure under TLS; 12 h at most, 1 h idle). Each session has its own
    CSRF token, which every state-changing request made with the cookie must carry.
    API clients may send HTTP basic auth on every request instead; a successful check is
    remembered for a minute under an HMAC of the header so that scrypt does not run on
    every poll.

    Password checks run on two long-lived threads (``PasswordChecks``), never on the
    connection's own: each check takes the KDF's memory (8 MiB), so 32 guesses at once
    cannot take 32 times that, and glibc keeps the freed memory in each thread's arena. At
    most eight attempts wait; the address with the fewest recent failures is checked first,
    and a newcomer to a full queue displaces the waiting attempt whose address has the most,
    if that is more than its own (else it is answered 429 at once, unchecked).

    Throttling never refuses a right password: every attempt that gets a turn is checked,
    and a right one gets in. Failures are what is slowed (``LoginLimiter``): a few per
    address are free, then the 401 of each further one is held twice as long as the one
    before (up to a minute), and while more than 60 failures a minute arrive from all
    addresses together every failure is held at least five seconds. A held answer keeps its
    connection, and an address may hold only a few (see ``server``), so holding is what
    bounds the guessing rate of one address; the check order keeps the owner, whose
    address has not failed, at the front.

Invariants: passwords and hashes are compared in constant time; no password, hash, token
or Authorization header is ever logged or returned; state is bounded (sessions, verified
headers, tracked addresses and waiting checks are capped); at most ``WORKERS`` KDF runs
exist at any time.
"""

from __future__ import annotations

import hmac
import itertools
import logging
import os
import re
import secrets
import threading
import time
from collections import OrderedDict, deque
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from ..io.connections import source_of
from ..io.passwords import Credential, generate_password, hash_password, verify_password

__all__ = [
    "PASSWORD_FILE",
    "DEFAULT_USER",
    "Credential",
    "PasswordStore",
    "Session",
    "Sessions",
    "LoginLimiter",
    "PasswordChecks",
    "source_of",
    "hash_password",
    "verify_password",
    "write_password",
    "password_problem",
    "generate_password",
]

PASSWORD_FILE = "web-password"
DEFAULT_USER = "admin"
MIN_LENGTH = 10
WORKERS = 2  # password checks that may run at once
WAITING = 8  # password checks that may wait for a worker
# Passwords that ship as defaults on devices and top every guessing list.
COMMON_PASSWORDS = frozenset({
    "admin", "administrator", "root", "password", "passw0rd", "1234", "12345", "123456", "1234567",
    "12345678", "123456789", "1234567890", "0000", "00000000", "default", "changeme", "guest", "user",
    "elvaco", "wmbus", "wmbus-stream", "letmein", "qwerty", "qwertyuiop", "support", "service",
    "password1", "admin123", "admin1234", "adminadmin", "rootroot", "secret", "toor",
})
log = logging.getLogger("wmbus_stream.web")


def password_problem(user: str, password: str) -> str | None:
    """Why a new password is refused, or None when it is acceptable."""
    if not re.fullmatch(r"[A-Za-z0-9_.@-]{1,64}", user):
        return "the user name may hold letters, digits and _ . @ - (1 to 64 characters)"
    if len(password) < MIN_LENGTH:
        return f"the password needs at least {MIN_LENGTH} characters"
    if len(password) > 1024:
        return "the password may have at most 1024 characters"
    if any(ord(ch) < 0x20 or ord(ch) == 0x7F for ch in password):
        return "the password may not contain control characters"
    lowered = password.lower()
    if lowered in COMMON_PASSWORDS or lowered == user.lower() or len(set(password)) < 4:
        return "the password is too easy to guess"
    return None


def write_password(state_directory: Path, user: str, password: str) -> Path:
    """Store a new administrator credential (atomic, mode 0600); ValueError if refused."""
    from ..atomic import write_atomic

    problem = password_problem(user, password)
    if problem:
        raise ValueError(problem)
    state_directory.mkdir(parents=True, exist_ok=True, mode=0o700)
    return write_atomic(state_directory / PASSWORD_FILE, hash_password(user, password).line(), 0o600)


class PasswordStore:
    """The credential in the state directory, re-read when the file changes."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._lock = threading.Lock()
        self._stamp: tuple[int, int, int] | None = None
        self._cred: Credential | None = None
        self._checked = 0.0
        self.problem: str | None = None

    def credential(self) -> Credential | None:
        """The current credential, or None while no (valid) password is set."""
        now = time.monotonic()
        with self._lock:
            if now - self._checked < 1.0:
                return self._cred
            self._checked = now
            try:
                st = os.stat(self.path)
            except OSError:
                self._stamp, self._cred, self.problem = None, None, None
                return None
            stamp = (st.st_ino, st.st_mtime_ns, st.st_size)
            if stamp != self._stamp:
                self._stamp = stamp
                try:
                    if st.st_mode & 0o077:
                        raise ValueError(f"{self.path} must not be readable by others (chmod 600)")
                    self._cred = Credential.parse(self.path.read_text(encoding="utf-8"))
                    self.problem = None
                except (OSError, ValueError, UnicodeDecodeError) as exc:
                    self._cred, self.problem = None, str(exc)
            return self._cred

    def generation(self) -> bytes:
        """Changes whenever the password changes (sessions of an older one are void)."""
        cred = self.credential()
        return cred.digest[:8] if cred else b""


@dataclass(slots=True)
class Session:
    """One logged-in browser."""

    token: str
    user: str
    csrf: str
    generation: bytes
    created: float
    seen: float
    flash: list[tuple[str, str]] = field(default_factory=list)


class Sessions:
    """Logged-in browsers, in memory (a restart logs everyone out), capped in number."""

    def __init__(self, *, idle: float = 3600.0, lifetime: float = 12 * 3600.0, limit: int = 64) -> None:
        self.idle, self.lifetime, self.limit = idle, lifetime, limit
        self._lock = threading.Lock()
        self._by_token: OrderedDict[str, Session] = OrderedDict()

    def create(self, user: str, generation: bytes) -> Session:
        now = time.monotonic()
        session = Session(secrets.token_urlsafe(32), user, secrets.token_urlsafe(32), generation, now, now)
        with self._lock:
            self._by_token[session.token] = session
            while len(self._by_token) > self.limit:
                self._by_token.popitem(last=False)
        return session

    def get(self, token: str | None, generation: bytes) -> Session | None:
        """The live session for a cookie value; None if unknown, expired or of an old password."""
        if not token:
            return None
        now = time.monotonic()
        with self._lock:
            session = self._by_token.get(token)
            if session is None:
                return None
            if (now - session.seen > self.idle or now - session.created > self.lifetime
                    or not hmac.compare_digest(session.generation, generation)):
                del self._by_token[token]
                return None
            session.seen = now
            self._by_token.move_to_end(token)
            return session

    def drop(self, token: str) -> None:
        with self._lock:
            self._by_token.pop(token, None)

    def clear(self) -> None:
        with self._lock:
            self._by_token.clear()

    def __len__(self) -> int:
        return len(self._by_token)


class LoginLimiter:
    """Failed logins per source and in all, and how long the answer to each failure is held."""

    def __init__(self, *, free: int = 5, window: float = 900.0, base: float = 1.0, longest: float = 60.0,
                 global_per_minute: int = 60, global_hold: float = 5.0, tracked: int = 4096) -> None:
        self.free, self.window, self.base, self.longest = free, window, base, longest
        self.global_per_minute, self.global_hold = global_per_minute, global_hold
        self.tracked = tracked
        self._lock = threading.Lock()
        self._fails: OrderedDict[str, tuple[int, float]] = OrderedDict()  # source: count, first
        self._recent: deque[float] = deque()
        self.failures_total = 0
        self.held_total = 0

    def failures(self, client: str, now: float | None = None) -> int:
        """Recent failures of this client's source (0 for one that has not failed lately)."""
        now = time.monotonic() if now is None else now
        with self._lock:
            count, first = self._fails.get(source_of(client), (0, now))
            return count if now - first <= self.window else 0

    def failed(self, client: str, now: float | None = None) -> float:
        """Count a failure; the seconds its answer is to be held."""
        now = time.monotonic() if now is None else now
        source = source_of(client)
        with self._lock:
            self.failures_total += 1
            self._recent.append(now)
            while now - self._recent[0] > 60.0:
                self._recent.popleft()
            count, first = self._fails.pop(source, (0, now))
            if now - first > self.window:
                count, first = 0, now
            count += 1
            self._fails[source] = (count, first)
            while len(self._fails) > self.tracked:
                self._fails.popitem(last=False)
            hold = min(self.longest, self.base * 2 ** (count - self.free - 1)) if count > self.free else 0.0
            if len(self._recent) > self.global_per_minute:
                hold = max(hold, self.global_hold)
            if hold > 0:
                self.held_total += 1
            return hold

    def succeeded(self, client: str) -> None:
        with self._lock:
            self._fails.pop(source_of(client), None)

    def clear(self) -> None:
        with self._lock:
            self._fails.clear()
            self._recent.clear()


@dataclass(slots=True)
class _Check:
    """One password check waiting for a worker, and its outcome once decided."""

    rank: tuple[int, int]  # (recent failures of its source, arrival): lowest first
    cred: Credential
    user: str
    password: str
    done: threading.Event = field(default_factory=threading.Event)
    result: bool | None = None  # None: refused without being checked


class PasswordChecks:
    """Password checks on a few long-lived threads, fewest recent failures first, few waiting."""

    def __init__(self, failures: Callable[[str], int], *, workers: int = WORKERS, waiting: int = WAITING) -> None:
        self._failures = failures
        self.workers, self.waiting = workers, waiting
        self._cond = threading.Condition()
        self._queue: list[_Check] = []
        self._arrival = itertools.count()
        self._threads: list[threading.Thread] = []
        self._closed = False
        self.checked_total = 0
        self.refused_total = 0

    def check(self, client: str, cred: Credential, user: str, password: str) -> bool | None:
        """Whether the password is right; None when it was refused unchecked (too many waiting)."""
        job = _Check((self._failures(client), next(self._arrival)), cred, user, password)
        with self._cond:
            if self._closed:
                return None
            while len(self._threads) < self.workers:
                thread = threading.Thread(target=self._work, name=f"web-password-{len(self._threads)}", daemon=True)
                thread.start()
                self._threads.append(thread)
            if len(self._queue) >= self.waiting:
                worst = max(self._queue, key=lambda queued: queued.rank)
                if worst.rank[0] <= job.rank[0]:
                    self.refused_total += 1
                    return None
                self._queue.remove(worst)
                self.refused_total += 1
                worst.done.set()
            self._queue.append(job)
            self._cond.notify()
        job.done.wait()
        return job.result

    def _work(self) -> None:
        while True:
            with self._cond:
                while not self._queue and not self._closed:
                    self._cond.wait()
                if self._closed:
                    return
                job = min(self._queue, key=lambda queued: queued.rank)
                self._queue.remove(job)
            try:
                job.result = verify_password(job.cred, job.user, job.password)
            except (ValueError, MemoryError) as exc:  # parameters the library cannot run
                log.error("web: cannot check a password: %s", exc)
                job.result = False
            with self._cond:
                self.checked_total += 1
            job.done.set()

    def close(self) -> None:
        """Stop the workers; waiting attempts are answered as refused."""
        with self._cond:
            self._closed = True
            for job in self._queue:
                job.done.set()
            self._queue.clear()
            self._cond.notify_all()
