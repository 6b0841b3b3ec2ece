"""Checkpoints with workspace archives, their restores, and handoffs that point at them."""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import stat
import tarfile
import zlib
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

log = logging.getLogger(__name__)

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
        os.chmod(tmp, 0o600)  # the workspace's files, private to their user whatever the umask
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
               artifacts: list[str] | None = None, checkpoint_id: str | None = None,
               incarnation: str = "") -> Appended:
    """Record a checkpoint, archiving workspace paths first; the archive goes if the append is refused.
    Inside a sandbox (`cell.remote`), the daemon archives and appends it, as the agent may not write there."""
    if cell.remote is not None:
        return cell.remote.checkpoint({"by": by, "summary": summary, "state": state, "paths": list(paths or []),
                                       "artifacts": list(artifacts or []), "checkpoint_id": checkpoint_id})
    checkpoint_id = check_ref_id("checkpoint", checkpoint_id) if checkpoint_id else new_id()
    draft = ev.CheckpointCreated(by=by, checkpoint_id=checkpoint_id, summary=summary, state=state,
                                 artifacts=list(artifacts or []), incarnation=incarnation)
    admit(cell.refresh(), draft)  # refuse early, before archiving anything
    if not paths:
        return cell.append(draft)[0]
    archive, digest = _archive(cell, checkpoint_id, paths, cell.root.config.max_archive_bytes)
    draft = msgspec.structs.replace(draft, archive=archive, sha256=digest, artifacts=draft.artifacts or list(paths))
    try:
        written = cell.append(draft)[0]
    except BaseException:
        (cell.dir / archive).unlink(missing_ok=True)
        raise
    try:  # for a restore on another host (NATS); the checkpoint is recorded either way
        cell.root.store.keep(cell.id, archive, cell.dir / archive)
    except (LazarusError, OSError) as exc:
        log.warning("cell %s: archive %s kept on this host only: %s", cell.id, archive, exc)
    return written


MAX_MEMBERS = 100_000


def _plan_members(members: list[tarfile.TarInfo], budget: int) -> list[tuple[tarfile.TarInfo, PurePosixPath]]:
    """Every member checked before anything is written: a plain relative name, a file, directory or a
    symlink that stays inside the workspace, and the unpacked total within the budget."""
    if len(members) > MAX_MEMBERS:
        raise PathEscape(f"archive holds {len(members)} members, over {MAX_MEMBERS}")
    out = []
    total = 0
    for m in members:
        rel = _check_relative(m.name, "archive member")
        rel = PurePosixPath(*[p for p in rel.parts if p != "."])
        if not rel.parts:
            continue  # "." itself: the workspace
        if not (m.isreg() or m.isdir() or m.issym()):
            raise PathEscape(f"archive member {m.name} is not a file, directory or symlink")
        if m.issym():
            link = PurePosixPath(m.linkname)
            if not m.linkname or link.is_absolute():
                raise PathEscape(f"archive member {m.name} links to an absolute path")
            # `..` only leading (the link's own directories are real ones: nothing is unpacked through a
            # link), then names going down: by induction every link of the archive resolves inside
            parts = [q for q in link.parts if q != "."]
            ups = next((n for n, q in enumerate(parts) if q != ".."), len(parts))
            if ups > len(rel.parts) - 1 or ".." in parts[ups:]:
                raise PathEscape(f"archive member {m.name} links out of the workspace (or through '..')")
        total += m.size if m.isreg() else 0
        if total > budget:
            raise TooLarge(f"archive unpacks to more than max_archive_bytes ({budget}); not restored")
        out.append((m, rel))
    return out


def _open_dir(root_fd: int, parts: tuple[str, ...], made: list[tuple[tuple[str, ...], bool]] | None) -> int:
    """The directory `parts` under the workspace, never through a symlink; made where missing (and
    noted in `made`) unless `made` is None."""
    fd = os.dup(root_fd)
    for n, part in enumerate(parts):
        if made is not None:
            try:
                os.mkdir(part, 0o755, dir_fd=fd)
                made.append((parts[:n + 1], True))
            except FileExistsError:
                pass
        try:
            nxt = os.open(part, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=fd)
        except OSError:
            os.close(fd)
            raise PathEscape(f"{'/'.join(parts)}: {part} is not a directory of the workspace (a symlink?)") from None
        os.close(fd)
        fd = nxt
    return fd


def _unpack(tar: tarfile.TarFile, plan: list[tuple[tarfile.TarInfo, PurePosixPath]], workspace: Path,
            budget: int) -> None:
    """Member by member, relative to directory descriptors with no symlink followed; bytes counted as
    they are written. On any failure what this restore created is removed again."""
    made: list[tuple[tuple[str, ...], bool]] = []  # (path, is a directory) of what this restore made
    root_fd = os.open(workspace, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
    written = 0
    try:
        for m, rel in plan:
            parent = _open_dir(root_fd, rel.parts[:-1], made)
            name = rel.parts[-1]
            try:
                if m.isdir():
                    os.close(_open_dir(root_fd, rel.parts, made))
                    continue
                with contextlib.suppress(FileNotFoundError):
                    if stat.S_ISDIR(os.stat(name, dir_fd=parent, follow_symlinks=False).st_mode):
                        raise PathEscape(f"archive member {m.name} would replace the directory {rel}")
                    os.unlink(name, dir_fd=parent)  # a link or file already there is replaced, never followed
                made.append((rel.parts, False))
                if m.issym():
                    os.symlink(m.linkname, name, dir_fd=parent)
                    continue
                fd = os.open(name, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC,
                             0o755 if m.mode & 0o111 else 0o644, dir_fd=parent)
                src = tar.extractfile(m)
                assert src is not None
                with os.fdopen(fd, "wb") as out:
                    while chunk := src.read(CHUNK):
                        written += len(chunk)
                        if written > budget:
                            raise TooLarge(f"archive unpacks to more than max_archive_bytes ({budget}); not restored")
                        out.write(chunk)
            finally:
                os.close(parent)
    except BaseException:
        for parts, is_dir in reversed(made):
            with contextlib.suppress(OSError, PathEscape):
                parent = _open_dir(root_fd, parts[:-1], None)
                try:
                    if is_dir:
                        os.rmdir(parts[-1], dir_fd=parent)  # only if this restore left it empty
                    else:
                        os.unlink(parts[-1], dir_fd=parent)
                finally:
                    os.close(parent)
        raise
    finally:
        os.close(root_fd)


def restore(cell: Cell, checkpoint_id: str, by: str = "operator") -> Appended:
    """Unpack a checkpoint's archive into the workspace after checking its hash and every member,
    trusting no tarfile filter: nothing lands outside the workspace, and nothing past the byte budget."""
    view = cell.refresh()
    cp = view.checkpoints.get(checkpoint_id)
    if cp is None:
        raise NotFound(f"no checkpoint {checkpoint_id} in cell {view.name}")
    if not cp.archive:
        raise NotFound(f"checkpoint {checkpoint_id} has no archive to restore")
    path = cell.dir / _check_relative(cp.archive, "archive path")
    if not _inside(cell.checkpoints.resolve(), path.resolve()):
        raise PathEscape(f"archive {cp.archive} is not under checkpoints/")
    if not path.is_file() and not cell.root.store.fetch(cell.id, cp.archive, path):
        raise NotFound(f"archive {cp.archive} of checkpoint {checkpoint_id} is missing")
    if _sha256(path) != cp.sha256:
        raise Refused(f"archive {cp.archive} fails its SHA-256 check (expected {cp.sha256}); not restored")
    draft = ev.CheckpointRestored(by=by, checkpoint_id=checkpoint_id)
    admit(view, draft)
    budget = cell.root.config.max_archive_bytes
    try:
        with tarfile.open(path, "r:gz") as tar:
            plan = _plan_members(tar.getmembers(), budget)
            _unpack(tar, plan, cell.workspace, budget)
    except (tarfile.TarError, EOFError, OSError, zlib.error) as exc:
        raise Refused(f"archive {cp.archive} cannot be unpacked: {exc}") from None
    tops = sorted({rel.parts[0] for _, rel in plan})
    return cell.append(msgspec.structs.replace(draft, paths=tops))[0]


def handoff(cell: Cell, by: str, to: str, checkpoint_id: str, note: str = "",
            handoff_id: str | None = None) -> Appended:
    """Pass work to another agent from an existing checkpoint."""
    handoff_id = check_ref_id("handoff", handoff_id) if handoff_id else new_id()
    return cell.append(ev.HandoffCreated(by=by, handoff_id=handoff_id, to=to, checkpoint_id=checkpoint_id,
                                         note=note))[0]
