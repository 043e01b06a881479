"""The A/B root slots through RAUC 1.8: status, install, rollback, and the confirm after each boot.

``rauc`` (its path from ``--rauc`` or ``WMBUS_STREAM_RAUC``) does the work: ``rauc status
--detailed --output-format=json``, ``rauc install BUNDLE`` (it checks the bundle's signature
against the fleet's keyring and refuses what does not verify), ``rauc status mark-good`` and
``rauc status mark-active other``. ``systemctl`` (``--systemctl``, ``WMBUS_STREAM_SYSTEMCTL``)
tells whether the gateway service is active (Type=notify: it said READY=1) and reboots.

Confirm: a slot is marked good once the service is ready within the bound. When it is not,
``decide`` says what to do: a slot confirmed before for its current installation (the marker
``DATA/rauc/confirmed-BOOTNAME`` holds the installation's id) is marked good anyway, the
failure is not the update's; so is a slot with no good slot to go back to. A fresh slot is
left unmarked and the device reboots: GRUB counts its tries and then boots the other slot.
"""

from __future__ import annotations

import enum
import json
import os
import re
import subprocess
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

from ..atomic import write_atomic
from ..errors import UpdateError

__all__ = ["RAUC_ENV", "SYSTEMCTL_ENV", "Decision", "Slot", "Status", "Tools", "confirm", "decide", "install",
           "installation_id", "marker_path", "parse_status", "rollback", "status", "wait_active"]

RAUC_ENV = "WMBUS_STREAM_RAUC"
SYSTEMCTL_ENV = "WMBUS_STREAM_SYSTEMCTL"
SERVICE = "wmbus-stream.service"
AS_FLASHED = "as-flashed"  # the installation id of a slot written by the image, not by rauc install


@dataclass(frozen=True, slots=True)
class Tools:
    """The programs the update commands run."""

    rauc: str = "rauc"
    systemctl: str = "systemctl"

    @classmethod
    def from_environment(cls, rauc: str | None = None, systemctl: str | None = None) -> Tools:
        """Options first, then WMBUS_STREAM_RAUC / WMBUS_STREAM_SYSTEMCTL, then the programs on PATH."""
        return cls(rauc or os.environ.get(RAUC_ENV) or "rauc",
                   systemctl or os.environ.get(SYSTEMCTL_ENV) or "systemctl")


@dataclass(frozen=True, slots=True)
class Slot:
    """One bootable slot as rauc reports it."""

    name: str  # rootfs.0
    bootname: str  # A
    state: str  # booted, active, inactive
    boot_status: str  # good, bad
    version: str | None = None
    installed: str | None = None  # time stamp of its last rauc install
    sha256: str | None = None  # of the image rauc last wrote into it


@dataclass(frozen=True, slots=True)
class Status:
    """``rauc status``: which slot runs, which boots next, and each bootable slot."""

    compatible: str
    booted: str  # the bootname of the running slot (rauc.slot= on the kernel command line)
    primary: str | None  # the slot name the bootloader starts next
    slots: tuple[Slot, ...]

    @property
    def booted_slot(self) -> Slot | None:
        return next((s for s in self.slots if self.booted in (s.bootname, s.name)), None)

    @property
    def primary_slot(self) -> Slot | None:
        return next((s for s in self.slots if s.name == self.primary), None)

    @property
    def other_slot(self) -> Slot | None:
        """The bootable slot that is not running (A/B: exactly one)."""
        booted = self.booted_slot
        return next((s for s in self.slots if booted is not None and s.name != booted.name), None)

    def as_json(self) -> dict[str, object]:
        primary = self.primary_slot
        return {"compatible": self.compatible, "booted": self.booted,
                "activated": primary.bootname if primary else None, "slots": [asdict(s) for s in self.slots]}

    def text(self) -> str:
        """What ``update status`` prints."""
        primary = self.primary_slot
        lines = [f"booted:    slot {self.booted}", "activated: " + (
            f"slot {primary.bootname} (the next boot starts it)" if primary else "unknown (the bootloader did not say)")]
        for s in self.slots:
            version = s.version or ("as flashed" if s.installed is None else "unknown version")
            installed = f", installed {s.installed}" if s.installed else ""
            lines.append(f"slot {s.bootname} ({s.name}): {s.state}, boot status {s.boot_status}, {version}{installed}")
        return "\n".join(lines) + "\n"


def parse_status(text: str) -> Status:
    """``rauc status --detailed --output-format=json`` (RAUC 1.8) into a Status; UpdateError if it is not that."""
    try:
        document = json.loads(text)
        slots = []
        for entry in document["slots"]:
            [(name, info)] = entry.items()
            if not info.get("bootname"):
                continue  # not bootable (a data or app slot): not an A/B root
            detail = info.get("slot_status") or {}
            slots.append(Slot(name, info["bootname"], info.get("state") or "unknown", info.get("boot_status") or "bad",
                              (detail.get("bundle") or {}).get("version"),
                              (detail.get("installed") or {}).get("timestamp"),
                              (detail.get("checksum") or {}).get("sha256")))
        return Status(document.get("compatible") or "", document.get("booted") or "", document.get("boot_primary"),
                      tuple(sorted(slots, key=lambda s: s.bootname)))
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        raise UpdateError(f"rauc status printed something that is not its JSON status ({exc}): {text[:200]!r}") from None


def _run(command: list[str], timeout: float = 60) -> subprocess.CompletedProcess[str]:
    try:
        return subprocess.run(command, capture_output=True, text=True, timeout=timeout, check=False)
    except OSError as exc:  # not installed, not executable
        name = SYSTEMCTL_ENV if os.path.basename(command[0]).startswith("systemctl") else RAUC_ENV
        raise UpdateError(f"cannot run {command[0]}: {exc.strerror or exc} (is it installed? {name} names another"
                          " program)") from None
    except subprocess.TimeoutExpired:
        raise UpdateError(f"{' '.join(command)} did not finish within {timeout:.0f} s") from None


def _rauc_error(done: subprocess.CompletedProcess[str]) -> str:
    """rauc's own reason for a failure: its LastError line, else its last line of output."""
    lines = [line.strip() for line in (done.stdout + "\n" + done.stderr).splitlines() if line.strip()]
    last = [line.split(":", 1)[1].strip() for line in lines if line.startswith("LastError:")]
    return last[-1] if last else (lines[-1] if lines else f"exit status {done.returncode}")


def status(tools: Tools) -> Status:
    """The slots as rauc sees them now."""
    done = _run([tools.rauc, "status", "--detailed", "--output-format=json"])
    if done.returncode != 0:
        raise UpdateError(f"rauc status failed: {_rauc_error(done)}")
    return parse_status(done.stdout)


def install(tools: Tools, bundle: str, timeout: float = 3600) -> Status:
    """Install a bundle into the other slot; UpdateError with rauc's reason when it refuses (a bad signature)."""
    if not os.path.isfile(bundle):
        raise UpdateError(f"no bundle file {bundle}")
    done = _run([tools.rauc, "install", os.path.abspath(bundle)], timeout=timeout)
    if done.returncode != 0:
        raise UpdateError(f"rauc refused {bundle}: {_rauc_error(done)}")
    return status(tools)


def rollback(tools: Tools) -> tuple[Slot, str]:
    """Boot the other, good slot next (or, while an installed update waits for its reboot, the running one again).

    The running slot is good once confirmed; while it is not (GRUB counted a try that mark-good
    has not cleared yet), rauc already names the other slot as the next one, and that is a
    rollback to it, not an update waiting.

    Returns the slot the next boot starts and what it means; UpdateError when there is none to go to.
    """
    current = status(tools)
    booted, other = current.booted_slot, current.other_slot
    if booted is None or other is None:
        raise UpdateError(f"no other slot to roll back to (booted slot {current.booted or 'unknown'})")
    if current.primary == other.name and booted.boot_status == "good":  # installed, not booted yet: stay
        target, which, meaning = booted, "booted", f"the update waiting in slot {other.bootname} is not started"
    elif other.boot_status != "good":
        raise UpdateError(f"slot {other.bootname} is marked {other.boot_status}: it failed to boot or was never"
                          " confirmed, so there is nothing good to roll back to")
    else:
        target, which, meaning = other, "other", f"slot {booted.bootname} is left"
    done = _run([tools.rauc, "status", "mark-active", which])
    if done.returncode != 0:
        raise UpdateError(f"rauc could not activate slot {target.bootname}: {_rauc_error(done)}")
    return target, meaning


def installation_id(slot: Slot) -> str:
    """What identifies the slot's current installation: the image's sha256, else the install time, else as flashed."""
    return slot.sha256 or slot.installed or AS_FLASHED


def marker_path(data: Path, slot: Slot) -> Path:
    """``DATA/rauc/confirmed-BOOTNAME``: the installation id this slot was last confirmed for.

    The boot name comes from rauc's configuration; it goes into a file name only when it is
    letters and digits (never a path such as ``../x``).
    """
    if not re.fullmatch(r"[A-Za-z0-9]+", slot.bootname):
        raise UpdateError(f"rauc names slot {slot.name} with boot name {slot.bootname!r}; allowed: letters A-Z, a-z"
                          " and digits (it names the file DATA/rauc/confirmed-BOOTNAME)")
    return data / "rauc" / f"confirmed-{slot.bootname}"


class Decision(enum.Enum):
    """What confirm does after waiting for the service."""

    MARK_GOOD = "mark good: the service is ready"
    MARK_GOOD_ANYWAY = "mark good although the service is not ready"
    REBOOT = "reboot without marking good: the bootloader falls back after its tries"


def decide(ready: bool, confirmed_before: bool, fallback: bool) -> Decision:
    """The confirm rule: ready marks good; not ready reboots a fresh slot only when a good slot can take over."""
    if ready:
        return Decision.MARK_GOOD
    if confirmed_before or not fallback:
        return Decision.MARK_GOOD_ANYWAY
    return Decision.REBOOT


def wait_active(tools: Tools, within: float, *, unit: str = SERVICE, interval: float = 2.0,
                clock: Callable[[], float] = time.monotonic, sleep: Callable[[float], None] = time.sleep) -> bool:
    """Whether ``unit`` is active (for Type=notify: READY=1 was sent) at some check within ``within`` seconds.

    ``failed`` ends the wait at once: with Restart=on-failure a unit is ``activating`` between
    its restarts, and ``failed`` only once systemd gave up on it.
    """
    deadline = clock() + within
    while True:
        answer = _run([tools.systemctl, "is-active", unit]).stdout.strip()
        if answer == "active":
            return True
        left = deadline - clock()
        if left <= 0 or answer == "failed":
            return False
        sleep(min(interval, left))


@dataclass(frozen=True, slots=True)
class Confirmed:
    """What confirm found and did."""

    slot: Slot
    decision: Decision
    ready: bool
    confirmed_before: bool
    fallback: bool


def confirm(tools: Tools, data: Path, within: float, *, interval: float = 2.0,
            clock: Callable[[], float] = time.monotonic, sleep: Callable[[float], None] = time.sleep) -> Confirmed:
    """Wait for the service, then mark the booted slot good or reboot, as ``decide`` says."""
    current = status(tools)
    slot = current.booted_slot
    if slot is None:
        raise UpdateError(f"rauc does not know the booted slot ({current.booted or 'no rauc.slot= on the command line'})")
    ready = wait_active(tools, within, interval=interval, clock=clock, sleep=sleep)
    marker = marker_path(data, slot)
    try:
        confirmed_before = marker.read_text(encoding="utf-8").strip() == installation_id(slot)
    except OSError:
        confirmed_before = False
    other = current.other_slot
    fallback = other is not None and other.boot_status == "good"
    decision = decide(ready, confirmed_before, fallback)
    if decision is Decision.REBOOT:
        done = _run([tools.systemctl, "reboot"])
        if done.returncode != 0:
            raise UpdateError(f"systemctl reboot failed: {done.stderr.strip() or done.returncode}")
    else:
        done = _run([tools.rauc, "status", "mark-good", "booted"])
        if done.returncode != 0:
            raise UpdateError(f"rauc could not mark slot {slot.bootname} good: {_rauc_error(done)}")
        if decision is Decision.MARK_GOOD and not confirmed_before:  # only a ready service confirms an installation
            marker.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
            write_atomic(marker, installation_id(slot) + "\n", 0o600)
    return Confirmed(slot, decision, ready, confirmed_before, fallback)
