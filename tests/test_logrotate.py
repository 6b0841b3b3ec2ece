"""Agents' captured output is rotated at `[logs] max_bytes`, keeping `[logs] keep` files, and `lazarus
logs` reads it back across the rotated files."""

from __future__ import annotations

import subprocess
from pathlib import Path

from lazarus_bus.logrotate import RotatingLog, last_lines, rotated_paths
from tests.conftest import Cli, Procs
from tests.support import Up, wait


def test_rotation_keeps_the_newest_files_and_drops_the_oldest(tmp_path: Path) -> None:
    path = tmp_path / "w.log"
    log = RotatingLog(str(path), max_bytes=20, keep=2)
    for i in range(10):
        log.write(f"line {i:02d} ......\n".encode())  # 16 bytes: one line per file
    log.close()
    assert [p.name for p in rotated_paths(path)] == ["w.log.2", "w.log.1", "w.log"]
    assert path.read_text() == "line 09 ......\n"
    assert (tmp_path / "w.log.2").read_text() == "line 07 ......\n"
    assert [x.decode() for x in last_lines(path, 2)] == ["line 08 ......\n", "line 09 ......\n"]
    assert len(last_lines(path, None)) == 3


def test_max_bytes_zero_never_rotates(tmp_path: Path) -> None:
    path = tmp_path / "w.log"
    log = RotatingLog(str(path), max_bytes=0, keep=5)
    for _ in range(100):
        log.write(b"x" * 100)
    log.close()
    assert rotated_paths(path) == [path] and path.stat().st_size == 10_000


def test_a_chatty_agent_is_rotated_and_logs_reads_it(up: Up, cli: Cli, root_dir: Path, procs: Procs) -> None:
    up.config("[logs]\nmax_bytes = 2000\nkeep = 2\n")
    cli.ok("cell", "create", "forge")
    script = "import sys, time\nfor i in range(1000): print(f'line {i:04d}', flush=True)\ntime.sleep(600)\n"
    cli.ok("agent", "invite", "forge", "w", "--role", "write", "--cmd", f"python3 -c \"{script}\"")
    up.start()
    logdir = up.cell().agent_logs
    wait(lambda: (logdir / "w.log").exists() and b"line 0999" in (logdir / "w.log").read_bytes(), "the last line")
    names = sorted(p.name for p in logdir.iterdir())
    assert names == ["w.log", "w.log.1", "w.log.2"], names
    assert all(p.stat().st_size <= 2000 for p in logdir.iterdir())
    assert cli.ok("logs", "forge", "w", "-n", "3").splitlines() == ["line 0997", "line 0998", "line 0999"]
    everything = cli.ok("logs", "forge", "w").splitlines()
    assert everything[-1] == "line 0999" and len(everything) > 300  # the rotated files too, oldest first
    assert everything == sorted(everything)
    missing = cli("logs", "forge", "nobody")
    assert missing.code == 3 and "nobody" in missing.err


def test_logs_follow_prints_what_is_written_next(up: Up, cli: Cli, procs: Procs) -> None:
    up.config()
    cli.ok("cell", "create", "forge")
    script = ("import time\nprint('first', flush=True)\nimport os\n"
                   "while not os.path.exists('go'): time.sleep(0.05)\nprint('second', flush=True)\ntime.sleep(600)\n")
    cli.ok("agent", "invite", "forge", "w", "--role", "write", "--cmd", f"python3 -c \"{script}\"")
    up.start()
    cell = up.cell()
    wait(lambda: (cell.agent_logs / "w.log").exists() and b"first" in (cell.agent_logs / "w.log").read_bytes(),
         "the first line")
    follower = procs.start(cli.argv("logs", "forge", "w", "-f", "-n", "1"), env=cli.env(), stdout=subprocess.PIPE)
    assert follower.stdout is not None
    assert follower.stdout.readline() == b"first\n"
    (cell.workspace / "go").write_text("")
    assert follower.stdout.readline() == b"second\n"
