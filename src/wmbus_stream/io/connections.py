"""What the web UI (``web.listener``) and the reference HES (``hes``) share about client connections.

One deadline for a whole phase of reading a connection (a request head, a body), not a
timeout per read, so a client that sends a byte now and then does not keep its thread; and
who an address counts as for per-address limits.
"""

from __future__ import annotations

import io
import ipaddress
import socket
import time
from typing import Any

from ..errors import WmbusStreamError

__all__ = ["Late", "DeadlineReader", "source_of"]


class Late(WmbusStreamError):
    """A client did not send what it owed before its deadline."""


class DeadlineReader(io.RawIOBase):
    """A connection's bytes with one deadline for a whole phase (request head, body), not per read."""

    def __init__(self, sock: socket.socket, timeout: float) -> None:
        self.sock, self.timeout = sock, timeout
        self.until: float | None = None
        self.got = 0  # bytes read since ``start``

    def start(self, seconds: float) -> None:
        self.until, self.got = time.monotonic() + seconds, 0

    def stop(self) -> None:
        self.until = None
        self.sock.settimeout(self.timeout)

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        if self.until is not None:
            left = self.until - time.monotonic()
            if left <= 0:
                raise Late
            self.sock.settimeout(min(left, self.timeout))
        try:
            count = self.sock.recv_into(buffer)
        except TimeoutError:
            if self.until is not None and time.monotonic() >= self.until:
                raise Late from None
            raise
        self.got += count
        return count


def source_of(address: str) -> str:
    """Who an address counts as for limits: an IPv4 address, or an IPv6 address's /64."""
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return address
    if ip.version == 6 and ip.ipv4_mapped is not None:
        return str(ip.ipv4_mapped)
    if ip.version == 6:
        return str(ipaddress.IPv6Network((ip, 64), strict=False).network_address) + "/64"
    return str(ip)
