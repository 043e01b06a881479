"""Servers and snapshots for the fleet tests: the documented nginx .cad server, a result receiver,
a dripping server, hostile backup archives and before/after snapshots of a gateway.

The .cad server is ``docs/examples/nginx-cad.conf`` itself, its example paths and ports
replaced by the test's, inside a minimal nginx main configuration; test-only server blocks
are added beside it for what a real configuration server would never do (drip bytes,
redirect to plain http, present a certificate the gateway must refuse).
"""

from __future__ import annotations

import bz2
import contextlib
import gzip
import hashlib
import http.server
import io
import json
import lzma
import os
import socket
import sqlite3
import stat
import subprocess
import tarfile
import threading
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from gwkit import NGINX, ConfigFile, nginx_main_config, stop_server, wait_for

from wmbus_stream.state.archive import HISTORY_MEMBER, MANIFEST, STORE_MEMBER, BackupLimits
from wmbus_stream.io.store import SCHEMA as STORE_SCHEMA

__all__ = [
    "DOC_EXAMPLE", "EXAMPLE_PATHS", "CadServer", "Notification", "NotifyServer", "DripServer", "Snapshot",
    "snapshot", "tree", "pending_rows", "tar_bytes", "members_of", "Member", "free_port", "start_cad_server",
    "with_member", "altered_database", "gzip_bytes", "hostile_compressions", "hostile_databases",
]

ROOT = Path(__file__).resolve().parents[2]
DOC_EXAMPLE = ROOT / "docs" / "examples" / "nginx-cad.conf"
# What the example says -> what the test puts there (cert, key, root, logs, the OK server).
EXAMPLE_PATHS = ("listen 443 ssl;", "/etc/ssl/wmbus-cad/fullchain.pem", "/etc/ssl/wmbus-cad/privkey.pem",
                 "/srv/wmbus-cad", "/var/log/nginx/", "127.0.0.1:8089")


def free_port() -> int:
    """A TCP port of 127.0.0.1 that was free a moment ago."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


# -------------------------------------------------------------------------------------------
# The gateway's result receiver (Sync-Notify-URL)


@dataclass(frozen=True)
class Notification:
    """One POST as the receiver saw it."""

    path: str
    headers: Mapping[str, str]
    body: bytes


class NotifyServer:
    """A plain HTTP server on 127.0.0.1 that records every request and answers 200 ``OK`` (or ``answers``).

    Also stands for a host a sync must not reach (the gateway's web UI, a LAN device): it
    records GETs too, so a test sees any request that reached it.
    """

    def __init__(self) -> None:
        self.received: list[Notification] = []
        self.answers: list[tuple[int, bytes]] = []  # consumed first; then 200 OK
        self._lock = threading.Lock()
        owner = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802  (http.server's naming)
                self.do_POST()

            def do_POST(self) -> None:  # noqa: N802  (http.server's naming)
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(min(length, 1 << 16))
                with owner._lock:
                    owner.received.append(Notification(self.path, {k.lower(): v for k, v in self.headers.items()},
                                                       body))
                    status, answer = owner.answers.pop(0) if owner.answers else (200, b"OK")
                self.send_response(status)
                self.send_header("Content-Type", "text/plain")
                self.send_header("Content-Length", str(len(answer)))
                self.end_headers()
                self.wfile.write(answer)

            def log_message(self, *args: object) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/sync-result"
        self._thread = threading.Thread(target=self.server.serve_forever, name="notify", daemon=True)
        self._thread.start()

    def all(self) -> list[Notification]:
        with self._lock:
            return list(self.received)

    def wait(self, count: int, timeout: float = 10.0) -> list[Notification]:
        return wait_for(lambda: (got := self.all()) and len(got) >= count and got,
                        f"{count} result notification(s)", timeout)

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


# -------------------------------------------------------------------------------------------
# A server that answers 200 and then sends one byte every `interval` seconds


class DripServer:
    """Plain HTTP on 127.0.0.1: headers announcing ``size`` bytes, then one byte per ``interval`` s."""

    def __init__(self, size: int = 1000, interval: float = 10.0) -> None:
        self.size, self.interval = size, interval
        self.connections = 0
        self._stop = threading.Event()
        self._sock = socket.socket()
        self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._sock.bind(("127.0.0.1", 0))
        self._sock.listen(8)
        self._sock.settimeout(0.2)
        self.port = int(self._sock.getsockname()[1])
        threading.Thread(target=self._serve, name="drip", daemon=True).start()

    def _serve(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self._sock.accept()
            except (TimeoutError, OSError):
                continue
            self.connections += 1
            threading.Thread(target=self._drip, args=(conn,), daemon=True).start()

    def _drip(self, conn: socket.socket) -> None:
        with conn, contextlib.suppress(OSError):
            conn.settimeout(5)
            head = b""
            while b"\r\n\r\n" not in head:
                chunk = conn.recv(4096)
                if not chunk:
                    return
                head += chunk
            conn.sendall(f"HTTP/1.1 200 OK\r\nContent-Type: application/octet-stream\r\n"
                         f"Content-Length: {self.size}\r\nConnection: close\r\n\r\n".encode())
            for _ in range(self.size):
                conn.sendall(b"x")
                if self._stop.wait(self.interval):
                    return

    def close(self) -> None:
        self._stop.set()
        self._sock.close()


# -------------------------------------------------------------------------------------------
# nginx: the documented .cad server plus test-only misbehaviour


@dataclass
class CadServer:
    """The documented nginx example on 127.0.0.1 (``url``), and test-only servers beside it."""

    folder: Path
    www: Path
    port: int
    extra_port: int  # same CA: /slow/ drips, /to-http redirects to http, /loop redirects forever
    untrusted_port: int  # a certificate from a CA the gateway does not know
    wrong_name_port: int  # the right CA, but a certificate for another host name
    plain_port: int  # plain http serving www
    ca_file: Path
    drip: DripServer

    def url(self, path: str = "/gateway.cad") -> str:
        return f"https://127.0.0.1:{self.port}{path}"

    def extra_url(self, path: str) -> str:
        return f"https://127.0.0.1:{self.extra_port}{path}"

    def put_cad(self, serial: str, content: str | bytes) -> None:
        """The .cad file nginx gives to the gateway with this serial (replaced atomically)."""
        self.put(f"cad/{serial}.cad", content)

    def put(self, name: str, content: str | bytes) -> None:
        path = self.www / name
        path.parent.mkdir(parents=True, exist_ok=True)
        temp = path.with_name(path.name + ".part")
        temp.write_bytes(content.encode() if isinstance(content, str) else content)
        os.replace(temp, path)

    @property
    def access_log(self) -> Path:
        return self.folder / "logs" / "wmbus-cad.access.log"

    @property
    def plain_log(self) -> Path:
        return self.folder / "logs" / "plain.access.log"

    def origin(self, port: int, scheme: str = "https") -> str:
        return f"{scheme}://127.0.0.1:{port}"

    @property
    def results_log(self) -> Path:
        return self.folder / "logs" / "wmbus-sync-results.log"

    def results(self) -> list[dict[str, str]]:
        """The documented results log, one JSON object per notification."""
        if not self.results_log.exists():
            return []
        return [json.loads(line) for line in self.results_log.read_text().splitlines() if line.strip()]


def _issue(ca: Any, folder: Path, name: str, *hosts: str) -> tuple[Path, Path]:
    leaf = ca.issue_cert(*hosts)
    cert, key = folder / f"{name}.pem", folder / f"{name}.key"
    cert.write_bytes(b"".join(blob.bytes() for blob in leaf.cert_chain_pems))
    leaf.private_key_pem.write_to_path(str(key))
    return cert, key


def render_example(cert: Path, key: Path, www: Path, logs: Path, port: int, ok_port: int) -> str:
    """The documented example with the test's paths and ports."""
    text = DOC_EXAMPLE.read_text(encoding="utf-8")
    replacements = dict(zip(EXAMPLE_PATHS, (f"listen 127.0.0.1:{port} ssl;", str(cert), str(key), str(www),
                                            f"{logs}/", f"127.0.0.1:{ok_port}"), strict=True))
    for old, new in replacements.items():
        assert old in text, f"docs/examples/nginx-cad.conf no longer contains {old!r}: update the fleet tests"
        text = text.replace(old, new)
    return text


def _nginx_conf(folder: Path, www: Path, site: tuple[Path, Path], untrusted_pair: tuple[Path, Path],
                other_pair: tuple[Path, Path], ports: tuple[int, int, int, int], drip_port: int) -> str:
    """The test nginx: the documented example (site.conf) plus the test-only servers."""
    cert, key = site
    bad_cert, bad_key = untrusted_pair
    other_cert, other_key = other_pair
    extra, untrusted, wrong_name, plain = ports
    tls = "ssl_certificate {}; ssl_certificate_key {};"
    return nginx_main_config(folder, 64, f"""
    # ---- test-only servers ----
    server {{
        listen 127.0.0.1:{extra} ssl; {tls.format(cert, key)}
        root {www};
        location /slow/ {{ proxy_pass http://127.0.0.1:{drip_port}; proxy_buffering off; proxy_read_timeout 300s; }}
        location = /to-http {{ return 302 http://127.0.0.1:{plain}/files/small.txt; }}
        location = /loop {{ return 302 /loop; }}
        location = /file-scheme {{ return 302 file:///etc/passwd; }}
        location = /bounce {{ return 302 $arg_to; }}
        location = /secret {{ return 403 "the private page of a LAN device\n"; }}
    }}
    server {{ listen 127.0.0.1:{untrusted} ssl; {tls.format(bad_cert, bad_key)} root {www}; }}
    server {{ listen 127.0.0.1:{wrong_name} ssl; {tls.format(other_cert, other_key)} root {www}; }}
    server {{ listen 127.0.0.1:{plain}; root {www}; access_log {folder}/logs/plain.access.log; }}
""")


@contextlib.contextmanager
def start_cad_server(folder: Path) -> Iterator[CadServer]:
    """nginx with the documented example and the test-only servers; stopped at the end."""
    trustme = pytest.importorskip("trustme", reason="trustme makes the test CA (pip install trustme)")
    if NGINX is None:
        pytest.skip("nginx binary not found (apt-get install nginx-light)")
    folder.mkdir(parents=True)
    www, logs = folder / "www", folder / "logs"
    for sub in ("www/cad", "www/files", "logs", "body", "proxy", "fastcgi", "uwsgi", "scgi"):
        (folder / sub).mkdir(parents=True)
    ca, stranger = trustme.CA(), trustme.CA()
    ca_file = folder / "ca.pem"
    ca.cert_pem.write_to_path(str(ca_file))
    cert, key = _issue(ca, folder, "server", "127.0.0.1", "localhost")
    bad_cert, bad_key = _issue(stranger, folder, "untrusted", "127.0.0.1", "localhost")
    other_cert, other_key = _issue(ca, folder, "other-name", "config.example.net")
    drip = DripServer()
    command = [NGINX, "-p", str(folder), "-c", str(folder / "nginx.conf"), "-e", str(folder / "error.log")]
    for attempt in range(3):  # a port seen free may be taken before nginx binds it: pick new ones
        port, ok_port, extra, untrusted, wrong_name, plain = (free_port() for _ in range(6))
        (folder / "site.conf").write_text(render_example(cert, key, www, logs, port, ok_port))
        (folder / "nginx.conf").write_text(_nginx_conf(folder, www, (cert, key), (bad_cert, bad_key),
                                                       (other_cert, other_key), (extra, untrusted, wrong_name, plain),
                                                       drip.port))
        process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)

        def listening(process: subprocess.Popen[bytes] = process,
                      ports: tuple[int, ...] = (port, ok_port, extra, untrusted, wrong_name, plain)) -> bool:
            if process.poll() is not None:
                assert process.stderr is not None
                raise AssertionError(f"nginx exited: {process.stderr.read().decode(errors='replace')}")
            try:
                for p in ports:
                    socket.create_connection(("127.0.0.1", p), timeout=0.2).close()
                return True
            except OSError:
                return False

        try:
            wait_for(listening, "nginx listening", 10)
            break
        except AssertionError as exc:
            stop_server(process)
            if "Address already in use" not in str(exc) or attempt == 2:
                drip.close()
                raise
    try:
        yield CadServer(folder, www, port, extra, untrusted, wrong_name, plain, ca_file, drip)
    finally:
        stop_server(process)
        drip.close()


# -------------------------------------------------------------------------------------------
# Before/after snapshots


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def tree(root: Path, skip: frozenset[str] = frozenset()) -> dict[str, tuple[Any, ...]]:
    """Every entry below ``root`` (links not followed): type, mode, size, mtime, content hash, link."""
    out: dict[str, tuple[Any, ...]] = {}
    if not root.exists():
        return out
    for folder, dirs, files in os.walk(root, followlinks=False):
        for name in sorted(dirs + files):
            path = Path(folder) / name
            relative = path.relative_to(root).as_posix()
            if relative in skip:
                continue
            st = os.lstat(path)
            kind = stat.S_IFMT(st.st_mode)
            out[relative] = (kind, stat.S_IMODE(st.st_mode), st.st_size if kind != stat.S_IFDIR else 0,
                             st.st_mtime_ns if kind != stat.S_IFDIR else 0,
                             _digest(path) if stat.S_ISREG(st.st_mode) else "",
                             os.readlink(path) if stat.S_ISLNK(st.st_mode) else "")
    return out


# The gateway's own working files: its state database (rows compared instead), its control
# socket and the empty lock files that whoever runs first creates.
VOLATILE = frozenset({"store.sqlite", "store.sqlite-wal", "store.sqlite-shm", "store.sqlite-journal", "control.sock",
                      "gateway.lock", "config.lock"})


@dataclass(frozen=True)
class Snapshot:
    """What a refused change must leave exactly as it was."""

    config: tuple[bytes, int, int]
    state: dict[str, tuple[Any, ...]]
    pending: list[tuple[Any, ...]]
    outside: dict[str, tuple[Any, ...]] = field(default_factory=dict)

    def diff(self, other: Snapshot) -> list[str]:
        """Human-readable differences (empty when equal)."""
        out = []
        if self.config != other.config:
            out.append("configuration file changed")
        for label, a, b in (("state", self.state, other.state), ("outside", self.outside, other.outside)):
            for name in sorted(set(a) | set(b)):
                if a.get(name) != b.get(name):
                    out.append(f"{label}/{name}: {a.get(name)} -> {b.get(name)}")
        if self.pending != other.pending:
            out.append(f"pending telegrams changed: {len(self.pending)} -> {len(other.pending)}")
        return out


def pending_rows(state: Path) -> list[tuple[Any, ...]]:
    """The pending telegrams (meter key, arrival, telegram) in the state database, read-only."""
    path = state / "store.sqlite"
    if not path.exists():
        return []
    db = sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True, timeout=5)
    try:
        return db.execute("SELECT key, received_at, telegram FROM meters ORDER BY key").fetchall()
    finally:
        db.close()


def snapshot(config: ConfigFile, outside: Path | None = None) -> Snapshot:
    """Configuration file (bytes, mtime, mode), state folder, pending rows and an outside folder."""
    st = os.stat(config.path)
    return Snapshot((config.path.read_bytes(), st.st_mtime_ns, stat.S_IMODE(st.st_mode)),
                    tree(config.state, VOLATILE), pending_rows(config.state),
                    tree(outside) if outside is not None else {})


# -------------------------------------------------------------------------------------------
# Hostile archives


@dataclass(frozen=True)
class Member:
    """One tar member: a regular file with ``data``, or another ``kind`` (tarfile type constant)."""

    name: str
    data: bytes = b""
    kind: bytes = tarfile.REGTYPE
    link: str = ""
    size: int | None = None  # declared size, when it differs from the data (a sparse oversize)


def tar_bytes(members: list[Member]) -> bytes:
    """A gzip tar of ``members`` exactly as given (nothing normalised)."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz", format=tarfile.PAX_FORMAT) as tar:
        for member in members:
            info = tarfile.TarInfo(member.name)
            info.type, info.linkname, info.mode = member.kind, member.link, 0o600
            if member.kind in (tarfile.CHRTYPE, tarfile.BLKTYPE):
                info.devmajor, info.devminor = 1, 3
            if member.kind == tarfile.REGTYPE:
                info.size = member.size if member.size is not None else len(member.data)
                tar.addfile(info, io.BytesIO(member.data.ljust(info.size, b"\0")))
            else:
                tar.addfile(info)
    return buffer.getvalue()


def members_of(archive: bytes) -> list[Member]:
    """The regular members of a (genuine) backup, to build altered copies from."""
    with tarfile.open(fileobj=io.BytesIO(archive), mode="r:gz") as tar:
        out = []
        for info in tar:
            handle = tar.extractfile(info)
            assert handle is not None
            out.append(Member(info.name, handle.read()))
        return out


def with_member(archive: bytes, name: str, data: bytes) -> bytes:
    """A genuine backup with member ``name`` replaced by ``data`` and its manifest made to match."""
    members = members_of(archive)
    manifest = json.loads(members[0].data)
    manifest["members"][name] = {"size": len(data), "sha256": hashlib.sha256(data).hexdigest()}
    return tar_bytes([Member(MANIFEST, json.dumps(manifest).encode()),
                      *(Member(m.name, data if m.name == name else m.data) for m in members[1:])])


def altered_database(data: bytes, folder: Path, *statements: str, schema: tuple[str, ...] = ()) -> bytes:
    """The database ``data`` after ``statements``; with ``schema``, a new one made by it instead."""
    path = folder / f"altered-{hashlib.sha256(repr((statements, schema)).encode()).hexdigest()[:12]}.sqlite"
    path.unlink(missing_ok=True)
    if not schema:
        path.write_bytes(data)
    db = sqlite3.connect(path, isolation_level=None)
    try:
        for statement in (*schema, *statements):
            db.execute(statement)
    finally:
        db.close()
    return path.read_bytes()


def gzip_bytes(data: bytes, zeros: int = 0) -> bytes:
    """``data`` and then ``zeros`` zero bytes, gzip-compressed in one stream (a decompression bomb)."""
    out = io.BytesIO()
    with gzip.GzipFile(fileobj=out, mode="wb", mtime=0) as stream:
        stream.write(data)
        block = bytes(1 << 20)
        for _ in range(zeros >> 20):
            stream.write(block)
    return out.getvalue()


def hostile_compressions(genuine: bytes) -> list[tuple[str, bytes, str]]:
    """(what, upload, expected problem as a regex): the genuine backup in other compressions, and bombs."""
    plain = gzip.decompress(genuine)
    limits = BackupLimits()
    with tarfile.open(fileobj=io.BytesIO(plain)) as tar:
        second = tar.getmembers()[1].offset  # the manifest before it
    huge = tarfile.TarInfo(STORE_MEMBER)
    huge.size = 4 << 30
    return [
        ("bzip2", bz2.compress(plain), r"bzip2-compressed; a wmbus-stream backup is a gzip-compressed tar"),
        ("xz", lzma.compress(plain), r"xz-compressed; a wmbus-stream backup is a gzip-compressed tar"),
        ("uncompressed tar", plain, r"an uncompressed tar; a wmbus-stream backup is a gzip-compressed tar"),
        ("bzip2 bomb", bz2.compress(bytes(64 << 20)), r"bzip2-compressed; a wmbus-stream backup is a gzip"),
        ("gzip bomb after the archive", gzip_bytes(plain, limits.unpacked + (1 << 20)),
         rf"more than {limits.unpacked} bytes when decompressed"),
        ("member of 4 GiB", gzip_bytes(plain[:second] + huge.tobuf(tarfile.PAX_FORMAT), 16 << 20),
         rf"member store\.sqlite: 4294967296 bytes, more than the limit of {limits.store}"),
    ]


def hostile_databases(genuine: bytes, folder: Path) -> list[tuple[str, bytes, str]]:
    """(what, archive, expected problem as a regex): consistent backups whose databases are not the gateway's."""
    members = {m.name: m.data for m in members_of(genuine)}
    store, history = members[STORE_MEMBER], members[HISTORY_MEMBER]

    def in_store(*statements: str, schema: tuple[str, ...] = ()) -> bytes:
        return with_member(genuine, STORE_MEMBER, altered_database(store, folder, *statements, schema=schema))

    def other_meters(definition: str) -> tuple[str, ...]:
        return (definition, STORE_SCHEMA[1])

    meters = STORE_SCHEMA[0]
    return [
        ("trigger that discards persistence", in_store(
            "CREATE TRIGGER discard AFTER INSERT ON meters BEGIN DELETE FROM meters; END"),
         r"member store\.sqlite: not a wmbus-stream state database: trigger 'discard' \(of 'meters'\) is not part"),
        ("view", in_store("CREATE VIEW pending AS SELECT * FROM meters"),
         r"view 'pending' \(of 'pending'\) is not part"),
        ("extra table", in_store("CREATE TABLE extra (x)"), r"table 'extra' \(of 'extra'\) is not part"),
        ("extra index", in_store("CREATE INDEX by_id ON meters (meter_id)"), r"index 'by_id' \(of 'meters'\)"),
        ("virtual table", in_store("CREATE VIRTUAL TABLE search USING rtree(id, x0, x1)"),
         r"table 'search' \(of 'search'\) is not part"),
        ("missing column", in_store(schema=other_meters(meters.replace("device_type INTEGER,", ""))),
         r"table 'meters' is 'CREATE TABLE meters .*', the gateway writes"),
        ("extra column", in_store(schema=other_meters(meters.replace("generation INTEGER NOT NULL",
                                                                     "generation INTEGER NOT NULL, extra"))),
         r"table 'meters' is 'CREATE TABLE meters .*, extra \) WITHOUT ROWID'"),
        ("other column type", in_store(schema=other_meters(meters.replace("telegram BLOB", "telegram TEXT"))),
         r"table 'meters' is 'CREATE TABLE meters .*telegram TEXT"),
        ("other constraint", in_store(schema=other_meters(meters.replace("received_at REAL NOT NULL",
                                                                         "received_at REAL"))),
         r"table 'meters' is 'CREATE TABLE meters .*received_at REAL,"),
        ("missing table", in_store("DROP TABLE meta"), r"table 'meta' missing"),
        ("meta as a view", in_store("DROP TABLE meta", "CREATE VIEW meta AS SELECT 'a' AS name, 'b' AS value"),
         r"'meta' is a view of 'meta', the gateway writes a table"),
        ("WAL mode", in_store("PRAGMA journal_mode=WAL"), r"member store\.sqlite: journal mode WAL"),
        ("trigger in the history", with_member(genuine, HISTORY_MEMBER, altered_database(
            history, folder, "CREATE TRIGGER forget AFTER INSERT ON history BEGIN DELETE FROM history; END")),
         r"member history\.sqlite: not a wmbus-stream history database: trigger 'forget'"),
    ]
