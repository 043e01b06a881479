"""The API description in docs/ is the one the gateway serves, and it matches the app's routes."""

from __future__ import annotations

import json
import re
from pathlib import Path

from wmbus_stream.config import model
from wmbus_stream.app import Gateway
from wmbus_stream.web.server import WebServer
from wmbus_stream.web.site import build

REPO = Path(__file__).resolve().parents[2]
DOCS_OPENAPI = REPO / "docs" / "openapi.json"
PACKAGED_OPENAPI = REPO / "src" / "wmbus_stream" / "web" / "static" / "openapi.json"
METHODS = {"get", "put", "post", "patch", "delete"}


def operations() -> set[tuple[str, str]]:
    """(METHOD, path with ``{n}`` filled in) of every operation the OpenAPI file describes."""
    spec = json.loads(DOCS_OPENAPI.read_text(encoding="utf-8"))
    return {(method.upper(), path.replace("{n}", "7")) for path, item in spec["paths"].items()
            for method in item if method in METHODS}


def app_routes(tmp_path: Path) -> WebServer:
    """The web app of a gateway that is not started (routes only, no socket)."""
    gateway = Gateway(model.parse({"state.directory": str(tmp_path / "state")}))
    return build(gateway, "127.0.0.1", 0, password_path=tmp_path / "web-password")


def test_docs_openapi_is_the_packaged_one() -> None:
    assert DOCS_OPENAPI.read_bytes() == PACKAGED_OPENAPI.read_bytes(), \
        "copy src/wmbus_stream/web/static/openapi.json to docs/openapi.json (or back)"
    spec = json.loads(DOCS_OPENAPI.read_text(encoding="utf-8"))
    assert spec["openapi"].startswith("3.") and len(spec["paths"]) > 10


def test_every_described_operation_is_served_and_every_api_route_is_described(tmp_path: Path) -> None:
    app = app_routes(tmp_path)
    described = operations()
    for method, path in sorted(described):
        assert any(r.method == method and r.pattern.match(path) for r in app.routes), f"{method} {path} is not served"
    for route in app.routes:
        if not route.pattern.pattern.startswith("/api/"):
            continue
        assert any(route.method == method and route.pattern.match(path) for method, path in described), \
            f"{route.method} {route.pattern.pattern} is served but not in docs/openapi.json"


def test_every_error_response_is_the_json_error_shape() -> None:
    spec = json.loads(DOCS_OPENAPI.read_text(encoding="utf-8"))
    error = spec["components"]["schemas"]["Error"]
    assert set(error["required"]) == {"error", "reason", "key"}
    for path, item in spec["paths"].items():
        for method, operation in item.items():
            for status, answer in operation["responses"].items():
                if re.fullmatch(r"[45]\d\d", status) and "$ref" not in answer and path != "/metrics":
                    assert answer["content"]["application/json"]["schema"] == {"$ref": "#/components/schemas/Error"}, \
                        (method, path, status)
