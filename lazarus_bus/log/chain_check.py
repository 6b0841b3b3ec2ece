"""The hash chain checked by a second process: a full replay's other core.

`python -m lazarus_bus.log.chain_check LOG END` checks that the lines before byte END carry seqs 1..N and each
the SHA-256 of the line before; it prints N and exits 0, or exits 1 at the first fault. A log in segments
(DESIGN section 19): `--from SEQ HASH FILE END [FILE END ...]`, the files in order, the chain running on
from one to the next, the first line following SEQ and HASH; it prints the last seq."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import msgspec

from ..events import ZERO_HASH
from .file import blocks, link_block

__all__ = ["chain_length"]


class _Link(msgspec.Struct, gc=False):
    """The two fields the chain needs; the parent decodes the rest."""

    seq: int
    prev: str


_link = msgspec.json.Decoder(_Link).decode


def chain_length(path: Path, end: int) -> int | None:
    """How many lines before byte `end` form an unbroken chain from seq 1, or None at a fault."""
    linked = _chain(path, end, 0, ZERO_HASH)
    return linked[0] if linked is not None else None


def _chain(path: Path, end: int, seq: int, prev: str) -> tuple[int, str] | None:
    """The last seq and hash of an unbroken chain over the lines before byte `end` that follows `seq`
    and `prev`, or None at a fault."""
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        for _, lines in blocks(fd, 0, end):
            linked = link_block(lines, seq, prev, _link)
            if linked is None:
                return None
            seq, prev = seq + len(lines), linked[1][-1]
        return seq, prev
    finally:
        os.close(fd)


def main(argv: list[str]) -> int:
    if argv and argv[0] == "--from":
        at: tuple[int, str] | None = (int(argv[1]), argv[2])
        rest = argv[3:]
        for i in range(0, len(rest), 2):
            assert at is not None
            at = _chain(Path(rest[i]), int(rest[i + 1]), *at)
            if at is None:
                return 1
        print(at[0] if at else "")
        return 0
    length = chain_length(Path(argv[0]), int(argv[1]))
    if length is None:
        return 1
    print(length)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
