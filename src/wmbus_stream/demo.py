"""``wmbus-stream demo``: a whole installation on one machine, for a first look.

A simulated receiver with a few hundred meters feeds a real gateway (the same ``Gateway``
as ``run``) that pushes every 10 seconds to a real local receiving server (``receive``).
The gateway's web UI listens on localhost (port 8080, or a free one when 8080 is taken)
with a random administrator password made for this run and printed once. Progress lines
show telegrams read, meters held, pushes and lines acknowledged.
"""

from __future__ import annotations

import argparse
import shutil
import socket
import tempfile
import threading
import time
from pathlib import Path

from .config import model
from .hes import ReceiveServer, SqliteStore
from .service import Gateway
from .web.auth import DEFAULT_USER, generate_password, write_password

__all__ = ["main", "demo_config"]

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


def main(args: argparse.Namespace) -> int:
    """Run the demo until Ctrl-C (or ``--seconds``); everything lives in a temporary folder."""
    folder = Path(tempfile.mkdtemp(prefix="wmbus-stream-demo-"))
    hes = ReceiveServer("127.0.0.1", 0, store=SqliteStore(str(folder / "hes.sqlite"))).start()
    config_path = folder / "stream.cfg"
    model.save(config_path, demo_config(folder / "state", hes.url, args.meters, _web_port()))
    password = generate_password()
    write_password(folder / "state", DEFAULT_USER, password)  # only its scrypt hash is stored
    gateway = Gateway(model.load(config_path), config_path)
    stop = threading.Event()
    try:
        gateway.start(control=False)
        print(f"wmbus-stream demo: {args.meters} simulated meters -> gateway 00000161 -> receiving server {hes.url}")
        print(f"  state and received reports in {folder}; pushes every 10 s; Ctrl-C stops")
        if gateway.web is not None:
            print(f"  web UI: {gateway.web.url}  user {DEFAULT_USER}, password {password}"
                  "  (made for this run, shown once)", flush=True)
        started = last = time.monotonic()
        while not stop.wait(0.25):
            gateway.tick()
            now = time.monotonic()
            if now - last >= PROGRESS_SECONDS:
                last = now
                print(_progress(gateway, hes), flush=True)
            if args.seconds and now - started >= args.seconds:
                break
    except KeyboardInterrupt:
        pass
    finally:
        gateway.shutdown()
        print(_progress(gateway, hes))
        hes.stop()
        print("wmbus-stream demo: stopped cleanly")
        shutil.rmtree(folder, ignore_errors=True)
    return 0


def _progress(gateway: Gateway, hes: ReceiveServer) -> str:
    status = gateway.status()
    counts = status["telegrams"]
    broken = sum(counts.get(k, 0) for k in ("crc", "length", "header", "checksum", "frame"))
    stats = hes.stats
    return (
        f"{time.strftime('%H:%M:%S')}  telegrams read {counts.get('read', 0)} (ok {counts.get('ok', 0)},"
        f" broken {broken})  meters held {status['meters_pending']}  pushes ok {status['pushes']['ok']}"
        f" failed {status['pushes']['failed']}  lines acknowledged {gateway.lines_acknowledged}"
        f"  HES readings {stats.readings}"
    )
