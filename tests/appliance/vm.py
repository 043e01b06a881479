"""The appliance harness: image/build's disk image booted from Debian's firmware under qemu, driven from the host.

What it does, and why each piece is the way it is:

* ``Artifacts`` finds image/build's outputs in a folder (``WMBUS_STREAM_APPLIANCE_DIR``).
* ``Disk`` is a per-test sparse copy of the raw image (``cp --sparse=always``): every test
  boots its own gateway, first boot included. Its GPT is read with ``sfdisk -J``; files go
  onto and off the ESP with mtools at the ESP's offset (``mcopy -i disk@@OFFSET``), which
  is how an installer writes the provisioning drop-in on an SD card; a partition is copied
  out by its offset for ``e2fsck`` and ``debugfs`` on the host.
* ``VM`` starts ``qemu-system-aarch64 -M virt`` with ``-bios`` firmware from Debian
  (EDK2 from qemu-efi-aarch64 or U-Boot from u-boot-qemu) and no ``-kernel``/``-initrd``:
  the firmware finds GRUB on the ESP as a board's would. The serial console goes to a log
  file that ``Console`` reads incrementally; ``wait_for`` names what it waited for and
  shows the last console lines when it gives up. Ports 8080 (web UI) and 22 (SSH) are
  forwarded from free ports of 127.0.0.1; the guest reaches the host at 10.0.2.2 (slirp).
  ``kill()`` is a power cut (SIGKILL: guest RAM and unsubmitted writes are gone);
  ``poweroff()`` is a clean shutdown from inside.
* ``Hes`` is the reference receiver (``wmbus-stream receive``) on the host, with a SQLite
  database the tests read.

Nothing here waits a fixed time for an event: every wait polls the event up to a deadline.
"""

from __future__ import annotations

import base64
import calendar
import contextlib
import csv
import ctypes
import http.client
import io
import json
import os
import re
import shlex
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ENV_DIR = "WMBUS_STREAM_APPLIANCE_DIR"
FIRMWARE = {
    "edk2": Path("/usr/share/qemu-efi-aarch64/QEMU_EFI.fd"),  # Debian qemu-efi-aarch64
    "u-boot": Path("/usr/lib/u-boot/qemu_arm64/u-boot.bin"),  # Debian u-boot-qemu
}
# Host programs the tier needs, with the Debian package that has each (image/vm-test installs them).
TOOLS = {
    "qemu-system-aarch64": "qemu-system-arm", "mcopy": "mtools", "mdir": "mtools", "mtype": "mtools",
    "mdel": "mtools", "sfdisk": "fdisk", "e2fsck": "e2fsprogs", "debugfs": "e2fsprogs",
    "mkfs.ext4": "e2fsprogs", "ssh": "openssh-client", "ssh-keygen": "openssh-client",
}
WMBUS = "/opt/wmbus-stream/bin/wmbus-stream"  # the gateway's command inside the image (sudo's PATH may miss it)
STATE = "/var/lib/wmbus-stream"
STORE = "store.sqlite"  # the state database's name in STATE (state/backup.py STORE_FILE)
DATA_STATE = "/var/lib/wmbus-stream"  # the same folder seen from the data partition's root
DROP_IN = "wmbus-stream.cfg"
PROVISIONED = "wmbus-stream-provisioned.txt"
PROVISION_ERROR = "wmbus-stream-provision-error.txt"
ADMIN = "admin"
BOOT_DEADLINE = float(os.environ.get("WMBUS_STREAM_APPLIANCE_BOOT_DEADLINE", "900"))  # TCG on a busy host
START_LINE = re.compile(r"wmbus-stream \S+ \((?:compiled|pure)\) started: serial (\d{8})")
PASSWORD_LINE = re.compile(r"wmbus-stream: web UI password for admin: (\S+)")
SLOT_LINE = re.compile(r"Kernel command line:.*\brauc\.slot=([AB])\b")
GRUB_SLOT = re.compile(r"wmbus-stream: slot ([AB]) \(ORDER=")  # the ESP's grub.cfg echoes its choice every boot
# The ESP's grub.cfg sources EFI/BOOT/local.cfg ("per board or for a test") for extra kernel
# arguments: the tests have the journal forwarded to the serial console, where the service's
# start line is then read (the image itself keeps the console quiet).
LOCAL_GRUB_CFG = "EFI/BOOT/local.cfg"
LOCAL_GRUB_TEXT = 'set extra_cmdline="systemd.journald.forward_to_console=1"\n'
FIRMWARE_BANNER = re.compile(r"^(?:UEFI firmware \(version|U-Boot \d{4}\.\d{2})")  # once per boot, EDK2 or U-Boot
_ANSI = re.compile(r"\x1b\[[0-9;?=]*[A-Za-z]|\x1b[()][A-Z0-9]")
_SMBIOS_VALUE = re.compile(r"[A-Za-z0-9._-]{1,64}")


class HarnessError(AssertionError):
    """The guest or a host tool did not do what the test waited for (the message says what and shows the evidence)."""


def missing_tools() -> list[str]:
    """``program (package)`` for each host program the tier needs that is not on PATH."""
    return [f"{tool} ({pkg})" for tool, pkg in TOOLS.items() if shutil.which(tool) is None]


def free_port() -> int:
    """A TCP port of 127.0.0.1 that was free a moment ago."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def run(args: Sequence[str | Path], *, check: bool = True, timeout: float = 600, **kw: Any) -> subprocess.CompletedProcess:
    """Run a host tool; on failure the error names the command, its status and its output."""
    argv = [str(a) for a in args]
    result = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, **kw)
    if check and result.returncode != 0:
        raise HarnessError(f"{shlex.join(argv)} exited {result.returncode}:\n{result.stdout[-2000:]}{result.stderr[-2000:]}")
    return result


# -------------------------------------------------------------------------------------------
# image/build's outputs

@dataclass(frozen=True)
class Artifacts:
    """The files of one image/build --out folder the tests use (None: not built)."""

    folder: Path
    image: Path
    version: str
    bundle: Path | None
    broken: Path | None
    foreign: Path | None
    tries: int  # image.boot.tries: boots of a new slot before GRUB gives it up
    ready_seconds: float  # image.update.ready.seconds: the confirm unit's bound per boot

    @classmethod
    def find(cls, folder: Path) -> Artifacts:
        """The arm64 disk image and bundles in ``folder``; HarnessError naming what is missing."""
        if not folder.is_dir():
            raise HarnessError(f"{ENV_DIR}={folder}: not a folder (give image/build's --out folder)")
        images = sorted(p for p in folder.glob("wmbus-stream-*-arm64.img") if re.fullmatch(r"wmbus-stream-[^-]+-arm64\.img", p.name))
        if not images:
            found = ", ".join(sorted(p.name for p in folder.iterdir())) or "nothing"
            raise HarnessError(f"{ENV_DIR}={folder}: no wmbus-stream-VERSION-arm64.img there (found: {found})")
        image = images[-1]
        version = image.name.removeprefix("wmbus-stream-").removesuffix("-arm64.img")
        stem = f"wmbus-stream-{version}-arm64"

        def one(name: str) -> Path | None:
            path = folder / name
            return path if path.is_file() else None

        manifest = folder / f"{stem}.manifest.txt"
        boot = re.search(r"(\d+) tries per new slot, ready within (\d+)s", manifest.read_text() if manifest.is_file() else "")
        if boot is None:
            raise HarnessError(f"{manifest}: no 'N tries per new slot, ready within Ss' line (an image/build manifest?)")
        return cls(folder, image, version, one(f"{stem}.raucb"), one(f"{stem}-broken.raucb"), one(f"{stem}-foreign.raucb"),
                   int(boot.group(1)), float(boot.group(2)))


# -------------------------------------------------------------------------------------------
# The disk

@dataclass(frozen=True)
class Partition:
    """One GPT entry, in bytes."""

    number: int
    name: str
    start: int
    size: int


class Disk:
    """A raw disk image file: its GPT, files on its ESP, copies of its partitions."""

    def __init__(self, path: Path) -> None:
        self.path = path

    @classmethod
    def copy_of(cls, image: Path, dest: Path) -> Disk:
        """A sparse copy of ``image`` at ``dest`` (every test writes only its own)."""
        run(["cp", "--sparse=always", image, dest])
        return cls(dest)

    def partitions(self) -> list[Partition]:
        """The GPT entries, read with ``sfdisk -J``."""
        table = json.loads(run(["sfdisk", "-J", self.path]).stdout)["partitiontable"]
        if table.get("label") != "gpt":
            raise HarnessError(f"{self.path}: partition table is {table.get('label')!r}, the contract says GPT")
        sector = int(table.get("sectorsize", 512))
        parts = []
        for entry in table["partitions"]:
            number = int(re.search(r"(\d+)$", entry["node"]).group(1))  # type: ignore[union-attr]
            parts.append(Partition(number, entry.get("name", ""), int(entry["start"]) * sector, int(entry["size"]) * sector))
        return parts

    def partition(self, name: str) -> Partition:
        """The partition with GPT name ``name`` (esp, rootfs_a, rootfs_b, data)."""
        for part in self.partitions():
            if part.name == name:
                return part
        names = ", ".join(p.name or f"#{p.number}" for p in self.partitions())
        raise HarnessError(f"{self.path}: no partition named {name!r} (there are: {names})")

    # The ESP through mtools, at the ESP's own offset (the contract puts it at 1 MiB).
    def _esp(self) -> str:
        return f"{self.path}@@{self.partition('esp').start}"

    def esp_names(self, folder: str = "") -> set[str]:
        """The file names in a folder of the ESP (its root by default)."""
        out = run(["mdir", "-b", "-i", self._esp(), f"::/{folder}"], env=_mtools_env()).stdout
        return {line.rstrip("/").rsplit("/", 1)[-1] for line in out.splitlines() if line.strip()}

    def esp_read(self, name: str) -> str | None:
        """A file of the ESP (path from its root) as text, None when it is not there."""
        folder, _, base = name.rpartition("/")
        if base not in self.esp_names(folder):
            return None
        return run(["mtype", "-i", self._esp(), f"::/{name}"], env=_mtools_env()).stdout

    def esp_write(self, name: str, text: str, workdir: Path) -> None:
        """Write ``text`` as ``name`` (path from the ESP's root, folders existing) on the ESP, replacing it."""
        local = workdir / f"esp-{name.replace('/', '_')}"
        local.write_text(text, encoding="utf-8")
        local.chmod(0o600)
        run(["mcopy", "-o", "-i", self._esp(), local, f"::/{name}"], env=_mtools_env())
        local.unlink()

    def extract(self, name: str, dest: Path) -> Path:
        """Copy partition ``name`` out of the disk into ``dest`` (sparse), by its offset and size."""
        part = self.partition(name)
        run(["dd", f"if={self.path}", f"of={dest}", "bs=1M", "iflag=skip_bytes,count_bytes", f"skip={part.start}",
             f"count={part.size}", "conv=sparse", "status=none"])
        return dest


def _mtools_env() -> dict[str, str]:
    # Disk images have no floppy geometry; without this mtools refuses some FAT layouts.
    return {**os.environ, "MTOOLS_SKIP_CHECK": "1"}


def drop_in(settings: Sequence[tuple[str, str]]) -> str:
    """The provisioning drop-in's text: ``key=value`` lines in the given order (repeat a key by repeating it)."""
    lines = ["# written by tests/appliance before first boot, as an installer would"]
    lines += [f"{key}={value}" for key, value in settings]
    return "\n".join(lines) + "\n"


def bundle_disk(files: Sequence[Path], dest: Path, label: str = "vmtest-bundles") -> Path:
    """A small ext4 image holding ``files`` (a second, read-only virtio disk: faster than scp under TCG)."""
    tree = dest.with_suffix(".tree")
    tree.mkdir()
    size = 0
    for src in files:
        try:
            os.link(src, tree / src.name)
        except OSError:  # another file system
            shutil.copy(src, tree / src.name)
        size += src.stat().st_size
    megabytes = size // (1 << 20) * 11 // 10 + 16
    run(["mkfs.ext4", "-q", "-F", "-L", label, "-d", tree, dest, f"{megabytes}M"])
    shutil.rmtree(tree)
    return dest


def ssh_key(folder: Path) -> tuple[Path, str]:
    """A fresh ed25519 key pair in ``folder``: (private key file, public key line)."""
    key = folder / "id_ed25519"
    run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "tests/appliance", "-f", key])
    return key, (folder / "id_ed25519.pub").read_text().strip()


# -------------------------------------------------------------------------------------------
# The data partition, checked on the host

@dataclass
class DataCheck:
    """What the host found on a copy of the data partition."""

    fsck_preen: int | None  # e2fsck -p status after a crash (0/1 = clean or fixed the way a boot would), None when not run
    fsck_full: int  # e2fsck -fn status (0 = clean)
    fsck_output: str
    integrity: str  # PRAGMA integrity_check of the state database ("ok")
    pending: dict[str, float] = field(default_factory=dict)  # meter_id -> latest received_at of its pending rows


def check_data(disk: Disk, workdir: Path, *, after_crash: bool) -> DataCheck:
    """Copy the data partition out, check the file system (after a crash: preen first, as the boot does) and the database."""
    part = disk.extract("data", workdir / "data.ext4")
    preen = None
    if after_crash:
        # The initramfs runs e2fsck -p before mounting: the journal is replayed and orphans
        # released. Anything preen cannot fix (status 4 and up) would stop the boot.
        preen = run(["e2fsck", "-p", part], check=False).returncode
    full = run(["e2fsck", "-f", "-n", part], check=False)
    dump = workdir / "state"
    dump.mkdir(exist_ok=True)
    for suffix in ("", "-wal"):
        target = dump / (STORE + suffix)
        target.unlink(missing_ok=True)
        run(["debugfs", "-R", f"dump -p {DATA_STATE}/{STORE}{suffix} {target}", part], check=False)
    db_file = dump / STORE
    if not db_file.is_file() or db_file.stat().st_size == 0:
        listing = run(["debugfs", "-R", f"ls -l {DATA_STATE}", part], check=False).stdout
        raise HarnessError(f"no {DATA_STATE}/{STORE} on the data partition; {DATA_STATE} holds:\n{listing}")
    with contextlib.closing(sqlite3.connect(db_file)) as db:
        integrity = "; ".join(row[0] for row in db.execute("PRAGMA integrity_check"))
        pending: dict[str, float] = {}
        for meter, received in db.execute("SELECT meter_id, received_at FROM meters"):
            pending[str(meter)] = max(pending.get(str(meter), 0.0), float(received))
    part.unlink()
    return DataCheck(preen, full.returncode, full.stdout + full.stderr, integrity, pending)


# -------------------------------------------------------------------------------------------
# The console

class Console:
    """The serial console's log file, read incrementally into lines (ANSI colours and CRs removed)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._offset = 0
        self._partial = ""
        self.lines: list[str] = []

    def poll(self) -> None:
        """Read what qemu appended since the last poll."""
        with contextlib.suppress(FileNotFoundError), self.path.open("rb") as log:
            log.seek(self._offset)
            chunk = log.read()
        if not chunk:
            return
        self._offset += len(chunk)
        text = self._partial + _ANSI.sub("", chunk.decode("utf-8", "replace")).replace("\r", "")
        *complete, self._partial = text.split("\n")
        self.lines.extend(complete)

    def mark(self) -> int:
        """A position to search from (what came before is ignored)."""
        self.poll()
        return len(self.lines)

    def find(self, pattern: re.Pattern[str], since: int = 0) -> re.Match[str] | None:
        """The first match in a line from ``since`` on (the unfinished last line included)."""
        self.poll()
        for line in [*self.lines[since:], self._partial]:
            found = pattern.search(line)
            if found:
                return found
        return None

    def count(self, pattern: re.Pattern[str], since: int = 0) -> int:
        """How many lines from ``since`` on match."""
        self.poll()
        return sum(1 for line in self.lines[since:] if pattern.search(line))

    def tail(self, n: int = 40) -> str:
        """The last ``n`` lines, for error messages."""
        self.poll()
        shown = [*self.lines, self._partial][-n:]
        return "\n".join("    | " + line for line in shown)


# -------------------------------------------------------------------------------------------
# The virtual machine

class VM:
    """One qemu-system-aarch64 -M virt gateway booted from firmware off ``disk``."""

    def __init__(self, disk: Disk, workdir: Path, *, name: str, firmware: str = "edk2",
                 smbios_serial: str | None = None, key: Path | None = None, extra_disks: Sequence[Path] = ()) -> None:
        if firmware not in FIRMWARE:
            raise ValueError(f"firmware {firmware!r}: allowed {', '.join(FIRMWARE)}")
        if smbios_serial is not None and not _SMBIOS_VALUE.fullmatch(smbios_serial):
            raise ValueError(f"SMBIOS serial {smbios_serial!r}: allowed 1..64 of A-Z a-z 0-9 . _ -")
        self.disk = disk
        self.workdir = workdir
        self.name = name
        self.firmware = firmware
        self.smbios_serial = smbios_serial or f"vmtest-{name}"
        self.key = key
        self.extra_disks = list(extra_disks)
        self.boots = 0
        self.process: subprocess.Popen[bytes] | None = None
        self.console = Console(workdir / f"{name}-console-0.log")
        self.web_port = 0
        self.ssh_port = 0

    # -- life cycle ----------------------------------------------------------------------

    def command(self) -> list[str]:
        """The qemu command line of the next start (ports chosen now)."""
        self.web_port, self.ssh_port = free_port(), free_port()
        argv = [
            "qemu-system-aarch64", "-M", "virt", "-cpu", "cortex-a72", "-smp", "2", "-m", "1024", "-nographic",
            "-bios", str(FIRMWARE[self.firmware]),
            "-drive", f"if=none,id=disk0,file={self.disk.path},format=raw,cache=writeback",
            "-device", "virtio-blk-pci,drive=disk0,bootindex=0",
        ]
        for index, extra in enumerate(self.extra_disks, 1):
            argv += ["-drive", f"if=none,id=disk{index},file={extra},format=raw,readonly=on",
                     "-device", f"virtio-blk-pci,drive=disk{index}"]
        argv += [
            # The -nic user,model=virtio-net-pci,hostfwd=... network spelled as -netdev/-device, so
            # the NIC can go without its PXE option ROM (romfile=): qemu would refuse to start
            # without Debian's ipxe-qemu, and the firmware should not try a network boot first.
            "-netdev", f"user,id=net0,hostfwd=tcp:127.0.0.1:{self.web_port}-:8080,"
                       f"hostfwd=tcp:127.0.0.1:{self.ssh_port}-:22",
            "-device", "virtio-net-pci,netdev=net0,romfile=",
            "-device", "i6300esb",
            "-smbios", f"type=1,serial={self.smbios_serial}",
            "-serial", f"file:{self.console.path}", "-monitor", "none",
            "-qmp", f"unix:{self._qmp_path()},server=on,wait=off",
        ]
        if os.nice(0) < 10:
            argv = ["nice", "-n", "10", *argv]
        return argv

    def start(self) -> None:
        """Boot (again): a fresh console log per start, new forwarded ports."""
        if self.running():
            raise HarnessError(f"{self.name}: already running")
        self.console = Console(self.workdir / f"{self.name}-console-{self.boots}.log")
        self.console.path.write_bytes(b"")
        argv = self.command()
        (self.workdir / f"{self.name}-qemu-{self.boots}.cmd").write_text(shlex.join(argv) + "\n")
        self._qmp_path().unlink(missing_ok=True)
        with (self.workdir / f"{self.name}-qemu-{self.boots}.stderr").open("wb") as stderr:
            self.process = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=stderr,
                                            preexec_fn=_die_with_parent)
        self.boots += 1

    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def kill(self) -> None:
        """Power cut: SIGKILL qemu (no shutdown; what the guest had not written is gone)."""
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
        self._reap()

    def poweroff(self, deadline: float = 600, *, button: bool = False) -> None:
        """Clean shutdown and wait for qemu to end: ``systemctl poweroff`` over ssh, or the ACPI power button.

        The button works under EDK2 (ACPI; measured: off 7 s after the press); under U-Boot the
        guest gets no power button it acts on, so there only ssh can power off cleanly.
        """
        if not self.running():
            return
        if (button or self.key is None) and self.firmware != "edk2":
            raise ValueError(f"{self.name}: no power button under {self.firmware}; power off over ssh")
        if self.key is not None and not button:
            self.ssh("sudo systemctl poweroff", check=False, timeout=60)
        else:
            self.qmp("system_powerdown")
        self.wait_exit(deadline, "a clean poweroff")

    def wait_exit(self, deadline: float, what: str) -> None:
        """Wait until qemu ends by itself (the guest powered off)."""
        assert self.process is not None
        try:
            self.process.wait(timeout=deadline)
        except subprocess.TimeoutExpired:
            raise HarnessError(f"{self.name}: waited {deadline:g} s for {what}; qemu still runs; console:\n"
                               f"{self.console.tail()}") from None
        self._reap()

    def _reap(self) -> None:
        if self.process is not None:
            self.process.wait()
            self.process = None

    def _qmp_path(self) -> Path:
        # A Unix socket path must stay short: a folder of its own under /tmp, not the test's tmp_path.
        return Path("/tmp") / f"wmbus-vmtest-{os.getpid()}-{self.name}.qmp"

    def qmp(self, command: str) -> dict[str, Any]:
        """Send one QMP command (e.g. system_powerdown) and return its answer."""
        with socket.socket(socket.AF_UNIX) as sock:
            sock.settimeout(10)
            sock.connect(str(self._qmp_path()))
            stream = sock.makefile("rw")
            json.loads(stream.readline())  # greeting
            for execute in ("qmp_capabilities", command):
                stream.write(json.dumps({"execute": execute}) + "\n")
                stream.flush()
                while True:
                    answer = json.loads(stream.readline())
                    if "return" in answer or "error" in answer:
                        break
            return answer

    # -- waiting on the console ------------------------------------------------------------

    def wait_for(self, pattern: str | re.Pattern[str], deadline: float, *, what: str, since: int = 0) -> re.Match[str]:
        """Poll the console until a line from ``since`` on matches; HarnessError naming ``what`` after ``deadline`` s."""
        regex = re.compile(pattern) if isinstance(pattern, str) else pattern
        end = time.monotonic() + deadline
        while True:
            found = self.console.find(regex, since)
            if found:
                return found
            if not self.running():
                raise HarnessError(f"{self.name}: qemu ended (status {self._status()}) before {what} "
                                   f"(/{regex.pattern}/) appeared; last console lines:\n{self.console.tail()}"
                                   f"{self._stderr()}")
            if time.monotonic() >= end:
                raise HarnessError(f"{self.name}: waited {deadline:g} s for {what} (/{regex.pattern}/) on the console;"
                                   f" not seen; last console lines:\n{self.console.tail()}")
            time.sleep(0.5)

    def wait_started(self, deadline: float = BOOT_DEADLINE, since: int = 0) -> str:
        """Wait for the service's start line; the gateway serial it names."""
        return self.wait_for(START_LINE, deadline, what="the service's start line 'wmbus-stream ... started: serial S'"
                             " (journal forwarded to the console)", since=since).group(1)

    def _status(self) -> str:
        return "unknown" if self.process is None else str(self.process.returncode)

    def _stderr(self) -> str:
        path = self.workdir / f"{self.name}-qemu-{self.boots - 1}.stderr"
        text = path.read_text(errors="replace").strip() if path.exists() else ""
        return f"\nqemu stderr:\n{text}" if text else ""

    # -- SSH -------------------------------------------------------------------------------

    def _ssh_base(self, program: str = "ssh") -> list[str]:
        assert self.key is not None, "this VM was provisioned without a test SSH key"
        port_flag = "-p" if program == "ssh" else "-P"
        return [program, "-i", str(self.key), port_flag, str(self.ssh_port), "-o", "IdentitiesOnly=yes",
                "-o", "BatchMode=yes", "-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null",
                "-o", "LogLevel=ERROR", "-o", "ConnectTimeout=20", "-o", "ServerAliveInterval=15"]

    def ssh(self, command: str, *, check: bool = True, timeout: float = 300) -> subprocess.CompletedProcess:
        """Run ``command`` in the guest as admin (sudo is passwordless); a failure names it and shows its output."""
        argv = [*self._ssh_base(), f"{ADMIN}@127.0.0.1", command]
        try:
            result = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL)
        except subprocess.TimeoutExpired:
            if not check:  # a guest rebooting under the connection: a failed attempt like any other
                return subprocess.CompletedProcess(argv, 255, "", f"ssh timed out after {timeout:g} s")
            raise HarnessError(f"{self.name}: ssh {command!r} did not finish in {timeout:g} s; console:\n"
                               f"{self.console.tail(20)}") from None
        if check and result.returncode != 0:
            raise HarnessError(f"{self.name}: ssh {command!r} exited {result.returncode}:\n"
                               f"{result.stdout[-3000:]}{result.stderr[-3000:]}")
        return result

    def wait_ssh(self, deadline: float = BOOT_DEADLINE) -> None:
        """Poll until an SSH login as admin with the test key works."""
        end = time.monotonic() + deadline
        last = ""
        while True:
            if not self.running():
                raise HarnessError(f"{self.name}: qemu ended before SSH answered; console:\n{self.console.tail()}")
            result = self.ssh("true", check=False, timeout=60)
            if result.returncode == 0:
                return
            last = result.stderr.strip()
            if time.monotonic() >= end:
                raise HarnessError(f"{self.name}: waited {deadline:g} s for an SSH login as {ADMIN} on port "
                                   f"{self.ssh_port}; last ssh error: {last}; console:\n{self.console.tail()}")
            time.sleep(3)

    def wait_key_refused(self, deadline: float = BOOT_DEADLINE) -> str:
        """Poll until sshd answers and refuses the test key; its refusal message."""
        end = time.monotonic() + deadline
        while True:
            result = self.ssh("true", check=False, timeout=60)
            if result.returncode == 0:
                raise HarnessError(f"{self.name}: the test key logged in, but it should not have been installed")
            if "Permission denied" in result.stderr:
                return result.stderr.strip()
            if not self.running() or time.monotonic() >= end:
                raise HarnessError(f"{self.name}: sshd did not answer within {deadline:g} s (last: "
                                   f"{result.stderr.strip()}); console:\n{self.console.tail()}")
            time.sleep(3)

    def booted_slot(self) -> str:
        """A or B, from the running kernel's command line (rauc.slot=)."""
        cmdline = self.ssh("cat /proc/cmdline").stdout
        found = re.search(r"\brauc\.slot=([AB])\b", cmdline)
        if not found:
            raise HarnessError(f"{self.name}: no rauc.slot=A|B on the kernel command line: {cmdline.strip()}")
        return found.group(1)

    def rauc_status(self) -> dict[str, Any]:
        """``rauc status --output-format=json`` of the guest."""
        return self.guest_json("sudo rauc status --output-format=json")

    def ssh_methods(self) -> str:
        """The authentication methods sshd offers, from the refusal of a login that offers no key: e.g. 'publickey'."""
        argv = ["ssh", "-p", str(self.ssh_port), "-o", "BatchMode=yes", "-o", "PubkeyAuthentication=no",
                "-o", "PreferredAuthentications=password,keyboard-interactive", "-o", "NumberOfPasswordPrompts=0",
                "-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null", "-o", "ConnectTimeout=20",
                f"{ADMIN}@127.0.0.1", "true"]
        result = subprocess.run(argv, capture_output=True, text=True, timeout=120, stdin=subprocess.DEVNULL)
        found = re.search(r"Permission denied \(([^)]*)\)", result.stderr)
        if result.returncode == 0 or not found:
            raise HarnessError(f"{self.name}: a login without a key was not refused as expected "
                               f"(exit {result.returncode}): {result.stderr.strip()}")
        return found.group(1)

    def guest_json(self, command: str) -> Any:
        """Run ``command`` over ssh and parse its standard output as JSON."""
        out = self.ssh(command).stdout
        try:
            return json.loads(out)
        except json.JSONDecodeError as exc:
            raise HarnessError(f"{self.name}: {command!r} printed no JSON ({exc}):\n{out[-2000:]}") from None

    def status(self) -> dict[str, Any]:
        """The running gateway's ``wmbus-stream status`` (JSON)."""
        return self.guest_json(f"sudo {WMBUS} status")

    def analyzer(self) -> dict[str, float]:
        """Meter ID -> last seen (epoch seconds) of every accepted meter the running gateway reports as received."""
        out = self.ssh(f"sudo {WMBUS} analyzer --csv --all").stdout
        seen: dict[str, float] = {}
        for row in csv.DictReader(io.StringIO(out)):
            if row["verdict"] == "Accepted":  # one ID under two manufacturers: the later counts
                seen[row["id"]] = max(seen.get(row["id"], 0.0), _epoch(row["last_seen"]))
        return seen

    def pending_in_guest(self) -> set[str]:
        """Meter IDs of the rows in the state database on the gateway's disk (read-only, while it runs)."""
        script = ("import sqlite3,sys; db=sqlite3.connect(sys.argv[1]+'?mode=ro', uri=True); "
                  "print('\\n'.join(r[0] for r in db.execute('SELECT meter_id FROM meters')))")
        out = self.ssh(f"sudo /opt/wmbus-stream/bin/python -c {shlex.quote(script)} file:{STATE}/{STORE}").stdout
        return {line.strip() for line in out.splitlines() if line.strip()}

    def read_file(self, path: str) -> str:
        """A guest file's text (read with sudo)."""
        return self.ssh(f"sudo cat {shlex.quote(path)}").stdout

    # -- the web UI ------------------------------------------------------------------------

    def web(self, path: str, password: str | None = None, *, deadline: float = 120) -> tuple[int, bytes]:
        """GET ``path`` from the web UI through the forwarded port: (status, body); retries until it answers."""
        headers = {"Host": "localhost"}
        if password is not None:
            headers["Authorization"] = "Basic " + base64.b64encode(f"admin:{password}".encode()).decode()
        end = time.monotonic() + deadline
        while True:
            conn = http.client.HTTPConnection("127.0.0.1", self.web_port, timeout=30)
            try:
                conn.request("GET", path, headers=headers)
                answer = conn.getresponse()
                return answer.status, answer.read()
            except (OSError, http.client.HTTPException) as exc:
                if time.monotonic() >= end:
                    raise HarnessError(f"{self.name}: the web UI on 127.0.0.1:{self.web_port} (guest :8080) did not answer"
                                       f" GET {path} within {deadline:g} s: {exc}; console:\n{self.console.tail(20)}") from None
            finally:
                conn.close()
            time.sleep(2)


def _die_with_parent() -> None:
    """In the child before exec: SIGKILL when the test process dies (an interrupted run leaves no qemu behind)."""
    ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG; kept across exec


def _epoch(iso: str) -> float:
    """'2026-12-02T13:14:52Z' (UTC) -> seconds since the epoch."""
    return float(calendar.timegm(time.strptime(iso, "%Y-%m-%dT%H:%M:%SZ")))


@contextlib.contextmanager
def booted(vm: VM) -> Iterator[VM]:
    """Start ``vm`` and kill it whatever happens (tests power off cleanly themselves when they need to)."""
    vm.start()
    try:
        yield vm
    finally:
        vm.kill()
        vm._qmp_path().unlink(missing_ok=True)


# -------------------------------------------------------------------------------------------
# The HES on the host

class Hes:
    """``wmbus-stream receive`` on 127.0.0.1 with a SQLite database; the guest posts to 10.0.2.2:PORT."""

    USER = "vmtest-gw"

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.port = free_port()
        self.db = workdir / "hes.sqlite"
        self.password = base64.b32encode(os.urandom(10)).decode()
        self.process: subprocess.Popen[str] | None = None

    @property
    def guest_url(self) -> str:
        """The URL the gateway pushes to (slirp maps 10.0.2.2 to the host's 127.0.0.1)."""
        return f"http://10.0.2.2:{self.port}/readings"

    def settings(self) -> list[tuple[str, str]]:
        """The drop-in lines that point the gateway at this HES."""
        return [("receiving.server.url", self.guest_url), ("receiving.server.username", self.USER),
                ("receiving.server.password", self.password)]

    def start(self) -> None:
        pw = self.workdir / "hes-password"
        pw.write_text(self.password + "\n")
        pw.chmod(0o600)
        with (self.workdir / "hes.log").open("w") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "wmbus_stream", "receive", "--listen", f"127.0.0.1:{self.port}", "--db",
                 str(self.db), "--username", self.USER, "--password-file", str(pw)],
                stdout=log, stderr=subprocess.STDOUT, text=True)
        end = time.monotonic() + 60
        while "receiving reports on" not in (self.workdir / "hes.log").read_text():
            if self.process.poll() is not None or time.monotonic() >= end:
                raise HarnessError(f"the host HES did not start:\n{(self.workdir / 'hes.log').read_text()}")
            time.sleep(0.2)

    def stop(self) -> None:
        if self.process is not None:
            self.process.terminate()
            self.process.wait(timeout=60)
            self.process = None

    def readings(self) -> list[tuple[str, str, str]]:
        """(gateway serial, meter ID, heard at) of every reading the HES stored."""
        if not self.db.exists():
            return []
        with contextlib.closing(sqlite3.connect(f"file:{self.db}?mode=ro", uri=True)) as db:
            return [(g, m, h) for g, m, h in db.execute(
                "SELECT h.gateway, r.meter_id, h.heard_at FROM reading r JOIN heard_by h ON h.reading_id = r.id")]

    def log(self) -> str:
        return (self.workdir / "hes.log").read_text()


def rauc_slot(status: dict[str, Any], bootname: str) -> dict[str, Any]:
    """The entry of ``rauc status --output-format=json`` whose bootname is ``bootname`` (A or B)."""
    for entry in status.get("slots", []):
        for _name, slot in entry.items():
            if slot.get("bootname") == bootname:
                return dict(slot)
    raise HarnessError(f"rauc status names no slot with bootname {bootname}: {json.dumps(status)[:2000]}")


def poll(predicate: Callable[[], Any], deadline: float, what: str, context: Callable[[], str] = lambda: "") -> Any:
    """Poll ``predicate`` every 3 s until it is truthy (returned); HarnessError naming ``what`` after ``deadline`` s."""
    end = time.monotonic() + deadline
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() >= end:
            raise HarnessError(f"waited {deadline:g} s for {what}{context()}")
        time.sleep(3)
