"""The interface every log backend implements; positions are seqs, never byte offsets."""

from __future__ import annotations

import abc
import contextlib
import hashlib
import operator
import threading
import time
from collections import deque
from collections.abc import Callable, Generator, Iterator, Sequence
from typing import Any

import msgspec
from msgspec import Struct
from msgspec.structs import replace as _replace

from ..errors import Conflict, CorruptLog, MalformedInput, Refused, TooLarge
from ..events import DECODE_ERRORS, AnyEvent, CellDestroyed, Event, check_finite, decode_line, encode_event, encode_line
from ..names import new_id, new_ids
from .commit import Durable

__all__ = ["Admit", "Appended", "Head", "LogBackend", "IdWindow", "check_link", "same_payload", "stamp",
           "ID_WINDOW"]

ID_WINDOW = 10_000


class Head(Struct, frozen=True, gc=False):
    """The last event's seq and the SHA-256 of its line (64 zeros for an empty log)."""

    seq: int
    hash: str


class Appended(Struct, frozen=True, gc=False):
    """One event as the log holds it; `duplicate` when an idempotent retry wrote nothing."""

    seq: int
    event: Event
    duplicate: bool = False


# Under the log's lock, with the head as it stands: returns the drafts to write (it may add
# follow-ups such as `cell.activated`) or raises to refuse them.
Admit = Callable[[Head, list[Event]], list[Event]]


def same_payload(a: Event, b: Event) -> bool:
    """Equal but for what the log assigns: the idempotency test."""
    strip = {"seq": 0, "ts": 0.0, "cell": "", "prev": "", "id": ""}
    return encode_event(msgspec.structs.replace(a, **strip)) == encode_event(
        msgspec.structs.replace(b, **strip)
    )


def check_link(source: str, event: Event, prev_seq: int, prev_hash: str) -> None:
    """The line after seq `prev_seq` must carry the next seq and that line's hash; else CorruptLog."""
    if event.seq != prev_seq + 1:
        raise CorruptLog(f"{source}:{prev_seq + 1}: corrupt log at seq {event.seq}: expected seq {prev_seq + 1}")
    if event.prev != prev_hash:
        raise CorruptLog(
            f"{source}:{prev_seq}: corrupt log at seq {prev_seq}: hash chain broken "
            f"(line {event.seq} records another hash for line {prev_seq}; one of the two was altered)"
        )


def stamp(drafts: Sequence[Event], head: Head, cell: str, limit: int) -> tuple[list[Event], list[bytes], str]:
    """What the log assigns (seq, id, ts, cell, prev), each line encoded and size-checked before
    anything is written; returns the events, their lines and the hash of the last one."""
    seq, prev = head.seq, head.hash
    now = time.time()
    encode, sha = encode_line, hashlib.sha256
    if len(drafts) == 1:  # every single append: no batch bookkeeping
        d = drafts[0]
        event = _replace(d, seq=seq + 1, id=d.id or new_id(), ts=now, cell=cell, prev=prev)
        line = encode(event)
        if len(line) >= limit:
            raise _too_large(d, line, limit)
        return [event], [line], sha(line).hexdigest()
    events: list[Event] = []
    lines: list[bytes] = []
    ended = False
    for d, fresh in zip(drafts, new_ids(len(drafts))):
        if ended:
            raise Refused("cell.destroyed ends a log: nothing may follow it in the same batch")
        ended = isinstance(d, CellDestroyed)
        seq += 1
        event = _replace(d, seq=seq, id=d.id or fresh, ts=now, cell=cell, prev=prev)
        line = encode(event)
        if len(line) >= limit:
            raise _too_large(d, line, limit)
        prev = sha(line).hexdigest()
        events.append(event)
        lines.append(line)
    return events, lines, prev


def readable(draft: Event) -> Event:
    """What is written can always be read back: the draft's own line decodes as its type, before the
    state or the log sees it (a Struct built in Python is not type-checked by msgspec, and inf or nan
    would be stored as null); what it decodes to goes on, so the projection folds what the log holds
    (bytes become the base64 text JSON stores). The envelope the log adds later is always valid."""
    try:
        back = decode_line(encode_line(draft))
    except DECODE_ERRORS as exc:
        check_finite(draft)  # the clearer message when an inf or nan became a null a number field refuses
        raise MalformedInput(f"{draft.type}: {exc}") from None
    except (TypeError, OverflowError) as exc:  # not JSON at all (bytes in a payload, an int past 64 bits)
        raise MalformedInput(f"{draft.type}: {exc}") from None
    if back != draft:  # something changed on the way (nan is never equal to itself): look closer
        check_finite(draft)
    return back


_encode_batch = msgspec.json.Encoder().encode
_decode_batch = msgspec.json.Decoder(list[AnyEvent]).decode


def _too_large(draft: Event, line: bytes, limit: int) -> TooLarge:
    """One message for a single append and a batch: it names the cure, not only the limit."""
    return TooLarge(
        f"{draft.type} event is {len(line) + 1} bytes, over max_event_bytes ({limit}); "
        "put large payloads in artifacts/ and reference them by path and sha256"
    )


_first = operator.itemgetter(0)


class IdWindow:
    """The ids of the last 10,000 events, with their seqs, for idempotent retries."""

    def __init__(self, size: int = ID_WINDOW) -> None:
        self.size = size
        self._seqs: dict[str, int] = {}
        self._order: deque[str] = deque()

    def add(self, event_id: str, seq: int) -> None:
        """Remember one id; the oldest falls out past the window."""
        if len(self._order) >= self.size:
            old = self._order.popleft()
            if self._seqs.get(old, seq) < seq:
                del self._seqs[old]
        self._seqs[event_id] = seq
        self._order.append(event_id)

    def get(self, event_id: str) -> int | None:
        """The seq of a recent event with this id."""
        return self._seqs.get(event_id)


class LogBackend(abc.ABC):
    """append, append_many, read from seq, follow, head: every guarantee of the contract."""

    def __init__(self) -> None:
        self._thread_lock = threading.RLock()

    @abc.abstractmethod
    def head(self) -> Head:
        """The last complete event."""

    def read(self, since: int = 0, until: int | None = None) -> Iterator[Event]:
        """Verified events with since < seq <= until; corruption raises CorruptLog."""
        return map(_first, self.read_raw(since, until))  # no generator frame per event

    def read_all(self, until: int | None = None) -> Generator[Event, None, None]:
        """Events up to `until`, for a fold thrown away on error (a backend may check the chain alongside)."""
        yield from self.read(0, until)

    @abc.abstractmethod
    def read_raw(self, since: int = 0, until: int | None = None) -> Iterator[tuple[Event, bytes]]:
        """Like read, with each event's stored bytes (for tail and export)."""

    @abc.abstractmethod
    def follow(self, since: int = 0, stop: threading.Event | None = None) -> Iterator[tuple[Event, bytes]]:
        """Events after since as they are appended, until stop is set or the log goes away."""

    @abc.abstractmethod
    def append_many(
        self, drafts: Sequence[Event], *, expected_seq: int | None = None, admit: Admit | None = None
    ) -> list[Appended]:
        """Write drafts atomically and in order, or nothing at all."""

    def append(self, draft: Event, *, expected_seq: int | None = None, admit: Admit | None = None) -> list[Appended]:
        """One event (plus any follow-up the admit hook adds)."""
        return self.append_many([draft], expected_seq=expected_seq, admit=admit)

    @abc.abstractmethod
    def import_lines(self, lines: Sequence[bytes]) -> None:
        """Write an exported log as it is (same bytes, seqs, ids and chain) into this empty log."""

    def unwaited(self) -> contextlib.AbstractContextManager[Durable] | None:
        """For an event loop that appends inline: appends inside only write (to the page cache, a seal's
        few fsyncs aside), and the `Durable` it yields waits, once out, for their flush, to be made off
        the loop. None where an append itself blocks (the network, a flush made under the lock)."""
        return None

    def group_commit(self) -> contextlib.AbstractContextManager[None]:
        """Appends inside wait for disk only on the way out, so several threads share one flush (a
        backend whose every append is durable on return has nothing to defer)."""
        return contextlib.nullcontext()

    def close(self) -> None:
        """Release files or connections."""

    def __enter__(self) -> LogBackend:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def _repeats(self, drafts: Sequence[Event], window: IdWindow) -> list[Appended] | None:
        """Idempotent retries: all repeats -> their original seqs; a changed payload -> Conflict."""
        if len(drafts) == 1 and not drafts[0].id:
            return None  # the common case: a fresh event, nothing to look up
        found: list[Appended] = []
        for d in drafts:
            seq = window.get(d.id) if d.id else None
            if seq is None:
                if found:
                    raise Conflict("a batch mixes already-appended event ids with new ones")
                continue
            original = next(self.read(seq - 1, seq), None)
            if original is None or not same_payload(original, d):
                raise Conflict(f"event id {d.id} was already used (seq {seq}) with a different payload")
            found.append(Appended(seq, original, duplicate=True))
        if found and len(found) != len(drafts):
            raise Conflict("a batch mixes already-appended event ids with new ones")
        return found or None

    @staticmethod
    def checked(drafts: Sequence[Event]) -> list[Event]:
        """The drafts as the log will hold them (each read back from its own encoding), and no two of
        one batch sharing an id."""
        if len(drafts) < 2:
            return [readable(d) for d in drafts]
        try:  # a batch in one encode and one decode, checked one by one only when something is off
            out: list[Event] = list(_decode_batch(_encode_batch(list(drafts))))
        except (*DECODE_ERRORS, TypeError, OverflowError):
            out = [readable(d) for d in drafts]
        if out != list(drafts):
            for d in drafts:
                check_finite(d)
        seen: set[str] = set()
        for d in out:
            if d.id and d.id in seen:
                raise Conflict(f"event id {d.id} appears twice in one batch")
            if d.id:
                seen.add(d.id)
        return out
