"""Logging in and out, and the page shown while no administrator password exists."""

from __future__ import annotations

import re
from urllib.parse import urlencode

from ..request import Request, Response, redirect
from ..routing import Site
from ..templates import Markup, html
from .layout import page

__all__ = ["log_in", "log_out", "login_page", "no_password", "show_login"]


def no_password(app: Site, req: Request) -> Response:
    """The only page shown before an administrator password exists (status 401)."""
    problem = app.passwords.problem
    extra = (html('<p class="error">The password file cannot be used: {0}</p>', problem) if problem else Markup(""))
    body = html(
        '<section class="narrow"><h1>Set a password on the device</h1>'
        '<p>This gateway has no administrator password yet, so its web UI and API are locked. '
        'There are no default credentials.</p>'
        '<p>On the gateway, run</p><pre>wmbus-stream passwd --config /etc/wmbus-stream/stream.cfg</pre>'
        '<p>(or add <code>--random</code> to have one generated and printed once), then reload this page.</p>{extra}'
        '</section>', extra=extra)
    return page("Set a password", body, status=401)


def login_page(app: Site, req: Request, *, status: int = 200, error: str = "", user: str = "") -> Response:
    target = req.path if req.method == "GET" and req.path != "/login" else req.query.get("next", "/")
    if req.method == "GET" and req.query and req.path != "/login":
        target += "?" + urlencode(req.query)
    body = html(
        '<section class="narrow login"><h1>Log in</h1>{error}'
        '<form method="post" action="/login">'
        '<input type="hidden" name="next" value="{next}">'
        '<label>User name <input name="user" value="{user}" autocomplete="username" required autofocus></label>'
        '<label>Password <input name="password" type="password" autocomplete="current-password" required></label>'
        '<button type="submit">Log in</button></form></section>',
        error=html('<p class="error" role="alert">{0}</p>', error) if error else Markup(""),
        next=_local(target), user=user,
    )
    return page("Log in", body, status=status)


def _local(target: str) -> str:
    """A redirect target on this server only (no scheme, no //host, no backslash tricks)."""
    if not target.startswith("/") or target.startswith("//") or "\\" in target or any(ord(c) < 0x20 for c in target):
        return "/"
    return target


def show_login(app: Site, req: Request, match: re.Match[str]) -> Response:
    if app.passwords.credential() is None:
        return no_password(app, req)
    cred = app.passwords.credential()
    if cred and app.sessions.get(req.cookie("wmbus_session"), cred.digest[:8]) is not None:
        return redirect(_local(req.query.get("next", "/")))
    return login_page(app, req)


def log_in(app: Site, req: Request, match: re.Match[str]) -> Response:
    form = req.form()
    user, password = form.get("user", ""), form.get("password", "")
    outcome = app.login(req, user, password)
    if isinstance(outcome, Response):
        if outcome.status == 401 and not outcome.body:
            req.query = {"next": form.get("next", "/")}
            return login_page(app, req, status=401, error="Wrong user name or password.", user=user[:64])
        return outcome
    response = redirect(_local(form.get("next", "/")))
    response.headers.append(app.session_cookie(outcome))
    return response


def log_out(app: Site, req: Request, match: re.Match[str]) -> Response:
    if req.session is not None:
        app.sessions.drop(req.session.token)
    response = redirect("/login")
    response.headers.append(app.session_cookie(None))
    return response
