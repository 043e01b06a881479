"""Builds the filter matcher from the four filter settings of spec section 4."""

from __future__ import annotations

from collections.abc import Iterable

from . import Matcher
from .header import id_key, manufacturer_code
from .modes import setting_mask

__all__ = ["matcher"]


def matcher(
    manufacturers: Iterable[str] = (),
    device_types: Iterable[int] = (),
    ids: Iterable[str] = (),
    radio_mode: str | None = None,
) -> Matcher:
    """A Matcher from validated values; empty lists and ``radio_mode=None`` mean no filter."""
    return Matcher(
        frozenset(manufacturer_code(m) for m in manufacturers),
        frozenset(device_types),
        frozenset(id_key(i) for i in ids),
        setting_mask(radio_mode) if radio_mode else 0,
    )
