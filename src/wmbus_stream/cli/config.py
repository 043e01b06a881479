"""``wmbus-stream config check|show|set|export|import|history|revert`` and ``sync now``.

Every command works on the configuration file given with ``--config`` and the state
directory of the gateway running with that file (``io.control.locate``), else the one the
file names. Commands that change the configuration write it themselves (through
``ConfigManager``: validated, atomic, recorded) and then tell a running gateway to reload.
Exit codes: 0 ok, 1 failure, 3 invalid input (one line per problem on standard error,
nothing changed). ``config backup`` and ``config restore`` are in ``cli.state``.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from pathlib import Path

from ..config import model, properties
from ..config.manage import ConfigManager
from ..errors import ConfigError, ConfigFileError, WmbusStreamError
from ..io import control
from . import state
from .common import DEFAULT_CONFIG, EXIT_CONFIG, EXIT_FAILURE, EXIT_OK, EXIT_USAGE, manager_of, with_config

__all__ = ["add_config", "add_sync"]


def cmd_config_check(args: argparse.Namespace) -> int:
    """Validate a configuration file: exit 0 (valid, on stdout) or 3 (one line per problem on stderr)."""
    if args.file and args.config and args.file != args.config:
        print(f"wmbus-stream config check: two files given ({args.file} and --config {args.config}); give one",
              file=sys.stderr)
        return EXIT_USAGE
    path = args.file or args.config or DEFAULT_CONFIG
    try:
        config = model.require(model.load(path))  # what run would refuse, check refuses
    except ConfigFileError:
        raise
    except ConfigError as exc:
        for problem in exc.problems:
            print(problem, file=sys.stderr)
        return EXIT_CONFIG
    print(f"{path}: configuration is valid")
    print(_baud_in_effect(config))
    return EXIT_OK


def _baud_in_effect(config: model.Config) -> str:
    """Which serial speed the receiver is opened at, and whether the file or the protocol's default chose it."""
    if "usb.baud.rate" in config.explicit:
        return f"usb.baud.rate {config.baud_rate} Bd: set in the file"
    return (f"usb.baud.rate {config.baud_rate} Bd: the default for receiver.protocol={config.receiver_protocol}"
            " (set usb.baud.rate for another speed)")


def _tell_gateway(manager: ConfigManager, changed: bool) -> None:
    if not changed:
        return
    try:
        answer = control.request(manager.state_directory, "reload", timeout=60)
    except OSError as exc:
        print(f"wmbus-stream: the running gateway did not answer ({exc}); it applies the file at its next"
              " reload or start", file=sys.stderr)
        return
    if answer is None:
        print("no gateway is running for this state directory: the file is used at its next start")
    elif answer.get("ok"):
        print("the running gateway reloaded the configuration")
    else:
        print(f"wmbus-stream: the running gateway did not reload: {answer.get('error', 'see its log')}",
              file=sys.stderr)


def _report_change(manager: ConfigManager, before: str | None, number: int) -> None:
    changed = manager.file_text() != before
    if changed:
        print(f"configuration #{number} applied and recorded")
    else:
        print(f"configuration unchanged (it is already #{number})")
    _tell_gateway(manager, changed)


def _text_of(path: Path) -> str | None:
    try:
        return properties.read_bytes(path).decode("utf-8")
    except (OSError, ConfigError, UnicodeDecodeError):
        return None


def cmd_show(args: argparse.Namespace) -> int:
    """Print the configuration with secrets masked (``--all``: every key with its effective value)."""
    config = model.load(args.config)
    if args.all:
        sys.stdout.write(model.to_text(config, full=True, mask_secrets=True))
    else:
        sys.stdout.write(model.to_text(config, template=properties.read(args.config), mask_secrets=True))
    return EXIT_OK


def cmd_set(args: argparse.Namespace) -> int:
    """Set keys (``KEY=VALUE``), or reset them to their default (``--unset KEY``)."""
    changes: dict[str, str | None] = {}
    for item in args.assignments:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            print(f"{item}: invalid value ''; allowed: KEY=VALUE (KEY= for an empty value, --unset KEY for"
                  " the default)", file=sys.stderr)
            return EXIT_CONFIG
        changes[key.strip()] = value.strip()
    for key in args.unset or ():
        changes[key] = None
    if not changes:
        print("wmbus-stream config set: nothing to change (KEY=VALUE... or --unset KEY)", file=sys.stderr)
        return EXIT_USAGE
    manager = manager_of(args)
    before = _text_of(manager.config_path)
    entry = manager.set(changes, "local")
    _report_change(manager, before, entry.number)
    return EXIT_OK


def cmd_export(args: argparse.Namespace) -> int:
    """Write the configuration without device-specific keys and secrets (for other gateways)."""
    from ..atomic import write_atomic

    text = manager_of(args).export_text()
    if args.file == "-":
        sys.stdout.write(text)
    else:
        write_atomic(args.file, text, 0o644)
        print(f"exported to {args.file}")
    return EXIT_OK


def cmd_import(args: argparse.Namespace) -> int:
    """Apply an exported configuration; this gateway's device-specific keys stay."""
    try:
        data = sys.stdin.buffer.read(properties.MAX_FILE + 1) if args.file == "-" else properties.read_bytes(args.file)
    except OSError as exc:
        print(f"wmbus-stream config import: cannot read {args.file}: {exc.strerror}", file=sys.stderr)
        return EXIT_FAILURE
    manager = manager_of(args)
    before = _text_of(manager.config_path)
    entry = manager.import_text(data, "import")
    if entry.note and entry.origin == "import" and _text_of(manager.config_path) != before:
        print(entry.note)
    _report_change(manager, before, entry.number)
    return EXIT_OK


def cmd_history(args: argparse.Namespace) -> int:
    """List the applied configurations, newest first (``--show N``: one of them, secrets masked)."""
    manager = manager_of(args)
    if args.show is not None:
        entry = manager.entry(args.show)
        if entry is None:
            print(f"history: invalid value '{args.show}'; allowed: the number of a kept entry", file=sys.stderr)
            return EXIT_CONFIG
        print(f"# configuration #{entry.number}, {entry.iso_time} UTC, {entry.origin}"
              + (f": {entry.note}" if entry.note else ""))
        sys.stdout.write(entry.masked_text)
        return EXIT_OK
    entries = manager.history()
    if not entries:
        print("no configuration recorded yet (the first change records the current file as #1)")
        return EXIT_OK
    print(f"{'#':>4}  {'TIME (UTC)':19}  {'ORIGIN':7}  NOTE")
    for entry in entries:
        print(f"{entry.number:>4}  {entry.iso_time}  {entry.origin:7}  {entry.note}")
    return EXIT_OK


def cmd_revert(args: argparse.Namespace) -> int:
    """Apply history entry N again."""
    manager = manager_of(args)
    before = _text_of(manager.config_path)
    entry = manager.revert(args.number)
    _report_change(manager, before, entry.number)
    return EXIT_OK


def cmd_sync_now(args: argparse.Namespace) -> int:
    """Run one configuration sync; print the result line; exit 0 for 900, 1 otherwise."""
    from ..sync.procedure import SyncResult, run_sync

    logging.basicConfig(level="WARNING", format="%(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    answer = control.request(control.locate(args.config), "sync")
    if answer is not None:
        if "code" not in answer:
            print(f"wmbus-stream sync now: {answer.get('error', 'no answer')}", file=sys.stderr)
            return EXIT_FAILURE
        code, text = int(answer["code"]), str(answer["text"])
    else:
        config = model.load(args.config)
        manager = ConfigManager(args.config, config.state_directory)
        result: SyncResult = run_sync(manager, config)
        code, text, answer = result.code, result.text, result.as_dict()
        _remember(config.state_directory, answer)
    print(text)
    if answer.get("detail"):
        print(f"wmbus-stream sync now: in detail (the server was told only the line above): {answer['detail']}",
              file=sys.stderr)
    if answer.get("notified") is False:
        print(f"wmbus-stream sync now: result not acknowledged by the server: {answer.get('notify_error')}",
              file=sys.stderr)
    return EXIT_OK if code == 900 else EXIT_FAILURE


def _remember(folder: Path, answer: dict[str, object]) -> None:
    """Keep the result for ``status`` when no gateway runs (it reads it at its start)."""
    from ..io.store import Store
    from ..state.backup import STORE_FILE
    from ..sync.runner import LAST_SYNC_META

    try:
        lock = control.take_lock(folder / control.LOCK_FILE)
    except OSError:
        return
    try:
        store = Store.open(folder / STORE_FILE)
        try:
            store.set_meta(LAST_SYNC_META, json.dumps(answer))
        finally:
            store.close(flush=False)
    except WmbusStreamError:
        pass
    finally:
        os.close(lock)


def add_config(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Register ``config`` and its actions."""
    p = sub.add_parser("config", help="configuration: check, show, set, export, import, history, revert, backup, restore")
    csub = p.add_subparsers(dest="config_command", metavar="ACTION")
    c = csub.add_parser("check", help="validate a configuration file (exit 3 when invalid)")
    c.add_argument("file", nargs="?", help=f"the file to check (default: --config, else {DEFAULT_CONFIG})")
    c.add_argument("--config", help="the file to check, as every other command names it")
    c.set_defaults(func=cmd_config_check)

    c = csub.add_parser("show", help="print the configuration, secrets masked")
    with_config(c)
    c.add_argument("--all", action="store_true", help="every key with its effective value and description")
    c.set_defaults(func=cmd_show)

    c = csub.add_parser("set", help="set keys: KEY=VALUE... (validated, atomic, recorded)")
    with_config(c)
    c.add_argument("assignments", nargs="*", metavar="KEY=VALUE")
    c.add_argument("--unset", action="append", metavar="KEY", help="reset KEY to its default (repeatable)")
    c.set_defaults(func=cmd_set)

    c = csub.add_parser("export", help="write the configuration without device-specific keys and secrets")
    with_config(c)
    c.add_argument("file", help="file to write, or - for standard output")
    c.set_defaults(func=cmd_export)

    c = csub.add_parser("import", help="apply an exported configuration (all or nothing)")
    with_config(c)
    c.add_argument("file", help="file to read, or - for standard input")
    c.set_defaults(func=cmd_import)

    c = csub.add_parser("history", help="list the applied configurations")
    with_config(c)
    c.add_argument("--show", type=int, metavar="N", help="print configuration N (secrets masked)")
    c.set_defaults(func=cmd_history)

    c = csub.add_parser("revert", help="apply history entry N again")
    with_config(c)
    c.add_argument("number", type=int, metavar="N")
    c.set_defaults(func=cmd_revert)

    state.add_commands(csub)


def add_sync(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Register ``sync now``."""
    p = sub.add_parser("sync", help="configuration sync from the .cad server: 'sync now'")
    p.add_argument("now", choices=["now"])
    with_config(p)
    p.set_defaults(func=cmd_sync_now)

