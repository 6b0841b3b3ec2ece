"""The gateway under idle, slow and broken clients, against a real `lazarus up`: every bad connection
is cut on a clock or refused past the limit, answered in JSON, and the daemon goes on reviving."""

from __future__ import annotations

import json
import os
import selectors
import signal
import socket
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from lazarus_bus import events as ev
from tests.conftest import Cli
from tests.support import Up, wait

LIMIT = 24


def _config(up: Up, extra: str = "") -> None:
    up.config(f'[http]\nheader_timeout = 1.0\nbody_timeout = 1.0\nmax_connections = {LIMIT}\n{extra}')


def _address(up: Up) -> tuple[str, int]:
    host, _, port = up.http.removeprefix("http://").rpartition(":")
    return host, int(port)


def _fds(pid: int) -> int:
    """The daemon's open sockets (other descriptors come and go with its own work)."""
    n = 0
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            n += os.readlink(f"/proc/{pid}/fd/{fd}").startswith("socket:")
        except FileNotFoundError:
            pass
    return n


def _connect(up: Up) -> socket.socket:
    s = socket.create_connection(_address(up), timeout=10)
    return s


def _get(url: str) -> tuple[int, Any]:
    try:
        with urllib.request.urlopen(url, timeout=30) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def _until_closed(socks: list[socket.socket], timeout: float) -> dict[socket.socket, bytes]:
    """Read every socket until the server closes it (EOF or reset); what each received."""
    got: dict[socket.socket, bytes] = {s: b"" for s in socks}
    sel = selectors.DefaultSelector()
    for s in socks:
        s.setblocking(False)
        sel.register(s, selectors.EVENT_READ)
    deadline = time.monotonic() + timeout
    while sel.get_map():
        assert time.monotonic() < deadline, f"{len(sel.get_map())} connections still open after {timeout} s"
        for key, _ in sel.select(timeout=0.5):
            s = key.fileobj
            assert isinstance(s, socket.socket)
            try:
                data = s.recv(65536)
            except ConnectionResetError:
                data = b""
            if data:
                got[s] += data
            else:
                sel.unregister(s)
    sel.close()
    return got


class _Reader:
    """Reads many sockets without blocking; `poll` says how many the server has not closed yet."""

    def __init__(self, socks: list[socket.socket]) -> None:
        self.got: dict[socket.socket, bytes] = {}
        self.open = set(socks)
        for s in socks:
            s.setblocking(False)

    def poll(self) -> int:
        for s in list(self.open):
            try:
                data = s.recv(65536)
            except BlockingIOError:
                continue
            except ConnectionResetError:
                data = b""
            if data:
                self.got[s] = self.got.get(s, b"") + data
            else:
                self.got.setdefault(s, b"")
                self.open.discard(s)
        return len(self.open)


def _status(raw: bytes) -> int:
    return int(raw.split(b" ", 2)[1]) if raw.startswith(b"HTTP/1.") else 0


def _body(raw: bytes) -> Any:
    return json.loads(raw.partition(b"\r\n\r\n")[2])


def test_a_flood_of_idle_slow_and_garbage_clients_is_bounded_and_never_delays_a_revival(up: Up, cli: Cli) -> None:
    up.config(f'[http]\nheader_timeout = 60.0\nmax_connections = {LIMIT}\n[resurrection]\nmode = "yes"\n')
    cli.ok("cell", "create", "forge")
    cli.ok("agent", "invite", "forge", "w", "--role", "write", "--cmd", "sleep 600")
    proc = up.start("--http", "127.0.0.1:0")
    cell = up.cell()
    a = wait(lambda: (x := cell.refresh().agents["w"]).phase == "running" and x, "the agent runs")
    baseline = _fds(proc.pid)
    flood: list[socket.socket] = []
    for n in range(10 * LIMIT):
        s = _connect(up)
        if n % 3 == 1:
            s.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\nX-Slow: ")  # a head that never ends
        elif n % 3 == 2:
            s.sendall(b"\x16\x03\x01\x02\x00garbage, or TLS on a plain port\r\n\r\n")
        flood.append(s)
    reader = _Reader(flood)
    wait(lambda: reader.poll() <= LIMIT, "all but max_connections refused or answered")
    # the daemon holds no more than max_connections of them, however many are asked of it
    assert _fds(proc.pid) <= baseline + LIMIT + 2
    got = reader.got
    assert 503 in {_status(raw) for raw in got.values()}
    assert _body(next(raw for raw in got.values() if _status(raw) == 503))["error"].startswith("too many connections")
    for raw in got.values():
        assert _status(raw) in (0, 400, 503), raw[:200]  # a JSON refusal, or a reset
        if raw:
            assert "error" in _body(raw)
    os.kill(a.pid, signal.SIGKILL)  # while the gateway is full, the daemon still revives
    wait(lambda: (x := cell.refresh().agents["w"]).spawns == 2 and x.phase == "running", "the revival", timeout=30)
    for s in flood:
        s.close()
    wait(lambda: _fds(proc.pid) <= baseline + 1, "every flood connection gone")
    assert _get(up.http + "/health")[0] == 200
    assert up.log is not None and "Traceback" not in up.log.read_text()


def test_idle_and_half_sent_heads_are_cut_after_header_timeout(up: Up, cli: Cli) -> None:
    _config(up)
    cli.ok("cell", "create", "forge")
    proc = up.start("--http", "127.0.0.1:0")
    baseline = _fds(proc.pid)
    socks = [_connect(up) for _ in range(6)]
    for s in socks[3:]:
        s.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\n")  # and never the blank line
    got = _until_closed(socks, timeout=30)
    assert all(raw == b"" for raw in got.values())  # cut without an answer: nothing was asked
    wait(lambda: _fds(proc.pid) <= baseline, "their descriptors freed")
    # a keep-alive connection that goes quiet after its request is cut the same way
    s = _connect(up)
    s.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
    assert _status(_until_closed([s], timeout=30)[s]) == 200


def test_malformed_http_is_answered_in_json_and_logs_no_traceback(up: Up, cli: Cli) -> None:
    _config(up)
    cli.ok("cell", "create", "forge")
    up.start("--http", "127.0.0.1:0")
    bad = [b"NOT-A-METHOD / HTTP/1.1\r\nHost: x\r\n\r\n",
           b"GET /" + b"a" * 9000 + b" HTTP/1.1\r\nHost: x\r\n\r\n",
           b"GET /health HTTP/1.1\r\nHost: x\r\nX-Big: " + b"b" * 9000 + b"\r\n\r\n",
           b"GET /health HTTP/1.1\r\nBroken header line\r\n\r\n",
           b"POST /cells/forge/events HTTP/1.1\r\nHost: x\r\nContent-Length: -5\r\n\r\n",
           b"GET /health HTTP/9.9\r\nHost: x\r\n\r\n"]
    socks = []
    for raw in bad:
        s = _connect(up)
        s.sendall(raw)
        socks.append(s)
    got = _until_closed(socks, timeout=30)
    for s, raw in zip(socks, bad):
        answer = got[s]
        assert _status(answer) == 400, (raw[:60], answer[:300])
        assert b"Content-Type: application/json" in answer.partition(b"\r\n\r\n")[0]
        assert _body(answer)["error"].startswith("malformed HTTP request: ")
    assert _get(up.http + "/health")[0] == 200
    assert up.log is not None and "Traceback" not in up.log.read_text()


def test_a_body_that_never_arrives_gets_408_and_the_connection_closes(up: Up, cli: Cli) -> None:
    _config(up)
    cli.ok("cell", "create", "forge")
    cli.ok("agent", "invite", "forge", "ada", "--role", "lead")
    up.start("--http", "127.0.0.1:0")
    s = _connect(up)
    s.sendall(b"POST /cells/forge/agents/ada/heartbeat HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
              b"Content-Length: 100\r\n\r\n{\"cycle\": 1")
    answer = _until_closed([s], timeout=30)[s]
    assert _status(answer) == 408
    assert "body_timeout" in _body(answer)["error"]
    assert [e.type for e in up.cell().log.read()].count("agent.heartbeat") == 0  # nothing half-written


def test_a_reader_that_takes_nothing_is_cut_and_frees_its_connection(up: Up, cli: Cli) -> None:
    _config(up)
    cli.ok("cell", "create", "forge")
    cli.ok("agent", "invite", "forge", "ada", "--role", "lead")
    cell = up.cell()  # 3 MB of backlog: far more than the socket buffers hold
    cell.append_many([ev.parse_draft({"type": "bus.message", "topic": "bulk", "payload": {"p": "x" * 3000}},
                                     by="ada") for _ in range(1000)])
    proc = up.start("--http", "127.0.0.1:0")
    baseline = _fds(proc.pid)
    s = socket.socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # a reader with no room, that never reads
    s.settimeout(10)
    s.connect(_address(up))
    s.sendall(b"GET /cells/forge/events HTTP/1.1\r\nHost: x\r\nAccept: text/event-stream\r\n\r\n")
    wait(lambda: _fds(proc.pid) > baseline, "the stream is open")
    wait(lambda: _fds(proc.pid) <= baseline, "the stalled stream is cut", timeout=60)
    _until_closed([s], timeout=30)  # what was in flight, then the end: no stream is left open
    assert _get(up.http + "/health")[0] == 200


def test_error_bodies_name_no_filesystem_path(up: Up, cli: Cli, root_dir: Path) -> None:
    _config(up)
    cli.ok("cell", "create", "forge")
    cli.ok("agent", "invite", "forge", "ada", "--role", "lead")
    cli.ok("agent", "invite", "forge", "bob", "--role", "lead")
    log = up.cell().dir / "logs" / "events.jsonl"
    lines = log.read_bytes().split(b"\n")
    lines[1] = lines[1].replace(b'"ts":', b'"ts":1', 1)  # a broken chain in the middle
    log.write_bytes(b"\n".join(lines))
    up.start("--http", "127.0.0.1:0")
    status = root_dir / ".lazarus" / "daemon.json"
    wait(lambda: json.loads(status.read_bytes()).get("corrupt"), "the daemon sees the corruption")
    code, body = _get(up.http + "/cells/forge")
    assert code == 500 and "events.jsonl" in body["error"]
    _, cells = _get(up.http + "/cells")
    for text in (body["error"], cells[0]["error"]):
        assert str(root_dir) not in text and "/logs/" not in text
