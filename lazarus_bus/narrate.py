"""`lazarus up -v`: each action the log records, told in one line a person reads at a glance.

Pure: an event (and its cell's name) in, a line out; the daemon logs it, as text or, with
`--log-json`, as one JSON object per line with the event's cell, seq, type and agent beside it."""

from __future__ import annotations

import json
import logging
from typing import Any

from . import events as ev

__all__ = ["JsonFormatter", "describe", "fields"]


def _death(e: ev.AgentDeclaredDead) -> str:
    d = e.detail
    if e.reason == "exited":
        why = f"signal {d['signal']}" if d.get("signal") else f"code {d.get('returncode')}"
        return f"exited ({why}{', limit ' + str(d['limit']) if d.get('limit') else ''})"
    if e.reason == "heartbeat_timeout" and "age" in d:
        return f"no heartbeat for {float(d['age']):.0f}s"
    if e.reason == "no_progress" and "unchanged_for" in d:
        return f"no progress for {float(d['unchanged_for']):.0f}s (cycle {d.get('cycle')})"
    if e.reason == "probe_failed":
        return f"probe failed {d.get('failures')} times in a row ({d.get('error', '')})"
    if e.reason == "restart_failed":
        return f"its restart command failed ({d.get('error') or 'code ' + str(d.get('returncode'))})"
    return str(e.reason or "unknown")


def _planned(e: ev.RevivalPlanned) -> str:
    who = "the operator's " if e.by == "operator" else ""
    if e.action == "restart":
        when = f" in {e.delay:g}s" if e.delay else " now"
        return f"{who}restart{when} (attempt {e.attempt})" if e.attempt else f"{who}restart{when}"
    if e.action == "substitute":
        return f"substitute {e.substitute}"
    if e.action == "escalated":
        return f"escalated after {e.attempt} restarts: `lazarus revive` to try again"
    if e.action == "ask":
        return "revival needs an approval"
    return str(e.action)  # suppressed, unrecoverable


def _updated(e: ev.AgentUpdated) -> str:
    changed = [k for k in ("command", "env", "heartbeat_interval", "revive") if getattr(e, k) is not None]
    parts = [f"{e.run} asked by {e.by}"] if e.run else []
    if changed:
        parts.append("updated " + ", ".join(changed))
    return "; ".join(parts)


def describe(cell: str, e: ev.Event) -> str | None:
    """The line for one event, or None for those that are not an action (heartbeats, bus traffic)."""
    agent = getattr(e, "agent", None)
    where = f"{cell}/{agent}" if agent else cell
    text: str | None = None
    if isinstance(e, ev.AgentSpawned):
        text = f"spawned pid {e.pid} (attempt {e.attempt})"
    elif isinstance(e, ev.AgentExited):
        text = f"process {e.pid} ended ({f'signal {e.signal}' if e.signal else f'code {e.returncode}'})"
    elif isinstance(e, ev.AgentDeclaredDead):
        text = f"dead: {_death(e)}"
    elif isinstance(e, ev.RevivalPlanned):
        text = f"revival: {_planned(e)}"
    elif isinstance(e, ev.AgentRevived):
        text = (f"revived as substitute for {e.substitute_for}" if e.substitute_for
                else f"revived by its manager: {' '.join(e.detail.get('argv', []))} (attempt {e.attempt})"
                if e.via == "restart_cmd" else f"revived, pid {e.pid} (attempt {e.attempt})")
    elif isinstance(e, ev.AgentProbeFailed):
        text = f"probe failed ({e.failures} in a row): {e.detail.get('error', '')}"
    elif isinstance(e, ev.AgentProbeOk):
        text = "probe ok"
    elif isinstance(e, ev.CellExpiring):
        text = f"expiring: archived at max_duration {e.max_duration:g} s"
    elif isinstance(e, ev.RevivalApprovalRequested):
        text = f"approval asked, key {e.key}: `lazarus approve {e.key}` or `lazarus deny {e.key}`"
    elif isinstance(e, (ev.RevivalApproved, ev.RevivalDenied)):
        decided = "approved" if isinstance(e, ev.RevivalApproved) else "denied"
        text = f"approval {e.key} {decided} by {e.by}" + (f" ({e.note})" if e.note else "")
    elif isinstance(e, ev.AgentUpdated):
        text = _updated(e)
    elif isinstance(e, ev.AgentLeft):
        text = "left" + (f" ({e.reason})" if e.reason else "")
    elif isinstance(e, ev.AgentInvited):
        text = f"invited as {e.role}" + (" (supervised)" if e.command else "")
    elif isinstance(e, ev.LeaderElected):
        text = f"led by {e.instance} (epoch {e.epoch})"
    elif isinstance(e, (ev.CellActivated, ev.CellFrozen, ev.CellThawed, ev.CellArchived, ev.CellDestroyed)):
        text = e.type.removeprefix("cell.") + (f" ({e.reason})" if e.reason else "")
    return f"{where}: {text}" if text else None


def fields(cell_id: str, e: ev.Event) -> dict[str, Any]:
    """What a JSON log line carries besides the message: enough to find the event in the log."""
    out: dict[str, Any] = {"cell": cell_id, "seq": e.seq, "type": e.type, "by": e.by}
    agent = getattr(e, "agent", None)
    if agent:
        out["agent"] = agent
    return out


class JsonFormatter(logging.Formatter):
    """`--log-json`: one JSON object per line (ts, level, logger, message, and an action's event fields)."""

    def format(self, record: logging.LogRecord) -> str:
        body: dict[str, Any] = {"ts": round(record.created, 6), "level": record.levelname.lower(),
                                "logger": record.name, "message": record.getMessage()}
        extra = getattr(record, "lazarus", None)
        if isinstance(extra, dict):
            body.update(extra)
        if record.exc_info:
            body["error"] = self.formatException(record.exc_info)
        return json.dumps(body, default=str)
