"""Cells on disk: layout, creation, lookup, the validated append path and destruction."""

from __future__ import annotations

import contextlib
import json
import os
import threading
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import msgspec

from . import events as ev
from .admission import admit_batch
from .config import Config
from .errors import MalformedInput, NotFound, Refused
from .files import atomic_write, flock, fsync_dir, private_dir
from .fold import AgentView, CellView, fold_all, manifest
from .log import Appended, Head, LogBackend
from .names import check_cell_id, check_cell_name, new_id
from .snapshot import load_base, load_snapshot
from .store import Store, open_store

if TYPE_CHECKING:
    from .proposal import Proposal

__all__ = ["Cell", "Observer", "Root", "isolation_problem"]

CELL_DIRS = ("workspace", "artifacts", "checkpoints", "logs", "logs/agents", "state")
STARTER_CONFIG = Path(__file__).with_name("data") / "lazarus.toml"
# told of every event as it enters a cell's projection, once, whoever appended it (under the cell's lock)
Observer = Callable[["Cell", list[ev.Event]], None]


class Remote(Protocol):
    """Where a confined agent's appends go instead of the log it may only read: the daemon's gateway
    socket ($LAZARUS_SOCKET) with its token; the daemon makes checkpoint archives for it too."""

    def append_many(self, drafts: Sequence[ev.Event], expected_seq: int | None) -> list[Appended]: ...

    def checkpoint(self, body: dict[str, Any]) -> Appended: ...


def isolation_problem(level: int) -> str | None:
    """Why this machine cannot give a level, or None when it can (found by trying it: `probe`)."""
    from . import probe

    return probe.problem(level)


class Root:
    """A missions root: cells side by side, `.lazarus/` for the daemon and the graveyard."""

    def __init__(self, path: Path, config: Config | None = None) -> None:
        self.path = Path(path)
        self.config = config or Config()
        self.meta = self.path / ".lazarus"
        self.store: Store = open_store(self.path, self.config)

    def init(self) -> bool:
        """Create the root and a starter config; False when they already existed."""
        existed = (self.path / "lazarus.toml").exists()
        private_dir(self.graveyard)
        os.chmod(self.meta, 0o700)
        if not existed:
            atomic_write(self.path / "lazarus.toml", STARTER_CONFIG.read_bytes())
        return not existed

    @property
    def graveyard(self) -> Path:
        return self.meta / "graveyard"

    def cell_ids(self) -> list[str]:
        """Ids of every cell under the root, as the store lists them."""
        return sorted(self.store.cells())

    def cells(self) -> list[Cell]:
        return [Cell(self, cid) for cid in self.cell_ids()]

    def names(self) -> dict[str, str]:
        """Cell id -> name, from the store where it keeps them, else from each cell."""
        return {cid: name if name is not None else Cell(self, cid).read_name()
                for cid, name in self.store.cells().items()}

    def open(self, ref: str) -> Cell:
        """A cell by id or unique name."""
        if not isinstance(ref, str) or not ref or "/" in ref or ref in (".", ".."):
            raise MalformedInput(f"bad cell reference {ref!r}")
        if self.store.has(ref):  # by id: one lookup
            return Cell(self, ref)
        found = self.store.find(ref)  # where the store indexes names: one lookup
        if found is not None:
            return Cell(self, found)
        matches = [cid for cid, name in self.names().items() if name == ref]
        if len(matches) == 1:
            return Cell(self, matches[0])
        if len(matches) > 1:
            raise Refused(f"cell name {ref!r} is ambiguous: {', '.join(matches)}")
        try:
            check_cell_name(ref)
        except MalformedInput:
            check_cell_id(ref)
        raise NotFound(f"no cell {ref!r} under {self.path}")

    def create(
        self,
        name: str,
        *,
        mission: str = "",
        isolation: int = 1,
        cell_id: str | None = None,
        labels: dict[str, str] | None = None,
        policy: ev.Policy | None = None,
        network: str | None = None,
        max_duration: float = 0.0,
        checkpoint_interval: float = 0.0,
        auto_archive: bool = False,
    ) -> Cell:
        """Provision a cell: built aside under `.lazarus/`, then renamed into place whole."""
        check_cell_name(name)
        cell_id = check_cell_id(cell_id) if cell_id else new_id()
        draft = ev.parse_draft({  # the same door as every other event
            "type": "cell.provisioned", "by": "operator", "name": name, "mission": mission,
            "labels": labels or {}, "isolation": isolation,
            "network": network or self.config.isolation.network,
            "policy": msgspec.to_builtins(policy) if policy else None,
            **({"max_duration": max_duration} if max_duration else {}),
            **({"checkpoint_interval": checkpoint_interval} if checkpoint_interval else {}),
            **({"auto_archive": True} if auto_archive else {}),
        })
        problem = isolation_problem(isolation)
        if problem:
            raise Refused(problem)
        with self._new_cell(cell_id, name) as staging:
            with self.store.open_log(cell_id, create=True, base=staging) as log:
                if log.head().seq:
                    raise Refused(f"cell id {cell_id} already has a log")
                written = log.append(draft, admit=lambda head, drafts: admit_batch(None, drafts, head.seq))
            view = fold_all(a.event for a in written)
            assert view is not None
            atomic_write(staging / "cell.json", _manifest_bytes(view))
        return Cell(self, cell_id)

    def create_from(self, proposal: Proposal, text: str, kept: str, *, cell_id: str | None = None,
                    labels: dict[str, str] | None = None) -> tuple[Cell, int]:
        """A mission proposal's cell (section 17): created, the proposal kept under `artifacts/`, its agents
        invited with their roles in one append; the cell and the seq of the last invitation."""
        pol = ev.Policy(max_attempts=proposal.max_attempts) if proposal.max_attempts is not None else None
        c = self.create(proposal.name, mission=proposal.mission, isolation=proposal.isolation, cell_id=cell_id,
                        labels=labels, policy=pol, network=proposal.network, max_duration=proposal.max_duration,
                        checkpoint_interval=proposal.checkpoint_interval, auto_archive=proposal.auto_archive)
        atomic_write(c.artifacts / kept, text.encode())
        written = c.append_many([ev.AgentInvited(by="operator", agent=a.name, role=a.role) for a in proposal.agents])
        return c, written[-1].seq

    @contextlib.contextmanager
    def _new_cell(self, cell_id: str, name: str) -> Iterator[Path]:
        """Claim an id and a unique name, build the cell aside under `.lazarus/`, rename it into place whole."""
        private_dir(self.meta)
        with flock(self.meta / "cells.lock"):
            if (self.path / cell_id).exists():
                raise Refused(f"cell id {cell_id} is taken under {self.path}")
            with self.store.claim(cell_id, name, self.names):
                import tempfile  # here: `lazarus heartbeat` creates no cell and needs no shutil (issue 21)

                staging = Path(tempfile.mkdtemp(dir=self.meta, prefix=f"new-{cell_id}."))
                try:
                    for sub in CELL_DIRS:
                        private_dir(staging / sub)
                    yield staging
                    staging.rename(self.path / cell_id)
                    fsync_dir(self.path)
                except BaseException:
                    import shutil

                    shutil.rmtree(staging, ignore_errors=True)
                    raise

    def import_log(self, lines: list[bytes]) -> Cell:
        """A cell from an exported log, byte for byte: verified first, refused if its id or name is taken."""
        from .replay import verify_lines

        view = verify_lines(lines)
        check_cell_id(view.id)
        with self._new_cell(view.id, view.name) as staging:
            self.store.import_lines(view.id, staging, lines)
            atomic_write(staging / "cell.json", _manifest_bytes(view))
        return Cell(self, view.id)


def _manifest_may_change(before: CellView | None, view: CellView, events: list[ev.Event]) -> bool:
    """False for heartbeats that left every field `cell.json` shows as it was: the common append skips
    building the manifest twice to compare it (issue 21: the gateway's heartbeat rate)."""
    if before is None or before.state != view.state or not all(type(e) is ev.AgentHeartbeat for e in events):
        return True
    for e in events:
        assert isinstance(e, ev.AgentHeartbeat)
        was, now = before.agents.get(e.agent), view.agents.get(e.agent)
        if was is None or now is None or _shown(was) != _shown(now):
            return True
    return False


def _shown(a: AgentView) -> tuple[object, ...]:
    """An agent's fields in `cell.json` (fold.manifest)."""
    return a.role, a.phase, a.command, a.pid, a.host, a.attempt


def _manifest_bytes(view: CellView) -> bytes:
    body = manifest(view)
    body["seq"] = view.seq
    return json.dumps(body, indent=2, sort_keys=False).encode() + b"\n"


class Cell:
    """One cell: its paths, its log, and a projection kept in step with the log.

    Every event enters the projection once, through `advance`, `refresh` or `append_many`, and each
    observer is told of it then: the one way appended events reach a daemon, whichever thread wrote them."""

    def __init__(self, root: Root, cell_id: str) -> None:
        self.root = root
        self.id = check_cell_id(cell_id)
        self.dir = root.path / cell_id
        self._log: LogBackend | None = None
        self._view: CellView | None = None
        self._lock = threading.RLock()
        self._observers: list[Observer] = []
        self._speaker: tuple[str, str] | None = None  # (agent, incarnation) of the process writing here
        self.remote: Remote | None = None  # set inside a level 2 or 3 sandbox: appends go through the socket
        if root.store.spans_hosts and not self.dir.is_dir():
            for sub in CELL_DIRS:  # a cell created on another machine: its local side, made on first use
                (self.dir / sub).mkdir(parents=True, exist_ok=True)

    # paths
    @property
    def workspace(self) -> Path:
        return self.dir / "workspace"

    @property
    def artifacts(self) -> Path:
        return self.dir / "artifacts"

    @property
    def checkpoints(self) -> Path:
        return self.dir / "checkpoints"

    @property
    def agent_logs(self) -> Path:
        return self.dir / "logs" / "agents"

    @property
    def state_dir(self) -> Path:
        return self.dir / "state"

    @property
    def log(self) -> LogBackend:
        if self._log is None:
            self._log = self.root.store.open_log(self.id)
        return self._log

    def close(self) -> None:
        if self._log is not None:
            self._log.close()
            self._log = None

    def speak_as(self, agent: str, incarnation: str) -> None:
        """What `agent` appends through this cell carries `incarnation` (the process's LAZARUS_INCARNATION),
        so a superseded copy of the agent is fenced at the door."""
        self._speaker = (agent, incarnation) if incarnation else None

    def _stamped(self, draft: ev.Event) -> ev.Event:
        speaker = self._speaker
        if speaker is None or draft.by != speaker[0] or not isinstance(draft, ev.INCARNATED):
            return draft
        return draft if getattr(draft, "incarnation", "") else msgspec.structs.replace(draft, incarnation=speaker[1])

    def observe(self, observer: Observer) -> None:
        """Tell `observer` of every event from now on, as it enters the projection."""
        self._observers.append(observer)

    def _entered(self, events: list[ev.Event]) -> None:
        for observer in self._observers:
            observer(self, events)

    @property
    def projection(self) -> CellView | None:
        """The projection as last folded: no I/O (None before the first read)."""
        return self._view

    def read_name(self) -> str:
        """The cell's name from its manifest (falling back to the log)."""
        try:
            return str(json.loads((self.dir / "cell.json").read_bytes())["name"])
        except (OSError, ValueError, KeyError):
            return self.refresh().name

    def refresh(self, until: int | None = None) -> CellView:
        """Fold whatever the log gained since the last look (from a snapshot when there is one); with
        `until`, the projection as it stood at that seq."""
        if until is None:
            self.advance()
            if self._view is None:
                raise NotFound(f"cell {self.id} has an empty log")
            return self._view
        with self._lock:
            view = self._view
            if view is not None and view.seq > until:
                return self._fresh(until)
            if view is None:
                view = self.origin()
            new = list(self.log.read(view.seq if view else 0, until))
            view = fold_all(new, view)
            if view is None:
                raise NotFound(f"cell {self.id} has an empty log")
            self._view = view
            if new:
                self._entered(new)
            return view

    def advance(self) -> list[ev.Event]:
        """Read only the new complete events, fold them in, and return them."""
        with self._lock:
            if self._view is None:
                self._view = load_snapshot(self.state_dir, self.log, self.id) or self.origin()
            view = self._view
            new = list(self.log.read(view.seq if view else 0))
            if new:
                self._view = fold_all(new, view)
                self._entered(new)
            return new

    def replay(self, until: int | None = None) -> CellView:
        """A fresh fold from the log alone: no snapshot, no cache."""
        return self._fresh(until)

    def origin(self) -> CellView | None:
        """Where a fold from nothing starts: nothing for a whole log; for one retention pruned, the base
        kept beside its segments (the projection at the last pruned seq)."""
        first_seq = getattr(self.log, "first_seq", None)
        start = first_seq() if first_seq is not None else 1
        if start <= 1:
            return None
        return load_base(self.dir / "logs" / "segments", start - 1)[0]

    def _fresh(self, until: int | None) -> CellView:
        base = self.origin()
        if base is not None and until is not None and until < base.seq:
            raise NotFound(f"cell {self.id}: events up to seq {base.seq} were pruned (see log.pruned)")
        view = fold_all(self.log.read(base.seq if base else 0, until), base)
        if view is None:
            raise NotFound(f"cell {self.id} has an empty log")
        return view

    def head(self) -> Head:
        return self.log.head()

    def append(self, draft: ev.Event, *, expected_seq: int | None = None) -> list[Appended]:
        return self.append_many([draft], expected_seq=expected_seq)

    def append_many(self, drafts: Sequence[ev.Event], *, expected_seq: int | None = None) -> list[Appended]:
        """The one write path: validated against the state under the log's lock, then written."""
        if self._speaker is not None:
            drafts = [self._stamped(d) for d in drafts]
        if self.remote is not None:
            return self.remote.append_many(drafts, expected_seq)  # the daemon takes it through this same path
        with self.log.group_commit():  # the wait for disk comes after the cell's lock: appends share a flush
            return self._append_locked(drafts, expected_seq)

    def _append_locked(self, drafts: Sequence[ev.Event], expected_seq: int | None) -> list[Appended]:
        with self._lock:
            before = self._view

            def admit(head: Head, todo: list[ev.Event]) -> list[ev.Event]:
                return admit_batch(self.refresh(head.seq), todo, head.seq)

            written = self.log.append_many(drafts, expected_seq=expected_seq, admit=admit)
            view = self._view
            if written and not written[0].duplicate and view is not None and view.seq == written[0].seq - 1:
                if before is None:  # a fresh process (the CLI): the state the append was admitted against
                    before = view
                events = [a.event for a in written]
                view = fold_all(events, view)
                assert view is not None
                self._view = view
                self._entered(events)
                if _manifest_may_change(before, view, events) and (
                        before is None or manifest(before) != manifest(view)):
                    try:
                        self.write_manifest(view)
                    except OSError as exc:  # the append happened: a disposable projection must not undo it
                        import logging  # a rare path: the CLI's appends do not import logging (issue 21)

                        logging.getLogger(__name__).warning("cell %s: cell.json not written (%s); the log has seq %d",
                                                            self.id, exc.strerror or exc, view.seq)
            return written

    def write_manifest(self, view: CellView | None = None) -> None:
        """`cell.json`, atomically, never replacing a newer one written by another process."""
        view = view or self.refresh()
        if not self.dir.is_dir():
            return
        with flock(self.state_dir / "manifest.lock"):
            try:
                on_disk = json.loads((self.dir / "cell.json").read_bytes()).get("seq", 0)
            except (OSError, ValueError):
                on_disk = 0
            if view.seq >= on_disk:
                atomic_write(self.dir / "cell.json", _manifest_bytes(view))

    def destroy(self, reason: str = "") -> int | None:
        """Append `cell.destroyed`, move the log to the graveyard, remove the rest."""
        seq = None
        view = self.refresh()
        if view.state != "destroyed":
            seq = self.append(ev.CellDestroyed(by="operator", reason=reason))[0].seq
        grave = private_dir(self.root.graveyard)
        target = grave / f"{self.id}.jsonl"
        if target.exists():
            target = grave / f"{self.id}.{new_id()}.jsonl"
        self.root.store.bury(self.id, view.name, self.log, self.dir, target)
        self._log = None
        return seq

    def describe(self) -> dict[str, Any]:
        """The manifest plus where things are, for `cell show`."""
        view = self.refresh()
        body = manifest(view)
        body["seq"] = view.seq
        body["dir"] = str(self.dir)
        return body
