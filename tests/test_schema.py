"""The committed schemas are what the code generates."""

from __future__ import annotations

from pathlib import Path

from lazarus_bus.schema import schemas

SCHEMAS = Path(__file__).parent.parent / "schemas"


def test_committed_schemas_are_current() -> None:
    stale = [rel for rel, text in schemas().items()
             if not (SCHEMAS / rel).is_file() or (SCHEMAS / rel).read_text() != text]
    assert not stale, f"run `make schemas` (lazarus schema export): stale {stale}"


def test_every_event_schema_requires_its_identifying_fields() -> None:
    import json

    hb = json.loads((SCHEMAS / "events" / "agent.heartbeat.schema.json").read_text())
    body = hb["$defs"]["AgentHeartbeat"]
    assert body["required"] == ["type", "agent"]
    assert body["properties"]["type"]["enum"] == ["agent.heartbeat"]


def test_event_catalogue_in_docs_is_generated_from_the_code() -> None:
    from lazarus_bus.events import EVENT_TYPES
    from lazarus_bus.schema import catalogue

    doc = (Path(__file__).parent.parent / "docs" / "events.md").read_text()
    assert doc == catalogue(), "run `make schemas` (lazarus schema catalogue > docs/events.md)"
    for name in EVENT_TYPES:
        assert f"### `{name}`" in doc
