"""Where a revived agent picks up: the resume pointer and packet, pure functions of the projection."""

from __future__ import annotations

from typing import Any

from .budget import spend_row
from .config import Config
from .effects import ledger
from .errors import NotFound
from .fold import CellView, CheckpointView

__all__ = ["agent_packet", "checkpoint_packet", "resume_packet", "resume_pointer"]


def checkpoint_packet(cp: CheckpointView) -> dict[str, Any]:
    """A checkpoint as a resume packet holds it."""
    return {"checkpoint_id": cp.checkpoint_id, "by": cp.by, "summary": cp.summary, "state": cp.state,
            "artifacts": cp.artifacts, "archive": cp.archive, "sha256": cp.sha256, "seq": cp.seq}


def agent_packet(view: CellView, config: Config, agent: str, now: float, also: tuple[str, ...] = ()) -> dict[str, Any]:
    """What a (revived) agent is told about itself, so an LLM agent knows what was done, what is unverified
    and where to pick up: its effects (and those of the agents it takes over from), its budget spent and
    left, its incarnation and attempt, and its newest checkpoint's summary."""
    a = view.agents.get(agent)
    if a is None:
        raise NotFound(f"agent {agent!r} is not invited in cell {view.name}")
    newest = view.checkpoints.get(a.last_checkpoint or "")
    spend = spend_row(view, config, a, now)
    return {
        "agent": agent,
        "incarnation": a.incarnation,
        "attempt": a.attempt,
        "effects": ledger(view, [agent, *also]),
        "budget": {"spent": {k: spend[k] for k in ("cost", "tokens", "runtime", "calls")}, "caps": spend["caps"],
                   "left": spend["left"], "exceeded": spend["exceeded"]},
        "checkpoint_summary": newest.summary if newest is not None else None,
    }


def resume_packet(view: CellView, handoff_id: str, config: Config | None = None, now: float = 0.0) -> dict[str, Any]:
    """All the recipient needs to pick up where the sender stopped, with the handed-over checkpoint's summary."""
    h = view.handoffs.get(handoff_id)
    if h is None:
        raise NotFound(f"no handoff {handoff_id} in cell {view.name}")
    cp = view.checkpoints.get(h.checkpoint_id or "")
    others = tuple(n for n in (h.by, cp.by if cp is not None else "") if n and n != h.to and n in view.agents)
    return {
        "cell": view.id,
        "cell_name": view.name,
        "mission": view.mission,
        "handoff_id": h.handoff_id,
        "from": h.by,
        "to": h.to,
        "note": h.note,
        "accepted": h.accepted,
        "checkpoint": None if cp is None else checkpoint_packet(cp),
        "participants": {a.name: a.role for a in view.agents.values() if a.phase != "left"},
        "seq": view.seq,
        **(agent_packet(view, config or Config(), h.to, now, others) if h.to in view.agents else {}),
        **({"checkpoint_summary": cp.summary} if cp is not None and h.to in view.agents else {}),
    }


def resume_pointer(view: CellView, agent: str) -> str:
    """`LAZARUS_RESUME`: the newest unaccepted handoff to the agent, else its own newest checkpoint."""
    for h in sorted(view.handoffs.values(), key=lambda h: h.seq, reverse=True):
        if h.to == agent and not h.accepted:
            return f"handoff:{h.handoff_id}"
    a = view.agents.get(agent)
    if a is not None and a.last_checkpoint:
        return f"checkpoint:{a.last_checkpoint}"
    return ""
