"""An example agent: waits for a handoff, resumes from its packet, reviews the draft and publishes a verdict.

Pairs with writer.py. It exits 0 once the review is out, so the daemon records it as completed.
"""

import time

import lazarus_bus

with lazarus_bus.connect(heartbeat=0.5) as me:
    packet = me.resume()  # a handoff named by LAZARUS_RESUME, if the daemon gave one
    while packet is None or "handoff_id" not in packet:
        waiting = [h for h in me.cell.refresh().handoffs.values() if h.to == me.name and not h.accepted]
        if waiting:
            packet = me.accept(waiting[0].handoff_id)
            break
        me.status = "waiting for a handoff"
        time.sleep(0.2)
    state = packet["checkpoint"]["state"]
    lines = (me.workspace / "draft.txt").read_text().splitlines()
    ok = len(lines) == state["lines"]
    me.publish("review", {"from": packet["from"], "lines": len(lines), "approved": ok})
    print(f"reviewed {len(lines)} lines from {packet['from']}: {'approved' if ok else 'mismatch'}", flush=True)
