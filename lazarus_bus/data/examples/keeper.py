"""An example agent: keeps a tally forever, checkpointing it, so a revival picks up the count where it stopped."""

import time

import lazarus_bus

with lazarus_bus.connect(heartbeat=0.5) as me:
    resumed = me.resume()
    tally = resumed["checkpoint"]["state"]["tally"] if resumed else 0
    print(f"starting at tally {tally}", flush=True)
    while True:
        tally += 1
        me.progress(status=f"tally {tally}")
        if tally % 5 == 0:
            me.checkpoint(summary=f"tally {tally}", state={"tally": tally})
        time.sleep(0.1)
