"""Disposable snapshots of a cell's projection, so a restart folds the tail, not the whole log."""

from __future__ import annotations

import logging
from pathlib import Path

import msgspec

from .errors import LazarusError
from .files import atomic_write
from .fold import PROJECTION_VERSION, CellView
from .log import LogBackend

__all__ = ["Snapshot", "load_snapshot", "save_snapshot"]

log = logging.getLogger(__name__)


class Snapshot(msgspec.Struct, frozen=True, kw_only=True):
    """A projection and the seq (and event id) it covers."""

    version: int
    seq: int
    last_id: str
    view: CellView


_decoder = msgspec.json.Decoder(Snapshot)


def load_snapshot(state_dir: Path, log_: LogBackend, cell_id: str) -> CellView | None:
    """The snapshot's view, or None when it is missing, corrupt, outdated or not of this log."""
    path = state_dir / "projection.json"
    try:
        snap = _decoder.decode(path.read_bytes())
    except FileNotFoundError:
        return None
    except (OSError, msgspec.DecodeError, msgspec.ValidationError, UnicodeDecodeError) as exc:
        log.warning("ignoring snapshot %s: %s", path, exc)
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
        log.warning("ignoring snapshot %s: %s", path, why)
        return None
    return snap.view


def save_snapshot(state_dir: Path, view: CellView) -> None:
    """Write the snapshot atomically; it is only ever a cache of the log."""
    snap = Snapshot(version=PROJECTION_VERSION, seq=view.seq, last_id=view.last_id, view=view)
    atomic_write(state_dir / "projection.json", msgspec.json.encode(snap))
