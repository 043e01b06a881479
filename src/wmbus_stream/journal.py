"""All-or-nothing changes of several files: configuration, downloaded files, state databases.

Strategy (a redo journal)
1. Everything new is first written in full to a staging folder on the same file system
   (hidden, named ``.stage-<id>``) and fsynced. A crash here leaves only that folder,
   which the next ``recover`` removes: nothing was applied. A folder still being filled
   outside the configuration lock (a restore reading its upload) is ``held`` by a ``flock``
   on it, and ``recover`` leaves it to its process.
2. A journal (``config.journal`` in the state directory) naming every move, every removal,
   the new configuration text and its history note is written atomically. Writing it is the
   commit point.
3. ``complete`` carries the journal out: removals, moves (``os.replace`` into place, each
   folder fsynced), then the caller's ``finish`` (the configuration file and its history
   entry, ``config.manage.finish``), then it removes the staging folder and the journal.
   Every step is idempotent (a move whose source is gone was done; ``finish`` writes the
   configuration only when it differs and records the history entry once per journal id),
   so a crash at any instant is repaired by completing the journal again at the next start
   (``recover``).

So after a power cut the gateway sees either everything old or everything new, never a
mix, and the configuration file is never half written (``write_atomic``).

Confinement: targets inside the files folder are reached by walking their folders with
``lstat``; a symbolic link or a non-folder on the way is refused before anything is written
(``check_target``), and again while completing (a folder replaced by a link meanwhile stops
the move rather than following it).

Where it lives: beside ``atomic``, whose several-file form it is, and below everything that
changes files. Configuration changes are applied through it and ``config`` may only build on
this level (io/ and state/ sit above it), so it knows nothing of a configuration: what the
configuration's part of a change is, ``finish`` says.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import secrets
import shutil
import stat
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path

from .atomic import PRIVATE, clean_stale, fsync_directory, write_atomic

__all__ = [
    "JOURNAL_NAME",
    "STAGE_PREFIX",
    "Finish",
    "Move",
    "Plan",
    "check_target",
    "commit",
    "complete",
    "discard",
    "ensure_folders",
    "held",
    "new_id",
    "pending",
    "recover",
    "stage_folder",
    "step",
    "write_staged",
]

log = logging.getLogger("wmbus_stream.config")

JOURNAL_NAME = "config.journal"
STAGE_PREFIX = ".stage-"

# The caller's part of completing a plan, after the moves: idempotent, like every step.
Finish = Callable[["Plan"], None]

# Tests set this to kill the process at a named step (power-cut simulation).
step_hook: Callable[[str], None] | None = None


def step(name: str) -> None:
    """A named step of completing a change is done (where a test can cut the power)."""
    if step_hook is not None:
        step_hook(name)


@dataclass(frozen=True, slots=True)
class Move:
    """Move ``source`` (staged) to ``target``; ``database`` drops the target's -wal/-shm first."""

    source: str
    target: str
    database: bool = False
    confined_to: str | None = None


@dataclass(frozen=True, slots=True)
class Plan:
    """Everything one change does, as written to the journal."""

    id: str
    state_directory: str
    config_path: str
    config_text: str | None = None
    moves: tuple[Move, ...] = ()
    removals: tuple[str, ...] = ()
    history: dict[str, object] | None = None
    staging: tuple[str, ...] = field(default=())

    def to_json(self) -> str:
        data = asdict(self)
        return json.dumps(data, indent=1)

    @classmethod
    def from_json(cls, text: str) -> Plan:
        data = json.loads(text)
        data["moves"] = tuple(Move(**m) for m in data.get("moves", ()))
        data["removals"] = tuple(data.get("removals", ()))
        data["staging"] = tuple(data.get("staging", ()))
        return cls(**data)


def new_id() -> str:
    """A fresh identifier for a change (also names its staging folder)."""
    return secrets.token_hex(8)


def stage_folder(parent: Path, change_id: str) -> Path:
    """Create the staging folder of a change inside ``parent`` (0700)."""
    parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    folder = parent / f"{STAGE_PREFIX}{change_id}"
    folder.mkdir(mode=0o700)
    return folder


@contextmanager
def held(folder: Path) -> Iterator[None]:
    """Keep ``recover`` (of any process) from removing a staging folder while it is in use."""
    fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY | getattr(os, "O_CLOEXEC", 0))
    try:
        fcntl.flock(fd, fcntl.LOCK_SH)
        yield
    finally:
        os.close(fd)


def _in_use(path: str) -> bool:
    try:
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | getattr(os, "O_CLOEXEC", 0))
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)
    return False


def write_staged(path: Path, data: bytes) -> None:
    """Write a new staged file completely and durably (its folder is fsynced by ``commit``)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | getattr(os, "O_CLOEXEC", 0), PRIVATE)
    try:
        os.fchmod(fd, PRIVATE)
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view):]
        os.fsync(fd)
    finally:
        os.close(fd)


def _journal(state_directory: str | os.PathLike[str]) -> Path:
    return Path(state_directory) / JOURNAL_NAME


def _check_writable(folder: Path) -> None:
    """Raise OSError when no file can be created in ``folder`` (a read-only /etc, say)."""
    probe = folder / f"{STAGE_PREFIX}probe-{secrets.token_hex(4)}"
    try:
        os.close(os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600))
    except OSError as exc:
        raise OSError(exc.errno, exc.strerror, str(folder)) from None  # name the folder, not the probe
    os.unlink(probe)


def commit(plan: Plan) -> None:
    """Make the staged change durable and decided: from here on it will be completed.

    A configuration folder that cannot be written is found here, before the commit point,
    so the change fails at once instead of waiting in the journal for a writable /etc.
    """
    if plan.config_text is not None:  # write_atomic writes beside the file a link points to
        _check_writable(Path(os.path.realpath(plan.config_path)).parent)
    for folder in plan.staging:
        fsync_directory(folder)
    step("staged")
    write_atomic(_journal(plan.state_directory), plan.to_json(), 0o600)
    step("committed")


def discard(plan: Plan) -> None:
    """Remove the staging of a plan that failed before its journal was written (else keep it:
    the journal will be completed, at the latest by the next ``recover``)."""
    try:
        committed = Plan.from_json(_journal(plan.state_directory).read_text(encoding="utf-8")).id == plan.id
    except (OSError, ValueError, TypeError, KeyError):
        committed = False
    if not committed:
        for folder in plan.staging:
            shutil.rmtree(folder, ignore_errors=True)


def check_target(root: Path, target: Path) -> str | None:
    """Why ``target`` (inside ``root``) cannot be written without following a link, or None."""
    try:
        relative = target.relative_to(root)
    except ValueError:
        return f"{target} is outside {root}"
    try:
        st = os.lstat(root)
    except FileNotFoundError:
        return None
    if stat.S_ISLNK(st.st_mode) or not stat.S_ISDIR(st.st_mode):
        return f"the files folder {root} is not a plain folder (a link?)"
    folder = root
    for part in relative.parts[:-1]:
        folder = folder / part
        try:
            st = os.lstat(folder)
        except FileNotFoundError:
            return None  # created by us as a plain folder
        if stat.S_ISLNK(st.st_mode):
            return f"{folder.relative_to(root)} is a symbolic link"
        if not stat.S_ISDIR(st.st_mode):
            return f"{folder.relative_to(root)} is not a folder"
    try:
        st = os.lstat(target)
    except FileNotFoundError:
        return None
    if stat.S_ISLNK(st.st_mode):
        return f"{relative} is a symbolic link"
    if not stat.S_ISREG(st.st_mode):
        return f"{relative} exists and is not a regular file"
    return None


def ensure_folders(root: Path, target: Path) -> None:
    """Create the folders up to ``target`` below ``root`` (0700); OSError on a link or a non-folder."""
    reason = check_target(root, target)
    if reason is not None:
        raise OSError(reason)
    root.mkdir(parents=True, exist_ok=True, mode=0o700)
    folder = root
    for part in target.relative_to(root).parts[:-1]:
        folder = folder / part
        try:
            os.mkdir(folder, 0o700)
        except FileExistsError:
            st = os.lstat(folder)
            if stat.S_ISLNK(st.st_mode) or not stat.S_ISDIR(st.st_mode):
                raise OSError(f"{folder} is not a plain folder") from None


def complete(plan: Plan, finish: Finish) -> None:
    """Carry out a committed plan; safe to run again after a crash at any point."""
    for removal in plan.removals:
        try:
            os.unlink(removal)
            fsync_directory(os.path.dirname(removal))
        except FileNotFoundError:
            pass
    step("removed")
    for number, move in enumerate(plan.moves):
        source, target = Path(move.source), Path(move.target)
        if not os.path.lexists(source):
            continue  # done before a crash
        if move.confined_to is not None:
            ensure_folders(Path(move.confined_to), target)
        else:
            target.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        if move.database:
            # A WAL or shared-memory file of the old database must never meet the new one.
            for suffix in ("-wal", "-shm", "-journal"):
                try:
                    os.unlink(f"{target}{suffix}")
                except FileNotFoundError:
                    pass
        os.replace(source, target)
        fsync_directory(target.parent)
        step(f"moved {number}")
    finish(plan)
    for folder in plan.staging:
        shutil.rmtree(folder, ignore_errors=True)
    journal = _journal(plan.state_directory)
    try:
        os.unlink(journal)
    except FileNotFoundError:
        pass
    fsync_directory(journal.parent)
    step("done")


def _remove_stages(folder: Path) -> None:
    try:
        entries = list(os.scandir(folder))
    except OSError:
        return
    for entry in entries:
        if entry.name.startswith(STAGE_PREFIX) and entry.is_dir(follow_symlinks=False) and not _in_use(entry.path):
            shutil.rmtree(entry.path, ignore_errors=True)
            log.info("removed %s left by an interrupted change (nothing of it was applied)", entry.path)


def pending(state_directory: Path) -> bool:
    """Whether a committed change is waiting to be completed."""
    return _journal(state_directory).exists()


def recover(state_directory: Path, config_path: Path, files_directory: Path, finish: Finish, *,
            databases: bool = True) -> bool:
    """Complete an interrupted change, remove what unfinished ones left; True if one was completed.

    With ``databases=False`` (a running gateway holds its state database open) a change
    that replaces databases is left for the next start and ``OSError`` says so.
    """
    journal = _journal(state_directory)
    completed = False
    if journal.exists():
        try:
            plan = Plan.from_json(journal.read_text(encoding="utf-8"))
            if not databases and any(move.database for move in plan.moves):
                raise OSError("an interrupted restore is waiting to be completed: restart the gateway")
        except (ValueError, TypeError, KeyError) as exc:
            aside = journal.with_name(f"{JOURNAL_NAME}.unreadable")
            os.replace(journal, aside)
            log.error("journal %s cannot be read (%s); moved to %s, the change it held is not applied",
                      journal, exc, aside)
        else:
            log.warning("completing a configuration change interrupted by a crash or power cut (%s)", plan.id)
            complete(plan, finish)
            completed = True
    _remove_stages(state_directory)
    _remove_stages(files_directory)
    clean_stale(config_path)
    clean_stale(journal)
    return completed
