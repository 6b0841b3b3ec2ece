"""Cell lifetimes (section 17), purely: when a cell expires, is archived, or reminds an agent to checkpoint."""

from __future__ import annotations

from . import events as ev
from .fold import CHECKPOINT_DUE, AgentView, CellView

__all__ = ["EXPIRING_AT", "checkpoint_age", "checkpoint_overdue", "due", "reminders"]

EXPIRING_AT = 0.9  # of max_duration: `cell.expiring`
LIVE = ("provisioned", "active", "frozen")  # states a lifetime can end


def due(view: CellView, now: float) -> list[ev.AnyEvent]:
    """What the cell's lifetime appends now: `cell.archived` past `max_duration` or once every agent
    completed or left (`auto_archive`), `cell.expiring` at 90% of `max_duration`, else nothing."""
    if view.state not in LIVE:
        return []
    if view.max_duration > 0:
        deadline = view.created_at + view.max_duration
        if now >= deadline:
            return [ev.CellArchived(by="lazarus", reason="max_duration")]
        if now >= view.created_at + EXPIRING_AT * view.max_duration and not view.expiring_at:
            return [ev.CellExpiring(by="lazarus", deadline=deadline, max_duration=view.max_duration)]
    if (view.auto_archive and view.state != "frozen" and view.agents
            and all(a.phase == "left" for a in view.agents.values())):
        return [ev.CellArchived(by="lazarus", reason="auto_archive")]
    return []


def checkpoint_age(a: AgentView, now: float) -> float:
    """Seconds since the agent's newest checkpoint (or since it started, when it has none)."""
    since = a.last_checkpoint_at or max(a.spawned_at, a.invited_at)
    return now - since


def checkpoint_overdue(view: CellView, a: AgentView, now: float) -> bool:
    """A working agent whose newest checkpoint is older than the cell's `checkpoint_interval`."""
    return (view.checkpoint_interval > 0 and view.state in ("provisioned", "active") and a.phase == "running"
            and checkpoint_age(a, now) >= view.checkpoint_interval)


def reminders(view: CellView, now: float) -> list[ev.AnyEvent]:
    """A `lazarus.checkpoint_due` message to each overdue agent, once per interval."""
    out: list[ev.AnyEvent] = []
    for a in view.agents.values():
        if checkpoint_overdue(view, a, now) and now - a.checkpoint_due_at >= view.checkpoint_interval:
            out.append(ev.BusMessage(by="lazarus", topic=CHECKPOINT_DUE, to=a.name, payload={
                "checkpoint_interval": view.checkpoint_interval, "last_checkpoint": a.last_checkpoint,
                "age": round(checkpoint_age(a, now), 3)}))
    return out
