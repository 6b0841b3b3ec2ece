"""The operator's hands: `agent stop | start | restart | update` (one `agent.updated` each, carried out by
the daemon) and `lazarus down`."""

from __future__ import annotations

import json
import os
import signal
import socket
from pathlib import Path

from lazarus_bus import Cell
from tests.conftest import Cli
from tests.support import Up, wait


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def _types(cell: Cell, since: int = 0) -> list[str]:
    return [e.type for e in cell.log.read(since)]


def _health(cli: Cli, agent: str) -> str:
    body = json.loads(cli.ok("status", "--json"))
    return next(str(r["health"]) for c in body["cells"] for r in c["agents"] if r["agent"] == agent)


def test_stop_start_and_restart_an_agent(up: Up, cli: Cli) -> None:
    up.config('[resurrection]\nmode = "yes"\n')
    cli.ok("cell", "create", "forge")
    cli.ok("agent", "invite", "forge", "w", "--role", "write", "--cmd", "sleep 600")
    up.start()
    cell = up.cell()
    wait(lambda: cell.refresh().agents["w"].phase == "running", "the start")
    first = cell.refresh().agents["w"].pid

    seq = cell.refresh().seq
    cli.ok("agent", "stop", "forge", "w")
    wait(lambda: cell.refresh().agents["w"].phase == "stopped", "the stop")
    wait(lambda: not alive(first), "the process ends")
    assert _health(cli, "w") == "stopped"
    after = _types(cell, seq)
    assert after[:2] == ["agent.updated", "agent.exited"], after
    assert "agent.declared_dead" not in after and "agent.spawned" not in after  # not a death, not revived
    again = cli("agent", "stop", "forge", "w")
    assert again.code == 4 and "already stopped" in again.err

    cli.ok("agent", "start", "forge", "w")
    wait(lambda: cell.refresh().agents["w"].phase == "running" and cell.refresh().agents["w"].pid != first,
         "the start again")
    second = cell.refresh().agents["w"].pid
    busy = cli("agent", "start", "forge", "w")
    assert busy.code == 4 and "not stopped" in busy.err

    seq = cell.refresh().seq
    cli.ok("agent", "restart", "forge", "w")
    wait(lambda: cell.refresh().agents["w"].pid not in (first, second) and cell.refresh().agents["w"].phase == "running",
         "the restart")
    assert not alive(second)
    after = _types(cell, seq)
    assert after == ["agent.updated", "agent.exited", "agent.spawned"], after
    a = cell.refresh().agents["w"]
    assert a.restarts == () and a.deaths == 0  # the operator's restart counts against no revival window


def test_update_changes_what_the_next_start_runs(up: Up, cli: Cli) -> None:
    up.config()
    cli.ok("cell", "create", "forge")
    cli.ok("agent", "invite", "forge", "w", "--role", "write", "--cmd", "sleep 600")
    up.start()
    cell = up.cell()
    wait(lambda: cell.refresh().agents["w"].phase == "running", "the start")
    script = "import os, time\nprint(os.environ['COLOUR'], flush=True)\ntime.sleep(600)\n"
    r = cli("agent", "update", "forge", "w", "--cmd", f"python3 -c \"{script}\"", "--env", "COLOUR=teal",
            "--heartbeat-interval", "0", "--revive", "yes")
    assert r.code == 0 and "agent restart forge w" in r.err
    a = cell.refresh().agents["w"]
    assert a.command[0] == "python3" and a.env["COLOUR"] == "teal" and a.revive == "yes"
    assert a.phase == "running"  # not restarted by an update
    cli.ok("agent", "restart", "forge", "w")
    log = cell.agent_logs / "w.log"
    wait(lambda: log.exists() and b"teal" in log.read_bytes(), "the new command's output")
    assert cli("agent", "update", "forge", "w").code == 2  # nothing to update
    assert cli("agent", "update", "forge", "nobody", "--revive", "no").code == 3


def test_down_stops_the_daemon_and_waits_for_it(up: Up, cli: Cli, root_dir: Path) -> None:
    up.config()
    cli.ok("cell", "create", "forge")
    cli.ok("agent", "invite", "forge", "w", "--role", "write", "--cmd", "sleep 600")
    proc = up.start()
    cell = up.cell()
    wait(lambda: cell.refresh().agents["w"].phase == "running", "the start")
    out = cli.ok("down")
    assert out.startswith("daemon stopped (pid ")
    assert proc.wait(5) == 0  # down returned once the daemon had exited (a zombie till the test reaps it)
    assert alive(cell.refresh().agents["w"].pid)  # its agents keep running
    assert "daemon: not running" in cli.ok("status")
    assert cli.ok("down").startswith("no daemon runs on")
    os.kill(cell.refresh().agents["w"].pid, signal.SIGKILL)


def test_a_busy_http_port_is_one_line_that_says_how_to_serve_elsewhere(cli: Cli) -> None:
    """A second daemon (another root) on the default port: the operator is told the way out."""
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        r = cli("up", "--http", f"127.0.0.1:{port}", timeout=60)
    assert r.code == 1 and len(r.err.strip().splitlines()) == 1, r.err
    assert "address already in use" in r.err and "--http HOST:PORT" in r.err and "--no-http" in r.err
