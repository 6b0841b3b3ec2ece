"""`lazarus demo`: a newcomer's first run, from an empty root to an agent revived from its checkpoint."""

from __future__ import annotations

import asyncio
import os
import shlex
import shutil
import signal
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from rich.console import Console

from . import events as ev
from .cells import Cell, Root
from .config import load_config
from .daemon import Daemon
from .errors import LazarusError
from .events import Event
from .replay import verify_log

__all__ = ["run_demo", "EXAMPLES"]

EXAMPLES = Path(__file__).parent / "data" / "examples"
DEMO_CONFIG = """\
# written by `lazarus demo`: quick ticks and revive without asking
fsync = "batch"

[daemon]
tick = 0.2
grace = 1.0

[health]
stale_after = 3
dead_after = 6

[resurrection]
mode = "yes"

[notify]
min_interval = 0
"""
STYLE: dict[type[ev.Event], str] = {
    ev.AgentDeclaredDead: "bold red", ev.AgentExited: "red", ev.RevivalPlanned: "yellow",
    ev.AgentRevived: "bold green", ev.AgentSpawned: "green", ev.HandoffCreated: "cyan",
    ev.HandoffAccepted: "cyan", ev.BusMessage: "magenta", ev.CheckpointCreated: "blue",
}
QUIET = (ev.AgentHeartbeat, ev.CellActivated)  # not worth a line of the timeline


def describe(e: Event) -> str:
    """One line of the timeline."""
    match e:
        case ev.AgentSpawned():
            resume = f" resume {e.resume}" if e.resume else ""
            return f"{e.agent} started, pid {e.pid} (attempt {e.attempt}){resume}"
        case ev.AgentExited():
            how = f"signal {e.signal}" if e.signal else f"exit code {e.returncode}"
            return f"{e.agent} (pid {e.pid}) ended: {how}"
        case ev.AgentDeclaredDead():
            return f"{e.agent} declared dead: {e.reason}"
        case ev.RevivalPlanned():
            return f"{e.agent}: {e.action} planned (restart {e.attempt}, delay {e.delay:g}s)"
        case ev.AgentRevived():
            return f"{e.agent} revived, pid {e.pid}"
        case ev.CheckpointCreated():
            return f"{e.by} checkpoint: {e.summary}"
        case ev.HandoffCreated():
            return f"{e.by} hands off to {e.to}: {e.note}"
        case ev.HandoffAccepted():
            return f"{e.by} accepted the handoff"
        case ev.BusMessage():
            return f"{e.by} on {e.topic}: {e.payload}"
        case ev.AgentLeft():
            return f"{e.agent} left ({e.reason or 'no reason'})"
        case ev.AgentJoined():
            return f"{e.agent} joined"
    return f"{e.type} by {e.by}"


async def _wait(flag: Callable[[], bool], what: str, timeout: float, changed: asyncio.Event) -> None:
    """Until an event in the log makes `flag` true."""
    deadline = time.monotonic() + timeout
    while not flag():
        left = deadline - time.monotonic()
        if left <= 0:
            raise LazarusError(f"demo: gave up waiting for {what} after {timeout:g}s")
        changed.clear()
        try:
            await asyncio.wait_for(changed.wait(), min(left, 0.5))
        except TimeoutError:
            pass


async def _story(root: Root, out: Console) -> Cell:
    py = shlex.quote(sys.executable)
    cell = root.create("demo", mission="write a draft, review it, keep a tally")
    for name, script, env in (("writer", "writer.py", {"WRITER_LINES": "6", "WRITER_PAUSE": "0.25"}),
                              ("reviewer", "reviewer.py", {}), ("keeper", "keeper.py", {})):
        cell.append(ev.AgentInvited(by="operator", agent=name, role="write", env=env,
                                    command=[sys.executable, str(EXAMPLES / script)]))
    out.print(f"cell [bold]demo[/] ({cell.id}) with agents writer, reviewer, keeper; commands under {py}")
    t0 = time.monotonic()
    changed = asyncio.Event()

    def on_event(c: Cell, e: Event) -> None:
        changed.set()
        if not isinstance(e, QUIET):
            style = STYLE.get(type(e), "")
            out.print(f"[dim]{time.monotonic() - t0:6.2f}s[/] [{style}]{describe(e)}[/]" if style else
                      f"[dim]{time.monotonic() - t0:6.2f}s[/] {describe(e)}")

    daemon = Daemon(root, http="", on_event=on_event)
    task = asyncio.create_task(daemon.run())
    try:
        view = cell.refresh
        await _wait(lambda: sum(1 for c in view().checkpoints.values() if c.by == "writer") >= 2,
                    "the writer's second checkpoint", 30, changed)
        victim = view().agents["writer"]
        out.print(f"[bold red]  demo: kill -9 writer (pid {victim.pid}), mid-draft[/]")
        os.kill(victim.pid, signal.SIGKILL)
        await _wait(lambda: view().agents["writer"].spawns >= 2, "the writer's revival", 30, changed)
        await _wait(lambda: "review" in view().topics, "the reviewer's verdict", 60, changed)
        await _wait(lambda: view().agents["reviewer"].phase == "left", "the reviewer to finish", 30, changed)
        out.print("  demo: freezing the cell (the daemon stops the keeper)")
        cell.append(ev.CellFrozen(by="operator", reason="demo over"))
        await _wait(lambda: all(a.phase != "running" for a in view().agents.values()), "the agents to stop", 30,
                    changed)
    finally:
        daemon.stop()
        await asyncio.wait_for(task, 15)
    return cell


def run_demo(keep: Path | None = None) -> int:
    """Run the story in a temporary root; print the timeline, the summary and what to try next."""
    out = Console(highlight=False, soft_wrap=True)
    base = keep or Path(tempfile.mkdtemp(prefix="lazarus-demo-"))
    root_path = base / "missions"
    root_path.mkdir(parents=True, exist_ok=True)
    (root_path / "lazarus.toml").write_text(DEMO_CONFIG)
    root = Root(root_path, load_config(root_path / "lazarus.toml"))
    root.init()
    out.print(f"[bold]Lazarus Pit demo[/]: a temporary root at {root_path}")
    started = time.monotonic()
    cell = asyncio.run(_story(root, out))
    view = cell.replay()
    count, head, _ = verify_log(cell.log)
    writer = view.agents["writer"]
    draft = (cell.workspace / "draft.txt").read_text().splitlines()
    out.print()
    out.print(f"[bold]Summary[/] ({time.monotonic() - started:.1f}s): {count} events, "
              f"chain verified (head {head[:16]}...)")
    intact = [line.split()[1] for line in draft] == [str(n) for n in range(1, len(draft) + 1)]
    out.print(f"  writer died {writer.deaths} time(s), was started {writer.spawns} times, and resumed from its "
              f"checkpoint: the draft has {len(draft)} lines, "
              + ("none lost, none repeated" if intact else "[bold red]but they are not in order[/]"))
    out.print(f"  checkpoints {len(view.checkpoints)}, handoffs {len(view.handoffs)}, messages {view.messages}")
    beside = Path(sys.executable).parent / "lazarus"  # a virtualenv's script, when not on PATH
    lz = "lazarus" if shutil.which("lazarus") == str(beside) or not beside.exists() else shlex.quote(str(beside))
    r = f"--root {shlex.quote(str(root_path))}"
    out.print()
    out.print("[bold]Look further:[/]")
    for cmd in (f"{lz} {r} status", f"{lz} {r} tail demo --type 'agent.*'",
                f"{lz} {r} tail demo --type agent.declared_dead", f"{lz} {r} verify demo",
                f"{lz} {r} replay demo", f"{lz} {r} cell thaw demo && {lz} {r} up"):
        out.print(f"  {cmd}")
    return 0
