"""Keep every cell's projection in step with its log, woken by watchfiles within milliseconds."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from pathlib import Path

import watchfiles

from .cells import Cell, Root
from .errors import LazarusError, NotFound
from .events import Event
from .fold import CellView
from .snapshot import save_snapshot

__all__ = ["Watcher"]

log = logging.getLogger(__name__)

OnEvents = Callable[[Cell, list[Event]], None]
SNAPSHOT_EVERY = 1000  # events folded since the last snapshot


class Watcher:
    """Cells under a root and their projections; `run` follows the root and each cell's `logs/`."""

    def __init__(self, root: Root, on_events: OnEvents | None = None) -> None:
        self.root = root
        self.cells: dict[str, Cell] = {}
        self.on_events = on_events
        self.lag = 0.0  # seconds from the newest event's ts to its fold
        self.errors: dict[str, str] = {}
        self._snapped: dict[str, int] = {}

    def views(self) -> dict[str, CellView]:
        """The current projection of every readable cell."""
        return {cid: c._view for cid, c in self.cells.items() if c._view is not None}

    def scan(self) -> bool:
        """Notice cells created and destroyed; True when the set changed."""
        ids = set(self.root.cell_ids())
        gone = self.cells.keys() - ids
        for cid in gone:
            self.cells.pop(cid).close()
            self.errors.pop(cid, None)
            self._snapped.pop(cid, None)
        added = ids - self.cells.keys()
        for cid in sorted(added):
            self.cells[cid] = Cell(self.root, cid)
            self.catch_up(cid)
        return bool(gone or added)

    def catch_up(self, cell_id: str) -> list[Event]:
        """Fold a cell's new complete lines; a vanished cell is dropped, a corrupt one reported."""
        cell = self.cells.get(cell_id)
        if cell is None:
            return []
        try:
            new = cell.advance()
        except NotFound:
            self.cells.pop(cell_id).close()
            return []
        except (LazarusError, OSError) as exc:
            if self.errors.get(cell_id) != str(exc):
                log.error("cell %s: %s", cell_id, exc)
            self.errors[cell_id] = str(exc)
            return []
        self.errors.pop(cell_id, None)
        if new:
            self.lag = max(0.0, time.time() - new[-1].ts)
            if self.on_events is not None:
                self.on_events(cell, new)
            if new[-1].seq - self._snapped.get(cell_id, 0) >= SNAPSHOT_EVERY:
                self.snapshot(cell_id)
        return new

    def catch_up_all(self) -> None:
        for cid in list(self.cells):
            self.catch_up(cid)

    def snapshot(self, cell_id: str) -> None:
        """Write a cell's snapshot (best effort: it is only a cache)."""
        cell = self.cells.get(cell_id)
        if cell is None or cell._view is None:
            return
        try:
            save_snapshot(cell, cell._view)
            self._snapped[cell_id] = cell._view.seq
        except OSError as exc:
            log.warning("cell %s: snapshot not written: %s", cell_id, exc)

    def snapshot_all(self) -> None:
        for cid in list(self.cells):
            view = self.cells[cid]._view
            if view is not None and view.seq != self._snapped.get(cid):
                self.snapshot(cid)

    def _paths(self) -> list[Path]:
        return [self.root.path, *(c.dir / "logs" for c in self.cells.values())]

    def _route(self, changes: set[tuple[watchfiles.Change, str]]) -> None:
        """Map changed paths to cells; a change at the root means cells came or went."""
        touched: set[str] = set()
        rescan = False
        for _, raw in changes:
            path = Path(raw)
            if path.parent == self.root.path:
                rescan = True
            elif path.name in ("events.jsonl",) and path.parent.name == "logs":
                touched.add(path.parent.parent.name)
        if rescan:
            self.scan()
        for cid in touched:
            self.catch_up(cid)

    async def run(self, stop: asyncio.Event, tick: float = 1.0, durable: str = "lazarus",
                  debounce: float = 0.008) -> None:
        """Follow until `stop`: wake on changes (batched over `debounce`), and every `tick` to re-check the root.

        watchfiles' own default (1.6 s) would make every fold that late; a few ms batch a busy root's
        appends into one wake-up without making anyone wait.
        """
        self.root.path.mkdir(parents=True, exist_ok=True)
        self.scan()
        if self.root.nats is not None:
            await self._run_nats(stop, tick, durable)
            self.snapshot_all()
            return
        while not stop.is_set():
            paths = [p for p in self._paths() if p.exists()]
            restart = False
            async for changes in watchfiles.awatch(
                *paths,
                debounce=max(1, int(debounce * 1000)),
                step=max(1, int(debounce * 500)),
                recursive=False,
                stop_event=stop,
                rust_timeout=int(tick * 1000),
                yield_on_timeout=True,
                ignore_permission_denied=True,
            ):
                before = set(self.cells)
                if changes:
                    self._route(changes)
                else:
                    self.scan()
                    self.catch_up_all()  # belt and braces: a missed notification costs one tick
                if set(self.cells) != before:
                    restart = True
                    break
            if not restart:
                break
        self.snapshot_all()

    async def _run_nats(self, stop: asyncio.Event, tick: float, durable: str) -> None:
        """On NATS: a durable JetStream consumer per daemon names the cells that changed."""
        nats = self.root.nats
        assert nats is not None
        loop = asyncio.get_running_loop()
        changed: asyncio.Queue[set[str]] = asyncio.Queue()
        halt = asyncio.Event()  # lives on the NATS loop's side

        def notify(cells: set[str]) -> None:
            loop.call_soon_threadsafe(changed.put_nowait, cells)

        consumer = asyncio.run_coroutine_threadsafe(nats.wakeups(durable, notify, halt), nats.loop)
        try:
            while not stop.is_set():
                try:
                    cells = await asyncio.wait_for(changed.get(), tick)
                except asyncio.TimeoutError:
                    self.scan()
                    self.catch_up_all()
                    continue
                while not changed.empty():
                    cells |= changed.get_nowait()
                if cells - self.cells.keys():
                    self.scan()
                for cid in cells:
                    self.catch_up(cid)
        finally:
            nats.loop.call_soon_threadsafe(halt.set)
            with contextlib.suppress(Exception):
                await asyncio.wrap_future(consumer)
