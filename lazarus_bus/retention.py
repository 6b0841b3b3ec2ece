"""Retention (DESIGN section 19): a long-lived cell's oldest sealed segments dropped, behind a base
snapshot and a `log.pruned` anchor, never past work still open."""

from __future__ import annotations

import hashlib
import json
import os
import time
from pathlib import Path

import msgspec

from . import events as ev
from .cells import Cell
from .config import RetentionConfig
from .files import fsync_dir
from .fold import CellView, fold_all
from .log.segments import Segment, last_line, listed
from .snapshot import bases, save_base

__all__ = ["Pruned", "keep_from", "prunable", "prune"]


class Pruned(msgspec.Struct, frozen=True):
    """What one prune did."""

    through_seq: int
    segments: int
    seq: int  # of the log.pruned it appended


def keep_from(view: CellView) -> int:
    """The oldest seq that open work still needs: running agents' newest checkpoints, handoffs not
    accepted (and their checkpoints), effects in doubt, approvals not decided. Nothing before it goes."""
    need = [view.seq + 1]
    running = {a.name for a in view.agents.values() if a.phase == "running"}
    newest: dict[str, int] = {}
    for c in view.checkpoints.values():
        if c.by in running:
            newest[c.by] = max(newest.get(c.by, 0), c.seq)
    need.extend(newest.values())
    for h in view.handoffs.values():
        if not h.accepted:
            need.append(h.seq)
            cp = view.checkpoints.get(h.checkpoint_id) if h.checkpoint_id else None
            if cp is not None:
                need.append(cp.seq)
    need.extend(e.seq for e in view.effects.values() if e.status == "started")
    need.extend(a.seq for a in view.approvals.values() if not a.decided_by and not a.decided_at)
    return min(need)


def _last_ts(seg: Segment) -> float:
    line = last_line(seg.path)
    return float(json.loads(line).get("ts", 0.0)) if line else 0.0


def prunable(sealed: list[Segment], policy: RetentionConfig, keep: int, now: float) -> list[Segment]:
    """The oldest segments the policy lets go: past the newest `keep_segments`, or older than `max_age`;
    a prefix of the log, and all of it before `keep`."""
    out: list[Segment] = []
    for i, seg in enumerate(sealed):
        surplus = policy.keep_segments > 0 and i < len(sealed) - policy.keep_segments
        old = policy.max_age > 0 and _last_ts(seg) < now - policy.max_age
        if not (surplus or old) or seg.last >= keep:
            break
        out.append(seg)
    return out


def prune(cell: Cell, policy: RetentionConfig, now: float | None = None) -> Pruned | None:
    """Drop what the policy lets go: base snapshot on disk, then `log.pruned`, then the files. A crash
    anywhere leaves a log that verifies; the next prune finishes what one before it began."""
    log = cell.log
    sealed_of = getattr(log, "sealed", None)
    if sealed_of is None:  # retention is for the file backend: NATS keeps its own limits
        return None
    segments_dir = cell.dir / "logs" / "segments"
    view = cell.refresh()
    _finish(segments_dir, view.pruned_through)
    if not policy.keep_segments and not policy.max_age:
        return None
    drop = prunable(sealed_of(), policy, keep_from(view), time.time() if now is None else now)
    if not drop:
        return None
    through = drop[-1].last
    base = _view_at(cell, through)
    digest = save_base(segments_dir, base)
    line = last_line(drop[-1].path)
    assert line is not None
    appended = cell.append(ev.LogPruned(by="lazarus", through_seq=through,
                                        through_hash=hashlib.sha256(line).hexdigest(), snapshot_sha256=digest))[0]
    _finish(segments_dir, through)
    return Pruned(through, len(drop), appended.seq)


def _view_at(cell: Cell, seq: int) -> CellView:
    """The projection at `seq`, folded from the newest base before it (or from the start)."""
    origin = cell.origin()
    view = fold_all(cell.log.read(origin.seq if origin else 0, seq), origin)
    assert view is not None and view.seq == seq
    return view


def _finish(segments_dir: Path, through: int) -> None:
    """Remove the segments a `log.pruned` through `through` covers (oldest first) and the bases before its own."""
    if not through:
        return
    removed = False
    for seg in listed(segments_dir):
        if seg.last > through:
            break
        os.unlink(seg.path)
        removed = True
    kept = bases(segments_dir)
    for seq, path in kept.items():
        if seq < through and through in kept:
            os.unlink(path)
            removed = True
    if removed:
        fsync_dir(segments_dir)

