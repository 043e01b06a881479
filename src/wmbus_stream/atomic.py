"""Atomic file replacement that survives a crash or a power cut at any instant.

Strategy: the new content goes to a temporary file in the *same directory* as the target
(so the rename never crosses a file system), is flushed and ``fsync``-ed, then
``os.replace``-d over the target, and finally the directory itself is ``fsync``-ed so that
the rename is on disk too. Invariant: at every instant the target path holds either the
complete old content or the complete new content, never a mix or a truncated file.

A crash between creating the temporary file and the rename leaves a stale temporary file
behind; its name follows one pattern (``.<target name>.<random>.wmbus-tmp``) so that
``clean_stale`` can remove exactly those at start without touching anything else.
"""

from __future__ import annotations

import os
import re
import secrets
from pathlib import Path

__all__ = ["TEMP_SUFFIX", "PRIVATE", "write_atomic", "open_private", "clean_stale", "clean_stale_dir",
           "fsync_directory"]

TEMP_SUFFIX = ".wmbus-tmp"
PRIVATE = 0o600  # every file the gateway keeps: store, lock, history, journal, password, temp files


def _temp_name(target: Path) -> Path:
    return target.with_name(f".{target.name}.{secrets.token_hex(6)}{TEMP_SUFFIX}")


def fsync_directory(directory: str | os.PathLike[str]) -> None:
    """Flush a directory's entries (renames, creations) to disk; a no-op where unsupported."""
    flags = os.O_RDONLY | getattr(os, "O_DIRECTORY", 0)
    try:
        fd = os.open(directory, flags)
    except OSError:
        # Some platforms cannot open directories; the rename is then as durable as it gets.
        return
    try:
        os.fsync(fd)
    except OSError:
        # Some file systems (and Windows) refuse fsync on directories; not worth failing a write.
        pass
    finally:
        os.close(fd)


def open_private(path: str | os.PathLike[str], flags: int = os.O_RDONLY) -> int:
    """A descriptor of ``path``, created ``PRIVATE`` (0600) whatever the umask when missing.

    The mode is set on the descriptor before anything is written, so no other user ever
    sees the file open; a file of ours left wider by an older version is narrowed too.
    SQLite gives a database's -wal, -shm and -journal files the mode of the database, so
    opening one through here first makes those private as well.
    """
    fd = os.open(path, flags | os.O_CREAT | getattr(os, "O_CLOEXEC", 0), PRIVATE)
    try:
        if os.fstat(fd).st_mode & 0o777 != PRIVATE:
            os.fchmod(fd, PRIVATE)
    except OSError:
        pass  # not ours to change (another owner, a read-only mount): used as it is
    return fd


def write_atomic(
    path: str | os.PathLike[str],
    data: str | bytes,
    mode: int = 0o600,
) -> Path:
    """Replace ``path`` with ``data`` atomically and durably; returns the path written."""
    # Replace the file a symlink points to, not the symlink itself, so that a config path
    # that is a link into a data partition keeps working after a write.
    target = Path(os.path.realpath(path))
    payload = data.encode() if isinstance(data, str) else bytes(data)
    tmp = _temp_name(target)
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0), mode)
    except OSError as exc:  # name the folder the caller gave, not our temporary file
        raise OSError(exc.errno, exc.strerror, str(target.parent)) from None
    try:
        try:
            # The umask may have removed bits from ``mode``; the caller's mode is the contract.
            os.fchmod(fd, mode)
            view = memoryview(payload)
            while view:
                written = os.write(fd, view)
                view = view[written:]
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, target)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
    fsync_directory(target.parent)
    return target


def clean_stale(path: str | os.PathLike[str]) -> list[Path]:
    """Remove temporary files a crashed ``write_atomic(path, ...)`` left; returns them."""
    target = Path(os.path.realpath(path))
    return _remove(target.parent, re.escape(target.name))


def clean_stale_dir(directory: str | os.PathLike[str]) -> list[Path]:
    """Remove every stale ``write_atomic`` temporary file in a directory; returns them."""
    return _remove(Path(directory), r".+")


def _remove(directory: Path, name_pattern: str) -> list[Path]:
    # Match the exact shape _temp_name makes, so no other file is ever touched.
    shape = re.compile(rf"\.{name_pattern}\.[0-9a-f]{{12}}{re.escape(TEMP_SUFFIX)}")
    removed: list[Path] = []
    try:
        entries = list(os.scandir(directory))
    except OSError:
        return removed
    for entry in entries:
        if shape.fullmatch(entry.name):
            try:
                if entry.is_file(follow_symlinks=False):
                    os.unlink(entry.path)
                    removed.append(Path(entry.path))
            except OSError:
                # Another process may have removed it already; the goal is reached either way.
                continue
    if removed:
        fsync_directory(directory)
    return removed
