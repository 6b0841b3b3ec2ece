"""Single appends with fsync "never" (CPU time), this tree against an older one, run by run beside it:
a regression shows as a ratio under 1. The older tree: `git archive <commit> lazarus_bus | tar -x -C DIR`,
then `BENCH_OLD=DIR python bench/bench_versions.py` (BENCH_PAIRS, BENCH_SINGLE)."""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from common import report  # noqa: E402

HERE = Path(__file__).resolve().parents[1]
PAIRS = int(os.environ.get("BENCH_PAIRS", "5"))
SINGLE = int(os.environ.get("BENCH_SINGLE", "20000"))

# one process per run: the tree under test is the first `lazarus_bus` on sys.path
LOOP = r"""
import json, sys, tempfile, time
from pathlib import Path
import lazarus_bus
from lazarus_bus import FileLog, events as ev
d = ev.AgentHeartbeat(by="ada", agent="ada", cycle=7, pid=4242, status="thinking about the next step")
n = int(sys.argv[1])
rates = []
with tempfile.TemporaryDirectory() as t:
    for k in range(5):
        log = FileLog(Path(t) / f"{k}.jsonl", "bench", fsync="never", create=True)
        c0 = time.process_time()
        for _ in range(n):
            log.append(d)
        rates.append(n / (time.process_time() - c0))
        log.close()
print(json.dumps({"tree": lazarus_bus.__file__, "per_s": sorted(rates)[2]}))
"""


def run(tree: Path) -> float:
    env = {**os.environ, "PYTHONPATH": str(tree)}
    out = subprocess.run([sys.executable, "-c", LOOP, str(SINGLE)], env=env, cwd="/", capture_output=True,
                         text=True, check=True).stdout
    got = json.loads(out)
    assert got["tree"].startswith(str(tree)), got  # not another copy found first
    return float(got["per_s"])


def main() -> None:
    old = os.environ.get("BENCH_OLD")
    if not old:
        raise SystemExit("BENCH_OLD=DIR: a directory holding the older lazarus_bus (see the docstring)")
    pairs = [(run(Path(old).resolve()), run(HERE)) for _ in range(PAIRS)]
    report("versions", {
        "single_never_per_s_old": [round(o) for o, _ in pairs], "single_never_per_s_now": [round(n) for _, n in pairs],
        "now_vs_old": round(statistics.median(n / o for o, n in pairs), 3), "load_average": os.getloadavg()[0],
    }, {"pairs": PAIRS, "single": SINGLE, "old": old, "measure": "CPU time, median of 5 runs a process"})


if __name__ == "__main__":
    main()
