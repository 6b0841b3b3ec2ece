"""Appends per second: single (fsync never, always), append_many batches, against a raw write loop."""

from __future__ import annotations

import os
import statistics
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from common import median_of, rate, report  # noqa: E402

from lazarus_bus import FileLog  # noqa: E402
from lazarus_bus import events as ev  # noqa: E402

SINGLE = int(os.environ.get("BENCH_SINGLE", "20000"))
SYNCED = int(os.environ.get("BENCH_SYNCED", "1000"))
PAIRS = int(os.environ.get("BENCH_PAIRS", "9"))  # fsync timings are the noisiest: more runs
MANY = int(os.environ.get("BENCH_MANY", "200000"))
BATCH = 1000


def draft() -> ev.Event:
    return ev.AgentHeartbeat(by="ada", agent="ada", cycle=7, pid=4242, status="thinking about the next step")


def line_size(tmp: Path) -> int:
    log = FileLog(tmp / "size.jsonl", "bench", fsync="never", create=True)
    log.append(draft())
    log.append(draft())
    size = len((tmp / "size.jsonl").read_bytes().splitlines()[-1]) + 1
    log.close()
    return size


def raw_loop(path: Path, n: int, size: int, sync: bool, dsync: bool = False) -> float:
    """The limit: lines of the same size written (and fsynced, or written O_DSYNC) with nothing else."""
    line = b"x" * (size - 1) + b"\n"

    def go() -> None:
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | (os.O_DSYNC if dsync else 0), 0o644)
        for _ in range(n):
            os.write(fd, line)
            if sync:
                os.fsync(fd)
        os.close(fd)

    path.unlink(missing_ok=True)
    return rate(n, go)


def single(path: Path, n: int, fsync: str) -> float:
    path.unlink(missing_ok=True)
    log = FileLog(path, "bench", fsync=fsync, create=True)  # type: ignore[arg-type]
    d = draft()
    try:
        return rate(n, lambda: [log.append(d) for _ in range(n)] and None)
    finally:
        log.close()


def many(path: Path, n: int) -> float:
    path.unlink(missing_ok=True)
    log = FileLog(path, "bench", fsync="never", create=True)
    batch = [draft() for _ in range(BATCH)]
    try:
        return rate(n, lambda: [log.append_many(batch) for _ in range(n // BATCH)] and None)
    finally:
        log.close()


THREADS = int(os.environ.get("BENCH_THREADS", "32"))


def grouped(path: Path, each: int) -> tuple[float, float]:
    """Group commit: THREADS threads appending to one log with fsync "always"; (appends/s, appends per flush)."""
    import threading

    path.unlink(missing_ok=True)
    log = FileLog(path, "bench", fsync="always", create=True)
    d = draft()
    start = threading.Barrier(THREADS + 1)

    def work() -> None:
        start.wait()
        for _ in range(each):
            log.append(d)

    threads = [threading.Thread(target=work) for _ in range(THREADS)]
    for t in threads:
        t.start()
    try:
        def go() -> None:
            start.wait()
            for t in threads:
                t.join()

        per_s = rate(THREADS * each, go)
        return per_s, THREADS * each / max(1, log._commit.flushes)
    finally:
        log.close()


def main() -> None:
    with tempfile.TemporaryDirectory(dir=os.environ.get("BENCH_DIR")) as d:
        tmp = Path(d)
        size = line_size(tmp)
        # fsync costs swing with the disk's other tenants: pair each run with a raw run right beside it
        # (first, before the big batches below leave a heap of garbage for the collector)
        # (the raw O_DSYNC loop is shown too: one syscall a durable write, the least a single append could cost)
        runs = [(single(tmp / "b.jsonl", SYNCED, "always"), raw_loop(tmp / "raws", SYNCED, size, True),
                 raw_loop(tmp / "rawd", SYNCED, size, False, dsync=True)) for _ in range(PAIRS)]
        raw = median_of(lambda: raw_loop(tmp / "raw", SINGLE, size, False))
        never = median_of(lambda: single(tmp / "a.jsonl", SINGLE, "never"))
        batched = median_of(lambda: many(tmp / "c.jsonl", MANY))
        always = statistics.median(r[0] for r in runs)
        raw_sync = statistics.median(r[1] for r in runs)
        raw_dsync = statistics.median(r[2] for r in runs)
        paired = statistics.median(r[0] / r[1] for r in runs)
        # group commit: the single durable rate measured right beside each grouped run
        groups = [(grouped(tmp / "g.jsonl", max(1, SYNCED // THREADS * 4)), single(tmp / "s.jsonl", SYNCED, "always"))
                  for _ in range(3)]
        group_ratio = statistics.median(g[0] / one for g, one in groups)
        paired_dsync = statistics.median(r[0] / r[2] for r in runs)
    report("append", {
        "line_bytes": size,
        "raw_write_per_s": round(raw), "raw_write_fsync_per_s": round(raw_sync),
        "raw_write_dsync_per_s": round(raw_dsync),
        "single_never_per_s": round(never), "single_never_vs_raw_write": round(never / raw, 3),
        "single_always_per_s": round(always), "single_always_vs_raw_write_fsync": round(paired, 3),
        "single_always_vs_raw_write_dsync": round(paired_dsync, 3),
        "append_many_never_per_s": round(batched), "append_many_vs_raw_write": round(batched / raw, 3),
        "grouped_always_per_s": round(statistics.median(g[0] for g, _ in groups)),
        "grouped_appends_per_flush": round(statistics.median(g[1] for g, _ in groups), 1),
        "grouped_vs_single_always": round(group_ratio, 2), "grouped_threads": THREADS,
        "targets": {"append_many_never_per_s": 200_000, "single_always_vs_raw_write_fsync": 0.8,
                    "grouped_vs_single_always": 5.0},
    }, {"single": SINGLE, "synced": SYNCED, "pairs": PAIRS, "many": MANY, "batch": BATCH, "backend": "file"})


if __name__ == "__main__":
    main()
