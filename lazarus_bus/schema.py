"""JSON Schemas generated from the event types and the config, never written by hand."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import msgspec

from .config import Config
from .events import EVENT_TYPES, AnyEvent

__all__ = ["schemas", "export"]


def _dump(obj: Any) -> str:
    return json.dumps(obj, indent=2, sort_keys=True) + "\n"


def schemas() -> dict[str, str]:
    """Relative path -> file text, for every schema the project publishes."""
    out = {
        "events.schema.json": _dump(msgspec.json.schema(AnyEvent)),
        "config.schema.json": _dump(msgspec.json.schema(Config)),
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
