#!/usr/bin/env python3
"""PostgreSQL ingest benchmarks of the reference HES: real ``wmbus-stream receive`` processes, a real nginx.

Scenarios, each on emptied tables (one POST of ``--lines`` lines = one report, sent with
Content-Length as the gateway does):
  one      one receiver: a new report (all readings new), the same report again (a retry:
           nothing new), the same meters from a second gateway (receptions only);
  two      two new reports posted at once: to one receiver, then through nginx
           (upstream of two receivers, proxy_request_buffering off) to two.
Per scenario: wall seconds until the last answer, CPU seconds of the receiver process(es) (utime +
stime from /proc) and, when the database runs on this machine, of the PostgreSQL server
processes; and the CPU of PostgresStore.add alone, in this process. Figures go to docs/performance.md and docs/hes-integration.md.

    python scripts/bench_pg.py --db postgresql://USER:PASSWORD@HOST/DB [--lines 100000] [--rounds 3] [--json]
    python scripts/bench_pg.py --throwaway      # a temporary cluster (Debian's postgresql, as tests/integration)

The tables of --db are emptied (TRUNCATE): give it a database of its own.
"""

from __future__ import annotations

import argparse
import contextlib
import http.client
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from wmbus_stream import wire
from wmbus_stream.hes.postgres import PostgresStore, masked

ROOT = Path(__file__).resolve().parents[1]
SPEC = bytes.fromhex(
    "6044961564010061011B7A970400202F2F02653607426534078201652C072265320712653607626516075265560702FB1A0E"
    "0242FB1A0E028201FB1A0E0222FB1A0E0212FB1A0E0262FB1A090252FB1A0F0202FD1B20C30DFD0F05322E302E310F"
)
TICK = os.sysconf("SC_CLK_TCK")


def report(gateway: str, first: int, count: int) -> bytes:
    """A report of ``count`` meters from ``first`` on, as ``gateway`` sends it."""
    out = []
    for meter in range(first, first + count):
        telegram = SPEC[:4] + bytes.fromhex(f"{meter:08d}")[::-1] + SPEC[8:]
        out.append(f"{gateway};{meter:08d};2026-11-24 10:15:02;00;"
                   f"{wire.build_report(telegram, '62001772', -74, 0).hex().upper()}\n")
    return "".join(out).encode("ascii")


def cpu(pid: int) -> float:
    """utime + stime of a process, seconds."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICK


def postgres_cpu() -> float:
    """utime + stime of every postgres process on this machine (all of them are the bench's, or noise)."""
    total = 0.0
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat = Path(f"/proc/{entry}/stat").read_text()
            except OSError:
                continue
            if "(postgres)" in stat:
                fields = stat.rsplit(")", 1)[1].split()
                total += (int(fields[11]) + int(fields[12])) / TICK
    return total


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def wait_port(port: int, proc: subprocess.Popen[bytes] | None = None, timeout: float = 30) -> None:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if proc is not None and proc.poll() is not None:
            raise SystemExit(f"process exited ({proc.returncode}) before listening on {port}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return
        except OSError:
            time.sleep(0.05)
    raise SystemExit(f"nothing listening on {port} after {timeout} s")


@contextlib.contextmanager
def receivers(db: str, count: int) -> Iterator[list[tuple[int, subprocess.Popen[bytes]]]]:
    """``count`` receive processes on free ports, all on ``db``."""
    started = []
    try:
        for _ in range(count):
            port = free_port()
            proc = subprocess.Popen([sys.executable, "-m", "wmbus_stream", "receive", "--no-auth", "--listen",
                                     f"127.0.0.1:{port}", "--db", db], stdout=subprocess.DEVNULL,
                                    stderr=subprocess.DEVNULL)
            started.append((port, proc))
        for port, proc in started:
            wait_port(port, proc)
        yield started
    finally:
        for _, proc in started:
            proc.terminate()
        for _, proc in started:
            proc.wait(30)


@contextlib.contextmanager
def nginx(upstreams: list[int]) -> Iterator[int]:
    """nginx on a free port balancing over ``upstreams`` as docs/examples/nginx-hes.conf does (plain HTTP here)."""
    binary = shutil.which("nginx") or "/usr/sbin/nginx"
    folder = Path(tempfile.mkdtemp(prefix="bench-nginx-"))
    port = free_port()
    servers = "".join(f"server 127.0.0.1:{p};" for p in upstreams)
    (folder / "nginx.conf").write_text(f"""
daemon off; master_process off; worker_processes 1; pid {folder}/nginx.pid; error_log {folder}/error.log;
events {{ worker_connections 256; }}
http {{
    access_log off; client_body_temp_path {folder}; proxy_temp_path {folder};
    fastcgi_temp_path {folder}; uwsgi_temp_path {folder}; scgi_temp_path {folder};
    upstream hes {{ least_conn; {servers} keepalive 16; }}
    server {{
        listen 127.0.0.1:{port}; client_max_body_size 256m;
        location / {{ proxy_pass http://hes; proxy_http_version 1.1; proxy_set_header Connection "";
                     proxy_request_buffering off; proxy_read_timeout 300s; }}
    }}
}}
""")
    proc = subprocess.Popen([binary, "-p", str(folder), "-c", str(folder / "nginx.conf")],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_port(port, proc)
        yield port
    finally:
        proc.terminate()
        proc.wait(10)
        shutil.rmtree(folder, ignore_errors=True)


def post(port: int, body: bytes) -> float:
    """POST ``body``; the wall seconds until a 2xx (anything else stops the bench)."""
    started = time.perf_counter()
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=600)
    try:
        conn.request("POST", "/report", body=body, headers={"Content-Type": "text/plain; charset=us-ascii"})
        response = conn.getresponse()
        text = response.read().decode(errors="replace")
    finally:
        conn.close()
    if response.status // 100 != 2:
        raise SystemExit(f"POST answered {response.status}: {text.strip()[:300]}")
    return time.perf_counter() - started


def empty(db: str) -> None:
    import psycopg

    with psycopg.connect(db, autocommit=True) as conn:
        conn.execute("TRUNCATE reading, heard_by, outbox RESTART IDENTITY")
        conn.execute("VACUUM ANALYZE reading")
        conn.execute("VACUUM ANALYZE heard_by")


def measured(procs: list[subprocess.Popen[bytes]], posts: list[tuple[int, bytes]], local_db: bool) -> dict[str, float]:
    """Send ``posts`` at once; wall seconds until the last answer, receiver and server CPU seconds."""
    before = [cpu(p.pid) for p in procs]
    pg_before = postgres_cpu() if local_db else 0.0
    started = time.perf_counter()
    errors: list[BaseException] = []

    def send(port: int, body: bytes) -> None:
        try:
            post(port, body)
        except BaseException as exc:  # noqa: BLE001  (reported below)
            errors.append(exc)

    threads = [threading.Thread(target=send, args=item) for item in posts]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    wall = time.perf_counter() - started
    if errors:
        raise SystemExit(f"a POST failed: {errors[0]}")
    result = {"wall_s": wall, "receiver_cpu_s": sum(cpu(p.pid) - b for p, b in zip(procs, before, strict=True))}
    if local_db:
        result["postgres_cpu_s"] = postgres_cpu() - pg_before
    return result


def run(db: str, lines: int, rounds: int, local_db: bool) -> dict[str, Any]:
    """Every scenario ``rounds`` times; the median of each figure."""
    PostgresStore(db).close()  # the tables
    a, b, c = report("00000161", 1, lines), report("00000162", 1, lines), report("00000163", lines + 1, lines)
    samples: dict[str, list[dict[str, float]]] = {}

    def keep(name: str, figures: dict[str, float]) -> None:
        samples.setdefault(name, []).append(figures)

    for _ in range(rounds):
        empty(db)
        with receivers(db, 1) as started:
            (port, proc), = started
            keep("one: new report", measured([proc], [(port, a)], local_db))
            keep("one: the same report again (retry)", measured([proc], [(port, a)], local_db))
            keep("one: same meters, second gateway", measured([proc], [(port, b)], local_db))
            empty(db)
            keep("two reports at once, one receiver", measured([proc], [(port, a), (port, c)], local_db))
        empty(db)
        with receivers(db, 2) as started, nginx([port for port, _ in started]) as front:
            keep("two reports at once, two receivers behind nginx",
                 measured([proc for _, proc in started], [(front, a), (front, c)], local_db))
    out: dict[str, Any] = {"lines": lines, "rounds": rounds, "body_bytes": len(a), "scenarios": {}}
    for name, runs in samples.items():
        figures = {key: statistics.median(r[key] for r in runs) for key in runs[0]}
        readings = lines * (2 if name.startswith("two") else 1)
        figures["readings_per_wall_s"] = readings / figures["wall_s"]
        figures["readings_per_receiver_cpu_s"] = readings / figures["receiver_cpu_s"]
        figures["receiver_cpu_us_per_line"] = figures["receiver_cpu_s"] / readings * 1e6
        if "postgres_cpu_s" in figures:
            figures["postgres_cpu_us_per_line"] = figures["postgres_cpu_s"] / readings * 1e6
        out["scenarios"][name] = figures
    out["store_client_cpu_us_per_line"] = store_cost(db, a, lines)
    out["database_alone"] = database_scaling(db, a, c, local_db)
    one = out["scenarios"]["one: new report"]["readings_per_wall_s"]
    two = out["scenarios"]["two reports at once, two receivers behind nginx"]["readings_per_wall_s"]
    out["second_instance_adds"] = two / one - 1
    return out


def store_cost(db: str, body: bytes, lines: int) -> float:
    """CPU µs per line of PostgresStore.add alone in this process (COPY rows, the commit's round trips), new lines."""
    from wmbus_stream.hes import parse_report

    parsed = parse_report(body)
    empty(db)
    store = PostgresStore(db)
    try:
        started = time.process_time()
        store.add(parsed)
        return (time.process_time() - started) / lines * 1e6
    finally:
        store.close()


def database_scaling(db: str, first: bytes, second: bytes, local_db: bool) -> dict[str, float]:
    """The database alone: one report's PostgresStore.add, then two disjoint ones at once (threads, own sessions)."""
    from wmbus_stream.hes import parse_report

    reports = [parse_report(first), parse_report(second)]
    store = PostgresStore(db)
    try:
        out: dict[str, float] = {}
        for name, batch in (("one", reports[:1]), ("two", reports)):
            empty(db)
            pg_before = postgres_cpu() if local_db else 0.0
            started = time.perf_counter()
            threads = [threading.Thread(target=store.add, args=(lines,)) for lines in batch]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join()
            out[f"{name}_wall_s"] = time.perf_counter() - started
            if local_db:
                out[f"{name}_postgres_cpu_s"] = postgres_cpu() - pg_before
        out["second_commit_adds"] = 2 * out["one_wall_s"] / out["two_wall_s"] - 1
        return out
    finally:
        store.close()


def table(result: dict[str, Any]) -> str:
    rows = [f"{result['lines']:,} lines per report ({result['body_bytes'] / 1e6:.1f} MB), median of "
            f"{result['rounds']} rounds",
            f"{'scenario':50s} {'wall s':>7s} {'rdg/wall s':>11s} {'recv CPU s':>10s} {'rdg/CPU s':>10s}"
            f" {'recv µs/ln':>10s} {'PG µs/ln':>9s}"]
    for name, f in result["scenarios"].items():
        pg = f"{f['postgres_cpu_us_per_line']:9.1f}" if "postgres_cpu_us_per_line" in f else f"{'-':>9s}"
        rows.append(f"{name:50s} {f['wall_s']:7.2f} {f['readings_per_wall_s']:11,.0f} {f['receiver_cpu_s']:10.2f}"
                    f" {f['readings_per_receiver_cpu_s']:10,.0f} {f['receiver_cpu_us_per_line']:10.1f} {pg}")
    rows.append(f"PostgresStore.add alone: {result['store_client_cpu_us_per_line']:.1f} CPU µs per line in the receiver")
    alone = result["database_alone"]
    rows.append(f"the database alone (PostgresStore.add in threads): one report {alone['one_wall_s']:.2f} s, two disjoint"
                f" at once {alone['two_wall_s']:.2f} s: a second commit adds {alone['second_commit_adds']:.2f}")
    rows.append(f"a second instance behind nginx adds {result['second_instance_adds']:.2f} of the first one's"
                " throughput (readings per wall second)")
    return "\n".join(rows)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    where = parser.add_mutually_exclusive_group(required=True)
    where.add_argument("--db", help="postgresql://... of a database of its own (its tables are emptied)")
    where.add_argument("--throwaway", action="store_true", help="a temporary cluster of Debian's postgresql")
    parser.add_argument("--lines", type=int, default=100_000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    with contextlib.ExitStack() as stack:
        db, local = args.db, False
        if args.throwaway:
            sys.path.insert(0, str(ROOT / "tests" / "integration"))
            from pg_harness import start_cluster  # the tests' throwaway cluster

            cluster = stack.enter_context(start_cluster())
            db, local = cluster.url(cluster.create_database("bench")), True
        elif db.startswith(("postgresql://localhost", "postgresql://127.", "postgres://localhost")) or "@localhost" in db \
                or "@127." in db or "@/" in db:
            local = True
        if not args.json:
            print(f"database {masked(db)}, receiver {sys.executable} -m wmbus_stream receive", flush=True)
        result = run(db, args.lines, args.rounds, local)
    print(json.dumps(result, indent=2) if args.json else table(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
