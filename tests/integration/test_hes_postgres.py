"""PostgresStore on a real PostgreSQL cluster (pg_harness): dedup, all or nothing, concurrency, outbox, errors.

Each test has a database of its own. Reports are built from the spec's telegram with other
meter IDs and access numbers (``wire.build_report``), parsed by the HES's own parser.
"""

from __future__ import annotations

import http.client
import json
import os
import random
import signal
import subprocess
import sys
import textwrap
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from gwkit import SPEC_TELEGRAM, caught, finishes, wait_for, with_id
from pg_harness import PG_PASSWORD, PgCluster

from wmbus_stream import wire
from wmbus_stream.errors import StoreError
from report_lines import TELEGRAM, line, wired
from wmbus_stream.hes import ReceiveServer, ReportLine, parse_report
from wmbus_stream.hes.postgres import DRAIN_LOCK, SPILL_BYTES, PostgresStore, copy_rows, masked

pytestmark = pytest.mark.integration

GATEWAYS = ("00000161", "00000162", "00000163")


def telegram(meter: int, access: int = 0x10) -> bytes:
    """The spec telegram for meter ``meter`` with access number ``access`` (another reading of it)."""
    t = with_id(SPEC_TELEGRAM, meter)
    return t[:11] + bytes((access & 0xFF,)) + t[12:]


def report(gateway: str, meters: range | list[int], access: int = 0x10, date: str = "2026-11-24 10:15:02",
           rssi: int = -74) -> bytes:
    """A report body: one line per meter, as gateway ``gateway`` sends it."""
    out = []
    for meter in meters:
        t = telegram(meter, access)
        wired = wire.build_report(t, "62001772", rssi, 0)
        out.append(f"{gateway};{meter:08d};{date};00;{wired.hex().upper()}\n")
    return "".join(out).encode("ascii")


def lines(gateway: str, meters: range | list[int], **kw: object) -> list[ReportLine]:
    return parse_report(report(gateway, meters, **kw))  # type: ignore[arg-type]


@pytest.fixture
def store(pg_url: str) -> Iterator[PostgresStore]:
    s = PostgresStore(pg_url)
    try:
        yield s
    finally:
        s.close()


def db_name(url: str) -> str:
    return url.rsplit("/", 1)[1]


def count(cluster: PgCluster, url: str, table: str) -> int:
    return int(cluster.sql(f"SELECT count(*) FROM {table}", db_name(url))[0][0])


# -------------------------------------------------------------------------------------------
# Dedup


def test_one_reading_per_telegram_whichever_gateways_heard_it_and_however_often(store: PostgresStore) -> None:
    assert store.add(lines(GATEWAYS[0], range(1, 101))) == (100, 100)
    assert store.add(lines(GATEWAYS[1], range(51, 151))) == (50, 100)
    assert store.add(lines(GATEWAYS[0], range(1, 101))) == (0, 0)  # the retried report
    assert store.add(lines(GATEWAYS[0], range(1, 101), date="2026-11-24 10:30:00")) == (0, 100)  # heard again later
    assert store.add(lines(GATEWAYS[2], range(1, 11), access=0x11)) == (10, 10)  # new readings of the same meters
    readings = store.readings()
    assert len(readings) == 160 == len({r.digest for r in readings})
    by_digest = {r.digest: r for r in readings}
    first = lines(GATEWAYS[0], [7])[0]
    assert by_digest[first.digest].first_gateway == GATEWAYS[0]
    assert by_digest[first.digest].telegram == first.telegram
    assert by_digest[first.digest].first_heard == "2026-11-24 10:15:02"
    assert by_digest[lines(GATEWAYS[1], [120])[0].digest].first_gateway == GATEWAYS[1]
    heard = store.heard()
    assert len(heard) == 310 == len({(h.digest, h.gateway, h.date) for h in heard})
    assert {h.gateway for h in heard if h.digest == lines(GATEWAYS[0], [60])[0].digest} == set(GATEWAYS[:2])
    sample = next(h for h in heard if h.digest == first.digest)
    assert (sample.rssi_code, sample.receiver, sample.age_minutes) == (first.rssi_code, "62001772", None)


def test_a_report_that_repeats_a_line_stores_it_once_with_its_first_gateway(store: PostgresStore) -> None:
    body = report(GATEWAYS[1], [5]) + report(GATEWAYS[0], [5, 6]) + report(GATEWAYS[1], [6])
    assert store.add(parse_report(body)) == (2, 4)
    assert sorted(r.first_gateway for r in store.readings()) == [GATEWAYS[0], GATEWAYS[1]]


def test_a_big_post_staged_in_many_batches_is_one_transaction(store: PostgresStore, pg_cluster: PgCluster,
                                                               pg_url: str) -> None:
    body = lines(GATEWAYS[0], range(1, 12_001))
    assert len(copy_rows(body, 0)) > 2 * SPILL_BYTES  # it goes through the TEMP table
    ingest = store.begin()
    try:
        for start in range(0, len(body), 1000):
            ingest.stage(body[start:start + 1000])
        assert count(pg_cluster, pg_url, "reading") == 0  # staged, not stored
        assert ingest.commit() == (12_000, 12_000)
    finally:
        ingest.abort()
    assert count(pg_cluster, pg_url, "reading") == 12_000 == count(pg_cluster, pg_url, "heard_by")
    assert store.add(body[:10]) == (0, 0)


# -------------------------------------------------------------------------------------------
# All or nothing


def test_an_aborted_post_stores_nothing_and_leaves_its_connection_clean(store: PostgresStore, pg_cluster: PgCluster,
                                                                        pg_url: str) -> None:
    for size in (10, 8000):  # in memory only; through the TEMP table
        ingest = store.begin()
        ingest.stage(lines(GATEWAYS[0], range(1, size + 1)))
        ingest.abort()
        ingest.abort()
        assert count(pg_cluster, pg_url, "reading") == 0
    assert store.add(lines(GATEWAYS[0], range(1, 4))) == (3, 3)  # the reused stage table held nothing old
    assert count(pg_cluster, pg_url, "reading") == 3


def _terminate_others(cluster: PgCluster, url: str) -> int:
    rows = cluster.sql("SELECT count(pg_terminate_backend(pid, 10000)) FROM pg_stat_activity"
                       " WHERE datname = %s AND pid <> pg_backend_pid()", db_name(url), (db_name(url),))
    return int(rows[0][0])


def test_a_connection_killed_while_staging_stores_nothing_and_the_commit_fails(
        store: PostgresStore, pg_cluster: PgCluster, pg_url: str) -> None:
    ingest = store.begin()
    ingest.stage(lines(GATEWAYS[0], range(1, 6001)))  # spilled: the POST has a session now
    assert _terminate_others(pg_cluster, pg_url) >= 1
    ingest.stage(lines(GATEWAYS[0], range(6001, 12_001)))  # fails quietly; the commit says so
    with pytest.raises(StoreError, match="staging lines in PostgreSQL failed"):
        ingest.commit()
    ingest.abort()
    assert count(pg_cluster, pg_url, "reading") == 0
    assert store.add(lines(GATEWAYS[0], range(1, 4))) == (3, 3)  # a new connection replaces the dead one


def test_a_connection_killed_inside_the_commit_stores_nothing(store: PostgresStore, pg_cluster: PgCluster,
                                                              pg_url: str) -> None:
    import psycopg

    ingest = store.begin()
    ingest.stage(lines(GATEWAYS[0], range(1, 3001)))
    blocker = psycopg.connect(pg_cluster.socket_url(db_name(pg_url)))
    try:
        blocker.execute("LOCK TABLE reading IN EXCLUSIVE MODE")  # the commit's INSERT waits for it
        outcome: dict[str, BaseException] = {}

        def commit() -> None:
            try:
                ingest.commit()
            except BaseException as exc:  # noqa: BLE001  (judged by the test below)
                outcome["error"] = exc

        worker = threading.Thread(target=commit)
        worker.start()
        wait_for(lambda: pg_cluster.sql("SELECT count(*) FROM pg_stat_activity WHERE datname = %s"
                                        " AND wait_event_type = 'Lock'", db_name(pg_url), (db_name(pg_url),))[0][0],
                 "the commit waiting for the lock")
        pg_cluster.sql("SELECT pg_terminate_backend(pid, 10000) FROM pg_stat_activity WHERE datname = %s"
                       " AND wait_event_type = 'Lock'", db_name(pg_url), (db_name(pg_url),))
        worker.join(15)
        assert isinstance(outcome.get("error"), StoreError), outcome
        blocker.rollback()
    finally:
        blocker.close()
        ingest.abort()
    assert count(pg_cluster, pg_url, "reading") == 0 == count(pg_cluster, pg_url, "heard_by")
    assert store.add(lines(GATEWAYS[0], range(1, 4))) == (3, 3)


def test_a_restarted_server_costs_no_post(store: PostgresStore, pg_cluster: PgCluster, pg_url: str) -> None:
    """Idle pooled sessions ended by the server (as a restart does): the next POSTs reconnect."""
    ingests = [store.begin() for _ in range(4)]
    for number, ingest in enumerate(ingests):
        ingest.stage(lines(GATEWAYS[0], range(number * 10 + 1, number * 10 + 11)))
        ingest.commit()
        ingest.abort()
    assert _terminate_others(pg_cluster, pg_url) >= 1
    for number in range(4):
        assert store.add(lines(GATEWAYS[1], range(number * 10 + 1, number * 10 + 11))) == (0, 10)


def test_a_commit_that_fails_is_answered_500_and_the_retry_is_stored(store: PostgresStore, pg_cluster: PgCluster,
                                                                     pg_url: str) -> None:
    server = ReceiveServer(port=0, store=store, username=None, password=None).start()
    body = report(GATEWAYS[0], range(1, 51))

    def post() -> tuple[int, str]:
        conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=30)
        try:
            conn.request("POST", "/", body=body, headers={"Content-Type": "text/plain"})
            response = conn.getresponse()
            return response.status, response.read().decode()
        finally:
            conn.close()

    try:
        pg_cluster.sql("ALTER TABLE reading ADD CONSTRAINT refuse_all CHECK (false) NOT VALID", db_name(pg_url))
        status, text = post()
        assert status == 500 and "storing in PostgreSQL failed" in text, text
        assert PG_PASSWORD not in text
        assert count(pg_cluster, pg_url, "reading") == 0
        pg_cluster.sql("ALTER TABLE reading DROP CONSTRAINT refuse_all", db_name(pg_url))
        assert post()[0] == 204
        assert post()[0] == 204  # the gateway's retry of a POST it thinks failed: nothing new
    finally:
        server.stop(grace=1)
    assert count(pg_cluster, pg_url, "reading") == 50 == count(pg_cluster, pg_url, "heard_by")


# -------------------------------------------------------------------------------------------
# Concurrency


def _heard_keys(store: PostgresStore) -> set[tuple[str, str, str]]:
    return {(h.digest, h.gateway, h.date) for h in store.heard()}


def test_threads_committing_overlapping_reports_at_once_store_each_reading_once(pg_url: str) -> None:
    store = PostgresStore(pg_url, outbox=True, pool=8)
    rng = random.Random(14)
    posts = []
    for number in range(16):
        meters = rng.sample(range(1, 3001), 1500)
        rng.shuffle(meters)
        posts.append(lines(GATEWAYS[number % 3], meters, date=f"2026-11-24 10:{number % 4:02d}:00"))
    barrier = threading.Barrier(len(posts))
    results: list[tuple[int, int]] = []
    errors: list[BaseException] = []

    def commit(post: list[ReportLine]) -> None:
        ingest = store.begin()
        try:
            ingest.stage(post)
            barrier.wait(30)
            results.append(ingest.commit())
        except BaseException as exc:  # noqa: BLE001  (collected and asserted below)
            errors.append(exc)
        finally:
            ingest.abort()

    try:
        workers = [threading.Thread(target=commit, args=(post,)) for post in posts]
        for worker in workers:
            worker.start()
        for worker in workers:
            worker.join(120)
        assert errors == []
        expected_readings = {line.digest for post in posts for line in post}
        expected_heard = {(line.digest, line.gateway, line.date) for post in posts for line in post}
        assert sum(r[0] for r in results) == len(expected_readings) == len(store.readings())
        assert sum(r[1] for r in results) == len(expected_heard)
        assert _heard_keys(store) == expected_heard
        outbox = store.pending(10_000)
        assert sorted(p.reading.digest for p in outbox) == sorted(expected_readings)
    finally:
        store.close()


def test_the_pool_bounds_the_sessions_of_a_receiver(pg_url: str, pg_cluster: PgCluster) -> None:
    """Six POSTs at once through pools of two: all stored, never more than four sessions (two to spill, two to commit)."""
    store = PostgresStore(pg_url, pool=2)
    results: list[tuple[int, int]] = []

    def commit(number: int) -> None:
        ingest = store.begin()
        try:
            ingest.stage(lines(GATEWAYS[number % 3], range(number * 3000 + 1, number * 3000 + 4001)))  # spilled
            results.append(ingest.commit())
        finally:
            ingest.abort()

    try:
        workers = [threading.Thread(target=commit, args=(n,)) for n in range(6)]
        for worker in workers:
            worker.start()
        for worker in workers:
            worker.join(120)
        sessions = pg_cluster.sql("SELECT count(*) FROM pg_stat_activity WHERE datname = %s"
                                  " AND application_name = 'wmbus-stream receive'", db_name(pg_url), (db_name(pg_url),))
        assert sessions[0][0] <= 4
        assert len(results) == 6 and sum(r[0] for r in results) == len(store.readings()) == 3000 * 5 + 4000
    finally:
        store.close()


_WORKER = textwrap.dedent("""
    import json, os, sys, time
    from wmbus_stream.hes import parse_report
    from wmbus_stream.hes.postgres import PostgresStore
    url, go, *bodies = sys.argv[1:]
    store = PostgresStore(url, outbox=True, pool=2)
    posts = [parse_report(open(path, "rb").read()) for path in bodies]
    print("ready", flush=True)
    while not os.path.exists(go):
        time.sleep(0.01)
    results = [store.add(post) for post in posts]
    store.close()
    print(json.dumps(results), flush=True)
""")


def test_two_processes_committing_overlapping_reports_store_each_reading_once(pg_url: str, tmp_path: Path) -> None:
    rng = random.Random(1414)
    bodies: list[list[Path]] = [[], []]
    for number in range(8):
        meters = rng.sample(range(1, 4001), 3000)
        path = tmp_path / f"post{number}.txt"
        path.write_bytes(report(GATEWAYS[number % 3], meters, date=f"2026-11-24 11:{number % 3:02d}:00"))
        bodies[number % 2].append(path)
    go = tmp_path / "go"
    PostgresStore(pg_url).close()  # the schema exists; the race is on the rows
    procs = [subprocess.Popen([sys.executable, "-c", _WORKER, pg_url, str(go), *map(str, mine)],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for mine in bodies]
    try:
        for proc in procs:
            assert proc.stdout is not None
            assert proc.stdout.readline().strip() == "ready", proc.stderr.read() if proc.stderr else ""
        go.touch()
        outs = [finishes(lambda proc=proc: proc.communicate(timeout=120), "a worker process", 130) for proc in procs]
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.communicate()
    assert [proc.returncode for proc in procs] == [0, 0], [err for _, err in outs]
    results = [pair for out, _ in outs for pair in json.loads(out.strip().splitlines()[-1])]
    every = [line for group in bodies for path in group for line in parse_report(path.read_bytes())]
    store = PostgresStore(pg_url)
    try:
        assert sum(r[0] for r in results) == len({line.digest for line in every}) == len(store.readings())
        assert _heard_keys(store) == {(line.digest, line.gateway, line.date) for line in every}
        assert sum(r[1] for r in results) == len(store.heard())
        assert len(store.pending(100_000)) == len(store.readings())
    finally:
        store.close()


def test_instances_starting_together_on_an_empty_database_create_the_schema_once(pg_url: str,
                                                                                 pg_cluster: PgCluster) -> None:
    stores: list[PostgresStore] = []
    errors: list[BaseException] = []
    barrier = threading.Barrier(4)

    def open_one() -> None:
        barrier.wait(10)
        try:
            stores.append(PostgresStore(pg_url))
        except BaseException as exc:  # noqa: BLE001  (asserted below)
            errors.append(exc)

    workers = [threading.Thread(target=open_one) for _ in range(4)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(30)
    for s in stores:
        s.close()
    assert errors == [] and len(stores) == 4
    assert pg_cluster.sql("SELECT version FROM wmbus_schema", db_name(pg_url)) == [(1,)]


def test_a_database_of_a_newer_schema_is_refused(pg_url: str, pg_cluster: PgCluster) -> None:
    PostgresStore(pg_url).close()
    pg_cluster.sql("UPDATE wmbus_schema SET version = 99", db_name(pg_url))
    with pytest.raises(StoreError, match="schema version 99; this wmbus-stream knows up to 1: upgrade"):
        PostgresStore(pg_url)


def test_a_role_without_create_runs_on_tables_its_owner_made(pg_url: str, pg_cluster: PgCluster) -> None:
    """The least privileges an integrator grants a receiver (docs/hes-integration.md): no DDL once the tables exist."""
    database = db_name(pg_url)
    role = f"hes_{database}"
    PostgresStore(pg_url).close()  # the owner's first start creates the tables
    grants = [f"CREATE ROLE {role} LOGIN PASSWORD 'role-pw-1'", "REVOKE CREATE ON SCHEMA public FROM PUBLIC",
              f'GRANT CONNECT, TEMPORARY ON DATABASE "{database}" TO {role}', f"GRANT USAGE ON SCHEMA public TO {role}",
              f"GRANT SELECT, INSERT ON reading, heard_by, outbox TO {role}", f"GRANT DELETE ON outbox TO {role}",
              f"GRANT SELECT ON wmbus_schema TO {role}"]
    for statement in grants:
        pg_cluster.sql(statement, database)
    try:
        store = PostgresStore(f"postgresql://{role}:role-pw-1@127.0.0.1:{pg_cluster.port}/{database}", outbox=True)
        try:
            assert store.add(lines(GATEWAYS[0], range(1, 6))) == (5, 5)
            store.published([p.outbox_id for p in store.pending(2)])
            assert len(store.pending(10)) == 3
        finally:
            store.close()
        pg_cluster.sql("UPDATE wmbus_schema SET version = 0", database)  # an older schema needs its owner
        with pytest.raises(StoreError, match="cannot create the tables in .*permission denied for schema public"):
            PostgresStore(f"postgresql://{role}:role-pw-1@127.0.0.1:{pg_cluster.port}/{database}")
    finally:
        pg_cluster.drop_database(database)
        pg_cluster.sql(f"DROP ROLE {role}")


# -------------------------------------------------------------------------------------------
# Outbox


def test_the_outbox_has_one_row_per_new_reading_drained_in_order(pg_url: str, pg_cluster: PgCluster) -> None:
    store = PostgresStore(pg_url, outbox=True)
    try:
        store.add(lines(GATEWAYS[0], range(1, 21)))
        store.add(lines(GATEWAYS[1], range(11, 31)))  # 10 new readings, 10 new receptions of old ones
        store.add(lines(GATEWAYS[1], range(11, 31)))  # a retry: nothing
        assert count(pg_cluster, pg_url, "outbox") == 30
        first = store.pending(25)
        ids = [p.outbox_id for p in first]
        assert ids == sorted(ids) and len(ids) == 25
        assert len({p.reading.digest for p in first}) == 25
        overlap = next(p for p in first if p.reading.meter_id == "00000015")
        assert sorted(h.gateway for h in overlap.heard) == [GATEWAYS[0], GATEWAYS[1]]
        assert store.pending(25)[:3] == first[:3]  # nothing is removed before published()
        store.published(ids[:10])
        rest = store.pending(100)
        assert [p.outbox_id for p in rest] == ids[10:] + [p.outbox_id for p in rest[15:]] and len(rest) == 20
        store.published([p.outbox_id for p in rest])
        assert store.pending(100) == []
        store.add(lines(GATEWAYS[2], range(1, 31)))  # all known: no new outbox rows
        assert store.pending(100) == []
    finally:
        store.close()
    plain = PostgresStore(pg_url)  # outbox=False: an instance without --mqtt adds no rows
    try:
        plain.add(lines(GATEWAYS[0], range(100, 110)))
    finally:
        plain.close()
    assert count(pg_cluster, pg_url, "outbox") == 0


def test_only_one_instance_drains_the_outbox_at_a_time(pg_url: str, pg_cluster: PgCluster) -> None:
    first, second = PostgresStore(pg_url, outbox=True), PostgresStore(pg_url, outbox=True)
    try:
        second.add(lines(GATEWAYS[0], range(1, 6)))
        assert len(first.pending(10)) == 5  # first holds the lock from now on
        assert second.pending(10) == []
        assert second.pending(10) == []
        locks = pg_cluster.sql("SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND granted"
                               " AND (classid::bigint << 32 | objid::bigint) = %s", db_name(pg_url), (DRAIN_LOCK,))
        assert locks == [(1,)]
        first.close()  # its session ends (a moment later on the server), and the lock with it
        assert len(wait_for(lambda: second.pending(10), "the second instance draining")) == 5
    finally:
        first.close()
        second.close()


# -------------------------------------------------------------------------------------------
# Receptions


def test_receptions_are_those_of_the_window(store: PostgresStore) -> None:
    store.add(lines(GATEWAYS[0], range(1, 4), date="2026-11-24 09:59:59"))
    store.add(lines(GATEWAYS[1], range(1, 4), date="2026-11-24 10:00:00"))
    store.add(lines(GATEWAYS[2], range(1, 4), date="2026-11-24 11:00:00"))
    got = sorted(store.receptions("2026-11-24 10:00:00", "2026-11-24 11:00:00"), key=lambda r: r.meter_id)
    assert [(r.gateway, r.heard_at, r.meter_id) for r in got] == [
        (GATEWAYS[1], "2026-11-24 10:00:00", f"{m:08d}") for m in range(1, 4)]
    assert {(r.manufacturer, r.device_type, r.rssi_code) for r in got} == {("ELV", 0x1B, 28)}
    partial = store.receptions("2026-01-01 00:00:00", "2027-01-01 00:00:00")
    assert next(partial).meter_id in {f"{m:08d}" for m in range(1, 4)}
    partial.close()  # stopped early: the connection goes back to the pool
    assert len(list(store.receptions("2026-01-01 00:00:00", "2027-01-01 00:00:00"))) == 9


# -------------------------------------------------------------------------------------------
# Errors: one line each, never the password


def test_a_wrong_password_a_server_that_is_down_and_a_bad_url_are_clear_one_liners(pg_cluster: PgCluster) -> None:
    wrong = pg_cluster.url(password="not-the-Secret")
    with pytest.raises(StoreError) as raised:
        PostgresStore(wrong)
    text = str(raised.value)
    assert "password authentication failed" in text and "not-the-Secret" not in text and "\n" not in text
    assert "postgresql://wmbus:***@127.0.0.1" in text

    with pytest.raises(StoreError, match=r"cannot connect to PostgreSQL postgresql://u:\*\*\*@127\.0\.0\.1:1/x: "
                                         r".*(refused|failed)") as raised:
        PostgresStore("postgresql://u:pw-xyz@127.0.0.1:1/x")
    assert "pw-xyz" not in str(raised.value) and "\n" not in str(raised.value)

    with pytest.raises(StoreError, match="bad PostgreSQL URL") as raised:
        PostgresStore("postgresql://u:pw-xyz@[::1/x")
    assert "pw-xyz" not in str(raised.value)
    with pytest.raises(StoreError, match="bad PostgreSQL URL"):
        PostgresStore("postgresql://127.0.0.1/x?no_such_option=1")


def test_masked_urls() -> None:
    assert masked("postgresql://u:p@h:5/d") == "postgresql://u:***@h:5/d"
    assert masked("postgres://u@h/d?password=p&sslmode=require") == "postgres://u@h/d?password=***&sslmode=require"
    assert masked("postgresql://h/d") == "postgresql://h/d"
    assert masked("postgresql://u:p%40ss@h/d") == "postgresql://u:***@h/d"
    assert masked("postgresql://hes:p@ss:w/rd#1@127.0.0.1:5/hes") == "postgresql://hes:***@127.0.0.1:5/hes"


@pytest.mark.parametrize("url", ["postgresql://hes:p@ss:w/rd#1@127.0.0.1:5/hes", "postgresql://hes:a/b@h/d",
                                 "postgres://hes:x?y@h/d", "postgresql://hes:x#y@h/d"])
def test_a_url_whose_password_is_not_percent_encoded_is_refused_unread(url: str) -> None:
    with pytest.raises(StoreError, match="percent-encode them") as raised:
        PostgresStore(url)
    assert "ss:w" not in str(raised.value) and "x?y" not in str(raised.value) and "a/b" not in str(raised.value)


def test_a_bad_percent_encoding_in_the_password_is_not_quoted() -> None:
    with pytest.raises(StoreError, match="percent-encoding") as raised:
        PostgresStore("postgresql://hes:se%zzcret@127.0.0.1:1/hes")
    assert "zz" not in str(raised.value) and "cret" not in str(raised.value), raised.value


def test_a_short_password_is_masked_without_mangling_the_error(pg_cluster: PgCluster) -> None:
    with pytest.raises(StoreError) as raised:
        PostgresStore(pg_cluster.url(password="e"))
    assert "password authentication failed for user" in str(raised.value), raised.value


def test_an_upper_case_scheme_is_read_as_postgresql(pg_cluster: PgCluster, pg_url: str) -> None:
    PostgresStore("POSTGRESQL" + pg_url[len("postgresql"):]).close()


def test_a_table_dropped_under_the_schema_is_made_again_at_the_next_start(pg_url: str, pg_cluster: PgCluster) -> None:
    PostgresStore(pg_url).close()
    pg_cluster.sql("DROP TABLE outbox", db_name(pg_url))
    store = PostgresStore(pg_url, outbox=True)
    try:
        assert store.add(lines(GATEWAYS[0], range(1, 4))) == (3, 3) and len(store.pending(10)) == 3
    finally:
        store.close()


def test_without_psycopg_the_error_names_the_extra() -> None:
    code = ("import sys; sys.modules['psycopg'] = None\n"
            "from wmbus_stream.hes.postgres import PostgresStore\n"
            "try:\n    PostgresStore('postgresql://h/d')\n"
            "except Exception as exc:\n    print(type(exc).__name__, exc)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.stdout.strip() == ("StoreError a PostgreSQL --db needs psycopg: pip install 'wmbus-stream[hes]'"), out


def test_receive_with_a_postgres_url_masks_the_password(pg_cluster: PgCluster, pg_url: str) -> None:
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    wrong = pg_cluster.url(db_name(pg_url), password="Wr0ng-pass")
    done = subprocess.run([sys.executable, "-m", "wmbus_stream", "receive", "--no-auth", "--listen", "127.0.0.1:0",
                           "--db", wrong], capture_output=True, text=True, timeout=60, env=env)
    assert done.returncode == 1
    assert "Wr0ng-pass" not in done.stderr + done.stdout
    assert done.stderr.count("\n") == 1 and "password authentication failed" in done.stderr, done.stderr
    proc = subprocess.Popen([sys.executable, "-m", "wmbus_stream", "receive", "--no-auth", "--listen", "127.0.0.1:0",
                             "--db", pg_url], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
    try:
        assert proc.stdout is not None
        banner = next(line for line in proc.stdout if "receiving reports on" in line)
        assert f"readings stored in PostgreSQL {masked(pg_url)}" in banner and PG_PASSWORD not in banner, banner
        wait_for(lambda: caught(proc.pid, signal.SIGTERM), "the receiver's SIGTERM handler")
    finally:
        proc.terminate()
        out, _ = proc.communicate(timeout=30)
    assert proc.returncode == 0 and PG_PASSWORD not in out


def test_manufacturer_letters_holding_a_backslash_are_stored(store: PostgresStore) -> None:
    # M-field 9C73: five-bit letters above '@' include '\' (and '[', ']', '^', '_'); COPY text must escape it.
    telegram = TELEGRAM[:2] + bytes.fromhex("9C73") + TELEGRAM[4:]
    (parsed,) = parse_report((line(hex_text=wired(telegram).hex().upper()) + "\n").encode())
    assert "\\" in parsed.manufacturer
    assert store.add([parsed]) == (1, 1)
    (reading,) = store.readings()
    assert reading.manufacturer == parsed.manufacturer and reading.telegram == telegram


def test_a_big_report_still_arriving_does_not_take_the_session_a_small_one_commits_on(pg_url: str) -> None:
    store = PostgresStore(pg_url, pool=1)
    try:
        big = store.begin()
        big.stage(lines(GATEWAYS[0], range(1, 6001)))  # over the 1 MiB kept in memory: COPYed, its session held
        assert store.add(lines(GATEWAYS[1], range(7001, 7003))) == (2, 2)  # committed beside it, no 20 s wait
        assert big.commit() == (6000, 6000)
        big.abort()
    finally:
        store.close()
