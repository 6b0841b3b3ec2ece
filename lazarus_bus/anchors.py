"""Anchors (DESIGN section 19): each cell's head handed to `[audit] anchor_command` every `anchor_every`
events, so a copy outside the machine can later catch a log cut back (`lazarus verify --expect`)."""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Iterable

from .cells import Cell
from .config import AuditConfig

__all__ = ["Anchors"]

log = logging.getLogger(__name__)
TIMEOUT = 30.0  # one anchor command's run; a hung one is killed, the next crossing tries again


class Anchors:
    """Which cells crossed a multiple of `anchor_every` since last looked, and the command run for each."""

    def __init__(self, config: AuditConfig) -> None:
        self.config = config
        self._seen: dict[str, int] = {}  # cell id -> seq when last looked (the first look publishes nothing)

    def due(self, cells: Iterable[Cell]) -> list[Cell]:
        every = self.config.anchor_every
        out = []
        for cell in cells:
            view = cell.projection
            if view is None:
                continue
            before = self._seen.get(cell.id)
            self._seen[cell.id] = view.seq
            if before is not None and view.seq // every > before // every:
                out.append(cell)
        return out

    async def publish_due(self, cells: Iterable[Cell]) -> int:
        """Run the command once per cell that is due, with `{"cell", "name", "seq", "head", "expect"}` on
        stdin (`expect` is what `lazarus verify CELL --expect` takes); how many ran cleanly."""
        if not self.config.anchor_command:
            return 0
        ok = 0
        for cell in self.due(cells):
            head = await asyncio.to_thread(cell.head)
            view = cell.projection
            body = {"cell": cell.id, "name": view.name if view else "", "seq": head.seq, "head": head.hash,
                    "expect": f"{head.seq}:{head.hash}"}
            ok += await self._run(json.dumps(body).encode() + b"\n", cell.id)
        return ok

    async def _run(self, data: bytes, cell_id: str) -> int:
        argv = self.config.anchor_command
        try:
            proc = await asyncio.create_subprocess_exec(*argv, stdin=asyncio.subprocess.PIPE,
                                                        stdout=asyncio.subprocess.DEVNULL,
                                                        stderr=asyncio.subprocess.DEVNULL, start_new_session=True)
        except OSError as exc:
            log.warning("cell %s: anchor_command %s did not start: %s", cell_id, argv[0], exc.strerror or exc)
            return 0
        try:
            await asyncio.wait_for(proc.communicate(data), TIMEOUT)
        except TimeoutError:
            proc.kill()
            await proc.wait()
            log.warning("cell %s: anchor_command took over %g s and was killed", cell_id, TIMEOUT)
            return 0
        if proc.returncode != 0:
            log.warning("cell %s: anchor_command exited %s", cell_id, proc.returncode)
            return 0
        return 1
