"""The architecture contract: which part of ``wmbus_stream`` may import which, and what stays pure.

The rules are the data below. The checker reads every module's AST, so nothing is imported or
run; imports inside functions and under ``if TYPE_CHECKING:`` count too (a type is a
dependency). A unit is a subpackage (``core``) or a top-level module (``atomic``); the
package's own ``__init__`` is the unit ``__init__``. Each rule is its own test, and a failure
lists every violation: module, what it imports or calls (with the line), rule and reason.
"""

from __future__ import annotations

import ast
import functools
import textwrap
from dataclasses import dataclass
from pathlib import Path


PACKAGE = "wmbus_stream"
SOURCE = Path(__file__).resolve().parents[2] / "src" / PACKAGE

# Top to bottom. A unit imports units of its own layer or of lower ones, never of a higher one.
LAYERS: tuple[tuple[str, ...], ...] = (
    ("cli", "__main__"),                  # commands
    ("app", "pusher", "bench", "bench_service", "bench_hes", "appliance"),  # the composition root, its push policy; benchmarks;
                                          # the appliance's provisioning and A/B updates
    ("web", "sync", "state", "io", "hes", "_signals"),  # what touches the world
    ("host",),                            # what web/ and the control socket see of the gateway: a Protocol, values
    ("config", "atomic", "journal"),      # the configuration model and validation; atomic files, the journal
    ("receivers",),                       # one framer per receiver protocol
    ("core",),                            # pure: pipeline, latest-per-meter, analyzer, report, schedule
    ("wire", "_select", "__init__"),      # pure: the twins and their selector
    ("errors", "text"),                   # leaves
)

# web/ and sync/ are built and wired by the composition root only (cli calls it). appliance/
# writes the web UI password with web.auth's writer, as ``wmbus-stream passwd`` does.
COMPOSED = ("web", "sync")
COMPOSITION_ROOTS = ("app", "cli", "appliance")

# Units that take plain values and return plain values: they import nothing that touches the
# world and read no clock (time is a parameter).
PURE = ("wire", "core")
WORLD_IMPORTS = (
    "os", "io.open", "pathlib", "shutil", "tempfile", "glob", "fcntl", "mmap", "sqlite3", "dbm", "shelve",
    "socket", "socketserver", "ssl", "select", "selectors", "signal", "threading", "_thread", "multiprocessing",
    "concurrent", "asyncio", "subprocess", "http", "urllib.request", "logging.handlers",
    "serial", "urllib3", "prometheus_client",
)
WORLD_CALLS = (
    "open", "io.open", "input", "print",
    "time.time", "time.time_ns", "time.monotonic", "time.monotonic_ns", "time.perf_counter",
    "time.perf_counter_ns", "time.process_time", "time.sleep",
    "datetime.datetime.now", "datetime.datetime.utcnow", "datetime.datetime.today", "datetime.date.today",
)
# Calls that read the clock when not given a time: name -> the number of arguments before the time.
CLOCK_UNLESS_GIVEN = {"time.gmtime": 0, "time.localtime": 0, "time.ctime": 0, "time.asctime": 0, "time.strftime": 1}


@dataclass(frozen=True, slots=True)
class Violation:
    """One broken rule: which module, what it imports or calls, which rule, and why."""

    module: str
    name: str
    rule: str
    why: str

    def __str__(self) -> str:
        if self.rule == "no cycles":
            return f"[{self.rule}] {self.module}: {self.why}: {self.name}"
        return f"[{self.rule}] {self.module} -> {self.name}: {self.why}"


@dataclass(frozen=True, slots=True)
class _Module:
    name: str
    path: Path
    tree: ast.Module


def _modules(root: Path, package: str) -> dict[str, _Module]:
    found = {}
    for path in sorted(root.rglob("*.py")):
        parts = list(path.relative_to(root).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        name = ".".join([package, *parts])
        found[name] = _Module(name, path, ast.parse(path.read_bytes(), filename=str(path)))
    return found


def _is_package(module: _Module) -> bool:
    return module.path.name == "__init__.py"


def _imports(module: _Module, known: dict[str, _Module]) -> list[tuple[str, int]]:
    """Every module ``module`` imports, absolute, with its line (``from p import m``: ``p.m`` if m is a module)."""
    base = module.name if _is_package(module) else module.name.rpartition(".")[0]
    out = []
    for node in ast.walk(module.tree):
        if isinstance(node, ast.Import):
            out += [(alias.name, node.lineno) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                anchor = base.split(".")
                anchor = anchor[: len(anchor) - (node.level - 1)]
                source = ".".join(anchor + ([node.module] if node.module else []))
            else:
                source = node.module or ""
            for alias in node.names:
                submodule = f"{source}.{alias.name}"
                out.append((submodule if submodule in known else source, node.lineno))
    return out


def _aliases(module: _Module) -> dict[str, str]:
    """Local name -> dotted name it stands for, from the module's imports."""
    names = {}
    for node in ast.walk(module.tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.asname:
                    names[alias.asname] = alias.name
                else:
                    top = alias.name.split(".")[0]
                    names[top] = top
        elif isinstance(node, ast.ImportFrom) and not node.level and node.module:
            for alias in node.names:
                names[alias.asname or alias.name] = f"{node.module}.{alias.name}"
    return names


def _calls(module: _Module) -> list[tuple[str, int, int]]:
    """The calls the module makes: dotted name (``dt.datetime.now`` -> ``datetime.datetime.now``), line, arguments."""
    aliases = _aliases(module)
    out = []
    for node in ast.walk(module.tree):
        if not isinstance(node, ast.Call):
            continue
        parts = []
        target = node.func
        while isinstance(target, ast.Attribute):
            parts.append(target.attr)
            target = target.value
        if isinstance(target, ast.Name):
            parts.append(aliases.get(target.id, target.id))
            out.append((".".join(reversed(parts)), node.lineno, len(node.args) + len(node.keywords)))
    return out


def _unit(module: str, package: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def _matches(name: str, patterns: tuple[str, ...]) -> str | None:
    return next((p for p in patterns if name == p or name.startswith(p + ".")), None)


def _cycles(edges: dict[tuple[str, str], dict[str, set[int]]]) -> list[list[str]]:
    """Strongly connected groups of more than one unit (Tarjan), each sorted."""
    graph: dict[str, set[str]] = {}
    for a, b in edges:
        graph.setdefault(a, set()).add(b)
        graph.setdefault(b, set())
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    groups = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        for nxt in sorted(graph[node]):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            group = []
            while True:
                member = stack.pop()
                group.append(member)
                if member == node:
                    break
            if len(group) > 1:
                groups.append(sorted(group))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return sorted(groups)


def check(root: Path = SOURCE, package: str = PACKAGE) -> list[Violation]:
    """Every violation of the rules above in the package at ``root``, sorted by rule and module."""
    modules = _modules(root, package)
    layer_of = {unit: n for n, layer in enumerate(LAYERS) for unit in layer}
    found: set[Violation] = set()
    unit_edges: dict[tuple[str, str], dict[str, set[int]]] = {}
    module_edges: dict[tuple[str, str], dict[str, set[int]]] = {}  # between the modules of one unit
    for module in modules.values():
        unit = _unit(module.name, package)
        if unit not in layer_of:
            found.add(Violation(module.name, unit, "layers", f"unit {unit!r} is in no layer: add it to LAYERS"))
        for name, line in _imports(module, modules):
            where = f"{name} (line {line})"
            if unit in PURE and (denied := _matches(name, WORLD_IMPORTS)):
                found.add(Violation(module.name, where, "pure", f"{unit}/ touches no world: {denied} is denied"))
            if name != package and not name.startswith(package + "."):
                continue
            target = _unit(name, package)
            if target == unit:
                if name in modules and name != module.name:
                    module_edges.setdefault((module.name, name), {}).setdefault(module.name, set()).add(line)
                continue
            unit_edges.setdefault((unit, target), {}).setdefault(module.name, set()).add(line)
            if target in COMPOSED and unit not in COMPOSITION_ROOTS:
                found.add(Violation(module.name, where, "composition root",
                                    f"only {', '.join(COMPOSITION_ROOTS)} import {target}/"))
            if unit in layer_of and target in layer_of and layer_of[target] < layer_of[unit]:
                found.add(Violation(module.name, where, "layers", f"{unit} is below {target}: it may not import it"))
        if unit in PURE:
            for name, line, arguments in _calls(module):
                if arguments <= CLOCK_UNLESS_GIVEN.get(name, -1):
                    found.add(Violation(module.name, f"{name}() (line {line})", "pure",
                                        f"{unit}/ touches no world: {name}() without a time reads the clock;"
                                        " take the time as a parameter"))
                elif denied := _matches(name, WORLD_CALLS):
                    found.add(Violation(module.name, f"{name}() (line {line})", "pure", f"{unit}/ touches no world:"
                                        f" {denied}() is denied; take the value as a parameter"))
    for edges, what in ((unit_edges, "units"), (module_edges, "modules")):
        for group in _cycles(edges):
            links = [f"{a} -> {b} in " + ", ".join(f"{m} (line {', '.join(map(str, sorted(lines)))})"
                                                   for m, lines in sorted(where.items()))
                     for (a, b), where in sorted(edges.items()) if a in group and b in group]
            found.add(Violation(" <-> ".join(group), "; ".join(links), "no cycles", f"these {what} import each other"))
    return sorted(found, key=lambda v: (v.rule, v.module, v.name))


def report(violations: list[Violation]) -> str:
    return f"{len(violations)} architecture violation(s):\n" + "\n".join(f"  {v}" for v in violations)


@functools.cache
def _violations_today() -> list[Violation]:
    return check()


def _rule_test(rule: str) -> None:
    violations = [v for v in _violations_today() if v.rule == rule]
    assert not violations, report(violations)


def test_layers_point_one_way() -> None:
    _rule_test("layers")


def test_no_cycles_between_units_or_modules() -> None:
    _rule_test("no cycles")


def test_only_the_composition_root_imports_web_and_sync() -> None:
    _rule_test("composition root")


def test_wire_and_core_touch_no_world() -> None:
    _rule_test("pure")


def test_every_unit_of_the_package_is_checked() -> None:
    """The checker sees the real package: each layer's units that exist, and every module file."""
    modules = _modules(SOURCE, PACKAGE)
    assert len(modules) == len(list(SOURCE.rglob("*.py"))) > 20
    units = {_unit(name, PACKAGE) for name in modules}
    assert {"wire", "core", "receivers", "config", "web", "sync", "io", "errors"} <= units


def _write(root: Path, files: dict[str, str]) -> Path:
    for name, text in files.items():
        path = root / "pkg" / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(text), encoding="utf-8")
    return root / "pkg"


CLEAN = {
    "__init__.py": "from ._select import implementation\n",
    "_select.py": "import os\nimport importlib\n",
    "errors.py": "class Error(Exception): ...\n",
    "text.py": "",
    "wire/__init__.py": "from .._select import implementation\nfrom ..errors import Error\n",
    "wire/_pywire.py": "from ..errors import Error\n",
    "core/__init__.py": "",
    "core/report.py": """\
        import time
        import datetime as dt
        from collections.abc import Callable
        from .. import wire
        from ..wire import _pywire

        def stamp(t: float, clock: Callable[[], float] = time.time) -> str:
            return time.strftime("%Y", time.gmtime(t)) + dt.datetime.fromtimestamp(t, dt.UTC).isoformat()
        """,
    "receivers/__init__.py": "from ..core import report\n",
    "config/__init__.py": "from ..receivers import *\nfrom ..atomic import write\n",
    "atomic.py": "import os\ndef write(): os.replace('a', 'b')\n",
    "io/__init__.py": "import socket\nfrom ..config import x\n",
    "web/__init__.py": "import threading\nfrom ..io import y\nfrom ..config import z\n",
    "sync/__init__.py": "from .. import io\n",
    "app.py": "from . import web, sync\nfrom .io import y\n",
    "cli/__init__.py": "from .. import app\nfrom ..web import server\n",
    "__main__.py": "from .cli import main\n",
}


def test_a_clean_package_has_no_violations(tmp_path: Path) -> None:
    """Everything the rules allow, including a clock passed as a parameter, passes."""
    assert check(_write(tmp_path, CLEAN), "pkg") == []


def test_each_rule_catches_a_planted_violation(tmp_path: Path) -> None:
    planted = dict(CLEAN)
    planted["wire/_pywire.py"] = "import socket\nfrom os import path\n"
    planted["text.py"] = "from .core import report\n"
    planted["core/report.py"] = """\
        from time import time as now
        import datetime as dt
        import time

        def stamp() -> str:
            return str(now()) + dt.datetime.now().isoformat() + open("f").read() + time.strftime("%Y")
        """
    planted["config/__init__.py"] = "from ..sync import cad\n"
    planted["sync/__init__.py"] = "from ..config import keys\n"
    planted["gadget.py"] = ""
    planted["io/__init__.py"] = "from . import serial\n"
    planted["io/serial.py"] = "from . import y\n"
    found = {(v.module, v.name, v.rule) for v in check(_write(tmp_path, planted), "pkg")}
    assert found == {
        ("pkg.wire._pywire", "socket (line 1)", "pure"),
        ("pkg.wire._pywire", "os (line 2)", "pure"),
        ("pkg.text", "pkg.core.report (line 1)", "layers"),
        ("pkg.core.report", "time.time() (line 6)", "pure"),
        ("pkg.core.report", "datetime.datetime.now() (line 6)", "pure"),
        ("pkg.core.report", "open() (line 6)", "pure"),
        ("pkg.core.report", "time.strftime() (line 6)", "pure"),
        ("pkg.config", "pkg.sync (line 1)", "layers"),
        ("pkg.config", "pkg.sync (line 1)", "composition root"),
        ("pkg.gadget", "gadget", "layers"),
        ("config <-> sync", "config -> sync in pkg.config (line 1); sync -> config in pkg.sync (line 1)", "no cycles"),
        ("pkg.io <-> pkg.io.serial",
         "pkg.io -> pkg.io.serial in pkg.io (line 1); pkg.io.serial -> pkg.io in pkg.io.serial (line 1)", "no cycles"),
    }


def test_the_report_names_module_import_and_rule(tmp_path: Path) -> None:
    planted = dict(CLEAN, **{"core/report.py": "import sqlite3\n"})
    text = report(check(_write(tmp_path, planted), "pkg"))
    assert text == ("1 architecture violation(s):\n"
                    "  [pure] pkg.core.report -> sqlite3 (line 1): core/ touches no world: sqlite3 is denied")
