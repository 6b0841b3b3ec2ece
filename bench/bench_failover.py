"""A leader machine's crash on NATS: how long until another machine leads the cell and its agent runs again.

Two daemons ("alpha" and "beta", two roots on one NATS server) share one cell whose agent is the
example keeper heartbeating every 0.3 s (the runbook's advice: a leader on another machine judges an
agent by its heartbeats). Each trial SIGKILLs alpha's daemon and its agent together (a machine that
died) and times, from the kill: beta taking the lease (its `leader.elected`), and the agent running
again on beta. Beta starts nothing before `nats_lease + fence_after + grace` from alpha's last renewal
(the takeover hold) nor before the agent's heartbeats are `dead_after` old."""

from __future__ import annotations

import contextlib
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
from bench_nats import start_server  # noqa: E402
from common import report  # noqa: E402

from lazarus_bus.demo import EXAMPLES  # noqa: E402

TRIALS = int(os.environ.get("BENCH_TRIALS", "5"))
LEASE, FENCE, GRACE, DEAD = 3.0, 2.0, 0.5, 3.0
LZ = [sys.executable, "-m", "lazarus_bus"]


def config(url: str, stream: str) -> str:
    return (f'fsync = "never"\nbackend = "nats"\nnats_url = "{url}"\nnats_stream = "{stream}"\n'
            f'nats_lease = {LEASE}\n[daemon]\ntick = 0.1\ngrace = {GRACE}\nfence_after = {FENCE}\n'
            f'[health]\nstale_after = {DEAD / 2}\ndead_after = {DEAD}\n[resurrection]\nmode = "yes"\n')


def leading(root: Path, cell: str) -> bool:
    try:
        return cell in (json.loads((root / ".lazarus" / "daemon.json").read_bytes()).get("leading") or [])
    except (OSError, ValueError):
        return False


def until(check: object, timeout: float = 120.0) -> float:
    deadline = time.monotonic() + timeout
    while not check():  # type: ignore[operator]
        if time.monotonic() > deadline:
            raise TimeoutError("no takeover")
        time.sleep(0.005)
    return time.monotonic()


def trial(tmp: Path, url: str, n: int) -> tuple[float, float]:
    roots = {h: tmp / f"t{n}-{h}" for h in ("alpha", "beta")}
    for r in roots.values():
        r.mkdir()
        (r / "lazarus.toml").write_text(config(url, "FAILOVER"))  # one stream per account
    env = lambda h: {**os.environ, "LAZARUS_ROOT": str(roots[h])}  # noqa: E731
    cell = subprocess.run([*LZ, "cell", "create", f"c{n}"], env=env("alpha"), check=True, capture_output=True,
                          text=True).stdout.strip()
    subprocess.run([*LZ, "agent", "invite", f"c{n}", "w", "--role", "write", "--heartbeat-interval", "0.3",
                    "--cmd", f"{sys.executable} {EXAMPLES / 'keeper.py'}"], env=env("alpha"), check=True,
                   capture_output=True)
    up = lambda h: subprocess.Popen([*LZ, "up", "--no-http", "--host", h], env=env(h),  # noqa: E731
                                    start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    daemons = {"alpha": up("alpha")}
    try:
        until(lambda: leading(roots["alpha"], cell))
        until(lambda: (roots["alpha"] / cell / "state" / "agents" / "w.json").exists())
        agent = json.loads((roots["alpha"] / cell / "state" / "agents" / "w.json").read_bytes())["pid"]
        daemons["beta"] = up("beta")  # a standby: it watches the cell, alpha holds the lease
        until(lambda: (roots["beta"] / ".lazarus" / "daemon.json").exists() and
              json.loads((roots["beta"] / ".lazarus" / "daemon.json").read_bytes()).get("running"))
        t0 = time.monotonic()
        os.killpg(daemons["alpha"].pid, signal.SIGKILL)  # the machine dies: its daemon and its agent
        os.killpg(agent, signal.SIGKILL)
        took_lease = until(lambda: leading(roots["beta"], cell)) - t0
        beta_state = roots["beta"] / cell / "state" / "agents" / "w.json"
        running = until(lambda: beta_state.exists()) - t0
        return took_lease, running
    finally:
        for d in daemons.values():
            with contextlib.suppress(ProcessLookupError):
                os.killpg(d.pid, signal.SIGKILL)
        for r in roots.values():
            for rec in r.glob("*/state/agents/*.json"):
                with contextlib.suppress(OSError, ValueError, ProcessLookupError):
                    os.killpg(json.loads(rec.read_bytes())["pid"], signal.SIGKILL)


def main() -> None:
    with tempfile.TemporaryDirectory(dir=os.environ.get("BENCH_DIR")) as d:
        tmp = Path(d)
        server, url = start_server(tmp / "store")
        try:
            results = [trial(tmp, url, n) for n in range(TRIALS)]
        finally:
            os.killpg(server.pid, signal.SIGKILL)
            server.wait()
    lease = [r[0] for r in results]
    revived = [r[1] for r in results]
    report("failover", {
        "lease_taken_median_s": round(statistics.median(lease), 2), "lease_taken_max_s": round(max(lease), 2),
        "agent_running_median_s": round(statistics.median(revived), 2),
        "agent_running_max_s": round(max(revived), 2), "trials": TRIALS, "all_revived": len(results) == TRIALS,
        "design_hold_s": LEASE + FENCE + GRACE,
    }, {"nats_lease": LEASE, "fence_after": FENCE, "grace": GRACE, "dead_after": DEAD,
        "server": "nats-server on loopback, R1", "agent": "examples/keeper.py, heartbeat every 0.3 s",
        "kill": "SIGKILL of the leader daemon and its agent together"}, "nats-py")


if __name__ == "__main__":
    main()
