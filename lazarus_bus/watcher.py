"""Keep every cell's projection in step with its log, woken by the store within milliseconds."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time

from .cells import Cell, Observer, Root
from .errors import CorruptLog, LazarusError, NotFound
from .events import Event
from .fold import CellView
from .replay import verify_log
from .snapshot import save_snapshot

__all__ = ["Watcher"]

log = logging.getLogger(__name__)

SNAPSHOT_EVERY = 1000  # events folded since the last snapshot


class Watcher:
    """Cells under a root and their projections; `run` follows the store's wake-ups."""

    def __init__(self, root: Root, observer: Observer | None = None) -> None:
        self.root = root
        self.cells: dict[str, Cell] = {}
        self.observer = observer
        self.lag = 0.0  # seconds from the newest event's ts to its fold
        self.errors: dict[str, str] = {}
        self.corrupt: dict[str, str] = {}  # sticky: a corrupt log stays so until the daemon restarts
        self._snapped: dict[str, int] = {}

    def views(self) -> dict[str, CellView]:
        """The current projection of every readable cell."""
        return {cid: v for cid, c in self.cells.items() if (v := c.projection) is not None}

    def scan(self) -> bool:
        """Notice cells created and destroyed; True when the set changed."""
        ids = set(self.root.cell_ids())
        gone = self.cells.keys() - ids
        for cid in gone:
            self.cells.pop(cid).close()
            self.errors.pop(cid, None)
            self.corrupt.pop(cid, None)
            self._snapped.pop(cid, None)
        added = ids - self.cells.keys()
        for cid in sorted(added):
            cell = self.cells[cid] = Cell(self.root, cid)
            cell.observe(self._entered)
            self.catch_up(cid)
        return bool(gone or added)

    def _entered(self, cell: Cell, events: list[Event]) -> None:
        """Every event of a watched cell, once, whoever appended it and from whichever thread."""
        self.lag = max(0.0, time.time() - events[-1].ts)
        if self.observer is not None:
            self.observer(cell, events)
        if events[-1].seq - self._snapped.get(cell.id, 0) >= SNAPSHOT_EVERY:
            self.snapshot(cell.id)

    def catch_up(self, cell_id: str) -> list[Event]:
        """Fold a cell's new complete lines; a vanished cell is dropped, a corrupt one reported."""
        cell = self.cells.get(cell_id)
        if cell is None:
            return []
        if cell_id in self.corrupt:
            return []  # nothing more is folded from a log known to be corrupt
        try:
            new = cell.advance()
        except NotFound:
            self.cells.pop(cell_id).close()
            return []
        except CorruptLog as exc:
            self.mark_corrupt(cell_id, str(exc))
            return []
        except (LazarusError, OSError) as exc:
            if self.errors.get(cell_id) != str(exc):
                log.error("cell %s: %s", cell_id, exc)
            self.errors[cell_id] = str(exc)
            return []
        self.errors.pop(cell_id, None)
        return new

    def mark_corrupt(self, cell_id: str, why: str) -> None:
        if cell_id not in self.corrupt:
            log.error("cell %s is corrupt: %s; nothing more is done for it until it is repaired", cell_id, why)
        self.corrupt[cell_id] = self.errors[cell_id] = why

    def verify(self, cell_id: str) -> str | None:
        """The whole chain of a cell's log checked again, on its own reader (safe in a worker thread):
        what folding new lines cannot see, a line edited in the middle. The fault, or None."""
        cell = self.cells.get(cell_id)
        if cell is None:
            return None
        try:
            with self.root.store.open_log(cell_id) as log_:
                verify_log(log_)
        except CorruptLog as exc:
            return str(exc)
        except (LazarusError, OSError):
            return None  # gone or unreadable for now: the next look says more
        return None

    def catch_up_all(self) -> None:
        for cid in list(self.cells):
            self.catch_up(cid)

    def snapshot(self, cell_id: str) -> None:
        """Write a cell's snapshot (best effort: it is only a cache)."""
        cell = self.cells.get(cell_id)
        view = cell.projection if cell is not None else None
        if cell is None or view is None:
            return
        try:
            save_snapshot(cell.state_dir, view)
            self._snapped[cell_id] = view.seq
        except OSError as exc:
            log.warning("cell %s: snapshot not written: %s", cell_id, exc)

    def snapshot_all(self) -> None:
        for cid, view in self.views().items():
            if view.seq != self._snapped.get(cid):
                self.snapshot(cid)

    async def run(self, stop: asyncio.Event, tick: float = 1.0, consumer: str = "lazarus",
                  debounce: float = 0.008) -> None:
        """Follow until `stop`: fold the cells the store says changed, and re-check the root every `tick`."""
        self.root.path.mkdir(parents=True, exist_ok=True)
        self.scan()
        wakeups = self.root.store.wakeups(stop, self.cells.keys, tick=tick, debounce=debounce, consumer=consumer)
        try:
            async with contextlib.aclosing(wakeups):
                async for wake in wakeups:
                    if wake.rescan:
                        self.scan()
                    if not wake.cells:
                        self.catch_up_all()  # belt and braces: a missed notification costs one tick
                    for cid in wake.cells:
                        self.catch_up(cid)
                    if stop.is_set():
                        break
        finally:
            self.snapshot_all()
