"""The ``wmbus-stream config check FILE`` command: one line per problem, exit 0 or 3."""

from __future__ import annotations

import os
import sys
from typing import TextIO

from .model import check_file

__all__ = ["EXIT_OK", "EXIT_CONFIG", "check_command"]

EXIT_OK = 0
EXIT_CONFIG = 3


def check_command(path: str | os.PathLike[str], out: TextIO | None = None) -> int:
    """Print every problem of the file as ``KEY: invalid value 'V'; allowed: ...``."""
    stream = out if out is not None else sys.stdout
    problems = check_file(path)
    for problem in problems:
        print(problem, file=stream)
    if problems:
        return EXIT_CONFIG
    print(f"{os.fspath(path)}: ok", file=stream)
    return EXIT_OK
