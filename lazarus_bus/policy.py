"""Policy layering: defaults, [resurrection], the mission, the cell, the agent entry, the agent's `revive`."""

from __future__ import annotations

from typing import Literal

import msgspec
from msgspec import Struct
from msgspec.structs import replace

from .config import Config
from .events import Policy
from .fold import CellView

__all__ = ["Effective", "effective"]


class Effective(Struct, frozen=True, kw_only=True):
    """The settings that apply to one agent once every layer has spoken."""

    mode: Literal["yes", "no", "ask"]
    mission: str
    substitutes: list[str]
    max_attempts: int
    attempt_window: float
    backoff_initial: float
    backoff_factor: float
    backoff_max: float
    stable_after: float
    restart_on: Literal["failure", "always"]
    stale_after: float
    dead_after: float
    progress_after: float
    detector: Literal["timeout", "phi"]
    phi_threshold: float
    prefer: Literal["restart", "substitute"] = "restart"


def _apply(base: Effective, layer: Policy | None) -> Effective:
    """Every key the layer sets replaces the one below it."""
    if layer is None:
        return base
    changes = {f: getattr(layer, f) for f in layer.__struct_fields__
               if getattr(layer, f) is not None and f not in ("mission", "budget")}
    return replace(base, **changes) if changes else base


_CACHE: dict[tuple[int, str, bytes, str, str | None], tuple[Config, Effective]] = {}
_CACHE_MAX = 50_000


def effective(config: Config, view: CellView, agent: str) -> Effective:
    """Layers in order, each overriding the one before (memoized: the daemon asks every tick)."""
    a = view.agents.get(agent)
    revive = a.revive if a is not None else None
    key = (id(config), view.name, msgspec.json.encode(view.policy) if view.policy else b"", agent, revive)
    hit = _CACHE.get(key)
    if hit is not None and hit[0] is config:
        return hit[1]
    if len(_CACHE) >= _CACHE_MAX:
        _CACHE.clear()
    result = _layers(config, view, agent)
    _CACHE[key] = (config, result)
    return result


def _layers(config: Config, view: CellView, agent: str) -> Effective:
    r, h = config.resurrection, config.health
    base = Effective(
        mode=r.mode, mission=view.name, substitutes=list(r.substitutes.get(agent, [])),
        max_attempts=r.max_attempts, attempt_window=r.attempt_window, backoff_initial=r.backoff_initial,
        backoff_factor=r.backoff_factor, backoff_max=r.backoff_max, stable_after=r.stable_after,
        restart_on=r.restart_on, stale_after=h.stale_after, dead_after=h.dead_after,
        progress_after=h.progress_after, detector=h.detector, phi_threshold=h.phi_threshold, prefer=r.prefer,
    )
    own = r.agents.get(agent)
    mission = (own.mission if own and own.mission else None) or view.name
    eff = _apply(replace(base, mission=mission), r.missions.get(mission))
    eff = _apply(eff, view.policy)
    eff = _apply(eff, own)
    a = view.agents.get(agent)
    if a is not None and a.revive is not None:
        eff = replace(eff, mode=a.revive)
    return eff
