"""The daemon's check at start of what changed while no daemon ran, at the cost of what changed.

Sealed segments are never written again. Each one a full check found whole is recorded in the cell's
`state/sealed.json` with its size, mtime and inode; at the next start those still the same are
trusted (the chain is checked from the newest of them on: the seam, the newer segments, the active
file), and the periodic full check (`daemon.verify_every`) reads them all again in the background.
A long-lived cell's daemon starts in the time of its tail, not of its ten million events."""

from __future__ import annotations

import json
import os
from pathlib import Path

from .files import atomic_write
from .log import LogBackend
from .log.segments import Segment
from .replay import verify_log

__all__ = ["record_sealed", "verify_at_start"]

RECORD = "sealed.json"


def _stamp(seg: Segment) -> list[int]:
    st = os.stat(seg.path)
    return [st.st_size, st.st_mtime_ns, st.st_ino]


def _sealed(log: LogBackend) -> list[Segment]:
    sealed = getattr(log, "sealed", None)
    return sealed() if sealed is not None else []


def record_sealed(log: LogBackend, state_dir: Path) -> None:
    """After a full check: the sealed segments as they are now, trusted at the next start."""
    segs = _sealed(log)
    if segs and state_dir.is_dir():
        atomic_write(state_dir / RECORD, json.dumps({s.path.name: _stamp(s) for s in segs}).encode())


def verify_at_start(log: LogBackend, state_dir: Path) -> None:
    """CorruptLog at the first fault; the whole log when nothing is trusted yet."""
    segs = _sealed(log)
    try:
        known = json.loads((state_dir / RECORD).read_bytes()) if segs else {}
    except (OSError, ValueError):
        known = {}
    trusted = 0
    for seg in segs:
        if known.get(seg.path.name) != _stamp(seg):
            break
        trusted = seg.last
    if not trusted or segs[0].first > 1:  # nothing trusted, or a pruned front: its anchor needs the whole read
        verify_log(log)
    else:
        for _ in log.read_raw(trusted):  # the chain from the newest trusted segment's last line on
            pass
    record_sealed(log, state_dir)
