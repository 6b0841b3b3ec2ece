"""What one CLI call costs: `lazarus heartbeat` and `emit` against a bare `python -c pass` started the
same way in the same run (pairs A B A B, the ratio pair by pair), and `lazarus status` on 100 cells.

It measures the `lazarus` installed beside the interpreter that runs it: with an editable install (`make`,
CI) every interpreter start, the bare one too, also imports setuptools' editable finder; run it with the
interpreter of a `pip install .` to see the other kind (`config.install` says which it was)."""

from __future__ import annotations

import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from importlib.metadata import distribution
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from common import report  # noqa: E402

from lazarus_bus import Root, parse_draft, resolve  # noqa: E402
from lazarus_bus.snapshot import save_snapshot  # noqa: E402

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
    """`python -X importtime`'s cumulative figure for `lazarus_bus.cli` (what every command but these two imports)."""
    r = subprocess.run([sys.executable, "-X", "importtime", "-c", "import lazarus_bus.cli"], env=env,
                       capture_output=True, text=True, check=True)
    line = next(x for x in r.stderr.splitlines() if x.rstrip().endswith("| lazarus_bus.cli"))
    return int(line.split("|")[1]) / 1000


def imports_of(argv: list[str], env: dict[str, str]) -> tuple[float, int]:
    """Milliseconds `python -X importtime` counts in all of a run's imports (the sum of their own times),
    and how many modules it imported."""
    r = subprocess.run([sys.executable, "-X", "importtime", *argv], env=env, capture_output=True, text=True,
                       check=True)
    own = [int(x.split("|")[0].split(":")[1]) for x in r.stderr.splitlines() if x.startswith("import time:")
           and "self [us]" not in x]
    return sum(own) / 1000, len(own)


def install_kind() -> str:
    """"editable" (pip install -e: a finder in site-packages that every interpreter start imports) or "regular"."""
    direct = distribution("lazarus-pit").read_text("direct_url.json")
    return "editable" if direct and json.loads(direct).get("dir_info", {}).get("editable") else "regular"


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
        snapped = r.open("c2")  # as a daemon leaves a cell: a snapshot of its projection beside the log
        save_snapshot(snapped.state_dir, snapped.refresh())
        lazarus = str(BIN / "lazarus")
        heartbeat = paired([lazarus, "heartbeat", "c0", "ada", "--cycle", "2"], env)
        heartbeat_snapshot = paired([lazarus, "heartbeat", "c2", "ada", "--cycle", "2"], env)
        emit = paired([lazarus, "emit", "c1", "bus.message", "--by", "operator", "--data", '{"topic": "t"}'], env)
        status = paired([lazarus, "status"], env)
        imports = statistics.median(import_ms(env) for _ in range(5))
        beat = [imports_of([lazarus, "heartbeat", "c0", "ada"], env) for _ in range(5)]
        bare = [imports_of(["-c", "pass"], env) for _ in range(5)]
    report("cli", {
        "heartbeat": heartbeat,
        "heartbeat_cell_with_snapshot": heartbeat_snapshot,
        "emit": emit,
        f"status_{CELLS}_cells": status,
        "import_lazarus_bus_cli_ms": round(imports, 1),
        "heartbeat_imports": {"ms": round(statistics.median(x[0] for x in beat), 1), "modules": beat[0][1],
                              "bare_ms": round(statistics.median(x[0] for x in bare), 1), "bare_modules": bare[0][1]},
        "targets": {"heartbeat_ratio": 3.0, "emit_ratio": 3.0, "status_wall_ms": 500},
    }, {"pairs": PAIRS, "cells": CELLS, "fsync": "always (default)", "bytecode": "cached", "install": install_kind(),
        "load_average": [round(x, 2) for x in os.getloadavg()]})


if __name__ == "__main__":
    main()
