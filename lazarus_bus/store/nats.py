"""The shared store: cells as subjects of one JetStream stream, a KV registry of names, KV leases."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import shutil
from collections.abc import AsyncGenerator, Callable, Collection, Iterator
from pathlib import Path

from ..errors import Refused
from ..files import atomic_write
from ..log.base import LogBackend
from ..log.nats import Nats, NatsLog, Security, subject_of
from .base import Store, Wakeup

__all__ = ["NatsStore"]

log = logging.getLogger(__name__)


class NatsStore(Store):
    """Every daemon and command of every host sees the same cells; a cell's leader holds its lease."""

    spans_hosts = True

    @property
    def nats(self) -> Nats:
        """The process's shared connection, made on first use (a command that needs no cell never connects)."""
        c = self.config
        return Nats.get(c.nats_url, c.nats_stream, c.nats_replicas, c.nats_storage,
                        Security(creds=c.nats_creds, tls_ca=c.nats_tls_ca, tls_cert=c.nats_tls_cert,
                                 tls_key=c.nats_tls_key))

    def cells(self) -> dict[str, str | None]:
        nats = self.nats
        return dict(sorted(nats.call(nats.cells).items()))

    def find(self, name: str) -> str | None:
        nats = self.nats
        return nats.call(nats.find, name)

    def open_log(self, cell_id: str, *, create: bool = False, base: Path | None = None) -> LogBackend:
        return NatsLog(self.nats, cell_id, max_event_bytes=self.config.max_event_bytes)

    @contextlib.contextmanager
    def claim(self, cell_id: str, name: str, names: Callable[[], dict[str, str]]) -> Iterator[None]:
        nats = self.nats
        if cell_id in nats.call(nats.cells):
            raise Refused(f"cell id {cell_id} is taken (in NATS stream {self.config.nats_stream})")
        if not nats.call(nats.register, cell_id, name):
            raise Refused(f"cell name {name!r} is taken (in NATS stream {self.config.nats_stream})")
        try:
            yield
        except BaseException:  # what the failed create published goes too, so the id is free again
            nats.call(nats.purge, subject_of(cell_id))
            nats.call(nats.unregister, cell_id, name)
            raise

    def bury(self, cell_id: str, name: str, log: LogBackend, cell_dir: Path, grave: Path) -> None:
        """The graveyard keeps a verified copy; then the subject and its names go."""
        atomic_write(grave, b"".join(line + b"\n" for _, line in log.read_raw()))
        nats = self.nats
        nats.call(nats.purge, subject_of(cell_id))
        nats.call(nats.unregister, cell_id, name)
        log.close()
        shutil.rmtree(cell_dir, ignore_errors=True)

    async def wakeups(self, stop: asyncio.Event, watched: Callable[[], Collection[str]], *, tick: float,
                      debounce: float, consumer: str) -> AsyncGenerator[Wakeup, None]:
        """A durable JetStream consumer per daemon names the cells that changed."""
        nats = self.nats
        loop = asyncio.get_running_loop()
        changed: asyncio.Queue[set[str]] = asyncio.Queue()
        halt = asyncio.Event()  # lives on the NATS loop's side

        def notify(cells: set[str]) -> None:
            loop.call_soon_threadsafe(changed.put_nowait, cells)

        follow = asyncio.run_coroutine_threadsafe(nats.wakeups(consumer, notify, halt), nats.loop)
        rescanned = loop.time()
        try:
            while not stop.is_set():
                try:
                    cells = await asyncio.wait_for(changed.get(), max(0.0, rescanned + tick - loop.time()))
                except TimeoutError:
                    cells = set()
                while not changed.empty():
                    cells |= changed.get_nowait()
                rescan = bool(cells - set(watched())) or loop.time() - rescanned >= tick
                if rescan:  # a busy root is rescanned every tick all the same
                    rescanned = loop.time()
                yield Wakeup(cells=frozenset(cells), rescan=rescan)
        finally:
            nats.loop.call_soon_threadsafe(halt.set)
            with contextlib.suppress(Exception):
                await asyncio.wrap_future(follow)

    @property
    def trouble(self) -> str:
        return self.nats.trouble

    def keep(self, cell_id: str, archive: str, path: Path) -> None:
        """Into the Object Store bucket `<stream>_OBJECTS`, so a revival on another host can restore it."""
        nats = self.nats
        nats.call(nats.put_object, f"{cell_id}/{archive}", path, timeout=max(30.0, path.stat().st_size / 1e6))

    def fetch(self, cell_id: str, archive: str, dest: Path) -> bool:
        nats = self.nats
        dest.parent.mkdir(parents=True, exist_ok=True)
        part = dest.with_name(dest.name + ".part")
        try:
            found = nats.call(nats.get_object, f"{cell_id}/{archive}", part, timeout=300)
        finally:
            if not part.exists() or not part.stat().st_size:
                part.unlink(missing_ok=True)
        if found:
            part.replace(dest)
        return found

    def lease(self, cell_id: str, holder: str, ttl: float, revision: int | None) -> int | None:
        nats = self.nats  # bounded under a third of the lease: a NATS away never holds the daemon up long
        return nats.call(nats.lease, cell_id, holder, ttl, revision, timeout=max(0.5, ttl / 3))

    def release(self, cell_id: str, holder: str) -> None:
        """Best effort and brief: a daemon stopping while NATS is away must still stop (the lease expires)."""
        nats = self.nats
        nats.call(nats.release, cell_id, holder, timeout=2)
