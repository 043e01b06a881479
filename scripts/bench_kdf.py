"""CPU time and memory of one web password check (docs/performance.md#password-checks).

Checks a wrong password a few times against a credential made with the gateway's KDF
parameters (or those given) and prints the best CPU time of a check and how much the
checks raised the process's peak RSS. Needs only the standard library and ``src/``, so an
ARM root with a bare python3 can run it under qemu-user (docs/performance.md has the command).
"""

from __future__ import annotations

import argparse
import platform
import resource
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from wmbus_stream.web.auth import SCRYPT_N, SCRYPT_P, SCRYPT_R, hash_password, verify_password  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=SCRYPT_N)
    parser.add_argument("--r", type=int, default=SCRYPT_R)
    parser.add_argument("--p", type=int, default=SCRYPT_P)
    parser.add_argument("--repeat", type=int, default=3, help="checks timed; the best is printed")
    args = parser.parse_args()
    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    cred = hash_password("admin", "k7d-Wq2m-Test-Pass", n=args.n, r=args.r, p=args.p)
    best = min(_cpu(lambda: verify_password(cred, "admin", "a-wrong-guess")) for _ in range(args.repeat))
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(f"{platform.machine()} python {platform.python_version()}: scrypt n=2^{args.n.bit_length() - 1} "
          f"r={args.r} p={args.p} ({cred.memory >> 20} MiB): {best * 1000:.0f} ms CPU per check, "
          f"peak RSS {peak / 1024:.1f} MiB (+{(peak - base) / 1024:.1f} MiB)")


def _cpu(work: object) -> float:
    started = time.process_time()
    work()  # type: ignore[operator]
    return time.process_time() - started


if __name__ == "__main__":
    main()
