"""LazarusSaver: LangGraph's own conformance suite passes on it, its deletes are tombstones that keep
the chain, its blobs are checked, other processes see its checkpoints, and through a real daemon a
graph SIGKILLed mid-run is revived and finishes as if it had never been cut off."""

from __future__ import annotations

import asyncio
import json
import operator
import os
import signal
import subprocess
import sys
from collections.abc import AsyncGenerator
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any, TypedDict

import pytest
from langgraph.checkpoint.conformance import checkpointer_test, validate
from langgraph.graph import END, START, StateGraph

from lazarus_bus import Cell, Root, load_config
from lazarus_bus import events as ev
from lazarus_bus.errors import CorruptLog, Forbidden, MalformedInput, NotFound, Refused
from lazarus_bus.graphs import GraphIndex
from lazarus_bus.langgraph import BLOBS, LazarusSaver
from tests.conftest import Cli, NatsServer, nats_toml
from tests.support import Up, wait

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


class Seen(TypedDict):
    seen: Annotated[list[str], operator.add]

STEPS = ["gather", "price", "tax", "invoice", "report", "archive"]


@pytest.fixture
def forge(root: Root) -> Cell:
    cell = root.create("forge")
    cell.append(ev.AgentInvited(by="operator", agent="graph", role="write"))
    cell.append(ev.AgentInvited(by="operator", agent="watcher", role="read"))
    return cell


def config(thread: str, checkpoint_id: str | None = None, ns: str = "") -> dict[str, Any]:
    conf: dict[str, Any] = {"thread_id": thread, "checkpoint_ns": ns}
    if checkpoint_id is not None:
        conf["checkpoint_id"] = checkpoint_id
    return {"configurable": conf}


def checkpoint(n: int, **values: Any) -> dict[str, Any]:
    from langgraph.checkpoint.base.id import uuid6

    return {"v": 1, "id": str(uuid6(clock_seq=n)), "ts": f"2026-01-01T00:00:{n:02}+00:00",
            "channel_values": values, "channel_versions": {k: n for k in values}, "versions_seen": {},
            "updated_channels": None}


def put_chain(saver: LazarusSaver, thread: str, n: int) -> list[dict[str, Any]]:
    stored: list[dict[str, Any]] = []
    for i in range(n):
        parent = stored[-1]["configurable"]["checkpoint_id"] if stored else None
        stored.append(dict(saver.put(config(thread, parent), checkpoint(i, count=i), {"source": "loop", "step": i},
                                     {"count": i})))
    return stored


# -- LangGraph's conformance suite ------------------------------------------------------------


def test_the_conformance_suite_passes_for_every_capability_it_declares(root: Root, forge: Cell) -> None:
    @checkpointer_test(name="LazarusSaver")
    async def lazarus_saver() -> AsyncGenerator[LazarusSaver, None]:
        saver = LazarusSaver("forge", "graph", root=root.path)
        yield saver
        saver.close()

    report = asyncio.run(validate(lazarus_saver))
    results = report.results
    declared = {"put", "put_writes", "get_tuple", "list", "delete_thread", "delete_for_runs", "copy_thread", "prune"}
    assert {cap for cap, r in results.items() if r.detected} == declared  # every capability the suite knows
    failures = {cap: r.failures for cap, r in results.items() if r.failures}
    assert failures == {}, failures
    assert all(r.passed and r.tests_passed > 0 and r.tests_failed == 0 for r in results.values())
    assert sum(r.tests_passed for r in results.values()) >= 80  # the suite's 81 tests at 0.0.2
    # everything it wrote is an ordinary, verifiable part of the cell's log
    assert forge.replay() == forge.refresh()
    kinds = {e.type for e in forge.log.read()}
    assert {"graph.checkpoint", "graph.writes", "graph.deleted"} <= kinds


# -- the log stays the truth ------------------------------------------------------------------


def test_deletes_and_prunes_are_tombstones_and_the_chain_verifies(cli: Cli, root: Root, forge: Cell) -> None:
    saver = LazarusSaver("forge", "graph", root=root.path)
    kept = put_chain(saver, "t1", 4)
    put_chain(saver, "t2", 2)
    saver.put_writes(kept[-1], [("count", 99)], "task-1")
    before = sum(1 for _ in forge.log.read())
    saver.prune(["t1"], strategy="keep_latest")
    saver.delete_thread("t2")
    saver.delete_thread("never-there")  # nothing to delete: nothing appended
    tombstones = [e for e in forge.log.read() if isinstance(e, ev.GraphDeleted)]
    assert [(e.thread_id, e.reason, len(e.checkpoints)) for e in tombstones] == [("t1", "prune", 3),
                                                                                  ("t2", "delete_thread", 0)]
    assert sum(1 for _ in forge.log.read()) == before + 2  # appended, nothing rewritten
    assert sum(isinstance(e, ev.GraphCheckpoint) for e in forge.log.read()) == 6  # the history is still there
    verified = json.loads(cli.ok("verify", "forge", "--json"))
    assert verified["events"] == before + 2
    # a fresh saver (another process's view) folds the same answer from the log alone
    fresh = LazarusSaver("forge", "graph", root=root.path)
    assert [t.config["configurable"]["checkpoint_id"] for t in fresh.list(config("t1"))] == [
        kept[-1]["configurable"]["checkpoint_id"]]
    tup = fresh.get_tuple(config("t1"))
    assert tup is not None and tup.checkpoint["channel_values"] == {"count": 3}
    assert tup.pending_writes == [("task-1", "count", 99)]
    assert fresh.get_tuple(config("t2")) is None and list(fresh.list(config("t2"))) == []
    # an operator drops a thread by hand; a tombstone without its thread is malformed input
    cli.ok("emit", "forge", "graph.deleted", "--by", "operator", "--data", '{"thread_id": "t1", "reason": "by hand"}')
    assert fresh.get_tuple(config("t1")) is None
    bad = cli("emit", "forge", "graph.deleted", "--by", "operator", "--data", '{"reason": "no thread"}')
    assert bad.code == 2 and bad.err.startswith("error: ") and "thread_id" in bad.err


def test_another_process_sees_the_checkpoints_and_resumes_the_thread(root: Root, forge: Cell) -> None:
    saver = LazarusSaver("forge", "graph", root=root.path)
    stored = put_chain(saver, "shared", 3)
    script = ("import json, sys\nfrom lazarus_bus.langgraph import LazarusSaver\n"
              "s = LazarusSaver('forge', 'graph', root=sys.argv[1])\n"
              "t = s.get_tuple({'configurable': {'thread_id': 'shared'}})\n"
              "print(json.dumps([t.config['configurable']['checkpoint_id'], t.checkpoint['channel_values'], "
              "t.metadata['step']]))\n"
              "s.put_writes(t.config, [('count', 'from the other process')], 'task-x')\n")
    r = subprocess.run([sys.executable, "-c", script, str(root.path)], capture_output=True, text=True, timeout=120,
                       start_new_session=True)
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout) == [stored[-1]["configurable"]["checkpoint_id"], {"count": 2}, 2]
    tup = saver.get_tuple(config("shared"))  # this saver catches up with what the other one appended
    assert tup is not None and tup.pending_writes == [("task-x", "count", "from the other process")]


def test_on_nats_a_saver_on_another_machine_reads_the_blobs_it_never_wrote(tmp_path: Path,
                                                                           own_nats: NatsServer) -> None:
    """Blobs go to the stream's object store before the event that names them, so a machine with an
    empty checkpoints/ (another root on the same NATS) reads the thread and fetches each blob once."""
    roots, shared = {}, nats_toml(own_nats)  # one stream for both machines
    for host in ("alpha", "beta"):
        roots[host] = tmp_path / host
        roots[host].mkdir()
        (roots[host] / "lazarus.toml").write_text(shared)
    alpha = Root(roots["alpha"], load_config(roots["alpha"] / "lazarus.toml"))
    cell = alpha.create("forge")
    cell.append(ev.AgentInvited(by="operator", agent="graph", role="write"))
    saver = LazarusSaver("forge", "graph", root=roots["alpha"])
    stored = put_chain(saver, "shared", 3)
    saver.close()
    script = ("import json, sys\nfrom lazarus_bus.langgraph import LazarusSaver\n"
              "s = LazarusSaver('forge', 'graph', root=sys.argv[1])\n"
              "t = s.get_tuple({'configurable': {'thread_id': 'shared'}})\n"
              "print(json.dumps([t.config['configurable']['checkpoint_id'], t.checkpoint['channel_values']]))\n")
    r = subprocess.run([sys.executable, "-c", script, str(roots["beta"])], capture_output=True, text=True,
                       timeout=120, start_new_session=True)
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout) == [stored[-1]["configurable"]["checkpoint_id"], {"count": 2}]
    newest = [e for e in cell.log.read() if isinstance(e, ev.GraphCheckpoint)][-1]
    fetched = roots["beta"] / cell.id / BLOBS / newest.channels["count"]
    assert fetched.is_file() and fetched.read_bytes() == (cell.dir / BLOBS / newest.channels["count"]).read_bytes()


def test_values_are_content_addressed_blobs_and_a_bad_one_is_loud(root: Root, forge: Cell) -> None:
    saver = LazarusSaver("forge", "graph", root=root.path)
    put_chain(saver, "a", 1)
    saver.put(config("b"), checkpoint(7, count=0), {"source": "input", "step": -1}, {"count": 7})
    events = [e for e in forge.log.read() if isinstance(e, ev.GraphCheckpoint)]
    assert events[0].channels["count"] == events[1].channels["count"]  # the same value is one blob
    blob = forge.dir / BLOBS / events[1].channels["count"]
    assert blob.is_file() and blob.stat().st_mode & 0o077 == 0
    blob.write_bytes(blob.read_bytes() + b"tampered")
    with pytest.raises(CorruptLog, match="SHA-256"):
        LazarusSaver("forge", "graph", root=root.path).get_tuple(config("b"))
    blob.unlink()
    with pytest.raises(NotFound, match="missing"):
        LazarusSaver("forge", "graph", root=root.path).get_tuple(config("b"))


def test_bookkeeping_is_readable_in_the_log_and_what_json_cannot_hold_exactly_is_a_blob(root: Root,
                                                                                         forge: Cell) -> None:
    saver = LazarusSaver("forge", "graph", root=root.path)
    plain = saver.put(config("t"), checkpoint(1, count=1), {"source": "loop", "step": 1, "who": "ann"}, {"count": 1})
    odd = {"source": "loop", "step": 2, "raw": b"\x00\xff", "at": datetime(2026, 1, 2, tzinfo=UTC)}
    saver.put(config("t", plain["configurable"]["checkpoint_id"]), checkpoint(2, count=2), odd, {"count": 2})
    first, second = [e for e in forge.log.read() if isinstance(e, ev.GraphCheckpoint)]
    assert first.metadata == {"source": "loop", "step": 1, "who": "ann"} and first.metadata_blob is None
    assert first.checkpoint is not None and first.checkpoint["channel_versions"] == {"count": 1}
    assert second.metadata is None and second.metadata_blob is not None and second.step == 2
    fresh = LazarusSaver("forge", "graph", root=root.path)
    [newest, oldest] = fresh.list(config("t"))
    assert newest.metadata == odd and oldest.metadata == {"source": "loop", "step": 1, "who": "ann"}
    newest.checkpoint["channel_versions"]["count"] = 99  # what a caller changes is its own copy
    again = fresh.get_tuple(config("t"))
    assert again is not None and again.checkpoint["channel_versions"] == {"count": 2}
    assert [t.metadata["step"] for t in fresh.list(None, filter={"who": "ann"})] == [1]


def test_the_cells_rules_hold_for_graph_events(root: Root, forge: Cell) -> None:
    reader = LazarusSaver("forge", "watcher", root=root.path)
    with pytest.raises(Forbidden):  # a read-role agent may read the graph, not write it
        reader.put(config("t"), checkpoint(1), {}, {})
    saver = LazarusSaver("forge", "graph", root=root.path)
    forge.append(ev.CellActivated(by="operator"))
    forge.append(ev.CellFrozen(by="operator", reason="paused"))
    with pytest.raises(Refused):  # a frozen cell advances no work
        saver.put(config("t"), checkpoint(1), {}, {})
    with pytest.raises(Exception, match="strategy"):
        saver.prune(["t"], strategy="sometimes")


def test_the_index_is_a_pure_fold_of_the_log(root: Root, forge: Cell) -> None:
    saver = LazarusSaver("forge", "graph", root=root.path)
    put_chain(saver, "t", 3)
    saver.copy_thread("t", "t-copy")
    saver.delete_for_runs(["no-such-run"])
    index = GraphIndex()
    index.fold(forge.log.read())
    assert index.threads == saver.index.threads and index.writes == saver.index.writes
    assert sorted(index.threads["t-copy"][""]) == sorted(index.threads["t"][""])


def test_it_opens_the_cell_from_the_environment_the_daemon_gives(root: Root, forge: Cell,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("LAZARUS_ROOT", "LAZARUS_CELL", "LAZARUS_AGENT"):
        monkeypatch.delenv(name, raising=False)
    with pytest.raises(MalformedInput, match="LAZARUS_CELL"):
        LazarusSaver(root=root.path)
    monkeypatch.setenv("LAZARUS_ROOT", str(root.path))
    monkeypatch.setenv("LAZARUS_CELL", forge.id)
    monkeypatch.setenv("LAZARUS_AGENT", "graph")
    with LazarusSaver() as saver:
        assert saver.agent.name == "graph" and saver.cell.id == forge.id
        saver.put(config("env"), checkpoint(1), {"source": "input", "step": -1}, {})
    assert [e.by for e in forge.log.read() if isinstance(e, ev.GraphCheckpoint)] == ["graph"]


def test_an_async_graph_runs_on_it_and_a_sync_reader_sees_its_state(root: Root, forge: Cell) -> None:
    graph: StateGraph[Seen] = StateGraph(Seen)
    graph.add_node("one", lambda s: {"seen": ["one"]})
    graph.add_node("two", lambda s: {"seen": ["two"]})
    graph.add_edge(START, "one")
    graph.add_edge("one", "two")
    graph.add_edge("two", END)
    saver = LazarusSaver("forge", "graph", root=root.path)
    out = asyncio.run(graph.compile(checkpointer=saver).ainvoke({"seen": []}, config("async")))
    assert out == {"seen": ["one", "two"]}
    reader = graph.compile(checkpointer=LazarusSaver("forge", "graph", root=root.path))
    state = reader.get_state(config("async"))
    assert state.values == {"seen": ["one", "two"]} and state.next == ()
    assert len(list(reader.get_state_history(config("async")))) == 4  # input, one, two and the end


def test_the_core_imports_without_langgraph() -> None:
    """Only the extra needs LangGraph: the package, the CLI and every other module load without it."""
    script = """
import importlib, importlib.abc, pkgutil, sys
class Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split('.')[0] in ('langgraph', 'langchain_core'):
            raise ModuleNotFoundError(f'No module named {name!r}')
sys.meta_path.insert(0, Block())
import lazarus_bus
for m in pkgutil.walk_packages(lazarus_bus.__path__, 'lazarus_bus.'):
    if m.name not in ('lazarus_bus.langgraph', 'lazarus_bus.__main__'):
        importlib.import_module(m.name)
try:
    import lazarus_bus.langgraph
except ImportError as exc:
    print(exc)
"""
    r = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120,
                       start_new_session=True)
    assert r.returncode == 0, r.stderr
    assert "pip install 'lazarus-pit[langgraph]'" in r.stdout


# -- through a real daemon ----------------------------------------------------------------------


def ledger(cell: Cell) -> list[dict[str, Any]]:
    path = cell.workspace / "ledger.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


@pytest.mark.slow
@pytest.mark.parametrize("halt", ["invoice:before", "invoice"])  # the fourth step, before or after its effect
def test_a_graph_killed_after_its_third_step_resumes_at_the_fourth_and_ends_as_an_uninterrupted_run(
        up: Up, cli: Cli, halt: str) -> None:
    up.config('[resurrection]\nmode = "yes"\n')
    command = f"{sys.executable} {EXAMPLES / 'graph_agent.py'}"
    for name, env in (("forge", ["--env", f"GRAPH_HALT_IN={halt}"]), ("calm", [])):
        cli.ok("cell", "create", name)
        cli.ok("agent", "invite", name, "graph", "--role", "write", *env, "--cmd", command)
    up.start()
    cell, calm = up.cell("forge"), up.cell("calm")
    marker = cell.workspace / f"halted-{halt.replace(':', '-')}"
    wait(marker.exists, "the graph to stand in its fourth step", timeout=120)
    sent_before = (cell.workspace / "outbox.jsonl").exists()
    assert sent_before == (halt == "invoice")
    assert [r["step"] for r in ledger(cell)] == STEPS[:4]  # three steps done, the fourth cut off below
    first = cell.refresh().agents["graph"]
    os.killpg(first.pid, signal.SIGKILL)
    wait(lambda: cell.refresh().agents["graph"].phase == "left", "the revived graph to finish", timeout=180)
    wait(lambda: calm.refresh().agents["graph"].phase == "left", "the uninterrupted graph to finish", timeout=180)
    v = cell.refresh()
    assert v.agents["graph"].spawns == first.spawns + 1 and v.agents["graph"].left_reason == "completed"
    runs = ledger(cell)
    # every step once, the interrupted one twice: the revival resumed at the first unfinished step
    assert [r["step"] for r in runs] == [*STEPS[:4], "invoice", *STEPS[4:]]
    assert len({r["pid"] for r in runs[:4]}) == 1 and len({r["pid"] for r in runs[4:]}) == 1
    assert runs[0]["pid"] != runs[4]["pid"]
    outbox = (cell.workspace / "outbox.jsonl").read_text().splitlines()
    assert len(outbox) == 1  # the invoice left once: the rerun step got the ledger's recorded result
    assert {e.effect_id: e.status for e in v.effects.values()} == {"invoice-main": "completed"}
    assert sum(isinstance(e, ev.EffectStarted) for e in cell.log.read()) == 1  # started once, by either run
    told = (cell.agent_logs / "graph.log").read_text()
    assert "resuming thread main at invoice (done: ['gather', 'price', 'tax'])" in told, told
    # the final state is exactly what the run that was never killed gives
    assert [r["step"] for r in ledger(calm)] == STEPS
    result = json.loads((cell.workspace / "result.json").read_text())
    assert result == json.loads((calm.workspace / "result.json").read_text())
    assert result["done"] == STEPS and result["total"] == 57.0
    # and the log it all lives in verifies, and replays to the same projection
    assert json.loads(cli.ok("verify", "forge", "--json"))["events"] == v.seq
    assert cell.replay() == v
