"""What a configuration server is trusted with: the keys it may set and where a sync may go.

Strategy: the device owner's local configuration decides, a sync never does (the allow keys
are ``keys.SYNC_NEVER``). Each check returns the reason of a refusal, or None:

- ``refused_key``: a sync sets a ``SYNC_OWNER`` key that ``configuration.server.allow.keys``
  does not list.
- ``moved_credentials``: a sync moves the push (``receiving.server.url``) to another origin
  while the HES credentials it would send there are the ones set for the old origin.
  Credentials belong to the origin they were configured with; a sync that moves the push
  must bring the new origin's credentials (or none) itself.
- ``Reach.refused``: a request of a sync (a download, each redirect, the notification) goes
  to an origin other than the configuration server's own or one the owner listed in
  ``configuration.server.allow.origins``. Listed origins are trusted as the owner named
  them; ``*`` admits any other origin whose host resolves only to public unicast addresses
  that are not the gateway's own (never loopback, link-local, private, unspecified or
  multicast: the customer's LAN and the gateway itself stay out of reach).
"""

from __future__ import annotations

import ipaddress
import socket
from dataclasses import dataclass
from urllib.parse import urlsplit

from ..config.keys import ANY_ORIGIN, BY_NAME, SYNC_OWNER, origin
from ..config.model import Config
from .cad import CadFile

__all__ = ["Reach", "refused_key", "moved_credentials", "PUSH_CREDENTIAL_KEYS"]

PUSH_CREDENTIAL_KEYS = ("receiving.server.username", "receiving.server.password")


def refused_key(parsed: CadFile, config: Config) -> str | None:
    """Why a ``Sync-Config`` line may not set its key on this gateway, for the first such line."""
    for line in parsed.configs:
        if BY_NAME[line.key].sync == SYNC_OWNER and line.key not in config.sync_allow_keys:
            return (f"line {line.line}: Sync-Config-{line.n}: {line.key} is an owner-only key: a sync may set it"
                    " only when this gateway's owner lists it in configuration.server.allow.keys")
    return None


def moved_credentials(parsed: CadFile, old: Config, new: Config) -> str | None:
    """Why a sync may not move the push to another origin with the credentials of the old one."""
    if not new.push_url or (old.push_url and origin(old.push_url) == origin(new.push_url)):
        return None
    changes = parsed.changes()
    stale = [name for name in PUSH_CREDENTIAL_KEYS if new.raw[name] and name not in changes]
    if not stale:
        return None
    line = parsed.line_of("receiving.server.url")
    where = f"line {line.line}: Sync-Config-{line.n}: " if line else ""
    was = origin(old.push_url) if old.push_url else "no receiving.server.url"
    return (f"{where}receiving.server.url moves the push to {origin(new.push_url)}, but {' and '.join(stale)}"
            f" belong to {was}: credentials are never sent to another origin (set them in the same sync,"
            " or let the owner change the URL on the gateway)")


@dataclass(frozen=True, slots=True)
class Reach:
    """The origins a sync may send requests to: the configuration server's own and the owner's list."""

    home: str
    allowed: tuple[str, ...]

    @classmethod
    def of(cls, config: Config) -> Reach:
        home = origin(config.sync_url) if config.sync_url else ""
        return cls(home, config.sync_allow_origins)

    def named(self, url: str) -> bool:
        """Whether the owner named the origin of ``url`` (the configuration server's, or a listed one)."""
        there = origin(url)
        return there == self.home or there in self.allowed

    def refused(self, url: str) -> str | None:
        """Why a sync may not send a request to ``url``, or None."""
        try:
            if self.named(url):
                return None
            there = origin(url)
        except ValueError as exc:
            return f"not an http(s) URL ({exc})"
        listed = ", ".join([self.home, *self.allowed]) or "none"
        if ANY_ORIGIN not in self.allowed:
            return (f"{there} is not an allowed origin (allowed: {listed}; the owner may add it to"
                    " configuration.server.allow.origins)")
        return _public_host(url, there)


def _public_host(url: str, there: str) -> str | None:
    """Why the host of ``url`` is not only at public addresses outside the gateway, or None."""
    parts = urlsplit(url)
    host, port = parts.hostname or "", parts.port or (443 if parts.scheme.lower() == "https" else 80)
    try:
        found = {info[4][0] for info in socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)}
    except (OSError, UnicodeError):
        return f"{there}: the host name cannot be resolved"
    for text in sorted(found):
        address = ipaddress.ip_address(str(text).split("%", 1)[0])
        if not address.is_global or address.is_multicast:
            return (f"{there} is at {address}, an address inside the gateway or its network; '*' admits public"
                    " addresses only (the owner may list this origin in configuration.server.allow.origins)")
        if _own(address):
            return f"{there} is at {address}, one of the gateway's own addresses"
    return None


def _own(address: ipaddress.IPv4Address | ipaddress.IPv6Address) -> bool:
    """Whether ``address`` is one of this machine's: only an own address can be bound to."""
    family = socket.AF_INET6 if address.version == 6 else socket.AF_INET
    try:
        with socket.socket(family, socket.SOCK_STREAM) as probe:
            probe.bind((str(address), 0))
        return True
    except OSError:
        return False
