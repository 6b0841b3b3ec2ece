"""Resource limits of an agent (DESIGN section 15): parsed and turned into rlimits here, with no I/O.

`memory=512M cpu=1.5 pids=256 nofile=1024`. Where the daemon can write cgroups they would hold these
exactly; where it cannot (the fallback every machine has), `prlimit` semantics apply: memory is the
address space (RLIMIT_AS), pids the processes of the agent's user (RLIMIT_NPROC), nofile open files
(RLIMIT_NOFILE), and cpu, a share of cores, has no rlimit: it is left out of `agent.spawned.limits` and
the daemon warns, rather than pretending."""

from __future__ import annotations

import re
import resource
from typing import Literal

from msgspec import Struct

from .errors import MalformedInput

__all__ = ["KINDS", "Rlimit", "check_limits", "describe", "parse_limit", "rlimits", "size_bytes"]

Kind = Literal["memory", "cpu", "pids", "nofile"]
KINDS: tuple[Kind, ...] = ("memory", "cpu", "pids", "nofile")
_SIZE = re.compile(r"^([0-9]+)([KMGT]?)$")
_CPU = re.compile(r"^[0-9]+(\.[0-9]+)?$")
_UNITS = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}


class Rlimit(Struct, frozen=True):
    """One setrlimit call: resource number, soft and hard limit, and the limit it enforces."""

    resource: int
    value: int
    names: str


def size_bytes(text: str) -> int:
    """`512M` -> bytes (K, M, G, T are powers of 1024; no suffix is bytes)."""
    t = text.strip().upper()
    m = _SIZE.match(t[:-1] if t.endswith(("KB", "MB", "GB", "TB")) else t)
    if m is None or int(m.group(1)) <= 0:
        raise MalformedInput(f"memory limit {text!r}: a positive size such as 512M or 2G")
    return int(m.group(1)) * _UNITS[m.group(2)]


def _check_value(kind: str, value: str) -> None:
    if kind == "memory":
        size_bytes(value)
    elif kind == "cpu":
        if not _CPU.match(value) or float(value) <= 0:
            raise MalformedInput(f"cpu limit {value!r}: a positive number of cores such as 1.5")
    elif kind in ("pids", "nofile"):
        if not value.isdigit() or int(value) <= 0:
            raise MalformedInput(f"{kind} limit {value!r}: a positive whole number")
    else:
        raise MalformedInput(f"unknown limit {kind!r} (use memory, cpu, pids or nofile)")


def parse_limit(text: str) -> tuple[str, str]:
    """`memory=64M` -> ("memory", "64M"), checked."""
    kind, sep, value = text.partition("=")
    kind, value = kind.strip(), value.strip()
    if not sep or not value:
        raise MalformedInput(f"limit {text!r}: KIND=VALUE (memory=512M, cpu=1.5, pids=256, nofile=1024)")
    _check_value(kind, value)
    return kind, value


def check_limits(limits: dict[str, str]) -> dict[str, str]:
    """Every limit checked; the same mapping back."""
    for kind, value in limits.items():
        _check_value(kind, value)
    return limits


def describe(limits: dict[str, str]) -> str:
    """`memory=64M pids=16`, in a stable order, for a death's detail and the daemon's log."""
    return " ".join(f"{k}={limits[k]}" for k in KINDS if k in limits)


def rlimits(limits: dict[str, str]) -> tuple[list[Rlimit], list[str]]:
    """The setrlimit calls that enforce `limits` without cgroups, and the kinds no rlimit can enforce."""
    out: list[Rlimit] = []
    unenforceable: list[str] = []
    for kind in KINDS:
        if kind not in limits:
            continue
        value = limits[kind]
        if kind == "memory":
            out.append(Rlimit(resource.RLIMIT_AS, size_bytes(value), f"memory={value}"))
        elif kind == "pids":
            out.append(Rlimit(resource.RLIMIT_NPROC, int(value), f"pids={value}"))
        elif kind == "nofile":
            out.append(Rlimit(resource.RLIMIT_NOFILE, int(value), f"nofile={value}"))
        else:
            unenforceable.append(kind)
    return out, unenforceable
