"""The pure latest-per-meter logic: rows, generations, tombstones, snapshots, the dirty set (plain values, no disk)."""

from __future__ import annotations

import threading
from contextlib import nullcontext

from wmbus_stream.core.latest import (
    Latest,
    Snapshot,
    generation_of,
    head,
    meter_id,
    meter_key,
    record,
)

SPEC_TELEGRAM = bytes.fromhex("6044961564010061011B7A970400202F2F")


def key(n: int, device_type: int = 0x07) -> bytes:
    """A link address: manufacturer ELV (0x1596), ID n, version 1, device type."""
    return b"\x96\x15" + n.to_bytes(4, "little") + bytes((1, device_type))


def latest() -> Latest:
    return Latest(threading.Lock())


def test_key_and_id_come_from_the_telegram_link_address() -> None:
    k = meter_key(SPEC_TELEGRAM)
    assert k == bytes.fromhex("961564010061011B")
    assert meter_id(k) == SPEC_TELEGRAM[7:3:-1].hex().upper() == "61000164"


def test_a_record_is_time_generation_and_the_telegram() -> None:
    rec = record(1.7e9 + 0.25, 2**40 + 3, b"report")
    assert head(rec) == (1.7e9 + 0.25, 2**40 + 3) and generation_of(rec) == 2**40 + 3
    assert rec.endswith(b"report") and len(rec) == 16 + 6


def test_put_keeps_the_latest_with_growing_generations() -> None:
    store = Latest(nullcontext())  # one thread: no lock needed
    store.put(key(1), 1.0, b"a")
    store.put(key(2), 1.0, b"b")
    store.put(key(1), 2.0, b"c")
    rows = {r[0]: r for r in store.snapshot()}
    assert store.pending() == 2 and store.dirty() == 2
    assert rows[key(1)][1:4] == ("00000001", 2.0, b"c")
    assert rows[key(1)][4] > rows[key(2)][4] > 0


def test_snapshot_sorts_by_meter_id_then_key() -> None:
    store = latest()
    for n in (0x30, 2, 0x1A, 0xA0, 5):
        store.put(key(n), float(n), b"x")
    store.put(key(5, device_type=0x04), 1.0, b"y")
    snap = store.snapshot()
    assert [r[1] for r in snap] == ["00000002", "00000005", "00000005", "0000001A", "00000030", "000000A0"]
    assert [r[0][7] for r in snap][1:3] == [0x04, 0x07]
    assert list(snap) == sorted(snap, key=lambda r: (r[1], r[0]))


def test_forget_only_what_did_not_change_and_owe_every_acknowledged_version() -> None:
    store = latest()
    for n in range(4):
        store.put(key(n), 1.0, b"old")
    snap = store.snapshot()
    sent = {r[0]: r[4] for r in snap}
    store.put(key(1), 2.0, b"arrived during the push")
    store.owe(snap)
    assert dict(store.owed()) == sent  # the acknowledged versions go from disk, key 1's too
    assert store.forget(snap) == 3
    assert [(r[0], r[3]) for r in store.snapshot()] == [(key(1), b"arrived during the push")]
    assert store.forget(snap) == 0  # a stale snapshot never forgets the newer row


def test_failed_write_keeps_rows_dirty_and_newer_arrivals_win() -> None:
    store = latest()
    store.put(key(1), 1.0, b"a")
    store.put(key(2), 1.0, b"b")
    batch = store.take_dirty()
    assert store.dirty() == 0 and set(batch) == {key(1), key(2)}
    store.put(key(1), 2.0, b"newer")  # arrives while the write is failing
    store.keep_dirty(batch)
    again = store.take_dirty()
    assert head(again[key(1)])[0] == 2.0 and again[key(1)].endswith(b"newer")
    assert again[key(2)] is batch[key(2)]


def test_settle_keeps_a_tombstone_raised_meanwhile() -> None:
    store = latest()
    store.put(key(1), 1.0, b"a")
    first = store.snapshot()
    store.owe(first)
    written = store.owed()
    store.forget(first)
    store.put(key(1), 2.0, b"b")
    second = store.snapshot()
    store.owe(second)  # raised while the first deletion was being written
    store.settle(written)
    assert store.owed() == [(key(1), generation_of(second.entries[0][1]))]
    assert store.covered(key(1), generation_of(first.entries[0][1]))


def test_merge_adds_disk_rows_and_owes_what_memory_replaced_or_forgot() -> None:
    store = latest()
    store.put(key(1), 5.0, b"memory")  # newer than disk
    store.put(key(3), 5.0, b"acknowledged")
    snap = Snapshot(tuple(e for e in store.snapshot().entries if e[0] == key(3)))
    store.owe(snap)
    store.forget(snap)
    assert store.merge([(key(1), 1.0, b"disk 1", 40), (key(2), 1.0, b"disk 2", 41), (key(3), 1.0, b"disk 3", 42)]) == 3
    assert {r[0]: r[3] for r in store.snapshot()} == {key(1): b"memory", key(2): b"disk 2"}
    owed = dict(store.owed())
    assert owed[key(1)] == 40 and owed[key(3)] == 42
    store.put(key(9), 6.0, b"x")
    assert max(r[4] for r in store.snapshot()) > 42  # generations resume above the disk's
    store.merge([(key(2), 1.0, b"disk 2", 41)])  # the same row again (read read-only before)
    assert store.owed() == list(owed.items())


def test_survivors_are_clean_uncovered_rows_and_dirty_keys_to_read() -> None:
    store = latest()
    for n in range(6):
        store.put(key(n), 1.0, b"flushed")
    store.take_dirty()  # written: the disk holds these six as memory does
    snap = Snapshot(tuple(e for e in store.snapshot().entries if e[0] in {key(0), key(1), key(2)}))
    store.put(key(3), 2.0, b"dirty: the disk has an older one")
    store.put(key(7), 2.0, b"new: nothing on disk")
    store.owe(snap)
    kept, unknown = store.survivors(written=())
    assert sorted(k for k, _ in kept) == [key(4), key(5)]
    assert sorted(unknown) == [key(3), key(7)]
    kept, unknown = store.survivors(written={key(7)})  # written anew by the same transaction
    assert sorted(unknown) == [key(3)]


def test_rewrite_all_makes_every_row_dirty_and_owes_nothing() -> None:
    store = latest()
    store.put(key(1), 1.0, b"a")
    store.take_dirty()
    snap = store.snapshot()
    store.owe(snap)
    store.put(key(2), 1.0, b"b")
    store.rewrite_all()
    assert store.owed() == [] and set(store.take_dirty()) == {key(1), key(2)}
