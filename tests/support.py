"""A real daemon for end-to-end tests, and awaiting what it writes."""

from __future__ import annotations

import json
import signal
import subprocess
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from lazarus_bus import Cell, Root, load_config
from tests.conftest import Cli, Procs

#: Generous by default, so that no agent judged by its heartbeats is declared dead by accident on a
#: loaded machine; a test that needs a short clock states it: `Up.config(health={...})` or `base(health={...})`.
HEALTH: dict[str, float] = {"stale_after": 30.0, "dead_after": 60.0}


def base(health: Mapping[str, object] | None = None, daemon: Mapping[str, object] | None = None) -> str:
    """`fsync`, a fast `[daemon]` (with `daemon` keys over it) and the one `[health]` table, with `health` keys
    over the generous defaults."""
    keys = {**HEALTH, **(health or {})}
    fast = {"tick": 0.1, "grace": 0.5, **(daemon or {})}
    return ('fsync = "never"\n[daemon]\n' + "".join(f"{k} = {json.dumps(v)}\n" for k, v in fast.items())
            + "[health]\n" + "".join(f"{k} = {json.dumps(v)}\n" for k, v in keys.items()))


BASE = base()


class Up:
    """A real daemon on the test's root."""

    def __init__(self, root_dir: Path, cli: Cli, procs: Procs) -> None:
        self.root_dir, self.cli, self.procs = root_dir, cli, procs
        self.proc: subprocess.Popen[bytes] | None = None
        self.starts = 0
        self.log: Path | None = None

    def config(self, extra: str = "", top: str = "", health: Mapping[str, object] | None = None,
               daemon: Mapping[str, object] | None = None) -> None:
        """`top`: keys before the first section; `extra`: sections after the base ones; `health` and `daemon`:
        keys of those one-per-file tables, for a test that needs a short (or long) clock."""
        assert "[health]" not in extra and "[daemon]" not in extra, "pass health={...} or daemon={...}"
        (self.root_dir / "lazarus.toml").write_text(top + base(health, daemon) + extra)

    def start(self, *args: str, env: Mapping[str, str] | None = None) -> subprocess.Popen[bytes]:
        """`env`: more variables in the daemon's own environment."""
        status = self.root_dir / ".lazarus" / "daemon.json"
        self.starts += 1
        # its log goes to a file, not a pipe nobody reads: a chatty daemon never blocks on a full pipe
        self.log = self.root_dir.parent / f"daemon-{self.root_dir.name}-{self.starts}.err"
        with open(self.log, "wb") as err:
            self.proc = self.procs.start(self.cli.argv("up", *(args or ("--no-http",)), "-v"), env=self.cli.env(**(env or {})),
                                         stdout=subprocess.DEVNULL, stderr=err)
        pid = self.proc.pid
        wait(lambda: status.exists() and json.loads(status.read_bytes()).get("pid") == pid and
             json.loads(status.read_bytes()).get("running"), "daemon.json", proc=self.proc, log=self.log)
        return self.proc

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            self.proc.wait(30)

    def cell(self, name: str = "forge") -> Cell:
        root = Root(self.root_dir, load_config(self.root_dir / "lazarus.toml"))
        return root.open(name)

    @property
    def http(self) -> str:
        """The gateway's base URL, as the daemon reports it."""
        return "http://" + json.loads((self.root_dir / ".lazarus" / "daemon.json").read_bytes())["http"]


def wait(check: Callable[[], Any], what: str, timeout: float = 60.0, proc: subprocess.Popen[bytes] | None = None,
         log: Path | None = None) -> Any:
    """Until the condition holds: the log (or a file) is awaited, never a fixed sleep. The deadline only
    bounds a failure, so it covers a loaded machine; `proc` (its output in `log` or its stderr pipe) must
    stay up meanwhile."""
    deadline = time.monotonic() + timeout
    while True:
        got = check()
        if got:
            return got
        if proc is not None and proc.poll() is not None:
            said = log.read_text(errors="replace") if log is not None and log.exists() else (
                proc.stderr.read().decode(errors="replace") if proc.stderr is not None else "")
            raise AssertionError(f"process exited {proc.returncode} waiting for {what}: {said}")
        assert time.monotonic() < deadline, f"timed out after {timeout} s waiting for {what}"
        time.sleep(0.02)


class Proxy:
    """A TCP proxy to a server, cut and healed by the test: a network partition of one machine."""

    def __init__(self, target: str) -> None:
        import socket
        import threading

        host, _, port = target.removeprefix("nats://").rpartition(":")
        self.target = (host, int(port))
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.url = f"nats://127.0.0.1:{self.listener.getsockname()[1]}"
        self.open = True
        self.pairs: list[tuple[socket.socket, socket.socket]] = []
        self.lock = threading.Lock()
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        import socket
        import threading

        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            if not self.open:
                client.close()
                continue
            try:
                server = socket.create_connection(self.target, timeout=5)
            except OSError:
                client.close()
                continue
            server.settimeout(None)
            with self.lock:
                self.pairs.append((client, server))
            for a, b in ((client, server), (server, client)):
                threading.Thread(target=self._pump, args=(a, b), daemon=True).start()

    @staticmethod
    def _pump(src: Any, dst: Any) -> None:
        try:
            while data := src.recv(65536):
                dst.sendall(data)
        except OSError:
            pass
        for s in (src, dst):
            try:
                s.close()
            except OSError:
                pass

    def cut(self) -> None:
        """Every connection through it dropped, and new ones refused, until `heal`."""
        import socket

        self.open = False
        with self.lock:
            pairs, self.pairs = self.pairs, []
        for pair in pairs:
            for s in pair:
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

    def heal(self) -> None:
        self.open = True

    def close(self) -> None:
        self.cut()
        self.listener.close()
