"""The gateway's web UI, JSON API and Prometheus metrics (spec section 10).

``start_web(gateway)`` serves them on ``web.listen`` in threads of their own; see
``site`` for what is served, ``server`` for the request path, ``access`` for its checks,
``listener`` for connections, ``auth`` for passwords and sessions, ``pages``/``api``/
``metrics``/``assets`` for the handlers, and ``docs/web.md`` for the whole story.
"""

from __future__ import annotations

from .server import WebServer
from .site import build, start_web

__all__ = ["WebServer", "build", "start_web"]
