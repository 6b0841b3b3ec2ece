"""Rebuilding and checking from the log alone."""

from __future__ import annotations

import hashlib
from collections.abc import Callable

from .events import ZERO_HASH
from .fold import CellView, fold
from .log import LogBackend

__all__ = ["verify_log", "replay_log"]


def verify_log(log: LogBackend) -> tuple[int, str]:
    """Every line decodes, seqs run 1..N, the chain holds: (N, SHA-256 of the last line)."""
    count, last = 0, b""
    for _, line in log.read_raw(0):
        count += 1
        last = line
    return count, hashlib.sha256(last).hexdigest() if count else ZERO_HASH


def replay_log(log: LogBackend, until: int | None = None,
               progress: Callable[[int], None] | None = None) -> CellView | None:
    """A fresh fold of the log, up to `until`; `progress` hears the seq every 10,000 events."""
    view: CellView | None = None
    for event in log.read(0, until):
        view = fold(view, event)
        if progress is not None and not event.seq % 10_000:
            progress(event.seq)
    return view
