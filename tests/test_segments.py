"""Segments (DESIGN section 19): a long-lived cell's log sealed in pieces, read as one everywhere."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from lazarus_bus import Cell, Root, parse_draft
from lazarus_bus import events as ev
from lazarus_bus.config import Config
from lazarus_bus.errors import CorruptLog
from lazarus_bus.log import FileLog
from tests.conftest import HELPERS, Cli, Procs

SMALL = 8192  # a few dozen heartbeats a segment


def _sealing_root(cli: Cli) -> Root:
    (cli.root / "lazarus.toml").write_text(f'fsync = "never"\nsegment_bytes = {SMALL}\n')
    return Root(cli.root, Config(fsync="never", segment_bytes=SMALL))


def _beats(cell: Cell, n: int, **extra: object) -> None:
    for k in range(n):
        cell.append(parse_draft({"type": "agent.heartbeat", "by": "ada", "agent": "ada", "cycle": k, **extra}))


@pytest.fixture
def sealed(cli: Cli) -> Cell:
    root = _sealing_root(cli)
    cell = root.create("long", cell_id="long-1")
    cell.append(parse_draft({"type": "agent.invited", "by": "operator", "agent": "ada", "role": "write"}))
    _beats(cell, 600)
    return cell


def test_the_active_log_is_sealed_into_named_segments(sealed: Cell) -> None:
    segs = sealed.log.sealed()  # type: ignore[attr-defined]
    assert len(segs) > 5
    names = sorted(os.listdir(sealed.dir / "logs" / "segments"), key=lambda n: int(n.split("-")[0]))
    assert names[0].startswith("1-") and all(n.endswith(".jsonl") for n in names)
    for seg in segs:  # each file holds exactly the seqs its name says, and is no bigger than it must be
        seqs = [json.loads(line)["seq"] for line in seg.path.read_bytes().splitlines()]
        assert seqs == list(range(seg.first, seg.last + 1))
        assert seg.path.stat().st_size < SMALL + 1024
    active = (sealed.dir / "logs" / "events.jsonl").read_bytes().splitlines()
    assert json.loads(active[0])["seq"] == segs[-1].last + 1 if active else True


def test_every_reader_reads_across_segments(sealed: Cell, cli: Cli, tmp_path: Path) -> None:
    total = sealed.head().seq
    assert total == 603  # provisioned, invited, 600 beats, activated
    assert [e.seq for e in Cell(sealed.root, sealed.id).log.read()] == list(range(1, total + 1))
    assert [e.seq for e in sealed.log.read(100, 105)] == [101, 102, 103, 104, 105]  # from the middle
    out = json.loads(cli.ok("verify", "long", "--json"))
    assert out == {"events": total, "head": sealed.head().hash}
    assert json.loads(cli.ok("replay", "long", "--json"))["agents"]["ada"]["heartbeats"] == 600
    tailed = [json.loads(x)["seq"] for x in cli.ok("tail", "long", "--since", "590").splitlines()]
    assert tailed == list(range(591, total + 1))
    cli.ok("export", "long", "--to", str(tmp_path / "long.jsonl"))
    assert len((tmp_path / "long.jsonl").read_bytes().splitlines()) == total
    head = cli.ok("verify", "long", "--json")
    assert json.loads(cli.ok("verify", "long", "--expect", json.loads(head)["head"], "--json"))["events"] == total


def test_a_whole_read_checks_the_chain_across_segments_on_a_second_core(sealed: Cell) -> None:
    """read_all (a full replay) with the chain helper: the same events as the checked reader, and a line
    altered inside a sealed segment is still caught, with its seq."""
    log = sealed.log
    assert isinstance(log, FileLog)
    assert [e.seq for e in log.read_all(aside_from=0)] == [e.seq for e in log.read()]
    seg = log.sealed()[2]
    lines = seg.path.read_bytes().split(b"\n")
    lines[3] = lines[3].replace(b'"cycle":', b'"cycle":1')
    seg.path.write_bytes(b"\n".join(lines))
    with pytest.raises(CorruptLog, match=f"seq {seg.first + 3}"):
        list(log.read_all(aside_from=0))


def test_an_idempotent_retry_is_recognised_across_a_seal(sealed: Cell) -> None:
    eid = "0b8a3f0e-6a8e-4a8e-9a43-2f3c9f7a1c11"
    first = sealed.append(ev.BusMessage(by="operator", topic="once", id=eid))[0].seq
    _beats(sealed, 200)  # several seals later
    fresh = Cell(sealed.root, sealed.id)  # a new process's view: its id window is rebuilt from the segments
    again = fresh.append(ev.BusMessage(by="operator", topic="once", id=eid))[0]
    assert again.duplicate and again.seq == first


def test_a_writer_follows_a_seal_another_process_made(sealed: Cell, cli: Cli) -> None:
    stale = Cell(sealed.root, sealed.id)
    stale.head()  # opened on today's active file
    _beats(sealed, 100)  # another writer seals it under our feet
    [a] = stale.append(ev.BusMessage(by="operator", topic="after"))
    assert a.seq == sealed.head().seq
    assert json.loads(cli.ok("verify", "long", "--json"))["events"] == a.seq


def test_a_crash_between_link_and_rename_is_finished_by_the_next_opener(sealed: Cell, cli: Cli) -> None:
    """What a seal killed half-way leaves: the newest segment and the active name on one inode. A reader
    sees each event once; the next writer finishes the seal; nothing is lost or doubled."""
    logs = sealed.dir / "logs"
    active = logs / "events.jsonl"
    sealed.append(ev.BusMessage(by="operator", topic="before"))
    head = sealed.head()
    first = json.loads(active.read_bytes().splitlines()[0])["seq"]
    os.link(active, logs / "segments" / f"{first}-{head.seq}.jsonl")  # the seal's first step, then the crash
    reader = FileLog(active, sealed.id, fsync="never")
    assert [e.seq for e in reader.read()] == list(range(1, head.seq + 1))
    assert json.loads(cli.ok("verify", "long", "--json"))["events"] == head.seq
    [a] = Cell(Root(cli.root, Config(fsync="never", segment_bytes=SMALL)), sealed.id).append(
        ev.BusMessage(by="operator", topic="after"))
    assert a.seq == head.seq + 1
    assert json.loads(active.read_bytes().splitlines()[0])["seq"] == head.seq + 1  # the seal was finished
    assert json.loads(cli.ok("verify", "long", "--json"))["events"] == head.seq + 1


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_writers_killed_at_random_while_sealing_lose_no_acknowledged_event(sealed: Cell, procs: Procs, cli: Cli,
                                                                         tmp_path: Path) -> None:
    """Eight writers on a log that seals every few dozen lines, SIGKILLed at random (some mid-seal)."""
    sides = tmp_path / "acks"
    sides.mkdir()
    rng = random.Random(11)

    def spawn(n: int) -> subprocess.Popen[bytes]:
        return procs.start([sys.executable, str(HELPERS / "acker.py"), str(cli.root), sealed.id,
                            str(sides / f"w{n}.txt"), str(SMALL)], env=cli.env(), stdout=subprocess.DEVNULL)

    writers = [spawn(n) for n in range(8)]
    from tests.support import wait

    for k in range(60):
        i = rng.randrange(8)
        before = sealed.head().seq
        wait(lambda b=before: sealed.head().seq > b + 3, "appends between kills")  # type: ignore[misc]
        writers[i].send_signal(signal.SIGKILL)
        writers[i].wait(10)
        writers[i] = spawn(8 + k)
    for p in writers:
        p.send_signal(signal.SIGKILL)
        p.wait(10)
    sealed.append(ev.BusMessage(by="operator", topic="after"))
    log = {e.seq: e.id for e in Cell(sealed.root, sealed.id).log.read()}
    out = json.loads(cli.ok("verify", "long", "--json"))
    assert out["events"] == len(log) == max(log)
    acked = [line.split() for f in sides.iterdir() for line in f.read_text().splitlines()]
    assert len(acked) > 60
    for seq, eid in acked:
        assert log[int(seq)] == eid
    assert len(sealed.log.sealed()) > 10  # type: ignore[attr-defined]


def test_the_start_check_trusts_sealed_segments_checked_before_and_nothing_else(sealed: Cell) -> None:
    """startcheck: the first start checks the whole log and records the sealed segments; a segment
    changed since (its size, mtime or inode) is read again, and a fault in it is caught."""
    from lazarus_bus.startcheck import RECORD, verify_at_start

    log = sealed.log
    verify_at_start(log, sealed.state_dir)
    assert len(json.loads((sealed.state_dir / RECORD).read_bytes())) == len(log.sealed())  # type: ignore[attr-defined]
    verify_at_start(log, sealed.state_dir)  # trusted: only the newest seam and the active file are read
    seg = log.sealed()[1]  # type: ignore[attr-defined]
    lines = seg.path.read_bytes().split(b"\n")
    lines[2] = lines[2].replace(b'"cycle":', b'"cycle":9')
    seg.path.write_bytes(b"\n".join(lines))  # edited while no daemon ran: a new size and mtime
    with pytest.raises(CorruptLog):
        verify_at_start(log, sealed.state_dir)


def test_a_seal_killed_before_its_link_leaves_a_log_that_goes_on(sealed: Cell, cli: Cli) -> None:
    """The seal's first step marks the file (the sticky bit, seen with one fstat); killed right after,
    the file is still the active one: the next writer clears the mark and appends, nothing is sealed."""
    import stat

    active = sealed.dir / "logs" / "events.jsonl"
    before = len(sealed.log.sealed())  # type: ignore[attr-defined]
    os.chmod(active, stat.S_IMODE(active.stat().st_mode) | stat.S_ISVTX)
    [a] = Cell(Root(cli.root, Config(fsync="never", segment_bytes=SMALL)), sealed.id).append(
        ev.BusMessage(by="operator", topic="after"))
    assert a.seq == json.loads(active.read_bytes().splitlines()[-1])["seq"]
    assert not active.stat().st_mode & stat.S_ISVTX
    assert len(sealed.log.sealed()) == before  # type: ignore[attr-defined]
    assert json.loads(cli.ok("verify", "long", "--json"))["events"] == a.seq
    for seg in sealed.log.sealed():  # type: ignore[attr-defined]
        assert seg.path.stat().st_mode & stat.S_ISVTX  # every real segment carries the mark
