"""Configuration management of one gateway: apply, set, history, revert, export and import.
The command line, the web UI, the configuration sync and a restore (``state.backup``) all go
through ``ConfigManager``, so every change is validated, written and recorded the same way.

Strategy
- A change is validated first with the same code as ``config check`` (``model.loads`` of
  the exact text to be written); an invalid one raises ``ConfigError`` with every problem
  and writes nothing.
- A valid change is applied as one transaction (``journal``): staged, committed by a
  journal, completed (file 0600 written atomically, history entry recorded: ``finish``).
  A crash at any instant leaves everything old or, after ``recover`` at the next start,
  everything new. ``on_applied(config)`` is called afterwards (the running gateway's reload).
- Applying what is already there writes nothing and records nothing (the file's mtime
  stays), and returns the newest history entry.
- One change at a time: a thread lock plus ``flock`` on ``config.lock`` in the state
  directory (``locked``), so the CLI, the web UI, a sync and a restore never interleave.

State directory layout owned here: ``history.sqlite`` (the history), ``config.journal``
(only while a change is being applied), ``config.lock``, ``files/`` (downloaded files)
and hidden ``.stage-<id>`` staging folders.
"""

from __future__ import annotations

import fcntl
import logging
import os
import stat
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from .. import __version__, journal
from ..atomic import open_private, write_atomic
from ..errors import ConfigError, Problem
from . import model, pemfiles, properties
from .filenames import check_local_name
from .history import HISTORY_FILE, ORIGINS, History, HistoryEntry
from .keys import BY_NAME, KEYS, MASK
from .model import Config

__all__ = [
    "FILES_FOLDER",
    "HISTORY_FILE",
    "ORIGINS",
    "Applied",
    "ConfigManager",
    "HistoryEntry",
    "finish",
]

log = logging.getLogger("wmbus_stream.config")

FILES_FOLDER = "files"
LOCK_FILE = "config.lock"

# Where this gateway keeps its state is as local as its serial: never exported, kept on import.
LOCAL_KEYS = frozenset({"state.directory"})


@dataclass(frozen=True, slots=True)
class Applied:
    """What one apply did: the newest history entry and what changed."""

    entry: HistoryEntry | None
    config_changed: bool
    files_written: tuple[str, ...]

    @property
    def changed(self) -> bool:
        return self.config_changed or bool(self.files_written)


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
        """The hooks of a running gateway that ``state.backup`` calls under this manager's lock:
        ``before_backup`` flushes its state first; ``replace_state(swap)`` must close the state
        database, call ``swap()`` and reopen it (default: just ``swap()``)."""
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
            with self.locked():
                self.recovered = journal.recover(self.state_directory, self.config_path, self.files_directory, finish)
        except PermissionError as exc:
            log.debug("no recovery check for %s: %s", self.state_directory, exc)
        self._ready = True

    # -- locking ------------------------------------------------------------------------------

    @contextmanager
    def locked(self) -> Iterator[None]:
        """Hold the one-change-at-a-time lock (re-entrant within this manager)."""
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
            if self._depth == 1 and self._ready and journal.pending(self.state_directory):
                try:
                    # A change that failed half-way in this process (disk full...) is finished first.
                    journal.recover(self.state_directory, self.config_path, self.files_directory,
                                    finish, databases=False)
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

    def current_or_none(self) -> Config | None:
        """The configuration in the file, or None when there is none or it is invalid."""
        try:
            return self.current() if self.config_path.exists() else None
        except ConfigError:
            return None

    def file_text(self) -> str | None:
        """The file's text exactly as it is, or None when it cannot be read."""
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
        with self.locked():
            base = self._base()
            unknown = [Problem(name, "", "a known key") for name, v in changes.items() if v is None and name not in BY_NAME]
            if unknown:
                raise ConfigError(unknown)
            new = base.with_changes(changes)
            names = ", ".join(sorted(changes))
            return self.apply(new, origin, note or (f"set {names}" if names else ""))

    def revert(self, number: int, origin: str = "revert") -> HistoryEntry:
        """Apply history entry ``number`` again, exactly as it was written."""
        with self.locked():
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
        with self.locked():
            problems = self._file_problems(files)
            if not problems:
                staged = {self.files_directory / name: data for name, data in files.items()}
                problems = pemfiles.problems(config, self.current_or_none(), staged)
            if problems:
                raise ConfigError(problems)
            current_text = self.file_text()
            before = _config_or_none(current_text)
            if before is not None:  # a change never loses a required key (a new file is built key by key)
                model.require(config, before=before)
            config_changed = current_text != text
            to_write = {name: data for name, data in files.items() if not self._same_file(name, data)}
            if not config_changed and not to_write:
                return Applied(self._ensure_history(), False, ())
            if config_changed:
                self._ensure_history()
            change_id = journal.new_id()
            moves: list[journal.Move] = []
            staging: list[str] = []
            if to_write:
                folder = journal.stage_folder(self.files_directory, change_id)
                staging.append(str(folder))
                for number, (name, data) in enumerate(sorted(to_write.items())):
                    path = folder / str(number)
                    journal.write_staged(path, data)
                    moves.append(journal.Move(str(path), str(self.files_directory / name),
                                              confined_to=str(self.files_directory)))
            plan = journal.Plan(
                id=change_id,
                state_directory=str(self.state_directory),
                config_path=str(self.config_path),
                config_text=text if config_changed else None,
                moves=tuple(moves),
                history={"origin": origin, "note": note, "time": time.time()} if config_changed else None,
                staging=tuple(staging),
            )
            try:
                journal.commit(plan)
            except BaseException:
                journal.discard(plan)
                raise
            journal.complete(plan, finish)
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
        text = self.file_text()
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
        return check_local_name(name) or journal.check_target(self.files_directory, self.files_directory / name)

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
            (f"wmbus-stream {__version__} configuration export, "
             f"{time.strftime('%Y-%m-%d %H:%M:%S', time.gmtime())} UTC"),
            ("device-specific keys (serial number, credentials, receiver address, state directory) and secrets"
             " are left out"),
        )
        return properties.render(values, header=header)

    def import_text(self, data: bytes | str, origin: str = "import") -> HistoryEntry:
        """Apply an exported configuration (all or nothing); this gateway's device-specific keys stay."""
        document = properties.parse(data)
        if document.problems:
            raise ConfigError([model.private(problem) for problem in document.problems])
        with self.locked():
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


def _config_or_none(text: str | None) -> Config | None:
    """The configuration of a file's text, or None when there is none or it is invalid."""
    try:
        return model.loads(text) if text is not None else None
    except ConfigError:
        return None


def finish(plan: journal.Plan) -> None:
    """The configuration's part of completing a change: its file, then its history entry.

    Idempotent like every step of the journal: the file is written only when it differs, the
    entry recorded once per journal id.
    """
    if plan.config_text is not None:
        data = plan.config_text.encode("utf-8")
        try:
            current = properties.read_bytes(plan.config_path)
        except (OSError, ConfigError):  # missing, or not a regular file: replaced below
            current = None
        if current != data:
            write_atomic(plan.config_path, data, 0o600)
        journal.step("configuration written")
    if plan.history is not None and plan.config_text is not None:
        History(Path(plan.state_directory) / HISTORY_FILE).record(
            plan.config_text, str(plan.history["origin"]), str(plan.history.get("note", "")),
            apply_id=plan.id, when=float(plan.history["time"]),  # type: ignore[arg-type]
        )
        journal.step("history recorded")
