"""Who gets an answer: the Host check, password and session authentication, same-origin and CSRF checks.

The server's dispatch (``server.WebServer._answer``) calls these in its fixed order. Nothing
here reads a request body except ``csrf_ok`` (after the body was read under its limit); a
password check waits its turn in ``auth.PasswordChecks``, and a failed one is answered only
after the ``LoginLimiter``'s hold, so guessing gets slower and slower.
"""

from __future__ import annotations

import base64
import contextlib
import hmac
import ipaddress
import logging
import re
import socket
import threading
from urllib.parse import urlsplit

from ..io.passwords import BasicCache, Credential
from .auth import PasswordChecks, Session
from ..io.listener import RequestHandler
from .pages.layout import simple_page
from .pages.login import login_page, no_password
from .request import BadRequest, Request, Response, error_response
from .routing import Site

__all__ = ["SESSION_COOKIE", "Access", "own_names"]

log = logging.getLogger("wmbus_stream.web")

SESSION_COOKIE = "wmbus_session"
_HOST = re.compile(r"(?:\[([0-9A-Fa-f:.]+)\]|([A-Za-z0-9.-]+))(?::[0-9]{1,5})?")


class Access:
    """The checks a request passes before its handler runs, for one web server (``site``)."""

    def __init__(self, site: Site, *, tls: bool, names: frozenset[str]) -> None:
        self.site = site
        self.gateway = site.gateway
        self.passwords, self.sessions, self.limiter = site.passwords, site.sessions, site.limiter
        self.tls, self.names = tls, names
        self.closing = threading.Event()
        self.checks = PasswordChecks(self.limiter.failures)
        self.basic_cache = BasicCache()

    def close(self) -> None:
        """Answer held failures now and let no more password checks wait (the server stops)."""
        self.closing.set()
        self.checks.close()

    def authenticate(self, req: Request) -> Response | None:
        """None when the request may go on (``req.user`` set), else the 401/429 answer."""
        cred = self.passwords.credential()
        if cred is None:
            if req.is_api or req.path == "/metrics":
                return error_response(401, "no_password",
                                      "no administrator password is set; run 'wmbus-stream passwd' on the device")
            return no_password(self.site, req)
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
        return login_page(self.site, req, status=401)

    def login(self, req: Request, user: str, password: str) -> Session | Response:
        """Check a login form; a new session, or the 401/429 answer."""
        cred = self.passwords.credential()
        if cred is None:
            return no_password(self.site, req)
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

    def misdirected(self, handler: RequestHandler) -> tuple[int, str] | None:
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

    def cross_site(self, req: Request) -> str | None:
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

    def csrf_ok(self, req: Request) -> bool:
        assert req.session is not None
        token = req.headers.get("X-CSRF-Token")
        if token is None:
            try:
                token = req.form().get("csrf")
            except BadRequest:
                token = None
        return bool(token) and hmac.compare_digest(token.encode(), req.session.csrf.encode())


def _too_many(req: Request) -> Response:
    """The answer to a login attempt refused unchecked: more were waiting than are let wait."""
    headers = [("Retry-After", "1")]
    reason = "too many login attempts at once; the password was not checked, try again in a second"
    if req.is_api or req.path == "/metrics":
        return error_response(429, "too_many_attempts", reason, headers=headers)
    response = simple_page("Too many attempts", reason[0].upper() + reason[1:] + ".", 429)
    response.headers.extend(headers)
    return response


def own_names(host: str) -> frozenset[str]:
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
