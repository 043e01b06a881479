"""The gateway's web UI, JSON API and Prometheus metrics (spec section 10).

``start_web(gateway)`` serves them on ``web.listen`` in threads of their own; see
``server`` for the request path and its checks, ``auth`` for passwords and sessions,
``pages``/``api``/``metrics`` for what is served, and ``docs/web.md`` for the whole story.
"""

from __future__ import annotations

from .server import WebServer, start_web

__all__ = ["WebServer", "start_web"]
