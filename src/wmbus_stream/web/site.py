"""The web server with everything it serves: pages, JSON API, metrics and static assets, in that order."""

from __future__ import annotations

import logging
import ssl
from typing import TYPE_CHECKING, Any

from . import api, assets, metrics, pages
from .routing import Registrar
from .server import WebServer

if TYPE_CHECKING:
    from ..host import Host

__all__ = ["REGISTRARS", "build", "start_web"]

log = logging.getLogger("wmbus_stream.web")

REGISTRARS: tuple[Registrar, ...] = (pages.register, api.register, metrics.register, assets.register)


def build(gateway: Host, host: str = "127.0.0.1", port: int = 8080, **options: Any) -> WebServer:
    """A web server (not started) serving every route; ``options`` are ``WebServer``'s."""
    return WebServer(gateway, host, port, registrars=REGISTRARS, **options)


def start_web(gateway: Host) -> WebServer | None:
    """Start the web server the configuration asks for; None (logged) if it cannot listen."""
    cfg = gateway.config
    host, port = cfg.web_listen
    try:
        server = build(gateway, host, port,
                       tls_cert=str(cfg.web_tls_cert) if cfg.web_tls_cert else None,
                       tls_key=str(cfg.web_tls_key) if cfg.web_tls_key else None)
        return server.start()
    except (OSError, ssl.SSLError) as exc:
        log.error("web UI not started on %s:%d: %s (the gateway goes on without it)", host, port, exc)
        return None
