"""The provisioning drop-in ``wmbus-stream.cfg`` on the boot partition: its ``provision.*`` keys and their checks.

The drop-in is a stream.cfg file (config/properties.py's format) that may also hold the
``provision.*`` keys of ``PROVISION_KEYS``; ``provision.ssh.key`` and
``provision.network.dns`` may be repeated. ``parse`` checks every line and every value
before anything is applied: ``read`` collects every problem (the key, the value, and what is
allowed) and ``parse`` raises them as one ``ConfigError``. ``masked`` makes a problem fit to
print: only the value of a key known not to be secret shows, and never a URL's user info. The stream.cfg keys are checked by the
configuration model itself once they are merged into the gateway's file (provision.py).
"""

from __future__ import annotations

import base64
import binascii
import difflib
import ipaddress
import re
from collections.abc import Callable
from dataclasses import dataclass, field

from ..config import model, properties
from ..config.keys import BY_NAME as STREAM_KEYS
from ..config.keys import MASK
from ..errors import ConfigError, Problem
from ..web.auth import COMMON_PASSWORDS, DEFAULT_USER, password_problem
from .serial import UNSET

__all__ = ["DropIn", "FIXED", "PROVISION_KEYS", "ProvisionKey", "SETTINGS", "masked", "network_problems", "parse",
           "read"]

PREFIX = "provision."
SSH_KEY_TYPES = ("ssh-ed25519", "ssh-rsa", "ecdsa-sha2-nistp256", "ecdsa-sha2-nistp384", "ecdsa-sha2-nistp521",
                 "sk-ssh-ed25519@openssh.com", "sk-ecdsa-sha2-nistp256@openssh.com")
LOGIN_PASSWORD_LENGTH = (8, 256)
_HOSTNAME = re.compile(r"[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?(\.[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?)*")


@dataclass(frozen=True, slots=True)
class ProvisionKey:
    """One ``provision.*`` key: its check (text in, value out, ValueError(detail) for anything else) and meaning."""

    name: str
    parse: Callable[[str], object]
    allowed: str
    description: str
    repeatable: bool = False
    secret: bool = False


def ssh_public_key(text: str) -> str:
    """An OpenSSH public key line ``TYPE BASE64 [COMMENT]`` whose key blob names the same type."""
    parts = text.split(None, 2)
    if len(parts) < 2 or parts[0] not in SSH_KEY_TYPES:
        raise ValueError("it does not start with a key type")
    try:
        blob = base64.b64decode(parts[1], validate=True)
    except (binascii.Error, ValueError):
        raise ValueError("the key is not base64") from None
    size = int.from_bytes(blob[:4], "big")
    if len(blob) < 4 + size or blob[4:4 + size] != parts[0].encode():
        raise ValueError(f"the key data is not a {parts[0]} key")
    if parts[0] == "ssh-ed25519" and blob[4 + size:] != (32).to_bytes(4, "big") + blob[-32:]:
        raise ValueError("the ed25519 key data is cut short or too long (it holds 32 bytes)")
    return " ".join(parts)


def login_password(text: str) -> str | None:
    """The admin's login password (8 to 256 characters), or empty to turn password login off again."""
    if text == "":
        return None
    low, high = LOGIN_PASSWORD_LENGTH
    if not low <= len(text) <= high:
        raise ValueError(f"it has {len(text)} characters")
    if text.lower() in COMMON_PASSWORDS or text.lower() == "raspberry":
        raise ValueError("it is too easy to guess")
    return text


def web_password(text: str) -> str:
    """The web UI password of user admin, under the rules ``wmbus-stream passwd`` applies."""
    problem = password_problem(DEFAULT_USER, text)
    if problem:
        raise ValueError(problem)
    return text


def hostname(text: str) -> str | None:
    """A host name (letters, digits, '-', dot-separated labels, at most 63 characters), or empty for the default."""
    if text == "":
        return None
    name = text.lower()
    if len(name) > 63 or not _HOSTNAME.fullmatch(name):
        raise ValueError("")
    return name


def interface_address(text: str) -> str | None:
    """An IPv4 or IPv6 address with its prefix length (CIDR), or empty to go back to DHCP."""
    if text == "":
        return None
    if "/" not in text:
        raise ValueError("the /prefix length is missing")
    try:
        address = ipaddress.ip_interface(text)
    except ValueError:
        raise ValueError("") from None
    if address.network.prefixlen == address.max_prefixlen and address.version == 4:
        raise ValueError("a /32 leaves no network to reach a gateway on")
    if address.network.prefixlen == 0:
        raise ValueError("a /0 prefix takes in every address")
    _usable(address.ip)
    return str(address)


def _usable(address: ipaddress.IPv4Address | ipaddress.IPv6Address) -> None:
    """ValueError for an address no interface or router can have (loopback, multicast, unspecified)."""
    for bad, what in ((address.is_loopback, "a loopback address"), (address.is_multicast, "a multicast address"),
                      (address.is_unspecified, "the unspecified address")):
        if bad:
            raise ValueError(f"it is {what}")


def ip_address(text: str) -> str | None:
    """An IPv4 or IPv6 address, or empty for none."""
    if text == "":
        return None
    try:
        address = ipaddress.ip_address(text)
    except ValueError:
        raise ValueError("") from None
    _usable(address)
    return str(address)


def dns_servers(text: str) -> tuple[str, ...]:
    """One or more IP addresses, comma-separated, or empty for none."""
    if text == "":
        return ()
    found = []
    for item in (part.strip() for part in text.split(",")):
        try:
            found.append(str(ipaddress.ip_address(item)))
        except ValueError:
            raise ValueError(f"{item!r} is not an IP address") from None
    return tuple(found)


PROVISION_KEYS: tuple[ProvisionKey, ...] = (
    ProvisionKey("provision.ssh.key", ssh_public_key,
                 "an OpenSSH public key line: TYPE BASE64 [COMMENT], TYPE one of " + ", ".join(SSH_KEY_TYPES),
                 "A key that may log in as the admin user over SSH (repeat the key for several).", repeatable=True),
    ProvisionKey("provision.ssh.password", login_password,
                 f"{LOGIN_PASSWORD_LENGTH[0]} to {LOGIN_PASSWORD_LENGTH[1]} characters, not a common password,"
                 " or empty to turn it off",
                 "The admin user's login password; also turns SSH password login on.", secret=True),
    ProvisionKey("provision.web.password", web_password,
                 "at least 10 characters, at least 4 different ones, not a common password",
                 "The web UI password of user admin.", secret=True),
    ProvisionKey("provision.hostname", hostname,
                 "letters, digits and '-' in dot-separated labels, at most 63 characters, or empty for wmbus-SERIAL",
                 "The host name (default wmbus-SERIAL)."),
    ProvisionKey("provision.network.address", interface_address,
                 "an IPv4 or IPv6 address with its prefix length such as 192.168.1.20/24, or empty for DHCP",
                 "A static address of the wired interface instead of DHCP."),
    ProvisionKey("provision.network.gateway", ip_address, "an IP address of the same family as the address",
                 "The default router of the static address."),
    ProvisionKey("provision.network.dns", dns_servers, "IP addresses, comma-separated (or repeat the key), or empty for none",
                 "Name servers (besides any DHCP gives).", repeatable=True),
)
BY_NAME = {key.name: key for key in PROVISION_KEYS}


@dataclass(frozen=True, slots=True)
class DropIn:
    """A checked drop-in: its stream.cfg values and what it asks provisioning to do."""

    stream: dict[str, str] = field(default_factory=dict)
    # provision.hostname and provision.network.* as normalised text; "" puts a key back to its default.
    settings: dict[str, str] = field(default_factory=dict)
    ssh_keys: tuple[str, ...] = ()
    ssh_password: str | None = None  # None: not given; "": password login off again
    web_password: str | None = None
    given: tuple[str, ...] = ()  # every key the file sets, in file order (no values: they may be secret)
    problems: tuple[Problem, ...] = ()  # why it is refused; empty when it may be applied

    def __repr__(self) -> str:
        return f"DropIn(given={self.given!r})"


# stream.cfg keys the appliance fixes itself, and why a drop-in may not set them.
FIXED = {"state.directory": "not set by a drop-in: the appliance keeps its state on the data partition,"
                            " at /var/lib/wmbus-stream"}
_UNSET_SERIAL = ("exactly 8 digits other than 00000000 (00000000 counts as no serial: leave the line out to take"
                 " the serial from the hardware)")
_FILE_KEYS = frozenset({"<file>", "--admin", "--defaults"})  # problems whose value is a path or an option, not a line of the file
_USERINFO = re.compile(r"([A-Za-z][A-Za-z0-9+.-]*://)[^/?#\s]*@")
NOT_UTF8 = Problem("<file>", "not UTF-8 text", "UTF-8 text: save it as UTF-8")

SETTINGS = ("provision.hostname", "provision.network.address", "provision.network.gateway", "provision.network.dns")


def _closest(name: str) -> str:
    match = difflib.get_close_matches(name, list(BY_NAME), n=1, cutoff=0.6)
    known = ", ".join(BY_NAME)
    return f"a provisioning key ({known}); did you mean {match[0]!r}?" if match else f"a provisioning key ({known})"


def _entries(document: properties.Properties) -> tuple[list[tuple[str, str]], list[Problem]]:
    """(key, value) of every entry in file order, repeatable keys repeated, and the problems of the syntax."""
    entries: list[tuple[str, str]] = []
    for line in document.lines:
        if line.key is None or line.value is None:
            continue
        key = BY_NAME.get(line.key)
        repeat = key is not None and key.repeatable and properties.bad_character(line.text) is None
        if not line.bad or repeat:  # the format's "one definition per key" does not hold for repeatable keys
            entries.append((line.key, line.value))
    problems = [model.private(problem) for problem in document.problems
                if not (problem.key in BY_NAME and BY_NAME[problem.key].repeatable
                        and problem.allowed.startswith("one definition per key"))]
    return entries, problems


def _text(value: object) -> str:
    """A checked value as the settings file stores it."""
    if value is None:
        return ""
    return ",".join(value) if isinstance(value, tuple) else str(value)


def _public(name: str) -> bool:
    """Whether ``name`` is a key known not to hold a secret (its value may be printed)."""
    if name in _FILE_KEYS:
        return True
    key = STREAM_KEYS.get(name) or BY_NAME.get(name)
    return key is not None and not key.secret


def _no_userinfo(text: str) -> str:
    return _USERINFO.sub(lambda match: f"{match.group(1)}{MASK}@", text)


def masked(problem: Problem) -> Problem:
    """``problem`` fit for the console and the error file: an unknown or secret key's value masked, URL user info too."""
    value = _no_userinfo(problem.value) if _public(problem.key) else (MASK if problem.value else "")
    return Problem(problem.key, value, _no_userinfo(problem.allowed))


def _utf8(data: bytes) -> bool:
    try:
        data.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


def parse(data: bytes) -> DropIn:
    """Check a drop-in's bytes; ConfigError lists every problem (nothing is applied from a file with one)."""
    found = read(data)
    if found.problems:
        raise ConfigError(list(found.problems))
    return found


def read(data: bytes) -> DropIn:
    """Check a drop-in's bytes: what it asks for, and every problem of it (a file with one is not applied)."""
    if not _utf8(data):  # no line of it is shown: a misread secret would be shown in clear
        return DropIn(problems=(NOT_UTF8,))
    entries, problems = _entries(properties.parse(data))
    stream: dict[str, str] = {}
    checked: dict[str, list[object]] = {}
    for name, value in entries:
        if not name.startswith(PREFIX):
            if name in FIXED:
                problems.append(Problem(name, value, FIXED[name]))
            elif name == "gateway.serial" and value == UNSET:
                problems.append(Problem(name, value, _UNSET_SERIAL))
            stream[name] = value
            continue
        key = BY_NAME.get(name)
        if key is None:
            problems.append(Problem(name, value, _closest(name)))
            continue
        try:
            result = key.parse(value)
        except ValueError as exc:
            detail = str(exc)
            problems.append(Problem(name, value, f"{key.allowed} ({detail})" if detail else key.allowed))
            continue
        checked.setdefault(name, []).append(result)
    settings = {name: _text(checked[name][0]) for name in SETTINGS if name in checked}
    if "provision.network.dns" in checked:
        servers = [server for group in checked["provision.network.dns"] for server in _text(group).split(",") if server]
        settings["provision.network.dns"] = ",".join(dict.fromkeys(servers))
    keys: dict[str, str] = {}  # the same key with another comment is one key
    for line in map(str, checked.get("provision.ssh.key", [])):
        keys.setdefault(" ".join(line.split()[:2]), line)
    ssh_password = checked.get("provision.ssh.password", [None])[0]
    web = checked.get("provision.web.password", [None])[0]
    return DropIn(
        stream=stream,
        settings=settings,
        ssh_keys=tuple(keys.values()),
        ssh_password=None if "provision.ssh.password" not in checked else _text(ssh_password),
        web_password=None if web is None else str(web),
        given=tuple(dict.fromkeys(name for name, _ in entries)),
        problems=tuple(masked(problem) for problem in problems),
    )


def network_problems(settings: dict[str, str]) -> list[Problem]:
    """Why stored and new network settings do not go together: a gateway needs a static address of its family."""
    gateway, address = settings.get("provision.network.gateway", ""), settings.get("provision.network.address", "")
    if not gateway:
        return []
    if not address:
        return [Problem("provision.network.gateway", gateway,
                        "a gateway together with provision.network.address (DHCP gives its own)")]
    router, interface = ipaddress.ip_address(gateway), ipaddress.ip_interface(address)
    if router.version != interface.version:
        return [Problem("provision.network.gateway", gateway,
                        f"an IP address of the same family as provision.network.address {address}")]
    if router == interface.ip or (router not in interface.network and not router.is_link_local):
        return [Problem("provision.network.gateway", gateway,
                        f"another address in the network of provision.network.address {address}")]
    return []
