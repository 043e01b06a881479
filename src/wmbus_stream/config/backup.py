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

Reading (``unpack``) refuses, listing every problem at once, before anything is extracted:
an archive larger than the limit; members that are links (symbolic or hard), devices,
FIFOs or folders; absolute names, ``..`` or ``.`` parts, backslashes, names that are not
one of the members above; duplicates; members larger than their limit or too many of
them; a missing or unreadable manifest, another format, an unknown version, members
missing from the manifest or listed but absent, and checksum mismatches. Only then are the
members extracted, with ``tarfile``'s ``data`` filter as a second line of defence, into a
staging folder, and their checksums are verified once more there.
"""

from __future__ import annotations

import hashlib
import io
import json
import lzma
import os
import re
import shutil
import tarfile
import tempfile
import time
import zlib
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from .. import __version__
from ..errors import WmbusStreamError
from . import properties

__all__ = [
    "BackupError",
    "BackupLimits",
    "Manifest",
    "Unpacked",
    "FORMAT",
    "VERSION",
    "MANIFEST",
    "CONFIG_MEMBER",
    "STORE_MEMBER",
    "HISTORY_MEMBER",
    "FILES_PREFIX",
    "write",
    "unpack",
]

# What a damaged archive raises while it is read: tar, gzip (zlib), xz and bzip2 (OSError) errors.
_DAMAGED = (tarfile.TarError, OSError, EOFError, zlib.error, lzma.LZMAError)

FORMAT = "wmbus-stream-backup"
VERSION = 1
MANIFEST = "manifest.json"
CONFIG_MEMBER = "stream.cfg"
STORE_MEMBER = "store.sqlite"
HISTORY_MEMBER = "history.sqlite"
FILES_PREFIX = "files/"
_REQUIRED = (CONFIG_MEMBER, STORE_MEMBER, HISTORY_MEMBER)
_MANIFEST_MAX = 256 * 1024
_SHA256 = re.compile(r"[0-9a-f]{64}")


class BackupError(WmbusStreamError, ValueError):
    """A backup cannot be written or restored; ``problems`` lists every reason."""

    def __init__(self, problems: list[str] | str) -> None:
        self.problems = [problems] if isinstance(problems, str) else list(problems)
        super().__init__("; ".join(self.problems))


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
    from ..sync.cad import check_local_name

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
    if not member.isreg():
        return "not a regular file"
    return None


def _extract(tar: tarfile.TarFile, member: tarfile.TarInfo, folder: Path) -> None:
    """Write one checked regular member below the new ``folder``; never follows or replaces a file.

    Done by hand rather than with ``extractall(filter="data")``: Debian bookworm's Python
    3.11.2, the gateways' Python, predates tarfile's extraction filters.
    """
    source = tar.extractfile(member)
    if source is None:
        raise tarfile.ExtractError(f"{member.name} is not a regular file")
    target = folder / member.name
    target.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | getattr(os, "O_CLOEXEC", 0), 0o600)
    with os.fdopen(fd, "wb") as out:
        shutil.copyfileobj(source, out, 1 << 16)


def _size_limit(name: str, limits: BackupLimits) -> int:
    return {MANIFEST: _MANIFEST_MAX, CONFIG_MEMBER: limits.config, STORE_MEMBER: limits.store,
            HISTORY_MEMBER: limits.history}.get(name, limits.file)


def _spool(source: BinaryIO, folder: Path, limit: int) -> BinaryIO:
    """Copy the upload to an unnamed temporary file (nothing left behind), at most ``limit`` bytes."""
    spool = tempfile.TemporaryFile(dir=folder)  # noqa: SIM115  (closed by the caller)
    total = 0
    try:
        while chunk := source.read(1 << 16):
            total += len(chunk)
            if total > limit:
                raise BackupError(f"archive larger than the limit of {limit} bytes")
            spool.write(chunk)
        spool.seek(0)
    except BaseException:
        spool.close()
        raise
    return spool


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
    """Check an archive completely, then extract it into ``folder`` (which must exist, empty).

    Raises ``BackupError`` listing every problem; nothing is extracted then.
    """
    spool = _spool(source, folder.parent, limits.archive)
    try:
        try:
            tar = tarfile.open(fileobj=spool, mode="r:*")
        except _DAMAGED as exc:
            raise BackupError(f"not a tar archive ({exc})") from None
        with tar:
            problems: list[str] = []
            accepted: list[tarfile.TarInfo] = []
            seen: set[str] = set()
            files = files_total = 0
            try:
                for member in tar:
                    name = member.name
                    shown = name if name.isprintable() else repr(name)
                    if len(seen) + len(problems) > limits.files + 8:
                        problems.append(f"more than {limits.files + 4} members")
                        break
                    problem = _name_problem(name) or _type_problem(member)
                    if problem is None and name in seen:
                        problem = "appears twice"
                    if problem is None and member.size > _size_limit(name, limits):
                        problem = f"{member.size} bytes, more than the limit of {_size_limit(name, limits)}"
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
                    seen.add(name)
                    accepted.append(member)
            except _DAMAGED as exc:
                problems.append(f"archive is damaged ({exc})")
            if problems:
                raise BackupError(problems)
            names = [m.name for m in accepted]
            if not names or names[0] != MANIFEST:
                raise BackupError(f"{MANIFEST} missing (it must be the first member)")
            try:
                manifest_file = tar.extractfile(accepted[0])
                assert manifest_file is not None
                manifest = _parse_manifest(manifest_file.read(_MANIFEST_MAX + 1), problems)
            except _DAMAGED as exc:
                raise BackupError(f"{MANIFEST} cannot be read ({exc})") from None
            if manifest is None:
                raise BackupError(problems)
            content = set(names[1:])
            for name in sorted(set(manifest.members) - content):
                problems.append(f"member {name}: listed in the manifest but missing")
            for name in sorted(content - set(manifest.members)):
                problems.append(f"member {name}: not listed in the manifest")
            for name in _REQUIRED:
                if name not in content and name not in manifest.members:
                    problems.append(f"member {name}: missing")
            for member in accepted[1:]:
                expected = manifest.members.get(member.name)
                if expected is None:
                    continue
                digest = hashlib.sha256()
                try:
                    handle = tar.extractfile(member)
                    assert handle is not None
                    while chunk := handle.read(1 << 16):
                        digest.update(chunk)
                except _DAMAGED as exc:
                    problems.append(f"member {member.name}: cannot be read ({exc})")
                    continue
                if member.size != expected[0] or digest.hexdigest() != expected[1]:
                    problems.append(f"member {member.name}: checksum mismatch (the archive is damaged or was altered)")
            if problems:
                raise BackupError(problems)
            try:
                for member in accepted[1:]:
                    _extract(tar, member, folder)
            except _DAMAGED as exc:
                raise BackupError(f"extraction refused: {exc}") from None
    finally:
        spool.close()
    paths = {name: folder / name for name in manifest.members}
    for name, path in paths.items():
        if path.is_symlink() or not path.is_file() or _sha256_file(path) != manifest.members[name]:
            raise BackupError(f"member {name}: changed during extraction")
        os.chmod(path, 0o600)
    return Unpacked(manifest, folder, paths)
