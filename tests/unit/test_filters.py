"""Filter truth table (spec section 4) through ``wire.filters.matcher`` and the selected twin.

Each of the four filters is tried absent, passing and rejecting, alone and in every
combination; the expected verdict is derived from the rule "the first non-empty filter that
rejects, in the order manufacturer, device type, ID, radio mode", not from the code.
"""

from __future__ import annotations

import itertools

import pytest

from wmbus_stream import wire
from wmbus_stream.wire import filters, modes
from wmbus_stream.wire.frame import build_a
from wmbus_stream.wire.header import header, manufacturer_code

SPEC_TELEGRAM = bytes.fromhex(
    "6044961564010061011B7A970400202F2F02653607426534078201652C072265320712653607626516075265"
    "560702FB1A0E0242FB1A0E028201FB1A0E0222FB1A0E0212FB1A0E0262FB1A090252FB1A0F0202FD1B20C30D"
    "FD0F05322E302E310F"
)


def telegram_with(manufacturer: str = "ELV", meter_id: str = "61000164", device_type: int = 0x1B) -> bytes:
    """The spec telegram with another manufacturer, ID or device type in its link header."""
    out = bytearray(SPEC_TELEGRAM)
    out[2:4] = manufacturer_code(manufacturer).to_bytes(2, "little")
    out[4:8] = bytes.fromhex(meter_id)[::-1]
    out[9] = device_type
    return bytes(out)


def verdicts(matcher: wire.Matcher, telegram: bytes, mode: int) -> set[int]:
    """The verdict by ``Matcher.verdict`` and by ``check_batch`` on the telegram and its A frame."""
    by_telegram, _ = wire.check_batch([telegram], wire.FORMAT_NONE, matcher, mode)
    by_frame, accepted = wire.check_batch([build_a(telegram)], wire.FORMAT_A, matcher, mode)
    assert (accepted[0] == telegram) == (by_frame[0] == wire.OK)
    return {matcher.verdict(telegram, mode), by_telegram[0], by_frame[0]}


# (setting, rejects?) per filter; None/[] = no filter. The telegram is ELV, 61000164, 0x1B, T1.
MANUFACTURERS = [([], False), (["elv", "ABB"], False), (["ABB", "KAM"], True)]
DEVICE_TYPES = [([], False), ([0x07, 0x1B], False), ([0x07], True)]
IDS = [([], False), (["61000164", "05047157"], False), (["61000165"], True)]
RADIO_MODES = [(None, False), ("T1_C1A", False), ("C1A_C1B", True)]
ORDER = (wire.FILTER_MANUFACTURER, wire.FILTER_DEVICE_TYPE, wire.FILTER_ID, wire.FILTER_MODE)


@pytest.mark.parametrize(
    "settings",
    list(itertools.product(MANUFACTURERS, DEVICE_TYPES, IDS, RADIO_MODES)),
    ids=lambda s: "-".join("rejects" if rejects else ("pass" if value else "none") for value, rejects in s),
)
def test_truth_table(settings):
    (man, man_rejects), (dev, dev_rejects), (ids, id_rejects), (radio, mode_rejects) = settings
    matcher = filters.matcher(man, dev, ids, radio)
    rejecting = [code for code, rejects in zip(ORDER, (man_rejects, dev_rejects, id_rejects, mode_rejects), strict=True) if rejects]
    expected = rejecting[0] if rejecting else wire.OK
    assert verdicts(matcher, SPEC_TELEGRAM, modes.T1) == {expected}


def test_result_names():
    names = dict(zip(ORDER, ("filter.manufacturer", "filter.device.type", "filter.device.id", "radio.mode"), strict=True))
    for code, name in names.items():
        assert wire.RESULT_NAMES[code] == name
    assert wire.RESULT_NAMES[wire.OK] == "ok"
    assert wire.RESULT_NAMES[wire.CRC] == "crc"
    assert wire.RESULT_NAMES[wire.LENGTH] == "length"


def test_empty_lists_mean_no_filter():
    telegrams = [telegram_with(m, i, d) for m, i, d in (("ABB", "00000001", 0), ("ZZZ", "99999999", 0xFF))]
    for matcher in (filters.matcher(), filters.matcher([], [], [], None), filters.matcher([], [], [], "")):
        for telegram in telegrams:
            for mode in (0, modes.S1, modes.T1, modes.C1A, modes.C1B):
                assert verdicts(matcher, telegram, mode) == {wire.OK}


@pytest.mark.parametrize("letters", ["ELV", "elv", "Elv", "eLv", " ELV "])
def test_manufacturer_letters_are_case_insensitive(letters):
    assert verdicts(filters.matcher([letters]), SPEC_TELEGRAM, 0) == {wire.OK}
    assert verdicts(filters.matcher([letters]), telegram_with("ELS"), 0) == {wire.FILTER_MANUFACTURER}


def test_device_type_filter():
    matcher = filters.matcher(device_types=[0x07, 0x16])
    assert verdicts(matcher, telegram_with(device_type=0x07), 0) == {wire.OK}
    assert verdicts(matcher, telegram_with(device_type=0x16), 0) == {wire.OK}
    assert verdicts(matcher, telegram_with(device_type=0x06), 0) == {wire.FILTER_DEVICE_TYPE}
    assert verdicts(matcher, telegram_with(device_type=0x17), 0) == {wire.FILTER_DEVICE_TYPE}


def test_id_compare_keeps_leading_zeros():
    matcher = filters.matcher(ids=["05047157", "00000164"])
    assert verdicts(matcher, telegram_with(meter_id="05047157"), 0) == {wire.OK}
    assert verdicts(matcher, telegram_with(meter_id="00000164"), 0) == {wire.OK}
    # The same digits without (or with moved) zeros are other meters.
    for other in ("50471570", "50470157", "16400000", "00001640", "05047158"):
        assert verdicts(matcher, telegram_with(meter_id=other), 0) == {wire.FILTER_ID}
    with pytest.raises(ValueError):
        filters.matcher(ids=["5047157"])


@pytest.mark.parametrize(
    ("setting", "mode", "passes"),
    [
        ("T1", 0, True),               # mode not reported: passes whatever the setting
        ("C1A_C1B_WIDE", 0, True),
        ("T1", modes.T1, True),
        ("T1", modes.S1, False),
        ("T1", modes.C1A, False),
        ("S1", modes.S1, True),
        ("S1", modes.T1, False),
        ("C1A", modes.mode_mask("C1"), True),   # "C1" with unknown frame format is C1A|C1B
        ("C1B", modes.mode_mask("C1"), True),
        ("T1", modes.mode_mask("C1"), False),
        ("C1A", modes.C1B, False),
        ("C1B", modes.C1A, False),
        ("T1_C1A", modes.C1A, True),
        ("T1_C1A", modes.C1B, False),
        ("T1_C1B", modes.C1B, True),
        ("T1_C1A_C1B", modes.C1B, True),
        ("C1A_C1B", modes.T1, False),
        ("C1A_WIDE", modes.C1A, True),
        ("C1B_WIDE", modes.C1A, False),
        ("c1a_c1b_wide", modes.C1B, True),
    ],
)
def test_radio_mode_masks(setting, mode, passes):
    expected = wire.OK if passes else wire.FILTER_MODE
    assert verdicts(filters.matcher(radio_mode=setting), SPEC_TELEGRAM, mode) == {expected}


def test_every_radio_mode_setting_is_accepted():
    for setting in modes.RADIO_MODES:
        mask = modes.setting_mask(setting)
        assert mask
        for mode in (modes.S1, modes.T1, modes.C1A, modes.C1B):
            expected = wire.OK if mode & mask else wire.FILTER_MODE
            assert verdicts(filters.matcher(radio_mode=setting), SPEC_TELEGRAM, mode) == {expected}
    with pytest.raises(ValueError):
        filters.matcher(radio_mode="T2")


def test_invalid_manufacturer_letters():
    for letters in ("EL", "ELVX", "E1V", ""):
        with pytest.raises(ValueError):
            filters.matcher([letters])


def test_crc_and_length_come_before_filters():
    matcher = filters.matcher(["ABB"])
    frame = bytearray(build_a(SPEC_TELEGRAM))
    frame[20] ^= 0x01
    codes, accepted = wire.check_batch([bytes(frame), build_a(SPEC_TELEGRAM)[:-1]], wire.FORMAT_A, matcher, 0)
    assert list(codes) == [wire.CRC, wire.LENGTH]
    assert accepted == [None, None]


def test_manufacturer_filter_reads_the_letters_from_15_bits(vectors):
    # Apator sends M-field 14 86 (0x8614): bit 15 set, letters APT, as decode shows them.
    apator = next(v["telegram_bytes"] for v in vectors if v["telegram_bytes"][2:4] == b"\x14\x86")
    assert header(apator).manufacturer == "APT"
    assert verdicts(filters.matcher(["APT"]), apator, 0) == {wire.OK}
    assert verdicts(filters.matcher(["apt", "ELV"]), apator, 0) == {wire.OK}
    assert verdicts(filters.matcher(["ELV"]), apator, 0) == {wire.FILTER_MANUFACTURER}
    # The same letters without bit 15 are the same manufacturer for the filter.
    plain = apator[:3] + bytes((apator[3] & 0x7F,)) + apator[4:]
    assert verdicts(filters.matcher(["APT"]), plain, 0) == {wire.OK}
