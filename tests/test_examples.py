"""The example agents do what the guides say, also when revived at the very end of their work."""

from __future__ import annotations

import sys
from pathlib import Path

from lazarus_bus import Cell
from lazarus_bus.fold import CellView
from tests.conftest import Cli
from tests.support import Up, wait

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


def view_of(cell: Cell) -> CellView:
    return cell.refresh()


def test_the_writer_revived_after_its_last_checkpoint_hands_off_and_completes(up: Up, cli: Cli) -> None:
    up.config('[resurrection]\nmode = "yes"\n')
    cid = cli.ok("cell", "create", "forge").strip()
    cli.ok("agent", "invite", "forge", "lead", "--role", "lead")
    cli.ok("agent", "invite", "forge", "writer", "--role", "write", "--env", "WRITER_LINES=2",
           "--env", "WRITER_REVIEWER=lead", "--cmd", f"{sys.executable} {EXAMPLES / 'writer.py'}")
    workspace = up.root_dir / cid / "workspace"
    (workspace / "draft.txt").write_text("line 1\nline 2\n")
    # where a writer killed between its last checkpoint and its handoff left things
    out = cli.ok("bus", "checkpoint", "forge", "--by", "writer", "--summary", "2 of 2 lines",
                 "--state", '{"lines": 2}', "--path", "draft.txt")
    checkpoint_id = out.split()[1]
    up.start()
    cell = up.cell()
    wait(lambda: view_of(cell).agents["writer"].phase == "left", "the writer to finish", timeout=60)
    v = view_of(cell)
    assert v.agents["writer"].left_reason == "completed" and v.agents["writer"].spawns == 1
    [handoff] = v.handoffs.values()
    assert handoff.to == "lead" and handoff.checkpoint_id == checkpoint_id
    assert (workspace / "draft.txt").read_text() == "line 1\nline 2\n"
