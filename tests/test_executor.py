"""The executor's rule, through a real daemon and real processes: every death recorded before its
restart (simultaneous deaths too, on both stores), and a plan whose log moved is never run blind."""

from __future__ import annotations

import asyncio
import os
import signal
from collections.abc import Iterator
from pathlib import Path

import msgspec
import pytest

from lazarus_bus import Cell, Config, Root
from lazarus_bus import events as ev
from lazarus_bus.backends.process import ProcessBackend, alive
from lazarus_bus.executor import Executor
from lazarus_bus.fold import CellView
from lazarus_bus.planner import plan
from tests.conftest import Cli, NatsServer, nats_toml
from tests.support import Up, wait

AGENTS = ("a", "b", "c")


def view_of(cell: Cell) -> CellView:
    return cell.refresh()


def _kill_all_at_once(view: CellView) -> None:
    pids = [view.agents[n].pid for n in AGENTS]
    for pid in pids:
        os.killpg(pid, signal.SIGKILL)


def _deaths_before_restarts(cell: Cell, agent: str) -> list[str]:
    """The agent's story in log order, as types (with the revival action)."""
    out = []
    for e in cell.log.read():
        if getattr(e, "agent", None) != agent:
            continue
        out.append(f"{e.type}:{e.action}" if isinstance(e, ev.RevivalPlanned) else e.type)
    return out


@pytest.fixture(params=["file", "nats"])
def store_top(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """Top-level config keys for the store; NATS on a server of the test's own (one stream per account)."""
    if request.param == "file":
        yield ""
        return
    server = NatsServer(tmp_path / "nats-store")
    server.start()
    try:
        yield nats_toml(server)
    finally:
        server.stop(signal.SIGKILL)


def _three_running(up: Up, cli: Cli, resurrection: str, top: str = "") -> tuple[Cell, CellView]:
    """A cell of three supervised agents under a daemon, once all three run."""
    up.config(f'[resurrection]\nmode = "yes"\n{resurrection}', top=top)
    cli.ok("cell", "create", "forge")
    for name in AGENTS:
        cli.ok("agent", "invite", "forge", name, "--role", "write", "--cmd", "sleep 600")
    up.start()
    cell = up.cell()
    v = wait(lambda: (x := view_of(cell)) and all(x.agents[n].phase == "running" for n in AGENTS) and x, "starts")
    return cell, v


def test_simultaneous_deaths_each_declared_and_planned_before_the_restart(store_top: str, up: Up, cli: Cli) -> None:
    cell, v = _three_running(up, cli, "", top=store_top)
    _kill_all_at_once(v)
    wait(lambda: all(view_of(cell).agents[n].spawns == 2 and view_of(cell).agents[n].phase == "running"
                     for n in AGENTS), "three restarts", timeout=60)
    for name in AGENTS:
        story = _deaths_before_restarts(cell, name)
        assert story == ["agent.invited", "agent.spawned", "agent.exited", "agent.declared_dead",
                         "revival.planned:restart", "agent.spawned", "agent.revived"], (name, story)


def test_max_attempts_holds_when_deaths_come_together(up: Up, cli: Cli) -> None:
    cell, v = _three_running(up, cli, "max_attempts = 1\n")
    _kill_all_at_once(v)
    v = wait(lambda: (x := view_of(cell)) and all(x.agents[n].spawns == 2 and x.agents[n].phase == "running"
                                                  for n in AGENTS) and x, "one restart each", timeout=60)
    _kill_all_at_once(v)
    wait(lambda: all(view_of(cell).agents[n].revival == "escalated" for n in AGENTS), "three escalations",
         timeout=60)
    for name in AGENTS:
        story = _deaths_before_restarts(cell, name)
        assert story.count("agent.declared_dead") == 2, (name, story)
        assert story.count("agent.spawned") == 2, (name, story)  # the third start never happened
        assert story[-1] == "revival.planned:escalated", (name, story)


def test_a_plan_whose_log_moved_is_planned_again_not_run(root: Root, tmp_path: Path) -> None:
    """A death declared and a restart planned at seq N, then someone else writes: nothing of it runs."""
    cfg = msgspec.convert({"fsync": "never", "resurrection": {"mode": "yes"}}, Config)
    root = Root(root.path, cfg)
    cell = root.create("forge")
    cell.append(ev.AgentInvited(by="operator", agent="w", role="write", command=["sleep", "600"]))
    backend = ProcessBackend("here", grace=0.5)

    async def scenario() -> None:
        ex = Executor(backend, grace=0.5, cells={cell.id: cell}.get, on_exit=lambda _: None)
        [start] = plan(cell.refresh(), cfg, 0.0, "here")
        assert ex.carry_out(cell, [start])  # the first start runs
        a = cell.refresh().agents["w"]
        os.killpg(a.pid, signal.SIGKILL)
        deadline = asyncio.get_running_loop().time() + 20
        while ex.procs:  # the executor's pidfd watch sees the end and records agent.exited
            assert asyncio.get_running_loop().time() < deadline, "the exit was not seen"
            await asyncio.sleep(0.01)
        assert isinstance(list(cell.log.read())[-1], ev.AgentExited)
        stale = plan(cell.refresh(), cfg, 1.0, "here")
        assert [type(x).__name__ for x in stale] == ["Append", "Start"]
        cell.append(ev.BusMessage(by="operator", topic="meanwhile", payload=1))  # the log moves on
        head = cell.head().seq
        assert ex.carry_out(cell, stale)  # moved: plan again
        assert cell.head().seq == head  # neither the declaration nor the start was written
        assert not any(isinstance(e, ev.AgentDeclaredDead) for e in cell.log.read())
        assert not alive(a.pid, a.start_time) and cell.refresh().agents["w"].spawns == 1  # nothing started
        fresh = plan(cell.refresh(), cfg, 2.0, "here")
        assert ex.carry_out(cell, fresh)
        kinds = [type(e).__name__ for e in cell.log.read(head)]
        assert kinds == ["AgentDeclaredDead", "RevivalPlanned", "AgentSpawned", "AgentRevived"]
        for proc in list(ex.procs.values()):
            backend.signal(proc, signal.SIGKILL)

    asyncio.run(scenario())


WRAPPER = "sh -c 'sleep 600 & sleep 600 & wait'"


def _children(a_pid: int, start: float) -> list[int]:
    from lazarus_bus.backends.process import group_members

    return [p for p in group_members(a_pid, 0, start) if p != a_pid]


def test_the_children_of_a_dead_agent_die_with_it(up: Up, cli: Cli) -> None:
    up.config('[resurrection]\nmode = "yes"\n')
    cli.ok("cell", "create", "forge")
    cli.ok("agent", "invite", "forge", "w", "--role", "write", "--cmd", WRAPPER)
    up.start()
    cell = up.cell()
    a = wait(lambda: (x := view_of(cell).agents["w"]).phase == "running" and len(_children(x.pid, x.start_time)) == 2
             and x, "the wrapper and its two workers")
    os.kill(a.pid, signal.SIGKILL)  # the wrapper alone: its workers are orphaned in its process group
    wait(lambda: view_of(cell).agents["w"].spawns == 2, "the revival")
    wait(lambda: not _children(a.pid, a.start_time), "the old workers gone")
    b = view_of(cell).agents["w"]
    wait(lambda: len(_children(b.pid, b.start_time)) == 2, "the new wrapper's workers")
    cli.ok("cell", "freeze", "forge")  # a freeze ends the whole tree too
    wait(lambda: view_of(cell).agents["w"].phase == "stopped" and not _children(b.pid, b.start_time), "frozen")


def test_orphans_left_while_no_daemon_ran_are_ended_at_adoption(up: Up, cli: Cli) -> None:
    up.config('[resurrection]\nmode = "yes"\n')
    cli.ok("cell", "create", "forge")
    cli.ok("agent", "invite", "forge", "w", "--role", "write", "--cmd", WRAPPER)
    first = up.start()
    cell = up.cell()
    a = wait(lambda: (x := view_of(cell).agents["w"]).phase == "running" and len(_children(x.pid, x.start_time)) == 2
             and x, "the wrapper and its two workers")
    os.killpg(first.pid, signal.SIGKILL)
    first.wait(10)
    os.kill(a.pid, signal.SIGKILL)
    wait(lambda: not alive(a.pid, a.start_time), "the wrapper gone")
    assert len(_children(a.pid, a.start_time)) == 2  # orphans, nobody watching
    up.start()
    wait(lambda: view_of(cell).agents["w"].spawns == 2, "the revival after adoption")
    wait(lambda: not _children(a.pid, a.start_time), "the orphans ended")
