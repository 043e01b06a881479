"""The wire core on the public vectors, through both twins explicitly.

Every vector of ``tests/vectors/telegrams.jsonl`` is stripped from formats A and B, rebuilt,
its header parsed, every byte corrupted and its length changed; the CRC check values of the
reference and the spec's report vector (section 5) are checked byte for byte.
"""

from __future__ import annotations

import pytest

from wmbus_stream.errors import ChecksumError, CrcError, FrameError, HeaderError, LengthError
from wmbus_stream.wire import frame as wire_frame
from wmbus_stream.wire.header import manufacturer_letters

SPEC_TELEGRAM = bytes.fromhex(
    "6044961564010061011B7A970400202F2F02653607426534078201652C072265320712653607626516075265"
    "560702FB1A0E0242FB1A0E028201FB1A0E0222FB1A0E0212FB1A0E0262FB1A090252FB1A0F0202FD1B20C30D"
    "FD0F05322E302E310F"
)
SPEC_REPORT = bytes.fromhex(
    "080072640100619615011B000000000C787217006201FD711C0DFD3B61"
    "6044961564010061011B7A970400202F2F02653607426534078201652C072265320712653607626516075265"
    "560702FB1A0E0242FB1A0E028201FB1A0E0222FB1A0E0212FB1A0E0262FB1A090252FB1A0F0202FD1B20C30D"
    "FD0F05322E302E310F"
)


def long_frame(body: bytes) -> bytes:
    """A wired M-Bus long frame ``68 L L 68 body CS 16`` around ``body``."""
    return bytes((0x68, len(body), len(body), 0x68)) + body + bytes((sum(body) & 0xFF, 0x16))


def block_a(index: int) -> int:
    """Number of the format-A block (data or CRC) that frame byte ``index`` belongs to."""
    return 1 if index < 12 else 2 + (index - 12) // 18


def block_b(index: int, size: int) -> int:
    """Number of the format-B CRC block that frame byte ``index`` belongs to."""
    return 2 if size <= 128 or index < 128 else 3


def flip(data: bytes, index: int, bit: int) -> bytes:
    out = bytearray(data)
    out[index] ^= 1 << bit
    return bytes(out)


# -- CRC ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("data", "crc"),
    [
        (b"123456789", 0xC2B7),
        (bytes.fromhex("01FD1F01"), 0xCC22),
        (bytes.fromhex("01FD1F00"), 0xF147),
        (bytes.fromhex("EE449ACE010000802307"), 0xAABC),
        (b"", 0xFFFF),
    ],
)
def test_crc_check_values(twin, data, crc):
    assert twin.crc16(data) == crc
    assert twin.crc16(bytearray(data)) == crc


def test_crc_range_arguments(twin):
    data = b"xx123456789yy"
    assert twin.crc16(data, 2, 11) == 0xC2B7
    assert twin.crc16(b"xx123456789", 2) == 0xC2B7
    assert twin.crc16(data, 5, 5) == 0xFFFF
    assert twin.crc16(data, 2, None) == twin.crc16(data[2:])
    # The range is 0 <= start <= end <= len(data): no Python negative indexing, no clipping.
    for start, end in ((-9, 0), (0, -1), (0, 14), (6, 5), (14, None)):
        with pytest.raises(ValueError, match="outside"):
            twin.crc16(data, start, end)
    with pytest.raises(TypeError, match="start must be an int, not float"):
        twin.crc16(data, 1.0)


# -- frames A and B on the vectors ------------------------------------------------------------


def test_vectors_strip_both_formats(twin, vectors):
    for v in vectors:
        assert twin.strip_a(v["frame_a_bytes"]) == v["telegram_bytes"], v["source"]
        assert twin.strip_b(v["frame_b_bytes"]) == v["telegram_bytes"], v["source"]
        assert twin.strip_a(bytearray(v["frame_a_bytes"])) == v["telegram_bytes"], v["source"]
        if "as_captured" in v:
            strip = twin.strip_a if v["captured_format"] == "A" else twin.strip_b
            assert strip(bytes.fromhex(v["as_captured"])) == v["telegram_bytes"], v["source"]


def test_vectors_build_both_formats(vectors):
    for v in vectors:
        assert wire_frame.build_a(v["telegram_bytes"]) == v["frame_a_bytes"], v["source"]
        assert wire_frame.build_b(v["telegram_bytes"]) == v["frame_b_bytes"], v["source"]


def test_vectors_check_and_header(twin, vectors):
    for v in vectors:
        telegram = v["telegram_bytes"]
        assert twin.check_telegram(telegram) is telegram
        c, manufacturer, ident, version, device_type, ci = twin.parse_header(telegram)
        expect = v["expect"]
        assert (c, manufacturer_letters(manufacturer), ident, version, device_type, ci) == (
            expect["c"], expect["manufacturer"], expect["id"], expect["version"], expect["device_type"], expect["ci"],
        ), v["source"]


def test_every_flipped_bit_is_a_crc_error_naming_its_block(twin, vectors):
    for v in vectors:
        frame = v["frame_a_bytes"]
        for index in range(1, len(frame)):
            with pytest.raises(CrcError, match=rf"block {block_a(index)} \(format A\)"):
                twin.strip_a(flip(frame, index, index % 8))
        frame = v["frame_b_bytes"]
        for index in range(1, len(frame)):
            with pytest.raises(CrcError, match=rf"block {block_b(index, len(frame))} \(format B"):
                twin.strip_b(flip(frame, index, index % 8))


def test_flipped_l_field_is_a_length_error(twin, vectors):
    for v in vectors:
        for bit in range(8):
            with pytest.raises(LengthError):
                twin.strip_a(flip(v["frame_a_bytes"], 0, bit))
            with pytest.raises(LengthError):
                twin.strip_b(flip(v["frame_b_bytes"], 0, bit))


def test_truncated_or_extended_frames_are_length_errors(twin, vectors):
    for v in vectors:
        for name in ("frame_a_bytes", "frame_b_bytes", "telegram_bytes"):
            check = {"frame_a_bytes": twin.strip_a, "frame_b_bytes": twin.strip_b, "telegram_bytes": twin.check_telegram}[name]
            data = v[name]
            for cut in (1, 2, 5, len(data) // 2, len(data)):
                with pytest.raises(LengthError):
                    check(data[:-cut])
            for extra in (b"\x00", b"\xff\xff", data[-3:]):
                with pytest.raises(LengthError):
                    check(data + extra)


def test_format_b_empty_third_block_is_a_length_error(twin):
    # 129 or 130 bytes: the first CRC ends at 128, leaving no room for block 3 and its CRC.
    for size in (129, 130):
        frame = bytes((size - 1,)) + bytes(size - 1)
        with pytest.raises(LengthError, match="empty block 3"):
            twin.strip_b(frame)


def test_short_format_a_and_small_l_field(twin):
    with pytest.raises(LengthError, match="shorter than the 12-byte"):
        twin.strip_a(bytes(11))
    with pytest.raises(LengthError, match="below 10"):
        twin.strip_a(bytes((9,)) + bytes(14))
    with pytest.raises(LengthError):
        twin.parse_header(bytes(10))


# -- the report and the wired container ------------------------------------------------------


def test_spec_report_vector(twin):
    report = twin.build_report(SPEC_TELEGRAM, "62001772", -74, 0)
    assert report == SPEC_REPORT
    assert report.hex().upper() == SPEC_REPORT.hex().upper()


def test_report_without_receiver_address_and_wired_address(twin):
    report = twin.build_report(SPEC_TELEGRAM, None, None, 0xFE)
    assert report[:3] == b"\x08\xfe\x72"
    assert report[15:19] == b"\x01\xfd\x71\x00"
    assert report[19:23] == b"\x0d\xfd\x3b\x61"
    assert report[23:] == SPEC_TELEGRAM


def test_report_arguments_outside_their_domain_are_refused(twin):
    for wired in (-1, 0x100, 0x1FE, 2**70):  # a wired address is 0..255, never wrapped
        with pytest.raises(ValueError, match=r"wired_address is -?\d+, outside 0\.\.255"):
            twin.build_report(SPEC_TELEGRAM, None, None, wired)
    for address in ("", "1234", "12 34 56 78", "0102030405060708", "6200177Z"):
        with pytest.raises(ValueError, match="is not 8 digits"):
            twin.build_report(SPEC_TELEGRAM, address, None, 0)
    for args, message in (((SPEC_TELEGRAM, 62001772, None, 0), "receiver_address must be a str or None, not int"),
                          ((SPEC_TELEGRAM, None, -74.0, 0), "rssi_dbm must be an int or None, not float"),
                          ((SPEC_TELEGRAM, None, True, 0), "rssi_dbm must be an int or None, not bool"),
                          ((SPEC_TELEGRAM, None, None, None), "wired_address must be an int, not NoneType"),
                          ((SPEC_TELEGRAM.hex(), None, None, 0), "telegram must be bytes, bytearray or memoryview")):
        with pytest.raises(TypeError, match=message):
            twin.build_report(*args)


def test_report_length_limits(twin):
    with pytest.raises(LengthError):
        twin.build_report(SPEC_TELEGRAM[:10], None, None, 0)
    with pytest.raises(LengthError):
        twin.build_report(bytes((255,)) + bytes(255), None, None, 0)


def sized(telegram: bytes, n: int) -> bytes:
    """The spec telegram's link header with a payload making it ``n`` bytes long (L = n - 1)."""
    return bytes((n - 1,)) + telegram[1:11] + bytes(range(n - 11))


def test_long_telegrams_follow_the_long_form_not_a_container(twin, vectors):
    # A 0D FD 3B length byte of 0xC0 or more reads as BCD/binary to EN 13757-3 parsers, so a
    # telegram of 192+ bytes follows 0F (manufacturer data to the end) instead; the rest of
    # the report is the spec's, byte for byte.
    long_ones = [v["telegram_bytes"] for v in vectors if len(v["telegram_bytes"]) > 191]
    assert sorted({len(t) for t in long_ones}) == [202, 207, 230]
    for telegram in long_ones + [sized(SPEC_TELEGRAM, n) for n in (192, 226, 227, 255)]:
        head = b"\x08\x00\x72" + telegram[4:8] + telegram[2:4] + telegram[8:10] + bytes(4)
        report = twin.build_report(telegram, "62001772", -74, 0)
        assert report == head + b"\x0c\x78\x72\x17\x00\x62\x01\xfd\x71\x1c\x0f" + telegram
        assert twin.build_report(telegram, None, None, 0) == head + b"\x01\xfd\x71\x00\x0f" + telegram
    for n in (11, 97, 191):  # up to 0xBF the container is the spec's
        telegram = sized(SPEC_TELEGRAM, n)
        assert twin.build_report(telegram, None, -74, 0).endswith(b"\x0d\xfd\x3b" + bytes((n,)) + telegram)


def test_cmex50_long_form_and_long_container(twin, vectors):
    telegram = next(v["telegram_bytes"] for v in vectors if len(v["telegram_bytes"]) == 202)
    body = twin.build_report(telegram, "62001772", -74, 0)
    assert twin.parse_cmex50(long_frame(body)) == (body, "62001772", None, 0x1C, telegram)
    # A device's own container with a length byte of 0xC0 or more is still read as a length.
    device = body[:21] + b"\x02\x75\x01\x00" + body[21:25] + b"\x0d\xfd\x3b\xca" + telegram
    assert twin.parse_cmex50(long_frame(device)) == (device, "62001772", 1, 0x1C, telegram)
    for bad, error, message in (
        (body[:-1], LengthError, "L-field"),  # the long form's telegram runs to the end: L must say so
        (body + b"\x0f", LengthError, "L-field"),
        (body[:25] + b"\x0f" + telegram[:2] + b"\x00" + telegram[3:], HeaderError, "does not match"),
        (body[:25] + b"\x0f", LengthError, "shorter than 11"),
    ):
        with pytest.raises(error, match=message):
            twin.parse_cmex50(long_frame(bad))


def test_cmex50_round_trip_of_the_spec_report(twin):
    body, address, age, rssi, telegram = twin.parse_cmex50(long_frame(SPEC_REPORT))
    assert body == SPEC_REPORT
    assert (address, age, rssi) == ("62001772", None, 0x1C)
    assert telegram == SPEC_TELEGRAM


def test_cmex50_age_record_and_trailing_fill_byte(twin):
    head, container = SPEC_REPORT[:15], SPEC_REPORT[25:]
    for tail in (b"", b"\x0f", b"\x1f"):
        body = head + b"\x02\x75\x34\x12" + container + tail
        parsed = twin.parse_cmex50(long_frame(body))
        assert parsed == (body, None, 0x1234, None, SPEC_TELEGRAM)


def _report_with(**changes: int) -> bytearray:
    body = bytearray(SPEC_REPORT)
    for index, value in changes.items():
        body[int(index[1:])] = value
    return body


@pytest.mark.parametrize(
    ("frame", "error", "message"),
    [
        (long_frame(SPEC_REPORT)[:-2] + bytes(((sum(SPEC_REPORT) + 1) & 0xFF, 0x16)), ChecksumError, "checksum"),
        (long_frame(SPEC_REPORT)[:-1] + b"\x17", ChecksumError, "stop byte"),
        (long_frame(bytes(_report_with(b0=0x53))), HeaderError, "RSP_UD"),
        (long_frame(bytes(_report_with(b2=0x78))), HeaderError, "RSP_UD"),
        (long_frame(SPEC_REPORT[:25]), HeaderError, "no 0D FD 3B"),
        (long_frame(SPEC_REPORT[:-1]), LengthError, "runs past"),
        (long_frame(bytes(_report_with(b3=0x65))), HeaderError, "does not match"),
        (long_frame(bytes(_report_with(b9=0x02))), HeaderError, "does not match"),
        (long_frame(SPEC_REPORT + b"\x00"), HeaderError, "unexpected bytes"),
        (long_frame(SPEC_REPORT + b"\x0f\x0f"), HeaderError, "unexpected bytes"),
        (long_frame(SPEC_REPORT[:15] + b"\x0b\x13\x00\x00\x00" + SPEC_REPORT[15:]), HeaderError, "unexpected record 0x0B"),
        (long_frame(SPEC_REPORT[:12]), LengthError, "shorter than its 15-byte header"),
        (long_frame(bytes(_report_with(b29=0x62))), LengthError, "L-field"),
        (b"\x10\x5b\x00\x5b\x16", LengthError, "68 L L 68"),
        (long_frame(SPEC_REPORT)[:-3] + b"\x16", LengthError, "68 L L 68|needs"),
        (long_frame(SPEC_REPORT) + b"\x00", LengthError, "needs"),
    ],
    ids=[
        "bad-checksum", "bad-stop", "wrong-c", "wrong-ci", "no-container", "container-overrun",
        "id-mismatch", "version-mismatch", "junk-after-container", "two-bytes-after-container",
        "unknown-record", "short-body", "inner-l-field", "short-frame", "truncated", "extended",
    ],
)
def test_cmex50_errors(twin, frame, error, message):
    with pytest.raises(error, match=message):
        twin.parse_cmex50(frame)


# -- RSSI codes ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("dbm", "code"),
    [
        (None, 0), (20, 63), (-5, 63), (-6, 62), (-7, 62), (-8, 61), (-74, 28), (-100, 15),
        (-126, 2), (-127, 2), (-128, 1), (-129, 1), (-200, 1),
    ],
)
def test_rssi_code_edges(twin, dbm, code):
    assert twin.rssi_code(dbm) == code
    if code not in (0, 63) and dbm > -128:
        # The code decodes back to within 1 dB of the measured value (2 dB steps).
        assert abs((2 * code - 130) - dbm) <= 1


def test_frame_errors_share_the_root(twin):
    for call in (lambda: twin.strip_a(b""), lambda: twin.strip_b(b""), lambda: twin.parse_cmex50(b"")):
        with pytest.raises(FrameError):
            call()


# Application-layer shapes that broke M-Bus parsers (libmbus #223/#236/#237, rtl_433 #3597),
# wrapped in a correct link layer: the gateway never parses the application layer, so each
# is accepted by the link check and forwarded byte for byte (A.7 #11).
HEADER = bytes.fromhex("44961564010061011B")  # C, ELV, ID 61000164, version 1, room sensor
KNOWN_BAD_PAYLOADS = {
    "dife chain of 12": bytes.fromhex("7A01000000") + bytes((0x84,)) + b"\x80" * 11 + b"\x00\x13\x01\x02\x03\x04",
    "vif 7C with length 0x80": bytes.fromhex("7A0200000004FC80") + b"\x41" * 8,
    "lvar past the end": bytes.fromhex("7A030000000D13FF") + b"\x20" * 6,
    "lengths wrapping at 256": bytes.fromhex("7A040000000DFD3BFE0DFD3BFE") + b"\xee" * 4,
}


@pytest.mark.parametrize("name", sorted(KNOWN_BAD_PAYLOADS))
@pytest.mark.parametrize("frame_format", ["A", "B"])
def test_known_bad_application_shapes_are_forwarded_unchanged(twin, name: str, frame_format: str) -> None:
    payload = KNOWN_BAD_PAYLOADS[name]
    telegram = bytes((len(HEADER) + len(payload),)) + HEADER + payload
    frame = wire_frame.build_a(telegram) if frame_format == "A" else wire_frame.build_b(telegram)
    stripped = twin.strip_a(frame) if frame_format == "A" else twin.strip_b(frame)
    assert stripped == telegram
    report = twin.build_report(stripped, "62001772", -74, 0)
    assert report.endswith(bytes((0x0D, 0xFD, 0x3B, len(telegram))) + telegram)
    matcher = twin.Matcher(frozenset(), frozenset(), frozenset(), 0)
    verdicts, accepted = twin.check_batch([frame], twin.FORMAT_A if frame_format == "A" else twin.FORMAT_B, matcher)
    assert verdicts == b"\x00" and accepted == [telegram]
