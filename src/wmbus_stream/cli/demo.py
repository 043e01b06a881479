"""``wmbus-stream demo``: a whole installation on one machine, for a first look.

A simulated receiver with a few hundred meters feeds a real gateway (the same ``Gateway``
as ``run``) that pushes every 10 seconds to a real local receiving server (``receive``).
The gateway's web UI listens on localhost (port 8080, or a free one when 8080 is taken)
with a random administrator password made for this run and printed once. Progress lines
show telegrams read (accepted, broken, filtered out: they add up), meters pending, pushes
and lines acknowledged. SIGINT, SIGTERM and SIGHUP stop it cleanly and remove its folder; a
second signal while it stops cuts the gateway's shutdown short (exit status 128 + signal).
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import os
import shutil
import signal
import socket
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

from .. import _signals
from ..app import Gateway
from ..config import model
from ..core.pipeline import tally
from ..hes import ReceiveServer, SqliteStore
from ..web.auth import DEFAULT_USER, generate_password, write_password
from .common import positive, setup_logging

__all__ = ["add_demo", "cmd_demo", "demo_config"]

PROGRESS_SECONDS = 10.0
WEB_PORT = 8080


def demo_config(state: Path, push_url: str, meters: int, web_port: int = WEB_PORT) -> model.Config:
    """The demo's configuration: simulator receiver, a push every 10 seconds, no filters, web UI on localhost."""
    return model.parse({
        "receiver.protocol": "simulator",
        "simulator.meters": str(meters),
        "receiver.address": "62001772",
        "gateway.serial": "00000161",
        "receiving.server.url": push_url,
        "receiving.server.push.cron": "*/10 * * * * *",
        "state.directory": str(state),
        "store.flush.seconds": "5",
        "web.enabled": "true",
        "web.listen": f"127.0.0.1:{web_port}",
    })


def _web_port() -> int:
    """8080 when it is free on localhost, else a free port the system picks."""
    with socket.socket() as probe:
        try:
            probe.bind(("127.0.0.1", WEB_PORT))
        except OSError:
            probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def add_demo(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Register ``demo``."""
    p = sub.add_parser("demo", help="demo gateway with simulator and local receiving server")
    p.add_argument("--meters", type=positive, default=300, help="simulated meters (default 300)")
    p.add_argument("--seconds", type=float, default=0, help="stop after this many seconds (0 = until Ctrl-C)")
    p.set_defaults(func=cmd_demo)


def cmd_demo(args: argparse.Namespace) -> int:
    """The demo gateway: simulator, pushes every 10 s, a local receiving server."""
    setup_logging("warning")
    return main(args)


def main(args: argparse.Namespace) -> int:
    """Run the demo until a stop signal (or ``--seconds``); everything lives in a temporary folder, removed at the end."""
    stop = _StopSignals()
    with stop.installed():
        folder = Path(tempfile.mkdtemp(prefix="wmbus-stream-demo-"))
        store = SqliteStore(str(folder / "hes.sqlite"))
        hes = ReceiveServer("127.0.0.1", 0, store=store)
        gateway: Gateway | None = None
        ran = cut_short = False
        try:
            hes.start()
            config_path = folder / "stream.cfg"
            model.save(config_path, demo_config(folder / "state", hes.url, args.meters, _web_port()))
            password = generate_password()
            write_password(folder / "state", DEFAULT_USER, password)  # only its scrypt hash is stored
            gateway = Gateway(model.load(config_path), config_path)
            gateway.start(control=False)
            _say(f"{args.meters} simulated meters -> gateway 00000161 -> receiving server {hes.url}")
            _out(f"  state and received reports in {folder} (removed at the end); pushes every 10 s")
            if gateway.web is not None:
                _out(f"  web UI: {gateway.web.url}  user {DEFAULT_USER}, password {password}"
                     "  (made for this run, shown once)")
            _say(f"ready; a progress line every {PROGRESS_SECONDS:.0f} s; Ctrl-C or SIGTERM stops it")
            _run(gateway, hes, stop, args.seconds)
            ran = True
        finally:
            if stop.received:
                _say(f"{stop.name(0)} received: stopping (a second signal stops at once)")
            if gateway is not None:
                cut_short = _shut_down(gateway, stop)
                if not cut_short:
                    _out(_progress(gateway, hes))
            hes.stop()
            store.close()
            removed = f"removed {folder}" if _remove(folder) else f"could not remove {folder}: remove it by hand"
            if cut_short:
                _say(f"{stop.name(-1)} received while stopping: stopped at once, the gateway's shutdown cut short;"
                     f" {removed}")
            else:
                _say(f"stopped {'cleanly' if ran else 'after an error (below)'}; {removed}")
    if cut_short:
        os._exit(128 + stop.received[-1])  # the gateway's threads are left behind: do not wait for them
    return 0


class _StopSignals:
    """SIGINT, SIGTERM and SIGHUP stop the demo, even when started with one ignored (a script's background job).

    The handler only notes the signal: the main loop polls it, so no lock is ever taken inside a handler.
    """

    SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)

    def __init__(self) -> None:
        self.received: list[int] = []

    def name(self, index: int) -> str:
        return signal.Signals(self.received[index]).name

    @contextlib.contextmanager
    def installed(self) -> Iterator[None]:
        """The demo's handlers for the time of the block; a signal kept since the command's first line counts too."""
        previous = {signum: signal.getsignal(signum) for signum in self.SIGNALS}
        with contextlib.suppress(ValueError):  # not in the main thread: the caller handles signals
            _signals.install({signum: functools.partial(self.received.append, signum) for signum in self.SIGNALS})
        try:
            yield
        finally:
            for signum, handler in previous.items():
                with contextlib.suppress(ValueError, TypeError):
                    signal.signal(signum, handler)


def _run(gateway: Gateway, hes: ReceiveServer, stop: _StopSignals, seconds: float) -> None:
    """The main loop: ticks, a progress line every PROGRESS_SECONDS, until a signal or ``seconds``."""
    started = last = time.monotonic()
    while not stop.received:
        gateway.tick()
        now = time.monotonic()
        if now - last >= PROGRESS_SECONDS:
            last = now
            _out(_progress(gateway, hes))
        if seconds and now - started >= seconds:
            return
        time.sleep(0.25)


def _shut_down(gateway: Gateway, stop: _StopSignals) -> bool:
    """Shut the gateway down in a thread of its own; True when a second signal came first and cut it short."""
    done = threading.Event()

    def work() -> None:
        try:
            gateway.shutdown()
        finally:
            done.set()

    threading.Thread(target=work, name="demo-shutdown", daemon=True).start()
    while len(stop.received) < 2:
        if done.wait(0.1):
            return False
    return True


def _remove(folder: Path) -> bool:
    """Remove the demo's folder, again if a gateway thread cut short was still writing into it; whether it is gone."""
    for _ in range(20):
        shutil.rmtree(folder, ignore_errors=True)
        if not folder.exists():
            return True
        time.sleep(0.05)
    return False


def _say(text: str) -> None:
    _out(f"wmbus-stream demo: {text}")


def _out(line: str) -> None:
    """Print a line at once; a closed terminal (SIGHUP) must not keep the demo from cleaning up."""
    with contextlib.suppress(OSError):
        print(line, flush=True)


def _progress(gateway: Gateway, hes: ReceiveServer) -> str:
    """One progress line, in the Overview's words: read = accepted + broken + filtered out."""
    status = gateway.status()
    telegrams = tally(status.telegrams)
    return (
        f"{time.strftime('%H:%M:%S')}  telegrams read {telegrams.read} (accepted {telegrams.accepted},"
        f" broken {telegrams.broken}, filtered out {telegrams.filtered})  meters pending {status.meters_pending}"
        f"  pushes ok {status.pushes.ok} failed {status.pushes.failed}"
        f"  lines acknowledged {gateway.push_totals().lines_acknowledged}  HES readings {hes.stats.readings}"
    )
