"""Throughput of the wire core's hot path, compiled twin against pure twin, in one run.

What is timed: ``check_batch`` on format-A frames (every CRC checked, telegrams stripped,
filters applied, accepted telegrams returned) with a realistic non-empty filter, and
``crc16`` called once per frame (the CRC alone, Python call included).

Frames: the format-A frames of the repository's ``tests/vectors/telegrams.jsonl`` when run
from a source checkout (or from the checkout's folder); otherwise frames built from telegrams
embedded here (the spec's telegram and the OMS example under many meter IDs). They are
repeated to at least ``frames``. The filter allows the manufacturers present, an ID
allow-list of 1,000 meters that holds about half of the meters present, and radio mode
T1_C1A_C1B (telegrams in T1).

Each figure is the best of several repeats with the garbage collector paused (as timeit
does). The pure twin is some 60 times slower, so it is timed on a slice of at most
``PURE_FRAMES`` frames to keep the run short; rates are per second either way.
"""

from __future__ import annotations

import gc
import importlib
import json
import os
import platform
import time
from collections.abc import Callable
from pathlib import Path
from types import ModuleType
from typing import Any

from .wire import FORMAT_A, frame, modes
from .wire import _pywire as pure

__all__ = ["run"]

PURE_FRAMES = 20_000
REPEATS_COMPILED = 7
REPEATS_PURE = 3

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
    """The telegrams to frame, and where they came from."""
    path = _vector_file()
    if path is not None:
        with path.open(encoding="utf-8") as lines:
            telegrams = [bytes.fromhex(json.loads(line)["telegram"]) for line in lines if line.strip()]
        return telegrams, f"{len(telegrams)} telegrams from {path.name}"
    telegrams = []
    for text in EMBEDDED_TELEGRAMS:
        base = bytes.fromhex(text)
        for n in range(100):  # the same telegram from 100 meters (IDs are BCD, LSB first)
            ident = bytes.fromhex(f"{12340000 + n * 37:08d}")[::-1]
            telegrams.append(base[:4] + ident + base[8:])
    return telegrams, f"{len(telegrams)} embedded telegrams (tests/vectors not found)"


def _filter_sets(telegrams: list[bytes]) -> tuple[frozenset[int], frozenset[int], frozenset[int], int]:
    """Matcher arguments: manufacturers present, 1,000 IDs (half the meters present), T1/C1."""
    headers = [pure.parse_header(t) for t in telegrams]
    manufacturers = frozenset(h[1] for h in headers)
    present = sorted({int(h[2], 16) for h in headers})
    ids = set(present[::2])
    synthetic = 0x90000000
    while len(ids) < 1000:  # other meters of the installation, never heard here
        ids.add(synthetic)
        synthetic += 0x11
    return manufacturers, frozenset(), frozenset(ids), modes.setting_mask("T1_C1A_C1B")


def _best(function: Callable[[], Any], repeats: int) -> float:
    """Shortest wall time of ``repeats`` calls, garbage collector paused."""
    best = float("inf")
    enabled = gc.isenabled()
    gc.disable()
    try:
        for _ in range(repeats):
            start = time.perf_counter()
            function()
            best = min(best, time.perf_counter() - start)
    finally:
        if enabled:
            gc.enable()
    return best


def _measure(twin: ModuleType, frames: list[bytes], matcher_args: tuple, repeats: int) -> dict[str, Any]:
    matcher = twin.Matcher(*matcher_args)
    codes, _ = twin.check_batch(frames, FORMAT_A, matcher, modes.T1)
    crc16 = twin.crc16
    size = sum(len(f) for f in frames)

    def crc_only() -> None:
        for f in frames:
            crc16(f)

    batch_s = _best(lambda: twin.check_batch(frames, FORMAT_A, matcher, modes.T1), repeats)
    crc_s = _best(crc_only, repeats)
    return {
        "frames": len(frames),
        "accepted": codes.count(0),
        "check_batch_per_s": round(len(frames) / batch_s),
        "crc16_per_s": round(len(frames) / crc_s),
        "crc16_mb_per_s": round(size / crc_s / 1e6, 1),
        "repeats": repeats,
    }


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as info:
            for line in info:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _compiled_twin() -> tuple[ModuleType | None, str | None]:
    if os.environ.get("WMBUS_STREAM_NO_EXTENSIONS", "").strip().lower() in {"1", "true", "yes", "on"}:
        return None, "disabled by WMBUS_STREAM_NO_EXTENSIONS"
    try:
        return importlib.import_module("wmbus_stream.wire._cwire"), None
    except ImportError as exc:
        return None, f"not built ({exc})"


def run(frames: int = 200_000, as_json: bool = False) -> dict:
    """Time check_batch and crc16 for both twins; print a table unless ``as_json``."""
    telegrams, source = _telegrams()
    base = [frame.build_a(t) for t in telegrams]
    batch = base * max(1, -(-frames // len(base)))
    matcher_args = _filter_sets(telegrams)
    compiled, why_not = _compiled_twin()
    twins: dict[str, Any] = {}
    if compiled is not None:
        twins["compiled"] = _measure(compiled, batch, matcher_args, REPEATS_COMPILED)
    else:
        twins["compiled"] = {"unavailable": why_not}
    twins["pure"] = _measure(pure, batch[:PURE_FRAMES], matcher_args, REPEATS_PURE)
    result: dict[str, Any] = {
        "benchmark": "check_batch (format A, CRC + strip + filter) and crc16 per frame",
        "frames": len(batch),
        "mean_frame_bytes": round(sum(len(f) for f in batch) / len(batch), 1),
        "source": source,
        "filter": {
            "manufacturers": len(matcher_args[0]),
            "device_types": 0,
            "ids": len(matcher_args[2]),
            "radio_mode": "T1_C1A_C1B",
            "telegram_mode": "T1",
        },
        "twins": twins,
        "python": platform.python_version(),
        "machine": platform.machine(),
        "cpu": _cpu_model(),
        "cores": os.cpu_count(),
    }
    if "check_batch_per_s" in twins["compiled"]:
        result["speedup"] = round(twins["compiled"]["check_batch_per_s"] / twins["pure"]["check_batch_per_s"], 1)
    if not as_json:
        print(_table(result))
    return result


def _table(result: dict[str, Any]) -> str:
    """The result as a few aligned lines for people."""
    f = result["filter"]
    lines = [
        f"wmbus-stream bench: {result['benchmark']}",
        f"  {result['frames']:,} frames, mean {result['mean_frame_bytes']} bytes, {result['source']}",
        f"  filter: {f['manufacturers']} manufacturers, {f['ids']:,} IDs, radio mode {f['radio_mode']}"
        f" (telegrams in {f['telegram_mode']})",
        f"  {result['cpu']}, {result['cores']} cores, Python {result['python']}",
        "",
        f"  {'twin':<9} {'frames':>9} {'accepted':>9} {'check_batch/s':>14} {'crc16/s':>12} {'crc MB/s':>9}",
    ]
    for name, row in result["twins"].items():
        if "unavailable" in row:
            lines.append(f"  {name:<9} {row['unavailable']}")
            continue
        lines.append(
            f"  {name:<9} {row['frames']:>9,} {row['accepted']:>9,} {row['check_batch_per_s']:>14,}"
            f" {row['crc16_per_s']:>12,} {row['crc16_mb_per_s']:>9}"
        )
    if "speedup" in result:
        lines.append(f"\n  compiled check_batch is {result['speedup']}x the pure twin")
    return "\n".join(lines)


if __name__ == "__main__":
    run()
