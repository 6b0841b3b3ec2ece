"""The executor: carries out the planner's actions, agent by agent, and appends what it did.

Its rule (DESIGN section 13): one agent's actions run in order and stop at the first that fails; an
action holds only while the log is where the plan was made (plus this agent's own appends before it),
so a start whose death declaration or plan conflicted is planned again on the fresh view, never run
blind, and every start that follows a death has that death's `agent.declared_dead` and
`revival.planned` before its `agent.spawned`, for simultaneous deaths too."""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import os
import signal
from collections.abc import Callable, Container, Iterable, Sequence
from typing import Any

import msgspec

from . import events as ev
from .backends.process import Exit, Proc, ProcessBackend
from .cells import Cell
from .errors import Conflict, LazarusError
from .limits import describe
from .names import new_id
from .outside import Outside, run_argv
from .planner import AnyAction, Append, Command, Start
from .secrets import mask

__all__ = ["Executor"]

log = logging.getLogger(__name__)
LOG_TAIL_BYTES = 2048
LOG_TAIL_LINES = 10


class _Failed(Exception):
    """An action that did not happen; `moved` when the log moved under the plan (plan again)."""

    def __init__(self, moved: bool) -> None:
        super().__init__()
        self.moved = moved


class Executor:
    """Runs and stops the agent processes this daemon supervises, and records their ends."""

    def __init__(self, backend: ProcessBackend, *, grace: float, cells: Callable[[str], Cell | None],
                 on_exit: Callable[[str], None], epoch: Callable[[str], int] = lambda cell_id: 0,
                 may_act: Callable[[str], bool] = lambda cell_id: True) -> None:
        self.backend = backend
        self.grace = grace
        self.cells = cells
        self.on_exit = on_exit
        self.epoch = epoch  # the epoch this daemon leads a cell with, stamped on what it decides
        self.may_act = may_act  # asked before every action: a lease that ran out acts no more
        self.procs: dict[tuple[str, str], Proc] = {}
        self.outside: Outside | None = None  # where other managers' commands run (set by the daemon's loop)
        self.command_timeout = 60.0
        self.commanding: set[tuple[str, str]] = set()  # agents whose revival command is running
        self.revivals: dict[str, int] = {}
        self._stopping: dict[tuple[str, str], asyncio.TimerHandle] = {}

    def carry_out(self, cell: Cell, actions: Sequence[AnyAction]) -> bool:
        """Every agent's actions, each agent's in order up to the first that fails; True when the log
        moved, so the caller plans again on the fresh view."""
        moved = False
        for todo in _by_agent(actions):
            expected: int | None = todo[0].at_seq or None
            for action in todo:
                if not self.may_act(cell.id):
                    log.warning("cell %s: not acting for %s: this daemon's lease ran out", cell.id, action.agent)
                    return moved
                try:
                    seq = self._act(cell, action, expected)
                except _Failed as failed:
                    moved = moved or failed.moved
                    break
                if seq is not None:
                    moved, expected = True, seq
        return moved

    def _act(self, cell: Cell, action: AnyAction, expected: int | None) -> int | None:
        """Carry out one action; the log's seq after it when it appended, else None."""
        try:
            if isinstance(action, Append):
                written = cell.append_many([self._stamped(cell, self._with_log_tail(cell, e))
                                            for e in action.events], expected_seq=expected)
                for w in written:
                    if isinstance(w.event, ev.RevivalPlanned):
                        self.revivals[w.event.action] = self.revivals.get(w.event.action, 0) + 1
                return written[-1].seq if written else None
            if isinstance(action, Start):
                return self._start(cell, action, expected)
            if isinstance(action, Command):
                self._command(cell, action)
                return None
            self.stop(cell.id, action.agent)
            return None
        except Conflict as exc:
            log.info("cell %s, agent %s: %s; planning again", cell.id, action.agent, exc)
            raise _Failed(moved=True) from None
        except (LazarusError, OSError) as exc:
            log.error("cell %s, agent %s: %s", cell.id, action.agent, exc)
            raise _Failed(moved=False) from None

    # -- agents another manager runs (section 17) -----------------------------------------

    def _command(self, cell: Cell, action: Command) -> None:
        """Start the revival commands off the loop, once per agent at a time; the result is recorded when
        they end (`_commanded`), planned again from there."""
        key = (cell.id, action.agent)
        if key in self.commanding or self.outside is None:
            return
        self.commanding.add(key)
        loop = asyncio.get_running_loop()
        log.info("cell %s, agent %s: running %s", cell.id, action.agent, action.argv)
        fut = self.outside.submit(_run_all(action.argv, self.command_timeout))
        fut.add_done_callback(lambda f: loop.call_soon_threadsafe(self._commanded, cell, action, f))

    def _commanded(self, cell: Cell, action: Command, fut: concurrent.futures.Future[dict[str, Any]]) -> None:
        """`agent.revived` (`via = "restart_cmd"`) when the commands succeeded, else a death with reason
        `restart_failed`: either way with the command's exit status and output tail in `detail`."""
        self.commanding.discard((cell.id, action.agent))
        if fut.cancelled():
            return
        try:
            result = fut.result()
        except Exception as exc:  # noqa: BLE001 - the command's runner failed: a failed revival, said why
            result = {"argv": action.argv, "returncode": None, "error": str(exc)}
        try:
            a = cell.refresh().agents.get(action.agent)
            if a is None or a.phase != "dead" or a.revival != "restart":
                log.info("cell %s, agent %s: command done, but the agent is no longer awaiting a restart",
                         cell.id, action.agent)
                return
            e: ev.Event
            if result.get("returncode") == 0:
                e = ev.AgentRevived(by="lazarus", agent=action.agent, attempt=action.revived, via="restart_cmd",
                                    detail=result)
            else:
                e = ev.AgentDeclaredDead(by="lazarus", agent=action.agent, reason="restart_failed",
                                         last_seen=a.last_seen, detail=result)
            cell.append(self._stamped(cell, e))
        except LazarusError as exc:
            log.error("cell %s, agent %s: result of its command not recorded: %s", cell.id, action.agent, exc)
        self.on_exit(cell.id)

    def run_managed(self, cell: Cell, agent: str, kind: str, argv: list[str]) -> None:
        """An agent another manager runs follows its cell: `stop_cmd` on a freeze, archive, destroy, leave
        or `agent stop`, `start_cmd` on a thaw or `agent start`; off the loop, the result in the daemon's
        log (an archived cell's log takes no more events of its agents' runs)."""
        if self.outside is None:
            return
        fut = self.outside.submit(run_argv(argv, self.command_timeout))

        def done(f: concurrent.futures.Future[dict[str, Any]]) -> None:
            if f.cancelled():
                return
            try:
                result = f.result()
            except Exception as exc:  # noqa: BLE001 - said, never fatal
                result = {"returncode": None, "error": str(exc)}
            if result.get("returncode") == 0:
                log.info("cell %s, agent %s: %s_cmd %s done", cell.id, agent, kind, argv)
            else:
                log.warning("cell %s, agent %s: %s_cmd %s failed: %s %s", cell.id, agent, kind, argv,
                            result.get("error") or f"exit {result.get('returncode')}", result.get("output", "")[-300:])

        log.info("cell %s, agent %s: running its %s_cmd %s", cell.id, agent, kind, argv)
        fut.add_done_callback(done)

    def stamped(self, cell: Cell, e: ev.Event) -> ev.Event:
        """A leader decision carries the epoch this daemon leads the cell with (for the daemon's own appends)."""
        return self._stamped(cell, e)

    def _stamped(self, cell: Cell, e: ev.Event) -> ev.Event:
        """A leader decision carries the epoch this daemon leads the cell with."""
        epoch = self.epoch(cell.id)
        return msgspec.structs.replace(e, epoch=epoch) if epoch and e.by == "lazarus" and hasattr(e, "epoch") else e

    def _with_log_tail(self, cell: Cell, e: ev.Event) -> ev.Event:
        """A death of a supervised process carries the end of its output (secrets masked), and the limit
        that killed it when one did: why it died, at a glance."""
        if not isinstance(e, ev.AgentDeclaredDead) or e.reason != "exited":
            return e
        try:
            with open(cell.agent_logs / f"{e.agent}.log", "rb") as f:
                f.seek(max(0, f.seek(0, os.SEEK_END) - LOG_TAIL_BYTES))
                tail = f.read().decode(errors="replace")
        except OSError:
            tail = ""
        tail = mask(tail, self.backend.masks.get((cell.id, e.agent), []))
        lines = tail.splitlines()[-LOG_TAIL_LINES:]
        detail = {**e.detail, "log_tail": "\n".join(lines)} if tail else dict(e.detail)
        view = cell.projection
        a = view.agents.get(e.agent) if view is not None else None
        limits = self.backend.limits_for(a, view.isolation) if a is not None and view is not None else {}
        oom = (cell.id, e.agent) in self.backend.oom
        self.backend.oom.discard((cell.id, e.agent))
        if limits:
            detail["limits"] = describe(limits)
            hit = limit_hit(limits, tail, oom)
            if hit:
                detail["limit"] = hit
        return msgspec.structs.replace(e, detail=detail)

    def _start(self, cell: Cell, action: Start, expected: int | None) -> int:
        key = (cell.id, action.agent)
        if key in self.procs:
            self.stop(cell.id, action.agent)  # the old process goes first; its exit plans again
            raise _Failed(moved=False)
        if expected is not None and cell.head().seq != expected:
            raise Conflict(f"the log moved past seq {expected} since the start was planned")
        view = cell.projection or cell.refresh()
        a = view.agents[action.agent]
        host = self.backend.host
        incarnation = new_id()  # the agent.spawned id, known to the process before it runs
        epoch = self.epoch(cell.id)  # so is the epoch it is started under (LAZARUS_EPOCH)
        last = 0

        def record(pid: int, started: float) -> None:
            nonlocal last
            drafts: list[ev.Event] = [ev.AgentSpawned(id=incarnation, by="lazarus", agent=a.name, pid=pid,
                                                      start_time=started, host=host, attempt=action.attempt,
                                                      resume=action.resume, isolation=view.isolation,
                                                      limits=self.backend.limits_for(a, view.isolation),
                                                      epoch=epoch)]
            if action.revived:
                drafts.append(ev.AgentRevived(by="lazarus", agent=a.name, pid=pid, attempt=action.revived,
                                              epoch=epoch))
            last = cell.append_many(drafts, expected_seq=expected)[-1].seq

        proc = self.backend.spawn(cell, a, attempt=action.attempt, resume=action.resume, incarnation=incarnation,
                                  epoch=epoch, record=record)
        self.watch(cell, proc)
        return last

    # -- processes ------------------------------------------------------------------------

    def watch(self, cell: Cell, proc: Proc) -> None:
        """Know of the agent's end at once: a pidfd on its shim in the event loop."""
        self.procs[(proc.cell, proc.agent)] = proc
        fd = self.backend.watch_fd(proc)
        loop = asyncio.get_running_loop()
        if fd is None:
            loop.call_soon(self._ended, proc, None)
            return
        loop.add_reader(fd, self._ended, proc, fd)

    def _ended(self, proc: Proc, fd: int | None) -> None:
        if fd is not None:
            asyncio.get_running_loop().remove_reader(fd)
            os.close(fd)
        self.backend.reap(proc)
        self.backend.end_group(proc)  # the agent is gone: so are the children it left
        key = (proc.cell, proc.agent)
        if self.procs.get(key) == proc:
            del self.procs[key]
        timer = self._stopping.pop(key, None)
        if timer is not None:
            timer.cancel()
        cell = self.cells(proc.cell)
        if cell is None:
            return
        # without the shim's record (adopted without its shim, or the shim was killed) the status is unknown
        seen = self.backend.read_exit(cell, proc.agent, proc.pid) or Exit(pid=proc.pid)
        self.record_exit(cell, proc.agent, seen)
        self.on_exit(cell.id)

    def record_exit(self, cell: Cell, agent: str, seen: Exit) -> None:
        """Append `agent.exited` unless the log already has this pid's end."""
        try:
            a = cell.refresh().agents.get(agent)
            if a is not None and a.pid == seen.pid and a.spawned_at >= a.exited_at:
                cell.append(ev.AgentExited(by="lazarus", agent=agent, pid=seen.pid, returncode=seen.returncode,
                                           signal=seen.signal, epoch=self.epoch(cell.id)))
            self.backend.forget(cell, agent, seen.pid)
        except LazarusError as exc:
            log.error("cell %s: exit of %s not recorded: %s", cell.id, agent, exc)

    def stop(self, cell_id: str, agent: str) -> None:
        """SIGTERM to the group, then SIGKILL after the grace period."""
        key = (cell_id, agent)
        proc = self.procs.get(key)
        if proc is None or key in self._stopping:
            return
        if not self.backend.signal(proc, signal.SIGTERM):
            return
        self._stopping[key] = asyncio.get_running_loop().call_later(self.grace, self._kill, proc)

    def _kill(self, proc: Proc) -> None:
        self._stopping.pop((proc.cell, proc.agent), None)
        self.backend.signal(proc, signal.SIGKILL)

    def adopt(self, cells: Iterable[Cell]) -> None:
        """After a restart: watch the agents spawned earlier on this host, record the ends we missed."""
        for cell in cells:
            view = cell.projection
            if view is None:
                continue
            for a in view.agents.values():
                if not a.command or a.host != self.backend.host or not a.pid or a.spawned_at < a.exited_at:
                    continue
                if (cell.id, a.name) in self.procs:
                    continue
                found = self.backend.adopt(cell, a)
                if isinstance(found, Exit):
                    self.record_exit(cell, a.name, found)
                else:
                    log.info("re-adopted %s/%s pid %d", view.name, a.name, a.pid)
                    self.watch(cell, found)

    def superseded(self, cell: Cell) -> list[str]:
        """The agents of a cell whose process here is no longer their newest start (another daemon
        started them since, or a start was recorded over ours): stopped, whatever the cell's state."""
        view = cell.projection
        out = []
        for (cid, agent), proc in list(self.procs.items()):
            if cid != cell.id or view is None:
                continue
            a = view.agents.get(agent)
            if a is None or (a.pid, a.host) != (proc.pid, self.backend.host) or a.start_time != proc.start_time:
                out.append(agent)
                self.stop(cid, agent)
        return out

    def stop_all(self, cell_id: str) -> list[str]:
        """Every agent this daemon runs for the cell, stopped (self-fencing)."""
        agents = [agent for (cid, agent) in self.procs if cid == cell_id]
        for agent in agents:
            self.stop(cell_id, agent)
        return agents

    def kill_orphans(self, live: Container[str]) -> None:
        """The agents of a cell that vanished (destroyed) are killed (every turn of the loop: no copy of
        the cells)."""
        for (cid, _), proc in list(self.procs.items()):
            if cid not in live:
                self.backend.signal(proc, signal.SIGKILL)


_LIMIT_SIGNS = {
    "memory": ("MemoryError", "Cannot allocate memory", "out of memory", "std::bad_alloc", "memory exhausted"),
    "pids": ("Resource temporarily unavailable", "fork: retry", "can't start new thread"),
    "nofile": ("Too many open files",),
}


def limit_hit(limits: dict[str, str], tail: str, oom: bool = False) -> str:
    """The limit that ended an agent, as `memory=64M`, when its end shows it: the kernel's own count of
    memory kills in the agent's cgroup (`oom`), else the words a failed call printed (an rlimit does not
    kill but makes a call fail)."""
    if oom and "memory" in limits:  # at level 2 the kill lands inside bwrap, which exits as its child did
        return f"memory={limits['memory']}"
    for kind, signs in _LIMIT_SIGNS.items():
        if kind in limits and any(s in tail for s in signs):
            return f"{kind}={limits[kind]}"
    return ""


async def _run_all(argvs: list[list[str]], timeout: float) -> dict[str, Any]:
    """Each command in order (stop, then start), up to the first that fails; the last one's result."""
    result: dict[str, Any] = {"argv": [], "returncode": None, "error": "no command to run"}
    for argv in argvs:
        result = await run_argv(argv, timeout)
        if result.get("returncode") != 0:
            break
    return result


def _by_agent(actions: Sequence[AnyAction]) -> list[list[AnyAction]]:
    """The actions grouped per agent, each group in plan order, agents in order of first action."""
    groups: dict[str, list[AnyAction]] = {}
    for a in actions:
        groups.setdefault(a.agent, []).append(a)
    return list(groups.values())
