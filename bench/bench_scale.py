"""Scale: one daemon watching many cells of heartbeating agents: CPU share, peak RSS, detection delay.

The loaders heartbeat every agent from before the daemon starts; the daemon's start-up (launch to its
first `daemon.json`, after its first pass) is a figure of its own, then the steady state is measured
for BENCH_DURATION s: CPU, peak RSS, and one agent stopped EVERY s into it, whose death must come
within `dead_after` + 1 s of its last heartbeat. Every other death is a false one (counted)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from common import report  # noqa: E402

from lazarus_bus import Cell, Config, Root  # noqa: E402
from lazarus_bus.cells import CELL_DIRS  # noqa: E402
from lazarus_bus.names import new_id  # noqa: E402
from lazarus_bus import events as ev  # noqa: E402

CELLS = int(os.environ.get("BENCH_CELLS", "1000"))
AGENTS = int(os.environ.get("BENCH_AGENTS", "5"))
EVERY = float(os.environ.get("BENCH_EVERY", "5"))
DURATION = float(os.environ.get("BENCH_DURATION", "60"))
LOADERS = 2
DEAD_AFTER = 15.0
CONFIG = f"""
fsync = "never"
[health]
stale_after = 10
dead_after = {DEAD_AFTER}
[resurrection]
mode = "no"
"""

LOADER = """
import sys, time, resource
from pathlib import Path
from lazarus_bus import Root, Config, events as ev
soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
from lazarus_bus import Cell
root = Root(Path(sys.argv[1]), Config(fsync="never"))
ids = Path(sys.argv[2]).read_text().split(",")  # a file: 5,000 ids are past the kernel's argument limit
agents, every, victim, flags = int(sys.argv[3]), float(sys.argv[4]), sys.argv[5], Path(sys.argv[6])
cells = [Cell(root, i) for i in ids]
for c in cells:
    c.head()  # open every log before the clock starts
slots = [(c, f"a{k}") for c in cells for k in range(agents)]
print("ready", flush=True)
sys.stdin.readline()
gap = every / len(slots)
t = time.time()
n = 0
silent = False
while not (flags / "stop").exists():  # looked at once a round
    for c, a in slots:
        if c.id == victim and a == "a0" and (silent or (flags / "victim").exists()):
            if silent:
                continue
            silent = True  # one last heartbeat after the flag, however far behind: its silence starts then
        c.append(ev.AgentHeartbeat(by=a, agent=a, cycle=n))
        t += gap
        pause = t - time.time()
        if pause > 0:
            time.sleep(pause)
    n += 1
"""


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def peak_rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return 0.0


def build(root: Root, i: int) -> str:
    """One cell with its agents: `cell create` checks the name against every cell's manifest (O(cells)
    a create, so 10,000 of them would take an hour); the bench lays the cell out as create does, with
    the same first event through the same log, and names it c<i> without the check."""
    cell_id = new_id()
    base = root.path / cell_id
    for sub in CELL_DIRS:
        (base / sub).mkdir(parents=True)
    with root.store.open_log(cell_id, create=True) as log:
        log.append(ev.CellProvisioned(by="operator", name=f"c{i}"))
    cell = Cell(root, cell_id)
    cell.append_many([ev.AgentInvited(by="operator", agent=f"a{k}", role="write") for k in range(AGENTS)]
                     + [ev.AgentHeartbeat(by=f"a{k}", agent=f"a{k}") for k in range(AGENTS)])
    cell.close()
    return cell_id


def main() -> None:
    with tempfile.TemporaryDirectory(dir=os.environ.get("BENCH_DIR")) as d:
        path = Path(d) / "missions"
        path.mkdir()
        (path / "lazarus.toml").write_text(CONFIG)
        root = Root(path, Config(fsync="never"))
        ids = [build(root, i) for i in range(CELLS)]
        env = {**os.environ, "LAZARUS_ROOT": str(path)}
        victim = ids[0]
        share = (len(ids) + LOADERS - 1) // LOADERS
        shares = []
        for i in range(0, len(ids), share):
            shares.append(Path(d) / f"ids-{i}")
            shares[-1].write_text(",".join(ids[i:i + share]))
        flags = Path(d) / "flags"
        flags.mkdir()
        loaders = [subprocess.Popen([sys.executable, "-c", LOADER, str(path), str(shares[i // share]),
                                     str(AGENTS), str(EVERY), victim, str(flags)],
                                    stdin=subprocess.PIPE, stdout=subprocess.PIPE)
                   for i in range(0, len(ids), share)]
        for p in loaders:
            assert p.stdout is not None and p.stdout.readline() == b"ready\n"
        for p in loaders:
            assert p.stdin is not None
            p.stdin.write(b"go\n")
            p.stdin.flush()
        went = time.time()
        time.sleep(EVERY)  # one full round first: every agent has a fresh heartbeat when the daemon starts
        daemon_log = open(os.environ.get("BENCH_DAEMON_LOG", os.devnull), "wb")
        launched = time.time()
        daemon = subprocess.Popen([sys.executable, "-m", "lazarus_bus", "up", "--no-http", "-v"], env=env,
                                  start_new_session=True, stderr=daemon_log)
        status = path / ".lazarus" / "daemon.json"
        while not status.exists():  # written after the first pass: the daemon is ready
            time.sleep(0.05)
        start = time.time()
        cpu0, t0 = cpu_seconds(daemon.pid), time.time()
        startup_cpu = cpu0
        time.sleep(EVERY)  # into the steady state, then the victim stops
        (flags / "victim").touch()
        time.sleep(DURATION - EVERY)
        cpu1, t1 = cpu_seconds(daemon.pid), time.time()
        rss = peak_rss_mb(daemon.pid)
        (flags / "stop").touch()
        for p in loaders:
            p.wait()
        stopped = time.time()
        os.killpg(daemon.pid, signal.SIGTERM)
        daemon.wait(30)
        cell = root.open(victim)
        beats = [e for e in cell.log.read() if e.type == "agent.heartbeat" and e.agent == "a0"]  # type: ignore[attr-defined]
        deaths = [e for e in cell.log.read() if e.type == "agent.declared_dead" and e.agent == "a0"]  # type: ignore[attr-defined]
        deaths = [e for e in deaths if beats and e.ts > beats[-1].ts]
        detection = (deaths[0].ts - beats[-1].ts) if deaths and beats else None
        victim_after_ready = beats[-1].ts - start if beats else None
        if detection is None:
            print(f"victim {victim}: {len(beats)} heartbeats, last at +{beats[-1].ts - start:.1f}s, no death "
                  f"(run ended at +{time.time() - start:.1f}s)" if beats else "victim never heartbeated",
                  file=sys.stderr)
        heartbeats = false_deaths = 0
        for cid in ids:
            for e in Cell(root, cid).log.read():
                if e.type == "agent.heartbeat":
                    heartbeats += 1
                elif e.type == "agent.declared_dead" and not (cid == victim and e.agent == "a0"):  # type: ignore[attr-defined]
                    false_deaths += 1
        lag = json.loads(status.read_bytes()).get("watcher_lag")
    report("scale", {
        "cells": CELLS, "agents": CELLS * AGENTS, "heartbeats": heartbeats,
        "heartbeats_per_s": round(heartbeats / (stopped - went)),
        "daemon_startup_s": round(start - launched, 2), "daemon_startup_cpu_s": round(startup_cpu, 2),
        "daemon_cpu_share_of_one_core": round((cpu1 - cpu0) / (t1 - t0), 3),
        "daemon_peak_rss_mb": round(rss, 1),
        "detection_s": round(detection, 3) if detection is not None else None,
        "dead_after_s": DEAD_AFTER,
        "detection_over_dead_after_s": round(detection - DEAD_AFTER, 3) if detection is not None else None,
        "victim_silent_from_s_after_ready": round(victim_after_ready, 2) if victim_after_ready is not None else None,
        "false_deaths": false_deaths,
        "last_watcher_lag_s": lag, "load_average": [round(x, 2) for x in os.getloadavg()],
        "targets": ({"daemon_cpu_share_of_one_core": 1.0, "daemon_peak_rss_mb": 1024}  # issue 21: 10,000 cells
                    if CELLS >= 10_000 else {"daemon_cpu_share_of_one_core": 0.2, "daemon_peak_rss_mb": 200})
        | {"detection_over_dead_after_s": 1.0, "false_deaths": 0},
    }, {"cells": CELLS, "agents_per_cell": AGENTS, "every_s": EVERY, "duration_s": DURATION,
        "loaders": LOADERS, "mode": "no", "fsync": "never"})


if __name__ == "__main__":
    main()
