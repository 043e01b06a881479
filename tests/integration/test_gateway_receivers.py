"""Receiver side of the running gateway: every protocol through a pty, unplug/replug, line noise.

Each test starts the real gateway process on a pty whose slave is reached through a
symlink, pushes to the reference HES every second, and checks that every report line the
HES stored equals the line computed from the telegrams written to the pty, byte for byte.
"""

from __future__ import annotations

import random
import time
from pathlib import Path

import pytest

from gwkit import (
    PROTOCOLS,
    RSSI,
    SPEC_REPORT_HEX,
    SPEC_TELEGRAM,
    assert_report,
    pairs,
    report_key,
    telegram_report_key,
    meter_id,
    variant,
    vector_telegrams,
    wait_for,
    with_id,
)
from wmbus_stream.receivers import framer, rtlwmbus
from wmbus_stream.receivers import hex as hexproto
from wmbus_stream.wire.frame import build_a, build_b

pytestmark = pytest.mark.integration


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS")


@pytest.mark.parametrize("name", list(PROTOCOLS))
def test_each_receiver_protocol_is_pushed_byte_exact(name, config, pty_receiver, hes, gateway) -> None:
    proto = PROTOCOLS[name]
    telegrams = vector_telegrams(40)
    assert telegrams[0] == SPEC_TELEGRAM
    config.write({"receiver.protocol": name, "receiver.port": str(pty_receiver.link), "receiving.server.url": hes.url})
    since = time.time()
    gw = gateway(config)
    status = gw.wait_connected()
    assert status["receiver"]["protocol"] == name
    setup = framer(name).setup_commands("T1_C1A_C1B")
    if setup:  # iM871A / AMB8465: the gateway sets the radio mode when it opens the port
        assert pty_receiver.read(timeout=3, until=len(setup)) == setup

    stream = b"".join(proto.encode(t) for t in telegrams)
    rejected = None
    if name == "rtlwmbus":  # a telegram in a mode outside radio.mode=T1_C1A_C1B is not accepted
        rejected = with_id(SPEC_TELEGRAM, 99999999)
        stream += rtlwmbus.encode(rejected, mode="S1", time=time.time())
    pty_receiver.write(stream)
    gw.wait_ok(len(telegrams))
    wait_for(lambda: len(hes.lines()) >= len(telegrams), "every meter at the HES", 10, context=gw.tail)
    status = gw.wait_status(lambda s: s["meters_pending"] == 0 and not s["push_in_flight"], "nothing pending")

    lines = hes.lines()
    assert_report(lines, pairs(proto, telegrams), since=since)
    spec_line = next(line for line in lines if line.split(b";")[1] == b"61000164")
    if proto.has_rssi:  # the spec's own expected bytes, independent of the helpers
        assert spec_line.split(b";")[4] == SPEC_REPORT_HEX.encode() + b"\n"
    assert status["telegrams"]["ok"] == len(telegrams)
    assert status["receiver"]["bad_frames"] == 0
    if rejected is not None:
        assert status["telegrams"]["radio.mode"] == 1
        assert meter_id(rejected).encode() not in {line.split(b";")[1] for line in lines}
    assert status["pushes"]["failed"] == 0 and status["last_push"]["ok"]


def test_unplug_and_replug_loses_nothing_and_keeps_the_process(config, pty_receiver, hes, gateway) -> None:
    telegrams = vector_telegrams(30)
    before, after = telegrams[:15], telegrams[15:]
    proto = PROTOCOLS["cmex50"]
    # receiver.reconnect.seconds left at its default (2 s): the product setting is what is tested.
    config.write({"receiver.port": str(pty_receiver.link), "receiving.server.url": hes.url,
                  "receiver.reconnect.seconds": None})
    since = time.time()
    gw = gateway(config)
    gw.wait_connected()
    pty_receiver.write(b"".join(proto.encode(t) for t in before))
    gw.wait_ok(len(before))
    # Half a frame on the line when the cable goes: it must not be glued to later bytes.
    torn = proto.encode(with_id(SPEC_TELEGRAM, 12345678))
    read_before = gw.status()["receiver"]["bytes_read"]
    pty_receiver.write(torn[: len(torn) // 2])
    gw.wait_status(lambda s: s["receiver"]["bytes_read"] >= read_before + len(torn) // 2, "the half frame read")

    mark = gw.mark()
    pty_receiver.unplug()
    gw.wait_status(lambda s: s["receiver"]["state"] == "disconnected", "receiver seen as lost", timeout=5)
    # Every telegram accepted before the unplug reaches the HES while the receiver is away.
    wait_for(lambda: len(hes.lines()) >= len(before), "the pre-unplug telegrams at the HES", 10, context=gw.tail)
    # Stay away for a few push slots (and a few reconnect attempts).
    wait_for(lambda: len(gw.find("push: nothing pending", after=mark)) >= 3, "three push slots while away", 10)
    assert gw.status()["receiver"]["state"] == "disconnected"

    pty_receiver.plug()
    gw.wait_status(lambda s: s["receiver"]["state"] == "connected", "reconnect after replug", timeout=5)
    while_away = [line for line in gw.log()[mark:] if "wmbus_stream.receiver" in line and "WARNING" in line]
    assert len(while_away) <= 2, f"receiver warnings while away (at most: lost + not available):\n{while_away}"
    assert pty_receiver.names[0] != pty_receiver.names[1]  # another tty name behind the same link

    newer = variant(before[0], 1)
    pty_receiver.write(b"".join(proto.encode(t) for t in [*after, newer]))
    gw.wait_ok(len(telegrams) + 1)
    wait_for(lambda: len(hes.lines()) >= len(telegrams) + 1, "every telegram at the HES", 10, context=gw.tail)
    status = gw.wait_status(lambda s: s["meters_pending"] == 0, "nothing pending")

    assert gw.alive()  # the same process (pid) served the whole test
    assert status["receiver"]["reconnects"] == 1
    assert status["receiver"]["bad_frames"] + status["receiver"]["skipped_bytes"] > 0  # the torn half
    lines = hes.lines()
    first, second = lines[: len(before)], lines[len(before):]
    assert_report(first, pairs(proto, before), since=since)
    assert_report(second, pairs(proto, [*after, newer]), since=since)
    assert telegram_report_key(with_id(SPEC_TELEGRAM, 12345678)) not in {report_key(line) for line in lines}


def test_silent_receiver_raises_one_alarm_per_silent_period_and_is_reset(config, pty_receiver, hes, gateway) -> None:
    """A.7 #3: a receiver that stays open but sends nothing is flagged once, reopened, and recovers."""
    proto = PROTOCOLS["cmex50"]
    telegrams = vector_telegrams(2)
    config.write({"receiver.port": str(pty_receiver.link), "receiving.server.url": hes.url,
                  "receiver.silence.minutes": "0.02"})  # 1.2 s
    gw = gateway(config)
    gw.wait_connected()
    pty_receiver.write(proto.encode(telegrams[0]))
    gw.wait_ok(1)
    status = gw.wait_status(lambda s: s["receiver"]["silent"], "the silent-receiver alarm")
    assert status["receiver"]["silence_alarms"] == 1 and status["receiver"]["last_error"] == "no telegrams for 1.2 s"
    # Several silence limits later: reopened (reset) each time, still one alarm for this period.
    gw.wait_status(lambda s: s["receiver"]["reconnects"] >= 3, "reopens while silent")
    alarms = gw.find("silent: no telegrams for 1.2 s; reopening it")
    assert len(alarms) == 1, alarms
    pty_receiver.write(proto.encode(telegrams[1]))
    status = gw.wait_status(lambda s: s["telegrams"].get("ok") == 2 and not s["receiver"]["silent"], "data again")
    assert gw.find("delivers telegrams again")
    assert status["receiver"]["silence_alarms"] == 1
    assert gw.alive()
    wait_for(lambda: len(hes.lines()) == 2, "both telegrams at the HES", 10, context=gw.tail)


def test_a_deaf_receiver_that_answers_its_setup_stays_silent_with_one_alarm(config, pty_receiver, hes, gateway) -> None:
    """An iM871A that confirms every SET_CONFIG but hears no meter is silent, not revived by its answers."""
    import os
    import select
    import threading

    from wmbus_stream.receivers import im871a

    answer = im871a.frame(im871a.DEVMGMT, 0x04, b"\x00")  # SET_CONFIG_RSP: OK
    stop = threading.Event()

    def confirm_every_request() -> None:
        while not stop.is_set():
            readable, _, _ = select.select([pty_receiver.master], [], [], 0.1)
            if readable:
                try:
                    if os.read(pty_receiver.master, 4096):
                        os.write(pty_receiver.master, answer)
                except (BlockingIOError, OSError):
                    pass

    responder = threading.Thread(target=confirm_every_request, daemon=True)
    responder.start()
    try:
        config.write({"receiver.protocol": "im871a", "receiver.port": str(pty_receiver.link),
                      "receiving.server.url": hes.url, "receiver.silence.minutes": "0.01"})  # 0.6 s
        gw = gateway(config)
        gw.wait_connected()
        status = gw.wait_status(lambda s: s["receiver"]["reconnects"] >= 4, "several resets while deaf")
        assert status["receiver"]["silent"] and status["receiver"]["silence_alarms"] == 1
        assert status["receiver"]["bytes_read"] > 0  # the confirmations did arrive
        assert len(gw.find("silent: no telegrams")) == 1 and not gw.find("again")
    finally:
        stop.set()
        responder.join(2)


def test_line_noise_and_torn_frames_are_counted_and_every_valid_frame_is_pushed(config, pty_receiver, hes, gateway) -> None:
    """A.7 #4 and #5: 10 MB of random bytes around 100 valid frames, bad checksums, a torn frame."""
    rng = random.Random(4)
    telegrams = vector_telegrams(100)
    proto = PROTOCOLS["cmex50"]
    config.write({"receiver.port": str(pty_receiver.link), "receiving.server.url": hes.url})
    since = time.time()
    gw = gateway(config)
    gw.wait_connected()
    rss_before = rss_kib(gw.pid)

    broken = []
    for n in range(5):  # complete frames with a wrong checksum: counted, never pushed
        frame = bytearray(proto.encode(with_id(SPEC_TELEGRAM, 90000000 + n)))
        frame[-2] ^= 0x5A
        broken.append(bytes(frame))
    noise_total = 10 * 1024 * 1024
    pieces = [proto.encode(t) for t in telegrams] + broken
    rng.shuffle(pieces)
    step = noise_total // len(pieces)
    for piece in pieces:
        pty_receiver.write(rng.randbytes(step) + piece)
    status = gw.wait_ok(len(telegrams), timeout=30)

    # A.7 #5: half a frame, silence on the line, then a valid frame.
    torn_telegram = with_id(SPEC_TELEGRAM, 77777777)
    torn = proto.encode(torn_telegram)
    read = status["receiver"]["bytes_read"]
    pty_receiver.write(torn[:40])
    gw.wait_status(lambda s: s["receiver"]["bytes_read"] >= read + 40, "the torn half read")
    time.sleep(1.0)  # the silence is the stimulus
    last = variant(SPEC_TELEGRAM, 9)
    pty_receiver.write(proto.encode(last))
    gw.wait_ok(len(telegrams) + 1)

    wait_for(lambda: len(hes.lines()) >= len(telegrams), "every valid meter at the HES", 15, context=gw.tail)
    status = gw.wait_status(lambda s: s["meters_pending"] == 0, "nothing pending")
    lines = hes.lines()
    # The spec meter's newer reading replaces its first one (pushed already, or never).
    latest = {report_key(line): line for line in lines}
    assert_report(list(latest.values()), pairs(proto, [last, *telegrams[1:]]), since=since)
    never = {telegram_report_key(with_id(SPEC_TELEGRAM, n)) for n in (77777777, *range(90000000, 90000005))}
    assert never.isdisjoint(report_key(line) for line in lines)

    receiver = status["receiver"]
    assert receiver["skipped_bytes"] > noise_total // 2  # garbage skipped and counted
    assert receiver["bad_frames"] >= len(broken)  # the bad checksums, plus the torn frame's
    counted_broken = sum(v for k, v in status["telegrams"].items() if k not in ("read", "ok"))
    assert counted_broken >= len(broken) + 1
    assert rss_kib(gw.pid) - rss_before < 5 * 1024, "memory grew by 5 MB or more reading noise"
    assert not gw.find(r"Traceback|ERROR")


@pytest.mark.parametrize("where", ["first", "middle", "last"])
def test_bad_link_crc_is_counted_and_never_pushed(where, config, pty_receiver, hes, gateway) -> None:
    """A.7 #7 through the hex receiver: format A frames with a CRC error in one block."""
    good = vector_telegrams(6)
    long_one = next(t for t in vector_telegrams() if len(t) > 60)
    damaged = with_id(long_one, 55555555)
    frame = bytearray(build_a(damaged))
    index = {"first": 5, "middle": 12 + 16 + 3, "last": len(frame) - 3}[where]
    frame[index] ^= 0x01
    config.write({"receiver.protocol": "hex", "receiver.port": str(pty_receiver.link), "receiving.server.url": hes.url})
    since = time.time()
    gw = gateway(config)
    gw.wait_connected()
    proto = PROTOCOLS["hex"]
    pty_receiver.write(hexproto.encode(bytes(frame), rssi_dbm=RSSI) + b"".join(proto.encode(t) for t in good))
    gw.wait_ok(len(good))
    status = gw.wait_status(lambda s: s["telegrams"].get("crc", 0) == 1, "the CRC error counted")
    wait_for(lambda: len(hes.lines()) >= len(good), "the good meters at the HES", 10, context=gw.tail)
    gw.wait_status(lambda s: s["meters_pending"] == 0, "nothing pending")
    assert_report(hes.lines(), pairs(proto, good), since=since)
    assert status["telegrams"]["read"] == len(good) + 1


@pytest.mark.xfail(strict=True, reason="hex receiver (wire.frame.strip_any) takes a format-B frame with a bad CRC "
                                       "for a CRC-less telegram and forwards it, CRC bytes included")
def test_bad_format_b_crc_is_not_pushed(config, pty_receiver, hes, gateway) -> None:
    damaged = with_id(vector_telegrams(2)[1], 55555556)
    frame = bytearray(build_b(damaged))
    frame[20] ^= 0x01
    good = SPEC_TELEGRAM
    config.write({"receiver.protocol": "hex", "receiver.port": str(pty_receiver.link), "receiving.server.url": hes.url})
    gw = gateway(config)
    gw.wait_connected()
    pty_receiver.write(hexproto.encode(bytes(frame)) + PROTOCOLS["hex"].encode(good))
    gw.wait_status(lambda s: s["telegrams"].get("read", 0) == 2, "both lines read")
    wait_for(lambda: hes.lines(), "a push", 10, context=gw.tail)
    gw.wait_status(lambda s: s["meters_pending"] == 0, "nothing pending")
    assert [line.split(b";")[1] for line in hes.lines()] == [meter_id(good).encode()]


def test_status_command_reports_counters_as_json(config, pty_receiver, hes, gateway) -> None:
    """``wmbus-stream status --config FILE`` prints the running gateway's counters."""
    import json

    from gwkit import run_cli

    config.write({"receiver.protocol": "hex", "receiver.port": str(pty_receiver.link), "receiving.server.url": hes.url})
    gw = gateway(config)
    gw.wait_connected()
    pty_receiver.write(b"not hex at all\n" + b"zz\n" + PROTOCOLS["hex"].encode(SPEC_TELEGRAM) + b"ABCDEF\n")
    gw.wait_ok(1)
    wait_for(lambda: hes.lines(), "the push", 10, context=gw.tail)
    done = run_cli("status", "--config", str(config.path))
    assert done.returncode == 0, done.stderr
    status = json.loads(done.stdout)
    assert status["receiver"]["state"] == "connected" and status["receiver"]["port"] == str(pty_receiver.link)
    assert status["telegrams"]["read"] == 4 and status["telegrams"]["ok"] == 1
    assert status["receiver"]["bad_frames"] == 2  # "not hex at all", "zz"
    assert sum(v for k, v in status["telegrams"].items() if k not in ("read", "ok")) == 3
    assert status["implementation"] == ("pure" if _no_extensions() else "compiled")
    assert status["gateway_serial"] == "00000161" and status["meters_pending"] == 0


def _no_extensions() -> bool:
    import os

    return os.environ.get("WMBUS_STREAM_NO_EXTENSIONS", "").strip().lower() in {"1", "true", "yes", "on"}
