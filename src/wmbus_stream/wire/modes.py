"""Radio modes as bit masks: a telegram passes ``radio.mode`` when its mask meets the setting's.

A telegram whose mode the receiver did not report has mask 0 and always passes; ``C1`` with
the frame format unknown is C1A|C1B.
"""

from __future__ import annotations

__all__ = ["S1", "T1", "C1A", "C1B", "RADIO_MODES", "mode_mask", "setting_mask", "mode_name"]

S1, T1, C1A, C1B = 1, 2, 4, 8

_TOKENS = {"S1": S1, "T1": T1, "C1A": C1A, "C1B": C1B, "C1": C1A | C1B}

RADIO_MODES = (
    "S1", "T1", "T1_C1A", "T1_C1B", "T1_C1A_C1B", "C1A", "C1B", "C1A_C1B",
    "C1A_WIDE", "C1B_WIDE", "C1A_C1B_WIDE",
)


def mode_mask(name: str | None) -> int:
    """Mask of a telegram's reported mode (``S1``, ``T1``, ``C1``, ``C1A``, ``C1B``); 0 if unknown."""
    if not name:
        return 0
    return _TOKENS.get(name.upper(), 0)


def setting_mask(setting: str) -> int:
    """Mask of a ``radio.mode`` setting such as ``T1_C1A_C1B``; raises ValueError if invalid."""
    if setting.upper() not in RADIO_MODES:
        raise ValueError(setting)
    mask = 0
    for token in setting.upper().split("_"):
        if token != "WIDE":
            mask |= _TOKENS[token]
    return mask


_NAMES: tuple[str | None, ...] = tuple(
    {S1: "S1", T1: "T1", C1A: "C1A", C1B: "C1B", C1A | C1B: "C1"}.get(mask) for mask in range(16)
)


def mode_name(mask: int) -> str | None:
    """Printable name of a telegram's mode mask (None when unknown)."""
    return _NAMES[mask] if 0 <= mask < 16 else None
