"""HTTP heartbeats: N concurrent clients, a fixed count each; requests per second, p50 and p99, errors."""

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

sys.path.insert(0, str(Path(__file__).parent))
from common import percentile, report  # noqa: E402

import aiohttp  # noqa: E402

CLIENTS = int(os.environ.get("BENCH_CLIENTS", "16"))
EACH = int(os.environ.get("BENCH_EACH", "250"))
FSYNC = os.environ.get("BENCH_FSYNC", "never")


async def client(base: str, agent: str, latencies: list[float], errors: list[str]) -> None:
    async with aiohttp.ClientSession() as s:
        for cycle in range(EACH):
            t0 = time.perf_counter()
            async with s.post(f"{base}/cells/bench/agents/{agent}/heartbeat", json={"cycle": cycle}) as r:
                await r.read()
                if r.status != 201:
                    errors.append(f"{r.status}")
            latencies.append(time.perf_counter() - t0)


async def drive(base: str) -> tuple[float, list[float], list[str]]:
    latencies: list[float] = []
    errors: list[str] = []
    t0 = time.perf_counter()
    await asyncio.gather(*(client(base, f"a{i}", latencies, errors) for i in range(CLIENTS)))
    return time.perf_counter() - t0, latencies, errors


def main() -> None:
    with tempfile.TemporaryDirectory(dir=os.environ.get("BENCH_DIR")) as d:
        root = Path(d)
        (root / "lazarus.toml").write_text(f'fsync = "{FSYNC}"\n')
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
            while not (status.exists() and json.loads(status.read_bytes()).get("http")):
                time.sleep(0.05)
            base = "http://" + json.loads(status.read_bytes())["http"]
            elapsed, lat, errors = asyncio.run(drive(base))
        finally:
            os.killpg(daemon.pid, signal.SIGTERM)
            daemon.wait(10)
    ms = [x * 1000 for x in lat]
    report("http", {"requests": len(ms), "errors": len(errors), "requests_per_s": round(len(ms) / elapsed),
                    "p50_ms": round(percentile(ms, 50), 2), "p99_ms": round(percentile(ms, 99), 2)},
           {"clients": CLIENTS, "each": EACH, "fsync": FSYNC, "endpoint": "POST .../heartbeat"}, "aiohttp")


if __name__ == "__main__":
    main()
