"""The README's first command, ``./scripts/demo``, as a user runs it: a real process in a session of its own.

``WMBUS_STREAM_DEMO_PYTHON`` points the script at the Python running these tests, so the
install step is skipped and the demo under test is the code under test. Each test waits for
the demo's ``ready`` line, signals it like a terminal, a shell script or a service manager
does (SIGINT ignored, as a script's background job inherits it, unless a test says
otherwise) and checks what a user would: a clear last line, the exit status, no process left
in its session, its ports closed and its temporary folder gone.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

import gwkit

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
PROGRESS = re.compile(r"telegrams read (\d+) \(accepted (\d+), broken (\d+), filtered out (\d+)\)  meters pending (\d+)")


@dataclass
class Demo:
    """``scripts/demo`` running in its own session, its output collected line by line."""

    process: subprocess.Popen[str]
    lines: list[str] = field(default_factory=list)
    closed: threading.Event = field(default_factory=threading.Event)

    def __post_init__(self) -> None:
        threading.Thread(target=self._collect, daemon=True).start()

    def _collect(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            self.lines.append(line.rstrip("\n"))
        self.closed.set()  # every process that had the pipe has ended or closed it

    def output(self) -> str:
        return "\n".join(self.lines)

    def wait_line(self, pattern: str, what: str, timeout: float = 60.0) -> re.Match[str]:
        return gwkit.wait_for(lambda: next((m for line in list(self.lines) if (m := re.search(pattern, line))), None),
                              what, timeout, context=lambda: "\noutput so far:\n" + self.output())

    def ready(self) -> tuple[Path, int, int, str]:
        """Wait for ``ready``: the demo's folder, its HES and web ports and the one-time password."""
        self.wait_line(r"wmbus-stream demo: ready", "the demo's ready line")
        hes = self.wait_line(r"receiving server http://127\.0\.0\.1:(\d+)/", "the HES address")
        folder = self.wait_line(r"state and received reports in (\S+)", "the demo's folder")
        web = self.wait_line(r"web UI: http://127\.0\.0\.1:(\d+)/\s+user admin, password (\S+)", "the web UI line")
        return Path(folder[1]), int(hes[1]), int(web[1]), web[2]

    def signal(self, signum: int) -> None:
        os.kill(self.process.pid, signum)

    def exit_status(self, what: str) -> int:
        """Wait for the demo to end (with a deadline: one that never stops fails here)."""
        try:
            status = self.process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            raise AssertionError(f"the demo did not stop {what}:\n{self.output()}") from None
        gwkit.wait_for(self.closed.is_set, "the end of the demo's output", 10)
        return status


@pytest.fixture
def start_demo() -> Iterator:
    started: list[Demo] = []

    def start(*args: str, ignore_sigint: bool = True) -> Demo:
        def child() -> None:
            if ignore_sigint:  # what `cmd &` in a shell script does to a background job
                signal.signal(signal.SIGINT, signal.SIG_IGN)

        env = {**os.environ, "WMBUS_STREAM_DEMO_PYTHON": sys.executable}
        process = subprocess.Popen([str(REPO / "scripts" / "demo"), "--meters", "40", *args], env=env,
                                   stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                   text=True, start_new_session=True, preexec_fn=child)
        demo = Demo(process)
        started.append(demo)
        return demo

    yield start
    for demo in started:
        if demo.process.poll() is None:  # a demo a failed test left running
            os.killpg(demo.process.pid, signal.SIGKILL)
            demo.process.wait(10)
        demo.closed.wait(10)  # the collector has read the pipe to its end
        assert demo.process.stdout is not None
        demo.process.stdout.close()


def assert_all_gone(demo: Demo, folder: Path, ports: tuple[int, ...]) -> None:
    """Nothing of the demo is left: no process in its session, no port open, no folder."""
    with pytest.raises(ProcessLookupError):
        os.killpg(demo.process.pid, 0)  # the session's process group: the demo and anything it started
    for port in ports:
        with pytest.raises(ConnectionRefusedError), socket.create_connection(("127.0.0.1", port), timeout=5):
            pass
    assert not folder.exists(), f"{folder} was left behind"


def web_api(port: int, password: str, method: str, path: str, body: object = None) -> dict:
    """One JSON API call to the demo's web UI with its one-time password; the answer must be 200."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        data = None if body is None else json.dumps(body).encode()
        conn.request(method, path, body=data, headers={"Authorization": gwkit.basic_auth("admin", password),
                                                       "Content-Type": "application/json"})
        answer = conn.getresponse()
        text = answer.read()
        assert answer.status == 200, text
        return json.loads(text)
    finally:
        conn.close()


@pytest.fixture
def silent_hes() -> Iterator[tuple[str, threading.Event]]:
    """A receiving server that takes a push and never answers: its URL and an event set once a push arrived."""
    listener = socket.create_server(("127.0.0.1", 0))
    arrived = threading.Event()
    held: list[socket.socket] = []

    def serve() -> None:
        with contextlib.suppress(OSError):
            while True:
                conn, _ = listener.accept()
                held.append(conn)
                if conn.recv(65536).startswith(b"POST"):
                    arrived.set()

    threading.Thread(target=serve, daemon=True).start()
    yield f"http://127.0.0.1:{listener.getsockname()[1]}/", arrived
    listener.close()
    for conn in held:
        conn.close()


@pytest.mark.parametrize(("signum", "ignore_sigint"), [
    (signal.SIGTERM, True),   # a service manager, `kill`, or a script stopping its background job
    (signal.SIGINT, True),    # `kill -INT` of a background job, which starts with SIGINT ignored
    (signal.SIGINT, False),   # Ctrl-C in a terminal
    (signal.SIGHUP, True),    # the terminal closed
], ids=["SIGTERM", "SIGINT-when-ignored", "SIGINT", "SIGHUP"])
def test_a_stop_signal_stops_the_demo_cleanly_and_removes_everything(start_demo, signum: int,
                                                                      ignore_sigint: bool) -> None:
    demo = start_demo(ignore_sigint=ignore_sigint)
    folder, hes_port, web_port, _ = demo.ready()
    assert folder.is_dir()
    demo.signal(signum)
    status = demo.exit_status(f"on {signal.Signals(signum).name}")
    out = demo.output()
    assert status == 0, out
    name = signal.Signals(signum).name
    assert f"wmbus-stream demo: {name} received: stopping" in out
    assert out.splitlines()[-1] == f"wmbus-stream demo: stopped cleanly; removed {folder}"
    assert "Traceback" not in out
    assert_all_gone(demo, folder, (hes_port, web_port))


def test_a_second_signal_while_stopping_stops_at_once(start_demo) -> None:
    demo = start_demo()
    folder, hes_port, web_port, _ = demo.ready()
    # Both signals reach the demo together: held while it is stopped, delivered when it goes on.
    demo.signal(signal.SIGSTOP)
    demo.signal(signal.SIGTERM)
    demo.signal(signal.SIGINT)
    demo.signal(signal.SIGCONT)
    status = demo.exit_status("on a second signal")
    out = demo.output()
    last = out.splitlines()[-1]
    found = re.fullmatch(r"wmbus-stream demo: (SIG\w+) received while stopping: stopped at once, the gateway's "
                         r"shutdown cut short; removed (\S+)", last)
    assert found, out
    assert status == 128 + signal.Signals[found[1]], out
    assert found[2] == str(folder)
    assert_all_gone(demo, folder, (hes_port, web_port))


def test_a_second_signal_while_a_hung_push_holds_the_shutdown_stops_at_once(start_demo, silent_hes) -> None:
    demo = start_demo()
    folder, hes_port, web_port, password = demo.ready()
    url, arrived = silent_hes
    web_api(web_port, password, "PATCH", "/api/v1/config", {"changes": {"receiving.server.url": url}})
    assert arrived.wait(60), "no push reached the silent receiving server"
    demo.signal(signal.SIGTERM)  # the gateway's shutdown now waits for the push in flight
    demo.wait_line(r"SIGTERM received: stopping", "the demo to start stopping")
    demo.signal(signal.SIGINT)
    status = demo.exit_status("on a second signal")
    out = demo.output()
    assert out.splitlines()[-1] == ("wmbus-stream demo: SIGINT received while stopping: stopped at once, the "
                                    f"gateway's shutdown cut short; removed {folder}"), out
    assert status == 128 + signal.SIGINT, out
    assert_all_gone(demo, folder, (hes_port, web_port))


def test_the_progress_line_adds_up_after_a_filter_change(start_demo) -> None:
    demo = start_demo(ignore_sigint=False)
    folder, _, web_port, password = demo.ready()

    def api(method: str, path: str, body: object = None) -> dict:
        return web_api(web_port, password, method, path, body)

    gwkit.wait_for(lambda: api("GET", "/api/v1/status")["telegrams"].get("ok", 0) > 0, "accepted telegrams", 30)
    api("PATCH", "/api/v1/config", {"changes": {"filter.manufacturer": "KAM"}})
    gwkit.wait_for(lambda: api("GET", "/api/v1/status")["telegrams"].get("filter.manufacturer", 0) > 0,
                   "telegrams filtered out by the new manufacturer filter", 30)
    demo.signal(signal.SIGINT)
    assert demo.exit_status("on SIGINT") == 0, demo.output()
    lines = [m for line in demo.lines if (m := PROGRESS.search(line))]
    assert lines, f"no progress line in the UI's words:\n{demo.output()}"
    for m in lines:
        read, accepted, broken, filtered, _pending = map(int, m.groups())
        assert read == accepted + broken + filtered, m.string
    final = list(map(int, lines[-1].groups()))
    assert final[3] > 0 and final[1] > 0, lines[-1].string
    assert "meters held" not in demo.output()
    assert not folder.exists()


def test_a_sigterm_before_the_demo_is_ready_is_a_clean_stop(start_demo) -> None:
    """Outside tester: a SIGTERM in the first half second ended the demo with 143 and no word."""
    demo = start_demo()
    # The first moment program code holds SIGTERM (the command's first line), long before the demo is set up.
    gwkit.wait_for(lambda: gwkit.caught(demo.process.pid, signal.SIGTERM) or demo.process.poll() is not None,
                   "a SIGTERM handler in the demo", 30, interval=0.001)
    demo.signal(signal.SIGTERM)
    status = demo.exit_status("on an early SIGTERM")
    out = demo.output()
    assert status == 0, out
    assert "wmbus-stream demo: SIGTERM received: stopping" in out
    folder = Path(re.search(r"stopped cleanly; removed (\S+)$", out.splitlines()[-1])[1])
    assert not folder.exists() and "Traceback" not in out
