"""The compiled twin against the pure one: same result or same exception, on any input.

Three parts:

* the declared domain (``wire.domain``): every argument at its edges (0, max, max+1,
  negative, 2**70, bool, float, wrong types) and every bytes-like form (bytes, bytearray,
  memoryview, and memoryviews the domain refuses), through both twins: the same values are
  accepted with the same result as plain ``bytes`` and plain ints, the rest refused with the
  same error type and message;
* a seeded differential run over more than 10,000 inputs: the vector frames (formats A, B,
  bare telegrams, wired CMeX50 frames built from them) mutated by bit flips, truncation,
  extension and random L bytes, plus random bytes, through every public function;
* Hypothesis properties: no input in the domain makes any function raise anything but a
  ``FrameError`` subclass, results are well-typed, and both twins agree on what Hypothesis
  generates, passed as bytes, bytearray or memoryview.

Every exception must agree in type and message.
"""

from __future__ import annotations

import enum
import importlib
import os
import pickle
import random
from array import array
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
    if isinstance(value, (pure.Matcher, *(() if compiled is None else (compiled.Matcher,)))):
        return ("Matcher", repr(value))  # each twin makes its own; equal when their sets are
    return (type(value).__name__, value)


def outcome(function: Callable[..., Any], *args: Any) -> tuple:
    """("ok", shaped result) or ("raise", exception type, message)."""
    try:
        result = function(*args)
    except Exception as exc:  # noqa: BLE001  (the type and message are what is compared)
        return ("raise", type(exc), str(exc))
    return ("ok", shape(result))


def same(name: str, make_args: Callable[[Any], tuple], label: object) -> None:
    """Call ``name`` on both twins (arguments built per twin) and require the same outcome."""
    left = outcome(getattr(pure, name), *make_args(pure))
    right = outcome(getattr(compiled, name), *make_args(compiled))
    assert left == right, f"{name} differs on {label!r}"


def agreed(call: Callable[[Any], Any], label: object) -> tuple:
    """The outcome of ``call(twin)`` in every twin, required to be the same; returns it."""
    outcomes = [outcome(call, twin) for twin in TWINS]
    assert all(o == outcomes[0] for o in outcomes), f"twins differ on {label!r}: {outcomes}"
    return outcomes[0]


# -- the declared domain --------------------------------------------------------------------


class Bytes(bytes):
    """A bytes subclass: inside the domain, treated as the bytes it holds."""


class Small(enum.IntEnum):
    """An int subclass: inside the domain, treated as the int it is."""

    ZERO = 0
    ONE = 1


def accepted_forms(data: bytes) -> list[Any]:
    """Every bytes-like form the domain accepts, each holding ``data``."""
    return [data, bytearray(data), memoryview(data), memoryview(bytearray(data)), Bytes(data),
            memoryview(b"\x00" + data)[1:], memoryview(array("b", data))]


def refused_forms(data: bytes) -> list[Any]:
    """Values that are not bytes-like in the domain's sense, though some hold the same bytes."""
    released = memoryview(data)
    released.release()
    return [data.hex(), len(data), list(data), None, array("B", data), memoryview(data + data)[::2],
            memoryview(bytes(4)).cast("B", (2, 2)), memoryview(array("H", [1, 2, 3])), released]


def edges(low: int, high: int) -> list[tuple[Any, type | None]]:
    """(value, error type or None when accepted) at and beyond the edges of ``low..high``."""
    values: list[tuple[Any, type | None]] = [(low, None), (high, None), (Small.ONE if low <= 1 <= high else low, None)]
    values += [(low - 1, ValueError), (high + 1, ValueError), (-1, ValueError if low >= 0 else None),
               (2**70, ValueError), (-(2**70), ValueError), (2**63, ValueError)]
    values += [(True, TypeError), (False, TypeError), (1.0, TypeError), ("1", TypeError), (None, TypeError),
               (b"\x01", TypeError)]
    return values


def expect(call: Callable[[Any], Any], error: type | None, label: object) -> tuple:
    """Both twins agree on ``call``, and it is accepted (``error`` None) or refused with ``error``."""
    result = agreed(call, label)
    if error is None:
        assert result[0] == "ok", (label, result)
    else:
        assert result[:2] == ("raise", error), (label, result)
    return result


SPEC = bytes.fromhex("2E4493157856341233037A2A0020055923C95AAA26D1B2E7493B013EC4A6F6D3529B520EDFF0EA6DEFC99D6D69EBF3")


def single_frame_inputs(vectors: list[dict]) -> dict[str, bytes]:
    """A valid input of every single-frame function."""
    v = vectors[0]
    report = pure.build_report(v["telegram_bytes"], "62001772", -74, 0)
    return {"crc16": v["frame_a_bytes"], "strip_a": v["frame_a_bytes"], "strip_b": v["frame_b_bytes"],
            "check_telegram": v["telegram_bytes"], "parse_header": v["telegram_bytes"],
            "parse_cmex50": bytes((0x68, len(report), len(report), 0x68)) + report + bytes((sum(report) & 0xFF, 0x16))}


def test_every_bytes_like_form_gives_the_bytes_result(vectors):
    for name, data in single_frame_inputs(vectors).items():
        reference = agreed(lambda m, n=name, d=data: getattr(m, n)(d), (name, "bytes"))
        assert reference[0] == "ok", (name, reference)
        for form in accepted_forms(data):
            assert agreed(lambda m, n=name, f=form: getattr(m, n)(f), (name, form)) == reference, (name, form)
    telegram = vectors[0]["telegram_bytes"]
    for form in accepted_forms(telegram):
        assert agreed(lambda m, f=form: m.build_report(f, "62001772", -74, 0), form) == agreed(
            lambda m: m.build_report(telegram, "62001772", -74, 0), "bytes")
        assert expect(lambda m, f=form: m.Matcher(set(), set(), set(), 0).verdict(f, 0), None, form)[1] == ("int", 0)
        batch = agreed(lambda m, f=form: m.check_batch([f], 0, m.Matcher(set(), set(), set(), 0)), form)
        assert batch == ("ok", shape((b"\x00", [telegram])))


def test_a_memoryview_of_a_wired_frame_parses_in_both_twins(vectors):
    frame = single_frame_inputs(vectors)["parse_cmex50"]
    result = expect(lambda m: m.parse_cmex50(memoryview(frame)), None, "memoryview")
    assert result == ("ok", shape(pure.parse_cmex50(frame)))


def test_what_is_not_bytes_like_is_refused_alike(vectors):
    telegram = vectors[0]["telegram_bytes"]
    calls = [lambda m, f, n=name: getattr(m, n)(f) for name in single_frame_inputs(vectors)]
    calls += [lambda m, f: m.build_report(f, None, None, 0),
              lambda m, f: m.Matcher(set(), set(), set(), 0).verdict(f, 0),
              lambda m, f: m.check_batch([telegram, f], 0, m.Matcher(set(), set(), set(), 0))]
    for call in calls:
        for form in refused_forms(telegram):
            result = agreed(lambda m, c=call, f=form: c(m, f), form)
            assert result[:2] == ("raise", TypeError) or result == (
                "raise", ValueError, "operation forbidden on released memoryview object"), (form, result)


def test_refusals_name_the_argument_and_what_is_allowed(twin):
    data = bytes(12)
    with pytest.raises(TypeError, match="^data must be bytes, bytearray or memoryview, not str$"):
        twin.crc16("0000")
    with pytest.raises(TypeError, match="^frame must be bytes, bytearray or memoryview, not array.array$"):
        twin.strip_a(array("B", data))
    with pytest.raises(TypeError, match="^telegram must be a 1-D C-contiguous memoryview of 1-byte items, not one"
                                        " with ndim=1, itemsize=1, c_contiguous=False$"):
        twin.check_telegram(memoryview(data)[::2])
    with pytest.raises(TypeError, match=r"^frames\[1\] must be bytes, bytearray or memoryview, not NoneType$"):
        twin.check_batch([data, None], 0, twin.Matcher(set(), set(), set(), 0))
    with pytest.raises(TypeError, match="^frames must be a sequence such as a list, not generator$"):
        twin.check_batch((d for d in [data]), 0, twin.Matcher(set(), set(), set(), 0))
    with pytest.raises(ValueError, match=r"^frame_format is 3, outside 0\.\.2$"):
        twin.check_batch([data], 3, twin.Matcher(set(), set(), set(), 0))
    with pytest.raises(ValueError, match=r"^modes is 1180591620717411303424, outside 0\.\.15$"):
        twin.Matcher(set(), set(), set(), 2**70)
    with pytest.raises(ValueError, match=r"^an item of ids is -1, outside 0\.\.4294967295$"):
        twin.Matcher(set(), set(), {-1}, 0)
    with pytest.raises(TypeError, match="^an item of manufacturers must be an int, not str$"):
        twin.Matcher("ELV", set(), set(), 0)
    with pytest.raises(TypeError, match=r"^matcher must be a Matcher of the same twin \(wire.Matcher\), not NoneType$"):
        twin.check_batch([data], 0, None)


class Liar(list):
    """A list whose len() is not its length: both twins read the items it yields, once."""

    def __len__(self) -> int:
        return 1


class Frames:
    """A sequence that is neither a list nor a tuple."""

    def __init__(self, items: list[bytes]) -> None:
        self.items = items

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> bytes:
        return self.items[index]


def test_batches_of_any_sequence_agree():
    from collections.abc import Sequence

    Sequence.register(Frames)
    frame_a = build_a(SPEC)
    for make, error in ((lambda: [SPEC, frame_a], None), (lambda: (SPEC, frame_a), None),
                        (lambda: Frames([SPEC]), None), (lambda: Liar([frame_a, frame_a, b"", frame_a]), None),
                        (lambda: "ab", TypeError),
                        (lambda: range(3), TypeError), (lambda: {SPEC}, TypeError), (lambda: iter([SPEC]), TypeError),
                        (lambda: None, TypeError), (lambda: SPEC, TypeError)):
        for frame_format in (0, 1):
            expect(lambda m, k=make, f=frame_format: m.check_batch(k(), f, m.Matcher(set(), set(), set(), 0)), error,
                   (make(), frame_format))
    liar = Liar([frame_a, frame_a, b"", frame_a])
    result = agreed(lambda m: m.check_batch(liar, 1, m.Matcher(set(), set(), set(), 0)), "liar")
    assert result[1][1][0] == ("bytes", b"\x00\x00\x02\x00")


def test_integer_arguments_at_their_edges():
    telegram = SPEC
    empty = set()
    cases: list[tuple[str, int, int, Callable[[Any, Any], Any]]] = [
        ("crc16 start", 0, len(telegram), lambda m, v: m.crc16(telegram, v)),
        ("crc16 end", 0, len(telegram), lambda m, v: m.crc16(telegram, 0, v)),
        ("wired_address", 0, 255, lambda m, v: m.build_report(telegram, None, None, v)),
        ("modes", 0, 15, lambda m, v: m.Matcher(empty, empty, empty, v)),
        ("manufacturers", 0, 0x7FFF, lambda m, v: m.Matcher({v}, empty, empty, 0)),
        ("device_types", 0, 255, lambda m, v: m.Matcher(empty, {v}, empty, 0)),
        ("ids", 0, 2**32 - 1, lambda m, v: m.Matcher(empty, empty, {v}, 0)),
        ("verdict mode", 0, 15, lambda m, v: m.Matcher(empty, empty, empty, 3).verdict(telegram, v)),
        ("batch mode", 0, 15, lambda m, v: m.check_batch([telegram], 0, m.Matcher(empty, empty, empty, 3), v)),
        ("frame_format", 0, 2, lambda m, v: m.check_batch([telegram], v, m.Matcher(empty, empty, empty, 0))),
    ]
    for label, low, high, call in cases:
        for value, error in edges(low, high):
            if label == "crc16 end" and value is None:
                error = None  # end=None is "to the end of the data"
            expect(lambda m, c=call, v=value: c(m, v), error, (label, value))
    for value in (2**70, -(2**70), 2**63, -(2**63) - 1, -6, -5, -128, -127, 0, None, Small.ONE):
        assert expect(lambda m, v=value: m.rssi_code(v), None, value)[1][1] in range(64)
        expect(lambda m, v=value: m.build_report(telegram, None, v, 0), None, value)
    for value in (True, False, -74.0, "-74", b"\x01"):
        expect(lambda m, v=value: m.rssi_code(v), TypeError, value)
        expect(lambda m, v=value: m.build_report(telegram, None, v, 0), TypeError, value)


def test_filter_sets_and_matchers_outside_the_domain_are_refused():
    empty = set()
    sets: list[tuple[Callable[[], Any], type | None]] = [
        (lambda: 5, TypeError), (lambda: None, TypeError), (lambda: "ELV", TypeError), (lambda: [1.0], TypeError),
        (lambda: [True], TypeError), (lambda: (v for v in [1, 2]), None), (lambda: range(3), None),
        (lambda: [1, 1, Small.ONE], None),
    ]
    for make, error in sets:
        expect(lambda m, k=make: m.Matcher(empty, k(), empty, 0), error, make())
    if compiled is not None:  # each twin's batch reads its own Matcher's sets, never the other's
        for batch_twin, matcher_twin in ((pure, compiled), (compiled, pure)):
            result = outcome(batch_twin.check_batch, [SPEC], 0, matcher_twin.Matcher(empty, empty, empty, 0))
            assert result[:2] == ("raise", TypeError)
            assert result[2].endswith(f"not {matcher_twin.__name__}.Matcher"), result


def test_matchers_look_and_behave_alike():
    made = [m.Matcher({0x0614, 0x15C5}, {7}, {0x12345678}, 12) for m in TWINS]
    assert len({repr(matcher) for matcher in made}) == 1
    for matcher in made:
        assert (matcher.manufacturers, matcher.device_types, matcher.ids, matcher.modes) == (
            frozenset({0x0614, 0x15C5}), frozenset({7}), frozenset({0x12345678}), 12)
        with pytest.raises(AttributeError):
            matcher.modes = 2**70
        copy = pickle.loads(pickle.dumps(matcher))
        assert type(copy) is type(matcher) and copy.verdict(SPEC, 4) == matcher.verdict(SPEC, 4)


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
    """A Matcher of ``module`` with random (sometimes empty) integer sets inside the domain."""
    headers = [pure.parse_header(t) for t in rng.sample(telegrams, 5)]
    manufacturers = set() if rng.random() < 0.3 else {h[1] for h in headers[:3]} | {rng.randrange(0x8000), 0x7FFF}
    device_types = set() if rng.random() < 0.4 else {h[4] for h in headers[:3]} | {rng.randrange(256), 0}
    ids = set() if rng.random() < 0.4 else {int(h[2], 16) for h in headers[:3]} | {rng.randrange(2**32), 2**32 - 1}
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
        start, end = rng.randint(-50, 50), rng.choice([None, rng.randint(-50, 50)])
        same("crc16", lambda m, a=(data, start, end): a, (data, start, end))


@needs_compiled
def test_reports_and_rssi_codes_agree(corpus):
    inputs, _, _ = corpus
    rng = random.Random(SEED + 2)
    addresses = [None, "62001772", "6200177A", "abcdef01", "\uff16\uff12\uff10\uff10\uff11\uff17\uff17\uff12", "",
                 "1234", "12 34 56 78", "zz", 1234, "0102030405060708"]
    for data in inputs[::3]:
        args = (data, rng.choice(addresses), rng.choice([None, -74, -5, -128, -300, 40, True, -74.0, 2**70]),
                rng.choice([0, 255, 256, -1, None, 2**70]))
        same("build_report", lambda m, a=args: a, args)
    for value in [None, True, False, -6.0, -74.5, 2**70, -(2**70), 2**63, -(2**63) - 1]:
        same("rssi_code", lambda m, v=value: (v,), value)
    for value in [rng.randint(-400, 100) for _ in range(1000)]:
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
            mode = rng.choice([0, 1, 2, 4, 8, 12, 15, 16, -1, None])
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
    sets = [set(), {0x0614}, {0x7FFF}, {0x0614, 0x0601}, {0}]
    for telegram in telegrams:
        for m_field in M_FIELDS:
            variant = with_m_field(telegram, m_field)
            same("parse_header", lambda m, v=variant: (v,), variant)
            for codes in sets:
                left = outcome(pure.Matcher(codes, set(), set(), 0).verdict, variant, 0)
                right = outcome(compiled.Matcher(codes, set(), set(), 0).verdict, variant, 0)
                assert left == right, (variant.hex(), codes)
                same("check_batch", lambda m, v=variant, c=codes: ([v], 0, m.Matcher(c, set(), set(), 0)),
                     (variant, codes))


def test_a_manufacturer_code_with_bit_15_is_outside_the_domain():
    # An M-field with bit 15 set is still a manufacturer; the code a filter holds has 15 bits.
    for codes in ({0x8614}, {0xFFFF}, {0x8000, 0}):
        result = agreed(lambda m, c=codes: m.Matcher(c, set(), set(), 0), codes)
        assert result[:2] == ("raise", ValueError), result
        assert "outside 0..32767" in result[2]


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
        mode = rng.choice([0, 1, 2, 4, 8, 15])
        for frame_format in (0, 1, 2):
            left = outcome(pure.check_batch, chunk, frame_format, matchers[pure], mode)
            right = outcome(compiled.check_batch, chunk, frame_format, matchers[compiled], mode)
            assert left == right, (start, frame_format)


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


# How a caller may hand over bytes: each form must give what plain bytes give.
FORMS = st.sampled_from([bytes, bytearray, memoryview, lambda d: memoryview(bytearray(d)), Bytes])
# Anything a caller might pass for an integer argument.
ANYTHING = st.one_of(st.integers(), st.integers(-300, 300), st.booleans(), st.floats(allow_nan=False), st.none(),
                     st.text(max_size=3), st.binary(max_size=2))


def same_as_bytes(name: str, data: bytes, form: Callable[[bytes], Any], *rest: Any) -> None:
    """Both twins agree on ``name(form(data), *rest)``, and it is what ``name(data, *rest)`` gives."""
    reference = agreed(lambda m: getattr(m, name)(data, *rest), (name, data))
    assert agreed(lambda m: getattr(m, name)(form(data), *rest), (name, form, data)) == reference


@SETTINGS
@given(data=frames(), form=FORMS)
def test_every_form_of_random_and_mutated_bytes_agrees(data, form):
    for name in ("crc16", "strip_a", "strip_b", "check_telegram", "parse_header", "parse_cmex50"):
        same_as_bytes(name, data, form)
    same_as_bytes("build_report", data, form, "62001772", -74, 1)


@SETTINGS
@given(frame=wired_frames(), form=FORMS)
def test_every_form_of_wired_frames_agrees(frame, form):
    same_as_bytes("parse_cmex50", frame, form)


@SETTINGS
@given(start=ANYTHING, end=ANYTHING, wired=ANYTHING, rssi=ANYTHING, modes=ANYTHING, mode=ANYTHING,
       frame_format=ANYTHING, data=st.binary(max_size=40))
def test_arguments_anywhere_agree(start, end, wired, rssi, modes, mode, frame_format, data):
    agreed(lambda m: m.crc16(data, start, end), (start, end))
    agreed(lambda m: m.build_report(SPEC, None, rssi, wired), (rssi, wired))
    agreed(lambda m: m.rssi_code(rssi), rssi)
    agreed(lambda m: m.Matcher(set(), set(), set(), modes), modes)
    agreed(lambda m: m.Matcher(set(), set(), set(), 5).verdict(SPEC, mode), mode)
    agreed(lambda m: m.check_batch([data, SPEC], frame_format, m.Matcher(set(), set(), set(), 5), mode),
           (frame_format, mode))


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
    manufacturers=st.frozensets(st.integers(0, 0x7FFF), max_size=3),
    device_types=st.frozensets(st.integers(0, 0xFF), max_size=3),
    ids=st.frozensets(st.integers(0, 0xFFFFFFFF), max_size=3),
    modes=st.integers(0, 15),
    mode=st.integers(0, 15),
    forms=st.lists(FORMS, max_size=20),
)
def test_batch_raises_nothing(twin, batch, frame_format, manufacturers, device_types, ids, modes, mode, forms):
    matcher = twin.Matcher(manufacturers, device_types, ids, modes)
    codes, telegrams = twin.check_batch(batch, frame_format, matcher, mode)
    assert isinstance(codes, bytes) and len(codes) == len(batch) == len(telegrams)
    for code, telegram in zip(codes, telegrams, strict=True):
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
        mixed = [form(frame) for form, frame in zip(forms, batch, strict=False)] + batch[len(forms):]
        same(
            "check_batch",
            lambda m: (mixed, frame_format, m.Matcher(manufacturers, device_types, ids, modes), mode),
            mixed,
        )
        reference = pure.Matcher(manufacturers, device_types, ids, modes)
        assert outcome(pure.check_batch, mixed, frame_format, reference, mode) == outcome(
            pure.check_batch, batch, frame_format, reference, mode)
