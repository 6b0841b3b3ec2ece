"""The hash chain checked by a second process: a full replay's other core.

`python -m lazarus_bus.log.chain_check LOG END` checks that the lines before byte END carry seqs 1..N and each
the SHA-256 of the line before; it prints N and exits 0, or exits 1 at the first fault."""

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
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        seq, prev = 0, ZERO_HASH
        for _, lines in blocks(fd, 0, end):
            linked = link_block(lines, seq, prev, _link)
            if linked is None:
                return None
            seq, prev = seq + len(lines), linked[1][-1]
        return seq
    finally:
        os.close(fd)


def main(argv: list[str]) -> int:
    length = chain_length(Path(argv[0]), int(argv[1]))
    if length is None:
        return 1
    print(length)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
