"""A fresh `lazarus tail CELL -n 10` on a long cell: NATS beside the file backend, in one run.

Each figure is a whole new process (interpreter, config, cell lookup, the read), as an auditor runs it.
On NATS the read starts at the stream sequence found by a binary search of direct gets, so its cost is
about log2 of the stream's length in round trips, not the length of the log."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from bench_nats import start_server  # noqa: E402
from common import median_of, report  # noqa: E402

from lazarus_bus import Root, load_config  # noqa: E402
from lazarus_bus import events as ev  # noqa: E402

EVENTS = int(os.environ.get("BENCH_TAIL_EVENTS", "100000"))
LAZARUS = str(Path(sys.executable).with_name("lazarus"))


def fill(root: Path, toml: str) -> None:
    root.mkdir()
    (root / "lazarus.toml").write_text(toml)
    subprocess.run([LAZARUS, "--root", str(root), "cell", "create", "long"], check=True, stdout=subprocess.DEVNULL)
    cell = Root(root, load_config(root / "lazarus.toml")).open("long")
    while (left := EVENTS - cell.log.head().seq) > 0:
        cell.log.append_many([ev.BusMessage(by="operator", topic="t", payload=i) for i in range(min(1000, left))])


def fresh_tail(root: Path) -> float:
    t0 = time.perf_counter()
    out = subprocess.run([LAZARUS, "--root", str(root), "tail", "long", "-n", "10"], check=True,
                         capture_output=True).stdout
    took = time.perf_counter() - t0
    assert out.count(b"\n") == 10, out
    return took


def main() -> None:
    with tempfile.TemporaryDirectory(dir=os.environ.get("BENCH_DIR")) as d:
        tmp = Path(d)
        server, url = start_server(tmp / "store")
        try:
            fill(tmp / "file", 'fsync = "never"\n')
            fill(tmp / "nats", f'fsync = "never"\nbackend = "nats"\nnats_url = "{url}"\nnats_stream = "TAIL"\n')
            bare = median_of(lambda: _timed([sys.executable, "-c", "pass"]))
            figures = {"file_s": round(median_of(lambda: fresh_tail(tmp / "file")), 3),
                       "nats_s": round(median_of(lambda: fresh_tail(tmp / "nats")), 3),
                       "bare_python_s": round(bare, 3)}
            figures["nats_vs_file"] = round(figures["nats_s"] / figures["file_s"], 2)
        finally:
            os.killpg(server.pid, 9)
            server.wait()
            shutil.rmtree(tmp, ignore_errors=True)
    report("tail", figures, {"events": EVENTS, "last": 10, "server": "nats-server on loopback, R1, file storage"},
           "nats-py")


def _timed(argv: list[str]) -> float:
    t0 = time.perf_counter()
    subprocess.run(argv, check=True)
    return time.perf_counter() - t0


if __name__ == "__main__":
    main()
