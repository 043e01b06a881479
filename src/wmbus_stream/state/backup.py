"""Backup and restore of one gateway's state: configuration, state database, history, files.

Strategy
- ``backup`` lets a running gateway flush first (``ConfigManager.before_backup``), then, under
  the configuration lock, copies the configuration file, the state database (SQLite backup
  API, ``databases.copy_database``), the history and the files folder into one archive
  (``archive.write``).
- ``restore`` reads and checks the whole upload before it takes the lock (a slow or costly
  upload blocks no change): the archive (``archive.unpack``), the configuration exactly as
  ``config check`` would, both databases (``databases.check_database``). Under the lock it
  adapts the configuration to this gateway (its ``state.directory``, and its serial with
  ``keep_serial``), checks every CA or key file the result names as it will be after the
  swap, and puts everything in place as one journal (``journal``) inside the running
  gateway's ``replace_state`` (state database closed meanwhile). Any problem: nothing is
  changed, ``BackupError`` (or ``ConfigError``) lists every one.
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import BinaryIO

from .. import journal
from ..atomic import PRIVATE, write_atomic
from ..config import model, pemfiles, properties
from ..config.history import HISTORY_FILE
from ..config.manage import ConfigManager, finish
from ..config.model import Config
from ..errors import ConfigError
from ..host import RestoreResult
from . import archive
from ..errors import BackupError
from .archive import BackupLimits
from .databases import HISTORY_SCHEMA, STORE_SCHEMA, check_database, copy_database

__all__ = ["STORE_FILE", "backup", "restore"]

log = logging.getLogger("wmbus_stream.config")

STORE_FILE = "store.sqlite"  # the gateway's state database
_LIMITS = BackupLimits()


def backup(manager: ConfigManager, dest: BinaryIO) -> None:
    """Write a backup archive (configuration, state database, history, files) to ``dest``."""
    if manager.before_backup is not None:
        manager.before_backup()
    with manager.locked(), tempfile.TemporaryDirectory(prefix=".backup-", dir=manager.state_directory) as tmp:
        folder = Path(tmp)
        text = manager.file_text()
        if text is None:
            raise BackupError(f"configuration file {manager.config_path} cannot be read")
        config = model.loads(text)
        write_atomic(folder / "stream.cfg", text, PRIVATE)
        store_copy = folder / "store.sqlite"
        copy_database(manager.state_directory / STORE_FILE, store_copy)
        history_copy = folder / "history.sqlite"
        manager.history_store.copy_to(history_copy)
        members: list[tuple[str, Path]] = [
            (archive.CONFIG_MEMBER, folder / "stream.cfg"),
            (archive.STORE_MEMBER, store_copy),
            (archive.HISTORY_MEMBER, history_copy),
        ]
        members += [(archive.FILES_PREFIX + name, path) for name, path in _files(manager.files_directory)]
        manifest = archive.write(dest, members, gateway_serial=config.gateway_serial)
    log.info("backup written: configuration, state, %d history entries, %d files",
             len(manager.history()), len(manifest.members) - 3)


def _files(root: Path) -> list[tuple[str, Path]]:
    """Regular files in the files folder ``root`` (links and hidden staging folders left out)."""
    found: list[tuple[str, Path]] = []
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


def restore(manager: ConfigManager, source: BinaryIO, keep_serial: bool = True,
            limits: BackupLimits = _LIMITS) -> RestoreResult:
    """Replace configuration, state, history and files with a backup's, after checking all of it.

    With ``keep_serial`` this gateway keeps its ``gateway.serial`` (a replacement device);
    ``state.directory`` always stays this gateway's. Raises ``BackupError`` (or
    ``ConfigError`` for the configuration) with every problem; nothing is changed then.
    """
    change_id = journal.new_id()
    folder = journal.stage_folder(manager.state_directory, change_id)
    plan: journal.Plan | None = None
    try:
        with journal.held(folder):
            # Read and checked completely before the lock: a slow or costly upload blocks no change.
            unpacked = archive.unpack(source, folder, limits)
            problems: list[str] = []
            pending = entries = 0
            try:
                text, restored = _backup_config(unpacked)
            except BackupError as exc:
                problems += exc.problems
            try:
                pending = check_database(unpacked.paths[archive.STORE_MEMBER], STORE_SCHEMA,
                                          "wmbus-stream state database")
            except ValueError as exc:
                problems.append(f"member {archive.STORE_MEMBER}: {exc}")
            try:
                entries = check_database(unpacked.paths[archive.HISTORY_MEMBER], HISTORY_SCHEMA,
                                          "wmbus-stream history database")
            except ValueError as exc:
                problems.append(f"member {archive.HISTORY_MEMBER}: {exc}")
            if problems:
                raise BackupError(problems)
            with manager.locked():
                text, serial = _adapted(manager, text, restored, keep_serial)
                config = model.loads(text)
                # CA and key files the restored configuration names, as they will be after the swap.
                staged: dict[Path, bytes | None] = {path: None for name, path in _files(manager.files_directory)
                                                    if name not in unpacked.files}
                staged.update({manager.files_directory / name: path.read_bytes()
                               for name, path in unpacked.files.items()})
                pem_problems = pemfiles.problems(config, manager.current_or_none(), staged)
                if pem_problems:
                    raise ConfigError(pem_problems)
                plan = _restore_plan(manager, unpacked, change_id, text)

                def swap() -> None:
                    journal.commit(plan)
                    journal.complete(plan, finish)

                try:
                    manager.replace_state(swap)
                except BaseException:
                    journal.discard(plan)
                    raise
                entry = manager.history_store.latest()
    except BaseException:
        if plan is None:  # else discard decided what of it to keep
            shutil.rmtree(folder, ignore_errors=True)
        raise
    manifest = unpacked.manifest
    restored_files = unpacked.files
    result = RestoreResult(entry, manifest.created, manifest.gateway_serial, serial, pending, entries + 1,
                           tuple(sorted(restored_files)))
    log.info("%s", result.summary())
    if manager.on_applied is not None:
        manager.on_applied(config)
    return result


def _restore_plan(manager: ConfigManager, unpacked: archive.Unpacked, change_id: str, text: str) -> journal.Plan:
    """The transaction that puts a checked backup in place (called with the lock held)."""
    restored_files = unpacked.files
    removals = tuple(str(path) for name, path in _files(manager.files_directory) if name not in restored_files)
    moves = [
        journal.Move(str(unpacked.paths[archive.STORE_MEMBER]), str(manager.state_directory / STORE_FILE),
                         database=True),
        journal.Move(str(unpacked.paths[archive.HISTORY_MEMBER]),
                         str(manager.state_directory / HISTORY_FILE), database=True),
    ]
    moves += [journal.Move(str(path), str(manager.files_directory / name), confined_to=str(manager.files_directory))
              for name, path in sorted(restored_files.items())]
    for name in restored_files:
        reason = journal.check_target(manager.files_directory, manager.files_directory / name)
        if reason is not None:
            raise BackupError(f"member files/{name}: {reason}")
    manifest = unpacked.manifest
    return journal.Plan(
        id=change_id,
        state_directory=str(manager.state_directory),
        config_path=str(manager.config_path),
        config_text=text,
        moves=tuple(moves),
        removals=removals,
        history={"origin": "restore", "time": time.time(),
                 "note": f"backup of gateway {manifest.gateway_serial} made {manifest.created}"},
        staging=(str(unpacked.folder),),
    )


def _adapted(manager: ConfigManager, text: str, restored: Config, keep_serial: bool) -> tuple[str, str]:
    """The backup's configuration text adapted to this gateway, and the serial it gets."""
    changes: dict[str, str | None] = {}
    try:
        here = manager.current()
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


def _backup_config(unpacked: archive.Unpacked) -> tuple[str, Config]:
    """The configuration in a backup, its text and its validated content."""
    try:
        text = unpacked.paths[archive.CONFIG_MEMBER].read_bytes().decode("utf-8")
    except UnicodeDecodeError:
        raise BackupError(f"member {archive.CONFIG_MEMBER}: not UTF-8 text") from None
    try:
        return text, model.loads(text)
    except ConfigError as exc:
        raise BackupError([f"member {archive.CONFIG_MEMBER}: {p}" for p in exc.problems]) from None
