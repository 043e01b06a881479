"""CPU and wall time of the reference HES per reading, end to end: a real ``wmbus-stream receive`` and real HTTP.

For each twin (compiled, then pure with ``WMBUS_STREAM_NO_EXTENSIONS=1``) the benchmark
starts ``wmbus-stream receive --db FILE`` as a child process (``--db`` is passed through, so
a ``postgresql://`` URL works too; by default a fresh SQLite file per twin), POSTs a report
of ``lines`` distinct readings chunked in 64 KiB pieces from this process, and reads the
receiver's CPU time (utime + stime of ``/proc/PID/stat``) before and after: what parsing,
validating and committing cost the receiver, whatever else the machine runs. Then the same
report again (a retry: nothing new), and a report near the body limit (``--max-body-mib``)
after which the receiver's peak RSS (``VmHWM``) is read. The wall time is from the first
byte sent to the answer. Every run uses readings no earlier run stored (a random salt in the
telegrams), so a shared database still sees new readings.
"""

from __future__ import annotations

import http.client
import os
import re
import secrets
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from . import wire
from .bench import machine

__all__ = ["run", "report_body"]

LINES = 100_000
MAX_BODY_MIB = 64
BIG_MIB = 60
PIECE = 64 * 1024
GATEWAY = "00000161"

# The public example telegram of spec section 5 (OMS Vol. 2 Annex N.2.1), link CRCs removed.
TELEGRAM = bytes.fromhex(
    "6044961564010061011B7A970400202F2F02653607426534078201652C072265320712653607626516075265560702FB1A0E"
    "0242FB1A0E028201FB1A0E0222FB1A0E0212FB1A0E0262FB1A090252FB1A0F0202FD1B20C30DFD0F05322E302E310F"
)


def report_body(lines: int, salt: bytes, first: int = 0) -> bytes:
    """A report of ``lines`` distinct readings: meter IDs first.., the salt in the payload, receiver and RSSI records."""
    out = []
    for i in range(first, first + lines):
        ident = f"{i % 100_000_000:08d}"
        telegram = TELEGRAM[:4] + bytes.fromhex(ident)[::-1] + TELEGRAM[8:14] + salt + i.to_bytes(4, "little") + \
            TELEGRAM[14 + len(salt) + 4:]
        wired = wire.build_report(telegram, "62001772", -74 + i % 40, 0)
        out.append(f"{GATEWAY};{ident};2026-11-24 10:{i // 60 % 60:02d}:{i % 60:02d};00;{wired.hex().upper()}\n")
    return "".join(out).encode("ascii")


def _cpu_seconds(pid: int) -> float:
    """utime + stime of a process, in seconds (``/proc/PID/stat`` fields 14 and 15)."""
    with open(f"/proc/{pid}/stat", encoding="ascii") as stat:
        fields = stat.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _status_kib(pid: int, name: str) -> int:
    """A ``VmHWM``/``VmRSS``-style line of ``/proc/PID/status`` in KiB."""
    with open(f"/proc/{pid}/status", encoding="ascii") as status:
        for line in status:
            if line.startswith(name + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"no {name} in /proc/{pid}/status")


class _Receiver:
    """A ``wmbus-stream receive`` child process on 127.0.0.1 and an ephemeral port."""

    def __init__(self, db: str, max_body_mib: int, pure: bool) -> None:
        env = dict(os.environ)
        env.pop("WMBUS_STREAM_NO_EXTENSIONS" if not pure else "WMBUS_STREAM_REQUIRE_EXTENSIONS", None)
        env["WMBUS_STREAM_NO_EXTENSIONS" if pure else "WMBUS_STREAM_REQUIRE_EXTENSIONS"] = "1"
        self.process = subprocess.Popen(
            [sys.executable, "-m", "wmbus_stream", "receive", "--listen", "127.0.0.1:0", "--no-auth", "--db", db,
             "--max-body-mib", str(max_body_mib), "--ok-status", "200"],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
        assert self.process.stdout is not None
        first = self.process.stdout.readline()
        found = re.search(r"https?://127\.0\.0\.1:(\d+)", first)
        if not found:
            self.process.kill()
            rest, _ = self.process.communicate()
            raise RuntimeError(f"wmbus-stream receive did not start: {first.strip()} {rest.strip()}")
        self.port = int(found.group(1))
        # Drain the per-POST log so the child never blocks on a full pipe.
        self._drain = threading.Thread(target=self.process.stdout.read, daemon=True)
        self._drain.start()

    def post(self, body: bytes) -> dict[str, Any]:
        """POST a body chunked; the receiver's CPU seconds and the wall seconds to the answer."""
        pid = self.process.pid
        view = memoryview(body)
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=300)
        try:
            cpu = _cpu_seconds(pid)
            start = time.perf_counter()
            conn.request("POST", "/", body=(view[i:i + PIECE] for i in range(0, len(body), PIECE)),
                         headers={"Content-Type": "text/plain; charset=us-ascii"}, encode_chunked=True)
            response = conn.getresponse()
            text = response.read().decode("utf-8", "replace")
            wall = time.perf_counter() - start
            cpu = _cpu_seconds(pid) - cpu
        finally:
            conn.close()
        if response.status != 200:
            raise RuntimeError(f"receiver answered {response.status}: {text.strip()}")
        found = re.match(r"OK (\d+) lines, (\d+) new readings", text)
        if not found:
            raise RuntimeError(f"unexpected answer {text!r}")
        return {"lines": int(found.group(1)), "new_readings": int(found.group(2)), "cpu_seconds": round(cpu, 3),
                "wall_seconds": round(wall, 3), "body_bytes": len(body)}

    def peak_rss_kib(self) -> int:
        return _status_kib(self.process.pid, "VmHWM")

    def stop(self) -> int:
        """SIGTERM, and the exit status once it has stopped."""
        self.process.terminate()
        try:
            code = self.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.process.kill()
            code = self.process.wait()
        self._drain.join()
        assert self.process.stdout is not None
        self.process.stdout.close()
        return code


def _rates(row: dict[str, Any]) -> dict[str, Any]:
    lines, cpu, wall = row["lines"], row["cpu_seconds"], row["wall_seconds"]
    row["cpu_us_per_reading"] = round(cpu / lines * 1e6, 2) if lines else None
    row["readings_per_cpu_s"] = round(lines / cpu) if cpu else None
    row["readings_per_wall_s"] = round(lines / wall) if wall else None
    return row


def measure(lines: int, db: str, *, pure: bool, max_body_mib: int = MAX_BODY_MIB, big_mib: int = BIG_MIB,
            ) -> dict[str, Any]:
    """One twin: a new report, the same again, a report of ``big_mib`` MiB, the receiver's peak RSS."""
    salt = secrets.token_bytes(4)
    body = report_body(lines, salt)
    line_bytes = len(body) / max(lines, 1)
    big_lines = int(big_mib * 1024 * 1024 / line_bytes)
    receiver = _Receiver(db, max_body_mib, pure)
    try:
        idle_rss = _status_kib(receiver.process.pid, "VmRSS")
        new = _rates(receiver.post(body))
        retry = _rates(receiver.post(body))
        rss_before_big = receiver.peak_rss_kib()
        big = _rates(receiver.post(report_body(big_lines, salt, first=lines)))
        peak = receiver.peak_rss_kib()
    finally:
        code = receiver.stop()
    return {
        "implementation": "pure" if pure else "compiled",
        "report": new,
        "retry": retry,
        "near_limit": big,
        "rss_idle_kib": idle_rss,
        "peak_rss_kib_before_near_limit": rss_before_big,
        "peak_rss_kib": peak,
        "receiver_exit": code,
    }


def _compiled_available() -> bool:
    from . import _select
    from .hes import report  # noqa: F401  (importing it records the twin it chose)

    return _select.implementation() == "compiled"


def run(lines: int = LINES, db: str | None = None, *, max_body_mib: int = MAX_BODY_MIB, big_mib: int = BIG_MIB,
        twins: tuple[str, ...] = ("compiled", "pure"), as_json: bool = False) -> dict[str, Any]:
    """Both twins (compiled only when built and allowed) against ``db`` or a fresh SQLite file each; a table unless ``as_json``."""
    results: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="wmbus-bench-hes-") as folder:
        for name in twins:
            if name == "compiled" and not _compiled_available():
                results[name] = {"unavailable": "pure twins selected (WMBUS_STREAM_NO_EXTENSIONS or not built)"}
                continue
            where = db or str(Path(folder) / f"{name}.sqlite")
            results[name] = measure(lines, where, pure=name == "pure", max_body_mib=max_body_mib, big_mib=big_mib)
    result = {
        "benchmark": "wmbus-stream receive: chunked HTTP POST of a report -> parsed, validated, committed",
        "lines": lines,
        "db": db or "a fresh SQLite file per twin (WAL, synchronous=FULL)",
        "max_body_mib": max_body_mib,
        "near_limit_mib": big_mib,
        "twins": results,
        **machine(),
    }
    if not as_json:
        print(table(result))
    return result


def table(result: dict[str, Any]) -> str:
    """The result as a few aligned lines for people."""
    out = [
        f"wmbus-stream bench --hes: {result['benchmark']}",
        f"  {result['lines']:,}-line report into {result['db']}",
        f"  CPU: {result['cpu']} ({result['cores']} cores), Python {result['python']},"
        f" load average {result['load_average']}; CPU = the receiver process's utime + stime",
        "",
        f"  {'twin, POST':<26} {'lines':>9} {'new':>9} {'CPU us/reading':>15} {'per CPU s':>10} {'per wall s':>11}"
        f" {'wall s':>8}",
    ]
    for name, row in result["twins"].items():
        if "unavailable" in row:
            out.append(f"  {name + ':':<26} {row['unavailable']}")
            continue
        for what in ("report", "retry", "near_limit"):
            r = row[what]
            label = {"report": "new report", "retry": "same report again",
                     "near_limit": f"{r['body_bytes'] / 1048576:.0f} MiB report"}[what]
            out.append(f"  {name + ', ' + label:<26} {r['lines']:>9,} {r['new_readings']:>9,}"
                       f" {r['cpu_us_per_reading'] if r['cpu_us_per_reading'] is not None else '-':>15}"
                       f" {r['readings_per_cpu_s'] or '-':>10} {r['readings_per_wall_s'] or '-':>11}"
                       f" {r['wall_seconds']:>8}")
        out.append(f"  {name + ', peak RSS':<26} {row['peak_rss_kib'] / 1024:.0f} MiB after the"
                   f" {row['near_limit']['body_bytes'] / 1048576:.0f} MiB report"
                   f" ({row['peak_rss_kib_before_near_limit'] / 1024:.0f} MiB before it,"
                   f" {row['rss_idle_kib'] / 1024:.0f} MiB idle)")
    return "\n".join(out)
