"""Shared test fixtures: the public test vectors and the two wire twins.

The vectors are public telegrams kept in ``tests/vectors``. The twins are imported by module
name, never from ``src``.
"""

from __future__ import annotations

import importlib
import json
import os
from pathlib import Path
from types import ModuleType

import pytest

REPO = Path(__file__).resolve().parents[1]
VECTORS_DIR = REPO / "tests" / "vectors"
TELEGRAMS = VECTORS_DIR / "telegrams.jsonl"


def load_vectors() -> list[dict]:
    """Every telegram vector as a dict with the hex fields also decoded to bytes."""
    if not TELEGRAMS.is_file():
        raise FileNotFoundError(f"test vectors not found at {TELEGRAMS}")
    vectors = []
    with TELEGRAMS.open(encoding="utf-8") as lines:
        for number, line in enumerate(lines, 1):
            if not line.strip():
                continue
            vector = json.loads(line)
            vector["line"] = number
            for key in ("telegram", "frame_a", "frame_b"):
                vector[key + "_bytes"] = bytes.fromhex(vector[key])
            vectors.append(vector)
    return vectors


def no_extensions() -> bool:
    """Whether WMBUS_STREAM_NO_EXTENSIONS forces the pure twins for this run."""
    return os.environ.get("WMBUS_STREAM_NO_EXTENSIONS", "").strip().lower() in {"1", "true", "yes", "on"}


def twin_params() -> list:
    """pytest params for both wire twins; the compiled one is skipped only under NO_EXTENSIONS."""
    skip = pytest.mark.skip(reason="WMBUS_STREAM_NO_EXTENSIONS=1")
    return [
        pytest.param("wmbus_stream.wire._pywire", id="pure"),
        pytest.param("wmbus_stream.wire._cwire", id="compiled", marks=[skip] if no_extensions() else []),
    ]


@pytest.fixture(scope="session")
def vectors_dir() -> Path:
    """``tests/vectors`` of the repository."""
    if not VECTORS_DIR.is_dir():
        pytest.fail(f"vectors directory missing: {VECTORS_DIR}")
    return VECTORS_DIR


@pytest.fixture(scope="session")
def vectors(vectors_dir: Path) -> list[dict]:
    """All telegram vectors (``tests/vectors/telegrams.jsonl``)."""
    return load_vectors()


@pytest.fixture(params=twin_params())
def twin(request: pytest.FixtureRequest) -> ModuleType:
    """Each wire twin in turn (a missing compiled twin is an error unless NO_EXTENSIONS is set)."""
    return importlib.import_module(request.param)
