"""The store under kill -9, a full disk and a read-only file system, with real processes and mounts.

The crash test runs this file as a child process (``python test_store_crash.py child DB
SEED METERS``) that puts, flushes, pushes and acknowledges in a loop and reports on stdout, one
``os.write`` per line (atomic on a pipe), after each step returned:
``F k:g ...`` flushed (these generations are durable), ``P k:g ...`` about to acknowledge,
``A k:g ...`` acknowledged. The parent kills it with SIGKILL at a random instant and checks
the database against the last confirmed events.
"""

from __future__ import annotations

import os
import random
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from wmbus_stream.core.latest import Snapshot
from wmbus_stream.io.store import Store, StoreWriteError

pytestmark = pytest.mark.integration

KEYS = 300
# Every other run has this many meters, so acknowledgements empty the table and write back what stays.
MANY_KEYS = 3000


def key(n: int) -> bytes:
    return b"\x96\x15" + n.to_bytes(4, "little") + b"\x01\x07"


def _report(tag: str, pairs: list[tuple[int, int]]) -> None:
    line = (tag + " " + " ".join(f"{k}:{g}" for k, g in pairs) + "\n").encode()
    assert len(line) < 4096  # PIPE_BUF: one write is one line, never torn
    os.write(1, line)


def child(path: str, seed: int, keys: int) -> None:
    """The process that gets killed: arrivals, flushes and pushes as fast as it can."""
    rng = random.Random(seed)
    store = Store.open(path)
    index = {key(n): n for n in range(keys)}
    os.write(1, b"READY\n")
    while True:
        for n in rng.sample(range(keys), rng.randint(1, keys // 5)):
            store.put(key(n), time.time(), rng.randbytes(rng.randint(20, 250)))
        if rng.random() < 0.3:
            snap = store.snapshot()
            for n in rng.sample(range(keys), 5):  # arrivals while the push is in flight
                store.put(key(n), time.time(), b"during push")
            pairs = [(index[r[0]], r[4]) for r in snap]
            for start in range(0, len(pairs), 200):
                _report("P", pairs[start:start + 200])
            store.acknowledge(snap)
            for start in range(0, len(pairs), 200):
                _report("A", pairs[start:start + 200])
        before = store.snapshot()  # single thread: exactly what the flush makes durable
        store.flush()
        pairs = [(index[r[0]], r[4]) for r in before]
        for start in range(0, len(pairs), 200):
            _report("F", pairs[start:start + 200])


def _check_after_kill(path: Path, output: bytes) -> tuple[int, int]:
    """Integrity ok; every confirmed flush present (or possibly acknowledged); no confirmed ack back."""
    flushed: dict[int, int] = {}
    acked: dict[int, int] = {}
    intended: dict[int, int] = {}
    for line in output.decode().splitlines():
        if line == "READY":
            continue
        tag, *pairs = line.split(" ")
        for pair in pairs:
            k, g = map(int, pair.split(":"))
            if tag == "F":
                flushed[k] = max(flushed.get(k, 0), g)
            elif tag == "P":
                intended[k] = max(intended.get(k, 0), g)
            elif tag == "A":
                acked[k] = max(acked.get(k, 0), g)
    db = sqlite3.connect(path)
    try:
        assert db.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
        on_disk = {}
        for blob, generation in db.execute("SELECT key, generation FROM meters"):
            on_disk[int.from_bytes(blob[2:6], "little")] = generation
    finally:
        db.close()
    for k, g in flushed.items():
        if k in on_disk:
            assert on_disk[k] >= g, f"meter {k}: flushed generation {g} regressed to {on_disk[k]}"
        else:
            # Only an acknowledge of that generation or newer (maybe unconfirmed) may remove it.
            assert intended.get(k, -1) >= g, f"meter {k}: flushed generation {g} lost"
    for k, g in acked.items():
        if k in on_disk:
            assert on_disk[k] > g, f"meter {k}: acknowledged generation {g} came back"
    return len(flushed), len(acked)


def test_kill_9_at_random_instants(tmp_path: Path) -> None:
    rng = random.Random(20261124)
    confirmed_flushes = confirmed_acks = 0
    for iteration in range(30):
        keys = MANY_KEYS if iteration % 2 else KEYS
        path = tmp_path / f"store-{keys}.db"
        proc = subprocess.Popen([sys.executable, __file__, "child", str(path), str(iteration), str(keys)],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        assert proc.stdout is not None
        ready = proc.stdout.readline()
        assert ready == b"READY\n", proc.stderr.read() if proc.stderr else ready
        time.sleep(rng.uniform(0.01, 0.4))
        os.kill(proc.pid, signal.SIGKILL)
        output, errors = proc.communicate(timeout=30)
        assert proc.returncode == -signal.SIGKILL, errors.decode()
        flushes, acks = _check_after_kill(path, output)
        confirmed_flushes += flushes
        confirmed_acks += acks
        with Store.open(path) as store:  # the next run starts from what survived
            assert store.pending() <= keys
            assert not store.corrupt_moved
    assert confirmed_flushes > 0 and confirmed_acks > 0  # the loop really exercised both


# -- full and read-only file systems -----------------------------------------------------


@pytest.fixture
def small_fs(tmp_path: Path):
    """A 1 MiB tmpfs mounted for this test (needs root and a kernel that allows it)."""
    mountpoint = tmp_path / "small"
    mountpoint.mkdir()
    if os.geteuid() != 0:
        pytest.skip("mounting a size-limited tmpfs needs root")
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m,mode=0700", "tmpfs", str(mountpoint)],
                          capture_output=True, text=True, check=False)
    if done.returncode != 0:
        pytest.skip(f"mount -t tmpfs is not permitted here: {done.stderr.strip()}")
    try:
        yield mountpoint
    finally:
        subprocess.run(["umount", "-l", str(mountpoint)], capture_output=True, check=False)


def _fill(directory: Path) -> Path:
    """Take every free byte of the file system."""
    filler = directory / "filler"
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        while True:
            os.write(fd, b"\0" * 512)
    except OSError:
        pass
    finally:
        os.close(fd)
    return filler


def _partial(snapshot: Snapshot, numbers: range) -> Snapshot:
    """The rows of some meters only, as a push of part of the pending set would carry."""
    wanted = {key(n) for n in numbers}
    return Snapshot(tuple(e for e in snapshot.entries if e[0] in wanted))


def test_disk_full_keeps_data_and_resumes(small_fs: Path) -> None:
    path = small_fs / "store.db"
    store = Store.open(path)
    for n in range(50):
        store.put(key(n), 1.0, b"before" * 20)
    store.flush()
    filler = _fill(small_fs)
    for n in range(2000):  # far more than the WAL it already has can take
        store.put(key(n), 2.0, bytes([n % 256]) * 200)
    with pytest.raises(StoreWriteError) as caught:
        store.flush()
    assert "full" in str(caught.value) or "disk" in str(caught.value)
    assert store.pending() == 2000 and store.dirty() >= 2000  # nothing dropped from memory
    with pytest.raises(StoreWriteError):
        store.flush()  # still full: fails again, still no crash
    snap = store.snapshot()
    try:
        store.acknowledge(_partial(snap, range(10)))
    except StoreWriteError:
        pass  # a delete may need WAL space too: then it is owed and retried by flush
    # the previous durable state is intact and readable by another connection
    db = sqlite3.connect(path)
    assert db.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
    assert {r[0] for r in db.execute("SELECT telegram FROM meters")} == {b"before" * 20}
    assert 40 <= db.execute("SELECT count(*) FROM meters").fetchone()[0] <= 50
    db.close()
    filler.unlink()
    assert store.flush() >= 1990
    expected = {r[0]: r[3] for r in store.snapshot()}
    assert len(expected) == 1990
    store.close()
    with Store.open(path) as again:
        assert {r[0]: r[3] for r in again.snapshot()} == expected


def _remount(mountpoint: Path, mode: str) -> None:
    done = subprocess.run(["mount", "-o", f"remount,{mode}", str(mountpoint)], capture_output=True, text=True,
                          check=False)
    if done.returncode != 0:
        pytest.skip(f"remount {mode} refused: {done.stderr.strip()}")


def test_read_only_state_at_start_keeps_data_and_resumes(small_fs: Path) -> None:
    """The state folder is read-only at boot (a remount ro while the file is open is refused as busy)."""
    path = small_fs / "store.db"
    with Store.open(path) as store:
        store.put(key(1), 1.0, b"pending from the last run")
    _remount(small_fs, "ro")
    try:
        store = Store.open(path)  # cannot open for writing: works in memory, rows read read-only
        assert [r[3] for r in store.snapshot()] == [b"pending from the last run"]
        store.put(key(2), 2.0, b"second")
        with pytest.raises(StoreWriteError):
            store.flush()
        with pytest.raises(StoreWriteError):
            store.flush()  # retried, fails again, never crashes
        assert store.pending() == 2
    finally:
        subprocess.run(["mount", "-o", "remount,rw", str(small_fs)], check=True)
    assert store.flush() == 1
    store.close()
    with Store.open(path) as again:
        assert [r[3] for r in again.snapshot()] == [b"pending from the last run", b"second"]


if __name__ == "__main__" and len(sys.argv) == 5 and sys.argv[1] == "child":
    child(sys.argv[2], int(sys.argv[3]), int(sys.argv[4]))
