"""``wmbus-stream provision`` on a temporary device tree: serial order and mapping, the drop-in, every file it writes.

The tree is real files: a boot partition folder, a system root with etc/passwd, etc/shadow,
etc/skel, dev/console (a plain file standing for the console) and fake sysfs/procfs files
(inputs only), a data partition, the configuration and state folders. The login password is
hashed by the real ``openssl passwd -6``. What only a real root does (the bind mount over
/etc/shadow, the host name) runs as root in mount and host-name namespaces of its own.
"""

from __future__ import annotations

import base64
import hashlib
import os
import shutil
import socket
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from wmbus_stream.appliance import dropin, provision, serial
from wmbus_stream.config import model
from wmbus_stream.errors import ConfigError
from wmbus_stream.web.auth import PASSWORD_FILE, Credential, verify_password

WMBUS = Path(sys.executable).with_name("wmbus-stream")


def ed25519_line(public: bytes, comment: str) -> str:
    """An OpenSSH ed25519 public key line for a 32-byte public key (the wire format ssh-keygen writes)."""
    blob = b"".join(len(part).to_bytes(4, "big") + part for part in (b"ssh-ed25519", public))
    return f"ssh-ed25519 {base64.b64encode(blob).decode()} {comment}"


KEY = ed25519_line(bytes(range(32)), "installer@laptop")
KEY2 = ed25519_line(bytes(range(32, 64)), "ops")
SSH_PASSWORD = "correct-horse-7"
WEB_PASSWORD = "battery-staple-99"
HES_PASSWORD = "hes-secret-123"

BAKED = "# baked into the image\nreceiving.server.url=https://hes.fleet.example/in\nreceiver.protocol=simulator\n" \
        "receiver.port=-\n"

needs_openssl = pytest.mark.skipif(shutil.which("openssl") is None, reason="openssl is not installed")


def write(path: Path, text: str, mode: int = 0o644) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    path.chmod(mode)
    return path


@pytest.fixture
def roots(tmp_path: Path) -> provision.Roots:
    """A device on first boot: DMI serial, one wired and one wireless interface, the image's baked stream.cfg."""
    system = tmp_path / "sys"
    write(system / "etc/passwd", "root:x:0:0:root:/root:/bin/sh\nadmin:x:1000:1000::/home/admin:/bin/bash\n"
                                 "wmbus-stream:x:999:999::/var/lib/wmbus-stream:/usr/sbin/nologin\n")
    write(system / "etc/shadow", "root:*:19000:0:99999:7:::\nadmin:!:19000:0:99999:7:::\n", 0o640)
    write(system / "etc/skel/.profile", "# skel\n")
    write(system / "dev/console", "")
    write(system / "sys/class/dmi/id/product_serial", "QEMU-0042\n", 0o400)
    for name, index, mac, wireless in (("lo", 1, "00:00:00:00:00:00", False), ("wlan0", 2, "b8:27:eb:00:00:01", True),
                                       ("eth0", 3, "52:54:00:12:34:56", False)):
        net = system / "sys/class/net" / name
        write(net / "address", mac + "\n")
        write(net / "ifindex", f"{index}\n")
        if name != "lo":
            (net / "device").mkdir()
        if wireless:
            (net / "wireless").mkdir()
    defaults = write(tmp_path / "share/stream.cfg", BAKED)
    (tmp_path / "boot").mkdir()
    return provision.Roots(boot=tmp_path / "boot", sys=system, data=tmp_path / "data",
                           config=tmp_path / "etc-wmbus-stream/stream.cfg", state=tmp_path / "state",
                           defaults=defaults)


def dropin_text(*extra: str) -> str:
    return "\n".join([
        "# written by the installer",
        "gateway.serial=00000161",
        "receiving.server.url=https://hes.example.net/in",
        "receiving.server.username=gw161",
        f"receiving.server.password={HES_PASSWORD}",
        f"provision.ssh.key={KEY}",
        f"provision.ssh.key={KEY2}",
        f"provision.ssh.password={SSH_PASSWORD}",
        f"provision.web.password={WEB_PASSWORD}",
        "provision.hostname=meter-gw-161",
        "provision.network.address=192.168.7.20/24",
        "provision.network.gateway=192.168.7.1",
        "provision.network.dns=192.168.7.1",
        "provision.network.dns=9.9.9.9, 2620:fe::fe",
        *extra]) + "\n"


def snapshot(*folders: Path) -> dict[str, tuple[bytes, int, int]]:
    """Every file under ``folders``: content, mode and modification time."""
    found = {}
    for folder in folders:
        for path in sorted(folder.rglob("*")):
            if path.is_file():
                info = path.stat()
                found[str(path)] = (path.read_bytes(), info.st_mode, info.st_mtime_ns)
    return found


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


# -- the serial ---------------------------------------------------------------------------


@pytest.mark.parametrize(("raw", "digits"), [
    ("161", "00000161"), ("1234567890", "34567890"), ("00000000123", "00000123"),
    ("10000000abcdef12", f"{0x10000000abcdef12 % 10**8:08d}"),  # a Raspberry Pi serial: hex
    ("52:54:00:12:34:56", f"{0x525400123456 % 10**8:08d}"),  # a MAC is hex even when it has only digits
    ("QEMU-0042", f"{int.from_bytes(hashlib.sha256(b'QEMU-0042').digest(), 'big') % 10**8:08d}"),
])
def test_a_hardware_serial_becomes_8_digits(raw: str, digits: str) -> None:
    assert serial.eight_digits(raw) == digits


def test_the_serial_comes_from_the_first_source_in_the_documented_order(roots: provision.Roots) -> None:
    system = roots.sys
    write(system / "proc/device-tree/serial-number", "10000000abcdef12\0")
    write(system / "etc/machine-id", "4f1c0c3b8e2b4a8d9c7e6f5a4b3c2d1e\n")
    assert serial.choose("00000161", "00000777", system) == ("00000161", "drop-in")
    assert serial.choose(None, "00000777", system) == ("00000777", "configuration")
    assert serial.choose(None, serial.UNSET, system) == (serial.eight_digits("10000000abcdef12"), "device-tree")
    (system / "proc/device-tree/serial-number").unlink()
    assert serial.choose(None, None, system) == (serial.eight_digits("QEMU-0042"), "dmi")
    (system / "sys/class/dmi/id/product_serial").unlink()
    assert serial.choose(None, None, system) == (serial.eight_digits("52:54:00:12:34:56"), "mac")
    shutil.rmtree(system / "sys/class/net")
    assert serial.choose(None, None, system) == (serial.eight_digits("4f1c0c3b8e2b4a8d9c7e6f5a4b3c2d1e"), "machine-id")
    (system / "etc/machine-id").write_text("")  # empty until systemd fills it
    assert serial.choose(None, None, system) is None


@pytest.mark.parametrize("placeholder", ["", "0", "Not Specified", "To be filled by O.E.M.", "Default string",
                                         "  System Serial Number ", "00000000", "None"])
def test_dmi_placeholders_give_no_serial(roots: provision.Roots, placeholder: str) -> None:
    write(roots.sys / "sys/class/dmi/id/product_serial", placeholder + "\n")
    assert serial.dmi_serial(roots.sys) is None
    assert serial.choose(None, None, roots.sys) == (serial.eight_digits("52:54:00:12:34:56"), "mac")


def test_the_mac_is_the_wired_interface_with_the_lowest_ifindex(roots: provision.Roots) -> None:
    net = roots.sys / "sys/class/net"
    assert serial.first_wired_mac(roots.sys) == "52:54:00:12:34:56"  # not lo (no device), not wlan0 (wireless)
    write(net / "eth1/address", "52:54:00:AB:CD:EF\n")
    write(net / "eth1/ifindex", "2\n")
    (net / "eth1/device").mkdir()
    assert serial.first_wired_mac(roots.sys) == "52:54:00:ab:cd:ef"


# -- the drop-in ------------------------------------------------------------------------------


def test_a_complete_drop_in_parses_with_repeated_keys() -> None:
    found = dropin.parse(dropin_text().encode())
    assert found.stream == {"gateway.serial": "00000161", "receiving.server.url": "https://hes.example.net/in",
                            "receiving.server.username": "gw161", "receiving.server.password": HES_PASSWORD}
    assert found.ssh_keys == (KEY, KEY2)
    assert (found.ssh_password, found.web_password) == (SSH_PASSWORD, WEB_PASSWORD)
    assert found.settings == {"provision.hostname": "meter-gw-161", "provision.network.address": "192.168.7.20/24",
                              "provision.network.gateway": "192.168.7.1",
                              "provision.network.dns": "192.168.7.1,9.9.9.9,2620:fe::fe"}
    assert SSH_PASSWORD not in repr(found) and WEB_PASSWORD not in repr(found)


def test_every_problem_of_a_drop_in_is_named_with_what_is_allowed_and_no_secret_shows() -> None:
    text = "\n".join([
        "provision.ssh.keys=ssh-ed25519 AAAA",  # a typo of a key
        "provision.ssh.key=ssh-ed25519 bm90IGEga2V5",  # base64, but not an ed25519 key blob
        "provision.ssh.key=ecdsa AAAA",
        "provision.web.password=short-1",
        "provision.ssh.password=abc",
        "provision.hostname=wmbus_161",
        "provision.network.address=192.168.7.20",
        "provision.network.dns=8.8.8.8,dns.example",
        "provision.hostname=twice",
    ]) + "\n"
    with pytest.raises(ConfigError) as caught:
        dropin.parse(text.encode())
    problems = {p.key: p for p in caught.value.problems}
    assert set(problems) == {"provision.ssh.keys", "provision.ssh.key", "provision.web.password",
                             "provision.ssh.password", "provision.hostname", "provision.network.address",
                             "provision.network.dns"}
    assert "did you mean 'provision.ssh.key'?" in problems["provision.ssh.keys"].allowed
    assert [p.allowed for p in caught.value.problems if p.key == "provision.ssh.key"] == [
        dropin.BY_NAME["provision.ssh.key"].allowed + " (the key data is not a ssh-ed25519 key)",
        dropin.BY_NAME["provision.ssh.key"].allowed + " (it does not start with a key type)"]
    assert problems["provision.web.password"].value == "********"
    assert "at least 10 characters" in problems["provision.web.password"].allowed
    assert problems["provision.ssh.password"].value == "********"
    assert problems["provision.network.address"].allowed.endswith("(the /prefix length is missing)")
    assert "'dns.example' is not an IP address" in problems["provision.network.dns"].allowed
    message = str(caught.value)
    assert "short-1" not in message and "abc'" not in message
    assert sorted(p.allowed for p in caught.value.problems if p.key == "provision.hostname") == sorted([
        dropin.BY_NAME["provision.hostname"].allowed, "one definition per key (first set on line 6)"])


def test_network_settings_must_go_together() -> None:
    assert dropin.network_problems({"provision.network.gateway": "192.168.7.1"})[0].allowed.startswith(
        "a gateway together with provision.network.address")
    [problem] = dropin.network_problems({"provision.network.address": "2001:db8::20/64",
                                         "provision.network.gateway": "192.168.7.1"})
    assert problem.key == "provision.network.gateway" and "same family" in problem.allowed
    assert dropin.network_problems({"provision.network.address": "192.168.7.20/24",
                                    "provision.network.gateway": "192.168.7.1"}) == []


# -- provisioning runs --------------------------------------------------------------------------


def test_first_boot_without_a_drop_in_makes_a_serial_a_configuration_and_its_own_web_password(
        roots: provision.Roots) -> None:
    outcome = provision.provision(roots, 1_700_000_000.0)
    number = serial.eight_digits("QEMU-0042")
    assert (outcome.serial, outcome.source, outcome.hostname) == (number, "dmi", f"wmbus-{number}")
    config = model.load(roots.config)
    assert config.gateway_serial == number and config.receiver_protocol == "simulator"
    assert roots.config.read_text().startswith("# baked into the image\n")  # the baked file's comments are kept
    assert mode(roots.config) == 0o600
    note = roots.boot / provision.PASSWORD_NOTE
    assert mode(note) == 0o600 and outcome.web_password_made
    password = next(line.split(": ", 1)[1] for line in note.read_text().splitlines() if line.startswith("password: "))
    credential = Credential.parse((roots.state / PASSWORD_FILE).read_text())
    assert verify_password(credential, "admin", password) and mode(roots.state / PASSWORD_FILE) == 0o600
    shown = (roots.sys / "dev/console").read_text()
    assert f"wmbus-stream: web UI password for admin: {password}\n" in shown
    assert f"wmbus-stream: gateway serial {number} (from dmi), host name wmbus-{number}\n" in shown
    assert not (roots.sys / provision.SSHD_FILE).exists() and not (roots.sys / provision.NETWORK_FILE).exists()
    assert not (roots.boot / provision.DONE).exists() and not (roots.boot / provision.ERROR).exists()
    assert (roots.sys / "home/admin/.profile").read_text() == "# skel\n" and mode(roots.sys / "home/admin") == 0o700


def test_two_devices_from_one_image_get_different_serials_and_passwords(roots: provision.Roots, tmp_path: Path) -> None:
    other = tmp_path / "second"
    shutil.copytree(tmp_path, other, symlinks=True)
    second = provision.Roots(**{name: (other / Path(getattr(roots, name)).relative_to(tmp_path))
                                for name in ("boot", "sys", "data", "config", "state", "defaults")})
    write(second.sys / "sys/class/dmi/id/product_serial", "QEMU-0043\n")
    first, then = provision.provision(roots, 0.0), provision.provision(second, 0.0)
    assert first.serial != then.serial
    assert (roots.boot / provision.PASSWORD_NOTE).read_text() != (second.boot / provision.PASSWORD_NOTE).read_text()


@needs_openssl
def test_a_drop_in_is_applied_whole_then_deleted(roots: provision.Roots) -> None:
    write(roots.boot / provision.DROPIN, dropin_text())
    outcome = provision.provision(roots, 1_700_000_000.0)
    assert (outcome.serial, outcome.source, outcome.hostname) == ("00000161", "drop-in", "meter-gw-161")
    assert outcome.refused == [] and not outcome.web_password_made
    config = model.load(roots.config)
    assert config.gateway_serial == "00000161" and config.push_credentials == ("gw161", HES_PASSWORD)
    assert config.push_endpoint == "https://hes.example.net/in" and config.receiver_protocol == "simulator"
    assert not (roots.boot / provision.DROPIN).exists()
    done = (roots.boot / provision.DONE).read_text()
    assert "serial=00000161\nsource=drop-in\ntime=2023-11-14T22:13:20Z\nhostname=meter-gw-161\n" in done
    assert "keys=gateway.serial,receiving.server.url," in done
    for secret in (SSH_PASSWORD, WEB_PASSWORD, HES_PASSWORD):
        assert secret not in done and secret not in (roots.sys / "dev/console").read_text()
    keys = roots.sys / "home/admin/.ssh/authorized_keys"
    assert keys.read_text() == f"{KEY}\n{KEY2}\n" and mode(keys) == 0o600 and mode(keys.parent) == 0o700
    assert verify_password(Credential.parse((roots.state / PASSWORD_FILE).read_text()), "admin", WEB_PASSWORD)
    assert not (roots.boot / provision.PASSWORD_NOTE).exists()
    assert (roots.sys / provision.NETWORK_FILE).read_text().splitlines()[1:] == [
        "[Match]", "Name=en* eth*", "", "[Network]", "Address=192.168.7.20/24", "Gateway=192.168.7.1",
        "DNS=192.168.7.1", "DNS=9.9.9.9", "DNS=2620:fe::fe"]
    assert mode((roots.sys / provision.NETWORK_FILE).parent) == 0o755  # networkd reads it as systemd-network
    assert mode(roots.sys / provision.NETWORK_FILE) == 0o644
    assert "\nPasswordAuthentication yes\n" in (roots.sys / provision.SSHD_FILE).read_text()
    shadow = (roots.sys / provision.SHADOW_COPY).read_text().splitlines()
    assert shadow[0] == "root:*:19000:0:99999:7:::" and mode(roots.sys / provision.SHADOW_COPY) == 0o640
    user, hashed, *rest = shadow[1].split(":")
    assert (user, rest) == ("admin", ["19000", "0", "99999", "7", "", "", ""])
    salt = hashed.split("$")[2]
    again = subprocess.run(["openssl", "passwd", "-6", "-salt", salt, SSH_PASSWORD], capture_output=True, text=True,
                           check=True).stdout.strip()
    assert hashed == again  # the admin logs in with the drop-in's password
    assert (roots.sys / "etc/shadow").read_text().splitlines()[1] == "admin:!:19000:0:99999:7:::"  # the image's own
    for secret_file in (roots.config, roots.data / provision.SETTINGS_FILE, roots.boot / provision.DONE):
        assert mode(secret_file) == 0o600, secret_file


@needs_openssl
def test_a_second_boot_writes_nothing_and_keeps_the_serial(roots: provision.Roots) -> None:
    write(roots.boot / provision.DROPIN, dropin_text())
    provision.provision(roots, 0.0)
    before = snapshot(roots.boot, roots.sys, roots.data, roots.config.parent, roots.state)
    write(roots.sys / "sys/class/dmi/id/product_serial", "ANOTHER-BOARD\n")  # the serial no longer comes from here
    before.pop(str(roots.sys / "sys/class/dmi/id/product_serial"))
    (roots.sys / "dev/console").write_text("")
    outcome = provision.provision(roots, 100.0)
    assert (outcome.serial, outcome.source, outcome.hostname) == ("00000161", "configuration", "meter-gw-161")
    assert outcome.written == []
    after = snapshot(roots.boot, roots.sys, roots.data, roots.config.parent, roots.state)
    after.pop(str(roots.sys / "sys/class/dmi/id/product_serial"))
    before.pop(str(roots.sys / "dev/console"))
    after.pop(str(roots.sys / "dev/console"))
    assert after == before


@needs_openssl
def test_every_boot_writes_the_run_files_again_from_the_data_partition(roots: provision.Roots) -> None:
    write(roots.boot / provision.DROPIN, dropin_text())
    provision.provision(roots, 0.0)
    first = {name: (roots.sys / name).read_text() for name in (provision.NETWORK_FILE, provision.SSHD_FILE,
                                                               provision.SHADOW_COPY)}
    shutil.rmtree(roots.sys / "run")  # /run is a tmpfs: a reboot empties it
    provision.provision(roots, 0.0)
    assert {name: (roots.sys / name).read_text() for name in first} == first


@needs_openssl
def test_an_empty_value_turns_password_login_and_the_static_address_off_again(roots: provision.Roots) -> None:
    write(roots.boot / provision.DROPIN, dropin_text())
    provision.provision(roots, 0.0)
    write(roots.boot / provision.DROPIN, "provision.ssh.password=\nprovision.network.address=\n"
                                        "provision.network.gateway=\nprovision.network.dns=\n")
    outcome = provision.provision(roots, 0.0)
    assert outcome.refused == [] and outcome.hostname == "meter-gw-161"  # what it did not name stays
    for gone in (provision.SSHD_FILE, provision.SHADOW_COPY, provision.NETWORK_FILE):
        assert not (roots.sys / gone).exists(), gone
    assert (roots.sys / "home/admin/.ssh/authorized_keys").read_text() == f"{KEY}\n{KEY2}\n"


@pytest.mark.parametrize(("old", "new", "key", "allowed"), [
    ("", "provision.ssh.pasword=x", "provision.ssh.pasword", "did you mean 'provision.ssh.password'?"),
    ("", "radio.mode=T2", "radio.mode", "S1 T1"),
    ("gateway.serial=00000161", "gateway.serial=161", "gateway.serial", "exactly 8 digits"),
    ("gateway=192.168.7.1", "gateway=2001:db8::1", "provision.network.gateway", "same family"),
])
def test_an_invalid_drop_in_applies_nothing_and_says_why(roots: provision.Roots, old: str, new: str, key: str,
                                                         allowed: str) -> None:
    text = dropin_text().replace(old, new) if old else dropin_text(new)
    write(roots.boot / provision.DROPIN, text)
    outcome = provision.provision(roots, 1_700_000_000.0)
    assert [p.key for p in outcome.refused] == [key] and allowed in outcome.refused[0].allowed
    assert outcome.applied == () and outcome.source == "dmi"  # it came up as without a drop-in
    config = model.load(roots.config)
    assert config.push_url == "https://hes.fleet.example/in" and config.gateway_serial == outcome.serial
    assert not (roots.sys / "home/admin/.ssh/authorized_keys").exists()
    assert not (roots.sys / provision.SSHD_FILE).exists() and not (roots.sys / provision.NETWORK_FILE).exists()
    assert (roots.boot / provision.DROPIN).read_text() == text  # kept for the installer
    error = roots.boot / provision.ERROR
    assert mode(error) == 0o600
    assert error.read_text().splitlines()[0] == ("wmbus-stream provisioning refused wmbus-stream.cfg at"
                                                 " 2023-11-14T22:13:20Z: nothing in it was applied.")
    assert f"{key}: invalid value" in error.read_text()
    console = (roots.sys / "dev/console").read_text()
    assert f"wmbus-stream: {key}: invalid value" in console
    for secret in (SSH_PASSWORD, WEB_PASSWORD, HES_PASSWORD):
        assert secret not in error.read_text() and secret not in console


@needs_openssl
def test_the_fixed_drop_in_is_applied_at_the_next_boot(roots: provision.Roots) -> None:
    write(roots.boot / provision.DROPIN, dropin_text("radio.mode=T2"))
    first = provision.provision(roots, 0.0)
    assert first.refused and first.web_password_made
    write(roots.boot / provision.DROPIN, dropin_text())
    outcome = provision.provision(roots, 0.0)
    assert (outcome.serial, outcome.source, outcome.refused) == ("00000161", "drop-in", [])
    assert not (roots.boot / provision.ERROR).exists() and not (roots.boot / provision.PASSWORD_NOTE).exists()
    assert verify_password(Credential.parse((roots.state / PASSWORD_FILE).read_text()), "admin", WEB_PASSWORD)


def test_a_broken_provisioned_configuration_is_left_alone_and_refuses_stream_keys(roots: provision.Roots) -> None:
    write(roots.config, "gateway.serial=00000555\nradio.mode=T9\n", 0o600)
    write(roots.boot / provision.DROPIN, "receiving.server.url=https://hes.example.net/in\n")
    outcome = provision.provision(roots, 0.0)
    assert [p.key for p in outcome.refused] == ["radio.mode"] and str(roots.config) in outcome.refused[0].allowed
    assert roots.config.read_text() == "gateway.serial=00000555\nradio.mode=T9\n"
    assert outcome.serial == "00000555" and [p.key for p in outcome.broken] == ["radio.mode"]


def test_the_command_exits_0_then_3_for_a_refused_drop_in(roots: provision.Roots) -> None:
    args = [str(WMBUS), "provision", "--boot", str(roots.boot), "--sys", str(roots.sys), "--data", str(roots.data),
            "--config", str(roots.config), "--state", str(roots.state), "--defaults", str(roots.defaults)]
    done = subprocess.run(args, capture_output=True, text=True, timeout=120)
    number = serial.eight_digits("QEMU-0042")
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith(f"gateway serial {number} (from dmi), host name wmbus-{number}\n")
    assert "made a web UI password for admin" in done.stdout and "password: " not in done.stdout
    write(roots.boot / provision.DROPIN, "provision.hostname=-bad-\n")
    done = subprocess.run(args, capture_output=True, text=True, timeout=120)
    assert done.returncode == 3 and "Traceback" not in done.stderr
    assert "provision.hostname: invalid value '-bad-'; allowed: letters, digits and '-'" in done.stderr
    assert os.path.exists(roots.boot / provision.ERROR)


@needs_openssl
@pytest.mark.skipif(os.geteuid() != 0, reason="giving files to other users needs root")
def test_as_root_the_files_belong_to_who_reads_them(roots: provision.Roots) -> None:
    """The service user (999 in this tree's passwd) reads its configuration and web password; admin its keys."""
    write(roots.boot / provision.DROPIN, dropin_text())
    provision.provision(roots, 0.0)
    for path in (roots.config, roots.config.parent, roots.state / PASSWORD_FILE, roots.state):
        assert (path.stat().st_uid, path.stat().st_gid) == (999, 999), path
    for path in (roots.sys / "home/admin", roots.sys / "home/admin/.ssh", roots.sys / "home/admin/.ssh/authorized_keys"):
        assert (path.stat().st_uid, path.stat().st_gid) == (1000, 1000), path
    copy = roots.sys / provision.SHADOW_COPY
    assert (copy.stat().st_uid, copy.stat().st_gid) == ((roots.sys / "etc/shadow").stat().st_uid,
                                                        (roots.sys / "etc/shadow").stat().st_gid)


@needs_openssl
def test_the_example_drop_in_of_docs_provisioning_md_is_applied_as_written(roots: provision.Roots) -> None:
    text = (Path(__file__).resolve().parents[2] / "docs/provisioning.md").read_text(encoding="utf-8")
    example = text.split("A complete example (`tests/unit/test_provision.py` applies it as written):\n\n```\n", 1)[1]
    write(roots.boot / provision.DROPIN, example.split("```", 1)[0])
    outcome = provision.provision(roots, 0.0)
    assert outcome.refused == [] and (outcome.serial, outcome.hostname) == ("00000161", "gw-161-north")
    assert len((roots.sys / "home/admin/.ssh/authorized_keys").read_text().splitlines()) == 2
    assert model.load(roots.config).push_endpoint == "https://hes.example.net/wmbus/in"


def test_the_docs_examples_of_the_8_digit_rule_hold() -> None:
    text = (Path(__file__).resolve().parents[2] / "docs/provisioning.md").read_text(encoding="utf-8")
    for raw, digits in (("161", "00000161"), ("1234567890", "34567890"), ("10000000abcdef12", "89246994"),
                        ("52:54:00:12:34:56", "31923542")):
        assert f"`{raw}` → `{digits}`" in text and serial.eight_digits(raw) == digits


EXAMPLE_DROPIN = Path(__file__).resolve().parents[2] / "image/examples/drop-in.cfg"


@pytest.mark.skipif(not EXAMPLE_DROPIN.exists(), reason="image/ is not in this copy of the tests (image/test-wheels"
                                                        " copies tests, docs and src)")
def test_the_images_example_drop_in_is_valid(roots: provision.Roots) -> None:
    """image/examples/drop-in.cfg, the file an installer starts from, passes the checks it documents."""
    example = EXAMPLE_DROPIN
    found = dropin.parse(example.read_bytes())
    assert found.stream["gateway.serial"] == "00000161" and len(found.ssh_keys) == 1
    assert provision.prepare(roots, found).serial == "00000161"


def _namespaces() -> bool:
    """Whether this host lets us make private mount and host-name namespaces and mount in them (root, unshare)."""
    if os.geteuid() != 0 or shutil.which("unshare") is None:
        return False
    probe = subprocess.run(["unshare", "-m", "-u", "sh", "-c", "mount -t tmpfs tmpfs /run && hostname probe"],
                           capture_output=True, timeout=60)
    return probe.returncode == 0


@needs_openssl
@pytest.mark.skipif(not _namespaces(), reason="needs root and unshare: private mount and host-name namespaces"
                                              " stand for the device")
def test_on_a_real_root_the_shadow_copy_is_bound_and_the_host_name_set(tmp_path: Path) -> None:
    """``--sys /`` in namespaces of its own: /run a fresh tmpfs, /dev/console a file; nothing outside changes."""
    for folder in ("boot", "data", "etc", "state"):
        (tmp_path / folder).mkdir()
    console = write(tmp_path / "console", "")
    write(tmp_path / "defaults.cfg", BAKED)
    write(tmp_path / "boot" / provision.DROPIN, f"provision.ssh.password={SSH_PASSWORD}\n"
                                                "provision.hostname=ns-test-host\n")
    run = (f"{WMBUS} provision --sys / --admin root --boot {tmp_path / 'boot'} --data {tmp_path / 'data'}"
           f" --config {tmp_path / 'etc/stream.cfg'} --state {tmp_path / 'state'} --defaults {tmp_path / 'defaults.cfg'}")
    script = (f"mount -t tmpfs tmpfs /run && mount --bind {console} /dev/console && {run} >/dev/null && {run} >/dev/null"
              " && grep -c ' /etc/shadow ' /proc/self/mountinfo && grep '^root:' /etc/shadow && hostname")
    shadow_before, host_before = Path("/etc/shadow").read_text(), socket.gethostname()
    done = subprocess.run(["unshare", "-m", "-u", "sh", "-c", script], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    mounts, root_line, hostname = done.stdout.splitlines()
    assert mounts == "1"  # the second run replaced the first run's bind, it did not stack another
    salt = root_line.split(":")[1].split("$")[2]
    expected = subprocess.run(["openssl", "passwd", "-6", "-salt", salt, SSH_PASSWORD], capture_output=True, text=True,
                              check=True).stdout.strip()
    assert root_line.split(":")[1] == expected and hostname == "ns-test-host"
    assert (Path("/etc/shadow").read_text(), socket.gethostname()) == (shadow_before, host_before)
    assert "host name ns-test-host" in console.read_text()


# -- what the outside test found (each a class of fault) ----------------------------------------


def provision_command(roots: provision.Roots, *extra: str) -> subprocess.CompletedProcess[str]:
    args = [str(WMBUS), "provision", "--boot", str(roots.boot), "--sys", str(roots.sys), "--data", str(roots.data),
            "--config", str(roots.config), "--state", str(roots.state), "--defaults", str(roots.defaults), *extra]
    return subprocess.run(args, capture_output=True, text=True, timeout=120)


def refused_whole(roots: provision.Roots, done: subprocess.CompletedProcess[str], text: str, expected: str) -> None:
    """The drop-in was refused: exit 3, no traceback, it stays, the error file and the console name ``expected``."""
    assert done.returncode == 3 and "Traceback" not in done.stderr, done.stderr
    assert expected in done.stderr
    assert (roots.boot / provision.DROPIN).read_bytes() == text.encode("utf-8", "surrogateescape")
    assert expected in (roots.boot / provision.ERROR).read_text()
    assert expected in (roots.sys / "dev/console").read_text()
    assert not (roots.boot / provision.DONE).exists()


@pytest.mark.parametrize(("drop", "defaults", "expected"), [
    ("receiving.server.url=\n", BAKED, "receiving.server.url: invalid value ''; allowed: a value"),
    ("provision.hostname=gw-1\n", None, "--defaults: invalid value"),
    ("provision.hostname=gw-1\n", "receiver.protocol=hex\n", "receiving.server.url: invalid value ''"),
])
def test_a_drop_in_whose_merged_configuration_config_check_refuses_writes_nothing_of_it(
        roots: provision.Roots, drop: str, defaults: str | None, expected: str) -> None:
    if defaults is None:
        roots.defaults.unlink()
    else:
        write(roots.defaults, defaults)
    write(roots.boot / provision.DROPIN, drop)
    done = provision_command(roots)
    refused_whole(roots, done, drop, expected)
    assert not roots.config.exists() or model.check_file(roots.config) == []
    assert "provision.hostname" not in (roots.data / provision.SETTINGS_FILE).read_text()


@pytest.mark.parametrize("content", ["", "# cut\ngateway.serial=00000555\n", "gateway.serial=00000555\nreceiver.protocol=hex\n",
                                     "gateway.serial=00000555\nreceiver.proto", "gateway.serial=00000555\nradio.mode=T",
                                     "gateway.ser"])
def test_an_empty_or_cut_short_provisioned_configuration_is_rebuilt_from_the_defaults(
        roots: provision.Roots, content: str) -> None:
    first = provision.provision(roots, 0.0)
    write(roots.config, content, 0o600)
    outcome = provision.provision(roots, 0.0)
    expected = "00000555" if "00000555" in content else first.serial
    assert outcome.serial == expected and outcome.broken == []
    assert model.check_file(roots.config) == [] and model.load(roots.config).gateway_serial == expected


def test_a_configuration_that_is_a_folder_is_an_error_not_a_traceback(roots: provision.Roots) -> None:
    roots.config.mkdir(parents=True)
    write(roots.boot / provision.DROPIN, "receiving.server.url=https://hes.example.net/in\n")
    done = provision_command(roots)
    refused_whole(roots, done, "receiving.server.url=https://hes.example.net/in\n", "(this is a folder)")
    assert roots.config.is_dir() and list(roots.config.iterdir()) == []


def test_no_secret_shows_in_the_error_file_or_on_the_console(roots: provision.Roots) -> None:
    text = ("provision.web.pasword=Typo-Secret-771\nreceiving.server.url=https://gw:UrlPw-1@hes.example/in\n"
            "receiving.server.url=https://gw:UrlPw-2@hes.example/in\nsome.token.thing=Other-Secret-3\n"
            "a line without equals Line-Secret-4\n")
    write(roots.boot / provision.DROPIN, text)
    done = provision_command(roots)
    assert done.returncode == 3
    shown = done.stderr + (roots.boot / provision.ERROR).read_text() + (roots.sys / "dev/console").read_text()
    for secret in ("Typo-Secret-771", "UrlPw-1", "UrlPw-2", "Other-Secret-3", "Line-Secret-4", "gw:"):
        assert secret not in shown, secret
    assert "provision.web.pasword: invalid value '********'" in shown and "https://********@hes.example/in" in shown


def test_a_drop_in_that_is_not_utf8_is_refused_in_one_line_without_its_text(roots: provision.Roots) -> None:
    raw = "provision.web.password=Hemlig-l\xf6sen-9\n".encode("latin-1")
    (roots.boot / provision.DROPIN).write_bytes(raw)
    done = provision_command(roots)
    error = (roots.boot / provision.ERROR).read_text()
    assert done.returncode == 3 and "Hemlig" not in error + done.stderr
    assert error.splitlines()[2:] == ["<file>: invalid value 'not UTF-8 text'; allowed: UTF-8 text: save it as UTF-8"]


def test_a_drop_in_that_is_a_symbolic_link_is_not_read(roots: provision.Roots, tmp_path: Path) -> None:
    target = write(tmp_path / "elsewhere.cfg", "provision.hostname=from-the-link\n")
    (roots.boot / provision.DROPIN).symlink_to(target)
    outcome = provision.provision(roots, 0.0)
    assert [str(p) for p in outcome.refused] == [
        "wmbus-stream.cfg: invalid value 'a symbolic link'; allowed: a regular file (a link is not followed)"]
    assert outcome.hostname.startswith("wmbus-") and (roots.boot / provision.DROPIN).is_symlink()
    provision.provision(roots, 0.0)
    assert (roots.boot / provision.ERROR).exists()  # the refusal stays while the link does
    (roots.boot / provision.DROPIN).unlink()
    target.unlink()
    (roots.boot / provision.DROPIN).symlink_to(target)  # a dangling one too
    assert provision.provision(roots, 0.0).refused and (roots.boot / provision.ERROR).exists()


@needs_openssl
@pytest.mark.parametrize(("admin", "shadow", "expected"), [
    ("nosuchuser", "keep", "--admin: invalid value 'nosuchuser'"),
    ("admin", "latin1", "it is not UTF-8 text"),
    ("admin", "missing", "No such file or directory"),
])
def test_an_account_that_cannot_take_the_password_refuses_the_drop_in_before_any_write(
        roots: provision.Roots, admin: str, shadow: str, expected: str) -> None:
    if shadow == "latin1":
        (roots.sys / "etc/shadow").write_bytes("admin:!:19000:0:99999:7:::\nj\xf6rg:!:1:::::\n".encode("latin-1"))
    elif shadow == "missing":
        (roots.sys / "etc/shadow").unlink()
    text = dropin_text()
    write(roots.boot / provision.DROPIN, text)
    done = provision_command(roots, "--admin", admin)
    refused_whole(roots, done, text, expected)
    assert not (roots.sys / "home" / admin / ".ssh").exists() and not (roots.sys / provision.SSHD_FILE).exists()
    assert provision.PASSWORD_LOGIN not in (roots.data / provision.SETTINGS_FILE).read_text()


@needs_openssl
def test_a_stored_password_that_cannot_be_applied_does_not_stop_later_boots(roots: provision.Roots) -> None:
    write(roots.boot / provision.DROPIN, f"provision.ssh.password={SSH_PASSWORD}\n")
    provision.provision(roots, 0.0)
    assert (roots.sys / provision.SSHD_FILE).exists()
    (roots.sys / "etc/shadow").unlink()
    outcome = provision.provision(roots, 0.0)
    assert any("login password of admin is not applied" in note for note in outcome.notes)
    assert not (roots.sys / provision.SSHD_FILE).exists() and not (roots.sys / provision.SHADOW_COPY).exists()


def test_the_serial_stays_when_the_configuration_lost_its_line(roots: provision.Roots) -> None:
    write(roots.boot / provision.DROPIN, "gateway.serial=00000161\n")
    assert provision.provision(roots, 0.0).serial == "00000161"
    text = roots.config.read_text()
    write(roots.config, "".join(line for line in text.splitlines(keepends=True) if "gateway.serial" not in line), 0o600)
    outcome = provision.provision(roots, 0.0)
    assert (outcome.serial, outcome.source) == ("00000161", "provisioned")
    assert model.load(roots.config).gateway_serial == "00000161"


def test_a_drop_in_serial_of_zeros_is_refused(roots: provision.Roots) -> None:
    write(roots.boot / provision.DROPIN, "gateway.serial=00000000\n")
    outcome = provision.provision(roots, 0.0)
    assert [p.key for p in outcome.refused] == ["gateway.serial"] and "counts as no serial" in str(outcome.refused[0])


@pytest.mark.parametrize(("raw", "digits"), [("1234567890", "34567890"), ("0123456789", "23456789")])
def test_a_dmi_serial_of_plain_digits_is_a_serial(roots: provision.Roots, raw: str, digits: str) -> None:
    write(roots.sys / "sys/class/dmi/id/product_serial", raw + "\n")
    assert serial.choose(None, None, roots.sys) == (digits, "dmi")


@pytest.mark.parametrize("placeholder", ["XXXXXXXXXX", "To be filled by O.E.M", "SystemSerialNumber", "INVALID",
                                         "empty"])
def test_more_dmi_placeholders_give_no_serial(roots: provision.Roots, placeholder: str) -> None:
    write(roots.sys / "sys/class/dmi/id/product_serial", placeholder + "\n")
    assert serial.dmi_serial(roots.sys) is None


def test_an_uninitialized_machine_id_and_broadcast_or_zero_macs_give_no_serial(roots: provision.Roots) -> None:
    write(roots.sys / "etc/machine-id", "uninitialized\n")
    assert serial.machine_id(roots.sys) is None
    write(roots.sys / "sys/class/net/eth0/address", "ff:ff:ff:ff:ff:ff\n")
    assert serial.first_wired_mac(roots.sys) is None
    write(roots.sys / "sys/class/net/eth0/address", "00:00:00:00:00:00\n")
    assert serial.first_wired_mac(roots.sys) is None


def test_a_key_the_appliance_fixes_is_refused_with_the_reason(roots: provision.Roots) -> None:
    write(roots.boot / provision.DROPIN, "state.directory=/tmp/elsewhere\n")
    outcome = provision.provision(roots, 0.0)
    assert [p.key for p in outcome.refused] == ["state.directory"]
    assert "/var/lib/wmbus-stream" in outcome.refused[0].allowed


def test_a_duplicate_key_does_not_hide_the_other_problems(roots: provision.Roots) -> None:
    write(roots.boot / provision.DROPIN, "gateway.serial=00000161\ngateway.serial=00000162\nradio.mode=T9\n"
                                         "provision.hostname=-bad-\nprovision.network.gateway=10.0.0.1\n")
    outcome = provision.provision(roots, 0.0)
    assert sorted(p.key for p in outcome.refused) == ["gateway.serial", "provision.hostname",
                                                      "provision.network.gateway", "radio.mode"]


def test_ssh_key_data_is_checked_and_a_key_is_added_once(roots: provision.Roots) -> None:
    blob = base64.b64decode(KEY.split()[1])
    cut = f"ssh-ed25519 {base64.b64encode(blob[:-4]).decode()} cut"
    with pytest.raises(ConfigError, match="cut short"):
        dropin.parse(f"provision.ssh.key={cut}\n".encode())
    with pytest.raises(ConfigError, match="not a ssh-rsa key"):
        dropin.parse(f"provision.ssh.key=ssh-rsa {KEY.split()[1]}\n".encode())
    other = KEY.rsplit(" ", 1)[0] + " same-key-other-comment"
    assert dropin.parse(f"provision.ssh.key={KEY}\nprovision.ssh.key={other}\n".encode()).ssh_keys == (KEY,)


@pytest.mark.parametrize(("lines", "key"), [
    ("provision.network.address=10.0.0.5/0", "provision.network.address"),
    ("provision.network.address=127.0.0.5/8", "provision.network.address"),
    ("provision.network.address=224.0.0.5/24", "provision.network.address"),
    ("provision.network.address=0.0.0.0/24", "provision.network.address"),
    ("provision.network.address=10.0.0.5/24\nprovision.network.gateway=10.0.1.1", "provision.network.gateway"),
    ("provision.network.address=10.0.0.5/24\nprovision.network.gateway=10.0.0.5", "provision.network.gateway"),
])
def test_unusable_static_network_values_are_refused(roots: provision.Roots, lines: str, key: str) -> None:
    write(roots.boot / provision.DROPIN, lines + "\n")
    assert [p.key for p in provision.provision(roots, 0.0).refused] == [key]


def test_an_empty_address_alone_goes_back_to_dhcp(roots: provision.Roots) -> None:
    write(roots.boot / provision.DROPIN, "provision.network.address=10.0.0.5/24\nprovision.network.gateway=10.0.0.1\n")
    provision.provision(roots, 0.0)
    assert (roots.sys / provision.NETWORK_FILE).exists()
    write(roots.boot / provision.DROPIN, "provision.network.address=\n")
    outcome = provision.provision(roots, 0.0)
    assert outcome.refused == [] and not (roots.sys / provision.NETWORK_FILE).exists()
    assert "gateway" not in (roots.data / provision.SETTINGS_FILE).read_text()


def test_authorized_keys_that_are_not_utf8_refuse_new_keys_without_a_traceback(roots: provision.Roots) -> None:
    keys = roots.sys / "home/admin/.ssh/authorized_keys"
    keys.parent.mkdir(parents=True)
    keys.write_bytes(b"ssh-ed25519 AAAA j\xf6rg\n")
    text = f"provision.ssh.key={KEY}\n"
    write(roots.boot / provision.DROPIN, text)
    refused_whole(roots, provision_command(roots), text, "is readable UTF-8 text, for provision.ssh.key")
    assert keys.read_bytes() == b"ssh-ed25519 AAAA j\xf6rg\n"


@pytest.mark.skipif(not _namespaces(), reason="needs root and unshare: a read-only bind mount of the boot folder")
def test_a_read_only_boot_partition_still_shows_the_console_lines_and_applies_a_drop_in_once(
        roots: provision.Roots) -> None:
    write(roots.boot / provision.DROPIN, "provision.hostname=gw-ro\nradio.mode=C1A\n")
    run = " ".join([str(WMBUS), "provision", "--boot", str(roots.boot), "--sys", str(roots.sys), "--data",
                    str(roots.data), "--config", str(roots.config), "--state", str(roots.state), "--defaults",
                    str(roots.defaults)])
    script = (f"mount --bind {roots.boot} {roots.boot} && mount -o remount,ro,bind {roots.boot} && {run} && {run}"
              f" && echo second >> {roots.sys / 'dev/console'} && sed -i s/C1A/T1/ {roots.config} && {run}")
    done = subprocess.run(["unshare", "-m", "sh", "-c", script], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and "Traceback" not in done.stderr, done.stderr
    console = (roots.sys / "dev/console").read_text()
    assert "wmbus-stream: web UI password for admin: " in console and "host name gw-ro" in console
    assert "cannot write on the boot partition" in done.stderr
    assert "was applied at an earlier boot and is not applied again" in done.stderr
    assert (roots.boot / provision.DROPIN).exists()
    assert model.load(roots.config).radio_mode == "T1"  # the later change was not overwritten by the old drop-in
