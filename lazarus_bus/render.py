"""Terminal output with rich: tables for people, never for machines (those get --json)."""

from __future__ import annotations

import json
import sys
from typing import TYPE_CHECKING, Any

from rich.console import Console
from rich.table import Column, Table

from .errors import NotFound
from .fold import CellView
from .replay import replay_log

if TYPE_CHECKING:
    from .cells import Cell

__all__ = ["cells_table", "replay_with_progress", "status_table", "tasks_table", "view_summary"]

console = Console(highlight=False, soft_wrap=True)


def cells_table(rows: list[dict[str, Any]]) -> None:
    """`cell list`."""
    if not rows:
        console.print("no cells (create one with `lazarus cell create NAME`)")
        return
    table = Table("ID", "NAME", "STATE", "AGENTS", "SEQ", "MISSION", box=None, pad_edge=False)
    for r in rows:
        if r["state"] == "corrupt":
            table.add_row(r["id"], r.get("name", ""), "[bold red]corrupt[/]", "", "", r["error"])
            continue
        table.add_row(r["id"], r["name"], r["state"], str(len(r["agents"])), str(r["seq"]), r["mission"])
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


def status_table(cells: list[dict[str, Any]]) -> None:
    """`status`: one row per agent, grouped by cell."""
    if not cells:
        console.print("no cells (create one with `lazarus cell create NAME`)")
        return
    rows = [r for c in cells for r in c.get("agents", ())]
    spend = any(spend_text(r["spend"]) != "-" for r in rows)  # the columns appear once there is something to show
    doubt = any(r["in_doubt"] for r in rows)
    extra = [*(["SPEND"] if spend else []), *(["IN DOUBT"] if doubt else [])]
    table = Table("CELL", "STATE", "AGENT", "ROLE", "HEALTH", "REVIVAL", "HEARTBEAT", "PID", *extra, "WHY", box=None,
                  pad_edge=False)
    blank = [""] * len(extra)
    for c in cells:
        if "error" in c:
            table.add_row(c["id"], f"[bold red]{c.get('state', 'unreadable')}[/]", "", "", "", "", "", "", *blank,
                          c["error"])
            continue
        if not c["agents"]:
            table.add_row(c["name"], c["state"], "-", "", "", "", "", "", *blank, "")
        for r in c["agents"]:
            style = HEALTH_STYLE.get(r["health"], "yellow")
            held = ", ".join(r["in_doubt"])
            more = [*([spend_text(r["spend"])] if spend else []),
                    *([f"[bold yellow]{held}[/]" if held else ""] if doubt else [])]
            table.add_row(c["name"], c["state"], r["agent"], r["role"], f"[{style}]{r['health']}[/]",
                          r["revival"] or "", _age(r["heartbeat_age"]), str(r["pid"] or "-"), *more, r["reason"] or "")
    console.print(table)
    for c in cells:
        for r in c.get("agents", ()):
            if r["in_doubt"]:
                console.print(f"{c['name']}/{r['agent']} has effects in doubt: {', '.join(r['in_doubt'])} "
                              f"(`lazarus effects {c['name']} --in-doubt`, then `lazarus effects resolve`)")
            if "awaiting approval " in (r["revival"] or ""):
                key = r["revival"].rsplit(" ", 1)[1]
                console.print(f"{c['name']}/{r['agent']} waits for you: "
                              f"`lazarus approve {key}` or `lazarus deny {key}`")


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
        table.add_row(r["effect_id"], r["agent"], r["name"] or "-", str(r["attempt"]), status,
                      told if len(told) <= 36 else told[:35] + "…", str(r["seq"]))
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
                      ", ".join(t["depends_on"]) or "-", t["title"])
    console.print(table)


def view_summary(view: CellView) -> None:
    """`replay` without --json: what the log says, in brief."""
    console.print(f"cell {view.name} ({view.id}) {view.state} at seq {view.seq}")
    if view.mission:
        console.print(f"mission: {view.mission}")
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
            view = replay_log(cell.log, until, lambda seq: bar.update(task, completed=seq))
    else:
        view = replay_log(cell.log, until)
    if view is None:
        raise NotFound(f"cell {cell.id} has an empty log")
    return view
