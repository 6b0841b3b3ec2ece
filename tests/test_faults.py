"""The fault harness: writers killed mid-append, a daemon killed and restarted, fuzzed input everywhere."""

from __future__ import annotations

import asyncio
import json
import random
import signal
import subprocess
import sys
import uuid
from pathlib import Path

import aiohttp
import msgspec
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from lazarus_bus import Cell, Root, parse_draft
from lazarus_bus import events as ev
from lazarus_bus.errors import CorruptLog, LazarusError
from tests.conftest import HELPERS, Cli, Procs
from tests.support import Up, wait

WRITERS = 16
KILLS = 200


@pytest.mark.slow
@pytest.mark.timeout(600)  # 35 s alone, twice that beside another suite: room for a loaded machine
def test_sixteen_writers_killed_at_random_lose_no_acknowledged_event(root: Root, procs: Procs, tmp_path: Path,
                                                                     cli: Cli) -> None:
    cell = root.create("chaos")
    sides = tmp_path / "acks"
    sides.mkdir()
    rng = random.Random(7)

    def spawn(n: int) -> subprocess.Popen[bytes]:
        return procs.start([sys.executable, str(HELPERS / "acker.py"), str(root.path), cell.id,
                            str(sides / f"w{n}.txt")], env=cli.env(), stdout=subprocess.DEVNULL)

    writers = [spawn(n) for n in range(WRITERS)]
    for k in range(KILLS):
        i = rng.randrange(WRITERS)
        before = cell.head().seq
        wait(lambda b=before: cell.head().seq > b + 2, "appends between kills")  # type: ignore[misc]
        writers[i].send_signal(signal.SIGKILL)
        writers[i].wait(10)
        writers[i] = spawn(WRITERS + k)
    for p in writers:
        p.send_signal(signal.SIGKILL)
        p.wait(10)
    cell.append(ev.BusMessage(by="operator", topic="after"))  # the next writer cleans any torn tail
    out = json.loads(cli.ok("verify", "chaos", "--json"))
    log = {e.seq: e.id for e in Cell(root, cell.id).log.read()}
    assert out["events"] == len(log) == max(log)
    assert len(set(log.values())) == len(log)  # every id once
    acked = [line.split() for f in sides.iterdir() for line in f.read_text().splitlines()]
    assert len(acked) > KILLS
    for seq, eid in acked:
        assert log[int(seq)] == eid  # every acknowledged event is there, at the seq it was given


AGENTS = {"a": "0.3", "b": "0.5", "c": "0.7"}


@pytest.mark.slow
def test_daemon_killed_and_restarted_twenty_times(up: Up, cli: Cli) -> None:
    up.config('[resurrection]\nmode = "yes"\nmax_attempts = 1000000\nbackoff_initial = 0\n', top="")
    cli.ok("cell", "create", "forge")
    for name, pause in AGENTS.items():
        cli.ok("agent", "invite", "forge", name, "--role", "write", "--cmd", f"sh -c 'sleep {pause}; exit 1'")
    cell = up.cell()
    rng = random.Random(3)
    for _ in range(20):
        daemon = up.start()
        before = cell.head().seq
        grow = rng.randint(2, 12)
        wait(lambda b=before, g=grow: cell.head().seq >= b + g, "the daemon at work")  # type: ignore[misc]
        daemon.send_signal(signal.SIGKILL)
        daemon.wait(10)
    up.start()
    spawns = {n: cell.refresh().agents[n].spawns for n in AGENTS}
    wait(lambda: all(cell.refresh().agents[n].spawns >= spawns[n] + 2 for n in AGENTS), "revivals go on")
    up.stop()
    assert cli.ok("verify", "forge").startswith("ok:")
    events = list(cell.log.read())
    for name in AGENTS:
        mine = [e for e in events if getattr(e, "agent", None) == name]
        running: int | None = None
        for e in mine:
            if e.type == "agent.spawned":
                assert running is None, f"{name} spawned again while pid {running} was running (seq {e.seq})"
                running = e.pid  # type: ignore[attr-defined]
            elif e.type == "agent.exited":
                assert e.pid == running, f"{name}: exit of pid {e.pid} not the one running ({running})"  # type: ignore[attr-defined]
                running = None
        deaths = [e.seq for e in mine if e.type == "agent.declared_dead"]
        spawned = [e.seq for e in mine if e.type == "agent.spawned"]
        for d in deaths[:-1]:
            assert any(s > d for s in spawned), f"{name}: death at seq {d} never revived"


# -- fuzzing ------------------------------------------------------------------------------

json_values = st.recursive(
    st.none() | st.booleans() | st.integers(min_value=-(2**80), max_value=2**80) | st.floats() | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=20,
)
FIELDS = ["type", "by", "agent", "topic", "payload", "cycle", "pid", "id", "seq", "checkpoint_id", "to", "role"]
drafts = st.dictionaries(st.sampled_from(FIELDS), json_values, max_size=6).map(
    lambda d: {**d, "type": d.get("type") if d.get("type") is not None else "agent.heartbeat"})
raw_inputs = st.one_of(
    st.binary(max_size=300),
    drafts.map(lambda d: msgspec.json.encode(d)),
    drafts.map(lambda d: msgspec.json.encode(d)[: len(msgspec.json.encode(d)) // 2]),  # truncated
    st.integers(min_value=1, max_value=3000).map(lambda n: b"[" * n + b"]" * n),  # deep nesting
    st.just(b'{"type":"bus.message","by":"ada","topic":"\xff\xfe"}'),  # invalid UTF-8
    st.just(b'{"type":"agent.heartbeat","by":"ada","agent":"ada","cycle":' + b"9" * 400 + b"}"),  # huge number
)


@settings(max_examples=300, deadline=None)
@given(raw=raw_inputs)
def test_decoder_and_door_fail_clearly(raw: bytes) -> None:
    try:
        ev.decode_event(raw)
    except (msgspec.DecodeError, msgspec.ValidationError):
        pass
    try:
        parse_draft(raw)
    except LazarusError as exc:
        assert exc.exit_code == 2 and str(exc)


@pytest.fixture
def fuzz_cell(root: Root) -> Cell:
    c = root.create("fuzz")
    c.append(ev.AgentInvited(by="operator", agent="ada", role="lead"))
    return c


@pytest.mark.slow
@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(raw=raw_inputs)
def test_emit_fuzz_is_a_clear_error_and_the_log_unchanged(raw: bytes, fuzz_cell: Cell, cli: Cli) -> None:
    log = fuzz_cell.dir / "logs" / "events.jsonl"
    before = log.read_bytes()
    r = cli("emit", "fuzz", "bus.message", "--by", "ada", "--data", "-", input=raw)
    if r.code == 0:
        return  # a valid message after all
    assert r.code in (2, 3, 4), r.err
    assert r.err.startswith("error: ") and r.err.count("\n") == 1 and "Traceback" not in r.err
    assert log.read_bytes() == before


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(garbage=raw_inputs, where=st.sampled_from(["middle", "tail"]))
def test_replay_of_a_damaged_log_is_corrupt_or_ignores_a_torn_tail(garbage: bytes, where: str, fuzz_cell: Cell,
                                                                    tmp_path: Path, root: Root) -> None:
    log = fuzz_cell.dir / "logs" / "events.jsonl"
    original = log.read_bytes()
    lines = original.splitlines(keepends=True)
    damaged = (lines[0] + garbage.replace(b"\n", b" ") + b"\n" + lines[1]) if where == "middle" else (
        original + garbage.replace(b"\n", b" "))
    target = root.create("victim")
    vlog = target.dir / "logs" / "events.jsonl"
    target.close()
    vlog.write_bytes(damaged)
    try:
        view = Cell(root, target.id).replay()
        assert where == "tail" and view.seq == 2  # a torn tail is not an event
    except CorruptLog as exc:
        assert "corrupt log" in str(exc) or "not found" in str(exc)
    except LazarusError as exc:  # the first line itself was not the cell's
        assert str(exc)
    import shutil

    shutil.rmtree(target.dir)


def test_http_append_fuzz(up: Up, cli: Cli) -> None:
    up.config()
    cli.ok("cell", "create", "fuzz")
    cli.ok("agent", "invite", "fuzz", "ada", "--role", "lead")
    up.start("--http", "127.0.0.1:0")
    url = f"{up.http}/cells/fuzz/events"
    cell = up.cell("fuzz")
    log = cell.dir / "logs" / "events.jsonl"
    statuses: list[int] = []

    @settings(max_examples=150, deadline=None)
    @given(raw=raw_inputs)
    def check(raw: bytes) -> None:
        before = log.read_bytes()

        async def post() -> tuple[int, str]:
            async with aiohttp.ClientSession() as s, s.post(url, data=raw) as r:
                return r.status, await r.text()

        status, text = asyncio.run(post())
        statuses.append(status)
        if status in (200, 201):
            return
        assert status in (400, 403, 404, 409, 413, 422), (status, text)
        assert "error" in json.loads(text)
        assert log.read_bytes() == before

    check()
    assert 500 not in statuses and up.proc is not None and up.proc.poll() is None


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_daemon_killed_mid_group_commit_loses_no_acknowledged_event(up: Up, cli: Cli) -> None:
    """fsync "always" with 64 concurrent HTTP clients (the gateway's batches: heartbeats of one batch in
    one write, every request of it answered after one shared fdatasync): SIGKILL the daemon while batches
    are in flight; every event answered 201 is in the log at its seq, the chain holds, some heartbeats
    did share a write, and the next daemon takes appends again."""
    up.config()
    conf = cli.root / "lazarus.toml"
    conf.write_text(conf.read_text().replace('fsync = "never"', 'fsync = "always"'))
    cli.ok("cell", "create", "forge")
    for name in ("a0", "a1", "a2", "a3"):
        cli.ok("agent", "invite", "forge", name, "--role", "write")
    daemon = up.start("--http", "127.0.0.1:0")
    base = up.http
    cell = up.cell()
    acked: list[tuple[int, str]] = []  # (seq, the event's id or, for a heartbeat, its agent and cycle)
    stop = asyncio.Event()

    async def client(n: int, session: aiohttp.ClientSession) -> None:
        k = 0
        while not stop.is_set():
            if n % 2:  # half send heartbeats with no id: those of one batch go in one write
                agent, cycle = f"a{n % 4}", n * 1_000_000 + k
                url, body, key = f"{base}/cells/forge/agents/{agent}/heartbeat", {"cycle": cycle}, f"{agent}:{cycle}"
            else:
                key = str(uuid.uuid4())
                url, body = f"{base}/cells/forge/events", {"type": "bus.message", "by": "operator",
                                                           "topic": f"c{n}", "payload": k, "id": key}
            try:
                async with session.post(url, json=body) as r:
                    if r.status == 201:
                        acked.append(((await r.json())["seq"], key))
            except (aiohttp.ClientError, OSError, asyncio.TimeoutError):
                return  # the daemon is gone: this request was never acknowledged
            k += 1

    async def run() -> None:
        timeout = aiohttp.ClientTimeout(total=30)
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=64), timeout=timeout) as s:
            tasks = [asyncio.create_task(client(n, s)) for n in range(64)]
            while len(acked) < 600:
                await asyncio.sleep(0.01)
            daemon.send_signal(signal.SIGKILL)  # mid-batch: 64 requests in flight, some waiting on a flush
            daemon.wait(10)
            stop.set()
            await asyncio.gather(*tasks)

    asyncio.run(run())
    stored = list(Cell(cell.root, cell.id).log.read())
    log = {e.seq: f"{e.agent}:{e.cycle}" if isinstance(e, ev.AgentHeartbeat) else e.id for e in stored}
    assert len(acked) >= 600
    for seq, key in acked:
        assert log.get(seq) == key  # acknowledged = in the log, at the seq it was given
    beats = [e.ts for e in stored if isinstance(e, ev.AgentHeartbeat)]
    assert len(set(beats)) < len(beats)  # heartbeats of one batch share a write (and its one stamp)
    up.start("--http", "127.0.0.1:0")
    r = cli.ok("emit", "forge", "bus.message", "--by", "operator", "--data", '{"topic": "after"}')
    assert int(r) == max(log) + 1
    out = json.loads(cli.ok("verify", "forge", "--json"))
    assert out["events"] == max(log) + 1
