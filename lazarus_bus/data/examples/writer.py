"""An example agent: writes a draft line by line, checkpoints each line, then hands off to its reviewer.

Run under `lazarus up` (invited with `--cmd "python writer.py"`) or by hand with LAZARUS_ROOT,
LAZARUS_CELL and LAZARUS_AGENT set. After a crash it resumes from its newest checkpoint.
Settings: WRITER_LINES (default 6), WRITER_PAUSE seconds between lines (default 0.3),
WRITER_REVIEWER (default "reviewer").
"""

import os
import time

import lazarus_bus

LINES = int(os.environ.get("WRITER_LINES", "6"))
PAUSE = float(os.environ.get("WRITER_PAUSE", "0.3"))
REVIEWER = os.environ.get("WRITER_REVIEWER", "reviewer")

with lazarus_bus.connect(heartbeat=0.5) as me:
    resumed = me.resume()  # None on a first start; the newest checkpoint after a revival
    done = resumed["checkpoint"]["state"]["lines"] if resumed is not None else 0
    draft = me.workspace / "draft.txt"
    if done and resumed is not None:
        me.restore(resumed["checkpoint"]["checkpoint_id"])  # the draft exactly as checkpointed
        print(f"resuming after line {done}", flush=True)
    else:
        draft.write_text("")
    last = resumed["checkpoint"]["checkpoint_id"] if resumed is not None else None  # all written: hand off
    for n in range(done + 1, LINES + 1):
        with draft.open("a") as f:
            f.write(f"line {n} by {me.name} (pid {os.getpid()})\n")
        me.progress(status=f"wrote line {n}")
        last = me.checkpoint(summary=f"{n} of {LINES} lines", state={"lines": n}, paths=["draft.txt"])
        print(f"checkpoint {last}: line {n}", flush=True)
        time.sleep(PAUSE)
    if last is not None:
        me.handoff(REVIEWER, last, note=f"draft of {LINES} lines ready for review")
    print("handed off", flush=True)
