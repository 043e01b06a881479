"""The disk image under qemu, booted from Debian's firmware: provisioning, A/B updates and rollback, power cuts, watchdog.

Opt-in (tens of minutes): skipped unless WMBUS_STREAM_APPLIANCE_DIR names image/build's --out
folder; ``image/vm-test --image-dir DIR`` runs it and prints each test's wall time. Each test
boots its own copy of the image; none asserts a duration (deadlines only bound the waits).
"""

from __future__ import annotations

import calendar
import hashlib
import json
import random
import re
import time
from pathlib import Path

import pytest

from conftest import Clock, GatewayFactory, documented_flush_seconds, skip_reason
from vm import (BOOT_DEADLINE, DROP_IN, FIRMWARE_BANNER, GRUB_SLOT, PASSWORD_LINE, PROVISION_ERROR, PROVISIONED, START_LINE,
                STATE, WMBUS, Artifacts, Hes, VM, booted, bundle_disk, check_data, free_port, poll, rauc_slot)

SKIP = skip_reason()
pytestmark = [pytest.mark.appliance, pytest.mark.skipif(SKIP is not None, reason=SKIP or "")]

CONFIG = "/etc/wmbus-stream/stream.cfg"
BUNDLES = "/run/vmtest-bundles"  # where the second (bundle) disk is mounted in the guest
SEED = 13  # the power-cut instants; printed, so a failing run can be repeated
# What the initramfs says when the data partition could not be checked or mounted.
DATA_TROUBLE = re.compile(r"wmbus-data: .*(?:not mounted|cannot|returned)")


def serial_of(text: str) -> str:
    """The contract's hardware-serial mapping to 8 digits (digits: last 8; hex: mod 10^8; other: SHA-256 mod 10^8)."""
    if text.isdigit():
        return text[-8:].zfill(8)
    if re.fullmatch(r"[0-9A-Fa-f]+", text):
        return f"{int(text, 16) % 10**8:08d}"
    return f"{int(hashlib.sha256(text.encode()).hexdigest(), 16) % 10**8:08d}"


def web_password(vm: VM, since: int = 0) -> str:
    """The web UI password provisioning showed on the console."""
    return vm.wait_for(PASSWORD_LINE, 120, what="provisioning's 'web UI password for admin' line", since=since).group(1)


def require(path: Path | None, what: str, artifacts: Artifacts) -> Path:
    if path is None:
        pytest.skip(f"{what} not in {artifacts.folder} (image/build writes it)")
    return path


def mount_bundles(vm: VM) -> None:
    vm.ssh(f"sudo mkdir -p {BUNDLES} && sudo mount -o ro LABEL=vmtest-bundles {BUNDLES}")


def assert_web_locked_and_opens(vm: VM, password: str) -> dict:
    """The web UI answers 401 without the password and 200 with it; the status it returned."""
    status, body = vm.web("/api/v1/status")
    assert status == 401, f"GET /api/v1/status without credentials answered {status}, not 401: {body[:300]!r}"
    status, body = vm.web("/api/v1/status", password)
    assert status == 200, f"GET /api/v1/status as admin with the console's password answered {status}: {body[:300]!r}"
    return json.loads(body)


# -------------------------------------------------------------------------------------------
# 1. firmware -> GRUB -> slot A -> the service, from the host

@pytest.mark.parametrize("firmware", ["edk2", "u-boot"])
def test_boot_from_firmware(firmware: str, gateway: GatewayFactory, clock: Clock) -> None:
    vm = gateway("boot", firmware=firmware)
    with booted(vm):
        vm.wait_for(FIRMWARE_BANNER, 120, what=f"the {firmware} banner")
        serial = vm.wait_started()
        clock.lap("service start line on the console")
        password = web_password(vm)
        status = assert_web_locked_and_opens(vm, password)
        clock.lap("web UI: 401 without, 200 with the console's password")
        assert status["gateway_serial"] == serial
        assert vm.console.find(GRUB_SLOT) is not None, "GRUB's 'wmbus-stream: slot A' line is not on the console"
        vm.wait_ssh()
        assert vm.booted_slot() == "A"
        vm.poweroff()
        clock.lap("SSH, slot A, clean poweroff")


# -------------------------------------------------------------------------------------------
# 2. one image, two devices

def test_two_devices_from_one_image(gateway: GatewayFactory, clock: Clock) -> None:
    devices = {"one": "4242000017", "two": "vmtest-unit-two"}  # DMI serials: all digits, and text (SHA-256)
    found: dict[str, tuple[str, str]] = {}
    for name, dmi in devices.items():
        vm = gateway(name, smbios=dmi, key=False)  # a drop-in without gateway.serial
        with booted(vm):
            serial = vm.wait_started()
            password = web_password(vm)
            assert_web_locked_and_opens(vm, password)
            for other_serial, other_password in found.values():
                status, _ = vm.web("/api/v1/status", other_password)
                assert status == 401, f"gateway {serial} accepted gateway {other_serial}'s web password"
            found[name] = (serial, password)
        clock.lap(f"device {name} (DMI serial {dmi}) up: serial {serial}")
    for name, dmi in devices.items():
        assert found[name][0] == serial_of(dmi), f"DMI serial {dmi!r} gave gateway serial {found[name][0]}"
    assert found["one"][0] != found["two"][0]
    assert found["one"][1] != found["two"][1], "two gateways from one image made the same web password"


# -------------------------------------------------------------------------------------------
# 3. the provisioning drop-in

def test_drop_in_provisioning(gateway: GatewayFactory, clock: Clock, tmp_path: Path) -> None:
    hes = Hes(tmp_path)
    hes.start()
    serial = "31415926"
    settings = [("gateway.serial", serial), *hes.settings(), ("receiving.server.push.cron", "*/15 * * * * *")]
    vm = gateway("dropin", settings)
    try:
        with booted(vm):
            assert vm.wait_started() == serial
            vm.wait_ssh()
            clock.lap("up, SSH with the drop-in's key")
            poll(lambda: any(g == serial for g, _, _ in hes.readings()), 600,
                 f"readings from gateway {serial} at the host HES", lambda: f"; HES log:\n{hes.log()[-2000:]}")
            clock.lap("readings at the host HES")
            methods = vm.ssh_methods().split(",")
            assert "password" not in methods and "keyboard-interactive" not in methods, methods
            assert "publickey" in methods, methods
            sshd = vm.ssh("sudo sshd -T").stdout
            assert re.search(r"^passwordauthentication no$", sshd, re.MULTILINE), "sshd -T: password login is on"
            names = vm.ssh("sudo ls -1 /boot/efi").stdout.split()
            assert DROP_IN not in names, f"the drop-in (it holds secrets) is still on the ESP: {names}"
            assert PROVISIONED in names, names
            provisioned = vm.read_file(f"/boot/efi/{PROVISIONED}")
            assert serial in provisioned and hes.password not in provisioned, provisioned
            vm.poweroff()
    finally:
        hes.stop()
    names = vm.disk.esp_names()
    assert DROP_IN not in names and PROVISIONED in names, f"ESP after poweroff: {sorted(names)}"
    clock.lap("checked and powered off")


def test_invalid_drop_in_is_refused(gateway: GatewayFactory, clock: Clock, test_key: tuple[Path, str]) -> None:
    text = "\n".join(["gateway.serial=27182818", "provision.colour=red", f"provision.ssh.key={test_key[1]}"]) + "\n"
    vm = gateway("invalid", drop_in_text=text)
    with booted(vm):
        vm.wait_for(r"provision\.colour", BOOT_DEADLINE, what="provisioning's refusal naming provision.colour")
        clock.lap("refusal on the console")
        vm.wait_key_refused()  # the drop-in's key was not installed: nothing applied
        started = vm.console.find(START_LINE)
        assert started is None or started.group(1) != "27182818", "the refused drop-in's serial was applied"
        vm.poweroff(button=True)
    names = vm.disk.esp_names()
    assert DROP_IN in names, f"the refused drop-in was removed from the ESP: {sorted(names)}"
    assert PROVISIONED not in names, sorted(names)
    error = vm.disk.esp_read(PROVISION_ERROR)
    assert error is not None and "provision.colour" in error, f"{PROVISION_ERROR}: {error!r}"
    clock.lap("ESP checked after poweroff")


# -------------------------------------------------------------------------------------------
# 4./5. A/B updates

def _unreachable_hes() -> list[tuple[str, str]]:
    # Nothing listens on this host port: every push fails, every reading stays pending.
    return [("receiving.server.url", f"http://10.0.2.2:{free_port()}/readings"),
            ("receiving.server.push.cron", "*/20 * * * * *")]


def _wait_pending(vm: VM, at_least: int = 5) -> set[str]:
    return poll(lambda: (lambda p: p if len(p) >= at_least else None)(vm.pending_in_guest()), 600,
                f"{at_least} meters pending in {STATE}")


def _install(vm: VM, bundle: Path) -> str:
    result = vm.ssh(f"sudo {WMBUS} update install {BUNDLES}/{bundle.name}", timeout=1800)
    return result.stdout + result.stderr


def test_update_a_to_b_keeps_pending_readings(artifacts: Artifacts, gateway: GatewayFactory, clock: Clock,
                                              tmp_path: Path) -> None:
    bundle = require(artifacts.bundle, "the update bundle", artifacts)
    vm = gateway("update", _unreachable_hes(), extra_disks=[bundle_disk([bundle], tmp_path / "bundles.ext4")])
    with booted(vm):
        vm.wait_started()
        password = web_password(vm)
        vm.wait_ssh()
        assert vm.booted_slot() == "A"
        before = _wait_pending(vm)
        config = vm.read_file(CONFIG)
        clock.lap(f"slot A up, {len(before)} meters pending")
        mount_bundles(vm)
        said = _install(vm, bundle)
        assert re.search(r"reboot", said, re.IGNORECASE) and "B" in said, f"update install said:\n{said}"
        clock.lap("bundle installed into slot B")
        mark = vm.console.mark()
        vm.ssh("sudo systemctl reboot", check=False, timeout=60)
        vm.wait_for(FIRMWARE_BANNER, BOOT_DEADLINE, what="the firmware of the reboot", since=mark)
        vm.wait_started(since=mark)
        vm.wait_ssh()
        clock.lap("rebooted, service started")
        assert vm.booted_slot() == "B"
        assert vm.rauc_status().get("booted") == "B"
        poll(lambda: rauc_slot(vm.rauc_status(), "B").get("boot_status") == "good", 600,
             "slot B marked good (wmbus-stream-confirm after the service got ready)")
        status = vm.guest_json(f"sudo {WMBUS} update status --json")
        assert status.get("booted") == "B", f"update status --json: {status}"
        after = vm.pending_in_guest()
        assert before <= after, f"meters no longer pending after the update: {sorted(before - after)}"
        assert vm.read_file(CONFIG) == config, "the configuration changed across the update"
        assert_web_locked_and_opens(vm, password)
        vm.poweroff()
        clock.lap(f"slot B checked: {len(before)} meters still pending, configuration and web password kept")


def test_broken_update_rolls_back(artifacts: Artifacts, gateway: GatewayFactory, clock: Clock, tmp_path: Path) -> None:
    broken = require(artifacts.broken, "the broken test bundle (...-broken.raucb)", artifacts)
    vm = gateway("rollback", _unreachable_hes(), extra_disks=[bundle_disk([broken], tmp_path / "bundles.ext4")])
    with booted(vm):
        vm.wait_started()
        password = web_password(vm)
        vm.wait_ssh()
        assert vm.booted_slot() == "A"
        before = _wait_pending(vm)
        config = vm.read_file(CONFIG)
        poll(lambda: rauc_slot(vm.rauc_status(), "A").get("boot_status") == "good", 600, "slot A marked good")
        clock.lap(f"slot A up and good, {len(before)} meters pending")
        mount_bundles(vm)
        _install(vm, broken)
        mark = vm.console.mark()
        vm.ssh("sudo systemctl reboot", check=False, timeout=60)
        clock.lap("broken bundle installed, rebooting")

        seen_b: list[str] = []  # wmbus-stream.service's state on each B boot SSH reached

        def back_on_a() -> bool:
            result = vm.ssh("cat /proc/cmdline; systemctl show -p ActiveState --value wmbus-stream", check=False,
                            timeout=60)
            if result.returncode != 0:
                return False
            if "rauc.slot=B" in result.stdout:
                seen_b.append(result.stdout.split()[-1])
                return False
            return "rauc.slot=A" in result.stdout

        # A fresh slot that never gets ready is booted image.boot.tries times, each ending after
        # the confirm unit's bound (image.update.ready.seconds; both from the image's manifest).
        deadline = artifacts.tries * (BOOT_DEADLINE + artifacts.ready_seconds) + BOOT_DEADLINE
        poll(back_on_a, deadline, "the rollback to slot A",
             lambda: f"; GRUB's choices so far: {_grub_choices(vm, mark)}; console:\n{vm.console.tail()}")
        choices = _grub_choices(vm, mark)
        clock.lap(f"back on slot A; GRUB chose {' '.join(choices)}")
        assert seen_b, "SSH never reached slot B: the broken slot was not booted"
        assert "active" not in seen_b, f"wmbus-stream.service was active on the broken slot: {seen_b}"
        assert choices == ["B"] * artifacts.tries + ["A"], f"GRUB chose {choices}: not B {artifacts.tries} times, then A"
        vm.wait_started(since=_last_boot(vm))
        poll(lambda: rauc_slot(vm.rauc_status(), "A").get("boot_status") == "good", 600, "slot A marked good again")
        assert vm.rauc_status().get("booted") == "A"
        after = vm.pending_in_guest()
        assert before <= after, f"meters no longer pending after the rollback: {sorted(before - after)}"
        assert vm.read_file(CONFIG) == config, "the configuration changed across the rollback"
        assert_web_locked_and_opens(vm, password)
        vm.poweroff()
        clock.lap("slot A good, data intact")


def _grub_choices(vm: VM, since: int) -> list[str]:
    """The slot GRUB chose at each boot since console line ``since``."""
    vm.console.poll()
    return [m.group(1) for line in vm.console.lines[since:] if (m := GRUB_SLOT.search(line))]


def _last_boot(vm: VM) -> int:
    """The console line where the latest boot's firmware banner is."""
    vm.console.poll()
    starts = [i for i, line in enumerate(vm.console.lines) if FIRMWARE_BANNER.search(line)]
    return starts[-1] if starts else 0


def test_foreign_bundle_is_refused(artifacts: Artifacts, gateway: GatewayFactory, clock: Clock, tmp_path: Path) -> None:
    foreign = require(artifacts.foreign, "the bundle signed by another key (...-foreign.raucb)", artifacts)
    vm = gateway("foreign", extra_disks=[bundle_disk([foreign], tmp_path / "bundles.ext4")])
    with booted(vm):
        vm.wait_started()
        vm.wait_ssh()
        # Compare against the settled state: GRUB's try counter is reset only once slot A is confirmed.
        poll(lambda: rauc_slot(vm.rauc_status(), "A").get("boot_status") == "good", 600, "slot A marked good")
        mount_bundles(vm)
        before = vm.rauc_status()
        result = vm.ssh(f"sudo {WMBUS} update install {BUNDLES}/{foreign.name}", check=False, timeout=1800)
        said = result.stdout + result.stderr
        clock.lap("install of the foreign-signed bundle answered")
        assert result.returncode != 0, f"a bundle signed by another key was installed:\n{said}"
        assert re.search(r"signature|signer|certificate|verif|keyring", said, re.IGNORECASE), \
            f"the refusal does not say why (signature):\n{said}"
        assert "Traceback" not in said, said
        assert vm.rauc_status() == before, "rauc status changed after a refused install"
        assert vm.booted_slot() == "A"
        vm.poweroff()


# -------------------------------------------------------------------------------------------
# 6. power cuts

def _covered(noted: dict[str, float], pending: dict[str, float], hes: list[tuple[str, str, str]], serial: str) -> list[str]:
    """Meters noted as received (at their last-seen time) that are neither pending on disk nor at the HES since then."""
    heard: dict[str, float] = {}
    for gateway, meter, at in hes:
        if gateway == serial:
            t = float(calendar.timegm(time.strptime(at, "%Y-%m-%d %H:%M:%S")))
            heard[meter] = max(heard.get(meter, 0.0), t)
    lost = []
    for meter, seen in sorted(noted.items()):
        # Second resolution on both sides (the analyzer's CSV and the report date).
        if pending.get(meter, -1.0) >= seen - 1 or heard.get(meter, -1.0) >= seen - 1:
            continue
        lost.append(f"{meter} (last seen {time.strftime('%H:%M:%S', time.gmtime(seen))})")
    return lost


def test_power_cuts(gateway: GatewayFactory, clock: Clock, tmp_path: Path) -> None:
    """What this checks, after each of 6 kill -9 at seeded random instants, on a copy of the data partition:
    e2fsck -p (what the initramfs runs) fixes at most what a preen may, then e2fsck -fn is clean; the state
    database passes PRAGMA integrity_check; every meter the gateway's analyzer reported as received at least
    one documented flush window (store.flush.seconds' default) before the kill is pending in that database
    with a reading at least as new, or the host HES acknowledged one at least as new. At the end, after a
    clean poweroff, the data partition checks clean without any repair."""
    window = documented_flush_seconds()
    hes = Hes(tmp_path)
    hes.start()
    serial = "16180339"
    settings = [("gateway.serial", serial), *hes.settings(), ("receiving.server.push.cron", "*/10 * * * * *")]
    vm = gateway("powercut", settings)
    rng = random.Random(SEED)
    clock.note(f"seed {SEED}, flush window {window:g} s (docs/configuration.md store.flush.seconds)")
    try:
        for cut in range(1, 7):
            vm.start()
            vm.wait_started()
            trouble = vm.console.find(DATA_TROUBLE)
            assert trouble is None, f"boot {cut}: the initramfs said: {trouble.group(0)}"
            vm.wait_ssh()
            if cut == 1:
                poll(lambda: any(g == serial for g, _, _ in hes.readings()), 600, "the first acknowledged push",
                     lambda: f"; HES log:\n{hes.log()[-2000:]}")
            running = rng.uniform(5.0, 60.0)
            after_note = window + 1.0 + rng.uniform(0.0, 5.0)
            time.sleep(running)
            noted = vm.analyzer()
            time.sleep(after_note)
            vm.kill()
            clock.note(f"cut {cut}: killed {running:.1f} s after SSH answered + {after_note:.1f} s after noting"
                       f" {len(noted)} meters")
            found = check_data(vm.disk, tmp_path, after_crash=True)
            assert found.fsck_preen in (0, 1), f"cut {cut}: e2fsck -p exited {found.fsck_preen}: the boot would stop"
            assert found.fsck_full == 0, f"cut {cut}: e2fsck -fn after the preen:\n{found.fsck_output}"
            assert found.integrity == "ok", f"cut {cut}: PRAGMA integrity_check: {found.integrity}"
            lost = _covered(noted, found.pending, hes.readings(), serial)
            assert not lost, f"cut {cut}: received before the flush window, neither pending nor at the HES: {lost}"
            clock.lap(f"cut {cut}: data partition and database checked, {len(found.pending)} pending")
        vm.start()
        vm.wait_started()
        vm.wait_ssh()
        vm.poweroff()
        final = check_data(vm.disk, tmp_path, after_crash=False)
        assert final.fsck_full == 0, f"after a clean poweroff, e2fsck -fn:\n{final.fsck_output}"
        assert final.integrity == "ok", final.integrity
        clock.lap("clean poweroff: data partition clean, database intact")
    finally:
        vm.kill()
        hes.stop()


# -------------------------------------------------------------------------------------------
# 7. watchdog

def test_watchdog(gateway: GatewayFactory, clock: Clock) -> None:
    vm = gateway("watchdog")
    with booted(vm):
        vm.wait_started()
        vm.wait_ssh()
        assert vm.ssh("test -c /dev/watchdog", check=False).returncode == 0, "no /dev/watchdog in the guest"
        identity = vm.ssh("cat /sys/class/watchdog/watchdog0/identity", check=False).stdout.strip()
        value = vm.ssh("systemctl show -p RuntimeWatchdogUSec --value").stdout.strip()
        clock.note(f"watchdog0: {identity or '?'}; RuntimeWatchdogUSec={value}")
        assert value not in ("", "0", "infinity"), f"systemd's runtime watchdog is off: RuntimeWatchdogUSec={value!r}"
        state = vm.ssh("cat /sys/class/watchdog/watchdog0/state", check=False).stdout.strip()
        assert state in ("", "active"), f"watchdog0 is {state!r}, not active (systemd should hold it open)"
        vm.poweroff()
