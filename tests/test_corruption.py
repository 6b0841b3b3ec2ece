"""The daemon notices corruption: a line edited in the middle of a running cell's log (or while no
daemon ran) marks the cell corrupt everywhere, nothing more is done for it, the other cells go on."""

from __future__ import annotations

import json
import os
import signal
import urllib.request
from pathlib import Path

from lazarus_bus import Cell
from lazarus_bus.fold import CellView
from tests.conftest import Cli
from tests.support import Up, base, wait


def view_of(cell: Cell) -> CellView:
    return cell.refresh()


def _edit_line(log: Path, seq: int) -> None:
    """Change one byte of a line in the middle: still JSON, still the same length, a broken chain."""
    lines = log.read_bytes().split(b"\n")
    line = lines[seq - 1]
    at = line.index(b'"ts":') + 6
    digit = line[at:at + 1]
    lines[seq - 1] = line[:at] + (b"1" if digit != b"1" else b"2") + line[at + 1:]
    log.write_bytes(b"\n".join(lines))


def _config(up: Up, verify_every: float) -> None:
    (up.root_dir / "lazarus.toml").write_text(
        base().replace("[daemon]\n", f"[daemon]\nverify_every = {verify_every}\n") + '[resurrection]\nmode = "yes"\n')


def _cells(up: Up) -> list[dict[str, object]]:
    with urllib.request.urlopen(up.http + "/cells", timeout=30) as r:
        return json.loads(r.read())  # type: ignore[no-any-return]


def test_a_log_edited_under_a_running_daemon_stops_it_acting_for_that_cell_alone(up: Up, cli: Cli,
                                                                                root_dir: Path) -> None:
    _config(up, 0.2)
    ids = {}
    for name in ("bad", "good"):
        ids[name] = cli.ok("cell", "create", name).strip()
        cli.ok("agent", "invite", name, "w", "--role", "write", "--cmd", "sleep 600")
    up.start("--http", "127.0.0.1:0")
    bad, good = up.cell("bad"), up.cell("good")
    a = wait(lambda: (x := view_of(bad).agents["w"]).phase == "running" and x, "bad's agent runs")
    g = wait(lambda: (x := view_of(good).agents["w"]).phase == "running" and x, "good's agent runs")
    _edit_line(bad.dir / "logs" / "events.jsonl", 2)
    status = root_dir / ".lazarus" / "daemon.json"
    wait(lambda: ids["bad"] in json.loads(status.read_bytes()).get("corrupt", []), "the daemon sees it")
    os.killpg(a.pid, signal.SIGKILL)  # a death in the corrupt cell: not acted on
    os.killpg(g.pid, signal.SIGKILL)  # one in the good cell: revived as ever
    wait(lambda: view_of(good).agents["w"].spawns == 2, "the good cell's revival")
    ticks = json.loads(status.read_bytes())["ticks"]
    wait(lambda: json.loads(status.read_bytes())["ticks"] >= ticks + 5, "a few more ticks")
    raw = (bad.dir / "logs" / "events.jsonl").read_bytes()
    assert raw.count(b'"agent.spawned"') == 1  # nothing more was done for the corrupt cell
    listed = cli("cell", "list", "--json")
    assert listed.code == 0, listed.err
    rows = {r["id"]: r for r in json.loads(listed.out)}
    assert rows[ids["bad"]]["state"] == "corrupt" and rows[ids["good"]]["state"] == "active"
    st = cli("status", "--json")
    assert st.code == 0 and any(c.get("state") == "corrupt" for c in json.loads(st.out)["cells"])
    served = {c["id"]: c for c in _cells(up)}
    assert served[ids["bad"]]["state"] == "corrupt" and served[ids["good"]]["state"] == "active"
    with urllib.request.urlopen(up.http + "/health", timeout=30) as r:
        assert json.loads(r.read())["corrupt"] == [ids["bad"]]
    assert cli("verify", "bad").code == 5


def test_a_log_edited_while_no_daemon_ran_is_caught_at_start(up: Up, cli: Cli, root_dir: Path) -> None:
    _config(up, 0)
    cid = cli.ok("cell", "create", "forge").strip()
    cli.ok("agent", "invite", "forge", "w", "--role", "write", "--cmd", "sleep 600")
    first = up.start()
    cell = up.cell()
    a = wait(lambda: (x := view_of(cell).agents["w"]).phase == "running" and x, "the agent runs")
    first.send_signal(signal.SIGTERM)
    first.wait(30)
    _edit_line(cell.dir / "logs" / "events.jsonl", 2)
    os.killpg(a.pid, signal.SIGKILL)
    up.start()
    status = root_dir / ".lazarus" / "daemon.json"
    assert cid in json.loads(status.read_bytes())["corrupt"]
    ticks = json.loads(status.read_bytes())["ticks"]
    wait(lambda: json.loads(status.read_bytes())["ticks"] >= ticks + 5, "a few ticks")
    assert (cell.dir / "logs" / "events.jsonl").read_bytes().count(b'"agent.spawned"') == 1
