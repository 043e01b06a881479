"""The packaged systemd unit: hardened to an exposure of at most 3.0, serial ports still allowed."""

from __future__ import annotations

import re
import shutil
import subprocess
from importlib.resources import files

import pytest

UNIT = files("wmbus_stream").joinpath("data/wmbus-stream.service")
TARGET = 3.0


def test_the_unit_allows_usb_dongles_and_the_on_board_serial_ports_of_radio_hats() -> None:
    allowed = re.findall(r"^DeviceAllow=(\S+) rw$", UNIT.read_text(), re.MULTILINE)
    assert sorted(allowed) == ["char-ttyACM", "char-ttyAMA", "char-ttyS", "char-ttyUSB", "char-ttymxc"]
    assert re.search(r"^DevicePolicy=closed$", UNIT.read_text(), re.MULTILINE)


@pytest.mark.skipif(shutil.which("systemd-analyze") is None,
                    reason="systemd-analyze is not installed (Debian package systemd; scripts/test installs it)")
def test_systemd_analyze_scores_the_unit_at_most_3() -> None:
    """Issue #11: it scored 6.6 (MEDIUM). Offline scoring reads the file; docs/install.md has
    the figure measured in the booted image (image/boot-test), which is the same."""
    result = subprocess.run(["systemd-analyze", "security", "--offline=yes", "--no-pager", str(UNIT)],
                            capture_output=True, text=True, timeout=60)
    found = re.search(r"Overall exposure level for wmbus-stream\.service: (\d+\.\d)", result.stdout)
    assert found, result.stdout + result.stderr
    assert float(found.group(1)) <= TARGET, result.stdout
