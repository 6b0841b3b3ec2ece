"""Take the log's lock like a writer, write half of a large line, say so, and wait to be killed."""

import fcntl
import os
import sys
import time

path = sys.argv[1]
fd = os.open(path, os.O_WRONLY | os.O_APPEND)
fcntl.flock(fd, fcntl.LOCK_EX)
line = b'{"type":"bus.message","seq":999,"payload":"' + b"x" * 300_000
os.write(fd, line[: len(line) // 2])
os.fsync(fd)
print("ready", flush=True)
time.sleep(600)
