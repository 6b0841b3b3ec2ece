"""The process backend: an agent runs only once its start is recorded, and a pid is never mistaken."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import pytest

from lazarus_bus import Root
from lazarus_bus import events as ev
from lazarus_bus.backends.process import ProcessBackend, alive, group_members, start_time_of


def _cell(root: Root, command: list[str]):  # type: ignore[no-untyped-def]
    cell = root.create("forge")
    cell.append(ev.AgentInvited(by="operator", agent="w", role="write", command=command, env={"MARK": "x"}))
    return cell


def test_an_unrecorded_start_never_runs_the_agent(root: Root, tmp_path: Path) -> None:
    marker = tmp_path / "ran"
    cell = _cell(root, ["sh", "-c", f"touch {marker}; sleep 30"])
    seen: list[int] = []

    def record(pid: int, started: float) -> None:
        seen.append(pid)
        raise OSError("disk full")  # the daemon could not make agent.spawned durable

    with pytest.raises(OSError):
        ProcessBackend("here").spawn(cell, cell.refresh().agents["w"], attempt=1, resume="", record=record)
    [pid] = seen
    deadline = time.monotonic() + 60
    while start_time_of(pid) is not None:
        assert time.monotonic() < deadline
        time.sleep(0.01)
    assert not marker.exists()  # it exited (127) without ever exec'ing the command
    assert not list((cell.state_dir / "agents").glob("w.*.exit"))


def test_spawn_records_then_runs_with_its_environment_and_exit_status(root: Root) -> None:
    cell = _cell(root, ["sh", "-c", 'echo "$LAZARUS_AGENT $LAZARUS_ROLE $MARK $PWD"; exit 7'])
    backend = ProcessBackend("here")
    recorded: list[tuple[int, float]] = []
    proc = backend.spawn(cell, cell.refresh().agents["w"], attempt=1, resume="", record=lambda p, s: recorded.append((p, s)))
    assert recorded == [(proc.pid, proc.start_time)]
    deadline = time.monotonic() + 60
    while (got := backend.read_exit(cell, "w", proc.pid)) is None:
        assert time.monotonic() < deadline
        time.sleep(0.01)
    assert got.returncode == 7 and got.signal is None
    assert (cell.agent_logs / "w.log").read_text().strip() == f"w write x {cell.workspace}"
    backend.reap(proc)


def test_a_reused_pid_is_not_the_agent(root: Root) -> None:
    me = os.getpid()
    started = start_time_of(me)
    assert started is not None and alive(me, started)
    assert not alive(me, started - 5.0)  # same pid, another start time: another process
    assert not alive(2**22 + 1, started)


def test_stop_signals_the_agents_group(root: Root) -> None:
    cell = _cell(root, ["sh", "-c", "sleep 30 & sleep 30; wait"])
    backend = ProcessBackend("here")
    proc = backend.spawn(cell, cell.refresh().agents["w"], attempt=1, resume="", record=lambda p, s: None)
    assert os.getpgid(proc.pid) == proc.pid
    assert backend.signal(proc, signal.SIGKILL)
    deadline = time.monotonic() + 60
    while backend.read_exit(cell, "w", proc.pid) is None:
        assert time.monotonic() < deadline
        time.sleep(0.01)
    assert backend.read_exit(cell, "w", proc.pid).signal == 9  # type: ignore[union-attr]
    # the whole group is gone, the background sleep too. Not `killpg(pgid, 0)` at once: the shim records
    # the exit when `sh` is reaped, while the orphaned sleep, killed by the same signal, may still be a
    # zombie waiting for PID 1 to reap it; a zombie is still a member of the group for kill(2), so that
    # check failed now and then under load. What matters is that nothing of the group still runs.
    while group_members(proc.pid, 0, proc.start_time):
        assert time.monotonic() < deadline, f"still running in the group: {group_members(proc.pid, 0, 0)}"
        time.sleep(0.01)
    backend.reap(proc)


def test_an_agent_killed_right_after_its_start_is_recorded_still_has_its_exit_recorded(root: Root) -> None:
    cell = _cell(root, ["sleep", "30"])
    backend = ProcessBackend("here")

    def record_then_die(pid: int, started: float) -> None:
        os.kill(pid, signal.SIGKILL)  # killed between agent.spawned and the go byte
        while start_time_of(pid) is not None:
            time.sleep(0.001)

    proc = backend.spawn(cell, cell.refresh().agents["w"], attempt=1, resume="", record=record_then_die)
    deadline = time.monotonic() + 60
    while (got := backend.read_exit(cell, "w", proc.pid)) is None:
        assert time.monotonic() < deadline, "the shim must record the exit"
        time.sleep(0.01)
    assert got.signal == 9
    backend.reap(proc)
