"""TLS of every connection the gateway's HTTP client makes: verification is always on.

System CAs plus an optional private CA file, hostname checked; there is no switch to turn
verification off. The CA file is read only for https requests (``http.pool``).
"""

from __future__ import annotations

import ssl

__all__ = ["context"]


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
