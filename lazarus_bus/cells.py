"""Cells on disk: layout, creation, lookup, the validated append path and destruction."""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import shutil
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import msgspec

from . import events as ev
from .config import Config
from .errors import MalformedInput, NotFound, Refused
from .fold import CellView, fold, fold_all, manifest
from .log import Appended, FileLog, Head, LogBackend
from .log.file import fsync_dir
from .names import check_cell_id, check_cell_name, new_id
from .rules import admit_batch

if TYPE_CHECKING:
    from .log.nats import Nats

__all__ = ["Root", "Cell", "atomic_write", "isolation_problem"]

CELL_DIRS = ("workspace", "artifacts", "checkpoints", "logs", "logs/agents", "state")
STARTER_CONFIG = Path(__file__).with_name("data") / "lazarus.toml"


def atomic_write(path: Path, data: bytes, *, durable: bool = True) -> None:
    """Temp file + fsync + rename: readers see the old file or the new one, never half."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as fh:
            os.fchmod(fh.fileno(), 0o644)
            fh.write(data)
            fh.flush()
            if durable:
                os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


@contextlib.contextmanager
def _flock(path: Path) -> Iterator[None]:
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def isolation_problem(level: int) -> str | None:
    """Why this machine cannot give a level, or None when it can."""
    if level == 1:
        return None
    if level == 2:
        if shutil.which("bwrap") is None and shutil.which("unshare") is None:
            return "isolation level 2 needs bubblewrap (bwrap) or unshare; neither is installed on this machine"
        return ("isolation level 2 (a private mount namespace) is not supported by this version of lazarus: "
                "its process backend provides level 1")
    if level == 3:
        if shutil.which("podman") is None:
            return "isolation level 3 needs rootless Podman; `podman` is not installed on this machine"
        return "isolation level 3 (Podman) is not supported by this version of lazarus"
    return f"isolation level {level} does not exist (use 1, 2 or 3)"


class Root:
    """A missions root: cells side by side, `.lazarus/` for the daemon and the graveyard."""

    def __init__(self, path: Path, config: Config | None = None) -> None:
        self.path = Path(path)
        self.config = config or Config()
        self.meta = self.path / ".lazarus"

    def init(self) -> bool:
        """Create the root and a starter config; False when they already existed."""
        existed = (self.path / "lazarus.toml").exists()
        self.meta.mkdir(parents=True, exist_ok=True)
        (self.meta / "graveyard").mkdir(exist_ok=True)
        if not existed:
            atomic_write(self.path / "lazarus.toml", STARTER_CONFIG.read_bytes())
        return not existed

    @property
    def nats(self) -> Nats | None:
        """The shared NATS connection when the backend is `nats`."""
        if self.config.backend != "nats":
            return None
        from .log.nats import Nats

        c = self.config
        return Nats.get(c.nats_url, c.nats_stream, c.nats_replicas, c.nats_storage)

    def registry(self) -> dict[str, str]:
        """Cell id -> name, from the NATS registry (the stream is the truth, not local directories)."""
        nats = self.nats
        return nats.run(nats.cells()) if nats is not None else {}

    def cell_ids(self) -> list[str]:
        """Ids of every cell under the root (directories with a log; on NATS, the registry)."""
        if self.nats is not None:
            return sorted(self.registry())
        try:
            entries = os.listdir(self.path)
        except FileNotFoundError:
            return []
        out = []
        for name in sorted(entries):
            if name.startswith("."):
                continue
            try:
                check_cell_id(name)
            except MalformedInput:
                continue
            if (self.path / name / "logs" / "events.jsonl").is_file():
                out.append(name)
        return out

    def cells(self) -> list[Cell]:
        return [Cell(self, cid) for cid in self.cell_ids()]

    def open(self, ref: str) -> Cell:
        """A cell by id or unique name."""
        if not isinstance(ref, str) or not ref or "/" in ref or ref in (".", ".."):
            raise MalformedInput(f"bad cell reference {ref!r}")
        names = self.registry() if self.nats is not None else {cid: None for cid in self.cell_ids()}
        if ref in names:
            return Cell(self, ref)
        matches = [cid for cid, name in names.items() if (name or Cell(self, cid).name) == ref]
        if len(matches) == 1:
            return Cell(self, matches[0])
        if len(matches) > 1:
            raise Refused(f"cell name {ref!r} is ambiguous: {', '.join(matches)}")
        try:
            check_cell_name(ref)
        except MalformedInput:
            check_cell_id(ref)
        raise NotFound(f"no cell {ref!r} under {self.path}")

    def log_for(self, cell_id: str, *, create: bool = False, base: Path | None = None) -> LogBackend:
        """The configured backend for one cell's log."""
        nats = self.nats
        if nats is not None:
            from .log.nats import NatsLog

            return NatsLog(nats, cell_id, max_event_bytes=self.config.max_event_bytes)
        path = (base or self.path / cell_id) / "logs" / "events.jsonl"
        return FileLog(path, cell_id, fsync=self.config.fsync, max_event_bytes=self.config.max_event_bytes,
                       create=create)

    def create(
        self,
        name: str,
        *,
        mission: str = "",
        isolation: int = 1,
        cell_id: str | None = None,
        labels: dict[str, str] | None = None,
        policy: ev.Policy | None = None,
    ) -> Cell:
        """Provision a cell: built aside under `.lazarus/`, then renamed into place whole."""
        check_cell_name(name)
        cell_id = check_cell_id(cell_id) if cell_id else new_id()
        draft = ev.parse_draft({  # the same door as every other event
            "type": "cell.provisioned", "by": "operator", "name": name, "mission": mission,
            "labels": labels or {}, "isolation": isolation,
            "policy": msgspec.to_builtins(policy) if policy else None,
        })
        problem = isolation_problem(isolation)
        if problem:
            raise Refused(problem)
        with self._new_cell(cell_id, name) as staging:
            with self.log_for(cell_id, create=True, base=staging) as log:
                if log.head().seq:
                    raise Refused(f"cell id {cell_id} already has a log")
                written = log.append(draft, admit=lambda head, drafts: admit_batch(None, drafts, head.seq))
            view = fold_all(a.event for a in written)
            assert view is not None
            atomic_write(staging / "cell.json", _manifest_bytes(view))
        return Cell(self, cell_id)

    @contextlib.contextmanager
    def _new_cell(self, cell_id: str, name: str) -> Iterator[Path]:
        """Claim an id and a unique name, build the cell aside under `.lazarus/`, rename it into place whole."""
        self.meta.mkdir(parents=True, exist_ok=True)
        with _flock(self.meta / "cells.lock"):
            nats = self.nats
            if (self.path / cell_id).exists() or cell_id in self.registry():
                raise Refused(f"cell id {cell_id} is taken under {self.path}")
            if nats is None:
                taken = [c.id for c in self.cells() if c.name == name]
                if taken:
                    raise Refused(f"cell name {name!r} is taken (cell {taken[0]})")
            elif not nats.run(nats.register(cell_id, name)):
                raise Refused(f"cell name {name!r} is taken (in NATS stream {self.config.nats_stream})")
            staging = Path(tempfile.mkdtemp(dir=self.meta, prefix=f"new-{cell_id}."))
            try:
                for sub in CELL_DIRS:
                    (staging / sub).mkdir(parents=True, exist_ok=True)
                yield staging
                os.rename(staging, self.path / cell_id)
                fsync_dir(self.path)
            except BaseException:
                shutil.rmtree(staging, ignore_errors=True)
                if nats is not None:
                    nats.run(nats.unregister(cell_id, name))
                raise

    def import_log(self, lines: list[bytes]) -> Cell:
        """A cell from an exported log, byte for byte: verified first, refused if its id or name is taken."""
        from .replay import verify_lines

        view = verify_lines(lines)
        cell_id, name = view.id, view.name
        check_cell_id(cell_id)
        with self._new_cell(cell_id, name) as staging:
            log = self.log_for(cell_id, create=True, base=staging)
            if isinstance(log, FileLog):
                log.close()
                atomic_write(staging / "logs" / "events.jsonl", b"".join(line + b"\n" for line in lines))
            else:
                from .log.nats import NatsLog

                assert isinstance(log, NatsLog)
                log.import_lines(lines)
            atomic_write(staging / "cell.json", _manifest_bytes(view))
        return Cell(self, cell_id)

    @property
    def graveyard(self) -> Path:
        return self.meta / "graveyard"


def _manifest_bytes(view: CellView) -> bytes:
    body = manifest(view)
    body["seq"] = view.seq
    return json.dumps(body, indent=2, sort_keys=False).encode() + b"\n"


class Cell:
    """One cell: its paths, its log, and a projection kept in step with the log."""

    def __init__(self, root: Root, cell_id: str) -> None:
        self.root = root
        self.id = check_cell_id(cell_id)
        self.dir = root.path / cell_id
        self._log: LogBackend | None = None
        self._view: CellView | None = None
        if root.config.backend == "nats" and not self.dir.is_dir():
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
            self._log = self.root.log_for(self.id)
        return self._log

    def close(self) -> None:
        if self._log is not None:
            self._log.close()
            self._log = None

    @property
    def name(self) -> str:
        """The cell's name from its manifest (falling back to the log)."""
        try:
            return str(json.loads((self.dir / "cell.json").read_bytes())["name"])
        except (OSError, ValueError, KeyError):
            return self.view.name

    @property
    def view(self) -> CellView:
        """The projection as of the log's current end."""
        return self.refresh()

    def refresh(self, until: int | None = None) -> CellView:
        """Fold whatever the log gained since the last look (from a snapshot when there is one)."""
        if until is None:
            self.advance()
            if self._view is None:
                raise NotFound(f"cell {self.id} has an empty log")
            return self._view
        view = self._view
        if view is not None and view.seq > until:
            view = None
        view = fold_all(self.log.read(view.seq if view else 0, until), view)
        if view is None:
            raise NotFound(f"cell {self.id} has an empty log")
        if self._view is None or view.seq >= self._view.seq:
            self._view = view
        return view

    def advance(self) -> list[ev.Event]:
        """Read only the new complete events, fold them in, and return them."""
        if self._view is None:
            from .snapshot import load_snapshot

            self._view = load_snapshot(self)
        view = self._view
        new = list(self.log.read(view.seq if view else 0))
        self._view = fold_all(new, view)
        return new

    def replay(self, until: int | None = None) -> CellView:
        """A fresh fold from the log alone: no snapshot, no cache."""
        view = fold_all(self.log.read(0, until))
        if view is None:
            raise NotFound(f"cell {self.id} has an empty log")
        return view

    def head(self) -> Head:
        return self.log.head()

    def append(self, draft: ev.Event, *, expected_seq: int | None = None) -> list[Appended]:
        return self.append_many([draft], expected_seq=expected_seq)

    def append_many(self, drafts: Sequence[ev.Event], *, expected_seq: int | None = None) -> list[Appended]:
        """The one write path: validated against the state under the log's lock, then written."""
        before = self._view

        def admit(head: Head, todo: list[ev.Event]) -> list[ev.Event]:
            view = self.refresh(head.seq)
            return admit_batch(view, todo, head.seq)

        written = self.log.append_many(drafts, expected_seq=expected_seq, admit=admit)
        if written and not written[0].duplicate and self._view is not None and self._view.seq == written[0].seq - 1:
            view = self._view
            for a in written:
                view = fold(view, a.event)
            self._view = view
            if before is None or manifest(before) != manifest(view):
                self.write_manifest(view)
        return written

    def write_manifest(self, view: CellView | None = None) -> None:
        """`cell.json`, atomically, never replacing a newer one written by another process."""
        view = view or self.view
        if not self.dir.is_dir():
            return
        with _flock(self.state_dir / "manifest.lock"):
            try:
                on_disk = json.loads((self.dir / "cell.json").read_bytes()).get("seq", 0)
            except (OSError, ValueError):
                on_disk = 0
            if view.seq >= on_disk:
                atomic_write(self.dir / "cell.json", _manifest_bytes(view))

    def destroy(self, reason: str = "") -> int | None:
        """Append `cell.destroyed`, move the log to the graveyard, remove the rest."""
        seq = None
        if self.view.state != "destroyed":
            seq = self.append(ev.CellDestroyed(by="operator", reason=reason))[0].seq
        grave = self.root.graveyard
        grave.mkdir(parents=True, exist_ok=True)
        target = grave / f"{self.id}.jsonl"
        if target.exists():
            target = grave / f"{self.id}.{new_id()}.jsonl"
        nats = self.root.nats
        if nats is not None:  # the graveyard keeps a verified copy; then the subject and its names go
            from .log.nats import NatsLog

            name = self.view.name
            atomic_write(target, b"".join(line + b"\n" for _, line in self.log.read_raw()))
            assert isinstance(self.log, NatsLog)
            self.log.destroy()
            nats.run(nats.unregister(self.id, name))
            self.close()
            shutil.rmtree(self.dir, ignore_errors=True)
            return seq
        self.close()
        os.rename(self.dir / "logs" / "events.jsonl", target)
        torn = self.dir / "logs" / "events.torn"
        if torn.exists():
            os.rename(torn, target.with_suffix(".torn"))
        fsync_dir(grave)
        shutil.rmtree(self.dir)
        fsync_dir(self.root.path)
        return seq

    def describe(self) -> dict[str, Any]:
        """The manifest plus where things are, for `cell show`."""
        view = self.view
        body = manifest(view)
        body["seq"] = view.seq
        body["dir"] = str(self.dir)
        return body
