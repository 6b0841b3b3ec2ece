"""The chain helper a full replay starts: run as `python -m lazarus_bus.log.chain_check LOG END`, as read_all runs it."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from lazarus_bus import FileLog
from lazarus_bus.log.chain_check import chain_length
from lazarus_bus.log.file import _helper_env

from .log_contract import msg


@pytest.fixture
def log_path(tmp_path: Path) -> Path:
    log = FileLog(tmp_path / "events.jsonl", "c1", fsync="never", create=True)
    log.append_many([msg(i) for i in range(2500)])  # several 64 KiB blocks
    log.close()
    return tmp_path / "events.jsonl"


def helper(path: Path, end: int) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "lazarus_bus.log.chain_check", str(path), str(end)], env=_helper_env(),
                          capture_output=True, text=True, timeout=60, start_new_session=True)


def test_an_unbroken_chain_prints_its_length(log_path: Path) -> None:
    size = log_path.stat().st_size
    done = helper(log_path, size)
    assert (done.returncode, done.stdout.strip()) == (0, "2500")
    cut = log_path.read_bytes()[: size // 2].rfind(b"\n") + 1  # END bounds what it reads
    assert chain_length(log_path, cut) == log_path.read_bytes()[:cut].count(b"\n")


@pytest.mark.parametrize("damage", [
    lambda line: line.replace(b'"payload":1200', b'"payload":1201'),  # edited: the next line's prev is wrong
    lambda line: line.replace(b'"seq":1201', b'"seq":1202'),
    lambda line: line[:30],
    lambda line: line.replace(b'"prev":"', b'"prev":"0'),
], ids=["edited", "seq", "truncated", "prev"])
def test_a_fault_anywhere_exits_1(log_path: Path, damage) -> None:  # type: ignore[no-untyped-def]
    lines = log_path.read_bytes().split(b"\n")
    lines[1200], before = damage(lines[1200]), lines[1200]
    assert lines[1200] != before
    log_path.write_bytes(b"\n".join(lines))
    done = helper(log_path, log_path.stat().st_size)
    assert (done.returncode, done.stdout) == (1, "")
    assert chain_length(log_path, log_path.stat().st_size) is None
