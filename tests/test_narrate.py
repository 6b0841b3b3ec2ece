"""`lazarus up -v` says each action in one line, and `--log-json` as one JSON object per line."""

from __future__ import annotations

import json
import os
import signal

from lazarus_bus import events as ev
from lazarus_bus.narrate import describe
from tests.conftest import Cli
from tests.support import Up, wait


def test_lines_for_the_actions() -> None:
    assert describe("forge", ev.AgentSpawned(by="lazarus", agent="w", pid=42, attempt=1)) == \
        "forge/w: spawned pid 42 (attempt 1)"
    dead = ev.AgentDeclaredDead(by="lazarus", agent="w", reason="exited", detail={"signal": 9, "returncode": None})
    assert describe("forge", dead) == "forge/w: dead: exited (signal 9)"
    silent = ev.AgentDeclaredDead(by="lazarus", agent="w", reason="heartbeat_timeout", detail={"age": 61.2})
    assert describe("forge", silent) == "forge/w: dead: no heartbeat for 61s"
    assert describe("forge", ev.RevivalPlanned(by="lazarus", agent="w", action="restart", attempt=2, delay=2.0)) \
        == "forge/w: revival: restart in 2s (attempt 2)"
    assert "escalated after 3 restarts" in str(describe("forge", ev.RevivalPlanned(
        by="lazarus", agent="w", action="escalated", attempt=3)))
    assert describe("forge", ev.AgentUpdated(by="operator", agent="w", run="restart")) == \
        "forge/w: restart asked by operator"
    assert describe("forge", ev.RevivalApproved(by="operator", key="k1")) == "forge: approval k1 approved by operator"
    assert describe("forge", ev.AgentHeartbeat(by="w", agent="w")) is None


def test_up_v_tells_a_death_and_a_revival(up: Up, cli: Cli) -> None:
    up.config('[resurrection]\nmode = "yes"\n')
    cli.ok("cell", "create", "forge")
    cli.ok("agent", "invite", "forge", "w", "--role", "write", "--cmd", "sleep 600")
    up.start()
    cell = up.cell()
    wait(lambda: cell.refresh().agents["w"].phase == "running", "the start")
    os.kill(cell.refresh().agents["w"].pid, signal.SIGKILL)
    assert up.log is not None
    log = up.log
    wait(lambda: "forge/w: revived" in log.read_text(), "the revival line")
    cli.ok("agent", "stop", "forge", "w")
    wait(lambda: "forge/w: stop asked by operator" in log.read_text(), "the stop line")
    lines = [x.split("lazarus.actions: ", 1)[1] for x in log.read_text().splitlines() if "lazarus.actions: " in x]
    pids = [e.pid for e in cell.log.read() if isinstance(e, ev.AgentSpawned)]
    assert lines[:7] == [
        f"forge/w: spawned pid {pids[0]} (attempt 1)",
        "forge: activated (first agent.spawned (w))",
        f"forge/w: process {pids[0]} ended (signal 9)",
        "forge/w: dead: exited (signal 9)",
        "forge/w: revival: restart now (attempt 1)",
        f"forge/w: spawned pid {pids[1]} (attempt 2)",
        f"forge/w: revived, pid {pids[1]} (attempt 1)",
    ], lines


def test_log_json_gives_one_object_per_line(up: Up, cli: Cli) -> None:
    up.config()
    cli.ok("cell", "create", "forge")
    cli.ok("agent", "invite", "forge", "w", "--role", "write", "--cmd", "sleep 600")
    up.start("--no-http", "--log-json")
    cell = up.cell()
    wait(lambda: cell.refresh().agents["w"].phase == "running", "the start")
    assert up.log is not None
    log = up.log
    wait(lambda: "spawned" in log.read_text(), "the spawn line")
    records = [json.loads(x) for x in log.read_text().splitlines() if x.strip()]
    spawn = next(r for r in records if r.get("type") == "agent.spawned")
    assert spawn["cell"] == cell.id and spawn["agent"] == "w" and spawn["logger"] == "lazarus.actions"
    assert spawn["message"].startswith("forge/w: spawned pid ") and isinstance(spawn["seq"], int)
