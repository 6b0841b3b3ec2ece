"""The embedded backend: one JSONL file, an exclusive lock per append, a SHA-256 chain."""

from __future__ import annotations

import base64
import contextlib
import errno
import fcntl
import hashlib
import json
import os
import stat
import sys
import threading
import time
from collections.abc import Callable, Generator, Iterator, Sequence
from pathlib import Path
from typing import Any, Literal

import msgspec

from ..errors import Conflict, CorruptLog, LazarusError, NotFound, Refused
from ..events import DECODE_ERRORS, ZERO_HASH, CellDestroyed, Event, decode_line
from ..files import fsync_dir
from .base import Admit, Appended, Head, IdWindow, LogBackend, check_link, stamp
from .commit import Durable, GroupCommit
from .segments import Segment, anchor_before, first_seq, listed, segment_name

__all__ = ["FileLog", "blocks", "link_block"]

CHUNK = 1 << 16
# set on a file as its seal begins (and kept by the segment): a writer or reader sees with one fstat that
# it must look the active name up, instead of a path lookup on every append
SEALING = stat.S_ISVTX
ASIDE_BYTES = 32 << 20  # a log this big is read with its chain checked by a second process: start-up paid back
Fsync = Literal["always", "batch", "never"]


class _Ids(msgspec.Struct):
    """What an appender needs from lines other writers added."""

    seq: int = 0
    id: str = ""
    type: str = ""


_ids = msgspec.json.Decoder(_Ids)
_DESTROYED = CellDestroyed.__struct_config__.tag  # the tag that ends a log, read by the fast id decoder


def _helper_env() -> dict[str, str]:
    """The chain helper imports this very package, installed or not."""
    here = str(Path(__file__).resolve().parents[2])
    path = os.environ.get("PYTHONPATH")
    return {**os.environ, "PYTHONPATH": here + os.pathsep + path if path else here}


def _sha(line: bytes) -> str:
    return hashlib.sha256(line).hexdigest()


def blocks(fd: int, start: int, end: int | None = None) -> Iterator[tuple[int, list[bytes]]]:
    """Complete lines from `start`, a read's worth at a time with the first one's offset; never a torn tail."""
    pos = start
    rest = b""
    rest_at = start
    while end is None or pos < end:
        want = CHUNK if end is None else min(CHUNK, end - pos)
        block = os.pread(fd, want, pos)
        if not block:
            break
        pos += len(block)
        data = rest + block if rest else block
        lines = data.split(b"\n")
        rest = lines.pop()
        if lines:
            yield rest_at, lines
            rest_at = pos - len(rest)


class _Fault(Exception):
    """A line the fast path could not decode: the checked reader names it."""


class _Ticket(threading.local):
    value: int = 0


def _inode(path: Path) -> int | None:
    try:
        return os.stat(path).st_ino
    except FileNotFoundError:
        return None


def _window_start(fd: int, size: int, n: int) -> int:
    """Offset of the first of a file's last `n` complete lines, read backwards in blocks."""
    pos, count = size, 0
    while pos > 0:
        step = min(CHUNK, pos)
        block = os.pread(fd, step, pos - step)
        k = block.count(b"\n")
        if count + k > n:
            idx = len(block)
            for _ in range(n + 1 - count):
                idx = block.rfind(b"\n", 0, idx)
            return pos - step + idx + 1
        count += k
        pos -= step
    return 0


def link_block(
    lines: list[bytes], prev_seq: int, prev_hash: str, decode: Callable[[bytes], Any] = decode_line
) -> tuple[list[Any], list[str]] | None:
    """A block of lines decoded and chained at once, or None when anything is off (replay's hot path)."""
    try:
        events = list(map(decode, lines))
    except DECODE_ERRORS:
        return None
    hashes = [hashlib.sha256(line).hexdigest() for line in lines]
    if [e.seq for e in events] != list(range(prev_seq + 1, prev_seq + 1 + len(events))):
        return None
    if [e.prev for e in events] != [prev_hash, *hashes[:-1]]:
        return None
    return events, hashes


class FileLog(LogBackend):
    """`logs/events.jsonl` of one cell; safe for many processes and threads at once."""

    def __init__(
        self,
        path: Path,
        cell: str,
        *,
        fsync: Fsync = "always",
        max_event_bytes: int = 1 << 20,
        create: bool = False,
        segment_bytes: int = 0,
        sealed: Head | None = None,
    ) -> None:
        super().__init__()
        self.path = Path(path)
        self.torn_path = self.path.with_suffix(".torn")
        self.cell = cell
        self.fsync = fsync
        self.max_event_bytes = max_event_bytes
        # DESIGN section 19: past this many bytes the active file is sealed under segments/ (0: never)
        self.segment_bytes = segment_bytes
        self.segments_dir = self.path.parent / "segments"
        self._sealed = sealed  # set: this is one sealed segment, read-only, its first line chaining to it
        self._retired: list[int] = []  # the fd of a file sealed under us, closed at the next seal or close
        flags = os.O_RDWR | os.O_APPEND | os.O_CLOEXEC | (os.O_CREAT if create else 0)
        if sealed is not None:
            flags = os.O_RDONLY | os.O_CLOEXEC
        self._flags = flags
        # fsync "always": an append returns once on disk, through group commit (appends that wrote while
        # one fdatasync ran share the next), not O_DSYNC, which gives every write a flush of its own
        self._commit = GroupCommit(self._flush)
        self._ticket = _Ticket()  # per thread: the ticket of the append it is making
        self.read_only = sealed is not None
        try:
            self._fd = os.open(self.path, flags, 0o600)
        except FileNotFoundError:
            raise NotFound(f"no event log at {self.path}") from None
        except OSError as exc:  # an auditor's copy or a read-only backup: every reader still works
            if create or exc.errno not in (errno.EACCES, errno.EPERM, errno.EROFS):
                raise
            self._flags = os.O_RDONLY | os.O_CLOEXEC
            self._fd = os.open(self.path, self._flags)
            self.read_only = True
        if create:
            fsync_dir(self.path.parent)
        self._ino = os.fstat(self._fd).st_ino
        if sealed is None and not self.read_only and os.fstat(self._fd).st_nlink > 1:
            self._finish_seal()
        self._anchor = sealed if sealed is not None else self._active_anchor()  # what line 1 of this file follows
        self._end: int | None = None  # byte offset up to which _head/_window are known
        self._head = self._anchor
        self._window = IdWindow()
        self._mark: tuple[int, int, str] = (self._anchor.seq, 0, self._anchor.hash)  # (seq, offset after it, hash)
        # cell.destroyed is written before `cell destroy` moves the log to the graveyard, so a writer
        # that still holds the file open reads it under the lock and stops: the log's own end mark
        self._ended = False

    # -- reading --------------------------------------------------------------------------

    def _flush(self) -> None:
        try:
            os.fdatasync(self._fd)
        except OSError as exc:
            raise LazarusError(f"cannot make {self.path} durable: {exc.strerror}") from None

    def group_commit(self) -> contextlib.AbstractContextManager[None]:
        return self._commit.deferred() if self.fsync == "always" else contextlib.nullcontext()

    def unwaited(self) -> contextlib.AbstractContextManager[Durable] | None:
        if self.fsync == "never":
            return contextlib.nullcontext(Durable())
        if self.fsync == "always":
            return self._commit.collected()
        return None  # "batch": a batch's fsync is made under the lock, in the append

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1
        for fd in self._retired:
            os.close(fd)
        self._retired = []

    # -- segments (DESIGN section 19) ------------------------------------------------------

    def sealed(self) -> list[Segment]:
        """The sealed segments of this log, oldest first (a seal a crash left half done is not one yet:
        its segment is still the active file under a second name)."""
        if self._sealed is not None:
            return []
        found = listed(self.segments_dir)
        try:
            if found and os.stat(found[-1].path).st_ino == self._ino:
                return found[:-1]
        except FileNotFoundError:
            pass
        return found

    def first_seq(self) -> int:
        """The seq of the log's first event: 1, or past what retention pruned."""
        self._follow_seal()
        sealed = self.sealed()
        return sealed[0].first if sealed else self._anchor.seq + 1

    def _active_anchor(self) -> Head:
        """What the active file's first line chains to: the newest segment's last line, or, with every
        sealed segment pruned, the `prev` of its own first line (verify holds that to `log.pruned`)."""
        sealed = self.sealed()
        if sealed:
            return anchor_before(self.path, sealed[-1].last + 1, sealed[-1])
        first = first_seq(self.path)
        return anchor_before(self.path, first, None) if first and first > 1 else Head(0, ZERO_HASH)

    def _finish_seal(self) -> None:
        """A seal killed between its link and its rename leaves the active file with a second name, a
        segment: finish that seal before anything is written (at open, and under the lock of every append)."""
        with self._thread_lock:
            fcntl.flock(self._fd, fcntl.LOCK_EX)
            try:
                half = self._half_sealed()
                if half:
                    self._replace_active()
            finally:
                fcntl.flock(self._fd, fcntl.LOCK_UN)
        if half:
            self._reopen()

    def _half_sealed(self) -> bool:
        """Our file, still under the active name, is also a segment (a hard link made by someone else, a
        backup say, is no seal: only a name under segments/ counts)."""
        try:
            st = os.stat(self.path)
        except FileNotFoundError:
            return False
        if st.st_ino != self._ino or st.st_nlink < 2:
            return False
        return any(_inode(seg.path) == st.st_ino for seg in listed(self.segments_dir)[-2:])

    def _replace_active(self) -> None:
        """An empty file takes the active name in one rename: no moment without a log there."""
        nxt = self.path.with_name(self.path.name + ".next")
        os.close(os.open(nxt, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600))
        os.replace(nxt, self.path)
        fsync_dir(self.path.parent)

    def _moved(self) -> bool:
        """The active name is on another file than ours: somebody sealed ours."""
        if self._sealed is not None:
            return False
        st = os.fstat(self._fd)
        if not st.st_mode & SEALING and st.st_nlink < 2:
            return False  # never sealed nor linked: no path lookup
        try:
            return os.stat(self.path).st_ino != self._ino
        except FileNotFoundError:
            return False  # destroyed: the graveyard took it; the end mark in it says so

    def _reopen(self) -> None:
        """Onto the file now under the active name; what we knew of the old one is forgotten."""
        for fd in self._retired:
            os.close(fd)
        self._retired = [self._fd]  # a reader may still be reading the sealed file through it
        self._fd = os.open(self.path, self._flags)
        self._ino = os.fstat(self._fd).st_ino
        self._anchor = self._active_anchor()
        self._end, self._head, self._ended = None, self._anchor, False
        self._window = IdWindow()
        self._mark = (self._anchor.seq, 0, self._anchor.hash)

    def _follow_seal(self) -> None:
        if self._moved():
            with self._thread_lock:
                if self._moved():
                    self._reopen()

    def _seal(self) -> None:
        """Under the lock, the active file past segment_bytes: it becomes segments/<first>-<last>.jsonl
        (on disk whole first) and an empty active file continues the chain."""
        if self.fsync != "never":
            os.fdatasync(self._fd)  # nothing may chain past lines that are not on disk
        first, last, prev = self._anchor.seq + 1, self._head.seq, self._head.hash
        try:  # the mark first: whoever holds this file open looks the active name up from now on
            os.fchmod(self._fd, stat.S_IMODE(os.fstat(self._fd).st_mode) | SEALING)
        except OSError:
            return  # not ours to mark (another user's log): it stays one file
        os.makedirs(self.segments_dir, mode=0o700, exist_ok=True)
        os.link(self.path, self.segments_dir / segment_name(first, last))
        fsync_dir(self.segments_dir)
        self._replace_active()
        for fd in self._retired:
            os.close(fd)
        self._retired = [self._fd]  # unlocked by the caller, closed at the next seal
        self._fd = os.open(self.path, self._flags)
        self._ino = os.fstat(self._fd).st_ino
        self._anchor = Head(last, prev)
        self._end, self._mark = 0, (last, 0, prev)  # the id window and the head stay as they were

    def _read_sealed(self, since: int, until: int | None, anchor: Head) -> Iterator[tuple[Event, bytes]]:
        """The events after `since` that the sealed segments hold (up to the active file's anchor)."""
        sealed = [s for s in self.sealed() if s.first <= anchor.seq]
        for i, seg in enumerate(sealed):
            if seg.last <= since:
                continue
            before = anchor_before(seg.path, seg.first, sealed[i - 1] if i else None)
            reader = FileLog(seg.path, self.cell, sealed=before)
            try:
                yield from reader.read_raw(max(since, seg.first - 1), until)
            finally:
                reader.close()
            if until is not None and until <= seg.last:
                return

    def _size(self) -> int:
        return os.fstat(self._fd).st_size

    def _last_line(self, end: int) -> tuple[int, bytes] | None:
        """The last complete line ending at or before `end`, with its offset."""
        if end <= 0:
            return None
        stop = end
        if os.pread(self._fd, 1, end - 1) != b"\n":
            nl = self._rfind_newline(end)
            if nl < 0:
                return None
            stop = nl + 1
        start = self._rfind_newline(stop - 1) + 1
        return start, os.pread(self._fd, stop - 1 - start, start)

    def _rfind_newline(self, end: int) -> int:
        """Offset of the last b'\\n' before `end`, or -1."""
        pos = end
        while pos > 0:
            step = min(65536, pos)
            block = os.pread(self._fd, step, pos - step)
            i = block.rfind(b"\n")
            if i >= 0:
                return pos - step + i
            pos -= step
        return -1

    def head(self) -> Head:
        self._follow_seal()
        last = self._last_line(self._size())
        if last is None:
            return self._anchor  # an empty active file (just sealed): the head is the segment's last line
        try:
            seq = _ids.decode(last[1]).seq
        except msgspec.DecodeError:
            raise CorruptLog(f"{self.path}: last complete line is not valid JSON") from None
        return Head(seq, _sha(last[1]))

    def _offset_of(self, seq: int) -> int:
        """Byte offset of the first line whose seq >= `seq`: a bisection over line starts."""
        lo, hi = 0, self._size()
        while lo < hi:
            mid = (lo + hi) // 2
            s = mid if mid == 0 or os.pread(self._fd, 1, mid - 1) == b"\n" else self._find_newline(mid, hi) + 1
            if s <= 0 or s >= hi:
                s = lo
            here, nxt = self._seq_at(s, hi)
            if here < seq:
                lo = nxt
            else:
                hi = s
        return lo

    def _seq_at(self, start: int, limit: int) -> tuple[int, int]:
        """The seq of the line at `start` and where the next line starts; a torn line sorts last."""
        nl = self._find_newline(start, self._size())
        if nl < 0:
            return 1 << 62, limit
        try:
            return _ids.decode(os.pread(self._fd, nl - start, start)).seq, nl + 1
        except msgspec.DecodeError:
            raise CorruptLog(f"{self.path}: invalid JSON at byte {start}; run `lazarus verify`") from None

    def _find_newline(self, pos: int, limit: int) -> int:
        while pos < limit:
            block = os.pread(self._fd, min(65536, limit - pos), pos)
            i = block.find(b"\n")
            if i >= 0:
                return pos + i
            pos += len(block)
            if not block:
                break
        return -1

    def _lines(self, start: int, end: int | None = None) -> Iterator[tuple[int, bytes]]:
        """Complete lines from `start` with their offsets."""
        for at, lines in blocks(self._fd, start, end):
            for line in lines:
                yield at, line
                at += len(line) + 1

    def read_raw(self, since: int = 0, until: int | None = None) -> Iterator[tuple[Event, bytes]]:
        if until is not None and until <= since:
            return  # nothing asked (an append's admission, its projection already at the head): no syscall
        self._follow_seal()
        anchor = self._anchor
        if since < anchor.seq:  # what is asked begins in the sealed segments
            yield from self._read_sealed(since, until, anchor)
            if until is not None and until <= anchor.seq:
                return
            since = anchor.seq
        yield from self._read_file(since, until)

    def _read_file(self, since: int, until: int | None) -> Iterator[tuple[Event, bytes]]:
        prev_seq: int | None
        mark = self._mark  # one read: another thread may replace it
        if since > 0 and mark[0] == since:  # where the last read or write ended: no search
            start, prev_seq, prev_hash = mark[1], since, mark[2]
        elif since > 0 and since == self._anchor.seq:  # from this file's first line, which chains to the anchor
            start, prev_seq, prev_hash = 0, since, self._anchor.hash
        elif since > 0:
            start = self._offset_of(since)
            prev_seq, prev_hash = None, ""
        else:
            start, prev_seq, prev_hash = 0, 0, ZERO_HASH
        first, at = prev_seq, start  # `at`: the offset after the last line handed out
        try:
            for at, lines in blocks(self._fd, start):
                whole = None if prev_seq is None else link_block(lines, prev_seq, prev_hash)
                if whole is None:  # an anchor to find, or a fault to name: line by line
                    prev_seq, prev_hash, at, done = yield from self._line_by_line(
                        lines, at, since, prev_seq, prev_hash, until)
                    if done:
                        return
                    continue
                events, hashes = whole
                done = until is not None and events[-1].seq > until
                if done:
                    keep = max(0, until - prev_seq)  # type: ignore[operator]
                    events, lines, hashes = events[:keep], lines[:keep], hashes[:keep]
                if events:
                    yield from zip(events, lines)
                    prev_seq, prev_hash = events[-1].seq, hashes[-1]
                    at += sum(map(len, lines)) + len(lines)
                if done:
                    return
        finally:
            if prev_seq is not None and prev_seq != first:  # where the next read from this seq starts, no search
                self._mark = (prev_seq, at, prev_hash)

    def _line_by_line(
        self, lines: list[bytes], at: int, since: int, prev_seq: int | None, prev_hash: str, until: int | None
    ) -> Generator[tuple[Event, bytes], None, tuple[int | None, str, int, bool]]:
        """Each line checked on its own: the good ones handed out, the first bad one named precisely.

        Returns where it ended (seq, hash, offset) and whether `until` was reached."""
        for line in lines:
            try:
                event = decode_line(line)
            except DECODE_ERRORS as exc:
                where = (prev_seq + 1) if prev_seq is not None else "?"
                raise CorruptLog(f"{self.path}:{where}: corrupt log at seq {where} (byte {at}): {exc}") from None
            if prev_seq is None:  # first line of a read from the middle: the chain's anchor
                if event.seq != since:
                    raise CorruptLog(f"{self.path}: seq {since} not found (found {event.seq} at byte {at})")
                prev_seq, prev_hash = event.seq, hashlib.sha256(line).hexdigest()
                at += len(line) + 1
                continue
            check_link(str(self.path), event, prev_seq, prev_hash)
            if until is not None and event.seq > until:
                return prev_seq, prev_hash, at, True
            yield event, line
            prev_seq, prev_hash = event.seq, hashlib.sha256(line).hexdigest()
            at += len(line) + 1
        return prev_seq, prev_hash, at, False

    def read_all(self, until: int | None = None, aside_from: int = ASIDE_BYTES) -> Generator[Event, None, None]:
        """Events up to `until`, for a fold thrown away on error: a whole big log is decoded here while a
        second process checks its hash chain (across every segment), and a fault is raised at the end, as
        read() raises it."""
        self._follow_seal()
        end = self._rfind_newline(self._size()) + 1  # the lines complete now: appended later, not read
        anchor = self._anchor
        sealed = [s for s in self.sealed() if s.last <= anchor.seq] if anchor.seq else []
        files = [(seg.path, seg.path.stat().st_size) for seg in sealed] + [(self.path, end)]
        if until is not None or sum(size for _, size in files) < aside_from or (os.cpu_count() or 1) < 2:
            yield from self.read(0, until)
            return
        import subprocess  # only a big read starts a helper: the CLI's appends never pay for the module

        start = anchor_before(sealed[0].path, sealed[0].first, None) if sealed else anchor  # (0, zeros) unpruned
        seq = start.seq
        argv = [sys.executable, "-m", "lazarus_bus.log.chain_check", "--from", str(start.seq), start.hash,
                *(x for path, size in files for x in (str(path), str(size)))]
        try:
            helper = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, env=_helper_env())
        except OSError:  # no interpreter to start (an embedded one): one process does it all
            yield from self.read()
            return
        with helper:
            try:
                for path, size in files:
                    fd = self._fd if path == self.path else os.open(path, os.O_RDONLY | os.O_CLOEXEC)
                    try:
                        for _, lines in blocks(fd, 0, size):
                            try:
                                events = list(map(decode_line, lines))
                            except DECODE_ERRORS:
                                raise _Fault() from None
                            yield from events
                            seq = events[-1].seq
                    finally:
                        if fd != self._fd:
                            os.close(fd)
                # the helper checks that the seqs run on from the start over the same bytes, and the chain
                out = helper.communicate()[0]
                if helper.returncode == 0 and out.strip() == str(seq).encode():
                    return
            except _Fault:
                pass
            finally:
                if helper.poll() is None:  # a fault here, or the reader stopped early
                    helper.kill()
        # a fault on either side, or no verdict: the checked reader names the fault (or finds none)
        for event in self.read():
            if event.seq > seq:
                yield event

    def follow(self, since: int = 0, stop: threading.Event | None = None) -> Iterator[tuple[Event, bytes]]:
        import watchfiles

        seq = since
        for event, line in self.read_raw(seq):
            seq = event.seq
            yield event, line
        for _ in watchfiles.watch(
            self.path.parent,
            debounce=1,
            step=1,
            rust_timeout=250,
            yield_on_timeout=True,
            stop_event=stop,
            recursive=False,
        ):
            for event, line in self.read_raw(seq):
                seq = event.seq
                yield event, line
            if not self.path.exists():
                return

    # -- writing --------------------------------------------------------------------------

    def _quarantine(self, size: int) -> int:
        """Move a torn last line to events.torn and cut it off; returns the new size."""
        nl = self._rfind_newline(size)
        start = nl + 1
        torn = os.pread(self._fd, size - start, start)
        record = {"offset": start, "length": len(torn), "ts": time.time(), "b64": base64.b64encode(torn).decode()}
        fd = os.open(self.torn_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            self._write_all(fd, (json.dumps(record) + "\n").encode())
            os.fsync(fd)
        finally:
            os.close(fd)
        os.ftruncate(self._fd, start)
        os.fsync(self._fd)
        return start

    def _sync(self, size: int | None = None) -> None:
        """Under the lock: cut a torn tail, then learn the head and ids of lines others wrote."""
        size = self._size() if size is None else size
        if size == self._end:
            return  # nobody wrote since our last look (which ended on a newline)
        if size and os.pread(self._fd, 1, size - 1) != b"\n":
            size = self._quarantine(size)
        if self._end is None or size < self._end:
            self._window = self._sealed_window() if self._anchor.seq else IdWindow()
            self._head = self._anchor
            self._ended = False
            start = self._start_of_window(size)
        elif size == self._end:
            return
        else:
            start = self._end
        expect = None if self._end is None or start != self._end else self._head.seq + 1
        last = None
        for offset, line in self._lines(start, size):
            try:
                ids = _ids.decode(line)
            except msgspec.DecodeError:
                raise CorruptLog(f"{self.path}: invalid JSON at byte {offset}; run `lazarus verify`") from None
            if expect is not None and ids.seq != expect:
                raise CorruptLog(f"{self.path}:{expect}: corrupt log at seq {ids.seq}: expected seq {expect}")
            expect = ids.seq + 1
            if ids.id:
                self._window.add(ids.id, ids.seq)
            if ids.type == _DESTROYED:
                self._ended = True
            last = (ids.seq, line)
        if last is not None:
            self._head = Head(last[0], _sha(last[1]))
        self._end = size

    def _sealed_window(self) -> IdWindow:
        """The ids of the newest sealed lines (the active file may hold fewer than the window's 10,000)."""
        window = IdWindow()
        chunks: list[list[bytes]] = []
        need = window.size
        for seg in reversed([s for s in self.sealed() if s.last <= self._anchor.seq]):
            fd = os.open(seg.path, os.O_RDONLY | os.O_CLOEXEC)
            try:
                size = os.fstat(fd).st_size
                lines = [line for _, block in blocks(fd, _window_start(fd, size, need), size) for line in block]
            finally:
                os.close(fd)
            chunks.append(lines)
            need -= len(lines)
            if need <= 0:
                break
        for lines in reversed(chunks):
            for line in lines:
                ids = _ids.decode(line)
                if ids.id:
                    window.add(ids.id, ids.seq)
        return window

    def _start_of_window(self, size: int) -> int:
        """Offset of the first of the last 10,000 lines, read backwards in blocks."""
        return _window_start(self._fd, size, self._window.size)

    def _write_all(self, fd: int, data: bytes) -> None:
        n = os.write(fd, data)
        if n == len(data):
            return
        view = memoryview(data)[n:]
        while view:
            n = os.write(fd, view)
            view = view[n:]

    def append_many(
        self, drafts: Sequence[Event], *, expected_seq: int | None = None, admit: Admit | None = None
    ) -> list[Appended]:
        drafts = self.checked(drafts)
        if self.read_only:
            raise Refused(f"cannot append to {self.path}: it is read-only to this user")
        if self.fsync != "always":
            return self._append_locked(drafts, expected_seq, admit, False)  # no flush to share: no bookkeeping
        self._commit.begin()
        ticket = 0
        try:
            written = self._append_locked(drafts, expected_seq, admit, True)
        finally:
            if not self._ticket.value:
                self._commit.abandon()  # refused or failed: a flush need not wait for this writer
            ticket, self._ticket.value = self._ticket.value, 0
        if ticket:  # off the locks: the next writer appends while this one's flush runs
            self._commit.durable(ticket)
        return written

    def _append_locked(self, drafts: Sequence[Event], expected_seq: int | None, admit: Admit | None,
                       grouped: bool) -> list[Appended]:
        with self._thread_lock:
            fcntl.flock(self._fd, fcntl.LOCK_EX)
            while True:  # the file we locked may have been sealed, or half sealed by a writer killed mid-seal
                size = os.lseek(self._fd, 0, os.SEEK_END)
                if size == self._end:
                    break  # nobody wrote since our last look, so nobody sealed it (a seal follows a write)
                st = os.fstat(self._fd)
                if not st.st_mode & SEALING and st.st_nlink < 2:
                    break  # others wrote, one fstat: no seal ever touched this file
                try:
                    here = os.stat(self.path)
                except FileNotFoundError:
                    break  # destroyed: the graveyard took it; the end mark in it says so
                if here.st_ino == self._ino:
                    if st.st_nlink < 2 or not self._half_sealed():
                        if st.st_mode & SEALING and st.st_nlink < 2:  # a seal killed before its link
                            os.fchmod(self._fd, stat.S_IMODE(st.st_mode) & ~SEALING)
                        break
                    self._replace_active()  # a seal killed between its link and its rename: finish it
                fcntl.flock(self._fd, fcntl.LOCK_UN)
                self._reopen()  # write to the new active file
                fcntl.flock(self._fd, fcntl.LOCK_EX)
            locked = self._fd
            try:
                if size != self._end:
                    self._sync(size)
                if self._ended:
                    raise NotFound(f"{self.path} ends with cell.destroyed: its cell is gone, it takes no more events")
                written = self._repeats(drafts, self._window)  # a repeat is acknowledged durable too
                if written is None:
                    if expected_seq is not None and expected_seq != self._head.seq:
                        raise Conflict(f"expected seq {expected_seq}, but the log is at seq {self._head.seq}")
                    written = self._write(admit(self._head, list(drafts)) if admit else drafts)
                    # only right after a write of its own: a writer that finds the size it last saw knows
                    # nobody sealed the file meanwhile, with no fstat
                    if self.segment_bytes and written and not self._ended and (self._end or 0) >= self.segment_bytes:
                        self._seal()
                if grouped and written:
                    self._ticket.value = self._commit.written()
            finally:
                fcntl.flock(locked, fcntl.LOCK_UN)
        return written

    def import_lines(self, lines: Sequence[bytes]) -> None:
        with self._thread_lock:
            fcntl.flock(self._fd, fcntl.LOCK_EX)
            try:
                if self._size():
                    raise Conflict(f"{self.path} is not empty")
                self._write_all(self._fd, b"".join(line + b"\n" for line in lines))
                os.fsync(self._fd)
            finally:
                fcntl.flock(self._fd, fcntl.LOCK_UN)

    def _write(self, drafts: Sequence[Event]) -> list[Appended]:
        """Stamp, encode, chain, write: the hot path of every append (one write, no extra syscall)."""
        events, lines, prev = stamp(drafts, self._head, self.cell, self.max_event_bytes)
        data = lines[0] + b"\n" if len(lines) == 1 else b"\n".join([*lines, b""])
        start = self._end or 0
        try:
            written = os.write(self._fd, data)  # with fsync "always", made durable by group commit after
            if written != len(data):  # the disk filled mid-write: the rest gets the error
                self._write_all(self._fd, data[written:])
            if self.fsync == "batch" and len(drafts) > 1:
                os.fsync(self._fd)
        except OSError as exc:
            try:
                os.ftruncate(self._fd, start)
            except OSError:
                pass
            reason = "disk full" if exc.errno in (errno.ENOSPC, errno.EFBIG, errno.EDQUOT) else exc.strerror
            raise LazarusError(f"cannot append to {self.path}: {reason}; nothing was written") from None
        seq = events[-1].seq if events else self._head.seq
        self._end = start + len(data)
        self._ended = bool(events) and isinstance(events[-1], CellDestroyed)
        self._head = Head(seq, prev)
        self._mark = (seq, self._end, prev)
        add, out = self._window.add, []
        for event in events:
            add(event.id, event.seq)
            out.append(Appended(event.seq, event))
        return out
