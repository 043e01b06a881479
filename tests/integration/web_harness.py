"""Shared parts of the web UI tests: a running gateway with its web server, and a real browser.

The gateway is the real ``Gateway`` in this process (simulator receiver, control socket,
web server on a free port of 127.0.0.1) pushing to the reference HES; a thread drives its
main loop as ``run`` does. The browser is Debian's Chromium, headless, driven by Selenium
through Debian's chromedriver: both paths are pinned, so Selenium Manager never looks for
(or downloads) a browser or a driver. Screenshots go to ``$WMBUS_STREAM_SCREENSHOTS`` when
it is set (``docs/screenshots`` for the documentation), else to the test's temporary folder.
"""

from __future__ import annotations

import base64
import http.client
import json
import os
import shutil
import socket
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

import gwkit
from wmbus_stream.config import model
from wmbus_stream.app import Gateway
from wmbus_stream.host import as_json
from wmbus_stream.web.auth import write_password

CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
ADMIN = "admin"
PASSWORD = "k7d-Wq2m-Test-Pass"
HES_USER, HES_SECRET = "gw", "HES-s3cr3t-Do-Not-Leak"


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def screenshot_dir(fallback: Path) -> Path:
    folder = Path(os.environ.get("WMBUS_STREAM_SCREENSHOTS") or fallback)
    folder.mkdir(parents=True, exist_ok=True)
    return folder


@dataclass
class WebGateway:
    """A running in-process gateway with its web UI, the HES it pushes to, and HTTP helpers."""

    folder: Path
    config_path: Path
    gateway: Gateway
    hes: gwkit.Hes
    base: str
    port: int
    stop: threading.Event
    thread: threading.Thread
    logs: list[str] = field(default_factory=list)

    @property
    def state(self) -> Path:
        return self.gateway.config.state_directory

    @property
    def web(self) -> Any:
        return self.gateway.web

    def request(self, method: str, path: str, body: bytes | None = None, headers: dict[str, str] | None = None,
                auth: tuple[str, str] | None = None) -> tuple[int, dict[str, str], bytes]:
        """One raw HTTP request (no cookies, no redirects followed): status, headers, body."""
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)
        try:
            all_headers = dict(headers or {})
            if auth is not None:
                all_headers["Authorization"] = "Basic " + base64.b64encode(f"{auth[0]}:{auth[1]}".encode()).decode()
            conn.request(method, path, body=body, headers=all_headers)
            response = conn.getresponse()
            data = response.read()
            return response.status, {k.lower(): v for k, v in response.getheaders()}, data
        finally:
            conn.close()

    def api(self, method: str, path: str, value: Any = None, **kwargs: Any) -> tuple[int, Any]:
        body = None if value is None else json.dumps(value).encode()
        headers = {"Content-Type": "application/json"} if body is not None else {}
        status, _, data = self.request(method, path, body, headers, auth=(ADMIN, PASSWORD), **kwargs)
        return status, json.loads(data) if data else None

    def wait_status(self, predicate: Callable[[dict[str, Any]], Any], what: str, timeout: float = 15.0) -> dict:
        return gwkit.wait_for(lambda: (s := as_json(self.gateway.status())) and predicate(s) and s, what, timeout)

    def close(self) -> None:
        self.stop.set()
        self.thread.join(5)
        self.gateway.shutdown()
        self.hes.close()


def start_gateway(folder: Path, extra: dict[str, str] | None = None, *, password: str | None = PASSWORD,
                  meters: int = 120) -> WebGateway:
    """Write a configuration, set the admin password, start the gateway and its main loop."""
    hes = gwkit.Hes(username=HES_USER, password=HES_SECRET)
    port = free_port()
    state = folder / "state"
    values = {
        "receiver.protocol": "simulator",
        "simulator.meters": str(meters),
        "receiver.address": "62001772",
        "gateway.serial": "00000161",
        "receiving.server.url": hes.url,
        "receiving.server.username": HES_USER,
        "receiving.server.password": HES_SECRET,
        "receiving.server.push.cron": "*/2 * * * * *",
        "receiving.server.retries": "0",
        "state.directory": str(state),
        "store.flush.seconds": "1",
        "web.enabled": "true",
        "web.listen": f"127.0.0.1:{port}",
        **(extra or {}),
    }
    config_path = folder / "stream.cfg"
    model.save(config_path, values)
    if password is not None:
        write_password(state, ADMIN, password)
    gateway = Gateway(model.load(config_path), config_path)
    gateway.start()
    assert gateway.web is not None, "web server did not start"
    stop = threading.Event()

    def loop() -> None:
        while not stop.wait(0.1):
            gateway.tick()

    thread = threading.Thread(target=loop, name="test-main-loop", daemon=True)
    thread.start()
    return WebGateway(folder, config_path, gateway, hes, f"http://127.0.0.1:{port}", port, stop, thread)


# -- the browser ------------------------------------------------------------------------------


def chromium_available() -> str | None:
    """Why the browser tests cannot run here, or None."""
    for path in (CHROMIUM, CHROMEDRIVER):
        if not os.access(path, os.X_OK):
            return f"{path} missing (apt-get install chromium chromium-driver)"
    try:
        import selenium  # noqa: F401
    except ImportError:
        return "selenium missing (pip install -e '.[test]')"
    return None


class Browser:
    """Headless Chromium driven by Selenium, with a download folder and screenshot helper."""

    def __init__(self, shots: Path) -> None:
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service

        os.environ.setdefault("SE_OFFLINE", "true")  # Selenium Manager: never go online
        self.profile = Path(tempfile.mkdtemp(prefix="wmbus-chromium-"))
        self.downloads = self.profile / "downloads"
        self.downloads.mkdir()
        options = webdriver.ChromeOptions()
        options.binary_location = CHROMIUM
        for arg in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                    "--disable-background-networking", "--disable-component-update", "--disable-sync",
                    "--disable-dev-shm-usage", f"--user-data-dir={self.profile / 'profile'}",
                    "--window-size=1400,1000"):
            options.add_argument(arg)
        options.add_experimental_option("prefs", {"download.default_directory": str(self.downloads),
                                                  "download.prompt_for_download": False})
        self.driver = webdriver.Chrome(service=Service(executable_path=CHROMEDRIVER), options=options)
        self.driver.set_page_load_timeout(30)
        self.driver.execute_cdp_cmd("Browser.setDownloadBehavior",
                                    {"behavior": "allow", "downloadPath": str(self.downloads)})
        self.shots = shots

    # navigation and waiting
    def get(self, url: str) -> None:
        self.driver.get(url)

    def css(self, selector: str) -> Any:
        from selenium.webdriver.common.by import By

        return self.driver.find_element(By.CSS_SELECTOR, selector)

    def all(self, selector: str) -> list[Any]:
        from selenium.webdriver.common.by import By

        return self.driver.find_elements(By.CSS_SELECTOR, selector)

    def wait(self, predicate: Callable[[], Any], what: str, timeout: float = 15.0) -> Any:
        def safe() -> Any:
            try:
                return predicate()
            except Exception:  # noqa: BLE001  (stale elements while a page loads)
                return None

        return gwkit.wait_for(safe, what, timeout, interval=0.1,
                              context=lambda: f"\nat {self.driver.current_url}: {self.text()[:1500]}")

    def text(self) -> str:
        try:
            return self.css("body").text
        except Exception:  # noqa: BLE001
            return ""

    def submit_and_wait(self, element: Any, what: str = "the next page") -> None:
        """Click a submit button and wait until the browser shows a different document."""
        marker = self.css("html")
        element.click()
        self.wait(lambda: _stale(marker), what)

    def login(self, base: str, user: str = ADMIN, password: str = PASSWORD) -> None:
        self.get(base + "/login")
        self.driver.delete_all_cookies()
        self.get(base + "/login")
        self.css("input[name=user]").send_keys(user)
        self.css("input[name=password]").send_keys(password)
        self.submit_and_wait(self.css("button[type=submit]"), "the page after logging in")

    def screenshot(self, name: str) -> Path:
        height = self.driver.execute_script("return document.documentElement.scrollHeight")
        self.driver.set_window_size(1400, max(700, min(int(height) + 40, 2600)))
        path = self.shots / f"{name}.png"
        self.driver.save_screenshot(str(path))
        self.driver.set_window_size(1400, 1000)
        return path

    def download(self, click: Callable[[], None], suffix: str, timeout: float = 15.0) -> Path:
        """Click something that downloads a file; the file once Chromium has finished writing it."""
        for old in self.downloads.iterdir():
            old.unlink()
        click()

        def done() -> Path | None:
            files = [p for p in self.downloads.iterdir() if p.name.endswith(suffix)]
            partial = [p for p in self.downloads.iterdir() if p.name.endswith(".crdownload")]
            return files[0] if files and not partial else None

        return gwkit.wait_for(done, f"a downloaded *{suffix} file", timeout)

    def close(self) -> None:
        try:
            self.driver.quit()
        finally:
            shutil.rmtree(self.profile, ignore_errors=True)


def _stale(element: Any) -> bool:
    from selenium.common.exceptions import StaleElementReferenceException

    try:
        element.tag_name  # noqa: B018
        return False
    except StaleElementReferenceException:
        return True


@pytest.fixture(scope="module", name="browser")
def browser_fixture(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Browser]:
    reason = chromium_available()
    if reason:
        if os.environ.get("CI") or os.environ.get("WMBUS_STREAM_TEST_REQUIRE_BROWSER") == "1":
            pytest.fail(f"browser tests cannot run: {reason}")
        pytest.skip(reason)
    b = Browser(screenshot_dir(tmp_path_factory.mktemp("screenshots")))
    try:
        yield b
    finally:
        b.close()


def wait_until(predicate: Callable[[], Any], what: str, timeout: float = 15.0) -> Any:
    return gwkit.wait_for(predicate, what, timeout, interval=0.1)


def now() -> float:
    return time.time()


@pytest.fixture(autouse=True)
def fresh_limiter(request: pytest.FixtureRequest) -> Iterator[None]:
    """(autouse where imported) Every test ends without failed logins counted against its addresses."""
    yield
    if "gw" in request.fixturenames:
        request.getfixturevalue("gw").web.limiter.clear()
