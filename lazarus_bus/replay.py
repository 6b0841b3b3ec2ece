"""Rebuilding and checking from the log alone."""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterable, Iterator
from contextlib import closing

import msgspec

from .admission import admit
from .errors import CorruptLog, LazarusError, MalformedInput
from .events import ZERO_HASH, AgentHeartbeat, BusMessage, Event, decode_event
from .fold import CellView, fold, fold_all
from .log import LogBackend
from .log.base import check_link

__all__ = ["head_hash", "replay_log", "verify_lines", "verify_log"]


def verify_log(log: LogBackend, expect: str | None = None) -> tuple[int, str, str | None]:
    """Every line decodes, seqs run 1..N, the chain holds: (N, SHA-256 of the last line, `expect` as
    SEQ:HASH when given). With `expect` (a head printed earlier, HASH or SEQ:HASH), the log must still
    hold that line at its seq: a log cut back, even to nothing, is corrupt (CorruptLog)."""
    want_seq, want = _expected(expect) if expect is not None else (None, None)
    where = getattr(log, "path", "log")
    count, last, held = 0, None, None
    for event, line in log.read_raw(0):
        count += 1
        last = line
        if want is not None and held is None and (want_seq is None or event.seq == want_seq):
            if hashlib.sha256(line).hexdigest() == want:
                held = f"{event.seq}:{want}"
            elif want_seq is not None:
                raise CorruptLog(f"{where}:{event.seq}: corrupt log at seq {event.seq}: it no longer holds "
                                 f"the expected head {want}")
    if want is not None and held is None:
        raise CorruptLog(f"{where}: corrupt log: the expected head {expect} is not in it "
                         f"({count} events now: cut back or rewritten)")
    return count, head_hash(last), held


def _expected(expect: str) -> tuple[int | None, str]:
    seq, _, digest = expect.rpartition(":")
    digest = digest.lower()
    if len(digest) != 64 or any(c not in "0123456789abcdef" for c in digest) or (seq and not seq.isdigit()):
        raise MalformedInput(f"--expect takes a head as `verify` prints it (HASH or SEQ:HASH), got {expect!r}")
    return (int(seq) if seq else None), digest


def head_hash(last_line: bytes | None) -> str:
    """What `verify` prints: the SHA-256 of the last line, 64 zeros for an empty log."""
    return hashlib.sha256(last_line).hexdigest() if last_line is not None else ZERO_HASH


def replay_log(log: LogBackend, until: int | None = None,
               progress: Callable[[int], None] | None = None) -> CellView | None:
    """A fresh fold of the log, up to `until`, each event re-admitted by the append rules (a rechained log
    may hold what they never let in); `progress` hears the seq every 10,000 events."""
    where = str(getattr(log, "path", "log"))
    with closing(log.read_all(until)) as events:
        try:
            return fold_all(events if progress is None else _reporting(events, progress), check=Readmit(where))
        except Exception:  # the bytes first: a forged line can trip the fold before the chain check names it
            if until is None:  # (with `until` the reader checked each event before the fold saw it)
                verify_log(log)
            raise


class Readmit:
    """Admission for a replay: an event the rules refuse is corruption. Heartbeats and messages of one
    run are checked against one state, so their admission is asked once per author and addressee."""

    def __init__(self, source: str) -> None:
        self.source = source
        self.state: CellView | None = None
        self.passed: set[tuple[object, ...]] = set()

    def __call__(self, view: CellView | None, event: Event) -> None:
        kind = type(event)
        if kind is AgentHeartbeat or kind is BusMessage:
            if view is not self.state:
                self.state, self.passed = view, set()
            key = (kind, event.by, getattr(event, "agent", None) or getattr(event, "to", None),
                   getattr(event, "incarnation", ""))
            if key in self.passed:
                return
            self._admit(view, event)
            self.passed.add(key)
        else:
            self._admit(view, event)

    def _admit(self, view: CellView | None, event: Event) -> None:
        try:
            admit(view, event)
        except LazarusError as exc:
            fold(view, event)  # what the fold cannot place it names itself (a name never introduced)
            raise _refused(self.source, event, exc) from None


def _refused(source: str, event: Event, exc: LazarusError) -> CorruptLog:
    return CorruptLog(f"{source}:{event.seq}: corrupt log at seq {event.seq}: {event.type} breaks the append "
                      f"rules ({exc}); was it written or rechained outside lazarus?")


def _reporting(events: Iterable[Event], progress: Callable[[int], None]) -> Iterator[Event]:
    for event in events:
        if not event.seq % 10_000:
            progress(event.seq)
        yield event


def verify_lines(lines: list[bytes], source: str = "import") -> CellView:
    """An exported log checked as `verify` checks a live one (seqs 1..N, the chain), then folded."""
    view: CellView | None = None
    prev = ZERO_HASH
    for n, line in enumerate(lines, start=1):
        try:
            event = decode_event(line)
        except (msgspec.DecodeError, msgspec.ValidationError) as exc:
            raise CorruptLog(f"{source}:{n}: corrupt log at seq {n}: {exc}") from None
        check_link(source, event, n - 1, prev)
        if view is not None and event.cell != view.id:
            raise CorruptLog(f"{source}:{n}: event of cell {event.cell} in the log of cell {view.id}")
        try:  # a rechained log (every prev recomputed) may hold what the rules never let in
            admit(view, event)
        except LazarusError as exc:
            fold(view, event)  # what the fold cannot place it names itself (a name never introduced)
            raise _refused(source, event, exc) from None
        view = fold(view, event)
        prev = hashlib.sha256(line).hexdigest()
    if view is None:
        raise CorruptLog(f"{source}: an empty log")
    return view
