"""Where a root's cells live: the one interface the file and NATS backends implement, chosen once in Root."""

from __future__ import annotations

import abc
import contextlib
from collections.abc import AsyncGenerator, Callable, Collection
from pathlib import Path
from typing import TYPE_CHECKING

from msgspec import Struct

from ..config import Config
from ..log.base import LogBackend

if TYPE_CHECKING:
    import asyncio

__all__ = ["Store", "Wakeup"]


class Wakeup(Struct, frozen=True, kw_only=True):
    """What a watcher must look at again: these cells, or (rescan) the whole root."""

    cells: frozenset[str] = frozenset()
    rescan: bool = False


class Store(abc.ABC):
    """Lists, opens, creates, imports and destroys the cells of one root; wakes the watcher; holds leases."""

    #: cells are shared by daemons on several hosts (a leader acts for all of them)
    spans_hosts: bool = False

    def __init__(self, path: Path, config: Config) -> None:
        self.path = path
        self.config = config

    @abc.abstractmethod
    def cells(self) -> dict[str, str | None]:
        """Every cell id, with its name where the store holds it (None: read it from the cell)."""

    @abc.abstractmethod
    def open_log(self, cell_id: str, *, create: bool = False, base: Path | None = None) -> LogBackend:
        """One cell's log; `base` is the directory of a cell still being built."""

    @abc.abstractmethod
    def claim(self, cell_id: str, name: str,
              names: Callable[[], dict[str, str]]) -> contextlib.AbstractContextManager[None]:
        """Reserve an id and a unique name for the block; a failure inside releases them.

        The caller holds the root's creation lock; `names` lists the cells' names (id -> name)."""

    def import_lines(self, cell_id: str, base: Path, lines: list[bytes]) -> None:
        """Write a verified log, byte for byte, as the new cell's log (under `base`, being built)."""
        with self.open_log(cell_id, create=True, base=base) as log:
            log.import_lines(lines)

    @abc.abstractmethod
    def bury(self, cell_id: str, name: str, log: LogBackend, cell_dir: Path, grave: Path) -> None:
        """After `cell.destroyed`: the log to `grave`, everything else of the cell gone."""

    @abc.abstractmethod
    def wakeups(self, stop: asyncio.Event, watched: Callable[[], Collection[str]], *, tick: float,
                debounce: float, consumer: str) -> AsyncGenerator[Wakeup, None]:
        """Which cells changed, as soon as they do; a rescan at least every `tick`."""

    def has(self, cell_id: str) -> bool:
        """Whether a cell with this id exists (a store may answer without listing every cell)."""
        return cell_id in self.cells()

    def find(self, name: str) -> str | None:
        """The id of the cell named `name` where the store indexes names (None: ask each cell)."""
        return None

    def lease(self, cell_id: str, holder: str, ttl: float, revision: int | None) -> int | None:
        """Take or renew the lease to act for a cell: its revision, or None when another daemon holds it.

        On one host the root's daemon lock is the lease: this daemon always holds it."""
        return 0

    def keep(self, cell_id: str, archive: str, path: Path) -> None:
        """A checkpoint archive, kept where every host can fetch it (here: the cell's own disk is that)."""

    def fetch(self, cell_id: str, archive: str, dest: Path) -> bool:
        """A checkpoint archive this host lacks, brought to `dest`; False when nobody keeps it."""
        return False

    @property
    def trouble(self) -> str:
        """What is wrong with the store's connection now, for status ("" when all is well)."""
        return ""

    def release(self, cell_id: str, holder: str) -> None:
        """Give a lease up (a daemon stopping), so another may take it at once."""

    def close(self) -> None:
        """Drop connections."""

