"""The ``wmbus-stream`` command line: one sub-command per job, documented exit codes.

Exit codes: 0 ok, 1 failure (file, server, push), 2 usage, 3 invalid configuration.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from collections.abc import Sequence

from . import __version__, implementation
from .errors import ConfigError, FrameError, WmbusStreamError

__all__ = ["main"]

EXIT_OK, EXIT_FAILURE, EXIT_USAGE, EXIT_CONFIG = 0, 1, 2, 3
DEFAULT_CONFIG = "/etc/wmbus-stream/stream.cfg"


def _address(text: str) -> str:
    if not re.fullmatch(r"\d{8}", text):
        raise argparse.ArgumentTypeError(f"{text!r} is not an 8-digit receiver address")
    return text


def _wired_address(text: str) -> int:
    try:
        value = int(text, 0)
    except ValueError:
        value = -1
    if not 0 <= value <= 255:
        raise argparse.ArgumentTypeError(f"{text!r} is not a wired address 0..255 (decimal or 0xNN)")
    return value


def _open_input(path: str):
    return sys.stdin.buffer if path == "-" else open(path, "rb")  # noqa: SIM115


def cmd_decode(args: argparse.Namespace) -> int:
    """Decode a capture: one JSON object a line per frame found."""
    from .core.check import broken_json, check
    from .receivers import framer

    try:
        source = _open_input(args.file)
    except OSError as exc:
        print(f"wmbus-stream decode: cannot open {args.file}: {exc.strerror}", file=sys.stderr)
        return EXIT_FAILURE
    reader = framer(args.protocol, receiver_address=args.receiver_address)
    out = sys.stdout
    with source:
        while True:
            chunk = source.read1(65536) if hasattr(source, "read1") else source.read(65536)
            items = reader.feed(chunk) if chunk else reader.flush()
            for item in items:
                try:
                    obj = check(item).as_json(args.receiver_address, args.wired_address)
                except FrameError as exc:
                    obj = broken_json(exc)
                    obj["rssi_dbm"] = item.rssi_dbm
                out.write(json.dumps(obj) + "\n")
            if not chunk:
                break
    out.flush()
    return EXIT_OK


def cmd_bench(args: argparse.Namespace) -> int:
    """Measure the check + filter batch, compiled and pure, in one run."""
    from . import bench

    result = bench.run(frames=args.frames, as_json=args.json)
    if args.json:
        print(json.dumps(result, indent=2))
    return EXIT_OK


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="wmbus-stream", description="Wireless M-Bus stream-mode gateway")
    parser.add_argument("--version", action="version", version=f"wmbus-stream {__version__} {implementation()}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    p = sub.add_parser("decode", help="decode receiver bytes to JSON lines, one per telegram")
    p.add_argument("--protocol", default="hex", help="receiver protocol (default hex)")
    p.add_argument("--receiver-address", type=_address, help="8-digit address for the 0C 78 record")
    p.add_argument("--wired-address", type=_wired_address, default=0, help="wired M-Bus address A (default 0)")
    p.add_argument("file", nargs="?", default="-", help="capture file, or - for standard input")
    p.set_defaults(func=cmd_decode)

    p = sub.add_parser("bench", help="benchmark the check + filter batch, compiled and pure")
    p.add_argument("--frames", type=int, default=200_000)
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(func=cmd_bench)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the console script."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help(sys.stderr)
        return EXIT_USAGE
    try:
        return args.func(args)
    except ConfigError as exc:
        for problem in exc.problems:
            print(problem, file=sys.stderr)
        return EXIT_CONFIG
    except WmbusStreamError as exc:
        print(f"wmbus-stream: {exc}", file=sys.stderr)
        return EXIT_FAILURE
    except KeyboardInterrupt:
        return 130
