"""The side-effect ledger's rules: which effects are open, which are in doubt, and what may start again."""

from __future__ import annotations

from typing import Any

import msgspec

from .fold import AgentView, CellView, EffectView

__all__ = ["effect_row", "effect_rows", "in_doubt", "is_in_doubt", "open_effects", "may_start_again",
           "ledger", "next_attempt"]


def _running(view: CellView, a: AgentView | None) -> bool:
    """Whether the agent has a live session the log knows of (running, or invited and starting)."""
    return a is not None and a.phase in ("running", "invited") and view.state in ("provisioned", "active")


def is_in_doubt(view: CellView, e: EffectView) -> bool:
    """Started, no outcome, and the incarnation (or session) that started it is no longer running."""
    if e.status != "started":
        return False
    a = view.agents.get(e.agent)
    if a is None or not _running(view, a):
        return True
    if e.incarnation:
        return e.incarnation != a.incarnation
    return a.session_seq > e.seq  # an unsupervised agent invited or joined again since: a new session


def may_start_again(e: EffectView) -> bool:
    """A start after a retryable failure or a `retry` resolution is the next attempt."""
    return e.status == "retry" or (e.status == "failed" and e.retryable)


def next_attempt(view: CellView, effect_id: str) -> int:
    """The attempt number a start of this id would be."""
    old = view.effects.get(effect_id)
    return old.attempt + 1 if old is not None else 1


def open_effects(view: CellView, agent: str) -> list[EffectView]:
    """The agent's effects with no outcome (at a death, all of them are in doubt), oldest first."""
    return sorted((e for e in view.effects.values() if e.agent == agent and e.status == "started"),
                  key=lambda e: e.seq)


def in_doubt(view: CellView, agent: str | None = None) -> list[EffectView]:
    """The in-doubt effects of one agent, or of the whole cell, oldest first."""
    return sorted((e for e in view.effects.values() if (agent is None or e.agent == agent) and is_in_doubt(view, e)),
                  key=lambda e: e.seq)


def effect_row(view: CellView, e: EffectView) -> dict[str, Any]:
    """One effect as `lazarus effects --json` and `GET /cells/{cell}/effects` show it."""
    row: dict[str, Any] = msgspec.to_builtins(e)
    row["in_doubt"] = is_in_doubt(view, e)
    return row


def effect_rows(view: CellView, agent: str | None = None, only_in_doubt: bool = False) -> list[dict[str, Any]]:
    """The ledger as rows, oldest first; filtered by agent and to the in-doubt ones on request."""
    rows = [effect_row(view, e) for e in sorted(view.effects.values(), key=lambda e: e.seq)
            if agent is None or e.agent == agent]
    return [r for r in rows if r["in_doubt"]] if only_in_doubt else rows


def ledger(view: CellView, agents: list[str]) -> dict[str, Any]:
    """What a resume packet says of these agents' effects: completed ids with their results, in-doubt ids."""
    mine = sorted((e for e in view.effects.values() if e.agent in agents), key=lambda e: e.seq)
    return {
        "completed": {e.effect_id: e.result for e in mine if e.status == "completed"},
        "in_doubt": [e.effect_id for e in mine if is_in_doubt(view, e)],
        "failed": [e.effect_id for e in mine if e.status == "failed"],
    }
