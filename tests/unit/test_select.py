"""The twin selector: the environment flags, a missing extension, and one import direction.

Each case runs in a fresh interpreter, because the choice is made once per process; a
missing extension is a real ``ImportError`` from a meta-path finder that refuses it.
"""

from __future__ import annotations

import ast
import os
import subprocess
import sys
from pathlib import Path

import pytest

import wmbus_stream

SOURCE = Path(wmbus_stream.__file__).parent
COMPILED_BUILT = list((SOURCE / "wire").glob("_cwire*.so"))

PURE = ["pure", "wmbus_stream.wire._pywire", "wmbus_stream.wire._pywire", "wmbus_stream.wire._pystream"]
COMPILED = ["compiled", "wmbus_stream.wire._cwire", "wmbus_stream.wire._cwire", "wmbus_stream.wire._cstream"]

PROBE = """
import sys
if {hide}:
    class Hide:
        def find_spec(self, name, path=None, target=None):
            if name == "wmbus_stream.wire._cwire":
                raise ImportError("no module named wmbus_stream.wire._cwire (hidden by the test)")
    sys.meta_path.insert(0, Hide())
import wmbus_stream
from wmbus_stream import wire
print(wmbus_stream.implementation(), wire.crc16.__module__, wire.Matcher.__module__, wire.Cmex50Scanner.__module__)
"""


def probe(hide: bool, **flags: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("WMBUS_STREAM_")} | flags
    return subprocess.run([sys.executable, "-c", PROBE.format(hide=hide)], env=env, capture_output=True, text=True,
                          timeout=60, check=False)


def test_no_extensions_forces_the_pure_twin():
    result = probe(False, WMBUS_STREAM_NO_EXTENSIONS="1")
    assert result.stdout.split() == PURE, result.stderr


def test_a_missing_extension_falls_back_to_the_pure_twin_unless_required():
    result = probe(True)
    assert result.stdout.split() == PURE, result.stderr
    result = probe(True, WMBUS_STREAM_REQUIRE_EXTENSIONS="1")
    assert result.returncode != 0
    assert "ExtensionMissingError: compiled extension wmbus_stream.wire._cwire is missing" in result.stderr
    assert "unset WMBUS_STREAM_REQUIRE_EXTENSIONS" in result.stderr


@pytest.mark.skipif(not COMPILED_BUILT, reason="the compiled twin is not built in this checkout")
def test_the_compiled_twin_is_chosen_whole_when_present():
    result = probe(False, WMBUS_STREAM_REQUIRE_EXTENSIONS="1")
    assert result.stdout.split() == COMPILED, result.stderr


def imported(path: Path) -> set[str]:
    """Every module name ``path`` imports, relative ones resolved against the package."""
    package = path.relative_to(SOURCE.parent).with_suffix("").parts[:-1]
    names = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = ".".join(package[: len(package) - node.level + 1]) if node.level else ""
            module = ".".join(p for p in (base, node.module or "") if p)
            names |= {module} | {f"{module}.{alias.name}" for alias in node.names}
    return names


def test_the_selector_imports_no_package_with_twins():
    # One direction only: wire imports the selector, the selector imports nothing of wire.
    names = imported(SOURCE / "_select.py")
    assert not {n for n in names if n.startswith("wmbus_stream.") and n != "wmbus_stream.errors"
                and not n.startswith("wmbus_stream.errors.")}, names
    assert "wmbus_stream._select.compiled" in imported(SOURCE / "wire" / "__init__.py")
