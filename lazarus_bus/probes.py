"""Health probes of agents that do not know Lazarus, judged purely: what a probe result changes in the log.

The runner (`outside.py`) probes and reports each result; this module decides whether a result is news
(the log records changes only), what a probe's target is, and fills `{cell}`, `{agent}` and `{host}` into
the commands of an agent another manager runs."""

from __future__ import annotations

from typing import Any, Literal
from urllib.parse import urlsplit

from msgspec import Struct

from . import events as ev
from .errors import MalformedInput
from .fold import AgentView

__all__ = ["DEFAULTS", "ProbeSpec", "change", "check_target", "fill", "limit_of", "managed", "probed", "spec_of"]

# what a zero on the invite means (section 17's defaults)
DEFAULTS = {"probe_period": 10.0, "probe_timeout": 2.0, "probe_failures": 3, "probe_initial_delay": 0.0}


class ProbeSpec(Struct, frozen=True, kw_only=True):
    """One agent's probe, its defaults applied and its placeholders filled."""

    kind: Literal["http", "tcp", "cmd"]
    url: str = ""
    host: str = ""
    port: int = 0
    argv: list[str] = []
    period: float = 10.0
    timeout: float = 2.0
    failures: int = 3
    initial_delay: float = 0.0


def check_target(url: str) -> tuple[str, str, int]:
    """`http://HOST:PORT/PATH`, `https://...` or `tcp://HOST:PORT`, as (scheme, host, port); else one
    clear MalformedInput."""
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as exc:
        raise MalformedInput(f"--probe {url!r}: {exc}") from None
    if parts.scheme not in ("http", "https", "tcp"):
        raise MalformedInput(f"--probe {url!r}: expected http://HOST:PORT/PATH, https://... or tcp://HOST:PORT")
    if not parts.hostname:
        raise MalformedInput(f"--probe {url!r}: no host")
    if parts.scheme == "tcp":
        if port is None:
            raise MalformedInput(f"--probe {url!r}: tcp:// needs a port (tcp://HOST:PORT)")
        if parts.path not in ("", "/"):
            raise MalformedInput(f"--probe {url!r}: tcp:// takes no path")
    return parts.scheme, parts.hostname, port or (443 if parts.scheme == "https" else 80)


def probed(a: AgentView) -> bool:
    """The agent is judged by a probe from outside."""
    return bool(a.probe or a.probe_cmd)


def managed(a: AgentView) -> bool:
    """Another manager runs the agent: the daemon revives it by a command, not by spawning it."""
    return not a.command and bool(a.restart_cmd or a.start_cmd)


def limit_of(a: AgentView) -> int:
    """Failures in a row that make the agent dead."""
    return a.probe_failures or int(DEFAULTS["probe_failures"])


def fill(argv: list[str], *, cell: str, agent: str, host: str) -> list[str]:
    """`{cell}`, `{agent}` and `{host}` substituted in every argument (nothing else is touched)."""
    return [arg.replace("{cell}", cell).replace("{agent}", agent).replace("{host}", host) for arg in argv]


def spec_of(a: AgentView, *, cell: str, host: str) -> ProbeSpec | None:
    """The agent's probe, or None when it has none."""
    if not probed(a):
        return None
    common: dict[str, Any] = {
        "period": a.probe_period or DEFAULTS["probe_period"],
        "timeout": a.probe_timeout or DEFAULTS["probe_timeout"],
        "failures": limit_of(a),
        "initial_delay": a.probe_initial_delay,
    }
    where = a.host or host
    if a.probe_cmd:
        return ProbeSpec(kind="cmd", argv=fill(a.probe_cmd, cell=cell, agent=a.name, host=where), **common)
    url = fill([a.probe], cell=cell, agent=a.name, host=where)[0]
    scheme, target, port = check_target(url)
    return ProbeSpec(kind="tcp" if scheme == "tcp" else "http", url=url, host=target, port=port, **common)


def change(a: AgentView, ok: bool, failures: int, detail: dict[str, Any]) -> ev.Event | None:
    """The event a probe result appends, or None when it changes nothing: the first success (or the first
    after failing), the first failure after success, and the failure that reaches the limit."""
    if ok:
        if a.probe_state == "ok":
            return None
        return ev.AgentProbeOk(by="lazarus", agent=a.name, detail=detail)
    limit = limit_of(a)
    if a.probe_state != "failing" or (failures >= limit > a.probe_failed):
        return ev.AgentProbeFailed(by="lazarus", agent=a.name, failures=failures, detail=detail)
    return None
