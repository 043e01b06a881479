"""Backup and restore through a running gateway's control socket.

A running gateway owns its state database, so a backup must be taken (after a flush) and a
restore must be put in place (store closed, swapped, reopened) by the gateway itself. The
command line streams the archive over the Unix socket, so the gateway never opens a path
the user named (which it might not be allowed to read, or should not).

Protocol (after the command line): ``backup`` -> a JSON line ``{"size": n}`` then n bytes,
or a JSON line with ``error``. ``restore <size> keep|replace`` followed by the archive's
bytes -> a JSON line: ``{"ok": true, ...}`` or ``{"error": ..., "problems": [...]}``.
"""

from __future__ import annotations

import json
import shutil
import socket
import tempfile
from pathlib import Path
from typing import Any, BinaryIO

from ..errors import ConfigError, WmbusStreamError
from ..state.archive import BackupError, BackupLimits
from ..state.backup import backup, restore
from .manage import ConfigManager

__all__ = ["serve_backup", "serve_restore", "request_backup", "request_restore", "CONTROL_SOCKET"]

CONTROL_SOCKET = "control.sock"


def _line(data: dict[str, Any]) -> bytes:
    return json.dumps(data).encode() + b"\n"


def serve_backup(manager: ConfigManager | None, wfile: BinaryIO) -> None:
    """Answer ``backup``: the archive's size as a JSON line, then the archive."""
    if manager is None:
        wfile.write(_line({"error": "the gateway runs without a configuration file"}))
        return
    with tempfile.TemporaryFile(dir=manager.state_directory) as spool:
        try:
            backup(manager, spool)
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


def serve_restore(manager: ConfigManager | None, command: str, rfile: BinaryIO) -> dict[str, Any]:
    """Answer ``restore <size> keep|replace`` whose archive follows on ``rfile``."""
    parts = command.split()
    if len(parts) != 3 or not parts[1].isdigit() or parts[2] not in ("keep", "replace"):
        return {"error": "usage: restore <size> keep|replace"}
    if manager is None:
        return {"error": "the gateway runs without a configuration file"}
    size = int(parts[1])
    if size > BackupLimits().archive:
        return {"error": f"archive larger than the limit of {BackupLimits().archive} bytes"}
    try:
        result = restore(manager, _Limited(rfile, size), keep_serial=parts[2] == "keep")  # type: ignore[arg-type]
    except BackupError as exc:
        return {"error": "backup refused", "problems": exc.problems}
    except ConfigError as exc:
        return {"error": "backup refused", "problems": [str(p) for p in exc.problems]}
    except (WmbusStreamError, OSError) as exc:
        return {"error": str(exc)}
    return {"ok": True, "summary": result.summary(), "pending": result.pending, "serial": result.serial,
            "history": result.entry.number if result.entry else None}


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


def request_backup(state_directory: Path, dest: BinaryIO, timeout: float = 300.0) -> dict[str, Any] | None:
    """Have the running gateway write a backup to ``dest``; None when no gateway runs."""
    sock = _connect(state_directory, timeout)
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


def request_restore(state_directory: Path, source: Path, keep_serial: bool,
                    timeout: float = 300.0) -> dict[str, Any] | None:
    """Have the running gateway restore the archive at ``source``; None when no gateway runs."""
    sock = _connect(state_directory, timeout)
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
