"""Notifications: delivered to a real webhook and command, retried after a failure, rate-limited."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable
from pathlib import Path

from aiohttp import web

from lazarus_bus import events as ev
from lazarus_bus.config import NotifyConfig
from lazarus_bus.notify import Notifier

DEATH = ev.AgentDeclaredDead(by="lazarus", agent="w", reason="exited", cell="c1", seq=5, id="x", ts=1.0)
ESCALATION = ev.RevivalPlanned(by="lazarus", agent="w", action="escalated", cell="c1", seq=6, id="y", ts=2.0)


async def _scenario(tmp: Path) -> None:
    got: list[dict[str, object]] = []
    app = web.Application()

    async def hook(request: web.Request) -> web.Response:
        got.append(await request.json())
        return web.Response(status=204)

    app.router.add_post("/hook", hook)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    flag, out = tmp / "failed-once", tmp / "out.jsonl"
    # the command fails the first time, then works: the retry must deliver it
    command = ["sh", "-c", f'if [ -f {flag} ]; then cat >> {out}; else touch {flag}; exit 1; fi']
    n = Notifier(NotifyConfig(webhook=f"http://127.0.0.1:{port}/hook", command=command, min_interval=60),
                 retries=(0.05, 0.05))
    try:
        assert n.offer(DEATH, now=100.0)
        assert not n.offer(DEATH, now=110.0)  # same agent and kind within min_interval
        assert n.offer(ESCALATION, now=111.0) and n.offer(ESCALATION, now=112.0)  # escalations always go out
        await until(lambda: n.sent == 6)  # three events, two channels each
        assert [g["type"] for g in got].count("agent.declared_dead") == 1 and len(got) == 3
        lines = [json.loads(line) for line in out.read_text().splitlines()]
        assert {line["type"] for line in lines} == {"agent.declared_dead", "revival.planned"}
        assert n.failed == 0 and n.sent == 6
    finally:
        await n.close()
        await runner.cleanup()



async def until(check: Callable[[], object], timeout: float = 60.0) -> None:
    """Until the notifier has done it: its commands are real processes, slow on a loaded machine."""
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, "the notifier did not get there in time"
        await asyncio.sleep(0.01)

def test_channels_retry_and_rate_limit(tmp_path: Path) -> None:
    asyncio.run(_scenario(tmp_path))


def test_a_dead_channel_is_given_up_without_raising(tmp_path: Path) -> None:
    async def go() -> Notifier:
        n = Notifier(NotifyConfig(command=["false"], min_interval=0), retries=(0.01,))
        n.offer(DEATH, now=1.0)
        await until(lambda: n.failed)
        await n.close()
        return n

    assert asyncio.run(go()).failed == 1


# -- section 17: revivals are notified too, so a channel can close the ticket it opened ------------------


def test_a_revival_is_a_notification_of_its_own_kind() -> None:
    from lazarus_bus.notify import kind_of

    revived = ev.AgentRevived(by="lazarus", agent="w", attempt=1, cell="c1", seq=7, id="z", ts=3.0)
    assert kind_of(revived) == "revival" and kind_of(DEATH) == "death"


def test_the_ticket_recipe_opens_a_task_on_death_and_closes_it_on_revival(tmp_path: Path) -> None:
    """docs/operations.md's recipe, with the daemon's real command channel and Taskwarrior."""
    import os
    import shutil
    import signal
    import subprocess
    import sys

    import pytest

    from tests.conftest import Cli, Procs, kill_supervised
    from tests.support import Up, wait

    if shutil.which("task") is None or shutil.which("jq") is None:
        pytest.skip("taskwarrior and jq are not installed (apt-get install taskwarrior jq)")
    recipe = Path(__file__).resolve().parents[1] / "examples" / "lazarus-ticket.sh"
    root = tmp_path / "missions"
    root.mkdir()
    (tmp_path / "taskrc").write_text("")
    env = {"TASKRC": str(tmp_path / "taskrc"), "TASKDATA": str(tmp_path / "tasks")}
    procs = Procs()
    try:
        cli = Cli(root, procs)
        up = Up(root, cli, procs)
        up.config(f'[resurrection]\nmode = "yes"\n[notify]\ncommand = ["{recipe}"]\nmin_interval = 0\n')
        cli.ok("cell", "create", "forge")
        cli.ok("agent", "invite", "forge", "w", "--role", "write", "--cmd", "sleep 60")
        up.start(env=env)
        cell = up.cell()
        a = wait(lambda: (x := cell.refresh().agents["w"]).phase == "running" and x.pid and x, "the first start")

        def tasks() -> list[dict[str, object]]:
            out = subprocess.run(["task", "rc.verbose=nothing", "export"], env={**os.environ, **env},
                                 capture_output=True, text=True, check=True).stdout
            return list(json.loads(out or "[]"))

        os.kill(a.pid, signal.SIGKILL)
        wait(lambda: any(e.type == "agent.revived" for e in cell.log.read(0)), "the revival")
        done = wait(lambda: [t for t in tasks() if t["status"] == "completed"], "the ticket closed")
        assert len(done) == 1 and len(tasks()) == 1
        ticket = done[0]
        assert ticket["project"] == f"lazarus.{cell.id}.w" and "exited" in str(ticket["description"])
        assert "revived by lazarus, attempt 1" in json.dumps(ticket["annotations"])
    finally:
        kill_supervised(root)
        procs.cleanup()
    assert sys.executable
