"""``push now``, ``status``, ``analyzer`` and ``passwd``: the running gateway through its control socket.

Each finds the gateway running with ``--config`` (``io.control.locate``), even when the file
was edited or broken since it started; ``analyzer`` falls back to the state it saved.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import TYPE_CHECKING

from ..errors import ConfigError
from ..io import control
from .common import DEFAULT_CONFIG, EXIT_FAILURE, EXIT_OK, EXIT_USAGE, load_config

if TYPE_CHECKING:
    from ..config.model import Config
    from ..core.analyzer import Analyzer, Totals

__all__ = ["add_analyzer", "add_passwd", "add_push", "add_status"]


def cmd_push(args: argparse.Namespace) -> int:
    """Push now through the running gateway; say at once when none runs."""
    from ..host import PushOutcome

    state = control.locate(args.config)
    status = control.request(state, "status", timeout=10)
    answer = None
    if status is not None:
        try:  # where to and how often, when the file still says (it may be broken since the start)
            config = load_config(args.config)
            target = (f" to {config.push_endpoint or '(no receiving.server.url)'},"
                      f" up to {config.push_retries + 1} attempts")
        except ConfigError:
            target = ""
        print(f"push now: the running gateway pushes its {status.get('meters_pending', '?')} pending meters{target};"
              " waiting for its answer", file=sys.stderr)
        answer = control.request(state, "push")
    if answer is None:
        print(f"wmbus-stream push now: no gateway is running at {state / control.CONTROL_SOCKET}; nothing was pushed."
              f" Start it (systemctl start wmbus-stream, or wmbus-stream run --config {args.config}) and push"
              " again, or push a capture once with wmbus-stream run --once --config FILE", file=sys.stderr)
        return EXIT_FAILURE
    if "error" in answer and "ok" not in answer:
        print(f"wmbus-stream push now: {answer['error']}", file=sys.stderr)
        return EXIT_FAILURE
    outcome = PushOutcome(**answer)
    print(outcome.summary())
    return EXIT_OK if outcome.ok else EXIT_FAILURE


def cmd_status(args: argparse.Namespace) -> int:
    """Print the running gateway's status as JSON."""
    state = control.locate(args.config)  # the running gateway's answer, even when the file is broken or edited
    answer = control.request(state, "status", timeout=10)
    if answer is None:
        if not os.path.exists(args.config):  # no gateway runs with it, and there is no such file either
            load_config(args.config)  # ConfigFileError: the message names the file and why
        print(f"wmbus-stream status: no gateway is running for {state}", file=sys.stderr)
        return EXIT_FAILURE
    print(json.dumps(answer, indent=2))
    return EXIT_OK


def _analyzer_of(config: Config, config_path: str) -> tuple[Analyzer | None, str | None]:
    """The analyzer of the running gateway, else the one saved in the state, and where it came from."""
    from ..core.analyzer import Analyzer
    from ..app import ANALYZER_META
    from ..state.backup import STORE_FILE

    analyzer = Analyzer(0.0)
    answer = control.request(control.locate(config_path), "analyzer", timeout=10)
    if answer is not None and answer.get("dump"):
        analyzer.load(answer["dump"].encode())
        return analyzer, "the running gateway"
    path = config.state_directory / STORE_FILE
    if path.exists():
        from ..io.store import Store

        store = Store.open(path)
        saved = store.get_meta(ANALYZER_META)
        store.close(flush=False)
        if saved:
            analyzer.load(saved)
            return analyzer, f"the state saved in {config.state_directory} (no gateway is running)"
    return None, None


def cmd_analyzer(args: argparse.Namespace) -> int:
    """Print the analyzer table (or CSV) of the running gateway, else of the saved state."""
    from ..core.analyzer import Analyzer

    config = load_config(args.config)
    analyzer, source = _analyzer_of(config, args.config)
    only = config.show_only_filtered and not args.all
    rows = analyzer.rows(only_allowed=only, allow_ids=config.filter_device_id) if analyzer else []
    if args.csv:
        sys.stdout.write(Analyzer.to_csv(rows))
        return EXIT_OK
    if analyzer is None:
        print(f"no analyzer data yet: no gateway is running for {config.state_directory} and none saved any")
        return EXIT_OK
    print(f"analyzer of {source}")
    print(_format_totals(analyzer.totals()))
    if not rows:
        hidden = only and config.filter_device_id
        print("no meters heard in this period"
              + (" (show.only.filtered=true hides meters outside filter.device.id; --all shows them)" if hidden else ""))
        return EXIT_OK
    print(f"{'ID':8} {'MAN':3} {'TYPE':24} {'VERDICT':20} {'COUNT':>6} {'RSSI':>5} {'MIN':>5} {'AVG':>6} {'MAX':>5} "
          f"{'MODE':5} {'FIRST SEEN':19} LAST SEEN")
    for r in rows:
        print(f"{r.id:8} {r.manufacturer:3} {r.device_type_name[:24]:24} {r.verdict[:20]:20} {r.count:>6} "
              f"{_n(r.rssi_last):>5} {_n(r.rssi_min):>5} {_n(r.rssi_avg, 1):>6} {_n(r.rssi_max):>5} "
              f"{(r.mode or '-'):5} {_when(r.first_seen):19} {_when(r.last_seen)}")
    return EXIT_OK


def _n(value: float | None, digits: int = 0) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def _when(t: float) -> str:
    import datetime as dt

    return dt.datetime.fromtimestamp(t, dt.UTC).strftime("%Y-%m-%d %H:%M:%S")


def _format_totals(totals: Totals) -> str:
    """One line: the period's start, meters found, telegrams ok and broken (by kind)."""
    kinds = ", ".join(f"{kind} {count}" for kind, count in totals.broken_by_kind)
    line = (f"since {_when(totals.running_since)} UTC: {totals.meters_found} meters found, "
            f"{totals.telegrams_ok} telegrams ok, {totals.telegrams_broken} broken" + (f" ({kinds})" if kinds else ""))
    if totals.untracked:
        line += f"; {totals.untracked} telegrams of meters beyond the table's limit"
    return line


def cmd_passwd(args: argparse.Namespace) -> int:
    """Set the web UI's administrator password (salted scrypt hash, mode 0600, in the state directory)."""
    import getpass

    from ..web.auth import DEFAULT_USER, generate_password, password_problem, write_password

    state = control.locate(args.config)  # where the running gateway's web UI reads it
    if control.request(state, "identity", timeout=10) is None:  # none runs: the file must be valid
        state = load_config(args.config).state_directory
    user = args.user or DEFAULT_USER
    if args.random:
        password = generate_password()
    elif args.stdin:
        password = sys.stdin.readline().rstrip("\r\n")
    elif sys.stdin.isatty():
        password = getpass.getpass(f"New password for {user}: ")
        if getpass.getpass("Again: ") != password:
            print("wmbus-stream passwd: the two passwords differ; nothing changed", file=sys.stderr)
            return EXIT_FAILURE
    else:
        print("wmbus-stream passwd: no terminal; use --stdin or --random", file=sys.stderr)
        return EXIT_USAGE
    problem = password_problem(user, password)
    if problem:
        print(f"wmbus-stream passwd: {problem}; nothing changed", file=sys.stderr)
        return EXIT_FAILURE
    try:
        path = write_password(state, user, password)
    except OSError as exc:
        print(f"wmbus-stream passwd: cannot write to {state}: {exc.strerror}", file=sys.stderr)
        return EXIT_FAILURE
    owner = state.stat()
    if os.geteuid() == 0 and (owner.st_uid, owner.st_gid) != (0, 0):
        os.chown(path, owner.st_uid, owner.st_gid)  # the service user must be able to read it
    if args.random:
        print(f"web UI user {user}, password {password}  (shown once; not stored in clear anywhere)")
    print(f"password for {user} set in {path}; open sessions end at once", file=sys.stderr)
    return EXIT_OK


def add_push(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Register ``push now``."""
    p = sub.add_parser("push", help="push now: 'push now'")
    p.add_argument("now", choices=["now"])
    p.add_argument("--config", default=DEFAULT_CONFIG)
    p.set_defaults(func=cmd_push)


def add_status(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Register ``status``."""
    p = sub.add_parser("status", help="status of the running gateway as JSON")
    p.add_argument("--config", default=DEFAULT_CONFIG)
    p.set_defaults(func=cmd_status)


def add_analyzer(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Register ``analyzer``."""
    p = sub.add_parser("analyzer", help="per-meter statistics (table or --csv)")
    p.add_argument("--config", default=DEFAULT_CONFIG)
    p.add_argument("--csv", action="store_true", help="CSV for a spreadsheet (formula cells escaped)")
    p.add_argument("--all", action="store_true", help="all meters, even when show.only.filtered=true")
    p.set_defaults(func=cmd_analyzer)


def add_passwd(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Register ``passwd``."""
    p = sub.add_parser("passwd", help="set the web UI administrator password")
    p.add_argument("--config", default=DEFAULT_CONFIG)
    p.add_argument("--user", help="administrator user name (default admin)")
    how = p.add_mutually_exclusive_group()
    how.add_argument("--random", action="store_true", help="generate a random password and print it once")
    how.add_argument("--stdin", action="store_true", help="read the password from the first line of standard input")
    p.set_defaults(func=cmd_passwd)
