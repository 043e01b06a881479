"""Who may push reports to the reference HES: one shared credential, or one per gateway in a file.

The gateways file holds one line per gateway, ``SERIAL:scrypt:n:r:p:salt:digest`` (the
format of the web UI's password file, ``io.passwords``), written by ``wmbus-stream receive
credentials add``. A gateway authenticates with basic auth as its own serial and may only
report lines of that serial. Its password is generated (about 99 bits), so a light scrypt
cost is enough and a check costs about a millisecond; a verified header is remembered for
an hour under an HMAC. The file is read again when it changes, so adding or removing a
gateway needs no restart; a file that cannot be read keeps the last good one in force.
"""

from __future__ import annotations

import base64
import binascii
import hmac
import logging
import os
import re
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from ..atomic import write_atomic
from ..errors import HesError
from ..io.passwords import BasicCache, Credential, generate_password, hash_password, verify_password

__all__ = ["Caller", "GatewayFile", "SharedCredential", "parse_basic"]

log = logging.getLogger("wmbus_stream.hes")

# scrypt cost of generated gateway passwords: 1 MiB and about a millisecond per check.
GATEWAY_N, GATEWAY_R, GATEWAY_P = 2**10, 8, 1
_SERIAL = re.compile(r"[0-9]{8}")


@dataclass(frozen=True, slots=True)
class Caller:
    """Who a request's credentials say it is; ``serial`` None may report any gateway's lines."""

    user: str
    serial: str | None


def parse_basic(header: str | None) -> tuple[str, str] | None:
    """(user, password) of a ``Basic`` Authorization header; None when it is missing or malformed."""
    scheme, _, encoded = (header or "").partition(" ")
    if scheme.lower() != "basic":
        return None
    try:
        decoded = base64.b64decode(encoded.strip(), validate=True).decode("utf-8")
    except (binascii.Error, ValueError):
        return None
    user, sep, password = decoded.partition(":")
    return (user, password) if sep else None


class SharedCredential:
    """One user name and password for every gateway (``--username``/``--password-file``)."""

    def __init__(self, user: str, password: str) -> None:
        self._user, self._password = user.encode("utf-8"), password.encode("utf-8")

    def check(self, header: str | None) -> Caller | None:
        """The caller, or None when the credentials are missing or wrong."""
        given = parse_basic(header)
        if given is None:
            return None
        # Both compared every time, so timing does not tell which one was wrong.
        user_ok = hmac.compare_digest(given[0].encode("utf-8"), self._user)
        secret_ok = hmac.compare_digest(given[1].encode("utf-8"), self._password)
        return Caller(given[0], None) if user_ok and secret_ok else None


class GatewayFile:
    """Per-gateway credentials from a file (``--gateways``), re-read when it changes."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._lock = threading.Lock()
        self._cache = BasicCache(ttl=3600.0, limit=8192)
        self._checked = 0.0
        self._entries: dict[str, Credential] = self.read()  # a broken file at start is an error, not an empty fleet
        self._stamp: tuple[int, int, int] | None = self._stat()

    def _stat(self) -> tuple[int, int, int] | None:
        try:
            st = os.stat(self.path)
        except OSError:
            return None
        return st.st_mtime_ns, st.st_size, st.st_ino

    def read(self) -> dict[str, Credential]:
        """The file's entries by serial; HesError naming the line when one is not a gateway credential."""
        try:
            text = self.path.read_text(encoding="utf-8")
        except FileNotFoundError:
            return {}
        except (OSError, UnicodeDecodeError) as exc:
            raise HesError(f"{self.path}: cannot read the gateways file: {exc}") from None
        entries: dict[str, Credential] = {}
        for number, line in enumerate(text.splitlines(), 1):
            if not line.strip() or line.lstrip().startswith("#"):
                continue
            try:
                cred = Credential.parse(line)
            except (ValueError, binascii.Error) as exc:
                raise HesError(f"{self.path} line {number}: {exc}; each line is SERIAL:scrypt:... as written"
                                  " by 'wmbus-stream receive credentials add'") from None
            if not _SERIAL.fullmatch(cred.user):
                raise HesError(f"{self.path} line {number}: {cred.user[:20]!r} is not an 8-digit gateway serial")
            if cred.user in entries:
                raise HesError(f"{self.path} line {number}: gateway {cred.user} is listed twice")
            entries[cred.user] = cred
        return entries

    def _current(self) -> dict[str, Credential]:
        """The entries, re-read at most once a second when the file changed."""
        with self._lock:
            now = time.monotonic()
            if now - self._checked >= 1.0:
                self._checked = now
                stamp = self._stat()
                if stamp != self._stamp:
                    try:
                        self._entries = self.read()
                        self._cache = BasicCache(ttl=3600.0, limit=8192)
                        if self._entries:
                            log.info("%s: %d gateway credentials", self.path, len(self._entries))
                        else:
                            log.warning("%s is %s: no gateway may push until one is added", self.path,
                                        "gone" if stamp is None else "empty")
                    except HesError as exc:
                        log.error("%s; keeping the %d credentials read before", exc, len(self._entries))
                    self._stamp = stamp
            return self._entries

    def serials(self) -> list[str]:
        """The gateways the file lists now, in order."""
        return sorted(self._current())

    def check(self, header: str | None) -> Caller | None:
        """The caller (a gateway, bound to its serial), or None when the credentials are missing or wrong."""
        given = parse_basic(header)
        if given is None or header is None:
            return None
        entries = self._current()
        cred = entries.get(given[0])
        if cred is None:
            # Same work as for a known serial, so timing does not tell which serials exist.
            verify_password(_DUMMY, given[0], given[1])
            return None
        generation = cred.digest
        if self._cache.hit(header, generation):
            return Caller(cred.user, cred.user)
        if not verify_password(cred, given[0], given[1]):
            return None
        self._cache.add(header, generation)
        return Caller(cred.user, cred.user)

    def add(self, serial: str, password: str | None = None) -> str:
        """Add or replace a gateway's credential (atomic, mode 0600); returns its password."""
        if not _SERIAL.fullmatch(serial):
            raise HesError(f"{serial[:20]!r} is not a gateway serial (8 digits)")
        if password is None:
            password = generate_password()
        elif len(password) < 16:
            raise HesError("a gateway password needs at least 16 characters (leave it out to have one generated)")
        entries = self.read()
        entries[serial] = hash_password(serial, password, n=GATEWAY_N, r=GATEWAY_R, p=GATEWAY_P)
        self._write(entries)
        return password

    def remove(self, serial: str) -> bool:
        """Remove a gateway's credential; False when it was not there."""
        entries = self.read()
        if entries.pop(serial, None) is None:
            return False
        self._write(entries)
        return True

    def _write(self, entries: dict[str, Credential]) -> None:
        text = "".join(entries[serial].line() for serial in sorted(entries))
        write_atomic(self.path, text, 0o600)


_DUMMY = hash_password("00000000", generate_password(), n=GATEWAY_N, r=GATEWAY_R, p=GATEWAY_P)
