"""A daemon counts as an agent's silence only the time it could hear it: never its own start-up, nor a
stall of its loop (real daemon, real agent heartbeating through the daemon's HTTP gateway, real signals)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from lazarus_bus import Cell
from tests.conftest import Cli, Procs
from tests.support import Up, wait

DEAD_AFTER = 2.0

# heartbeats only through the daemon's gateway, as a confined agent does through its socket: while no
# daemon listens, nothing of it reaches the log
AGENT = """
import json, sys, time, urllib.request
from pathlib import Path
status, cell, agent = Path(sys.argv[1]), sys.argv[2], sys.argv[3]
while True:
    try:
        body = json.loads(status.read_bytes())
        if body.get("running") and body.get("http"):
            req = urllib.request.Request(f"http://{body['http']}/cells/{cell}/agents/{agent}/heartbeat",
                                         data=b"{}", headers={"Content-Type": "application/json"})
            urllib.request.urlopen(req, timeout=0.5).read()
    except (OSError, ValueError):
        pass
    time.sleep(0.1)
"""


def heartbeats(cell: Cell, agent: str, after: float = 0.0) -> list[float]:
    return [e.ts for e in cell.log.read() if e.type == "agent.heartbeat" and e.agent == agent  # type: ignore[attr-defined]
            and e.ts > after]


def deaths(cell: Cell, agent: str) -> list[object]:
    return [e for e in cell.log.read() if e.type == "agent.declared_dead" and e.agent == agent]  # type: ignore[attr-defined]


def until_past(t: float) -> bool:
    """The clock is what is awaited here: a silence longer than `dead_after`."""
    return time.time() > t


def setup(up: Up, cli: Cli, procs: Procs, root_dir: Path, *agents: str) -> tuple[Cell, subprocess.Popen[bytes]]:
    up.config('[resurrection]\nmode = "no"\n', health={"stale_after": 1.0, "dead_after": DEAD_AFTER})
    cid = cli.ok("cell", "create", "forge").strip()
    for a in agents:
        cli.ok("agent", "invite", "forge", a, "--role", "write")
        cli.ok("heartbeat", "forge", a)
    live = procs.start([sys.executable, "-c", AGENT, str(root_dir / ".lazarus" / "daemon.json"), cid, "live"],
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return up.cell(), live


def test_a_daemon_starting_on_silence_it_did_not_hear_counts_it_from_its_first_look(
        up: Up, cli: Cli, procs: Procs, root_dir: Path) -> None:
    cell, live = setup(up, cli, procs, root_dir, "live", "gone")
    wait(lambda: until_past(max(heartbeats(cell, "gone")) + DEAD_AFTER + 1.0), "a silence past dead_after",
         proc=live)
    up.start("--http", "127.0.0.1:0")
    started = json.loads((root_dir / ".lazarus" / "daemon.json").read_bytes())["started_at"]
    # the agent that really stopped is declared dead, dead_after from the daemon's first look, not at once
    [gone] = wait(lambda: deaths(cell, "gone"), "the silent agent's death", proc=up.proc, log=up.log)
    assert gone.ts - started >= DEAD_AFTER  # type: ignore[attr-defined]
    assert gone.detail["age"] > gone.detail["heard_silent"] > DEAD_AFTER  # type: ignore[attr-defined]
    # the one that heartbeats through the daemon was silent only while no daemon listened: alive
    wait(lambda: len(heartbeats(cell, "live", after=gone.ts)) >= 3, "the live agent's heartbeats",  # type: ignore[attr-defined]
         proc=live)
    assert deaths(cell, "live") == []
    assert cell.refresh().agents["live"].phase == "running"


def test_a_stalled_daemon_holds_the_stall_off_the_silence_of_agents_it_could_not_hear(
        up: Up, cli: Cli, procs: Procs, root_dir: Path) -> None:
    cell, live = setup(up, cli, procs, root_dir, "live")
    up.start("--http", "127.0.0.1:0")
    assert up.proc is not None and up.log is not None
    wait(lambda: len(heartbeats(cell, "live", after=time.time() - 1.0)) >= 3, "heartbeats through the gateway",
         proc=live)
    os.kill(up.proc.pid, signal.SIGSTOP)  # the daemon's machine paused, or its loop held up
    stopped = time.time()
    try:
        wait(lambda: until_past(stopped + DEAD_AFTER + 1.0), "a stall past dead_after", proc=live)
    finally:
        os.kill(up.proc.pid, signal.SIGCONT)
    resumed = time.time()
    assert heartbeats(cell, "live", after=stopped + 0.5) == []  # nothing reached the log while it was stopped
    wait(lambda: "stalled for" in up.log.read_text(), "the stall noticed", proc=up.proc, log=up.log)  # type: ignore[union-attr]
    wait(lambda: len(heartbeats(cell, "live", after=resumed)) >= 5, "heartbeats after the stall", proc=live)
    assert deaths(cell, "live") == []
    status = json.loads((root_dir / ".lazarus" / "daemon.json").read_bytes())
    assert status["cells"][cell.id]["agents"]["live"] == "healthy"
