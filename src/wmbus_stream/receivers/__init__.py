"""Receiver framers by protocol name (``receiver.protocol``), imported only when asked for.

Every framer has ``name``, ``stats`` (``FramerStats``), ``pending`` (bytes held),
``feed(bytes) -> list[Received]``, ``flush() -> list[Received]``, ``scan(bytes, final,
settings) -> core.check.Batch`` (a read chunk framed and checked: the daemon's path) and
``setup_commands(radio_mode_setting) -> bytes`` (b"" when the receiver cannot be set), and
takes keyword options ``receiver_address`` and ``radio_mode`` (plus ``rssi`` for amb8465).

``simulator`` is a protocol name too: its bytes come from ``simulator.Simulator`` instead of
a port, in ``cmex50`` framing by default, so its framer is the cmex50 one.
"""

from __future__ import annotations

import importlib
from typing import Any, Protocol

from ..core.check import Batch, Settings
from ..core.received import Received
from ..errors import ConfigError, Problem
from .base import FramerStats

__all__ = ["Framer", "framer", "framer_class", "names", "REGISTRY", "SIMULATOR"]


class Framer(Protocol):
    """What every framer offers (for type checkers; the classes do not inherit it)."""

    name: str
    stats: FramerStats

    @property
    def pending(self) -> bytes: ...

    @property
    def max_pending(self) -> int: ...

    def feed(self, data: bytes) -> list[Received]: ...

    def flush(self) -> list[Received]: ...

    def scan(self, data: bytes, final: bool, settings: Settings) -> Batch: ...

    def setup_commands(self, radio_mode_setting: str) -> bytes: ...

SIMULATOR = "simulator"

REGISTRY: dict[str, tuple[str, str]] = {
    "cmex50": ("wmbus_stream.receivers.cmex50", "Cmex50Framer"),
    "im871a": ("wmbus_stream.receivers.im871a", "Im871aFramer"),
    "amb8465": ("wmbus_stream.receivers.amb8465", "Amb8465Framer"),
    "rtlwmbus": ("wmbus_stream.receivers.rtlwmbus", "RtlWmbusFramer"),
    "hex": ("wmbus_stream.receivers.hex", "HexFramer"),
    SIMULATOR: ("wmbus_stream.receivers.cmex50", "Cmex50Framer"),
}


def names() -> tuple[str, ...]:
    """The valid ``receiver.protocol`` names, default first."""
    return tuple(REGISTRY)


def framer_class(name: str) -> type[Framer]:
    """The framer class of a protocol; ConfigError for an unknown name."""
    try:
        module_name, class_name = REGISTRY[name.strip().lower()]
    except (KeyError, AttributeError):
        raise ConfigError(Problem("receiver.protocol", str(name), "one of " + ", ".join(REGISTRY))) from None
    cls: type[Framer] = getattr(importlib.import_module(module_name), class_name)
    return cls


def framer(name: str, **options: Any) -> Framer:
    """A new framer for protocol ``name`` with keyword ``options``."""
    return framer_class(name)(**options)
