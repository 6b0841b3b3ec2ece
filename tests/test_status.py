"""`status` tells the truth: whether a daemon runs, `unsupervised (no daemon)` rather than `healthy`
on stale evidence, and where a revival stands (an approval to give, and how)."""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path

from lazarus_bus import Cell
from lazarus_bus.fold import CellView
from tests.conftest import Cli, Procs
from tests.support import Up, wait


def view_of(cell: Cell) -> CellView:
    return cell.refresh()


def _rows(cli: Cli) -> tuple[dict[str, object], dict[str, dict[str, object]]]:
    body = json.loads(cli.ok("status", "--json"))
    return body["daemon"], {r["agent"]: r for c in body["cells"] for r in c["agents"]}


def test_no_daemon_means_unsupervised_never_healthy(up: Up, cli: Cli) -> None:
    up.config()
    cli.ok("cell", "create", "forge")
    cli.ok("agent", "invite", "forge", "w", "--role", "write", "--cmd", "sleep 600")
    cli.ok("agent", "invite", "forge", "free", "--role", "write")  # not supervised: judged by heartbeats
    proc = up.start()
    cell = up.cell()
    wait(lambda: view_of(cell).agents["w"].phase == "running", "the start")
    daemon, rows = _rows(cli)
    assert daemon["running"] is True and rows["w"]["health"] == "healthy"
    proc.send_signal(signal.SIGTERM)
    proc.wait(30)  # the daemon stops; its agent keeps running
    daemon, rows = _rows(cli)
    assert daemon["running"] is False
    assert rows["w"]["health"] == "unsupervised (no daemon)"
    assert rows["free"]["health"] == "unknown"  # nobody supervises it anyway
    text = cli.ok("status")
    assert "daemon: not running" in text and "unsupervised" in text


def test_deleting_the_pid_file_lets_no_second_daemon_in(up: Up, cli: Cli, root_dir: Path) -> None:
    up.config()
    up.start()
    (root_dir / ".lazarus" / "daemon.pid").unlink()
    second = cli("up", "--no-http", "--once")
    assert second.code == 4 and "already runs" in second.err, second.err
    assert _rows(cli)[0]["running"] is True


def test_an_approval_pending_is_said_with_how_to_give_it(up: Up, cli: Cli) -> None:
    up.config('[resurrection]\nmode = "ask"\n')
    cli.ok("cell", "create", "forge")
    cli.ok("agent", "invite", "forge", "w", "--role", "write", "--cmd", "sleep 600")
    up.start()
    cell = up.cell()
    a = wait(lambda: (x := view_of(cell).agents["w"]).phase == "running" and x, "the start")
    os.killpg(a.pid, signal.SIGKILL)
    key = wait(lambda: view_of(cell).agents["w"].approval, "the approval request")
    _, rows = _rows(cli)
    assert rows["w"]["health"] == "dead" and rows["w"]["revival"] == f"awaiting approval {key}"
    assert f"lazarus approve {key}" in cli.ok("status")
    assert up.log is not None
    wait(lambda: f"lazarus approve {key}" in up.log.read_text(), "the daemon's terminal says it")
    cli.ok("approve", key)
    wait(lambda: view_of(cell).agents["w"].spawns == 2, "the approved revival")


def test_status_shows_restarts_heartbeat_and_progress_ages(up: Up, cli: Cli) -> None:
    up.config('[resurrection]\nmode = "yes"\n')
    cli.ok("cell", "create", "forge")
    cli.ok("agent", "invite", "forge", "w", "--role", "write", "--cmd", "sleep 600")
    cli.ok("agent", "invite", "forge", "beat", "--role", "write", "--heartbeat-interval", "5")
    up.start()
    cell = up.cell()
    wait(lambda: view_of(cell).agents["w"].phase == "running", "the start")
    os.kill(view_of(cell).agents["w"].pid, signal.SIGKILL)
    wait(lambda: view_of(cell).agents["w"].attempt == 2 and view_of(cell).agents["w"].phase == "running", "a revival")
    cli.ok("heartbeat", "forge", "beat", "--cycle", "7")
    _, rows = _rows(cli)
    assert rows["w"]["restarts"] == 1 and rows["beat"]["restarts"] == 0
    assert rows["beat"]["heartbeat_age"] is not None and rows["beat"]["progress_age"] is not None
    text = cli.ok("status")
    header = text.splitlines()[1]
    assert "RESTARTS" in header and "HEARTBEAT" in header and "PROGRESS" in header
    line = next(x for x in text.splitlines() if " w " in f" {x} ")
    assert " 1 " in line


def test_status_watch_redraws_until_interrupted(up: Up, cli: Cli, procs: Procs) -> None:
    up.config()
    cli.ok("cell", "create", "forge")
    watcher = procs.start(cli.argv("status", "--watch", "--json", "--interval", "0.2"), env=cli.env())
    assert watcher.stdout is not None
    first = json.loads(watcher.stdout.readline())
    assert first["daemon"]["running"] is False and first["cells"][0]["agents"] == []
    cli.ok("agent", "invite", "forge", "w", "--role", "write")
    while True:  # each frame is read fresh: the new agent shows up without a restart of the watch
        frame = json.loads(watcher.stdout.readline())
        if frame["cells"][0]["agents"]:
            break
    assert frame["cells"][0]["agents"][0]["agent"] == "w"
    watcher.send_signal(signal.SIGINT)
    assert watcher.wait(30) == 0
