"""Health from the projection and a given `now`: testable without sleeping."""

from __future__ import annotations

import math
from typing import Any, Literal

from msgspec import Struct

from .budget import blocked, spend_row
from .config import Config
from .effects import in_doubt
from .fold import AgentView, CellView
from .lifetime import checkpoint_overdue
from .policy import Effective, effective
from .probes import limit_of, managed, probed

__all__ = ["ALWAYS", "Health", "Hearing", "Verdict", "agent_rows", "healths", "judge", "phi", "silence_due"]

Health = Literal["healthy", "stale", "dead", "unknown", "stopped", "left"]
MIN_SAMPLES = 3


class Verdict(Struct, frozen=True, kw_only=True):
    """An agent's health, and for `dead` the reason and the numbers behind it."""

    health: Health
    age: float | None = None
    reason: str | None = None
    detail: dict[str, Any] = {}


class Hearing(Struct, frozen=True, kw_only=True):
    """When the judge could hear a cell's agents: silence before `since` (its first complete look at the
    cell) or inside a gap (a stall of its loop, a pause of its machine) is never held against an agent,
    since an agent that heartbeats through the daemon's socket cannot be heard while it is deaf."""

    since: float = 0.0
    gaps: tuple[tuple[float, float], ...] = ()

    def silence(self, last: float, now: float) -> float:
        """The seconds of `last` to `now` the judge was listening."""
        start = max(last, self.since)
        out = now - start
        for lo, hi in self.gaps:
            lo, hi = max(lo, start), min(hi, now)
            if hi > lo:
                out -= hi - lo
        return out


ALWAYS = Hearing()  # judged from the log alone: the CLI, `up --once`, a test


def phi(intervals: tuple[float, ...], age: float) -> float:
    """Phi-accrual suspicion: -log10 of the chance a heartbeat is still to come after `age`."""
    n = len(intervals)
    mean = sum(intervals) / n
    var = sum((x - mean) ** 2 for x in intervals) / n
    std = max(math.sqrt(var), mean * 0.1, 0.05)
    y = (age - mean) / std
    # logistic approximation of the normal CDF's tail (as in Akka's detector)
    e = math.exp(-y * (1.5976 + 0.070566 * y * y))
    p_later = e / (1.0 + e) if age > mean else 1.0 - 1.0 / (1.0 + e)
    return -math.log10(max(p_later, 1e-300))


def _heard(age: float, silent: float) -> dict[str, float]:
    """The silence counted, beside the age, where the judge was deaf for part of it."""
    return {"heard_silent": round(silent, 3)} if age - silent > 1e-3 else {}


def _by_heartbeat(a: AgentView, p: Effective, now: float, hearing: Hearing) -> Verdict:
    age = now - a.last_seen
    silent = hearing.silence(a.last_seen, now)
    still = hearing.silence(a.cycle_since, now)
    if p.progress_after > 0 and a.heartbeats and still > p.progress_after:
        return Verdict(health="dead", age=age, reason="no_progress",
                       detail={"cycle": a.cycle, "unchanged_for": round(now - a.cycle_since, 3),
                               "progress_after": p.progress_after, **_heard(now - a.cycle_since, still)})
    if p.detector == "phi" and len(a.intervals) >= MIN_SAMPLES:
        suspicion = phi(a.intervals, silent)
        detail = {"phi": round(suspicion, 3), "phi_threshold": p.phi_threshold, "age": round(age, 3),
                  **_heard(age, silent)}
        if suspicion >= p.phi_threshold:
            return Verdict(health="dead", age=age, reason="heartbeat_timeout", detail=detail)
        return Verdict(health="stale" if suspicion >= 1.0 else "healthy", age=age, detail=detail)
    if silent > p.dead_after:
        return Verdict(health="dead", age=age, reason="heartbeat_timeout",
                       detail={"age": round(age, 3), "dead_after": p.dead_after, **_heard(age, silent)})
    return Verdict(health="stale" if silent > p.stale_after else "healthy", age=age)


def judge(view: CellView, a: AgentView, p: Effective, now: float, hearing: Hearing = ALWAYS) -> Verdict:
    """healthy, stale, dead, unknown, stopped or left, by the rules of the contract; silence counts only
    while the judge could hear (`hearing`)."""
    age = now - a.last_seen if a.last_seen else None
    if a.phase == "left":
        return Verdict(health="left", age=age, reason=a.left_reason or None)
    if view.state in ("frozen", "archived", "destroyed"):
        return Verdict(health="stopped", age=age)
    if a.phase == "stopped":
        return Verdict(health="stopped", age=age)
    if a.phase == "dead":
        return Verdict(health="dead", age=age, reason=a.dead_reason)
    if a.phase == "exited":
        return Verdict(health="dead", age=age, reason="exited",
                       detail={"returncode": a.returncode, "signal": a.signal})
    outside = probed(a)
    if outside and a.probe_state == "failing" and a.probe_failed >= limit_of(a):
        return Verdict(health="dead", age=age, reason="probe_failed",
                       detail={**a.probe_detail, "failures": a.probe_failed, "probe_failures": limit_of(a)})
    if a.phase == "invited":
        waited = now - a.invited_at
        if outside:
            return Verdict(health="stale" if a.probe_state == "failing" else "unknown")  # its probe decides
        unheard = hearing.silence(a.invited_at, now)
        if not a.command and unheard > p.dead_after:
            return Verdict(health="dead", reason="never_seen",
                           detail={"invited_for": round(waited, 3), "dead_after": p.dead_after,
                                   **_heard(waited, unheard)})
        return Verdict(health="unknown")
    failing = outside and a.probe_state == "failing"
    if (a.command or outside) and not a.heartbeat_interval:
        # judged by its process, or its probe, alone: a failing probe below the limit is late, not dead
        return Verdict(health="stale" if failing else "healthy", age=age,
                       detail={**a.probe_detail, "failures": a.probe_failed} if failing else {})
    verdict = _by_heartbeat(a, p, now, hearing)
    if failing and verdict.health == "healthy":
        return Verdict(health="stale", age=verdict.age, detail={**a.probe_detail, "failures": a.probe_failed})
    return verdict


def silence_due(view: CellView, a: AgentView, p: Effective, now: float, hearing: Hearing = ALWAYS) -> float | None:
    """When `judge` would find the agent dead of silence alone (heartbeat timeout, never seen, no progress)
    if nothing more is heard: the daemon wakes then rather than at its next tick. None: not judged so
    (the phi detector's suspicion is not a deadline: the tick covers it)."""
    if view.state not in ("provisioned", "active") or a.phase not in ("running", "invited") or probed(a):
        return None
    if a.phase == "invited":
        return None if a.command else now + p.dead_after - hearing.silence(a.invited_at, now)
    if a.command and not a.heartbeat_interval:
        return None
    due = None
    if p.detector != "phi" or len(a.intervals) < MIN_SAMPLES:
        due = now + p.dead_after - hearing.silence(a.last_seen, now)
    if p.progress_after > 0 and a.heartbeats:
        still = now + p.progress_after - hearing.silence(a.cycle_since, now)
        due = still if due is None else min(due, still)
    return due


UNSUPERVISED = "unsupervised (no daemon)"


def revival_state(view: CellView, a: AgentView, now: float) -> str | None:
    """Where a dead agent's revival stands, in words an operator acts on (None: nothing pending)."""
    if a.phase == "left":
        return "completed" if a.left_reason == "completed" else None
    if a.budget_exceeded is not None:
        request = view.approvals.get(a.budget_approval or "")
        pending = f", awaiting approval {a.budget_approval}" if request is not None and request.decision is None else ""
        if blocked(a) or pending:
            return f"budget exceeded{pending}"
    if a.phase != "dead" or a.revival is None:
        return None
    if a.revival == "restart":
        due = a.revival_at + a.revival_delay - now
        return f"restarting in {due:.0f}s" if due >= 1 else "restarting"
    if a.revival == "ask" and a.approval:
        request = view.approvals.get(a.approval)
        if request is not None and request.decision is None:
            return f"awaiting approval {a.approval}"
        return f"approval {request.decision}" if request is not None else None
    return a.revival  # escalated, unrecoverable, suppressed, substitute


def progress_columns(a: AgentView, p: Effective, now: float) -> dict[str, Any]:
    """Stuck versus working at a glance: the age of the last progress (the heartbeat `cycle` last
    changed) and the restarts within the attempt window."""
    return {
        "progress_age": round(now - a.cycle_since, 3) if a.cycle_since else None,
        "restarts": sum(1 for t in a.restarts if now - t <= p.attempt_window),
    }


def healths(view: CellView, config: Config, now: float, hearing: Hearing = ALWAYS) -> dict[str, Health]:
    """Each agent's health alone (what `daemon.json` holds, every tick): a fifth of a status row's cost."""
    return {a.name: judge(view, a, effective(config, view, a.name), now, hearing).health for a in view.agents.values()}


def agent_rows(view: CellView, config: Config, now: float, *, no_daemon: bool = False,
               host: str | None = None, hearing: Hearing = ALWAYS) -> list[dict[str, Any]]:
    """One row per agent for `status`, `/cells/{cell}` and the planner's dry run. With `no_daemon`, a
    supervised agent (of `host`, or of any host when None) that the log calls alive is reported
    unsupervised: nobody would notice its death, so `healthy` would be stale evidence."""
    rows = []
    for a in view.agents.values():
        p = effective(config, view, a.name)
        v = judge(view, a, p, now, hearing)
        health: str = v.health
        if no_daemon and a.command and v.health in ("healthy", "stale", "unknown") and host in (None, a.host):
            health = UNSUPERVISED
        rows.append({
            "agent": a.name, "role": a.role, "health": health, "reason": v.reason,
            "revival": revival_state(view, a, now),
            "heartbeat_age": round(now - a.last_heartbeat, 3) if a.last_heartbeat else None,
            "pid": a.pid or None, "supervised": bool(a.command), "attempt": a.attempt,
            "cycle": a.cycle, "status": a.status, "phase": a.phase, "detail": v.detail,
            "spend": spend_row(view, config, a, now), "in_doubt": [e.effect_id for e in in_doubt(view, a.name)],
            "checkpoint_due": checkpoint_overdue(view, a, now),
            "probe": ({"state": a.probe_state or "pending", "failures": a.probe_failed, **a.probe_detail}
                      if probed(a) else None),
            "managed": managed(a),
            **progress_columns(a, p, now),
        })
    return rows
