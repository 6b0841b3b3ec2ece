"""Watch latency: from an append in another process to the updated projection, p50 and p99."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from common import percentile, report  # noqa: E402

from lazarus_bus import Cell, Config, Root  # noqa: E402
from lazarus_bus import events as ev  # noqa: E402
from lazarus_bus.watcher import Watcher  # noqa: E402

APPENDS = int(os.environ.get("BENCH_APPENDS", "2000"))
PAUSE = float(os.environ.get("BENCH_PAUSE", "0.005"))

WRITER = """
import sys, time
from pathlib import Path
from lazarus_bus import Root, Config, events as ev
root = Root(Path(sys.argv[1]), Config(fsync="never"))
cell = root.open("bench")
for i in range(int(sys.argv[2])):
    cell.append(ev.AgentHeartbeat(by="ada", agent="ada", cycle=i))
    time.sleep(float(sys.argv[3]))
"""


async def measure(root: Root) -> list[float]:
    latencies: list[float] = []
    done = asyncio.Event()

    def on_events(cell: Cell, events: list[ev.Event]) -> None:
        now = time.time()
        for e in events:
            if e.type == "agent.heartbeat":
                latencies.append(now - e.ts)  # ts is stamped under the log lock, right before the write
        if len(latencies) >= APPENDS:
            done.set()

    watcher = Watcher(root, on_events)
    stop = asyncio.Event()
    task = asyncio.create_task(watcher.run(stop, tick=1.0))
    await asyncio.sleep(0.3)
    writer = subprocess.Popen([sys.executable, "-c", WRITER, str(root.path), str(APPENDS), str(PAUSE)])
    try:
        await asyncio.wait_for(done.wait(), 120)
    finally:
        stop.set()
        await task
        writer.wait(30)
    return latencies


def main() -> None:
    with tempfile.TemporaryDirectory(dir=os.environ.get("BENCH_DIR")) as d:
        root = Root(Path(d), Config(fsync="never"))
        cell = root.create("bench")
        cell.append(ev.AgentInvited(by="operator", agent="ada", role="write"))
        cell.close()
        lat = asyncio.run(measure(root))
    ms = [x * 1000 for x in lat]
    report("watch", {
        "appends": len(ms), "p50_ms": round(percentile(ms, 50), 3), "p99_ms": round(percentile(ms, 99), 3),
        "max_ms": round(max(ms), 3), "targets": {"p99_ms": 50},
    }, {"appends": APPENDS, "pause_s": PAUSE, "debounce_ms": 8, "step_ms": 4, "writer": "another process"})


if __name__ == "__main__":
    main()
