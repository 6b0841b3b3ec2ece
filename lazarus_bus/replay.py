"""Rebuilding and checking from the log alone."""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Generator, Iterable, Iterator
from contextlib import closing

import msgspec

from .admission import admit
from .errors import CorruptLog, LazarusError, MalformedInput, NotFound
from .events import ZERO_HASH, AgentHeartbeat, BusMessage, Event, LogPruned, decode_event
from .fold import CellView, fold, fold_all
from .log import LogBackend
from .log.base import check_link

__all__ = ["Anchor", "head_hash", "replay_log", "verify_anchored", "verify_lines", "verify_log"]


class Anchor(msgspec.Struct, frozen=True):
    """Where a pruned log's check began: its first seq, and the `log.pruned` that vouches for the rest."""

    first_seq: int
    through_seq: int
    through_hash: str


def verify_log(log: LogBackend, expect: str | None = None) -> tuple[int, str, str | None]:
    """Every line decodes, seqs run 1..N, the chain holds: (N, SHA-256 of the last line, `expect` as
    SEQ:HASH when given). With `expect` (a head printed earlier, HASH or SEQ:HASH), the log must still
    hold that line at its seq: a log cut back, even to nothing, is corrupt (CorruptLog)."""
    count, head, held, _ = verify_anchored(log, expect)
    return count, head, held


def verify_anchored(log: LogBackend, expect: str | None = None) -> tuple[int, str, str | None, Anchor | None]:
    """As verify_log, and a log that begins after seq 1 (retention pruned it) must hold a `log.pruned`
    naming the seq and hash its chain starts from: that anchor is returned, so verify can say so."""
    want_seq, want = _expected(expect) if expect is not None else (None, None)
    where = getattr(log, "path", "log")
    count, last, held = 0, None, None
    first: tuple[int, str] | None = None
    pruned: list[LogPruned] = []
    for event, line in log.read_raw(0):
        if first is None:
            first = (event.seq, event.prev)
        if type(event) is LogPruned:
            pruned.append(event)
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
    anchor = None if first is None or first[0] == 1 else _anchor(log, where, first, pruned)
    return count, head_hash(last), held, anchor


def _anchor(log: LogBackend, where: object, first: tuple[int, str], pruned: list[LogPruned]) -> Anchor:
    """The `log.pruned` a log starting at `first` (seq, prev) rests on: it must name the line before the
    first (by its hash), or a line still held (a prune stopped half way) that hashes to what it says."""
    seq, prev = first
    for p in reversed(pruned):
        if p.through_seq == seq - 1 and p.through_hash == prev:
            return Anchor(seq, p.through_seq, p.through_hash)
        if p.through_seq >= seq:
            held = next(iter(log.read_raw(p.through_seq - 1, p.through_seq)), None)
            if held is not None and hashlib.sha256(held[1]).hexdigest() == p.through_hash:
                return Anchor(seq, p.through_seq, p.through_hash)
    raise CorruptLog(f"{where}:{seq}: corrupt log: it begins at seq {seq}, and no log.pruned anchors the "
                     f"events before it (cut at the front?)")


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
               progress: Callable[[int], None] | None = None, base: CellView | None = None) -> CellView | None:
    """A fresh fold of the log, up to `until`, each event re-admitted by the append rules (a rechained log
    may hold what they never let in); `progress` hears the seq every 10,000 events."""
    where = str(getattr(log, "path", "log"))
    if base is not None and until is not None and until < base.seq:
        raise NotFound(f"{where}: events up to seq {base.seq} were pruned (see log.pruned)")
    events_of = log.read_all(until) if base is None else _each(log.read(base.seq, until))  # pruned: from its base
    with closing(events_of) as events:
        try:
            return fold_all(events if progress is None else _reporting(events, progress), base, check=Readmit(where))
        except Exception:  # the bytes first: a forged line can trip the fold before the chain check names it
            if until is None:  # (with `until` the reader checked each event before the fold saw it)
                verify_log(log)
            raise


def _each(events: Iterable[Event]) -> Generator[Event, None, None]:
    yield from events


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
