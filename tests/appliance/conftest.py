"""Fixtures of the opt-in appliance tier: image/build's outputs, a fresh SSH key per run, a gateway per test, wall times.

Nothing here boots anything unless WMBUS_STREAM_APPLIANCE_DIR is set (the test module skips
itself otherwise, see ``skip_reason``). Every test gets its own sparse copy of the disk
image with its own provisioning drop-in on the ESP; the copies are removed after the test
(WMBUS_STREAM_APPLIANCE_KEEP=1 keeps them beside the console logs for a post-mortem).
"""

from __future__ import annotations

import json
import os
import re
import time
from collections.abc import Callable, Generator, Iterator, Sequence
from pathlib import Path

import pytest

from vm import (DROP_IN, ENV_DIR, FIRMWARE, LOCAL_GRUB_CFG, LOCAL_GRUB_TEXT, Artifacts, Disk, VM, drop_in, missing_tools,
                ssh_key)

TIMES_ENV = "WMBUS_STREAM_APPLIANCE_TIMES"
REPO = Path(__file__).resolve().parents[2]
# What every test gateway runs on unless a test says otherwise: the simulated receiver (no
# dongle in qemu) and the web UI on every address, so the forwarded port reaches it.
BASE_SETTINGS: list[tuple[str, str]] = [
    ("receiver.protocol", "simulator"), ("receiver.port", "-"), ("simulator.meters", "200"),
    ("web.enabled", "true"), ("web.listen", "0.0.0.0:8080"), ("report.timezone", "UTC"),
]


def skip_reason() -> str | None:
    """Why the tier does not run here, or None when it does."""
    if not os.environ.get(ENV_DIR):
        return (f"opt-in qemu tier: set {ENV_DIR} to image/build's --out folder, or run "
                "image/vm-test --image-dir DIR (boots the disk image under qemu; tens of minutes)")
    missing = missing_tools()
    if missing:
        return f"host tools missing: {', '.join(missing)} (image/vm-test installs them)"
    return None


class Clock:
    """A test's wall time and named laps, written to the run's timing file and the terminal summary."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.started = time.monotonic()
        self.laps: list[tuple[str, float]] = []
        self.notes: list[str] = []

    def lap(self, label: str) -> float:
        """Record the time since the test started under ``label``; the seconds."""
        seconds = round(time.monotonic() - self.started, 1)
        self.laps.append((label, seconds))
        print(f"[{self.name}] {seconds:7.1f} s  {label}", flush=True)
        return seconds

    def note(self, text: str) -> None:
        """A line for the summary (e.g. the power-cut instants)."""
        self.notes.append(text)
        print(f"[{self.name}] {text}", flush=True)


_RECORDS: list[dict] = []


@pytest.fixture(scope="session")
def artifacts() -> Artifacts:
    """image/build's outputs in WMBUS_STREAM_APPLIANCE_DIR (an error, not a skip, when the folder is wrong)."""
    return Artifacts.find(Path(os.environ[ENV_DIR]))


@pytest.fixture(scope="session")
def test_key(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    """This run's SSH key pair (made fresh per run): (private key file, public key line)."""
    return ssh_key(tmp_path_factory.mktemp("ssh"))


@pytest.fixture
def clock(request: pytest.FixtureRequest) -> Iterator[Clock]:
    """The test's wall time, recorded whether it passes or fails."""
    timer = Clock(request.node.name)
    yield timer
    total = round(time.monotonic() - timer.started, 1)
    report = getattr(request.node, "rep_call", None)
    record = {"test": request.node.name, "seconds": total, "outcome": report.outcome if report else "error",
              "laps": timer.laps, "notes": timer.notes}
    _RECORDS.append(record)
    times = os.environ.get(TIMES_ENV)
    if times:
        with open(times, "a", encoding="utf-8") as out:
            out.write(json.dumps(record) + "\n")


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    report = yield
    if report.when == "call":
        item.rep_call = report  # type: ignore[attr-defined]
    return report


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if not _RECORDS:
        return
    terminalreporter.section("appliance tier: wall times")
    for record in _RECORDS:
        terminalreporter.write_line(f"{record['seconds']:8.1f} s  {record['outcome']:7}  {record['test']}")
        for label, seconds in record["laps"]:
            terminalreporter.write_line(f"{'':10}{seconds:8.1f} s  {label}")
        for note in record["notes"]:
            terminalreporter.write_line(f"{'':20}{note}")


GatewayFactory = Callable[..., VM]


@pytest.fixture
def gateway(artifacts: Artifacts, test_key: tuple[Path, str], tmp_path: Path) -> Iterator[GatewayFactory]:
    """Make a gateway: a sparse copy of the image, a drop-in on its ESP (BASE_SETTINGS, the settings given, the
    test key unless ``key=False``; none at all with ``drop_in_text=""``), the journal forwarded to the console
    (LOCAL_GRUB_CFG), a VM (not started) on it."""
    made: list[VM] = []

    def make(name: str, settings: Sequence[tuple[str, str]] = (), *, firmware: str = "edk2",
             smbios: str | None = None, key: bool = True, drop_in_text: str | None = None,
             extra_disks: Sequence[Path] = ()) -> VM:
        if not FIRMWARE[firmware].is_file():
            pytest.skip(f"firmware {FIRMWARE[firmware]} missing (image/vm-test installs qemu-efi-aarch64 and u-boot-qemu)")
        disk = Disk.copy_of(artifacts.image, tmp_path / f"{name}.img")
        if drop_in_text is None:
            lines = [*BASE_SETTINGS, *settings]
            if key:
                lines.append(("provision.ssh.key", test_key[1]))
            drop_in_text = drop_in(lines)
        if disk.esp_read(LOCAL_GRUB_CFG) is not None:
            raise AssertionError(f"{artifacts.image} already has {LOCAL_GRUB_CFG}; the tests would replace it")
        disk.esp_write(LOCAL_GRUB_CFG, LOCAL_GRUB_TEXT, tmp_path)
        if drop_in_text:
            disk.esp_write(DROP_IN, drop_in_text, tmp_path)
        vm = VM(disk, tmp_path, name=name, firmware=firmware, smbios_serial=smbios, key=test_key[0] if key else None,
                extra_disks=extra_disks)
        made.append(vm)
        return vm

    yield make
    for vm in made:
        vm.kill()
    if os.environ.get("WMBUS_STREAM_APPLIANCE_KEEP") != "1":
        for image in tmp_path.glob("*.img"):
            image.unlink()
        for image in tmp_path.glob("*.ext4"):
            image.unlink()


def documented_flush_seconds() -> float:
    """``store.flush.seconds``'s default as docs/configuration.md states it (the store's commit window)."""
    text = (REPO / "docs" / "configuration.md").read_text(encoding="utf-8")
    found = re.search(r"^\| `store\.flush\.seconds` \| `([0-9.]+)` \|", text, re.MULTILINE)
    if not found:
        raise AssertionError("docs/configuration.md does not state store.flush.seconds' default")
    return float(found.group(1))
