"""First-boot and every-boot provisioning of the appliance: serial, drop-in, logins, network, host name.

Strategy: ``provision`` first works out everything it will write (``prepare``: the drop-in
checked, merged into the gateway's stream.cfg and validated by the configuration model, the
login password hashed) and only then writes (``apply``), so a drop-in with one problem
applies nothing. A refused drop-in stays on the boot partition for the installer to fix; the
reason goes to the console and to ``wmbus-stream-provision-error.txt`` beside it; the device
still comes up as it would without one. An applied drop-in is deleted (it holds secrets).
What the drop-in asked for that lives outside the data partition (sshd's password login, the
shadow entry, the network file, the host name) is kept in ``DATA/provision/settings.cfg`` and
written again on every boot under /run. Running it twice changes nothing.

Every path is under a root of ``Roots`` so the unit tier runs it on a temporary tree; what only
a real root may do (bind-mounting the shadow copy, setting the host name, changing owners) is
done when ``--sys /``.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import os
import shutil
import socket
import subprocess
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path

from ..atomic import write_atomic
from ..config import model, properties
from ..errors import ConfigError, GatewayIOError, Problem
from ..web.auth import DEFAULT_USER, PASSWORD_FILE, generate_password, write_password
from . import dropin, serial

__all__ = ["DROPIN", "DONE", "ERROR", "NETWORK_FILE", "PASSWORD_NOTE", "SETTINGS_FILE", "SSHD_FILE", "SHADOW_COPY",
           "Outcome", "Plan", "Roots", "apply", "authorized_keys", "console", "done_text", "error_text",
           "hash_login_password", "merged_config", "network_file", "password_text", "prepare", "provision",
           "shadow_with"]

DROPIN = "wmbus-stream.cfg"
ERROR = "wmbus-stream-provision-error.txt"
DONE = "wmbus-stream-provisioned.txt"
PASSWORD_NOTE = "wmbus-stream-password.txt"
SETTINGS_FILE = "provision/settings.cfg"  # under DATA
RUN = "run/wmbus-stream"  # under SYS: sshd's Include glob is /run/wmbus-stream/sshd*.conf
SSHD_FILE = f"{RUN}/sshd-password.conf"
SHADOW_COPY = f"{RUN}/shadow"
NETWORK_FILE = "run/systemd/network/10-wmbus-provisioned.network"
PASSWORD_LOGIN = "provision.ssh.password.hash"  # the settings file's key for the admin's SHA-512 crypt hash
APPLIED = "provision.applied.sha256"  # the settings file's key for the SHA-256 of the drop-in last applied
SERIAL = "provision.serial"  # the settings file's key for the serial provisioning chose (kept across boots)


@dataclass(frozen=True, slots=True)
class Roots:
    """Where provisioning reads and writes; the defaults are the appliance's own paths."""

    boot: Path = Path("/boot/efi")
    sys: Path = Path("/")
    data: Path = Path("/data")
    config: Path = Path("/etc/wmbus-stream/stream.cfg")
    state: Path = Path("/var/lib/wmbus-stream")
    defaults: Path = Path("/usr/share/wmbus-stream/stream.cfg")
    admin: str = "admin"
    service_user: str = "wmbus-stream"

    def system(self, path: str) -> Path:
        """``path`` (absolute on the device) under the system root."""
        return self.sys / path.lstrip("/")

    @property
    def real(self) -> bool:
        """Whether this runs on the device itself (``--sys /``): only then are mounts and the host name touched."""
        return os.path.realpath(self.sys) == "/"


@dataclass(frozen=True, slots=True, repr=False)
class Plan:
    """Everything one run writes, worked out and checked before anything is written."""

    serial: str
    source: str
    config_text: str | None  # the new stream.cfg; None leaves the file as it is
    settings: dict[str, str]  # DATA/provision/settings.cfg after this run
    ssh_keys: tuple[str, ...] = ()
    web_password: str | None = None
    applied: tuple[str, ...] = ()  # the drop-in's keys, when one is applied
    notes: tuple[str, ...] = ()
    broken: tuple[Problem, ...] = ()  # why stream.cfg cannot be written (left as it is)

    @property
    def hostname(self) -> str:
        return self.settings.get("provision.hostname") or f"wmbus-{self.serial}"


@dataclass(slots=True)
class Outcome:
    """What a run did: the serial and where it came from, the drop-in applied or refused, files written."""

    serial: str
    source: str
    hostname: str
    applied: tuple[str, ...] = ()
    refused: list[Problem] = field(default_factory=list)
    broken: list[Problem] = field(default_factory=list)  # why stream.cfg was not written (no drop-in to blame)
    web_password_made: bool = False
    written: list[Path] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


# -- pure: text in, text out ------------------------------------------------------------------


def merged_config(base: Mapping[str, str], stream: Mapping[str, str], serial_number: str) -> dict[str, str]:
    """The provisioned stream.cfg values: the current (or baked default) file's, the drop-in's over them, the serial."""
    values = {**base, **stream}
    values["gateway.serial"] = serial_number
    return values


def authorized_keys(existing: str, keys: tuple[str, ...]) -> str:
    """``existing`` authorized_keys text with each of ``keys`` appended unless it is there already."""
    present = {" ".join(line.split()[:2]) for line in existing.splitlines() if line.strip()}
    lines = [line for line in existing.splitlines() if line.strip()]
    lines += [key for key in keys if " ".join(key.split()[:2]) not in present]
    return "".join(f"{line}\n" for line in lines)


def shadow_with(shadow: str, user: str, password_hash: str) -> str:
    """``/etc/shadow`` text with ``user``'s password field set to ``password_hash``; ValueError if no such user."""
    out, found = [], False
    for line in shadow.splitlines():
        fields = line.split(":")
        if fields[0] == user and len(fields) >= 2:
            fields[1], found = password_hash, True
        out.append(":".join(fields))
    if not found:
        raise ValueError(f"no user {user!r} in the shadow file")
    return "".join(f"{line}\n" for line in out)


SSHD_PASSWORD_LOGIN = (
    "# Written by wmbus-stream provision at every boot: the drop-in's provision.ssh.password turned\n"
    "# password login on (sshd takes the first value it reads; 50-wmbus.conf includes this first).\n"
    "PasswordAuthentication yes\n"
)


def network_file(settings: Mapping[str, str]) -> str | None:
    """The systemd-networkd file of a static address (and name servers), or None to keep DHCP alone."""
    address = settings.get("provision.network.address", "")
    dns = [server for server in settings.get("provision.network.dns", "").split(",") if server]
    if not address and not dns:
        return None
    lines = ["# Written by wmbus-stream provision at every boot from /data/provision/settings.cfg.",
             "[Match]", "Name=en* eth*", "", "[Network]"]
    if address:
        lines.append(f"Address={address}")
        if settings.get("provision.network.gateway"):
            lines.append(f"Gateway={settings['provision.network.gateway']}")
    else:
        lines.append("DHCP=yes")
    lines += [f"DNS={server}" for server in dns]
    return "\n".join(lines) + "\n"


def _stamp(now: float) -> str:
    return dt.datetime.fromtimestamp(now, dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def done_text(plan: Plan, now: float) -> str:
    """``wmbus-stream-provisioned.txt``: serial, its source, when, and which keys were applied (no values)."""
    return (f"# wmbus-stream provisioning applied {DROPIN} and deleted it (it held secrets).\n"
            f"serial={plan.serial}\nsource={plan.source}\ntime={_stamp(now)}\nhostname={plan.hostname}\n"
            f"keys={','.join(plan.applied)}\n")


def error_text(problems: list[Problem], now: float) -> str:
    """``wmbus-stream-provision-error.txt``: why the drop-in was refused, one problem a line."""
    return (f"wmbus-stream provisioning refused {DROPIN} at {_stamp(now)}: nothing in it was applied.\n"
            f"Fix these lines and boot again ({DROPIN} stays until it is applied):\n"
            + "".join(f"{problem}\n" for problem in problems))


def password_text(password: str, plan: Plan) -> str:
    """``wmbus-stream-password.txt``: the web UI password made for this gateway."""
    return (f"wmbus-stream gateway {plan.serial} (host {plan.hostname}): web UI login\n"
            f"user: {DEFAULT_USER}\npassword: {password}\n"
            "Read it, then delete this file: it is the only copy in clear. Change it with `wmbus-stream passwd`.\n")


# -- reading --------------------------------------------------------------------------------


def _values(path: Path, *, option: str = "") -> tuple[dict[str, str], properties.Properties | None, list[Problem]]:
    """A configuration-like file's values, the document (a template for rewriting it) and its problems.

    A file that is not there has no values, and no problem unless it is the one ``option`` names.
    """
    try:
        document = properties.read(path)
    except FileNotFoundError:
        return {}, None, [Problem(option, str(path), "an existing file: the image's baked configuration")] \
            if option else []
    except OSError as exc:
        return {}, None, [Problem("<file>", str(path), f"a readable file ({exc.strerror or exc})")]
    return dict(document.values), document, [model.private(p) for p in document.problems]


def _read_dropin(roots: Roots) -> bytes | None:
    """The drop-in's bytes, None when there is none; ConfigError for a link, a folder or a device by its name."""
    path = roots.boot / DROPIN
    if path.is_symlink():  # never read through it: it could point at any file of the device
        raise ConfigError(Problem(DROPIN, "a symbolic link", "a regular file (a link is not followed)"))
    try:
        return properties.read_bytes(path)
    except FileNotFoundError:
        return None


def hash_login_password(password: str, openssl: str = "openssl") -> str:
    """A SHA-512 crypt hash of ``password`` by ``openssl passwd -6 -stdin`` (the format /etc/shadow takes)."""
    try:
        done = subprocess.run([openssl, "passwd", "-6", "-stdin"], input=password + "\n", capture_output=True,
                              text=True, timeout=60, check=False)
    except OSError as exc:
        raise GatewayIOError(f"cannot run {openssl} to hash the login password: {exc.strerror or exc}") from None
    hashed = done.stdout.strip()
    if done.returncode != 0 or not hashed.startswith("$6$"):
        raise GatewayIOError(f"{openssl} passwd -6 failed: {done.stderr.strip() or 'no hash printed'}")
    return hashed


def _base(roots: Roots) -> tuple[dict[str, str], properties.Properties | None, Path, str | None, list[Problem], str]:
    """The values the drop-in's keys go into: (values, template, file, its serial, its problems, a note).

    The provisioned stream.cfg when it is valid; on first boot the baked defaults; a
    provisioned file that lost required keys (cut short by a power cut, empty) is rebuilt from
    the defaults with its own values over them, so it keeps its serial.
    """
    current, document, problems = _values(roots.config)
    if document is not None and not problems:
        problems = _problems(current)
    cut = _complete_lines(roots.config) if problems and document is not None and document.lines else None
    if cut is not None:  # a power cut in the middle of a line: the lines before it are what is left
        current, document = dict(cut.values), cut
        problems = [model.private(p) for p in cut.problems] or _problems(current)
    if document is not None and not problems:
        note = f"{roots.config} ended in a line cut short: rewritten without it" if cut is not None else ""
        return current, document, roots.config, current.get("gateway.serial"), [], note
    if document is not None and all(problem.allowed == model.REQUIRED for problem in problems):
        values, template, defaults_problems = _values(roots.defaults, option="--defaults")
        rebuilt = {**values, **current}
        defaults_problems = defaults_problems or _problems(rebuilt)
        note = (f"{roots.config} lacked {', '.join(p.key for p in problems)} (cut short?): rebuilt from"
                f" {roots.defaults}, keeping its own values")
        return rebuilt, template, roots.defaults, current.get("gateway.serial"), defaults_problems, note
    if document is not None or problems:
        return current, document, roots.config, current.get("gateway.serial"), problems, ""
    values, template, problems = _values(roots.defaults, option="--defaults")
    return values, template, roots.defaults, None, problems or _problems(values), ""


def _complete_lines(path: Path) -> properties.Properties | None:
    """The file's lines up to its last newline, when it ends in an unfinished one; else None."""
    try:
        data = properties.read_bytes(path)
    except (OSError, ConfigError):
        return None
    if data.endswith(b"\n"):
        return None
    return properties.parse(data[:data.rfind(b"\n") + 1])


def _problems(values: Mapping[str, str]) -> list[Problem]:
    """What ``wmbus-stream config check`` says of a file holding ``values`` (empty when it would run)."""
    try:
        model.require(model.parse(values))
    except ConfigError as exc:
        return exc.problems
    return []


def _account_problems(roots: Roots, found: dropin.DropIn) -> list[Problem]:
    """Why the drop-in's SSH keys or login password cannot go to the admin user (no such user, no shadow entry)."""
    if not found.ssh_keys and not found.ssh_password:
        return []
    passwd, shadow = roots.system("etc/passwd"), roots.system("etc/shadow")
    wanted = "provision.ssh.key/provision.ssh.password"
    try:
        accounts = _accounts(roots, strict=True)
    except (OSError, UnicodeDecodeError) as exc:
        return [Problem("--admin", roots.admin, f"a user of a readable UTF-8 {passwd}, for {wanted} ({_why(exc)})")]
    if roots.admin not in accounts:
        return [Problem("--admin", roots.admin, f"a user of {passwd}, for {wanted} (there is no such user)")]
    keys = roots.system(accounts[roots.admin][2]) / ".ssh/authorized_keys"
    if found.ssh_keys and keys.exists():
        try:
            keys.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            return [Problem("--admin", roots.admin,
                            f"a user whose {keys} is readable UTF-8 text, for provision.ssh.key ({_why(exc)})")]
    if not found.ssh_password:
        return []
    try:
        shadow_with(shadow.read_text(encoding="utf-8"), roots.admin, "x")
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        return [Problem("--admin", roots.admin,
                        f"a user of a readable UTF-8 {shadow}, for provision.ssh.password ({_why(exc)})")]
    return []


def _why(exc: Exception) -> str:
    if isinstance(exc, UnicodeDecodeError):
        return "it is not UTF-8 text"
    if isinstance(exc, OSError):
        return exc.strerror or str(exc)
    return str(exc)


def prepare(roots: Roots, found: dropin.DropIn, *, hasher: Callable[[str], str] = hash_login_password) -> Plan:
    """Check the drop-in against the current files and work out every write; ConfigError when it is refused.

    Without a drop-in a configuration that cannot be written is not an error of this call: the
    plan leaves stream.cfg alone and names why in ``broken``.
    """
    refused = list(found.problems)
    base, template, where, configured, broken, note = _base(roots)
    notes = [note] if note else []
    stored, _, _ = _values(roots.data / SETTINGS_FILE)
    if broken and found.given:
        refused += [Problem(p.key, p.value, f"{p.allowed} (in {where}, which the drop-in's keys go into)")
                    for p in broken]
    chosen = serial.choose(found.stream.get("gateway.serial"), configured, roots.sys, stored.get(SERIAL))
    if chosen is None:
        raise GatewayIOError("no serial: no drop-in gateway.serial, no provisioned stream.cfg, device tree, DMI,"
                             " wired MAC address or machine id")
    number, source = chosen
    config_text: str | None = None
    if not broken:
        merged = merged_config(base, found.stream, number)
        problems = _problems(merged)
        if problems and found.given:
            refused += problems
        elif problems:
            broken = problems
        else:
            config_text = model.to_text(model.parse(merged), template=template)
    settings = {**stored, **found.settings, SERIAL: number}
    if found.settings.get("provision.network.address") == "" and "provision.network.gateway" not in found.settings:
        settings["provision.network.gateway"] = ""  # back to DHCP: its router goes too
    refused += dropin.network_problems(settings)
    refused += _account_problems(roots, found)
    if refused:
        raise ConfigError([dropin.masked(problem) for problem in refused])
    if found.ssh_password is not None:  # last: every check has passed
        settings[PASSWORD_LOGIN] = hasher(found.ssh_password) if found.ssh_password else ""
    settings = {key: value for key, value in settings.items() if value}
    return Plan(number, source, config_text, settings, found.ssh_keys, found.web_password, found.given, tuple(notes),
                tuple(dropin.masked(problem) for problem in broken) if not found.given else ())


# -- writing --------------------------------------------------------------------------------


def _accounts(roots: Roots, *, strict: bool = False) -> dict[str, tuple[int, int, str]]:
    """name -> (uid, gid, home) from SYS/etc/passwd; empty when unreadable unless ``strict`` (then the error)."""
    found = {}
    try:
        text = roots.system("etc/passwd").read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError):
        if strict:
            raise
        return {}
    for line in text.splitlines():
        fields = line.split(":")
        if len(fields) >= 7 and fields[2].isdigit() and fields[3].isdigit():
            found[fields[0]] = (int(fields[2]), int(fields[3]), fields[5])
    return found


def _own(path: Path, user: str, roots: Roots) -> None:
    """Give ``path`` to ``user`` (as SYS/etc/passwd knows it) when running as root; else leave it."""
    account = _accounts(roots).get(user)
    if account is not None and os.geteuid() == 0:
        os.chown(path, account[0], account[1], follow_symlinks=False)


def _write(path: Path, text: str, mode: int, written: list[Path]) -> None:
    """Write ``text`` atomically unless the file already holds it (a second run writes nothing)."""
    try:
        if path.read_text(encoding="utf-8") == text and path.stat().st_mode & 0o777 == mode:
            return
    except (OSError, UnicodeDecodeError):
        pass
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        write_atomic(path, text, mode)
    except PermissionError:
        # vfat (the boot partition, umask=0077) refuses a chmod its mount options cannot show;
        # its files are 0700 to root alone whatever is asked.
        write_atomic(path, text, 0o700)
    written.append(path)


def _folder(path: Path, mode: int) -> None:
    """Make ``path`` when missing, with ``mode`` whatever the umask (the unit runs with 0077)."""
    if not path.is_dir():
        path.mkdir(parents=True)
        path.chmod(mode)


def _remove(path: Path, written: list[Path]) -> None:
    try:
        path.unlink()
    except FileNotFoundError:
        return
    written.append(path)


def _home(roots: Roots) -> Path:
    """The admin's home (from SYS/etc/passwd, else /home/ADMIN), made from /etc/skel when missing."""
    account = _accounts(roots).get(roots.admin)
    home = roots.system(account[2] if account else f"/home/{roots.admin}")
    if not home.exists():
        skel = roots.system("etc/skel")
        if skel.is_dir():
            shutil.copytree(skel, home, symlinks=True)
        else:
            home.mkdir(parents=True)
        home.chmod(0o700)
        for path in [home, *home.rglob("*")]:
            _own(path, roots.admin, roots)
    return home


def _mounted(point: str) -> bool:
    try:
        with open("/proc/self/mountinfo", encoding="utf-8") as mounts:
            return any(line.split()[4] == point for line in mounts if len(line.split()) > 4)
    except OSError:
        return False


def _password_login(roots: Roots, settings: Mapping[str, str], written: list[Path], notes: list[str]) -> None:
    """sshd's Include file and the shadow copy with the admin's hash, bound over /etc/shadow on a real root.

    A stored hash that cannot be applied (the user or the shadow file gone) leaves keys-only
    login and a note: it must not stop every later boot.
    """
    hashed = settings.get(PASSWORD_LOGIN, "")
    copy, conf = roots.system(SHADOW_COPY), roots.system(SSHD_FILE)
    if roots.real and _mounted("/etc/shadow"):
        subprocess.run(["umount", "/etc/shadow"], check=True, timeout=60)  # a second run in one boot
    original = roots.system("etc/shadow")
    text = None
    if hashed:
        try:
            text = shadow_with(original.read_text(encoding="utf-8"), roots.admin, hashed)
        except (OSError, UnicodeDecodeError, ValueError) as exc:
            notes.append(f"the stored login password of {roots.admin} is not applied ({_why(exc)}):"
                         " SSH takes keys only")
    if text is None:
        _remove(conf, written)
        _remove(copy, written)
        return
    _folder(copy.parent, 0o700)
    info = original.stat()
    _write(copy, text, info.st_mode & 0o777, written)
    if os.geteuid() == 0:
        os.chown(copy, info.st_uid, info.st_gid)
    _write(conf, SSHD_PASSWORD_LOGIN, 0o644, written)
    if roots.real:
        subprocess.run(["mount", "--bind", str(copy), "/etc/shadow"], check=True, timeout=60)


def console(roots: Roots, lines: list[str]) -> None:
    """Write lines to SYS/dev/console (the screen and the serial console of the device); silent when there is none."""
    flags = os.O_WRONLY | os.O_APPEND | os.O_NOCTTY | getattr(os, "O_CLOEXEC", 0)
    try:
        fd = os.open(roots.system("dev/console"), flags)
    except OSError:
        return
    try:
        os.write(fd, "".join(f"wmbus-stream: {line}\n" for line in lines).encode("utf-8", "replace"))
    except OSError:
        pass
    finally:
        os.close(fd)


def apply(roots: Roots, plan: Plan, now: float) -> Outcome:
    """Write what ``plan`` holds, then what every boot writes; returns what was done."""
    outcome = Outcome(plan.serial, plan.source, plan.hostname, plan.applied, notes=list(plan.notes),
                      broken=list(plan.broken))
    written = outcome.written
    if plan.config_text is not None:
        _folder(roots.config.parent, 0o750)
        _write(roots.config, plan.config_text, 0o600, written)
        for path in (roots.config.parent, roots.config):
            _own(path, roots.service_user, roots)
    settings_path = roots.data / SETTINGS_FILE
    _folder(settings_path.parent, 0o700)
    _write(settings_path, properties.render(plan.settings, header=("provisioning settings (wmbus-stream provision)",)),
           0o600, written)
    home = _home(roots)
    if plan.ssh_keys:
        ssh = home / ".ssh"
        _folder(ssh, 0o700)
        keys = ssh / "authorized_keys"
        existing = keys.read_text(encoding="utf-8") if keys.exists() else ""
        _write(keys, authorized_keys(existing, plan.ssh_keys), 0o600, written)
        for path in (ssh, keys):
            _own(path, roots.admin, roots)
    _password_login(roots, plan.settings, written, outcome.notes)
    text = network_file(plan.settings)
    if text is None:
        _remove(roots.system(NETWORK_FILE), written)
    else:
        _folder(roots.system(NETWORK_FILE).parent, 0o755)  # networkd reads it as systemd-network
        _write(roots.system(NETWORK_FILE), text, 0o644, written)
    if roots.real:
        socket.sethostname(plan.hostname)
    _web_password(roots, plan, outcome)
    if plan.applied:
        _on_boot(outcome, lambda: _remove(roots.boot / DROPIN, written))
        _on_boot(outcome, lambda: _write(roots.boot / DONE, done_text(plan, now), 0o600, written))
        _on_boot(outcome, lambda: _remove(roots.boot / ERROR, written))
    elif not os.path.lexists(roots.boot / DROPIN):
        _on_boot(outcome, lambda: _remove(roots.boot / ERROR, written))  # the installer took the refused file away
    return outcome


def _on_boot(outcome: Outcome, write: Callable[[], None]) -> bool:
    """Run a write on the boot partition; a read-only or full one is a note, not a failure of the boot."""
    try:
        write()
    except OSError as exc:
        outcome.notes.append(f"cannot write on the boot partition: {exc.strerror or exc} ({exc.filename})")
        return False
    return True


def _web_password(roots: Roots, plan: Plan, outcome: Outcome) -> None:
    """The drop-in's web password, else a random one when none is set yet (shown on the console, in BOOT)."""
    password = plan.web_password
    if password is None:
        if (roots.state / PASSWORD_FILE).exists():
            return
        password = generate_password()
        outcome.web_password_made = True
        # A boot partition that takes no note (read-only) leaves the console as the one place it shows.
        _on_boot(outcome, lambda: _write(roots.boot / PASSWORD_NOTE, password_text(str(password), plan), 0o600,
                                         outcome.written))
    else:  # an older random one: no longer the password
        _on_boot(outcome, lambda: _remove(roots.boot / PASSWORD_NOTE, outcome.written))
    path = write_password(roots.state, DEFAULT_USER, password)
    outcome.written.append(path)
    for owned in (roots.state, path):
        _own(owned, roots.service_user, roots)
    if outcome.web_password_made:
        console(roots, [f"web UI password for {DEFAULT_USER}: {password}",
                        f"(also in {PASSWORD_NOTE} on the boot partition: read it, then delete it)"])


def provision(roots: Roots, now: float, *, hasher: Callable[[str], str] = hash_login_password) -> Outcome:
    """One provisioning run: the drop-in applied (or refused with its reasons), then every boot's files."""
    refused: list[Problem] = []
    plan = None
    again = False
    stored, _, _ = _values(roots.data / SETTINGS_FILE)
    try:
        data = _read_dropin(roots)
        digest = "" if data is None else hashlib.sha256(data).hexdigest()
        again = bool(digest) and stored.get(APPLIED) == digest  # applied, but the boot partition kept it
        if data is not None and not again:
            plan = prepare(roots, dropin.read(data), hasher=hasher)
            plan = replace(plan, settings={**plan.settings, APPLIED: digest})
    except ConfigError as exc:
        refused = exc.problems
    if plan is None:
        plan = prepare(roots, dropin.DropIn(), hasher=hasher)
    if refused:
        error = error_text(refused, now)
        console(roots, [line.removeprefix("wmbus-stream ") for line in error.splitlines()])
    if plan.broken:
        console(roots, [f"{roots.config} is not written: " + "; ".join(map(str, plan.broken))])
    outcome = apply(roots, plan, now)
    if refused:
        _on_boot(outcome, lambda: _write(roots.boot / ERROR, error, 0o600, []))
    if again:
        outcome.notes.append(f"{DROPIN} was applied at an earlier boot and is not applied again; delete it")
        _on_boot(outcome, lambda: _remove(roots.boot / DROPIN, outcome.written))
    outcome.refused = refused
    console(roots, [f"gateway serial {outcome.serial} (from {outcome.source}), host name {outcome.hostname}"])
    return outcome
