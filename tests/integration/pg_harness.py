"""A throwaway PostgreSQL cluster for the HES tests: initdb in a temporary folder, one database per test.

The cluster is Debian's own binaries (``postgresql``), started once per test session with
``postgres`` itself (not a system service): a Unix socket in its folder and 127.0.0.1 on a
free port, password (SCRAM) authentication over TCP so a wrong password is refused. As root
it runs as ``nobody`` (initdb and postgres refuse root), in a folder of its own under /tmp.
Fixtures: ``pg_cluster`` (the session's cluster), ``pg_url`` (a new database for the test,
dropped after it). The conftest of this folder imports them, so every test module has them.
"""

from __future__ import annotations

import contextlib
import glob
import itertools
import os
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

__all__ = ["PG_PASSWORD", "PG_USER", "PgCluster", "pg_bin", "pg_cluster", "pg_url", "start_cluster"]

PG_USER, PG_PASSWORD = "wmbus", "pg-s3cret"
_numbers = itertools.count(1)


def pg_bin() -> Path | None:
    """The folder of Debian's PostgreSQL server binaries (the newest version installed), or None."""
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), key=lambda p: int(Path(p).parts[-3]))
    if found:
        return Path(found[-1]).parent
    initdb = shutil.which("initdb")
    return Path(initdb).parent if initdb and shutil.which("postgres") else None


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@dataclass
class PgCluster:
    """A running cluster: its folder, port and superuser (``PG_USER``/``PG_PASSWORD``)."""

    folder: Path
    port: int
    process: subprocess.Popen[bytes]

    @property
    def socket_dir(self) -> Path:
        return self.folder

    def url(self, database: str = "postgres", *, password: str | None = PG_PASSWORD) -> str:
        """The TCP URL of ``database`` (with the password, or a given wrong one)."""
        secret = f":{password}" if password is not None else ""
        return f"postgresql://{PG_USER}{secret}@127.0.0.1:{self.port}/{database}"

    def socket_url(self, database: str = "postgres") -> str:
        """The Unix-socket URL of ``database`` (no password: local connections are trusted)."""
        return f"postgresql://{PG_USER}@/{database}?host={self.folder}&port={self.port}"

    def sql(self, statement: str, database: str = "postgres", args: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
        """Run one statement over the socket (autocommit) and return its rows (none for a command)."""
        import psycopg

        with psycopg.connect(self.socket_url(database), autocommit=True) as conn:
            cur = conn.execute(statement, args)  # type: ignore[arg-type]
            return cur.fetchall() if cur.description is not None else []

    def create_database(self, prefix: str = "test") -> str:
        """A new empty database; its name."""
        name = f"{prefix}_{os.getpid()}_{next(_numbers)}"
        self.sql(f'CREATE DATABASE "{name}"')
        return name

    def drop_database(self, name: str) -> None:
        """Drop a database, ending its sessions first."""
        self.sql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')

    def stop(self) -> None:
        """Fast shutdown (SIGINT), SIGKILL if it has not ended in 20 s."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGINT)
            try:
                self.process.wait(20)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        if self.process.stderr is not None:
            self.process.stderr.close()


def _as_user() -> dict[str, Any]:
    """Popen keywords that run a server binary as ``nobody`` when we are root (it refuses root)."""
    if os.geteuid() != 0:
        return {}
    nobody = pwd.getpwnam("nobody")
    return {"user": nobody.pw_uid, "group": nobody.pw_gid, "extra_groups": []}


def _log(folder: Path) -> str:
    path = folder / "postgres.log"
    return path.read_text(errors="replace")[-3000:] if path.exists() else ""


@contextlib.contextmanager
def start_cluster(settings: dict[str, str] | None = None) -> Iterator[PgCluster]:
    """initdb a cluster in a new folder under /tmp, run it, and remove it all at the end."""
    psycopg = pytest.importorskip("psycopg", reason="the PostgreSQL tests need psycopg: pip install 'wmbus-stream[hes]'")
    binaries = pg_bin()
    if binaries is None:
        pytest.skip("PostgreSQL server binaries (initdb, postgres) not found: apt-get install postgresql")
    folder = Path(tempfile.mkdtemp(prefix="wmbus-pg-"))
    user = _as_user()
    try:
        if user:
            os.chown(folder, user["user"], user["group"])
        (folder / "pwfile").write_text(PG_PASSWORD + "\n")
        if user:
            os.chown(folder / "pwfile", user["user"], user["group"])
        data = folder / "data"
        done = subprocess.run(
            [str(binaries / "initdb"), "-D", str(data), "-U", PG_USER, f"--pwfile={folder / 'pwfile'}",
             "--auth-local=trust", "--auth-host=scram-sha-256", "-E", "UTF8", "--locale=C.UTF-8", "--no-sync"],
            capture_output=True, cwd=folder, **user)
        if done.returncode:
            raise AssertionError(f"initdb failed: {done.stderr.decode(errors='replace')}")
        options = {"listen_addresses": "127.0.0.1", "unix_socket_directories": str(folder), "max_connections": "60",
                   "shared_buffers": "64MB", "logging_collector": "off", "log_min_messages": "warning",
                   **(settings or {})}
        for attempt in range(3):  # a port seen free may be taken before postgres binds it: pick a new one
            port = _free_port()
            command = [str(binaries / "postgres"), "-D", str(data), "-p", str(port)]
            command += [arg for key, value in options.items() for arg in ("-c", f"{key}={value}")]
            with open(folder / "postgres.log", "ab") as log:
                process = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=log, stderr=log, cwd=folder,
                                           **user)
            cluster = PgCluster(folder, port, process)
            deadline = time.monotonic() + 30
            while True:
                if process.poll() is not None:
                    break
                try:
                    psycopg.connect(cluster.socket_url(), connect_timeout=2).close()
                    break
                except psycopg.OperationalError:
                    if time.monotonic() > deadline:
                        cluster.stop()
                        raise AssertionError(f"PostgreSQL did not accept connections in 30 s:\n{_log(folder)}") from None
                    time.sleep(0.1)
            if process.poll() is None:
                break
            if "could not bind" not in _log(folder) or attempt == 2:
                raise AssertionError(f"postgres exited ({process.returncode}):\n{_log(folder)}")
        try:
            yield cluster
        finally:
            cluster.stop()
    finally:
        shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture(scope="session")
def pg_cluster() -> Iterator[PgCluster]:
    """The test session's PostgreSQL cluster (started on first use)."""
    with start_cluster() as cluster:
        yield cluster


@pytest.fixture
def pg_url(pg_cluster: PgCluster) -> Iterator[str]:
    """The TCP URL (with the password) of a new database for this test alone; dropped after it."""
    name = pg_cluster.create_database()
    try:
        yield pg_cluster.url(name)
    finally:
        pg_cluster.drop_database(name)
