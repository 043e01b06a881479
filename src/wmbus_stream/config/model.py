"""The typed, validated configuration of one gateway.

Strategy: a configuration is built in one step from text values (a file's entries, a web
form, a sync's changes) by ``parse``: every key is validated and *all* problems are
collected before anything is returned, so an invalid configuration is never half-applied
and the user sees every mistake at once. The result is an immutable ``Config``; changing
it means building a new one with ``with_changes``. The configuration is passed to whoever
needs it, never stored globally.

Invariants: a ``Config`` always holds a valid value for every key in ``keys.KEYS``;
``raw`` holds the text of every key (defaults filled in) and ``explicit`` the keys that
were given; secrets never appear in ``repr``, ``masked()``, ``exported()`` or a problem.
Push credentials come from ``receiving.server.username``/``password`` when set, else from
the user info of ``receiving.server.url``.
"""

from __future__ import annotations

import difflib
import os
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from datetime import tzinfo
from pathlib import Path
from types import MappingProxyType
from urllib.parse import unquote, urlsplit, urlunsplit

from ..core.schedule import Schedule
from ..errors import ConfigError, ConfigFileError, Problem
from . import properties
from .keys import BY_NAME, KEYS, MASK, Key

__all__ = [
    "Config",
    "parse",
    "load",
    "check_file",
    "require",
    "state_directory_of",
    "loads",
    "defaults",
    "to_text",
    "save",
    "split_credentials",
]

_BLANKS = " \t"
_FILE_HEADER = (
    "wmbus-stream configuration (key=value; # comments; see docs for every key)",
)


def split_credentials(url: str) -> tuple[str, str | None, str | None]:
    """``url`` without its user info, and the decoded user name and password from it."""
    parts = urlsplit(url)
    if parts.username is None and parts.password is None:
        return url, None, None
    host = parts.netloc.rpartition("@")[2]
    bare = urlunsplit((parts.scheme, host, parts.path, parts.query, parts.fragment))
    user = unquote(parts.username) if parts.username is not None else None
    password = unquote(parts.password) if parts.password is not None else None
    return bare, user, password


def _mask_url(url: str) -> str:
    parts = urlsplit(url)
    if parts.password is None:
        return url
    host = parts.netloc.rpartition("@")[2]
    netloc = f"{parts.username}:{MASK}@{host}"
    return urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment))


def _shown(key: Key | None, value: str) -> str:
    """A value as it may be printed: secrets masked, URL passwords masked."""
    if key is not None and key.secret and value:
        return MASK
    if "://" in value and "@" in value:
        try:
            return _mask_url(value)
        except ValueError:
            return MASK
    return value


@dataclass(frozen=True, slots=True, repr=False)
class Config:
    """A complete, valid configuration: one typed attribute per key, plus the raw text."""

    service_enabled: bool
    push_url: str | None
    push_cron: Schedule
    filter_manufacturer: tuple[str, ...]
    filter_device_type: tuple[int, ...]
    filter_device_id: tuple[str, ...]
    radio_mode: str
    baud_rate: int
    sync_enabled: bool
    sync_url: str | None
    sync_cron: Schedule
    sync_ca_file: Path | None
    sync_timeout: float
    sync_allow_keys: tuple[str, ...]
    sync_allow_http: bool
    sync_allow_origins: tuple[str, ...]
    show_only_filtered: bool
    receiver_protocol: str
    receiver_port: str
    receiver_address: str | None
    reconnect_seconds: float
    silence_minutes: float
    simulator_meters: int
    gateway_serial: str
    wired_address: int
    timezone: tzinfo
    push_username: str | None
    push_password: str | None
    push_ca_file: Path | None
    push_connect_timeout: float
    push_read_timeout: float
    push_retries: int
    push_jitter: float
    state_directory: Path
    flush_seconds: float
    analyzer_reset_hours: int
    log_level: str
    web_enabled: bool
    web_listen: tuple[str, int]
    web_hosts: tuple[str, ...]
    web_tls_cert: Path | None
    web_tls_key: Path | None
    web_metrics_public: bool
    # A read-only view is not hashable; equal configurations still compare equal through it.
    raw: Mapping[str, str] = field(hash=False)
    explicit: frozenset[str]

    def get(self, key: str) -> str:
        """The text value of ``key`` (its default when not given); KeyError if unknown."""
        return self.raw[key]

    def masked(self) -> dict[str, str]:
        """Every key's text with secrets (and URL passwords) replaced by ``********``."""
        return {name: _shown(BY_NAME[name], value) for name, value in self.raw.items()}

    def exported(self) -> dict[str, str]:
        """The given keys fit for another gateway: no device-specific keys, no secrets."""
        out: dict[str, str] = {}
        for key in KEYS:
            if key.name not in self.explicit or key.secret or key.device_specific:
                continue
            value = self.raw[key.name]
            if key.name in ("receiving.server.url", "configuration.server.url") and value:
                value = split_credentials(value)[0]
            out[key.name] = value
        return out

    def with_changes(self, changes: Mapping[str, str | None]) -> Config:
        """A new configuration with ``changes`` applied (None resets a key to its default).

        A secret given as ``********`` keeps its current value, so a form that shows the
        masked value can be sent back unchanged.
        """
        given = {name: self.raw[name] for name in self.explicit}
        for name, value in changes.items():
            if value is None:
                given.pop(name, None)
            elif value == MASK and name in BY_NAME and BY_NAME[name].secret:
                continue
            else:
                given[name] = value
        return parse(given)

    @property
    def push_credentials(self) -> tuple[str, str] | None:
        """(user, password) for the push: the keys first, else the URL's user info."""
        url_user = url_password = None
        if self.push_url:
            _, url_user, url_password = split_credentials(self.push_url)
        user = self.push_username if self.push_username is not None else url_user
        if user is None:
            return None
        password = self.push_password if self.push_password is not None else url_password
        return user, password or ""

    @property
    def push_endpoint(self) -> str | None:
        """The push URL without user info (what is logged and connected to)."""
        return split_credentials(self.push_url)[0] if self.push_url else None

    @property
    def sync_endpoint(self) -> str | None:
        """The configuration server URL without user info."""
        return split_credentials(self.sync_url)[0] if self.sync_url else None

    def __repr__(self) -> str:
        shown = ", ".join(f"{name}={value!r}" for name, value in self.masked().items())
        return f"Config({shown})"


_ATTRS = {f.name for f in fields(Config)} - {"raw", "explicit"}
assert _ATTRS == {key.attr for key in KEYS}, "keys.KEYS and Config disagree"


def _closest_key(name: str) -> Key | None:
    match = difflib.get_close_matches(name.lower(), list(BY_NAME), n=1, cutoff=0.6)
    return BY_NAME[match[0]] if match else None


def _closest(name: str) -> str:
    match = _closest_key(name)
    if match is not None:
        return f"a known key; did you mean {match.name!r}?"
    return "a known key (none is close to this one)"


_SECRET_WORDS = ("pass", "secret", "token", "credential")


def private(problem: Problem) -> Problem:
    """``problem`` fit to print: the value of a secret, of a key that looks like one, or of a line naming one, masked.

    Problems of the file's syntax (a control character, a line without ``=``, a doubled
    key) are found before anyone knows which keys are secret: this is where they learn it.
    """
    text = f"{problem.key} {problem.value}".lower()
    key = BY_NAME.get(problem.key)
    if key is None:
        key = _closest_key(problem.key)
    secret = (key is not None and key.secret) or any(word in text for word in _SECRET_WORDS)
    if secret and problem.value and problem.value != MASK:
        return Problem(problem.key, MASK, problem.allowed)
    return problem


def _validate(mapping: Mapping[str, str]) -> tuple[Config | None, list[Problem]]:
    problems: list[Problem] = []
    given: dict[str, str] = {}
    for name, value in mapping.items():
        key = BY_NAME.get(name)
        if not isinstance(value, str):
            problems.append(Problem(str(name), repr(value), "text"))
            continue
        value = value.strip(_BLANKS)
        if key is None:
            problems.append(private(Problem(str(name), _shown(None, value), _closest(str(name)))))
            continue
        ch = properties.bad_character(value)
        if ch is not None:
            problems.append(
                Problem(name, _shown(key, value),
                        f"{key.allowed}, without control characters (found U+{ord(ch):04X})")
            )
            continue
        given[name] = value

    raw = {key.name: given.get(key.name, key.default) for key in KEYS}
    for key in KEYS:
        if key.default_by is not None and key.name not in given:
            raw[key.name] = key.default_for(raw)
    typed: dict[str, object] = {}
    for key in KEYS:
        value = raw[key.name]
        try:
            typed[key.attr] = key.parse(value)
        except ValueError as exc:
            detail = str(exc)
            allowed = f"{key.allowed} ({detail})" if detail else key.allowed
            problems.append(Problem(key.name, _shown(key, value), allowed))

    zone = typed.get("timezone")
    for attr in ("push_cron", "sync_cron"):
        schedule = typed.get(attr)
        if isinstance(schedule, Schedule) and isinstance(zone, tzinfo):
            typed[attr] = schedule.with_zone(zone)

    if typed.get("sync_enabled") is True and "sync_url" in typed and typed["sync_url"] is None:
        problems.append(
            Problem("configuration.server.url", "",
                    "an http:// or https:// URL with a host (required when sync.enabled=true)")
        )
    cert, key_file = raw["web.tls.cert"], raw["web.tls.key"]
    if bool(cert) != bool(key_file) and "web_tls_cert" in typed and "web_tls_key" in typed:
        missing = "web.tls.key" if cert else "web.tls.cert"
        problems.append(
            Problem(missing, "", "an absolute path (web.tls.cert and web.tls.key go together)")
        )

    if problems:
        return None, problems
    config = Config(
        **typed,  # type: ignore[arg-type]
        raw=MappingProxyType(raw),
        explicit=frozenset(given),
    )
    return config, []


def parse(mapping: Mapping[str, str]) -> Config:
    """Validate text values into a ``Config``; ConfigError lists every problem."""
    config, problems = _validate(mapping)
    if config is None:
        raise ConfigError(problems)
    return config


def defaults() -> Config:
    """The configuration of a gateway whose file sets nothing."""
    return parse({})


def _read(path: str | os.PathLike[str]) -> tuple[Config | None, list[Problem]]:
    """The configuration in a file and its problems; ConfigFileError when it cannot be read at all."""
    try:
        document = properties.read(path)
    except OSError as exc:
        raise ConfigFileError(os.fspath(path), exc.strerror or exc.__class__.__name__) from None
    config, problems = _validate(document.values)
    return (config if not document.problems else None), [*map(private, document.problems), *problems]


def load(path: str | os.PathLike[str]) -> Config:
    """Read and validate a configuration file; ConfigError lists every problem (ConfigFileError: unreadable)."""
    config, problems = _read(path)
    if config is None or problems:
        raise ConfigError(problems)
    return config


def loads(data: bytes | str) -> Config:
    """Validate a file's content exactly as ``load`` does a file; ConfigError lists every problem."""
    document = properties.parse(data)
    config, problems = _validate(document.values)
    problems = [*map(private, document.problems), *problems]
    if config is None or problems:
        raise ConfigError(problems)
    return config


REQUIRED = "a value: the gateway cannot run without this key unless sync.enabled=true (was the file cut short?)"


def _missing(config: Config, before: Config | None = None) -> list[Problem]:
    if config.sync_enabled:  # the configuration server delivers the rest (configuration.server.url is checked)
        return []
    return [Problem(key.name, "", REQUIRED) for key in KEYS
            if key.required and not config.raw[key.name] and (before is None or before.raw[key.name])]


def require(config: Config, before: Config | None = None) -> Config:
    """``config`` when it has every required key (every one ``before`` had); else ConfigError.

    A file cut at a line boundary still parses, without its last keys: this is what turns
    a lost ``receiving.server.url`` into an error instead of a gateway that pushes nowhere.
    """
    problems = _missing(config, before)
    if problems:
        raise ConfigError(problems)
    return config


def check_file(path: str | os.PathLike[str]) -> list[Problem]:
    """Every problem of a configuration file, required keys included (empty when it would run); ConfigFileError when unreadable."""
    config, problems = _read(path)
    return problems if config is None else [*problems, *_missing(config)]


def state_directory_of(path: str | os.PathLike[str]) -> Path:
    """The state directory a configuration file names, even when the file is otherwise invalid."""
    try:
        value = properties.read(path).values.get("state.directory")
    except OSError:
        value = None
    if value:
        try:
            return BY_NAME["state.directory"].parse(value.strip(_BLANKS))  # type: ignore[return-value]
        except ValueError:
            pass
    return defaults().state_directory


def to_text(
    source: Config | Mapping[str, str],
    *,
    template: properties.Properties | None = None,
    full: bool = False,
    mask_secrets: bool = False,
) -> str:
    """File text for a configuration (its given keys; every key if ``full``) or a mapping.

    With ``template`` (a previously read file) its comments and order are kept. ``full``
    writes every key with its description as a comment, for a self-documenting file.
    """
    if isinstance(source, Config):
        names = [key.name for key in KEYS if full or key.name in source.explicit]
        values = {name: source.raw[name] for name in names}
    else:
        values = dict(source)
    if mask_secrets:
        values = {name: _shown(BY_NAME.get(name), value) for name, value in values.items()}
    if full and template is None:
        lines = [f"# {_FILE_HEADER[0]}", ""]
        for key in KEYS:
            if key.name not in values:
                continue
            flags = [word for word, on in (("secret", key.secret),
                                           ("device-specific", key.device_specific),
                                           ("needs restart", key.restart), ("required", key.required)) if on]
            note = f" [{', '.join(flags)}]" if flags else ""
            lines.append(f"# {key.description}{note}")
            lines.append(f"# allowed: {key.allowed}; default: {key.default_for(values) or '(empty)'}")
            lines.append(properties.render({key.name: values[key.name]}).rstrip("\n"))
            lines.append("")
        return "\n".join(lines)
    return properties.render(values, template, header=() if template else _FILE_HEADER)


def save(
    path: str | os.PathLike[str],
    source: Config | Mapping[str, str],
) -> None:
    """Validate and atomically write a configuration, keeping the old file's comments."""
    from ..atomic import write_atomic

    config = source if isinstance(source, Config) else parse(source)
    template: properties.Properties | None
    try:
        template = properties.read(path)
    except OSError:
        template = None
    write_atomic(path, to_text(config, template=template))
