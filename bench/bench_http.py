"""HTTP heartbeats: N concurrent clients, a fixed count each; requests per second, p50 and p99, errors.
Three daemons in one run: fsync "never" with N clients; fsync "always" with one client (the
single-append durable rate); fsync "always" with N clients (group commit), as a ratio to the second."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).parent))
from common import percentile, report  # noqa: E402

import aiohttp  # noqa: E402

CLIENTS = int(os.environ.get("BENCH_CLIENTS", "64"))
EACH = int(os.environ.get("BENCH_EACH", "150"))
SOLO = int(os.environ.get("BENCH_SOLO", "600"))  # the lone durable client's count


async def client(base: str, agent: str, each: int, latencies: list[float], errors: list[str],
                 session: aiohttp.ClientSession) -> None:
    for cycle in range(each):
        t0 = time.perf_counter()
        async with session.post(f"{base}/cells/bench/agents/{agent}/heartbeat", json={"cycle": cycle}) as r:
            await r.read()
            if r.status != 201:
                errors.append(f"{r.status}")
        latencies.append(time.perf_counter() - t0)


async def drive(base: str, clients: int, each: int) -> tuple[float, list[float], list[str]]:
    latencies: list[float] = []
    errors: list[str] = []
    conn = aiohttp.TCPConnector(limit=clients)
    async with aiohttp.ClientSession(connector=conn) as s:
        t0 = time.perf_counter()
        await asyncio.gather(*(client(base, f"a{i}", each, latencies, errors, s) for i in range(clients)))
        return time.perf_counter() - t0, latencies, errors


def phase(fsync: str, clients: int, each: int) -> dict[str, Any]:
    """One daemon with this fsync setting, driven by `clients` concurrent clients."""
    with tempfile.TemporaryDirectory(dir=os.environ.get("BENCH_DIR")) as d:
        root = Path(d)
        (root / "lazarus.toml").write_text(f'fsync = "{fsync}"\n')
        env = {**os.environ, "LAZARUS_ROOT": str(root)}
        lz = [sys.executable, "-m", "lazarus_bus"]
        subprocess.run([*lz, "cell", "create", "bench"], env=env, check=True, capture_output=True)
        for i in range(clients):
            subprocess.run([*lz, "agent", "invite", "bench", f"a{i}", "--role", "write"], env=env, check=True,
                           capture_output=True)
        daemon = subprocess.Popen([*lz, "up", "--http", "127.0.0.1:0"], env=env, start_new_session=True,
                                  stderr=subprocess.DEVNULL)
        status = root / ".lazarus" / "daemon.json"
        try:
            while not (status.exists() and json.loads(status.read_bytes()).get("http")):
                time.sleep(0.05)
            base = "http://" + json.loads(status.read_bytes())["http"]
            elapsed, lat, errors = asyncio.run(drive(base, clients, each))
        finally:
            os.killpg(daemon.pid, signal.SIGTERM)
            daemon.wait(10)
    ms = [x * 1000 for x in lat]
    return {"fsync": fsync, "clients": clients, "requests": len(ms), "errors": len(errors),
            "requests_per_s": round(len(ms) / elapsed), "p50_ms": round(percentile(ms, 50), 2),
            "p99_ms": round(percentile(ms, 99), 2)}


def main() -> None:
    fast = phase("never", CLIENTS, EACH)
    solo = phase("always", 1, SOLO)
    grouped = phase("always", CLIENTS, EACH)
    report("http", {
        "never": fast, "always_one_client": solo, "always_grouped": grouped,
        "group_commit_ratio": round(grouped["requests_per_s"] / solo["requests_per_s"], 2),
        "targets": {"never_requests_per_s": 5000, "never_p99_ms": 20, "group_commit_ratio": 5},
    }, {"clients": CLIENTS, "each": EACH, "solo": SOLO, "endpoint": "POST .../heartbeat",
        "client": "aiohttp in one process on the same machine"}, "aiohttp")


if __name__ == "__main__":
    main()
