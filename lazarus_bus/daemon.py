"""`lazarus up`: the watcher, planner, executor and gateway in one event loop, one daemon per root."""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import hashlib
import json
import logging
import os
import re
import resource
import signal
import socket
import time
from collections.abc import Callable
from importlib.metadata import version as _pkg_version
from typing import Any

import msgspec

from . import events as ev
from .cells import Cell, Root, atomic_write
from .errors import Conflict, LazarusError, Refused
from .events import Event
from .health import agent_rows
from .notify import Notifier
from .planner import AnyAction, Append, Start, Stop, plan
from .supervisor import Exit, Proc, ProcessBackend
from .watcher import Watcher

__all__ = ["Daemon", "daemon_status"]

log = logging.getLogger(__name__)
VERSION = _pkg_version("lazarus-pit")
LOG_TAIL_BYTES = 2048
# events that can never make an action due (a heartbeat only ever keeps an agent alive): the tick covers them
PASSIVE = frozenset({"agent.heartbeat", "bus.message", "checkpoint.created", "checkpoint.restored",
                     "task.created", "task.updated"})
LOG_TAIL_LINES = 10


def daemon_status(root: Root) -> dict[str, Any] | None:
    """What `<root>/.lazarus/daemon.json` says, if a daemon ever wrote it."""
    try:
        return json.loads((root.meta / "daemon.json").read_bytes())  # type: ignore[no-any-return]
    except (OSError, ValueError):
        return None


def _raise_open_files() -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = hard if hard != resource.RLIM_INFINITY else 1 << 20
    if soft != resource.RLIM_INFINITY and soft < want:
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))


class PidLock:
    """`<root>/.lazarus/daemon.pid`, flocked for the daemon's lifetime: a second daemon is refused."""

    def __init__(self, root: Root) -> None:
        self.path = root.meta / "daemon.pid"
        self.fd: int | None = None

    def acquire(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            other = os.read(fd, 32).decode(errors="replace").strip() or "?"
            os.close(fd)
            raise Refused(f"a daemon already runs on {self.path.parent.parent} (pid {other})") from None
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        self.fd = fd

    def release(self) -> None:
        if self.fd is not None:
            with contextlib.suppress(OSError):
                self.path.unlink()
            os.close(self.fd)
            self.fd = None


class Daemon:
    """Watch every cell, plan on every change and every tick, act through the process backend."""

    def __init__(self, root: Root, *, host: str | None = None, http: str | None = None,
                 on_event: Callable[[Cell, Event], None] | None = None,
                 announce: Callable[[str], None] | None = None) -> None:
        self.root = root
        self.config = root.config
        self.host = host or socket.gethostname()
        self.http = self.config.http.listen if http is None else http
        self.backend = ProcessBackend(self.host, self.config.daemon.grace)
        self.notifier = Notifier(self.config.notify)
        self.watcher = Watcher(root, self._on_events)
        self.on_event = on_event
        self.announce = announce
        self.procs: dict[tuple[str, str], Proc] = {}
        self.started_at = time.time()
        self.last_tick = 0.0
        self.ticks = 0
        self.revivals: dict[str, int] = {}
        self.appended: dict[str, int] = {}
        self._lock = PidLock(root)
        self._stop = asyncio.Event()
        self._dirty: set[str] = set()
        self._wake = asyncio.Event()
        self._live = False  # past the first scan: events now are news, worth notifying
        self._stopping: dict[tuple[str, str], asyncio.TimerHandle] = {}
        self._timers: dict[tuple[str, str], tuple[float, asyncio.TimerHandle]] = {}
        self._seen: dict[str, int] = {}
        self.leases: dict[str, int] = {}
        self.gateway: Any = None

    # -- events in ------------------------------------------------------------------------

    def _on_events(self, cell: Cell, events: list[Event]) -> None:
        """Every event once, whether the watcher read it or this daemon appended it."""
        seen = self._seen.get(cell.id, 0)
        events = [e for e in events if e.seq > seen]
        if not events:
            return
        self._seen[cell.id] = events[-1].seq
        now = time.time()
        for e in events:
            self.appended[e.type] = self.appended.get(e.type, 0) + 1
            if self._live:
                self.notifier.offer(e, now)
                if self.on_event is not None:
                    self.on_event(cell, e)
        if self.gateway is not None:
            self.gateway.publish(cell, events)
        if any(e.type not in PASSIVE for e in events):
            self._dirty.add(cell.id)
            self._wake.set()

    # -- acting -------------------------------------------------------------------------

    def plan_cell(self, cell: Cell, now: float | None = None, leader: bool = False) -> list[AnyAction]:
        view = cell._view
        if view is None:
            return []
        # on NATS the cell's leader acts for agents of every host; otherwise each host for its own
        host = None if leader and self.root.nats is not None else self.host
        return plan(view, self.config, time.time() if now is None else now, host)

    # -- leadership (NATS): one daemon acts per cell, the others watch and serve reads --------

    def _leads(self, cell_id: str) -> bool:
        nats = self.root.nats
        if nats is None:
            return True
        return cell_id in self.leases

    def renew_leases(self) -> None:
        """Take or renew the lease of every cell; a lost renewal means another daemon leads it now."""
        nats = self.root.nats
        if nats is None:
            return
        for cid in list(self.watcher.cells):
            try:
                rev = nats.run(nats.lease(cid, self.host, self.config.nats_lease, self.leases.get(cid)))
            except Exception as exc:  # noqa: BLE001 - NATS away: act for nothing until it is back
                log.warning("lease of cell %s: %s", cid, exc)
                rev = None
            if rev is None:
                if self.leases.pop(cid, None) is not None:
                    log.warning("lost the lease of cell %s", cid)
            else:
                if cid not in self.leases:
                    log.info("leading cell %s", cid)
                self.leases[cid] = rev
        for cid in set(self.leases) - set(self.watcher.cells):
            del self.leases[cid]

    def release_leases(self) -> None:
        nats = self.root.nats
        if nats is None:
            return
        for cid in list(self.leases):
            with contextlib.suppress(Exception):
                nats.run(nats.release(cid, self.host))
        self.leases.clear()

    def run_pass(self, cell_ids: list[str] | None = None) -> None:
        """Plan and act on the given cells (all of them by default) until nothing more is due now."""
        for cid in cell_ids if cell_ids is not None else list(self.watcher.cells):
            cell = self.watcher.cells.get(cid)
            if cell is None:
                continue
            leader = self._leads(cid)
            for _ in range(16):  # acting appends, which may make more due (a declaration, then a restart)
                self.watcher.catch_up(cid)
                if cid in self.watcher.errors:
                    break
                actions = self.plan_cell(cell, leader=leader)
                if not leader:  # another daemon leads this cell: only stop what we ourselves run
                    actions = [a for a in actions if isinstance(a, Stop)]
                changed = [self._act(cell, a) for a in actions]  # every agent's, not only the first's
                if not any(changed):
                    break
            self._schedule_due(cell)

    def _schedule_due(self, cell: Cell) -> None:
        """Wake up exactly when a backed-off restart becomes due, not at the next tick."""
        view = cell._view
        if view is None:
            return
        loop = asyncio.get_running_loop()
        for a in view.agents.values():
            if a.phase == "dead" and a.revival == "restart" and a.revival_delay > 0:
                due = a.revival_at + a.revival_delay
                key = (cell.id, a.name)
                if due > time.time() and self._timers.get(key, (0.0,))[0] != due:
                    handle = loop.call_later(due - time.time() + 0.001, self._mark_dirty, cell.id)
                    self._timers[key] = (due, handle)

    def _mark_dirty(self, cell_id: str) -> None:
        self._dirty.add(cell_id)
        self._wake.set()

    def _act(self, cell: Cell, action: AnyAction) -> bool:
        """Carry out one action; True when the log changed."""
        try:
            if isinstance(action, Append):
                written = cell.append_many([self._with_log_tail(cell, e) for e in action.events],
                                           expected_seq=action.at_seq)
                self._on_events(cell, [w.event for w in written])
                for w in written:
                    if w.event.type == "revival.planned":
                        act = getattr(w.event, "action", "")
                        self.revivals[act] = self.revivals.get(act, 0) + 1
                return bool(written)
            if isinstance(action, Start):
                return self._start(cell, action)
            if isinstance(action, Stop):
                self._stop_agent(cell, action.agent)
                return False
        except Conflict as exc:
            log.info("cell %s: %s; planning again", cell.id, exc)
            return True  # the log moved under us: fold it and plan again
        except LazarusError as exc:
            log.error("cell %s, agent %s: %s", cell.id, action.agent, exc)
        except OSError as exc:
            log.error("cell %s, agent %s: %s", cell.id, action.agent, exc)
        return False

    @staticmethod
    def _with_log_tail(cell: Cell, e: Event) -> Event:
        """A death of a supervised process carries the end of its output: why it died, at a glance."""
        if not isinstance(e, ev.AgentDeclaredDead) or e.reason != "exited":
            return e
        try:
            with open(cell.agent_logs / f"{e.agent}.log", "rb") as f:
                f.seek(max(0, f.seek(0, os.SEEK_END) - LOG_TAIL_BYTES))
                tail = f.read().decode(errors="replace")
        except OSError:
            return e
        lines = tail.splitlines()[-LOG_TAIL_LINES:]
        return msgspec.structs.replace(e, detail={**e.detail, "log_tail": "\n".join(lines)})

    def _start(self, cell: Cell, action: Start) -> bool:
        key = (cell.id, action.agent)
        old = self.procs.get(key)
        if old is not None:
            self._stop_agent(cell, action.agent)  # the old process goes first; its exit re-plans
            return False
        view = cell.view
        a = view.agents[action.agent]

        def record(pid: int, started: float) -> None:
            drafts: list[ev.Event] = [ev.AgentSpawned(by="lazarus", agent=a.name, pid=pid, start_time=started,
                                                      host=self.host, attempt=action.attempt, resume=action.resume)]
            if action.revived:
                drafts.append(ev.AgentRevived(by="lazarus", agent=a.name, pid=pid, attempt=action.revived))
            written = cell.append_many(drafts, expected_seq=view.seq)
            self._on_events(cell, [w.event for w in written])

        proc = self.backend.spawn(cell, a, attempt=action.attempt, resume=action.resume, record=record)
        self._watch(cell, proc)
        return True

    def _watch(self, cell: Cell, proc: Proc) -> None:
        """Know of the agent's end at once: a pidfd on its shim in the event loop."""
        key = (proc.cell, proc.agent)
        self.procs[key] = proc
        fd = self.backend.watch_fd(proc)
        loop = asyncio.get_running_loop()
        if fd is None:
            loop.call_soon(self._ended, proc, None)
            return
        loop.add_reader(fd, self._ended, proc, fd)

    def _ended(self, proc: Proc, fd: int | None) -> None:
        loop = asyncio.get_running_loop()
        if fd is not None:
            loop.remove_reader(fd)
            os.close(fd)
        self.backend.reap(proc)
        key = (proc.cell, proc.agent)
        if self.procs.get(key) == proc:
            del self.procs[key]
        timer = self._stopping.pop(key, None)
        if timer is not None:
            timer.cancel()
        cell = self.watcher.cells.get(proc.cell)
        if cell is None:
            return
        # without the shim's record (adopted without its shim, or the shim was killed) the status is unknown
        seen = self.backend.read_exit(cell, proc.agent, proc.pid) or Exit(pid=proc.pid)
        self._record_exit(cell, proc.agent, seen)
        self._dirty.add(cell.id)
        self._wake.set()

    def _record_exit(self, cell: Cell, agent: str, seen: Exit) -> None:
        """Append `agent.exited` unless the log already has this pid's end."""
        try:
            view = cell.view
            a = view.agents.get(agent)
            if a is not None and a.pid == seen.pid and a.spawned_at >= a.exited_at:
                written = cell.append(ev.AgentExited(by="lazarus", agent=agent, pid=seen.pid,
                                                     returncode=seen.returncode, signal=seen.signal))
                self._on_events(cell, [w.event for w in written])
            self.backend.forget(cell, agent, seen.pid)
        except LazarusError as exc:
            log.error("cell %s: exit of %s not recorded: %s", cell.id, agent, exc)

    def _stop_agent(self, cell: Cell, agent: str) -> None:
        """SIGTERM to the group, then SIGKILL after the grace period."""
        key = (cell.id, agent)
        proc = self.procs.get(key)
        if proc is None or key in self._stopping:
            return
        if not self.backend.signal(proc, signal.SIGTERM):
            return
        loop = asyncio.get_running_loop()
        self._stopping[key] = loop.call_later(self.config.daemon.grace, self._kill, proc)

    def _kill(self, proc: Proc) -> None:
        self._stopping.pop((proc.cell, proc.agent), None)
        self.backend.signal(proc, signal.SIGKILL)

    def adopt_all(self) -> None:
        """After a restart: watch the agents spawned earlier on this host, record the ends we missed."""
        for cell in list(self.watcher.cells.values()):
            view = cell._view
            if view is None:
                continue
            for a in view.agents.values():
                if not a.command or a.host != self.host or not a.pid or a.spawned_at < a.exited_at:
                    continue
                if (cell.id, a.name) in self.procs:
                    continue
                found = self.backend.adopt(cell, a)
                if isinstance(found, Exit):
                    self._record_exit(cell, a.name, found)
                else:
                    log.info("re-adopted %s/%s pid %d", view.name, a.name, a.pid)
                    self._watch(cell, found)

    def stop_orphans(self) -> None:
        """The agents of a cell that vanished (destroyed) are killed."""
        for (cid, _), proc in list(self.procs.items()):
            if cid not in self.watcher.cells:
                self.backend.signal(proc, signal.SIGKILL)

    # -- status ---------------------------------------------------------------------------

    def status(self) -> dict[str, Any]:
        now = time.time()
        cells: dict[str, Any] = {}
        health: dict[str, int] = {}
        for cid, view in self.watcher.views().items():
            rows = agent_rows(view, self.config, now)
            for r in rows:
                health[r["health"]] = health.get(r["health"], 0) + 1
            cells[cid] = {"name": view.name, "state": view.state, "seq": view.seq,
                          "agents": {r["agent"]: r["health"] for r in rows}}
        return {
            "pid": os.getpid(), "host": self.host, "version": VERSION, "started_at": self.started_at,
            "last_tick": self.last_tick, "ticks": self.ticks, "uptime": round(now - self.started_at, 3),
            "http": (self.gateway.address or None) if self.gateway is not None else None,
            "watcher_lag": round(self.watcher.lag, 6), "cells": cells,
            "agents_by_health": health, "supervised": len(self.procs), "errors": dict(self.watcher.errors),
            "leading": sorted(self.leases) if self.root.nats is not None else None,
            "notifications": {"sent": self.notifier.sent, "failed": self.notifier.failed},
            "running": not self._stop.is_set(),
        }

    def write_status(self) -> None:
        """Every tick: a status file, replaced atomically but not fsynced (the log is what must survive)."""
        with contextlib.suppress(OSError):
            atomic_write(self.root.meta / "daemon.json", msgspec.json.encode(self.status()), durable=False)

    # -- the loop -------------------------------------------------------------------------

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()

    async def run(self, once: bool = False) -> None:
        """Until SIGTERM or SIGINT (or one pass with `once`); agents keep running when it stops."""
        if self.http and not once:
            from .gateway import Gateway

            self.gateway = Gateway(self)
            self.gateway.check_listen(self.http)  # a refusal comes before anything starts
        self.root.path.mkdir(parents=True, exist_ok=True)
        _raise_open_files()  # one open log per cell watched
        self._lock.acquire()
        loop = asyncio.get_running_loop()
        try:
            for sig in (signal.SIGTERM, signal.SIGINT):
                loop.add_signal_handler(sig, self.stop)
            self.watcher.scan()
            self.renew_leases()
            self.adopt_all()
            if self.gateway is not None:  # serving before daemon.json says "running", with the real port
                await self.gateway.start(self.http)
            self._live = True
            self.run_pass()
            self.last_tick = time.time()
            self.write_status()
            if once:
                return
            if self.announce is not None:
                self.announce(f"lazarus up: root {self.root.path}, pid {os.getpid()}, "
                              f"{len(self.watcher.cells)} cells, {len(self.procs)} agents supervised"
                              + (f", http {self.gateway.address}" if self.gateway is not None else ", no http"))
            durable = "lazarus-" + re.sub(r"[^A-Za-z0-9_-]", "_", self.host) + "-" + hashlib.sha256(
                str(self.root.path).encode()).hexdigest()[:8]
            watch = asyncio.create_task(self.watcher.run(self._stop, tick=self.config.daemon.tick, durable=durable,
                                                         debounce=self.config.daemon.debounce))
            try:
                await self._loop()
            finally:
                self._stop.set()
                await asyncio.wait_for(watch, 10)
        finally:
            for sig in (signal.SIGTERM, signal.SIGINT):
                loop.remove_signal_handler(sig)
            for _, handle in self._timers.values():
                handle.cancel()
            if self.gateway is not None and self.gateway.runner is not None:
                await self.gateway.stop()
            await self.notifier.close()
            self._stop.set()
            self.release_leases()
            self.watcher.snapshot_all()
            self.write_status()
            self._lock.release()

    async def _loop(self) -> None:
        tick = self.config.daemon.tick
        next_tick = time.monotonic() + tick
        while not self._stop.is_set():
            timeout = max(0.0, next_tick - time.monotonic())
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._wake.wait(), timeout)
            self._wake.clear()
            if self._stop.is_set():
                break
            if time.monotonic() >= next_tick:
                next_tick = time.monotonic() + tick
                self.ticks += 1
                self.last_tick = time.time()
                self._dirty.clear()
                self.renew_leases()
                self.adopt_all()  # a safety net: any start in the log without a watch gets one
                self.run_pass()
                self.write_status()
            elif self._dirty:
                dirty, self._dirty = sorted(self._dirty), set()
                self.run_pass(dirty)
            self.stop_orphans()
