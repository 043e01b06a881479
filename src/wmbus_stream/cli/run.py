"""``run`` (the gateway), ``receive`` (the reference HES) and ``systemd-unit``: the long-running processes."""

from __future__ import annotations

import argparse
import os
import sys

from .common import DEFAULT_CONFIG, EXIT_OK, load_config, setup_logging

__all__ = ["add_receive", "add_run", "add_systemd_unit", "cmd_run"]


def cmd_run(args: argparse.Namespace) -> int:
    """Run the gateway until SIGTERM (or once: capture to its end, one push)."""
    from ..app import Gateway
    from ..config import model

    config = model.require(load_config(args.config))
    setup_logging(config.log_level)
    return Gateway(config, args.config).run(once=args.once)


def cmd_receive(args: argparse.Namespace) -> int:
    """Run the reference HES receiving server."""
    from ..hes import cli as hes

    setup_logging("info")
    return hes.main(args)


def cmd_systemd_unit(args: argparse.Namespace) -> int:
    """Print the systemd unit, its ExecStart pointing at this installation."""
    from importlib.resources import files

    unit = files("wmbus_stream").joinpath("data/wmbus-stream.service").read_text()
    exe = os.path.join(os.path.dirname(sys.executable), "wmbus-stream")
    sys.stdout.write(unit.replace("/opt/wmbus-stream/bin/wmbus-stream", exe))
    return EXIT_OK


def add_run(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Register ``run``."""
    p = sub.add_parser("run", help="run the gateway")
    p.add_argument("--config", default=DEFAULT_CONFIG, help=f"configuration file (default {DEFAULT_CONFIG})")
    p.add_argument("--once", action="store_true", help="read the receiver (a capture to its end), push once, exit")
    p.set_defaults(func=cmd_run)


def add_receive(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Register ``receive``."""
    p = sub.add_parser("receive", help="reference HES receiving server")
    from ..hes import cli as hes

    hes.add_arguments(p)
    p.set_defaults(func=cmd_receive)


def add_systemd_unit(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Register ``systemd-unit``."""
    p = sub.add_parser("systemd-unit", help="print the systemd unit for this installation")
    p.set_defaults(func=cmd_systemd_unit)
