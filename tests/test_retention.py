"""Retention and anchors (DESIGN section 19): old segments go behind a base and a `log.pruned` anchor,
never past open work; verify starts from the anchor and says so; a cut front is caught."""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import pytest

from lazarus_bus import Cell, Root, parse_draft
from lazarus_bus import events as ev
from lazarus_bus.config import Config, RetentionConfig
from lazarus_bus.retention import prune
from tests.conftest import Cli
from tests.support import Up, wait

SMALL = 8192


def _beats(cell: Cell, n: int) -> None:
    for k in range(n):
        cell.append(parse_draft({"type": "agent.heartbeat", "by": "ada", "agent": "ada", "cycle": k}))


@pytest.fixture
def long(cli: Cli) -> Cell:
    (cli.root / "lazarus.toml").write_text(f'fsync = "never"\nsegment_bytes = {SMALL}\n')
    root = Root(cli.root, Config(fsync="never", segment_bytes=SMALL))
    cell = root.create("long", cell_id="long-1")
    cell.append(parse_draft({"type": "agent.invited", "by": "operator", "agent": "ada", "role": "write"}))
    _beats(cell, 600)
    return cell


def test_prune_keeps_the_newest_segments_behind_an_anchor(long: Cell, cli: Cli) -> None:
    before = long.replay()
    done = prune(long, RetentionConfig(keep_segments=3))
    assert done is not None and done.segments > 5
    assert len(long.log.sealed()) == 3  # type: ignore[attr-defined]
    first = next(iter(long.log.read()))
    assert first.seq == done.through_seq + 1  # what is left starts right after the anchor
    out = json.loads(cli.ok("verify", "long", "--json"))
    assert out["first_seq"] == done.through_seq + 1 and out["pruned_through"] == done.through_seq
    assert "anchored by log.pruned through seq" in cli.ok("verify", "long")
    after = Cell(long.root, long.id).replay()  # a fresh fold: the base, then the rest
    assert after.agents["ada"].heartbeats == before.agents["ada"].heartbeats == 600
    assert after.pruned_through == done.through_seq and after.seq == long.head().seq
    assert json.loads(cli.ok("replay", "long", "--json"))["agents"]["ada"]["heartbeats"] == 600
    assert [json.loads(x)["seq"] for x in cli.ok("tail", "long", "-n", "2").splitlines()] == [
        long.head().seq - 1, long.head().seq]
    r = cli("replay", "long", "--until", "5")
    assert r.code == 3 and "pruned" in r.err
    _beats(long, 10)  # appends go on; the next daemon or CLI reads it the same way
    assert json.loads(cli.ok("verify", "long", "--json"))["events"] == long.head().seq - done.through_seq


def test_open_work_holds_retention_back(long: Cell) -> None:
    long.append(ev.AgentInvited(by="operator", agent="bob", role="write"))
    long.append(ev.CheckpointCreated(by="ada", checkpoint_id="c1", summary="early"))
    long.append(ev.HandoffCreated(by="ada", handoff_id="h1", to="bob", checkpoint_id="c1"))
    held = next(e.seq for e in long.log.read() if e.type == "handoff.created")
    _beats(long, 600)
    done = prune(long, RetentionConfig(keep_segments=1))
    assert done is not None and done.through_seq < held  # up to the open handoff, not past it
    long.append(ev.HandoffAccepted(by="bob", handoff_id="h1"))
    assert prune(long, RetentionConfig(keep_segments=1)) is None  # ada runs on: her newest checkpoint stays
    long.append(ev.CheckpointCreated(by="ada", checkpoint_id="c2", summary="later"))
    _beats(long, 300)
    again = prune(long, RetentionConfig(keep_segments=1))
    assert again is not None and again.through_seq > held


def test_a_front_cut_without_an_anchor_is_corrupt(long: Cell, cli: Cli) -> None:
    oldest = long.log.sealed()[0]  # type: ignore[attr-defined]
    oldest.path.unlink()  # somebody removed the oldest events by hand
    r = cli("verify", "long")
    assert r.code == 5 and "no log.pruned anchors" in r.err


def test_a_prune_stopped_half_way_verifies_and_is_finished_next_time(long: Cell, cli: Cli, tmp_path: Path) -> None:
    """A crash after log.pruned but before (or while) the files went: the log verifies in either state,
    and the next prune removes what the anchor covers."""
    seg_dir = long.dir / "logs" / "segments"
    backup = tmp_path / "segments"
    shutil.copytree(seg_dir, backup)
    done = prune(long, RetentionConfig(keep_segments=2))
    assert done is not None
    dropped = sorted((p for p in backup.glob("*-*.jsonl") if not (seg_dir / p.name).exists()),
                     key=lambda p: int(p.name.split("-")[0]))
    for p in dropped[len(dropped) // 2:]:  # the crash came mid-way: the newer half of them is still there
        shutil.copy(p, seg_dir / p.name)
    assert json.loads(cli.ok("verify", "long", "--json"))["pruned_through"] == done.through_seq
    for p in dropped[: len(dropped) // 2]:  # ... or before any file went
        shutil.copy(p, seg_dir / p.name)
    assert json.loads(cli.ok("verify", "long", "--json"))["events"] == long.head().seq
    prune(long, RetentionConfig(keep_segments=2))
    assert all(not (seg_dir / p.name).exists() for p in dropped)
    assert json.loads(cli.ok("verify", "long", "--json"))["pruned_through"] == done.through_seq


@pytest.mark.slow
def test_the_daemon_keeps_a_heartbeat_heavy_cell_bounded_and_publishes_anchors(up: Up, cli: Cli,
                                                                              tmp_path: Path) -> None:
    anchors = tmp_path / "anchors.jsonl"
    script = tmp_path / "anchor.py"
    script.write_text(f"import sys\nopen({str(anchors)!r}, 'ab').write(sys.stdin.buffer.read())\n")
    up.config(f'[retention]\nkeep_segments = 2\n[audit]\nanchor_command = ["{sys.executable}", "{script}"]\n'
              f'anchor_every = 200\n', top=f"segment_bytes = {SMALL}\n")
    cli.ok("cell", "create", "forge")
    cli.ok("agent", "invite", "forge", "ada", "--role", "write")
    up.start()
    cell = up.cell()
    for round_ in range(4):
        _beats(cell, 400)
        wait(lambda: len(cell.log.sealed()) <= 3, "retention catching up")  # type: ignore[attr-defined]
    seg_dir = cell.dir / "logs" / "segments"
    assert len(list(seg_dir.glob("*-*.jsonl"))) <= 3  # bounded on disk, whatever the count of beats
    out = json.loads(cli.ok("verify", "forge", "--json"))
    assert out["pruned_through"] > 0
    wait(lambda: anchors.exists() and len(anchors.read_text().splitlines()) >= 3, "anchors published")
    last = json.loads(anchors.read_text().splitlines()[-1])
    assert last["cell"] == cell.id and len(last["head"]) == 64
    cli.ok("verify", "forge", "--expect", last["expect"])  # the published head is still held
