"""Disposable snapshots of a cell's projection, so a restart folds the tail, not the whole log."""

from __future__ import annotations

import hashlib
import os
from functools import cache
from pathlib import Path

import msgspec

from .errors import CorruptLog, LazarusError
from .files import atomic_write
from .fold import PROJECTION_VERSION, CellView
from .log import LogBackend

__all__ = ["Snapshot", "bases", "load_base", "load_snapshot", "save_base", "save_snapshot"]

class Snapshot(msgspec.Struct, frozen=True, kw_only=True):
    """A projection and the seq (and event id) it covers."""

    version: int
    seq: int
    last_id: str
    view: CellView


@cache
def _decoder() -> msgspec.json.Decoder[Snapshot]:
    """Built when a snapshot is first read: `lazarus heartbeat` in a cell without one never needs it (issue 21)."""
    return msgspec.json.Decoder(Snapshot)


def _warn(message: str, *args: object) -> None:
    import logging  # a rare path: `lazarus heartbeat` does not import logging (issue 21)

    logging.getLogger(__name__).warning(message, *args)


def load_snapshot(state_dir: Path, log_: LogBackend, cell_id: str) -> CellView | None:
    """The snapshot's view, or None when it is missing, corrupt, outdated or not of this log."""
    path = state_dir / "projection.json"
    try:
        snap = _decoder().decode(path.read_bytes())
    except FileNotFoundError:
        return None
    except (OSError, msgspec.DecodeError, msgspec.ValidationError, UnicodeDecodeError) as exc:
        _warn("ignoring snapshot %s: %s", path, exc)
        return None
    why = None
    if snap.version != PROJECTION_VERSION:
        why = f"projection version {snap.version}, expected {PROJECTION_VERSION}"
    elif snap.view.seq != snap.seq or snap.view.last_id != snap.last_id or snap.view.id != cell_id:
        why = "inconsistent"
    else:
        try:
            at = next(log_.read(snap.seq - 1, snap.seq), None)
        except LazarusError as exc:
            at, why = None, str(exc)
        if at is None:
            why = why or f"covers seq {snap.seq}, beyond the log"
        elif at.id != snap.last_id:
            why = f"seq {snap.seq} is event {at.id} in the log, not {snap.last_id}"
    if why:
        _warn("ignoring snapshot %s: %s", path, why)
        return None
    return snap.view


def save_snapshot(state_dir: Path, view: CellView) -> None:
    """Write the snapshot atomically; it is only ever a cache of the log."""
    snap = Snapshot(version=PROJECTION_VERSION, seq=view.seq, last_id=view.last_id, view=view)
    atomic_write(state_dir / "projection.json", msgspec.json.encode(snap))


# -- bases of pruned logs (DESIGN section 19) ----------------------------------------------
# Retention drops a log's oldest sealed segments; the projection at the last dropped seq is kept beside
# the segments as `base-<seq>.json`, so a fresh replay folds from it. Unlike projection.json it is no
# cache: it stands for the events that are gone, and `log.pruned` names its SHA-256.


def save_base(segments_dir: Path, view: CellView) -> str:
    """Write the base at `view.seq` (atomically, on disk before the prune that needs it); its SHA-256."""
    data = msgspec.json.encode(Snapshot(version=PROJECTION_VERSION, seq=view.seq, last_id=view.last_id, view=view))
    atomic_write(segments_dir / f"base-{view.seq}.json", data)
    return hashlib.sha256(data).hexdigest()


def bases(segments_dir: Path) -> dict[int, Path]:
    """seq -> the base at it."""
    try:
        names = os.listdir(segments_dir)
    except FileNotFoundError:
        return {}
    out = {}
    for name in names:
        if name.startswith("base-") and name.endswith(".json") and name[5:-5].isdigit():
            out[int(name[5:-5])] = segments_dir / name
    return out


def load_base(segments_dir: Path, at_least: int) -> tuple[CellView, str]:
    """The newest base covering at least `at_least` (the seq before a pruned log's first event), with its
    SHA-256; a pruned log without one cannot be folded: CorruptLog. Fields only ever gain defaults, so a
    base written by an older version decodes (its version is not held against it)."""
    found = [(seq, path) for seq, path in bases(segments_dir).items() if seq >= at_least]
    if not found:
        raise CorruptLog(f"{segments_dir}: the log starts at seq {at_least + 1}, but no base-<seq>.json "
                         "holds the projection of the pruned events before it")
    seq, path = min(found)
    data = path.read_bytes()
    try:
        snap = _decoder().decode(data)
    except (msgspec.DecodeError, msgspec.ValidationError) as exc:
        raise CorruptLog(f"{path}: unreadable base of a pruned log: {exc}") from None
    return snap.view, hashlib.sha256(data).hexdigest()
