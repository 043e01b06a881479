#!/usr/bin/env python3
"""Coverage-guided fuzzing (atheris) of everything that reads radio bytes; opt-in, not in CI.

A.7 #10 asks for an hour a night on the frame parser. Each input picks a receiver
protocol with its first byte and is fed to that framer in chunks whose sizes come from the
input; every frame it yields goes through the link check and the report builder of BOTH
wire twins, which must agree (same bytes, or errors of the same type). Anything else that
escapes (an exception outside the FrameError family, a disagreement, a framer holding more
than its ``max_pending``) is a finding: atheris stops and writes the input to a
``crash-*`` file, which belongs in tests/unit as a regression case.

    pip install atheris
    python scripts/fuzz.py -max_total_time=3600 /var/tmp/wmbus-corpus   # corpus folder kept between runs
"""

from __future__ import annotations

import sys

import atheris

with atheris.instrument_imports():
    from wmbus_stream.errors import FrameError
    from wmbus_stream.receivers import framer, names
    from wmbus_stream.core.received import FORMAT_AUTO
    from wmbus_stream.wire import FORMAT_A, FORMAT_B, FORMAT_NONE, _cwire, _pywire

    PROTOCOLS = [name for name in names() if name != "simulator"]
    for name in PROTOCOLS:  # framer modules are imported on first use: here, to be instrumented
        framer(name)


def twin_result(twin, frame: bytes, frame_format: int) -> tuple[str, bytes | None]:
    """What one twin makes of a frame: ('ok', report telegram) or (error type name, None)."""
    try:
        if frame_format == FORMAT_A:
            telegram = twin.strip_a(frame)
        elif frame_format == FORMAT_B:
            telegram = twin.strip_b(frame)
        elif frame_format == FORMAT_AUTO:
            try:
                telegram = twin.strip_b(frame) if len(frame) == frame[0] + 1 else twin.strip_a(frame)
            except FrameError:
                telegram = twin.check_telegram(frame)
        else:
            telegram = twin.check_telegram(frame)
        twin.parse_header(telegram)
        return "ok", twin.build_report(telegram, "62001772", -74, 0)
    except FrameError as exc:
        return type(exc).__name__, None


def one_input(data: bytes) -> None:
    if not data:
        return
    source = atheris.FuzzedDataProvider(data)
    protocol = PROTOCOLS[source.ConsumeIntInRange(0, len(PROTOCOLS) - 1)]
    reader = framer(protocol)
    items = []
    while source.remaining_bytes():
        chunk = source.ConsumeBytes(source.ConsumeIntInRange(1, 300))
        items += reader.feed(chunk)
        if len(reader.pending) > reader.max_pending:
            raise AssertionError(f"{protocol}: {len(reader.pending)} bytes held, more than {reader.max_pending}")
    items += reader.flush()
    for item in items:
        if item.error is not None or not item.data:
            continue
        frame_format = item.frame_format if item.frame_format in (FORMAT_A, FORMAT_B, FORMAT_AUTO) else FORMAT_NONE
        pure, compiled = twin_result(_pywire, item.data, frame_format), twin_result(_cwire, item.data, frame_format)
        if pure != compiled:
            raise AssertionError(f"{protocol}: the twins disagree on {item.data.hex()}: pure {pure}, compiled {compiled}")


def main() -> None:
    atheris.Setup(sys.argv, one_input)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
