"""What one CLI call costs: `lazarus heartbeat` and `emit` against a bare `python -c pass` started the
same way in the same run (pairs A B A B, the ratio pair by pair), and `lazarus status` on 100 cells."""

from __future__ import annotations

import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from common import report  # noqa: E402

from lazarus_bus import Root, parse_draft, resolve  # noqa: E402

PAIRS = int(os.environ.get("BENCH_PAIRS", "15"))
CELLS = int(os.environ.get("BENCH_CELLS", "100"))
BIN = Path(sys.executable).parent
# what a user has: bytecode cached next to the sources (the test harness may turn that off)
ENV = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}


def run(argv: list[str], env: dict[str, str]) -> tuple[float, float]:
    """Wall and CPU seconds (user + sys, from the kernel's accounting of the child) of one run."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    r = subprocess.run(argv, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    wall = time.perf_counter() - t0
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if r.returncode != 0:
        raise SystemExit(f"{argv}: exit {r.returncode}: {r.stderr.decode()}")
    return wall, (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


def paired(argv: list[str], env: dict[str, str]) -> dict[str, float]:
    """`argv` against a bare interpreter, A B A B, medians of each and of the pair-by-pair ratios."""
    bare = [sys.executable, "-c", "pass"]
    run(argv, env), run(bare, env)  # warm-up: bytecode written, page cache filled
    a, b = [], []
    for _ in range(PAIRS):
        a.append(run(argv, env))
        b.append(run(bare, env))
    return {
        "wall_ms": round(statistics.median(x[0] for x in a) * 1000, 1),
        "cpu_ms": round(statistics.median(x[1] for x in a) * 1000, 1),
        "bare_wall_ms": round(statistics.median(x[0] for x in b) * 1000, 1),
        "bare_cpu_ms": round(statistics.median(x[1] for x in b) * 1000, 1),
        "ratio_wall": round(statistics.median(x[0] / y[0] for x, y in zip(a, b)), 2),
        "ratio_cpu": round(statistics.median(x[1] / max(y[1], 1e-3) for x, y in zip(a, b)), 2),
    }


def import_ms(env: dict[str, str]) -> float:
    """`python -X importtime`'s cumulative figure for `lazarus_bus.cli` (what the entry point imports)."""
    r = subprocess.run([sys.executable, "-X", "importtime", "-c", "import lazarus_bus.cli"], env=env,
                       capture_output=True, text=True, check=True)
    line = next(x for x in r.stderr.splitlines() if x.rstrip().endswith("| lazarus_bus.cli"))
    return int(line.split("|")[1]) / 1000


def main() -> None:
    with tempfile.TemporaryDirectory(prefix="bench-cli-") as tmp:
        root = Path(tmp) / "root"
        env = {**ENV, "LAZARUS_ROOT": str(root)}
        path, config = resolve(str(root), None)
        r = Root(path, config)
        r.init()
        for i in range(CELLS):
            c = r.create(f"c{i}")
            c.append(parse_draft({"type": "agent.invited", "by": "operator", "agent": "ada", "role": "write"}))
            c.append(parse_draft({"type": "agent.heartbeat", "by": "ada", "agent": "ada", "cycle": 1}))
        lazarus = str(BIN / "lazarus")
        heartbeat = paired([lazarus, "heartbeat", "c0", "ada", "--cycle", "2"], env)
        emit = paired([lazarus, "emit", "c1", "bus.message", "--by", "operator", "--data", '{"topic": "t"}'], env)
        status = paired([lazarus, "status"], env)
        imports = statistics.median(import_ms(env) for _ in range(5))
    report("cli", {
        "heartbeat": heartbeat,
        "emit": emit,
        f"status_{CELLS}_cells": status,
        "import_lazarus_bus_cli_ms": round(imports, 1),
        "targets": {"heartbeat_ratio": 3.0, "emit_ratio": 3.0, "status_wall_ms": 500},
    }, {"pairs": PAIRS, "cells": CELLS, "fsync": "always (default)", "bytecode": "cached"})


if __name__ == "__main__":
    main()
