"""The ``wmbus-stream`` command line: one sub-command per job, documented exit codes.

Exit codes: 0 ok, 1 failure (file, server, push), 2 usage, 3 invalid configuration.
One module per command group: ``capture`` (decode, replay), ``bench``, ``config`` (config
check/show/set/export/import/history/revert, sync now), ``state`` (config backup/restore),
``run`` (run, receive, systemd-unit), ``gateway`` (push now, status, analyzer, passwd),
``appliance`` (provision, update status/install/rollback/confirm) and ``demo``. They are imported by ``build_parser``, after ``main`` has held the signals.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence

from .. import __version__, _signals, implementation
from ..errors import ConfigError, ConfigFileError, WmbusStreamError
from .common import EXIT_CONFIG, EXIT_FAILURE, EXIT_USAGE

__all__ = ["build_parser", "main"]


def build_parser() -> argparse.ArgumentParser:
    """The parser of every command, in the order ``--help`` lists them."""
    from . import appliance, bench, capture, config, demo, gateway, run

    parser = argparse.ArgumentParser(prog="wmbus-stream", description="Wireless M-Bus stream-mode gateway")
    parser.add_argument("--version", action="version", version=f"wmbus-stream {__version__} {implementation()}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    capture.add_decode(sub)
    bench.add_bench(sub)
    config.add_config(sub)
    config.add_sync(sub)
    run.add_run(sub)
    gateway.add_push(sub)
    gateway.add_status(sub)
    gateway.add_analyzer(sub)
    capture.add_replay(sub)
    run.add_receive(sub)
    run.add_systemd_unit(sub)
    gateway.add_passwd(sub)
    appliance.add_provision(sub)
    appliance.add_update(sub)
    demo.add_demo(sub)
    return parser


def _command_name(args: argparse.Namespace) -> str:
    """The command words of ``args`` (``config set``), for error lines."""
    words = [getattr(args, "command", None), getattr(args, "config_command", None),
             getattr(args, "update_command", None)]
    return " ".join(w for w in words if isinstance(w, str))


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the console script."""
    _signals.hold()  # first thing: a SIGHUP while the gateway starts must not kill it
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit:  # --help, --version, a usage error
        _signals.release()
        raise
    from .demo import cmd_demo
    from .run import cmd_run

    if getattr(args, "func", None) not in (cmd_run, cmd_demo):  # both take the kept signals over
        _signals.release()
    if not getattr(args, "func", None):
        parser.print_help(sys.stderr)
        return EXIT_USAGE
    try:
        return args.func(args)
    except ConfigFileError as exc:  # a file that cannot be opened is a failure, not an invalid configuration
        print(f"wmbus-stream {_command_name(args)}: cannot read the configuration file {exc.path}: {exc.reason}"
              " (--config FILE names another)", file=sys.stderr)
        return EXIT_FAILURE
    except ConfigError as exc:
        for problem in exc.problems:
            print(problem, file=sys.stderr)
        return EXIT_CONFIG
    except WmbusStreamError as exc:
        print(f"wmbus-stream: {exc}", file=sys.stderr)
        return EXIT_FAILURE
    except BrokenPipeError:  # the reader went away (``| head``): stop quietly, as other tools do
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_FAILURE
    except OSError as exc:  # a file or folder the command needs: name it, no traceback
        where = f" {exc.filename}" if exc.filename else ""
        print(f"wmbus-stream {_command_name(args)}: cannot use{where}: {exc.strerror or exc}", file=sys.stderr)
        return EXIT_FAILURE
    except KeyboardInterrupt:
        return 130
