"""Long-lived cells (DESIGN section 19): a cell of BENCH_EVENTS events in 64 MiB segments.

Figures, each with its reference from the same run: the daemon's start on it (snapshot plus tail)
and a fresh `lazarus tail -n 10`, against a bare interpreter start; replay across segments against
the same events in one file; a heartbeat-heavy cell under `[retention] keep_segments = 2`, its bytes
on disk against the bytes it was sent."""

from __future__ import annotations

import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from common import rate, report  # noqa: E402

from lazarus_bus import Cell, Config, Root  # noqa: E402
from lazarus_bus import events as ev  # noqa: E402
from lazarus_bus.config import RetentionConfig  # noqa: E402
from lazarus_bus.replay import replay_log  # noqa: E402
from lazarus_bus.retention import prune  # noqa: E402

EVENTS = int(os.environ.get("BENCH_EVENTS", "1000000"))
TAIL = 10_000  # events appended after the daemon's snapshot: what its second start folds
HEAVY = int(os.environ.get("BENCH_HEAVY", "200000"))  # heartbeats into the retained cell
AGENTS = 5
ENV = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}


def fill(cell: Cell, n: int) -> None:
    """Heartbeats mostly, other kinds mixed in, a thousand per append_many."""
    done = cell.head().seq
    while done < n:
        batch: list[ev.Event] = []
        for i in range(min(1000, n - done)):
            who = f"a{i % AGENTS}"
            if i % 100 == 0:
                batch.append(ev.BusMessage(by=who, topic="progress", payload={"i": i}))
            else:
                batch.append(ev.AgentHeartbeat(by=who, agent=who, cycle=done + i, status="thinking"))
        done = cell.log.append_many(batch)[-1].seq


def new_cell(root: Root, name: str) -> Cell:
    cell = root.create(name)
    cell.append_many([ev.AgentInvited(by="operator", agent=f"a{i}", role="write") for i in range(AGENTS)])
    return cell


def timed(argv: list[str], env: dict[str, str]) -> float:
    t0 = time.perf_counter()
    subprocess.run(argv, env=env, check=True, stdout=subprocess.DEVNULL)
    return time.perf_counter() - t0


def daemon_start(root: Path, cell: Cell, env: dict[str, str]) -> float:
    """Seconds from `lazarus up` to its status showing the cell folded to its head."""
    status = root / ".lazarus" / "daemon.json"
    status.unlink(missing_ok=True)
    head = cell.head().seq
    t0 = time.perf_counter()
    d = subprocess.Popen([sys.executable, "-m", "lazarus_bus", "up", "--no-http"], env=env, start_new_session=True,
                         stderr=subprocess.DEVNULL)
    try:
        while True:
            try:
                info = json.loads(status.read_bytes())
            except (OSError, ValueError):
                info = {}
            if info.get("running") and info.get("cells", {}).get(cell.id, {}).get("seq", 0) >= head:
                return time.perf_counter() - t0
            if d.poll() is not None:
                raise SystemExit("the daemon exited")
            time.sleep(0.01)
    finally:
        os.killpg(d.pid, signal.SIGTERM)
        d.wait(60)


def disk_bytes(cell: Cell) -> int:
    logs = cell.dir / "logs"
    return sum(p.stat().st_size for p in [logs / "events.jsonl", *(logs / "segments").glob("*")] if p.exists())


def main() -> None:
    with tempfile.TemporaryDirectory(dir=os.environ.get("BENCH_DIR")) as d:
        path = Path(d) / "root"
        path.mkdir()
        (path / "lazarus.toml").write_text('fsync = "never"\n[daemon]\ntick = 1.0\n[resurrection]\nmode = "no"\n')
        env = {**ENV, "LAZARUS_ROOT": str(path)}
        root = Root(path, Config(fsync="never"))
        t0 = time.perf_counter()
        seg = new_cell(root, "segmented")
        fill(seg, EVENTS)
        built = time.perf_counter() - t0
        sealed = len(seg.log.sealed())  # type: ignore[attr-defined]
        one = new_cell(Root(path, Config(fsync="never", segment_bytes=1 << 50)), "onefile")
        fill(one, EVENTS)
        across = rate(EVENTS, lambda: replay_log(root.store.open_log(seg.id)) and None)
        single = rate(EVENTS, lambda: replay_log(root.store.open_log(one.id)) and None)
        for c in root.cells():
            c.close()
        shutil_rm = one.dir
        subprocess.run(["rm", "-rf", str(shutil_rm)], check=True)  # the daemon below watches the big one alone
        first_start = daemon_start(path, seg, env)  # folds everything, leaves a snapshot at its stop
        fill(seg, seg.head().seq + TAIL)
        second_start = daemon_start(path, seg, env)  # the snapshot plus the tail
        bare = statistics.median(timed([sys.executable, "-c", "pass"], env) for _ in range(5))
        tails = statistics.median(timed([sys.executable, "-m", "lazarus_bus", "tail", "segmented", "-n", "10"], env)
                                  for _ in range(5))
        heavy_root = Root(path, Config(fsync="never", segment_bytes=1 << 20))
        heavy = heavy_root.create("heavy")
        heavy.append(ev.AgentInvited(by="operator", agent="a0", role="write"))
        sent = 0
        policy = RetentionConfig(keep_segments=2)
        for k in range(HEAVY // 1000):
            written = heavy.append_many([ev.AgentHeartbeat(by="a0", agent="a0", cycle=k) for _ in range(1000)])
            sent += sum(len(ev.encode_event(a.event)) + 1 for a in written)
            if k % 20 == 19:
                prune(heavy, policy)
        on_disk = disk_bytes(heavy)
    report("longlived", {
        "events": EVENTS, "sealed_segments": sealed, "build_s": round(built, 1),
        "replay_across_segments_per_s": round(across), "replay_one_file_per_s": round(single),
        "replay_ratio_segments_to_one_file": round(across / single, 3),
        "daemon_first_start_s": round(first_start, 2),
        "daemon_start_snapshot_plus_tail_s": round(second_start, 3), "tail_events": TAIL,
        "fresh_tail_n10_s": round(tails, 3), "bare_interpreter_s": round(bare, 3),
        "heavy_heartbeats": HEAVY, "heavy_bytes_sent": sent, "heavy_bytes_on_disk": on_disk,
        "heavy_disk_over_sent": round(on_disk / sent, 3),
        "targets": {"daemon_start_snapshot_plus_tail_s": 2.0, "fresh_tail_n10_s": 0.3,
                    "replay_ratio_segments_to_one_file": 0.9},
    }, {"segment_bytes": Config().segment_bytes, "fsync": "never", "heavy_segment_bytes": 1 << 20,
        "heavy_retention": "keep_segments = 2, pruned every 20,000 heartbeats"})


if __name__ == "__main__":
    main()
