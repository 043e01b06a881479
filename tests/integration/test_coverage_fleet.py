"""``wmbus-stream receive coverage`` on a simulated fleet whose under-covered meters are known by construction.

Five gateways and forty meters, one telegram per meter each quarter hour for 7 days, with
planned gaps: meters heard by one gateway only, meters heard by two but in only 90 % of the
quarter hours, meters fine at 24 h but not at 15 min, one just above and one just below
98 %. The receptions go through the real HTTP path (a ``ReceiveServer`` on 127.0.0.1, one
real POST of report lines per gateway and day) into a real SQLite file; the real command
then reads that file in its own process, and its answer is checked against the plan.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import re
import sqlite3
import subprocess
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from report_lines import RECEIVER as RECEIVER_RECORD, TELEGRAM
from wmbus_stream.hes import ReceiveServer
from wmbus_stream.hes.cli import open_store

pytestmark = pytest.mark.integration

WMBUS = Path(sys.executable).with_name("wmbus-stream")
SINCE, UNTIL = "2026-11-16 00:00:00", "2026-11-23 00:00:00"
INTERVALS = 672  # quarter hours in the 7 days
G1, G2, G3, G4, G5 = GATEWAYS = tuple(f"{161 + g:08d}" for g in range(5))
# Each reading changes the spec telegram's (ELV, device type 1B) meter ID, device type, access
# number and one payload byte, so that every reading is its own telegram.


def always(k: int) -> bool:
    return True


@dataclass(frozen=True)
class Meter:
    """One simulated meter: in which quarter hours it sends, and which gateways hear it when it does."""

    number: int
    hears: dict[str, Callable[[int], bool]]
    sends: Callable[[int], bool] = always
    device_type: int = 0x1B

    @property
    def label(self) -> str:
        return f"ELV {self.number:08d} v01 type {self.device_type:02X}"


def fleet() -> list[Meter]:
    meters = []
    for n in range(1, 17):  # fine: two neighbouring gateways, every quarter hour
        meters.append(Meter(61000000 + n, {GATEWAYS[n % 5]: always, GATEWAYS[(n + 1) % 5]: always}))
    for n in range(17, 21):  # fine: three gateways
        meters.append(Meter(61000000 + n, {GATEWAYS[n % 5]: always, GATEWAYS[(n + 1) % 5]: always,
                                           GATEWAYS[(n + 2) % 5]: always}))
    for n in (21, 22):  # fine: each gateway misses many quarter hours, never the same ones
        meters.append(Meter(61000000 + n, {G2: lambda k: k % 3 != 0, G4: lambda k: k % 3 == 0}))
    meters.append(Meter(61000023, {G1: always, G3: always}, sends=lambda k: not (k % 50 == 3 and k < 650)))  # 659
    meters.append(Meter(61000024, {G1: always, G3: always}, sends=lambda k: k % 48 != 5))  # 658 of 672
    meters += [Meter(61000025, {G1: always}), Meter(61000026, {G1: always}),  # one gateway only
               Meter(61000027, {G3: always}), Meter(61000028, {G5: always})]
    for n in (29, 30, 31):  # two gateways, a reading in 90 % of quarter hours
        meters.append(Meter(61000000 + n, {G2: always, G3: always}, sends=lambda k: k % 10 != 9))
    for n in (32, 33):  # hourly: fine at 1 h and 24 h, 25 % at 15 min
        meters.append(Meter(61000000 + n, {G4: always, G5: always}, sends=lambda k: k % 4 == 0))
    for n in (34, 35):  # silent from midnight to 6 every day: 75 % at 15 min, fine at 24 h
        meters.append(Meter(61000000 + n, {G1: always, G5: always}, sends=lambda k: k % 96 >= 24))
    meters.append(Meter(61000036, {G2: always}, sends=lambda k: k % 10 != 9))  # one gateway and 90 %
    meters.append(Meter(61000037, {G3: always, G4: always}, sends=lambda k: k // 96 != 2))  # a whole day lost
    meters.append(Meter(61000038, {G1: always, G4: lambda k: k < 5}))  # a second gateway, barely: still 2
    meters.append(Meter(61000039, {G2: always, G3: always}, sends=lambda k: False))  # heard only outside the window
    meters.append(Meter(61000001, {G4: always}, device_type=0x07))  # the ID of the first, another device type
    assert len(meters) == 40
    return meters


def telegram(meter: Meter, k: int) -> bytes:
    return (TELEGRAM[:4] + bytes.fromhex(f"{meter.number:08d}")[::-1] + TELEGRAM[8:9] + bytes((meter.device_type,))
            + TELEGRAM[10:11] + bytes((k % 256,)) + TELEGRAM[12:20] + bytes((k // 256,)) + TELEGRAM[21:])


def report_line(gateway: str, meter: Meter, heard_at: str, k: int, rssi: int) -> str:
    """One report line as a gateway writes it (spec section 5): receiver and RSSI records, the telegram."""
    wireless = telegram(meter, k)
    wired = (bytes((0x08, 0, 0x72)) + wireless[4:8] + wireless[2:4] + wireless[8:10] + bytes(4) + RECEIVER_RECORD
             + bytes((0x01, 0xFD, 0x71, rssi)) + b"\x0d\xfd\x3b" + bytes((len(wireless),)) + wireless)
    return f"{gateway};{meter.number:08d};{heard_at};00;{wired.hex().upper()}"


def stamp(base: str, seconds: int) -> str:
    return (datetime.strptime(base, "%Y-%m-%d %H:%M:%S") + timedelta(seconds=seconds)).strftime("%Y-%m-%d %H:%M:%S")


@dataclass
class Built:
    """The report lines per (gateway, day) and, per meter label and gateway, the best RSSI code sent."""

    posts: dict[tuple[str, str], list[str]]
    best: dict[str, dict[str, int]]
    lines: int


def build(meters: list[Meter]) -> Built:
    posts: dict[tuple[str, str], list[str]] = {}
    best: dict[str, dict[str, int]] = {}
    count = 0

    def report(gateway: str, meter: Meter, heard_at: str, k: int, rssi: int, inside: bool = True) -> None:
        nonlocal count
        posts.setdefault((gateway, heard_at[:10]), []).append(report_line(gateway, meter, heard_at, k, rssi))
        count += 1
        if inside:
            best.setdefault(meter.label, {})
            best[meter.label][gateway] = max(rssi, best[meter.label].get(gateway, 0))

    for meter in meters:
        offset = 60 + meter.number * 37 % 780  # when in its quarter hour it sends
        for k in range(INTERVALS):
            if not meter.sends(k):
                continue
            for g, (gateway, hears) in enumerate(meter.hears.items()):
                if hears(k):
                    # Gateways' clocks differ by a second; each has its own level for the meter, varying.
                    rssi = 20 + (meter.number * 7 + GATEWAYS.index(gateway) * 13) % 30 + k % 5
                    report(gateway, meter, stamp(SINCE, k * 900 + offset + g % 2), k, rssi)
    # At the window's edges: just before since and exactly at until are outside it.
    outside = next(m for m in meters if m.number == 61000039)
    report(G2, outside, stamp(SINCE, -60), 700, 40, inside=False)
    report(G3, outside, UNTIL, 701, 40, inside=False)
    first = meters[0]
    report(G5, first, UNTIL, 702, 50, inside=False)  # a third gateway for it, but not in the window
    return Built(posts, best, count)


@dataclass
class Fleet:
    """The fleet stored: ``--db`` (a file or a URL), what was built, and how to query the store's SQL."""

    where: str
    built: Built
    sql: Callable[[str], list[tuple[Any, ...]]]


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def fleet_db(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fleet]:
    """The fleet's receptions, POSTed to a real receiver, in a real SQLite file or PostgreSQL database."""
    built = build(fleet())
    cluster, name = None, ""
    if request.param == "sqlite":
        path = tmp_path_factory.mktemp("coverage") / "hes.sqlite"
        where = str(path)

        def sql(statement: str) -> list[tuple[Any, ...]]:
            with contextlib.closing(sqlite3.connect(f"file:{path}?mode=ro", uri=True)) as conn:
                return conn.execute(statement).fetchall()
    else:
        cluster = request.getfixturevalue("pg_cluster")
        name = cluster.create_database("coverage")
        where = cluster.url(name)

        def sql(statement: str) -> list[tuple[Any, ...]]:
            return [tuple(v.strftime("%Y-%m-%d %H:%M:%S") if isinstance(v, datetime) else v for v in row)
                    for row in cluster.sql(statement, name)]

    try:
        store = open_store(where)
        try:
            with ReceiveServer(store=store) as server:
                for (gateway, day), lines in sorted(built.posts.items()):
                    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=60)
                    try:
                        conn.request("POST", "/", body=("\n".join(lines) + "\n").encode(),
                                     headers={"Content-Type": "text/plain; charset=us-ascii"})
                        response = conn.getresponse()
                        assert (response.status, response.read()) == (204, b""), (gateway, day)
                    finally:
                        conn.close()
            assert len(store.heard()) == built.lines  # every reception stored, none merged away
        finally:
            store.close()
        yield Fleet(where, built, sql)
    finally:
        if cluster is not None:
            cluster.drop_database(name)


def coverage(where: str | Path, *args: str) -> subprocess.CompletedProcess[str]:
    run = subprocess.run([str(WMBUS), "receive", "coverage", "--db", str(where), "--until", UNTIL, *args],
                         capture_output=True, text=True, timeout=300, stdin=subprocess.DEVNULL)
    assert "Traceback" not in run.stderr, run.stderr
    return run


def below(text: str) -> dict[str, str]:
    """Meter label -> what follows ``below:`` on its line."""
    return dict(re.findall(r"^  (ELV \d{8} v01 type [0-9A-F]{2}): .*; below: (.*)$", text, re.M))


def alone(text: str) -> dict[str, list[str]]:
    section = text.split("only heard by one gateway", 1)[1].split("\nsummary:", 1)[0]
    return {gateway: labels.split(", ") for gateway, labels in re.findall(r"^  (\d{8}) \(\d+\): (.*)$", section, re.M)}


LONELY = "heard by 1 gateway, 2 wanted"
ONLY_HEARD_BY = {G1: ["ELV 61000025 v01 type 1B", "ELV 61000026 v01 type 1B"], G2: ["ELV 61000036 v01 type 1B"],
                 G3: ["ELV 61000027 v01 type 1B"], G4: ["ELV 61000001 v01 type 07"], G5: ["ELV 61000028 v01 type 1B"]}


def test_the_report_names_exactly_the_meters_built_to_be_under_covered(fleet_db: Fleet) -> None:
    db = fleet_db.where
    run = coverage(db, "--resolution", "15m", "--window", "7d")
    assert run.returncode == 0 and run.stderr == "", run
    assert run.stdout.startswith(f"coverage {SINCE} to {UNTIL} (7d) at 15m: 672 intervals;"), run.stdout
    assert below(run.stdout) == {
        "ELV 61000024 v01 type 1B": "reception 97.9 % at 15m, 98 % wanted",
        "ELV 61000025 v01 type 1B": LONELY, "ELV 61000026 v01 type 1B": LONELY,
        "ELV 61000027 v01 type 1B": LONELY, "ELV 61000028 v01 type 1B": LONELY,
        "ELV 61000029 v01 type 1B": "reception 90.0 % at 15m, 98 % wanted",
        "ELV 61000030 v01 type 1B": "reception 90.0 % at 15m, 98 % wanted",
        "ELV 61000031 v01 type 1B": "reception 90.0 % at 15m, 98 % wanted",
        "ELV 61000032 v01 type 1B": "reception 25.0 % at 15m, 98 % wanted",
        "ELV 61000033 v01 type 1B": "reception 25.0 % at 15m, 98 % wanted",
        "ELV 61000034 v01 type 1B": "reception 75.0 % at 15m, 98 % wanted",
        "ELV 61000035 v01 type 1B": "reception 75.0 % at 15m, 98 % wanted",
        "ELV 61000036 v01 type 1B": f"{LONELY}; reception 90.0 % at 15m, 98 % wanted",
        "ELV 61000037 v01 type 1B": "reception 85.7 % at 15m, 98 % wanted",
        "ELV 61000001 v01 type 07": LONELY,
    }, run.stdout
    assert "meters below a threshold (15):" in run.stdout
    assert alone(run.stdout) == ONLY_HEARD_BY, run.stdout
    assert run.stdout.splitlines()[-1] == (
        "summary: 39 meters heard by 5 gateways; 15 below a threshold (6 by fewer than 2 gateways, 10 under 98 %"
        " at 15m)")
    line = next(x for x in run.stdout.splitlines() if "ELV 61000036" in x)
    assert re.match(r"  ELV 61000036 v01 type 1B: 1 gateway \(00000162 -?\d+ dBm\), reception 90.0 % \(605 of 672\);",
                    line), line


def test_at_24_hours_only_the_lonely_and_the_day_lost_remain(fleet_db: Fleet) -> None:
    db = fleet_db.where
    run = coverage(db, "--resolution", "24h")
    assert run.returncode == 0 and run.stderr == "", run
    assert below(run.stdout) == {
        "ELV 61000025 v01 type 1B": LONELY, "ELV 61000026 v01 type 1B": LONELY,
        "ELV 61000027 v01 type 1B": LONELY, "ELV 61000028 v01 type 1B": LONELY,
        "ELV 61000036 v01 type 1B": LONELY,
        "ELV 61000037 v01 type 1B": "reception 85.7 % at 24h, 98 % wanted",
        "ELV 61000001 v01 type 07": LONELY,
    }, run.stdout
    assert alone(run.stdout) == ONLY_HEARD_BY
    hourly = coverage(db, "--resolution", "1h", "--min-gateways", "1")
    # Hourly senders and single lost quarter hours are fine at 1 h; six silent hours a day and a lost day are not.
    assert set(below(hourly.stdout)) == {"ELV 61000034 v01 type 1B", "ELV 61000035 v01 type 1B", "ELV 61000037 v01 type 1B"}, \
        hourly.stdout


def test_thresholds_move_the_verdicts(fleet_db: Fleet) -> None:
    db = fleet_db.where
    run = coverage(db, "--min-gateways", "1", "--min-reception", "85%")
    assert set(below(run.stdout)) == {"ELV 61000032 v01 type 1B", "ELV 61000033 v01 type 1B", "ELV 61000034 v01 type 1B",
                                      "ELV 61000035 v01 type 1B"}, run.stdout
    run = coverage(db, "--min-gateways", "3", "--min-reception", "0")
    assert set(below(run.stdout)) == {
        f"ELV {61000000 + n:08d} v01 type 1B" for n in range(1, 39) if n not in (17, 18, 19, 20)} | {
        "ELV 61000001 v01 type 07"}, run.stdout
    run = coverage(db, "--min-reception", "97.9")
    assert "ELV 61000024 v01 type 1B" not in below(run.stdout)  # 658/672 is 97.92 %


def test_the_json_document_holds_every_figure(fleet_db: Fleet) -> None:
    db, built = fleet_db.where, fleet_db.built
    run = coverage(db, "--json", "--all")
    assert run.returncode == 0 and run.stderr == "", run
    doc = json.loads(run.stdout)
    assert (doc["since"], doc["until"], doc["resolution_seconds"], doc["intervals"]) == (SINCE, UNTIL, 900, 672)
    meters = {f"{m['manufacturer']} {m['meter_id']} v{m['version']:02X} type {m['device_type']:02X}": m for m in doc["meters"]}
    assert len(meters) == 39 and "ELV 61000039 v01 type 1B" not in meters
    for label, by_gateway in built.best.items():
        got = {h["gateway"]: h["best_rssi_code"] for h in meters[label]["heard_by"]}
        assert got == by_gateway, label
        for h in meters[label]["heard_by"]:
            assert h["best_rssi_dbm"] == 2 * h["best_rssi_code"] - 130
    first = meters["ELV 61000001 v01 type 1B"]
    assert [h["gateway"] for h in first["heard_by"]] == sorted([G2, G3], key=lambda g: -built.best[
        "ELV 61000001 v01 type 1B"][g])  # strongest first; G5's reception at until is outside the window
    assert [(h["receptions"], h["intervals"]) for h in first["heard_by"]] == [(672, 672), (672, 672)]
    split = meters["ELV 61000021 v01 type 1B"]
    assert sorted(h["intervals"] for h in split["heard_by"]) == [224, 448] and split["intervals"] == 672
    assert split["below"] == []
    barely = meters["ELV 61000038 v01 type 1B"]
    assert {h["gateway"]: h["intervals"] for h in barely["heard_by"]} == {G1: 672, G4: 5}
    assert barely["gateways"] == 2 and barely["below"] == []
    assert meters["ELV 61000023 v01 type 1B"]["intervals"] == 659 and meters["ELV 61000023 v01 type 1B"]["below"] == []
    assert meters["ELV 61000036 v01 type 1B"]["below"] == ["gateways", "reception"]
    assert doc["only_heard_by"] == {gateway: [
        {"manufacturer": "ELV", "meter_id": label.split()[1], "version": 1, "device_type": int(label.split()[4], 16)}
        for label in labels] for gateway, labels in ONLY_HEARD_BY.items()}
    assert doc["summary"] == {"meters": 39, "gateways": 5, "below": 15, "below_gateways": 6, "below_reception": 10,
                              "only_heard_by_one": 6}
    short = json.loads(coverage(db, "--json").stdout)
    assert [m["meter_id"] for m in short["meters"]] == [m["meter_id"] for m in doc["meters"] if m["below"]]


def test_the_view_a_dashboard_reads(fleet_db: Fleet) -> None:
    rows = fleet_db.sql("SELECT manufacturer, meter_id, version, device_type, gateway, receptions, first_heard,"
                        " last_heard, best_rssi_code FROM meter_coverage")
    view = {(f"{m} {i} v{v:02X} type {t:02X}", g): (n, first, last, best)
            for m, i, v, t, g, n, first, last, best in rows}
    assert view[("ELV 61000001 v01 type 1B", G5)] == (1, UNTIL, UNTIL, 50)  # the view holds everything stored
    assert view[("ELV 61000039 v01 type 1B", G2)][0:2] == (1, stamp(SINCE, -60))
    assert view[("ELV 61000036 v01 type 1B", G2)][0] == 605
    for label, by_gateway in fleet_db.built.best.items():
        for gateway, code in by_gateway.items():
            assert view[(label, gateway)][3] == code


@pytest.mark.parametrize(("args", "code", "reason"), [
    (("--resolution", "8d"), 2, "--resolution 8d is longer than --window 7d"),
    (("--window", "1w"), 2, "argument --window: '1w' is not a duration: give a whole number and s, m, h or d"),
    (("--resolution", "15"), 2, "argument --resolution: '15' is not a duration"),
    (("--window", "1d", "--resolution", "7h"), 2, "--window 24h is not a whole number of --resolution 7h: give a resolution that divides"),
    (("--min-reception", "101"), 2, "argument --min-reception: '101' is not a percentage: give a number 0 to 100"),
    (("--min-gateways", "0"), 2, "argument --min-gateways: '0' is not a number of gateways"),
    (("--min-gateways", "99999999999999999999"), 2, "1 to 10000"),
    (("--window", "99999999999d"), 2, "too long a duration"),
    (("--until", "0001-01-01 00:00:00"), 2, "reaches before the year 1"),
    (("--until", "2026-11-23"), 2, "argument --until: '2026-11-23' is not a time 'YYYY-MM-DD hh:mm:ss'"),
])
def test_bad_options_are_usage_errors_naming_what_is_allowed(tmp_path: Path, args: tuple[str, ...],
                                                             code: int, reason: str) -> None:
    db = tmp_path / "hes.sqlite"  # not there: options are checked first
    run = coverage(db, *args)
    assert run.returncode == code and run.stdout == "" and reason in run.stderr, run


def test_a_missing_database_is_a_failure_not_an_empty_report(tmp_path: Path) -> None:
    run = coverage(tmp_path / "nosuch.sqlite")
    assert run.returncode == 1 and run.stdout == "", run
    assert f"cannot open {tmp_path / 'nosuch.sqlite'}: no such file" in run.stderr
    assert not (tmp_path / "nosuch.sqlite").exists()


def test_a_database_that_cannot_be_read_is_a_failure_that_shows_no_password(tmp_path: Path) -> None:
    url = "postgresql://wmbus:Wren-Lantern-93@127.0.0.1:1/hes"  # nothing listens on port 1
    run = coverage(url)
    assert run.returncode == 1 and run.stdout == "", run
    assert "cannot read the --db database" in run.stderr and "Wren-Lantern-93" not in run.stderr, run


def test_a_file_that_is_not_a_receivers_database_is_refused_and_left_alone(tmp_path: Path) -> None:
    for name, content in (("empty.sqlite", b""), ("other?.sqlite", None)):
        db = tmp_path / name
        if content is None:
            with contextlib.closing(sqlite3.connect(db)) as other:
                other.execute("CREATE TABLE t (x)")
        else:
            db.write_bytes(content)
        before = db.read_bytes()
        run = coverage(db)
        assert run.returncode == 1 and "is not a receiver's database" in run.stderr, run
        assert db.read_bytes() == before  # nothing created in it
