"""The only way a name or id becomes part of a path: validated here first."""

from __future__ import annotations

import os
import random
import re
import time

from .errors import MalformedInput

__all__ = [
    "AGENT_PATTERN",
    "CELL_ID_PATTERN",
    "RESERVED",
    "check_agent",
    "check_by",
    "check_cell_id",
    "check_cell_name",
    "check_ref_id",
    "new_id",
    "new_ids",
]

# `(?!\n)$`: a regex `$` also matches before a trailing newline, and "forge\n" must never pass for "forge"
AGENT_PATTERN = r"^(?!.*\.\.)[a-z0-9][a-z0-9_.-]{0,62}(?!\n)$"
SLUG_PATTERN = r"^[a-z0-9][a-z0-9-]{0,62}(?!\n)$"
UUID_PATTERN = r"^[0-9a-f]{8}-[0-9a-f]{4}-[47][0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}(?!\n)$"
CELL_ID_PATTERN = f"(?:{SLUG_PATTERN})|(?:{UUID_PATTERN})"
REF_PATTERN = r"^(?!.*\.\.)[A-Za-z0-9][A-Za-z0-9_.-]{0,127}(?!\n)$"
RESERVED = frozenset({"operator", "lazarus", "auditor"})
SYSTEM_AUTHORS = frozenset({"operator", "lazarus"})

_AGENT = re.compile(AGENT_PATTERN)
_CELL = re.compile(CELL_ID_PATTERN)
_REF = re.compile(REF_PATTERN)


def check_agent(name: str) -> str:
    """An agent name: a safe path component and not one of the reserved identities."""
    if not isinstance(name, str) or not _AGENT.fullmatch(name):
        raise MalformedInput(f"bad agent name {name!r}: use [a-z0-9][a-z0-9_.-]{{0,62}}, no '..'")
    if name in RESERVED:
        raise MalformedInput(f"agent name {name!r} is reserved")
    return name


def check_by(name: str) -> str:
    """Who appends: an agent name, `operator` or `lazarus`."""
    if name in SYSTEM_AUTHORS:
        return name
    if name == "auditor":
        raise MalformedInput("'auditor' is read-only and appends nothing")
    return check_agent(name)


def check_cell_id(cell_id: str) -> str:
    """A cell id: a UUID v4/v7 or a slug, so it is always one safe directory name."""
    if not isinstance(cell_id, str) or not _CELL.fullmatch(cell_id):
        raise MalformedInput(f"bad cell id {cell_id!r}: use a UUID (v4 or v7) or a slug [a-z0-9][a-z0-9-]{{0,62}}")
    return cell_id


def check_cell_name(name: str) -> str:
    """Cell names follow the agent-name rule so they are safe anywhere a user types them."""
    if not isinstance(name, str) or not _AGENT.fullmatch(name):
        raise MalformedInput(f"bad cell name {name!r}: use [a-z0-9][a-z0-9_.-]{{0,62}}, no '..'")
    return name


def check_ref_id(kind: str, ref: str) -> str:
    """Checkpoint, handoff and task ids: they name files, so they are path-safe too."""
    if not isinstance(ref, str) or not _REF.fullmatch(ref) or ".." in ref:
        raise MalformedInput(f"bad {kind} {ref!r}: use letters, digits, '_', '.', '-' (no '..')")
    return ref


_rng = random.Random()  # seeded from os.urandom; no syscall per id, unlike os.urandom itself
os.register_at_fork(after_in_child=_rng.seed)  # a forked child must not repeat its parent's ids
_VARIANT = {c: "89ab"[int(c, 16) & 3] for c in "0123456789abcdef"}


def new_ids(n: int) -> list[str]:
    """UUIDv7s: unique and sortable by creation time (to the millisecond), made in one batch."""
    if n == 1:
        return [new_id()]
    ms = time.time_ns() // 1_000_000 & 0xFFFFFFFFFFFF
    head = f"{ms >> 16:08x}-{ms & 0xFFFF:04x}-7"
    raw = f"{_rng.getrandbits(80 * n):0{20 * n}x}"  # 20 hex digits an id: 74 random bits are used
    variant = _VARIANT
    return [f"{head}{raw[i:i + 3]}-{variant[raw[i + 3]]}{raw[i + 4:i + 7]}-{raw[i + 7:i + 19]}"
            for i in range(0, 20 * n, 20)]


def new_id() -> str:
    """A UUIDv7: unique and sortable by creation time (one format call: every single append makes one)."""
    ms = time.time_ns() // 1_000_000 & 0xFFFFFFFFFFFF
    r = _rng.getrandbits(74)
    return "%08x-%04x-7%03x-%04x-%012x" % (
        ms >> 16, ms & 0xFFFF, r >> 62, 0x8000 | r >> 48 & 0x3FFF, r & 0xFFFFFFFFFFFF)
