"""Rules the repository keeps: it reads nothing outside its own folder, and no test asserts a duration."""

from __future__ import annotations

import ast
import re
import subprocess
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
OUTSIDE = re.compile(r"\.\./shared|parents?\b.*[\"']shared[\"']")
CLOCKS = {"monotonic", "perf_counter", "process_time", "time", "thread_time"}


def tracked_files() -> list[Path]:
    """The files git tracks (a fresh clone holds exactly these)."""
    out = subprocess.run(["git", "ls-files", "-z"], cwd=REPO, capture_output=True, check=True).stdout
    return [REPO / name for name in out.decode().split("\0") if name]


def test_nothing_reaches_outside_the_repository() -> None:
    offenders = []
    for path in tracked_files():
        if path.suffix in {".png", ".jsonl"} or not path.is_file() or path == Path(__file__).resolve():
            continue
        text = path.read_text(encoding="utf-8", errors="replace")
        for number, line in enumerate(text.splitlines(), 1):
            if OUTSIDE.search(line):
                offenders.append(f"{path.relative_to(REPO)}:{number}: {line.strip()}")
    assert offenders == [], "files that read the folder beside the repository:\n" + "\n".join(offenders)


def _reads_a_clock(node: ast.AST) -> bool:
    return any(isinstance(call, ast.Call) and isinstance(call.func, ast.Attribute) and call.func.attr in CLOCKS
               and isinstance(call.func.value, ast.Name) and call.func.value.id == "time" for call in ast.walk(node))


def _names(node: ast.AST) -> set[str]:
    return {n.id for n in ast.walk(node) if isinstance(n, ast.Name)}


def _a_duration(node: ast.AST, timers: set[str], durations: set[str]) -> bool:
    """Whether ``node`` holds a clock difference (``time.monotonic() - started``) or a name bound to one."""
    def clocked(side: ast.AST) -> bool:
        return _reads_a_clock(side) or bool(_names(side) & timers)

    return bool(_names(node) & durations) or any(
        isinstance(n, ast.BinOp) and isinstance(n.op, ast.Sub) and clocked(n.left) and clocked(n.right)
        for n in ast.walk(node))


def test_no_test_asserts_a_duration() -> None:
    """An assert comparing a clock difference is a timed assertion; durations belong to the benchmarks."""
    offenders = []
    for path in sorted((REPO / "tests").rglob("*.py")):
        tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
        assigns = [node for node in ast.walk(tree) if isinstance(node, ast.Assign)]
        timers = {t.id for node in assigns if _reads_a_clock(node.value) for t in node.targets if isinstance(t, ast.Name)}
        durations = {t.id for node in assigns if _a_duration(node.value, timers, set())
                     for t in node.targets if isinstance(t, ast.Name)}
        for node in ast.walk(tree):
            if isinstance(node, ast.Assert) and any(
                    isinstance(c, ast.Compare) and _a_duration(c, timers, durations) for c in ast.walk(node.test)):
                offenders.append(f"{path.relative_to(REPO)}:{node.lineno}")
    assert offenders == [], "timed assertions (use a deadline on the event, or a benchmark):\n" + "\n".join(offenders)
