"""``wmbus-stream receive``: the reference HES's command line."""

from __future__ import annotations

import argparse
import contextlib
import json
import signal
import sqlite3
import ssl
import sys
import threading
from pathlib import Path
from urllib.parse import quote
from datetime import datetime, timedelta
from typing import Any

from ..errors import HesError, WmbusStreamError
from . import coverage
from .credentials import GatewayFile
from .edge import DEFAULT_MAX_BODY, DEFAULT_MAX_CONNECTIONS, PostSummary, ReceiveServer, check_credentials, split_listen
from .postgres import PostgresStore, is_postgres_url, masked
from .sqlite import SqliteStore
from .publish import Publisher, parse_mqtt_url
from .store import Store

__all__ = ["add_arguments", "coverage_main", "describe_store", "main", "open_store"]


def open_store(where: str | None, *, outbox: bool = False) -> Store:
    """The store ``--db`` names: a PostgreSQL URL, an SQLite file, or memory for None; ``outbox`` queues new readings for MQTT."""
    if is_postgres_url(where):
        assert where is not None
        return PostgresStore(where, outbox=outbox)
    return SqliteStore(where or ":memory:", outbox=outbox)


def describe_store(where: str | None) -> str:
    """``--db`` as the banner and errors name it (a URL's password masked)."""
    if is_postgres_url(where):
        assert where is not None
        return f"PostgreSQL {masked(where)}"
    return f"SQLite {where}" if where else "memory only (use --db to keep them)"


def db_option(text: str) -> str:
    """``--db`` checked when the options are parsed: a URL of another scheme is a usage error, not a file name."""
    scheme, sep, _ = text.partition("://")
    if sep and not is_postgres_url(text):
        raise argparse.ArgumentTypeError(
            f"{scheme}:// is not a store this receiver knows; give an SQLite file path or a postgresql:// (postgres://) URL")
    return text


def _listen_option(text: str) -> str:
    """``--listen`` checked when the options are parsed, so a bad address is a usage error (exit 2)."""
    try:
        split_listen(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not HOST:PORT, [IPv6]:PORT or PORT") from None
    return text


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``wmbus-stream receive``."""
    parser.add_argument("--listen", default="127.0.0.1:8081", metavar="HOST:PORT", type=_listen_option,
                        help="address to listen on (default 127.0.0.1:8081; [::]:PORT for IPv6)")
    parser.add_argument("--db", metavar="FILE|URL", type=db_option,
                        help="where readings go: an SQLite file, or postgresql://USER:PASSWORD@HOST:PORT/DB for several"
                             " receivers on one database (needs pip install 'wmbus-stream[hes]'; default: in memory only)")
    parser.add_argument("--gateways", metavar="FILE", type=Path,
                        help="per-gateway credentials (written by 'receive credentials add'): each gateway pushes as"
                             " its serial and may report only its own lines")
    parser.add_argument("--username", help="one basic-auth user all gateways push as (instead of --gateways)")
    secret = parser.add_mutually_exclusive_group()
    secret.add_argument("--password", help="basic-auth password (visible in ps; prefer --password-file)")
    secret.add_argument("--password-file", metavar="FILE", help="file whose first line is the password")
    parser.add_argument("--no-auth", action="store_true",
                        help="accept reports without credentials from anyone who can reach the port")
    parser.add_argument("--tls-cert", metavar="FILE", help="serve HTTPS with this certificate (PEM, chain)")
    parser.add_argument("--tls-key", metavar="FILE", help="private key of --tls-cert (if not in the same file)")
    parser.add_argument("--path", default=None, help="accept reports only at this path (default: any path)")
    parser.add_argument("--max-body-mib", type=int, default=DEFAULT_MAX_BODY // (1024 * 1024), metavar="MIB",
                        help="largest accepted body in MiB (default 256)")
    parser.add_argument("--max-connections", type=int, default=DEFAULT_MAX_CONNECTIONS, metavar="N",
                        help=f"connections served at once; more are answered 503 (default {DEFAULT_MAX_CONNECTIONS})")
    parser.add_argument("--max-per-address", type=int, default=None, metavar="N",
                        help="connections one client address (an IPv6 /64) may hold at once; more are answered 503"
                             " (default half of --max-connections; behind a proxy, every client is the proxy)")
    parser.add_argument("--ok-status", type=int, choices=(200, 204), default=204,
                        help="status of an accepted POST (default 204)")
    _add_mqtt_arguments(parser)
    actions = parser.add_subparsers(dest="action", title="other actions (without one, the server runs)")
    add_credentials(actions)
    add_coverage(actions)


def add_credentials(actions: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """``receive credentials add|remove|list``: the per-gateway credentials file."""
    p = actions.add_parser("credentials", help="add, remove or list gateways of a --gateways file")
    verbs = p.add_subparsers(dest="verb", required=True)
    for verb, what in (("add", "add a gateway (or give it a new password) and print its password once"),
                       ("remove", "remove a gateway"), ("list", "list the gateways")):
        q = verbs.add_parser(verb, help=what)
        q.add_argument("--gateways", metavar="FILE", type=Path, required=True, help="the credentials file")
        if verb != "list":
            q.add_argument("serial", help="the gateway's serial (8 digits), the user name it pushes as")
        if verb == "add":
            q.add_argument("--password-file", metavar="FILE",
                           help="take the password (16 characters or more) from this file's first line"
                                " instead of generating one")


def credentials_main(args: argparse.Namespace) -> int:
    """Change or list a gateways file; 0 done, 1 a file failed, 2 a bad serial, password or file line."""
    try:
        store = GatewayFile(args.gateways)
        if args.verb == "list":
            for serial in store.serials():
                print(serial)
            return 0
        if args.verb == "remove":
            if not store.remove(args.serial):
                print(f"wmbus-stream receive credentials: gateway {args.serial} is not in {args.gateways}",
                      file=sys.stderr)
                return 1
            print(f"removed gateway {args.serial}; a running receiver refuses it within a second")
            return 0
        given = None
        if args.password_file:
            given = _first_line(args.password_file)
        password = store.add(args.serial, given)
    except HesError as exc:
        print(f"wmbus-stream receive credentials: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:
        print(f"wmbus-stream receive credentials: cannot use {exc.filename}: {exc.strerror or exc}", file=sys.stderr)
        return 1
    if given is None:
        print(f"gateway {args.serial}: user {args.serial}, password {password}")
        print("set these as the gateway's HES user name and password; the password is shown only now")
    else:
        print(f"gateway {args.serial}: password taken from {args.password_file}")
    return 0


def _first_line(path: str) -> str:
    """A password file's first line without its line break; HesError when it is empty or not UTF-8."""
    with open(path, "rb") as handle:
        first = handle.readline()
    try:
        password = first.decode("utf-8").rstrip("\r\n")
    except UnicodeDecodeError:
        raise HesError(f"--password-file {path}: the first line is not UTF-8 text") from None
    if not password.strip():
        raise HesError(f"--password-file {path} holds no password on its first line (it is empty or blank);"
                       " write the password there")
    return password


# -- MQTT fan-out (hes.publish) ----------------------------------------------------------------

def _add_mqtt_arguments(parser: argparse.ArgumentParser) -> None:
    """``--mqtt`` and ``--mqtt-ca``: publish each new reading to a broker."""
    parser.add_argument("--mqtt", metavar="URL",
                        help="publish each new reading (QoS 1) to this broker: mqtt://[user:pass@]host[:port][/prefix]"
                             " or mqtts://... for TLS (default prefix wmbus; needs pip install 'wmbus-stream[hes]')")
    parser.add_argument("--mqtt-ca", metavar="FILE", help="CA certificate(s) (PEM) that sign an mqtts:// broker's certificate")


def _publisher(args: argparse.Namespace, store: Store) -> Publisher | None:
    """The MQTT publisher ``--mqtt`` asks for (not started yet); None without it."""
    if not args.mqtt:
        return None

    def report(text: str) -> None:
        print(f"{datetime.now().strftime('%Y-%m-%d %H:%M:%S')} {text}", file=sys.stderr, flush=True)

    return Publisher(store, args.mqtt, ca_file=args.mqtt_ca, report=report)


def main(args: argparse.Namespace) -> int:
    """Run the receiving server until SIGINT/SIGTERM; 0 on a clean stop, 1 on failure (a file, the address), 2 on bad options."""
    if args.action == "credentials":
        return credentials_main(args)
    if args.action == "coverage":
        return coverage_main(args)
    credentials = None
    try:
        host, port = split_listen(args.listen)
        password = _first_line(args.password_file) if args.password_file else args.password
        if (args.username is None) != (password is None):
            raise ValueError("--username and --password (or --password-file) go together")
        check_credentials(args.username, password)
        if args.no_auth and (args.username is not None or args.gateways is not None):
            raise ValueError("--no-auth and --username or --gateways exclude each other")
        if args.gateways is not None and args.username is not None:
            raise ValueError("--gateways (a credential per gateway) and --username (one for all) exclude each other")
        if args.username is None and args.gateways is None and not args.no_auth:
            raise ValueError(
                "refusing to start without authentication: give --gateways FILE (per-gateway credentials), or"
                " --username and --password-file, or --no-auth to accept reports from anyone who can reach the port")
        if args.max_body_mib > 4096:
            raise ValueError("--max-body-mib may be at most 4096 (a report of 1,000,000 meters is about 250 MiB)")
        if args.gateways is not None:
            if not args.gateways.is_file():
                print(f"wmbus-stream receive: --gateways {args.gateways} is not a file; make it with"
                      f" 'wmbus-stream receive credentials add SERIAL --gateways {args.gateways}'", file=sys.stderr)
                return 1
            credentials = GatewayFile(args.gateways)
            if not credentials.serials():
                print(f"wmbus-stream receive: warning: {args.gateways} lists no gateway yet: every push is refused 401"
                      " until one is added with 'receive credentials add'", file=sys.stderr)
        if args.tls_key and not args.tls_cert:
            raise ValueError("--tls-key needs --tls-cert")
        if args.max_body_mib < 1:
            raise ValueError("--max-body-mib must be at least 1")
        if args.max_connections < 1:
            raise ValueError("--max-connections must be at least 1")
        if args.max_per_address is not None and not 1 <= args.max_per_address <= args.max_connections:
            raise ValueError(f"--max-per-address must be 1 to --max-connections ({args.max_connections})")
        if args.path is not None and not args.path.startswith("/"):
            raise ValueError("--path must start with '/'")
        mqtt = parse_mqtt_url(args.mqtt) if args.mqtt else None
        if args.mqtt_ca and (mqtt is None or not mqtt.tls):
            raise ValueError("--mqtt-ca needs --mqtt with an mqtts:// URL")
    except ValueError as exc:
        print(f"wmbus-stream receive: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:
        print(f"wmbus-stream receive: cannot read {exc.filename}: {exc.strerror or exc}", file=sys.stderr)
        return 1
    try:
        store = open_store(args.db, outbox=mqtt is not None)
    except (OSError, sqlite3.Error) as exc:
        if is_postgres_url(args.db):  # the message names the URL, its password masked
            print(f"wmbus-stream receive: {exc}", file=sys.stderr)
        else:
            print(f"wmbus-stream receive: cannot open {args.db}: {exc}", file=sys.stderr)
        return 1
    try:
        publisher = _publisher(args, store)
    except (ValueError, WmbusStreamError) as exc:  # paho missing, the CA file
        store.close()
        print(f"wmbus-stream receive: {exc}", file=sys.stderr)
        return 1

    def show(post: PostSummary) -> None:
        stamp = datetime.now().strftime("%Y-%m-%d %H:%M:%S")
        if post.error is None:
            who = ",".join(post.gateways) or "-"
            print(f"{stamp} {post.client} POST {post.path}: {post.lines} lines, {post.new_readings} new readings,"
                  f" gateway {who}", flush=True)
        else:
            print(f"{stamp} {post.client} POST {post.path}: refused {post.status}: {post.error}", file=sys.stderr, flush=True)

    try:
        server = ReceiveServer(
            host, port, store=store, username=args.username, password=password, credentials=credentials,
            tls_cert=args.tls_cert,
            tls_key=args.tls_key, path=args.path, max_body=args.max_body_mib * 1024 * 1024,
            max_connections=args.max_connections, per_address=args.max_per_address, ok_status=args.ok_status, on_post=show,
            on_commit=None if publisher is None else lambda _new: publisher.wake(),
        )
    except (ValueError, OSError, ssl.SSLError) as exc:  # the certificate or key files
        store.close()
        files = " and ".join(f for f in (args.tls_cert, args.tls_key) if f)
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        print(f"wmbus-stream receive: cannot use the TLS certificate {files}: {reason}"
              " (give PEM files: the certificate chain, and its key unless it is in the same file)", file=sys.stderr)
        return 1
    try:
        server.start()
    except OSError as exc:
        store.close()
        print(f"wmbus-stream receive: cannot listen on {args.listen}: {exc.strerror or exc}", file=sys.stderr)
        return 1
    where = describe_store(args.db)
    if credentials is not None:
        auth = f"per-gateway credentials of {args.gateways}"
    elif args.username:
        auth = "basic auth"
    else:
        auth = "NO AUTHENTICATION: anyone who can reach the port can post reports"
    if publisher is not None:
        publisher.start()
        where += f", new ones published to MQTT {publisher.target.display}"
    print(f"receiving reports on {server.url} ({auth}); readings stored in {where}", flush=True)

    stop = threading.Event()
    previous: dict[signal.Signals, Any] = {}
    for signum in (signal.SIGTERM, signal.SIGINT):
        with contextlib.suppress(ValueError):  # not in the main thread
            previous[signum] = signal.signal(signum, lambda *_: stop.set())
    try:
        while not stop.wait(0.5):
            pass
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
        # The publisher's grace for PUBACKs runs beside the server's for its requests, not after it.
        closing = threading.Thread(target=publisher.stop, name="mqtt-stop") if publisher is not None else None
        if closing is not None:
            closing.start()
        server.stop()
        if closing is not None:
            closing.join()
        store.close()
    stats = server.stats
    by_status = "".join(f"{', ' if i else ' ('}{status}: {count}" for i, (status, count) in enumerate(stats.refused))
    print(f"stopped: {stats.posts} POSTs, {stats.lines} lines, {stats.readings} new readings, {stats.rejected} refused"
          f"{by_status + ')' if by_status else ''}, {stats.busy} connections turned away as busy", flush=True)
    if publisher is not None:
        print(f"MQTT: {publisher.published_count} readings published; the unpublished stay in the outbox", flush=True)
    return 0



# ---------------------------------------------------------------------------------------------
# receive coverage: the planning figure, from the receptions a store holds

_STAMP_FORMAT = "%Y-%m-%d %H:%M:%S"


def _duration_option(text: str) -> int:
    """``--resolution`` / ``--window``: 15m, 1h, 24h, 7d (a usage error otherwise)."""
    try:
        return coverage.parse_duration(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _gateways_option(text: str) -> int:
    """``--min-gateways``: a whole number, 1 or more."""
    if not text.isascii() or not text.isdigit() or not 1 <= int(text) <= 10_000:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of gateways: give a whole number, 1 to 10000")
    return int(text)


def _percent_option(text: str) -> float:
    """``--min-reception``: a percentage 0 to 100 (``98``, ``99.5``, ``98%``)."""
    try:
        value = float(text.removesuffix("%"))
    except ValueError:
        value = -1.0
    if not 0 <= value <= 100:  # also NaN
        raise argparse.ArgumentTypeError(f"{text!r} is not a percentage: give a number 0 to 100 (98, 99.5)")
    return value


def _until_option(text: str) -> str:
    """``--until``: a gateway's stamp ``YYYY-MM-DD hh:mm:ss``."""
    try:
        coverage.stamp_seconds(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    return text


def add_coverage(actions: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """``receive coverage``: the meters below a redundancy or reception threshold."""
    p = actions.add_parser(
        "coverage", help="meters heard by too few gateways or in too few intervals, from a --db's receptions",
        description="Per meter: the gateways that heard it in the window, the best RSSI of each, and the share of"
                    " intervals of --resolution with at least one reading; lists the meters below a threshold"
                    " (and why), then per gateway the meters only it hears, then a summary.")
    p.add_argument("--db", metavar="FILE|URL", type=db_option, required=True, help="the store the receiver writes (SQLite file or URL)")
    p.add_argument("--resolution", type=_duration_option, default=15 * 60, metavar="DURATION",
                   help="interval a reading is wanted in: 15m, 1h, 24h, ... (default 15m)")
    p.add_argument("--window", type=_duration_option, default=7 * 86400, metavar="DURATION",
                   help="how far back from --until: 24h, 7d, ... (default 7d; a whole number of --resolution)")
    p.add_argument("--until", type=_until_option, metavar="'YYYY-MM-DD hh:mm:ss'",
                   help="end of the window, excluded, in the gateways' local time (default: now)")
    p.add_argument("--min-gateways", type=_gateways_option, default=coverage.DEFAULT_MIN_GATEWAYS, metavar="N",
                   help=f"gateways every meter should be heard by (default {coverage.DEFAULT_MIN_GATEWAYS})")
    p.add_argument("--min-reception", type=_percent_option, default=coverage.DEFAULT_MIN_RECEPTION, metavar="PCT",
                   help=f"percent of intervals that should hold a reading (default {coverage.DEFAULT_MIN_RECEPTION:g})")
    p.add_argument("--all", action="store_true", help="list every meter heard, not only those below a threshold")
    p.add_argument("--json", action="store_true", help="one JSON document instead of text")
    p.set_defaults(func=coverage_main)


def _is_receiver_file(path: str) -> bool:
    """Whether an SQLite file holds the receiver's tables, read without changing it (coverage never makes them)."""
    try:
        with contextlib.closing(sqlite3.connect(f"file:{quote(str(Path(path).resolve()))}?mode=ro", uri=True)) as db:
            return db.execute("SELECT 1 FROM sqlite_master WHERE name = 'heard_by'").fetchone() is not None
    except sqlite3.Error:
        return False


def coverage_main(args: argparse.Namespace) -> int:
    """Print the coverage report; 0 done (whatever it finds), 1 the store cannot be read, 2 bad options."""
    name = "wmbus-stream receive coverage"
    if args.resolution > args.window:
        print(f"{name}: --resolution {coverage.format_duration(args.resolution)} is longer than --window"
              f" {coverage.format_duration(args.window)}: give a resolution up to the window", file=sys.stderr)
        return 2
    if args.window % args.resolution:
        print(f"{name}: --window {coverage.format_duration(args.window)} is not a whole number of --resolution"
              f" {coverage.format_duration(args.resolution)}: give a resolution that divides the window (15m, 1h, 24h)",
              file=sys.stderr)
        return 2
    until = args.until or datetime.now().strftime(_STAMP_FORMAT)
    try:
        since = (datetime.strptime(until, _STAMP_FORMAT) - timedelta(seconds=args.window)).strftime(_STAMP_FORMAT)
        coverage.intervals_in(since, until, args.resolution)  # checked before the store opens
    except OverflowError:
        print(f"{name}: --until {until} minus --window {coverage.format_duration(args.window)} reaches before the"
              " year 1: give a later --until or a shorter --window", file=sys.stderr)
        return 2
    except ValueError as exc:
        reason = ("--until minus --window reaches before the year 1: give a later --until or a shorter --window"
                  if "out of range" in str(exc) else str(exc))
        print(f"{name}: {reason}", file=sys.stderr)
        return 2
    if "://" not in args.db and not Path(args.db).is_file():
        print(f"{name}: cannot open {args.db}: no such file (give the --db the receiver writes)", file=sys.stderr)
        return 1
    if "://" not in args.db and not _is_receiver_file(args.db):
        print(f"{name}: {args.db} is not a receiver's database (no heard_by table); give the --db the receiver"
              " writes", file=sys.stderr)
        return 1
    try:
        store = open_store(args.db)
        try:
            report = coverage.compute(store.receptions(since, until), since, until, args.resolution,
                                      min_gateways=args.min_gateways, min_reception=args.min_reception)
        finally:
            store.close()
    except (OSError, sqlite3.Error, WmbusStreamError) as exc:
        where = "the --db database" if "://" in args.db else args.db  # a URL may hold a password
        print(f"{name}: cannot read {where}: {exc}", file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps(coverage.report_json(report, args.all), indent=1))
    else:
        print("\n".join(coverage.report_lines(report, args.all)))
    return 0
