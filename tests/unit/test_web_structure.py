"""The web package's imports point one way: handlers never import the server, and no import cycle exists."""

from __future__ import annotations

import ast
from pathlib import Path

WEB = Path(__file__).resolve().parents[2] / "src" / "wmbus_stream" / "web"


def module_name(path: Path) -> str:
    """The dotted name of a module file under web/ (``web``, ``web.pages``, ``web.pages.layout``)."""
    parts = ["web", *path.relative_to(WEB).with_suffix("").parts]
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def web_imports() -> dict[str, set[str]]:
    """Every module of web/ and the web/ modules it imports (TYPE_CHECKING and function-level imports too)."""
    files = {module_name(path): path for path in WEB.rglob("*.py")}
    graph: dict[str, set[str]] = {}
    for name, path in files.items():
        package = name.split(".") if path.name == "__init__.py" else name.split(".")[:-1]
        found: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if not isinstance(node, ast.ImportFrom) or node.level == 0:
                continue
            base = package[:len(package) - node.level + 1] + (node.module.split(".") if node.module else [])
            for alias in node.names:
                target = ".".join([*base, alias.name])
                found.add(target if target in files else ".".join(base))
        graph[name] = {target for target in found if target in files and target != name}
    return graph


def test_no_handler_module_imports_the_server() -> None:
    importers = {name for name, targets in web_imports().items() if "web.server" in targets}
    assert importers <= {"web", "web.site"}, f"only the composing modules may import web.server: {sorted(importers)}"


def test_no_import_cycle_inside_web() -> None:
    graph = web_imports()
    done: set[str] = set()

    def visit(name: str, path: list[str]) -> None:
        for target in sorted(graph[name]):
            assert target not in path, "import cycle: " + " -> ".join([*path[path.index(target):], target])
            if target not in done:
                visit(target, [*path, target])
        done.add(name)

    for name in sorted(graph):
        visit(name, [name])
