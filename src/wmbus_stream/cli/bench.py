"""``bench``: CPU per telegram of the daemon's receive path, compiled and pure; ``--service``: the service's paths;
``--hes``: the reference HES end to end."""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Any

from .. import implementation
from .common import EXIT_OK, positive

__all__ = ["add_bench", "cmd_bench"]


def cmd_bench(args: argparse.Namespace) -> int:
    """CPU per telegram of the daemon's receive path, compiled and pure, against the C CRC loop."""
    from .. import bench

    if args.hes:
        from .. import bench_hes

        result = bench_hes.run(lines=args.lines, db=args.db, max_body_mib=args.max_body_mib, big_mib=args.near_limit_mib,
                               as_json=args.json)
        if args.json:
            print(json.dumps(result, indent=2))
        return EXIT_OK
    if args.service or args.meters:
        return _bench_service(args)
    result = bench.run(frames=args.frames, as_json=args.json)
    if args.json:
        print(json.dumps(result, indent=2))
    return EXIT_OK


def _bench_service(args: argparse.Namespace) -> int:
    """Pipeline (both twins), push of 100,000 meters, store memory, idle CPU of ``run``."""
    import subprocess

    from .. import bench_service

    if args.meters:
        rows = bench_service.sweep(args.meters)
        print(json.dumps(rows, indent=2) if args.json else "\n".join(bench_service.sweep_lines(rows)))
        return EXIT_OK
    result: dict[str, Any] = {"pipeline": [bench_service.pipeline()]}
    if implementation() == "compiled":
        env = dict(os.environ, WMBUS_STREAM_NO_EXTENSIONS="1")
        code = "import json; from wmbus_stream import bench_service; print(json.dumps(bench_service.pipeline(100_000)))"
        out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
        result["pipeline"].append(json.loads(out.stdout))
    result["push"] = bench_service.push()
    result["memory"] = bench_service.memory()
    result["idle"] = bench_service.idle()
    if args.json:
        print(json.dumps(result, indent=2))
        return EXIT_OK
    for row in result["pipeline"]:
        print(f"pipeline ({row['implementation']}): {row['telegrams_per_s']:,} telegrams/s from a cmex50 stream to the"
              f" store ({row['telegrams']:,} telegrams, {row['meters']:,} meters; flush {row['flush_seconds']} s)")
    p = result["push"]
    print(f"push: {p['meters']:,} meters, {p['body_bytes']:,} bytes, snapshot + report + POST + ack in {p['seconds']} s")
    print(f"store memory: {result['memory']['bytes_per_meter_beyond_telegram']} bytes per meter beyond the telegram")
    print(f"idle: {result['idle']['cpu_percent_of_one_core']} % of one core over {result['idle']['seconds']:.0f} s")
    return EXIT_OK


def _counts(text: str) -> list[int]:
    """A comma-separated list of whole numbers of at least 1 (``--meters 1000,10000``)."""
    return [positive(part.strip()) for part in text.split(",")]


def add_bench(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Register ``bench``."""
    p = sub.add_parser("bench", help="CPU per telegram of the receive path (cmex50 bytes -> store), compiled and pure")
    p.add_argument("--frames", type=positive, default=200_000, help="telegrams to time (default 200000)")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.add_argument("--service", action="store_true", help="service benchmarks: pipeline, push, memory, idle CPU")
    p.add_argument("--meters", type=_counts, help="with --service: only the store sweep at these meter counts,"
                   " e.g. 1000,10000,100000")
    p.add_argument("--hes", action="store_true", help="the reference HES end to end: a `wmbus-stream receive` child,"
                   " a chunked POST of --lines readings, a retry, a report near the body limit; CPU us per reading")
    p.add_argument("--lines", type=positive, default=100_000, help="with --hes: lines of the report (default 100000)")
    p.add_argument("--db", metavar="FILE|URL", help="with --hes: the receiver's --db (default a fresh SQLite file)")
    p.add_argument("--max-body-mib", type=positive, default=64, help="with --hes: the receiver's body limit (default 64)")
    p.add_argument("--near-limit-mib", type=positive, default=60,
                   help="with --hes: size of the report sent near the limit, for the peak RSS (default 60)")
    p.set_defaults(func=cmd_bench)
