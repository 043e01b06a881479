"""Backup archives: write one, and check one completely before anything of it is used.

Format (version 1): a gzip-compressed tar whose first member is ``manifest.json``::

    {"format": "wmbus-stream-backup", "version": 1, "created": "2026-11-24T10:15:02Z",
     "gateway_serial": "00000161", "software": "0.1.0",
     "members": {"stream.cfg": {"size": 812, "sha256": "..."}, "store.sqlite": {...},
                 "history.sqlite": {...}, "files/ca.pem": {...}}}

followed by the configuration file, the state database (pending telegrams, analyzer, last
push and sync), the history database and the downloaded files (``files/<name>``). Every
member is a regular file with mode 0600; the databases are consistent copies made with
SQLite's backup API while the gateway runs.

Reading (``unpack``) accepts only what ``write`` writes, and reads an upload once, as a
stream, so that what it costs is bounded by the limits and not by the upload: gzip only
(another compression, recognised by its magic bytes, is refused before anything is
decompressed), at most ``BackupLimits.unpacked`` bytes decompressed (refused as soon as that
is crossed: a decompression bomb), every member's declared size checked against its limit
before its data is read. It refuses, listing every problem at once: an archive larger than
the limit; members that are links (symbolic or hard), devices, FIFOs, folders or anything
but a plain file; absolute names, ``..`` or ``.`` parts, backslashes, names that are not
one of the members above; duplicates; members larger than their limit or too many of them;
a missing or unreadable manifest (it must come first), another format, an unknown version,
members missing from the manifest or listed but absent, and checksum mismatches. Members
are written only into the caller's new private folder (never following or replacing a
file), hashed as they are written and hashed once more there; on any problem the caller
removes that folder.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import re
import tarfile
import time
import zlib
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Self

from .. import __version__
from ..config import properties
from ..config.filenames import check_local_name
from ..errors import BackupError

__all__ = [
    "CONFIG_MEMBER",
    "FILES_PREFIX",
    "FORMAT",
    "HISTORY_MEMBER",
    "MANIFEST",
    "STORE_MEMBER",
    "VERSION",
    "BackupLimits",
    "Manifest",
    "Unpacked",
    "unpack",
    "write",
]

# What a damaged archive raises while it is read: tar, gzip (zlib) and file errors.
_DAMAGED = (tarfile.TarError, OSError, EOFError, zlib.error)

FORMAT = "wmbus-stream-backup"
VERSION = 1
MANIFEST = "manifest.json"
CONFIG_MEMBER = "stream.cfg"
STORE_MEMBER = "store.sqlite"
HISTORY_MEMBER = "history.sqlite"
FILES_PREFIX = "files/"
_REQUIRED = (CONFIG_MEMBER, STORE_MEMBER, HISTORY_MEMBER)
_MANIFEST_MAX = 256 * 1024
# A pax or GNU extended header (long names): write makes them only for names beyond ustar's.
_EXTENDED_MAX = 4096
_SHA256 = re.compile(r"[0-9a-f]{64}")
_GZIP = b"\x1f\x8b"
# Magic bytes of what an upload may be instead, to say what was found.
_FOUND = ((b"BZh", "bzip2-compressed"), (b"\xfd7zXZ\x00", "xz-compressed"), (b"\x5d\x00\x00", "lzma-compressed"),
          (b"\x28\xb5\x2f\xfd", "zstd-compressed"), (b"PK\x03\x04", "a zip archive"),
          (b"\x1f\x9d", "compress (.Z)-compressed"))


@dataclass(frozen=True, slots=True)
class BackupLimits:
    """Size limits of an archive and of its members, in bytes."""

    archive: int = 256 * 1024 * 1024
    config: int = properties.MAX_FILE
    store: int = 192 * 1024 * 1024
    history: int = 32 * 1024 * 1024
    file: int = 1024 * 1024
    files: int = 64
    files_total: int = 16 * 1024 * 1024

    @property
    def unpacked(self) -> int:
        """Most bytes an archive within these limits decompresses to: members, headers, padding."""
        members = 4 + self.files
        return (_MANIFEST_MAX + self.config + self.store + self.history + self.files_total
                + members * (3 * tarfile.BLOCKSIZE + _EXTENDED_MAX) + 2 * tarfile.RECORDSIZE)


@dataclass(frozen=True, slots=True)
class Manifest:
    """What ``manifest.json`` says."""

    version: int
    created: str
    gateway_serial: str
    software: str
    members: dict[str, tuple[int, str]]


@dataclass(frozen=True, slots=True)
class Unpacked:
    """A checked archive extracted into ``folder`` (member name -> path inside it)."""

    manifest: Manifest
    folder: Path
    paths: dict[str, Path]

    @property
    def files(self) -> dict[str, Path]:
        """The downloaded files, by their name inside the files folder."""
        return {name[len(FILES_PREFIX):]: path for name, path in self.paths.items() if name.startswith(FILES_PREFIX)}


def _sha256_file(path: Path) -> tuple[int, str]:
    digest = hashlib.sha256()
    size = 0
    with open(path, "rb") as handle:
        while chunk := handle.read(1 << 16):
            digest.update(chunk)
            size += len(chunk)
    return size, digest.hexdigest()


def write(dest: BinaryIO, members: Iterable[tuple[str, Path]], *, gateway_serial: str,
          created: float | None = None) -> Manifest:
    """Write an archive of ``members`` (name in the archive, file to read) with its manifest."""
    stamp = time.time() if created is None else created
    items = list(members)
    listed: dict[str, tuple[int, str]] = {name: _sha256_file(path) for name, path in items}
    manifest = Manifest(VERSION, time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(stamp)), gateway_serial,
                        __version__, listed)
    document = json.dumps({
        "format": FORMAT,
        "version": VERSION,
        "created": manifest.created,
        "gateway_serial": gateway_serial,
        "software": __version__,
        "members": {name: {"size": size, "sha256": digest} for name, (size, digest) in listed.items()},
    }, indent=1).encode("utf-8")

    def info(name: str, size: int) -> tarfile.TarInfo:
        entry = tarfile.TarInfo(name)
        entry.size, entry.mode, entry.mtime = size, 0o600, int(stamp)
        entry.uid = entry.gid = 0
        entry.uname = entry.gname = ""
        return entry

    with tarfile.open(fileobj=dest, mode="w:gz", format=tarfile.PAX_FORMAT) as tar:
        tar.addfile(info(MANIFEST, len(document)), io.BytesIO(document))
        for name, path in items:
            with open(path, "rb") as handle:
                tar.addfile(info(name, listed[name][0]), handle)
    return manifest


def _name_problem(name: str) -> str | None:
    if name.startswith("/"):
        return "absolute name"
    if "\\" in name:
        return "backslash in the name"
    if "\x00" in name or properties.bad_character(name) is not None:
        return "control character in the name"
    parts = name.split("/")
    if ".." in parts:
        return "'..' in the name"
    if name in (MANIFEST, *_REQUIRED):
        return None
    if name.startswith(FILES_PREFIX):
        reason = check_local_name(name[len(FILES_PREFIX):])
        return None if reason is None else reason.replace("local file name", "name")
    return "not a member of a wmbus-stream backup"


def _type_problem(member: tarfile.TarInfo) -> str | None:
    if member.issym():
        return f"symbolic link (to {member.linkname!r})"
    if member.islnk():
        return f"hard link (to {member.linkname!r})"
    if member.ischr() or member.isblk():
        return "device file"
    if member.isfifo():
        return "FIFO"
    if member.isdir():
        return "folder (a backup holds only files)"
    if member.type not in (tarfile.REGTYPE, tarfile.AREGTYPE):
        return "not a plain file (a backup holds only files)"
    return None


def _extract(handle: BinaryIO, name: str, folder: Path) -> tuple[int, str]:
    """Write one member below the new ``folder``, never following or replacing a file; its size and sha256.

    Done by hand rather than with ``extractall(filter="data")``: Debian bookworm's Python
    3.11.2, the gateways' Python, predates tarfile's extraction filters.
    """
    target = folder / name
    target.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | getattr(os, "O_CLOEXEC", 0), 0o600)
    digest = hashlib.sha256()
    size = 0
    with os.fdopen(fd, "wb") as out:
        while chunk := handle.read(1 << 16):
            digest.update(chunk)
            size += len(chunk)
            out.write(chunk)
    return size, digest.hexdigest()


def _size_limit(name: str, limits: BackupLimits) -> int:
    return {MANIFEST: _MANIFEST_MAX, CONFIG_MEMBER: limits.config, STORE_MEMBER: limits.store,
            HISTORY_MEMBER: limits.history}.get(name, limits.file)


def _found(head: bytes) -> str:
    """What an upload that is not gzip-compressed looks like, from its first bytes."""
    for magic, what in _FOUND:
        if head.startswith(magic):
            return what
    if head[257:262] == b"ustar":
        return "an uncompressed tar"
    return f"not a tar archive (it starts with the bytes {head[:4].hex(' ') or 'nothing'})"


class _Inflated:
    """The decompressed bytes of a gzip upload, read once; ``BackupError`` past the limits."""

    def __init__(self, source: BinaryIO, limits: BackupLimits) -> None:
        self.source, self.archive, self.limit = source, limits.archive, limits.unpacked
        head = b""
        while len(head) < tarfile.BLOCKSIZE and (chunk := source.read(tarfile.BLOCKSIZE - len(head))):
            head += chunk
        if not head.startswith(_GZIP):
            raise BackupError(f"{_found(head)}; a wmbus-stream backup is a gzip-compressed tar (it starts with the"
                              f" bytes {_GZIP.hex(' ')}), as 'config backup' writes it")
        self._inflate = zlib.decompressobj(16 + zlib.MAX_WBITS)  # gzip, nothing else
        self._input = head
        self.read_in = len(head)
        self.written = 0

    def read(self, size: int = -1) -> bytes:
        size = size if size > 0 else 1 << 16
        while not self._inflate.eof:
            if not self._input:
                self._input = self.source.read(1 << 16)
                self.read_in += len(self._input)
                if self.read_in > self.archive:
                    raise BackupError(f"archive larger than the limit of {self.archive} bytes")
                if not self._input:
                    raise BackupError("archive is damaged (the compressed data ends early)")
            try:
                data = self._inflate.decompress(self._input, size)
            except zlib.error as exc:
                raise BackupError(f"archive is damaged ({exc})") from None
            self._input = self._inflate.unconsumed_tail
            self.written += len(data)
            if self.written > self.limit:
                raise BackupError(f"more than {self.limit} bytes when decompressed, more than any backup within"
                                  " the limits (a decompression bomb?)")
            if data:
                return data
        return b""

    def finish(self) -> None:
        """Read to the end of the compressed data (its checksum); nothing may follow it."""
        while self.read(1 << 16):
            pass
        if self._inflate.unused_data or self.source.read(1):
            raise BackupError("data after the end of the compressed archive")


class _Header(tarfile.TarInfo):
    """A tar header that refuses an extended (pax or GNU) header larger than any ``write`` makes."""

    @classmethod
    def frombuf(cls, buf: bytes | bytearray, encoding: str, errors: str) -> Self:
        info = super().frombuf(buf, encoding, errors)
        if info.type in _EXTENDED and info.size > _EXTENDED_MAX:
            raise BackupError(f"an extended tar header of {info.size} bytes, more than the limit of {_EXTENDED_MAX}")
        return info


_EXTENDED = (tarfile.XHDTYPE, tarfile.XGLTYPE, tarfile.SOLARIS_XHDTYPE, tarfile.GNUTYPE_LONGNAME,
             tarfile.GNUTYPE_LONGLINK)


def _parse_manifest(data: bytes, problems: list[str]) -> Manifest | None:
    try:
        document = json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
        problems.append(f"{MANIFEST}: not valid JSON")
        return None
    if not isinstance(document, dict) or document.get("format") != FORMAT:
        problems.append(f"{MANIFEST}: not a {FORMAT} manifest")
        return None
    version = document.get("version")
    if version != VERSION:
        problems.append(f"{MANIFEST}: unknown version {version!r} (this gateway reads version {VERSION})")
        return None
    created, serial, software = document.get("created"), document.get("gateway_serial"), document.get("software", "")
    members = document.get("members")
    if (not isinstance(created, str) or not re.fullmatch(r"[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}Z", created)
            or not isinstance(serial, str) or not re.fullmatch(r"[0-9]{8}", serial)):
        problems.append(f"{MANIFEST}: created or gateway_serial missing or malformed")
        return None
    if not isinstance(members, dict):
        problems.append(f"{MANIFEST}: members missing")
        return None
    listed: dict[str, tuple[int, str]] = {}
    for name, entry in members.items():
        if (not isinstance(entry, dict) or not isinstance(entry.get("size"), int)
                or not isinstance(entry.get("sha256"), str) or not _SHA256.fullmatch(entry["sha256"])):
            problems.append(f"{MANIFEST}: entry of {name!r} needs a size and a sha256")
            continue
        listed[str(name)] = (entry["size"], entry["sha256"])
    software = software if isinstance(software, str) and software.isprintable() else "?"
    return Manifest(VERSION, created, serial, software[:40], listed)


def unpack(source: BinaryIO, folder: Path, limits: BackupLimits = BackupLimits()) -> Unpacked:
    """Read an archive once from ``source``, checking all of it, into the new ``folder``.

    Raises ``BackupError`` listing every problem, as soon as reading further would cost more
    than the limits allow; the caller then removes ``folder``.
    """
    inflated = _Inflated(source, limits)
    try:
        # Entered as a context below, once opening it (a damaged head) has been told apart.
        tar = tarfile.open(fileobj=inflated, mode="r|", tarinfo=_Header)  # type: ignore[call-overload]  # noqa: SIM115
    except _DAMAGED as exc:
        raise BackupError(f"not a tar archive ({exc})") from None
    problems: list[str] = []
    written: dict[str, tuple[int, str]] = {}
    manifest: Manifest | None = None
    files = files_total = members = 0
    with tar:
        try:
            for member in tar:
                name = member.name
                shown = name if name.isprintable() else repr(name)
                members += 1
                if members > limits.files + 8:
                    problems.append(f"more than {limits.files + 4} members")
                    break
                if member.size > _size_limit(name, limits):
                    # Its data is not read: stop here rather than decompress it to reach the next.
                    problems.append(f"member {shown}: {member.size} bytes, more than the limit of"
                                    f" {_size_limit(name, limits)}")
                    break
                problem = _name_problem(name) or _type_problem(member)
                if problem is None and (name in written or (name == MANIFEST and manifest is not None)):
                    problem = "appears twice"
                if members == 1 and name != MANIFEST:
                    problems.append(f"{MANIFEST} missing (it must be the first member)")
                if problem is None and name.startswith(FILES_PREFIX):
                    files += 1
                    files_total += member.size
                    if files > limits.files:
                        problem = f"more than {limits.files} files"
                    elif files_total > limits.files_total:
                        problem = f"files larger than {limits.files_total} bytes together"
                if problem is not None:
                    problems.append(f"member {shown}: {problem}")
                    continue
                handle = tar.extractfile(member)
                assert handle is not None  # a regular file
                if name == MANIFEST:
                    manifest = _parse_manifest(handle.read(_MANIFEST_MAX + 1), problems)
                    continue
                try:
                    written[name] = _extract(handle, name, folder)
                except OSError as exc:
                    problems.append(f"member {shown}: cannot be written ({exc.strerror or exc})")
            else:
                inflated.finish()
        except _DAMAGED as exc:
            problems.append(f"archive is damaged ({exc})")
    if problems:
        raise BackupError(problems)
    if manifest is None:
        raise BackupError(f"{MANIFEST} missing (it must be the first member)")
    for name in sorted(set(manifest.members) - set(written)):
        problems.append(f"member {name}: listed in the manifest but missing")
    for name in sorted(set(written) - set(manifest.members)):
        problems.append(f"member {name}: not listed in the manifest")
    for name in _REQUIRED:
        if name not in written and name not in manifest.members:
            problems.append(f"member {name}: missing")
    for name, found in sorted(written.items()):
        if name in manifest.members and found != manifest.members[name]:
            problems.append(f"member {name}: checksum mismatch (the archive is damaged or was altered)")
    if problems:
        raise BackupError(problems)
    paths = {name: folder / name for name in manifest.members}
    for name, path in paths.items():
        if path.is_symlink() or not path.is_file() or _sha256_file(path) != manifest.members[name]:
            raise BackupError(f"member {name}: changed during extraction")
        os.chmod(path, 0o600)
    return Unpacked(manifest, folder, paths)
