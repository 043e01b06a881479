"""The control socket, both ends: the running gateway's server and the command line's client, and the lock file.

One gateway runs per state directory: it holds ``gateway.lock`` (``take_lock``) and listens
on ``control.sock`` beside it, usable by its own user only. The command line asks it with
one command line and reads one JSON line back (``request``): ``push``, ``status``,
``analyzer``, ``identity``, ``reload``, ``sync``, ``backup``, ``restore``. ``locate`` finds
the gateway running with a configuration file, even when the file was edited since.

A running gateway owns its state database, so a backup must be taken (after a flush) and a
restore must be put in place (store closed, swapped, reopened) by the gateway itself. The
command line streams the archive over the socket, so the gateway never opens a path the
user named (which it might not be allowed to read, or should not).

Protocol (after the command line): ``backup`` -> a JSON line ``{"size": n}`` then n bytes,
or a JSON line with ``error``. ``restore <size> keep|replace`` followed by the archive's
bytes -> a JSON line: ``{"ok": true, ...}`` or ``{"error": ..., "problems": [...]}``.
"""

from __future__ import annotations

import fcntl
import io
import json
import os
import shutil
import socket
import socketserver
import tempfile
import threading
from collections.abc import Mapping
from pathlib import Path
from typing import Any, BinaryIO, Protocol

from ..atomic import open_private
from ..config import model as config_model
from ..errors import BackupError, ConfigError, GatewayIOError, WmbusStreamError
from ..host import Host, as_json

__all__ = ["CONTROL_SOCKET", "LOCK_FILE", "ControlServer", "Controlled", "locate", "request", "request_backup",
           "request_restore", "take_lock"]

CONTROL_SOCKET = "control.sock"
LOCK_FILE = "gateway.lock"
COMMANDS = "push, status, analyzer, identity, reload, sync, backup, restore"


class Controlled(Host, Protocol):
    """The running gateway as its control socket serves it: a ``Host`` that also names itself and reloads."""

    @property
    def identity(self) -> Mapping[str, object]: ...

    def reload(self) -> bool: ...


def take_lock(path: Path) -> int:
    """Hold the state directory's lock file (the descriptor); refused while another process holds it."""
    fd = open_private(path, os.O_RDWR)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        os.close(fd)
        raise GatewayIOError(f"another wmbus-stream process is using {path.parent}") from None
    return fd


# -- the gateway's end ---------------------------------------------------------------------


class _Handler(socketserver.StreamRequestHandler):
    server: _Server

    def handle(self) -> None:
        host = self.server.host
        command = self.rfile.readline(100).decode("ascii", "replace").strip()
        answer: Any
        if command == "push":
            outcome = host.push_by_hand()
            answer = as_json(outcome) if outcome else {"error": "a push is already in flight"}
        elif command == "status":
            answer = as_json(host.status())
        elif command == "analyzer":
            analyzer = host.analyzer
            answer = {"dump": analyzer.dump().decode() if analyzer else None}
        elif command == "identity":
            answer = host.identity
        elif command == "reload":
            answer = {"ok": host.reload()}
        elif command == "sync":
            answer = host.sync_now().as_dict()
        elif command == "backup":
            _serve_backup(host, self.wfile)
            return
        elif command.startswith("restore "):
            answer = _serve_restore(host, command, self.rfile)
        else:
            answer = {"error": f"unknown command {command!r}; allowed: {COMMANDS}"}
        self.wfile.write(_line(answer))


class _Server(socketserver.ThreadingMixIn, socketserver.UnixStreamServer):
    daemon_threads = True

    def __init__(self, path: str, host: Controlled) -> None:
        super().__init__(path, _Handler)
        self.host = host


class ControlServer:
    """The control socket of one running gateway, served in threads of its own."""

    def __init__(self, state_directory: Path, host: Controlled) -> None:
        self.path = state_directory / CONTROL_SOCKET
        try:
            self.path.unlink()
        except FileNotFoundError:
            pass
        old = os.umask(0o177)  # socket usable by this user only
        try:
            self._server = _Server(str(self.path), host)
        finally:
            os.umask(old)
        threading.Thread(target=self._server.serve_forever, name="control", daemon=True).start()

    def close(self) -> None:
        """Stop serving and remove the socket."""
        self._server.shutdown()
        self._server.server_close()
        try:
            self.path.unlink()
        except OSError:
            pass


def _line(data: Mapping[str, Any]) -> bytes:
    return json.dumps(data).encode() + b"\n"


def _serve_backup(host: Controlled, wfile: BinaryIO | io.BufferedIOBase) -> None:
    """Answer ``backup``: the archive's size as a JSON line, then the archive."""
    with tempfile.TemporaryFile(dir=host.config.state_directory) as spool:
        try:
            host.backup(spool)
        except (WmbusStreamError, OSError) as exc:
            wfile.write(_line({"error": str(exc)}))
            return
        size = spool.tell()
        spool.seek(0)
        wfile.write(_line({"size": size}))
        shutil.copyfileobj(spool, wfile)


class _Limited:
    """Exactly ``size`` bytes of a stream, as a readable file."""

    def __init__(self, stream: BinaryIO, size: int) -> None:
        self.stream, self.left = stream, size

    def read(self, n: int = -1) -> bytes:
        if self.left <= 0:
            return b""
        want = self.left if n < 0 else min(n, self.left)
        data = self.stream.read(want)
        self.left -= len(data)
        if not data:
            raise BackupError("the archive ended early")
        return data


def _serve_restore(host: Controlled, command: str, rfile: BinaryIO | io.BufferedIOBase) -> dict[str, Any]:
    """Answer ``restore <size> keep|replace`` whose archive follows on ``rfile``."""
    parts = command.split()
    if len(parts) != 3 or not parts[1].isdigit() or parts[2] not in ("keep", "replace"):
        return {"error": "usage: restore <size> keep|replace"}
    size = int(parts[1])
    try:
        result = host.restore(_Limited(rfile, size), size, keep_serial=parts[2] == "keep")  # type: ignore[arg-type]
    except BackupError as exc:
        return {"error": "backup refused", "problems": exc.problems}
    except ConfigError as exc:
        return {"error": "backup refused", "problems": [str(p) for p in exc.problems]}
    except (WmbusStreamError, OSError) as exc:
        return {"error": str(exc)}
    return {"ok": True, "summary": result.summary(), "pending": result.pending, "serial": result.serial,
            "history": result.number}


_TRANSFER_SECONDS = 300.0  # a backup or restore over the control socket may wait this long on each socket operation


def _connect(state_directory: Path, timeout: float) -> socket.socket | None:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(timeout)
    try:
        sock.connect(str(state_directory / CONTROL_SOCKET))
    except (FileNotFoundError, ConnectionRefusedError):
        sock.close()
        return None
    return sock


def _read_line(reader: BinaryIO) -> dict[str, Any]:
    line = reader.readline(1 << 20)
    if not line.endswith(b"\n"):
        raise OSError("the gateway closed the control connection without an answer")
    return json.loads(line)


def request_backup(state_directory: Path, dest: BinaryIO) -> dict[str, Any] | None:
    """Have the running gateway write a backup to ``dest``; None when no gateway runs."""
    sock = _connect(state_directory, _TRANSFER_SECONDS)
    if sock is None:
        return None
    with sock, sock.makefile("rb") as reader:
        sock.sendall(b"backup\n")
        header = _read_line(reader)
        if "size" not in header:
            return header
        left = int(header["size"])
        while left > 0:
            chunk = reader.read(min(1 << 16, left))
            if not chunk:
                raise OSError("the gateway closed the control connection in the middle of the backup")
            dest.write(chunk)
            left -= len(chunk)
        return header


def request_restore(state_directory: Path, source: Path, keep_serial: bool) -> dict[str, Any] | None:
    """Have the running gateway restore the archive at ``source``; None when no gateway runs."""
    sock = _connect(state_directory, _TRANSFER_SECONDS)
    if sock is None:
        return None
    size = source.stat().st_size
    with sock, open(source, "rb") as handle, sock.makefile("rb") as reader:
        sock.sendall(f"restore {size} {'keep' if keep_serial else 'replace'}\n".encode())
        try:
            sock.sendfile(handle)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the gateway refused early; its answer says why
        return _read_line(reader)


# -- the command line's end ----------------------------------------------------------------


def request(state_directory: Path, command: str, timeout: float = 300.0) -> dict[str, Any] | None:
    """Ask a running gateway; None when none is running for this state directory."""
    sock = _connect(state_directory, timeout)
    if sock is None:
        return None
    with sock:
        sock.sendall(command.encode() + b"\n")
        data = b""
        while not data.endswith(b"\n"):
            chunk = sock.recv(65536)
            if not chunk:
                break
            data += chunk
    answer: dict[str, Any] = json.loads(data)
    return answer


def _live_state_directories() -> list[Path]:
    """Folders of the listening control sockets on this machine that hold a gateway lock (Linux)."""
    found: list[Path] = []
    try:
        with open("/proc/net/unix", encoding="utf-8", errors="replace") as table:
            next(table, None)
            for line in table:
                fields = line.rstrip("\n").split(maxsplit=7)  # Num RefCount Protocol Flags Type St Inode Path
                # A listening socket (flag __SO_ACCEPTCON) named control.sock beside a gateway lock.
                if len(fields) == 8 and fields[3] == "00010000" and fields[7].endswith("/" + CONTROL_SOCKET):
                    folder = Path(fields[7]).parent
                    if (folder / LOCK_FILE).exists():
                        found.append(folder)
    except OSError:
        pass
    return found


def locate(config_path: str | os.PathLike[str]) -> Path:
    """The state directory of the gateway running with ``config_path``, else the one the file names.

    The file may have been edited since that gateway started (a new ``state.directory`` takes
    effect only at a restart) or be broken: the gateway's own answer decides, not the file.
    The folder the file names is asked first, then every other live control socket.
    """
    named = config_model.state_directory_of(config_path)
    wanted = os.path.realpath(config_path)
    for folder in dict.fromkeys([named, *_live_state_directories()]):
        try:
            answer = request(folder, "identity", timeout=2)  # a healthy gateway answers at once
        except (OSError, ValueError):
            continue
        if answer is not None and answer.get("config") == wanted:
            return folder
    return named
