"""Receiver framers: the test vectors put on the line with each protocol's real framing.

Every framer must give the same frames whether a capture comes whole, byte by byte, in
random chunks or wrapped in garbage; its counters must be exact for constructed inputs;
no input may crash it or grow its buffer beyond one maximal frame.
"""

from __future__ import annotations

import random
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from itertools import pairwise

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from wmbus_stream import wire
from wmbus_stream.core.check import check
from wmbus_stream.errors import ConfigError
from wmbus_stream.receivers import amb8465, cmex50, framer, framer_class, im871a, names, rtlwmbus
from wmbus_stream.receivers import hex as hexline
from wmbus_stream.core.received import FORMAT_AUTO, Received
from wmbus_stream.receivers.base import FramerStats
from wmbus_stream.wire.modes import C1A, C1B, RADIO_MODES, S1, T1, mode_mask

PROTOCOLS = ("cmex50", "im871a", "amb8465", "rtlwmbus", "hex")
RECEIVER = "62001772"

SEED_BODY = bytes.fromhex(
    "080072640100619615011B000000000C787217006201FD711C0DFD3B616044961564010061011B7A970400202F2F"
    "02653607426534078201652C072265320712653607626516075265560702FB1A0E0242FB1A0E028201FB1A0E0222"
    "FB1A0E0212FB1A0E0262FB1A090252FB1A0F0202FD1B20C30DFD0F05322E302E310F"
)
SEED_TELEGRAM = SEED_BODY[29:]
IPERL = bytes.fromhex("1844AE4C4455223368077A55000000041389E20100023B0000")


# Captures ------------------------------------------------------------------------------


@dataclass
class Capture:
    """Frames of one protocol built from the vectors, with what the framer must give."""

    protocol: str
    frames: list[bytes]
    expected: list[Received]
    options: dict = field(default_factory=dict)

    @property
    def data(self) -> bytes:
        return b"".join(self.frames)

    def framer(self):
        return framer(self.protocol, **self.options)


def _cmex50(vectors: list[dict]) -> Capture:
    cap = Capture("cmex50", [], [])
    for i, v in enumerate(vectors):
        telegram = v["telegram_bytes"]
        if len(telegram) > 226:  # a wired long frame holds at most 255 bytes from C on
            continue
        rssi = -40 - 2 * (i % 40)  # even dBm values survive the 2 dB RSSI code exactly
        frame = cmex50.encode(telegram, receiver_address=RECEIVER, rssi_dbm=rssi)
        cap.frames.append(frame)
        cap.expected.append(Received(telegram, wire.FORMAT_NONE, rssi, 0, RECEIVER, frame[4:-2]))
    return cap


# (RSSI attached, timestamp, FCS) cycled over the vectors: every option combination occurs.
_IM871A_OPTIONS = [(True, None, True), (True, 0x01020304, True), (False, None, True),
                   (True, None, False), (False, None, False), (False, 77, False), (True, 5, False)]


def _im871a(vectors: list[dict]) -> Capture:
    cap = Capture("im871a", [], [])
    for i, v in enumerate(vectors):
        telegram = v["telegram_bytes"]
        with_rssi, stamp, fcs = _IM871A_OPTIONS[i % len(_IM871A_OPTIONS)]
        raw = (i * 37) % 256 if with_rssi else None
        cap.frames.append(im871a.encode(telegram, rssi=raw, timestamp=stamp, fcs=fcs))
        dbm = im871a.rssi_dbm(raw) if raw is not None else None
        cap.expected.append(Received(telegram, wire.FORMAT_NONE, dbm, 0, None))
    return cap


def _amb8465(vectors: list[dict]) -> Capture:
    cap = Capture("amb8465", [], [])
    for i, v in enumerate(vectors):
        telegram = v["telegram_bytes"]
        if len(telegram) > 255:  # C.. plus the RSSI byte must fit LEN
            continue
        raw = (i * 53) % 256
        cap.frames.append(amb8465.encode(telegram, rssi=raw))
        cap.expected.append(Received(telegram, wire.FORMAT_NONE, amb8465.rssi_dbm(raw), 0, None))
    return cap


def _rtlwmbus(vectors: list[dict]) -> Capture:
    cap = Capture("rtlwmbus", [], [])
    modes = ("T1", "C1", "S1")
    for i, v in enumerate(vectors):
        telegram = v["telegram_bytes"]
        mode = modes[i % 3]
        line = rtlwmbus.encode(telegram, mode=mode, time=1_767_225_600 + 7.5 * i, rssi=(90 + i % 50, 120))
        if i % 4 == 0:
            line = line[:-1] + b"\r\n"  # some lines end CR LF
        cap.frames.append(line)
        cap.expected.append(Received(telegram, wire.FORMAT_NONE, None, mode_mask(mode), None))
    return cap


def _hex(vectors: list[dict]) -> Capture:
    cap = Capture("hex", [], [])
    for i, v in enumerate(vectors):
        data = (v["telegram_bytes"], v["frame_a_bytes"], v["frame_b_bytes"])[i % 3]
        rssi = (None, -74, -101, -40)[i % 4]
        cap.frames.append(hexline.encode(data, rssi_dbm=rssi))
        cap.expected.append(Received(data, FORMAT_AUTO, rssi, 0, None))
    return cap


BUILDERS: dict[str, Callable[[list[dict]], Capture]] = {
    "cmex50": _cmex50, "im871a": _im871a, "amb8465": _amb8465, "rtlwmbus": _rtlwmbus, "hex": _hex,
}

# Garbage that cannot start a frame of the protocol: the binary ones lack the start byte,
# the text ones are whole lines that are not frames (the hex one is over-long).
START_BYTES = {"cmex50": 0x68, "im871a": 0xA5, "amb8465": 0xFF}
GARBAGE_LINES = {
    "rtlwmbus": [b"rtl_wmbus: starting\n", b"Found Rafael Micro R820T tuner\r\n", b"X1;1;1;noise;0x00\n"],
    "hex": [b"x" * 1500 + b"\n", b"0" * 1025 + b"\r\n"],
}


@pytest.fixture(scope="module", params=PROTOCOLS)
def capture(request: pytest.FixtureRequest, vectors: list[dict]) -> Capture:
    return BUILDERS[request.param](vectors)


def _garbage(protocol: str, rng: random.Random) -> bytes:
    if protocol in START_BYTES:
        start = START_BYTES[protocol]
        return bytes(b for b in rng.randbytes(rng.randrange(1, 40)) if b != start)
    return rng.choice(GARBAGE_LINES[protocol])


def run(f, chunks: list[bytes]) -> list[Received]:
    """Feed the chunks, then flush; every frame that came out, in order."""
    out: list[Received] = []
    for chunk in chunks:
        out += f.feed(chunk)
        assert len(f.pending) <= f.max_pending
    out += f.flush()
    assert f.pending == b""
    return out


def split(data: bytes, rng: random.Random, most: int = 64) -> list[bytes]:
    chunks, pos = [], 0
    while pos < len(data):
        size = rng.randrange(1, most)
        chunks.append(data[pos : pos + size])
        pos += size
    return chunks


def stats_of(f) -> tuple[int, int, int]:
    return f.stats.frames, f.stats.bad_frames, f.stats.skipped_bytes


# Same frames however the bytes arrive -----------------------------------------------------


def test_whole_capture_gives_every_frame(capture: Capture) -> None:
    f = capture.framer()
    assert len(capture.frames) > 200
    assert run(f, [capture.data]) == capture.expected
    assert stats_of(f) == (len(capture.frames), 0, 0)


def test_byte_by_byte_gives_the_same(capture: Capture) -> None:
    f = capture.framer()
    data = b"".join(capture.frames[:60])
    assert run(f, [data[i : i + 1] for i in range(len(data))]) == capture.expected[:60]
    assert stats_of(f) == (60, 0, 0)


def test_random_chunks_give_the_same(capture: Capture) -> None:
    rng = random.Random(7)
    for most in (2, 9, 300, 5000):
        f = capture.framer()
        assert run(f, split(capture.data, rng, most)) == capture.expected
        assert stats_of(f) == (len(capture.frames), 0, 0)


def test_garbage_around_and_between_frames_is_skipped_and_counted(capture: Capture) -> None:
    rng = random.Random(11)
    parts, skipped = [], 0
    for frame in capture.frames:
        junk = _garbage(capture.protocol, rng) if rng.random() < 0.6 else b""
        parts += [junk, frame]
        skipped += len(junk)
    tail = _garbage(capture.protocol, rng)
    data = b"".join(parts) + tail
    skipped += len(tail)
    for most in (3, 700):
        f = capture.framer()
        assert run(f, split(data, rng, most)) == capture.expected
        assert stats_of(f) == (len(capture.frames), 0, skipped)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(cuts=st.lists(st.integers(min_value=0, max_value=20_000), max_size=60))
def test_any_split_gives_the_same(capture: Capture, cuts: list[int]) -> None:
    data = b"".join(capture.frames[:40])
    points = sorted({c % (len(data) + 1) for c in cuts} | {0, len(data)})
    chunks = [data[a:b] for a, b in pairwise(points)]
    f = capture.framer()
    assert run(f, chunks) == capture.expected[:40]


# Broken frames ----------------------------------------------------------------------------


def _break(protocol: str, frame: bytes) -> bytes:
    """The frame with its own check failing (checksum, FCS, CRC flags, hex)."""
    if protocol == "cmex50":
        return frame[:-2] + bytes(((frame[-2] + 1) & 0xFF,)) + frame[-1:]
    if protocol in ("im871a", "amb8465"):
        return frame[:-1] + bytes((frame[-1] ^ 0x01,))
    if protocol == "rtlwmbus":
        return frame.replace(b";1;1;", b";0;1;", 1)
    return b"zz" + frame


def _checked_frame_index(capture: Capture, start: int) -> int:
    # iM871A frames without FCS cannot be seen as broken; pick one that has it.
    for i in range(start, len(capture.frames)):
        if capture.protocol != "im871a" or capture.frames[i][1] & 0x80:
            return i
    raise AssertionError("no frame with a check")


def test_broken_frame_is_reported_and_the_rest_found(capture: Capture) -> None:
    frames = list(capture.frames[:30])
    bad = _checked_frame_index(capture, 12)
    frames[bad] = _break(capture.protocol, frames[bad])
    data = b"".join(frames)
    for chunks in ([data], [data[i : i + 1] for i in range(len(data))]):
        f = capture.framer()
        out = run(f, chunks)
        assert [r for r in out if r.error is None] == [e for i, e in enumerate(capture.expected[:30]) if i != bad]
        errors = [r for r in out if r.error is not None]
        assert len(errors) == 1 and errors[0].error.startswith(capture.protocol) and errors[0].data == b""
        assert stats_of(f) == (29, 1, 0)


@pytest.mark.parametrize("protocol", ["cmex50", "im871a", "amb8465"])
def test_cut_frame_is_reported_and_the_next_one_still_found(vectors: list[dict], protocol: str) -> None:
    capture = BUILDERS[protocol](vectors)
    bad = _checked_frame_index(capture, 5)
    frames = list(capture.frames[: bad + 6])
    frames[bad] = frames[bad][: len(frames[bad]) // 2]  # e.g. the receiver was unplugged mid-frame
    data = b"".join(frames)
    for chunks in ([data], [data[i : i + 1] for i in range(len(data))]):
        f = capture.framer()
        out = run(f, chunks)
        good = [e for i, e in enumerate(capture.expected[: bad + 6]) if i != bad]
        assert [r for r in out if r.error is None] == good
        assert f.stats.bad_frames == 1 and f.stats.frames == len(good)
        assert f.stats.skipped_bytes == 0  # the cut frame's bytes belong to the reported frame


def test_partial_frame_at_the_end_is_broken_at_flush(capture: Capture) -> None:
    f = capture.framer()
    last = capture.frames[3]
    if capture.protocol in START_BYTES:
        cut = last[: len(last) - 3]
    else:  # a line cut inside its hex digits, leaving an odd count
        cut = last.split(b";0x")[-1].split(b";")[0].rstrip(b"\r\n")
        cut = last[: last.index(cut) + len(cut) - 1]
    out = run(f, [b"".join(capture.frames[:3]) + cut])
    assert [r for r in out if r.error is None] == capture.expected[:3]
    assert f.stats.bad_frames == 1 and f.stats.frames == 3
    # The framer is empty and works again, as after a replugged port.
    assert run(f, [capture.frames[0]]) == capture.expected[:1]


@pytest.mark.parametrize("protocol", ["cmex50", "im871a", "amb8465"])
def test_a_few_start_bytes_at_the_end_are_skipped(vectors: list[dict], protocol: str) -> None:
    f = BUILDERS[protocol](vectors).framer()
    start = START_BYTES[protocol]
    assert f.feed(bytes((start,))) == []
    assert f.pending == bytes((start,))
    assert f.flush() == []
    assert stats_of(f) == (0, 0, 1)


# Hypothesis: nothing crashes, nothing grows ------------------------------------------------


@pytest.mark.parametrize("protocol", PROTOCOLS)
@settings(max_examples=150, deadline=None)
@given(chunks=st.lists(st.binary(max_size=400), max_size=30))
def test_no_input_crashes_and_the_buffer_stays_bounded(protocol: str, chunks: list[bytes]) -> None:
    f = framer(protocol)
    out = run(f, chunks)
    assert all(isinstance(r, Received) for r in out)
    assert f.stats.frames + f.stats.bad_frames == len(out)
    assert f.stats.skipped_bytes <= sum(map(len, chunks))


_ALPHABETS = {
    "cmex50": st.sampled_from([0x68, 0x16, 0x00, 0x7E, 0x08, 0x72, 0xFF]),
    "im871a": st.sampled_from([0xA5, 0xC2, 0x02, 0x03, 0x01, 0x04, 0x00, 0xFF]),
    "amb8465": st.sampled_from([0xFF, 0x03, 0x84, 0x00, 0x02, 0x01]),
    "rtlwmbus": st.sampled_from(list(b"T1C;01x\n\r#ab ")),
    "hex": st.sampled_from(list(b"0123456789abcdefxX; -#\n\r")),
}


@pytest.mark.parametrize("protocol", PROTOCOLS)
@settings(max_examples=150, deadline=None)
@given(data=st.data())
def test_frame_like_noise_crashes_nothing(protocol: str, data: st.DataObject) -> None:
    # Bytes drawn mostly from each protocol's own markers reach the deeper code paths.
    noise = bytes(data.draw(st.lists(_ALPHABETS[protocol], max_size=3000)))
    f = framer(protocol)
    out = run(f, split(noise, random.Random(len(noise)), 97))
    assert f.stats.frames + f.stats.bad_frames == len(out)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_frames_in_noise_without_start_bytes_are_all_found(capture: Capture, data: st.DataObject) -> None:
    if capture.protocol in START_BYTES:
        start = START_BYTES[capture.protocol]
        junk = st.binary(max_size=50).map(lambda b: bytes(x for x in b if x != start))
    else:
        junk = st.sampled_from([b""] + GARBAGE_LINES[capture.protocol])
    picks = data.draw(st.lists(st.integers(0, len(capture.frames) - 1), min_size=1, max_size=8))
    parts, skipped = [], 0
    for i in picks:
        noise = data.draw(junk)
        parts += [noise, capture.frames[i]]
        skipped += len(noise)
    f = capture.framer()
    assert run(f, split(b"".join(parts), random.Random(len(parts)), 50)) == [capture.expected[i] for i in picks]
    assert stats_of(f) == (len(picks), 0, skipped)


# Reference examples (EN 13757-4 and the receiver manuals) ----------------------------------


def test_cmex50_seed_frame() -> None:
    frame = bytes.fromhex("687E7E68") + SEED_BODY + bytes.fromhex("3F16")
    assert cmex50.wrap(SEED_BODY) == frame
    assert cmex50.encode(SEED_TELEGRAM, receiver_address=RECEIVER, rssi_dbm=-74) == frame
    f = framer("cmex50")
    assert run(f, [frame]) == [Received(SEED_TELEGRAM, wire.FORMAT_NONE, -74, 0, RECEIVER, SEED_BODY)]


def test_im871a_reference_frame() -> None:
    frame = bytes.fromhex("A5C20318" "44AE4C4455223368077A55000000041389E20100023B0000" "9A" "51B0")
    assert im871a.encode(IPERL, rssi=0x9A) == frame
    assert wire.x25(b"123456789") == 0x906E
    f = framer("im871a", radio_mode="T1")
    # wmbusmeters' approximation gives -45.5 dBm; we truncate toward zero.
    assert run(f, [frame]) == [Received(IPERL, wire.FORMAT_NONE, -45, T1, None)]


def test_amb8465_reference_frame() -> None:
    frame = bytes.fromhex("FF0319" "44AE4C4455223368077A55000000041389E20100023B0000" "C8" "8F")
    assert amb8465.encode(IPERL, rssi=0xC8) == frame
    f = framer("amb8465", receiver_address=RECEIVER, radio_mode="T1_C1A")
    assert run(f, [frame]) == [Received(IPERL, wire.FORMAT_NONE, -102, T1 | C1A, RECEIVER)]


def test_rtlwmbus_reference_lines() -> None:
    lines = (
        b"T1;1;1;2019-04-03 19:00:42.000;97;148;88888888;0x2e44333003020100071b7a634820252f2f02658408426583"
        b"08820165950802fb1aae0142fb1aae018201fb1aa9012f\n"
        b"C1;1;1;2019-02-09 07:14:18.000;117;102;94740459;0x49449344590474943508780dff5f3500827f0000f10007b0"
        b"6effff530100005f2c620100007f2118010000008000800080008000000000000000000e003f005500d4ff2f046d10086922\n"
    )
    f = framer("rtlwmbus")
    out = run(f, [lines])
    assert [r.mode for r in out] == [T1, C1A | C1B]
    assert out[0].data.hex().startswith("2e4433300302") and out[1].data[0] == len(out[1].data) - 1
    assert all(r.rssi_dbm is None and r.frame_format == wire.FORMAT_NONE and r.error is None for r in out)


# cmex50 details ---------------------------------------------------------------------------


def test_cmex50_rssi_codes() -> None:
    assert [wire.rssi_dbm(c) for c in (None, 0, 1, 28, 62, 63)] == [None, None, -128, -74, -6, -6]


def test_cmex50_frame_without_receiver_records_uses_the_configured_address() -> None:
    frame = cmex50.encode(SEED_TELEGRAM)  # no 0C78; RSSI code 0 = unknown
    f = framer("cmex50", receiver_address="12345678")
    (item,) = run(f, [frame])
    assert item.receiver_address == "12345678" and item.rssi_dbm is None and item.wired == frame[4:-2]


def test_cmex50_long_container_is_forwarded_in_the_long_form(vectors) -> None:
    # A device may put a 202-byte telegram in 0D FD 3B CA ...; the report carries it as 0F ...
    # (0xCA is not a length to EN 13757-3 parsers), every other byte of the frame unchanged.
    telegram = next(v["telegram_bytes"] for v in vectors if len(v["telegram_bytes"]) == 202)
    long_form = wire.build_report(telegram, RECEIVER, -74, 0)
    head = long_form[:25] + b"\x02\x75\x03\x00"
    for tail in (b"", b"\x0f", b"\x1f"):
        device = cmex50.wrap(head + b"\x0d\xfd\x3b\xca" + telegram + tail)
        (item,) = run(framer("cmex50"), [device])
        assert item.data == telegram and item.error is None
        assert item.wired == head + b"\x0f" + telegram
    (item,) = run(framer("cmex50"), [cmex50.wrap(long_form)])  # already the long form: unchanged
    assert item.wired == long_form


def test_cmex50_good_checksum_but_no_container_is_broken_and_consumed_whole() -> None:
    not_ours = cmex50.wrap(bytes.fromhex("080072" "64010061" "9615" "01" "07" "00" "00" "0000"))
    good = cmex50.encode(SEED_TELEGRAM, receiver_address=RECEIVER, rssi_dbm=-74)
    f = framer("cmex50")
    out = run(f, [not_ours + good])
    assert out[0].error is not None and "container" in out[0].error
    assert out[1].data == SEED_TELEGRAM
    assert stats_of(f) == (1, 1, 0)


def test_cmex50_inconsistent_header_is_garbage() -> None:
    good = cmex50.encode(SEED_TELEGRAM)
    f = framer("cmex50")
    junk = bytes.fromhex("68101168") + bytes.fromhex("680268") + bytes.fromhex("68 0505 00")
    out = run(f, [junk + good])
    assert [r.data for r in out] == [SEED_TELEGRAM]
    assert stats_of(f) == (1, 0, len(junk))


def test_cmex50_valid_frame_hidden_in_a_broken_candidate_is_found() -> None:
    good = cmex50.encode(SEED_TELEGRAM, rssi_dbm=-60)
    # A header promising 0x40 bytes, then only 5 of them before a real frame starts.
    cut = bytes.fromhex("68404068") + b"\x08\x00\x72\x11\x22"
    f = framer("cmex50")
    out = run(f, [cut + good + good])
    assert [r.data for r in out if r.error is None] == [SEED_TELEGRAM, SEED_TELEGRAM]
    assert stats_of(f) == (2, 1, 0)


# im871a details ---------------------------------------------------------------------------


def test_im871a_confirmations_are_counted_not_reported() -> None:
    f = framer("im871a")
    set_config_rsp = im871a.frame(im871a.DEVMGMT, 0x04, b"\x00", fcs=False)
    device_info = im871a.frame(im871a.DEVMGMT, 0x10, bytes(10), fcs=True)
    link_test = im871a.frame(im871a.RADIOLINKTEST, 0x07, b"\x01\x02")
    out = run(f, [set_config_rsp + im871a.encode(IPERL) + device_info + link_test])
    assert [r.data for r in out] == [IPERL]
    assert f.stats.extra == {"SET_CONFIG_RSP": 1, "GET_DEVICEINFO_RSP": 1, "RADIOLINKTEST.07": 1}
    assert stats_of(f) == (1, 0, 0)


def test_im871a_bad_fcs_names_both_values() -> None:
    frame = bytearray(im871a.encode(IPERL, rssi=0x80))
    frame[10] ^= 0xFF
    f = framer("im871a")
    (item,) = run(f, [bytes(frame)])
    assert item.error is not None and "FCS" in item.error and stats_of(f) == (0, 1, 0)


def test_im871a_implausible_control_bytes_are_garbage() -> None:
    f = framer("im871a")
    junk = bytes.fromhex("A512" "A505" "A50299" "A5010000")  # reserved flag, endpoint 5, msg 0x99, msg 0
    out = run(f, [junk + im871a.encode(IPERL)])
    assert [r.data for r in out] == [IPERL]
    assert stats_of(f) == (1, 0, len(junk))


def test_im871a_rssi_of_every_raw_byte_follows_the_cited_curve(twin) -> None:
    # Every raw byte through the framer: -100 dBm at 45, -20 at 205, 0 from 230 on (where
    # the curve saturates), straight in between, so monotonic in steps of at most 1 dB.
    f = framer("im871a")
    out = run(f, [b"".join(im871a.encode(IPERL, rssi=raw) for raw in range(256))])
    dbm = [r.rssi_dbm for r in out]
    assert len(dbm) == 256 and stats_of(f) == (256, 0, 0)
    assert (dbm[0], dbm[45], dbm[205]) == (-122, -100, -20)
    assert dbm[230:] == [0] * 26
    assert all(0 <= b - a <= 1 for a, b in pairwise(dbm))
    assert dbm[206:230] == [int(-20 + 0.8 * (raw - 205)) for raw in range(206, 230)]
    assert all(im871a.rssi_dbm(im871a.rssi_raw(d)) == d for d in range(-122, 1))
    # The report's RSSI code of each: 63 (above -6 dBm) for the saturated bytes, never 0 (unknown).
    codes = [twin.rssi_code(d) for d in dbm]
    assert codes[0] == 4 and codes[230:] == [63] * 26 and all(1 <= c <= 63 for c in codes)


# amb8465 details --------------------------------------------------------------------------


def test_amb8465_confirmations_are_counted_and_rssi_can_be_off() -> None:
    f = framer("amb8465", rssi=False)
    set_mode_cnf = amb8465.command(0x84, b"\x00")
    out = run(f, [set_mode_cnf + amb8465.encode(IPERL) + amb8465.command(0x89, b"\x00")])
    assert out == [Received(IPERL, wire.FORMAT_NONE, None, 0, None)]
    assert f.stats.extra == {"SET_MODE_CNF": 1, "SET_CNF": 1}


def test_amb8465_rssi_mapping() -> None:
    assert [amb8465.rssi_dbm(r) for r in (0x00, 0x7F, 0x80, 0xC8, 0xFF)] == [-74, -11, -138, -102, -74]
    assert all(amb8465.rssi_dbm(amb8465.rssi_raw(d)) == d for d in range(-138, -10))


def test_frame_look_alikes_inside_a_broken_frame_are_not_reported_again() -> None:
    # Payload bytes FF 03 40 look like the start of a 68-byte frame reaching past the end.
    telegram = IPERL[:-3] + b"\xff\x03\x40"
    telegram = bytes((len(telegram) - 1,)) + telegram[1:]
    broken = bytearray(amb8465.encode(telegram, rssi=0x10))
    broken[-1] ^= 0x55
    good = amb8465.encode(IPERL, rssi=0x20)
    data = bytes(broken) + good * 4
    nested = data[len(broken) - 5 : len(broken) - 5 + 0x44]
    assert nested[:3] == b"\xff\x03\x40" and amb8465.checksum(nested[:-1]) != nested[-1]
    f = framer("amb8465")
    out = run(f, [data])
    assert [r.data for r in out] == [b"", IPERL, IPERL, IPERL, IPERL]
    assert stats_of(f) == (4, 1, 0)


def test_amb8465_unknown_command_byte_is_garbage() -> None:
    f = framer("amb8465")
    junk = bytes.fromhex("FF42") + bytes.fromhex("FFFF")
    out = run(f, [junk + amb8465.encode(IPERL, rssi=0)])
    assert [r.data for r in out] == [IPERL]
    assert stats_of(f) == (1, 0, len(junk))


# rtlwmbus details -------------------------------------------------------------------------


def test_rtlwmbus_crc_failures_and_bad_datagrams_are_broken() -> None:
    lines = (
        b"T1;0;0;2021-12-29 13:50:57.000;8;101;91625359;0x2944\n"
        b"T1;1;0;2021-12-29 13:50:57.000;8;101;91625359;0x2944\n"
        b"C1;1;1;2021-12-29 13:50:57.000;8;101;91625359;0x294\n"
        b"S1;1;1;2021-12-29 13:50:57.000;8;101;91625359;0xzz44\n"
        b"S1;1;1;2021-12-29 13:50:57.000;8;101;91625359;2944\n"
    )
    f = framer("rtlwmbus")
    out = run(f, [lines])
    assert all(r.error for r in out) and len(out) == 5
    assert "CRC_OK=0" in out[0].error and "3OF6OK=0" in out[1].error
    assert "odd" in out[2].error and "non-hex" in out[3].error and "0x" in out[4].error
    assert [r.mode for r in out] == [T1, T1, C1A | C1B, S1, S1]
    assert stats_of(f) == (0, 5, 0)


def test_rtlwmbus_second_datagram_is_a_second_frame() -> None:
    f = framer("rtlwmbus")
    out = run(f, [b"C1;1;1;2021-12-29 13:50:57.000;94;83;03727567;0x0a44;0x0b44\n"])
    assert [r.data for r in out] == [b"\x0a\x44", b"\x0b\x44"]


def test_rtlwmbus_overlong_line_is_skipped_in_any_chunking() -> None:
    good = rtlwmbus.encode(IPERL)
    overlong = b"T1;1;1;" + b"0" * 3000 + b"\n"
    data = overlong + good + b"\n\n# comment\n" + overlong[:-1]
    for chunks in ([data], split(data, random.Random(3), 40)):
        f = framer("rtlwmbus")
        assert [r.data for r in run(f, chunks)] == [IPERL]
        assert stats_of(f) == (1, 0, len(overlong) * 2 - 1)


# hex details ------------------------------------------------------------------------------


def test_hex_lines_tolerate_spacing_comments_and_signs() -> None:
    text = (b"# capture of 2026-01-01\n\n   \n"
            b"  18 44 AE 4C 44 55 22 33 68 07 7A 55 00 00 00 04 13 89 E2 01 00 02 3B 00 00 ; -74 \r\n"
            b"0x1844AE4C4455223368077A55000000041389E20100023B0000;+5\n"
            b"1844ae4c4455223368077a55000000041389e20100023b0000\n")
    f = framer("hex", receiver_address=RECEIVER)
    out = run(f, [text])
    assert out == [Received(IPERL, FORMAT_AUTO, -74, 0, RECEIVER), Received(IPERL, FORMAT_AUTO, 5, 0, RECEIVER),
                   Received(IPERL, FORMAT_AUTO, None, 0, RECEIVER)]
    assert stats_of(f) == (3, 0, 0)


def test_hex_bad_lines_are_broken_frames_with_reasons() -> None:
    f = framer("hex")
    out = run(f, [b"hello\n1844A\n1844;-7.5\n;-70\n18\xff44\n"])
    assert [r.data for r in out] == [b""] * 5
    reasons = [r.error for r in out]
    assert "'h' is not a hex digit" in reasons[0] and "odd" in reasons[1] and "RSSI" in reasons[2]
    assert "no hex digits" in reasons[3] and "is not a hex digit" in reasons[4] and "allowed" in reasons[4]
    assert stats_of(f) == (0, 5, 0)


def test_hex_rssi_out_of_any_receiver_range_is_a_broken_frame() -> None:
    """Outside tester: ';-9999999999999999999' was taken as an RSSI and averaged into the analyzer."""
    f = framer("hex")
    good = "1844AE4C4455223368077A55000000041389E20100023B0000"
    out = run(f, [f"{good};-9999999999999999999\n{good};51\n{good};-201\n{good};-200\n{good};50\n".encode()])
    assert [r.error is not None for r in out] == [True, True, True, False, False]
    assert "out of range (allowed: -200 to 50)" in out[0].error
    assert [r.rssi_dbm for r in out[3:]] == [-200, 50]
    assert stats_of(f) == (2, 3, 0)


def test_hex_capture_passes_the_check_stage(vectors: list[dict]) -> None:
    capture = _hex(vectors)  # CRC-less, format A and format B lines in turn
    telegrams = [check(r).telegram for r in run(capture.framer(), [capture.data])]
    assert telegrams == [v["telegram_bytes"] for v in vectors]


def test_last_line_without_newline_is_read_at_flush() -> None:
    f = framer("hex")
    assert f.feed(hexline.encode(IPERL)[:-1]) == []
    assert f.flush() == [Received(IPERL, FORMAT_AUTO)]


# Setup commands ---------------------------------------------------------------------------


def test_im871a_setup_commands() -> None:
    f = framer("im871a")
    assert f.setup_commands("T1_C1A_C1B") == bytes.fromhex("A501030600020A300100")
    assert f.setup_commands("t1") == bytes.fromhex("A5010306000203300100")
    assert f.setup_commands("S1")[6] == 0x00 and f.setup_commands("C1A")[6] == 0x06
    assert f.setup_commands("C1B_WIDE")[6] == 0x07


def test_amb8465_setup_commands() -> None:
    f = framer("amb8465")
    cmds = f.setup_commands("T1_C1A_C1B")
    assert cmds == bytes.fromhex("FF040109F3") + bytes.fromhex("FF0903450101B0")
    assert amb8465.checksum(cmds[:4]) == cmds[4]
    assert f.setup_commands("T1")[3] == 0x08 and f.setup_commands("S1")[3] == 0x03
    assert f.setup_commands("C1A_C1B_WIDE")[3] == 0x0E


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_setup_commands_for_every_setting(protocol: str) -> None:
    f = framer(protocol)
    for setting in RADIO_MODES:
        cmds = f.setup_commands(setting)
        assert isinstance(cmds, bytes) and (cmds != b"") == (protocol in ("im871a", "amb8465"))
        # What the framer sends to its own dongle must not confuse it.
        assert f.feed(cmds) == []
        f.flush()
    with pytest.raises(ConfigError) as info:
        f.setup_commands("T2")
    assert info.value.key == "radio.mode"


def test_configured_mode_is_reported_for_every_telegram() -> None:
    f = framer("im871a", radio_mode="C1A_C1B")
    assert run(f, [im871a.encode(IPERL)])[0].mode == C1A | C1B
    with pytest.raises(ConfigError):
        framer("amb8465", radio_mode="X1")


# Registry ---------------------------------------------------------------------------------


def test_registry_names_and_classes() -> None:
    assert names()[0] == "cmex50"
    assert set(names()) == set(PROTOCOLS) | {"simulator"}
    for name in names():
        f = framer(name)
        assert isinstance(f.stats, FramerStats)
        assert f.name == ("cmex50" if name == "simulator" else name)
    assert framer_class("HEX") is hexline.HexFramer


def test_unknown_protocol_is_a_configuration_error() -> None:
    with pytest.raises(ConfigError) as info:
        framer("cul")
    problem = info.value.problems[0]
    assert problem.key == "receiver.protocol" and problem.value == "cul"
    assert all(name in problem.allowed for name in PROTOCOLS)


def test_framer_modules_are_imported_lazily() -> None:
    code = ("import sys, wmbus_stream.receivers as r; "
            "assert not any(m in sys.modules for m in ('wmbus_stream.receivers.im871a', "
            "'wmbus_stream.receivers.simulator')); r.framer('im871a'); "
            "assert 'wmbus_stream.receivers.im871a' in sys.modules")
    subprocess.run([sys.executable, "-c", code], check=True)
