"""The backup archive reader on damaged input: every corruption is a BackupError, nothing else."""

from __future__ import annotations

import io
import random
from pathlib import Path

import pytest

from wmbus_stream.config import backup


def archive(folder: Path) -> bytes:
    """A valid backup of a small configuration and 'databases' of incompressible bytes."""
    config, store, history = folder / "stream.cfg", folder / "store.sqlite", folder / "history.sqlite"
    config.write_text("gateway.serial=00000161\nfilter.manufacturer=KAM\n")
    store.write_bytes(random.Random(1).randbytes(20_000))
    history.write_bytes(random.Random(2).randbytes(3_000))
    out = io.BytesIO()
    backup.write(out, [(backup.CONFIG_MEMBER, config), (backup.STORE_MEMBER, store), (backup.HISTORY_MEMBER, history)],
                 gateway_serial="00000161", created=1_790_000_000)
    return out.getvalue()


def test_the_intact_archive_unpacks(tmp_path: Path) -> None:
    unpacked = backup.unpack(io.BytesIO(archive(tmp_path)), tmp_path / "out")
    assert unpacked.manifest.gateway_serial == "00000161"


def test_a_flipped_byte_anywhere_is_a_backup_error(tmp_path: Path) -> None:
    """Seen in the field of tests: a flip deep in the gzip stream raised zlib.error, a 500."""
    data = archive(tmp_path)
    for offset in range(0, len(data), max(1, len(data) // 400)):
        damaged = bytearray(data)
        damaged[offset] ^= 0xFF
        folder = tmp_path / f"out-{offset}"
        try:
            backup.unpack(io.BytesIO(bytes(damaged)), folder)
        except backup.BackupError:
            continue
        # A flip inside gzip's header fields (mtime, OS byte) changes nothing that is checked.
        assert offset < 10, f"a flip at {offset} of {len(data)} was accepted"


# Not the last bytes: only gzip's trailer and the tar's end blocks; each member's checksum
# from the manifest still holds, so nothing is lost by accepting it.
@pytest.mark.parametrize("cut", [1, 10, 100, 1000, 5000, -1000, -100])
def test_a_truncated_archive_is_a_backup_error(tmp_path: Path, cut: int) -> None:
    data = archive(tmp_path)
    with pytest.raises(backup.BackupError):
        backup.unpack(io.BytesIO(data[:cut]), tmp_path / "out")
