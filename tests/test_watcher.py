"""The watcher follows appends from other processes and cells that come and go."""

from __future__ import annotations

import asyncio
import shutil
import time
from collections.abc import Callable
from pathlib import Path

from lazarus_bus import Cell, Root
from lazarus_bus import events as ev
from lazarus_bus.events import Event
from lazarus_bus.watcher import Watcher
from tests.conftest import Cli


async def until(check: Callable[[], bool], timeout: float = 60.0) -> None:
    """Await a condition the watcher makes true (no fixed sleep; the deadline only bounds a failure)."""
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, "condition not reached in time"
        await asyncio.sleep(0.005)


async def _follow(root: Root, cli: Cli) -> None:
    seen: list[tuple[str, int]] = []

    def on_events(cell: Cell, events: list[Event]) -> None:
        seen.extend((cell.id, e.seq) for e in events)

    watcher = Watcher(root, on_events)
    stop = asyncio.Event()
    task = asyncio.create_task(watcher.run(stop, tick=5.0))  # a long tick: only notifications can pass
    try:
        cell_id = (await asyncio.to_thread(cli.ok, "cell", "create", "forge")).strip()
        await until(lambda: cell_id in watcher.cells and (cell_id, 1) in seen)
        await asyncio.to_thread(cli.ok, "agent", "invite", "forge", "ada", "--role", "lead")
        await asyncio.to_thread(cli.ok, "heartbeat", "forge", "ada", "--cycle", "7")
        await until(lambda: (cell_id, 4) in seen)  # invited, heartbeat, cell.activated
        view = watcher.views()[cell_id]
        assert view.state == "active" and view.agents["ada"].cycle == 7
        assert view == Cell(root, cell_id).replay()

        # a torn last line is not an event: the watcher waits for the rest
        log = root.path / cell_id / "logs" / "events.jsonl"
        with open(log, "ab") as f:
            f.write(b'{"seq":5,"type":"agent.heart')
        # the next writer quarantines those bytes and appends; the watcher folds seq 5, the real one
        await asyncio.to_thread(cli.ok, "heartbeat", "forge", "ada", "--cycle", "8")
        await until(lambda: (cell_id, 5) in seen)
        assert watcher.views()[cell_id].agents["ada"].cycle == 8 and cell_id not in watcher.errors
        assert (root.path / cell_id / "logs" / "events.torn").exists()

        other = (await asyncio.to_thread(cli.ok, "cell", "create", "second")).strip()
        await until(lambda: other in watcher.cells)
        shutil.rmtree(root.path / other)
        await until(lambda: other not in watcher.cells)
        assert not task.done()
    finally:
        stop.set()
        await asyncio.wait_for(task, 10)


def test_watcher_follows_other_processes_and_new_cells(root: Root, cli: Cli) -> None:
    asyncio.run(_follow(root, cli))


def test_watcher_starts_from_snapshot_and_folds_only_the_tail(root: Root, root_dir: Path) -> None:
    cell = root.create("forge")
    cell.append(ev.AgentInvited(by="operator", agent="ada", role="lead"))
    w = Watcher(root)
    w.scan()
    w.snapshot_all()
    snap = root_dir / cell.id / "state" / "projection.json"
    assert snap.exists()
    for cycle in range(1, 4):
        cell.append(ev.AgentHeartbeat(by="ada", agent="ada", cycle=cycle))
    w2 = Watcher(root)
    w2.scan()
    assert w2.views()[cell.id] == cell.replay()
