"""The web server: the gateway's UI, API and metrics behind one dispatch with every check in one place.

Strategy
    ``io.listener`` accepts connections (caps, TLS, deadlines, a strict head) and hands each request to
    ``WebServer.serve`` on the connection's own thread. A body must arrive at
    ``MIN_BODY_RATE`` after a grace; a late client gets 408 and is closed. Nothing here runs
    on the receiver thread: pages read the gateway's state through its locked accessors and
    the pipeline never waits for the web server.

    Every request goes through ``WebServer._answer`` in this order: framing (no
    Transfer-Encoding, 411 and close; the listener has checked the rest of the head), Host (one of
    the names the gateway answers to, so a DNS-rebinding page is refused 421), route
    lookup, authentication (401 before anything else; a password check waits its turn in
    ``auth.PasswordChecks``), same-origin check for state-changing methods, body length
    check against the route's limit (413 without reading), body read, CSRF token check for
    cookie sessions, handler. A route cannot skip a step by accident: the exceptions (the
    login form, static assets, public metrics) are flags on the route table (``routing``),
    and the checks themselves are in ``access``. The routes are handed in: each registrar
    (``site.REGISTRARS``) adds its own, and no handler module imports this one.

Invariants: every response carries the security headers (CSP without inline script,
nosniff, frame-ancestors 'none', no-referrer, no-store for anything dynamic, HSTS under
TLS) and a ``Server`` header without a version; no request body is read before
authentication; no handler error reaches the client as a traceback.
"""

from __future__ import annotations

import logging
import ssl
import time
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import parse_qsl, unquote, urlsplit

from ..io.connections import Late
from ..io.listener import Listener, RequestHandler
from ..io.tls import server_context
from .access import Access, own_names
from .auth import PASSWORD_FILE, LoginLimiter, PasswordStore, Session, Sessions
from .pages.layout import error_page
from .request import BadRequest, Request, Response, error_response
from .routing import Registrar, Routes

if TYPE_CHECKING:
    from ..config.manage import ConfigManager
    from ..host import Host

__all__ = ["HEAD_SECONDS", "WebServer"]

log = logging.getLogger("wmbus_stream.web")

STATE_CHANGING = frozenset({"POST", "PUT", "PATCH", "DELETE"})
CSP = ("default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; "
       "form-action 'self'; frame-ancestors 'none'; base-uri 'none'")
HEAD_SECONDS = 10.0  # the TLS handshake, and each request head with the idle time before it
BODY_GRACE, MIN_BODY_RATE = 10.0, 8192  # a body may take 10 s + its length at 8 KiB/s
HSTS = "max-age=31536000"


class WebServer:
    """The gateway's web UI, JSON API and metrics on one listening socket."""

    def __init__(self, gateway: Host, host: str = "127.0.0.1", port: int = 8080, *,
                 registrars: Iterable[Registrar] = (),
                 tls_cert: str | None = None, tls_key: str | None = None,
                 password_path: Path | None = None, max_connections: int = 32, per_address: int = 8,
                 reserve: int = 8, timeout: float = 20.0, head_seconds: float = HEAD_SECONDS,
                 limiter: LoginLimiter | None = None) -> None:
        self.gateway = gateway
        self.host = host
        self.requested_port = port
        self.timeout, self.head_seconds = timeout, head_seconds
        self.max_connections, self.per_address, self.reserve = max_connections, per_address, reserve
        self.tls: ssl.SSLContext | None = server_context(tls_cert, tls_key) if tls_cert else None
        state = gateway.config.state_directory
        self.passwords = PasswordStore(password_path or state / PASSWORD_FILE)
        self.sessions = Sessions()
        self.limiter = limiter or LoginLimiter()
        self.access = Access(self, tls=self.tls is not None, names=own_names(host))
        self.requests_total = 0
        self.started_at = time.time()
        self._server: Listener | None = None
        self.routes = Routes()
        for register in registrars:
            register(self.routes, self)

    # -- configuration management ---------------------------------------------------------

    def manager(self) -> ConfigManager | None:
        """The gateway's configuration manager; None when it runs without a configuration file."""
        return self.gateway.manager

    # -- life cycle -------------------------------------------------------------------------

    name = "wmbus-stream"  # the Server header: no version

    def start(self) -> WebServer:
        self._server = Listener((self.host, self.requested_port), self).start("web")
        if self.passwords.credential() is None:
            log.warning("web UI on %s: no administrator password yet; set one with 'wmbus-stream passwd'", self.url)
        else:
            log.info("web UI on %s", self.url)
        return self

    def stop(self) -> None:
        server = self._server
        if server is None:
            return
        self.access.close()
        server.stop(grace=0)
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

    # -- what handlers use of the checks (routing.Site) --------------------------------------

    def login(self, req: Request, user: str, password: str) -> Session | Response:
        """Check a login form; a new session, or the 401/429 answer."""
        return self.access.login(req, user, password)

    def session_cookie(self, session: Session | None) -> tuple[str, str]:
        """The Set-Cookie header that starts ``session`` (or ends the current one for None)."""
        return self.access.session_cookie(session)

    # -- the request path -------------------------------------------------------------------

    def refused(self, status: int, reason: str) -> None:
        """The listener's own refusals (busy, late or bad heads) are in its log and its ``refused_total``."""

    def serve(self, handler: RequestHandler) -> None:
        """Answer one request read by ``handler`` (called on the connection's thread)."""
        self.requests_total += 1
        handler.body_read = False
        handler.body_length = 0
        try:
            response = self._answer(handler)
        except Exception:  # (a handler bug must not kill the connection thread silently)
            log.exception("error answering %s %s", handler.command, _safe_path(handler.path))
            response = Response(500, b"internal error; see the gateway log\n", "text/plain; charset=utf-8",
                                close=True)
        if not handler.body_read and handler.body_length != 0:
            # Refused before its body was read (401, 403, 404 ...): the unread bytes must not be
            # taken for the next request on this connection, so the connection ends here.
            response.close = True
        self._write(handler, response)

    def _answer(self, handler: RequestHandler) -> Response:
        method = handler.command
        framing = _framing(handler)
        if framing is not None:
            return framing
        target = urlsplit(handler.path)
        if not handler.path.startswith("/") or target.netloc:
            return Response(400, b"bad request target\n", "text/plain", close=True)
        misdirected = self.access.misdirected(handler)
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
        route, allowed = self.routes.find(req.method, path)
        match = route.pattern.match(path) if route else None

        # 1. authentication: nothing below runs for an anonymous client
        public = route is not None and route.is_public()
        denied = None if public else self.access.authenticate(req)
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
            problem = self.access.cross_site(req)
            if problem:
                log.warning("refused cross-site %s %s from %s: %s", req.method, _safe_path(path), req.client, problem)
                return self._error(req, 403, "cross_site", f"cross-site request refused ({problem})")
            # 3. body: declared length within the route's limit, then read
            refused = self._read_body(handler, req, route.body_limit)
            if refused is not None:
                return refused
            # 4. CSRF token for cookie sessions
            if req.via == "session" and route.csrf and not self.access.csrf_ok(req):
                return self._error(req, 403, "csrf", "missing or wrong CSRF token; reload the page and try again")
        try:
            return route.handler(req, match)
        except BadRequest as exc:
            return self._error(req, 400, "bad_request", str(exc))
        except OSError as exc:  # a read-only /etc, a full disk: the device's problem, said plainly
            where = f" {exc.filename}" if exc.filename else ""
            log.error("web: %s %s failed: cannot use%s: %s", req.method, _safe_path(path), where, exc.strerror or exc)
            return self._error(req, 409, "storage", f"cannot use{where}: {exc.strerror or exc}")


    def _read_body(self, handler: RequestHandler, req: Request, limit: int) -> Response | None:
        handler.body_read = True  # read now, or refused and the connection closed
        length = handler.body_length
        if length > limit:
            return self._error(req, 413, "too_large", f"the body may have at most {limit} bytes; nothing was changed",
                               close=True)
        seconds = BODY_GRACE + length / MIN_BODY_RATE
        handler.continue_body()
        handler.reader.start(seconds)
        chunks, got = [], 0
        try:
            while got < length:
                chunk = handler.rfile.read(min(65536, length - got))
                if not chunk:
                    return self._error(req, 400, "bad_request", "the body ended early", close=True)
                chunks.append(chunk)
                got += len(chunk)
        except Late:
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
            response = error_page(self, req, status, reason)
            response.headers.extend(headers or [])
        response.close = close
        return response

    def _write(self, handler: RequestHandler, response: Response) -> None:
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



def _framing(handler: RequestHandler) -> Response | None:
    """Refuse a chunked body (the listener has refused an ambiguous head); else set ``body_length``."""
    if handler.headers.get("Transfer-Encoding") is not None:
        return Response(411, b"send a Content-Length, not a chunked body\n", "text/plain; charset=utf-8", close=True)
    handler.body_length = int(handler.headers.get("Content-Length", "0").strip(" \t"))
    return None



def _safe_path(path: str) -> str:
    return path[:200].encode("ascii", "backslashreplace").decode()

