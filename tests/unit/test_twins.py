"""The compiled twin against the pure one: same result or same exception, on any input.

Two parts:

* a seeded differential run over more than 10,000 inputs: the vector frames (formats A, B,
  bare telegrams, wired CMeX50 frames built from them) mutated by bit flips, truncation,
  extension and random L bytes, plus random bytes, through every public function;
* Hypothesis properties: no input makes any function raise anything but a ``FrameError``
  subclass, results are well-typed, and both twins agree on what Hypothesis generates.

Frame errors must agree in type and message; other exceptions (an ``IndexError`` for a
range outside the data, say) in type.
"""

from __future__ import annotations

import importlib
import os
import random
from collections.abc import Callable
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from wmbus_stream.errors import ChecksumError, FrameError, HeaderError, LengthError
from wmbus_stream.wire import _pywire as pure
from wmbus_stream.wire.frame import build_a, build_b
from wmbus_stream.wire.header import manufacturer_code

NO_EXTENSIONS = os.environ.get("WMBUS_STREAM_NO_EXTENSIONS", "").strip().lower() in {"1", "true", "yes", "on"}
compiled = None if NO_EXTENSIONS else importlib.import_module("wmbus_stream.wire._cwire")
TWINS = [pure] if compiled is None else [pure, compiled]
needs_compiled = pytest.mark.skipif(compiled is None, reason="WMBUS_STREAM_NO_EXTENSIONS=1")
twins = pytest.mark.parametrize("twin", TWINS, ids=lambda m: m.__name__.rsplit(".", 1)[-1])

SEED = 20261124


# -- comparing outcomes ----------------------------------------------------------------------


def shape(value: Any) -> Any:
    """A value with the type of every part made explicit, so b"x" and bytearray(b"x") differ."""
    if isinstance(value, (tuple, list)):
        return (type(value).__name__, tuple(shape(v) for v in value))
    return (type(value).__name__, value)


def outcome(function: Callable[..., Any], *args: Any) -> tuple:
    """("ok", shaped result) or ("raise", exception type, message for frame errors)."""
    try:
        result = function(*args)
    except Exception as exc:  # noqa: BLE001  (the type is what is compared)
        return ("raise", type(exc), str(exc) if isinstance(exc, FrameError) else None)
    return ("ok", shape(result))


def same(name: str, make_args: Callable[[Any], tuple], label: object) -> None:
    """Call ``name`` on both twins (arguments built per twin) and require the same outcome."""
    left = outcome(getattr(pure, name), *make_args(pure))
    right = outcome(getattr(compiled, name), *make_args(compiled))
    assert left == right, f"{name} differs on {label!r}"


# -- inputs ----------------------------------------------------------------------------------


def long_frame(body: bytes) -> bytes:
    return bytes((0x68, len(body) & 0xFF, len(body) & 0xFF, 0x68)) + body + bytes((sum(body) & 0xFF, 0x16))


def cmex50_frames(rng: random.Random, telegrams: list[bytes]) -> list[bytes]:
    """Valid wired frames around the vector telegrams, with optional receiver records."""
    frames = []
    for telegram in telegrams:
        address = None if rng.random() < 0.3 else f"{rng.randrange(10**8):08d}"
        body = pure.build_report(telegram, address, rng.choice([None, -74, -120, 0]), rng.randrange(256))
        if len(body) > 255 - 6:  # the long frame's L must stay <= 255 (age record included)
            continue
        if rng.random() < 0.3:  # an age record before the RSSI record
            cut = body.index(b"\x01\xfd\x71")
            body = body[:cut] + b"\x02\x75" + rng.randbytes(2) + body[cut:]
        if rng.random() < 0.2 and len(telegram) <= pure.CONTAINER_MAX:  # a fill byte after a container
            body += rng.choice([b"\x0f", b"\x1f"])
        frames.append(long_frame(body))
    return frames


def mutate(rng: random.Random, data: bytes, wired: bool) -> bytes:
    """One random corruption of a frame; wired frames sometimes get L and CS fixed after it."""
    out = bytearray(data)
    kind = rng.randrange(6)
    if kind == 0 and out:
        for _ in range(rng.randint(1, 3)):
            out[rng.randrange(len(out))] ^= 1 << rng.randrange(8)
    elif kind == 1:
        del out[rng.randrange(len(out) + 1) :]
    elif kind == 2:
        out += rng.randbytes(rng.randint(1, 20))
    elif kind == 3 and out:
        out[0] = rng.randrange(256)
    elif kind == 4 and out:
        out[0] = (len(out) - 1) & 0xFF  # a consistent L reaches the CRC and header checks
    elif kind == 5 and out:
        out[rng.randrange(len(out))] = rng.randrange(256)
    if wired and len(out) > 6 and rng.random() < 0.7:
        body = bytes(out[4:-2])
        if rng.random() < 0.5 and len(body) > 15:
            position = rng.randrange(15, len(body))  # corrupt a record, keep the frame valid
            body = body[:position] + bytes((rng.randrange(256),)) + body[position + 1 :]
        return long_frame(body)
    return bytes(out)


def random_matcher(module: Any, rng: random.Random, telegrams: list[bytes]) -> Any:
    """A Matcher of ``module`` with random (sometimes empty, sometimes odd) integer sets."""
    headers = [pure.parse_header(t) for t in rng.sample(telegrams, 5)]
    odd = [70000, -1, 2**40, True, 7.0, "ELV", None, 0x8614, 0xFFFF]  # codes with bit 15 never match
    manufacturers = set() if rng.random() < 0.3 else {h[1] for h in headers[:3]} | set(rng.sample(odd, 2))
    device_types = set() if rng.random() < 0.4 else {h[4] for h in headers[:3]} | set(rng.sample(odd, 2))
    ids = set() if rng.random() < 0.4 else {int(h[2], 16) for h in headers[:3]} | set(rng.sample(odd, 2))
    return module.Matcher(manufacturers, device_types, ids, rng.choice([0, 1, 2, 4, 8, 6, 12, 14, 15]))


def differential_inputs(vectors: list[dict]) -> tuple[list[bytes], list[bytes]]:
    """(>= 12,000 mutated and random byte strings, the wired frames they partly come from)."""
    rng = random.Random(SEED)
    telegrams = [v["telegram_bytes"] for v in vectors]
    wired = cmex50_frames(rng, telegrams)
    bases = [(v[k], False) for v in vectors for k in ("frame_a_bytes", "frame_b_bytes", "telegram_bytes")]
    bases += [(frame, True) for frame in wired]
    inputs = [base for base, _ in bases]
    while len(inputs) < 12_000:
        if rng.random() < 0.1:
            inputs.append(rng.randbytes(rng.randrange(300)))
        else:
            base, is_wired = rng.choice(bases)
            inputs.append(mutate(rng, base, is_wired))
    return inputs, wired


@pytest.fixture(scope="module")
def corpus(vectors: list[dict]) -> tuple[list[bytes], list[bytes], list[bytes]]:
    inputs, wired = differential_inputs(vectors)
    return inputs, wired, [v["telegram_bytes"] for v in vectors]


# -- the differential run --------------------------------------------------------------------


@needs_compiled
def test_single_frame_functions_agree(corpus):
    inputs, _, _ = corpus
    assert len(inputs) >= 10_000
    for data in inputs:
        for name in ("crc16", "strip_a", "strip_b", "check_telegram", "parse_header", "parse_cmex50"):
            same(name, lambda m, d=data: (d,), data)


def test_mutations_reach_the_deep_cmex50_checks(corpus):
    inputs, wired, _ = corpus
    results = [outcome(pure.parse_cmex50, data) for data in inputs]
    raised = {result[1] for result in results if result[0] == "raise"}
    # The corpus must reach every kind of wired-frame error and valid frames, not only the
    # first length test.
    assert {ChecksumError, HeaderError, LengthError} <= raised
    assert sum(result[0] == "ok" for result in results) >= len(wired)
    assert any(len(pure.parse_cmex50(frame)[4]) > pure.CONTAINER_MAX for frame in wired)  # the 0F long form
    messages = {result[2].split(" ")[0] for result in results if result[0] == "raise"}
    assert {"unexpected", "container", "long"} <= messages


@needs_compiled
def test_crc_ranges_agree():
    rng = random.Random(SEED + 1)
    for _ in range(2_000):
        data = rng.randbytes(rng.randrange(40))
        start, end = rng.randint(-50, 50), rng.randint(-50, 50)
        same("crc16", lambda m: (data, start, end), (data, start, end))
    for data in (None, 5, "text", [1, 2, 3], bytearray(b"12345"), memoryview(b"12345")):
        same("crc16", lambda m, d=data: (d,), data)
        same("crc16", lambda m, d=data: (d, 0, 0), data)


@needs_compiled
def test_reports_and_rssi_codes_agree(corpus):
    inputs, _, _ = corpus
    rng = random.Random(SEED + 2)
    addresses = [None, "62001772", "", "1234", "12 34 56 78", "zz", 1234, "0102030405060708"]
    for data in inputs[::3]:
        args = (data, rng.choice(addresses), rng.choice([None, -74, -5, -128, -300, 40, True, -74.0]), rng.choice([0, 255, 256, -1, None]))
        same("build_report", lambda m: args, args)
    for value in [None, True, False, -6.0, -74.5, 2**70, -(2**70)] + [rng.randint(-400, 100) for _ in range(1000)]:
        same("rssi_code", lambda m, v=value: (v,), value)


@needs_compiled
def test_verdicts_agree(corpus):
    inputs, _, telegrams = corpus
    rng = random.Random(SEED + 3)
    for round_ in range(200):
        state = rng.getstate()
        matchers = {}
        for module in (pure, compiled):
            rng.setstate(state)
            matchers[module] = random_matcher(module, rng, telegrams)
        for data in rng.sample(inputs, 30) + rng.sample(telegrams, 10):
            mode = rng.choice([0, 1, 2, 4, 8, 12, None])
            left = outcome(matchers[pure].verdict, data, mode)
            right = outcome(matchers[compiled].verdict, data, mode)
            assert left == right, (round_, data, mode)


# M-fields with bit 15 set (Apator 14 86 is APT, 0x8614) and their 15-bit neighbours.
M_FIELDS = (0x0614, 0x8614, 0x8601, 0x0601, 0x7FFF, 0xFFFF, 0x8000, 0x0000, 0x15C5)


def with_m_field(telegram: bytes, m_field: int) -> bytes:
    return telegram[:2] + m_field.to_bytes(2, "little") + telegram[4:]


@twins
def test_manufacturer_is_the_m_fields_low_15_bits_in_header_and_filter(twin, vectors):
    apator = next(v for v in vectors if v["telegram_bytes"][2:4] == b"\x14\x86")
    assert apator["expect"]["manufacturer"] == "APT"
    telegram = apator["telegram_bytes"]
    assert twin.parse_header(telegram)[1] == 0x0614 == manufacturer_code("APT")
    for matcher, expected in ((twin.Matcher({0x0614}, set(), set(), 0), twin.OK),
                              (twin.Matcher({manufacturer_code("ELV")}, set(), set(), 0), twin.FILTER_MANUFACTURER)):
        assert matcher.verdict(telegram, 0) == expected
        assert twin.check_batch([build_a(telegram)], twin.FORMAT_A, matcher)[0] == bytes((expected,))
        assert twin.check_batch([build_b(telegram)], twin.FORMAT_B, matcher)[0] == bytes((expected,))
    for m_field in M_FIELDS:  # bit 15 set or clear: the same manufacturer
        variant = with_m_field(telegram, m_field)
        assert twin.parse_header(variant)[1] == m_field & 0x7FFF
        assert twin.Matcher({m_field & 0x7FFF}, set(), set(), 0).verdict(variant, 0) == twin.OK


@needs_compiled
def test_bit_15_verdicts_and_headers_agree(vectors):
    telegrams = [v["telegram_bytes"] for v in vectors[:20]]
    sets = [set(), {0x0614}, {0x8614}, {0x7FFF}, {0xFFFF}, {0x0614, 0x8614}, {0x8000, 0}]
    for telegram in telegrams:
        for m_field in M_FIELDS:
            variant = with_m_field(telegram, m_field)
            same("parse_header", lambda m: (variant,), variant)
            for codes in sets:
                left = outcome(pure.Matcher(codes, set(), set(), 0).verdict, variant, 0)
                right = outcome(compiled.Matcher(codes, set(), set(), 0).verdict, variant, 0)
                assert left == right, (variant.hex(), codes)
                same("check_batch", lambda m: ([variant], 0, m.Matcher(codes, set(), set(), 0)), (variant, codes))


@needs_compiled
def test_batches_agree(corpus):
    inputs, _, telegrams = corpus
    rng = random.Random(SEED + 4)
    for start in range(0, len(inputs), 200):
        chunk = inputs[start : start + 200] + rng.sample(telegrams, 20)
        chunk += [build_a(t) for t in rng.sample(telegrams, 10)] + [build_b(t) for t in rng.sample(telegrams, 10)]
        state = rng.getstate()
        matchers = {}
        for module in (pure, compiled):
            rng.setstate(state)
            matchers[module] = random_matcher(module, rng, telegrams)
        mode = rng.choice([0, 1, 2, 4, 8, None])
        for frame_format in (0, 1, 2):
            left = outcome(pure.check_batch, chunk, frame_format, matchers[pure], mode)
            right = outcome(compiled.check_batch, chunk, frame_format, matchers[compiled], mode)
            assert left == right, (start, frame_format)
        # The compiled batch also takes the pure Matcher (any object with verdict()).
        assert compiled.check_batch(chunk, 1, matchers[pure], mode) == pure.check_batch(chunk, 1, matchers[pure], mode)
    matcher = compiled.Matcher(set(), set(), set(), 0)
    for frame_format in (-3, -2, -1, 3, 1.0, None):
        same("check_batch", lambda m: ([telegrams[0]], frame_format, m.Matcher(set(), set(), set(), 0)), frame_format)
    same("check_batch", lambda m: ((t for t in telegrams), 0, m.Matcher(set(), set(), set(), 0)), "generator")
    same("check_batch", lambda m: (tuple(telegrams[:5]), 0, m.Matcher(set(), set(), set(), 0)), "tuple")
    same("check_batch", lambda m: ([bytearray(telegrams[0]), None], 0, m.Matcher(set(), set(), set(), 0)), "odd items")
    assert matcher.verdict(telegrams[0], 0) == 0


@needs_compiled
def test_bytes_like_inputs_agree(vectors):
    v = vectors[0]
    for convert in (bytearray, memoryview):
        for name, data in (("strip_a", v["frame_a_bytes"]), ("strip_b", v["frame_b_bytes"]), ("check_telegram", v["telegram_bytes"]), ("parse_header", v["telegram_bytes"])):
            same(name, lambda m, d=data: (convert(d),), (name, convert))
    report = pure.build_report(v["telegram_bytes"], "62001772", -74, 0)
    same("parse_cmex50", lambda m: (bytearray(long_frame(report)),), "bytearray frame")


# -- Hypothesis properties -------------------------------------------------------------------

SETTINGS = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def checked_telegram(data: bytes) -> None:
    assert isinstance(data, bytes) and len(data) >= 11 and data[0] == len(data) - 1


def call(function: Callable[..., Any], *args: Any) -> Any:
    """The result, or None when the function raised a FrameError (anything else fails)."""
    try:
        return function(*args)
    except FrameError:
        return None


@st.composite
def frames(draw: st.DrawFn) -> bytes:
    """Raw bytes, or a valid A/B frame or telegram, sometimes with one byte changed."""
    kind = draw(st.sampled_from(["raw", "a", "b", "telegram"]))
    if kind == "raw":
        return draw(st.binary(max_size=300))
    payload = draw(st.binary(min_size=10, max_size=240))
    telegram = bytes((len(payload),)) + payload
    data = {"a": build_a, "b": build_b, "telegram": bytes}[kind](telegram)
    if draw(st.booleans()):
        position = draw(st.integers(0, len(data) - 1))
        data = data[:position] + bytes((draw(st.integers(0, 255)),)) + data[position + 1 :]
    return data


@st.composite
def wired_frames(draw: st.DrawFn) -> bytes:
    """Wired long frames with random records around a random telegram, sometimes damaged."""
    payload = draw(st.binary(min_size=10, max_size=200))
    telegram = bytes((len(payload),)) + payload
    records = draw(
        st.lists(
            st.sampled_from([b"\x0c\x78\x72\x17\x00\x62", b"\x02\x75\x10\x00", b"\x01\xfd\x71\x1c", b"\x0b\x13"]),
            max_size=3,
        )
    )
    header = bytes((0x08, 0x00, 0x72)) + telegram[4:8] + telegram[2:4] + telegram[8:10] + bytes(4)
    if draw(st.booleans()):  # a 0D FD 3B container (any length byte a device may send), maybe a fill byte
        body = header + b"".join(records) + b"\x0d\xfd\x3b" + bytes((len(telegram),)) + telegram
        body += draw(st.sampled_from([b"", b"\x0f", b"\x00"]))
    else:  # the 0F long form, the telegram to the end
        body = header + b"".join(records) + b"\x0f" + telegram + draw(st.sampled_from([b"", b"\x00"]))
    frame = long_frame(body[:255])
    if draw(st.booleans()):
        position = draw(st.integers(0, len(frame) - 1))
        frame = frame[:position] + bytes((draw(st.integers(0, 255)),)) + frame[position + 1 :]
    return frame


@twins
@SETTINGS
@given(data=frames())
def test_link_functions_raise_only_frame_errors(twin, data):
    crc = twin.crc16(data)
    assert isinstance(crc, int) and 0 <= crc <= 0xFFFF
    for function in (twin.strip_a, twin.strip_b):
        telegram = call(function, data)
        if telegram is not None:
            checked_telegram(telegram)
    assert call(twin.check_telegram, data) in (None, data)
    header = call(twin.parse_header, data)
    if header is not None:
        c, manufacturer, ident, version, device_type, ci = header
        assert all(isinstance(x, int) and 0 <= x <= 0xFF for x in (c, version, device_type, ci))
        assert 0 <= manufacturer <= 0xFFFF
        assert isinstance(ident, str) and len(ident) == 8
    if compiled is not None:
        for name in ("crc16", "strip_a", "strip_b", "check_telegram", "parse_header", "parse_cmex50"):
            same(name, lambda m: (data,), data)


@twins
@SETTINGS
@given(frame=st.one_of(wired_frames(), st.binary(max_size=300)))
def test_cmex50_raises_only_frame_errors(twin, frame):
    parsed = call(twin.parse_cmex50, frame)
    if parsed is not None:
        body, address, age, rssi, telegram = parsed
        assert isinstance(body, bytes) and body == frame[4:-2]
        assert address is None or (isinstance(address, str) and len(address) == 8)
        assert age is None or 0 <= age <= 0xFFFF
        assert rssi is None or 0 <= rssi <= 0xFF
        checked_telegram(telegram)
        assert body.endswith(telegram) or body[:-1].endswith(telegram)
    if compiled is not None:
        same("parse_cmex50", lambda m: (frame,), frame)


@twins
@SETTINGS
@given(
    telegram=st.binary(max_size=300),
    address=st.one_of(st.none(), st.from_regex(r"\A[0-9]{8}\Z")),
    rssi=st.one_of(st.none(), st.integers(-1000, 1000)),
    wired=st.integers(0, 255),
)
def test_report_raises_only_frame_errors(twin, telegram, address, rssi, wired):
    code = twin.rssi_code(rssi)
    assert isinstance(code, int) and 0 <= code <= 63
    report = call(twin.build_report, telegram, address, rssi, wired)
    if report is not None:
        assert isinstance(report, bytes) and report.endswith(telegram)
        assert report[15 + (6 if address else 0) + 3] == code
    if compiled is not None:
        same("build_report", lambda m: (telegram, address, rssi, wired), telegram)


@twins
@SETTINGS
@given(
    batch=st.lists(frames(), max_size=20),
    frame_format=st.sampled_from([0, 1, 2]),
    manufacturers=st.frozensets(st.integers(0, 0xFFFF), max_size=3),
    device_types=st.frozensets(st.integers(0, 0xFF), max_size=3),
    ids=st.frozensets(st.integers(0, 0xFFFFFFFF), max_size=3),
    modes=st.integers(0, 15),
    mode=st.integers(0, 15),
)
def test_batch_raises_nothing(twin, batch, frame_format, manufacturers, device_types, ids, modes, mode):
    matcher = twin.Matcher(manufacturers, device_types, ids, modes)
    codes, telegrams = twin.check_batch(batch, frame_format, matcher, mode)
    assert isinstance(codes, bytes) and len(codes) == len(batch) == len(telegrams)
    for code, telegram in zip(codes, telegrams):
        assert 0 <= code <= 7 and code != 3
        assert (telegram is None) == (code != 0)
        if telegram is not None:
            checked_telegram(telegram)
            assert matcher.verdict(telegram, mode) == 0
    if compiled is not None:
        same(
            "check_batch",
            lambda m: (batch, frame_format, m.Matcher(manufacturers, device_types, ids, modes), mode),
            batch,
        )
