"""`lazarus timeline`: the lanes agree with the log, in the terminal by their text and as SVG by parsing it."""

from __future__ import annotations

import os
import signal
import xml.etree.ElementTree as ET
from pathlib import Path

from lazarus_bus import events as ev
from lazarus_bus.timeline import build, to_html, to_svg
from tests.conftest import Cli
from tests.support import Up, wait

SVG = "{http://www.w3.org/2000/svg}"


def _history() -> list[ev.Event]:
    """A writer that runs, falls silent for 50 s (stale after 30), is declared dead and comes back."""
    raw: list[ev.Event] = [
        ev.CellProvisioned(by="operator", name="forge", ts=1000.0),
        ev.AgentInvited(by="operator", agent="w", role="write", ts=1000.0),
        ev.AgentJoined(by="w", agent="w", ts=1010.0),
        ev.AgentHeartbeat(by="w", agent="w", cycle=1, ts=1020.0),
        ev.AgentHeartbeat(by="w", agent="w", cycle=2, ts=1070.0),  # 50 s of silence before it
        ev.AgentDeclaredDead(by="lazarus", agent="w", reason="heartbeat_timeout", ts=1200.0),
        ev.RevivalApprovalRequested(by="lazarus", key="k1", agent="w", ts=1200.0),
        ev.RevivalApproved(by="operator", key="k1", ts=1230.0),
        ev.AgentRevived(by="lazarus", agent="w", attempt=1, ts=1231.0),
        ev.AgentHeartbeat(by="w", agent="w", cycle=3, ts=1240.0),
    ]
    import msgspec

    return [msgspec.structs.replace(e, seq=i + 1, cell="c1") for i, e in enumerate(raw)]


def test_lanes_follow_the_fold_with_stale_stretches() -> None:
    t = build(_history(), now=1250.0, stale_after=lambda _: 30.0)
    assert t is not None and [lane.agent for lane in t.lanes] == ["w"]
    states = [(s.state, s.start, s.end) for s in t.lanes[0].segments]
    assert states == [("invited", 1000.0, 1010.0), ("running", 1010.0, 1050.0), ("stale", 1050.0, 1070.0),
                      ("running", 1070.0, 1100.0), ("stale", 1100.0, 1200.0), ("dead", 1200.0, 1231.0),
                      ("running", 1231.0, 1250.0)]
    kinds = [(m.kind, m.seq) for m in t.lanes[0].marks]
    assert kinds == [("death", 6), ("approval", 7), ("approved", 8), ("revival", 9)]
    assert t.lanes[0].marks[0].label == "died: heartbeat_timeout"
    later = build(_history(), now=1250.0, stale_after=lambda _: 30.0, since=7)
    assert later is not None and later.start == 1230.0 and [m.seq for m in later.lanes[0].marks] == [8, 9]
    assert later.lanes[0].segments[0].state == "dead"  # the state at --since comes from the events before it


def test_svg_parses_and_says_what_the_lanes_say() -> None:
    t = build(_history(), now=1250.0, stale_after=lambda _: 30.0)
    assert t is not None
    root = ET.fromstring(to_svg(t))
    assert root.tag == f"{SVG}svg" and root.get("data-cell") == "c1"
    lane = root.find(f"{SVG}g[@data-agent='w']")
    assert lane is not None
    rects = lane.findall(f"{SVG}rect[@class='segment']")
    assert [r.get("data-state") for r in rects] == ["invited", "running", "stale", "running", "stale", "dead", "running"]
    xs = [float(r.get("x", "0")) for r in rects]
    assert xs == sorted(xs) and float(rects[0].get("x", "0")) == 140.0
    marks = lane.findall(f"{SVG}g[@class='mark']")
    assert [m.get("data-kind") for m in marks] == ["death", "approval", "approved", "revival"]
    title = marks[0].find(f"{SVG}title")
    assert title is not None and title.text == "seq 6: died: heartbeat_timeout"
    page = to_html(t)
    assert page.startswith("<!doctype html>") and "<svg" in page and "<td>approved by operator</td>" in page


def test_timeline_of_a_death_and_a_revival(up: Up, cli: Cli, tmp_path: Path) -> None:
    up.config('[resurrection]\nmode = "yes"\n')
    cli.ok("cell", "create", "forge")
    cli.ok("agent", "invite", "forge", "w", "--role", "write", "--cmd", "sleep 600")
    up.start()
    cell = up.cell()
    wait(lambda: cell.refresh().agents["w"].phase == "running", "the start")
    os.kill(cell.refresh().agents["w"].pid, signal.SIGKILL)
    wait(lambda: cell.refresh().agents["w"].attempt == 2, "the revival")
    text = cli.ok("timeline", "forge")
    lines = text.splitlines()
    assert lines[0].startswith("cell forge: 1 agents")
    lane = next(x for x in lines if x.startswith("w "))
    assert "S" in lane and "X" in lane and "R" in lane and "█" in lane
    assert any(x.endswith("w: died: exited (signal 9)") for x in lines), text
    assert any(x.endswith("w: revived (attempt 1)") for x in lines), text
    out = tmp_path / "forge.svg"
    page = tmp_path / "forge.html"
    assert cli.ok("timeline", "forge", "--svg", str(out), "--html", str(page)) == ""
    root = ET.parse(out).getroot()
    kinds = [m.get("data-kind") for m in root.iter(f"{SVG}g") if m.get("class") == "mark"]
    assert kinds == ["spawn", "death", "spawn", "revival"], kinds
    assert "dead" in {r.get("data-state") for r in root.iter(f"{SVG}rect")}
    assert "<table>" in page.read_text()
    assert cli("timeline", "nowhere").code == 3
