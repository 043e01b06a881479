"""TLS of every connection the gateway's HTTP client makes (verification always on), and of its servers.

System CAs plus an optional private CA file, hostname checked; there is no switch to turn
verification off. The CA file is read only for https requests (``http.pool``). The web UI
and the reference HES serve with ``server_context``: TLS 1.2 or later.
"""

from __future__ import annotations

import ssl

__all__ = ["context", "server_context"]


def context(ca_file: str | None) -> ssl.SSLContext:
    """System CAs plus an optional private CA; verification and hostname check on."""
    ctx = ssl.create_default_context()
    if ca_file:
        try:
            ctx.load_verify_locations(cafile=ca_file)
        except (OSError, ssl.SSLError) as exc:
            reason = getattr(exc, "strerror", None) or getattr(exc, "reason", None) or str(exc)
            raise ValueError(f"CA file {ca_file} cannot be used: {reason}") from None
    return ctx


def server_context(cert_file: str, key_file: str | None) -> ssl.SSLContext:
    """A server's TLS 1.2+ context from a PEM certificate chain and its key (in the same file when ``key_file`` is None)."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.load_cert_chain(cert_file, key_file)
    return ctx
