"""Terminal output with rich: tables for people, never for machines (those get --json)."""

from __future__ import annotations

import json
import re
import sys
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from rich.console import Console
from rich.markup import escape
from rich.table import Column, Table

from .errors import NotFound
from .fold import CellView
from .replay import replay_log

if TYPE_CHECKING:
    from rich.text import Text

    from .cells import Cell
    from .timeline import Timeline

__all__ = ["cells_table", "live_status", "replay_with_progress", "status_renderables", "status_table", "tasks_table",
           "timeline_lines", "timeline_print", "view_summary"]

CONTROL = re.compile("[\x00-\x1f\x7f-\x9f]")  # C0, DEL and C1: ESC starts a terminal's escape sequences

# piped, a table is read by people later or by grep: wide enough that no cell is cut to "…"
console = Console(highlight=False, soft_wrap=True, width=None if sys.stdout.isatty() else 200)


def _inert(text: str, keep: str = "") -> str:
    """Control characters made visible, so words an agent wrote cannot drive the operator's terminal."""
    return CONTROL.sub(lambda m: m.group() if m.group() in keep else f"\\x{ord(m.group()):02x}", text)


def _free(text: str) -> str:
    """Words a user or an agent wrote, shown as written: one line (a table row stays one row), no markup."""
    first, _, rest = text.strip().partition("\n")
    return escape(_inert(first) + (" …" if rest.strip() else ""))


def cells_table(rows: list[dict[str, Any]]) -> None:
    """`cell list`."""
    if not rows:
        console.print("no cells (create one with `lazarus cell create NAME`)")
        return
    table = Table("ID", "NAME", "STATE", "AGENTS", "SEQ", "MISSION", box=None, pad_edge=False)
    for r in rows:
        if "error" in r:  # corrupt, or unreadable (a registered cell whose log is gone)
            table.add_row(r["id"], r.get("name", ""), f"[bold red]{r['state']}[/]", "", "", _free(r["error"]))
            continue
        table.add_row(r["id"], r["name"], r["state"], str(len(r["agents"])), str(r["seq"]), _free(r["mission"]))
    console.print(table)


HEALTH_STYLE = {"healthy": "green", "stale": "yellow", "dead": "bold red", "unknown": "dim",
                "stopped": "blue", "left": "dim"}


def _age(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    if seconds < 120:
        return f"{seconds:.1f}s"
    if seconds < 7200:
        return f"{seconds / 60:.0f}m"
    return f"{seconds / 3600:.0f}h"


def status_table(cells: list[dict[str, Any]], out: Console | None = None) -> None:
    """`status`: one row per agent, grouped by cell."""
    out = out or console
    for item in status_renderables(cells):
        out.print(item)


def status_renderables(cells: list[dict[str, Any]]) -> list[Table | str]:
    """The table and the "waits for you" lines, for one print or one frame of `status --watch`."""
    if not cells:
        return ["no cells (create one with `lazarus cell create NAME`)"]
    rows = [r for c in cells for r in c.get("agents", ())]
    spend = any(spend_text(r["spend"]) != "-" for r in rows)  # the columns appear once there is something to show
    doubt = any(r["in_doubt"] for r in rows)
    extra = [*(["SPEND"] if spend else []), *(["IN DOUBT"] if doubt else [])]
    table = Table("CELL", "STATE", "AGENT", "ROLE", "HEALTH", "REVIVAL", "RESTARTS", "HEARTBEAT", "PROGRESS", "PID",
                  *extra, "WHY", box=None, pad_edge=False)
    blank = [""] * len(extra)
    for c in cells:
        if "error" in c:
            table.add_row(c["id"], f"[bold red]{c.get('state', 'unreadable')}[/]", "", "", "", "", "", "", "", "",
                          *blank, _free(c["error"]))
            continue
        if not c["agents"]:
            table.add_row(c["name"], c["state"], "-", "", "", "", "", "", "", "", *blank, "")
        for r in c["agents"]:
            style = HEALTH_STYLE.get(r["health"], "yellow")
            held = ", ".join(r["in_doubt"])
            more = [*([spend_text(r["spend"])] if spend else []),
                    *([f"[bold yellow]{held}[/]" if held else ""] if doubt else [])]
            table.add_row(c["name"], c["state"], r["agent"], r["role"], f"[{style}]{r['health']}[/]",
                          r["revival"] or "", str(r.get("restarts", 0)), _age(r["heartbeat_age"]),
                          _age(r.get("progress_age")), str(r["pid"] or "-"), *more, _why(r))
    items: list[Table | str] = [table]
    for c in cells:
        for r in c.get("agents", ()):
            if r["in_doubt"]:
                console.print(f"{c['name']}/{r['agent']} has effects in doubt: {', '.join(r['in_doubt'])} "
                              f"(`lazarus effects {c['name']} --in-doubt`, then `lazarus effects resolve`)")
            if "awaiting approval " in (r["revival"] or ""):
                key = r["revival"].rsplit(" ", 1)[1]
                items.append(f"{c['name']}/{r['agent']} waits for you: "
                             f"`lazarus approve {key}` or `lazarus deny {key}`")
    return items


def _why(r: dict[str, Any]) -> str:
    """The reason of its health, and a checkpoint overdue (section 17's `checkpoint_interval`)."""
    due = "[yellow]checkpoint due[/]" if r.get("checkpoint_due") else ""
    return ", ".join(x for x in (_free(r["reason"] or ""), due) if x)


def live_status(data: Callable[[], dict[str, Any]], interval: float, as_json: bool,
                sleep: Callable[[float], None]) -> None:
    """`status --watch`: redraw in place on a terminal; elsewhere (a pipe) print one frame per interval,
    with --json one JSON line per frame, so a script can follow it too."""
    import json

    if as_json or not console.is_terminal:
        while True:
            body = data()
            if as_json:
                print(json.dumps(body), flush=True)
            else:
                console.print(escape(body["daemon"]["text"]))
                status_table(body["cells"])
                console.print("")
                console.file.flush()
            sleep(interval)
    from rich.console import Group
    from rich.live import Live

    def frame() -> Group:
        body = data()
        return Group(body["daemon"]["text"], *status_renderables(body["cells"]))

    with Live(frame(), console=console, auto_refresh=False, screen=False) as live:
        while True:
            sleep(interval)
            live.update(frame(), refresh=True)


TIMELINE_GLYPHS = {"invited": ("·", "dim"), "running": ("█", "green"), "stale": ("▒", "yellow"),
                   "dead": ("░", "red"), "stopped": ("─", "blue")}


def timeline_lines(t: Timeline, width: int = 72) -> list[Text]:
    """`lazarus timeline`: a row of cells per agent, one glyph per time slot (its state at the slot's
    end, a mark's letter where something happened), then every mark in order with its seq."""
    from rich.text import Text

    from .timeline import MARK_GLYPHS, STATES

    span = max(t.end - t.start, 1e-9)
    name_w = max([len(lane.agent) for lane in t.lanes] + [5])
    out = [Text(f"cell {t.name}: {len(t.lanes)} agents, {_age(t.end - t.start)} from seq {t.since + 1}")]
    for lane in t.lanes:
        row = Text(lane.agent.ljust(name_w) + " ")
        slots: list[tuple[str, str]] = []
        for i in range(width):
            at = t.start + span * (i + 1) / width
            state = next((s.state for s in lane.segments if s.start < at <= s.end), "")
            slots.append(TIMELINE_GLYPHS[state] if state else (" ", ""))
        for m in lane.marks:
            i = min(width - 1, int((m.ts - t.start) / span * width))
            slots[i] = (MARK_GLYPHS[m.kind], "bold")
        for glyph, style in slots:
            row.append(glyph, style=style)
        out.append(row)
    out.append(Text(" " * (name_w + 1) + "+0" + f"+{_age(span)}".rjust(width - 2)))
    out.append(Text("  ".join(f"{TIMELINE_GLYPHS[s][0]} {s}" for s in STATES) + "   "
                    + "  ".join(f"{g} {k}" for k, g in MARK_GLYPHS.items())))
    for lane_mark, agent in sorted(((m, lane.agent) for lane in t.lanes for m in lane.marks), key=lambda x: x[0].seq):
        out.append(Text(f"{lane_mark.seq:>6}  +{_age(lane_mark.ts - t.start):<6} {agent}: {_inert(lane_mark.label)}"))
    return out


def timeline_print(t: Timeline) -> None:
    width = max(20, min(120, (console.width or 100) - max(len(x.agent) for x in t.lanes) - 4)) if t.lanes else 60
    for line in timeline_lines(t, width):
        console.print(line)


def spend_text(row: dict[str, Any]) -> str:
    """`0.42/1 cost, 1200 tokens`: spend, against its cap where one is set; `-` for nothing spent."""
    parts = []
    for what, shown in (("cost", f"{row['cost']:g}"), ("tokens", str(row["tokens"])),
                        ("runtime", f"{row['runtime']:.0f}s")):
        cap = row["caps"][what]
        if cap or (what != "runtime" and row[what]):
            parts.append(f"{shown}/{cap:g} {what}" if cap else f"{shown} {what}")
    if row.get("exceeded"):
        parts.append(f"[bold red]{row['exceeded']} cap reached[/]")
    return ", ".join(parts) or "-"


def effects_table(rows: list[dict[str, Any]]) -> None:
    """`effects`: the ledger, oldest first."""
    if not rows:
        console.print("no effects")
        return
    table = Table(Column("EFFECT", no_wrap=True), "AGENT", "NAME", "ATTEMPT", Column("STATUS", no_wrap=True),
                  Column("RESULT / ERROR", overflow="fold"), "SEQ", box=None, pad_edge=False)
    for r in rows:
        status = "[bold yellow]in doubt[/]" if r["in_doubt"] else r["status"]
        told = r["error"] if r["status"] == "failed" else ("" if r["result"] is None else json.dumps(r["result"]))
        table.add_row(r["effect_id"], r["agent"], _free(r["name"] or "-"), str(r["attempt"]), status,
                      _free(told if len(told) <= 36 else told[:35] + "…"), str(r["seq"]))
    console.print(table)


def budget_table(cell: str, rows: list[dict[str, Any]], total: dict[str, Any]) -> None:
    """`budget`: each agent's spend against its caps, then the cell's total."""
    table = Table("AGENT", "COST", "TOKENS", "RUNTIME", "CALLS", "ON EXCEED", "STATE", box=None, pad_edge=False)
    def vs(r: dict[str, Any], what: str, shown: str) -> str:
        cap = r["caps"][what]
        return f"{shown} / {cap:g}" if cap else shown

    for r in rows:
        state = f"[bold red]{r['exceeded']} cap reached[/]" if r["exceeded"] else ""
        if r["approval"]:
            state += f" (awaiting approval {r['approval']})"
        table.add_row(r["agent"], vs(r, "cost", f"{r['cost']:g}"), vs(r, "tokens", str(r["tokens"])),
                      vs(r, "runtime", f"{r['runtime']:.0f}s"), str(r["calls"]), r["on_exceed"], state)
    console.print(table)
    console.print(f"cell {cell}: cost {total['cost']:g}, tokens {total['tokens']:g}, runtime {total['runtime']:.0f}s, "
                  f"calls {total['calls']}")


def tasks_table(rows: list[dict[str, Any]]) -> None:
    """`bus tasks`."""
    if not rows:
        console.print("no tasks")
        return
    table = Table("TASK", "STATUS", "PRIORITY", "ASSIGNEE", "DEPENDS ON", "TITLE", box=None, pad_edge=False)
    for t in rows:
        table.add_row(t["task_id"], t["status"], t["priority"], t["assignee"] or "-",
                      ", ".join(t["depends_on"]) or "-", _free(t["title"]))
    console.print(table)


def view_summary(view: CellView) -> None:
    """`replay` without --json: what the log says, in brief."""
    console.print(f"cell {view.name} ({view.id}) {view.state} at seq {view.seq}")
    if view.mission:
        console.print(f"mission: {escape(_inert(view.mission, keep=chr(10)))}")
    table = Table("AGENT", "ROLE", "PHASE", "PID", "CYCLE", "HEARTBEATS", "SPAWNS", "DEATHS", box=None)
    for a in view.agents.values():
        table.add_row(a.name, a.role, a.phase, str(a.pid or "-"), str(a.cycle), str(a.heartbeats),
                      str(a.spawns), str(a.deaths))
    if view.agents:
        console.print(table)
    console.print(
        f"messages {view.messages}, checkpoints {len(view.checkpoints)}, handoffs {len(view.handoffs)}, "
        f"tasks {len(view.tasks)}, approvals pending "
        f"{sum(1 for a in view.approvals.values() if a.decision is None)}"
    )


def replay_with_progress(cell: Cell, until: int | None) -> CellView:
    """A fresh replay; a progress bar on a terminal when the log is large."""
    total = cell.head().seq if until is None else min(until, cell.head().seq)
    if sys.stderr.isatty() and total >= 100_000:
        from rich.progress import Progress

        with Progress(console=Console(stderr=True), transient=True) as bar:
            task = bar.add_task("replaying", total=total)
            view = replay_log(cell.log, until, lambda seq: bar.update(task, completed=seq), cell.origin())
    else:
        view = replay_log(cell.log, until, base=cell.origin())
    if view is None:
        raise NotFound(f"cell {cell.id} has an empty log")
    return view
