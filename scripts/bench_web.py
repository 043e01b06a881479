#!/usr/bin/env python3
"""Web UI benchmarks: Analyzer page/API answer times for 10,000 meters, and pipeline loss while polled.

``analyzer``: a real gateway (not receiving; its pipeline fed 10,000 meters from a cmex50
byte stream) serves its web UI on 127.0.0.1; a client on one keep-alive connection with
basic auth times each URL (median and worst of ``--repeat`` requests after one warm-up).
``polled``: the pipeline benchmark of ``wmbus-stream bench --service`` in this process,
once with the web server idle and once while another process polls ``/api/v1/status`` ten
times a second; the loss is how much fewer telegrams per second the polled run manages.
Runs alternate and the medians of ``--rounds`` of each are compared, per wall-clock
second and per CPU second of the process (which a busy neighbour on the machine does not
move). Figures go to docs/performance.md ("Web UI").

    python scripts/bench_web.py [--meters 10000] [--repeat 20] [--rounds 5] [--telegrams 1000000] [--json]
"""

from __future__ import annotations

import argparse
import base64
import http.client
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from wmbus_stream import bench_service, implementation
from wmbus_stream.config import model
from wmbus_stream.receivers import framer
from wmbus_stream.receivers.cmex50 import encode
from wmbus_stream.app import Gateway
from wmbus_stream.web.auth import write_password

USER, PASSWORD = "admin", "bench-Pass-4711-web"
ANALYZER_URLS = (
    "/analyzer",  # the page as an installer opens it: chart of all meters, first 100 rows
    "/analyzer?sort=rssi_avg&dir=asc",  # weakest first: sorts all 10,000
    "/analyzer?q=KAM&per=500",  # a search and a bigger page
    "/api/v1/analyzer",  # every row as JSON
    "/api/v1/analyzer?per=100&sort=rssi_avg",  # a page of it
    "/analyzer.csv?only=0",  # the CSV export
    "/api/v1/status",
)
POLLER = """
import base64, http.client, sys, time
port, auth, hz = int(sys.argv[1]), sys.argv[2], float(sys.argv[3])
conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
done, next_at = 0, time.monotonic()
while True:
    conn.request("GET", "/api/v1/status", headers={"Authorization": auth})
    answer = conn.getresponse()
    answer.read()
    assert answer.status == 200, answer.status
    done += 1
    next_at += 1 / hz
    time.sleep(max(0.0, next_at - time.monotonic()))
"""


def free_port() -> int:
    """A port of 127.0.0.1 that nothing listens on just now."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def running_gateway(folder: Path, meters: int) -> Gateway:
    """A gateway with its web UI on a free port whose analyzer and store hold ``meters`` meters."""
    values = {"receiver.protocol": "cmex50", "receiver.port": "-", "state.directory": str(folder / "state"),
              "receiving.server.url": "http://127.0.0.1:9/", "web.enabled": "true", "web.listen": f"127.0.0.1:{free_port()}",
              "show.only.filtered": "false", "store.flush.seconds": "3600"}
    config_path = folder / "stream.cfg"
    model.save(config_path, values)
    write_password(folder / "state", USER, PASSWORD)
    gateway = Gateway(model.load(config_path), config_path)
    gateway.start(receiver=False, control=False)
    reader = framer("cmex50")
    stream = b"".join(encode(bench_service._telegram(m), receiver_address="62001772", rssi_dbm=-50 - m % 60)
                      for m in range(meters))
    assert gateway.pipeline is not None and gateway.web is not None
    gateway.pipeline.feed(reader, stream, time.time())
    return gateway


_WEB: list[Any] = []  # the running gateway's web server, for its request counter


def gateway_requests(port: int) -> int:
    """Requests the web server has answered so far."""
    return int(_WEB[0].requests_total) if _WEB else 0


def time_urls(port: int, repeat: int) -> dict[str, dict[str, float]]:
    """Median and worst milliseconds per URL (one keep-alive connection, warm basic-auth cache)."""
    auth = {"Authorization": "Basic " + base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode()}
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    out: dict[str, dict[str, float]] = {}
    for url in ANALYZER_URLS:
        times, size = [], 0
        for n in range(repeat + 1):
            started = time.perf_counter()
            conn.request("GET", url, headers=auth)
            answer = conn.getresponse()
            body = answer.read()
            elapsed = (time.perf_counter() - started) * 1000
            assert answer.status == 200, (url, answer.status)
            if n:  # the first request warms the scrypt cache and the code paths
                times.append(elapsed)
            size = len(body)
        out[url] = {"median_ms": round(statistics.median(times), 1), "max_ms": round(max(times), 1), "bytes": size}
    conn.close()
    return out


def polled_pipeline(port: int, rounds: int, telegrams: int, hz: float) -> dict[str, Any]:
    """Pipeline telegrams/s with the web server idle and while polled ``hz`` times a second.

    Two figures per run: per wall-clock second, and per CPU second of this process (the
    pipeline plus the web server's threads, which share the GIL), which a busy neighbour
    on the machine does not move. The loss compares the medians of alternating runs.
    """
    auth = "Basic " + base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode()
    runs: dict[str, list[dict[str, Any]]] = {"idle": [], "polled": []}
    bench_service.pipeline(telegrams // 4)  # warm-up: the first run pays for imports and allocations
    for _ in range(rounds):
        runs["idle"].append(bench_service.pipeline(telegrams))
        poller = subprocess.Popen([sys.executable, "-c", POLLER, str(port), auth, str(hz)])
        try:
            time.sleep(0.5)  # the poller is connected and at its pace
            served = gateway_requests(port)
            runs["polled"].append(bench_service.pipeline(telegrams))
            runs["polled"][-1]["status_requests"] = gateway_requests(port) - served
        finally:
            poller.terminate()
            poller.wait(10)
    out: dict[str, Any] = {"implementation": implementation(), "telegrams": telegrams, "poll_hz": hz}
    for figure in ("telegrams_per_s", "telegrams_per_cpu_s"):
        idle = statistics.median(r[figure] for r in runs["idle"])
        polled = statistics.median(r[figure] for r in runs["polled"])
        out[figure] = {"idle": round(idle), "polled": round(polled), "loss_percent": round(100 * (idle - polled) / idle, 1),
                       "idle_runs": [r[figure] for r in runs["idle"]], "polled_runs": [r[figure] for r in runs["polled"]]}
    out["status_requests_per_polled_run"] = [r["status_requests"] for r in runs["polled"]]
    return out


def request_cost(port: int, hz: float = 200.0, seconds: float = 3.0) -> dict[str, float]:
    """CPU this process spends per status request (polled fast, pipeline idle), and its share at 10/s."""
    auth = "Basic " + base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode()
    poller = subprocess.Popen([sys.executable, "-c", POLLER, str(port), auth, str(hz)])
    try:
        time.sleep(0.5)
        served, cpu = gateway_requests(port), time.process_time()
        time.sleep(seconds)
        served, cpu = gateway_requests(port) - served, time.process_time() - cpu
    finally:
        poller.terminate()
        poller.wait(10)
    per_request = cpu / max(1, served)
    return {"requests": served, "cpu_ms_per_request": round(1000 * per_request, 3),
            "share_of_a_core_at_10_per_s_percent": round(100 * 10 * per_request, 2)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--meters", type=int, default=10_000)
    parser.add_argument("--repeat", type=int, default=20)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--telegrams", type=int, default=1_000_000)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        gateway = running_gateway(Path(tmp), args.meters)
        try:
            assert gateway.analyzer is not None and gateway.analyzer.totals().meters_found == args.meters
            port = gateway.web.port
            _WEB.append(gateway.web)
            result = {"implementation": implementation(), "meters": args.meters,
                      "urls": time_urls(port, args.repeat),
                      "status_cost": request_cost(port),
                      "pipeline": polled_pipeline(port, args.rounds, args.telegrams, 10.0),
                      "machine": f"{os.cpu_count()} cores, {os.uname().machine}, Python {sys.version.split()[0]}"}
        finally:
            gateway.shutdown()
    if args.json:
        print(json.dumps(result, indent=2))
        return 0
    print(f"web UI, {result['implementation']}, {args.meters:,} meters ({result['machine']})")
    for url, row in result["urls"].items():
        print(f"  {url:42} median {row['median_ms']:7.1f} ms  worst {row['max_ms']:7.1f} ms  {row['bytes']:>9,} bytes")
    p = result["pipeline"]
    for figure, unit in (("telegrams_per_s", "s"), ("telegrams_per_cpu_s", "CPU s")):
        row = p[figure]
        print(f"  pipeline telegrams per {unit}: idle {row['idle']:,}, while polled 10/s {row['polled']:,}:"
              f" loss {row['loss_percent']} % (medians of {args.rounds} alternating runs)")
    print(f"  status requests served during each polled run: {p['status_requests_per_polled_run']}")
    c = result["status_cost"]
    print(f"  one status request costs {c['cpu_ms_per_request']} ms of CPU in the gateway ({c['requests']} timed):"
          f" {c['share_of_a_core_at_10_per_s_percent']} % of a core at 10 requests/s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
