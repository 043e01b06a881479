"""Security of the web UI, JSON API and /metrics against a real running gateway (A.7 #35-38).

Real HTTP over 127.0.0.1 (``http.client``, no test client) and, where escaping must be seen
rendered or a cross-site form must come from a real page, Debian's headless Chromium. The
main gateway reads a hex receiver on a pty, so the test decides every telegram it hears
(odd manufacturers, IDs with hex letters) and its state stays still between uploads; it
pushes with basic auth to the reference HES, so the HES password is really in use while the
tests look for it everywhere. Every log record of the gateway is captured for #38.
"""

from __future__ import annotations

import base64
import csv
import hashlib
import http.client
import io
import json
import logging
import re
import socket
import sqlite3
import ssl
import stat
import tarfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import pytest
from web_harness import fresh_limiter  # noqa: F401  (autouse)
from web_harness import ADMIN, HES_SECRET, HES_USER, PASSWORD, Browser, WebGateway, browser_fixture, start_gateway, wait_until  # noqa: F401

import gwkit
from wmbus_stream.state import archive
from wmbus_stream.core.analyzer import Analyzer
from wmbus_stream.io.store import Store
from wmbus_stream.web.auth import PASSWORD_FILE, password_problem
from wmbus_stream.web.operations import IMPORT_LIMIT, RESTORE_LIMIT

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
OPENAPI = REPO / "src" / "wmbus_stream" / "web" / "static" / "openapi.json"
CFG_SECRET = "CFG-s3cret-In-The-Url"
DEFAULT_PAIRS = [("admin", "admin"), ("admin", ""), ("admin", "password"), ("admin", "1234"), ("admin", "12345678"),
                 ("admin", "admin123"), ("admin", "changeme"), ("root", "root"), ("root", ""), ("root", "toor"),
                 ("user", "user"), ("guest", "guest"), ("elvaco", "elvaco")]
# What an attacker would put in a value: markup, both quotes, an event handler, control characters.
XSS = '<script>alert("x")</script><img src=x onerror=alert(1)>\'"&'
CONTROL = "\x1b[31m\x00\x07\u2028"


def shown(text: str) -> str:
    """How the pages show ``text``: control characters as visible ``\\xNN`` escapes."""
    def one(ch: str) -> str:
        code = ord(ch)
        if ch in "\n\t" or not (code < 0x20 or 0x7F <= code < 0xA0 or code in (0x2028, 0x2029)):
            return ch
        return f"\\x{code:02x}" if code <= 0xFF else f"\\u{code:04x}"

    return "".join(map(one, text))


# -- fixtures and helpers ------------------------------------------------------------------------


class Captured(logging.Handler):
    """Every log record of the process, formatted with its arguments, kept for #38."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        if record.name.startswith(("wmbus_stream", "urllib3", "prometheus")):
            text = record.getMessage() + (self.formatException(record.exc_info) if record.exc_info else "")
            self.lines.append(f"{record.name} {record.levelname} {text}")


@pytest.fixture(scope="module")
def logs() -> Iterator[Captured]:
    """Capture every record at DEBUG while the module's gateway runs."""
    handler = Captured()
    root, ours = logging.getLogger(), logging.getLogger("wmbus_stream")
    levels = root.level, ours.level
    root.addHandler(handler)
    root.setLevel(logging.DEBUG)
    ours.setLevel(logging.DEBUG)
    try:
        yield handler
    finally:
        root.removeHandler(handler)
        root.setLevel(levels[0])
        ours.setLevel(levels[1])


@pytest.fixture(scope="module")
def receiver(tmp_path_factory: pytest.TempPathFactory) -> Iterator[gwkit.PtyReceiver]:
    """The pty the module's gateway reads as its hex receiver."""
    pty = gwkit.PtyReceiver(tmp_path_factory.mktemp("pty") / "ttyWMBUS")
    try:
        yield pty
    finally:
        pty.close()


@pytest.fixture(scope="module")
def gw(tmp_path_factory: pytest.TempPathFactory, logs: Captured, receiver: gwkit.PtyReceiver) -> Iterator[WebGateway]:
    """A gateway on a hex pty receiver, pushing with basic auth, a secret in the sync URL too.

    Only the meters of ``normal_telegrams`` are allow-listed, so the odd ones fed for #36 are
    shown by the analyzer but never pushed (the reference HES wants decimal meter IDs).
    """
    allowed = ",".join(gwkit.meter_id(t) for t in normal_telegrams())
    running = start_gateway(tmp_path_factory.mktemp("web-sec"), {
        "receiver.protocol": "hex", "receiver.port": str(receiver.link), "filter.device.id": allowed,
        "configuration.server.url": f"https://cfg:{CFG_SECRET}@127.0.0.1:9/gateway.cad",
    })
    try:
        running.wait_status(lambda s: s["receiver"]["state"] == "connected", "the pty receiver to connect")
        yield running
    finally:
        running.close()


def basic(user: str, password: str) -> dict[str, str]:
    """The Authorization header of HTTP basic auth."""
    return {"Authorization": "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()}


def concrete(path: str) -> str:
    """A path template of the OpenAPI file (``{n}``) or a route pattern made requestable."""
    path = path.replace("{n}", "1").replace("(?P<n>[0-9]{1,9})", "1")
    return path.replace("\\.", ".")


def page_paths(gw: WebGateway) -> list[tuple[str, str]]:
    """(method, path) of every route the app serves but its static assets."""
    out = []
    for route in gw.web.routes:
        if "(?P<name>" in route.pattern.pattern:
            continue
        out.append((route.method, concrete(route.pattern.pattern.removesuffix(r"\Z"))))
    return out


def openapi_paths(*, templates: bool = False) -> list[tuple[str, str]]:
    """(method, path) of every operation in the OpenAPI file; ``{n}`` filled in unless ``templates``."""
    spec = json.loads(OPENAPI.read_text(encoding="utf-8"))
    return [(method.upper(), path if templates else concrete(path)) for path, item in spec["paths"].items()
            for method in item]


@dataclass
class Login:
    """A browser-like session over plain HTTP: the cookie, the CSRF token and the origin."""

    gw: WebGateway
    cookie: str
    csrf: str

    @property
    def origin(self) -> str:
        return self.gw.base

    def get(self, path: str) -> tuple[int, dict[str, str], bytes]:
        """GET with the session cookie."""
        return self.gw.request("GET", path, headers={"Cookie": f"wmbus_session={self.cookie}"})

    def post(self, path: str, fields: dict[str, str] | None = None, *, token: str | None = "auto",
             headers: dict[str, str] | None = None, origin: str | None = "auto") -> tuple[int, dict[str, str], bytes]:
        """POST a form with the cookie; token and origin default to the right ones, None leaves them out."""
        values = dict(fields or {})
        if token == "auto":
            values["csrf"] = self.csrf
        elif token is not None:
            values["csrf"] = token
        sent = {"Cookie": f"wmbus_session={self.cookie}", "Content-Type": "application/x-www-form-urlencoded"}
        if origin == "auto":
            sent["Origin"] = self.origin
        elif origin is not None:
            sent["Origin"] = origin
        sent.update(headers or {})
        return self.gw.request("POST", path, urlencode(values).encode(), sent)

    def upload(self, path: str, name: str, data: bytes, extra: dict[str, str] | None = None) -> tuple[int, dict[str, str], bytes]:
        """POST a multipart form with one file, as the Settings page's upload forms do."""
        boundary = "----wmbus" + hashlib.sha256(data).hexdigest()[:16]
        fields = {"csrf": self.csrf, **(extra or {})}
        body = b"".join(f'--{boundary}\r\nContent-Disposition: form-data; name="{k}"\r\n\r\n{v}\r\n'.encode()
                        for k, v in fields.items())
        body += (f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="{name}"\r\n'
                 f"Content-Type: application/octet-stream\r\n\r\n").encode() + data + f"\r\n--{boundary}--\r\n".encode()
        return self.gw.request("POST", path, body, {"Cookie": f"wmbus_session={self.cookie}", "Origin": self.origin,
                                                    "Content-Type": f"multipart/form-data; boundary={boundary}"})


def login(gw: WebGateway, user: str = ADMIN, password: str = PASSWORD) -> Login:
    """Log in with the form over plain HTTP and read the CSRF token off the settings page."""
    status, headers, _ = gw.request("POST", "/login", urlencode({"user": user, "password": password, "next": "/"}).encode(),
                                    {"Content-Type": "application/x-www-form-urlencoded", "Origin": gw.base})
    assert status == 303, f"login answered {status}"
    cookie = re.match(r"wmbus_session=([^;]+)", headers["set-cookie"])
    assert cookie
    session = Login(gw, cookie.group(1), "")
    _, _, page = session.get("/settings")
    token = re.search(rb'name="csrf" value="([^"]+)"', page)
    assert token, "the settings page carries the CSRF token"
    session.csrf = token.group(1).decode()
    return session


def state_snapshot(gw: WebGateway) -> dict[str, Any]:
    """What an upload must not change: config file, history, files, names in the state folder, settings."""
    state = gw.state
    digest = {p.name: hashlib.sha256(p.read_bytes()).hexdigest()
              for p in (gw.config_path, state / "history.sqlite") if p.exists()}
    names = sorted(p.name for p in state.iterdir() if not p.name.endswith(("-wal", "-shm", "-journal")))
    files = sorted(str(p.relative_to(state)) for p in state.rglob("*") if p.is_file() and "files" in p.parts)
    return {"digest": digest, "names": names, "files": files, "raw": dict(gw.gateway.config.raw),
            "history": len(gw.web.manager().history())}


def normal_telegrams() -> list[bytes]:
    """Telegrams of the public vectors the gateway pushes to the HES."""
    return gwkit.vector_telegrams(8)[4:8]


def hostile_telegrams() -> list[bytes]:
    """Vector telegrams re-addressed to IDs with hex letters and manufacturers outside A..Z."""
    out = []
    for n, (telegram, man) in enumerate(zip(gwkit.vector_telegrams(4), ("[\\]", "^_@", "@@@", "ZZZ"), strict=True)):
        code = sum((ord(ch) - 64) << shift for ch, shift in zip(man, (10, 5, 0), strict=True))
        ident = bytes((0xAB, 0xCD, 0xEF, 0x10 + n))
        out.append(telegram[:2] + code.to_bytes(2, "little") + ident + telegram[8:])
    return out


def feed(receiver: gwkit.PtyReceiver, telegrams: list[bytes]) -> None:
    """Send telegrams as the hex receiver's lines (format A with link CRCs)."""
    receiver.write(b"".join(gwkit.PROTOCOLS["hex"].encode(t) for t in telegrams))


# -- A.7 #35: no default credentials, 401 everywhere until a password is set ----------------------


def test_before_passwd_every_page_and_endpoint_answers_401_but_the_set_password_page(tmp_path: Path) -> None:
    fresh = start_gateway(tmp_path, password=None, meters=5)
    try:
        targets = sorted(set(openapi_paths()) | set(page_paths(fresh)) | {("GET", "/no/such/page"), ("HEAD", "/")})
        assert len(targets) > 30
        for method, path in targets:
            body = b"{}" if method in ("POST", "PUT", "PATCH") else None
            for headers in ({}, basic("admin", "admin")):
                status, answer_headers, data = fresh.request(method, path, body, {"Content-Type": "application/json",
                                                                                   **headers})
                assert status == 401, f"{method} {path} answered {status} without a password set"
                assert "default-src 'none'" in answer_headers["content-security-policy"]
                assert answer_headers["x-content-type-options"] == "nosniff"
                if method == "HEAD":
                    continue
                if path.startswith("/api/") or path == "/metrics":
                    assert json.loads(data)["error"] == "no_password", f"{method} {path}"
                else:
                    assert b"Set a password on the device" in data and b"wmbus-stream passwd" in data, path
        assert fresh.request("GET", "/static/app.css")[0] == 200, "only the page's own assets are public"

        refused = gwkit.run_cli("passwd", "--config", str(fresh.config_path), "--stdin", input=b"administrator\n")
        assert refused.returncode != 0 and b"too easy to guess" in refused.stderr
        assert not (fresh.state / PASSWORD_FILE).exists()
        done = gwkit.run_cli("passwd", "--config", str(fresh.config_path), "--stdin", input=PASSWORD.encode() + b"\n")
        assert done.returncode == 0, done.stderr
        stored = fresh.state / PASSWORD_FILE
        assert stat.S_IMODE(stored.stat().st_mode) == 0o600
        assert PASSWORD.encode() not in stored.read_bytes() and b":scrypt:" in stored.read_bytes()
        wait_until(lambda: fresh.request("GET", "/api/v1/status", headers=basic(ADMIN, PASSWORD))[0] == 200,
                   "the new password to be taken up")
        assert fresh.request("GET", "/api/v1/status")[0] == 401, "still nothing without credentials"
    finally:
        fresh.close()


def test_common_default_pairs_fail_on_the_form_and_with_basic_auth(gw: WebGateway) -> None:
    form_headers = {"Content-Type": "application/x-www-form-urlencoded", "Origin": gw.base}
    for user, password in DEFAULT_PAIRS:
        gw.web.limiter.clear()  # each pair gets a real check, not a lock-out
        status, _, data = gw.request("GET", "/api/v1/status", headers=basic(user, password))
        assert status == 401 and json.loads(data)["error"] == "unauthorized", (user, password)
        status, headers, _ = gw.request("POST", "/login", urlencode({"user": user, "password": password}).encode(),
                                        form_headers)
        assert status == 401 and "set-cookie" not in headers, (user, password)
        assert password_problem(user, password) is not None, f"passwd would accept {user}/{password!r}"


def test_failed_logins_are_throttled_but_the_right_password_still_gets_in(gw: WebGateway) -> None:
    gw.web.limiter.clear()
    form = {"Content-Type": "application/x-www-form-urlencoded", "Origin": gw.base}
    failures_before, held_before = gw.web.limiter.failures_total, gw.web.limiter.held_total
    for attempt in range(6):
        status, _, _ = gw.request("POST", "/login", urlencode({"user": ADMIN, "password": f"guess-{attempt}"}).encode(),
                                  form)
        assert status == 401, f"attempt {attempt + 1}"
    assert gw.web.limiter.held_total - held_before == 1, "the sixth failure's answer was held"
    status, headers, data = gw.request("GET", "/api/v1/status", headers=basic(ADMIN, "another-guess"))
    assert status == 401 and json.loads(data)["error"] == "unauthorized"
    assert gw.web.limiter.failures_total - failures_before == 7
    good = urlencode({"user": ADMIN, "password": PASSWORD}).encode()
    assert gw.request("POST", "/login", good, form)[0] == 303, "the right password is never locked out"


# -- cross-site requests and CSRF -------------------------------------------------------------------


def test_cross_site_posts_and_missing_csrf_tokens_are_refused_with_nothing_changed(gw: WebGateway) -> None:
    session = login(gw)
    before = state_snapshot(gw)
    since = gw.gateway.analyzer.totals().running_since
    change = {"filter.device.type": "07"}
    attempts = {
        "another site": dict(origin="http://evil.example"),
        "another port": dict(origin="http://127.0.0.1:1"),
        "opaque origin": dict(origin="null"),
        "Sec-Fetch-Site": dict(headers={"Sec-Fetch-Site": "cross-site"}),
        "Referer only": dict(origin=None, headers={"Referer": "http://evil.example/page"}),
        "no Origin at all": dict(origin=None),
        "no CSRF token": dict(token=None),
        "wrong CSRF token": dict(token="x" * 43),
    }
    for what, options in attempts.items():
        for path, fields in (("/settings", change), ("/analyzer/reset", {}), ("/push", {}), ("/logout", {})):
            status, _, page = session.post(path, fields, **options)
            assert status == 403, f"{what}: POST {path} answered {status}"
            assert b"refused" in page or b"CSRF" in page, what
    status, _, data = gw.request("PATCH", "/api/v1/config", json.dumps({"changes": change}).encode(),
                                 {"Cookie": f"wmbus_session={session.cookie}", "Origin": gw.base,
                                  "Content-Type": "application/json"})
    assert status == 403 and json.loads(data)["error"] == "csrf", "the API with a cookie needs X-CSRF-Token too"
    assert state_snapshot(gw) == before
    assert gw.gateway.analyzer.totals().running_since == since
    assert session.get("/")[0] == 200, "the refused logout left the session alone"

    # the same request from the page itself goes through (the checks are not over-eager)
    assert session.post("/settings", change)[0] == 303
    assert gw.gateway.config.filter_device_type == (0x07,)
    assert gw.api("PATCH", "/api/v1/config", {"changes": {"filter.device.type": None}})[0] == 200


class _EvilPage(BaseHTTPRequestHandler):
    """A page on another origin with a form aimed at the gateway's settings."""

    target = ""

    def do_GET(self) -> None:  # noqa: N802
        """The attacker's page."""
        body = (f'<!doctype html><form method="post" action="{self.target}/settings">'
                '<input name="filter.device.type" value="07"><input name="csrf" value="guessed">'
                '<button id="go">win a prize</button></form>').encode()
        self.send_response(200)
        self.send_header("Content-Type", "text/html")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


def test_a_form_on_another_site_cannot_change_settings_in_a_logged_in_browser(browser: Browser, gw: WebGateway) -> None:
    browser.login(gw.base)
    assert browser.driver.get_cookie("wmbus_session"), "logged in"
    before = state_snapshot(gw)
    _EvilPage.target = gw.base
    evil = ThreadingHTTPServer(("127.0.0.1", 0), _EvilPage)
    threading.Thread(target=evil.serve_forever, daemon=True).start()
    try:
        # another port of the same host is the same *site*: SameSite lets the cookie go, Origin stops it
        browser.get(f"http://127.0.0.1:{evil.server_address[1]}/")
        browser.submit_and_wait(browser.css("#go"), "the gateway's answer to the cross-site form")
        assert "cross-site request refused" in browser.text()
    finally:
        evil.shutdown()
        evil.server_close()
    assert state_snapshot(gw) == before


# -- A.7 #36: hostile values render escaped --------------------------------------------------------


def hostile_backup(gw: WebGateway, tmp: Path) -> bytes:
    """This gateway's own backup with hostile meters in its analyzer state (valid checksums)."""
    status, _, data = gw.request("GET", "/api/v1/backup", headers=basic(ADMIN, PASSWORD))
    assert status == 200
    folder = tmp / "backup"
    folder.mkdir()
    with tarfile.open(fileobj=io.BytesIO(data), mode="r:gz") as tar:
        names = [m.name for m in tar.getmembers() if m.name != archive.MANIFEST]
        # The gateway's own backup, so trusted; Python 3.11.2 (Debian bookworm) has no filters.
        tar.extractall(folder, **({"filter": "data"} if hasattr(tarfile, "data_filter") else {}))
    state = json.loads(Analyzer(time.time()).dump())
    saved = Store.open(folder / archive.STORE_MEMBER)
    try:
        current = saved.get_meta("analyzer")
        if current:
            state = json.loads(current)
        now = time.time()
        for n, (ident, man, verdict, mode) in enumerate([
            (XSS, "<b>", "Accepted", "T1"), ("=HYPERLINK(\"http://x\")", XSS, "filter.manufacturer", XSS),
            ("@SUM(A1)" + CONTROL, "+" + CONTROL, XSS, None), ("-2+3", '"><svg onload=alert(2)>', "Accepted", "C1"),
        ]):
            state["meters"].append([f"ff{n:02x}" + "00" * 6, ident, man, 7, verdict, 3, -70, -80, -60, -210, 3, mode,
                                    now, now])
        state["broken"][XSS] = 1
        saved.set_meta("analyzer", json.dumps(state))
        saved.flush()
    finally:
        saved.close()
    edited = sqlite3.connect(folder / archive.STORE_MEMBER)  # as the gateway's backups hold it: no WAL
    edited.execute("PRAGMA journal_mode=DELETE")
    edited.close()
    out = io.BytesIO()
    archive.write(out, [(name, folder / name) for name in names], gateway_serial=gw.gateway.config.gateway_serial)
    return out.getvalue()


def rendered_safely(b: Browser, gw: WebGateway, path: str) -> str:
    """Open ``path``; fail if any markup of a value became an element, an attribute or a script."""
    b.get(gw.base + path)
    found = b.driver.execute_script(
        "const bad = [];"
        "for (const e of document.querySelectorAll('*')) {"
        "  for (const a of e.attributes) { if (a.name.startsWith('on')) bad.push(e.tagName + ' ' + a.name); }"
        "  if (['IMG', 'B'].includes(e.tagName) || (e.tagName === 'svg' && !e.closest('figure, td'))) bad.push(e.tagName);"
        "  if (e.tagName === 'SCRIPT' && !(e.getAttribute('src') || '').startsWith('/static/')) bad.push('inline script');"
        "}"
        "return bad;")
    assert found == [], f"{path}: hostile markup became live: {found}"
    text = b.driver.execute_script("return document.body.textContent")
    assert "\x1b" not in text and "\x00" not in text and "\u2028" not in text, f"{path}: raw control characters"
    return text


def test_hostile_ids_manufacturers_and_values_render_escaped_on_every_page(
        browser: Browser, gw: WebGateway, receiver: gwkit.PtyReceiver, tmp_path: Path) -> None:
    odd = hostile_telegrams()
    feed(receiver, odd)
    wait_until(lambda: len({r.manufacturer for r in gw.gateway.analyzer.rows()} & {"[\\]", "^_@", "@@@"}) == 3,
               "the odd manufacturers in the analyzer")
    user = 'o"neil<script>alert(3)</script>'
    status, body = gw.api("PATCH", "/api/v1/config", {"changes": {"receiving.server.username": user}})
    assert status == 200, body
    hostile_entry = max(e.number for e in gw.web.manager().history() if user in e.text)
    restored = gw.request("POST", "/api/v1/restore", hostile_backup(gw, tmp_path),
                          {"Content-Type": "application/octet-stream", **basic(ADMIN, PASSWORD)})
    assert restored[0] == 200, restored[2][:300]
    assert any(r.id == XSS for r in gw.gateway.analyzer.rows()), "the hostile meters are in the running analyzer"

    browser.login(gw.base)
    text = rendered_safely(browser, gw, "/analyzer?only=0")
    for value in ("AB", "[\\]", "^_@", "@@@", XSS, '"><svg onload=alert(2)>', shown("@SUM(A1)" + CONTROL),
                  shown("+" + CONTROL)):
        assert value in text, f"{value!r} is shown as text on the Analyzer"
    assert "10EFCDAB" in text, "an ID with hex letters is shown as it is"
    browser.screenshot("security-analyzer-hostile")
    rendered_safely(browser, gw, "/analyzer?only=0&q=" + urlencode({"": XSS})[1:])
    assert browser.css("input[name=q]").get_attribute("value") == XSS, "the search is echoed as a value"
    assert user in rendered_safely(browser, gw, f"/settings/history/{hostile_entry}")
    rendered_safely(browser, gw, "/settings")
    assert browser.css('[name="receiving.server.username"]').get_attribute("value") == user
    rendered_safely(browser, gw, "/")
    rendered_safely(browser, gw, "/help")
    assert XSS[:20] in rendered_safely(browser, gw, "/no-such-page/" + urlencode({"": XSS})[1:])

    # an invalid value typed into Settings comes back escaped next to its key
    browser.get(gw.base + "/settings")
    field = browser.css('[name="filter.device.id"]')
    field.clear()
    field.send_keys(XSS)
    browser.submit_and_wait(browser.css("#save"), "the settings page with the error")
    errors = {e.get_attribute("data-key"): e.text for e in browser.all(".field-error")}
    assert '<script>alert("x")</script><img src=x onerror=alert(1)>' in errors["filter.device.id"]
    assert browser.css('[name="filter.device.id"]').get_attribute("value") == XSS
    rendered_safely(browser, gw, "/settings")

    # the CSV guard (formula cells neutralised) and JSON that stays JSON
    status, headers, data = gw.request("GET", "/api/v1/analyzer.csv?only=0", headers=basic(ADMIN, PASSWORD))
    cells = {cell for row in csv.reader(io.StringIO(data.decode())) for cell in row}
    assert {"'=HYPERLINK(\"http://x\")", "'@SUM(A1)" + CONTROL, "'-2+3", "'+" + CONTROL} <= cells
    assert not any(c[:1] in "=+-@" and not re.fullmatch(r"-?\d+(\.\d+)?", c) for c in cells if c)
    status, headers, data = gw.request("GET", "/api/v1/analyzer?only=0", headers=basic(ADMIN, PASSWORD))
    assert headers["content-type"] == "application/json" and headers["x-content-type-options"] == "nosniff"
    assert XSS in {row["id"] for row in json.loads(data)["rows"]}
    metrics = gw.request("GET", "/metrics", headers=basic(ADMIN, PASSWORD))[2].decode()
    assert "script" not in metrics and "HYPERLINK" not in metrics, "no meter or value ever becomes a label"
    assert gw.api("PATCH", "/api/v1/config", {"changes": {"receiving.server.username": HES_USER}})[0] == 200


# -- A.7 #37: uploads --------------------------------------------------------------------------------


def tar_gz(members: list[tuple[tarfile.TarInfo, bytes]]) -> bytes:
    """A gzip-compressed tar of exactly these members (no manifest check: that is the point)."""
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w:gz") as tar:
        for info, data in members:
            info.size = len(data) if info.isreg() else 0
            tar.addfile(info, io.BytesIO(data) if info.isreg() else None)
    return out.getvalue()


def member(name: str, kind: bytes = tarfile.REGTYPE, link: str = "") -> tarfile.TarInfo:
    """A tar member header of any name and type."""
    info = tarfile.TarInfo(name)
    info.type, info.linkname, info.mode = kind, link, 0o600
    return info


def raw_exchange(gw: WebGateway, head: str, timeout: float = 5.0) -> tuple[bytes, bool]:
    """Send only a request head (no body): what comes back before ``timeout``, and whether the server closed."""
    with socket.create_connection(("127.0.0.1", gw.port), timeout=timeout) as sock:
        sock.sendall(head.encode())
        data = b""
        try:
            while chunk := sock.recv(65536):
                data += chunk
        except TimeoutError:
            return data, False
        return data, True


def raw_request(gw: WebGateway, head: str, timeout: float = 5.0) -> bytes:
    """Send only a request head (no body) and read what comes back before ``timeout``."""
    return raw_exchange(gw, head, timeout)[0]


def test_oversized_and_hostile_uploads_are_refused_with_nothing_changed(gw: WebGateway, tmp_path: Path) -> None:
    auth = basic(ADMIN, PASSWORD)
    status, _, good_backup = gw.request("GET", "/api/v1/backup", headers=auth)
    assert status == 200
    session = login(gw)
    before = state_snapshot(gw)
    outside = tmp_path / "escaped"
    manifest = tarfile.open(fileobj=io.BytesIO(good_backup), mode="r:gz").extractfile(archive.MANIFEST).read()
    tampered = bytearray(good_backup)
    with tarfile.open(fileobj=io.BytesIO(good_backup), mode="r:gz") as tar:
        entries = [(m, tar.extractfile(m).read()) for m in tar.getmembers()]
    swapped = [(m, (d + b"\n# changed\n") if m.name == archive.CONFIG_MEMBER else d) for m, d in entries]
    folder = tmp_path / "rebuilt"
    folder.mkdir()
    for m, d in entries:
        if m.name != archive.MANIFEST:
            (folder / m.name).write_bytes(d + b"filter.device.type=XYZ\n" if m.name == archive.CONFIG_MEMBER else d)
    invalid_config = io.BytesIO()
    archive.write(invalid_config, [(m.name, folder / m.name) for m, _ in entries if m.name != archive.MANIFEST],
                  gateway_serial="00000161")
    tampered[len(tampered) // 2] ^= 0xFF

    def api_import(text: bytes, ctype: str = "text/plain") -> tuple[int, dict[str, Any]]:
        status, _, data = gw.request("POST", "/api/v1/config/import", text, {"Content-Type": ctype, **auth})
        return status, json.loads(data)

    def api_restore(data: bytes) -> tuple[int, dict[str, Any]]:
        status, _, answer = gw.request("POST", "/api/v1/restore", data,
                                       {"Content-Type": "application/octet-stream", **auth})
        return status, json.loads(answer)

    cases: dict[str, tuple[int, dict[str, Any]]] = {
        "import over the limit": api_import(b"# " + b"x" * IMPORT_LIMIT),
        "import with a line break in a value": api_import(b"filter.manufacturer=KAM\rreceiving.server.url=http://evil/\n"),
        "import with an unknown key": api_import(b"filter.manufacturer=KAM\nnot.a.key=1\n"),
        "import with one invalid value": api_import(b"filter.manufacturer=KAM\nfilter.device.id=" + XSS.encode() + b"\n"),
        "import that is not UTF-8": api_import(b"filter.manufacturer=\xff\xfe\n"),
        "import as HTML": api_import(b"filter.manufacturer=KAM\n", "text/html"),
        "restore of garbage": api_restore(b"\x1f\x8b" + bytes(range(256)) * 4),
        "restore of a corrupted archive": api_restore(bytes(tampered)),
        "restore with a changed member": api_restore(tar_gz(swapped)),
        "restore with an invalid configuration": api_restore(invalid_config.getvalue()),
        "restore with ../": api_restore(tar_gz([(member(archive.MANIFEST), manifest),
                                                (member(f"../../{outside.name}"), b"x")])),
        "restore with an absolute name": api_restore(tar_gz([(member(archive.MANIFEST), manifest),
                                                            (member(str(outside)), b"x")])),
        "restore with a symbolic link": api_restore(tar_gz([(member(archive.MANIFEST), manifest),
                                                           (member(archive.CONFIG_MEMBER, tarfile.SYMTYPE, "/etc/passwd"), b"")])),
        "restore with a hard link": api_restore(tar_gz([(member(archive.MANIFEST), manifest),
                                                       (member(archive.STORE_MEMBER, tarfile.LNKTYPE, "/etc/shadow"), b"")])),
        "restore with a device": api_restore(tar_gz([(member(archive.MANIFEST), manifest),
                                                    (member("files/null", tarfile.CHRTYPE), b"")])),
    }
    for what, (status, answer) in cases.items():
        assert status in (400, 413, 415, 422), f"{what}: {status} {answer}"
        assert set(answer) >= {"error", "reason", "key"}, what
        assert state_snapshot(gw) == before, f"{what} changed something"
    assert cases["import over the limit"][0] == 413
    assert cases["import with one invalid value"][1]["key"] == "filter.device.id"
    assert "filter.device.type" in cases["restore with an invalid configuration"][1]["reason"], "checked to the end"

    # bodies too large are refused from the declared length, before a byte of them is read
    for path, limit in (("/api/v1/restore", RESTORE_LIMIT), ("/settings/restore", RESTORE_LIMIT + 16 * 1024),
                        ("/api/v1/config/import", IMPORT_LIMIT)):
        answer, closed = raw_exchange(gw, f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1:{gw.port}\r\nOrigin: {gw.base}\r\n"
                                 f"Cookie: wmbus_session={session.cookie}\r\nX-CSRF-Token: {session.csrf}\r\n"
                                 f"Content-Type: application/octet-stream\r\nContent-Length: {limit + 1}\r\n\r\n")
        assert answer.startswith(b"HTTP/1.1 413"), (path, answer[:200])
        assert closed, "answered without waiting for the body, connection closed"
    head, closed = raw_exchange(gw, f"POST /api/v1/restore HTTP/1.1\r\nHost: 127.0.0.1:{gw.port}\r\nContent-Length: {RESTORE_LIMIT + 1}\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 401"), "no body is read before authentication"
    assert b"Connection: close" in head and closed, "and the unread body ends the connection"

    # the pages' upload forms: too large for the form, hostile content, no CSRF token
    status, headers, _ = session.upload("/settings/import", "big.cfg", b"#" * (IMPORT_LIMIT + 100))
    assert status == 303 and "larger than" in session.get("/settings")[2].decode()
    status, _, page = session.upload("/settings/import", "evil.cfg", b"filter.device.type=" + XSS.encode() + b"\n")
    assert status == 422 and b"nothing was changed" in page and XSS.encode() not in page
    status, _, _ = session.upload("/settings/restore", "evil.tar.gz",
                                  tar_gz([(member(archive.MANIFEST), manifest), (member("../x"), b"x")]), {"keep_serial": "1"})
    assert status == 303 and "Restore refused" in session.get("/settings")[2].decode()
    session.csrf = "not-the-token"
    assert session.upload("/settings/restore", "b.tar.gz", good_backup)[0] == 403
    assert state_snapshot(gw) == before
    assert not outside.exists() and not list(tmp_path.parent.glob(f"**/{outside.name}"))


# -- A.7 #38: the HES password never shows ------------------------------------------------------------


def test_the_hes_password_never_appears_in_pages_api_metrics_logs_or_exports(
        gw: WebGateway, logs: Captured, receiver: gwkit.PtyReceiver) -> None:
    posts = len(gw.hes.posts)
    feed(receiver, normal_telegrams())  # the HES only takes posts with the right basic auth: the secret is in use
    wait_until(lambda: len(gw.hes.posts) > posts or None, "an authenticated push to the HES", timeout=20)
    assert gw.api("POST", "/api/v1/sync")[0] == 200, "a sync to the URL with a password in it"
    auth = basic(ADMIN, PASSWORD)
    secrets = [HES_SECRET, CFG_SECRET, PASSWORD,
               base64.b64encode(f"{HES_USER}:{HES_SECRET}".encode()).decode(),
               base64.b64encode(f"{ADMIN}:{PASSWORD}".encode()).decode()]
    numbers = [e.number for e in gw.web.manager().history()]
    gets = {p for m, p in openapi_paths(templates=True) if m == "GET" and "{" not in p and p != "/api/v1/backup"}
    gets |= {"/", "/settings", "/analyzer?only=0", "/help", "/settings/export", "/analyzer.csv?only=0", "/metrics"}
    gets |= {f"/settings/history/{n}" for n in numbers} | {f"/api/v1/config/history/{n}" for n in numbers}
    answers: dict[str, bytes] = {}
    for path in sorted(gets):
        status, _, data = gw.request("GET", path, headers=auth)
        assert status == 200, path
        answers[path] = data

    # a secret typed next to an invalid value must not be echoed back either
    typed = "Typed-New-Secret-42"
    session = login(gw)
    for n, fields in enumerate(({"receiving.server.password": typed, "filter.device.type": "XYZ"},
                                {"receiving.server.password": typed + "\x07"})):
        status, _, page = session.post("/settings", fields)
        assert status == 422, fields
        answers[f"settings with an error {n}"] = page
    for changes in ({"receiving.server.password": typed, "filter.device.type": "XYZ"},
                    {"receiving.server.password": typed + "\x07"}):
        for method, path in (("PATCH", "/api/v1/config"), ("POST", "/api/v1/config/check")):
            status, _, data = gw.request(method, path, json.dumps({"changes": changes}).encode(),
                                         {"Content-Type": "application/json", **auth})
            assert status == 422, (path, changes)
            answers[f"{method} {path} {sorted(changes)}"] = data
    assert gw.gateway.config.push_password == HES_SECRET
    assert b"********" in answers["/settings"]

    for where, data in answers.items():
        for secret in [*secrets, typed]:
            assert secret.encode() not in data, f"{secret!r} in {where}"
    joined = "\n".join(logs.lines)
    assert len(logs.lines) > 20 and "web" in joined, "the gateway's log was captured"
    for secret in [*secrets, typed]:
        assert secret not in joined, f"{secret!r} in the log"


# -- /metrics and the session cookie --------------------------------------------------------------


def test_metrics_need_auth_unless_web_metrics_public(gw: WebGateway) -> None:
    status, _, data = gw.request("GET", "/metrics")
    assert status == 401 and json.loads(data)["error"] == "unauthorized"
    status, headers, data = gw.request("GET", "/metrics", headers=basic(ADMIN, PASSWORD))
    assert status == 200 and headers["content-type"].startswith("text/plain") and b"wmbus_stream_telegrams_total" in data
    try:
        assert gw.api("PATCH", "/api/v1/config", {"changes": {"web.metrics.public": "true"}})[0] == 200
        status, _, data = gw.request("GET", "/metrics")
        assert status == 200 and b"wmbus_stream_info" in data
        assert gw.request("GET", "/api/v1/status")[0] == 401, "only /metrics opens"
        assert gw.request("GET", "/")[0] == 401
    finally:
        assert gw.api("PATCH", "/api/v1/config", {"changes": {"web.metrics.public": None}})[0] == 200
    assert gw.request("GET", "/metrics")[0] == 401


def cookie_flags(header: str) -> set[str]:
    """The attributes of a Set-Cookie header, lower case, ``samesite`` with its value."""
    return {part.strip().split("=")[0].lower() if "=" in part and not part.strip().lower().startswith("samesite")
            else part.strip().lower() for part in header.split(";")[1:]}


def test_session_cookie_is_httponly_samesite_strict_and_logout_ends_it(gw: WebGateway) -> None:
    status, headers, _ = gw.request("POST", "/login", urlencode({"user": ADMIN, "password": PASSWORD}).encode(),
                                    {"Content-Type": "application/x-www-form-urlencoded", "Origin": gw.base})
    assert status == 303
    assert cookie_flags(headers["set-cookie"]) == {"path", "httponly", "samesite=strict"}, headers["set-cookie"]
    session = login(gw)
    status, headers, _ = session.post("/logout")
    assert status == 303 and "max-age=0" in headers["set-cookie"].lower()
    assert {"httponly", "samesite=strict"} <= cookie_flags(headers["set-cookie"])
    assert session.get("/")[0] == 401, "the old cookie no longer works"


def test_under_tls_the_cookie_is_secure_and_plain_http_gets_nothing(tmp_path: Path) -> None:
    trustme = pytest.importorskip("trustme")
    ca = trustme.CA()
    leaf = ca.issue_cert("127.0.0.1")
    cert, key = tmp_path / "web.pem", tmp_path / "web.key"
    cert.write_bytes(b"".join(blob.bytes() for blob in leaf.cert_chain_pems))
    leaf.private_key_pem.write_to_path(str(key))
    (tmp_path / "gw").mkdir()
    secure = start_gateway(tmp_path / "gw", {"web.tls.cert": str(cert), "web.tls.key": str(key)}, meters=5)
    try:
        assert secure.web.url.startswith("https://")
        context = ssl.create_default_context()
        ca.configure_trust(context)
        conn = http.client.HTTPSConnection("127.0.0.1", secure.port, context=context, timeout=10)
        try:
            conn.request("POST", "/login", urlencode({"user": ADMIN, "password": PASSWORD}),
                         {"Content-Type": "application/x-www-form-urlencoded", "Origin": f"https://127.0.0.1:{secure.port}"})
            answer = conn.getresponse()
            answer.read()
            assert answer.status == 303
            assert cookie_flags(answer.getheader("Set-Cookie")) == {"path", "httponly", "samesite=strict", "secure"}
        finally:
            conn.close()
        with pytest.raises((http.client.HTTPException, ConnectionError, OSError)):
            status, _, _ = secure.request("GET", "/login")
            pytest.fail(f"plain HTTP to the TLS port answered {status}")
    finally:
        secure.close()


# -- the demo ----------------------------------------------------------------------------------------


def test_the_demo_prints_its_web_address_and_a_one_time_password_that_logs_in() -> None:
    import signal
    import subprocess
    import sys

    demo = subprocess.Popen([sys.executable, "-m", "wmbus_stream", "demo", "--meters", "20", "--seconds", "30"],
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    try:
        assert demo.stdout is not None
        line = ""
        for _ in range(5):
            line = demo.stdout.readline()
            if "web UI:" in line:
                break
        found = re.search(r"web UI: http://127\.0\.0\.1:(\d+)/\s+user (\S+), password (\S+)", line)
        assert found, f"no web UI line: {line!r}"
        port, user, password = int(found.group(1)), found.group(2), found.group(3)
        assert password_problem(user, password) is None and len(password) >= 20

        def status(auth: dict[str, str]) -> int:
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
            try:
                conn.request("GET", "/api/v1/status", headers=auth)
                answer = conn.getresponse()
                answer.read()
                return answer.status
            finally:
                conn.close()

        assert status({}) == 401 and status(basic("admin", "admin")) == 401
        assert status(basic(user, password)) == 200
    finally:
        demo.send_signal(signal.SIGINT)  # as Ctrl-C: the demo removes its temporary folder
        demo.communicate(timeout=15)


# -- docs/web.md's metrics list ----------------------------------------------------------------------


def test_every_documented_metric_is_scraped_and_every_scraped_one_documented(
        gw: WebGateway, receiver: gwkit.PtyReceiver) -> None:
    from prometheus_client.parser import text_string_to_metric_families

    ok = gw.gateway.status().pushes.ok
    feed(receiver, normal_telegrams())
    gw.wait_status(lambda s: s["pushes"]["ok"] > ok, "an acknowledged push", timeout=20)
    assert gw.api("POST", "/api/v1/sync")[0] == 200
    text = gw.request("GET", "/metrics", headers=basic(ADMIN, PASSWORD))[2].decode()
    scraped = {sample.name for family in text_string_to_metric_families(text) for sample in family.samples}
    documented = set(re.findall(r"^\| `(wmbus_stream_\w+)` \|", (REPO / "docs" / "web.md").read_text(encoding="utf-8"),
                                re.MULTILINE))
    assert documented - scraped == set(), "documented in docs/web.md but not in a scrape"
    assert scraped - documented == set(), "in a scrape but not documented in docs/web.md"
