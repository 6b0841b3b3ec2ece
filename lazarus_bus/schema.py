"""JSON Schemas generated from the event types and the config, never written by hand."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import msgspec

from .admission import CAPABILITIES
from .config import Config
from .events import ENVELOPE, EVENT_TYPES, AnyEvent, Event

__all__ = ["catalogue", "export", "openapi", "schemas"]


def _dump(obj: Any) -> str:
    return json.dumps(obj, indent=2, sort_keys=True) + "\n"


def schemas() -> dict[str, str]:
    """Relative path -> file text, for every schema the project publishes."""
    out = {
        "events.schema.json": _dump(msgspec.json.schema(AnyEvent)),
        "config.schema.json": _dump(msgspec.json.schema(Config)),
        "openapi.json": _dump(openapi()),
    }
    for name, cls in sorted(EVENT_TYPES.items()):
        out[f"events/{name}.schema.json"] = _dump(msgspec.json.schema(cls))
    return out


def export(out: Path) -> list[Path]:
    """Write every schema under `out`; returns the paths written."""
    written = []
    for rel, text in schemas().items():
        path = out / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
        written.append(path)
    return written


def _type_name(t: msgspec.inspect.Type) -> str:
    i = msgspec.inspect
    if isinstance(t, i.Metadata):
        return _type_name(t.type)
    if isinstance(t, i.UnionType):
        return " \\| ".join(_type_name(x) for x in t.types)
    if isinstance(t, i.LiteralType):
        return " \\| ".join(json.dumps(v) for v in t.values)
    if isinstance(t, i.ListType):
        return f"list[{_type_name(t.item_type)}]"
    if isinstance(t, i.DictType):
        return f"map[{_type_name(t.key_type)}, {_type_name(t.value_type)}]"
    if isinstance(t, i.StructType):
        return t.cls.__name__
    names = {i.StrType: "string", i.IntType: "int", i.FloatType: "float", i.BoolType: "bool", i.NoneType: "null",
             i.AnyType: "any JSON"}
    return names.get(type(t), type(t).__name__.removesuffix("Type").lower())


def catalogue() -> str:
    """`docs/events.md`, generated from the event types so it cannot drift from the code."""
    lines = [
        "# Event catalogue",
        "",
        "Generated from `lazarus_bus/events.py` by `lazarus schema catalogue` (a test fails when it is stale).",
        "Every event is one JSON line with the envelope fields beside its payload fields, flat.",
        "",
        "## Envelope",
        "",
        "| field | type | meaning |",
        "|---|---|---|",
    ]
    meaning = {"seq": "1, 2, 3, ... per cell, no gaps, no repeats (assigned by the log)",
               "id": "unique event id (UUID); supply it for idempotent retries",
               "ts": "wall-clock seconds since the epoch, UTC (assigned by the log)",
               "cell": "the cell id (assigned by the log)", "type": "the event type, the union's tag",
               "by": "an agent name, `operator` or `lazarus`",
               "prev": "SHA-256 hex of the previous line's bytes; 64 zeros for seq 1 (assigned by the log)"}
    info = msgspec.inspect.type_info(Event)
    assert isinstance(info, msgspec.inspect.StructType)
    env = {f.name: f for f in info.fields}
    for name in ENVELOPE:
        kind = "string" if name == "type" else _type_name(env[name].type)
        lines.append(f"| `{name}` | {kind} | {meaning[name]} |")
    lines += ["", "## Roles", "", "| capability | roles |", "|---|---|"]
    lines += [f"| {cap} | {', '.join(roles)} |" for cap, roles in CAPABILITIES.items()]
    lines += ["", "Presence is `agent.joined`, `agent.heartbeat`, `agent.left` and `agent.usage`, for the agent",
              "itself; a `write` agent may update the tasks assigned to it; the recipient of a handoff may always",
              "accept it; an effect is started by the agent itself, and only it (or operator) records its outcome.",
              "`operator` and `lazarus` may append every type; the types not listed are theirs alone.", ""]
    section = ""
    for name, cls in EVENT_TYPES.items():
        head = name.split(".")[0]
        if head != section:
            section = head
            lines += [f"## {head}.*", ""]
        lines += [f"### `{name}`", "", (cls.__doc__ or "").strip(), "", "| field | type | required | default |",
                  "|---|---|---|---|"]
        info = msgspec.inspect.type_info(cls)
        assert isinstance(info, msgspec.inspect.StructType)
        for f in info.fields:
            if f.name in ENVELOPE:
                continue
            default = "" if f.required else json.dumps(msgspec.to_builtins(
                f.default if f.default is not msgspec.NODEFAULT else f.default_factory()))
            lines.append(f"| `{f.name}` | {_type_name(f.type)} | {'yes' if f.required else 'no'} | {default} |")
        lines.append("")
    return "\n".join(lines)


def openapi() -> dict[str, Any]:
    """The gateway's API as OpenAPI 3.1, with the event types as its components."""
    from importlib.metadata import version

    (union,), components = msgspec.json.schema_components([AnyEvent], ref_template="#/components/schemas/{name}")
    err = {"description": "error", "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}}
    components["Error"] = {"type": "object", "required": ["error"], "properties": {"error": {"type": "string"}}}
    components["Appended"] = {"type": "object", "properties": {
        "seq": {"type": "integer"}, "id": {"type": "string"}, "type": {"type": "string"},
        "duplicate": {"type": "boolean"}}}
    components["AnyEvent"] = union
    json_ok = {"description": "ok", "content": {"application/json": {"schema": {"type": "object"}}}}
    appended = {"description": "appended (200 for an idempotent repeat)",
                "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Appended"}}}}
    cell = {"name": "cell", "in": "path", "required": True, "schema": {"type": "string"},
            "description": "cell id or unique name"}
    agent = {"name": "agent", "in": "path", "required": True, "schema": {"type": "string"}}
    errors = {str(code): err for code in (400, 401, 403, 404, 408, 409, 413, 422, 500, 503)}
    return {
        "openapi": "3.1.0",
        "info": {"title": "Lazarus Pit gateway", "version": version("lazarus-pit"),
                 "description": "Served by `lazarus up` (default 127.0.0.1:8766). See docs/http.md."},
        "components": {"schemas": components, "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}}},
        "security": [{"bearer": []}, {}],
        "paths": {
            "/health": {"get": {"summary": "daemon status, uptime, cells by state, agents by health, watcher lag",
                                "security": [], "responses": {"200": json_ok}}},
            "/metrics": {"get": {"summary": "Prometheus text format", "security": [],
                                 "responses": {"200": {"description": "metrics",
                                                       "content": {"text/plain": {"schema": {"type": "string"}}}}}}},
            "/cells": {"get": {"summary": "every cell with its agents' health",
                               "responses": {"200": json_ok, **errors}}},
            "/cells/{cell}": {"get": {"summary": "a cell's manifest and agents", "parameters": [cell],
                                      "responses": {"200": json_ok, **errors}}},
            "/cells/{cell}/agents/{agent}": {"get": {
                "summary": "one agent's projection and health", "parameters": [cell, agent],
                "responses": {"200": json_ok, **errors}}},
            "/cells/{cell}/agents/{agent}/heartbeat": {"post": {
                "summary": "append agent.heartbeat for the agent", "parameters": [cell, agent],
                "requestBody": {"required": False, "content": {"application/json": {"schema": {
                    "type": "object", "properties": {"pid": {"type": "integer"}, "cycle": {"type": "integer"},
                                                     "status": {"type": "string"}, "model": {"type": "string"},
                                                     "id": {"type": "string"},
                                                     "expected_seq": {"type": "integer"}}}}}},
                "responses": {"201": appended, "200": appended, **errors}}},
            "/cells/{cell}/checkpoints": {"post": {
                "summary": "append checkpoint.created, the daemon archiving the workspace `paths` first (how a "
                           "confined agent checkpoints through the socket)", "parameters": [cell],
                "requestBody": {"required": True, "content": {"application/json": {"schema": {
                    "type": "object", "properties": {"by": {"type": "string"}, "summary": {"type": "string"},
                                                     "state": {}, "checkpoint_id": {"type": "string"},
                                                     "paths": {"type": "array", "items": {"type": "string"}},
                                                     "artifacts": {"type": "array", "items": {"type": "string"}}}}}}},
                "responses": {"201": appended, "200": appended, **errors}}},
            "/cells/{cell}/events": {
                "post": {"summary": "append one event (type, by and payload fields, flat; id and expected_seq "
                                    "optional)", "parameters": [cell],
                         "requestBody": {"required": True, "content": {"application/json": {
                             "schema": {"$ref": "#/components/schemas/AnyEvent"}}}},
                         "responses": {"201": appended, "200": appended, **errors}},
                "get": {"summary": "the events after `since`: a JSON list, or a live SSE stream with "
                                   "Accept: text/event-stream (each SSE id is the seq; Last-Event-ID resumes)",
                        "parameters": [cell,
                                       {"name": "since", "in": "query", "schema": {"type": "integer", "minimum": 0}},
                                       {"name": "type", "in": "query", "schema": {"type": "string"},
                                        "description": "a type or glob, repeatable"},
                                       {"name": "Last-Event-ID", "in": "header", "schema": {"type": "string"}}],
                        "responses": {"200": {"description": "events", "content": {
                            "application/json": {"schema": {"type": "array",
                                                            "items": {"$ref": "#/components/schemas/AnyEvent"}}},
                            "text/event-stream": {"schema": {"type": "string"}}}}, **errors}},
            },
            "/cells/{cell}/effects": {"get": {
                "summary": "the side-effect ledger, oldest first (each with `in_doubt`)",
                "parameters": [cell, {"name": "in_doubt", "in": "query", "schema": {"type": "string",
                                                                                   "enum": ["0", "1"]},
                                      "description": "1: only effects in doubt"},
                               {"name": "agent", "in": "query", "schema": {"type": "string"},
                                "description": "only this agent's effects"}],
                "responses": {"200": {"description": "effects", "content": {"application/json": {
                    "schema": {"type": "array", "items": {"type": "object"}}}}}, **errors}}},
            "/cells/{cell}/budget": {"get": {
                "summary": "each agent's spend across its incarnations against its caps, and the cell's total",
                "parameters": [cell], "responses": {"200": json_ok, **errors}}},
        },
    }
