"""The NATS backend beside the file backend: appends and replay through a local nats-server."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from common import median_of, rate, report  # noqa: E402

from lazarus_bus import FileLog  # noqa: E402
from lazarus_bus import events as ev  # noqa: E402
from lazarus_bus.log.nats import Nats, NatsLog  # noqa: E402

SINGLE = int(os.environ.get("BENCH_SINGLE", "2000"))
MANY = int(os.environ.get("BENCH_MANY", "20000"))


def draft() -> ev.Event:
    return ev.AgentHeartbeat(by="ada", agent="ada", cycle=7, pid=4242, status="thinking about the next step")


def start_server(store: Path) -> tuple[subprocess.Popen[bytes], str]:
    exe = shutil.which("nats-server") or "/usr/sbin/nats-server"
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen([exe, "-js", "-sd", str(store), "-a", "127.0.0.1", "-p", str(port)],
                            start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return proc, f"nats://127.0.0.1:{port}"
        except OSError:
            time.sleep(0.02)


def main() -> None:
    with tempfile.TemporaryDirectory(dir=os.environ.get("BENCH_DIR")) as d:
        tmp = Path(d)
        server, url = start_server(tmp / "store")
        try:
            conn = Nats.get(url, "BENCH")
            n = iter(range(10**6))
            logs = {
                "file": lambda: FileLog(tmp / f"f{next(n)}.jsonl", "bench", fsync="never", create=True),
                "nats": lambda: NatsLog(conn, f"bench{next(n)}"),
            }
            figures: dict[str, object] = {}
            for name, make in logs.items():
                single = median_of(lambda: (lambda log: rate(SINGLE, lambda: [log.append(draft())
                                                                              for _ in range(SINGLE)] and None))(make()), 3)
                big = make()
                batched = median_of(lambda: rate(1000, lambda: big.append_many([draft() for _ in range(1000)]) and None), 3)
                for _ in range(MANY // 1000):
                    big.append_many([draft() for _ in range(1000)])
                total = big.head().seq
                replay = median_of(lambda: rate(total, lambda: sum(1 for _ in big.read()) and None), 3)
                figures[name] = {"single_append_per_s": round(single), "append_many_per_s": round(batched),
                                 "read_verified_per_s": round(replay), "events_read": total}
            figures["nats_vs_file"] = {k: round(figures["nats"][k] / figures["file"][k], 3)  # type: ignore[index]
                                       for k in ("single_append_per_s", "append_many_per_s", "read_verified_per_s")}
        finally:
            conn.close()
            os.killpg(server.pid, signal.SIGKILL)
            server.wait()
    report("nats", figures, {"single": SINGLE, "many": MANY, "file_fsync": "never", "nats_storage": "file",
                             "server": "nats-server on loopback"}, "nats-py")


if __name__ == "__main__":
    main()
