"""The latest-per-meter store: latest value, push/acknowledge races, batching, recovery, memory."""

from __future__ import annotations

import gc
import logging
import random
import sqlite3
import threading
import time
import tracemalloc
from pathlib import Path

import pytest

from wmbus_stream.core.latest import Snapshot, meter_id, meter_key
from wmbus_stream.errors import GatewayIOError
from wmbus_stream.io.store import SCHEMA, Store, StoreWriteError

SPEC_TELEGRAM = bytes.fromhex("6044961564010061011B7A970400202F2F")


def key(n: int, device_type: int = 0x07) -> bytes:
    """A link address: manufacturer ELV (0x1596), ID n, version 1, device type."""
    return b"\x96\x15" + n.to_bytes(4, "little") + bytes((1, device_type))


def mid(n: int) -> str:
    return key(n)[5:1:-1].hex().upper()


def disk_rows(path: Path) -> dict[bytes, tuple]:
    """What another reader sees in the database file right now."""
    db = sqlite3.connect(path)
    try:
        return {r[0]: r for r in db.execute(
            "SELECT key, meter_id, received_at, telegram, generation, manufacturer, version, device_type FROM meters")}
    finally:
        db.close()


@pytest.fixture
def path(tmp_path: Path) -> Path:
    return tmp_path / "state" / "store.db"


def test_meter_key_is_the_link_address() -> None:
    assert meter_key(SPEC_TELEGRAM) == bytes.fromhex("961564010061011B")
    assert issubclass(StoreWriteError, GatewayIOError) and issubclass(StoreWriteError, OSError)


def test_latest_per_meter(path: Path) -> None:
    with Store.open(path) as store:
        for i in range(5):
            store.put(key(1), 1000.0 + i, b"telegram %d" % i)
        snap = store.snapshot()
        assert store.pending() == 1
        assert len(snap) == 1
        (k, meter_id, received_at, telegram, _generation), = snap
        assert (k, meter_id, received_at, telegram) == (key(1), "00000001", 1004.0, b"telegram 4")


def test_snapshot_is_sorted_and_immutable(path: Path) -> None:
    with Store.open(path) as store:
        for n in (0x30, 2, 0x17, 2, 5):
            store.put(key(n), float(n), b"x")
        store.put(key(5, device_type=0x04), 1.0, b"same ID, other device type")
        snap = store.snapshot()
        assert [r[1] for r in snap] == ["00000002", "00000005", "00000005", "00000017", "00000030"]
        assert [r[0][7] for r in snap][1:3] == [0x04, 0x07]  # ties broken by the link address
        store.put(key(99), 1.0, b"y")
        assert len(snap) == 5 and isinstance(snap.entries, tuple)
        with pytest.raises(AttributeError):
            snap.entries = ()  # type: ignore[misc]
        assert store.snapshot() == Snapshot(tuple(sorted(store.snapshot().entries, key=lambda e: (meter_id(e[0]), e[0]))))


def test_generations_grow_per_meter_and_across_reopen(path: Path) -> None:
    with Store.open(path) as store:
        store.put(key(1), 1.0, b"a")
        store.put(key(2), 1.0, b"a")
        store.put(key(1), 2.0, b"b")
        gens = {r[0]: r[4] for r in store.snapshot()}
        assert gens[key(1)] > gens[key(2)] > 0
    with Store.open(path) as store:
        store.put(key(3), 3.0, b"c")
        after = {r[0]: r[4] for r in store.snapshot()}
        assert after[key(3)] > max(gens.values())
        assert after[key(1)] == gens[key(1)]


def test_arrival_during_push_stays(path: Path) -> None:
    with Store.open(path) as store:
        store.put(key(1), 10.0, b"old 1")
        store.put(key(2), 10.0, b"old 2")
        store.flush()
        snap = store.snapshot()
        store.put(key(1), 11.0, b"new 1")  # arrives while the push is uploading
        assert store.acknowledge(snap) == 1
        assert [(r[0], r[3]) for r in store.snapshot()] == [(key(1), b"new 1")]
    # close() flushed: the newer telegram is what survives on disk, the acknowledged one is gone
    assert {k: r[3] for k, r in disk_rows(path).items()} == {key(1): b"new 1"}
    with Store.open(path) as store:
        assert [(r[0], r[2], r[3]) for r in store.snapshot()] == [(key(1), 11.0, b"new 1")]


def test_acknowledged_delete_is_durable_without_flush(path: Path) -> None:
    store = Store.open(path)
    store.put(key(1), 10.0, b"a")
    store.put(key(2), 10.0, b"b")
    store.flush()
    snap = store.snapshot()
    store.put(key(3), 10.0, b"c")  # not flushed: only in memory
    assert store.acknowledge(snap) == 2
    assert set(disk_rows(path)) == set()  # the delete is on disk when acknowledge returns
    store.close(flush=False)
    with Store.open(path) as again:
        assert again.pending() == 0


def test_acknowledge_removes_an_older_disk_version(path: Path) -> None:
    with Store.open(path) as store:
        store.put(key(1), 10.0, b"flushed")
        store.flush()
        store.put(key(1), 11.0, b"newer, unflushed")
        snap = store.snapshot()
        store.acknowledge(snap)  # the HES has the newer one, so the older disk row must go too
        assert disk_rows(path) == {}
        assert store.pending() == 0


def test_acknowledge_deletes_the_sent_disk_version_even_if_a_newer_one_arrived(path: Path) -> None:
    with Store.open(path) as store:
        store.put(key(1), 10.0, b"sent")
        store.flush()
        snap = store.snapshot()
        store.put(key(1), 11.0, b"arrived during the push")
        assert store.acknowledge(snap) == 0  # memory keeps the newer one for the next push
        assert disk_rows(path) == {}  # a crash now must not resend the acknowledged one
        assert [r[3] for r in store.snapshot()] == [b"arrived during the push"]
        store.flush()
        assert [r[3] for r in disk_rows(path).values()] == [b"arrived during the push"]


def test_failed_push_keeps_everything(path: Path) -> None:
    with Store.open(path) as store:
        for n in range(10):
            store.put(key(n), float(n), b"t%d" % n)
        first = store.snapshot()
        # the push failed: nothing is acknowledged; a newer value replaces one meter
        store.put(key(4), 99.0, b"newest")
        second = store.snapshot()
        assert len(second) == 10
        assert {r[0]: r[3] for r in second}[key(4)] == b"newest"
        assert store.acknowledge(first) == 9  # a late ack of the first snapshot spares meter 4
        assert [r[3] for r in store.snapshot()] == [b"newest"]


def test_stale_snapshot_never_deletes_newer(path: Path) -> None:
    with Store.open(path) as store:
        store.put(key(1), 1.0, b"a")
        old = store.snapshot()
        store.acknowledge(old)
        store.put(key(1), 2.0, b"b")
        assert store.acknowledge(old) == 0
        assert store.pending() == 1


def test_flush_batches_writes(path: Path) -> None:
    with Store.open(path) as store:
        for n in range(100):
            store.put(key(n), float(n), b"t")
        assert disk_rows(path) == {}  # no SQL per telegram
        assert store.dirty() == 100
        assert store.flush() == 100
        rows = disk_rows(path)
        assert len(rows) == 100 and store.dirty() == 0
        assert rows[key(7)][5:] == (0x1596, 1, 7)  # key fields: manufacturer, version, device type
        assert store.flush() == 0
        store.put(key(1), 5.0, b"u")
        assert store.flush() == 1


def test_reopen_after_close_restores_rows(path: Path) -> None:
    with Store.open(path) as store:
        for n in range(50):
            store.put(key(n), 1.7e9 + n / 3, bytes([n]) * (n + 1))
        before = store.snapshot()
    with Store.open(path) as store:
        assert store.snapshot() == before


def test_meta(path: Path) -> None:
    with Store.open(path) as store:
        assert store.get_meta("push.last") is None
        store.set_meta("push.last", "2026-11-24T10:15:02Z ok")
        store.set_meta("analyzer", b"\x00{}")
    with Store.open(path) as store:
        assert store.get_meta("push.last") == b"2026-11-24T10:15:02Z ok"
        assert store.get_meta("analyzer") == b"\x00{}"


def test_garbage_file_is_moved_aside(path: Path, caplog: pytest.LogCaptureFixture) -> None:
    path.parent.mkdir(parents=True)
    path.write_bytes(b"this is not a database" * 300)
    with caplog.at_level(logging.ERROR):
        store = Store.open(path)
    assert store.pending() == 0
    assert len(store.corrupt_moved) == 1 and store.corrupt_moved[0].read_bytes().startswith(b"this is not")
    assert any("corrupt" in r.message and "moved it to" in r.message for r in caplog.records)
    store.put(key(1), 1.0, b"a")
    store.close()
    assert set(disk_rows(path)) == {key(1)}


def test_damaged_pages_fail_integrity_check(path: Path, caplog: pytest.LogCaptureFixture) -> None:
    with Store.open(path) as store:
        for n in range(3000):
            store.put(key(n), float(n), bytes(100))
    db = sqlite3.connect(path)
    db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    db.close()
    data = bytearray(path.read_bytes())
    page = 4096
    assert len(data) > 40 * page
    for offset in range(20 * page, 21 * page):  # scribble over a whole page of the meters table
        data[offset] = 0xA5
    path.write_bytes(bytes(data))
    with caplog.at_level(logging.ERROR):
        store = Store.open(path)  # never crashes
    assert store.corrupt_moved and store.pending() == 0
    store.put(key(1), 1.0, b"a")
    store.flush()
    store.close()
    db = sqlite3.connect(path)
    assert db.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
    db.close()


def test_corruption_found_while_running_rewrites_memory_into_a_new_file(path: Path) -> None:
    store = Store.open(path)
    for n in range(3000):
        store.put(key(n), 1.0, bytes(100))
    store.flush()
    other = sqlite3.connect(path, isolation_level=None)
    other.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    with open(path, "r+b") as f:  # damage a page behind SQLite's back
        f.seek(20 * 4096)
        f.write(b"\xa5" * 4096)
    other.execute("INSERT INTO meta VALUES ('x', x'00')")  # makes the store's connection reread pages
    other.close()
    for n in range(3000):
        store.put(key(n), 2.0, bytes(100))
    with pytest.raises(StoreWriteError, match="malformed"):
        store.flush()
    assert len(store.corrupt_moved) == 1 and store.pending() == 3000
    assert store.flush() == 3000  # the next flush writes all of memory into a new file
    store.close()
    rows = disk_rows(path)
    assert len(rows) == 3000 and {r[2] for r in rows.values()} == {2.0}


def test_unavailable_database_keeps_memory_and_retries(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    blocker = tmp_path / "state"
    blocker.write_text("a file where the state folder should be")
    path = blocker / "store.db"
    with caplog.at_level(logging.ERROR):
        store = Store.open(path)  # cannot create the folder: no exception, memory only
    store.put(key(1), 1.0, b"a")
    store.put(key(2), 1.0, b"b")
    snap = store.snapshot()
    store.put(key(2), 2.0, b"b2")
    with pytest.raises(StoreWriteError):
        store.acknowledge(snap)  # memory forgets, disk delete owed
    assert [r[3] for r in store.snapshot()] == [b"b2"]
    with pytest.raises(StoreWriteError):
        store.flush()
    assert store.get_meta("x") is None
    with pytest.raises(StoreWriteError):
        store.set_meta("x", b"1")
    blocker.unlink()
    assert store.flush() == 1
    assert {k: r[3] for k, r in disk_rows(path).items()} == {key(2): b"b2"}
    store.close()


def test_late_attach_merges_disk_rows(path: Path) -> None:
    with Store.open(path) as old:
        old.put(key(1), 1.0, b"disk 1")  # memory will have a newer one
        old.put(key(2), 1.0, b"disk 2")  # only on disk: must be kept
        old.put(key(3), 1.0, b"disk 3")  # acknowledged in memory before the disk came back
    store = Store(path)  # not attached yet, as if the database was unavailable at start
    store.put(key(1), 2.0, b"mem 1")
    store.put(key(3), 2.0, b"mem 3")
    store.acknowledge(Snapshot(tuple(e for e in store.snapshot().entries if e[0] == key(3))))
    store.flush()
    assert {r[0]: r[3] for r in store.snapshot()} == {key(1): b"mem 1", key(2): b"disk 2"}
    assert {k: r[3] for k, r in disk_rows(path).items()} == {key(1): b"mem 1", key(2): b"disk 2"}
    gens = [r[4] for r in store.snapshot()]
    store.put(key(9), 3.0, b"x")
    assert max(r[4] for r in store.snapshot()) > max(gens)
    store.close()


def test_concurrent_put_push_flush(path: Path) -> None:
    """A reader thread puts while the main thread pushes and flushes: nothing lost, nothing resurrected."""
    store = Store.open(path)
    stop = threading.Event()
    last: dict[bytes, bytes] = {}

    def reader() -> None:
        rng = random.Random(1)
        i = 0
        while not stop.is_set():
            n = rng.randrange(200)
            value = b"%d" % i
            store.put(key(n), float(i), value)
            last[key(n)] = value
            i += 1

    thread = threading.Thread(target=reader)
    thread.start()
    acked: set[tuple[bytes, bytes]] = set()
    try:
        for _ in range(60):
            snap = store.snapshot()
            if random.random() < 0.7:
                store.acknowledge(snap)
                acked.update((r[0], r[3]) for r in snap)
            store.flush()
    finally:
        stop.set()
        thread.join()
    store.flush()
    pending = {r[0]: r[3] for r in store.snapshot()}
    for k, value in last.items():  # the newest value of every meter is pending or was acknowledged
        assert pending.get(k) == value or (k, value) in acked
    assert {k: r[3] for k, r in disk_rows(path).items()} == pending
    store.close()


def test_bulk_put_flush_snapshot_acknowledge(path: Path) -> None:
    """100,000 meters go through put, flush, snapshot and acknowledge with none lost or left (speed: bench --service)."""
    store = Store.open(path)
    n = 100_000
    telegram = bytes(120)
    for i in range(n):
        store.put(key(i), 1.7e9 + i, telegram)
    store.flush()
    snap = store.snapshot()
    assert len(snap) == n and store.pending() == n
    assert store.acknowledge(snap) == n
    assert store.pending() == 0
    store.close()
    reopened = Store.open(path)
    assert reopened.pending() == 0
    reopened.close()


def test_memory_per_meter(path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Everything the store keeps per meter (key, ID, time, row, dict slots) beyond the telegram bytes."""
    store = Store.open(path)
    n = 100_000
    base = bytes(100)
    gc.collect()
    tracemalloc.start()
    try:
        start = tracemalloc.get_traced_memory()[0]
        payload = 0
        for i in range(n):
            telegram = base + i.to_bytes(4, "little")
            k = key(i)
            payload += len(telegram)
            store.put(k, time.time(), telegram)
        del telegram, k
        gc.collect()
        dirty = (tracemalloc.get_traced_memory()[0] - start - payload) / n
        store.flush()
        gc.collect()
        clean = (tracemalloc.get_traced_memory()[0] - start - payload) / n
    finally:
        tracemalloc.stop()
    store.close(flush=False)
    with capsys.disabled():
        print(f"\n[store] memory per meter beyond telegram bytes: {clean:.0f} B flushed, {dirty:.0f} B before flush")
    assert clean <= 400
    assert dirty <= 600


# -- disk space and cost per row ----------------------------------------------------------


def _sizes(path: Path) -> int:
    """Bytes the database takes on disk, with its WAL."""
    wal = Path(f"{path}-wal")
    return path.stat().st_size + (wal.stat().st_size if wal.exists() else 0)


def _pragma(path: Path, name: str) -> int:
    db = sqlite3.connect(path)
    try:
        return int(db.execute(f"PRAGMA {name}").fetchone()[0])
    finally:
        db.close()


def test_acknowledge_gives_the_space_back(path: Path) -> None:
    with Store.open(path) as store:
        for round_ in range(3):
            for n in range(5000):
                store.put(key(n), float(round_), bytes(200))
            store.flush()
            full = _sizes(path)
            assert full > 1_000_000
            store.acknowledge(store.snapshot())
            assert _sizes(path) < full // 10  # freed pages are returned, not kept for later
            assert _pragma(path, "freelist_count") == 0


def test_a_big_flush_leaves_no_big_wal(path: Path) -> None:
    with Store.open(path) as store:
        for n in range(20_000):
            store.put(key(n), 1.0, bytes(300))
        store.flush()  # about 7 MB written through the WAL
        assert Path(f"{path}-wal").stat().st_size <= 4 * 1024 * 1024
        assert len(disk_rows(path)) == 20_000


def test_a_database_without_auto_vacuum_is_converted_once(path: Path, caplog: pytest.LogCaptureFixture) -> None:
    path.parent.mkdir(parents=True)
    old = sqlite3.connect(path, isolation_level=None)  # as the gateway made it before
    old.execute("PRAGMA journal_mode=WAL")
    for statement in SCHEMA:
        old.execute(statement)
    old.execute("INSERT INTO meters VALUES (?, 5526, 1, 7, '00000001', 1.0, x'aa', 7)", (key(1),))
    old.execute("INSERT INTO meta VALUES ('push.last', x'6f6b')")
    old.close()
    assert _pragma(path, "auto_vacuum") == 0
    with caplog.at_level(logging.INFO), Store.open(path) as store:
        assert [(r[0], r[3], r[4]) for r in store.snapshot()] == [(key(1), b"\xaa", 7)]
        assert store.get_meta("push.last") == b"ok"
    assert _pragma(path, "auto_vacuum") == 2  # incremental
    assert sum("converted to auto-vacuum" in r.message for r in caplog.records) == 1
    caplog.clear()
    with caplog.at_level(logging.INFO), Store.open(path) as store:
        assert store.pending() == 1
    assert not any("converted" in r.message for r in caplog.records)


def _statements(store: Store) -> list[str]:
    """Every SQL statement the store's connection runs from now on (executemany: once per row)."""
    seen: list[str] = []
    assert store._db is not None
    store._db.set_trace_callback(seen.append)
    return seen


@pytest.mark.parametrize("meters", [2000, 20_000])
def test_acknowledging_everything_costs_statements_by_what_stays_not_by_the_table(path: Path, meters: int) -> None:
    """The rows the acknowledgement touches, counted as SQL statements: the same for 2,000 and 20,000 meters."""
    with Store.open(path) as store:
        for n in range(meters):
            store.put(key(n), 1.0, bytes(50))
        store.flush()
        snap = store.snapshot()
        store.put(key(0), 2.0, b"arrived during the push")  # dirty: its old disk version is acknowledged
        store.put(key(meters + 1), 2.0, b"new during the push")
        seen = _statements(store)
        assert store.acknowledge(snap) == meters - 1
        per_row = [s for s in seen if s.startswith(("DELETE FROM meters WHERE", "INSERT", "SELECT"))]
        assert len(per_row) <= 5, seen[:20]
        assert disk_rows(path) == {}
        assert store.flush() == 2
        assert set(disk_rows(path)) == {key(0), key(meters + 1)}


def test_emptying_the_table_keeps_disk_versions_memory_does_not_know(path: Path) -> None:
    """A partial acknowledgement of most meters: what stays on disk is exactly what a row-by-row delete leaves."""
    store = Store.open(path)
    for n in range(3000):
        store.put(key(n), 1.0, b"v1 %d" % n)
    store.flush()
    snap = store.snapshot()
    acked = Snapshot(tuple(e for e in snap.entries if int(meter_id(e[0]), 16) < 2500))
    store.put(key(2900), 2.0, b"v2, not flushed")  # dirty: the disk keeps v1 until the next flush
    store.put(key(10), 2.0, b"v2 of an acknowledged meter")
    seen = _statements(store)
    assert store.acknowledge(acked) == 2499
    assert sum(s.startswith("DELETE FROM meters WHERE") for s in seen) == 0  # the table was emptied instead
    on_disk = {k: r[3] for k, r in disk_rows(path).items()}
    assert on_disk == {key(n): b"v1 %d" % n for n in range(2500, 3000)}
    store.close(flush=False)  # a crash before the next flush: the v1 of meter 2900 is still pending
    with Store.open(path) as again:
        assert {r[0]: r[3] for r in again.snapshot()} == on_disk


def test_memory_per_meter_through_the_pipeline(capsys: pytest.CaptureFixture[str]) -> None:
    """Everything the pipeline, analyzer and store keep per meter (key, records, dict slots) beyond the report."""
    from wmbus_stream import wire
    from wmbus_stream.bench_service import SPEC_TELEGRAM as FULL_TELEGRAM
    from wmbus_stream.core.analyzer import Analyzer
    from wmbus_stream.core.check import Settings
    from wmbus_stream.core.pipeline import Pipeline
    from wmbus_stream.core.received import Received
    from wmbus_stream.wire.filters import matcher

    n = 50_000
    telegrams = [FULL_TELEGRAM[:4] + i.to_bytes(4, "little") + FULL_TELEGRAM[8:] for i in range(n)]
    store = Store(Path("unused"))  # memory only: never attached
    pipeline = Pipeline(Settings(matcher(), "62001772", 0), store, Analyzer(0.0, max_meters=n))
    gc.collect()
    tracemalloc.start()
    try:
        start = tracemalloc.get_traced_memory()[0]
        for i, telegram in enumerate(telegrams):  # one read per telegram: no arrival time shared
            pipeline.process([Received(telegram, wire.FORMAT_NONE, rssi_dbm=-70 - i % 40)], 1.7e9 + i / 7)
        store.latest.take_dirty()  # as a flush leaves it
        gc.collect()
        used = tracemalloc.get_traced_memory()[0] - start
    finally:
        tracemalloc.stop()
    reports = sum(len(r[3]) for r in store.snapshot())
    assert store.pending() == n and pipeline.analyzer.totals().meters_found == n
    per_meter = (used - reports) / n
    with capsys.disabled():
        print(f"\n[store] pipeline + analyzer + store memory per meter beyond the report: {per_meter:.0f} B")
    assert per_meter <= 400, per_meter
