"""The reference HES at fleet scale as real processes: ``wmbus-stream receive`` instances and the documented nginx.

nginx runs ``docs/examples/nginx-hes.conf`` itself, its example paths and ports replaced by
the test's, inside a minimal main configuration (as fleet_harness does for the .cad server).
"""

from __future__ import annotations

import contextlib
import re
import signal
import socket
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from gwkit import NGINX, LoggedProcess, caught, nginx_main_config, stop_server, wait_for

__all__ = ["HES_EXAMPLE", "HesNginx", "Receiver", "free_port", "render_hes_example", "start_hes_nginx"]

ROOT = Path(__file__).resolve().parents[2]
HES_EXAMPLE = ROOT / "docs" / "examples" / "nginx-hes.conf"
_POST = re.compile(r" POST (?P<path>\S+): (?P<lines>\d+) lines, (?P<new>\d+) new readings, gateway (?P<gateways>\S+)$")


def free_port() -> int:
    """A TCP port of 127.0.0.1 that was free a moment ago."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@dataclass(frozen=True)
class Post:
    """One accepted POST as a receiver's output line tells it."""

    lines: int
    new_readings: int
    gateways: tuple[str, ...]


class Receiver(LoggedProcess):
    """``python -m wmbus_stream receive`` on 127.0.0.1:``port``, its output collected line by line."""

    def __init__(self, port: int, *args: str) -> None:
        self.port = port
        self.title = f"receiver :{port}"
        super().__init__("receive", "--listen", f"127.0.0.1:{port}", *args)

    def posts(self) -> list[Post]:
        """The POSTs it accepted (stored), in order."""
        found = (_POST.search(line) for line in self.log())
        return [Post(int(m["lines"]), int(m["new"]), tuple(m["gateways"].split(","))) for m in found if m]

    def wait_ready(self, timeout: float = 20.0) -> None:
        def ready() -> bool:
            if self.proc.poll() is not None:
                raise AssertionError(f"receiver exited ({self.proc.returncode}){self.tail()}")
            # Ready once it says so and SIGTERM is handled (a stop then is a clean one).
            return any("receiving reports on" in line for line in self.log()) and caught(self.proc.pid, signal.SIGTERM)

        wait_for(ready, f"receiver on port {self.port} ready", timeout, context=self.tail)

    def stop(self) -> int | None:
        """SIGTERM, SIGKILL after 15 s; the exit code."""
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._reader.join(2)
        if self.proc.stdout is not None:
            self.proc.stdout.close()
        return self.proc.returncode


def render_hes_example(port: int, cert: Path, key: Path, logs: Path, upstreams: tuple[int, int]) -> str:
    """The documented example with the test's listen port, certificate, log folder and receiver ports."""
    text = HES_EXAMPLE.read_text(encoding="utf-8")
    replacements = {
        "listen 443 ssl;": f"listen 127.0.0.1:{port} ssl;",
        "/etc/ssl/wmbus-hes/fullchain.pem": str(cert),
        "/etc/ssl/wmbus-hes/privkey.pem": str(key),
        "/var/log/nginx/": f"{logs}/",
        "server 127.0.0.1:8081 ": f"server 127.0.0.1:{upstreams[0]} ",
        "server 127.0.0.1:8082 ": f"server 127.0.0.1:{upstreams[1]} ",
    }
    for old, new in replacements.items():
        assert old in text, f"docs/examples/nginx-hes.conf no longer contains {old!r}: update the HES fleet tests"
        text = text.replace(old, new)
    return text


@dataclass
class HesNginx:
    """The documented nginx in front of two receiver ports, TLS by a test CA."""

    folder: Path
    port: int
    ca_file: Path

    @property
    def url(self) -> str:
        return f"https://127.0.0.1:{self.port}/report"

    @property
    def access_log(self) -> Path:
        return self.folder / "logs" / "wmbus-hes.access.log"


@contextlib.contextmanager
def start_hes_nginx(folder: Path, upstreams: tuple[int, int]) -> Iterator[HesNginx]:
    """nginx running the documented example (the receivers may start before or after); stopped at the end."""
    trustme = pytest.importorskip("trustme", reason="trustme makes the test CA (pip install trustme)")
    if NGINX is None:
        pytest.skip("nginx binary not found (apt-get install nginx-light)")
    folder.mkdir(parents=True)
    for sub in ("logs", "body", "proxy", "fastcgi", "uwsgi", "scgi"):
        (folder / sub).mkdir()
    ca = trustme.CA()
    ca_file = folder / "ca.pem"
    ca.cert_pem.write_to_path(str(ca_file))
    leaf = ca.issue_cert("127.0.0.1", "localhost")
    cert, key = folder / "server.pem", folder / "server.key"
    cert.write_bytes(b"".join(blob.bytes() for blob in leaf.cert_chain_pems))
    leaf.private_key_pem.write_to_path(str(key))
    command = [NGINX, "-p", str(folder), "-c", str(folder / "nginx.conf"), "-e", str(folder / "error.log")]
    for attempt in range(3):  # a port seen free may be taken before nginx binds it: pick a new one
        port = free_port()
        (folder / "site.conf").write_text(render_hes_example(port, cert, key, folder / "logs", upstreams))
        (folder / "nginx.conf").write_text(nginx_main_config(folder, 256))
        process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)

        def listening(process: subprocess.Popen[bytes] = process, port: int = port) -> bool:
            if process.poll() is not None:
                assert process.stderr is not None
                raise AssertionError(f"nginx exited: {process.stderr.read().decode(errors='replace')}")
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
                return True
            except OSError:
                return False

        try:
            wait_for(listening, "nginx listening", 10)
            break
        except AssertionError as exc:
            stop_server(process)
            if "Address already in use" not in str(exc) or attempt == 2:
                raise
    try:
        yield HesNginx(folder, port, ca_file)
    finally:
        stop_server(process)
