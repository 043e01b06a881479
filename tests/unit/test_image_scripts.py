"""Quick checks of the ARM image scripts (image/): syntax, shellcheck, --help and --dry-run plans.

The real builds take minutes and need root, qemu and the network; they are run by hand
(docs/image.md). These tests take a few seconds and need none of that: they only run each
script's argument checking, its configuration check and the plan it prints.
"""

from __future__ import annotations

import importlib.metadata
import json
import os
import re
import shutil
import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
IMAGE = REPO / "image"
ENTRY_POINTS = ["build", "build-wheels", "test-wheels", "fleet-keys", "build-deb", "test-deb", "vm-test"]
MAINTAINER_SCRIPTS = ["deb/postinst", "deb/prerm", "deb/postrm"]
ALL_SCRIPTS = [
    *ENTRY_POINTS,
    "lib/common.sh",
    "lib/disk.sh",
    "lib/customize-rootfs",
    "rootfs/etc/initramfs-tools/scripts/local-bottom/wmbus-data",
    "rootfs/etc/initramfs-tools/hooks/wmbus-data",
    *MAINTAINER_SCRIPTS,
]
EXAMPLES = IMAGE / "examples"
VERSION = re.search(r'__version__ = "(.+)"', (REPO / "src/wmbus_stream/__init__.py").read_text()).group(1)  # type: ignore[union-attr]
# The Debian spelling image/build-deb gives it (pre-releases sort before the release).
DEB_VERSION = re.sub(r"\.?(a|b|rc|dev)(\d*)", r"~\1\2", VERSION, count=1).replace(".post", "+post")

pytestmark = pytest.mark.skipif(
    not (IMAGE / "build").is_file() or shutil.which("bash") is None,
    reason="image/ scripts not in this tree (e.g. the installed-wheel run under qemu-user)",
)


def run(args: list[str], tmp_path: Path, **env: str) -> subprocess.CompletedProcess:
    environ = {
        **os.environ,
        "WMBUS_IMAGE_CACHE": str(tmp_path / "cache"),
        # The dry run checks the configuration with this interpreter's wmbus_stream.
        "WMBUS_IMAGE_CHECK_PYTHON": sys.executable,
        **env,
    }
    return subprocess.run(
        [str(IMAGE / args[0]), *args[1:]], cwd=REPO, env=environ, capture_output=True, text=True, timeout=60
    )


@pytest.mark.parametrize("script", ALL_SCRIPTS)
def test_bash_syntax(script: str) -> None:
    result = subprocess.run(["bash", "-n", str(IMAGE / script)], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


@pytest.mark.skipif(shutil.which("shellcheck") is None, reason="shellcheck not installed")
def test_shellcheck() -> None:
    result = subprocess.run(
        ["shellcheck", "-x", "-S", "warning", *(f"image/{s}" for s in ALL_SCRIPTS), "scripts/test", "scripts/demo"],
        cwd=REPO,
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize("script", ENTRY_POINTS)
def test_entry_points_are_executable_and_have_help(script: str, tmp_path: Path) -> None:
    assert os.access(IMAGE / script, os.X_OK)
    result = run([script, "--help"], tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith(f"usage: image/{script}")


@pytest.mark.parametrize("script", ENTRY_POINTS)
def test_unknown_option_is_a_usage_error(script: str, tmp_path: Path) -> None:
    result = run([script, "--no-such-option"], tmp_path)
    assert result.returncode == 2
    assert "--help" in result.stderr


def test_build_wheels_plan(tmp_path: Path) -> None:
    result = run(["build-wheels", "--dry-run", str(tmp_path / "wheels")], tmp_path)
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert "aarch64 armv7l" in out
    assert "_PYTHON_SYSCONFIGDATA_NAME=_sysconfigdata__aarch64-linux-gnu" in out
    assert "_PYTHON_SYSCONFIGDATA_NAME=_sysconfigdata__arm-linux-gnueabihf" in out
    assert "strip" in out and "auditwheel repair" in out
    assert not (tmp_path / "wheels").exists()
    one = run(["build-wheels", "--dry-run", "--arch", "armv7l", str(tmp_path / "w")], tmp_path)
    assert one.returncode == 0 and "aarch64" not in one.stdout
    native = run(["build-wheels", "--dry-run", "--arch", "x86_64", str(tmp_path / "w")], tmp_path)
    assert native.returncode == 0 and "amd64: native" in native.stdout and "sysroot" not in native.stdout
    assert run(["build-wheels", "--arch", "i386", str(tmp_path / "w")], tmp_path).returncode == 2


def test_test_wheels_plan(tmp_path: Path) -> None:
    result = run(["test-wheels", "--dry-run", str(tmp_path)], tmp_path)
    assert result.returncode == 0, result.stderr
    assert "qemu-aarch64" in result.stdout and "qemu-arm" in result.stdout
    assert "tests/unit" in result.stdout and "_cwire" in result.stdout


@pytest.mark.parametrize("arch", ["arm64", "armhf"])
def test_build_plan_from_the_example_configuration(arch: str, tmp_path: Path) -> None:
    out = tmp_path / "out"
    result = run(
        ["build", "--dry-run", "--arch", arch, "--config", str(EXAMPLES / "gateway.cfg"), "--out", str(out)], tmp_path
    )
    assert result.returncode == 0, result.stderr
    plan = result.stdout
    assert f"wmbus-stream-{VERSION}-{arch} appliance" in plan
    assert "--variant=minbase" in plan and "merged-usr" in plan and "no docs, man pages, locales" in plan
    assert "root locked" in plan and "1 fleet SSH key(s)" in plan
    kernel = "linux-image-arm64" if arch == "arm64" else "linux-image-armmp"
    assert kernel in plan and "rauc-service" in plan and "MODULES=list" in plan
    assert "read-only root: squashfs" in plan and "/var/lib/wmbus-stream" in plan
    assert f"compatible=wmbus-stream-{arch}" in plan and "3 boot tries" in plan and "ready within 300s" in plan
    rpi_table = "gpt" if arch == "arm64" else "dos"
    assert f"wmbus-stream-{VERSION}-{arch}.img: gpt esp" in plan
    assert (
        f"wmbus-stream-{VERSION}-{arch}-rpi.img: {rpi_table} esp" in plan and "Raspberry Pi firmware + U-Boot" in plan
    )
    assert f"wmbus-stream-{VERSION}-{arch}.raucb (verity, signed)" in plan
    for name in (
        "70-wmbus-receivers.rules",
        "50-wmbus-flash.conf",
        "50-wmbus-watchdog.conf",
        "local-bottom/wmbus-data",
    ):
        assert name in plan
    assert not out.exists()
    one = run(
        [
            "build",
            "--dry-run",
            "--arch",
            arch,
            "--config",
            str(EXAMPLES / "gateway.cfg"),
            "--out",
            str(out),
            "--board",
            "generic",
            "--test-bundles",
        ],
        tmp_path,
    )
    assert one.returncode == 0, one.stderr
    assert "-rpi.img" not in one.stdout and "-broken.raucb" in one.stdout and "-foreign.raucb" in one.stdout


def test_build_refuses_an_invalid_configuration_with_exit_3(tmp_path: Path) -> None:
    result = run(
        [
            "build",
            "--dry-run",
            "--arch",
            "arm64",
            "--config",
            str(EXAMPLES / "invalid.cfg"),
            "--out",
            str(tmp_path / "o"),
        ],
        tmp_path,
    )
    assert result.returncode == 3, result.stdout + result.stderr
    assert "radio.mdoe" in result.stderr and "gateway.serial" in result.stderr
    assert "nothing built" in result.stderr


@pytest.mark.parametrize(
    ("lines", "problem"),
    [
        (["gateway.serial=00000161"], "set per gateway"),
        (["image.admin.password=long-enough-1"], "the same password"),
        (["image.hostname=gw1"], "per gateway now"),
        (["image.admin.ssh.key=not a key"], "not an OpenSSH public key"),
        (["image.colour=red"], "unknown image key image.colour"),
        (["state.directory=/data/wmbus"], "state.directory"),
        (["image.admin.user=root"], "reserved"),
        (["image.boot.tries=9"], "image.boot.tries: '9' is not a number from 1 to 5"),
        (["image.update.ready.seconds=5"], "from 30 to 3600"),
    ],
)
def test_build_refuses_image_settings_it_cannot_honour(lines: list[str], problem: str, tmp_path: Path) -> None:
    cfg = tmp_path / "gw.cfg"
    cfg.write_text("\n".join(lines) + "\n")
    result = run(
        ["build", "--dry-run", "--arch", "arm64", "--config", str(cfg), "--out", str(tmp_path / "o")], tmp_path
    )
    assert result.returncode == 3, result.stdout + result.stderr
    assert problem in result.stderr
    assert "nothing built" in result.stderr


def test_build_argument_errors(tmp_path: Path) -> None:
    cfg = str(EXAMPLES / "gateway.cfg")
    base = ["build", "--dry-run", "--arch", "arm64", "--config", cfg, "--out", str(tmp_path / "o")]
    assert (
        run(["build", "--dry-run", "--arch", "amd64", "--config", cfg, "--out", str(tmp_path)], tmp_path).returncode
        == 2
    )
    assert run(["build", "--dry-run", "--arch", "arm64", "--out", str(tmp_path)], tmp_path).returncode == 2
    inside = run(["build", "--dry-run", "--arch", "arm64", "--config", cfg, "--out", str(REPO / "out")], tmp_path)
    assert inside.returncode == 2 and "outside the checkout" in inside.stderr
    for extra, message in [
        (["--board", "beaglebone"], "unknown --board 'beaglebone' (generic or rpi)"),
        (["--slot-size", "100"], "from 192 to 4096"),
        (["--data-size", "lots"], "from 128 to 65536"),
        (["--keys", str(tmp_path / "none")], "make one with image/fleet-keys"),
    ]:
        bad = run([*base, *extra], tmp_path)
        assert bad.returncode == 2 and message in bad.stderr, bad.stderr


def disk_sh(script: str, tmp_path: Path) -> subprocess.CompletedProcess:
    """Runs SCRIPT with image/lib/common.sh and disk.sh sourced (the image build's own functions)."""
    prelude = f"set -euo pipefail; source {IMAGE}/lib/common.sh; source {IMAGE}/lib/disk.sh; "
    return subprocess.run(["bash", "-c", prelude + script], cwd=tmp_path, capture_output=True, text=True, timeout=60)


@pytest.mark.skipif(shutil.which("sfdisk") is None, reason="no sfdisk (fdisk package)")
@pytest.mark.parametrize("table", ["gpt", "dos"])
def test_disk_assembly_puts_each_file_system_at_its_partition(table: str, tmp_path: Path) -> None:
    parts = {name: os.urandom(1 << 16) for name in ("esp", "slot", "data")}
    for name, content in parts.items():
        (tmp_path / name).write_bytes(content)
    result = disk_sh(f"assemble_disk disk.img {table} esp slot data 2 3 4 && sfdisk -J disk.img", tmp_path)
    assert result.returncode == 0, result.stderr
    partitions = json.loads(result.stdout)["partitiontable"]["partitions"]
    assert [p["size"] * 512 for p in partitions] == [2 << 20, 3 << 20, 3 << 20, 4 << 20]
    uuids = disk_sh(f"for r in esp rootfs_a rootfs_b data; do part_uuid {table} $r; done", tmp_path).stdout.split()
    if table == "gpt":
        assert [p["uuid"].lower() for p in partitions] == uuids
        assert [p["name"] for p in partitions] == ["esp", "rootfs_a", "rootfs_b", "data"]
    else:
        assert uuids == ["3d9a5c11-01", "3d9a5c11-02", "3d9a5c11-03", "3d9a5c11-04"]
        assert partitions[0]["type"] == "c" and partitions[0].get("bootable") is True
    disk = (tmp_path / "disk.img").read_bytes()
    for part, name in zip(partitions, ["esp", "slot", None, "data"], strict=True):
        start = part["start"] * 512
        if name is None:  # slot B ships empty: the first update writes it
            assert disk[start : start + (1 << 16)] == bytes(1 << 16)
        else:
            assert disk[start : start + (1 << 16)] == parts[name]


@pytest.mark.parametrize(("table", "tries"), [("gpt", 3), ("dos", 1)])
def test_grub_script_boots_each_slot_its_tries_from_its_partition(table: str, tries: int, tmp_path: Path) -> None:
    result = disk_sh(f"grub_cfg {table} {tries} ttyAMA0 > grub.cfg", tmp_path)
    assert result.returncode == 0, result.stderr
    cfg = (tmp_path / "grub.cfg").read_text()
    if shutil.which("grub-script-check"):
        check = subprocess.run(["grub-script-check", str(tmp_path / "grub.cfg")], capture_output=True, text=True)
        assert check.returncode == 0, check.stdout + check.stderr
    for slot in "AB":
        for i in range(tries):
            assert f'[ "${slot}_TRY" = "{i}" ]; then set {slot}_TRY={i + 1}; set slot={slot}' in cfg
        assert f'"${slot}_TRY" = "{tries}"' not in cfg
    pp = "gpt" if table == "gpt" else "msdos"
    uuid = disk_sh(f"part_uuid {table} rootfs_a; part_uuid {table} rootfs_b", tmp_path).stdout.split()
    assert f"linux ($bootdisk,{pp}2)/boot/vmlinuz root=PARTUUID={uuid[0]} $cmdline rauc.slot=A" in cfg
    assert f"linux ($bootdisk,{pp}3)/boot/vmlinuz root=PARTUUID={uuid[1]} $cmdline rauc.slot=B" in cfg
    assert "save_env --file $envfile A_TRY B_TRY" in cfg and 'set cmdline="ro rootfstype=squashfs ' in cfg


def test_grubenv_is_a_grub_environment_block_with_only_slot_a_good(tmp_path: Path) -> None:
    assert disk_sh("grubenv_file grubenv", tmp_path).returncode == 0
    block = (tmp_path / "grubenv").read_bytes()
    assert len(block) == 1024 and block.startswith(b"# GRUB Environment Block\n")
    lines = block.rstrip(b"#").decode().splitlines()[1:]
    assert lines == ["ORDER=A B", "A_OK=1", "A_TRY=0", "B_OK=0", "B_TRY=0"]
    if shutil.which("grub-editenv"):
        listed = subprocess.run(["grub-editenv", str(tmp_path / "grubenv"), "list"], capture_output=True, text=True)
        assert listed.stdout.splitlines() == lines


def test_rauc_udev_fstab_and_grub_agree_on_names(tmp_path: Path) -> None:
    out = disk_sh(
        "rauc_system_conf arm64; echo ===; udev_slot_rules; echo ===; root_fstab; echo ===; grub_cfg gpt 3 ttyAMA0",
        tmp_path,
    )
    assert out.returncode == 0, out.stderr
    rauc, udev, fstab, grub = out.stdout.split("===\n")
    links = set(re.findall(r'SYMLINK\+="(disk/wmbus/\w+)"', udev))
    assert links == {"disk/wmbus/esp", "disk/wmbus/rootfs_a", "disk/wmbus/rootfs_b", "disk/wmbus/data"}
    for device in re.findall(r"^device=/dev/(\S+)", rauc, re.M):
        assert device in links
    assert re.findall(r"^bootname=(\w)", rauc, re.M) == ["A", "B"]
    assert re.findall(r"--id (\w) ", grub) == ["A", "B"]
    assert "grubenv=/boot/efi/EFI/BOOT/grubenv" in rauc and "set envfile=($root)/EFI/BOOT/grubenv" in grub
    assert "/dev/disk/wmbus/esp  /boot/efi  vfat" in fstab and "statusfile=/data/rauc/status" in rauc
    assert "bundle-formats=-plain" in rauc and "check-purpose=codesign" in rauc


@pytest.mark.skipif(shutil.which("openssl") is None, reason="no openssl")
def test_fleet_keys_are_private_and_chain_to_the_ca(tmp_path: Path) -> None:
    keys = tmp_path / "keys"
    result = run(["fleet-keys", "--out", str(keys), "--name", "test fleet"], tmp_path)
    assert result.returncode == 0, result.stderr
    assert keys.stat().st_mode & 0o777 == 0o700
    for name, mode in [
        ("ca.key.pem", 0o600),
        ("signing.key.pem", 0o600),
        ("ca.cert.pem", 0o644),
        ("signing.cert.pem", 0o644),
    ]:
        assert (keys / name).stat().st_mode & 0o777 == mode, name
    verify = subprocess.run(
        ["openssl", "verify", "-CAfile", str(keys / "ca.cert.pem"), str(keys / "signing.cert.pem")],
        capture_output=True,
        text=True,
    )
    assert verify.returncode == 0, verify.stdout + verify.stderr
    text = subprocess.run(
        ["openssl", "x509", "-in", str(keys / "signing.cert.pem"), "-noout", "-text"], capture_output=True, text=True
    ).stdout
    assert "Code Signing" in text and "CA:FALSE" in text
    again = run(["fleet-keys", "--out", str(keys)], tmp_path)
    assert again.returncode == 2 and "never overwritten" in again.stderr
    assert (keys / "ca.key.pem").stat().st_size > 0


def test_vm_test_plan(tmp_path: Path) -> None:
    (tmp_path / "wmbus-stream-0.1.0-arm64.img").write_bytes(b"")
    result = run(["vm-test", "--dry-run", "--image-dir", str(tmp_path), "--only", "power_cuts"], tmp_path)
    assert result.returncode == 0, result.stderr
    plan = result.stdout
    assert "found: wmbus-stream-0.1.0-arm64.img" in plan and "tests: power_cuts" in plan
    assert "-bios /usr/share/qemu-efi-aarch64/QEMU_EFI.fd" in plan and "no -kernel/-initrd" in plan
    assert f"WMBUS_STREAM_APPLIANCE_DIR={tmp_path}" in plan and "-k test_power_cuts" in plan and "nice -n 10" in plan
    for pkg in ("qemu-system-arm", "qemu-efi-aarch64", "u-boot-qemu", "mtools", "e2fsprogs", "openssh-client"):
        assert pkg in plan
    unknown = run(["vm-test", "--dry-run", "--image-dir", str(tmp_path), "--only", "nope"], tmp_path)
    assert unknown.returncode == 2 and "allowed: boot_from_firmware" in unknown.stderr
    missing = run(["vm-test", "--dry-run", "--image-dir", str(tmp_path / "absent")], tmp_path)
    assert missing.returncode == 2 and "no such folder" in missing.stderr
    assert run(["vm-test", "--dry-run"], tmp_path).returncode == 2


def test_appliance_tier_is_skipped_without_its_folder(tmp_path: Path) -> None:
    """The default run collects tests/appliance and skips every test there, saying how to run them: nothing boots."""
    env = {k: v for k, v in os.environ.items() if k != "WMBUS_STREAM_APPLIANCE_DIR"}
    result = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-rs", "tests/appliance"],
                            cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    assert " skipped" in result.stdout and " passed" not in result.stdout and "error" not in result.stdout
    assert "set WMBUS_STREAM_APPLIANCE_DIR" in result.stdout


def test_cibuildwheel_configuration_for_hosted_ci() -> None:
    config = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["cibuildwheel"]
    assert config["build"].startswith("cp311-")
    assert set(config["linux"]["archs"]) == {"x86_64", "aarch64", "armv7l"}
    assert "tests/unit" in config["test-command"]


@pytest.mark.parametrize("script", MAINTAINER_SCRIPTS)
def test_maintainer_scripts_are_posix_sh(script: str) -> None:
    text = (IMAGE / script).read_text()
    assert text.startswith("#!/bin/sh\n") and "set -e\n" in text
    assert os.access(IMAGE / script, os.X_OK)
    result = subprocess.run(["sh", "-n", str(IMAGE / script)], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


def test_build_deb_plan(tmp_path: Path) -> None:
    result = run(["build-deb", "--dry-run", "--arch", "arm64", "--arch", "x86_64", str(tmp_path / "wheels")], tmp_path)
    assert result.returncode == 0, result.stderr
    plan = result.stdout
    assert "for: amd64 arm64" in plan
    assert "wmbus_stream-" in plan and "_aarch64.whl (not there yet)" in plan and "_x86_64.whl (not there yet)" in plan
    for path in (
        "/usr/lib/wmbus-stream/wheels",
        "/lib/systemd/system/wmbus-stream.service",
        "/lib/udev/rules.d/70-wmbus-receivers.rules",
        "/usr/share/wmbus-stream/stream.cfg.example",
    ):
        assert path in plan
    assert "dpkg-deb --root-owner-group --build" in plan and f"wmbus-stream_{DEB_VERSION}_arm64.deb" in plan
    assert "stream.cfg only when absent" in plan and "pip install --no-index" in plan
    assert "purge removes them and the user" in plan
    assert not (tmp_path / "wheels").exists()
    named = run(
        ["build-deb", "--dry-run", "--arch", "armhf", "--version", f"{DEB_VERSION}+gw2", str(tmp_path)], tmp_path
    )
    assert named.returncode == 0 and f"wmbus-stream_{DEB_VERSION}+gw2_armhf.deb" in named.stdout


@pytest.mark.parametrize(
    ("args", "problem"),
    [
        (["--arch", "i386", "W"], "unsupported --arch 'i386' (amd64, arm64 or armhf)"),
        (["--arch"], "--arch needs a value"),
        (["--version", "not a version", "W"], "is not a Debian version"),
        (["--arch", "arm64"], "WHEELDIR is required"),
        (["W", "V"], "only one WHEELDIR"),
    ],
)
def test_build_deb_argument_errors(args: list[str], problem: str, tmp_path: Path) -> None:
    result = run(["build-deb", "--dry-run", *args], tmp_path)
    assert result.returncode == 2, result.stdout + result.stderr
    assert problem in result.stderr and "--help" in result.stderr


def test_build_deb_without_wheels_says_which_to_build(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    result = run(["build-deb", str(tmp_path / "empty")], tmp_path)
    assert result.returncode == 2
    assert f"no wmbus_stream {VERSION} wheel" in result.stderr and "image/build-wheels" in result.stderr


def test_test_deb_plan(tmp_path: Path) -> None:
    result = run(["test-deb", "--dry-run", "--arch", "amd64", "--arch", "arm64", str(tmp_path)], tmp_path)
    assert result.returncode == 0, result.stderr
    plan = result.stdout
    assert f"{DEB_VERSION}, upgrade to {DEB_VERSION}+test1" in plan
    assert "debroot-arm64" in plan and "python3 python3-venv adduser" in plan
    assert f"apt-get install ./wmbus-stream_{DEB_VERSION}_arm64.deb" in plan
    assert f"wmbus-stream_{DEB_VERSION}+test1_amd64.deb" in plan
    assert "apt-get remove (config and state kept)" in plan and "listing before install = after purge" in plan
    arm = next(line for line in plan.splitlines() if line.startswith("  arm64: ") and "root" in line)
    if shutil.which("dpkg"):
        host = subprocess.run(["dpkg", "--print-architecture"], capture_output=True, text=True).stdout.strip()
        assert ("qemu-user" in arm) == (host != "arm64")
    assert run(["test-deb", "--dry-run", "--arch", "mips", str(tmp_path)], tmp_path).returncode == 2
    assert run(["test-deb", "--dry-run"], tmp_path).returncode == 2


def _can_build_wheels() -> bool:
    """Whether this Python has the build backend pyproject.toml asks for (setuptools >= 77)."""
    try:
        major = int(importlib.metadata.version("setuptools").split(".")[0])
    except (importlib.metadata.PackageNotFoundError, ValueError):
        return False
    return major >= 77


def _dependency_wheel(directory: Path, name: str) -> None:
    """Write a minimal wheel of NAME: build-deb reads only its file name."""
    dist = f"{name}-1.0.dist-info"
    files = {
        f"{dist}/METADATA": f"Metadata-Version: 2.1\nName: {name}\nVersion: 1.0\n",
        f"{dist}/WHEEL": "Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: py3-none-any\n",
    }
    with zipfile.ZipFile(directory / f"{name}-1.0-py3-none-any.whl", "w") as whl:
        for path, text in files.items():
            whl.writestr(path, text)
        whl.writestr(f"{dist}/RECORD", "".join(f"{p},,\n" for p in [*files, f"{dist}/RECORD"]))


@pytest.mark.skipif(shutil.which("dpkg-deb") is None, reason="no dpkg-deb (not a Debian machine)")
@pytest.mark.skipif(
    not _can_build_wheels(), reason="no setuptools >= 77 (pyproject's build backend) to build the wheel"
)
def test_build_deb_packages_a_wheel_built_here(tmp_path: Path) -> None:
    """A real .deb from a wheel of this checkout: its files, control fields and maintainer scripts."""
    source = tmp_path / "source"
    source.mkdir()
    for name in ("pyproject.toml", "setup.py", "README.md", "MANIFEST.in"):
        shutil.copy(REPO / name, source / name)
    shutil.copytree(REPO / "src", source / "src", ignore=shutil.ignore_patterns("__pycache__", "*.so", "*.egg-info"))
    wheels = tmp_path / "wheels"
    pip_wheel = ["pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "--no-index", "-w", str(wheels)]
    built = subprocess.run(
        [sys.executable, "-m", *pip_wheel, str(source)],
        env={**os.environ, "WMBUS_STREAM_NO_EXTENSIONS": "1", "PIP_CONFIG_FILE": os.devnull},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert built.returncode == 0, built.stderr
    (wheel,) = wheels.glob("wmbus_stream-*-py3-none-any.whl")

    build_deb = ["build-deb", "--no-lintian", "--arch", "amd64", "--out", str(tmp_path / "out"), str(wheels)]
    refused = run(build_deb, tmp_path)
    assert refused.returncode == 1
    assert "no wheel for x86_64 of the runtime dependencies" in refused.stderr
    assert all(name in refused.stderr for name in ("cronsim", "pyserial", "urllib3", "prometheus_client"))
    assert not list((tmp_path / "out").glob("*.deb"))

    for name in ("cronsim", "pyserial", "urllib3", "prometheus_client"):
        _dependency_wheel(wheels, name)
    result = run(build_deb, tmp_path)
    assert result.returncode == 0, result.stderr
    assert "pure Python" in result.stderr
    deb = tmp_path / "out" / f"wmbus-stream_{DEB_VERSION}_amd64.deb"
    assert result.stdout.strip().splitlines()[0] == str(deb)

    info = subprocess.run(["dpkg-deb", "-f", str(deb)], capture_output=True, text=True, check=True).stdout
    assert "Package: wmbus-stream\n" in info and f"Version: {DEB_VERSION}\n" in info and "Architecture: amd64\n" in info
    assert "Depends: python3 (>= 3.11), python3-venv, adduser\n" in info  # a pure wheel: any 3.11+
    listing = subprocess.run(["dpkg-deb", "-c", str(deb)], capture_output=True, text=True, check=True).stdout
    entries = {line.split()[5]: line.split()[:2] for line in listing.splitlines()}
    for path in (
        f"./usr/lib/wmbus-stream/wheels/{wheel.name}",
        "./usr/lib/wmbus-stream/wheels/pyserial-1.0-py3-none-any.whl",
        "./lib/systemd/system/wmbus-stream.service",
        "./lib/udev/rules.d/70-wmbus-receivers.rules",
        "./usr/share/wmbus-stream/stream.cfg.example",
        "./usr/share/doc/wmbus-stream/copyright",
        "./usr/share/doc/wmbus-stream/changelog.gz",
    ):
        assert entries[path] == ["-rw-r--r--", "root/root"], path
    assert "./usr/bin/wmbus-stream -> /opt/wmbus-stream/bin/wmbus-stream" in listing
    assert not any(p.startswith(("./etc", "./opt", "./var")) for p in entries)  # made by postinst, not shipped

    tree = tmp_path / "tree"
    subprocess.run(["dpkg-deb", "-R", str(deb), str(tree)], check=True)
    unit = (tree / "lib/systemd/system/wmbus-stream.service").read_text()
    assert unit == (REPO / "src/wmbus_stream/data/wmbus-stream.service").read_text()
    assert not (tree / "DEBIAN/conffiles").exists()
    scripts = [tree / "DEBIAN" / s for s in ("postinst", "prerm", "postrm")]
    for script in scripts:
        assert script.stat().st_mode & 0o777 == 0o755
        assert script.read_text() == (IMAGE / "deb" / script.name).read_text()
        assert subprocess.run(["sh", "-n", str(script)], capture_output=True).returncode == 0
    if shutil.which("shellcheck"):
        checked = subprocess.run(["shellcheck", "-S", "warning", *map(str, scripts)], capture_output=True, text=True)
        assert checked.returncode == 0, checked.stdout
    md5sums = (tree / "DEBIAN/md5sums").read_text()
    assert f"usr/lib/wmbus-stream/wheels/{wheel.name}" in md5sums and "DEBIAN" not in md5sums


@pytest.mark.skipif(
    not all(shutil.which(tool) for tool in ("rauc", "mksquashfs", "openssl")),
    reason="no rauc, squashfs-tools or openssl",
)
def test_rauc_takes_the_image_config_and_verifies_the_fleets_bundles_only(tmp_path: Path) -> None:
    """Debian's rauc reads the generated system.conf, accepts a bundle signed under the fleet CA, refuses another CA's."""
    for fleet in ("fleet", "foreign"):
        assert run(["fleet-keys", "--out", str(tmp_path / fleet), "--name", fleet], tmp_path).returncode == 0
    (tmp_path / "root").mkdir()
    (tmp_path / "root" / "payload").write_bytes(os.urandom(1 << 16))  # rauc refuses a 4 KiB squashfs
    subprocess.run(["mksquashfs", "root", "slot.squashfs", "-quiet", "-noappend"], cwd=tmp_path, check=True)
    for fleet in ("fleet", "foreign"):
        made = disk_sh(
            f"rauc_bundle slot.squashfs {fleet}.raucb {fleet}/signing.cert.pem {fleet}/signing.key.pem"
            f" arm64 9.8.7 test-build {tmp_path}/content-{fleet}",
            tmp_path,
        )
        assert made.returncode == 0, made.stderr
    conf = disk_sh("rauc_system_conf arm64", tmp_path).stdout
    conf = conf.replace("path=/etc/rauc/keyring.pem", f"path={tmp_path}/fleet/ca.cert.pem")
    conf = conf.replace("statusfile=/data/rauc/status", f"statusfile={tmp_path}/rauc.status")
    (tmp_path / "system.conf").write_text(conf)

    def info(bundle: str) -> subprocess.CompletedProcess:
        return subprocess.run(
            ["rauc", f"--conf={tmp_path}/system.conf", "info", bundle], cwd=tmp_path, capture_output=True, text=True
        )

    good = info("fleet.raucb")
    assert good.returncode == 0, good.stderr
    assert "Compatible: \t'wmbus-stream-arm64'" in good.stdout and "Version:    \t'9.8.7'" in good.stdout
    assert "rootfs.squashfs" in good.stdout and "verity" in good.stdout
    foreign = info("foreign.raucb")
    assert foreign.returncode != 0 and "signature verification failed" in foreign.stderr
