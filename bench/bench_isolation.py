"""The cost of isolation: revival latency and spawn time at levels 1, 2 (bubblewrap) and 3 (Podman,
where it runs here), in one run under one daemon.

Each level has its own cell and agent running `sleep 3133N`. Revival latency is SIGKILL of the
supervised process (the agent itself at level 1, bwrap or `podman run` above) to the program running
again, seen in /proc by its cmdline. Spawn time is the part of that spent after the start is durable
(the agent's state record names the new pid) until the program runs: the price of the sandbox."""

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
from common import percentile, report, wait_for  # noqa: E402

from lazarus_bus import probe  # noqa: E402

KILLS = int(os.environ.get("BENCH_KILLS", "20"))
CONFIG = """
fsync = "always"
[daemon]
tick = 1.0
grace = 1.0
[resurrection]
mode = "yes"
max_attempts = 1000000
stable_after = 0.05
"""


def running(program: bytes) -> int | None:
    """The pid of a live process whose cmdline is `program`."""
    for entry in os.scandir("/proc"):
        if entry.name.isdigit():
            try:
                if Path(f"/proc/{entry.name}/cmdline").read_bytes() == program:
                    return int(entry.name)
            except OSError:
                continue
    return None


def measure(state: Path, program: bytes) -> tuple[list[float], list[float]]:
    def supervised() -> int | None:
        try:
            return int(json.loads(state.read_bytes())["pid"])
        except (OSError, ValueError, KeyError):
            return None

    revivals, spawns = [], []
    wait_for(lambda: running(program))
    pid = wait_for(supervised)
    for _ in range(KILLS):
        time.sleep(0.1)  # the previous run settles (stable_after)
        old_program = running(program)
        t0 = time.perf_counter()
        os.kill(pid, signal.SIGKILL)
        new = wait_for(lambda: (p := supervised()) and p != pid and p)
        t1 = time.perf_counter()
        wait_for(lambda: (p := running(program)) and p != old_program and p)
        t2 = time.perf_counter()
        revivals.append(t2 - t0)
        spawns.append(t2 - t1)
        pid = new
    return revivals, spawns


def main() -> None:
    levels = [n for n in (1, 2, 3) if probe.level(n).ok]
    figures: dict[str, object] = {"kills": KILLS, "levels": levels}
    with tempfile.TemporaryDirectory(dir=os.environ.get("BENCH_DIR")) as d:
        root = Path(d) / "missions"
        root.mkdir()
        (root / "lazarus.toml").write_text(CONFIG)
        env = {**os.environ, "LAZARUS_ROOT": str(root)}
        lz = [sys.executable, "-m", "lazarus_bus"]
        states = {}
        for n in levels:
            cell_id = subprocess.run([*lz, "cell", "create", f"bench-{n}", "--isolation", str(n)], env=env,
                                     check=True, capture_output=True, text=True).stdout.strip()
            subprocess.run([*lz, "agent", "invite", f"bench-{n}", "w", "--role", "write", "--cmd",
                            f"sleep 3133{n}"], env=env, check=True, capture_output=True)
            states[n] = root / cell_id / "state" / "agents" / "w.json"
        daemon = subprocess.Popen([*lz, "up", "--no-http"], env=env, start_new_session=True,
                                  stderr=subprocess.DEVNULL)
        try:
            for n in levels:
                revivals, spawns = measure(states[n], f"sleep\x003133{n}\x00".encode())
                ms = [x * 1000 for x in revivals]
                sp = [x * 1000 for x in spawns]
                figures[f"level{n}_revival_p50_ms"] = round(percentile(ms, 50), 2)
                figures[f"level{n}_revival_p99_ms"] = round(percentile(ms, 99), 2)
                figures[f"level{n}_spawn_p50_ms"] = round(percentile(sp, 50), 2)
                figures[f"level{n}_spawn_p99_ms"] = round(percentile(sp, 99), 2)
        finally:
            os.killpg(daemon.pid, signal.SIGTERM)
            daemon.wait(30)
            for n in levels:
                subprocess.run([*lz, "cell", "archive", f"bench-{n}"], env=env, capture_output=True)
                try:
                    rec = json.loads(states[n].read_bytes())
                    os.killpg(int(rec["pid"]), signal.SIGKILL)
                except (OSError, ValueError, KeyError):
                    continue
                if rec.get("container"):
                    subprocess.run(["podman", "rm", "--force", "--time", "0", "--ignore", rec["container"]],
                                   capture_output=True)
    for n in (1, 2, 3):
        if n not in levels:
            figures[f"level{n}"] = f"unavailable: {probe.level(n).detail}"
    report("isolation", figures, {"mode": "yes", "fsync": "always", "program": "sleep",
                                  "level3": probe.level(3).detail if 3 in levels else ""})


if __name__ == "__main__":
    main()
