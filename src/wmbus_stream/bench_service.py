"""Service-level benchmarks: the receive pipeline, report + push, store memory, idle CPU.

``pipeline``: a cmex50 byte stream of many meters through the real framer, check, filters,
analyzer and store (in memory; flushing is timed apart), in 64 KiB reads as the receiver
thread does. ``push``: snapshot, report body and one chunked POST of N meters to a local
server that reads the body, then the acknowledgement. ``memory``: tracemalloc of the store
per meter beyond the telegram bytes. ``idle``: CPU used by ``wmbus-stream run`` with a
silent receiver. ``sweep``: the store's put, flush, snapshot and acknowledge at several meter
counts, in CPU seconds of this process, with the database and WAL sizes and the memory the
pipeline, analyzer and store keep per meter. Figures go to docs/performance.md; no test
asserts on them.
"""

from __future__ import annotations

import gc
import os
import subprocess
import sys
import tempfile
import threading
import time
import tracemalloc
from collections.abc import Iterable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

from . import implementation
from .core import report
from .core.analyzer import Analyzer
from .core.check import Settings
from .core.pipeline import Pipeline
from .io.push import push as http_push
from .io.store import Store
from .receivers import framer
from .receivers.cmex50 import encode
from .wire.filters import matcher

__all__ = ["idle", "memory", "pipeline", "push", "sweep", "sweep_lines"]

SPEC_TELEGRAM = bytes.fromhex(
    "6044961564010061011B7A970400202F2F02653607426534078201652C072265320712653607626516075265"
    "560702FB1A0E0242FB1A0E028201FB1A0E0222FB1A0E0212FB1A0E0262FB1A090252FB1A0F0202FD1B20C30D"
    "FD0F05322E302E310F"
)


def _telegram(meter: int) -> bytes:
    """The spec's telegram under meter ID ``meter`` (8 decimal digits, BCD)."""
    ident = bytes.fromhex(f"{meter:08d}")[::-1]
    return SPEC_TELEGRAM[:4] + ident + SPEC_TELEGRAM[8:]


def pipeline(telegrams: int = 300_000, meters: int = 10_000) -> dict[str, Any]:
    """Telegrams per second from a cmex50 byte stream into the store."""
    frames = [encode(_telegram(m), receiver_address="62001772", rssi_dbm=-70 - m % 40) for m in range(meters)]
    stream = b"".join(frames) * max(1, -(-telegrams // meters))
    count = len(frames) * max(1, -(-telegrams // meters))
    with tempfile.TemporaryDirectory() as tmp:
        store = Store.open(Path(tmp) / "bench.sqlite")
        settings = Settings(matcher(("ELV", "KAM"), (), (), "T1_C1A_C1B"), "62001772", 0)
        pipe = Pipeline(settings, store, Analyzer(time.time()))
        reader = framer("cmex50")
        gc.disable()
        started, cpu_started = time.perf_counter(), time.process_time()
        for pos in range(0, len(stream), 65536):
            pipe.feed(reader, stream[pos : pos + 65536], time.time())
        elapsed = time.perf_counter() - started
        cpu = time.process_time() - cpu_started  # this process only (all its threads): steady on a busy machine
        gc.enable()
        flush_started = time.perf_counter()
        store.flush()
        flush = time.perf_counter() - flush_started
        pending = store.pending()
        store.close()
    return {
        "implementation": implementation(),
        "telegrams": count,
        "meters": pending,
        "ok": pipe.counts["ok"],
        "telegrams_per_s": round(count / elapsed),
        "telegrams_per_cpu_s": round(count / cpu) if cpu > 0 else None,
        "flush_seconds": round(flush, 3),
    }


class _Sink(BaseHTTPRequestHandler):
    """Reads a chunked body completely and answers 204: a HES that costs nothing."""

    protocol_version = "HTTP/1.1"

    def do_POST(self) -> None:
        size = 0
        while True:
            line = self.rfile.readline()
            length = int(line.split(b";")[0], 16)
            if length == 0:
                self.rfile.readline()
                break
            size += len(self.rfile.read(length))
            self.rfile.readline()
        self.server.received = size  # type: ignore[attr-defined]
        self.send_response(204)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *args: object) -> None:
        pass


def push(meters: int = 100_000) -> dict[str, Any]:
    """Seconds for snapshot + report + chunked POST + acknowledge of ``meters`` meters."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Sink)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{server.server_address[1]}/"
    tz = ZoneInfo("Europe/Stockholm")
    with tempfile.TemporaryDirectory() as tmp:
        store = Store.open(Path(tmp) / "bench.sqlite")
        now = time.time()
        for m in range(meters):
            t = _telegram(m)
            store.put(t[2:10], now, encode(t)[4:-2])
        store.flush()
        started = time.perf_counter()
        snapshot = store.snapshot()
        result = http_push(url, lambda: report.body(snapshot, "00000161", tz), deadline=None)
        store.acknowledge(snapshot)
        elapsed = time.perf_counter() - started
        store.close()
    server.shutdown()
    return {
        "meters": meters,
        "ok": result.ok,
        "body_bytes": server.received,  # type: ignore[attr-defined]
        "seconds": round(elapsed, 3),
    }


def memory(meters: int = 100_000) -> dict[str, Any]:
    """Bytes the store holds per meter beyond the telegram bytes (keys made beforehand, as the pipeline makes them)."""
    telegrams = [encode(_telegram(m))[4:-2] for m in range(meters)]
    keys = [t[3:7] + t[7:9] + t[9:11] for t in telegrams]  # distinct 8-byte keys
    with tempfile.TemporaryDirectory() as tmp:
        store = Store.open(Path(tmp) / "bench.sqlite")
        gc.collect()
        tracemalloc.start()
        before = tracemalloc.get_traced_memory()[0]
        now = time.time()
        for key, t in zip(keys, telegrams, strict=True):
            store.put(key, now, t)
        store.flush()  # the dirty set is emptied, as in steady state
        used = tracemalloc.get_traced_memory()[0] - before
        tracemalloc.stop()
        store.close()
    telegram_bytes = sum(len(t) for t in telegrams)
    return {"meters": meters, "bytes_per_meter_beyond_telegram": round((used - telegram_bytes) / meters)}


def idle(seconds: float = 20.0) -> dict[str, Any]:
    """CPU share of one core used by ``wmbus-stream run`` with a receiver that sends nothing."""
    with tempfile.TemporaryDirectory() as tmp:
        cfg = Path(tmp) / "stream.cfg"
        cfg.write_text(f"receiver.port=loop://\nstate.directory={tmp}/state\n"
                       "receiving.server.url=http://127.0.0.1:9/\n")
        proc = subprocess.Popen([sys.executable, "-m", "wmbus_stream", "run", "--config", str(cfg)],
                                stderr=subprocess.DEVNULL)
        time.sleep(3)  # start-up is not idle time
        before = _cpu_seconds(proc.pid)
        time.sleep(seconds)
        used = _cpu_seconds(proc.pid) - before
        proc.terminate()
        proc.wait(20)
    return {"seconds": seconds, "cpu_percent_of_one_core": round(100 * used / seconds, 2)}


def _cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _file_size(path: Path) -> int:
    try:
        return path.stat().st_size
    except FileNotFoundError:
        return 0


def _cpu(started: float) -> float:
    return round(time.process_time() - started, 3)


def sweep(sizes: Iterable[int]) -> list[dict[str, Any]]:
    """Per meter count: store CPU seconds, database and WAL bytes, and pipeline memory per meter."""
    return [_sweep_one(n) for n in sizes]


def _sweep_one(meters: int) -> dict[str, Any]:
    telegrams = [encode(_telegram(m))[4:-2] for m in range(meters)]
    keys = [t[3:11] for t in telegrams]  # the link addresses, as the pipeline cuts them
    result: dict[str, Any] = {"meters": meters}
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "bench.sqlite"
        wal = Path(f"{path}-wal")
        store = Store.open(path)
        now = time.time()
        gc.collect()
        gc.disable()
        try:
            started = time.process_time()
            for key, telegram in zip(keys, telegrams, strict=True):
                store.put(key, now, telegram)
            result["put_cpu_s"] = _cpu(started)
            started, wall = time.process_time(), time.perf_counter()
            store.flush()
            result["flush_cpu_s"], result["flush_wall_s"] = _cpu(started), round(time.perf_counter() - wall, 3)
            result["db_bytes"], result["wal_bytes"] = _file_size(path), _file_size(wal)
            started = time.process_time()
            snapshot = store.snapshot()
            result["snapshot_cpu_s"] = _cpu(started)
            started, wall = time.process_time(), time.perf_counter()
            store.acknowledge(snapshot)
            result["acknowledge_cpu_s"], result["acknowledge_wall_s"] = (
                _cpu(started), round(time.perf_counter() - wall, 3))
            result["db_bytes_after_ack"], result["wal_bytes_after_ack"] = _file_size(path), _file_size(wal)
        finally:
            gc.enable()
        del snapshot
        store.close()
    del telegrams, keys
    result["bytes_per_meter"] = _pipeline_memory(meters)
    return result


def _pipeline_memory(meters: int) -> int:
    """tracemalloc: what the pipeline, analyzer and store keep per meter after a flush, beyond the telegrams.

    Every meter's telegram comes in a read of its own, so no two meters share an arrival time
    object (the worst case; a burst read shares one ``now`` between its telegrams).
    """
    frames = [encode(_telegram(m), receiver_address="62001772", rssi_dbm=-70 - m % 40) for m in range(meters)]
    with tempfile.TemporaryDirectory() as tmp:
        store = Store.open(Path(tmp) / "bench.sqlite")
        settings = Settings(matcher((), (), (), "T1_C1A_C1B"), "62001772", 0)
        pipe = Pipeline(settings, store, Analyzer(time.time(), max_meters=meters))
        reader = framer("cmex50")
        gc.collect()
        tracemalloc.start()
        try:
            before = tracemalloc.get_traced_memory()[0]
            for frame in frames:  # one telegram per read, as a radio channel delivers them
                pipe.feed(reader, frame, time.time())
            store.flush()  # the dirty set is emptied, as in steady state
            gc.collect()
            used = tracemalloc.get_traced_memory()[0] - before
        finally:
            tracemalloc.stop()
        telegram_bytes = sum(len(row[3]) for row in store.snapshot())
        assert store.pending() == meters, (store.pending(), meters)
        store.close(flush=False)
    return round((used - telegram_bytes) / meters)


def sweep_lines(rows: Iterable[dict[str, Any]]) -> list[str]:
    """The sweep as a table for a terminal."""
    lines = ["meters      put   flush  (wall)  snapshot     ack   (wall)   db MB  wal MB  db after  wal after  B/meter",
             "            CPU s of this process; sizes after the flush and after the acknowledge"]
    for r in rows:
        lines.append(
            f"{r['meters']:>9,} {r['put_cpu_s']:>6.3f} {r['flush_cpu_s']:>7.3f} {r['flush_wall_s']:>7.3f}"
            f" {r['snapshot_cpu_s']:>9.3f} {r['acknowledge_cpu_s']:>7.3f} {r['acknowledge_wall_s']:>8.3f}"
            f" {r['db_bytes'] / 1e6:>7.1f} {r['wal_bytes'] / 1e6:>7.1f} {r['db_bytes_after_ack'] / 1e6:>9.1f}"
            f" {r['wal_bytes_after_ack'] / 1e6:>10.1f} {r['bytes_per_meter']:>8}")
    return lines
