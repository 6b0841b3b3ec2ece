"""The `lazarus` console script: `heartbeat` and `emit` straight to the fast path, everything else to click."""

from __future__ import annotations

import os
import sys

__all__ = ["main"]


def main(argv: list[str] | None = None) -> None:
    """Run the CLI: an argv the fast path reads exactly as click would runs there without importing click
    (issue 21); any other, and any usage error, is click's."""
    args = sys.argv[1:] if argv is None else argv
    from .fastpath import parse, run

    parsed = parse(args)
    if parsed is None:
        from .cli import main as click_main

        click_main(args)
    else:
        run(*parsed, debug="--debug" in args or bool(os.environ.get("LAZARUS_DEBUG")), argv=args)
