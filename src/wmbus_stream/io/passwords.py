"""Salted scrypt credentials and a cache of verified basic-auth headers: the web UI's and the HES's.

A credential is one line, ``user:scrypt:n:r:p:salt:digest`` (base64), with its cost stored
beside it, so older lines still verify when the default cost changes and a file of
machine-generated passwords may use a lighter one.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
import secrets
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass

__all__ = ["MAX_KDF_MEMORY", "SCRYPT_N", "SCRYPT_P", "SCRYPT_R", "BasicCache", "Credential", "generate_password",
           "hash_password", "verify_password"]

# scrypt cost, chosen for a 512 MiB ARM gateway: 8 MiB per check (128 * r * n bytes), and
# p=2 keeps the work of the earlier n=2**14, p=1 (n * r * p). docs/performance.md has the
# figures measured on arm64 and armv7l. The parameters are stored with each hash, so older
# hashes still verify and the cost can be changed later.
SCRYPT_N, SCRYPT_R, SCRYPT_P = 2**13, 8, 2
MAX_KDF_MEMORY = 64 * 1024 * 1024  # a password file asking for more is refused, not run
_ALPHABET = "abcdefghjkmnpqrstuvwxyz23456789"  # no 0/o, 1/l/i: read off a screen and typed


@dataclass(frozen=True, slots=True)
class Credential:
    """The administrator's user name and salted scrypt hash."""

    user: str
    n: int
    r: int
    p: int
    salt: bytes
    digest: bytes

    def line(self) -> str:
        b64 = base64.b64encode
        return (f"{self.user}:scrypt:{self.n}:{self.r}:{self.p}:"
                f"{b64(self.salt).decode()}:{b64(self.digest).decode()}\n")

    @classmethod
    def parse(cls, text: str) -> Credential:
        """Read a password file's line; ValueError if it is not one."""
        parts = text.strip().split(":")
        if len(parts) != 7 or parts[1] != "scrypt":
            raise ValueError("not a wmbus-stream password line")
        user, _, n, r, p, salt, digest = parts
        cred = cls(user, int(n), int(r), int(p), base64.b64decode(salt, validate=True),
                   base64.b64decode(digest, validate=True))
        if not (2 <= cred.n <= 2**20 and cred.n & (cred.n - 1) == 0 and 1 <= cred.r <= 32
                and 1 <= cred.p <= 16 and len(cred.salt) >= 16 and len(cred.digest) >= 32 and user):
            raise ValueError("password line has parameters out of range")
        if cred.memory > MAX_KDF_MEMORY:
            raise ValueError(f"password line asks for {cred.memory >> 20} MiB per check; at most "
                             f"{MAX_KDF_MEMORY >> 20} MiB are allowed (set the password again)")
        return cred

    @property
    def memory(self) -> int:
        """Bytes one check of this credential allocates."""
        return 128 * self.r * self.n


def _scrypt(password: str, salt: bytes, n: int, r: int, p: int, size: int) -> bytes:
    return hashlib.scrypt(password.encode("utf-8"), salt=salt, n=n, r=r, p=p, maxmem=MAX_KDF_MEMORY + (1 << 20),
                          dklen=size)


def hash_password(user: str, password: str, *, n: int = SCRYPT_N, r: int = SCRYPT_R, p: int = SCRYPT_P) -> Credential:
    """A new credential with a fresh random salt."""
    salt = os.urandom(16)
    return Credential(user, n, r, p, salt, _scrypt(password, salt, n, r, p, 32))


def verify_password(cred: Credential, user: str, password: str) -> bool:
    """Whether ``user``/``password`` match, in time independent of where they differ."""
    digest = _scrypt(password, cred.salt, cred.n, cred.r, cred.p, len(cred.digest))
    same_user = hmac.compare_digest(user.encode("utf-8"), cred.user.encode("utf-8"))
    return hmac.compare_digest(digest, cred.digest) and same_user


def generate_password() -> str:
    """A random password of 20 characters (about 99 bits) in groups of five."""
    chars = "".join(secrets.choice(_ALPHABET) for _ in range(20))
    return "-".join(chars[i:i + 5] for i in range(0, 20, 5))



class BasicCache:
    """Recently verified Authorization headers, by HMAC under a per-process key, for a minute."""

    def __init__(self, ttl: float = 60.0, limit: int = 256) -> None:
        self._key = os.urandom(32)
        self.ttl, self.limit = ttl, limit
        self._lock = threading.Lock()
        self._seen: OrderedDict[bytes, tuple[float, bytes]] = OrderedDict()

    def _mac(self, header: str) -> bytes:
        return hmac.new(self._key, header.encode("utf-8", "surrogateescape"), hashlib.sha256).digest()

    def hit(self, header: str, generation: bytes) -> bool:
        mac = self._mac(header)
        with self._lock:
            entry = self._seen.get(mac)
            if entry is None:
                return False
            at, gen = entry
            if time.monotonic() - at > self.ttl or gen != generation:
                del self._seen[mac]
                return False
            return True

    def add(self, header: str, generation: bytes) -> None:
        with self._lock:
            self._seen[self._mac(header)] = (time.monotonic(), generation)
            while len(self._seen) > self.limit:
                self._seen.popitem(last=False)
