"""``provision`` and ``update status|install|rollback|confirm``: the appliance's own commands (run as root on it).

``provision`` is what ``wmbus-stream-provision.service`` runs at every boot; ``update confirm`` is
what ``wmbus-stream-confirm.service`` runs once the gateway service has started. Exit codes:
0 ok, 1 failure, 3 a drop-in refused or a stream.cfg that would not pass `config check` left unwritten (the device
still came up as it would without the drop-in).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING

from .common import DEFAULT_CONFIG, EXIT_CONFIG, EXIT_FAILURE, EXIT_OK

if TYPE_CHECKING:
    from ..appliance.slots import Tools

__all__ = ["add_provision", "add_update"]

DEFAULT_WITHIN = 300.0


def cmd_provision(args: argparse.Namespace) -> int:
    """Provision this device from the hardware and the boot partition's drop-in (see docs/provisioning.md)."""
    from ..appliance import provision

    roots = provision.Roots(boot=Path(args.boot), sys=Path(args.sys), data=Path(args.data), config=Path(args.config),
                            state=Path(args.state), defaults=Path(args.defaults), admin=args.admin,
                            service_user=args.service_user)
    outcome = provision.provision(roots, time.time())
    print(f"gateway serial {outcome.serial} (from {outcome.source}), host name {outcome.hostname}")
    if outcome.applied:
        print(f"applied {roots.boot / provision.DROPIN} ({', '.join(outcome.applied)}) and deleted it;"
              f" {provision.DONE} says what was done")
    if outcome.web_password_made:
        print(f"made a web UI password for admin: shown on the console and in {roots.boot / provision.PASSWORD_NOTE}")
    for note in outcome.notes:
        print(f"wmbus-stream provision: {note}", file=sys.stderr)
    print(f"{len(outcome.written)} file(s) written or removed" if outcome.written else "nothing to change")
    if outcome.broken:
        print(f"wmbus-stream provision: {roots.config} is not written, it would not pass `config check`:",
              file=sys.stderr)
        for problem in outcome.broken:
            print(problem, file=sys.stderr)
    if outcome.refused:
        print(f"wmbus-stream provision: refused {roots.boot / provision.DROPIN}, nothing in it was applied"
              f" (the reasons are in {roots.boot / provision.ERROR}):", file=sys.stderr)
        for problem in outcome.refused:
            print(problem, file=sys.stderr)
        return EXIT_CONFIG
    return EXIT_CONFIG if outcome.broken else EXIT_OK


def _tools(args: argparse.Namespace) -> Tools:
    from ..appliance.slots import Tools

    return Tools.from_environment(args.rauc, getattr(args, "systemctl", None))


def cmd_update_status(args: argparse.Namespace) -> int:
    """Show the booted and the activated slot and each slot's state, boot status and version."""
    from ..appliance import slots

    current = slots.status(_tools(args))
    if args.json:
        print(json.dumps(current.as_json(), indent=2))
    else:
        sys.stdout.write(current.text())
    return EXIT_OK


def cmd_update_install(args: argparse.Namespace) -> int:
    """Install a signed bundle into the other slot; rauc refuses one the fleet's key did not sign."""
    from ..appliance import slots

    print(f"installing {args.bundle} into the other slot (rauc checks its signature first)", file=sys.stderr)
    after = slots.install(_tools(args), args.bundle)
    target = after.primary_slot
    shown = target.bootname if target else "the other slot"
    version = f", version {target.version}" if target and target.version else ""
    print(f"installed {args.bundle} into slot {shown}{version}; reboot to start slot {shown}")
    return EXIT_OK


def cmd_update_rollback(args: argparse.Namespace) -> int:
    """Make the other slot the one the next boot starts, when it is good."""
    from ..appliance import slots

    target, meaning = slots.rollback(_tools(args))
    print(f"slot {target.bootname} ({target.name}) is activated ({meaning}); reboot to start slot {target.bootname}")
    return EXIT_OK


def cmd_update_confirm(args: argparse.Namespace) -> int:
    """Mark the booted slot good once the gateway service is ready, else fall back (see docs/provisioning.md)."""
    from ..appliance import slots

    print(f"update confirm: waiting up to {args.within:g} s for {slots.SERVICE} to be ready", file=sys.stderr)
    done = slots.confirm(_tools(args), Path(args.data), args.within)
    slot = f"slot {done.slot.bootname}"
    if done.decision is slots.Decision.MARK_GOOD:
        print(f"{slot} marked good: {slots.SERVICE} is ready")
        return EXIT_OK
    if done.decision is slots.Decision.MARK_GOOD_ANYWAY:
        why = ("it was confirmed before for this installation, so the failure is not the update's"
               if done.confirmed_before else "there is no good slot to go back to")
        print(f"{slot} marked good although {slots.SERVICE} is not ready after {args.within:g} s: {why};"
              " see journalctl -u wmbus-stream")
        return EXIT_OK
    print(f"{slot} NOT marked good: {slots.SERVICE} is not ready after {args.within:g} s and this installation"
          " was never confirmed; rebooting (the bootloader starts the other slot after its tries)")
    return EXIT_FAILURE


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not 0 <= value <= 86400:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds from 0 to 86400")
    return value


def add_provision(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Register ``provision``."""
    p = sub.add_parser(
        "provision", help="provision this appliance at boot: serial, drop-in, passwords, network (as root)",
        description="Provision this appliance (run at every boot by wmbus-stream-provision.service): the gateway"
                    " serial from the drop-in, the provisioned stream.cfg or the hardware; the boot partition's"
                    " drop-in wmbus-stream.cfg applied and deleted (or refused whole, with the reasons beside it);"
                    " SSH keys, SSH password login, the web UI password, the network and the host name."
                    " Every path can point into a test tree. See docs/provisioning.md.")
    p.add_argument("--boot", metavar="DIR", default="/boot/efi", help="the boot partition (default %(default)s)")
    p.add_argument("--defaults", metavar="FILE", default="/usr/share/wmbus-stream/stream.cfg",
                   help="the image's baked configuration, the base of the first boot's stream.cfg (default %(default)s)")
    p.add_argument("--config", metavar="FILE", default=DEFAULT_CONFIG,
                   help="the provisioned configuration (default %(default)s)")
    p.add_argument("--state", metavar="DIR", default="/var/lib/wmbus-stream",
                   help="the gateway's state folder, for the web UI password (default %(default)s)")
    p.add_argument("--sys", metavar="DIR", default="/",
                   help="the system root: etc/, home/, run/, sys/, proc/, dev/console under it; /etc/shadow is bound"
                        " and the host name set only when it is / (default %(default)s)")
    p.add_argument("--data", metavar="DIR", default="/data",
                   help="the data partition, where the settings that outlive /run are kept (default %(default)s)")
    p.add_argument("--admin", metavar="USER", default="admin", help="the login user (default %(default)s)")
    p.add_argument("--service-user", metavar="USER", default="wmbus-stream",
                   help="the user the gateway runs as, owner of its files (default %(default)s)")
    p.set_defaults(func=cmd_provision)


def add_update(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Register ``update status|install|rollback|confirm``."""
    from ..appliance.slots import RAUC_ENV, SYSTEMCTL_ENV

    p = sub.add_parser("update", help="A/B updates through RAUC: status, install BUNDLE, rollback, confirm",
                       description="Signed A/B updates of the appliance through RAUC. See docs/provisioning.md.")
    tools = argparse.ArgumentParser(add_help=False)
    tools.add_argument("--rauc", metavar="PROGRAM", help=f"the rauc program (default: ${RAUC_ENV}, else rauc)")
    commands = p.add_subparsers(dest="update_command", metavar="COMMAND", required=True)
    s = commands.add_parser("status", parents=[tools], help="the booted and activated slot, each slot's state and version",
                            description="Which slot runs, which one the next boot starts, and each slot's state,"
                                        " boot status (good or bad) and installed version, from rauc status.")
    s.add_argument("--json", action="store_true", help="JSON instead of text")
    s.set_defaults(func=cmd_update_status)
    i = commands.add_parser("install", parents=[tools], help="install a signed bundle into the other slot",
                            description="Install a bundle into the slot that is not running and make it the one the"
                                        " next boot starts. rauc refuses a bundle the fleet's key did not sign (its"
                                        " reason is shown as it gives it). Reboot to start the new slot; it is"
                                        " marked good once the gateway is ready (update confirm).")
    i.add_argument("bundle", metavar="BUNDLE", help="a .raucb bundle signed with the fleet's key")
    i.set_defaults(func=cmd_update_install)
    r = commands.add_parser("rollback", parents=[tools],
                            help="boot the other slot next when it is good (or cancel an update not booted yet)",
                            description="Make the other slot the one the next boot starts, when its boot status is"
                                        " good. While an installed update waits for its reboot, make the running"
                                        " slot the next one again instead.")
    r.set_defaults(func=cmd_update_rollback)
    c = commands.add_parser("confirm", parents=[tools],
                            help="mark the booted slot good once wmbus-stream.service is ready, else reboot",
                            description="Wait up to --within seconds for wmbus-stream.service to be active, then"
                                        " mark the booted slot good. When it is not ready in time: a slot"
                                        " confirmed before for its current installation (or one without a good"
                                        " slot to go back to) is marked good anyway; a fresh slot is not, and the"
                                        " device reboots so the bootloader can fall back after its tries.")
    c.add_argument("--within", metavar="SECONDS", type=_seconds, default=DEFAULT_WITHIN,
                   help=f"how long to wait for the service (default {DEFAULT_WITHIN:g})")
    c.add_argument("--data", metavar="DIR", default="/data",
                   help="the data partition, for DATA/rauc/confirmed-SLOT (default %(default)s)")
    c.add_argument("--systemctl", metavar="PROGRAM",
                   help=f"the systemctl program (default: ${SYSTEMCTL_ENV}, else systemctl)")
    c.set_defaults(func=cmd_update_confirm)
