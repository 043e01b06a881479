"""One error tree: every public exception class the package defines derives from ``WmbusStreamError``."""

from __future__ import annotations

import importlib
import inspect
import pkgutil

import wmbus_stream
from wmbus_stream.errors import WmbusStreamError


def _public_exceptions() -> dict[str, type[BaseException]]:
    """Every public exception class defined (not imported) in a module of the package, by qualified name."""
    found: dict[str, type[BaseException]] = {}
    for info in pkgutil.walk_packages(wmbus_stream.__path__, "wmbus_stream."):
        if info.name.endswith("__main__") or info.name.rsplit(".", 1)[-1].startswith("_c"):
            continue  # the entry point runs the CLI; compiled twins are checked by their pure twin
        module = importlib.import_module(info.name)
        for name, value in vars(module).items():
            if (inspect.isclass(value) and issubclass(value, BaseException) and not name.startswith("_")
                    and value.__module__ == info.name):
                found[f"{info.name}.{name}"] = value
    return found


def test_every_public_exception_is_in_the_tree() -> None:
    found = _public_exceptions()
    assert "wmbus_stream.errors.ConfigError" in found and "wmbus_stream.io.http.HttpError" in found
    outside = sorted(name for name, cls in found.items() if not issubclass(cls, WmbusStreamError))
    assert outside == [], f"exception classes outside the errors tree: {outside}"


def test_moved_errors_keep_the_parents_callers_catch() -> None:
    from wmbus_stream.errors import ReportError
    from wmbus_stream.io.connections import Late
    from wmbus_stream.web.request import BadRequest

    assert issubclass(ReportError, ValueError) and issubclass(BadRequest, ValueError)
    assert issubclass(Late, Exception)
    assert str(ReportError(3, "empty line")) == "line 3: empty line"
