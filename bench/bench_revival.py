"""Revival latency: SIGKILL of a supervised agent to its new process running, against supervisord.

Both supervise the same program (`sleep`, with a distinct argument each) in the same run. The new
process counts as running once it has exec'd the program (its /proc cmdline is the program's).
Lazarus runs with mode "yes" and no backoff on a first restart (the attempt window is kept short
enough that every kill is a first restart).
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from common import percentile, report, wait_for  # noqa: E402

KILLS = int(os.environ.get("BENCH_KILLS", "50"))
CONFIG = """
fsync = "always"
[daemon]
tick = 1.0
[resurrection]
mode = "yes"
max_attempts = 1000000
stable_after = 0.05
"""


def cmdline(pid: int) -> bytes:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return b""


def kill_loop(current: Callable[[], int | None], program: bytes) -> list[float]:
    out = []
    pid = wait_for(lambda: (p := current()) and cmdline(p) == program and p, poll=0.0002)
    for _ in range(KILLS):
        time.sleep(0.1)  # the previous run settles (stable_after)
        t0 = time.perf_counter()
        os.kill(pid, signal.SIGKILL)
        new = wait_for(lambda: (p := current()) and p != pid and cmdline(p) == program and p, poll=0.0002)
        out.append(time.perf_counter() - t0)
        pid = new
    return out


def lazarus(tmp: Path) -> list[float]:
    root = tmp / "missions"
    root.mkdir()
    (root / "lazarus.toml").write_text(CONFIG)
    env = {**os.environ, "LAZARUS_ROOT": str(root)}
    lz = [sys.executable, "-m", "lazarus_bus"]
    cell_id = subprocess.run([*lz, "cell", "create", "bench"], env=env, check=True, capture_output=True,
                             text=True).stdout.strip()
    subprocess.run([*lz, "agent", "invite", "bench", "w", "--role", "write", "--cmd", "sleep 31337"], env=env,
                   check=True, capture_output=True)
    daemon = subprocess.Popen([*lz, "up", "--no-http"], env=env, start_new_session=True,
                              stderr=subprocess.DEVNULL)
    state = root / cell_id / "state" / "agents" / "w.json"
    import json

    def current() -> int | None:
        try:
            return int(json.loads(state.read_bytes())["pid"])
        except (OSError, ValueError, KeyError):
            return None

    try:
        return kill_loop(current, b"sleep\x0031337\x00")
    finally:
        os.killpg(daemon.pid, signal.SIGTERM)
        daemon.wait(10)
        pid = current()
        if pid:
            os.killpg(pid, signal.SIGKILL)


def supervisord(tmp: Path) -> list[float] | None:
    exe = shutil.which("supervisord") or str(Path(sys.executable).parent / "supervisord")
    if not Path(exe).exists():
        return None
    conf = tmp / "supervisord.conf"
    conf.write_text(f"""[supervisord]
nodaemon=true
logfile={tmp}/supervisord.log
pidfile={tmp}/supervisord.pid
[program:agent]
command=sleep 31338
autorestart=true
startsecs=0
startretries=1000000
""")
    sup = subprocess.Popen([exe, "-c", str(conf)], start_new_session=True, stdout=subprocess.DEVNULL,
                           stderr=subprocess.DEVNULL)

    def current() -> int | None:
        try:
            kids = Path(f"/proc/{sup.pid}/task/{sup.pid}/children").read_text().split()
        except OSError:
            return None
        return int(kids[0]) if kids else None

    try:
        return kill_loop(current, b"sleep\x0031338\x00")
    finally:
        os.killpg(sup.pid, signal.SIGTERM)
        sup.wait(10)


def main() -> None:
    with tempfile.TemporaryDirectory(dir=os.environ.get("BENCH_DIR")) as d:
        tmp = Path(d)
        ours = [x * 1000 for x in lazarus(tmp)]
        peer = supervisord(tmp)
    peer_ms = [x * 1000 for x in peer] if peer else None
    figures = {"kills": KILLS, "lazarus_p50_ms": round(percentile(ours, 50), 2),
               "lazarus_p99_ms": round(percentile(ours, 99), 2)}
    if peer_ms:
        figures.update({"supervisord_p50_ms": round(percentile(peer_ms, 50), 2),
                        "supervisord_p99_ms": round(percentile(peer_ms, 99), 2),
                        "p50_vs_supervisord": round(percentile(ours, 50) / percentile(peer_ms, 50), 3)})
    figures["targets"] = {"lazarus_p50_ms": 100, "p50_vs_supervisord": "< 1"}
    report("revival", figures, {"mode": "yes", "backoff_on_first_restart": 0, "fsync": "always",
                                "program": "sleep", "peer": "supervisord"}, "supervisor")


if __name__ == "__main__":
    main()
