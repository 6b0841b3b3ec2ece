"""HTTP heartbeats through the gateway, driven by wrk (C, a few percent of a core: the load generator no
longer eats half the machine); requests per second, p50 and p99, errors, and the daemon's CPU a request.

In one run, each driven by the same wrk with the same connections for the same time:
- a bare aiohttp server answering the same route with a fixed 201 (the raw limit of aiohttp here);
- the daemon with fsync "never" and N connections, as a ratio to the bare server;
- the daemon with fsync "always" and one connection (the single-append durable rate);
- the daemon with fsync "always" and N connections (group commit), as a ratio to the one connection;
every event answered 201 is counted in the log afterwards, with how many writes the heartbeats took
(`heartbeats_per_write`: the events of one write share a timestamp).

Needs wrk: `apt-get install -y wrk` (Debian's package). BENCH_CLIENTS (64), BENCH_SECONDS (5),
BENCH_WRK_THREADS (1)."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).parent))
from common import report  # noqa: E402

CLIENTS = int(os.environ.get("BENCH_CLIENTS", "64"))
SECONDS = float(os.environ.get("BENCH_SECONDS", "5"))
WRK_THREADS = int(os.environ.get("BENCH_WRK_THREADS", "1"))
TICK = os.sysconf("SC_CLK_TCK")

# each request a heartbeat of the next agent in turn; `done` prints one JSON line
LUA = r"""
local agents = tonumber(os.getenv("BENCH_AGENTS"))
local n = 0
request = function()
  n = n + 1
  return wrk.format("POST", "/cells/bench/agents/a" .. (n % agents) .. "/heartbeat",
                    {["Content-Type"] = "application/json"}, '{"cycle": ' .. n .. '}')
end
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format('\nJSON {"requests": %d, "duration_us": %d, "status_errors": %d, "socket_errors": %d, '
    .. '"p50_us": %d, "p99_us": %d, "max_us": %d}\n', summary.requests, summary.duration, e.status,
    e.connect + e.read + e.write + e.timeout, latency:percentile(50), latency:percentile(99), latency.max))
end
"""

# the raw limit: aiohttp answering the same route, reading the body, with a fixed 201 and a body like ours
BARE = r"""
import socket, sys
from aiohttp import web
BODY = b'{"seq":1,"id":"01JDZ7AE8R6W0Y8M3F3K9Q4B2C","type":"agent.heartbeat","duplicate":false}'
async def beat(request):
    await request.read()
    return web.Response(body=BODY, status=201, content_type="application/json")
app = web.Application()
app.router.add_post("/cells/{cell}/agents/{agent}/heartbeat", beat)
sock = socket.socket()
sock.bind(("127.0.0.1", 0))
print(sock.getsockname()[1], flush=True)
web.run_app(app, sock=sock, access_log=None, print=None, handle_signals=True)
"""


def cpu_seconds(pid: int) -> float:
    """utime + stime of a process (and its threads) so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICK


def wrk(base: str, connections: int, seconds: float, script: Path) -> dict[str, Any]:
    argv = ["wrk", "-t", str(min(WRK_THREADS, connections)), "-c", str(connections), "-d", f"{seconds:g}s",
            "--timeout", "10s", "-s", str(script), base]
    out = subprocess.run(argv, env={**os.environ, "BENCH_AGENTS": str(CLIENTS)}, capture_output=True, text=True,
                         check=True).stdout
    return json.loads(out.rsplit("JSON ", 1)[1])


def drive(base: str, pid: int, connections: int, script: Path) -> dict[str, Any]:
    """A one-second warm-up, then the measured run with the server's CPU time beside it."""
    warm = wrk(base, connections, 1, script)
    cpu0, t0 = cpu_seconds(pid), time.perf_counter()
    got = wrk(base, connections, SECONDS, script)
    cpu, wall = cpu_seconds(pid) - cpu0, time.perf_counter() - t0
    n = got["requests"]
    return {"connections": connections, "requests": n, "errors": got["status_errors"] + got["socket_errors"],
            "requests_per_s": round(n / (got["duration_us"] / 1e6)), "p50_ms": round(got["p50_us"] / 1000, 2),
            "p99_ms": round(got["p99_us"] / 1000, 2), "max_ms": round(got["max_us"] / 1000, 2),
            "server_cpu_us_per_request": round(cpu / max(1, n) * 1e6, 1),
            "server_cores": round(cpu / wall, 2), "load_average": os.getloadavg()[0],
            "answered_2xx": n - got["status_errors"] + warm["requests"] - warm["status_errors"]}


def bare(script: Path) -> dict[str, Any]:
    server = subprocess.Popen([sys.executable, "-c", BARE], stdout=subprocess.PIPE, text=True, start_new_session=True)
    try:
        assert server.stdout is not None
        port = int(server.stdout.readline())
        return drive(f"http://127.0.0.1:{port}", server.pid, CLIENTS, script)
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        server.wait(10)


def phase(fsync: str, connections: int, script: Path) -> dict[str, Any]:
    """One daemon with this fsync setting, driven by `connections` keep-alive connections."""
    with tempfile.TemporaryDirectory(dir=os.environ.get("BENCH_DIR")) as d:
        root = Path(d)
        (root / "lazarus.toml").write_text(f'fsync = "{fsync}"\n')
        env = {**os.environ, "LAZARUS_ROOT": str(root)}
        lz = [sys.executable, "-m", "lazarus_bus"]
        subprocess.run([*lz, "cell", "create", "bench"], env=env, check=True, capture_output=True)
        for i in range(CLIENTS):
            subprocess.run([*lz, "agent", "invite", "bench", f"a{i}", "--role", "write"], env=env, check=True,
                           capture_output=True)
        daemon = subprocess.Popen([*lz, "up", "--http", "127.0.0.1:0"], env=env, start_new_session=True,
                                  stderr=subprocess.DEVNULL)
        status = root / ".lazarus" / "daemon.json"
        try:
            deadline = time.monotonic() + 60
            while not (status.exists() and json.loads(status.read_bytes()).get("http")):
                if daemon.poll() is not None or time.monotonic() > deadline:
                    raise SystemExit(f"the daemon did not start (exit {daemon.poll()})")
                time.sleep(0.05)
            base = "http://" + json.loads(status.read_bytes())["http"]
            before = _heartbeats(root)
            out = drive(base, daemon.pid, connections, script)
        finally:
            os.killpg(daemon.pid, signal.SIGTERM)
            daemon.wait(30)
        # warm-up and measured run: every 201 is a heartbeat in the log (and a few whose answer wrk
        # stopped waiting for at the end)
        beats, stamps = _heartbeats(root)
        out["heartbeats_in_log"] = beats - before[0]
        out["heartbeats_per_write"] = round((beats - before[0]) / max(1, stamps - before[1]), 2)
    return {"fsync": fsync, **out}


def _heartbeats(root: Path) -> tuple[int, int]:
    """The heartbeats in the log, and how many writes they took (the events of one write share a ts)."""
    log = next(root.glob("*/logs/events.jsonl"))
    beats = [json.loads(line) for line in log.read_bytes().splitlines() if b'"agent.heartbeat"' in line]
    return len(beats), len({b["ts"] for b in beats})


def main() -> None:
    if shutil.which("wrk") is None:
        raise SystemExit("bench_http needs wrk: apt-get install -y wrk")
    with tempfile.TemporaryDirectory() as d:
        script = Path(d) / "heartbeat.lua"
        script.write_text(LUA)
        raw = bare(script)
        fast = phase("never", CLIENTS, script)
        solo = phase("always", 1, script)
        grouped = phase("always", CLIENTS, script)
    report("http", {
        "bare_aiohttp": raw, "never": fast, "always_one_client": solo, "always_grouped": grouped,
        "never_vs_bare": round(fast["requests_per_s"] / raw["requests_per_s"], 3),
        "group_commit_ratio": round(grouped["requests_per_s"] / solo["requests_per_s"], 2),
        "targets": {"never_requests_per_s": 5000, "never_p99_ms": 20, "group_commit_ratio": 5},
    }, {"clients": CLIENTS, "seconds": SECONDS, "wrk_threads": WRK_THREADS, "endpoint": "POST .../heartbeat",
        "client": "wrk (keep-alive connections, one request in flight each) on the same machine"}, "aiohttp")


if __name__ == "__main__":
    main()
