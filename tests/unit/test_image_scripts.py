"""Quick checks of the ARM image scripts (image/): syntax, shellcheck, --help and --dry-run plans.

The real builds take minutes and need root, qemu and the network; they are run by hand
(docs/image.md). These tests take a few seconds and need none of that: they only run each
script's argument checking, its configuration check and the plan it prints.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
IMAGE = REPO / "image"
ENTRY_POINTS = ["build", "build-wheels", "test-wheels", "boot-test"]
ALL_SCRIPTS = [*ENTRY_POINTS, "lib/common.sh", "lib/customize-rootfs", "lib/boot-check"]
EXAMPLES = IMAGE / "examples"

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
    assert run(["build-wheels", "--arch", "x86_64", str(tmp_path / "w")], tmp_path).returncode == 2


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
    assert "wmbus-stream-" in plan and f"-{arch} image" in plan
    assert "--variant=minbase" in plan and "merged-usr" in plan and "no docs, man pages, locales" in plan
    assert "root locked" in plan and "1 SSH key(s)" in plan
    assert "/etc/wmbus-stream/stream.cfg" in plan and "/var/lib/wmbus-stream" in plan
    assert "dialout" in plan and "wmbus-stream.service" in plan
    for name in ("70-wmbus-receivers.rules", "50-wmbus-flash.conf"):
        assert name in plan
    assert ".rootfs.tar" in plan and ".ext4" in plan and ".manifest.txt" in plan
    assert not out.exists()


def test_build_refuses_an_invalid_configuration_with_exit_3(tmp_path: Path) -> None:
    result = run(
        ["build", "--dry-run", "--arch", "arm64", "--config", str(EXAMPLES / "invalid.cfg"), "--out", str(tmp_path / "o")],
        tmp_path,
    )
    assert result.returncode == 3, result.stdout + result.stderr
    assert "radio.mdoe" in result.stderr and "gateway.serial" in result.stderr
    assert "nothing built" in result.stderr


@pytest.mark.parametrize(
    ("lines", "problem"),
    [
        (["gateway.serial=00000161"], "no way to log in"),
        (["image.admin.password=short", "gateway.serial=00000161"], "shorter than 8"),
        (["image.admin.ssh.key=not a key", "gateway.serial=00000161"], "not an OpenSSH public key"),
        (["image.admin.password=long-enough-1", "image.colour=red"], "unknown image key image.colour"),
        (["image.admin.password=long-enough-1", "state.directory=/data/wmbus"], "state.directory"),
        (["image.admin.password=long-enough-1", "image.admin.user=root"], "reserved"),
    ],
)
def test_build_refuses_image_settings_it_cannot_honour(lines: list[str], problem: str, tmp_path: Path) -> None:
    cfg = tmp_path / "gw.cfg"
    cfg.write_text("\n".join(lines) + "\n")
    result = run(["build", "--dry-run", "--arch", "arm64", "--config", str(cfg), "--out", str(tmp_path / "o")], tmp_path)
    assert result.returncode == 3, result.stdout + result.stderr
    assert problem in result.stderr


def test_build_argument_errors(tmp_path: Path) -> None:
    cfg = str(EXAMPLES / "gateway.cfg")
    assert run(["build", "--dry-run", "--arch", "amd64", "--config", cfg, "--out", str(tmp_path)], tmp_path).returncode == 2
    assert run(["build", "--dry-run", "--arch", "arm64", "--out", str(tmp_path)], tmp_path).returncode == 2
    inside = run(["build", "--dry-run", "--arch", "arm64", "--config", cfg, "--out", str(REPO / "out")], tmp_path)
    assert inside.returncode == 2 and "outside the checkout" in inside.stderr


@pytest.mark.skipif(shutil.which("mkfs.ext4") is None or shutil.which("debugfs") is None, reason="no e2fsprogs")
def test_boot_test_plan_reads_the_configuration_inside_the_image(tmp_path: Path) -> None:
    root = tmp_path / "root"
    (root / "etc" / "wmbus-stream").mkdir(parents=True)
    (root / "etc" / "wmbus-stream" / "stream.cfg").write_text("gateway.serial=12345678\n")
    img = tmp_path / "tiny.ext4"
    subprocess.run(["mkfs.ext4", "-q", "-F", "-d", str(root), str(img), "4M"], check=True, capture_output=True)
    result = run(["boot-test", "--dry-run", "--image", str(img)], tmp_path)
    assert result.returncode == 0, result.stderr
    assert "qemu-system-aarch64 -M virt" in result.stdout
    assert "started: serial 12345678" in result.stdout
    assert "systemd.journald.forward_to_console=1" in result.stdout
    assert "image/lib/boot-check" in result.stdout and "boot-check: done, 0 problems" in result.stdout


def test_cibuildwheel_configuration_for_hosted_ci() -> None:
    config = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["cibuildwheel"]
    assert config["build"].startswith("cp311-")
    assert set(config["linux"]["archs"]) == {"x86_64", "aarch64", "armv7l"}
    assert "tests/unit" in config["test-command"]
