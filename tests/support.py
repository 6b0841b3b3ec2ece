"""A real daemon for end-to-end tests, and awaiting what it writes."""

from __future__ import annotations

import json
import signal
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from lazarus_bus import Cell, Root, load_config
from tests.conftest import Cli, Procs

BASE = """
fsync = "never"
[daemon]
tick = 0.1
grace = 0.5
[health]
stale_after = 0.5
dead_after = 1.5
"""


class Up:
    """A real daemon on the test's root."""

    def __init__(self, root_dir: Path, cli: Cli, procs: Procs) -> None:
        self.root_dir, self.cli, self.procs = root_dir, cli, procs
        self.proc: subprocess.Popen[bytes] | None = None

    def config(self, extra: str = "", top: str = "") -> None:
        """`top`: keys before the first section; `extra`: sections after the base ones."""
        (self.root_dir / "lazarus.toml").write_text(top + BASE + extra)

    def start(self, *args: str) -> subprocess.Popen[bytes]:
        status = self.root_dir / ".lazarus" / "daemon.json"
        self.proc = self.procs.start(self.cli.argv("up", *(args or ("--no-http",)), "-v"), env=self.cli.env(),
                                     stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        pid = self.proc.pid
        wait(lambda: status.exists() and json.loads(status.read_bytes()).get("pid") == pid and
             json.loads(status.read_bytes()).get("running"), "daemon.json", proc=self.proc)
        return self.proc

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            self.proc.wait(10)

    def cell(self, name: str = "forge") -> Cell:
        root = Root(self.root_dir, load_config(self.root_dir / "lazarus.toml"))
        return root.open(name)

    @property
    def http(self) -> str:
        """The gateway's base URL, as the daemon reports it."""
        return "http://" + json.loads((self.root_dir / ".lazarus" / "daemon.json").read_bytes())["http"]


def wait(check: Callable[[], Any], what: str, timeout: float = 20.0, proc: subprocess.Popen[bytes] | None = None) -> Any:
    """Until the condition holds: the log (or a file) is awaited, never a fixed sleep."""
    deadline = time.monotonic() + timeout
    while True:
        got = check()
        if got:
            return got
        if proc is not None and proc.poll() is not None:
            raise AssertionError(f"daemon exited {proc.returncode} waiting for {what}: {proc.stderr.read().decode()}")  # type: ignore[union-attr]
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.02)
