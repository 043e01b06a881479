"""The cmex50 stream scanner twins (``ext/_cstream.pyx``, ``wire/_pystream.py``) and the daemon's chunk path.

Both twins get the same captures built from the vectors, fed whole, byte by byte, in random
chunks and wrapped in garbage, and random or mutated noise: same frames, same counters,
same errors. ``scan`` (framing, check and filter of a chunk in one call, what the daemon
runs) must give what the check stage gives for the same frames one by one.
"""

from __future__ import annotations

import importlib
import os
import random
import subprocess
import sys
from pathlib import Path
from collections.abc import Callable
from types import ModuleType

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from wmbus_stream import wire
from wmbus_stream.core.analyzer import Analyzer
from wmbus_stream.core.check import VERDICTS, Settings, check_all
from wmbus_stream.core.pipeline import Pipeline
from wmbus_stream.core.received import Received
from wmbus_stream.io.store import Store
from wmbus_stream.receivers import cmex50, framer
from wmbus_stream.wire.filters import matcher

RECEIVER = "62001772"


def no_extensions() -> bool:
    """Whether WMBUS_STREAM_NO_EXTENSIONS forces the pure twins for this run."""
    return os.environ.get("WMBUS_STREAM_NO_EXTENSIONS", "").strip().lower() in {"1", "true", "yes", "on"}


@pytest.fixture(params=[
    pytest.param("wmbus_stream.wire._pystream", id="pure"),
    pytest.param("wmbus_stream.wire._cstream", id="compiled",
                 marks=[pytest.mark.skip(reason="WMBUS_STREAM_NO_EXTENSIONS=1")] if no_extensions() else []),
])
def stream(request: pytest.FixtureRequest) -> ModuleType:
    """Each scanner twin in turn."""
    return importlib.import_module(request.param)


def _frames(vectors: list[dict]) -> list[bytes]:
    """Good frames of every vector that fits, broken ones and foreign ones in between."""
    out = []
    for i, v in enumerate(vectors):
        telegram = v["telegram_bytes"]
        if len(telegram) > 226:
            continue
        frame = cmex50.encode(telegram, receiver_address=RECEIVER if i % 3 else None, rssi_dbm=-40 - 2 * (i % 40))
        if i % 17 == 5:  # checksum wrong: untrusted boundaries
            frame = frame[:-2] + bytes(((frame[-2] + 1) & 0xFF,)) + frame[-1:]
        elif i % 17 == 9:  # stop byte wrong
            frame = frame[:-1] + b"\x17"
        elif i % 23 == 11:  # checksum right but not a receiver frame: consumed whole
            frame = cmex50.wrap(bytes.fromhex("080072" "64010061" "9615" "01" "07" "00" "00" "0000"))
        elif i % 29 == 13:  # cut by an unplug
            frame = frame[: len(frame) // 2]
        out.append(frame)
    long_one = next(v["telegram_bytes"] for v in vectors if len(v["telegram_bytes"]) == 202)
    head = wire.build_report(long_one, RECEIVER, -74, 0)[:25]
    out.append(cmex50.wrap(head + b"\x0d\xfd\x3b\xca" + long_one + b"\x0f"))  # long telegram in a container
    out.append(cmex50.wrap(wire.build_report(long_one, None, -60, 0)))  # already in the 0F long form
    return out


def _garbage(rng: random.Random) -> bytes:
    return bytes(b for b in rng.randbytes(rng.randrange(0, 30)) if b != 0x68)


def _chunkings(data: bytes) -> list[list[bytes]]:
    rng = random.Random(5)
    out = [[data], [data[i : i + 1] for i in range(len(data))]]
    for most in (7, 300, 70_000):
        chunks, pos = [], 0
        while pos < len(data):
            size = rng.randrange(1, most)
            chunks.append(data[pos : pos + size])
            pos += size
        out.append(chunks)
    return out


def _frames_of(scanner, chunks: list[bytes]) -> tuple[list[tuple], tuple[int, int, int]]:
    out = []
    for chunk in chunks:
        out += scanner.frames(chunk, False)
        assert len(scanner.pending) < cmex50.Cmex50Framer.MAX_FRAME
    out += scanner.frames(b"", True)
    assert scanner.pending == b""
    return out, (scanner.frames_out, scanner.bad_frames, scanner.skipped_bytes)


def _scan_of(scanner, chunks: list[bytes], m) -> tuple[list, list, list[int], int, tuple[int, int, int]]:
    records, broken, results, long_forms = [], [], [0] * len(VERDICTS), 0
    for i, chunk in enumerate(chunks + [b""]):
        r, b, counts, n = scanner.scan(chunk, i == len(chunks), m, VERDICTS)
        records += r
        broken += b
        results = [x + y for x, y in zip(results, counts, strict=True)]
        long_forms += n
    return records, broken, results, long_forms, (scanner.frames_out, scanner.bad_frames, scanner.skipped_bytes)


def _matcher(vectors: list[dict], stream: ModuleType | None = None):
    # Half the manufacturers present, so the filter accepts and rejects; the Matcher of the
    # scanner twin's own wire twin (the domain of scan), or the selected one.
    codes = sorted({manufacturer_code_of(v["telegram_bytes"]) for v in vectors})
    kind = wire.Matcher if stream is None else _wire_of(stream).Matcher
    return kind(frozenset(codes[::2]), frozenset(), frozenset(), 0)


def _wire_of(stream: ModuleType) -> ModuleType:
    """The wire twin a scanner twin goes with: _pywire for _pystream, _cwire for _cstream."""
    twin = stream.__name__.rpartition(".")[2]
    return importlib.import_module(f"wmbus_stream.wire.{'_pywire' if twin == '_pystream' else '_cwire'}")


def manufacturer_code_of(telegram: bytes) -> int:
    return (telegram[2] | telegram[3] << 8) & wire.MANUFACTURER_MASK


def test_twins_give_the_same_frames_counts_and_errors_however_the_bytes_arrive(stream, vectors) -> None:
    rng = random.Random(3)
    frames = _frames(vectors)
    plain = b"".join(frames)
    wrapped = b"".join(_garbage(rng) + f for f in frames) + _garbage(rng)
    pure = importlib.import_module("wmbus_stream.wire._pystream")
    for data in (plain, wrapped):
        reference = _frames_of(pure.Cmex50Scanner(RECEIVER), [data])
        good = [f for f in reference[0] if f[6] is None]
        assert len(good) > 200 and len(reference[0]) - len(good) > 20
        for chunks in _chunkings(data):
            assert _frames_of(stream.Cmex50Scanner(RECEIVER), chunks) == reference
    # Around good frames the garbage is counted byte for byte, in any chunking.
    good_frames = [cmex50.encode(v["telegram_bytes"]) for v in vectors if len(v["telegram_bytes"]) <= 226]
    junk = [_garbage(rng) for _ in good_frames]
    data = b"".join(j + f for j, f in zip(junk, good_frames, strict=True))
    for chunks in _chunkings(data):
        assert _frames_of(stream.Cmex50Scanner(), chunks)[1] == (len(good_frames), 0, sum(map(len, junk)))


def test_scan_gives_what_the_check_stage_gives_for_the_same_frames(stream, vectors) -> None:
    data = b"".join(_frames(vectors))
    m = _matcher(vectors, stream)
    expected = check_all(map(Received._make, stream.Cmex50Scanner(RECEIVER).frames(data, True)),
                         Settings(_matcher(vectors), RECEIVER, 0))
    assert expected.results[0] > 50 and sum(expected.results[1:]) > 50 and expected.long_form >= 2
    counts = _frames_of(stream.Cmex50Scanner(RECEIVER), [data])[1]
    for chunks in _chunkings(data):
        records, broken, results, long_forms, stats = _scan_of(stream.Cmex50Scanner(RECEIVER), chunks, m)
        assert records == expected.records and broken == expected.broken
        assert results == expected.results and long_forms == expected.long_form
        assert stats == counts


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_twins_agree_on_noise_and_mutated_frames(vectors, data: st.DataObject) -> None:
    if no_extensions():
        pytest.skip("WMBUS_STREAM_NO_EXTENSIONS=1")
    pure = importlib.import_module("wmbus_stream.wire._pystream")
    compiled = importlib.import_module("wmbus_stream.wire._cstream")
    frames = _frames(vectors)
    picks = data.draw(st.lists(st.integers(0, len(frames) - 1), max_size=6))
    stream = bytearray(b"".join(frames[i] for i in picks))
    for _ in range(data.draw(st.integers(0, 8))):  # flip, drop or insert bytes
        if not stream:
            break
        at = data.draw(st.integers(0, len(stream) - 1))
        stream[at : at + 1] = data.draw(st.sampled_from([b"", b"\x68", b"\x16", bytes((stream[at] ^ 0x01,))]))
    stream += bytes(data.draw(st.lists(st.sampled_from([0x68, 0x16, 0x08, 0x72, 0x0D, 0x00, 0xFF]), max_size=60)))
    cuts = sorted(data.draw(st.lists(st.integers(0, len(stream)), max_size=8)))
    chunks = [bytes(stream[a:b]) for a, b in zip([0, *cuts], [*cuts, len(stream)], strict=True)]
    assert _frames_of(compiled.Cmex50Scanner(), chunks) == _frames_of(pure.Cmex50Scanner(), chunks)
    assert (_scan_of(compiled.Cmex50Scanner(), chunks, _matcher(vectors, compiled))
            == _scan_of(pure.Cmex50Scanner(), chunks, _matcher(vectors, pure)))


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_twins_agree_on_frames_with_a_right_checksum_around_mutated_records(vectors, data: st.DataObject) -> None:
    # The checksum is recomputed after the mutation, so the record and container rules decide.
    if no_extensions():
        pytest.skip("WMBUS_STREAM_NO_EXTENSIONS=1")
    pure = importlib.import_module("wmbus_stream.wire._pystream")
    compiled = importlib.import_module("wmbus_stream.wire._cstream")
    v = vectors[data.draw(st.integers(0, len(vectors) - 1))]
    body = bytearray(cmex50.encode(v["telegram_bytes"][:226], receiver_address=RECEIVER, rssi_dbm=-70)[4:-2])
    for _ in range(data.draw(st.integers(1, 4))):
        at = data.draw(st.integers(0, len(body) - 1))
        body[at : at + 1] = data.draw(st.sampled_from(
            [b"", b"\x0f", b"\x1f", b"\x0d\xfd\x3b", b"\x0c\x78", b"\x02\x75", b"\x01\xfd\x71", bytes((body[at] ^ 0x40,))]))
    if not 3 <= len(body) <= 255:
        return
    chunks = [cmex50.wrap(bytes(body))]
    assert _frames_of(compiled.Cmex50Scanner(), chunks) == _frames_of(pure.Cmex50Scanner(), chunks)
    assert (_scan_of(compiled.Cmex50Scanner(), chunks, _matcher(vectors, compiled))
            == _scan_of(pure.Cmex50Scanner(), chunks, _matcher(vectors, pure)))


def test_the_selected_scanner_is_the_compiled_one_unless_forced_pure() -> None:
    expected = "wmbus_stream.wire._pystream" if no_extensions() else "wmbus_stream.wire._cstream"
    assert wire.Cmex50Scanner.__module__ == expected
    assert type(framer("cmex50")._scanner) is wire.Cmex50Scanner


def test_crc_loop_and_rssi_codes_agree_with_the_wire_core(stream, vectors) -> None:
    frames = [v["frame_a_bytes"] for v in vectors]
    total = 0
    for frame in frames:
        total ^= wire.crc16(frame)
    assert stream.crc_loop(frames) == total == stream.crc_loop([bytearray(f) for f in frames])
    assert [stream.rssi_dbm(c) for c in (None, 0, 1, 28, 62, 63, 64, 255)] == [None, None, -128, -74, -6, -6, -6, -6]


def test_x25_twins_agree_and_match_the_reference_check_value(stream) -> None:
    pure = importlib.import_module("wmbus_stream.wire._pystream")
    assert stream.x25(b"123456789") == 0x906E  # CRC-16/X-25 check value
    rng = random.Random(9)
    for _ in range(500):
        data = rng.randbytes(rng.randrange(0, 300))
        assert stream.x25(data) == stream.x25(bytearray(data)) == stream.x25(memoryview(data)) == pure.x25(data)


@pytest.mark.parametrize("protocol", ["cmex50", "hex"])
def test_pipeline_feed_of_chunks_equals_process_of_frames(tmp_path: Path, vectors, protocol: str) -> None:
    """The daemon's path (chunks into ``Pipeline.feed``) stores and counts what the frame path does."""
    if protocol == "cmex50":
        data = b"".join(_frames(vectors))
    else:
        data = b"".join(f"{v['frame_a'] if i % 2 else v['telegram']};-{60 + i % 30}\n".encode()
                        for i, v in enumerate(vectors)) + b"zz\n"
    s = Settings(matcher(("KAM", "ELV", "ABB", "DME")), RECEIVER, 0)
    results = []
    for way in ("feed", "process"):
        store = Store.open(str(tmp_path / f"{way}.sqlite"))
        analyzer = Analyzer(0.0)
        pipeline = Pipeline(s, store, analyzer)
        f = framer(protocol, receiver_address=RECEIVER)
        for pos in range(0, len(data), 4096):
            if way == "feed":
                pipeline.feed(f, data[pos : pos + 4096], 1000.0 + pos)
            else:
                pipeline.process(f.feed(data[pos : pos + 4096]), 1000.0 + pos)
        if way == "feed":
            pipeline.feed(f, b"", 9999.0, final=True)
        else:
            pipeline.process(f.flush(), 9999.0)
        results.append((dict(pipeline.counts), pipeline.long_form, store.snapshot().entries, analyzer.rows(),
                        analyzer.totals(), (f.stats.frames, f.stats.bad_frames, f.stats.skipped_bytes)))
        store.close()
    assert results[0] == results[1]
    counts = results[0][0]
    assert counts["ok"] > 10 and counts["read"] == sum(v for k, v in counts.items() if k != "read")


def test_the_check_stage_and_the_pipeline_import_no_receiver_adapter() -> None:
    """core/ is below receivers/: Received and the frame formats live in core, not in receivers.base."""
    code = ("import sys, wmbus_stream.core.pipeline, wmbus_stream.core.check, wmbus_stream.core.received; "
            "bad = sorted(m for m in sys.modules if m.startswith('wmbus_stream.receivers')); "
            "assert not bad, bad")
    subprocess.run([sys.executable, "-c", code], check=True)


# Edges of the declared domain (wire.domain): each argument of each public scanner function
# gets every one of these; both twins must accept the same ones with the same result and
# refuse the rest with the same error type and message.
EDGES: list[object] = [
    0, 1, 255, 256, -1, 2**70, True, False, 1.0, None, "62001772", "6200177", b"", b"\x68",
    bytearray(b"\x68\x03"), memoryview(b"\x68\x03\x03"), memoryview(b"abcd")[::2],
    memoryview(bytes(4)).cast("B", (2, 2)), memoryview(bytes(4)).cast("H"), [1, 2], (b"a",), [b"a", 5],
    ("Accepted",) * 8, ("Accepted",) * 7, ["Accepted"] * 8,
]


def _outcome(call: Callable[[], object]) -> tuple[object, ...]:
    """What a call gives: its result, or the type and message of what it raised."""
    try:
        return ("ok", call())
    except Exception as exc:  # the outcome under test, whatever it is
        return (type(exc), str(exc))


def _domain_calls(stream: ModuleType, matcher: object, edge: object) -> list[Callable[[], object]]:
    """One call per argument of each public scanner function, that argument set to ``edge``."""
    scanner = stream.Cmex50Scanner
    return [
        lambda: stream.x25(edge), lambda: stream.crc_loop(edge), lambda: stream.crc_loop([b"\x01", edge]),
        lambda: stream.rssi_dbm(edge), lambda: scanner(edge).receiver_address,
        lambda: scanner().frames(edge, True), lambda: scanner().frames(b"\x68\x03", edge),
        lambda: scanner().scan(edge, True, matcher, VERDICTS), lambda: scanner().scan(b"", edge, matcher, VERDICTS),
        lambda: scanner().scan(b"", True, edge, VERDICTS), lambda: scanner().scan(b"", True, matcher, edge),
    ]


def test_twins_accept_and_refuse_the_same_domain_with_the_same_errors(vectors) -> None:
    if no_extensions():
        pytest.skip("WMBUS_STREAM_NO_EXTENSIONS=1")
    pure = importlib.import_module("wmbus_stream.wire._pystream")
    compiled = importlib.import_module("wmbus_stream.wire._cstream")
    for edge in EDGES:
        c = [_outcome(f) for f in _domain_calls(compiled, _matcher(vectors, compiled), edge)]
        p = [_outcome(f) for f in _domain_calls(pure, _matcher(vectors, pure), edge)]
        assert c == p, edge


@pytest.mark.parametrize("call, error", [
    (lambda s: s.x25([1, 2]), "data must be bytes, bytearray or memoryview, not list"),
    (lambda s: s.x25(memoryview(b"abcd")[::2]), "data must be a 1-D C-contiguous memoryview"),
    (lambda s: s.crc_loop([b"\x01", 5]), "frames[1] must be bytes, bytearray or memoryview, not int"),
    (lambda s: s.crc_loop(5), "frames must be a sequence such as a list, not int"),
    (lambda s: s.rssi_dbm(-1), "code is -1, outside 0..255"),
    (lambda s: s.rssi_dbm(256), "code is 256, outside 0..255"),
    (lambda s: s.rssi_dbm(2**70), "outside 0..255"),
    (lambda s: s.rssi_dbm(True), "code must be an int, not bool"),
    (lambda s: s.rssi_dbm(1.0), "code must be an int, not float"),
    (lambda s: s.Cmex50Scanner("6200177"), "receiver_address '6200177' is not 8 digits"),
    (lambda s: s.Cmex50Scanner().frames(None, True), "data must be bytes, bytearray or memoryview, not NoneType"),
    (lambda s: s.Cmex50Scanner().frames(b"", 1), "final must be a bool, not int"),
    (lambda s: s.Cmex50Scanner().scan(b"", True, None, VERDICTS), "matcher must be a Matcher of the same twin"),
    (lambda s: s.Cmex50Scanner().scan(b"", True, _wire_of(s).Matcher((), (), (), 0), VERDICTS[:-1]), "verdicts has 7 names"),
])
def test_arguments_outside_the_domain_are_refused_by_name(stream, call, error: str) -> None:
    with pytest.raises((TypeError, ValueError)) as refused:
        call(stream)
    assert error in str(refused.value)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.binary(max_size=400), cut=st.integers(0, 400), form=st.sampled_from([bytes, bytearray, memoryview]))
def test_twins_agree_on_random_bytes_in_every_bytes_like_form(vectors, data: bytes, cut: int, form: type) -> None:
    if no_extensions():
        pytest.skip("WMBUS_STREAM_NO_EXTENSIONS=1")
    pure = importlib.import_module("wmbus_stream.wire._pystream")
    compiled = importlib.import_module("wmbus_stream.wire._cstream")
    head, tail = form(data[:cut]), form(data[cut:])
    for twin in (compiled, pure):  # each twin, given the form, gives what the pure twin gives for bytes
        assert twin.x25(head) == pure.x25(data[:cut])
        assert twin.crc_loop([head, tail]) == pure.crc_loop([data[:cut], data[cut:]])
        scanner, reference = twin.Cmex50Scanner(), pure.Cmex50Scanner()
        assert (scanner.frames(head, False) + scanner.frames(tail, True)
                == reference.frames(data[:cut], False) + reference.frames(data[cut:], True))
