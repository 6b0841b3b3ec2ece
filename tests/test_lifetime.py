"""Cell lifetimes (section 17): max_duration, cell.expiring, checkpoint reminders and auto_archive, pure and
under a real daemon."""

from __future__ import annotations

import json
import sys
from typing import Any

from lazarus_bus import Cell
from lazarus_bus import events as ev
from lazarus_bus.fold import CellView, fold_all
from lazarus_bus.lifetime import due, reminders
from tests.conftest import Cli
from tests.support import Up, wait


def view(*events: ev.Event, t0: float = 1000.0) -> CellView:
    stamped = [e.__class__(**{**{f: getattr(e, f) for f in e.__struct_fields__}, "seq": i + 1, "ts": e.ts or t0,
                              "cell": "c1"}) for i, e in enumerate(events)]
    out = fold_all(stamped)
    assert out is not None
    return out


def test_expiring_at_ninety_percent_then_archived_at_max_duration() -> None:
    v = view(ev.CellProvisioned(by="operator", name="forge", max_duration=100.0))
    assert due(v, 1089.0) == []
    expiring = due(v, 1090.0)
    assert [e.type for e in expiring] == ["cell.expiring"]
    assert expiring[0].deadline == 1100.0  # type: ignore[union-attr]
    v2 = view(ev.CellProvisioned(by="operator", name="forge", max_duration=100.0),
              ev.CellExpiring(by="lazarus", deadline=1100.0, max_duration=100.0, ts=1090.0))
    assert due(v2, 1095.0) == []  # once
    archived = due(v2, 1100.0)
    assert [(e.type, e.reason) for e in archived] == [("cell.archived", "max_duration")]  # type: ignore[union-attr]


def test_auto_archive_when_every_agent_completed_or_left() -> None:
    base = [ev.CellProvisioned(by="operator", name="forge", auto_archive=True),
            ev.AgentInvited(by="operator", agent="a", role="write"),
            ev.AgentInvited(by="operator", agent="b", role="write"),
            ev.AgentLeft(by="lazarus", agent="a", reason="completed")]
    assert due(view(*base), 2000.0) == []
    done = due(view(*base, ev.AgentLeft(by="operator", agent="b")), 2000.0)
    assert [(e.type, e.reason) for e in done] == [("cell.archived", "auto_archive")]  # type: ignore[union-attr]
    plain = [ev.CellProvisioned(by="operator", name="forge"), *base[1:], ev.AgentLeft(by="operator", agent="b")]
    assert due(view(*plain), 2000.0) == []  # without auto_archive, a cell outlives its agents


def test_a_checkpoint_reminder_once_per_interval() -> None:
    base = [ev.CellProvisioned(by="operator", name="forge", checkpoint_interval=60.0),
            ev.AgentInvited(by="operator", agent="a", role="write"),
            ev.AgentHeartbeat(by="a", agent="a")]
    assert reminders(view(*base), 1059.0) == []
    sent = reminders(view(*base), 1060.0)
    assert [(e.topic, e.to) for e in sent] == [("lazarus.checkpoint_due", "a")]  # type: ignore[union-attr]
    reminded = [*base, ev.BusMessage(by="lazarus", topic="lazarus.checkpoint_due", to="a", ts=1060.0)]
    assert reminders(view(*reminded), 1100.0) == []  # once per interval
    assert len(reminders(view(*reminded), 1120.0)) == 1
    fresh = [*base, ev.CheckpointCreated(by="a", checkpoint_id="c1", ts=1100.0)]
    assert reminders(view(*fresh), 1150.0) == []  # a fresh checkpoint: nothing due


def agent_rows(cli: Cli, cell: str) -> list[dict[str, Any]]:
    return list(json.loads(cli.ok("status", cell, "--json"))["cells"][0]["agents"])


def test_a_cell_past_max_duration_is_archived_and_its_agents_stopped(up: Up, cli: Cli) -> None:
    up.config()
    cli.ok("cell", "create", "forge", "--max-duration", "3")
    cli.ok("agent", "invite", "forge", "w", "--role", "write", "--cmd", "sleep 60")
    up.start()
    cell: Cell = up.cell()
    wait(lambda: cell.refresh().agents["w"].phase == "running", "the agent running")
    wait(lambda: cell.refresh().state == "archived", "archived at max_duration")
    v = cell.refresh()
    assert v.reason == "max_duration"
    kinds = [e.type for e in cell.log.read(0)]
    assert kinds.index("cell.expiring") < kinds.index("cell.archived")
    archived = next(e for e in cell.log.read(0) if e.type == "cell.archived")
    assert archived.by == "lazarus" and archived.ts - v.created_at >= 3
    wait(lambda: cell.refresh().agents["w"].phase in ("stopped", "exited"), "the agent stopped with its cell")
    assert json.loads(cli.ok("cell", "show", "forge", "--json"))["max_duration"] == 3


def test_an_auto_archive_cell_is_archived_when_its_last_agent_completes(up: Up, cli: Cli) -> None:
    up.config()
    cli.ok("cell", "create", "forge", "--auto-archive")
    cli.ok("agent", "invite", "forge", "quick", "--role", "write", "--cmd", "true")
    cli.ok("agent", "invite", "forge", "slow", "--role", "write", "--cmd",
           f"{sys.executable} -c 'import time; time.sleep(2)'")
    up.start()
    cell = up.cell()
    wait(lambda: cell.refresh().agents["quick"].left_reason == "completed", "the first agent completed")
    assert cell.refresh().state != "archived"
    wait(lambda: cell.refresh().state == "archived", "archived after the last one completed")
    v = cell.refresh()
    assert v.reason == "auto_archive" and all(a.left_reason == "completed" for a in v.agents.values())


def test_an_agent_with_an_old_checkpoint_is_reminded_and_flagged_in_status(up: Up, cli: Cli) -> None:
    up.config()
    cli.ok("cell", "create", "forge", "--checkpoint-interval", "1")
    cli.ok("agent", "invite", "forge", "w", "--role", "write", "--heartbeat-interval", "1")
    cli.ok("heartbeat", "forge", "w")
    up.start()
    cell = up.cell()
    msg = wait(lambda: [e for e in cell.log.read(0) if e.type == "bus.message"], "the reminder")[0]
    assert msg.topic == "lazarus.checkpoint_due" and msg.to == "w" and msg.by == "lazarus"
    assert msg.payload["checkpoint_interval"] == 1
    row = next(r for r in agent_rows(cli, "forge") if r["agent"] == "w")
    assert row["checkpoint_due"] is True
    assert "checkpoint due" in cli.ok("status", "forge")
    cli.ok("bus", "checkpoint", "forge", "--by", "w", "--summary", "progress")
    assert next(r for r in agent_rows(cli, "forge") if r["agent"] == "w")["checkpoint_due"] is False
