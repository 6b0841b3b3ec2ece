"""The JSONL file backend: the shared contract, plus what only a file can suffer."""

from __future__ import annotations

import base64
import json
import os
import signal
import sys
from pathlib import Path

import pytest

from lazarus_bus import CorruptLog, FileLog, NotFound
from lazarus_bus import events as ev
from lazarus_bus.log import file as file_mod

from .conftest import HELPERS, Procs
from .log_contract import MakeLog, msg

CELL = "c1"


@pytest.fixture
def log_path(tmp_path: Path) -> Path:
    (tmp_path / "logs").mkdir()
    return tmp_path / "logs" / "events.jsonl"


@pytest.fixture
def make_log(log_path: Path) -> MakeLog:
    opened: list[FileLog] = []

    def make(reopen: FileLog | None = None, **settings: object) -> FileLog:
        settings.setdefault("fsync", "never")
        log = FileLog(log_path, CELL, create=True, **settings)  # type: ignore[arg-type]
        opened.append(log)
        return log

    yield make  # type: ignore[misc]
    for log in opened:
        log.close()


def test_fsync_modes(make_log: MakeLog, monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[int] = []
    real, real_data = os.fsync, os.fdatasync
    monkeypatch.setattr(file_mod.os, "fsync", lambda fd: (calls.append(fd), real(fd))[1])
    monkeypatch.setattr(file_mod.os, "fdatasync", lambda fd: (calls.append(fd), real_data(fd))[1])
    # "always": each append (one event or a batch) returns after a flush; alone, it has one of its own
    # (concurrent appends share one: tests/test_commit.py)
    expected = {"always": (1, 1), "batch": (0, 1), "never": (0, 0)}
    for mode, (single, batch) in expected.items():
        log = make_log(fsync=mode)
        calls.clear()
        log.append(msg(1))
        assert len(calls) == single, mode
        calls.clear()
        log.append_many([msg(2), msg(3)])
        assert len(calls) == batch, mode


def test_torn_tail_is_ignored_then_quarantined(make_log: MakeLog, log_path: Path) -> None:
    log = make_log()
    log.append_many([msg(1), msg(2)])
    torn = b'{"type":"bus.message","seq":3,"payl'
    with open(log_path, "ab") as fh:
        fh.write(torn)
    assert [e.seq for e in log.read()] == [1, 2]  # readers ignore it
    assert log.append(msg(3))[0].seq == 3
    record = json.loads((log_path.parent / "events.torn").read_text())
    assert base64.b64decode(record["b64"]) == torn
    assert record["length"] == len(torn) and record["offset"] > 0
    assert [e.seq for e in log.read()] == [1, 2, 3]


def test_writer_killed_mid_line(make_log: MakeLog, log_path: Path, procs: Procs) -> None:
    log = make_log()
    log.append_many([msg(i) for i in range(5)])
    before = log_path.read_bytes()
    p = procs.start([sys.executable, str(HELPERS / "torn_writer.py"), str(log_path)])
    assert p.stdout is not None and p.stdout.readline() == b"ready\n"
    os.killpg(p.pid, signal.SIGKILL)
    p.wait(timeout=10)
    assert log_path.read_bytes() != before  # half a line is there now
    assert log.append(msg(6))[0].seq == 6
    record = json.loads((log_path.parent / "events.torn").read_text())
    assert len(base64.b64decode(record["b64"])) == record["length"] > 100_000
    assert log_path.read_bytes().startswith(before)
    assert [e.seq for e in log.read()] == list(range(1, 7))


@pytest.mark.parametrize(
    "damage, what",
    [
        (lambda line: line.replace(b'"payload":3', b'"payload":4'), "hash chain broken"),
        (lambda line: line[:40], "corrupt log"),
        (lambda line: line.replace(b'"seq":4', b'"seq":7'), "expected seq 4"),
        (lambda line: line.replace(b'"payload":3', b'"payload":3,"topic":5'), "corrupt log"),
    ],
    ids=["edited", "truncated", "seq", "schema"],
)
def test_corruption_names_file_line_and_seq(make_log: MakeLog, log_path: Path, damage, what: str) -> None:  # type: ignore[no-untyped-def]
    log = make_log()
    log.append_many([msg(i) for i in range(6)])
    lines = log_path.read_bytes().split(b"\n")
    lines[3] = damage(lines[3])
    log_path.write_bytes(b"\n".join(lines))
    with pytest.raises(CorruptLog) as info:
        list(log.read())
    assert f"{log_path}:4" in str(info.value) and what in str(info.value)
    assert "seq" in str(info.value)
    with pytest.raises(CorruptLog) as aside:  # the chain checked by a second process: the same words
        list(log.read_all(aside_from=0))
    assert str(aside.value) == str(info.value)
    assert not _helpers()


def _helpers() -> list[str]:
    """This process's live chain helpers, by command line (a session's nats-server is a child too)."""
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
            if int(fields[1]) == os.getpid() and fields[0] != "Z":
                cmdline = (stat.parent / "cmdline").read_bytes().replace(b"\0", b" ").decode()
                if "lazarus_bus.log.chain_check" in cmdline:
                    found.append(cmdline)
        except (OSError, IndexError):
            continue
    return found


def test_read_all_decodes_here_while_a_second_process_checks_the_chain(make_log: MakeLog) -> None:
    log = make_log()
    log.append_many([msg(i) for i in range(3000)])
    events = log.read_all(aside_from=0)
    first = next(events)
    assert _helpers()  # the helper, on the other core
    assert [first, *events] == list(log.read())
    assert not _helpers()


def test_read_all_stopped_early_stops_its_helper(make_log: MakeLog) -> None:
    log = make_log()
    log.append_many([msg(i) for i in range(3000)])
    events = log.read_all(aside_from=0)
    next(events)
    events.close()
    assert not _helpers()


def test_read_all_without_its_helper_checks_the_chain_itself(make_log: MakeLog, log_path: Path,
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    log = make_log()
    log.append_many([msg(i) for i in range(300)])
    monkeypatch.setattr(file_mod.sys, "executable", "/bin/false")  # a helper that exits at once, no verdict
    assert list(log.read_all(aside_from=0)) == list(log.read())
    monkeypatch.setattr(file_mod.sys, "executable", str(log_path.parent / "no-such-python"))  # none starts
    assert list(log.read_all(aside_from=0)) == list(log.read())
    monkeypatch.setattr(file_mod.sys, "executable", "/bin/false")
    lines = log_path.read_bytes().split(b"\n")
    lines[100] = lines[100].replace(b'"payload":100', b'"payload":101')
    assert lines[100] != log_path.read_bytes().split(b"\n")[100]
    log_path.write_bytes(b"\n".join(lines))
    with pytest.raises(CorruptLog, match="hash chain broken"):
        list(log.read_all(aside_from=0))


def test_file_size_limit_is_a_clear_error_and_leaves_no_partial_line(
    make_log: MakeLog, log_path: Path, procs: Procs
) -> None:
    log = make_log()
    log.append(msg(1))
    size = log_path.stat().st_size
    code = (
        "import resource, signal, sys\n"
        "signal.signal(signal.SIGXFSZ, signal.SIG_IGN)\n"
        f"resource.setrlimit(resource.RLIMIT_FSIZE, ({size + 1000}, {size + 1000}))\n"
        "from lazarus_bus import FileLog, parse_draft, LazarusError\n"
        f"log = FileLog({str(log_path)!r}, 'c1', fsync='never')\n"
        "try:\n"
        "    log.append(parse_draft({'type': 'bus.message', 'by': 'operator', 'topic': 't', 'payload': 'x' * 5000}))\n"
        "except LazarusError as e:\n"
        "    print(e); sys.exit(7)\n"
    )
    p = procs.start([sys.executable, "-c", code])  # its own process group, killed at teardown
    out, err = p.communicate(timeout=60)
    assert p.returncode == 7, err
    assert b"disk full" in out and b"nothing was written" in out
    assert log_path.stat().st_size == size
    assert [e.seq for e in log.read()] == [1]


def test_a_destroyed_log_refuses_writers_that_hold_it_open_wherever_it_moves(
    make_log: MakeLog, log_path: Path
) -> None:
    writer = make_log()
    writer.append(msg(1))
    FileLog(log_path, CELL).append(ev.CellDestroyed(by="operator"))  # `cell destroy`, from another process
    grave = log_path.with_name("grave.jsonl")
    os.rename(log_path, grave)  # ... which then moves the log to the graveyard
    before = grave.read_bytes()
    with pytest.raises(NotFound, match="ends with cell.destroyed"):
        writer.append(msg(2))
    with pytest.raises(NotFound, match="ends with cell.destroyed"):
        FileLog(grave, CELL).append(msg(2))
    assert grave.read_bytes() == before
    assert [e.seq for e in writer.read()] == [1, 2]


def test_read_from_the_middle_of_a_large_log(make_log: MakeLog) -> None:
    log = make_log()
    log.append_many([msg(i) for i in range(3000)])
    for since in (1, 2, 1499, 2999):
        assert next(log.read(since)).seq == since + 1


def test_a_rechained_line_with_a_bad_name_still_stops_the_reader(make_log: MakeLog, log_path: Path) -> None:
    import hashlib

    make_log().append_many([msg(i) for i in range(5)])
    prev, out = "0" * 64, []
    for n, line in enumerate(log_path.read_bytes().splitlines(), start=1):
        record = json.loads(line)
        record["prev"] = prev
        if n == 3:
            record["by"] = "../x"  # a forger who also rewrote every hash after it
        line = json.dumps(record, separators=(",", ":")).encode()
        prev = hashlib.sha256(line).hexdigest()
        out.append(line)
    log_path.write_bytes(b"\n".join(out) + b"\n")
    with pytest.raises(CorruptLog, match=r"events.jsonl:3: corrupt log at seq 3 .*\$\.by"):
        list(FileLog(log_path, CELL).read())
    seen = []
    with pytest.raises(CorruptLog):
        for event in FileLog(log_path, CELL).read():
            seen.append(event.seq)
    assert seen == [1, 2]  # the good lines before it are handed out, as line by line
