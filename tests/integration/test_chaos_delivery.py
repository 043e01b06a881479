"""The delivery contract against a chaos HES: a real gateway process, thousands of meters on a
real pty, and an HES on 127.0.0.1 that answers each push with a random fault, then recovers.

The contract: a meter's telegram leaves the gateway's store only when a 2xx answered a body
that held it whole; so every meter's latest telegram arrives in such a body and nothing is
lost. The chaos HES decodes every body itself with unbuffered reads (what it does not read
stays in the kernel, as with a real server) and records exactly which lines it received in
complete bodies it answered 2xx to. The fault sequence is seeded: ``WMBUS_CHAOS_SEED``
replays a run, and every failure message names the seed.
"""

from __future__ import annotations

import contextlib
import os
import random
import select
import socket
import struct
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from itertools import pairwise

import pytest

from gwkit import PROTOCOLS, SPEC_TELEGRAM, assert_report, cron_at, pairs, report_key, run_cli, soon, variant, wait_for, with_id

pytestmark = pytest.mark.integration

CMEX50 = PROTOCOLS["cmex50"]
SEED = int(os.environ.get("WMBUS_CHAOS_SEED", "20261201"))
METERS = 2000
GENERATIONS = 4
FAULTS = ("200", "500", "503", "hang", "close", "early-200")
SLICE = 500  # meters written to the pty at once
PUSHES_PER_SLICE = 2  # chaos pushes between two slices (unless nothing is pending)
PUSHES_AFTER_THE_LAST = 10  # chaos pushes after the last generation, before the HES recovers
BUDGET = 240.0  # seconds for the whole run, however the waits add up (a healthy run takes about 30)


@dataclass
class ChaosRequest:
    """One push as the chaos HES saw it."""

    index: int
    fault: str  # one of FAULTS, or "healthy" after heal()
    body: bytes = b""
    complete: bool = False  # the terminating zero chunk was read
    answered: int | None = None  # the status it sent (all of it reached the socket)

    def lines(self) -> list[bytes]:
        return self.body.splitlines(keepends=True)


def decode_chunked(raw: bytes) -> tuple[bytes, bool]:
    """The body in ``raw`` (chunked wire bytes) and whether its terminating chunk is there."""
    body = bytearray()
    at = 0
    while True:
        end = raw.find(b"\r\n", at)
        if end < 0:
            return bytes(body), False
        size = int(raw[at:end].split(b";")[0], 16)
        if size == 0:
            return bytes(body), raw[end + 2:end + 4] == b"\r\n"
        if len(raw) < end + 2 + size + 2:
            return bytes(body), False  # a chunk cut short counts for nothing
        body += raw[end + 2:end + 2 + size]
        at = end + 2 + size + 2


class ChaosHes:
    """An HTTP/1.1 server that answers each request with a seeded random fault until ``heal()``.

    Faults: 200, 500, 503 with Retry-After, a hang until the client gives up, a close (plain
    or reset) in the middle of the body, and a 200 after reading only part of the body.
    """

    def __init__(self, seed: int) -> None:
        self.rng = random.Random(seed)
        self.script: list[tuple[str, int]] = []  # (fault, cut) to play first, in order
        self.requests: list[ChaosRequest] = []
        self.healthy = False
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._sock = socket.create_server(("127.0.0.1", 0))
        self._sock.settimeout(0.1)
        self.url = f"http://127.0.0.1:{self._sock.getsockname()[1]}/report"
        self._accept = threading.Thread(target=self._serve, name="chaos-hes", daemon=True)
        self._accept.start()

    def heal(self) -> None:
        with self._lock:
            self.healthy = True

    def _serve(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self._sock.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            with self._lock:  # faults are drawn in arrival order: a seed replays the sequence
                if self.script:
                    fault, cut = self.script.pop(0)
                else:
                    fault = "healthy" if self.healthy else self.rng.choice(FAULTS)
                    cut = self.rng.randrange(0, 500_000)
                request = ChaosRequest(len(self.requests), fault)
                self.requests.append(request)
            thread = threading.Thread(target=self._handle, args=(conn, request, cut), daemon=True)
            thread.start()
            self._threads.append(thread)

    def _handle(self, conn: socket.socket, request: ChaosRequest, cut: int) -> None:
        fault = request.fault
        try:
            conn.settimeout(10)
            raw = bytearray()
            while b"\r\n\r\n" not in raw:
                data = conn.recv(4096)
                if not data:
                    return
                raw += data
            wire = bytearray(bytes(raw).partition(b"\r\n\r\n")[2])
            limit = cut if fault in ("close", "early-200") else None
            while True:
                request.body, request.complete = decode_chunked(bytes(wire))
                if request.complete or (limit is not None and len(wire) >= limit):
                    break
                want = 65536 if limit is None else min(65536, limit - len(wire))
                data = conn.recv(want)
                if not data:
                    return
                wire += data
            if fault == "close":
                if cut % 2:  # half of them with a reset, as a crashing proxy would
                    conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                return
            if fault == "hang":
                end = time.monotonic() + 10
                while not self._stop.is_set() and time.monotonic() < end:  # until the client gives up
                    if select.select([conn], [], [], 0.05)[0] and not conn.recv(1, socket.MSG_PEEK):
                        return
                return
            status, extra = {"500": (500, ""), "503": (503, "Retry-After: 1\r\n")}.get(fault, (200, ""))
            reply = f"HTTP/1.1 {status} Chaos\r\nContent-Length: 0\r\nConnection: close\r\n{extra}\r\n"
            conn.sendall(reply.encode("ascii"))
            request.answered = status
        except OSError:
            pass
        finally:
            with contextlib.suppress(OSError):
                conn.close()

    def snapshot(self) -> list[ChaosRequest]:
        with self._lock:
            return list(self.requests)

    def close(self) -> None:
        self._stop.set()
        self._sock.close()
        self._accept.join(2)
        for thread in self._threads:
            thread.join(2)


@pytest.fixture
def chaos_hes():
    server = ChaosHes(SEED)
    yield server
    server.close()


def acknowledged(request: ChaosRequest) -> bool:
    """A 2xx for a body the HES received whole: the only thing that may delete lines."""
    return request.complete and request.answered is not None and 200 <= request.answered < 300


def deleted_without_a_2xx(requests: list[ChaosRequest]) -> list[str]:
    """Lines that left the gateway's store without a 2xx for a body that held them.

    Every push carries everything pending, so two complete bodies are two looks at the store:
    a line in the first whose meter is missing from the second was deleted in between, which
    only a 2xx for a complete body holding it (the first or one in between) allows.
    """
    looks = [r for r in requests if r.complete]
    problems = []
    for before, after in pairwise(looks):
        present = {report_key(line) for line in after.lines()}
        allowed = {line for r in requests[before.index:after.index] if acknowledged(r) for line in r.lines()}
        for line in before.lines():
            if report_key(line) not in present and line not in allowed:
                problems.append(f"request {before.index} -> {after.index}: meter {line.split(b';')[1].decode()}"
                                f" deleted without a 2xx for a body holding it")
    return problems


def test_chaos_hes_loses_nothing_and_deletes_nothing_without_a_2xx(config, pty_receiver, chaos_hes, gateway) -> None:
    """2,000 meters, four generations through the pty, a seeded mix of every fault, then a healthy HES."""
    meters = [with_id(SPEC_TELEGRAM, 40000000 + m) for m in range(METERS)]
    config.write({"receiver.port": str(pty_receiver.link), "receiving.server.url": chaos_hes.url,
                  "receiving.server.push.cron": "* * * * * *", "receiving.server.retries": "1",
                  "receiving.server.connect.timeout": "1", "receiving.server.read.timeout": "1"})
    since = time.time()
    gw = gateway(config)
    gw.wait_connected()

    def context() -> str:
        faults = [f"{r.fault}:{r.answered}:{'complete' if r.complete else len(r.body)}" for r in chaos_hes.snapshot()]
        return f"\nchaos seed {SEED} (WMBUS_CHAOS_SEED replays it); requests: {faults}{gw.tail()}"

    def pushes(count: int) -> Callable[[], bool]:
        """``count`` more pushes reached the HES, or there is nothing left to push."""
        target = len(chaos_hes.snapshot()) + count
        return lambda: len(chaos_hes.snapshot()) >= target or (gw.status() or {}).get("meters_pending") == 0

    budget_end = time.monotonic() + BUDGET

    def budget() -> float:
        """What is left of the run's time budget (each wait gets at most that)."""
        return max(1.0, budget_end - time.monotonic())

    sent = 0
    for generation in range(GENERATIONS):  # a new reading of every meter, in slices, while the HES misbehaves
        for start in range(0, METERS, SLICE):
            frames = [CMEX50.encode(variant(t, generation)) for t in meters[start:start + SLICE]]
            pty_receiver.write(b"".join(frames), timeout=budget())
            sent += len(frames)
            gw.wait_status(lambda s, n=sent: s["telegrams"].get("ok", 0) >= n, f"{sent} telegrams read", timeout=budget())
            wait_for(pushes(PUSHES_PER_SLICE), f"chaos pushes after {sent} telegrams", budget(), context=context)
    wait_for(pushes(PUSHES_AFTER_THE_LAST), "chaos pushes after the last generation", budget(),
             context=context)

    chaos_hes.heal()
    gw.wait_status(lambda s: s["meters_pending"] == 0, "everything acknowledged by the healthy HES", timeout=budget())
    requests = chaos_hes.snapshot()
    status = gw.status()
    assert status is not None and status["telegrams"]["ok"] == sent, context()

    assert {r.fault for r in requests} - {"healthy"} == set(FAULTS), f"not every fault was drawn{context()}"
    assert any(r.fault == "early-200" and r.answered == 200 and not r.complete for r in requests), \
        f"no 2xx for a partly read body was tried{context()}"
    problems = deleted_without_a_2xx(requests)
    assert not problems, "\n".join(problems[:20]) + context()
    # Every acknowledgement the gateway counted was a 2xx for a whole body.
    assert status["pushes"]["ok"] <= sum(acknowledged(r) for r in requests), context()

    # Nothing lost: each meter's latest telegram arrived in a body answered 2xx, byte for byte.
    latest = [variant(t, GENERATIONS - 1) for t in meters]
    delivered = {line.split(b";")[4]: line for r in requests if acknowledged(r) for line in r.lines()}
    wired = {CMEX50.wired(t).hex().upper().encode() + b"\n" for t in latest}
    missing = len(wired - delivered.keys())
    assert not missing, f"the latest telegram of {missing} of {METERS} meters never arrived{context()}"
    try:
        assert_report([delivered[w] for w in wired], pairs(CMEX50, latest), since=since)
    except AssertionError as exc:
        raise AssertionError(f"{exc}{context()}") from None
    assert gw.alive()


def test_push_by_hand_takes_an_early_2xx_for_a_failure_and_keeps_everything(config, pty_receiver, chaos_hes, gateway) -> None:
    """``push now`` through the running gateway (the web's push button takes the same path) applies the
    same rule as the scheduled push: an early 2xx acknowledges nothing, on disk either."""
    meters = [with_id(SPEC_TELEGRAM, 41000000 + m) for m in range(500)]  # a body of about 150 kB
    chaos_hes.script += [("early-200", 50_000), ("early-200", 100_000)]
    chaos_hes.heal()  # after the script
    config.write({"receiver.port": str(pty_receiver.link), "receiving.server.url": chaos_hes.url,
                  "receiving.server.push.cron": cron_at(soon(3600)), "receiving.server.retries": "0"})
    gw = gateway(config)
    gw.wait_connected()
    pty_receiver.write(b"".join(CMEX50.encode(t) for t in meters))
    gw.wait_ok(len(meters))
    since = time.time() - 60

    for _ in range(2):  # each early 200 in the script
        early = run_cli("push", "now", "--config", str(config.path))
        assert early.returncode != 0, early.stdout.decode() + gw.tail()
        assert b"HES answered HTTP 200 " in early.stdout and b"not acknowledged, kept" in early.stdout
        assert gw.status()["meters_pending"] == len(meters)
    healthy = run_cli("push", "now", "--config", str(config.path))
    assert healthy.returncode == 0, healthy.stdout.decode() + healthy.stderr.decode()
    gw.stop()
    assert config.pending_on_disk() == 0
    first, second, last = chaos_hes.snapshot()
    assert not first.complete and not second.complete and first.answered == second.answered == 200
    assert acknowledged(last)
    assert_report(last.lines(), pairs(CMEX50, meters), since=since)
