"""Lazarus Pit: one append-only event log per cell, projections folded from it, revival by policy."""

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
