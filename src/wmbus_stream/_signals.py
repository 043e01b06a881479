"""Signal dispositions from the first line of the command, before any heavy import.

Without them a SIGHUP (``systemctl reload``, logrotate) or a SIGTERM in the second or two a
gateway takes to import and open its state would kill it with the default action (exit
129). ``hold`` keeps those signals from the start; ``install`` hands them to the running
gateway (a reload queued, a stop), ``release`` gives any other command the defaults back.
"""

from __future__ import annotations

import os
import signal
from collections.abc import Callable, Mapping
from types import FrameType

__all__ = ["HELD", "hold", "install", "release"]

HELD = (signal.SIGHUP, signal.SIGTERM)
_arrived: list[int] = []


def _keep(signum: int, _frame: object) -> None:
    _arrived.append(signum)


def hold() -> None:
    """Keep SIGHUP and SIGTERM for later instead of dying of them."""
    for sig in HELD:
        signal.signal(sig, _keep)


def install(handlers: Mapping[int, Callable[[], None]]) -> None:
    """Put the gateway's handlers in place, then run them once for each kind of signal kept."""
    for sig, handler in handlers.items():
        signal.signal(sig, _calling(handler))
    arrived = dict.fromkeys(_arrived)
    _arrived.clear()
    for sig in arrived:
        if sig in handlers:
            handlers[sig]()


def _calling(handler: Callable[[], None]) -> Callable[[int, FrameType | None], None]:
    return lambda _signum, _frame: handler()


def release() -> None:
    """The default dispositions again (a command that is not the gateway); resend what was kept."""
    for sig in HELD:
        signal.signal(sig, signal.SIG_DFL)
    arrived = dict.fromkeys(_arrived)
    _arrived.clear()
    for signum in arrived:
        os.kill(os.getpid(), signum)
