"""`lazarus up`: the watcher, planner, executor and gateway in one event loop, one daemon per root."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import os
import re
import resource
import signal
import socket
import threading
import time
from collections import deque
from collections.abc import Callable
from importlib.metadata import version as _pkg_version
from typing import Any

import msgspec

from . import cgroups, probe
from . import events as ev
from .anchors import Anchors
from .backends.process import ProcessBackend
from .backends.sandbox import SOCKET_NAME, socket_dir
from .cells import Cell, Root
from .console import install as install_console
from .errors import CorruptLog, LazarusError
from .events import Event
from .executor import Executor
from .files import atomic_write
from .fold import CellView
from .gateway import Gateway
from .health import agent_rows
from .leadership import Leadership, Renewal, new_instance
from .narrate import describe, fields
from .notify import Notifier
from .outside import Outside
from .planner import AnyAction, Start, Stop, plan
from .probes import ProbeSpec, change, fill, managed, spec_of
from .retention import prune
from .rootlock import RootLock
from .sdnotify import Notify
from .startcheck import record_sealed, verify_at_start
from .watcher import Watcher

__all__ = ["Daemon"]

log = logging.getLogger(__name__)
actions = logging.getLogger("lazarus.actions")  # `up -v`: one line per action the log records
VERSION = _pkg_version("lazarus-pit")
KEEP_TICKS = 10  # retention and anchors every this many ticks (DESIGN section 19)
# events that can never make an action due (a heartbeat only ever keeps an agent alive): the tick covers them
PASSIVE: frozenset[type[Event]] = frozenset({ev.AgentHeartbeat, ev.BusMessage, ev.CheckpointCreated,
                                             ev.CheckpointRestored, ev.TaskCreated, ev.TaskUpdated})
# the events on which agents another manager runs are stopped or started (Daemon._follow_managed)
_CUES = (ev.CellFrozen, ev.CellArchived, ev.CellDestroyed, ev.CellThawed, ev.AgentLeft, ev.AgentUpdated)


def _raise_open_files() -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = hard if hard != resource.RLIM_INFINITY else 1 << 20
    if soft != resource.RLIM_INFINITY and soft < want:
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))


class Daemon:
    """Watch every cell, plan on every change and every tick, act through the executor."""

    def __init__(self, root: Root, *, host: str | None = None, http: str | None = None,
                 on_event: Callable[[Cell, Event], None] | None = None,
                 announce: Callable[[str], None] | None = None) -> None:
        self.root = root
        self.config = root.config
        self.host = host or socket.gethostname()
        self.http = self.config.http.listen if http is None else http
        self.notifier = Notifier(self.config.notify)
        self.watcher = Watcher(root, self._observed)
        self._named: dict[str, str] = {}  # cell name -> id, as the gateway's paths name cells
        self.anchors = Anchors(self.config.audit)
        self._keeping: asyncio.Task[None] | None = None
        iso = self.config.isolation
        probe.reset()  # what each isolation level needs is probed again at each daemon start
        cgroups.settle()  # on cgroup v2, into a leaf of its own cgroup, so agents can have theirs
        self.socket_dir = socket_dir(root.path)
        backend = ProcessBackend(self.host, self.config.daemon.grace, passthrough=iso.env_passthrough,
                                 limits=dict(iso.limits), socket_dir=self.socket_dir,
                                 hide=(self.config.http.tokens_file,) if self.config.http.tokens_file else (),
                                 log_max_bytes=self.config.logs.max_bytes, log_keep=self.config.logs.keep)
        self.instance = new_instance(self.host)
        self.leadership = Leadership(root.store, self.instance, ttl=self.config.nats_lease,
                                     fence_after=self.config.daemon.fence_after, grace=self.config.daemon.grace)
        self.executor = Executor(backend, grace=self.config.daemon.grace, cells=self.watcher.cells.get,
                                 on_exit=self._mark_dirty, epoch=self.leadership.epoch, may_act=self._may_act)
        self.executor.command_timeout = self.config.resurrection.command_timeout
        self.outside: Outside | None = None  # probes and other managers' commands, off the loop (section 17)
        self._probe_tokens: dict[tuple[str, str], str] = {}
        self.on_event = on_event
        self.systemd = Notify()
        self.announce = announce
        self.started_at = time.time()
        self.last_tick = 0.0
        self.ticks = 0
        self.appended: dict[str, int] = {}
        self._lock = RootLock(root.meta)
        self._stop = asyncio.Event()
        self._dirty: set[str] = set()
        self._wake = asyncio.Event()
        self._live = False  # past the first scan: events now are news, worth notifying
        self._timers: dict[tuple[str, str], tuple[float, asyncio.TimerHandle]] = {}
        self._inbox: deque[tuple[Cell, list[Event]]] = deque()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._loop_thread = threading.get_ident()
        self.gateway: Gateway | None = None

    # -- events in: every event of a watched cell once, whichever thread appended it ----------

    def _observed(self, cell: Cell, events: list[Event]) -> None:
        """Called under the cell's lock, in seq order; handled on the loop, in the same order."""
        self._inbox.append((cell, events))
        if threading.get_ident() == self._loop_thread or self._loop is None:
            self._drain()
        else:
            self._loop.call_soon_threadsafe(self._drain)

    def _drain(self) -> None:
        while self._inbox:
            cell, events = self._inbox.popleft()
            self._on_events(cell, events)

    def _on_events(self, cell: Cell, events: list[Event]) -> None:
        now = time.time()
        for e in events:
            self.appended[e.type] = self.appended.get(e.type, 0) + 1
            if self._live:
                if isinstance(e, ev.RevivalApprovalRequested):  # in the daemon's terminal even without -v
                    log.warning("approval needed in cell %s: %s", cell.id, e.message)
                self._narrate(cell, e)
                self._follow_managed(cell, e)
                self.notifier.offer(e, now)
                if self.on_event is not None:
                    self.on_event(cell, e)
        if self.gateway is not None:
            self.gateway.publish(cell.id, events)
        if any(type(e) not in PASSIVE for e in events):
            self._mark_dirty(cell.id)

    def _narrate(self, cell: Cell, e: Event) -> None:
        """The action in one human line (INFO, so `up -v` shows it; `--log-json` adds the event's fields)."""
        if not actions.isEnabledFor(logging.INFO):
            return
        view = cell.projection
        line = describe(view.name if view is not None else cell.id, e)
        if line is not None:
            actions.info(line, extra={"lazarus": fields(cell.id, e)})

    def _mark_dirty(self, cell_id: str) -> None:
        self._dirty.add(cell_id)
        self._wake.set()

    # -- what the gateway reads (gateway.Served) ------------------------------------------

    def agent_token(self, digest: str) -> tuple[str, str, str] | None:
        return self.executor.backend.token_identity(digest)

    def cell(self, ref: str) -> Cell | None:
        """A watched cell by id or name (a name seen before is one lookup, not a read of every manifest)."""
        found = self.watcher.cells.get(ref)
        if found is not None:
            return found
        named = self.watcher.cells.get(self._named.get(ref, ""))
        if named is not None and named.projection is not None and named.projection.name == ref:
            return named
        found = self.watcher.cells.get(self.root.open(ref).id)
        if found is not None:
            self._named[ref] = found.id
        return found

    def views(self) -> dict[str, CellView]:
        return self.watcher.views()

    @property
    def corrupt(self) -> dict[str, str]:
        """Cells whose log failed a check: shown as corrupt, acted on no more."""
        return self.watcher.corrupt

    @property
    def lag(self) -> float:
        return self.watcher.lag

    @property
    def revivals(self) -> dict[str, int]:
        return self.executor.revivals

    # -- acting -------------------------------------------------------------------------

    def plan_cell(self, cell: Cell, now: float | None = None, leader: bool = False) -> list[AnyAction]:
        view = cell.projection
        if view is None:
            return []
        # where cells span hosts, the cell's leader acts for agents of every host; otherwise each host for its own
        host = None if leader and self.root.store.spans_hosts else self.host
        return plan(view, self.config, time.time() if now is None else now, host)

    # -- leadership: one daemon acts per cell (on one host the root's pid lock is the lease) ----

    def renew_leases(self) -> None:
        """Take or renew the lease of every cell, here and now (at start)."""
        self.apply_leases(self.leadership.renew(list(self.watcher.cells)))

    async def renew_leases_off_loop(self) -> None:
        """The same from a worker thread: a slow store never stalls the loop, and the deadline of each
        lease counts from when its renewal was sent."""
        loop = asyncio.get_running_loop()
        self.apply_leases(await loop.run_in_executor(None, self.leadership.renew, list(self.watcher.cells)))

    def apply_leases(self, renewals: list[Renewal]) -> None:
        taken, fence = self.leadership.apply(renewals)
        self.leadership.keep_only(self.watcher.cells)
        for cid in fence:  # another daemon leads it, or may soon: what runs here for it stops now
            stopped = self.executor.stop_all(cid)
            if stopped:
                log.warning("cell %s: no longer leading it; stopping %s", cid, ", ".join(stopped))
        for cid in taken:
            self._elected(cid)

    def _elected(self, cid: str) -> None:
        """A lease taken: `leader.elected` before any decision; a takeover holds every start back."""
        cell = self.watcher.cells.get(cid)
        if cell is None:
            return
        epoch = self.leadership.epoch(cid)
        try:
            previous = cell.refresh()
            cell.append(ev.LeaderElected(by="lazarus", instance=self.instance, host=self.host, epoch=epoch))
        except LazarusError as exc:
            log.warning("cell %s: lease taken but leader.elected refused (%s); not leading it", cid, exc)
            self.leadership.drop(cid)
            return
        log.info("leading cell %s (epoch %d)", cid, epoch)
        if previous.leader and previous.leader != self.instance and any(
                a.command and a.pid and a.spawned_at >= a.exited_at for a in previous.agents.values()):
            self.leadership.hold_starts(cid)
            log.info("cell %s: taken over from %s; no start for %g s, while it stops its agents", cid,
                     previous.leader, self.config.daemon.fence_after + self.config.daemon.grace)

    def _may_act(self, cell_id: str) -> bool:
        return self.leadership.leads(cell_id) or not self.root.store.spans_hosts

    def release_leases(self) -> None:
        self.leadership.release_all()

    def run_pass(self, cell_ids: list[str] | None = None) -> None:
        """Plan and act on the given cells (all of them by default) until nothing more is due now."""
        for cid in cell_ids if cell_ids is not None else list(self.watcher.cells):
            cell = self.watcher.cells.get(cid)
            if cell is None:
                continue
            if cid in self.watcher.corrupt:
                self.notifier.alert(cid, "corrupt", self.watcher.corrupt[cid])
                continue
            leader = self.leadership.leads(cid)
            view = cell.projection
            # acting appends, which makes more due (a declaration, then a restart; the next agent's plan)
            for _ in range(16 + 4 * len(view.agents if view else ())):
                self.watcher.catch_up(cid)
                if cid in self.watcher.errors:
                    break
                actions = self.plan_cell(cell, leader=leader)
                if not leader:  # another daemon leads this cell: only stop what we ourselves run
                    actions = [a for a in actions if isinstance(a, Stop)]
                elif not self.leadership.may_start(cid):  # a takeover: the previous holder stops first
                    actions = [a for a in actions if not isinstance(a, Start)]
                if not self.executor.carry_out(cell, actions):
                    break
            self._schedule_due(cell)
        self.sync_probes()

    # -- probes of agents that do not know Lazarus (section 17) ----------------------------

    def sync_probes(self) -> None:
        """Probe every agent with a probe that is invited or running in a cell this daemon acts for; a new
        start (or a changed probe) begins its probing afresh."""
        if self.outside is None:
            return
        wanted: dict[tuple[str, str], tuple[str, ProbeSpec]] = {}
        for cid, cell in self.watcher.cells.items():
            view = cell.projection
            if view is None or cid in self.watcher.corrupt or view.state not in ("provisioned", "active"):
                continue
            if self.root.store.spans_hosts and not self.leadership.leads(cid):
                continue
            for a in view.agents.values():
                if a.phase not in ("invited", "running") or a.held or (a.command and a.host not in ("", self.host)):
                    continue
                try:
                    spec = spec_of(a, cell=view.name, host=self.host)
                except LazarusError:
                    continue
                if spec is not None:
                    token = f"{a.session_seq}:{a.spawns}:{a.deaths}:{msgspec.json.encode(spec).decode()}"
                    wanted[(cid, a.name)] = (token, spec)
        self._probe_tokens = {key: token for key, (token, _) in wanted.items()}
        self.outside.sync(wanted, self._probe_report)

    def _follow_managed(self, cell: Cell, e: Event) -> None:
        """Agents another manager runs stop and start with their cell (`--stop-cmd`, `--start-cmd`), as the
        daemon's own agents do: on the transition, seen live."""
        if not isinstance(e, _CUES):
            return  # most events (a heartbeat) start or stop nobody: no walk over the cell's agents
        view = cell.projection
        if view is None or not self._may_act(cell.id):
            return
        agents = [a for a in view.agents.values() if managed(a)]
        todo: list[tuple[str, list[str], str]] = []
        if isinstance(e, (ev.CellFrozen, ev.CellArchived, ev.CellDestroyed)):
            todo = [("stop", a.stop_cmd, a.name) for a in agents if a.phase != "left"]
        elif isinstance(e, ev.CellThawed):
            todo = [("start", a.start_cmd, a.name) for a in agents if a.phase != "left" and not a.held]
        elif isinstance(e, ev.AgentLeft) and e.reason != "completed":
            todo = [("stop", a.stop_cmd, a.name) for a in agents if a.name == e.agent]
        elif isinstance(e, ev.AgentUpdated) and e.run in ("stop", "start"):
            todo = [(e.run, a.stop_cmd if e.run == "stop" else a.start_cmd, a.name) for a in agents
                    if a.name == e.agent]
        for kind, argv, name in todo:
            if argv:
                host = view.agents[name].host or self.host
                self.executor.run_managed(cell, name, kind, fill(argv, cell=view.name, agent=name, host=host))

    def _probe_report(self, cid: str, agent: str, token: str, ok: bool, failures: int,
                      detail: dict[str, Any]) -> None:
        """From the outside thread: the result, handled on the loop."""
        if self._loop is not None and not self._loop.is_closed():
            self._loop.call_soon_threadsafe(self._probed, cid, agent, token, ok, failures, detail)

    def _probed(self, cid: str, agent: str, token: str, ok: bool, failures: int, detail: dict[str, Any]) -> None:
        """A probe's result: appended when it changes what the log says (changes only)."""
        if self._probe_tokens.get((cid, agent)) != token or self._stop.is_set():
            return  # a probe of a start that is over
        cell = self.watcher.cells.get(cid)
        if cell is None or not self._may_act(cid):
            return
        try:
            a = cell.refresh().agents.get(agent)
            e = change(a, ok, failures, detail) if a is not None else None
            if e is not None:
                cell.append(self.executor.stamped(cell, e))
        except LazarusError as exc:
            log.warning("cell %s, agent %s: probe result not recorded: %s", cid, agent, exc)

    def _schedule_due(self, cell: Cell) -> None:
        """Wake up exactly when a backed-off restart becomes due, not at the next tick."""
        view = cell.projection
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

    # -- checking what was folded before --------------------------------------------------

    def _verify_now(self) -> None:
        """At start: each cell's chain, trusting sealed segments checked whole before (startcheck)."""
        for cid, cell in list(self.watcher.cells.items()):
            try:
                with self.root.store.open_log(cid) as log_:
                    verify_at_start(log_, cell.state_dir)
            except CorruptLog as exc:
                self.watcher.mark_corrupt(cid, str(exc))
            except (LazarusError, OSError):
                pass  # gone or unreadable for now: the watcher says more

    async def _verify_in_background(self) -> None:
        """Every `verify_every`: the whole chain of each cell again, in a worker thread, cell by cell."""
        loop = asyncio.get_running_loop()
        for cid in list(self.watcher.cells):
            if self._stop.is_set():
                return
            why = await loop.run_in_executor(None, self.watcher.verify, cid)
            if why is not None and cid in self.watcher.cells:
                self.watcher.mark_corrupt(cid, why)
                self._mark_dirty(cid)
            elif why is None and cid in self.watcher.cells:  # checked whole: its sealed segments are trusted at start
                await loop.run_in_executor(None, self._record_sealed, cid)

    def _record_sealed(self, cid: str) -> None:
        cell = self.watcher.cells.get(cid)
        if cell is None:
            return
        with contextlib.suppress(LazarusError, OSError), self.root.store.open_log(cid) as log_:
            record_sealed(log_, cell.state_dir)

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
        for cid, why in self.watcher.corrupt.items():
            cells[cid] = {**cells.get(cid, {}), "state": "corrupt", "error": why}
        return {
            "pid": os.getpid(), "host": self.host, "version": VERSION, "started_at": self.started_at,
            "last_tick": self.last_tick, "ticks": self.ticks, "uptime": round(now - self.started_at, 3),
            "http": (self.gateway.address or None) if self.gateway is not None else None,
            "watcher_lag": round(self.watcher.lag, 6), "cells": cells,
            "agents_by_health": health, "supervised": len(self.executor.procs), "errors": dict(self.watcher.errors),
            "corrupt": sorted(self.watcher.corrupt),
            "instance": self.instance,
            "store_error": self.root.store.trouble or None,
            "leading": self.leadership.leading() if self.root.store.spans_hosts else None,
            "notifications": {"sent": self.notifier.sent, "failed": self.notifier.failed},
            "probing": self.outside.probing if self.outside is not None else 0,
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
        self._loop, self._loop_thread = asyncio.get_running_loop(), threading.get_ident()
        if not once:  # the agents' socket is served even without HTTP: confined agents append through it
            self.gateway = Gateway(self, self.config)
            install_console(self.gateway)  # the web console at /ui, on the same app and tokens
            if self.http:
                self.gateway.check_listen(self.http)  # a refusal comes before anything starts
        self.root.path.mkdir(parents=True, exist_ok=True)
        self.socket_dir.mkdir(mode=0o700, parents=True, exist_ok=True)  # bound into level 2 and 3 agents
        _raise_open_files()  # one open log per cell watched
        self._lock.acquire()
        loop = self._loop
        try:
            for sig in (signal.SIGTERM, signal.SIGINT):
                loop.add_signal_handler(sig, self.stop)
            self.watcher.scan()
            self._verify_now()  # a log edited while no daemon ran is caught before anything is done for it
            self.renew_leases()
            h = cgroups.hierarchy()
            if h is not None and not self.root.store.spans_hosts:  # before any spawn: what a killed daemon
                for cid in self.watcher.cells:  # left (on NATS another root's daemon here may be spawning)
                    cgroups.sweep(h, cid)
            self.executor.adopt(c for cid, c in self.watcher.cells.items() if cid not in self.watcher.corrupt)
            if self.gateway is not None:  # serving before daemon.json says "running", with the real port
                await self.gateway.start_unix(self.socket_dir / SOCKET_NAME)
                if self.http:
                    await self.gateway.start(self.http)
            self._live = True
            if not once:
                self.outside = self.executor.outside = Outside()
            self.run_pass()
            self.last_tick = time.time()
            self.write_status()
            if once:
                return
            self.systemd.ready(f"supervising {len(self.executor.procs)} agents in {len(self.watcher.cells)} cells")
            if self.announce is not None:
                self.announce(f"lazarus up: root {self.root.path}, pid {os.getpid()}, "
                              f"{len(self.watcher.cells)} cells, {len(self.executor.procs)} agents supervised"
                              + (f", http {self.gateway.address}" if self.gateway is not None and self.gateway.address
                                 else ", no http"))
            consumer = "lazarus-" + re.sub(r"[^A-Za-z0-9_-]", "_", self.host) + "-" + hashlib.sha256(
                str(self.root.path).encode()).hexdigest()[:8]
            watch = asyncio.create_task(self.watcher.run(self._stop, tick=self.config.daemon.tick, consumer=consumer,
                                                         debounce=self.config.daemon.debounce))
            try:
                await self._loop_until_stopped()
            finally:
                self._stop.set()
                await asyncio.wait_for(watch, 10)
        finally:
            for sig in (signal.SIGTERM, signal.SIGINT):
                loop.remove_signal_handler(sig)
            if not once:
                self.systemd.stopping()
            for _, handle in self._timers.values():
                handle.cancel()
            if self.gateway is not None and self.gateway.runner is not None:
                await self.gateway.stop()
            await self.notifier.close()
            self._stop.set()
            if self.outside is not None:
                await asyncio.get_running_loop().run_in_executor(None, self.outside.close)
            self.release_leases()
            self.watcher.snapshot_all()
            self.write_status()
            self._lock.release()

    async def _loop_until_stopped(self) -> None:
        tick = self.config.daemon.tick
        next_tick = time.monotonic() + tick
        every = self.config.daemon.verify_every
        next_verify = time.monotonic() + every
        verifying: asyncio.Task[None] | None = None
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
                await self.renew_leases_off_loop()
                self.executor.adopt(self.watcher.cells.values())  # a safety net: any start without a watch gets one
                for cell in self.watcher.cells.values():  # after a pause, a reconnect or a restart too
                    stale = self.executor.superseded(cell)
                    if stale:
                        log.warning("cell %s: %s started again elsewhere; stopping the copy here", cell.id,
                                    ", ".join(stale))
                self.run_pass()
                self.write_status()
                self.systemd.alive()  # from the loop itself: a hung loop stops the pings
                if self.ticks % KEEP_TICKS == 0:
                    self._keep()
                if every > 0 and time.monotonic() >= next_verify and (verifying is None or verifying.done()):
                    next_verify = time.monotonic() + every
                    verifying = asyncio.create_task(self._verify_in_background())
            elif self._dirty:
                dirty, self._dirty = sorted(self._dirty), set()
                self.run_pass(dirty)
            self.executor.kill_orphans(self.watcher.cells)
        if verifying is not None:
            await verifying
        if self._keeping is not None:
            await self._keeping

    def _keep(self) -> None:
        """Retention and anchors (DESIGN section 19), every few ticks, off the loop: a prune folds and
        deletes files, an anchor runs a command."""
        if self._keeping is not None and not self._keeping.done():
            return
        self._keeping = asyncio.create_task(self._keep_in_background())

    async def _keep_in_background(self) -> None:
        policy = self.config.retention
        if policy.keep_segments or policy.max_age:
            for cell in list(self.watcher.cells.values()):
                try:
                    done = await asyncio.to_thread(prune, cell, policy)
                except (LazarusError, OSError) as exc:
                    log.warning("cell %s: retention: %s", cell.id, exc)
                    continue
                if done is not None:
                    log.info("cell %s: pruned %d segments through seq %d (log.pruned at %d)", cell.id,
                             done.segments, done.through_seq, done.seq)
        await self.anchors.publish_due(list(self.watcher.cells.values()))
