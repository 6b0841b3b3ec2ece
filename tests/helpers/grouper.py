"""THREADS threads each append N heartbeats to one cell with fsync "always"; prints `seq id` per ack."""

import sys
import threading
from pathlib import Path

from lazarus_bus import Config, Root, parse_draft
from lazarus_bus.names import new_id

root, cell, threads, n = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
c = Root(Path(root), Config(fsync="always")).open(cell)
acks: list[str] = []
start = threading.Barrier(threads)


def work() -> None:
    start.wait()
    for _ in range(n):
        eid = new_id()
        a = c.append(parse_draft({"type": "agent.heartbeat", "by": "ada", "agent": "ada", "id": eid}))[0]
        acks.append(f"{a.seq} {eid}")


workers = [threading.Thread(target=work) for _ in range(threads)]
for w in workers:
    w.start()
for w in workers:
    w.join()
print("\n".join(acks))
sys.exit(0 if len(acks) == threads * n else 1)  # a thread that failed said why on stderr
