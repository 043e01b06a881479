"""``wmbus-stream update``: the confirm rule, rauc 1.8's JSON, and the commands against real rauc and a double.

Where the host allows it (root, unshare, dbus-daemon, Debian's rauc 1.8 with grub-editenv and
mksquashfs) a real ``rauc service`` runs on a private D-Bus session bus, in its own mount
namespace whose /proc/cmdline says ``rauc.slot=A``, with two slot image files, a grubenv and
a keyring of its own: install, refusal of a bundle signed by another key, rollback and
mark-good are rauc's own. Everywhere else, and for what a test cannot make real rauc do (a
service that never gets ready, a bad other slot), ``tests/doubles/rauc`` stands in: it
prints the JSON real rauc 1.8 prints (the same fields; checked against real rauc below).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from wmbus_stream.appliance import slots
from wmbus_stream.appliance.slots import Decision
from wmbus_stream.errors import UpdateError

WMBUS = Path(sys.executable).with_name("wmbus-stream")
DOUBLES = Path(__file__).resolve().parents[1] / "doubles"

# What Debian's rauc 1.8 printed for `rauc status --detailed --output-format=json` on a grub
# system booted from A, right after installing a bundle into B.
REAL_STATUS = (
    '{"compatible":"wmbus-stream-arm64","variant":"","booted":"A","boot_primary":"rootfs.1","slots":[{"rootfs.1":'
    '{"class":"rootfs","device":"/dev/disk/by-partlabel/rootfs_b","type":"raw","bootname":"B","state":"inactive",'
    '"parent":null,"mountpoint":null,"boot_status":"good","slot_status":{"bundle":{"compatible":"wmbus-stream-arm64",'
    '"version":"0.2.0"},"checksum":{"sha256":"fe52b7f42789738cb4465ce51a8bb695e7c286f30c317de424e6c1805ab9b82c",'
    '"size":200000},"installed":{"timestamp":"2026-12-02T13:15:57Z","count":1},"activated":{"timestamp":'
    '"2026-12-02T13:15:57Z","count":1},"status":"ok"}}},{"rootfs.0":{"class":"rootfs","device":'
    '"/dev/disk/by-partlabel/rootfs_a","type":"raw","bootname":"A","state":"booted","parent":null,"mountpoint":null,'
    '"boot_status":"good","slot_status":{"bundle":{"compatible":null}}}}]}'
)


def fresh_status(booted: str = "A", other_good: bool = True) -> dict[str, object]:
    """rauc's status of a device as flashed: both slots written by the image, none installed by rauc yet."""
    def slot(name: str, bootname: str) -> dict[str, object]:
        good = bootname == booted or other_good
        return {name: {"class": "rootfs", "device": f"/dev/disk/by-partlabel/rootfs_{bootname.lower()}", "type": "raw",
                       "bootname": bootname, "state": "booted" if bootname == booted else "inactive", "parent": None,
                       "mountpoint": None, "boot_status": "good" if good else "bad",
                       "slot_status": {"bundle": {"compatible": None}}}}
    return {"compatible": "wmbus-stream-arm64", "variant": "", "booted": booted,
            "boot_primary": "rootfs.0" if booted == "A" else "rootfs.1",
            "slots": [slot("rootfs.1", "B"), slot("rootfs.0", "A")]}


# -- the confirm rule, pure -------------------------------------------------------------------


@pytest.mark.parametrize(("ready", "confirmed_before", "fallback", "decision"), [
    (True, False, True, Decision.MARK_GOOD),
    (True, True, True, Decision.MARK_GOOD),
    (True, False, False, Decision.MARK_GOOD),
    (False, True, True, Decision.MARK_GOOD_ANYWAY),  # confirmed before: the failure is not the update's
    (False, True, False, Decision.MARK_GOOD_ANYWAY),
    (False, False, True, Decision.REBOOT),  # a fresh slot that never got ready: fall back
    (False, False, False, Decision.MARK_GOOD_ANYWAY),  # nothing good to fall back to
])
def test_the_confirm_rule(ready: bool, confirmed_before: bool, fallback: bool, decision: Decision) -> None:
    assert slots.decide(ready, confirmed_before, fallback) is decision


def test_rauc_1_8_json_status_is_read() -> None:
    status = slots.parse_status(REAL_STATUS)
    assert (status.compatible, status.booted, status.primary) == ("wmbus-stream-arm64", "A", "rootfs.1")
    a, b = status.slots
    assert a == slots.Slot("rootfs.0", "A", "booted", "good")
    assert b == slots.Slot("rootfs.1", "B", "inactive", "good", "0.2.0", "2026-12-02T13:15:57Z",
                           "fe52b7f42789738cb4465ce51a8bb695e7c286f30c317de424e6c1805ab9b82c")
    assert status.booted_slot == a and status.other_slot == b and status.primary_slot == b
    assert slots.installation_id(a) == slots.AS_FLASHED and slots.installation_id(b) == b.sha256
    assert status.text() == (
        "booted:    slot A\nactivated: slot B (the next boot starts it)\n"
        "slot A (rootfs.0): booted, boot status good, as flashed\n"
        "slot B (rootfs.1): inactive, boot status good, 0.2.0, installed 2026-12-02T13:15:57Z\n")


@pytest.mark.parametrize("bootname", ["../../etc/x", "A/B", "", "A.1", "Ä"])
def test_a_boot_name_that_is_not_letters_and_digits_never_names_a_file(tmp_path: Path, bootname: str) -> None:
    with pytest.raises(UpdateError, match="allowed: letters A-Z, a-z and digits"):
        slots.marker_path(tmp_path, slots.Slot("rootfs.0", bootname, "booted", "good"))
    assert slots.marker_path(tmp_path, slots.Slot("rootfs.0", "B2", "booted", "good")) == tmp_path / "rauc/confirmed-B2"


@pytest.mark.parametrize("text", ["", "not json", '{"slots": 3}', '{"compatible": "x"}', "[]"])
def test_output_that_is_not_rauc_status_is_an_update_error(text: str) -> None:
    with pytest.raises(UpdateError, match="not its JSON status"):
        slots.parse_status(text)


# -- the commands against the double ---------------------------------------------------------


class Double:
    """The rauc and systemctl doubles' state files and the environment that points the commands at them."""

    def __init__(self, tmp_path: Path) -> None:
        self.rauc_state, self.systemctl_state = tmp_path / "rauc.json", tmp_path / "systemctl.json"
        self.data = tmp_path / "data"
        self.env = {**os.environ, slots.RAUC_ENV: str(DOUBLES / "rauc"), slots.SYSTEMCTL_ENV: str(DOUBLES / "systemctl"),
                    "RAUC_DOUBLE_STATE": str(self.rauc_state), "SYSTEMCTL_DOUBLE_STATE": str(self.systemctl_state)}
        self.set(fresh_status(), answers=["active"])

    def set(self, status: dict[str, object], answers: list[str], refuse: str | None = None) -> None:
        self.rauc_state.write_text(json.dumps({"status": status, "refuse": refuse}))
        self.systemctl_state.write_text(json.dumps({"answers": answers}))

    def status(self) -> dict[str, object]:
        return json.loads(self.rauc_state.read_text())["status"]  # type: ignore[no-any-return]

    def calls(self, which: str) -> list[str]:
        path = Path(f"{self.rauc_state if which == 'rauc' else self.systemctl_state}.calls")
        return path.read_text().splitlines() if path.exists() else []

    def run(self, *args: str) -> subprocess.CompletedProcess[str]:
        done = subprocess.run([str(WMBUS), "update", *args], capture_output=True, text=True, env=self.env, timeout=120)
        assert "Traceback" not in done.stderr, done.stderr
        return done


@pytest.fixture
def double(tmp_path: Path) -> Double:
    return Double(tmp_path)


def test_status_shows_the_slots_as_text_and_json(double: Double) -> None:
    done = double.run("status")
    assert done.returncode == 0, done.stderr
    assert done.stdout == ("booted:    slot A\nactivated: slot A (the next boot starts it)\n"
                           "slot A (rootfs.0): booted, boot status good, as flashed\n"
                           "slot B (rootfs.1): inactive, boot status good, as flashed\n")
    shown = json.loads(double.run("status", "--json").stdout)
    assert (shown["booted"], shown["activated"]) == ("A", "A")
    assert [(s["bootname"], s["state"], s["boot_status"]) for s in shown["slots"]] == [
        ("A", "booted", "good"), ("B", "inactive", "good")]
    assert double.calls("rauc") == ["status --detailed --output-format=json"] * 2


def test_install_says_which_slot_the_reboot_starts(double: Double, tmp_path: Path) -> None:
    bundle = tmp_path / "update.raucb"
    bundle.write_bytes(b"bundle")
    done = double.run("install", str(bundle))
    assert done.returncode == 0, done.stderr
    assert done.stdout == f"installed {bundle} into slot B, version 0.2.0; reboot to start slot B\n"
    assert double.calls("rauc")[0] == f"install {bundle}"


def test_a_refused_bundle_shows_raucs_reason(double: Double, tmp_path: Path) -> None:
    bundle = tmp_path / "foreign.raucb"
    bundle.write_bytes(b"bundle")
    double.set(fresh_status(), ["active"], refuse="signature verification failed: Verify error: self-signed certificate")
    done = double.run("install", str(bundle))
    assert (done.returncode, done.stdout) == (1, "")
    assert done.stderr.splitlines()[-1] == (f"wmbus-stream: rauc refused {bundle}: signature verification failed:"
                                            " Verify error: self-signed certificate")
    missing = double.run("install", str(tmp_path / "nothing.raucb"))
    assert missing.returncode == 1 and f"no bundle file {tmp_path / 'nothing.raucb'}" in missing.stderr


def test_rollback_activates_the_other_slot_only_when_it_is_good(double: Double) -> None:
    double.set(fresh_status(booted="B"), ["active"])  # running the update in B: back to A
    done = double.run("rollback")
    assert done.returncode == 0
    assert done.stdout == "slot A (rootfs.0) is activated (slot B is left); reboot to start slot A\n"
    assert double.calls("rauc")[-1] == "status mark-active other" and double.status()["boot_primary"] == "rootfs.0"
    unconfirmed = fresh_status()  # running A, not confirmed yet: rauc names B the next slot already
    unconfirmed["slots"][1]["rootfs.0"]["boot_status"] = "bad"  # type: ignore[index]
    double.set(unconfirmed | {"boot_primary": "rootfs.1"}, ["active"])
    done = double.run("rollback")
    assert done.returncode == 0 and done.stdout.startswith("slot B (rootfs.1) is activated (slot A is left)")
    assert double.calls("rauc")[-1] == "status mark-active other"
    double.set(fresh_status(other_good=False), ["active"])
    done = double.run("rollback")
    assert done.returncode == 1 and "slot B is marked bad" in done.stderr and "nothing good to roll back to" in done.stderr
    assert double.status()["boot_primary"] == "rootfs.0"


def test_rollback_before_the_reboot_cancels_the_installed_update(double: Double, tmp_path: Path) -> None:
    bundle = tmp_path / "update.raucb"
    bundle.write_bytes(b"bundle")
    assert double.run("install", str(bundle)).returncode == 0
    done = double.run("rollback")
    assert done.returncode == 0 and done.stdout == (
        "slot A (rootfs.0) is activated (the update waiting in slot B is not started); reboot to start slot A\n")
    assert double.calls("rauc")[-1] == "status mark-active booted" and double.status()["boot_primary"] == "rootfs.0"


def test_confirm_marks_a_ready_slot_good_and_remembers_its_installation(double: Double) -> None:
    double.set(json.loads(REAL_STATUS) | {"booted": "B"}, ["active"])
    done = double.run("confirm", "--within", "0", "--data", str(double.data))
    assert done.returncode == 0 and done.stdout == "slot B marked good: wmbus-stream.service is ready\n"
    assert double.calls("rauc")[-1] == "status mark-good booted"
    assert (double.data / "rauc/confirmed-B").read_text() == (
        "fe52b7f42789738cb4465ce51a8bb695e7c286f30c317de424e6c1805ab9b82c\n")
    assert double.calls("systemctl") == ["is-active wmbus-stream.service"]


def test_confirm_reboots_a_fresh_slot_whose_service_is_not_ready(double: Double) -> None:
    double.set(json.loads(REAL_STATUS) | {"booted": "B"}, ["activating"])
    done = double.run("confirm", "--within", "0", "--data", str(double.data))
    assert done.returncode == 1 and "slot B NOT marked good" in done.stdout and "rebooting" in done.stdout
    assert double.calls("systemctl") == ["is-active wmbus-stream.service", "reboot"]
    assert "status mark-good booted" not in double.calls("rauc") and not (double.data / "rauc/confirmed-B").exists()


def test_confirm_marks_good_anyway_a_slot_confirmed_before_for_this_installation(double: Double) -> None:
    double.set(json.loads(REAL_STATUS) | {"booted": "B"}, ["failed"])
    (double.data / "rauc").mkdir(parents=True)
    (double.data / "rauc/confirmed-B").write_text("an older installation\n")
    done = double.run("confirm", "--within", "0", "--data", str(double.data))
    assert done.returncode == 1 and "reboot" in double.calls("systemctl")  # another installation's mark does not count
    (double.data / "rauc/confirmed-B").write_text("fe52b7f42789738cb4465ce51a8bb695e7c286f30c317de424e6c1805ab9b82c\n")
    done = double.run("confirm", "--within", "0", "--data", str(double.data))
    assert done.returncode == 0 and "confirmed before for this installation" in done.stdout
    assert double.calls("rauc")[-1] == "status mark-good booted" and double.calls("systemctl")[-1] != "reboot"


def test_confirm_marks_good_anyway_when_no_good_slot_could_take_over(double: Double) -> None:
    double.set(fresh_status(other_good=False), ["activating"])
    done = double.run("confirm", "--within", "0", "--data", str(double.data))
    assert done.returncode == 0 and "there is no good slot to go back to" in done.stdout
    assert "reboot" not in double.calls("systemctl")


def test_waiting_asks_until_the_service_is_active_or_the_bound_is_reached(double: Double,
                                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    """The clock is a parameter: the checks and the waits between them are counted, not timed."""
    now = [0.0]
    waits: list[float] = []

    def sleep(seconds: float) -> None:
        waits.append(seconds)
        now[0] += seconds

    tools = slots.Tools(str(DOUBLES / "rauc"), str(DOUBLES / "systemctl"))
    monkeypatch.setenv("SYSTEMCTL_DOUBLE_STATE", str(double.systemctl_state))
    double.set(fresh_status(), ["activating", "activating", "active"])
    assert slots.wait_active(tools, 10, interval=2, clock=lambda: now[0], sleep=sleep) is True
    assert waits == [2, 2] and len(double.calls("systemctl")) == 3
    double.set(fresh_status(), ["activating"])
    waits.clear()
    assert slots.wait_active(tools, 3, interval=2, clock=lambda: now[0], sleep=sleep) is False
    assert waits == [2, 1]
    double.set(fresh_status(), ["activating", "failed", "active"])  # systemd gave up: no use waiting on
    waits.clear()
    assert slots.wait_active(tools, 300, interval=2, clock=lambda: now[0], sleep=sleep) is False
    assert waits == [2]


def test_a_missing_rauc_is_named(double: Double, tmp_path: Path) -> None:
    done = double.run("status", "--rauc", str(tmp_path / "no-rauc"))
    assert done.returncode == 1 and done.stderr == (f"wmbus-stream: cannot run {tmp_path / 'no-rauc'}: No such file or"
                                                    " directory (is it installed? WMBUS_STREAM_RAUC names another"
                                                    " program)\n")


# -- real rauc 1.8 ---------------------------------------------------------------------------


def _can_run_real_rauc() -> str | None:
    """Why real rauc cannot run here, or None when it can."""
    if os.geteuid() != 0:
        return "real rauc needs root (a mount namespace for /proc/cmdline, loop devices for bundles)"
    missing = [tool for tool in ("rauc", "dbus-daemon", "unshare", "grub-editenv", "mksquashfs", "openssl")
               if shutil.which(tool) is None]
    if missing:
        return f"not installed: {', '.join(missing)} (Debian: rauc, dbus, util-linux, grub-common, squashfs-tools)"
    return None


SYSTEM_CONF = """\
[system]
compatible=wmbus-stream-arm64
bootloader=grub
grubenv={root}/grubenv
statusfile={root}/status
data-directory={root}/rauc-data

[keyring]
path={root}/fleet.pem

[slot.rootfs.0]
device={root}/rootfs_a.img
type=raw
bootname=A

[slot.rootfs.1]
device={root}/rootfs_b.img
type=raw
bootname=B
"""


class RealRauc:
    """A rauc service on a private session bus in its own mount namespace, and what its commands need."""

    def __init__(self, root: Path) -> None:
        self.root = root
        (root / "system.conf").write_text(SYSTEM_CONF.format(root=root))
        (root / "cmdline").write_text("console=ttyAMA0 rauc.slot=A\n")
        for name in ("rootfs_a.img", "rootfs_b.img"):
            with open(root / name, "wb") as image:
                image.truncate(1 << 20)
        subprocess.run(["grub-editenv", str(root / "grubenv"), "create"], check=True)
        subprocess.run(["grub-editenv", str(root / "grubenv"), "set", "ORDER=A B", "A_OK=1", "B_OK=1", "A_TRY=0",
                        "B_TRY=0"], check=True)
        for name in ("fleet", "other"):
            subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(root / f"{name}.key"),
                            "-out", str(root / f"{name}.pem"), "-days", "2", "-subj", f"/CN={name}"],
                           check=True, capture_output=True)
        self.dbus = subprocess.Popen(["dbus-daemon", "--session", "--nofork", "--print-address=1",
                                      f"--address=unix:path={root / 'bus'}"], stdout=subprocess.PIPE,
                                     stderr=subprocess.DEVNULL, text=True)
        assert self.dbus.stdout is not None
        address = self.dbus.stdout.readline().strip()
        self.env = {**os.environ, "DBUS_SESSION_BUS_ADDRESS": address, "DBUS_STARTER_BUS_TYPE": "session",
                    slots.RAUC_ENV: "rauc"}
        self.service = subprocess.Popen(
            ["unshare", "-m", "sh", "-c", 'mount --bind "$1" /proc/cmdline && exec rauc --conf="$2" --mount="$3" service',
             "sh", str(root / "cmdline"), str(root / "system.conf"), str(root / "mnt")],
            env=self.env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        give_up = time.monotonic() + 60
        while subprocess.run(["rauc", "status", "--output-format=json"], env=self.env,
                             capture_output=True).returncode != 0:
            if self.service.poll() is not None or time.monotonic() > give_up:
                self.close()
                pytest.skip("the rauc service did not come up on the private bus")
            time.sleep(0.1)

    def bundle(self, name: str, signer: str, version: str) -> Path:
        content = self.root / f"content-{name}"
        content.mkdir()
        (content / "rootfs.img").write_bytes(version.encode() * 4096)
        (content / "manifest.raucm").write_text(f"[update]\ncompatible=wmbus-stream-arm64\nversion={version}\n\n"
                                                "[bundle]\nformat=plain\n\n[image.rootfs]\nfilename=rootfs.img\n")
        out = self.root / f"{name}.raucb"
        subprocess.run(["rauc", "bundle", f"--cert={self.root / signer}.pem", f"--key={self.root / signer}.key",
                        str(content), str(out)], check=True, capture_output=True)
        return out

    def grubenv(self) -> dict[str, str]:
        listed = subprocess.run(["grub-editenv", str(self.root / "grubenv"), "list"], capture_output=True, text=True,
                                check=True).stdout
        return dict(line.split("=", 1) for line in listed.splitlines())

    def run(self, *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
        done = subprocess.run([str(WMBUS), "update", *args], capture_output=True, text=True,
                              env={**self.env, **(env or {})}, timeout=300)
        assert "Traceback" not in done.stderr, done.stderr
        return done

    def close(self) -> None:
        for process in (self.service, self.dbus):
            if process.poll() is None:
                process.terminate()
                process.wait(timeout=30)
        if self.dbus.stdout is not None:
            self.dbus.stdout.close()


@pytest.fixture
def real_rauc(tmp_path: Path) -> Iterator[RealRauc]:
    reason = _can_run_real_rauc()
    if reason:
        pytest.skip(reason)
    system = RealRauc(tmp_path)
    try:
        yield system
    finally:
        system.close()


def test_real_rauc_installs_a_fleet_signed_bundle_and_refuses_another_key(real_rauc: RealRauc) -> None:
    before = real_rauc.run("status")
    assert before.returncode == 0, before.stderr
    assert before.stdout.startswith("booted:    slot A\n")
    foreign = real_rauc.bundle("foreign", "other", "6.6.6")
    done = real_rauc.run("install", str(foreign))
    assert done.returncode == 1 and f"rauc refused {foreign}: signature verification failed" in done.stderr
    assert real_rauc.grubenv()["ORDER"] == "A B" and slots.parse_status(
        subprocess.run(["rauc", "status", "--detailed", "--output-format=json"], env=real_rauc.env, capture_output=True,
                       text=True, check=True).stdout).other_slot == slots.Slot("rootfs.1", "B", "inactive", "good")
    done = real_rauc.run("install", str(real_rauc.bundle("update", "fleet", "0.2.0")))
    assert done.returncode == 0, done.stderr
    assert done.stdout.endswith("into slot B, version 0.2.0; reboot to start slot B\n")
    assert real_rauc.grubenv()["ORDER"] == "B A"
    assert (real_rauc.root / "rootfs_b.img").read_bytes().startswith(b"0.2.0" * 4096)
    shown = json.loads(real_rauc.run("status", "--json").stdout)
    assert shown["activated"] == "B" and shown["slots"][1]["version"] == "0.2.0"
    done = real_rauc.run("rollback")  # before B ever booted: the next boot starts A again
    assert done.returncode == 0 and done.stdout.startswith("slot A (rootfs.0) is activated (the update waiting")
    assert real_rauc.grubenv()["ORDER"] == "A B"


def test_real_rauc_confirm_marks_the_booted_slot_good(real_rauc: RealRauc, double: Double) -> None:
    subprocess.run(["grub-editenv", str(real_rauc.root / "grubenv"), "set", "A_TRY=1"], check=True)  # GRUB's try
    shown = json.loads(real_rauc.run("status", "--json").stdout)
    assert (shown["activated"], shown["slots"][0]["boot_status"]) == ("B", "bad")  # until confirmed
    done = real_rauc.run("confirm", "--within", "0", "--data", str(double.data), "--systemctl",
                         str(DOUBLES / "systemctl"), env={"SYSTEMCTL_DOUBLE_STATE": str(double.systemctl_state)})
    assert done.returncode == 0 and done.stdout == "slot A marked good: wmbus-stream.service is ready\n"
    assert (real_rauc.grubenv()["A_OK"], real_rauc.grubenv()["A_TRY"]) == ("1", "0")
    assert (double.data / "rauc/confirmed-A").read_text() == f"{slots.AS_FLASHED}\n"


def _shape(value: object) -> object:
    """The keys of a JSON document, nested, without the values."""
    if isinstance(value, dict):
        return {key: _shape(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_shape(item) for item in value]
    return None


def test_the_double_prints_what_real_rauc_prints(real_rauc: RealRauc, double: Double) -> None:
    def real() -> object:
        return json.loads(subprocess.run(["rauc", "status", "--detailed", "--output-format=json"], env=real_rauc.env,
                                         capture_output=True, text=True, check=True).stdout)

    def doubled() -> object:
        return json.loads(subprocess.run([str(DOUBLES / "rauc"), "status", "--detailed", "--output-format=json"],
                                         env=double.env, capture_output=True, text=True, check=True).stdout)

    assert _shape(doubled()) == _shape({**real(), "slots": sorted(real()["slots"], key=list, reverse=True)})  # type: ignore[index]
    real_rauc.run("install", str(real_rauc.bundle("update", "fleet", "0.2.0")))
    bundle = real_rauc.root / "update.raucb"
    subprocess.run([str(DOUBLES / "rauc"), "install", str(bundle)], env=double.env, check=True, capture_output=True)
    assert _shape(doubled()) == _shape({**real(), "slots": sorted(real()["slots"], key=list, reverse=True)})  # type: ignore[index]
