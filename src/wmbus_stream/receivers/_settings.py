"""Radio-mode settings as the configurable receivers need them.

A ``radio.mode`` setting (spec section 2) is turned into the mask every telegram of a
configured receiver carries (the dongle does not report the mode per frame, so the mode
it was set to is the best truth), or into a ConfigError naming the key.
"""

from __future__ import annotations

from ..errors import ConfigError, Problem
from ..wire.modes import RADIO_MODES, setting_mask

__all__ = ["check_setting", "mode_mask_of"]


def check_setting(setting: str) -> int:
    """Mask of a ``radio.mode`` setting; raises ConfigError for an unknown one."""
    try:
        return setting_mask(setting)
    except (ValueError, AttributeError):
        raise ConfigError(Problem("radio.mode", str(setting), ", ".join(RADIO_MODES))) from None


def mode_mask_of(setting: str | None) -> int:
    """Mask reported for each telegram of a receiver set to ``setting`` (0 when not known)."""
    return 0 if setting is None else check_setting(setting)
