"""The ``wmbus-stream`` command line: one sub-command per job, documented exit codes.

Exit codes: 0 ok, 1 failure (file, server, push), 2 usage, 3 invalid configuration.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
from collections.abc import Sequence

from . import __version__, implementation
from .errors import ConfigError, ConfigFileError, FrameError, WmbusStreamError

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


def _positive(text: str) -> int:
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number of at least 1")
    return int(text)


def _open_input(path: str):
    return sys.stdin.buffer if path == "-" else open(path, "rb")  # noqa: SIM115


def cmd_decode(args: argparse.Namespace) -> int:
    """Decode a capture: one JSON object a line per frame found, then a summary on stderr."""
    from .core.check import broken_json, check
    from .receivers import framer

    try:
        source = _open_input(args.file)
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
        from .receivers import SIMULATOR, names

        others = ", ".join(name for name in names() if name not in (protocol, SIMULATOR))
        line += f"; no good {protocol} frame found: is --protocol right? (the others: {others})"
    return line


def cmd_bench(args: argparse.Namespace) -> int:
    """CPU per telegram of the daemon's receive path, compiled and pure, against the C CRC loop."""
    from . import bench

    if args.service:
        return _bench_service(args)
    result = bench.run(frames=args.frames, as_json=args.json)
    if args.json:
        print(json.dumps(result, indent=2))
    return EXIT_OK


def _bench_service(args: argparse.Namespace) -> int:
    """Pipeline (both twins), push of 100,000 meters, store memory, idle CPU of ``run``."""
    import subprocess

    from . import bench_service

    result = {"pipeline": [bench_service.pipeline()]}
    if implementation() == "compiled":
        env = dict(os.environ, WMBUS_STREAM_NO_EXTENSIONS="1")
        code = "import json; from wmbus_stream import bench_service; print(json.dumps(bench_service.pipeline(100_000)))"
        out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
        result["pipeline"].append(json.loads(out.stdout))
    result["push"] = bench_service.push()
    result["memory"] = bench_service.memory()
    result["idle"] = bench_service.idle()
    if args.json:
        print(json.dumps(result, indent=2))
        return EXIT_OK
    for row in result["pipeline"]:
        print(f"pipeline ({row['implementation']}): {row['telegrams_per_s']:,} telegrams/s from a cmex50 stream to the"
              f" store ({row['telegrams']:,} telegrams, {row['meters']:,} meters; flush {row['flush_seconds']} s)")
    p = result["push"]
    print(f"push: {p['meters']:,} meters, {p['body_bytes']:,} bytes, snapshot + report + POST + ack in {p['seconds']} s")
    print(f"store memory: {result['memory']['bytes_per_meter_beyond_telegram']} bytes per meter beyond the telegram")
    print(f"idle: {result['idle']['cpu_percent_of_one_core']} % of one core over {result['idle']['seconds']:.0f} s")
    return EXIT_OK


def _load_config(path: str):
    from .config import model

    return model.load(path)


def cmd_config_check(args: argparse.Namespace) -> int:
    """Validate a configuration file: exit 0 (valid, on stdout) or 3 (one line per problem on stderr)."""
    from .config import model

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


def _baud_in_effect(config) -> str:
    """Which serial speed the receiver is opened at, and whether the file or the protocol's default chose it."""
    if "usb.baud.rate" in config.explicit:
        return f"usb.baud.rate {config.baud_rate} Bd: set in the file"
    return (f"usb.baud.rate {config.baud_rate} Bd: the default for receiver.protocol={config.receiver_protocol}"
            " (set usb.baud.rate for another speed)")


def _setup_logging(level: str = "info") -> None:
    import logging

    fmt = "%(levelname)s %(name)s: %(message)s"
    if sys.stderr.isatty() or not os.environ.get("JOURNAL_STREAM"):
        fmt = "%(asctime)s " + fmt
    logging.basicConfig(level=level.upper(), format=fmt, stream=sys.stderr)


def cmd_run(args: argparse.Namespace) -> int:
    """Run the gateway until SIGTERM (or once: capture to its end, one push)."""
    from .config import model
    from .service import Gateway

    config = model.require(_load_config(args.config))
    _setup_logging(config.log_level)
    return Gateway(config, args.config).run(once=args.once)


def cmd_push(args: argparse.Namespace) -> int:
    """Push now through the running gateway; say at once when none runs."""
    from .service import CONTROL_SOCKET, PushOutcome, control_request, locate

    state = locate(args.config)
    status = control_request(state, "status", timeout=10)
    answer = None
    if status is not None:
        try:  # where to and how often, when the file still says (it may be broken since the start)
            config = _load_config(args.config)
            target = (f" to {config.push_endpoint or '(no receiving.server.url)'},"
                      f" up to {config.push_retries + 1} attempts")
        except ConfigError:
            target = ""
        print(f"push now: the running gateway pushes its {status.get('meters_pending', '?')} pending meters{target};"
              " waiting for its answer", file=sys.stderr)
        answer = control_request(state, "push")
    if answer is None:
        print(f"wmbus-stream push now: no gateway is running at {state / CONTROL_SOCKET}; nothing was pushed."
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
    from .service import control_request, locate

    state = locate(args.config)  # the running gateway's answer, even when the file is broken or edited
    answer = control_request(state, "status", timeout=10)
    if answer is None:
        if not os.path.exists(args.config):  # no gateway runs with it, and there is no such file either
            _load_config(args.config)  # ConfigFileError: the message names the file and why
        print(f"wmbus-stream status: no gateway is running for {state}", file=sys.stderr)
        return EXIT_FAILURE
    print(json.dumps(answer, indent=2))
    return EXIT_OK


def _analyzer_of(config, config_path: str):
    """The analyzer of the running gateway, else the one saved in the state, and where it came from."""
    from .core.analyzer import Analyzer
    from .service import ANALYZER_META, STORE_FILE, control_request, locate

    analyzer = Analyzer(0.0)
    answer = control_request(locate(config_path), "analyzer", timeout=10)
    if answer is not None and answer.get("dump"):
        analyzer.load(answer["dump"].encode())
        return analyzer, "the running gateway"
    path = config.state_directory / STORE_FILE
    if path.exists():
        from .core.store import Store

        store = Store.open(path)
        saved = store.get_meta(ANALYZER_META)
        store.close(flush=False)
        if saved:
            analyzer.load(saved)
            return analyzer, f"the state saved in {config.state_directory} (no gateway is running)"
    return None, None


def cmd_analyzer(args: argparse.Namespace) -> int:
    """Print the analyzer table (or CSV) of the running gateway, else of the saved state."""
    from .core.analyzer import Analyzer

    config = _load_config(args.config)
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


def _n(value, digits: int = 0) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def _when(t: float) -> str:
    import datetime as dt

    return dt.datetime.fromtimestamp(t, dt.timezone.utc).strftime("%Y-%m-%d %H:%M:%S")


def _format_totals(totals) -> str:
    """One line: the period's start, meters found, telegrams ok and broken (by kind)."""
    kinds = ", ".join(f"{kind} {count}" for kind, count in totals.broken_by_kind)
    line = (f"since {_when(totals.running_since)} UTC: {totals.meters_found} meters found, "
            f"{totals.telegrams_ok} telegrams ok, {totals.telegrams_broken} broken" + (f" ({kinds})" if kinds else ""))
    if totals.untracked:
        line += f"; {totals.untracked} telegrams of meters beyond the table's limit"
    return line


def cmd_replay(args: argparse.Namespace) -> int:
    """Run a capture through the configured pipeline; print (or push) the report it gives."""
    import tempfile

    from .core import report
    from .core.analyzer import Analyzer
    from .core.pipeline import Pipeline
    from .core.store import Store
    from .receivers import framer
    from .service import settings_of

    config = _load_config(args.config)
    _setup_logging("warning")
    reader = framer(config.receiver_protocol if config.receiver_protocol != "simulator" else "hex",
                    receiver_address=config.receiver_address)
    try:
        source = _open_input(args.capture)
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
            from .io.push import push
            from .service import user_agent

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


def cmd_receive(args: argparse.Namespace) -> int:
    """Run the reference HES receiving server."""
    from . import hes

    _setup_logging("info")
    return hes.main(args)


def cmd_demo(args: argparse.Namespace) -> int:
    """The demo gateway: simulator, pushes every 10 s, a local receiving server."""
    from . import demo

    _setup_logging("warning")
    return demo.main(args)


def cmd_systemd_unit(args: argparse.Namespace) -> int:
    """Print the systemd unit, its ExecStart pointing at this installation."""
    from importlib.resources import files

    unit = files("wmbus_stream").joinpath("data/wmbus-stream.service").read_text()
    exe = os.path.join(os.path.dirname(sys.executable), "wmbus-stream")
    sys.stdout.write(unit.replace("/opt/wmbus-stream/bin/wmbus-stream", exe))
    return EXIT_OK


def cmd_passwd(args: argparse.Namespace) -> int:
    """Set the web UI's administrator password (salted scrypt hash, mode 0600, in the state directory)."""
    import getpass

    from .web.auth import DEFAULT_USER, generate_password, password_problem, write_password

    from .service import control_request, locate

    state = locate(args.config)  # where the running gateway's web UI reads it
    if control_request(state, "identity", timeout=10) is None:  # none runs: the file must be valid
        state = _load_config(args.config).state_directory
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


def build_parser() -> argparse.ArgumentParser:
    from .receivers import names as receiver_names

    parser = argparse.ArgumentParser(prog="wmbus-stream", description="Wireless M-Bus stream-mode gateway")
    parser.add_argument("--version", action="version", version=f"wmbus-stream {__version__} {implementation()}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    p = sub.add_parser("decode", help="decode receiver bytes to JSON lines, one per telegram")
    p.add_argument("--protocol", default="hex", choices=receiver_names(), metavar="PROTOCOL",
                   help=f"receiver protocol: {', '.join(receiver_names())} (default hex)")
    p.add_argument("--receiver-address", type=_address, help="8-digit address for the 0C 78 record")
    p.add_argument("--wired-address", type=_wired_address, default=0, help="wired M-Bus address A (default 0)")
    p.add_argument("file", nargs="?", default="-", help="capture file, or - for standard input")
    p.set_defaults(func=cmd_decode)

    p = sub.add_parser("bench", help="CPU per telegram of the receive path (cmex50 bytes -> store), compiled and pure")
    p.add_argument("--frames", type=_positive, default=200_000, help="telegrams to time (default 200000)")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.add_argument("--service", action="store_true", help="service benchmarks: pipeline, push, memory, idle CPU")
    p.set_defaults(func=cmd_bench)

    from .config.commands import add_config_commands, add_sync_command

    p = sub.add_parser("config", help="configuration: check, show, set, export, import, history, revert, backup, restore")
    csub = p.add_subparsers(dest="config_command", metavar="ACTION")
    c = csub.add_parser("check", help="validate a configuration file (exit 3 when invalid)")
    c.add_argument("file", nargs="?", help=f"the file to check (default: --config, else {DEFAULT_CONFIG})")
    c.add_argument("--config", help="the file to check, as every other command names it")
    c.set_defaults(func=cmd_config_check)
    add_config_commands(csub)
    add_sync_command(sub)

    p = sub.add_parser("run", help="run the gateway")
    p.add_argument("--config", default=DEFAULT_CONFIG, help=f"configuration file (default {DEFAULT_CONFIG})")
    p.add_argument("--once", action="store_true", help="read the receiver (a capture to its end), push once, exit")
    p.set_defaults(func=cmd_run)

    p = sub.add_parser("push", help="push now: 'push now'")
    p.add_argument("now", choices=["now"])
    p.add_argument("--config", default=DEFAULT_CONFIG)
    p.set_defaults(func=cmd_push)

    p = sub.add_parser("status", help="status of the running gateway as JSON")
    p.add_argument("--config", default=DEFAULT_CONFIG)
    p.set_defaults(func=cmd_status)

    p = sub.add_parser("analyzer", help="per-meter statistics (table or --csv)")
    p.add_argument("--config", default=DEFAULT_CONFIG)
    p.add_argument("--csv", action="store_true", help="CSV for a spreadsheet (formula cells escaped)")
    p.add_argument("--all", action="store_true", help="all meters, even when show.only.filtered=true")
    p.set_defaults(func=cmd_analyzer)

    p = sub.add_parser("replay", help="run a capture through the pipeline; print or push the report")
    p.add_argument("--config", default=DEFAULT_CONFIG)
    p.add_argument("capture", help="capture file in the configured receiver protocol, or -")
    p.add_argument("--report", default="-", help="where to write the report (default - = stdout)")
    p.add_argument("--push", action="store_true", help="push the report to receiving.server.url instead")
    p.set_defaults(func=cmd_replay)

    p = sub.add_parser("receive", help="reference HES receiving server")
    from . import hes

    hes.add_arguments(p)
    p.set_defaults(func=cmd_receive)

    p = sub.add_parser("systemd-unit", help="print the systemd unit for this installation")
    p.set_defaults(func=cmd_systemd_unit)

    p = sub.add_parser("passwd", help="set the web UI administrator password")
    p.add_argument("--config", default=DEFAULT_CONFIG)
    p.add_argument("--user", help="administrator user name (default admin)")
    how = p.add_mutually_exclusive_group()
    how.add_argument("--random", action="store_true", help="generate a random password and print it once")
    how.add_argument("--stdin", action="store_true", help="read the password from the first line of standard input")
    p.set_defaults(func=cmd_passwd)

    p = sub.add_parser("demo", help="demo gateway with simulator and local receiving server")
    p.add_argument("--meters", type=_positive, default=300, help="simulated meters (default 300)")
    p.add_argument("--seconds", type=float, default=0, help="stop after this many seconds (0 = until Ctrl-C)")
    p.set_defaults(func=cmd_demo)
    return parser


def _command_name(args: argparse.Namespace) -> str:
    """The command words of ``args`` (``config set``), for error lines."""
    words = [getattr(args, "command", None), getattr(args, "config_command", None)]
    return " ".join(w for w in words if isinstance(w, str))


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the console script."""
    from . import _signals

    _signals.hold()  # first thing: a SIGHUP while the gateway starts must not kill it
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit:  # --help, --version, a usage error
        _signals.release()
        raise
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
