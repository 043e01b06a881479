"""Configuration management of one gateway: apply, set, history, revert, export, import,
backup and restore. The command line, the web UI and the configuration sync all go through
``ConfigManager``, so every change is validated, written and recorded the same way.

Strategy
- A change is validated first with the same code as ``config check`` (``model.loads`` of
  the exact text to be written); an invalid one raises ``ConfigError`` with every problem
  and writes nothing.
- A valid change is applied as one transaction (``transaction``): staged, committed by a
  journal, completed (file 0600 written atomically, history entry recorded). A crash at
  any instant leaves everything old or, after ``recover`` at the next start, everything
  new. ``on_applied(config)`` is called afterwards (the running gateway's reload).
- Applying what is already there writes nothing and records nothing (the file's mtime
  stays), and returns the newest history entry.
- One change at a time: a thread lock plus ``flock`` on ``config.lock`` in the state
  directory, so the CLI, the web UI and a sync never interleave.

State directory layout owned here: ``history.sqlite`` (the history), ``config.journal``
(only while a change is being applied), ``config.lock``, ``files/`` (downloaded files)
and hidden ``.stage-<id>`` staging folders.
"""

from __future__ import annotations

import fcntl
import logging
import os
import shutil
import sqlite3
import stat
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from .. import __version__
from ..atomic import PRIVATE, open_private, write_atomic
from ..core.store import SCHEMA as STORE_SCHEMA_SQL
from ..errors import ConfigError, Problem
from . import backup as archive
from . import model, pemfiles, properties, transaction
from .history import HISTORY_FILE, History, HistoryEntry
from .history import SCHEMA as HISTORY_SCHEMA_SQL
from .keys import BY_NAME, KEYS, MASK
from .model import Config

__all__ = [
    "ConfigManager",
    "HistoryEntry",
    "Applied",
    "RestoreResult",
    "BackupError",
    "BackupLimits",
    "ORIGINS",
    "HISTORY_FILE",
    "FILES_FOLDER",
    "STORE_FILE",
]

log = logging.getLogger("wmbus_stream.config")

ORIGINS = ("local", "import", "sync", "revert", "restore", "web")
FILES_FOLDER = "files"
STORE_FILE = "store.sqlite"  # the service's state database (service.STORE_FILE)
LOCK_FILE = "config.lock"

# Where this gateway keeps its state is as local as its serial: never exported, kept on import.
LOCAL_KEYS = frozenset({"state.directory"})

BackupError = archive.BackupError
BackupLimits = archive.BackupLimits


@dataclass(frozen=True, slots=True)
class Applied:
    """What one apply did: the newest history entry and what changed."""

    entry: HistoryEntry | None
    config_changed: bool
    files_written: tuple[str, ...]

    @property
    def changed(self) -> bool:
        return self.config_changed or bool(self.files_written)


@dataclass(frozen=True, slots=True)
class RestoreResult:
    """What a restore put in place."""

    entry: HistoryEntry | None
    created: str
    source_serial: str
    serial: str
    pending: int
    history_entries: int
    files: tuple[str, ...]

    def summary(self) -> str:
        kept = "kept" if self.serial != self.source_serial else "taken from the backup"
        return (f"restored the backup of gateway {self.source_serial} made {self.created}: {self.pending} meters"
                f" pending, {self.history_entries} history entries, {len(self.files)} files; serial {self.serial}"
                f" ({kept})")


def _no_hook(swap: Callable[[], None]) -> None:
    swap()


class ConfigManager:
    """Validated, atomic, recorded changes of one gateway's configuration file."""

    def __init__(
        self,
        config_path: str | os.PathLike[str],
        state_directory: str | os.PathLike[str],
        on_applied: Callable[[Config], object] | None = None,
        *,
        before_backup: Callable[[], object] | None = None,
        replace_state: Callable[[Callable[[], None]], None] | None = None,
        history_limit: int = 200,
    ) -> None:
        """``before_backup`` lets a running gateway flush its state first; ``replace_state(swap)``
        must close the state database, call ``swap()`` and reopen it (default: just ``swap()``)."""
        self.config_path = Path(config_path)
        self.state_directory = Path(state_directory)
        self.files_directory = self.state_directory / FILES_FOLDER
        self.on_applied = on_applied
        self.before_backup = before_backup
        self.replace_state = replace_state or _no_hook
        self.history_store = History(self.state_directory / HISTORY_FILE, history_limit)
        self._lock = threading.RLock()
        self._depth = 0
        self._lock_fd: int | None = None
        self.recovered = False
        self._ready = False
        try:
            with self._locked():
                self.recovered = transaction.recover(self.state_directory, self.config_path, self.files_directory)
        except PermissionError as exc:
            log.debug("no recovery check for %s: %s", self.state_directory, exc)
        self._ready = True

    # -- locking ------------------------------------------------------------------------------

    @contextmanager
    def _locked(self) -> Iterator[None]:
        with self._lock:
            if self._depth == 0:
                self.state_directory.mkdir(parents=True, exist_ok=True, mode=0o700)
                fd = open_private(self.state_directory / LOCK_FILE, os.O_RDWR)
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX)
                except BaseException:
                    os.close(fd)
                    raise
                self._lock_fd = fd
            self._depth += 1
            if self._depth == 1 and self._ready and transaction.pending(self.state_directory):
                try:
                    # A change that failed half-way in this process (disk full...) is finished first.
                    transaction.recover(self.state_directory, self.config_path, self.files_directory,
                                        databases=False)
                except BaseException:
                    self._release()
                    raise
            try:
                yield
            finally:
                self._release()

    def _release(self) -> None:
        self._depth -= 1
        if self._depth == 0 and self._lock_fd is not None:
            os.close(self._lock_fd)  # closing releases the flock
            self._lock_fd = None

    # -- reading ------------------------------------------------------------------------------

    def current(self) -> Config:
        """The configuration in the file (ConfigError listing every problem when invalid)."""
        return model.load(self.config_path)

    def _base(self) -> Config:
        """The current configuration, or the defaults when there is no file yet."""
        if not self.config_path.exists():
            return model.defaults()
        return self.current()

    def _current_or_none(self) -> Config | None:
        """The configuration in the file, or None when there is none or it is invalid."""
        try:
            return self.current() if self.config_path.exists() else None
        except ConfigError:
            return None

    def _file_text(self) -> str | None:
        try:
            return properties.read_bytes(self.config_path).decode("utf-8")
        except (OSError, ConfigError, UnicodeDecodeError):
            return None

    def history(self) -> list[HistoryEntry]:
        """Every kept configuration, newest first."""
        return self.history_store.entries()

    def entry(self, number: int) -> HistoryEntry | None:
        """One history entry, or None."""
        return self.history_store.get(number)

    # -- applying -----------------------------------------------------------------------------

    def render(self, new: Config | Mapping[str, str]) -> str:
        """The file text for ``new``, keeping the current file's comments and order."""
        config = new if isinstance(new, Config) else model.parse(new)
        template: properties.Properties | None = None
        try:
            document = properties.read(self.config_path)
            if not document.problems:
                template = document
        except OSError:
            pass
        return model.to_text(config, template=template)

    def apply(self, new: Config | Mapping[str, str], origin: str, note: str = "") -> HistoryEntry:
        """Validate, write atomically (0600), record and announce a configuration.

        Writes and records nothing when the file already holds exactly this configuration.
        """
        config = new if isinstance(new, Config) else model.parse(new)
        entry = self.apply_bundle(self.render(config), origin, note).entry
        assert entry is not None
        return entry

    def set(self, changes: Mapping[str, str | None], origin: str = "local", note: str = "") -> HistoryEntry:
        """Change some keys (None resets to the default; a secret sent as ``********`` is kept).

        The history note is ``note`` when given, else the names of the keys set.
        """
        with self._locked():
            base = self._base()
            unknown = [Problem(name, "", "a known key") for name, v in changes.items() if v is None and name not in BY_NAME]
            if unknown:
                raise ConfigError(unknown)
            new = base.with_changes(changes)
            names = ", ".join(sorted(changes))
            return self.apply(new, origin, note or (f"set {names}" if names else ""))

    def revert(self, number: int, origin: str = "revert") -> HistoryEntry:
        """Apply history entry ``number`` again, exactly as it was written."""
        with self._locked():
            old = self.history_store.get(number)
            if old is None:
                numbers = [e.number for e in self.history_store.entries()]
                kept = f"{min(numbers)}..{max(numbers)}" if numbers else "none kept yet"
                raise ConfigError(Problem("history", str(number), f"the number of a kept entry ({kept})"))
            entry = self.apply_bundle(old.text, origin, f"revert to #{number}").entry
            assert entry is not None
            return entry

    def apply_bundle(
        self,
        text: str,
        origin: str,
        note: str = "",
        files: Mapping[str, bytes] | None = None,
    ) -> Applied:
        """Apply a configuration text and files (name inside the files folder -> content) at once.

        Everything is checked before anything is written: the text exactly as ``config
        check`` would check the file, each file name and the folders on its way (no links),
        and every CA, certificate or key file a changed key points at (``pemfiles``).
        """
        if origin not in ORIGINS:
            raise ValueError(f"origin must be one of {', '.join(ORIGINS)}, not {origin!r}")
        config = model.loads(text)
        files = dict(files or {})
        with self._locked():
            problems = self._file_problems(files)
            if not problems:
                staged = {self.files_directory / name: data for name, data in files.items()}
                problems = pemfiles.problems(config, self._current_or_none(), staged)
            if problems:
                raise ConfigError(problems)
            current_text = self._file_text()
            before = _config_or_none(current_text)
            if before is not None:  # a change never loses a required key (a new file is built key by key)
                model.require(config, before=before)
            config_changed = current_text != text
            to_write = {name: data for name, data in files.items() if not self._same_file(name, data)}
            if not config_changed and not to_write:
                return Applied(self._ensure_history(), False, ())
            if config_changed:
                self._ensure_history()
            change_id = transaction.new_id()
            moves: list[transaction.Move] = []
            staging: list[str] = []
            if to_write:
                folder = transaction.stage_folder(self.files_directory, change_id)
                staging.append(str(folder))
                for number, (name, data) in enumerate(sorted(to_write.items())):
                    staged = folder / str(number)
                    transaction.write_staged(staged, data)
                    moves.append(transaction.Move(str(staged), str(self.files_directory / name),
                                                  confined_to=str(self.files_directory)))
            plan = transaction.Plan(
                id=change_id,
                state_directory=str(self.state_directory),
                config_path=str(self.config_path),
                config_text=text if config_changed else None,
                moves=tuple(moves),
                history={"origin": origin, "note": note, "time": time.time()} if config_changed else None,
                staging=tuple(staging),
            )
            try:
                transaction.commit(plan)
            except BaseException:
                transaction.discard(plan)
                raise
            transaction.complete(plan)
            entry = self.history_store.latest()
        written = tuple(sorted(to_write))
        log.info("configuration %s applied (%s%s)%s", f"#{entry.number}" if entry and config_changed else "unchanged,",
                 origin, f": {note}" if note else "", f"; files written: {', '.join(written)}" if written else "")
        if config_changed and self.on_applied is not None:
            self.on_applied(config)
        return Applied(entry, config_changed, written)

    def _ensure_history(self) -> HistoryEntry | None:
        """The newest entry; the file found on disk becomes entry 1 when nothing is recorded yet."""
        latest = self.history_store.latest()
        if latest is not None:
            return latest
        text = self._file_text()
        if text is None:
            return None
        try:
            model.loads(text)
        except ConfigError:
            return None
        try:
            when = self.config_path.stat().st_mtime
        except OSError:
            when = time.time()
        return self.history_store.record(text, "local", "configuration found on disk", when=when)

    def _file_problems(self, files: Mapping[str, bytes]) -> list[Problem]:
        problems = []
        for name in files:
            reason = self.check_file_name(name)
            if reason is not None:
                problems.append(Problem(f"files/{name}", "", f"a file inside the files folder ({reason})"))
        return problems

    def check_file_name(self, name: str) -> str | None:
        """Why ``name`` cannot be written inside the files folder (no links on the way), or None."""
        from ..sync.cad import check_local_name

        return check_local_name(name) or transaction.check_target(self.files_directory, self.files_directory / name)

    def _same_file(self, name: str, data: bytes) -> bool:
        path = self.files_directory / name
        try:
            st = os.lstat(path)
            if not stat.S_ISREG(st.st_mode) or st.st_size != len(data):
                return False
            return path.read_bytes() == data
        except OSError:
            return False

    # -- export and import --------------------------------------------------------------------

    def export_text(self) -> str:
        """The configuration for other gateways: no device-specific keys, no secrets."""
        values = {name: value for name, value in self.current().exported().items() if name not in LOCAL_KEYS}
        header = (
            f"wmbus-stream {__version__} configuration export, "
            f"{time.strftime('%Y-%m-%d %H:%M:%S', time.gmtime())} UTC",
            "device-specific keys (serial number, credentials, receiver address, state directory) and secrets"
            " are left out",
        )
        return properties.render(values, header=header)

    def import_text(self, data: bytes | str, origin: str = "import") -> HistoryEntry:
        """Apply an exported configuration (all or nothing); this gateway's device-specific keys stay."""
        document = properties.parse(data)
        if document.problems:
            raise ConfigError([model.private(problem) for problem in document.problems])
        with self._locked():
            base = self._base()
            values: dict[str, str] = {}
            ignored: list[str] = []
            for name, value in document.values.items():
                key = BY_NAME.get(name)
                if key is not None and (key.device_specific or name in LOCAL_KEYS or (key.secret and value == MASK)):
                    ignored.append(name)
                    continue
                values[name] = value
            for key in KEYS:
                if (key.device_specific or key.name in LOCAL_KEYS) and key.name in base.explicit:
                    values[key.name] = base.raw[key.name]
            new = model.parse(values)
            note = f"ignored device-specific keys: {', '.join(ignored)}" if ignored else ""
            return self.apply(new, origin, note)

    # -- backup and restore -------------------------------------------------------------------

    def backup(self, dest: BinaryIO) -> None:
        """Write a backup archive (configuration, state database, history, files) to ``dest``."""
        if self.before_backup is not None:
            self.before_backup()
        with self._locked(), tempfile.TemporaryDirectory(prefix=".backup-", dir=self.state_directory) as tmp:
            folder = Path(tmp)
            text = self._file_text()
            if text is None:
                raise archive.BackupError(f"configuration file {self.config_path} cannot be read")
            config = model.loads(text)
            write_atomic(folder / "stream.cfg", text, PRIVATE)
            store_copy = folder / "store.sqlite"
            _copy_database(self.state_directory / STORE_FILE, store_copy)
            history_copy = folder / "history.sqlite"
            self.history_store.copy_to(history_copy)
            members: list[tuple[str, Path]] = [
                (archive.CONFIG_MEMBER, folder / "stream.cfg"),
                (archive.STORE_MEMBER, store_copy),
                (archive.HISTORY_MEMBER, history_copy),
            ]
            members += [(archive.FILES_PREFIX + name, path) for name, path in self._files()]
            manifest = archive.write(dest, members, gateway_serial=config.gateway_serial)
        log.info("backup written: configuration, state, %d history entries, %d files",
                 len(self.history()), len(manifest.members) - 3)

    def _files(self) -> list[tuple[str, Path]]:
        """Regular files in the files folder (links and hidden staging folders left out)."""
        found: list[tuple[str, Path]] = []
        root = self.files_directory
        if not root.is_dir() or root.is_symlink():
            return found
        for folder, dirs, names in os.walk(root, followlinks=False):
            dirs[:] = sorted(d for d in dirs if not d.startswith("."))
            for name in sorted(names):
                path = Path(folder) / name
                if name.startswith(".") or path.is_symlink() or not path.is_file():
                    continue
                found.append((path.relative_to(root).as_posix(), path))
        return found

    def restore(self, source: BinaryIO, keep_serial: bool = True,
                limits: BackupLimits = BackupLimits()) -> RestoreResult:
        """Replace configuration, state, history and files with a backup's, after checking all of it.

        With ``keep_serial`` this gateway keeps its ``gateway.serial`` (a replacement device);
        ``state.directory`` always stays this gateway's. Raises ``BackupError`` (or
        ``ConfigError`` for the configuration) with every problem; nothing is changed then.
        """
        change_id = transaction.new_id()
        folder = transaction.stage_folder(self.state_directory, change_id)
        plan: transaction.Plan | None = None
        try:
            with transaction.held(folder):
                # Read and checked completely before the lock: a slow or costly upload blocks no change.
                unpacked = archive.unpack(source, folder, limits)
                problems: list[str] = []
                pending = entries = 0
                try:
                    text, restored = _backup_config(unpacked)
                except archive.BackupError as exc:
                    problems += exc.problems
                try:
                    pending = _check_database(unpacked.paths[archive.STORE_MEMBER], STORE_SCHEMA,
                                              "wmbus-stream state database")
                except ValueError as exc:
                    problems.append(f"member {archive.STORE_MEMBER}: {exc}")
                try:
                    entries = _check_database(unpacked.paths[archive.HISTORY_MEMBER], HISTORY_SCHEMA,
                                              "wmbus-stream history database")
                except ValueError as exc:
                    problems.append(f"member {archive.HISTORY_MEMBER}: {exc}")
                if problems:
                    raise archive.BackupError(problems)
                with self._locked():
                    text, serial = self._adapted(text, restored, keep_serial)
                    config = model.loads(text)
                    # CA and key files the restored configuration names, as they will be after the swap.
                    staged: dict[Path, bytes | None] = {path: None for name, path in self._files()
                                                        if name not in unpacked.files}
                    staged.update({self.files_directory / name: path.read_bytes()
                                   for name, path in unpacked.files.items()})
                    pem_problems = pemfiles.problems(config, self._current_or_none(), staged)
                    if pem_problems:
                        raise ConfigError(pem_problems)
                    plan = self._restore_plan(unpacked, change_id, text)

                    def swap() -> None:
                        transaction.commit(plan)
                        transaction.complete(plan)

                    try:
                        self.replace_state(swap)
                    except BaseException:
                        transaction.discard(plan)
                        raise
                    entry = self.history_store.latest()
        except BaseException:
            if plan is None:  # else discard decided what of it to keep
                shutil.rmtree(folder, ignore_errors=True)
            raise
        manifest = unpacked.manifest
        restored_files = unpacked.files
        result = RestoreResult(entry, manifest.created, manifest.gateway_serial, serial, pending, entries + 1,
                               tuple(sorted(restored_files)))
        log.info("%s", result.summary())
        if self.on_applied is not None:
            self.on_applied(config)
        return result

    def _restore_plan(self, unpacked: archive.Unpacked, change_id: str, text: str) -> transaction.Plan:
        """The transaction that puts a checked backup in place (called with the lock held)."""
        restored_files = unpacked.files
        removals = tuple(str(path) for name, path in self._files() if name not in restored_files)
        moves = [
            transaction.Move(str(unpacked.paths[archive.STORE_MEMBER]), str(self.state_directory / STORE_FILE),
                             database=True),
            transaction.Move(str(unpacked.paths[archive.HISTORY_MEMBER]),
                             str(self.state_directory / HISTORY_FILE), database=True),
        ]
        moves += [transaction.Move(str(path), str(self.files_directory / name), confined_to=str(self.files_directory))
                  for name, path in sorted(restored_files.items())]
        for name in restored_files:
            reason = transaction.check_target(self.files_directory, self.files_directory / name)
            if reason is not None:
                raise archive.BackupError(f"member files/{name}: {reason}")
        manifest = unpacked.manifest
        return transaction.Plan(
            id=change_id,
            state_directory=str(self.state_directory),
            config_path=str(self.config_path),
            config_text=text,
            moves=tuple(moves),
            removals=removals,
            history={"origin": "restore", "time": time.time(),
                     "note": f"backup of gateway {manifest.gateway_serial} made {manifest.created}"},
            staging=(str(unpacked.folder),),
        )

    def _adapted(self, text: str, restored: Config, keep_serial: bool) -> tuple[str, str]:
        """The backup's configuration text adapted to this gateway, and the serial it gets."""
        changes: dict[str, str | None] = {}
        try:
            here = self.current()
        except ConfigError:
            here = None
        serial = restored.gateway_serial
        if here is not None:
            if keep_serial and here.gateway_serial != restored.gateway_serial:
                changes["gateway.serial"] = here.raw["gateway.serial"]
                serial = here.gateway_serial
            if here.raw["state.directory"] != restored.raw["state.directory"]:
                changes["state.directory"] = here.raw["state.directory"]
        if not changes:
            return text, serial
        adapted = restored.with_changes(changes)
        return model.to_text(adapted, template=properties.parse(text)), serial


def _config_or_none(text: str | None) -> Config | None:
    """The configuration of a file's text, or None when there is none or it is invalid."""
    try:
        return model.loads(text) if text is not None else None
    except ConfigError:
        return None


def _backup_config(unpacked: archive.Unpacked) -> tuple[str, Config]:
    """The configuration in a backup, its text and its validated content."""
    try:
        text = unpacked.paths[archive.CONFIG_MEMBER].read_bytes().decode("utf-8")
    except UnicodeDecodeError:
        raise archive.BackupError(f"member {archive.CONFIG_MEMBER}: not UTF-8 text") from None
    try:
        return text, model.loads(text)
    except ConfigError as exc:
        raise archive.BackupError([f"member {archive.CONFIG_MEMBER}: {p}" for p in exc.problems]) from None


def _copy_database(path: Path, destination: Path) -> None:
    """A consistent copy of the state database (SQLite backup API), or an empty one."""
    os.close(open_private(destination))
    target = sqlite3.connect(destination)
    try:
        if not path.exists():
            for statement in STORE_SCHEMA_SQL:
                target.execute(statement)
            return
        # A plain connection: a read-only one cannot open a WAL database whose -shm is missing.
        source = sqlite3.connect(path, timeout=10.0)
        try:
            source.backup(target)
        finally:
            source.close()
        # A self-contained file: no WAL expected beside it when restored.
        target.execute("PRAGMA journal_mode=DELETE")
    finally:
        target.close()


# What sqlite_master holds: name -> (type, table, SQL with its white space collapsed).
Schema = dict[str, tuple[str, str, "str | None"]]


def _schema(db: sqlite3.Connection) -> Schema:
    return {name: (kind, table, None if sql is None else " ".join(sql.split()))
            for kind, name, table, sql in db.execute("SELECT type, name, tbl_name, sql FROM sqlite_master")}


def _schema_of(statements: tuple[str, ...]) -> Schema:
    """The schema of a new database made by ``statements``: exactly what the gateway writes."""
    db = sqlite3.connect(":memory:")
    try:
        for statement in statements:
            db.execute(statement)
        return _schema(db)
    finally:
        db.close()


STORE_SCHEMA = _schema_of(STORE_SCHEMA_SQL)
HISTORY_SCHEMA = _schema_of((HISTORY_SCHEMA_SQL,))
_SQLITE_MAGIC = b"SQLite format 3\x00"


def _schema_problems(found: Schema, expected: Schema) -> list[str]:
    """How ``found`` differs from ``expected``: every object missing, extra or different."""
    problems = [f"{found[name][0]} {name!r} (of {found[name][1]!r}) is not part of it"
                for name in sorted(set(found) - set(expected))]
    problems += [f"{expected[name][0]} {name!r} missing" for name in sorted(set(expected) - set(found))]
    for name in sorted(set(found) & set(expected)):
        kind, table, sql = found[name]
        if (kind, table) != expected[name][:2]:
            problems.append(f"{name!r} is a {kind} of {table!r}, the gateway writes a {expected[name][0]}")
        elif sql != expected[name][2]:
            problems.append(f"{kind} {name!r} is {sql!r}, the gateway writes {expected[name][2]!r}")
    return problems


def _check_database(path: Path, expected: Schema, kind: str) -> int:
    """Rows of the first table of a restored database; ValueError saying why it is not usable.

    Accepted: exactly the schema the gateway writes (tables, columns, indexes; no trigger, view
    or other table), in rollback-journal mode and UTF-8 as its backup writes it, intact.
    """
    with open(path, "rb") as handle:
        header = handle.read(100)
    if len(header) < 100 or not header.startswith(_SQLITE_MAGIC):
        raise ValueError("not an SQLite database")
    if header[18:20] != b"\x01\x01":
        raise ValueError(f"journal mode {'WAL' if 2 in header[18:20] else 'unknown'}; a backup holds its databases"
                         " in rollback-journal mode")
    if header[56:60] != b"\x00\x00\x00\x01":
        raise ValueError("not UTF-8 (the gateway's databases are)")
    try:
        db = sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True)
    except sqlite3.Error as exc:
        raise ValueError(f"cannot be opened ({exc})") from None
    try:
        db.execute("PRAGMA trusted_schema=OFF")
        problems = _schema_problems(_schema(db), expected)
        if problems:
            allowed = ", ".join(f"{what} {name}" for name, (what, _, _) in sorted(expected.items()))
            raise ValueError(f"not a {kind}: {'; '.join(problems)} (allowed: exactly {allowed})")
        result = db.execute("PRAGMA integrity_check").fetchall()
        if result != [("ok",)]:
            raise ValueError(f"integrity check failed: {'; '.join(str(row[0]) for row in result[:3])}")
        table = next(name for name, (what, _, _) in expected.items() if what == "table")
        return int(db.execute(f'SELECT count(*) FROM "{table}"').fetchone()[0])
    except sqlite3.Error as exc:
        raise ValueError(f"not a readable database ({exc})") from None
    finally:
        db.close()
