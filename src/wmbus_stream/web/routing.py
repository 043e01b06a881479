"""The route table the server dispatches on, and the server surface the handlers see.

The modules that define handlers (``pages``, ``api``, ``metrics``, ``assets``) never import
the server: each has a ``register(routes, site)`` that adds its routes to a ``Routes`` table,
with ``site`` typed as the ``Site`` protocol below. ``site.py`` hands those registrars to the
server, so dependencies point one way: site -> server -> routing <- handlers.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

from .auth import LoginLimiter, PasswordStore, Session, Sessions
from .request import Request, Response

if TYPE_CHECKING:
    from ..config.manage import ConfigManager
    from ..host import Host

__all__ = ["DEFAULT_BODY_LIMIT", "Handler", "Registrar", "Route", "Routes", "Site"]

DEFAULT_BODY_LIMIT = 64 * 1024

Handler = Callable[[Request, "re.Match[str]"], Response]


@dataclass(frozen=True, slots=True)
class Route:
    """One path pattern and method, its handler and which checks it gets."""

    method: str
    pattern: re.Pattern[str]
    handler: Handler
    public: bool | Callable[[], bool] = False  # no authentication (login form, static assets), or while this says so
    body_limit: int = DEFAULT_BODY_LIMIT
    csrf: bool = True  # cookie sessions must send the CSRF token (state-changing only)

    def is_public(self) -> bool:
        """Whether the route is served without authentication right now."""
        return self.public() if callable(self.public) else self.public


class Routes:
    """The routes in the order they were added; the first pattern and method that match win."""

    def __init__(self) -> None:
        self._routes: list[Route] = []

    def add(self, method: str, pattern: str, handler: Handler, **options: Any) -> None:
        self._routes.append(Route(method, re.compile(pattern + r"\Z"), handler, **options))

    def find(self, method: str, path: str) -> tuple[Route | None, set[str]]:
        """The route for ``method`` at ``path``, else None and the methods that path allows."""
        allowed: set[str] = set()
        for route in self._routes:
            if route.pattern.match(path):
                if route.method == method:
                    return route, allowed
                allowed.add(route.method)
        return None, allowed

    def __iter__(self) -> Iterator[Route]:
        return iter(self._routes)

    def __len__(self) -> int:
        return len(self._routes)


class Site(Protocol):
    """What a handler may use of the web server it is registered on."""

    gateway: Host
    passwords: PasswordStore
    sessions: Sessions
    limiter: LoginLimiter

    def manager(self) -> ConfigManager | None: ...

    def login(self, req: Request, user: str, password: str) -> Session | Response: ...

    def session_cookie(self, session: Session | None) -> tuple[str, str]: ...

    @property
    def open_connections(self) -> int: ...

    @property
    def refused_connections(self) -> int: ...


Registrar = Callable[[Routes, Site], None]
