"""The table of every configuration key: name, default, validator and what it means.

Strategy: one ``Key`` row per key, in the order the keys are written to a fresh file. Each
row's ``parse`` turns the trimmed text of a value into a typed value or raises
``ValueError``; its message (possibly empty) is a detail added to the row's ``allowed``
text, so a problem always names the key, the value and what is allowed.

Invariants: every default parses with its own validator; ``secret`` values are never
shown or exported; ``device_specific`` keys (serial number, credentials, certificates)
are left out of exports so a file can be copied to another gateway; ``restart`` marks
keys that only take effect when the service (or its receiver) is restarted; ``required``
keys are those the gateway cannot run without unless it syncs (``model.require``): a file
that lacks one, for instance because it was cut short, is refused by ``config check``,
``run`` and a reload.

Trust (``sync``): what a configuration server may set. ``SYNC_FREE`` keys (filters,
schedules, harmless tuning) a sync sets by default; ``SYNC_OWNER`` keys decide where data
and credentials go, who may log in, what is listened on and what is trusted, so a sync sets
one only when the device owner lists it in ``configuration.server.allow.keys``;
``SYNC_NEVER`` keys (the identity, the state location, the owner's allow lists themselves)
no sync can set. A key added without saying is owner-only.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, tzinfo
from pathlib import Path
from urllib.parse import SplitResult, urlsplit
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from ..core.schedule import Schedule

__all__ = [
    "Key",
    "KEYS",
    "BY_NAME",
    "MASK",
    "RADIO_MODES",
    "RECEIVER_PROTOCOLS",
    "BAUD_RATES",
    "PROTOCOL_BAUD_RATES",
    "LOG_LEVELS",
    "PYSERIAL_URL_SCHEMES",
    "SYNC_FREE",
    "SYNC_OWNER",
    "SYNC_NEVER",
    "origin",
    "ANY_ORIGIN",
]

MASK = "********"
SYNC_FREE, SYNC_OWNER, SYNC_NEVER = "free", "owner", "never"

RADIO_MODES = (
    "S1", "T1", "T1_C1A", "T1_C1B", "T1_C1A_C1B", "C1A", "C1B", "C1A_C1B",
    "C1A_WIDE", "C1B_WIDE", "C1A_C1B_WIDE",
)
RECEIVER_PROTOCOLS = ("cmex50", "im871a", "amb8465", "rtlwmbus", "hex", "simulator")
BAUD_RATES = (3600, 4800, 7200, 9600, 14400, 19200, 28800, 38400, 57600, 76800, 115200)
# The serial speed each receiver module runs at out of the box (IMST iM871A user manual: 57600 Bd;
# Amber AMB8465-M manual: 9600 Bd; both 8N1). Every other protocol defaults to 115200.
PROTOCOL_BAUD_RATES = {"im871a": "57600", "amb8465": "9600"}
LOG_LEVELS = ("debug", "info", "warning", "error", "critical")
# The URL handlers pyserial's serial_for_url knows (serial/urlhandler/protocol_*.py).
PYSERIAL_URL_SCHEMES = ("socket", "rfc2217", "loop", "spy", "alt", "hwgrep", "cp2110")


@dataclass(frozen=True, slots=True)
class Key:
    """One configuration key and everything the gateway knows about it."""

    name: str
    attr: str
    default: str
    parse: Callable[[str], object]
    allowed: str
    description: str
    secret: bool = False
    device_specific: bool = False
    restart: bool = False
    # (other key, {its value: this key's default}): a default that depends on another key's value.
    default_by: tuple[str, dict[str, str]] | None = field(default=None, compare=False)

    def default_for(self, raw: dict[str, str]) -> str:
        """This key's default given the other keys' text values ``raw``."""
        if self.default_by is None:
            return self.default
        other, table = self.default_by
        return table.get(raw.get(other, "").strip().lower(), self.default)
    required: bool = False
    sync: str = SYNC_OWNER


# -- validators: text in, typed value out, ValueError(detail) for anything else ----------


def boolean(text: str) -> bool:
    """``true`` or ``false`` in any case."""
    lowered = text.lower()
    if lowered == "true":
        return True
    if lowered == "false":
        return False
    raise ValueError("")


def _number(text: str, kind: type[int] | type[float], low: float, high: float) -> float:
    # Plain decimal only: no signs, exponents, underscores, inf or nan sneaking in.
    pattern = r"[0-9]+" if kind is int else r"[0-9]+(?:\.[0-9]+)?|\.[0-9]+"
    if not re.fullmatch(pattern, text):
        raise ValueError("")
    value = kind(text)
    if not low <= value <= high:
        raise ValueError("")
    return value


def integer(low: int, high: int) -> Callable[[str], int]:
    """A validator for whole numbers in ``low..high``."""

    def parse(text: str) -> int:
        return int(_number(text, int, low, high))

    return parse


def seconds(low: float, high: float) -> Callable[[str], float]:
    """A validator for decimal numbers in ``low..high``."""

    def parse(text: str) -> float:
        return float(_number(text, float, low, high))

    return parse


def one_of(choices: tuple[str, ...], normalise: Callable[[str], str]) -> Callable[[str], str]:
    """A validator for one word out of ``choices`` (compared after ``normalise``)."""

    def parse(text: str) -> str:
        value = normalise(text)
        if value not in choices:
            raise ValueError("")
        return value

    return parse


def _items(text: str, pattern: str) -> list[str]:
    if text == "":
        return []
    items = [item.strip() for item in text.split(",")]
    for item in items:
        if item == "":
            raise ValueError("empty list item")
        if not re.fullmatch(pattern, item):
            raise ValueError(f"{item!r} is not valid")
    return items


def _unique(items: list[str]) -> tuple[str, ...]:
    return tuple(dict.fromkeys(items))


def manufacturers(text: str) -> tuple[str, ...]:
    """Comma list of 3-letter manufacturer codes, normalised to upper case."""
    return _unique([item.upper() for item in _items(text, r"[A-Za-z]{3}")])


def device_types(text: str) -> tuple[int, ...]:
    """Comma list of device types as 2 hex digits."""
    return tuple(dict.fromkeys(int(item, 16) for item in _items(text, r"[0-9A-Fa-f]{2}")))


def meter_ids(text: str) -> tuple[str, ...]:
    """Comma list of 8-digit meter identities, leading zeros kept."""
    return _unique(_items(text, r"[0-9]{8}"))


def eight_digits(text: str) -> str:
    """Exactly 8 decimal digits."""
    if not re.fullmatch(r"[0-9]{8}", text):
        raise ValueError("")
    return text


def optional_eight_digits(text: str) -> str | None:
    """Exactly 8 decimal digits, or empty for none."""
    return None if text == "" else eight_digits(text)


def baud_rate(text: str) -> int:
    """One of the receiver's serial speeds."""
    if text not in {str(rate) for rate in BAUD_RATES}:
        raise ValueError("")
    return int(text)


def wired_address(text: str) -> int:
    """0..255 written in decimal or as 0xNN."""
    if re.fullmatch(r"0[xX][0-9A-Fa-f]{1,2}", text):
        return int(text, 16)
    return int(_number(text, int, 0, 255))


def http_url(text: str) -> SplitResult:
    """An http:// or https:// URL with a host; raises ValueError otherwise."""
    if any(ch.isspace() for ch in text):
        raise ValueError("no spaces allowed")
    parts = urlsplit(text)
    if parts.scheme.lower() not in ("http", "https"):
        raise ValueError("scheme must be http or https")
    if not parts.hostname:
        raise ValueError("a host is required")
    try:
        parts.port  # noqa: B018  (urllib checks the port only when asked)
    except ValueError:
        raise ValueError("bad port") from None
    if parts.fragment:
        raise ValueError("no #fragment allowed")
    return parts


def origin(url: str | SplitResult) -> str:
    """``scheme://host:port`` of an http(s) URL, lower case, the scheme's port filled in.

    What credentials belong to and what downloads are allowed from: two URLs of one origin
    reach the same server.
    """
    parts = url if isinstance(url, SplitResult) else http_url(url)
    scheme, host = parts.scheme.lower(), parts.hostname or ""
    port = parts.port or (443 if scheme == "https" else 80)
    return f"{scheme}://{f'[{host}]' if ':' in host else host}:{port}"


ANY_ORIGIN = "*"


def origins(text: str) -> tuple[str, ...]:
    """Comma list of origins (``scheme://host[:port]``, no path or user info) or ``*``, normalised."""
    if text == "":
        return ()
    found = []
    for item in (part.strip() for part in text.split(",")):
        if item == ANY_ORIGIN:
            found.append(item)
            continue
        if item == "":
            raise ValueError("empty list item")
        try:
            parts = http_url(item)
        except ValueError as exc:
            raise ValueError(f"{item!r}: {exc}") from None
        if parts.username is not None or parts.password is not None:
            raise ValueError("no user:password@ in an origin")
        if parts.path not in ("", "/") or parts.query:
            raise ValueError(f"{item!r}: an origin has no path or query")
        found.append(origin(parts))
    return _unique(found)


def sync_keys(text: str) -> tuple[str, ...]:
    """Comma list of configuration keys a sync may set although they are owner-only."""
    names = _items(text, r"[A-Za-z0-9][A-Za-z0-9._-]*")
    for name in names:
        key = BY_NAME.get(name)
        if key is None:
            raise ValueError(f"{name!r} is not a configuration key")
        if key.sync == SYNC_NEVER:
            raise ValueError(f"{name} can never be set by a sync")
    return _unique(names)


def optional_url(text: str) -> str | None:
    """An http(s) URL, or empty for none."""
    if text == "":
        return None
    http_url(text)
    return text


def cron(text: str) -> Schedule:
    """A cron schedule; the zone is set later from ``report.timezone``."""
    return Schedule.parse(text)


def time_zone(text: str) -> tzinfo:
    """An IANA time zone name such as ``UTC`` or ``Europe/Stockholm``."""
    try:
        return ZoneInfo(text)
    except ZoneInfoNotFoundError:
        # A device without any time zone data can still run on UTC.
        if text in ("UTC", "Etc/UTC"):
            return UTC
        raise ValueError("unknown time zone") from None
    except (ValueError, OSError):
        raise ValueError("not a time zone name") from None


def absolute_path(text: str) -> Path:
    """An absolute file system path."""
    if not text.startswith("/"):
        raise ValueError("must start with /")
    return Path(text)


def optional_path(text: str) -> Path | None:
    """An absolute path, or empty for none."""
    return None if text == "" else absolute_path(text)


def receiver_port(text: str) -> str:
    """A device path, a pyserial URL, a capture file, or ``-`` for standard input."""
    if text == "":
        raise ValueError("must not be empty")
    match = re.match(r"([A-Za-z][A-Za-z0-9+.-]*)://", text)
    if match and match.group(1).lower() not in PYSERIAL_URL_SCHEMES:
        raise ValueError(f"unknown URL scheme {match.group(1)!r}")
    return text


def username(text: str) -> str | None:
    """Any text without ':' (HTTP basic authentication cannot carry one), or empty."""
    if ":" in text:
        raise ValueError("':' is not allowed in a basic-auth user name")
    return text or None


def password(text: str) -> str | None:
    """Any text, or empty for none."""
    return text or None


def listen_address(text: str) -> tuple[str, int]:
    """``host:port`` or ``[ipv6]:port``; the host an IP address or a name."""
    match = re.fullmatch(r"\[([0-9A-Fa-f:.]+)\]:([0-9]{1,5})|([^:\[\]]+):([0-9]{1,5})", text)
    if match is None:
        raise ValueError("")
    host = match.group(1) or match.group(3)
    port = int(match.group(2) or match.group(4))
    if not 1 <= port <= 65535:
        raise ValueError("port must be 1..65535")
    if match.group(1):
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            raise ValueError("bad IPv6 address") from None
    elif not re.fullmatch(r"[A-Za-z0-9]([A-Za-z0-9.-]{0,252})", host):
        raise ValueError("bad host name")
    return host, port


def host_names(text: str) -> tuple[str, ...]:
    """Comma list of host names and IP addresses, lower case, IPv6 without brackets."""
    names = []
    for item in _items(text, r"\[?[0-9A-Za-z.:-]+\]?"):
        name = item.lower().removeprefix("[").removesuffix("]").removesuffix(".")
        try:
            name = str(ipaddress.ip_address(name))
        except ValueError:
            if not re.fullmatch(r"[a-z0-9]([a-z0-9-]{0,62})(\.[a-z0-9]([a-z0-9-]{0,62}))*", name) or len(name) > 253:
                raise ValueError(f"{item!r} is neither a host name nor an IP address") from None
        names.append(name)
    return _unique(names)


_CRON_ALLOWED = (
    "5-field cron 'minute hour day month weekday' or 6-field with seconds first"
)

KEYS: tuple[Key, ...] = (
    # -- the original product's keys -----------------------------------------------------
    Key("service.enabled", "service_enabled", "true", boolean, "true or false",
        "Run the gateway (true) or pause receiving and pushing (false).",
        sync=SYNC_FREE),
    Key("receiving.server.url", "push_url", "", optional_url,
        "an http:// or https:// URL with a host, or empty",
        "Where reports are pushed (HES); user:password@ in it is used for basic auth.", required=True),
    Key("receiving.server.push.cron", "push_cron", "*/15 * * * *", cron, _CRON_ALLOWED,
        "When reports are pushed.",
        sync=SYNC_FREE),
    Key("filter.manufacturer", "filter_manufacturer", "", manufacturers,
        "comma-separated 3-letter manufacturer codes (A-Z), or empty for all",
        "Accept only telegrams from these manufacturers.",
        sync=SYNC_FREE),
    Key("filter.device.type", "filter_device_type", "", device_types,
        "comma-separated device types as 2 hex digits (e.g. 07,1B), or empty for all",
        "Accept only these device types (EN 13757-3 medium codes).",
        sync=SYNC_FREE),
    Key("filter.device.id", "filter_device_id", "", meter_ids,
        "comma-separated 8-digit meter IDs, or empty for all",
        "Allow-list of meter identities.",
        sync=SYNC_FREE),
    Key("radio.mode", "radio_mode", "T1_C1A_C1B", one_of(RADIO_MODES, str.upper),
        " ".join(RADIO_MODES),
        "Radio modes to receive and accept.", restart=True,
        sync=SYNC_FREE),
    Key("usb.baud.rate", "baud_rate", "115200", baud_rate,
        " ".join(map(str, BAUD_RATES)),
        "Serial speed of the receiver; when not set, the speed its receiver.protocol runs at out of the box: "
        + ", ".join(f"{rate} for {name}" for name, rate in PROTOCOL_BAUD_RATES.items()) + ", else 115200.",
        restart=True, default_by=("receiver.protocol", PROTOCOL_BAUD_RATES), sync=SYNC_FREE),
    Key("sync.enabled", "sync_enabled", "false", boolean, "true or false",
        "Pull the configuration from configuration.server.url."),
    Key("configuration.server.url", "sync_url", "", optional_url,
        "an http:// or https:// URL with a host, or empty",
        "Where the .cad configuration file is fetched."),
    Key("configuration.server.cron", "sync_cron", "30 0 * * *", cron, _CRON_ALLOWED,
        "When the configuration is synchronised."),
    Key("configuration.server.ca.file", "sync_ca_file", "", optional_path,
        "an absolute path to a PEM file, or empty for the system CAs",
        "CA certificates that sign the configuration server's certificate (also used for"
        " Sync-File downloads and Sync-Notify-URL)."),
    Key("configuration.server.timeout", "sync_timeout", "120", seconds(1, 600),
        "a number of seconds from 1 to 600",
        "Longest time one request of a sync may take (the .cad file, each Sync-File download,"
        " each result notification attempt).",
        sync=SYNC_FREE),
    Key("configuration.server.allow.keys", "sync_allow_keys", "", sync_keys,
        "comma-separated configuration keys, or empty",
        "Owner-only keys a sync may set on this gateway (docs/fleet.md); a sync never sets this.",
        sync=SYNC_NEVER),
    Key("configuration.server.allow.http", "sync_allow_http", "false", boolean, "true or false",
        "Sync over plain http:// although anyone on the path could play the configuration server;"
        " a sync never sets this.", sync=SYNC_NEVER),
    Key("configuration.server.allow.origins", "sync_allow_origins", "", origins,
        "comma-separated origins such as https://files.example.net:8443, * for any public address, or empty",
        "Where a sync may download from, be redirected to and send its result besides the configuration"
        " server's own origin; a sync never sets this.", sync=SYNC_NEVER),
    Key("show.only.filtered", "show_only_filtered", "true", boolean, "true or false",
        "The analyzer shows only allow-listed meters (all when the allow-list is empty).",
        sync=SYNC_FREE),
    # -- receiver --------------------------------------------------------------------------
    Key("receiver.protocol", "receiver_protocol", "cmex50",
        one_of(RECEIVER_PROTOCOLS, str.lower), " ".join(RECEIVER_PROTOCOLS),
        "How bytes from the receiver are framed.", restart=True),
    Key("receiver.port", "receiver_port", "/dev/ttyUSB0", receiver_port,
        "a device path, a pyserial URL (" + ", ".join(f"{s}://" for s in PYSERIAL_URL_SCHEMES)
        + "), a capture file or -",
        "Where the receiver's bytes come from.", restart=True),
    Key("receiver.address", "receiver_address", "", optional_eight_digits,
        "8 digits, or empty to use the one the receiver reports",
        "Receiver address written into report records.", device_specific=True),
    Key("receiver.reconnect.seconds", "reconnect_seconds", "2", seconds(0.1, 60),
        "a number of seconds from 0.1 to 60",
        "Longest wait between attempts to reopen a lost receiver.",
        sync=SYNC_FREE),
    Key("receiver.silence.minutes", "silence_minutes", "60", seconds(0, 10080),
        "a number of minutes from 0 (no alarm) to 10080",
        "A receiver that delivers no telegram this long raises the silent-receiver alarm once"
        " and is reopened (a reset); 0 turns the alarm off.",
        sync=SYNC_FREE),
    Key("simulator.meters", "simulator_meters", "300", integer(1, 100000),
        "a whole number from 1 to 100000",
        "Number of meters the simulator receiver invents.", restart=True,
        sync=SYNC_FREE),
    # -- gateway identity and report -------------------------------------------------------
    Key("gateway.serial", "gateway_serial", "00000000", eight_digits, "exactly 8 digits",
        "This gateway's serial number, first field of every report line.",
        device_specific=True,
        sync=SYNC_NEVER),
    Key("gateway.wired.address", "wired_address", "0", wired_address,
        "0..255 in decimal or as 0xNN",
        "Wired M-Bus primary address (A-field) of the report telegrams.",
        sync=SYNC_FREE),
    Key("report.timezone", "timezone", "UTC", time_zone,
        "an IANA time zone name such as UTC or Europe/Stockholm",
        "Zone of report dates and of both cron schedules.",
        sync=SYNC_FREE),
    # -- push delivery ---------------------------------------------------------------------
    Key("receiving.server.username", "push_username", "", username,
        "text without ':', or empty",
        "Basic-auth user for the push (overrides the URL's user info).",
        device_specific=True),
    Key("receiving.server.password", "push_password", "", password, "any text, or empty",
        "Basic-auth password for the push (overrides the URL's user info).",
        secret=True, device_specific=True),
    Key("receiving.server.ca.file", "push_ca_file", "", optional_path,
        "an absolute path to a PEM file, or empty for the system CAs",
        "CA certificates that sign the HES server certificate."),
    Key("receiving.server.connect.timeout", "push_connect_timeout", "10", seconds(0.1, 300),
        "a number of seconds from 0.1 to 300", "Connect timeout of a push.",
        sync=SYNC_FREE),
    Key("receiving.server.read.timeout", "push_read_timeout", "30", seconds(0.1, 600),
        "a number of seconds from 0.1 to 600", "Read timeout of a push.",
        sync=SYNC_FREE),
    Key("receiving.server.retries", "push_retries", "5", integer(0, 20),
        "a whole number from 0 to 20", "Quick retries of a failed push before the next slot.",
        sync=SYNC_FREE),
    Key("push.jitter.seconds", "push_jitter", "0", seconds(0, 300),
        "a number of seconds from 0 to 300",
        "Random delay before each scheduled push, so many gateways do not push at once.",
        sync=SYNC_FREE),
    # -- state and housekeeping ------------------------------------------------------------
    Key("state.directory", "state_directory", "/var/lib/wmbus-stream", absolute_path,
        "an absolute directory path",
        "Where pending reports, analyzer data and history are kept.", restart=True,
        sync=SYNC_NEVER),
    Key("store.flush.seconds", "flush_seconds", "5", seconds(0.1, 3600),
        "a number of seconds from 0.1 to 3600",
        "Longest time received telegrams wait in memory before being written to disk.",
        sync=SYNC_FREE),
    Key("analyzer.reset.hours", "analyzer_reset_hours", "24", integer(0, 8760),
        "a whole number of hours from 0 (never) to 8760",
        "The analyzer resets itself this often.",
        sync=SYNC_FREE),
    Key("log.level", "log_level", "info", one_of(LOG_LEVELS, str.lower),
        " ".join(LOG_LEVELS), "Lowest level of log lines written.",
        sync=SYNC_FREE),
    # -- web UI (reserved) -----------------------------------------------------------------
    Key("web.enabled", "web_enabled", "false", boolean, "true or false",
        "Serve the web UI and JSON API.", restart=True),
    Key("web.listen", "web_listen", "127.0.0.1:8080", listen_address,
        "host:port or [ipv6]:port",
        "Address and port of the web UI.", restart=True),
    Key("web.hosts", "web_hosts", "", host_names,
        "comma-separated host names or IP addresses, or empty for none",
        "Names the web UI answers to besides localhost, web.listen's host, the device's host name "
        "and the address a client connected to (a Host header naming anything else is refused).",
        device_specific=True),
    Key("web.tls.cert", "web_tls_cert", "", optional_path,
        "an absolute path to a PEM certificate, or empty for plain HTTP",
        "TLS certificate of the web UI.", device_specific=True, restart=True),
    Key("web.tls.key", "web_tls_key", "", optional_path,
        "an absolute path to a PEM private key, or empty for plain HTTP",
        "TLS private key of the web UI.", device_specific=True, restart=True),
    Key("web.metrics.public", "web_metrics_public", "false", boolean, "true or false",
        "Serve /metrics without authentication."),
)

BY_NAME: dict[str, Key] = {key.name: key for key in KEYS}
