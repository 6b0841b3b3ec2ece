"""`lazarus timeline`: a cell's history as swimlanes, one lane per agent, built from its events alone.

Pure: events in, a `Timeline` out (each agent's phase after every event, as the fold says, so the
lanes never disagree with `status`), then drawn as SVG or a standalone HTML page here; the terminal
drawing is in render.py. Stale stretches are heartbeat gaps longer than the agent's `stale_after`."""

from __future__ import annotations

import html
from collections.abc import Callable, Iterable

from msgspec import Struct

from . import events as ev
from .fold import CellView, fold

__all__ = ["Lane", "Mark", "Segment", "Timeline", "build", "to_html", "to_svg"]

#: how each phase is drawn; "invited" is a lane not started yet
STATES = ("invited", "running", "stale", "dead", "stopped")
_PHASE = {"invited": "invited", "running": "running", "exited": "dead", "dead": "dead", "stopped": "stopped",
          "left": "stopped"}
COLOURS = {"invited": "#d0d7de", "running": "#2da44e", "stale": "#d4a72c", "dead": "#cf222e", "stopped": "#6e7781"}
MARK_GLYPHS = {"spawn": "S", "death": "X", "revival": "R", "handoff": "H", "approval": "A", "approved": "+",
               "denied": "-", "checkpoint": "C", "budget": "$", "stop": "|", "update": "U"}


class Segment(Struct, frozen=True, kw_only=True):
    """An agent in one state from `start` to `end` (seconds since the epoch)."""

    state: str
    start: float
    end: float


class Mark(Struct, frozen=True, kw_only=True):
    """Something that happened to an agent at one moment: a spawn, a death and why, a revival..."""

    ts: float
    seq: int
    kind: str
    label: str


class Lane(Struct, frozen=True, kw_only=True):
    """One agent's row."""

    agent: str
    segments: tuple[Segment, ...]
    marks: tuple[Mark, ...]


class Timeline(Struct, frozen=True, kw_only=True):
    """The lanes of a cell between `start` and `end`."""

    cell: str
    name: str
    start: float
    end: float
    since: int
    lanes: tuple[Lane, ...]


def _mark(e: ev.Event, view: CellView) -> tuple[str, Mark] | None:
    """The lane and mark for an event that an operator looks for on a timeline (None for the rest)."""
    agent = getattr(e, "agent", None) or (e.by if e.by in view.agents else None)

    def m(kind: str, label: str) -> Mark:
        return Mark(ts=e.ts, seq=e.seq, kind=kind, label=label)

    if isinstance(e, ev.AgentSpawned):
        return e.agent, m("spawn", f"spawned pid {e.pid} (attempt {e.attempt})")
    if isinstance(e, ev.AgentDeclaredDead):
        d = e.detail
        why = f"signal {d['signal']}" if d.get("signal") else f"code {d['returncode']}" if "returncode" in d else ""
        return e.agent, m("death", f"died: {e.reason}" + (f" ({why})" if why else ""))
    if isinstance(e, ev.AgentRevived):
        sub = e.substitute_for
        via = f", via {e.via}" if e.via else ""  # section 17: by another manager's restart command
        label = f"revived as substitute for {sub}" if sub else f"revived (attempt {e.attempt}{via})"
        return e.agent, m("revival", label)
    if isinstance(e, ev.HandoffCreated) and agent:
        return agent, m("handoff", f"handoff to {e.to}" + (f": {e.note}" if e.note else ""))
    if isinstance(e, ev.HandoffAccepted) and agent:
        return agent, m("handoff", f"accepted handoff {e.handoff_id}")
    if isinstance(e, ev.CheckpointCreated) and agent:
        return agent, m("checkpoint", f"checkpoint {e.summary or e.checkpoint_id}")
    if isinstance(e, ev.RevivalApprovalRequested):
        return e.agent, m("approval", f"approval asked ({e.key})")
    if isinstance(e, (ev.RevivalApproved, ev.RevivalDenied)):
        asked = view.approvals.get(e.key)
        if asked is None:
            return None
        kind = "approved" if isinstance(e, ev.RevivalApproved) else "denied"
        return asked.agent, m(kind, f"{kind} by {e.by}" + (f" ({e.note})" if e.note else ""))
    if isinstance(e, ev.RevivalPlanned) and e.action in ("escalated", "unrecoverable", "suppressed"):
        return e.agent, m("death", f"revival {e.action}")
    if isinstance(e, ev.AgentUpdated):
        return e.agent, m("stop" if e.run == "stop" else "update", f"{e.run or 'update'} by {e.by}")
    if e.type.startswith("budget.") and agent:  # effects & budgets (DESIGN 14), whatever their names
        return agent, m("budget", e.type.removeprefix("budget."))
    return None


def build(events: Iterable[ev.Event], *, now: float, stale_after: Callable[[str], float],
          since: int = 0) -> Timeline | None:
    """The lanes from a cell's whole log (states need the events before `since` too; only what comes
    after it is drawn). `stale_after(agent)` is that agent's threshold; None for an empty log."""
    view: CellView | None = None
    phases: dict[str, list[Segment]] = {}
    marks: dict[str, list[Mark]] = {}
    beat: dict[str, float] = {}  # last sign of life of agents judged by heartbeats
    start: float | None = None

    def enter(agent: str, state: str, ts: float) -> None:
        lane = phases.setdefault(agent, [])
        if lane and lane[-1].state == state:
            return
        if lane:
            lane[-1] = Segment(state=lane[-1].state, start=lane[-1].start, end=ts)
        lane.append(Segment(state=state, start=ts, end=ts))

    for e in events:
        before = view
        view = fold(view, e)
        if start is None and e.seq > since:
            start = e.ts
        if before is not None:
            found = _mark(e, before if isinstance(e, (ev.RevivalApproved, ev.RevivalDenied)) else view)
            if found is not None and found[0] in view.agents:
                marks.setdefault(found[0], []).append(found[1])
        for a in view.agents.values():
            state = _PHASE[a.phase] if view.state not in ("frozen", "archived") or a.phase == "left" else "stopped"
            judged = bool(a.heartbeat_interval or not a.command)
            lane = phases.get(a.name)
            if judged and lane and lane[-1].state == "running" and a.name in beat:
                # a silence longer than stale_after, ended by this sign of life or by a verdict
                until = a.last_seen if state == "running" else e.ts
                if until - beat[a.name] > stale_after(a.name):
                    enter(a.name, "stale", beat[a.name] + stale_after(a.name))
            if state == "running" and judged and a.last_seen:
                beat[a.name] = a.last_seen
            enter(a.name, state, e.ts)
    if view is None:
        return None
    start = view.updated_at if start is None else start
    end = max(now, view.updated_at)
    lanes = []
    for name, segs in phases.items():
        last = segs[-1]
        a = view.agents[name]
        if last.state == "running" and (a.heartbeat_interval or not a.command) and a.last_seen \
                and end - a.last_seen > stale_after(name):
            segs[-1] = Segment(state="running", start=last.start, end=a.last_seen + stale_after(name))
            segs.append(Segment(state="stale", start=a.last_seen + stale_after(name), end=end))
        else:
            segs[-1] = Segment(state=last.state, start=last.start, end=end)
        shown = tuple(Segment(state=s.state, start=max(s.start, start), end=s.end) for s in segs
                      if s.end >= start and s.end > s.start or s is segs[-1])
        lanes.append(Lane(agent=name, segments=shown,
                          marks=tuple(m for m in marks.get(name, ()) if m.seq > since)))
    return Timeline(cell=view.id, name=view.name, start=start, end=end, since=since, lanes=tuple(lanes))


def _clock(seconds: float) -> str:
    """A time offset as people read it on an axis: 45s, 12m, 3h."""
    if seconds < 10:
        return f"{seconds:.1f}s"
    if seconds < 120:
        return f"{seconds:.0f}s"
    if seconds < 7200:
        return f"{seconds / 60:.0f}m"
    return f"{seconds / 3600:.1f}h"


def to_svg(t: Timeline, width: int = 960) -> str:
    """The swimlanes as one SVG document: a rect per state, a marker with a tooltip per mark."""
    label_w, lane_h, top, pad = 140, 30, 34, 10
    plot_w = width - label_w - pad
    height = top + lane_h * len(t.lanes) + 44
    span = max(t.end - t.start, 1e-9)

    def x(ts: float) -> float:
        return round(label_w + (ts - t.start) / span * plot_w, 2)

    out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
           f'viewBox="0 0 {width} {height}" font-family="sans-serif" font-size="12" '
           f'data-cell="{html.escape(t.cell)}" role="img">',
           f'<title>timeline of cell {html.escape(t.name)}</title>',
           f'<text x="{pad}" y="18" font-weight="bold">cell {html.escape(t.name)}</text>']
    for i in range(5):  # the axis: 0 to the whole span, in five steps
        ts = t.start + span * i / 4
        out.append(f'<line x1="{x(ts)}" y1="{top - 6}" x2="{x(ts)}" y2="{top + lane_h * len(t.lanes)}" '
                   f'stroke="#eaeef2"/>')
        anchor = "end" if i == 4 else "start"
        out.append(f'<text x="{x(ts)}" y="{top - 10}" fill="#57606a" text-anchor="{anchor}">'
                   f'+{_clock(ts - t.start)}</text>')
    for row, lane in enumerate(t.lanes):
        y = top + row * lane_h
        name = html.escape(lane.agent)
        out.append(f'<g class="lane" data-agent="{name}">')
        out.append(f'<text x="{pad}" y="{y + lane_h / 2 + 4}">{name}</text>')
        for s in lane.segments:
            w = max(x(s.end) - x(s.start), 0.5)
            out.append(f'<rect class="segment" data-state="{s.state}" x="{x(s.start)}" y="{y + 6}" '
                       f'width="{round(w, 2)}" height="{lane_h - 12}" fill="{COLOURS[s.state]}">'
                       f'<title>{name}: {s.state} for {_clock(s.end - s.start)}</title></rect>')
        for m in lane.marks:
            cx, cy = x(m.ts), y + lane_h / 2
            out.append(f'<g class="mark" data-kind="{m.kind}" data-seq="{m.seq}">'
                       f'<circle cx="{cx}" cy="{cy}" r="6" fill="white" stroke="#24292f"/>'
                       f'<text x="{cx}" y="{cy + 4}" text-anchor="middle" font-size="9">{MARK_GLYPHS[m.kind]}</text>'
                       f'<title>seq {m.seq}: {html.escape(m.label)}</title></g>')
        out.append("</g>")
    ly = top + lane_h * len(t.lanes) + 24
    lx = float(label_w)
    for state in STATES:
        out.append(f'<rect x="{lx}" y="{ly - 10}" width="12" height="12" fill="{COLOURS[state]}"/>'
                   f'<text x="{lx + 16}" y="{ly}">{state}</text>')
        lx += 90
    out.append("</svg>")
    return "\n".join(out)


def to_html(t: Timeline) -> str:
    """A page that stands alone: the SVG and, under it, every mark in order with its seq."""
    rows = sorted(((m, lane.agent) for lane in t.lanes for m in lane.marks), key=lambda x: x[0].seq)
    table = "\n".join(f"<tr><td>{m.seq}</td><td>+{_clock(m.ts - t.start)}</td><td>{html.escape(agent)}</td>"
                      f"<td>{m.kind}</td><td>{html.escape(m.label)}</td></tr>" for m, agent in rows)
    return ("<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            f"<title>timeline of {html.escape(t.name)}</title>"
            "<style>body{font-family:sans-serif;margin:2em}table{border-collapse:collapse}"
            "td,th{padding:2px 10px;border-bottom:1px solid #eaeef2;text-align:left}</style></head><body>\n"
            f"<h1>cell {html.escape(t.name)}</h1>\n{to_svg(t)}\n"
            "<table><thead><tr><th>seq</th><th>at</th><th>agent</th><th>kind</th><th>what</th></tr></thead>"
            f"<tbody>\n{table}\n</tbody></table>\n</body></html>\n")
