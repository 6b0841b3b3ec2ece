"""Sealed segments of a file log: `logs/segments/<first-seq>-<last-seq>.jsonl`, oldest first.

A long-lived cell's `logs/events.jsonl` is sealed once it passes `segment_bytes`: the file gets a second
name under `segments/` (a hard link, so nothing is copied), then an empty file replaces the active name
in one rename, and the chain goes on from the sealed file's last line. A crash between the two steps
leaves the active name and the newest segment on one inode; the next opener finishes the seal."""

from __future__ import annotations

import hashlib
import os
import re
from pathlib import Path

import msgspec

from ..errors import CorruptLog
from ..events import ZERO_HASH
from .base import Head

__all__ = ["Segment", "anchor_before", "first_seq", "last_line", "listed", "segment_name"]

_NAME = re.compile(r"^([1-9][0-9]*)-([1-9][0-9]*)\.jsonl$")


class _Link(msgspec.Struct):
    seq: int = 0
    prev: str = ""


_link = msgspec.json.Decoder(_Link)


class Segment(msgspec.Struct, frozen=True):
    """One sealed file and the seqs it holds."""

    first: int
    last: int
    path: Path


def segment_name(first: int, last: int) -> str:
    return f"{first}-{last}.jsonl"


def listed(directory: Path) -> list[Segment]:
    """The sealed segments under `directory`, oldest first (none when it does not exist)."""
    try:
        names = os.listdir(directory)
    except FileNotFoundError:
        return []
    out = []
    for name in names:
        m = _NAME.match(name)
        if m:
            out.append(Segment(int(m.group(1)), int(m.group(2)), directory / name))
    out.sort(key=lambda s: s.first)
    for older, newer in zip(out, out[1:]):
        if newer.first != older.last + 1:
            raise CorruptLog(f"{directory}: segments {older.path.name} and {newer.path.name} leave a gap")
    return out


def _first_line(path: Path) -> bytes | None:
    with open(path, "rb") as fh:
        line = fh.readline()
    return line[:-1] if line.endswith(b"\n") else None


def last_line(path: Path) -> bytes | None:
    """The last complete line of a file, reading back from its end a block at a time."""
    with open(path, "rb") as fh:
        pos, data = fh.seek(0, os.SEEK_END), b""
        while pos > 0:
            step = min(1 << 16, pos)
            pos -= step
            fh.seek(pos)
            data = fh.read(step) + data
            nl = data.rfind(b"\n")
            if nl < 0:
                continue
            before = data.rfind(b"\n", 0, nl)
            if before >= 0 or pos == 0:
                return data[before + 1:nl]
    return None


def anchor_before(path: Path, first: int, previous: Segment | None) -> Head:
    """What the first line of a file chains to: the hash of the segment before it, or, for the oldest
    file left after pruning, the `prev` its first line names (checked by verify against `log.pruned`)."""
    if first <= 1:
        return Head(0, ZERO_HASH)
    if previous is not None:
        line = last_line(previous.path)
        if line is None:
            raise CorruptLog(f"{previous.path}: a sealed segment with no complete line")
        return Head(previous.last, hashlib.sha256(line).hexdigest())
    line = _first_line(path)
    if line is None:
        return Head(first - 1, ZERO_HASH)
    try:
        return Head(first - 1, _link.decode(line).prev)
    except msgspec.DecodeError:
        raise CorruptLog(f"{path}:{first}: corrupt log at seq {first}: invalid JSON") from None


def first_seq(path: Path) -> int | None:
    """The seq of a file's first complete line (None when it has none)."""
    line = _first_line(path)
    if line is None:
        return None
    try:
        return _link.decode(line).seq
    except msgspec.DecodeError:
        raise CorruptLog(f"{path}: invalid JSON on its first line") from None
