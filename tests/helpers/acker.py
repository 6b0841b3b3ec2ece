"""Append forever; after each acknowledged append, record `seq id` in a side file (killed at random)."""

import os
import sys
import time
from pathlib import Path

from lazarus_bus import Config, Root, parse_draft
from lazarus_bus.names import new_id

root, cell, side = sys.argv[1], sys.argv[2], sys.argv[3]
segment = int(sys.argv[4]) if len(sys.argv) > 4 else Config().segment_bytes  # tiny: seals all the time
c = Root(Path(root), Config(fsync="never", segment_bytes=segment)).open(cell)
fd = os.open(side, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
n = 0
while True:
    eid = new_id()
    big = "x" * (n % 7 * 3000)  # some lines span several pages, so a kill can tear them
    [a] = c.append(parse_draft({"type": "bus.message", "by": "operator", "topic": "t", "payload": big, "id": eid}))
    os.write(fd, f"{a.seq} {eid}\n".encode())
    n += 1
    time.sleep(0.002)  # sixteen of these share two cores with the killer
