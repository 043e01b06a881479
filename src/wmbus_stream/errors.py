"""One error tree for the whole gateway.

Radio-side errors (``FrameError`` and children) are expected data: the pipeline counts them
and goes on. Configuration errors carry the key. IO errors keep ``OSError`` as a parent so
callers that already catch ``OSError`` keep working.
"""

from __future__ import annotations

__all__ = [
    "WmbusStreamError",
    "FrameError",
    "CrcError",
    "LengthError",
    "HeaderError",
    "ChecksumError",
    "ConfigError",
    "ConfigFileError",
    "BackupError",
    "Problem",
    "ExtensionMissingError",
    "DependencyMissingError",
    "GatewayIOError",
    "StoreError",
    "ReportError",
    "UpdateError",
]

from dataclasses import dataclass


class WmbusStreamError(Exception):
    """Root of every error this package raises on purpose."""


class FrameError(WmbusStreamError, ValueError):
    """A frame or telegram from the radio side is broken; counted and skipped, never fatal."""

    kind = "frame"


class CrcError(FrameError):
    """A link-layer CRC block does not check."""

    kind = "crc"


class LengthError(FrameError):
    """The L-field and the number of bytes disagree, or the frame is too short or too long."""

    kind = "length"


class HeaderError(FrameError):
    """The link header or a wired frame's records are inconsistent."""

    kind = "header"


class ChecksumError(FrameError):
    """A wired M-Bus long frame's checksum or stop byte is wrong."""

    kind = "checksum"


@dataclass(frozen=True, slots=True)
class Problem:
    """One invalid configuration entry: the key, the value given and what is allowed."""

    key: str
    value: str
    allowed: str

    def __str__(self) -> str:
        return f"{self.key}: invalid value {self.value!r}; allowed: {self.allowed}"


class ConfigError(WmbusStreamError, ValueError):
    """A configuration is invalid; holds one ``Problem`` per bad key."""

    def __init__(self, problems: list[Problem] | Problem):
        self.problems = [problems] if isinstance(problems, Problem) else list(problems)
        super().__init__("; ".join(str(p) for p in self.problems))

    @property
    def key(self) -> str:
        return self.problems[0].key if self.problems else ""


class ConfigFileError(ConfigError):
    """The configuration file cannot be read at all (missing, no permission): a file failure, not a bad value."""

    def __init__(self, path: str, reason: str):
        self.path, self.reason = path, reason
        super().__init__(Problem("<file>", path, f"a readable file ({reason})"))


class BackupError(WmbusStreamError, ValueError):
    """A backup cannot be written or restored; ``problems`` lists every reason."""

    def __init__(self, problems: list[str] | str) -> None:
        self.problems = [problems] if isinstance(problems, str) else list(problems)
        super().__init__("; ".join(self.problems))


class ExtensionMissingError(WmbusStreamError, ImportError):
    """WMBUS_STREAM_REQUIRE_EXTENSIONS=1 is set but a compiled extension cannot be imported."""


class GatewayIOError(WmbusStreamError, OSError):
    """Something outside the process (port, server, disk) failed."""


class ReportError(WmbusStreamError, ValueError):
    """A report body is malformed; ``line`` is 1-based, ``reason`` says what is wrong."""

    def __init__(self, line: int, reason: str):
        super().__init__(f"line {line}: {reason}")
        self.line = line
        self.reason = reason


class UpdateError(WmbusStreamError):
    """An update command cannot do what was asked (rauc refused, no other good slot); the message says why."""


class HesError(WmbusStreamError, ValueError):
    """The reference HES cannot do what was asked (its credentials file, store or broker); the message says why."""


class StoreError(HesError, GatewayIOError):
    """The HES's database cannot be opened or written: server down, credentials refused, bad URL, no driver."""


class DependencyMissingError(WmbusStreamError, ImportError):
    """An optional package a chosen feature needs (paho-mqtt for ``--mqtt``) is not installed; the message says how."""
