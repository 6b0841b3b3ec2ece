"""One daemon per root: an `flock` on the root's `.lazarus/` directory, held for the daemon's life.

The lock is on the directory, not on `daemon.pid`: deleting the pid file (or any file in it) cannot
let a second daemon in. `daemon.pid` only says which process holds it."""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
from pathlib import Path
from typing import Any

from .errors import Refused

__all__ = ["RootLock", "daemon_running", "daemon_status"]


def _open(meta: Path) -> int:
    meta.mkdir(mode=0o700, parents=True, exist_ok=True)
    return os.open(meta, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)


class RootLock:
    """Held by the root's one daemon; a second `lazarus up` is refused while it is."""

    def __init__(self, meta: Path) -> None:
        self.meta = meta
        self.pid_file = meta / "daemon.pid"
        self.fd: int | None = None

    def acquire(self) -> None:
        fd = _open(self.meta)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            try:
                other = self.pid_file.read_text().strip() or "?"
            except OSError:
                other = "?"
            raise Refused(f"a daemon already runs on {self.meta.parent} (pid {other})") from None
        self.fd = fd
        tmp = self.pid_file.with_suffix(".tmp")
        tmp.write_text(f"{os.getpid()}\n")
        tmp.replace(self.pid_file)

    def release(self) -> None:
        if self.fd is not None:
            with contextlib.suppress(OSError):
                self.pid_file.unlink()
            os.close(self.fd)
            self.fd = None


def daemon_running(meta: Path) -> bool:
    """Whether a daemon holds the root's lock now (a probe: taken and given back at once when free)."""
    if not meta.is_dir():
        return False
    fd = _open(meta)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)  # closing gives a probe's lock back
    return False


def daemon_status(meta: Path) -> dict[str, Any]:
    """What `daemon.json` last said (empty when no daemon ever wrote it); it is not proof one runs."""
    try:
        body = json.loads((meta / "daemon.json").read_bytes())
    except (OSError, ValueError):
        return {}
    return body if isinstance(body, dict) else {}
