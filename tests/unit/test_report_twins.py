"""The compiled report parser (``hes._creport``) against the pure one (``hes._pyreport``).

Same ReportLine or the same exception (type and message) for: every telegram of
``tests/vectors/telegrams.jsonl`` as report lines (with and without receiver records, the
long form past 191 bytes, CRLF, a lowercase meter ID), every malformed line of the HES
integration tests, a seeded run of mutated lines, and Hypothesis mutations. Whole bodies are
also fed in random pieces. The compiled twin's own C checks (``fast_line``) must accept
exactly what the pure twin accepts, so no line relies on its fallback to the pure code.
"""

from __future__ import annotations

import importlib
import json
import os
import random
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from report_lines import AGE, RECEIVER, RSSI, TELEGRAM, line, wired
from wmbus_stream import wire
from wmbus_stream.errors import ReportError
from wmbus_stream.hes import _pyreport as pure

NO_EXTENSIONS = os.environ.get("WMBUS_STREAM_NO_EXTENSIONS", "").strip().lower() in {"1", "true", "yes", "on"}
compiled: Any = None if NO_EXTENSIONS else importlib.import_module("wmbus_stream.hes._creport")
needs_compiled = pytest.mark.skipif(compiled is None, reason="WMBUS_STREAM_NO_EXTENSIONS=1: no compiled twin")

VECTORS = Path(__file__).resolve().parents[1] / "vectors" / "telegrams.jsonl"
SEED = 20261202

SPEC_WIRED = wired().hex().upper()

# The malformed lines of tests/integration/test_hes.py (test_malformed_line_is_400_...), and more edges.
BAD_LINES = [
    "00000161;61000164;2026-11-24 10:15:02;00",
    line() + ";extra",
    line(serial="0000161"),
    line(serial="0000016X"),
    line(meter="6100016"),
    line(meter="6100016G"),
    line(date="2026-11-24T10:15:02"),
    line(date="2026-13-24 10:15:02"),
    line(count="01"),
    line(hex_text=SPEC_WIRED.lower()),
    line(hex_text=SPEC_WIRED[:-1]),
    line(hex_text=""),
    line(hex_text="0800720102"),
    line(c=0x09),
    line(ci=0x70),
    line(n=len(TELEGRAM) + 1),
    line(tail=b"\x00\x00"),
    line(telegram=b"\x5f" + TELEGRAM[1:]),
    line(meter="61000165"),
    line(header=bytes.fromhex("65010061") + TELEGRAM[2:4] + TELEGRAM[8:10]),
    line(header=TELEGRAM[4:8] + TELEGRAM[2:4] + b"\x02\x1b"),
    line(records=RSSI + RECEIVER),
    line(records=RSSI + RSSI),
    line(records=b"\x04\x13\x00\x00\x00\x00"),
    line(records=b"\x01\xfd\x71\x50"),
    line(records=b"\x0c\x78\x01"),
    "",
    line()[:-2] + "\u00c9F",
    line().replace(";", ";\t", 1),
    # dates strptime refuses or takes
    *(line(date=d) for d in ("0000-01-01 00:00:00", "0001-01-01 00:00:00", "2023-02-29 00:00:00",
                             "2024-02-29 23:59:59", "1900-02-29 00:00:00", "2000-02-29 00:00:00",
                             "2024-04-31 00:00:00", "2024-01-01 24:00:00", "2024-01-01 00:60:00",
                             "2024-01-01 00:00:60", "2024-00-10 00:00:00", "2024-01-00 00:00:00")),
    line(tail=b"\x0f"), line(tail=b"\x1f"), line(tail=b"\x0e"),
    line(records=b"", n=0), line(records=RECEIVER + AGE + RSSI), line(records=AGE), line(records=b"\x02\x75\x05"),
    line(records=b"\x01\xfd\x71"), line(records=b"\x01\xfd\x71\x3f"), line(records=b"\x01\xfd\x71\x40"),
    line(meter="61000164".lower()), line()[:41] + "0800", line() + "\r", "x" * 1025, line() + "0" * 1000,
]


def vector_lines() -> list[str]:
    """Every vector telegram as report lines: bare, with receiver and RSSI, with all records, lowercase ID."""
    lines = []
    with VECTORS.open(encoding="utf-8") as handle:
        telegrams = [bytes.fromhex(json.loads(text)["telegram"]) for text in handle if text.strip()]
    for i, telegram in enumerate(telegrams):
        try:
            wire.check_telegram(telegram)
        except ValueError:
            continue
        ident = telegram[7:3:-1].hex().upper()
        for receiver, rssi, age in ((None, None, 0), ("62001772", -74, 0), ("00000001", -20, 3)):
            report = wire.build_report(telegram, receiver, rssi, age)
            lines.append(f"{i % 100:08d};{ident};2026-11-24 10:15:{i % 60:02d};00;{report.hex().upper()}")
        lines.append(f"00000161;{ident.lower()};2026-02-28 23:59:59;00;{wired(telegram).hex().upper()}")
    return lines


def outcome(twin: Any, raw: bytes) -> tuple[Any, ...]:
    """What a twin's ReportParser makes of one line: its lines and counters, or the exception."""
    parser = twin.ReportParser()
    try:
        parser.feed(raw + b"\n")
        lines = parser.finish()
    except (ValueError, ReportError) as exc:
        return ("error", type(exc).__name__, str(exc), parser.count)
    return ("ok", lines, parser.count, parser.long_form, parser.ended)


def text_outcome(function: Any, argument: Any) -> tuple[Any, ...]:
    try:
        return ("ok", function(argument))
    except (ValueError, ReportError) as exc:
        return ("error", type(exc).__name__, str(exc))


def assert_agree(raw: bytes) -> None:
    """Both twins give the same result or error for a line, through every entry point."""
    expected = outcome(pure, raw)
    if compiled is None:
        return
    assert outcome(compiled, raw) == expected, raw
    stripped = raw[:-1] if raw.endswith(b"\r") else raw
    assert compiled.fast_line(stripped) == (expected[0] == "ok"), raw
    assert text_outcome(lambda r: compiled.check_line(7, r), raw) == text_outcome(lambda r: pure.check_line(7, r), raw)
    text = raw.decode("latin-1")
    assert text_outcome(compiled.parse_line, text) == text_outcome(pure.parse_line, text), raw
    if expected[0] == "ok":
        (parsed,) = expected[1]
        assert type(compiled.parse_line(stripped.decode())) is pure.ReportLine
        assert compiled.parse_wired(parsed.wired) == pure.parse_wired(parsed.wired)


def test_the_vectors_are_accepted_alike_and_cover_both_forms() -> None:
    lines = vector_lines()
    results = [outcome(pure, text.encode()) for text in lines]
    assert all(result[0] == "ok" for result in results)
    assert any(result[1][0].long_form for result in results) and not all(result[1][0].long_form for result in results)
    for text in lines:
        assert_agree(text.encode())
        assert_agree(text.encode() + b"\r")


def test_every_malformed_line_gets_the_same_error_from_both_twins() -> None:
    refused = 0
    for text in BAD_LINES:
        raw = text.encode("utf-8")
        assert_agree(raw)
        refused += outcome(pure, raw)[0] == "error"
    assert refused >= 40


def mutations(rng: random.Random, raw: bytes) -> bytes:
    data = bytearray(raw)
    for _ in range(rng.randint(1, 3)):
        kind = rng.randrange(5)
        at = rng.randrange(len(data) + 1)
        if kind == 0 and at < len(data):
            data[at] = rng.randrange(256)
        elif kind == 1 and at < len(data):
            data[at] = rng.choice(b"0123456789ABCDEFabcdef;: -\r")
        elif kind == 2:
            data.insert(at, rng.choice(b"0123456789ABCDEF;"))
        elif kind == 3 and at < len(data):
            del data[at]
        else:
            del data[at:]
    return bytes(data.replace(b"\n", b" "))


@needs_compiled
def test_seeded_mutations_of_valid_lines_agree() -> None:
    rng = random.Random(SEED)
    lines = [text.encode() for text in vector_lines()[::3]] + [line().encode()]
    accepted = 0
    for _ in range(6000):
        raw = mutations(rng, rng.choice(lines))
        assert_agree(raw)
        accepted += outcome(pure, raw)[0] == "ok"
    assert 0 < accepted < 6000  # some mutations stay valid (a data byte of the payload), most do not


@needs_compiled
@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.data())
def test_hypothesis_mutations_agree(data: st.DataObject) -> None:
    base = data.draw(st.sampled_from([line(), line(records=b""), line(records=RECEIVER + AGE + RSSI, tail=b"\x1f")]))
    raw = bytearray(base.encode())
    for _ in range(data.draw(st.integers(0, 4))):
        at = data.draw(st.integers(0, len(raw)))
        if data.draw(st.booleans()) and at < len(raw):
            raw[at] = data.draw(st.integers(1, 255).filter(lambda b: b != 10))
        else:
            raw[at:at] = data.draw(st.binary(max_size=3).map(lambda b: b.replace(b"\n", b"")))
    assert_agree(bytes(raw))


@needs_compiled
def test_bodies_fed_in_random_pieces_agree() -> None:
    rng = random.Random(SEED + 1)
    good = [text.encode() for text in vector_lines()[:40]]
    for round_ in range(60):
        lines = [rng.choice(good) for _ in range(rng.randint(0, 30))]
        if round_ % 3 == 1:
            lines.insert(rng.randrange(len(lines) + 1), rng.choice([b"", b"x" * 1100, BAD_LINES[5].encode()]))
        body = b"".join(raw + rng.choice([b"\n", b"\r\n"]) for raw in lines)
        if round_ % 4 == 2:
            body = body.rstrip(b"\n")
        cuts = sorted(rng.randrange(len(body) + 1) for _ in range(rng.randint(0, 8)))
        pieces = [body[a:b] for a, b in zip([0, *cuts], [*cuts, len(body)], strict=True)]
        results = []
        for twin in (pure, compiled):
            parser = twin.ReportParser()
            taken: list[Any] = []
            try:
                for piece in pieces:
                    parser.feed(piece)
                    taken += parser.take()
                taken += parser.finish()
                results.append(("ok", taken, parser.count, parser.long_form))
            except ReportError as exc:
                results.append(("error", str(exc), parser.count, len(taken) + len(parser.lines)))
        assert results[0] == results[1], round_


@needs_compiled
def test_the_selected_twin_is_the_compiled_one() -> None:
    from wmbus_stream.hes import report

    assert report.ReportParser is compiled.ReportParser and report.ReportLine is pure.ReportLine


@needs_compiled
def test_store_rows_agree() -> None:
    parsed = [outcome(pure, text.encode())[1][0] for text in vector_lines()]
    assert compiled.store_rows(parsed) == pure.store_rows(parsed)
    assert compiled.store_rows([]) == pure.store_rows([]) == ([], b"")
    rows, keys = pure.store_rows(parsed[:2])
    assert rows[0] == tuple(getattr(parsed[0], name) for name in pure.STORE_COLUMNS)
    assert keys == f"{parsed[0].digest};{parsed[0].gateway};{parsed[0].date};{parsed[1].digest};" \
                   f"{parsed[1].gateway};{parsed[1].date}".encode()
