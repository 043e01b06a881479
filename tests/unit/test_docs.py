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
