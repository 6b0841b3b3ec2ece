"""Leadership of cells across hosts: the lease as its holder keeps it (DESIGN section 13).

The store's lease (a NATS KV key) says who may act for a cell; the holder does not trust it blindly.
It keeps its own monotonic deadline from the moment it sent the renewal that succeeded, acts only
before it, and a daemon paused past it (SIGSTOP, a frozen VM) finds on waking that it leads nothing.
A taken lease's revision is the cell's epoch; a daemon that cannot renew for `fence_after` stops
what it runs there, and one that takes a cell over starts nothing for `fence_after + grace`, so the
previous holder has stopped its copies before new ones start."""

from __future__ import annotations

import logging
import secrets
import time
from collections.abc import Callable, Iterable

from msgspec import Struct

from .store import Store

__all__ = ["Leadership", "Renewal", "new_instance"]

log = logging.getLogger(__name__)


def new_instance(host: str) -> str:
    """`<host>/<8 hex>`: a daemon start, unique even where two machines share a host name."""
    return f"{host}/{secrets.token_hex(4)}"


class Renewal(Struct, frozen=True):
    """One lease request's outcome: the revision, None (another holds it) or the error; `sent` is
    the monotonic time the request left, from which the deadline counts."""

    cell: str
    sent: float
    revision: int | None
    error: str = ""


class _Held(Struct):
    """Kept by the holder alone and changed on each renewal."""

    epoch: int  # the revision the lease was taken at
    revision: int  # the newest, to renew from
    renewed: float  # monotonic: when the last renewal that succeeded was sent
    hold_until: float = 0.0  # monotonic: no start before it (a takeover)


class Leadership:
    """The cells this daemon leads, each with its epoch and its own deadline."""

    def __init__(self, store: Store, instance: str, *, ttl: float, fence_after: float, grace: float,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.store = store
        self.instance = instance
        self.ttl = ttl
        self.fence_after = fence_after
        self.grace = grace
        self.clock = clock
        self.held: dict[str, _Held] = {}
        self.margin = min(1.0, ttl / 4)  # acting stops this long before the lease could expire

    @property
    def spans_hosts(self) -> bool:
        return self.store.spans_hosts

    def renew(self, cells: Iterable[str]) -> list[Renewal]:
        """Take or renew every cell's lease (blocking: run it off the event loop)."""
        out = []
        for cid in cells:
            sent = self.clock()
            held = self.held.get(cid)
            try:
                rev = self.store.lease(cid, self.instance, self.ttl, held.revision if held else None)
            except Exception as exc:  # noqa: BLE001 - the store away: the deadline decides
                out.append(Renewal(cid, sent, None, f"{type(exc).__name__}: {exc}".rstrip(": ")))
                continue
            out.append(Renewal(cid, sent, rev))
        return out

    def apply(self, renewals: Iterable[Renewal]) -> tuple[list[str], list[str]]:
        """The renewals' outcomes: (cells newly taken, cells to fence: lost to another daemon, or not
        renewed for `fence_after`)."""
        taken, fence = [], []
        for r in renewals:
            held = self.held.get(r.cell)
            if r.error:
                if held is not None:
                    log.warning("lease of cell %s not renewed: %s", r.cell, r.error)
                    if self.clock() - held.renewed >= self.fence_after:
                        del self.held[r.cell]
                        fence.append(r.cell)
                continue
            if r.revision is None:
                if held is not None:
                    log.warning("lost the lease of cell %s: another daemon leads it", r.cell)
                    del self.held[r.cell]
                    fence.append(r.cell)
                continue
            if held is None or not self.spans_hosts:
                self.held[r.cell] = _Held(epoch=r.revision, revision=r.revision, renewed=r.sent)
                if self.spans_hosts:
                    taken.append(r.cell)
            else:
                held.revision, held.renewed = r.revision, r.sent
        return taken, fence

    def hold_starts(self, cell_id: str) -> None:
        """A takeover: nothing starts until the previous holder has fenced itself and stopped."""
        held = self.held.get(cell_id)
        if held is not None:
            held.hold_until = self.clock() + self.fence_after + self.grace

    def drop(self, cell_id: str) -> None:
        self.held.pop(cell_id, None)

    def keep_only(self, cells: Iterable[str]) -> None:
        for cid in set(self.held) - set(cells):
            del self.held[cid]

    def leads(self, cell_id: str) -> bool:
        """Before each action: the lease is held and its own deadline not past."""
        held = self.held.get(cell_id)
        if held is None:
            return False
        return not self.spans_hosts or self.clock() < held.renewed + self.ttl - self.margin

    def may_start(self, cell_id: str) -> bool:
        held = self.held.get(cell_id)
        return held is not None and self.clock() >= held.hold_until

    def epoch(self, cell_id: str) -> int:
        """The epoch decisions for the cell are stamped with (0 where one host holds every cell)."""
        held = self.held.get(cell_id)
        return held.epoch if held is not None and self.spans_hosts else 0

    def leading(self) -> list[str]:
        return sorted(c for c in self.held if self.leads(c))

    def release_all(self) -> None:
        for cid in list(self.held):
            try:
                self.store.release(cid, self.instance)
            except Exception as exc:  # noqa: BLE001 - stopping anyway: the lease runs out by itself
                log.info("lease of cell %s not released: %s", cid, exc)
        self.held.clear()
