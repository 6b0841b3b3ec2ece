"""Append N bus messages as operator, each payload naming this writer and its counter."""

import sys
from pathlib import Path

from lazarus_bus import Root, load_config, parse_draft

root, cell, writer, count = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
c = Root(Path(root), load_config(Path(root) / "lazarus.toml")).open(cell)  # file or NATS, as configured
for i in range(count):
    c.append(parse_draft({"type": "bus.message", "by": "operator", "topic": writer, "payload": i}))
