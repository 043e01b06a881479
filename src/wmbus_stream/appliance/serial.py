"""The gateway serial of a provisioned device: where it comes from, in a fixed order, and its 8 digits.

Order (the first source that gives one wins): the drop-in's ``gateway.serial``; the serial of
the already provisioned stream.cfg, then the one provisioning kept on the data partition (so
it stays the same across boots even when stream.cfg lost its line); the device tree's
``serial-number`` (Raspberry Pi); the DMI product serial (SMBIOS type 1; qemu's ``-smbios
type=1,serial=...``); the first wired MAC address (lowest ifindex); the machine id. A hardware
value becomes 8 digits by ``eight_digits``. Every path is read under ``sys_root`` so the unit
tier runs on a tree of plain files.
"""

from __future__ import annotations

import hashlib
import re
from pathlib import Path

__all__ = ["SOURCES", "UNSET", "choose", "given", "device_tree_serial", "dmi_serial", "eight_digits", "first_wired_mac",
           "machine_id"]

UNSET = "00000000"  # the default gateway.serial: no serial yet
SOURCES = ("drop-in", "configuration", "provisioned", "device-tree", "dmi", "mac", "machine-id")
# What firmware writes when it has no serial to give (compared without case and surrounding blanks).
_PLACEHOLDERS = frozenset({
    "", "0", "none", "n/a", "na", "unknown", "not specified", "not available", "not applicable",
    "to be filled by o.e.m.", "to be filled by oem", "default string", "system serial number",
    "chassis serial number", "serial number", "systemserialnumber", "to be filled by o.e.m", "xxxxxxxx",
    "xxxxxxxxxx", "invalid", "empty", "uninitialized",
})
_NO_MAC = frozenset({"00:00:00:00:00:00", "ff:ff:ff:ff:ff:ff"})


def eight_digits(text: str) -> str:
    """A hardware serial as 8 digits: digits keep their last 8, hex is reduced mod 10^8, other text is hashed."""
    value = text.strip()
    if re.fullmatch(r"[0-9]+", value):
        return value[-8:].zfill(8)
    bare = value.replace(":", "")  # a MAC address is hex, whatever its digits
    if re.fullmatch(r"[0-9A-Fa-f]+", bare):
        return f"{int(bare, 16) % 10**8:08d}"
    return f"{int.from_bytes(hashlib.sha256(value.encode('utf-8')).digest(), 'big') % 10**8:08d}"


def _meaningful(raw: bytes) -> str | None:
    """The text of a firmware value, or None when it is a placeholder (empty, all zeros, "Not Specified", ...)."""
    text = raw.decode("utf-8", "replace").strip("\x00 \t\r\n")
    if text.lower() in _PLACEHOLDERS or set(text) <= {"0", ":", "-", " "}:
        return None
    return text


def _read(path: Path) -> bytes | None:
    try:
        return path.read_bytes()[:4096]
    except OSError:  # missing, or not readable (DMI serials are root-only): no value from here
        return None


def device_tree_serial(sys_root: Path) -> str | None:
    """The device tree's ``serial-number`` (a Raspberry Pi's board serial), or None."""
    raw = _read(sys_root / "proc/device-tree/serial-number")
    return None if raw is None else _meaningful(raw)


def dmi_serial(sys_root: Path) -> str | None:
    """The SMBIOS system serial (``product_serial``), or None when missing or a placeholder."""
    raw = _read(sys_root / "sys/class/dmi/id/product_serial")
    return None if raw is None else _meaningful(raw)


def first_wired_mac(sys_root: Path) -> str | None:
    """The MAC address of the wired interface with the lowest ifindex (one with a ``device``, no ``wireless``)."""
    found: list[tuple[int, str]] = []
    net = sys_root / "sys/class/net"
    try:
        interfaces = sorted(net.iterdir())
    except OSError:
        return None
    for interface in interfaces:
        if not (interface / "device").exists() or (interface / "wireless").exists() \
                or (interface / "phy80211").exists():
            continue  # virtual (lo, bridges, tunnels) or wireless
        address, index = _read(interface / "address"), _read(interface / "ifindex")
        if address is None or index is None or not index.strip().isdigit():
            continue
        mac = _meaningful(address)
        if mac is not None and mac.lower() not in _NO_MAC and re.fullmatch(r"[0-9a-f]{2}(:[0-9a-f]{2}){5}", mac.lower()):
            found.append((int(index.strip()), mac.lower()))
    return min(found)[1] if found else None


def machine_id(sys_root: Path) -> str | None:
    """systemd's machine id (made on first boot), or None while it is empty."""
    raw = _read(sys_root / "etc/machine-id")
    return None if raw is None else _meaningful(raw)


def given(value: str | None) -> bool:
    """Whether ``value`` is a serial (8 digits, not the unset ``00000000``)."""
    return bool(value) and re.fullmatch(r"[0-9]{8}", value or "") is not None and value != UNSET


def choose(dropin: str | None, configured: str | None, sys_root: Path,
           provisioned: str | None = None) -> tuple[str, str] | None:
    """(8-digit serial, its source) from the first source in ``SOURCES`` that gives one; None if none does."""
    if dropin:
        return dropin, "drop-in"
    for value, source in ((configured, "configuration"), (provisioned, "provisioned")):
        if given(value):
            return str(value), source
    for source, read in (("device-tree", device_tree_serial), ("dmi", dmi_serial), ("mac", first_wired_mac),
                         ("machine-id", machine_id)):
        value = read(sys_root)
        if value is not None:
            return eight_digits(value), source
    return None
