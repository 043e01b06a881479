"""CPU cost of the daemon's receive path: cmex50 serial bytes in, store entries out, both twins.

What is timed is what the receiver thread runs: a cmex50 byte stream in 64 KiB reads through
``Pipeline.feed`` (the framer's scan: framing, link check and filters of each read in one
call, then the analyzer record and the latest-per-meter store update of every telegram).
The SQLite flush is the service's periodic business and is not timed. The figure is CPU
time of this process (``time.process_time``: what the pipeline costs, whatever else the
machine runs), the median of ``REPEATS`` runs, garbage collector on as in the daemon.

The yardstick, measured in the same run over the same frames: the C table-CRC loop
(``crc_loop`` of the compiled scanner module, CRC-16 of every frame in one C loop). The
ratio "x CRC" says how many such CRC passes one telegram costs the pipeline; it moves much
less with the machine than the absolute figures.

Telegrams: those of the repository's ``tests/vectors/telegrams.jsonl`` that fit a cmex50
frame when run from a source checkout (else the two embedded below), under ``METERS`` meter
IDs, RSSI spread over 40 dB, repeated to ``telegrams``. The filter allows the manufacturers
present and an ID allow-list of half the meters, so half the telegrams are stored and half
are rejected by a filter (and still recorded by the analyzer). The pure twin runs in a
child process with ``WMBUS_STREAM_NO_EXTENSIONS=1`` (the selection is made once per
process), on at most ``PURE_TELEGRAMS`` telegrams.
"""

from __future__ import annotations

import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from . import implementation, wire
from .core.analyzer import Analyzer
from .core.check import Settings
from .core.pipeline import Pipeline
from .io.store import Store
from .receivers import framer
from .receivers.cmex50 import encode

__all__ = ["run", "measure"]

METERS = 10_000
READ = 65536
REPEATS = 3
PURE_TELEGRAMS = 100_000
RECEIVER = "62001772"

# Two public example telegrams (spec section 5; OMS Vol. 2 Annex N.2.1), link CRCs removed.
EMBEDDED_TELEGRAMS = (
    "6044961564010061011B7A970400202F2F02653607426534078201652C072265320712653607626516075265"
    "560702FB1A0E0242FB1A0E028201FB1A0E0222FB1A0E0212FB1A0E0262FB1A090252FB1A0F0202FD1B20C30D"
    "FD0F05322E302E310F",
    "2E4493157856341233037A2A0020255923C95AAA26D1B2E7493B013EC4A6F6D3529B520EDFF0EA6DEFC99D6D69EBF3",
)


def _vector_file() -> Path | None:
    """``tests/vectors/telegrams.jsonl`` of the source checkout or of the working directory."""
    # src/wmbus_stream/bench.py -> <repo> (editable installs); an installed package finds it
    # only when run from the repository.
    for root in (Path(__file__).resolve().parents[2], Path.cwd()):
        path = root / "tests" / "vectors" / "telegrams.jsonl"
        if path.is_file():
            return path
    return None


def _telegrams() -> tuple[list[bytes], str]:
    """The telegrams that fit a cmex50 frame, and where they came from."""
    path = _vector_file()
    if path is None:
        return [bytes.fromhex(t) for t in EMBEDDED_TELEGRAMS], "2 embedded telegrams (tests/vectors not found)"
    with path.open(encoding="utf-8") as lines:
        telegrams = [bytes.fromhex(json.loads(line)["telegram"]) for line in lines if line.strip()]
    fitting = [t for t in telegrams if len(t) <= 226]  # a long frame holds 255 bytes from C on
    return fitting, f"{len(fitting)} telegrams of {path.name}"


def _stream(telegrams: int) -> tuple[list[bytes], list[bytes], Settings, str]:
    """(frames of the meters, the frames of the stream, the filter settings, the source)."""
    bases, source = _telegrams()
    meters = []
    for m in range(METERS):  # telegram m % len(bases) under meter ID m (8 BCD digits, LSB first)
        base = bases[m % len(bases)]
        meters.append(base[:4] + bytes.fromhex(f"{m:08d}")[::-1] + base[8:])
    frames = [encode(t, receiver_address=RECEIVER, rssi_dbm=-50 - 2 * (m % 20)) for m, t in enumerate(meters)]
    stream = (frames * -(-telegrams // METERS))[:telegrams]
    manufacturers = sorted({(t[2] | t[3] << 8) & wire.MANUFACTURER_MASK for t in meters})
    allowed = frozenset(int.from_bytes(t[4:8], "little") for t in meters[::2])
    settings = Settings(wire.Matcher(frozenset(manufacturers), frozenset(), allowed, 0), RECEIVER, 0)
    return frames, stream, settings, source


def _pipeline_cpu(data: bytes, settings: Settings) -> tuple[float, Pipeline, int]:
    """CPU seconds of one run of the daemon's path over ``data``; the pipeline and the meters stored."""
    with tempfile.TemporaryDirectory(prefix="wmbus-bench-") as tmp:
        store = Store.open(str(Path(tmp) / "bench.sqlite"))
        pipeline = Pipeline(settings, store, Analyzer(0.0))
        reader = framer("cmex50", receiver_address=RECEIVER)
        now = 1_767_225_600.0
        started = time.process_time()
        for pos in range(0, len(data), READ):
            pipeline.feed(reader, data[pos : pos + READ], now)
        pipeline.feed(reader, b"", now, final=True)
        cpu = time.process_time() - started
        meters = store.pending()
        store.close(flush=False)
    return cpu, pipeline, meters


def _crc_cpu(frames: list[bytes]) -> float:
    """CPU seconds per frame of the C table-CRC loop over ``frames`` (repeated to 0.2 s at least)."""
    loops, started = 0, time.process_time()
    while True:
        wire.crc_loop(frames)
        loops += 1
        cpu = time.process_time() - started
        if cpu >= 0.2:
            return cpu / (loops * len(frames))


def measure(telegrams: int) -> dict[str, Any]:
    """The pipeline's CPU per telegram with the twins this process selected (and the CRC yardstick)."""
    _frames, stream, settings, _source = _stream(telegrams)
    data = b"".join(stream)
    runs = [_pipeline_cpu(data, settings) for _ in range(REPEATS)]
    cpu = statistics.median(r[0] for r in runs)
    pipeline, meters = runs[0][1], runs[0][2]
    result: dict[str, Any] = {
        "implementation": implementation(),
        "telegrams": len(stream),
        "ok": pipeline.counts["ok"],
        "filtered": pipeline.counts["read"] - pipeline.counts["ok"],
        "meters_stored": meters,
        "cpu_seconds": [round(r[0], 4) for r in runs],
        "us_per_telegram": round(cpu / len(stream) * 1e6, 3),
        "telegrams_per_cpu_s": round(len(stream) / cpu) if cpu > 0 else None,
    }
    if implementation() == "compiled":
        result["crc_loop_us_per_frame"] = round(_crc_cpu(stream[:METERS]) * 1e6, 4)
    return result


def _pure_child(telegrams: int) -> dict[str, Any]:
    """``measure`` in a child process on the pure twins."""
    code = "import json, sys; from wmbus_stream import bench; print(json.dumps(bench.measure(int(sys.argv[1]))))"
    env = dict(os.environ, WMBUS_STREAM_NO_EXTENSIONS="1")
    env.pop("WMBUS_STREAM_REQUIRE_EXTENSIONS", None)
    out = subprocess.run([sys.executable, "-c", code, str(telegrams)], env=env, check=True,
                         capture_output=True, text=True)
    result: dict[str, Any] = json.loads(out.stdout)
    return result


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as info:
            for line in info:
                if line.startswith(("model name", "Model", "Hardware")):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _load() -> str | None:
    try:
        return " ".join(f"{x:.2f}" for x in os.getloadavg())
    except OSError:
        return None


def machine() -> dict[str, Any]:
    """What a figure was measured on: CPU model, cores, load average, Python, architecture."""
    return {"cpu": _cpu_model(), "cores": os.cpu_count(), "load_average": _load(),
            "python": platform.python_version(), "machine": platform.machine()}


def run(frames: int = 200_000, as_json: bool = False) -> dict[str, Any]:
    """CPU per telegram of the daemon's path, both twins, and the ratio to the C CRC loop; a table unless ``as_json``."""
    meter_frames, stream, settings, source = _stream(frames)
    twins: dict[str, Any] = {}
    if implementation() == "compiled":
        twins["compiled"] = measure(frames)
    else:
        twins["compiled"] = {"unavailable": "pure twins selected (WMBUS_STREAM_NO_EXTENSIONS or not built)"}
    twins["pure"] = measure(min(frames, PURE_TELEGRAMS)) if implementation() == "pure" else _pure_child(
        min(frames, PURE_TELEGRAMS))
    crc = twins["compiled"].get("crc_loop_us_per_frame")
    for row in twins.values():
        if crc and "us_per_telegram" in row:
            row["x_crc_loop"] = round(row["us_per_telegram"] / crc, 1)
    result: dict[str, Any] = {
        "benchmark": "daemon receive path: cmex50 bytes in 64 KiB reads -> Pipeline.feed -> analyzer and store",
        "frames": len(stream),
        "meters": METERS,
        "mean_frame_bytes": round(sum(map(len, meter_frames)) / len(meter_frames), 1),
        "source": source,
        "accepted_share": round(twins["pure"]["ok"] / twins["pure"]["telegrams"], 3),
        "crc_loop_us_per_frame": crc,
        "twins": twins,
        **machine(),
    }
    if not as_json:
        print(_table(result))
    return result


def _table(result: dict[str, Any]) -> str:
    """The result as a few aligned lines for people."""
    lines = [
        f"wmbus-stream bench: {result['benchmark']}",
        f"  {result['frames']:,} telegrams of {result['meters']:,} meters ({result['source']}), mean frame"
        f" {result['mean_frame_bytes']} bytes; {result['accepted_share']:.0%} accepted, the rest filtered",
        f"  CPU: {result['cpu']} ({result['cores']} cores, {result['machine']}), Python {result['python']},"
        f" load average {result['load_average']}",
        "  CPU time of this process (median of 3 runs); the pure twin in a child process",
        "",
        f"  {'path':<32} {'telegrams':>10} {'CPU us/telegram':>16} {'per CPU s':>11} {'x CRC loop':>11}",
    ]
    for name, row in result["twins"].items():
        if "unavailable" in row:
            lines.append(f"  {'pipeline, ' + name:<32} {row['unavailable']}")
            continue
        ratio = row.get("x_crc_loop")
        lines.append(f"  {'pipeline, ' + name:<32} {row['telegrams']:>10,} {row['us_per_telegram']:>16.3f}"
                     f" {row['telegrams_per_cpu_s']:>11,} {ratio if ratio is not None else '-':>11}")
    crc = result["crc_loop_us_per_frame"]
    if crc:
        lines.append(f"  {'C table-CRC loop, same frames':<32} {result['meters']:>10,} {crc:>16.4f}"
                     f" {round(1 / crc * 1e6):>11,} {1.0:>11}")
    else:
        lines.append("  C table-CRC loop: needs the compiled twin")
    return "\n".join(lines)


if __name__ == "__main__":
    run()
