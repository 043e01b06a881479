"""``config backup`` and ``config restore``: the gateway's whole state in one archive, and back.

Both go through the running gateway when there is one (it owns the state database: it
flushes before a backup and closes, swaps and reopens its store for a restore); without
one, the command takes the state directory's lock and does it itself.
"""

from __future__ import annotations

import argparse
import io
import os
import sys
from pathlib import Path

from ..errors import BackupError
from ..state.backup import backup, restore
from ..errors import GatewayIOError
from ..io import control
from .common import EXIT_CONFIG, EXIT_FAILURE, EXIT_OK, manager_of, with_config

__all__ = ["add_commands"]


def cmd_backup(args: argparse.Namespace) -> int:
    """Write a backup archive (configuration, state, history, files); 0600."""
    from ..atomic import write_atomic

    manager = manager_of(args)
    buffer = io.BytesIO()
    answer = control.request_backup(manager.state_directory, buffer)
    if answer is None:
        backup(manager, buffer)
    elif "error" in answer:
        print(f"wmbus-stream config backup: {answer['error']}", file=sys.stderr)
        return EXIT_FAILURE
    if args.file == "-":
        sys.stdout.buffer.write(buffer.getvalue())
    else:
        write_atomic(args.file, buffer.getvalue(), 0o600)
        print(f"backup written to {args.file} ({len(buffer.getvalue())} bytes)")
    return EXIT_OK


def cmd_restore(args: argparse.Namespace) -> int:
    """Restore a backup archive, onto this (replacement) gateway; keeps its serial by default."""
    manager = manager_of(args)
    source = Path(args.file)
    if not source.is_file():
        print(f"wmbus-stream config restore: {args.file} is not a readable file", file=sys.stderr)
        return EXIT_FAILURE
    keep = not args.replace_serial
    answer = control.request_restore(manager.state_directory, source, keep)
    if answer is None:
        try:
            lock = control.take_lock(manager.state_directory / control.LOCK_FILE)
        except GatewayIOError:
            print("wmbus-stream config restore: a gateway is starting for this state directory; try again",
                  file=sys.stderr)
            return EXIT_FAILURE
        try:
            with open(source, "rb") as handle:
                result = restore(manager, handle, keep_serial=keep)
        except BackupError as exc:
            for problem in exc.problems:
                print(problem, file=sys.stderr)
            print("nothing was changed", file=sys.stderr)
            return EXIT_CONFIG
        finally:
            os.close(lock)
        print(result.summary())
        print("no gateway is running for this state directory: it resumes from the restored state at its next start")
        return EXIT_OK
    if answer.get("ok"):
        print(answer["summary"])
        print("the running gateway continues from the restored state")
        return EXIT_OK
    for problem in answer.get("problems") or [answer.get("error", "restore failed")]:
        print(problem, file=sys.stderr)
    if answer.get("problems"):
        print("nothing was changed", file=sys.stderr)
        return EXIT_CONFIG
    return EXIT_FAILURE


def add_commands(csub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Register ``backup`` and ``restore`` under ``config``."""
    c = csub.add_parser("backup", help="write a backup: configuration, state (pending, analyzer), history, files")
    with_config(c)
    c.add_argument("file", help="archive to write (mode 0600), or - for standard output")
    c.set_defaults(func=cmd_backup)

    c = csub.add_parser("restore", help="restore a backup (keeps this gateway's serial)")
    with_config(c)
    c.add_argument("file", help="archive to read")
    c.add_argument("--replace-serial", action="store_true", help="take gateway.serial from the backup too")
    c.set_defaults(func=cmd_restore)
