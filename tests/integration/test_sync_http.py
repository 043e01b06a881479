"""The sync's HTTP client at its trust boundary: credentials stay with their origin, URLs from a
server never bring credentials, a CA file matters only for https, and errors meant for a
remote party are in the gateway's own words. Real servers on 127.0.0.1."""

from __future__ import annotations

import base64
import http.server
import socket
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from wmbus_stream.config import model
from wmbus_stream.config.manage import ConfigManager
from wmbus_stream.io import push as client
from wmbus_stream.io.fetch import fetch
from wmbus_stream.io.http import HttpError, Timeouts
from wmbus_stream.io.notify import notify
from wmbus_stream.sync.procedure import run_sync

pytestmark = pytest.mark.integration


Answer = tuple[int, dict[str, str], bytes]


class Recorder:
    """Plain HTTP on 127.0.0.1: ``routes`` path -> (status, headers, body), or a list of them given in
    turn; records (path, Authorization)."""

    def __init__(self, routes: dict[str, Answer | list[Answer]]) -> None:
        self.seen: list[tuple[str, str | None]] = []
        self.routes = routes
        owner = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802
                owner.seen.append((self.path, self.headers.get("Authorization")))
                answer = routes.get(self.path, (404, {}, b"the other server's words"))
                if isinstance(answer, list):  # one answer after the other, the last one for good
                    answer = answer.pop(0) if len(answer) > 1 else answer[0]
                status, headers, body = answer
                self.send_response(status)
                for name, value in headers.items():
                    self.send_header(name, value)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            do_POST = do_GET  # noqa: N815

            def log_message(self, *args: object) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def servers() -> Iterator[tuple[Recorder, Recorder]]:
    other = Recorder({"/file": (200, {}, b"other\n")})
    home = Recorder({"/file": (200, {}, b"home\n"), "/away": (302, {"Location": other.url + "/file"}, b""),
                     "/creds": (302, {"Location": other.url.replace("://", "://x:y@") + "/file"}, b""),
                     "/secret": (403, {}, b"private page of a LAN device")})
    yield home, other
    home.close()
    other.close()


def basic(user: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


def test_credentials_go_only_to_their_origin_and_a_redirect_never_brings_new_ones(servers) -> None:
    home, other = servers
    assert fetch(home.url + "/away", username="fleet", password="pw") == b"other\n"
    assert home.seen == [("/away", basic("fleet", "pw"))] and other.seen == [("/file", None)]
    with pytest.raises(HttpError, match=r"redirect refused: user:password@ in the Location"):
        fetch(home.url + "/creds")
    assert len(other.seen) == 1


def test_the_callers_policy_is_asked_before_every_request(servers) -> None:
    home, other = servers
    asked: list[str] = []

    def check(url: str) -> str | None:
        asked.append(url)
        return "not an allowed origin" if url.startswith(other.url) else None

    with pytest.raises(HttpError, match=rf"GET {other.url}/file: refused: not an allowed origin"):
        fetch(home.url + "/away", check=check)
    assert asked == [home.url + "/away", other.url + "/file"] and other.seen == []
    with pytest.raises(HttpError, match="refused: not an allowed origin"):
        notify(other.url + "/file", "900\n", check=check)
    assert other.seen == []


def test_an_unusable_ca_file_does_not_stop_plain_http(servers, hes, tmp_path) -> None:
    """A CA file that broke after it was set stops only https requests, not a sync or a push over http."""
    home, _ = servers
    junk = tmp_path / "junk.pem"
    junk.write_text("not a certificate\n")
    assert fetch(home.url + "/file", ca_file=str(junk)) == b"home\n"
    result = client.push(hes.url, lambda: [b"not a report line\r\n"], ca_file=str(junk), deadline=None, attempts=1)
    assert result.status == 400, result.error  # the HES itself answered: the CA file was not in the way
    with pytest.raises(HttpError, match=r"CA file .*junk\.pem cannot be used"):
        fetch("https://127.0.0.1:9/file", ca_file=str(junk))


def test_what_a_remote_party_is_told_never_quotes_another_server_or_tells_refused_from_silent(servers) -> None:
    home, _ = servers
    with pytest.raises(HttpError) as info:
        fetch(home.url + "/secret")
    assert "private page" in str(info.value) and info.value.public == f"GET {home.url}/secret: HTTP 403"
    with pytest.raises(HttpError) as info:
        notify(home.url + "/missing", "900\n")
    assert "other server's words" in str(info.value) and info.value.public == f"POST {home.url}/missing: HTTP 404"
    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen(4)  # connections are accepted by the kernel, nothing ever answers
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        closed = probe.getsockname()[1]
    told = []
    try:
        for port in (closed, silent.getsockname()[1]):
            with pytest.raises(HttpError) as info:
                fetch(f"http://127.0.0.1:{port}/f", timeouts=Timeouts(connect=1, read=1, total=2))
            told.append(info.value.public.replace(str(port), "PORT"))
    finally:
        silent.close()
    assert told[0] == told[1] == ("GET http://127.0.0.1:PORT/f: no answer (cannot connect, or the connection"
                                  " failed or timed out)")


def synced_gateway(tmp_path: Path, server: Recorder) -> tuple[ConfigManager, model.Config]:
    """A gateway whose configuration server is ``server`` (plain http, allowed by its owner)."""
    path = tmp_path / "stream.cfg"
    path.write_text(f"gateway.serial=00000161\nstate.directory={tmp_path / 'state'}\n"
                    "receiving.server.url=https://hes.example/in\nreceiver.address=62001772\n"
                    f"configuration.server.url={server.url}/cad\nconfiguration.server.allow.http=true\n"
                    "receiving.server.retries=3\n")
    return ConfigManager(path, tmp_path / "state"), model.load(path)


def test_a_sync_result_is_posted_again_with_the_push_backoff(tmp_path: Path) -> None:
    """Not acknowledged twice (503, then 404: anything but 200 OK is tried again), then OK: three
    POSTs, waiting rand * 1 s, then rand * 2 s, as a push does."""
    server = Recorder({"/result": [(503, {}, b"busy"), (404, {}, b"not yet"), (200, {}, b"OK\n")]})
    try:
        server_cad = f"Sync-Mode: server\nSync-Id: r1\nSync-Notify-URL: {server.url}/result\n".encode()
        server.routes["/cad"] = (200, {}, server_cad)
        manager, config = synced_gateway(tmp_path, server)
        waits: list[float] = []
        result = run_sync(manager, config, sleep=waits.append, rand=lambda: 0.5)
        assert result.ok and result.notified is True and result.notify_error is None
        assert waits == [0.5, 1.0]
        assert [path for path, _ in server.seen] == ["/cad", "/result", "/result", "/result"]
    finally:
        server.close()


def test_a_sync_result_gives_up_after_its_attempts_or_at_a_stop(tmp_path: Path) -> None:
    server = Recorder({"/result": (503, {}, b"busy")})
    try:
        server.routes["/cad"] = (200, {}, f"Sync-Mode: server\nSync-Notify-URL: {server.url}/result\n".encode())
        manager, config = synced_gateway(tmp_path, server)
        waits: list[float] = []
        result = run_sync(manager, config, sleep=waits.append, rand=lambda: 1.0)
        assert result.notified is False and result.notify_error.startswith("POST ") and "HTTP 503" in result.notify_error
        assert waits == [1.0, 2.0] and len(server.seen) == 1 + 3  # receiving.server.retries=3 attempts
        stop = threading.Event()
        stop.set()  # the wait after the first failure ends at once, and nothing more is posted
        result = run_sync(manager, config, stop_event=stop)
        assert result.notified is False and len(server.seen) == 4 + 2
    finally:
        server.close()
