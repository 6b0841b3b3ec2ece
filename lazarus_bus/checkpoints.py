"""Checkpoints with workspace archives, their restores, and handoffs that point at them."""

from __future__ import annotations

import hashlib
import os
import tarfile
from collections.abc import Iterator
from pathlib import Path, PurePosixPath
from typing import Any

import msgspec

from . import events as ev
from .admission import admit
from .cells import Cell
from .errors import LazarusError, NotFound, Refused, TooLarge
from .files import fsync_dir
from .log import Appended
from .names import check_ref_id, new_id

__all__ = ["PathEscape", "checkpoint", "handoff", "restore"]

CHUNK = 1 << 20


class PathEscape(Refused):
    """A path that would read or write outside the cell's workspace."""


def _inside(base: Path, target: Path) -> bool:
    return target == base or base in target.parents


def _check_relative(raw: str, what: str) -> PurePosixPath:
    """A workspace-relative path: not absolute, no `..`, not empty."""
    p = PurePosixPath(raw)
    if not raw or p.is_absolute() or ".." in p.parts or raw.startswith("~"):
        raise PathEscape(f"{what} {raw!r} must be relative to the workspace, without '..'")
    return p


def _walk(workspace: Path, rel: PurePosixPath) -> Iterator[Path]:
    """Every file, directory and link under one requested path, refusing anything that leads out."""
    real_ws = workspace.resolve()
    start = workspace / rel
    if not start.exists() and not start.is_symlink():
        raise NotFound(f"no {rel} in the workspace")
    stack = [start]
    while stack:
        path = stack.pop()
        if path.is_symlink():
            target = (path.parent / os.readlink(path)).resolve()
            if not _inside(real_ws, target):
                raise PathEscape(f"{path.relative_to(workspace)} is a symlink out of the workspace (to {target})")
            yield path
            continue
        if not _inside(real_ws, path.resolve()):
            raise PathEscape(f"{path.relative_to(workspace)} leads out of the workspace")
        yield path
        if path.is_dir():
            stack.extend(sorted(path.iterdir(), reverse=True))


def _archive(cell: Cell, checkpoint_id: str, paths: list[str], limit: int) -> tuple[str, str]:
    """Write `checkpoints/<id>.tar.gz` of the workspace paths; returns (relative path, sha256)."""
    members: list[Path] = []
    total = 0
    for raw in paths:
        for path in _walk(cell.workspace, _check_relative(raw, "checkpoint path")):
            members.append(path)
            if path.is_file() and not path.is_symlink():
                total += path.stat().st_size
    if total > limit:
        raise TooLarge(f"checkpoint paths hold {total} bytes, over max_archive_bytes ({limit})")
    cell.checkpoints.mkdir(parents=True, exist_ok=True)
    final = cell.checkpoints / f"{checkpoint_id}.tar.gz"
    if final.exists():
        raise Refused(f"checkpoint archive {final.name} already exists")
    tmp = cell.checkpoints / f".{checkpoint_id}.{os.getpid()}.tmp"
    try:
        with tarfile.open(tmp, "w:gz") as tar:
            seen: set[Path] = set()
            for path in members:
                if path not in seen:
                    seen.add(path)
                    tar.add(path, arcname=str(path.relative_to(cell.workspace)), recursive=False)
        size = tmp.stat().st_size
        if size > limit:
            raise TooLarge(f"checkpoint archive is {size} bytes, over max_archive_bytes ({limit})")
        digest = _sha256(tmp)
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.rename(tmp, final)
        fsync_dir(cell.checkpoints)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return f"checkpoints/{final.name}", digest


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(CHUNK):
            h.update(chunk)
    return h.hexdigest()


def checkpoint(cell: Cell, by: str, *, summary: str = "", state: Any = None, paths: list[str] | None = None,
               artifacts: list[str] | None = None, checkpoint_id: str | None = None) -> Appended:
    """Record a checkpoint, archiving workspace paths first; the archive goes if the append is refused."""
    checkpoint_id = check_ref_id("checkpoint", checkpoint_id) if checkpoint_id else new_id()
    draft = ev.CheckpointCreated(by=by, checkpoint_id=checkpoint_id, summary=summary, state=state,
                                 artifacts=list(artifacts or []))
    admit(cell.refresh(), draft)  # refuse early, before archiving anything
    if not paths:
        return cell.append(draft)[0]
    archive, digest = _archive(cell, checkpoint_id, paths, cell.root.config.max_archive_bytes)
    draft = msgspec.structs.replace(draft, archive=archive, sha256=digest, artifacts=draft.artifacts or list(paths))
    try:
        return cell.append(draft)[0]
    except BaseException:
        (cell.dir / archive).unlink(missing_ok=True)
        raise


def _check_member(workspace: Path, m: tarfile.TarInfo) -> None:
    """A member lands inside the workspace, and a link inside it points inside it too."""
    rel = _check_relative(m.name, "archive member")
    real_ws = workspace.resolve()
    if not (m.isfile() or m.isdir() or m.issym()):
        raise PathEscape(f"archive member {m.name} is not a file, directory or symlink")
    dest = (workspace / rel).resolve()
    if not _inside(real_ws, dest):
        raise PathEscape(f"archive member {m.name} would land outside the workspace")
    if m.issym():
        if os.path.isabs(m.linkname):
            raise PathEscape(f"archive member {m.name} links to an absolute path")
        target = ((workspace / rel).parent / m.linkname).resolve()
        if not _inside(real_ws, target):
            raise PathEscape(f"archive member {m.name} links out of the workspace")


def restore(cell: Cell, checkpoint_id: str, by: str = "operator") -> Appended:
    """Unpack a checkpoint's archive into the workspace after checking its hash and every member."""
    view = cell.refresh()
    cp = view.checkpoints.get(checkpoint_id)
    if cp is None:
        raise NotFound(f"no checkpoint {checkpoint_id} in cell {view.name}")
    if not cp.archive:
        raise NotFound(f"checkpoint {checkpoint_id} has no archive to restore")
    path = cell.dir / _check_relative(cp.archive, "archive path")
    if not _inside(cell.checkpoints.resolve(), path.resolve()):
        raise PathEscape(f"archive {cp.archive} is not under checkpoints/")
    if not path.is_file():
        raise NotFound(f"archive {cp.archive} of checkpoint {checkpoint_id} is missing")
    if _sha256(path) != cp.sha256:
        raise Refused(f"archive {cp.archive} fails its SHA-256 check (expected {cp.sha256}); not restored")
    draft = ev.CheckpointRestored(by=by, checkpoint_id=checkpoint_id)
    admit(view, draft)
    try:
        with tarfile.open(path, "r:gz") as tar:
            members = tar.getmembers()
            for m in members:
                _check_member(cell.workspace, m)
            tar.extractall(cell.workspace, members=members, filter="data")
    except (tarfile.TarError, EOFError, OSError) as exc:
        if isinstance(exc, LazarusError):
            raise
        raise Refused(f"archive {cp.archive} cannot be unpacked: {exc}") from None
    tops = sorted({PurePosixPath(m.name).parts[0] for m in members if PurePosixPath(m.name).parts})
    return cell.append(msgspec.structs.replace(draft, paths=tops))[0]


def handoff(cell: Cell, by: str, to: str, checkpoint_id: str, note: str = "",
            handoff_id: str | None = None) -> Appended:
    """Pass work to another agent from an existing checkpoint."""
    handoff_id = check_ref_id("handoff", handoff_id) if handoff_id else new_id()
    return cell.append(ev.HandoffCreated(by=by, handoff_id=handoff_id, to=to, checkpoint_id=checkpoint_id,
                                         note=note))[0]
