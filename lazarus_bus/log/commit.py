"""Group commit: appends that write one after another share the next fsync instead of one each."""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable, Iterator

__all__ = ["MAX_DELAY", "Durable", "GroupCommit"]

MAX_DELAY = 0.001  # a leader waits this long at most for writers already on their way to the file


class Durable:
    """What appends made without waiting still wait for: `wait` (blocking) returns once all of them are
    on disk, or raises as the flush did; `pending` is False when there is nothing to wait for."""

    def __init__(self, wait: Callable[[int], None] | None = None) -> None:
        self._wait = wait
        self.ticket = 0  # set when the appends are done: the last of their group-commit tickets

    @property
    def pending(self) -> bool:
        return self.ticket > 0 and self._wait is not None

    def wait(self) -> None:
        if self._wait is not None and self.ticket:
            self._wait(self.ticket)


class GroupCommit:
    """Tickets for writes, and one flush for every write done by the time it starts.

    A writer says it is coming (`begin`), takes a ticket once its bytes are in the file (`written`), then
    waits in `durable` until a flush that started after its write has finished. The first waiter with no
    flush running becomes the leader: it lets writers already on their way finish their write (at most
    `MAX_DELAY`), then flushes; the others wait for it, and whoever wrote during that flush is covered
    by the next one. A lone writer never waits for company. A flush syncs the whole file, so what is
    durable is always a prefix of what was written.
    """

    def __init__(self, flush: Callable[[], None]) -> None:
        self._flush = flush
        self._cv = threading.Condition(threading.Lock())
        self._issued = 0  # tickets handed out: writes that have returned
        self._done = 0  # every ticket up to this one is durable
        self._flushing = False
        self._begun = 0  # writers that said they are coming, ever
        self._arrived = 0  # of those, the ones that wrote (or gave up): a leader waits for the rest
        self._deferred = threading.local()
        self.flushes = 0  # how many flushes ran: the group size is appends / flushes

    def begin(self) -> None:
        """A writer is on its way to the file (before it waits for the writers' lock)."""
        with self._cv:
            self._begun += 1

    def abandon(self) -> None:
        """A writer that began wrote nothing after all (refused, or failed)."""
        with self._cv:
            self._arrived += 1
            self._cv.notify_all()

    def written(self) -> int:
        """A ticket for bytes just written (call once the write returned, still under the writer's lock)."""
        with self._cv:
            self._issued += 1
            self._arrived += 1
            if self._flushing:
                self._cv.notify_all()  # a leader waiting for company
            return self._issued

    def durable(self, ticket: int) -> None:
        """Return once the write behind `ticket` is on disk (inside `deferred`, only note the ticket)."""
        pending = getattr(self._deferred, "ticket", None)
        if pending is not None:
            self._deferred.ticket = max(pending, ticket)
            return
        self._wait(ticket)

    def _wait(self, ticket: int) -> None:
        with self._cv:
            while self._done < ticket:
                if self._flushing:
                    self._cv.wait()
                    continue
                self._flushing = True
                deadline, coming = time.monotonic() + MAX_DELAY, self._begun  # not those who come after
                while self._arrived < coming and (left := deadline - time.monotonic()) > 0:
                    self._cv.wait(left)  # writers already on their way share this flush, not the next
                target = self._issued  # every write that returned before this flush starts
                self._cv.release()
                try:
                    self._flush()
                except BaseException:
                    self._cv.acquire()
                    self._flushing = False
                    self._cv.notify_all()  # a waiter tries again itself, and gets its own error
                    raise
                self._cv.acquire()
                self._flushing = False
                self.flushes += 1
                self._done = max(self._done, target)
                self._cv.notify_all()

    @contextlib.contextmanager
    def collected(self) -> Iterator[Durable]:
        """Appends inside only note their tickets, and nothing waits on the way out: the `Durable` it
        yields waits for them all, later and elsewhere (an event loop writes, a worker thread waits)."""
        outer = getattr(self._deferred, "ticket", None)
        self._deferred.ticket = 0
        durable = Durable(self._wait)
        try:
            yield durable
        finally:
            durable.ticket = self._deferred.ticket
            self._deferred.ticket = outer if outer is None else max(outer, durable.ticket)

    @contextlib.contextmanager
    def deferred(self) -> Iterator[None]:
        """Appends inside only note their tickets; the wait for disk happens on the way out, so a caller
        that holds its own lock around the append (a cell's projection) can release it first."""
        outer = getattr(self._deferred, "ticket", None)
        self._deferred.ticket = 0
        try:
            yield
        finally:
            ticket = self._deferred.ticket
            self._deferred.ticket = outer if outer is None else max(outer, ticket)
        if ticket and outer is None:
            self._wait(ticket)

