"""``decode`` and ``replay``: a capture file through the framer, the checks and (replay) the configured pipeline."""

from __future__ import annotations

import argparse
import json
import os
import sys

from ..errors import FrameError
from .common import (DEFAULT_CONFIG, EXIT_FAILURE, EXIT_OK, address, load_config, open_input, setup_logging,
                     wired_address)

__all__ = ["add_decode", "add_replay", "cmd_decode", "cmd_replay"]


def cmd_decode(args: argparse.Namespace) -> int:
    """Decode a capture: one JSON object a line per frame found, then a summary on stderr."""
    from ..core.check import broken_json, check
    from ..receivers import framer

    try:
        source = open_input(args.file)
    except OSError as exc:
        print(f"wmbus-stream decode: cannot open {args.file}: {exc.strerror}", file=sys.stderr)
        return EXIT_FAILURE
    reader = framer(args.protocol, receiver_address=args.receiver_address)
    out = sys.stdout
    read = ok = broken = 0
    with source:
        while True:
            chunk = source.read1(65536) if hasattr(source, "read1") else source.read(65536)
            read += len(chunk)
            items = reader.feed(chunk) if chunk else reader.flush()
            for item in items:
                try:
                    obj = check(item).as_json(args.receiver_address, args.wired_address)
                    ok += 1
                except FrameError as exc:
                    obj = broken_json(exc)
                    obj["rssi_dbm"] = item.rssi_dbm
                    broken += 1
                out.write(json.dumps(obj) + "\n")
            if not chunk:
                break
    out.flush()
    print(_decode_summary(args.protocol, read, ok, broken, reader.stats.skipped_bytes), file=sys.stderr)
    return EXIT_OK


def _decode_summary(protocol: str, read: int, ok: int, broken: int, skipped: int) -> str:
    """What ``decode`` found, so a wrong ``--protocol`` is obvious: frames, broken ones, bytes skipped."""
    line = (f"decode: {ok + broken} {protocol} frames ({ok} ok, {broken} broken) in {read} bytes read; "
            f"{skipped} bytes skipped")
    if read and not ok:
        from ..receivers import SIMULATOR, names

        others = ", ".join(name for name in names() if name not in (protocol, SIMULATOR))
        line += f"; no good {protocol} frame found: is --protocol right? (the others: {others})"
    return line


def cmd_replay(args: argparse.Namespace) -> int:
    """Run a capture through the configured pipeline; print (or push) the report it gives."""
    import tempfile

    from ..core import report
    from ..core.analyzer import Analyzer
    from ..core.pipeline import Pipeline
    from ..io.store import Store
    from ..receivers import framer
    from ..app import settings_of

    config = load_config(args.config)
    setup_logging("warning")
    reader = framer(config.receiver_protocol if config.receiver_protocol != "simulator" else "hex",
                    receiver_address=config.receiver_address)
    try:
        source = open_input(args.capture)
    except OSError as exc:
        print(f"wmbus-stream replay: cannot open {args.capture}: {exc.strerror}", file=sys.stderr)
        return EXIT_FAILURE
    with tempfile.TemporaryDirectory(prefix="wmbus-replay-") as tmp, source:
        store = Store.open(os.path.join(tmp, "replay.sqlite"))
        analyzer = Analyzer(0.0)
        pipeline = Pipeline(settings_of(config), store, analyzer)
        import time as _time

        while chunk := source.read(65536):
            pipeline.feed(reader, chunk, _time.time())
        pipeline.feed(reader, b"", _time.time(), final=True)
        snapshot = store.snapshot()
        counts = ", ".join(f"{k} {v}" for k, v in sorted(pipeline.counts.items()))
        print(f"replay: {counts or 'nothing read'}; {len(snapshot)} meters in the report", file=sys.stderr)
        if args.push:
            from ..io.push import push
            from ..pusher import user_agent

            if not config.push_url:
                print("wmbus-stream replay: receiving.server.url is not set", file=sys.stderr)
                return EXIT_FAILURE
            creds = config.push_credentials
            result = push(config.push_endpoint or config.push_url,
                               lambda: report.body(snapshot, config.gateway_serial, config.timezone),
                               username=creds[0] if creds else None, password=creds[1] if creds else None,
                               ca_file=str(config.push_ca_file) if config.push_ca_file else None,
                               connect_timeout=config.push_connect_timeout, read_timeout=config.push_read_timeout,
                               attempts=config.push_retries + 1, deadline=None, user_agent=user_agent(config))
            print(f"replay push: {'acknowledged' if result.ok else 'failed: ' + str(result.error)}", file=sys.stderr)
            store.close(flush=False)
            return EXIT_OK if result.ok else EXIT_FAILURE
        out = sys.stdout.buffer if args.report == "-" else open(args.report, "wb")  # noqa: SIM115
        with out:
            for chunk in report.body(snapshot, config.gateway_serial, config.timezone):
                out.write(chunk)
        store.close(flush=False)
    return EXIT_OK


def add_decode(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Register ``decode``."""
    from ..receivers import names as receiver_names

    p = sub.add_parser("decode", help="decode receiver bytes to JSON lines, one per telegram")
    p.add_argument("--protocol", default="hex", choices=receiver_names(), metavar="PROTOCOL",
                   help=f"receiver protocol: {', '.join(receiver_names())} (default hex)")
    p.add_argument("--receiver-address", type=address, help="8-digit address for the 0C 78 record")
    p.add_argument("--wired-address", type=wired_address, default=0, help="wired M-Bus address A (default 0)")
    p.add_argument("file", nargs="?", default="-", help="capture file, or - for standard input")
    p.set_defaults(func=cmd_decode)


def add_replay(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Register ``replay``."""
    p = sub.add_parser("replay", help="run a capture through the pipeline; print or push the report")
    p.add_argument("--config", default=DEFAULT_CONFIG)
    p.add_argument("capture", help="capture file in the configured receiver protocol, or -")
    p.add_argument("--report", default="-", help="where to write the report (default - = stdout)")
    p.add_argument("--push", action="store_true", help="push the report to receiving.server.url instead")
    p.set_defaults(func=cmd_replay)
