"""One agent is one process tree with one voice: the supervised pid comes from agent.spawned alone,
heartbeats record theirs beside it, and a superseded incarnation is fenced and stops itself."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

from lazarus_bus import Cell
from lazarus_bus.backends.process import alive
from lazarus_bus.client import FENCED_EXIT
from lazarus_bus.fold import CellView
from tests.conftest import Cli, Procs
from tests.support import Up, wait

AGENT = """
import time
from lazarus_bus import connect
with connect() as me:
    while True:
        me.progress()
        time.sleep(0.05)
"""


def view_of(cell: Cell) -> CellView:
    return cell.refresh()


def test_an_agent_behind_a_forking_wrapper_is_one_agent_across_daemon_restarts(up: Up, cli: Cli, tmp_path: Path,
                                                                                procs: Procs) -> None:
    script = tmp_path / "agent.py"
    script.write_text(AGENT)
    up.config('[resurrection]\nmode = "yes"\n')
    cli.ok("cell", "create", "forge")
    # `; echo done` keeps the shell alive as the agent's parent: the heartbeats come from its child
    cli.ok("agent", "invite", "forge", "w", "--role", "write", "--heartbeat-interval", "0.2",
           "--cmd", f"sh -c '{sys.executable} {script}; echo done'")
    first = up.start()
    cell = up.cell()
    a = wait(lambda: (x := view_of(cell).agents["w"]).heartbeats >= 2 and x, "heartbeats from behind the wrapper")
    assert a.heartbeat_pid and a.heartbeat_pid != a.pid  # the python child speaks; the shell is the agent
    assert a.pid == [e for e in cell.log.read() if e.type == "agent.spawned"][0].pid  # type: ignore[attr-defined]
    os.killpg(first.pid, signal.SIGKILL)
    first.wait(10)
    up.start()
    beats = view_of(cell).agents["w"].heartbeats
    status = up.root_dir / ".lazarus" / "daemon.json"
    ticks = json.loads(status.read_bytes())["ticks"]
    wait(lambda: json.loads(status.read_bytes())["ticks"] >= ticks + 5 and view_of(cell).agents["w"].heartbeats
         > beats + 3, "the restarted daemon watching the same agent")
    after = view_of(cell).agents["w"]
    assert after.spawns == 1 and after.pid == a.pid and alive(a.pid, a.start_time)  # re-adopted, not doubled
    assert [e.type for e in cell.log.read() if e.type in ("agent.exited", "agent.declared_dead")] == []


def _as_agent(cli: Cli, cell: Cell, agent: str, incarnation: str) -> dict[str, str]:
    return cli.env(LAZARUS_AGENT=agent, LAZARUS_CELL=cell.id, LAZARUS_INCARNATION=incarnation)


def test_a_superseded_incarnation_is_fenced_on_the_cli_and_its_client_stops_itself(up: Up, cli: Cli,
                                                                                   procs: Procs) -> None:
    up.config('[resurrection]\nmode = "yes"\n')
    cli.ok("cell", "create", "forge")
    cli.ok("agent", "invite", "forge", "w", "--role", "write", "--cmd", "sleep 600")
    up.start()
    cell = up.cell()
    a1 = wait(lambda: (x := view_of(cell).agents["w"]).phase == "running" and x, "first start")
    old = a1.incarnation
    ok = subprocess.run(cli.argv("heartbeat", "forge", "w"), env=_as_agent(cli, cell, "w", old),
                        capture_output=True, text=True, timeout=60, start_new_session=True)
    assert ok.returncode == 0, ok.stderr
    os.killpg(a1.pid, signal.SIGKILL)
    a2 = wait(lambda: (x := view_of(cell).agents["w"]).spawns == 2 and x.phase == "running" and x, "the revival")
    assert a2.incarnation != old
    log = (cell.dir / "logs" / "events.jsonl").read_bytes()
    stale = subprocess.run(cli.argv("heartbeat", "forge", "w"), env=_as_agent(cli, cell, "w", old),
                           capture_output=True, text=True, timeout=60, start_new_session=True)
    assert stale.returncode == 4 and stale.stderr.startswith("error: fenced:"), stale.stderr
    assert len(stale.stderr.strip().splitlines()) == 1
    fresh = subprocess.run(cli.argv("heartbeat", "forge", "w"), env=_as_agent(cli, cell, "w", a2.incarnation),
                           capture_output=True, text=True, timeout=60, start_new_session=True)
    assert fresh.returncode == 0, fresh.stderr
    assert (cell.dir / "logs" / "events.jsonl").read_bytes().startswith(log)
    # a stale copy running the Python client is refused at its first write and stops itself
    copy = procs.start([sys.executable, "-c", AGENT], env=_as_agent(cli, cell, "w", old), cwd=cell.workspace)
    _, err = copy.communicate(timeout=60)
    assert copy.returncode == FENCED_EXIT and b"fenced:" in err, err
    assert all(getattr(e, "incarnation", "") != old for e in cell.log.read(cell.head().seq - 2))
