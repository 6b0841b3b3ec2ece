"""The mission bus: roles at the door, checkpoint archives, restores, handoffs, tasks, the client."""

from __future__ import annotations

import hashlib
import io
import json
import os
import tarfile
import time
from pathlib import Path

import pytest

from lazarus_bus import Cell, Forbidden, Refused, Root
from lazarus_bus import events as ev
from lazarus_bus.checkpoints import PathEscape, checkpoint, restore
from lazarus_bus.resume import resume_packet
from lazarus_bus.errors import LazarusError, NotFound, TooLarge
from tests.conftest import Cli, Procs

ROLES = ["lead", "write", "read", "audit"]


@pytest.fixture
def cell(root: Root) -> Cell:
    c = root.create("forge")
    for role in ROLES:
        c.append(ev.AgentInvited(by="operator", agent=f"a-{role}", role=role))
    c.append(ev.CheckpointCreated(by="operator", checkpoint_id="cp0"))
    c.append(ev.TaskCreated(by="operator", task_id="t-mine", title="x", assignee="a-write"))
    c.append(ev.TaskCreated(by="operator", task_id="t-other", title="y", assignee="a-lead"))
    return c


def _drafts(by: str) -> dict[str, ev.Event]:
    """One event of every kind an agent might try, authored by `by`."""
    return {
        "heartbeat": ev.AgentHeartbeat(by=by, agent=by),
        "joined": ev.AgentJoined(by=by, agent=by),
        "message": ev.BusMessage(by=by, topic="t"),
        "checkpoint": ev.CheckpointCreated(by=by, checkpoint_id=f"cp-{by}"),
        "handoff": ev.HandoffCreated(by=by, handoff_id=f"h-{by}", to="a-lead", checkpoint_id="cp0"),
        "task.created": ev.TaskCreated(by=by, task_id=f"t-{by}", title="new"),
        "task.updated own": ev.TaskUpdated(by=by, task_id="t-mine", status="in_progress"),
        "task.updated other": ev.TaskUpdated(by=by, task_id="t-other", status="in_progress"),
        "approval": ev.RevivalApproved(by=by, key="k"),
        "invite": ev.AgentInvited(by=by, agent="newbie", role="read"),
        "freeze": ev.CellFrozen(by=by),
        "left": ev.AgentLeft(by=by, agent=by),
    }


ALLOWED = {
    "lead": {"heartbeat", "joined", "message", "checkpoint", "handoff", "task.created", "task.updated own",
             "task.updated other", "left"},
    "write": {"heartbeat", "joined", "message", "checkpoint", "handoff", "task.updated own", "left"},
    "read": {"heartbeat", "joined", "left"},
    "audit": {"heartbeat", "joined", "left"},
}


@pytest.mark.parametrize("role", ROLES)
@pytest.mark.parametrize("kind", list(_drafts("x")))
def test_every_role_against_every_event_kind(root: Root, cell: Cell, role: str, kind: str) -> None:
    by = f"a-{role}"
    draft = _drafts(by)[kind]
    log = cell.dir / "logs" / "events.jsonl"
    before = log.read_bytes()
    if kind in ALLOWED[role]:
        assert Cell(root, cell.id).append(draft)[0].seq > 0
    else:
        with pytest.raises(Forbidden) as err:
            Cell(root, cell.id).append(draft)
        assert by in str(err.value)
        assert log.read_bytes() == before


def test_refusal_in_the_cli_names_agent_role_and_capability(cli: Cli) -> None:
    cli.ok("cell", "create", "forge")
    cli.ok("agent", "invite", "forge", "ro", "--role", "read")
    r = cli("bus", "publish", "forge", "news", "--by", "ro", "--data", "1")
    assert r.code == 4 and "agent ro (role read) lacks the bus.message capability" in r.err
    r = cli("bus", "publish", "forge", "news", "--by", "stranger")
    assert r.code == 4 and "'stranger' is not invited" in r.err
    assert cli.ok("bus", "publish", "forge", "news", "--by", "operator", "--data", '{"a":1}') == "3\n"


def _tree(base: Path) -> dict[str, bytes | str]:
    out: dict[str, bytes | str] = {}
    for p in sorted(base.rglob("*")):
        rel = str(p.relative_to(base))
        out[rel] = ("->" + os.readlink(p)) if p.is_symlink() else (p.read_bytes() if p.is_file() else "dir")
    return out


def test_checkpoint_archive_round_trip_is_byte_identical(cell: Cell) -> None:
    ws = cell.workspace
    (ws / "src" / "deep").mkdir(parents=True)
    (ws / "src" / "a.txt").write_text("alpha\n")
    (ws / "src" / "deep" / "blob.bin").write_bytes(os.urandom(70_000) + b"\x00\xff")
    (ws / "src" / "link").symlink_to("a.txt")
    (ws / "notes.md").write_text("# notes")
    before = _tree(ws)
    a = checkpoint(cell, "a-write", summary="s", state={"k": [1, 2]}, paths=["src", "notes.md"])
    e = a.event
    assert isinstance(e, ev.CheckpointCreated) and e.archive == f"checkpoints/{e.checkpoint_id}.tar.gz"
    assert hashlib.sha256((cell.dir / e.archive).read_bytes()).hexdigest() == e.sha256
    for p in sorted(ws.iterdir()):
        (p.unlink() if p.is_file() or p.is_symlink() else __import__("shutil").rmtree(p))
    restored = restore(cell, e.checkpoint_id, "a-write").event
    assert isinstance(restored, ev.CheckpointRestored) and restored.paths == ["notes.md", "src"]
    assert _tree(ws) == before


@pytest.mark.parametrize("path", ["../outside", "/etc", "src/../../x", "~/x"])
def test_checkpoint_paths_must_stay_in_the_workspace(cell: Cell, path: str) -> None:
    with pytest.raises(PathEscape):
        checkpoint(cell, "a-write", paths=[path])
    assert not list(cell.checkpoints.iterdir())


def test_symlink_out_of_the_workspace_is_refused_at_checkpoint(cell: Cell, cli: Cli) -> None:
    (cell.workspace / "src").mkdir()
    (cell.workspace / "src" / "passwd").symlink_to("/etc/passwd")
    (cell.workspace / "up").symlink_to("..")
    log = (cell.dir / "logs" / "events.jsonl").read_bytes()
    for p in ("src", "up"):
        r = cli("bus", "checkpoint", "forge", "--by", "a-write", "--path", p)
        assert r.code == 4 and "out of the workspace" in r.err, r.err
    assert (cell.dir / "logs" / "events.jsonl").read_bytes() == log
    assert not list(cell.checkpoints.iterdir())


def _evil_archive(cell: Cell, name: str, members: list[tarfile.TarInfo]) -> str:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        for m in members:
            tar.addfile(m, io.BytesIO(b"x" * m.size) if m.isfile() else None)
    data = buf.getvalue()
    (cell.checkpoints / f"{name}.tar.gz").write_bytes(data)
    digest = hashlib.sha256(data).hexdigest()
    cell.append(ev.CheckpointCreated(by="operator", checkpoint_id=name, archive=f"checkpoints/{name}.tar.gz",
                                     sha256=digest))
    return name


def _member(name: str, kind: bytes = tarfile.REGTYPE, link: str = "") -> tarfile.TarInfo:
    m = tarfile.TarInfo(name)
    m.type = kind
    m.linkname = link
    m.size = 1 if kind == tarfile.REGTYPE else 0
    return m


@pytest.mark.parametrize("members", [
    [_member("../escaped.txt")],
    [_member("/tmp/absolute.txt")],
    [_member("ok/../../escaped.txt")],
    [_member("link", tarfile.SYMTYPE, "/etc/passwd")],
    [_member("link", tarfile.SYMTYPE, "../../outside")],
    [_member("hard", tarfile.LNKTYPE, "/etc/passwd")],
    [_member("dev", tarfile.CHRTYPE)],
], ids=["dotdot", "absolute", "nested-dotdot", "symlink-abs", "symlink-up", "hardlink", "device"])
def test_restore_refuses_members_that_land_outside(cell: Cell, members: list[tarfile.TarInfo]) -> None:
    cid = _evil_archive(cell, "evil", members)
    log = (cell.dir / "logs" / "events.jsonl").read_bytes()
    with pytest.raises(PathEscape):
        restore(cell, cid)
    assert list(cell.workspace.iterdir()) == []
    assert not (cell.dir / "escaped.txt").exists()
    assert (cell.dir / "logs" / "events.jsonl").read_bytes() == log


def _chain(n: int, last: str) -> list[tarfile.TarInfo]:
    """Nested symlinks with long names, past the path-length limit: the shape that slipped through
    tarfile's data filter on Python 3.11.7 (each name 250 characters, each link to the next)."""
    names = [f"{i:03d}" + "d" * 247 for i in range(n)]
    members = [_member(names[i], tarfile.SYMTYPE, names[i + 1]) for i in range(n - 1)]
    return [*members, _member(names[-1], tarfile.SYMTYPE, last), _member(names[0] + "/pwned.txt")]


@pytest.mark.parametrize("members", [
    [_member("fifo", tarfile.FIFOTYPE)],
    [_member("up", tarfile.SYMTYPE, "sub/../..")],
    [_member("sub/up", tarfile.SYMTYPE, "../..")],
    [_member("d", tarfile.SYMTYPE, "sub"), _member("sub", tarfile.DIRTYPE), _member("d/through-a-link.txt")],
    _chain(20, "../../../../../../.."),
    _chain(20, "."),
], ids=["fifo", "link-dotdot-inside", "link-up-from-subdir", "file-through-own-link", "long-chain-out",
        "long-chain-in"])
def test_crafted_archives_write_nothing_anywhere(cell: Cell, members: list[tarfile.TarInfo], tmp_path: Path) -> None:
    cid = _evil_archive(cell, "evil", members)
    log = (cell.dir / "logs" / "events.jsonl").read_bytes()
    outside = sorted(p.name for p in cell.dir.parent.parent.iterdir())
    with pytest.raises(PathEscape):
        restore(cell, cid)
    assert list(cell.workspace.iterdir()) == []  # nothing half-written stays behind
    assert sorted(p.name for p in cell.dir.parent.parent.iterdir()) == outside
    assert (cell.dir / "logs" / "events.jsonl").read_bytes() == log


def test_restore_never_follows_a_link_already_in_the_workspace(cell: Cell, tmp_path: Path, cli: Cli) -> None:
    """A link an agent left in the workspace is replaced, never written through."""
    victim = tmp_path / "victim.txt"
    victim.write_text("untouched")
    target_dir = tmp_path / "elsewhere"
    target_dir.mkdir()
    (cell.workspace / "f.txt").write_text("v1")
    (cell.workspace / "sub").mkdir()
    (cell.workspace / "sub" / "g.txt").write_text("g1")
    e = checkpoint(cell, "operator", paths=["f.txt", "sub"]).event
    (cell.workspace / "f.txt").unlink()
    (cell.workspace / "f.txt").symlink_to(victim)
    restored = restore(cell, e.checkpoint_id)  # type: ignore[attr-defined]
    assert victim.read_text() == "untouched"
    assert not (cell.workspace / "f.txt").is_symlink() and (cell.workspace / "f.txt").read_text() == "v1"
    assert restored.event.paths == ["f.txt", "sub"]  # type: ignore[attr-defined]
    # a directory swapped for a link out: refused with exit 4, nothing written there
    import shutil

    shutil.rmtree(cell.workspace / "sub")
    (cell.workspace / "sub").symlink_to(target_dir)
    r = cli("bus", "restore", "forge", e.checkpoint_id)  # type: ignore[attr-defined]
    assert r.code == 4 and "symlink" in r.err, r.err
    assert list(target_dir.iterdir()) == []


def test_restore_stops_at_the_byte_budget(root_dir: Path, cli: Cli) -> None:
    """A small archive that unpacks far past max_archive_bytes: refused (exit 4), nothing left."""
    (root_dir / "lazarus.toml").write_text('fsync = "never"\nmax_archive_bytes = 1048576\n')
    cid = cli.ok("cell", "create", "forge").strip()
    cell = Root(root_dir).open(cid)
    bomb = tarfile.TarInfo("zeros.bin")
    bomb.size = 64 * 1024 * 1024
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz", compresslevel=9) as tar:
        tar.addfile(_member("small.txt"), io.BytesIO(b"x"))

        class Zeros(io.RawIOBase):
            left = bomb.size

            def readable(self) -> bool:
                return True

            def readinto(self, b: bytearray) -> int:  # type: ignore[override]
                n = min(len(b), self.left)
                b[:n] = bytes(n)
                self.left -= n
                return n

        tar.addfile(bomb, io.BufferedReader(Zeros()))
    data = buf.getvalue()
    assert len(data) < 1024 * 1024  # the archive itself is small
    (cell.checkpoints / "bomb.tar.gz").write_bytes(data)
    cell.append(ev.CheckpointCreated(by="operator", checkpoint_id="bomb", archive="checkpoints/bomb.tar.gz",
                                     sha256=hashlib.sha256(data).hexdigest()))
    log = (cell.dir / "logs" / "events.jsonl").read_bytes()
    r = cli("bus", "restore", "forge", "bomb")
    assert r.code == 4 and "max_archive_bytes" in r.err, r.err
    assert list(cell.workspace.iterdir()) == []
    assert (cell.dir / "logs" / "events.jsonl").read_bytes() == log


def test_tampered_archive_is_refused_on_restore(cell: Cell, cli: Cli) -> None:
    (cell.workspace / "f.txt").write_text("good")
    e = checkpoint(cell, "a-write", paths=["f.txt"]).event
    path = cell.dir / e.archive  # type: ignore[attr-defined]
    raw = bytearray(path.read_bytes())
    raw[-5] ^= 0xFF
    path.write_bytes(bytes(raw))
    (cell.workspace / "f.txt").write_text("changed")
    r = cli("bus", "restore", "forge", e.checkpoint_id)  # type: ignore[attr-defined]
    assert r.code == 4 and "SHA-256" in r.err
    assert (cell.workspace / "f.txt").read_text() == "changed"
    path.unlink()
    r = cli("bus", "restore", "forge", e.checkpoint_id)  # type: ignore[attr-defined]
    assert r.code == 3 and "missing" in r.err
    assert cli("bus", "restore", "forge", "nope").code == 3


def test_archive_over_the_size_limit_is_refused(root_dir: Path, cli: Cli) -> None:
    (root_dir / "lazarus.toml").write_text('fsync = "never"\nmax_archive_bytes = 1000\n')
    cid = cli.ok("cell", "create", "forge").strip()
    cli.ok("agent", "invite", "forge", "w", "--role", "write")
    (root_dir / cid / "workspace" / "big.bin").write_bytes(os.urandom(5000))
    r = cli("bus", "checkpoint", "forge", "--by", "w", "--path", "big.bin")
    assert r.code == 4 and "max_archive_bytes" in r.err
    assert list((root_dir / cid / "checkpoints").iterdir()) == []


def test_handoff_needs_recipient_and_checkpoint_and_resume_packet(cli: Cli) -> None:
    cli.ok("cell", "create", "forge", "--mission", "ship it")
    cli.ok("agent", "invite", "forge", "ada", "--role", "lead")
    cli.ok("agent", "invite", "forge", "bob", "--role", "write")
    seq, cp = cli.ok("bus", "checkpoint", "forge", "--by", "ada", "--summary", "half", "--state", '{"step": 5}').split()
    assert cli("bus", "handoff", "forge", "--by", "ada", "--to", "nobody", "--checkpoint", cp).code == 3
    assert cli("bus", "handoff", "forge", "--by", "ada", "--to", "bob", "--checkpoint", "nope").code == 3
    out = json.loads(cli.ok("bus", "handoff", "forge", "--by", "ada", "--to", "bob", "--checkpoint", cp,
                            "--note", "yours", "--json"))
    hid = out["handoff_id"]
    packet = json.loads(cli.ok("bus", "resume", "forge", hid))
    assert packet["accepted"] is False
    assert cli("bus", "resume", "forge", hid, "--accept", "--by", "ada").code == 4  # not the recipient
    packet = json.loads(cli.ok("bus", "resume", "forge", hid, "--accept", "--by", "bob"))
    assert packet["accepted"] is True and packet["from"] == "ada" and packet["to"] == "bob"
    assert packet["mission"] == "ship it" and packet["note"] == "yours"
    assert packet["checkpoint"]["state"] == {"step": 5} and packet["checkpoint"]["summary"] == "half"
    assert packet["checkpoint_summary"] == "half"  # the handed-over checkpoint's, not bob's own (he has none)
    assert packet["participants"] == {"ada": "lead", "bob": "write"}
    assert packet["seq"] == int(json.loads(cli.ok("verify", "forge", "--json"))["events"])


def test_tasks_dependencies_and_cycles(cli: Cli) -> None:
    cli.ok("cell", "create", "forge")
    cli.ok("agent", "invite", "forge", "ada", "--role", "lead")
    cli.ok("bus", "task", "forge", "design", "--by", "ada", "--id", "t1")
    r = cli("bus", "task", "forge", "loop", "--by", "ada", "--id", "t2", "--depends-on", "t2")
    assert r.code == 4 and "cycle" in r.err
    r = cli("bus", "task", "forge", "ghost", "--by", "ada", "--id", "t3", "--depends-on", "t9")
    assert r.code == 4 and "unknown task t9" in r.err
    cli.ok("bus", "task", "forge", "build", "--by", "ada", "--id", "t2", "--depends-on", "t1", "--priority", "high")
    r = cli("bus", "task-update", "forge", "t2", "in_progress", "--by", "ada")
    assert r.code == 4 and "waits on t1" in r.err
    cli.ok("bus", "task-update", "forge", "t1", "done", "--by", "ada")
    cli.ok("bus", "task-update", "forge", "t2", "in_progress", "--by", "ada")
    tasks = json.loads(cli.ok("bus", "tasks", "forge", "--json"))
    assert [(t["task_id"], t["status"], t["depends_on"]) for t in tasks] == [
        ("t1", "done", []), ("t2", "in_progress", ["t1"])]
    assert "build" in cli.ok("bus", "tasks", "forge")


def _agent_env(cli: Cli, cell_id: str, agent: str, **extra: str) -> dict[str, str]:
    return cli.env(LAZARUS_CELL=cell_id, LAZARUS_AGENT=agent, **extra)


def _wait(cell: Cell, check, timeout: float = 20.0) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while not check(cell.refresh()):
        assert time.monotonic() < deadline, "timed out waiting for the log"
        time.sleep(0.02)


def test_full_handoff_between_two_real_agent_processes(root: Root, cli: Cli, procs: Procs) -> None:
    from lazarus_bus.demo import EXAMPLES

    cell = root.create("forge")
    cell.append(ev.AgentInvited(by="operator", agent="writer", role="write"))
    cell.append(ev.AgentInvited(by="operator", agent="reviewer", role="write"))
    reviewer = procs.start([cli.argv()[0], str(EXAMPLES / "reviewer.py")], cwd=cell.workspace,
                           env=_agent_env(cli, cell.id, "reviewer"))
    writer = procs.start([cli.argv()[0], str(EXAMPLES / "writer.py")], cwd=cell.workspace,
                         env=_agent_env(cli, cell.id, "writer", WRITER_LINES="3", WRITER_PAUSE="0"))
    assert writer.wait(30) == 0, writer.stderr.read()  # type: ignore[union-attr]
    assert reviewer.wait(30) == 0, reviewer.stderr.read()  # type: ignore[union-attr]
    view = cell.refresh()
    [h] = view.handoffs.values()
    assert h.by == "writer" and h.to == "reviewer" and h.accepted
    packet = resume_packet(view, h.handoff_id)
    assert packet["checkpoint"]["state"] == {"lines": 3}
    assert (cell.workspace / "draft.txt").read_text().count("\n") == 3
    reviews = [json.loads(line) for line in cli.ok("tail", "forge", "--type", "bus.message").splitlines()]
    assert reviews[0]["payload"] == {"from": "writer", "lines": 3, "approved": True}
    assert view.agents["writer"].phase == "left" and view.agents["reviewer"].phase == "left"


HEARTBEATER = """
import os, sys, time, lazarus_bus
with lazarus_bus.connect(heartbeat=0.1) as me:
    print("ready", flush=True)
    deadline = time.monotonic() + float(sys.argv[1])  # until its own heartbeats are in the log, not a sleep
    while me.cell.refresh().agents[me.name].heartbeats < 5 and time.monotonic() < deadline:
        time.sleep(0.05)
print(time.time(), flush=True)
"""


def test_client_heartbeat_keeps_agent_healthy_and_stops_on_exit(root: Root, cli: Cli, procs: Procs) -> None:
    from lazarus_bus.config import Config, HealthConfig
    from lazarus_bus.health import judge
    from lazarus_bus.policy import effective

    cell = root.create("forge")
    cell.append(ev.AgentInvited(by="operator", agent="hb", role="read"))
    p = procs.start([cli.argv()[0], "-c", HEARTBEATER, "60"], env=_agent_env(cli, cell.id, "hb"))
    out, err = p.communicate(timeout=90)
    assert p.returncode == 0, err
    exited_at = float(out.split()[-1])
    view = cell.refresh()
    a = view.agents["hb"]
    assert a.heartbeats >= 5
    beats = [e.ts for e in cell.log.read() if e.type == "agent.heartbeat"]
    assert max(beats) <= exited_at + 1.0  # the thread stopped within a second of the exit
    cfg = Config(health=HealthConfig(stale_after=1, dead_after=2))
    assert judge(view, a, effective(cfg, view, "hb"), a.last_heartbeat + 0.5).health == "left"  # it left cleanly


SLEEPER = """
import sys, time, lazarus_bus
with lazarus_bus.connect(heartbeat=0.1) as me:
    print("ready", flush=True)
    time.sleep(float(sys.argv[1]))
"""


def test_client_stops_on_sigterm(root: Root, cli: Cli, procs: Procs) -> None:
    cell = root.create("forge")
    cell.append(ev.AgentInvited(by="operator", agent="hb", role="read"))
    p = procs.start([cli.argv()[0], "-c", SLEEPER, "600"], env=_agent_env(cli, cell.id, "hb"))
    assert p.stdout is not None and p.stdout.readline().strip() == b"ready"
    _wait(cell, lambda v: v.agents["hb"].heartbeats >= 2)
    p.terminate()
    assert p.wait(10) == 128 + 15  # SIGTERM unwound the context manager: thread stopped, process gone
    assert cell.refresh().agents["hb"].phase == "running"  # a signal is not a clean leave: the daemon judges it


def test_client_needs_a_cell_and_an_agent(monkeypatch: pytest.MonkeyPatch) -> None:
    import lazarus_bus

    monkeypatch.delenv("LAZARUS_CELL", raising=False)
    with pytest.raises(LazarusError, match="needs a cell"):
        lazarus_bus.connect()


def test_checkpoint_refused_before_archiving(cell: Cell) -> None:
    (cell.workspace / "f").write_text("x")
    with pytest.raises(Forbidden):
        checkpoint(cell, "a-read", paths=["f"])
    with pytest.raises(NotFound):
        checkpoint(cell, "a-write", paths=["missing"])
    assert not list(cell.checkpoints.iterdir())
    assert isinstance(TooLarge("x"), Refused)
