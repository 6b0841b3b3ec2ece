"""Replay: events per second to rebuild every projection of a large cell log, against two references.

References measured in the same run: a bare typed msgspec decode plus SHA-256 of the same lines
(the floor any replay of this log pays), and the `eventsourcing` library (bench extra) rebuilding
an aggregate from its SQLite store.
"""

from __future__ import annotations

import hashlib
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from common import median_of, rate, report  # noqa: E402

import msgspec  # noqa: E402

from lazarus_bus import Config, Root  # noqa: E402
from lazarus_bus import events as ev  # noqa: E402
from lazarus_bus.replay import replay_log  # noqa: E402

EVENTS = int(os.environ.get("BENCH_EVENTS", "1000000"))
ES_EVENTS = int(os.environ.get("BENCH_ES_EVENTS", "100000"))
AGENTS = 5


def build(root: Root) -> Path:
    """A cell whose log is mostly heartbeats, with the other kinds mixed in."""
    cell = root.create("bench")
    cell.append_many([ev.AgentInvited(by="operator", agent=f"a{i}", role="write") for i in range(AGENTS)])
    n = cell.head().seq
    while n < EVENTS:
        batch: list[ev.Event] = []
        for i in range(min(1000, EVENTS - n)):
            who = f"a{i % AGENTS}"
            if i % 100 == 0:
                batch.append(ev.BusMessage(by=who, topic="progress", payload={"i": i}))
            elif i % 250 == 1:
                batch.append(ev.CheckpointCreated(by=who, checkpoint_id=f"cp-{n + i}", state={"i": i}))
            else:
                batch.append(ev.AgentHeartbeat(by=who, agent=who, cycle=n + i, status="thinking"))
        n = cell.log.append_many(batch)[-1].seq
    cell.close()
    return root.path / cell.id / "logs" / "events.jsonl"


def bare(path: Path) -> float:
    decoder = msgspec.json.Decoder(ev.AnyEvent)
    lines = path.read_bytes().splitlines()

    def go() -> None:
        sha = hashlib.sha256
        for line in lines:
            decoder.decode(line)
            sha(line).hexdigest()

    return rate(len(lines), go)


def ours(root: Root, cell_id: str) -> float:
    log = root.store.open_log(cell_id)
    try:
        return rate(EVENTS, lambda: replay_log(log) and None)
    finally:
        log.close()


def eventsourcing_rate(tmp: Path) -> float | None:
    try:
        from eventsourcing.application import Application
        from eventsourcing.domain import Aggregate, event
    except ImportError:
        return None

    class Agent(Aggregate):  # type: ignore[misc]
        @event("Registered")
        def __init__(self, name: str) -> None:
            self.name = name
            self.beats = 0
            self.cycle = 0

        @event("Heartbeat")
        def heartbeat(self, cycle: int, status: str) -> None:
            self.beats += 1
            self.cycle = cycle

    os.environ["PERSISTENCE_MODULE"] = "eventsourcing.sqlite"
    os.environ["SQLITE_DBNAME"] = str(tmp / "es.sqlite")
    app = Application()
    agent = Agent("a0")
    for i in range(ES_EVENTS - 1):
        agent.heartbeat(i, "thinking")
    app.save(agent)

    def go() -> None:
        got = app.repository.get(agent.id)
        assert got.beats == ES_EVENTS - 1

    return rate(ES_EVENTS, go)


def main() -> None:
    with tempfile.TemporaryDirectory(dir=os.environ.get("BENCH_DIR")) as d:
        tmp = Path(d)
        root = Root(tmp / "missions", Config(fsync="never"))
        t0 = time.perf_counter()
        path = build(root)
        built = time.perf_counter() - t0
        cell_id = path.parent.parent.name
        replay = median_of(lambda: ours(root, cell_id), runs=3)
        floor = median_of(lambda: bare(path), runs=3)
        es = eventsourcing_rate(tmp)
        size = path.stat().st_size
    report("replay", {
        "events": EVENTS, "log_bytes": size,
        "build_s": round(built, 2),
        "replay_per_s": round(replay), "bare_decode_sha256_per_s": round(floor),
        "replay_vs_bare_decode": round(replay / floor, 3),
        "eventsourcing_sqlite_per_s": round(es) if es else None,
        "replay_vs_eventsourcing": round(replay / es, 2) if es else None,
        "targets": {"replay_per_s": 500_000, "replay_vs_eventsourcing": 10},
    }, {"events": EVENTS, "eventsourcing_events": ES_EVENTS, "agents": AGENTS,
        "replay": "full: decode, seq and hash-chain check, every projection"}, "eventsourcing")


if __name__ == "__main__":
    main()
