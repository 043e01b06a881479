"""What every command shares: exit codes, the default configuration file, argument types, logging."""

from __future__ import annotations

import argparse
import logging
import os
import re
import sys
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO

if TYPE_CHECKING:
    from ..config.manage import ConfigManager
    from ..config.model import Config

__all__ = ["DEFAULT_CONFIG", "EXIT_CONFIG", "EXIT_FAILURE", "EXIT_OK", "EXIT_USAGE", "address", "load_config", "manager_of",
           "open_input", "positive", "setup_logging", "wired_address", "with_config"]

EXIT_OK, EXIT_FAILURE, EXIT_USAGE, EXIT_CONFIG = 0, 1, 2, 3
DEFAULT_CONFIG = "/etc/wmbus-stream/stream.cfg"


def address(text: str) -> str:
    """An 8-digit receiver address."""
    if not re.fullmatch(r"\d{8}", text):
        raise argparse.ArgumentTypeError(f"{text!r} is not an 8-digit receiver address")
    return text


def wired_address(text: str) -> int:
    """A wired M-Bus address 0..255, decimal or 0xNN."""
    try:
        value = int(text, 0)
    except ValueError:
        value = -1
    if not 0 <= value <= 255:
        raise argparse.ArgumentTypeError(f"{text!r} is not a wired address 0..255 (decimal or 0xNN)")
    return value


def positive(text: str) -> int:
    """A whole number of at least 1."""
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number of at least 1")
    return int(text)


def open_input(path: str) -> BinaryIO:
    """The file at ``path``, or standard input for ``-``."""
    return sys.stdin.buffer if path == "-" else open(path, "rb")  # noqa: SIM115


def load_config(path: str) -> Config:
    """The configuration in ``path`` (ConfigFileError when it cannot be read, ConfigError when invalid)."""
    from ..config import model

    return model.load(path)


def setup_logging(level: str = "info") -> None:
    """Log lines on standard error, with a time stamp unless the journal adds its own."""
    fmt = "%(levelname)s %(name)s: %(message)s"
    if sys.stderr.isatty() or not os.environ.get("JOURNAL_STREAM"):
        fmt = "%(asctime)s " + fmt
    logging.basicConfig(level=level.upper(), format=fmt, stream=sys.stderr)


def with_config(parser: argparse.ArgumentParser) -> None:
    """``--config FILE``, as every command that works on a gateway names it."""
    parser.add_argument("--config", default=DEFAULT_CONFIG, help=f"configuration file (default {DEFAULT_CONFIG})")


def manager_of(args: argparse.Namespace) -> ConfigManager:
    """The manager of ``--config``, on the state directory of the gateway running with it (if any)."""
    from ..config.manage import ConfigManager
    from ..io import control

    path = Path(args.config)
    return ConfigManager(path, control.locate(path))
