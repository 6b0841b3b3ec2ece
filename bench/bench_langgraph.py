"""LazarusSaver against langgraph-checkpoint-sqlite's SqliteSaver, on the same graph in the same run.

Three figures per saver, each a median of BENCH_RUNS runs, at two durabilities: durable (Lazarus
`fsync = "always"`, SQLite WAL with `synchronous = FULL`: a put returns once it is on disk) and not
(`fsync = "never"`, `synchronous = OFF`):
  - graph runs/s: a six-step chain of plain Python nodes, invoked with `durability="sync"` on fresh
    threads (each run puts 8 checkpoints and 7 sets of writes);
  - put/s: the checkpoints one such run made, replayed through `put` on fresh threads;
  - get/s: `get_tuple` of a thread's newest checkpoint, threads taken round-robin.
Ratios are Lazarus over SQLite (above 1: Lazarus is faster).
"""

from __future__ import annotations

import operator
import os
import sqlite3
import sys
import tempfile
from pathlib import Path
from typing import Annotated, Any, TypedDict

sys.path.insert(0, str(Path(__file__).parent))
from common import RUNS, median_of, rate, report  # noqa: E402
from langchain_core.runnables import RunnableConfig  # noqa: E402
from langgraph.checkpoint.base import BaseCheckpointSaver  # noqa: E402
from langgraph.checkpoint.memory import InMemorySaver  # noqa: E402
from langgraph.checkpoint.sqlite import SqliteSaver  # noqa: E402
from langgraph.graph import END, START, StateGraph  # noqa: E402

from lazarus_bus import Config, Root  # noqa: E402
from lazarus_bus import events as ev  # noqa: E402
from lazarus_bus.langgraph import LazarusSaver  # noqa: E402

GRAPHS = int(os.environ.get("BENCH_GRAPHS", "30"))  # graph runs per timing
PUTS = int(os.environ.get("BENCH_PUTS", "400"))  # puts per timing
GETS = int(os.environ.get("BENCH_GETS", "2000"))  # gets per timing
STEPS = 6


class State(TypedDict, total=False):
    total: int
    notes: Annotated[list[str], operator.add]


def graph() -> StateGraph[State]:
    g = StateGraph(State)
    for n in range(STEPS):
        def node(state: State, n: int = n) -> State:
            return {"total": state.get("total", 0) + n, "notes": [f"step {n}: " + "x" * 200]}
        g.add_node(f"s{n}", node)
    g.add_edge(START, "s0")
    for n in range(STEPS - 1):
        g.add_edge(f"s{n}", f"s{n + 1}")
    g.add_edge(f"s{STEPS - 1}", END)
    return g


class Recorder(InMemorySaver):
    """The puts one graph run makes, to replay into each saver."""

    def __init__(self) -> None:
        super().__init__()
        self.puts: list[tuple[Any, ...]] = []

    def put(self, config: RunnableConfig, checkpoint: Any, metadata: Any, new_versions: Any) -> RunnableConfig:
        self.puts.append((config, checkpoint, metadata, new_versions))
        return super().put(config, checkpoint, metadata, new_versions)


def lazarus(tmp: Path, durable: bool) -> LazarusSaver:
    root_dir = Path(tempfile.mkdtemp(dir=tmp))
    fsync = "always" if durable else "never"
    (root_dir / "lazarus.toml").write_text(f'fsync = "{fsync}"\n')
    cell = Root(root_dir, Config(fsync=fsync)).create("bench")
    cell.append(ev.AgentInvited(by="operator", agent="graph", role="write"))
    cell.close()
    return LazarusSaver("bench", "graph", root=root_dir)


def sqlite(tmp: Path, durable: bool) -> SqliteSaver:
    conn = sqlite3.connect(Path(tempfile.mkdtemp(dir=tmp)) / "graph.db", check_same_thread=False)
    saver = SqliteSaver(conn)
    saver.setup()
    conn.execute(f"PRAGMA synchronous={'FULL' if durable else 'OFF'}")
    return saver


def figures(saver: BaseCheckpointSaver[Any], recorded: list[tuple[Any, ...]], tag: str) -> dict[str, float]:
    compiled = graph().compile(checkpointer=saver)
    runs = iter(range(10**9))

    def graphs() -> None:
        for _ in range(GRAPHS):
            compiled.invoke({"total": 0, "notes": []}, {"configurable": {"thread_id": f"{tag}-g{next(runs)}"}},
                            durability="sync")

    def puts() -> None:
        for i in range(PUTS):
            config, checkpoint, metadata, versions = recorded[i % len(recorded)]
            conf = {**config["configurable"], "thread_id": f"{tag}-p{next(runs)}-{i // len(recorded)}"}
            saver.put({"configurable": conf}, checkpoint, metadata, versions)

    threads = [f"{tag}-g{n}" for n in range(GRAPHS)]

    def gets() -> None:
        for i in range(GETS):
            assert saver.get_tuple({"configurable": {"thread_id": threads[i % len(threads)]}}) is not None

    return {"graphs_per_s": median_of(lambda: rate(GRAPHS, graphs)),
            "puts_per_s": median_of(lambda: rate(PUTS, puts)),
            "gets_per_s": median_of(lambda: rate(GETS, gets))}


def main() -> None:
    recorder = Recorder()
    graph().compile(checkpointer=recorder).invoke({"total": 0, "notes": []},
                                                  {"configurable": {"thread_id": "recorded"}}, durability="sync")
    out: dict[str, Any] = {"checkpoints_per_graph_run": len(recorder.puts)}
    with tempfile.TemporaryDirectory() as tmp:
        for durable in (True, False):
            mode = "durable" if durable else "no_fsync"
            ours = figures(lazarus(Path(tmp), durable), recorder.puts, f"l{mode}")
            peer = figures(sqlite(Path(tmp), durable), recorder.puts, f"s{mode}")
            out[mode] = {"lazarus": ours, "sqlite": peer,
                         "ratio": {k: round(ours[k] / peer[k], 3) for k in ours}}
    report("langgraph", out, {"graphs": GRAPHS, "puts": PUTS, "gets": GETS, "steps": STEPS, "runs": RUNS,
                              "durable": "fsync=always / sqlite WAL synchronous=FULL",
                              "no_fsync": "fsync=never / sqlite synchronous=OFF"},
           "langgraph", "langgraph-checkpoint", "langgraph-checkpoint-sqlite")


if __name__ == "__main__":
    main()
