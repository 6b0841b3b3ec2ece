"""The agent's side: a few lines to join a cell, heartbeat in the background, checkpoint and hand off."""

from __future__ import annotations

import contextlib
import hashlib
import http.client
import json
import os
import signal
import socket
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from types import FrameType, TracebackType
from typing import Any

import msgspec

from . import events as ev
from .budget import refuse_over, spend_row
from .cells import Cell, Root
from .checkpoints import checkpoint, handoff, restore
from .config import resolve
from .effects import is_in_doubt, next_attempt
from .errors import (
    BudgetExceeded,
    Conflict,
    CorruptLog,
    EffectDone,
    Fenced,
    Forbidden,
    InDoubt,
    LazarusError,
    MalformedInput,
    NotFound,
    Refused,
    TooLarge,
)
from .log import Appended
from .names import check_agent, check_ref_id
from .resume import agent_packet, checkpoint_packet, resume_packet

__all__ = ["FENCED_EXIT", "Agent", "BudgetExceeded", "InDoubt", "SocketRemote", "args_sha256", "connect",
           "use_socket"]

FENCED_EXIT = 75  # EX_TEMPFAIL: this copy stopped because another runs


def connect(cell: str | None = None, agent: str | None = None, *, root: str | os.PathLike[str] | None = None,
            heartbeat: float | None = None) -> Agent:
    """An agent of a cell, from arguments or the LAZARUS_* environment the daemon sets."""
    cell = cell or os.environ.get("LAZARUS_CELL")
    agent = agent or os.environ.get("LAZARUS_AGENT")
    if not cell or not agent:
        raise MalformedInput("connect() needs a cell and an agent (or LAZARUS_CELL and LAZARUS_AGENT)")
    path, config = resolve(str(root) if root is not None else os.environ.get("LAZARUS_ROOT"), None)
    opened = Root(path, config).open(cell)
    if agent == os.environ.get("LAZARUS_AGENT") and opened.id == os.environ.get("LAZARUS_CELL", opened.id):
        opened.speak_as(agent, os.environ.get("LAZARUS_INCARNATION", ""))  # the process the daemon started
        use_socket(opened)
    return Agent(opened, check_agent(agent), heartbeat=heartbeat)


class _UnixConnection(http.client.HTTPConnection):
    """HTTP/1.1 over the daemon's Unix socket."""

    def __init__(self, path: str, timeout: float) -> None:
        super().__init__("localhost", timeout=timeout)
        self.path = path

    def connect(self) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(self.timeout)
        sock.connect(self.path)
        self.sock = sock


_STATUS: dict[int, type[LazarusError]] = {400: MalformedInput, 401: Forbidden, 403: Forbidden, 404: NotFound,
                                          409: Refused, 413: TooLarge, 422: MalformedInput, 500: CorruptLog}


class SocketRemote:
    """A confined agent's way to append (DESIGN section 15): the gateway's Unix socket with the
    per-incarnation token, so the daemon writes what the agent may not, and names it as the token says."""

    def __init__(self, cell: str, path: str, token: str, timeout: float = 30.0) -> None:
        self.cell, self.path, self.token, self.timeout = cell, path, token, timeout

    def request(self, method: str, url: str, body: dict[str, Any] | None = None) -> Any:
        conn = _UnixConnection(self.path, self.timeout)
        try:
            conn.request(method, url, body=msgspec.json.encode(body) if body is not None else None,
                         headers={"Authorization": f"Bearer {self.token}", "Content-Type": "application/json"})
            resp = conn.getresponse()
            raw = resp.read()
        except OSError as exc:
            raise LazarusError(f"the daemon's socket {self.path}: {exc.strerror or exc}") from None
        finally:
            conn.close()
        try:
            data = json.loads(raw) if raw else {}
        except ValueError:
            data = {"error": raw.decode(errors="replace")}
        if resp.status >= 400:
            message = str(data.get("error", resp.reason)) if isinstance(data, dict) else resp.reason
            if message.startswith("fenced:"):
                raise Fenced(message)
            if resp.status == 409 and ("seq" in message or "conflict" in message):
                raise Conflict(message)
            raise _STATUS.get(resp.status, LazarusError)(message)
        return data

    def append_many(self, drafts: Sequence[ev.Event], expected_seq: int | None) -> list[Appended]:
        out = []
        for n, draft in enumerate(drafts):
            body = {k: v for k, v in msgspec.to_builtins(draft).items() if k not in ev.ASSIGNED}
            if n == 0 and expected_seq is not None:
                body["expected_seq"] = expected_seq
            got = self.request("POST", f"/cells/{self.cell}/events", body)
            event = msgspec.structs.replace(draft, id=got["id"], seq=got["seq"], cell=self.cell)
            out.append(Appended(seq=got["seq"], event=event, duplicate=bool(got.get("duplicate"))))
        return out

    def checkpoint(self, body: dict[str, Any]) -> Appended:
        got = self.request("POST", f"/cells/{self.cell}/checkpoints", body)
        event = ev.decode_event(msgspec.json.encode(got["event"]))
        return Appended(seq=got["seq"], event=event, duplicate=bool(got.get("duplicate")))


def use_socket(cell: Cell) -> Cell:
    """Inside a sandbox the daemon set up ($LAZARUS_SOCKET and $LAZARUS_TOKEN, for this cell): append
    through the socket, as the log is read-only here."""
    path, token = os.environ.get("LAZARUS_SOCKET"), os.environ.get("LAZARUS_TOKEN")
    if path and token and cell.id == os.environ.get("LAZARUS_CELL"):
        cell.remote = SocketRemote(cell.id, path, token)
    return cell


def args_sha256(args: tuple[Any, ...], kwargs: dict[str, Any]) -> str:
    """What an effect was called with, as a hash for the ledger (arguments JSON cannot hold go by repr)."""
    body = msgspec.json.encode({"args": list(args), "kwargs": kwargs}, enc_hook=repr, order="sorted")
    return hashlib.sha256(body).hexdigest()


def _recorded(result: Any) -> Any:
    """A result as the ledger keeps it (JSON; anything else by repr), so a first call and a repeat agree."""
    return msgspec.json.decode(msgspec.json.encode(result, enc_hook=repr))


@contextlib.contextmanager
def _fencing() -> Iterator[None]:
    """Told it is fenced (a newer incarnation of this agent runs), the process stops itself at once:
    a stale copy can neither write nor keep running."""
    try:
        yield
    except Fenced as exc:
        with contextlib.suppress(OSError):
            os.write(2, f"lazarus: {exc}\n".encode())
        os._exit(FENCED_EXIT)


class Agent:
    """One agent's handle on its cell; as a context manager it joins, heartbeats and stops cleanly."""

    def __init__(self, cell: Cell, name: str, *, heartbeat: float | None = None) -> None:
        self.cell = cell
        self.name = name
        self.cycle = 0
        self.status = ""
        invited = cell.refresh().agents.get(name)
        self.interval = heartbeat or (invited.heartbeat_interval if invited else 0) or 5.0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()  # one append at a time from this process's threads
        self._effects = threading.RLock()
        self._old_term: Any = None
        self.errors = 0

    # -- presence -----------------------------------------------------------------------

    def join(self) -> int:
        return self._append(ev.AgentJoined(by=self.name, agent=self.name, pid=os.getpid(), host=socket.gethostname()))

    def leave(self, reason: str = "") -> int:
        return self._append(ev.AgentLeft(by=self.name, agent=self.name, reason=reason))

    def heartbeat(self, status: str | None = None, cycle: int | None = None) -> int:
        """One heartbeat now; `cycle` is progress, so advance it when work moves."""
        if status is not None:
            self.status = status
        if cycle is not None:
            self.cycle = cycle
        return self._append(ev.AgentHeartbeat(by=self.name, agent=self.name, pid=os.getpid(), cycle=self.cycle,
                                              status=self.status))

    def progress(self, status: str | None = None) -> int:
        """Count one unit of work done (the background heartbeat reports it)."""
        self.cycle += 1
        if status is not None:
            self.status = status
        return self.cycle

    def start_heartbeat(self) -> None:
        """Heartbeat every `interval` seconds from a daemon thread until `stop_heartbeat`."""
        if self._thread is not None:
            return
        self._stop.clear()
        self._thread = threading.Thread(target=self._beat, name=f"lazarus-heartbeat-{self.name}", daemon=True)
        self._thread.start()

    def stop_heartbeat(self) -> None:
        self._stop.set()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout=5)
        self._thread = None

    def _beat(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                self.heartbeat()
            except Fenced:
                return  # _append has already stopped the process
            except (LazarusError, OSError):
                self.errors += 1  # keep trying: a late heartbeat is better than a dead thread

    # -- the bus ------------------------------------------------------------------------

    def publish(self, topic: str, payload: Any = None, to: str | None = None) -> int:
        return self._append(ev.BusMessage(by=self.name, topic=topic, payload=payload, to=to))

    def checkpoint(self, summary: str = "", state: Any = None, paths: list[str] | None = None) -> str:
        """Record where the work stands (archiving workspace paths); returns the checkpoint id."""
        with self._lock, _fencing():
            a = checkpoint(self.cell, self.name, summary=summary, state=state, paths=paths)
        return a.event.checkpoint_id  # type: ignore[attr-defined, no-any-return]

    def restore(self, checkpoint_id: str) -> list[str]:
        """Put the checkpoint's archived workspace paths back as they were; returns what was unpacked."""
        with self._lock, _fencing():
            a = restore(self.cell, checkpoint_id, self.name)
        return a.event.paths  # type: ignore[attr-defined, no-any-return]

    def handoff(self, to: str, checkpoint_id: str, note: str = "") -> str:
        with self._lock, _fencing():
            a = handoff(self.cell, self.name, to, checkpoint_id, note)
        return a.event.handoff_id  # type: ignore[attr-defined, no-any-return]

    def accept(self, handoff_id: str) -> dict[str, Any]:
        """Take up a handoff addressed to this agent; returns its resume packet."""
        if not self.cell.refresh().handoffs[handoff_id].accepted:
            self._append(ev.HandoffAccepted(by=self.name, handoff_id=handoff_id))
        return resume_packet(self.cell.refresh(), handoff_id, self.cell.root.config, time.time())

    def resume(self) -> dict[str, Any] | None:
        """What `LAZARUS_RESUME` points at: a resume packet, a checkpoint (each with what this agent did and
        spent), the latter alone when the agent has a ledger or spend but no checkpoint, else None (a fresh start)."""
        pointer = os.environ.get("LAZARUS_RESUME", "")
        kind, _, ref = pointer.partition(":")
        view = self.cell.refresh()
        if kind == "handoff" and ref in view.handoffs:
            return self.accept(ref)
        mine = agent_packet(view, self.cell.root.config, self.name, time.time())
        if kind == "checkpoint" and ref in view.checkpoints:
            return {"checkpoint": checkpoint_packet(view.checkpoints[ref]), **mine}
        a = view.agents.get(self.name)
        if any(e.agent == self.name for e in view.effects.values()) or (a is not None and (a.cost or a.calls)):
            return {"checkpoint": None, **mine}
        return None

    # -- effects and budgets ----------------------------------------------------------------

    def effect(self, effect_id: str, fn: Callable[..., Any], *args: Any, idempotent: bool = False,
               verify: Callable[[str], Any] | None = None, **kwargs: Any) -> Any:
        """Run `fn(*args, **kwargs)` at most once per `effect_id`, across crashes and revivals: a completed id
        returns its recorded result without calling `fn`. One left in doubt (started by an incarnation that
        is gone, no outcome) is settled by `verify(effect_id)` when given (None: it did not happen, so `fn`
        runs; anything else is its result), run again only when `idempotent` (with `idempotency_key`),
        else raises InDoubt. `fn`'s exception is recorded as `effect.failed`, retryable when it says so
        (`exc.retryable`) or is a TimeoutError or ConnectionError, and raised again."""
        check_ref_id("effect id", effect_id)
        if idempotent:
            kwargs = {**kwargs, "idempotency_key": effect_id}
        with self._effects:  # one effect at a time per process: a thread racing itself cannot run one twice
            view = self.cell.refresh()
            old = view.effects.get(effect_id)
            if old is not None and old.status == "completed":
                return old.result
            if old is not None and old.status == "started" and is_in_doubt(view, old):
                if verify is not None:
                    found = verify(effect_id)
                    if found is not None:
                        result = _recorded(found)
                        self._append(ev.EffectResolved(by=self.name, effect_id=effect_id, outcome="completed",
                                                       result=result, note="verified by the agent"))
                        return result
                    self._append(ev.EffectResolved(by=self.name, effect_id=effect_id, outcome="retry",
                                                   note="verified by the agent: it did not happen"))
                elif idempotent:
                    self._append(ev.EffectResolved(by=self.name, effect_id=effect_id, outcome="retry",
                                                   note="idempotent: run again with its idempotency key"))
                else:
                    raise InDoubt(f"effect {effect_id} of agent {self.name} was started at seq {old.seq} by an "
                                  "incarnation that is gone, with no outcome: it may have happened. Pass verify= "
                                  "or idempotent=True, or settle it with `lazarus effects resolve`", effect_id)
                view = self.cell.refresh()
            try:
                self._append(ev.EffectStarted(by=self.name, agent=self.name, effect_id=effect_id,
                                              name=getattr(fn, "__name__", ""),
                                              args_sha256=args_sha256(args, kwargs),
                                              attempt=next_attempt(view, effect_id)))
            except EffectDone as done:
                return done.result
            try:
                value = fn(*args, **kwargs)
            except Exception as exc:
                retryable = bool(getattr(exc, "retryable", isinstance(exc, (TimeoutError, ConnectionError))))
                self._append(ev.EffectFailed(by=self.name, effect_id=effect_id, error=f"{type(exc).__name__}: {exc}",
                                             retryable=retryable))
                raise
            result = _recorded(value)
            self._append(ev.EffectCompleted(by=self.name, effect_id=effect_id, result=result))
            return result

    def usage(self, *, tokens_in: int = 0, tokens_out: int = 0, cost: float = 0.0, calls: int = 1) -> dict[str, Any]:
        """Report what was just spent (increments, finite and non-negative); returns the spend against caps."""
        self._append(ev.AgentUsage(by=self.name, agent=self.name, tokens_in=tokens_in, tokens_out=tokens_out,
                                   cost=cost, calls=calls))
        return self.spend()

    def spend(self) -> dict[str, Any]:
        """This agent's spend across every incarnation, its caps and what is left."""
        view = self.cell.refresh()
        return spend_row(view, self.cell.root.config, view.agents[self.name], time.time())

    def reserve(self, *, cost: float = 0.0, tokens: int = 0) -> None:
        """Fail closed: raise BudgetExceeded before a call that would cross a cap (or once one is reached)."""
        if ev.non_finite(cost, "cost") or cost < 0 or tokens < 0:
            raise MalformedInput("reserve() takes finite, non-negative amounts")
        refuse_over(self.cell.refresh(), self.cell.root.config, self.name, time.time(), cost=cost, tokens=tokens)

    @property
    def workspace(self) -> Path:
        return self.cell.workspace

    def _append(self, draft: ev.Event) -> int:
        with self._lock, _fencing():
            return self.cell.append(draft)[0].seq

    def record(self, drafts: Sequence[ev.Event]) -> list[Appended]:
        """Append events this agent wrote as one batch (a framework adapter's), fenced like its other writes."""
        with self._lock, _fencing():
            return self.cell.append_many(drafts)

    # -- lifetime -----------------------------------------------------------------------

    def __enter__(self) -> Agent:
        self.join()
        self.start_heartbeat()
        if threading.current_thread() is threading.main_thread():
            self._old_term = signal.signal(signal.SIGTERM, self._on_term)
        return self

    def _on_term(self, signum: int, frame: FrameType | None) -> None:
        raise SystemExit(128 + signum)  # unwinds through __exit__, so the heartbeat stops

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        self.stop_heartbeat()
        invited = self.cell.refresh().agents.get(self.name)
        if kind is None and invited is not None and not invited.command and invited.phase != "left":
            with contextlib.suppress(LazarusError):
                self.leave("completed")  # unsupervised and done: not a death (the daemon says so for the others)
        if self._old_term is not None:
            signal.signal(signal.SIGTERM, self._old_term)
        self.cell.close()
