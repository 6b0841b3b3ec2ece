"""Budgets: an agent's spend across every incarnation against caps layered like `[resurrection]`."""

from __future__ import annotations

import hashlib
from typing import Any

from msgspec import Struct
from msgspec.structs import replace

from . import events as ev
from .config import Config
from .errors import BudgetExceeded
from .fold import AgentView, CellView
from .policy import effective

__all__ = ["Caps", "Spend", "caps_of", "cell_spend", "checks", "spend_of", "spend_row", "over", "blocked",
           "raise_events", "refuse_over"]

WHATS: tuple[ev.Spent, ...] = ("cost", "tokens", "runtime")


class Caps(Struct, frozen=True, kw_only=True):
    """One agent's caps once every layer (and every budget.raised) has spoken; 0 = no cap."""

    cost: float = 0.0
    tokens: float = 0.0
    runtime: float = 0.0
    warn_at: float = 0.8
    on_exceed: ev.OnExceed = "pause"


class Spend(Struct, frozen=True, kw_only=True):
    """What an agent (or a cell) spent, summed over every incarnation."""

    cost: float = 0.0
    tokens: float = 0.0
    tokens_in: int = 0
    tokens_out: int = 0
    calls: int = 0
    runtime: float = 0.0


def _apply(base: Caps, layer: ev.BudgetPolicy | None) -> Caps:
    """Every key the layer sets replaces the one below it."""
    if layer is None:
        return base
    changes: dict[str, Any] = {}
    for field, key in (("max_cost", "cost"), ("max_tokens", "tokens"), ("max_runtime", "runtime"),
                       ("warn_at", "warn_at"), ("on_exceed", "on_exceed")):
        value = getattr(layer, field)
        if value is not None:
            changes[key] = value
    return replace(base, **changes) if changes else base


def base_caps(config: Config, view: CellView, agent: str) -> Caps:
    """The layers without raises: [budget], the mission's entry, the cell's policy, the agent's entry."""
    b = config.budget
    caps = Caps(cost=b.max_cost, tokens=b.max_tokens, runtime=b.max_runtime, warn_at=b.warn_at,
                on_exceed=b.on_exceed)
    caps = _apply(caps, b.missions.get(effective(config, view, agent).mission))
    caps = _apply(caps, view.policy.budget if view.policy is not None else None)
    return _apply(caps, b.agents.get(agent))


def caps_of(config: Config, view: CellView, agent: str) -> Caps:
    """The caps in force: the layers, each set cap grown by what `budget raise` added (no cap stays none)."""
    caps = base_caps(config, view, agent)
    a = view.agents.get(agent)
    if a is None:
        return caps
    return replace(caps, cost=caps.cost + a.raised_cost if caps.cost else 0.0,
                   tokens=caps.tokens + a.raised_tokens if caps.tokens else 0.0,
                   runtime=caps.runtime + a.raised_runtime if caps.runtime else 0.0)


def spend_of(a: AgentView, now: float) -> Spend:
    """An agent's spend: its usage reports, and its supervised running time up to `now`."""
    running = a.command and a.pid and a.spawned_at > a.exited_at and a.phase not in ("left", "stopped")
    runtime = a.runtime + (max(0.0, now - a.spawned_at) if running else 0.0)
    return Spend(cost=a.cost, tokens=a.tokens_in + a.tokens_out, tokens_in=a.tokens_in, tokens_out=a.tokens_out,
                 calls=a.calls, runtime=runtime)


def cell_spend(view: CellView, now: float) -> Spend:
    """A cell's spend: every agent's, every incarnation's."""
    out = Spend()
    for a in view.agents.values():
        s = spend_of(a, now)
        out = Spend(cost=out.cost + s.cost, tokens=out.tokens + s.tokens, tokens_in=out.tokens_in + s.tokens_in,
                    tokens_out=out.tokens_out + s.tokens_out, calls=out.calls + s.calls,
                    runtime=out.runtime + s.runtime)
    return out


def over(spend: Spend, caps: Caps, share: float = 1.0) -> list[tuple[ev.Spent, float, float]]:
    """(what, spent, cap) for every cap the spend reached `share` of."""
    out = []
    for what in WHATS:
        cap = getattr(caps, what)
        spent = getattr(spend, what)
        if cap > 0 and spent >= cap * share:
            out.append((what, spent, cap))
    return out


def blocked(a: AgentView) -> bool:
    """Stopped for its budget (`pause` or `stop`) until a budget.raised."""
    return a.budget_exceeded is not None and a.budget_on_exceed != "ask"


def _key(view: CellView, agent: str) -> str:
    return "budget-" + hashlib.sha256(f"{view.id}:{agent}:{view.seq}:budget".encode()).hexdigest()[:12]


def checks(view: CellView, config: Config, a: AgentView, now: float, channels: list[str]) -> list[ev.AnyEvent]:
    """What the daemon appends for an agent's spend now: a warning once per cap, the first cap reached (with an
    approval request to raise it under `pause` and `ask`), or a raise an approved request grants."""
    caps = caps_of(config, view, a.name)
    if a.budget_exceeded is not None:
        request = view.approvals.get(a.budget_approval or "")
        if request is not None and request.decision is None and config.approvals.timeout > 0 \
                and now - request.requested_at >= config.approvals.timeout:
            cls = ev.RevivalApproved if config.approvals.on_timeout == "approve" else ev.RevivalDenied
            return [cls(by="lazarus", key=request.key, note="timeout")]
        if request is not None and request.decision == "approved":
            base, what = base_caps(config, view, a.name), a.budget_exceeded
            return [ev.BudgetRaised(by="lazarus", agent=a.name, note=f"approved {request.key}",
                                    cost=base.cost if what == "cost" else 0.0,
                                    tokens=int(base.tokens) if what == "tokens" else 0,
                                    runtime=base.runtime if what == "runtime" else 0.0)]
        return []
    spend = spend_of(a, now)
    reached = over(spend, caps)
    if reached:
        what, spent, cap = reached[0]
        out: list[ev.AnyEvent] = [ev.BudgetExceeded(by="lazarus", agent=a.name, what=what, spent=spent, cap=cap,
                                                    on_exceed=caps.on_exceed)]
        if caps.on_exceed in ("pause", "ask"):
            key = _key(view, a.name)
            grant = getattr(base_caps(config, view, a.name), what)
            message = (f"agent {a.name} of cell {view.name} reached its {what} cap ({spent:g} of {cap:g})"
                       + ("; it is stopped" if caps.on_exceed == "pause" else "; it may spend nothing more")
                       + f": run `lazarus approve {key}` to grant another {grant:g}, "
                       f"or `lazarus budget raise {view.name} {a.name} --{what} N`")
            out.append(ev.RevivalApprovalRequested(by="lazarus", key=key, agent=a.name, channels=channels,
                                                   message=message))
        return out
    return [ev.BudgetWarned(by="lazarus", agent=a.name, what=what, spent=spent, cap=cap)
            for what, spent, cap in over(spend, caps, caps.warn_at) if f"{what}:{cap:g}" not in a.budget_warned]


def raise_events(view: CellView, agent: str, *, cost: float = 0.0, tokens: int = 0, runtime: float = 0.0,
                 note: str = "", by: str = "operator") -> list[ev.AnyEvent]:
    """`budget raise`: the budget.raised, and the approval of the agent's pending budget request it answers."""
    out: list[ev.AnyEvent] = [ev.BudgetRaised(by=by, agent=agent, cost=cost, tokens=tokens, runtime=runtime,
                                              note=note)]
    a = view.agents.get(agent)
    request = view.approvals.get(a.budget_approval or "") if a is not None else None
    if request is not None and request.decision is None:
        out.append(ev.RevivalApproved(by=by, key=request.key, note="answered by budget raise"))
    return out


def spend_row(view: CellView, config: Config, a: AgentView, now: float) -> dict[str, Any]:
    """One agent's spend against its caps, for `budget`, `status` and the gateway."""
    spend, caps = spend_of(a, now), caps_of(config, view, a.name)
    left = {w: (round(max(0.0, getattr(caps, w) - getattr(spend, w)), 6) if getattr(caps, w) else None)
            for w in WHATS}
    return {"agent": a.name, "cost": round(spend.cost, 6), "tokens": int(spend.tokens), "tokens_in": spend.tokens_in,
            "tokens_out": spend.tokens_out, "calls": spend.calls, "runtime": round(spend.runtime, 3),
            "caps": {w: getattr(caps, w) or None for w in WHATS}, "left": left, "warn_at": caps.warn_at,
            "on_exceed": caps.on_exceed, "exceeded": a.budget_exceeded, "approval": a.budget_approval}


def refuse_over(view: CellView, config: Config, agent: str, now: float, *, cost: float = 0.0,
                tokens: int = 0) -> None:
    """`me.reserve`: raise BudgetExceeded before a call that would cross a cap, or after one was reached."""
    a = view.agents.get(agent)
    if a is None:
        return
    if a.budget_exceeded is not None:
        raise BudgetExceeded(f"agent {agent} reached its {a.budget_exceeded} cap; "
                             f"an operator may raise it (`lazarus budget raise`)")
    spend, caps = spend_of(a, now), caps_of(config, view, agent)
    for what, amount in (("cost", cost), ("tokens", float(tokens))):
        cap, spent = getattr(caps, what), getattr(spend, what)
        if cap > 0 and (spent >= cap or spent + amount > cap):
            raise BudgetExceeded(f"agent {agent}: {what} would reach {spent + amount:g}, over its cap {cap:g}; "
                                 "not spending it")
    if caps.runtime > 0 and spend.runtime >= caps.runtime:
        raise BudgetExceeded(f"agent {agent} ran {spend.runtime:g} s, its runtime cap {caps.runtime:g}")
