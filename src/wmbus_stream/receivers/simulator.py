"""A seeded generator of realistic receiver traffic, for demos and tests without hardware.

Strategy: a population of meters is drawn once from the seed (manufacturer, device type,
radio mode, send interval, mean signal level, plain or encrypted). Traffic is a merge of
the meters' send times kept in a heap: each meter sends at its own interval (8 s .. 15 min)
with +-10 % jitter, as OMS meters do to avoid repeated collisions. Each telegram has the
short transport header (CI 0x7A) with the meter's access number counting up, then either an
AES-looking payload (security mode 5, random blocks) or ``2F 2F`` and a few DIF/VIF records
whose values grow with time. The telegram is put on the line exactly as the chosen
receiver protocol would (the module-level ``encode`` of each framer), so the simulator
drives the real framers end to end.

A share ``broken_ratio`` of the transmissions is damaged the way each receiver shows it:
on serial receivers (cmex50, im871a, amb8465) a flipped bit or a frame cut short on the
line; in ``hex`` captures (on-air frames with link CRCs) a flipped bit or a cut frame that
the CRC check catches; rtl-wmbus reports its own CRC failure in the line.

Invariants: the same seed and parameters give the same population and the same bytes; the
generator never sleeps (time is a parameter: ``events(start)`` yields ``(time, bytes)``
with non-decreasing times from ``start`` on, without end). Separate random
streams (population, traffic, damage, damage position) keep the telegrams and which of
them are damaged the same whatever the protocol.
"""

from __future__ import annotations

import argparse
import heapq
import os
import random
import sys
import time as _time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

from ..errors import ConfigError, Problem
from ..wire.frame import build_a, build_b
from ..wire.header import manufacturer_code
from . import Framer, amb8465, cmex50, im871a, rtlwmbus
from . import hex as hexline

__all__ = ["Simulator", "Meter", "Kind", "Transmission", "KINDS", "PROTOCOLS", "telegram", "main"]

PROTOCOLS = ("cmex50", "hex", "im871a", "amb8465", "rtlwmbus")

SND_NR = 0x44
CI_SHORT = 0x7A


@dataclass(frozen=True, slots=True)
class Kind:
    """A kind of meter: who makes it, what it measures and how it sends."""

    manufacturer: str
    device_type: int
    version: int
    modes: tuple[str, ...]
    intervals: tuple[float, ...]
    encrypted: float  # share of such meters that encrypt their payload
    records: str  # which plain-text records it sends (see ``_records``)
    weight: int  # how common it is in a building


# A plausible mix for multi-dwelling buildings: heat cost allocators and water meters
# dominate; room sensors, heat, gas and electricity meters fill in.
KINDS: tuple[Kind, ...] = (
    Kind("KAM", 0x16, 0x1B, ("C1A",), (16.0,), 0.95, "water", 10),
    Kind("KAM", 0x04, 0x34, ("C1A",), (16.0, 96.0), 0.95, "heat", 6),
    Kind("ELV", 0x1B, 0x20, ("T1",), (60.0, 300.0, 900.0), 0.0, "room", 5),
    Kind("DME", 0x07, 0x76, ("T1", "C1A"), (8.0, 32.0, 120.0), 0.5, "water", 8),
    Kind("TCH", 0x08, 0x69, ("T1",), (240.0,), 1.0, "hca", 12),
    Kind("LAS", 0x1B, 0x07, ("T1",), (60.0, 300.0), 0.0, "room", 3),
    Kind("LAS", 0x02, 0x0B, ("T1",), (300.0,), 0.0, "electricity", 2),
    Kind("ZRI", 0x04, 0x88, ("T1", "C1B"), (120.0, 900.0), 0.8, "heat", 6),
    Kind("ZRI", 0x07, 0x01, ("T1", "C1B"), (120.0, 900.0), 0.8, "water", 4),
    Kind("SON", 0x08, 0x16, ("T1", "C1A"), (120.0, 240.0), 0.3, "hca", 8),
    Kind("APA", 0x07, 0x14, ("C1B", "T1"), (32.0, 120.0), 1.0, "water", 5),
    Kind("APA", 0x02, 0x02, ("C1A",), (900.0,), 0.5, "electricity", 2),
    Kind("BMT", 0x1B, 0x10, ("T1",), (120.0, 600.0), 0.0, "room", 3),
    Kind("BMT", 0x07, 0x13, ("T1",), (60.0, 300.0), 0.5, "water", 4),
    Kind("QDS", 0x08, 0x35, ("T1", "C1A"), (240.0, 900.0), 0.5, "hca", 8),
    Kind("ELS", 0x03, 0x33, ("T1",), (300.0, 900.0), 1.0, "gas", 3),
)


@dataclass(frozen=True, slots=True)
class Meter:
    """One simulated meter and everything fixed about it."""

    ident: str  # 8 digits as printed on the meter
    kind: Kind
    mode: str  # T1, C1A or C1B
    interval: float  # nominal seconds between telegrams
    phase: float  # seconds after the start of its first telegram
    rssi_mean: float  # mean signal level at the receiver, dBm
    blocks: int  # encrypted 16-byte blocks, 0 = plain records
    status: int  # TPL status byte (0x04 = battery low)
    access0: int  # first access number
    base: int  # meter reading at the start
    rate: float  # reading increase per hour

    @property
    def address(self) -> bytes:
        """Link address bytes: manufacturer (2, LE), ID (4, BCD LE), version, device type."""
        return (manufacturer_code(self.kind.manufacturer).to_bytes(2, "little")
                + bytes.fromhex(self.ident)[::-1] + bytes((self.kind.version, self.kind.device_type)))


@dataclass(frozen=True, slots=True)
class Transmission:
    """One telegram as sent: when, by whom, how strong, whether damaged, the line bytes."""

    time: float
    meter: Meter
    telegram: bytes  # CRC-less, from the L-field, as the meter meant it
    rssi_dbm: int
    broken: str | None  # None, "flip" (one bit) or "cut" (frame cut short)
    line: bytes  # bytes the receiver puts on the line


def _bcd(value: int, size: int) -> bytes:
    digits = f"{value % 10 ** (2 * size):0{2 * size}d}"
    return bytes.fromhex(digits)[::-1]


def _records(meter: Meter, hours: float, rng: random.Random) -> bytes:
    """Plain DIF/VIF records of the meter's kind at ``hours`` after the start."""
    reading = int(meter.base + meter.rate * hours)
    kind = meter.kind.records
    if kind == "water":  # volume in litres (VIF 0x13), error flags (VIF FD 17)
        return b"\x0c\x13" + _bcd(reading, 4) + b"\x02\xfd\x17\x00\x00"
    if kind == "gas":  # volume in litres
        return b"\x0c\x13" + _bcd(reading, 4)
    if kind == "heat":  # energy kWh (VIF 0x06), volume 10 L (0x14), flow/return 0.1 degC (0x5A/0x5E)
        flow = rng.randrange(550, 700)
        back = flow - rng.randrange(150, 250)
        return (b"\x0c\x06" + _bcd(reading, 4) + b"\x0c\x14" + _bcd(reading * 3, 4)
                + b"\x0a\x5a" + _bcd(flow, 2) + b"\x0a\x5e" + _bcd(back, 2))
    if kind == "hca":  # consumption units now (VIF 0x6E) and at the last due date (storage 1)
        return b"\x0b\x6e" + _bcd(reading, 3) + b"\x4b\x6e" + _bcd(meter.base, 3)
    if kind == "room":  # temperature 0.01 degC (VIF 0x65), humidity 0.1 % (FB 1A)
        temp = 2000 + int(200 * rng.random()) - 100
        humidity = rng.randrange(350, 650)
        return b"\x02\x65" + temp.to_bytes(2, "little") + b"\x02\xfb\x1a" + humidity.to_bytes(2, "little")
    # electricity: energy 10 Wh (VIF 0x04), power W (VIF 0x2B)
    return b"\x0c\x04" + _bcd(reading, 4) + b"\x02\x2b" + rng.randrange(0, 3000).to_bytes(2, "little")


def telegram(meter: Meter, access: int, hours: float, rng: random.Random) -> bytes:
    """The CRC-less telegram ``meter`` sends with access number ``access``."""
    if meter.blocks:
        config = 0x0500 | meter.blocks << 4  # security mode 5, number of encrypted blocks
        payload = rng.randbytes(16 * meter.blocks)
    else:
        config = 0x0000
        payload = b"\x2f\x2f" + _records(meter, hours, rng)
    body = (bytes((SND_NR,)) + meter.address + bytes((CI_SHORT, access & 0xFF, meter.status))
            + config.to_bytes(2, "little") + payload)
    return bytes((len(body),)) + body


class Simulator:
    """A seeded population of meters and the receiver bytes their traffic produces."""

    def __init__(self, meters: int = 300, seed: int = 1, broken_ratio: float = 0.01, protocol: str = "cmex50",
                 receiver_address: str | None = None) -> None:
        if protocol not in PROTOCOLS:
            raise ConfigError(Problem("simulator.protocol", str(protocol), "one of " + ", ".join(PROTOCOLS)))
        if not 0.0 <= broken_ratio <= 1.0:
            raise ConfigError(Problem("simulator.broken.ratio", str(broken_ratio), "a number from 0 to 1"))
        if meters < 0:
            raise ConfigError(Problem("simulator.meters", str(meters), "0 or more"))
        self.seed = seed
        self.broken_ratio = broken_ratio
        self.protocol = protocol
        self.receiver_address = receiver_address
        self.population: tuple[Meter, ...] = tuple(self._population(meters, random.Random(f"{seed}:population")))

    @staticmethod
    def _population(count: int, rng: random.Random) -> Iterator[Meter]:
        weights = [kind.weight for kind in KINDS]
        seen: set[str] = set()
        for _ in range(count):
            kind = rng.choices(KINDS, weights)[0]
            ident = f"{rng.randrange(10**8):08d}"
            while ident in seen:
                ident = f"{rng.randrange(10**8):08d}"
            seen.add(ident)
            interval = rng.choice(kind.intervals)
            yield Meter(
                ident=ident,
                kind=kind,
                mode=rng.choice(kind.modes),
                interval=interval,
                phase=rng.uniform(0.0, interval),
                rssi_mean=rng.uniform(-105.0, -45.0),
                blocks=rng.randint(1, 4) if rng.random() < kind.encrypted else 0,
                status=0x04 if rng.random() < 0.03 else 0x00,
                access0=rng.randrange(256),
                base=rng.randrange(100, 500_000),
                rate=rng.uniform(0.0, 20.0),
            )

    def framer(self) -> Framer:
        """A framer for this simulator's line format (the real one, from the registry)."""
        from . import framer

        return framer(self.protocol, receiver_address=self.receiver_address)

    def transmissions(self, start: float) -> Iterator[Transmission]:
        """Every transmission from ``start`` on, in time order, without end."""
        traffic = random.Random(f"{self.seed}:traffic")
        damage = random.Random(f"{self.seed}:damage")  # which transmissions, how
        where = random.Random(f"{self.seed}:where")  # which bit or byte (draws vary by protocol)
        meters = self.population
        access = [meter.access0 for meter in meters]
        heap = [(start + meter.phase, index) for index, meter in enumerate(meters)]
        heapq.heapify(heap)
        while heap:
            when, index = heapq.heappop(heap)
            meter = meters[index]
            sent = telegram(meter, access[index], (when - start) / 3600.0, traffic)
            access[index] = (access[index] + 1) & 0xFF
            rssi = max(-110, min(-40, round(traffic.gauss(meter.rssi_mean, 3.0))))
            hit, how = damage.random(), damage.random()
            broken = None if hit >= self.broken_ratio else "cut" if how < 0.3 else "flip"
            line = self._line(meter, sent, rssi, when, broken, where)
            yield Transmission(when, meter, sent, rssi, broken, line)
            heapq.heappush(heap, (when + meter.interval * traffic.uniform(0.9, 1.1), index))

    def events(self, start: float) -> Iterator[tuple[float, bytes]]:
        """``(time, bytes on the line)`` from ``start`` on, in time order, without end."""
        for sent in self.transmissions(start):
            yield sent.time, sent.line

    def _line(self, meter: Meter, sent: bytes, rssi: int, when: float, broken: str | None,
              rng: random.Random) -> bytes:
        protocol = self.protocol
        if protocol == "rtlwmbus":
            # rtl-wmbus checks the link CRCs itself and says so in the line.
            mode = "C1" if meter.mode.startswith("C1") else meter.mode
            relative = (rssi + 170, rssi + 150)  # receiver-relative numbers, not dBm
            return rtlwmbus.encode(sent, mode=mode, time=when, rssi=relative, crc_ok=broken is None)
        if protocol == "hex":
            frame = build_b(sent) if meter.mode == "C1B" else build_a(sent)
            return hexline.encode(_damaged(frame, broken, rng), rssi_dbm=rssi)
        if protocol == "im871a":
            line = im871a.encode(sent, rssi=im871a.rssi_raw(rssi))
        elif protocol == "amb8465":
            line = amb8465.encode(sent, rssi=amb8465.rssi_raw(rssi))
        else:
            line = cmex50.encode(sent, receiver_address=self.receiver_address, rssi_dbm=rssi)
        return _damaged(line, broken, rng)


def _damaged(data: bytes, broken: str | None, rng: random.Random) -> bytes:
    """``data`` with one bit flipped or cut short, as ``broken`` says."""
    if broken is None or len(data) < 2:
        return data
    if broken == "cut":
        return data[: rng.randrange(1, len(data))]
    out = bytearray(data)
    out[rng.randrange(len(out))] ^= 1 << rng.randrange(8)
    return bytes(out)


def main(argv: Sequence[str] | None = None) -> int:
    """Write a capture of simulated traffic to stdout."""
    parser = argparse.ArgumentParser(
        prog="python -m wmbus_stream.receivers.simulator",
        description="Write simulated receiver traffic (the bytes a receiver puts on its serial line) to stdout.",
    )
    parser.add_argument("--meters", type=int, default=300, help="number of meters (default 300)")
    parser.add_argument("--seconds", type=float, default=60.0, help="length of the capture in seconds (default 60)")
    parser.add_argument("--protocol", choices=PROTOCOLS, default="cmex50", help="line format (default cmex50)")
    parser.add_argument("--seed", type=int, default=1, help="random seed (default 1)")
    parser.add_argument("--broken-ratio", type=float, default=0.01, help="share of damaged frames (default 0.01)")
    parser.add_argument("--receiver-address", default=None, help="8-digit receiver address in cmex50 frames")
    parser.add_argument("--start", type=float, default=None,
                        help="start time, epoch seconds (default 2026-01-01 00:00:00 UTC, or now with --realtime)")
    parser.add_argument("--realtime", action="store_true", help="pace the output at the simulated times")
    args = parser.parse_args(argv)
    try:
        sim = Simulator(args.meters, args.seed, args.broken_ratio, args.protocol, args.receiver_address)
    except ConfigError as exc:
        parser.error(str(exc))
    start = args.start if args.start is not None else (_time.time() if args.realtime else 1_767_225_600.0)
    end = start + args.seconds
    out = sys.stdout.buffer
    wall0 = _time.monotonic()
    try:
        for when, data in sim.events(start):
            if when >= end:
                break
            if args.realtime:
                delay = (when - start) - (_time.monotonic() - wall0)
                if delay > 0:
                    _time.sleep(delay)
            out.write(data)
            if args.realtime:
                out.flush()
        out.flush()
    except BrokenPipeError:
        # The reader went away (e.g. ``| head``): not an error. Point stdout at devnull so
        # the interpreter's final flush does not complain either.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 0
    return 0


if __name__ == "__main__":
    sys.exit(main())
