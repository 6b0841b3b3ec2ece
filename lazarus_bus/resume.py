"""Where a revived agent picks up: the resume pointer and packet, pure functions of the projection."""

from __future__ import annotations

from typing import Any

from .errors import NotFound
from .fold import CellView

__all__ = ["resume_packet", "resume_pointer"]


def resume_packet(view: CellView, handoff_id: str) -> dict[str, Any]:
    """Everything the recipient needs to pick up where the sender stopped."""
    h = view.handoffs.get(handoff_id)
    if h is None:
        raise NotFound(f"no handoff {handoff_id} in cell {view.name}")
    cp = view.checkpoints.get(h.checkpoint_id or "")
    return {
        "cell": view.id,
        "cell_name": view.name,
        "mission": view.mission,
        "handoff_id": h.handoff_id,
        "from": h.by,
        "to": h.to,
        "note": h.note,
        "accepted": h.accepted,
        "checkpoint": None if cp is None else {
            "checkpoint_id": cp.checkpoint_id, "by": cp.by, "summary": cp.summary, "state": cp.state,
            "artifacts": cp.artifacts, "archive": cp.archive, "sha256": cp.sha256, "seq": cp.seq,
        },
        "participants": {a.name: a.role for a in view.agents.values() if a.phase != "left"},
        "seq": view.seq,
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
