"""Snapshots are a cache: a corrupt, outdated, foreign or ahead-of-log one is ignored and rebuilt."""

from __future__ import annotations

import json
from pathlib import Path

import msgspec
import pytest

from lazarus_bus import Cell, Root
from lazarus_bus import events as ev
from lazarus_bus.fold import PROJECTION_VERSION
from lazarus_bus.snapshot import load_snapshot, save_snapshot
from tests.conftest import Cli


@pytest.fixture
def cell(root: Root) -> Cell:
    c = root.create("forge")
    c.append(ev.AgentInvited(by="operator", agent="ada", role="lead"))
    for n in range(5):
        c.append(ev.AgentHeartbeat(by="ada", agent="ada", cycle=n))
    return c


def _snap(cell: Cell) -> Path:
    return cell.state_dir / "projection.json"


def test_snapshot_round_trip_and_tail(root: Root, cell: Cell) -> None:
    save_snapshot(cell.state_dir, cell.replay(4))
    cell.append(ev.BusMessage(by="ada", topic="news"))
    fresh = Cell(root, cell.id)
    assert load_snapshot(fresh.state_dir, fresh.log, fresh.id) == cell.replay(4)
    assert fresh.refresh() == cell.replay()


@pytest.mark.parametrize(
    "spoil",
    [
        lambda raw, cell: b"{not json",
        lambda raw, cell: raw[: len(raw) // 2],
        lambda raw, cell: raw.replace(b'"version":%d' % PROJECTION_VERSION, b'"version":1'),
        lambda raw, cell: raw.replace(b'"version":%d' % PROJECTION_VERSION, b'"version":99'),
    ],
    ids=["garbage", "truncated", "older-schema", "newer-schema"],
)
def test_corrupt_snapshot_is_ignored_and_rebuilt(root: Root, cell: Cell, spoil, cli: Cli) -> None:  # type: ignore[no-untyped-def]
    save_snapshot(cell.state_dir, cell.refresh())
    path = _snap(cell)
    path.write_bytes(spoil(path.read_bytes(), cell))
    fresh = Cell(root, cell.id)
    assert load_snapshot(fresh.state_dir, fresh.log, fresh.id) is None
    assert fresh.refresh() == cell.replay()
    status = json.loads(cli.ok("status", "forge", "--json"))
    assert status["cells"][0]["seq"] == cell.head().seq


def test_snapshot_ahead_of_its_log_is_ignored(root: Root, cell: Cell, root_dir: Path) -> None:
    save_snapshot(cell.state_dir, cell.refresh())
    # the log is replaced by a shorter one (restored from an older backup): the snapshot is ahead
    other = root.create("other")
    body = json.loads(_snap(cell).read_bytes())
    body["seq"] = body["view"]["seq"] = 99
    _snap(cell).write_bytes(json.dumps(body).encode())
    assert load_snapshot(cell.state_dir, Cell(root, cell.id).log, cell.id) is None
    # one from another cell, or naming another event at that seq, is not trusted either
    save_snapshot(other.state_dir, other.refresh())
    _snap(cell).write_bytes(_snap(other).read_bytes())
    assert load_snapshot(cell.state_dir, Cell(root, cell.id).log, cell.id) is None
    body = msgspec.json.decode(msgspec.json.encode(msgspec.structs.asdict(cell.refresh())))
    snap = {"version": PROJECTION_VERSION, "seq": cell.refresh().seq, "last_id": "0" * 8, "view": {**body, "last_id": "0" * 8}}
    _snap(cell).write_bytes(json.dumps(snap).encode())
    assert load_snapshot(cell.state_dir, Cell(root, cell.id).log, cell.id) is None
    assert Cell(root, cell.id).refresh() == cell.replay()


def test_replay_until_equals_the_live_projection_at_that_seq(root: Root, cli: Cli) -> None:
    cell = root.create("forge")
    live = {}
    for draft in [ev.AgentInvited(by="operator", agent="ada", role="lead"),
                  *(ev.AgentHeartbeat(by="ada", agent="ada", cycle=n) for n in range(1, 5)),
                  ev.CheckpointCreated(by="ada", checkpoint_id="c1", state={"k": 1})]:
        cell.append(draft)
        live[cell.refresh().seq] = json.loads(msgspec.json.encode(cell.refresh()))  # the incremental projection
    for seq, expected in live.items():
        assert json.loads(cli.ok("replay", "forge", "--until", str(seq), "--json")) == expected
    assert json.loads(cli.ok("replay", "forge", "--until", "2", "--json"))["agents"]["ada"]["heartbeats"] == 0
