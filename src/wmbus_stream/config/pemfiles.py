"""The PEM files keys point at are usable for what the key says, checked before a change is applied.

Strategy: a key naming a CA bundle (``configuration.server.ca.file``,
``receiving.server.ca.file``) is only set when its file loads into an SSL context as trust
anchors; ``web.tls.cert`` and ``web.tls.key`` only when they load together (the key is the
certificate's). Each file must be a regular file of at most ``MAX_BYTES`` (never a device,
a FIFO or a folder, which could block the gateway or be endless). Only keys that change,
or whose file the same change writes, are checked, so a file that broke later does not
block unrelated changes. A file the change itself writes (a sync's download, a restored
file) is judged by its new content.
"""

from __future__ import annotations

import os
import ssl
import stat
import tempfile
from collections.abc import Mapping
from pathlib import Path

from ..errors import Problem
from .model import Config

__all__ = ["CA_KEYS", "TLS_PAIR", "MAX_BYTES", "problems"]

CA_KEYS = ("configuration.server.ca.file", "receiving.server.ca.file")
TLS_PAIR = ("web.tls.cert", "web.tls.key")
MAX_BYTES = 1024 * 1024


def _content(path: Path, staged: Mapping[Path, bytes | None]) -> bytes | str:
    """The file's bytes after the change, or why it cannot be read as a PEM file."""
    if path in staged:
        data = staged[path]
        return data if data is not None else "the file is removed by this change"
    try:
        st = os.stat(path)
        if not stat.S_ISREG(st.st_mode):
            return "not a regular file"
        if st.st_size > MAX_BYTES:
            return f"{st.st_size} bytes, more than the limit of {MAX_BYTES}"
        with open(path, "rb") as handle:
            return handle.read(MAX_BYTES + 1)
    except OSError as exc:
        return f"cannot be read ({exc.strerror or exc})"


def _ssl_reason(exc: Exception) -> str:
    return str(getattr(exc, "reason", None) or exc).replace("_", " ").lower()


def _ca_problem(data: bytes) -> str | None:
    try:
        ssl.create_default_context().load_verify_locations(cadata=data.decode("ascii"))
    except UnicodeDecodeError:
        return "not a PEM file (not ASCII text)"
    except (ssl.SSLError, ValueError) as exc:
        return f"no usable CA certificate in it ({_ssl_reason(exc)})"
    return None


def _pair_problem(cert: bytes, key: bytes) -> str | None:
    with tempfile.TemporaryDirectory(prefix="wmbus-pem-") as folder:
        cert_path, key_path = Path(folder, "cert.pem"), Path(folder, "key.pem")
        cert_path.write_bytes(cert)
        key_path.write_bytes(key)
        os.chmod(key_path, 0o600)
        try:
            ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER).load_cert_chain(cert_path, key_path, password=lambda: b"")
        except ssl.SSLError as exc:
            return f"the certificate and the key do not load together ({_ssl_reason(exc)})"
    return None


def problems(config: Config, before: Config | None, staged: Mapping[Path, bytes | None] | None = None) -> list[Problem]:
    """What is wrong with the files ``config`` points at, for keys changed since ``before``.

    ``staged`` maps absolute paths the same change writes to their new content (None: removed).
    """
    staged = staged or {}

    def touched(name: str) -> Path | None:
        value = config.raw[name]
        if not value:
            return None
        path = Path(value)
        if before is None or before.raw[name] != value or path in staged:
            return path
        return None

    found: list[Problem] = []
    allowed = "an absolute path to a usable PEM file"
    for name in CA_KEYS:
        path = touched(name)
        if path is None:
            continue
        data = _content(path, staged)
        reason = data if isinstance(data, str) else _ca_problem(data)
        if reason is not None:
            found.append(Problem(name, str(path), f"{allowed} of CA certificates ({reason})"))
    cert_name, key_name = TLS_PAIR
    if touched(cert_name) is not None or touched(key_name) is not None:
        cert_value, key_value = config.raw[cert_name], config.raw[key_name]
        if cert_value and key_value:
            cert, key = _content(Path(cert_value), staged), _content(Path(key_value), staged)
            if isinstance(cert, str):
                found.append(Problem(cert_name, cert_value, f"{allowed} with the certificate ({cert})"))
            if isinstance(key, str):
                found.append(Problem(key_name, key_value, f"{allowed} with the private key ({key})"))
            if isinstance(cert, bytes) and isinstance(key, bytes) and (reason := _pair_problem(cert, key)):
                found.append(Problem(cert_name, cert_value, f"{allowed} with the certificate of {key_name} ({reason})"))
    return found
