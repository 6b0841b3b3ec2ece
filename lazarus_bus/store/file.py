"""The embedded store: each cell a directory under the root with its JSONL log, woken by watchfiles."""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import AsyncGenerator, Callable, Collection, Iterator
from pathlib import Path
from typing import TYPE_CHECKING

from ..errors import MalformedInput, Refused
from ..files import fsync_dir
from ..log.base import LogBackend
from ..log.file import FileLog
from ..names import check_cell_id
from .base import Store, Wakeup

if TYPE_CHECKING:  # the daemon's watcher imports these; the CLI never pays for them
    import asyncio

    import watchfiles

__all__ = ["FileStore"]

LOG = Path("logs") / "events.jsonl"


class FileStore(Store):
    """Cells are `<root>/<cell-id>/` with `logs/events.jsonl`; names live in each cell's manifest."""

    def cells(self) -> dict[str, str | None]:
        try:
            entries = os.listdir(self.path)
        except FileNotFoundError:
            return {}
        out: dict[str, str | None] = {}
        for name in sorted(entries):
            if name.startswith("."):
                continue
            try:
                check_cell_id(name)
            except MalformedInput:
                continue
            if (self.path / name / LOG).is_file():
                out[name] = None
        return out

    def has(self, cell_id: str) -> bool:
        """One stat, not a listing: `lazarus heartbeat CELL-ID` on a root of 10,000 cells (issue 21)."""
        try:
            check_cell_id(cell_id)
        except MalformedInput:
            return False
        return (self.path / cell_id / LOG).is_file()

    def open_log(self, cell_id: str, *, create: bool = False, base: Path | None = None) -> LogBackend:
        c = self.config
        return FileLog((base or self.path / cell_id) / LOG, cell_id, fsync=c.fsync,
                       max_event_bytes=c.max_event_bytes, create=create, segment_bytes=c.segment_bytes)

    @contextlib.contextmanager
    def claim(self, cell_id: str, name: str, names: Callable[[], dict[str, str]]) -> Iterator[None]:
        taken = [cid for cid, other in names().items() if other == name]
        if taken:
            raise Refused(f"cell name {name!r} is taken (cell {taken[0]})")
        yield  # the directory renamed into place is the claim

    def bury(self, cell_id: str, name: str, log: LogBackend, cell_dir: Path, grave: Path) -> None:
        log.close()
        os.rename(cell_dir / LOG, grave)
        torn = cell_dir / "logs" / "events.torn"
        if torn.exists():
            os.rename(torn, grave.with_suffix(".torn"))
        sealed = cell_dir / "logs" / "segments"  # a long-lived cell's older events (DESIGN section 19)
        if sealed.exists():
            os.rename(sealed, grave.with_suffix(".segments"))
        fsync_dir(grave.parent)
        import shutil  # here: the CLI's appends do not import it (issue 21)

        shutil.rmtree(cell_dir)
        fsync_dir(self.path)

    async def wakeups(self, stop: asyncio.Event, watched: Callable[[], Collection[str]], *, tick: float,
                      debounce: float, consumer: str) -> AsyncGenerator[Wakeup, None]:
        """watchfiles on the root (cells come and go) and each watched cell's `logs/` (not recursive, so
        the daemon's own writes elsewhere in a cell wake nobody); watchfiles' default 1.6 s debounce
        would make every fold that late, a few ms batch a busy root's appends into one wake-up."""
        import watchfiles

        rescanned = time.monotonic()
        while not stop.is_set():
            ids = set(watched())
            paths = [p for p in (self.path, *(self.path / cid / "logs" for cid in ids)) if p.exists()]
            async for changes in watchfiles.awatch(
                *paths, debounce=max(1, int(debounce * 1000)), step=max(1, int(debounce * 500)),
                recursive=False, stop_event=stop, rust_timeout=int(tick * 1000), yield_on_timeout=True,
                ignore_permission_denied=True,
            ):
                wake = self._route(changes) if changes else Wakeup(rescan=True)
                if time.monotonic() - rescanned >= tick:  # a busy root is rescanned every tick all the same
                    wake = Wakeup(cells=wake.cells, rescan=True)
                if wake.rescan:
                    rescanned = time.monotonic()
                yield wake
                if set(watched()) != ids:
                    break  # cells came or went: watch the new set of directories

    def _route(self, changes: set[tuple[watchfiles.Change, str]]) -> Wakeup:
        cells: set[str] = set()
        rescan = False
        for _, raw in changes:
            path = Path(raw)
            if path.parent == self.path:
                rescan = True
            elif path.name == "events.jsonl" and path.parent.name == "logs":
                cells.add(path.parent.parent.name)
        return Wakeup(cells=frozenset(cells), rescan=rescan)
