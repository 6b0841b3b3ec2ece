"""Shared by the benchmarks: medians, the machine, the versions, and one JSON object out."""

from __future__ import annotations

import json
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

RESULTS = Path(__file__).parent / "results"
RUNS = int(os.environ.get("BENCH_RUNS", "5"))


def median_of(fn: Callable[[], float], runs: int = RUNS) -> float:
    """The median of several runs: these machines are shared and noisy."""
    return statistics.median(fn() for _ in range(runs))


def rate(count: int, fn: Callable[[], None]) -> float:
    """Operations per second of one run of `fn`, which does `count` operations."""
    t0 = time.perf_counter()
    fn()
    return count / (time.perf_counter() - t0)


def percentile(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(p / 100 * (len(ordered) - 1))))]


def wait_for(check: Callable[[], int | None], timeout: float = 60.0, poll: float = 0.0005) -> int:
    """Poll until `check` gives a pid (a revival is timed by this loop, so it polls fast)."""
    deadline = time.monotonic() + timeout
    while True:
        got = check()
        if got:
            return got
        if time.monotonic() > deadline:
            raise TimeoutError("no new process")
        time.sleep(poll)


def versions(*names: str) -> dict[str, str]:
    out = {"python": platform.python_version()}
    for name in ("lazarus-pit", "msgspec", "watchfiles", *names):
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            out[name] = "not installed"
    return out


def report(name: str, figures: dict[str, Any], config: dict[str, Any], *extra_versions: str) -> None:
    """Print one JSON object and keep it in bench/results/<name>.json."""
    body = {"bench": name, "figures": figures, "config": config, "cores": os.cpu_count(),
            "machine": platform.machine(), "versions": versions(*extra_versions),
            "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    RESULTS.mkdir(parents=True, exist_ok=True)
    text = json.dumps(body, indent=2)
    (RESULTS / f"{name}.json").write_text(text + "\n")
    print(text)
    sys.stdout.flush()
