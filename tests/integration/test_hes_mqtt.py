"""The reference HES's MQTT fan-out against a real Mosquitto, with a real subscriber.

Reports are POSTed to a real ``ReceiveServer`` (or the ``wmbus-stream receive`` process)
whose store has an outbox; a ``Publisher`` drains it to the broker. Every unique reading
must arrive exactly once and in order when nothing fails, at least once across a broker
outage and a receiver restart, and nothing may be left in the outbox afterwards.
"""

from __future__ import annotations

import contextlib
import hashlib
import http.client
import re
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator, Sequence
from pathlib import Path

import pytest

from gwkit import wait_for
from mqtt_harness import Broker, Subscriber, broker_fixture, subscriber_fixture  # noqa: F401  (fixtures)
from report_lines import AGE, RECEIVER, TELEGRAM, line, telegram_for, wired
from test_hes import post

from wmbus_stream.hes import PostSummary, ReceiveServer, SqliteStore, Store, parse_report

pytestmark = pytest.mark.integration

PREFIX = "test"


def lines(meters: Sequence[int], *, serial: str = "00000161", access: int = 0x97,
          date: str = "2026-11-24 10:15:02") -> list[str]:
    """Report lines of one gateway for ``meters`` (one telegram each, told apart by the access number)."""
    return [line(serial=serial, meter=f"{meter:08d}", date=date,
                 hex_text=wired(telegram_for(meter, access)).hex().upper()) for meter in meters]


def key(meter: int, access: int = 0x97) -> str:
    return hashlib.sha256(telegram_for(meter, access)).hexdigest()


def post_to(port: int, report: Sequence[str]) -> int:
    """POST a report to a receiver on 127.0.0.1:``port``; the status."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.request("POST", "/", body=("\n".join(report) + "\n").encode(), headers={"Content-Type": "text/plain"})
        response = conn.getresponse()
        response.read()
        return response.status
    finally:
        conn.close()


class Receiver:
    """A ReceiveServer on 127.0.0.1 whose store keeps an outbox, and the Publisher draining it."""

    def __init__(self, broker: Broker, db: str = ":memory:", *, store: Store | None = None, url: str | None = None,
                 ca: str | None = None) -> None:
        from wmbus_stream.hes.publish import Publisher

        self.reports: list[str] = []
        self._lock = threading.Lock()
        self.store = store if store is not None else SqliteStore(db, outbox=True)
        self.publisher = Publisher(self.store, url or broker.url(PREFIX), ca_file=ca, retry=(0.1, 0.5),
                                   report=self._report)
        self.server = ReceiveServer(store=self.store, on_post=self._posted).start()
        self.publisher.start()

    def _report(self, text: str) -> None:
        with self._lock:
            self.reports.append(text)

    def _posted(self, summary: PostSummary) -> None:
        if summary.new_readings:
            self.publisher.wake()

    def post(self, report: Sequence[str]) -> None:
        status, body, _ = post(self.server, ("\n".join(report) + "\n").encode())
        assert status == 204, body

    def outbox(self) -> int:
        return len(self.store.pending(100_000))

    def drained(self) -> bool:
        return self.outbox() == 0

    def close(self) -> None:
        self.server.stop()
        self.publisher.stop()
        self.store.close()


@pytest.fixture
def receiver(broker: Broker) -> Iterator[Receiver]:
    running = Receiver(broker)
    try:
        yield running
    finally:
        running.close()


def test_every_unique_reading_is_published_exactly_once_in_order(receiver: Receiver, subscriber: Subscriber) -> None:
    posts = [
        lines(range(1, 51)),                                   # gateway 1: meters 1..50
        lines(range(25, 76), serial="00000162"),               # gateway 2: 25..50 again (same telegrams), 51..75 new
        lines(range(1, 51)),                                   # gateway 1 retries its report: nothing new
        lines(range(60, 101), serial="00000163", access=0x98),  # gateway 3: newer telegrams of 60..100
        lines(range(70, 81), serial="00000162", access=0x98),  # gateway 2 heard some of those too
    ]
    expected = [key(m) for m in range(1, 76)] + [key(m, 0x98) for m in range(60, 101)]
    for report in posts:
        receiver.post(report)
    # A sentinel posted last: the broker keeps one publisher's order, so once it has arrived
    # anything published before it has arrived too.
    receiver.post(lines([999]))
    subscriber.wait_keys({key(999)}, "the sentinel reading")
    wait_for(receiver.drained, "the outbox drained")
    assert subscriber.keys() == expected + [key(999)]
    assert [topic for topic, _ in subscriber.messages[:2]] == [f"{PREFIX}/ELV/1B/00000001", f"{PREFIX}/ELV/1B/00000002"]
    assert receiver.publisher.published_count == len(expected) + 1
    assert receiver.reports == []


def test_a_broker_outage_delays_publication_but_loses_nothing(broker: Broker, receiver: Receiver,
                                                              subscriber: Subscriber) -> None:
    outage(broker, receiver, subscriber)


def outage(broker: Broker, receiver: Receiver, subscriber: Subscriber) -> None:
    """Readings posted before, while hung with some in flight, while down and after: each published at least once."""
    receiver.post(lines(range(1, 21)))
    before = {key(m) for m in range(1, 21)}
    subscriber.wait_keys(before, "the readings posted before the outage")
    wait_for(receiver.drained, "the outbox drained before the outage")
    wait_for(broker.saved, "mosquitto's persistence file (the subscriber's session survives the kill)")
    seen = len(subscriber.messages)

    # The broker hangs with readings in flight (published, no PUBACK), then dies: those must be
    # published again, not taken for delivered.
    broker.freeze()
    receiver.post(lines(range(21, 31)))
    wait_for(lambda: receiver.publisher.in_flight == 10, "10 readings in flight to the hung broker")
    broker.kill()
    receiver.post(lines(range(31, 61)))                   # ingestion goes on: 204 while the broker is down
    receiver.post(lines(range(41, 81), serial="00000162"))
    receiver.post(lines(range(21, 61)))                   # a retry adds nothing
    during = [key(m) for m in range(21, 81)]
    wait_for(lambda: not receiver.publisher.connected, "the publisher noticing the outage")
    assert receiver.outbox() == len(during)
    assert len(subscriber.messages) == seen
    queued = [publication.reading.digest for publication in receiver.store.pending(1000)]  # the outbox's order

    broker.start()                                        # the same port
    subscriber.wait_keys(set(during), "the readings posted during the outage", timeout=30)
    wait_for(receiver.drained, "the outbox drained after the outage", timeout=30)
    keys = subscriber.keys()
    assert set(keys) == before | set(during)              # at least once, nothing else
    assert list(dict.fromkeys(keys)) == list(dict.fromkeys(keys[:seen])) + queued  # first arrivals in outbox order
    # One line when the connection was lost, one when it came back: not one per attempt.
    assert len(receiver.reports) == 2, receiver.reports
    assert "lost" in receiver.reports[0] and "reachable again" in receiver.reports[1]


def test_a_restarted_receiver_publishes_what_was_left_in_the_outbox(tmp_path: Path, broker: Broker,
                                                                    subscriber: Subscriber) -> None:
    db = str(tmp_path / "hes.sqlite")
    broker.kill()
    first = Receiver(broker, db)
    try:
        first.post(lines(range(1, 31)))
        first.post(lines(range(11, 41), serial="00000162"))
        assert first.outbox() == 40
    finally:
        first.close()
    assert subscriber.messages == []

    broker.start()
    second = Receiver(broker, db)
    try:
        subscriber.wait_keys({key(m) for m in range(1, 41)}, "the readings the first receiver left")
        wait_for(second.drained, "the outbox drained by the restarted receiver")
        assert list(dict.fromkeys(subscriber.keys())) == [key(m) for m in range(1, 41)]
    finally:
        second.close()


def test_the_payload_holds_the_readings_fields_and_its_receptions(receiver: Receiver, subscriber: Subscriber) -> None:
    strong = b"\x01\xfd\x71\x3f"                          # RSSI code 63: above -6 dBm
    receiver.post([
        line(),                                           # the spec vector line
        line(serial="00000162", date="2026-11-24 10:15:04", records=RECEIVER + AGE + strong),
    ])
    [(topic, document)] = subscriber.wait_keys({hashlib.sha256(TELEGRAM).hexdigest()}, "the spec vector reading")
    assert topic == f"{PREFIX}/ELV/1B/61000164"
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z", document.pop("stored_at"))
    assert document == {
        "key": hashlib.sha256(TELEGRAM).hexdigest(),
        "manufacturer": "ELV",
        "meter_id": "61000164",
        "version": 1,
        "device_type": 0x1B,
        "device_type_name": "room sensor",
        "ci": 0x7A,
        "access_number": 0x97,
        "telegram": TELEGRAM.hex().upper(),
        "first_heard": "2026-11-24 10:15:02",
        "first_gateway": "00000161",
        "gateways": [
            {"serial": "00000161", "heard_at": "2026-11-24 10:15:02", "rssi_code": 0x1C, "rssi_dbm": -74,
             "receiver": "62001772", "age_minutes": None},
            {"serial": "00000162", "heard_at": "2026-11-24 10:15:04", "rssi_code": 63, "rssi_dbm": -4,
             "receiver": "62001772", "age_minutes": 5},
        ],
    }


def test_receive_with_mqtt_publishes_over_tls_and_keeps_the_rest_for_next_start(tmp_path: Path) -> None:
    pytest.importorskip("paho.mqtt.client", reason="paho-mqtt missing: pip install 'wmbus-stream[hes]'")
    secret = "mq-s3cret-word"
    broker = Broker(tls=True, users={"hes": secret, "reader": "r"})
    try:
        broker.start()
        subscriber = Subscriber(broker, user="reader", password="r")
        db = tmp_path / "hes.sqlite"
        with subprocess.Popen(
            [sys.executable, "-m", "wmbus_stream", "receive", "--listen", "127.0.0.1:0", "--no-auth", "--db", str(db),
             "--mqtt", broker.url(PREFIX, user="hes", password=secret), "--mqtt-ca", str(broker.ca_file)],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        ) as process:
            try:
                banner = process.stdout.readline()
                assert banner.startswith("receiving reports on http://127.0.0.1:"), banner + process.stderr.read()
                assert f"published to MQTT mqtts://hes@127.0.0.1:{broker.port}/{PREFIX}" in banner
                port = int(banner.split()[3].rsplit(":", 1)[1].strip("/"))
                assert post_to(port, lines(range(1, 11))) == 204
                subscriber.wait_keys({key(m) for m in range(1, 11)}, "the readings published by wmbus-stream receive")

                broker.kill()
                assert post_to(port, lines(range(11, 16))) == 204
                process.send_signal(signal.SIGTERM)
                assert process.wait(10) == 0
                out, err = process.communicate()
            finally:
                if process.poll() is None:
                    process.kill()
                    process.communicate()
        subscriber.close()
        assert secret not in banner + out + err
        assert "MQTT: 10 readings published" in out, out + err
        with contextlib.closing(SqliteStore(str(db))) as kept:
            left = kept.pending(100)
        assert [publication.reading.digest for publication in left] == [key(m) for m in range(11, 16)]
    finally:
        broker.close()


def test_a_broker_refusing_the_credentials_delays_publication_but_loses_nothing(tmp_path: Path) -> None:
    pytest.importorskip("paho.mqtt.client", reason="paho-mqtt missing: pip install 'wmbus-stream[hes]'")
    broker = Broker(users={"hes": "right", "reader": "r"})
    try:
        broker.start()
        subscriber = Subscriber(broker, user="reader", password="r")
        db = str(tmp_path / "hes.sqlite")
        wrong = Receiver(broker, db, url=broker.url(PREFIX, user="hes", password="wrong"))
        try:
            wrong.post(lines(range(1, 21)))
            wait_for(lambda: wrong.publisher.outages, "the refusal noticed")
            wrong.post(lines(range(21, 31)))
            assert wrong.outbox() == 30
        finally:
            wrong.close()
        assert len(wrong.reports) == 1 and "refused the connection: Not authorized" in wrong.reports[0], wrong.reports
        assert "wrong" not in wrong.reports[0]
        right = Receiver(broker, db, url=broker.url(PREFIX, user="hes", password="right"))
        try:
            subscriber.wait_keys({key(m) for m in range(1, 31)}, "the readings kept while the broker refused")
            wait_for(right.drained, "the outbox drained with the right password")
        finally:
            right.close()
            subscriber.close()
    finally:
        broker.close()


# -------------------------------------------------------------------------------------------
# PostgreSQL: the fleet store (pg_harness's throwaway cluster)


def test_a_broker_outage_delays_publication_but_loses_nothing_with_postgresql(broker: Broker, subscriber: Subscriber,
                                                                             pg_url: str) -> None:
    from wmbus_stream.hes.postgres import PostgresStore

    running = Receiver(broker, store=PostgresStore(pg_url, outbox=True))
    try:
        outage(broker, running, subscriber)
    finally:
        running.close()


def test_two_instances_on_one_postgresql_publish_each_reading_exactly_once(broker: Broker, subscriber: Subscriber,
                                                                          pg_url: str) -> None:
    from wmbus_stream.hes.postgres import PostgresStore

    first = Receiver(broker, store=PostgresStore(pg_url, outbox=True))
    second = Receiver(broker, store=PostgresStore(pg_url, outbox=True))
    try:
        for report in (lines(range(1, 41)), lines(range(21, 61), serial="00000162"), lines(range(1, 41))):
            first.post(report)
            second.post(report)                       # the same reports through the other instance
        second.post(lines([999]))
        first.post(lines([998]))
        subscriber.wait_keys({key(999), key(998)}, "both sentinel readings")
        wait_for(lambda: first.drained() and second.drained(), "the outbox drained")
        keys = subscriber.keys()
        assert sorted(keys) == sorted([key(m) for m in range(1, 61)] + [key(999), key(998)])  # each once
        assert set(keys[:40]) == {key(m) for m in range(1, 41)}  # the first report's, then the second's
        assert {first.publisher.published_count, second.publisher.published_count} == {0, 62}  # one drains
    finally:
        first.close()
        second.close()


def outbox_rows(url: str) -> int:
    """The rows in a PostgreSQL store's outbox, read by a session of the test's own."""
    import psycopg

    with psycopg.connect(url) as conn:
        row = conn.execute("SELECT count(*) FROM outbox").fetchone()
    return int(row[0]) if row else 0


def test_receive_on_postgresql_with_mqtt_publishes_each_new_reading(broker: Broker, subscriber: Subscriber,
                                                                    pg_url: str) -> None:
    with subprocess.Popen(
        [sys.executable, "-m", "wmbus_stream", "receive", "--listen", "127.0.0.1:0", "--no-auth", "--db", pg_url,
         "--mqtt", broker.url(PREFIX)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    ) as process:
        try:
            banner = process.stdout.readline()
            assert "published to MQTT" in banner, banner + process.stderr.read()
            port = int(banner.split()[3].rsplit(":", 1)[1].strip("/"))
            assert post_to(port, lines(range(1, 21))) == 204
            assert post_to(port, lines(range(11, 31), serial="00000162")) == 204
            subscriber.wait_keys({key(m) for m in range(1, 31)}, "the readings published from PostgreSQL")
            wait_for(lambda: outbox_rows(pg_url) == 0, "the outbox drained by the receiver")
            process.send_signal(signal.SIGTERM)
            assert process.wait(10) == 0
            out, err = process.communicate()
        finally:
            if process.poll() is None:
                process.kill()
                process.communicate()
    assert sorted(subscriber.keys()) == sorted(key(m) for m in range(1, 31))
    assert "MQTT: 30 readings published" in out, out + err


class FakeBroker:
    """A hostile MQTT peer on 127.0.0.1: CONNACKs every CONNECT, then drops the connection at the first
    message (``drop``) or reads forever without a PUBACK (``silent``); counts the connections."""

    def __init__(self, mode: str) -> None:
        import socket

        self.mode = mode
        self.connections = 0
        self._server = socket.create_server(("127.0.0.1", 0))
        self._server.settimeout(0.2)
        self.port = self._server.getsockname()[1]
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"fake-broker-{mode}", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        held = []
        while not self._stop.is_set():
            try:
                sock, _ = self._server.accept()
            except TimeoutError:
                continue
            self.connections += 1
            sock.settimeout(5)
            with contextlib.suppress(OSError):
                sock.recv(65536)  # CONNECT
                sock.sendall(b"\x20\x02\x00\x00")  # CONNACK, accepted
                if self.mode == "drop":
                    sock.recv(65536)  # the first PUBLISH
                    sock.close()
                    continue
            held.append(sock)  # silent: take everything, acknowledge nothing
            threading.Thread(target=self._swallow, args=(sock,), daemon=True).start()
        for sock in held:
            sock.close()

    def _swallow(self, sock) -> None:  # noqa: ANN001
        with contextlib.suppress(OSError):
            while not self._stop.is_set() and sock.recv(65536):
                pass

    def close(self) -> None:
        self._stop.set()
        self._thread.join(5)
        self._server.close()


def fake_receiver(mode: str) -> tuple[FakeBroker, SqliteStore, list[str], object]:
    from wmbus_stream.hes.publish import Publisher

    fake = FakeBroker(mode)
    store = SqliteStore(":memory:", outbox=True)
    store.add(parse_report(("\n".join(lines(range(1, 11))) + "\n").encode()))
    reports: list[str] = []
    publisher = Publisher(store, f"mqtt://127.0.0.1:{fake.port}/{PREFIX}", retry=(0.05, 0.4), report=reports.append)
    return fake, store, reports, publisher.start()


def test_a_broker_that_drops_every_message_is_one_outage_retried_with_backoff() -> None:
    fake, store, reports, publisher = fake_receiver("drop")
    try:
        wait_for(lambda: fake.connections >= 5, "five connections to the dropping broker", 20)
        assert len(reports) == 1 and "lost:" in reports[0], reports  # one line, not one per connection
        assert len(store.pending(100)) == 10  # nothing acknowledged, nothing removed
    finally:
        publisher.stop()
        fake.close()
        store.close()


def test_a_broker_that_never_acknowledges_is_reported_and_reconnected(monkeypatch: pytest.MonkeyPatch) -> None:
    from wmbus_stream.hes import publish

    monkeypatch.setattr(publish, "ACK_SECONDS", 0.5)
    fake, store, reports, publisher = fake_receiver("silent")
    try:
        wait_for(lambda: fake.connections >= 2, "a second connection after the missing PUBACKs", 20)
        assert len(reports) == 1 and "no PUBACK within 0.5 s for 10 messages in flight" in reports[0], reports
        assert len(store.pending(100)) == 10
    finally:
        publisher.stop()
        fake.close()
        store.close()
