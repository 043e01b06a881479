"""The web server: stdlib ``ThreadingHTTPServer`` in its own threads, with every check in one place.

Strategy
    One accept thread plus one thread per connection. A client must not hold a thread
    without finishing a request: the TLS handshake and the request head (idle keep-alive
    time included) each have one deadline in all (``HEAD_SECONDS``), not a timeout per
    byte, and a body must arrive at ``MIN_BODY_RATE`` after a grace; a late client gets 408
    and is closed. Connections are capped in all (``max_connections``) and per source
    address (``per_address``, an IPv6 /64 counting as one), and the last ``reserve`` slots
    go only to sources holding fewer than two, so the owner still gets in while other
    addresses hold their cap; a connection over a limit gets a short 503 and is closed.
    TLS is negotiated in the connection's own thread, never in the accept loop. Nothing
    here runs on the receiver thread: pages read the gateway's state through its locked
    accessors and the pipeline never waits for the web server.

    Every request goes through ``WebServer._answer`` in this order: framing (one
    Content-Length of ASCII digits, no Transfer-Encoding; 400/411 and close), Host (one of
    the names the gateway answers to, so a DNS-rebinding page is refused 421), route
    lookup, authentication (401 before anything else; a password check waits its turn in
    ``auth.PasswordChecks``), same-origin check for state-changing methods, body length
    check against the route's limit (413 without reading), body read, CSRF token check for
    cookie sessions, handler. A route cannot skip a step by accident: the exceptions (the
    login form, static assets, public metrics) are flags on the route table.

Invariants: every response carries the security headers (CSP without inline script,
nosniff, frame-ancestors 'none', no-referrer, no-store for anything dynamic, HSTS under
TLS) and a ``Server`` header without a version; no request body is read before
authentication; no handler error reaches the client as a traceback.
"""

from __future__ import annotations

import base64
import contextlib
import hmac
import io
import ipaddress
import logging
import re
import socket
import socketserver
import ssl
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from importlib.resources import files
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qsl, unquote, urlsplit

from ..io.connections import DeadlineReader as _DeadlineReader
from ..io.connections import Late as _Late
from .auth import (PASSWORD_FILE, BasicCache, Credential, LoginLimiter, PasswordChecks, PasswordStore, Session,
                   Sessions, source_of)
from .request import BadRequest, Request, Response, error_response, json_response

if TYPE_CHECKING:
    from ..service import Gateway

__all__ = ["WebServer", "Route", "SESSION_COOKIE", "start_web"]

log = logging.getLogger("wmbus_stream.web")

SESSION_COOKIE = "wmbus_session"
DEFAULT_BODY_LIMIT = 64 * 1024
STATE_CHANGING = frozenset({"POST", "PUT", "PATCH", "DELETE"})
CSP = ("default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; "
       "form-action 'self'; frame-ancestors 'none'; base-uri 'none'")
_STATIC_TYPES = {".css": "text/css; charset=utf-8", ".js": "text/javascript; charset=utf-8",
                 ".svg": "image/svg+xml", ".ico": "image/x-icon"}
HEAD_SECONDS = 10.0  # the TLS handshake, and each request head with the idle time before it
BODY_GRACE, MIN_BODY_RATE = 10.0, 8192  # a body may take 10 s + its length at 8 KiB/s
HSTS = "max-age=31536000"
_HOST = re.compile(r"(?:\[([0-9A-Fa-f:.]+)\]|([A-Za-z0-9.-]+))(?::[0-9]{1,5})?")

Handler = Callable[[Request, "re.Match[str]"], Response]


@dataclass(frozen=True, slots=True)
class Route:
    """One path pattern and method, its handler and which checks it gets."""

    method: str
    pattern: re.Pattern[str]
    handler: Handler
    public: bool = False  # no authentication (login form, static assets)
    body_limit: int = DEFAULT_BODY_LIMIT
    csrf: bool = True  # cookie sessions must send the CSRF token (state-changing only)


class WebServer:
    """The gateway's web UI, JSON API and metrics on one listening socket."""

    def __init__(self, gateway: Gateway, host: str = "127.0.0.1", port: int = 8080, *,
                 tls_cert: str | None = None, tls_key: str | None = None,
                 password_path: Path | None = None, max_connections: int = 32, per_address: int = 8,
                 reserve: int = 8, timeout: float = 20.0, head_seconds: float = HEAD_SECONDS,
                 limiter: LoginLimiter | None = None) -> None:
        self.gateway = gateway
        self.host = host
        self.requested_port = port
        self.timeout, self.head_seconds = timeout, head_seconds
        self.max_connections, self.per_address, self.reserve = max_connections, per_address, reserve
        self.names = _own_names(host)
        self.closing = threading.Event()
        self.tls: ssl.SSLContext | None = None
        if tls_cert:
            context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            context.minimum_version = ssl.TLSVersion.TLSv1_2
            context.load_cert_chain(tls_cert, tls_key)
            self.tls = context
        state = gateway.config.state_directory
        self.passwords = PasswordStore(password_path or state / PASSWORD_FILE)
        self.sessions = Sessions()
        self.limiter = limiter or LoginLimiter()
        self.checks = PasswordChecks(self.limiter.failures)
        self.basic_cache = BasicCache()
        self.requests_total = 0
        self.started_at = time.time()
        self.routes: list[Route] = []
        self.static = _load_static()
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None
        self._manager: Any = None
        self._manager_lock = threading.Lock()
        from . import api, metrics, pages

        self.metrics = metrics.Metrics(self)
        pages.register(self)
        api.register(self)
        self.route("GET", r"/metrics", self.metrics.handle, public=True)  # public only if configured; see dispatch
        self.route("GET", r"/static/(?P<name>[A-Za-z0-9_.-]+)", self._static, public=True)

    # -- configuration management (issue 5's ConfigManager), found lazily -----------------

    def manager(self) -> Any:
        """The gateway's configuration manager, or None where it cannot be had."""
        found = getattr(self.gateway, "config_manager", None) or getattr(self.gateway, "manager", None)
        if found is not None:
            return found
        with self._manager_lock:
            if self._manager is None and self.gateway.config_path is not None:
                try:
                    from ..config.manage import ConfigManager
                except ImportError:
                    return None
                self._manager = ConfigManager(self.gateway.config_path, self.gateway.config.state_directory,
                                              self.gateway.reload)
            return self._manager

    # -- routes -----------------------------------------------------------------------------

    def route(self, method: str, pattern: str, handler: Handler, **options: Any) -> None:
        self.routes.append(Route(method, re.compile(pattern + r"\Z"), handler, **options))

    def _static(self, req: Request, match: re.Match[str]) -> Response:
        found = self.static.get(match["name"])
        if found is None:
            return Response(404, b"not found\n", "text/plain; charset=utf-8")
        body, ctype = found
        return Response(200, body, ctype, [("Cache-Control", "private, max-age=300")])

    # -- life cycle -------------------------------------------------------------------------

    def start(self) -> WebServer:
        family = socket.AF_INET6 if ":" in self.host else socket.AF_INET
        self._server = _Server((self.host, self.requested_port), self, family)
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.2},
                                        name="web", daemon=True)
        self._thread.start()
        if self.passwords.credential() is None:
            log.warning("web UI on %s: no administrator password yet; set one with 'wmbus-stream passwd'", self.url)
        else:
            log.info("web UI on %s", self.url)
        return self

    def stop(self) -> None:
        server = self._server
        if server is None:
            return
        self.closing.set()
        self.checks.close()
        server.shutdown()
        with server.connections_lock:
            for conn in list(server.connections):
                with contextlib.suppress(OSError):
                    conn.shutdown(socket.SHUT_RDWR)
        server.server_close()
        if self._thread is not None:
            self._thread.join(5)
        self._server = None

    @property
    def port(self) -> int:
        return self._server.server_address[1] if self._server else self.requested_port

    @property
    def open_connections(self) -> int:
        return self._server.active if self._server else 0

    @property
    def refused_connections(self) -> int:
        return self._server.refused_total if self._server else 0

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{'https' if self.tls else 'http'}://{host}:{self.port}/"

    # -- the request path -------------------------------------------------------------------

    def serve(self, handler: _Handler) -> None:
        """Answer one request read by ``handler`` (called on the connection's thread)."""
        self.requests_total += 1
        handler.body_read = False
        handler.body_length = 0
        try:
            response = self._answer(handler)
        except Exception:  # noqa: BLE001  (a handler bug must not kill the connection thread silently)
            log.exception("error answering %s %s", handler.command, _safe_path(handler.path))
            response = Response(500, b"internal error; see the gateway log\n", "text/plain; charset=utf-8",
                                close=True)
        if not handler.body_read and handler.body_length != 0:
            # Refused before its body was read (401, 403, 404 ...): the unread bytes must not be
            # taken for the next request on this connection, so the connection ends here.
            response.close = True
        self._write(handler, response)

    def _answer(self, handler: _Handler) -> Response:
        method = handler.command
        framing = _framing(handler)
        if framing is not None:
            return framing
        target = urlsplit(handler.path)
        if not handler.path.startswith("/") or target.netloc:
            return Response(400, b"bad request target\n", "text/plain", close=True)
        misdirected = self._misdirected(handler)
        if misdirected is not None:
            status, reason = misdirected
            log.warning("web: refused a request from %s: %s", handler.client_address[0], reason)
            return Response(status, f"{reason}\n".encode(), "text/plain; charset=utf-8", close=True)
        path = unquote(target.path)
        try:
            query = dict(parse_qsl(target.query, keep_blank_values=True, max_num_fields=50))
        except ValueError:
            return Response(400, b"too many query fields\n", "text/plain", close=True)
        req = Request("GET" if method == "HEAD" else method, path, query, handler.headers,
                      handler.client_address[0], self.tls is not None)
        route, allowed = self._find(req.method, path)
        match = route.pattern.match(path) if route else None

        # 1. authentication: nothing below runs for an anonymous client
        public = route is not None and (route.public and (route.handler != self.metrics.handle
                                                          or self.gateway.config.web_metrics_public))
        denied = None if public else self._authenticate(req)
        if denied is not None:
            return denied
        if route is None:
            if allowed:
                return self._error(req, 405, "method_not_allowed", f"{req.method} is not allowed here",
                                   headers=[("Allow", ", ".join(sorted(allowed)))])
            return self._error(req, 404, "not_found", f"nothing at {path}")
        assert match is not None

        if req.method in STATE_CHANGING:
            # 2. same origin: a cross-site form or script never gets here
            problem = self._cross_site(req)
            if problem:
                log.warning("refused cross-site %s %s from %s: %s", req.method, _safe_path(path), req.client, problem)
                return self._error(req, 403, "cross_site", f"cross-site request refused ({problem})")
            # 3. body: declared length within the route's limit, then read
            refused = self._read_body(handler, req, route.body_limit)
            if refused is not None:
                return refused
            # 4. CSRF token for cookie sessions
            if req.via == "session" and route.csrf and not self._csrf_ok(req):
                return self._error(req, 403, "csrf", "missing or wrong CSRF token; reload the page and try again")
        try:
            return route.handler(req, match)
        except BadRequest as exc:
            return self._error(req, 400, "bad_request", str(exc))
        except OSError as exc:  # a read-only /etc, a full disk: the device's problem, said plainly
            where = f" {exc.filename}" if exc.filename else ""
            log.error("web: %s %s failed: cannot use%s: %s", req.method, _safe_path(path), where, exc.strerror or exc)
            return self._error(req, 409, "storage", f"cannot use{where}: {exc.strerror or exc}")

    def _find(self, method: str, path: str) -> tuple[Route | None, set[str]]:
        allowed: set[str] = set()
        for route in self.routes:
            if route.pattern.match(path):
                if route.method == method:
                    return route, allowed
                allowed.add(route.method)
        return None, allowed

    def _authenticate(self, req: Request) -> Response | None:
        """None when the request may go on (``req.user`` set), else the 401/429 answer."""
        from . import pages

        cred = self.passwords.credential()
        if cred is None:
            if req.is_api or req.path == "/metrics":
                return error_response(401, "no_password",
                                      "no administrator password is set; run 'wmbus-stream passwd' on the device")
            return pages.no_password(self, req)
        generation = cred.digest[:8]
        session = self.sessions.get(req.cookie(SESSION_COOKIE), generation)
        if session is not None:
            req.session, req.user, req.via = session, session.user, "session"
            return None
        header = req.headers.get("Authorization") or ""
        if header[:6].lower() == "basic ":
            if self.basic_cache.hit(header, generation):
                req.user, req.via = cred.user, "basic"
                return None
            try:
                user, _, password = base64.b64decode(header[6:].strip(), validate=True).decode("utf-8").partition(":")
            except ValueError:  # not base64 (binascii.Error), not ASCII, not UTF-8
                user = password = ""
            outcome = self._check(req, cred, user, password, "basic-auth login")
            if outcome is True:
                self.basic_cache.add(header, generation)
                req.user, req.via = cred.user, "basic"
                return None
            if outcome is not False:
                return outcome
        if req.is_api or req.path == "/metrics":
            headers = [] if req.headers.get("X-Requested-With") else [("WWW-Authenticate", 'Basic realm="wmbus-stream", charset="UTF-8"')]
            return error_response(401, "unauthorized", "log in, or send HTTP basic auth", headers=headers)
        return pages.login_page(self, req, status=401)

    def login(self, req: Request, user: str, password: str) -> Session | Response:
        """Check a login form; a new session, or the 401/429 answer."""
        cred = self.passwords.credential()
        if cred is None:
            from . import pages

            return pages.no_password(self, req)
        outcome = self._check(req, cred, user, password, "login")
        if outcome is False:
            return Response(401)
        if outcome is not True:
            return outcome
        log.info("web: %s logged in from %s", cred.user, req.client)
        return self.sessions.create(cred.user, cred.digest[:8])

    def _check(self, req: Request, cred: Credential, user: str, password: str, what: str) -> bool | Response:
        """Check a password in its turn: True, False (the failure's answer held as throttled) or a 429."""
        if user and len(user) <= 200 and len(password) <= 1024:
            right = self.checks.check(req.client, cred, user, password)
            if right is None:
                return _too_many(req)
        else:
            right = False  # passwd never stores such a pair: no need to hash it
        if right:
            self.limiter.succeeded(req.client)
            return True
        hold = self.limiter.failed(req.client)
        log.warning("web: failed %s from %s%s", what, req.client, f"; answered in {hold:g} s" if hold else "")
        self.closing.wait(hold)
        return False

    def _misdirected(self, handler: _Handler) -> tuple[int, str] | None:
        """400 or 421 and why, unless the Host header names the gateway (a DNS-rebinding page does not)."""
        hosts = handler.headers.get_all("Host") or []
        if len(hosts) != 1:
            if not hosts and handler.request_version == "HTTP/1.0":
                return None
            return 400, f"send exactly one Host header, not {len(hosts)}"
        match = _HOST.fullmatch(hosts[0].strip())
        if match is None:
            return 400, "malformed Host header: send host, host:port or [IPv6 address]:port"
        name = (match.group(1) or match.group(2)).lower().removesuffix(".")
        try:
            address = ipaddress.ip_address(name)
        except ValueError:
            address = None
        if address is not None:
            name = str(address)
            local = ipaddress.ip_address(handler.connection.getsockname()[0])
            if isinstance(local, ipaddress.IPv6Address) and local.ipv4_mapped is not None:
                local = local.ipv4_mapped
            if address == local:
                return None
        if name in self.names or name in self.gateway.config.web_hosts:
            return None
        return 421, (f"this gateway does not answer to the name {name[:100]!r}; it answers to "
                     f"{', '.join(sorted(self.names | set(self.gateway.config.web_hosts)))} and the address "
                     "it was reached at (add other names to web.hosts)")

    def session_cookie(self, session: Session | None) -> tuple[str, str]:
        secure = "; Secure" if self.tls else ""
        if session is None:
            return ("Set-Cookie", f"{SESSION_COOKIE}=; Path=/; Max-Age=0; HttpOnly; SameSite=Strict{secure}")
        return ("Set-Cookie", f"{SESSION_COOKIE}={session.token}; Path=/; HttpOnly; SameSite=Strict{secure}")

    def _cross_site(self, req: Request) -> str | None:
        """Why a state-changing request is not same-origin (None when it is)."""
        site = (req.headers.get("Sec-Fetch-Site") or "").lower()
        if site and site not in ("same-origin", "none"):
            return f"Sec-Fetch-Site: {site}"
        origin = req.headers.get("Origin")
        if origin is None:
            referer = req.headers.get("Referer")
            if referer is None:
                # Not a browser (curl, scripts): they cannot ride on a victim's cookie.
                return None if req.via == "basic" or req.via is None or req.session is None else "no Origin header"
            try:
                parts = urlsplit(referer)
            except ValueError:  # http://[::1 and the like
                return "malformed Referer header"
            origin = f"{parts.scheme}://{parts.netloc}"
        host = req.headers.get("Host") or ""
        expected = f"{'https' if req.tls else 'http'}://{host}"
        if not host or not hmac.compare_digest(origin.lower().encode(), expected.lower().encode()):
            return f"Origin {origin[:100]!r} is not {expected[:100]!r}"
        return None

    def _csrf_ok(self, req: Request) -> bool:
        assert req.session is not None
        token = req.headers.get("X-CSRF-Token")
        if token is None:
            try:
                token = req.form().get("csrf")
            except BadRequest:
                token = None
        return bool(token) and hmac.compare_digest(token.encode(), req.session.csrf.encode())

    def _read_body(self, handler: _Handler, req: Request, limit: int) -> Response | None:
        handler.body_read = True  # read now, or refused and the connection closed
        length = handler.body_length
        if length > limit:
            return self._error(req, 413, "too_large", f"the body may have at most {limit} bytes; nothing was changed",
                               close=True)
        seconds = BODY_GRACE + length / MIN_BODY_RATE
        handler.reader.start(seconds)
        chunks, got = [], 0
        try:
            while got < length:
                chunk = handler.rfile.read(min(65536, length - got))
                if not chunk:
                    return self._error(req, 400, "bad_request", "the body ended early", close=True)
                chunks.append(chunk)
                got += len(chunk)
        except _Late:
            return self._error(req, 408, "timeout", f"the body of {length} bytes did not arrive within {seconds:.0f} s",
                               close=True)
        finally:
            handler.reader.stop()
        req.body = b"".join(chunks)
        return None

    def _error(self, req: Request, status: int, error: str, reason: str, *,
               headers: list[tuple[str, str]] | None = None, close: bool = False) -> Response:
        if req.is_api or req.path == "/metrics":
            response = error_response(status, error, reason, headers=headers)
        else:
            from . import pages

            response = pages.error_page(self, req, status, reason)
            response.headers.extend(headers or [])
        response.close = close
        return response

    def _write(self, handler: _Handler, response: Response) -> None:
        body = b"" if handler.command == "HEAD" else response.body
        try:
            handler.send_response(response.status)
            handler.send_header("Content-Type", response.content_type)
            handler.send_header("Content-Length", str(len(response.body)))
            for name, value in response.headers:
                handler.send_header(name, value)
            names = {name.lower() for name, _ in response.headers}
            if "cache-control" not in names:
                handler.send_header("Cache-Control", "no-store")
            handler.send_header("Content-Security-Policy", CSP)
            handler.send_header("X-Content-Type-Options", "nosniff")
            handler.send_header("X-Frame-Options", "DENY")
            handler.send_header("Referrer-Policy", "same-origin")  # "no-referrer" makes browsers send Origin: null
            handler.send_header("Cross-Origin-Opener-Policy", "same-origin")
            handler.send_header("Cross-Origin-Resource-Policy", "same-origin")
            if self.tls is not None:
                handler.send_header("Strict-Transport-Security", HSTS)
            if response.close:
                handler.send_header("Connection", "close")
                handler.close_connection = True
            handler.end_headers()
            handler.wfile.write(body)
        except (ConnectionError, TimeoutError, ssl.SSLError) as exc:
            handler.close_connection = True
            log.debug("client went away: %s", exc)


def _too_many(req: Request) -> Response:
    """The answer to a login attempt refused unchecked: more were waiting than are let wait."""
    headers = [("Retry-After", "1")]
    reason = "too many login attempts at once; the password was not checked, try again in a second"
    if req.is_api or req.path == "/metrics":
        return error_response(429, "too_many_attempts", reason, headers=headers)
    from . import pages

    response = pages.simple_page("Too many attempts", reason[0].upper() + reason[1:] + ".", 429)
    response.headers.extend(headers)
    return response


def _framing(handler: _Handler) -> Response | None:
    """Refuse a request whose body length is not one plain Content-Length; else set ``body_length``."""
    plain = "text/plain; charset=utf-8"
    if handler.headers.get_all("Transfer-Encoding"):
        if handler.headers.get_all("Content-Length"):
            return Response(400, b"send Content-Length or Transfer-Encoding, not both\n", plain, close=True)
        return Response(411, b"send a Content-Length, not a chunked body\n", plain, close=True)
    lengths = handler.headers.get_all("Content-Length") or []
    if len(lengths) > 1:
        return Response(400, b"send one Content-Length header, not several\n", plain, close=True)
    text = lengths[0].strip() if lengths else "0"
    if not re.fullmatch(r"[0-9]{1,12}", text):
        return Response(400, b"Content-Length must be a number of bytes in ASCII digits (at most 12)\n", plain,
                        close=True)
    handler.body_length = int(text)
    return None


def _own_names(host: str) -> frozenset[str]:
    """Names a request may give in Host besides web.hosts and the address it reached."""
    names = {"localhost"}
    with contextlib.suppress(OSError):
        own = socket.gethostname().lower()
        if own:
            names |= {own, own.split(".")[0] + ".local"}
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        names.add(host.lower().removesuffix("."))
    else:
        if not address.is_unspecified:
            names.add(str(address))
    return frozenset(names)


def _safe_path(path: str) -> str:
    return path[:200].encode("ascii", "backslashreplace").decode()


def _load_static() -> dict[str, tuple[bytes, str]]:
    found: dict[str, tuple[bytes, str]] = {}
    folder = files("wmbus_stream.web").joinpath("static")
    for entry in folder.iterdir():
        suffix = Path(entry.name).suffix
        if entry.is_file() and suffix in _STATIC_TYPES:
            found[entry.name] = (entry.read_bytes(), _STATIC_TYPES[suffix])
    return found


# -- the HTTP plumbing ------------------------------------------------------------------------


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "wmbus-stream"
    sys_version = ""
    server: _Server
    reader: _DeadlineReader
    body_read = False  # set per request by WebServer.serve / _read_body
    body_length = 0  # set per request by _framing

    def setup(self) -> None:
        super().setup()
        self.rfile.close()  # the plain socket file, replaced by one that keeps deadlines
        self.reader = _DeadlineReader(self.connection, self.server.app.timeout)
        self.rfile = io.BufferedReader(self.reader)

    def handle_one_request(self) -> None:
        # The head must be complete within head_seconds of starting to wait for it: a client
        # sending a byte now and then does not keep its thread (parse_request stops the clock).
        seconds = self.server.app.head_seconds
        self.reader.start(seconds)
        try:
            super().handle_one_request()
        except _Late:
            self.close_connection = True
            if self.reader.got:  # silence for an idle keep-alive connection, 408 for a late head
                log.info("web: %s did not send a request head within %g s", self.client_address[0], seconds)
                self._plain(408, b"the request head did not arrive in time\n")
        finally:
            self.reader.stop()

    def parse_request(self) -> bool:
        try:
            return super().parse_request()
        finally:
            self.reader.stop()

    def _serve(self) -> None:
        self.server.app.serve(self)

    do_GET = do_HEAD = do_POST = do_PUT = do_PATCH = do_DELETE = _serve  # noqa: N815

    def version_string(self) -> str:
        return self.server_version

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
        log.debug("%s %s", self.client_address[0], (format % args).encode("ascii", "backslashreplace").decode())

    def send_error(self, code: int, message: str | None = None, explain: str | None = None) -> None:
        # Malformed request lines and headers: a short plain answer, never an echo of the input.
        self._plain(code, b"bad request\n")

    def _plain(self, code: int, body: bytes) -> None:
        """A short plain-text answer that ends the connection."""
        self.close_connection = True
        try:
            self.send_response_only(code)
            self.send_header("Server", self.server_version)
            self.send_header("Content-Type", "text/plain; charset=utf-8")
            self.send_header("Content-Length", str(len(body)))
            self.send_header("Connection", "close")
            self.end_headers()
            self.wfile.write(body)
        except (OSError, ssl.SSLError):
            pass


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 64

    def __init__(self, address: tuple[str, int], app: WebServer, family: int) -> None:
        self.address_family = family
        self.app = app
        self.connections: set[socket.socket] = set()
        self.connections_lock = threading.Lock()
        self.held: dict[str, int] = {}  # open connections per source (auth.source_of)
        self.active = 0
        self.refused_total = 0
        super().__init__(address, _Handler)

    def server_bind(self) -> None:
        # HTTPServer.server_bind resolves the host name (getfqdn), which can hang offline.
        if self.address_family == socket.AF_INET6:
            with contextlib.suppress(OSError):
                self.socket.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        socketserver.TCPServer.server_bind(self)
        host, port = self.server_address[:2]
        self.server_name, self.server_port = str(host), int(port)

    def process_request(self, request: Any, client_address: Any) -> None:
        source = source_of(client_address[0])
        refused = self._admit(source)
        if refused:
            log.debug("web: refused a connection from %s: %s", client_address[0], refused)
            if self.app.tls is None:  # a TLS client could not read a plain answer
                body = f"{refused}; try again later\n".encode()
                with contextlib.suppress(OSError):
                    request.sendall(b"HTTP/1.1 503 Service Unavailable\r\nServer: wmbus-stream\r\n"
                                    b"Content-Type: text/plain; charset=utf-8\r\nRetry-After: 10\r\n"
                                    b"Content-Length: %d\r\nConnection: close\r\n\r\n%s" % (len(body), body))
            self.shutdown_request(request)
            return
        try:
            super().process_request(request, client_address)
        except BaseException:
            self._release(source)
            raise

    def _admit(self, source: str) -> str | None:
        """Take a connection slot for ``source``; why not, when it may not have one."""
        app = self.app
        with self.connections_lock:
            held = self.held.get(source, 0)
            if held >= app.per_address:
                refused = f"{held} connections from this address are open, the most one address may have"
            elif self.active >= app.max_connections:
                refused = f"{self.active} connections are open, the most this gateway takes"
            elif self.active >= app.max_connections - app.reserve and held >= 2:
                refused = (f"{held} connections from this address are open and the last {app.reserve} "
                           "are kept for other addresses")
            else:
                self.held[source] = held + 1
                self.active += 1
                return None
            self.refused_total += 1
            return refused

    def _release(self, source: str) -> None:
        with self.connections_lock:
            self.active -= 1
            if self.held[source] <= 1:
                del self.held[source]
            else:
                self.held[source] -= 1

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:
            self._release(source_of(client_address[0]))

    def finish_request(self, request: Any, client_address: Any) -> None:
        request.settimeout(self.app.timeout)
        with contextlib.suppress(OSError):
            # Headers and body leave in two writes; with Nagle on, the body waits for the
            # client's delayed ACK of the headers (40 ms per keep-alive answer).
            request.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        conn = request
        if self.app.tls is not None:
            try:
                # The handshake's timeout is one deadline for all of it (ssl's do_handshake).
                request.settimeout(self.app.head_seconds)
                conn = self.app.tls.wrap_socket(request, server_side=True)
                conn.settimeout(self.app.timeout)
            except (ssl.SSLError, OSError) as exc:
                log.debug("TLS handshake with %s failed: %s", client_address[0], exc)
                return
        with self.connections_lock:
            self.connections.add(conn)
        try:
            _Handler(conn, client_address, self)
        finally:
            with self.connections_lock:
                self.connections.discard(conn)
            if conn is not request:
                with contextlib.suppress(OSError):
                    conn.close()

    def handle_error(self, request: Any, client_address: Any) -> None:
        exc = sys.exc_info()[1]
        if isinstance(exc, (ConnectionError, TimeoutError, ssl.SSLError)):
            log.debug("connection from %s ended: %s", client_address[0], exc)
        else:
            log.exception("unexpected error serving %s", client_address[0])


def start_web(gateway: Gateway) -> WebServer | None:
    """Start the web server the configuration asks for; None (logged) if it cannot listen."""
    cfg = gateway.config
    host, port = cfg.web_listen
    try:
        server = WebServer(gateway, host, port,
                           tls_cert=str(cfg.web_tls_cert) if cfg.web_tls_cert else None,
                           tls_key=str(cfg.web_tls_key) if cfg.web_tls_key else None)
        return server.start()
    except (OSError, ssl.SSLError) as exc:
        log.error("web UI not started on %s:%d: %s (the gateway goes on without it)", host, port, exc)
        return None


def json_ok(value: Any, status: int = 200) -> Response:
    return json_response(value, status)
