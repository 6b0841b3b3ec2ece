"""Lazarus Pit: one append-only event log per cell, projections folded from it, revival by policy."""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .cells import Cell, Root
    from .client import Agent, connect
    from .config import Config, load_config, resolve
    from .errors import (
        BudgetExceeded,
        Conflict,
        CorruptLog,
        Fenced,
        Forbidden,
        InDoubt,
        LazarusError,
        MalformedInput,
        NotFound,
        Refused,
        TooLarge,
    )
    from .events import (
        EVENT_TYPES,
        AnyEvent,
        Event,
        Policy,
        decode_event,
        encode_event,
        parse_draft,
    )
    from .fold import AgentView, CellView, fold, fold_all
    from .log import Appended, FileLog, Head, LogBackend
    from .planner import plan

__version__ = "0.1.0"

# the public API, imported on first use: `lazarus heartbeat` (which imports `lazarus_bus.entry`, and so
# this package) must not pay for the client, the planner and everything behind them (issue 21)
_WHERE = {
    "Cell": "cells", "Root": "cells",
    "Agent": "client", "connect": "client",
    "Config": "config", "load_config": "config", "resolve": "config",
    **{name: "errors" for name in ("BudgetExceeded", "Conflict", "CorruptLog", "Fenced", "Forbidden", "InDoubt",
                                   "LazarusError", "MalformedInput", "NotFound", "Refused", "TooLarge")},
    **{name: "events" for name in ("EVENT_TYPES", "AnyEvent", "Event", "Policy", "decode_event", "encode_event",
                                   "parse_draft")},
    "AgentView": "fold", "CellView": "fold", "fold": "fold", "fold_all": "fold",
    "Appended": "log", "FileLog": "log", "Head": "log", "LogBackend": "log",
    "plan": "planner",
}


def __getattr__(name: str) -> Any:
    """A public name, imported from its module the first time it is asked for."""
    module = _WHERE.get(name)
    if module is None:
        raise AttributeError(f"module 'lazarus_bus' has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})


__all__ = [
    "Agent",
    "AgentView",
    "AnyEvent",
    "Appended",
    "BudgetExceeded",
    "Cell",
    "CellView",
    "Config",
    "Conflict",
    "CorruptLog",
    "EVENT_TYPES",
    "Event",
    "Fenced",
    "FileLog",
    "Forbidden",
    "Head",
    "InDoubt",
    "LazarusError",
    "LogBackend",
    "MalformedInput",
    "NotFound",
    "Policy",
    "Refused",
    "Root",
    "TooLarge",
    "connect",
    "decode_event",
    "encode_event",
    "fold",
    "fold_all",
    "load_config",
    "parse_draft",
    "plan",
    "resolve",
]
