"""Under systemd the daemon says READY=1 once it serves and WATCHDOG=1 each tick: checked on a real
AF_UNIX datagram socket that the test binds, as systemd would."""

from __future__ import annotations

import socket
from pathlib import Path

from lazarus_bus.sdnotify import Notify
from tests.conftest import Cli
from tests.support import Up


def _bound(tmp_path: Path) -> socket.socket:
    s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    s.bind(str(tmp_path / "notify.sock"))
    s.settimeout(60)  # a deadline for a failure only: each datagram is awaited, not slept for
    return s


def test_ready_then_watchdog_then_stopping(up: Up, cli: Cli, tmp_path: Path) -> None:
    up.config()
    cli.ok("cell", "create", "forge")
    sock = _bound(tmp_path)
    proc = up.start(env={"NOTIFY_SOCKET": str(tmp_path / "notify.sock"), "WATCHDOG_USEC": "2000000"})
    got = [sock.recv(4096).decode() for _ in range(3)]
    assert got[0].startswith("READY=1\nSTATUS=supervising 0 agents in 1 cells"), got
    assert got[1:] == ["WATCHDOG=1", "WATCHDOG=1"]
    up.stop()
    assert proc.returncode == 0
    while (msg := sock.recv(4096).decode()) == "WATCHDOG=1":
        pass
    assert msg == "STOPPING=1"


def test_no_watchdog_unless_asked_and_silent_without_a_socket(tmp_path: Path) -> None:
    sock = _bound(tmp_path)
    n = Notify({"NOTIFY_SOCKET": str(tmp_path / "notify.sock")})
    assert n.alive() is False and n.ready("up") is True
    assert sock.recv(4096) == b"READY=1\nSTATUS=up"
    assert Notify({}).ready("up") is False
    assert Notify({"NOTIFY_SOCKET": str(tmp_path / "nobody.sock")}).ready("up") is False
    other = Notify({"NOTIFY_SOCKET": str(tmp_path / "notify.sock"), "WATCHDOG_USEC": "1000", "WATCHDOG_PID": "1"})
    assert other.watchdog == 0.0  # the watchdog was meant for another process


def test_abstract_socket_names(tmp_path: Path) -> None:
    s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    name = f"lazarus-test-{tmp_path.name}"
    s.bind("\0" + name)
    s.settimeout(60)
    assert Notify({"NOTIFY_SOCKET": "@" + name}).send("READY=1")
    assert s.recv(100) == b"READY=1"
