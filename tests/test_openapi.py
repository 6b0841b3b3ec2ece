"""The OpenAPI document describes the routes the gateway really serves: no more, no fewer."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from lazarus_bus import Config
from lazarus_bus.fold import CellView
from lazarus_bus.gateway import Gateway
from lazarus_bus.schema import openapi

COMMITTED = Path(__file__).parent.parent / "schemas" / "openapi.json"
METHODS = {"get", "put", "post", "delete", "options", "head", "patch", "trace"}
Route = tuple[str, str]


class NothingServed:
    """The least a gateway needs to be built: its metrics collector reads these at registration."""

    started_at = 0.0
    appended: dict[str, int] = {}
    revivals: dict[str, int] = {}
    lag = 0.0

    def cell(self, ref: str) -> None:
        return None

    def views(self) -> dict[str, CellView]:
        return {}

    def status(self) -> dict[str, Any]:
        return {}


@pytest.fixture
def gateway() -> Iterator[Gateway]:
    g = Gateway(NothingServed(), Config())
    yield g
    g.io.shutdown(wait=True)


def served_routes(g: Gateway) -> set[Route]:
    """(METHOD, path) of every route; the HEAD that aiohttp adds beside each GET is not one of ours."""
    out = set()
    for route in g.app.router.routes():
        if route.method == "HEAD":
            continue
        canonical = route.resource.canonical if route.resource is not None else ""
        out.add((route.method, canonical))
    return out


def documented_routes(doc: dict[str, Any]) -> set[Route]:
    return {(method.upper(), path) for path, item in doc["paths"].items() for method in item if method in METHODS}


def test_gateway_serves_some_routes(gateway: Gateway) -> None:
    routes = served_routes(gateway)
    assert ("GET", "/health") in routes and ("POST", "/cells/{cell}/events") in routes
    assert all(method != "*" for method, _ in routes), "a catch-all route cannot be documented"


def test_generated_openapi_documents_exactly_the_gateway_routes(gateway: Gateway) -> None:
    served, documented = served_routes(gateway), documented_routes(openapi())
    assert served - documented == set(), "served but not documented in lazarus_bus/schema.py openapi()"
    assert documented - served == set(), "documented in openapi() but not served by the gateway"


def test_committed_openapi_documents_exactly_the_gateway_routes(gateway: Gateway) -> None:
    committed = json.loads(COMMITTED.read_text())
    served, documented = served_routes(gateway), documented_routes(committed)
    assert served - documented == set(), "served but not in schemas/openapi.json (run `make schemas`)"
    assert documented - served == set(), "in schemas/openapi.json but not served (run `make schemas`)"
    assert committed == openapi(), "schemas/openapi.json is stale (run `make schemas`)"


def test_every_path_parameter_is_declared() -> None:
    for path, item in openapi()["paths"].items():
        placeholders = set(re.findall(r"\{([^}]+)\}", path))
        for method, op in item.items():
            if method not in METHODS:
                continue
            declared = {p["name"] for p in op.get("parameters", []) if p.get("in") == "path"}
            assert declared == placeholders, f"{method.upper()} {path}: path parameters {declared} != {placeholders}"
            assert all(p.get("required") for p in op.get("parameters", []) if p.get("in") == "path")
