"""The documentation stays true to the code: every configuration key is documented as it is."""

from __future__ import annotations

from pathlib import Path

from wmbus_stream.config.keys import KEYS, Key

DOCS = Path(__file__).resolve().parents[2] / "docs"


def key_row(key: Key) -> str:
    """The row of docs/configuration.md's key table for ``key``."""
    default = f"`{key.default}`" if key.default else "(empty)"
    flags = ", ".join(name for name, on in (("secret", key.secret), ("device", key.device_specific),
                                            ("restart", key.restart), ("required", key.required)) if on)
    return f"| `{key.name}` | {default} | {key.allowed} | {key.description} | {flags} |"


def test_every_key_is_documented_with_its_default_allowed_values_and_flags() -> None:
    table = [line for line in (DOCS / "configuration.md").read_text(encoding="utf-8").splitlines()
             if line.startswith("| `")]
    expected = [key_row(key) for key in KEYS]
    assert table == expected, "docs/configuration.md's key table differs from config/keys.py:\n" + "\n".join(expected)


def test_receivers_md_states_the_default_baud_rate_of_each_receiver() -> None:
    from wmbus_stream.config.keys import PROTOCOL_BAUD_RATES

    rows = {line.split("|")[1].strip(): line for line in (DOCS / "receivers.md").read_text(encoding="utf-8").splitlines()
            if line.startswith("| `")}
    for protocol, rate in PROTOCOL_BAUD_RATES.items():
        shown = f"{int(rate):,} Bd".replace(",", " ")
        assert shown in rows[f"`{protocol}`"], f"docs/receivers.md's {protocol} row does not say {shown}"


def test_fleet_md_lists_every_key_under_what_a_sync_may_do_with_it() -> None:
    """docs/fleet.md's table of keys a sync sets by default, only when allowed, or never."""
    import re

    from wmbus_stream.config.keys import SYNC_FREE, SYNC_NEVER, SYNC_OWNER

    text = (DOCS / "fleet.md").read_text(encoding="utf-8")
    for label, kind in (("by default", SYNC_FREE), ("only keys the owner allows", SYNC_OWNER), ("never", SYNC_NEVER)):
        [row] = [line for line in text.splitlines() if line.startswith(f"| {label} |")]
        documented = re.findall(r"`([a-z0-9._-]+)`", row.split("|")[2])
        assert documented == [key.name for key in KEYS if key.sync == kind], f"docs/fleet.md row {label!r}"


def test_provisioning_md_documents_every_provision_key() -> None:
    """docs/provisioning.md's table of the drop-in's keys lists exactly appliance/dropin.py's keys, in its order."""
    import re

    from wmbus_stream.appliance.dropin import PROVISION_KEYS

    rows = re.findall(r"^\| `(provision\.[a-z.]+)` \|", (DOCS / "provisioning.md").read_text(encoding="utf-8"),
                      re.MULTILINE)
    assert rows == [key.name for key in PROVISION_KEYS]
