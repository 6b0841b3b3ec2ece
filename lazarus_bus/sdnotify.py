"""systemd's notify protocol (sd_notify(3)) without libsystemd: one datagram to `$NOTIFY_SOCKET`.

Under `Type=notify` the daemon says `READY=1` once it serves, `WATCHDOG=1` each tick while
`$WATCHDOG_USEC` is set (`WatchdogSec=`: a hung loop is restarted by systemd), and `STOPPING=1`."""

from __future__ import annotations

import contextlib
import os
import socket

__all__ = ["Notify"]


class Notify:
    """The socket named by the environment at start; silent (every call a no-op) when there is none."""

    def __init__(self, environ: dict[str, str] | None = None) -> None:
        env = dict(os.environ if environ is None else environ)
        addr = env.get("NOTIFY_SOCKET", "")
        self.address = "\0" + addr[1:] if addr.startswith("@") else addr  # "@name": the abstract namespace
        pid = env.get("WATCHDOG_PID", "")
        mine = not pid or pid == str(os.getpid())
        usec = env.get("WATCHDOG_USEC", "")
        self.watchdog = float(usec) / 1e6 if mine and usec.isdigit() and int(usec) > 0 else 0.0

    def send(self, state: str) -> bool:
        """One datagram; False when nobody listens (an error here must never stop the daemon)."""
        if not self.address:
            return False
        with contextlib.suppress(OSError), socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as s:
            s.sendto(state.encode(), self.address)
            return True
        return False

    def ready(self, status: str) -> bool:
        return self.send(f"READY=1\nSTATUS={status}")

    def alive(self) -> bool:
        """The watchdog ping, sent only when systemd asked for one."""
        return self.send("WATCHDOG=1") if self.watchdog else False

    def stopping(self) -> bool:
        return self.send("STOPPING=1")
