"""The HTTP gateway against a real `lazarus up` on a free loopback port, with a real HTTP client."""

from __future__ import annotations

import asyncio
import hashlib
import json
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from tests.conftest import Cli
from tests.support import Up


async def call(method: str, url: str, *, token: str | None = None, **kw: Any) -> tuple[int, Any]:
    headers = kw.pop("headers", {})
    if token:
        headers["Authorization"] = f"Bearer {token}"
    async with aiohttp.ClientSession() as s, s.request(method, url, headers=headers, **kw) as r:
        text = await r.text()
        try:
            return r.status, json.loads(text)
        except ValueError:
            return r.status, text


def run(coro: Any) -> Any:
    return asyncio.run(coro)


@pytest.fixture
def served(up: Up, cli: Cli) -> Up:
    up.config()
    cli.ok("cell", "create", "forge", "--mission", "test the gateway")
    cli.ok("agent", "invite", "forge", "ada", "--role", "lead")
    cli.ok("agent", "invite", "forge", "ro", "--role", "read")
    up.start("--http", "127.0.0.1:0")
    return up


def test_health_cells_cell_agent(served: Up) -> None:
    base = served.http
    code, body = run(call("GET", f"{base}/health"))
    assert code == 200 and body["status"] == "ok" and body["cells"] == {"provisioned": 1}
    assert body["agents"] == {"unknown": 2} and {"version", "uptime", "pid", "watcher_lag"} <= body.keys()
    code, cells = run(call("GET", f"{base}/cells"))
    assert code == 200 and cells[0]["name"] == "forge" and cells[0]["agents"] == {"ada": "unknown", "ro": "unknown"}
    code, cell = run(call("GET", f"{base}/cells/forge"))
    assert code == 200 and cell["mission"] == "test the gateway" and cell["id"] == cells[0]["id"]
    assert run(call("GET", f"{base}/cells/{cell['id']}"))[0] == 200
    code, agent = run(call("GET", f"{base}/cells/forge/agents/ada"))
    assert code == 200 and agent["role"] == "lead" and agent["health"] == "unknown"
    assert run(call("GET", f"{base}/cells/nope"))[0] == 404
    assert run(call("GET", f"{base}/cells/forge/agents/nobody")) == (404, {"error": "agent 'nobody' is not invited in cell forge"})
    assert run(call("GET", f"{base}/cells/forge/agents/..x"))[0] == 422
    code, body = run(call("GET", f"{base}/no/such/path"))
    assert code == 404 and "error" in body


def test_heartbeat_over_http_makes_the_agent_healthy_in_status(served: Up, cli: Cli) -> None:
    base = served.http
    code, body = run(call("POST", f"{base}/cells/forge/agents/ada/heartbeat", json={"cycle": 4, "status": "busy"}))
    assert code == 201 and body["seq"] == 4 and body["type"] == "agent.heartbeat"
    rows = json.loads(cli.ok("status", "forge", "--json"))["cells"][0]["agents"]
    assert {r["agent"]: r["health"] for r in rows}["ada"] == "healthy"
    assert run(call("POST", f"{base}/cells/forge/agents/ada/heartbeat"))[0] == 201  # an empty body is fine
    assert run(call("POST", f"{base}/cells/forge/agents/ghost/heartbeat"))[0] == 403  # not invited
    assert run(call("POST", f"{base}/cells/forge/agents/ada/heartbeat", json={"cycle": "x"}))[0] == 422


def test_concurrent_heartbeats_share_writes_and_each_gets_its_own_answer(served: Up) -> None:
    """Heartbeats arriving together (written together when they come in one turn of the loop) are
    answered one by one: every accepted one at its own seq with its own payload, every refused one
    with what it is told alone."""
    base = served.http
    lone = run(call("POST", f"{base}/cells/forge/agents/ghost/heartbeat", json={"cycle": 0}))
    assert lone[0] == 403

    async def go() -> list[tuple[str, int, int, Any]]:
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=48)) as s:
            async def client(n: int) -> list[tuple[str, int, int, Any]]:
                agent, out = "ghost" if n % 6 == 0 else "ada", []
                for k in range(5):
                    cycle = n * 100 + k
                    async with s.post(f"{base}/cells/forge/agents/{agent}/heartbeat", json={"cycle": cycle}) as r:
                        out.append((agent, cycle, r.status, await r.json()))
                return out
            return [x for xs in await asyncio.gather(*(client(n) for n in range(48))) for x in xs]

    answers = run(go())
    for agent, _, status, body in answers:
        assert (status, body) == lone if agent == "ghost" else status == 201
    code, stored = run(call("GET", f"{base}/cells/forge/events?type=agent.heartbeat"))
    by_seq = {e["seq"]: e for e in stored}
    beats = [(cycle, body["seq"]) for agent, cycle, _, body in answers if agent == "ada"]
    assert len(beats) == 200 and len({seq for _, seq in beats}) == 200 and len(by_seq) == 200
    assert all(by_seq[seq]["cycle"] == cycle and by_seq[seq]["agent"] == "ada" for cycle, seq in beats)


def test_append_statuses(served: Up) -> None:
    base = served.http
    url = f"{base}/cells/forge/events"
    eid = "7d1f0b7e-4a55-4c59-9a3e-0c2f3e6b1a10"
    msg = {"type": "bus.message", "by": "ada", "topic": "news", "payload": {"n": 1}, "id": eid}
    code, first = run(call("POST", url, json=msg))
    assert code == 201
    assert run(call("POST", url, json=msg)) == (200, {**first, "duplicate": True})
    assert run(call("POST", url, json={**msg, "topic": "other"}))[0] == 409  # same id, other payload
    assert run(call("POST", url, json={"type": "bus.message", "by": "ada", "topic": "t", "expected_seq": 1}))[0] == 409
    code, body = run(call("POST", url, json={"type": "bus.message", "by": "ada", "topic": "t",
                                             "expected_seq": first["seq"]}))
    assert code == 201 and body["seq"] == first["seq"] + 1
    assert run(call("POST", url, data=b"{not json"))[0] == 400
    assert run(call("POST", url, json={"type": "bus.nope", "by": "ada"}))[0] == 422
    assert run(call("POST", url, json={"type": "bus.message", "by": "ada"}))[0] == 422  # no topic
    assert run(call("POST", url, json={"type": "bus.message", "by": "ada", "topic": "t", "seq": 9}))[0] == 422
    assert run(call("POST", url, json={"type": "bus.message", "by": "ro", "topic": "t"}))[0] == 403
    assert run(call("POST", url, json={"type": "cell.archived", "by": "operator"}))[0] == 201
    assert run(call("POST", url, json={"type": "cell.thawed", "by": "operator"}))[0] == 409  # a forbidden transition
    assert run(call("POST", f"{base}/cells/nope/events", json=msg))[0] == 404


def test_events_list_since_and_type(served: Up, cli: Cli) -> None:
    base = served.http
    cli.ok("heartbeat", "forge", "ada")
    cli.ok("bus", "publish", "forge", "t", "--by", "ada")
    code, events = run(call("GET", f"{base}/cells/forge/events?since=2"))
    assert code == 200 and [e["seq"] for e in events] == [3, 4, 5, 6]
    code, events = run(call("GET", f"{base}/cells/forge/events", params={"type": "bus.*"}))
    assert [e["type"] for e in events] == ["bus.message"]
    assert run(call("GET", f"{base}/cells/forge/events?since=x"))[0] == 422


async def _sse(url: str, count: int, last_id: str | None = None) -> list[tuple[int, dict[str, Any]]]:
    """Read `count` events from an SSE stream, then hang up."""
    headers = {"Accept": "text/event-stream"}
    if last_id:
        headers["Last-Event-ID"] = last_id
    got: list[tuple[int, dict[str, Any]]] = []
    async with aiohttp.ClientSession() as s, s.get(url, headers=headers) as r:
        assert r.status == 200 and r.headers["Content-Type"].startswith("text/event-stream")
        seq = 0
        async for raw in r.content:
            line = raw.decode().rstrip("\n")
            if line.startswith("id: "):
                seq = int(line[4:])
            elif line.startswith("data: "):
                got.append((seq, json.loads(line[6:])))
                if len(got) == count:
                    return got
    return got


def test_sse_live_stream_and_resume_with_last_event_id(served: Up, cli: Cli) -> None:
    cli.ok("heartbeat", "forge", "ada")
    run(_sse_scenario(served.http, cli))


async def _sse_scenario(base: str, cli: Cli) -> None:
    """A client follows live appends made by the CLI in other processes, hangs up, and resumes."""
    head = json.loads(await asyncio.to_thread(cli.ok, "verify", "forge", "--json"))["events"]
    # only messages: the daemon may append its own verdicts (the never-seen agent) meanwhile
    reader = asyncio.create_task(_sse(f"{base}/cells/forge/events?since={head}&type=bus.message", 3))
    for n in range(3):
        await asyncio.to_thread(cli.ok, "bus", "publish", "forge", "live", "--by", "ada", "--data", str(n))
    first = await asyncio.wait_for(reader, 60)
    assert [e["payload"] for _, e in first] == [0, 1, 2]
    assert [seq for seq, e in first] == [e["seq"] for _, e in first] and first[0][0] > head  # SSE id = seq
    for n in range(3, 5):  # appended while nobody listens
        await asyncio.to_thread(cli.ok, "bus", "publish", "forge", "live", "--by", "ada", "--data", str(n))
    resumed = await asyncio.wait_for(_sse(f"{base}/cells/forge/events?type=bus.message", 2,
                                          last_id=str(first[-1][0])), 60)
    assert [e["payload"] for _, e in resumed] == [3, 4]  # no gap, no repeat
    assert first[-1][0] < resumed[0][0] < resumed[1][0]


def test_metrics_in_prometheus_format(served: Up, cli: Cli) -> None:
    base = served.http
    run(call("POST", f"{base}/cells/forge/agents/ada/heartbeat"))
    run(call("GET", f"{base}/cells/nope"))
    code, text = run(call("GET", f"{base}/metrics"))
    assert code == 200
    for needle in ('lazarus_events_appended_total{type="agent.heartbeat"}', 'lazarus_agents{health="healthy"} 1.0',
                   "lazarus_watcher_lag_seconds", 'lazarus_http_requests_total{status="404"}',
                   "lazarus_revivals_total"):
        assert needle in text


def test_oversize_body_is_413_and_nothing_written(up: Up, cli: Cli) -> None:
    up.config(top="max_event_bytes = 2048\n")
    cli.ok("cell", "create", "forge")
    cli.ok("agent", "invite", "forge", "ada", "--role", "lead")
    up.start("--http", "127.0.0.1:0")
    before = cli.ok("tail", "forge")
    big = {"type": "bus.message", "by": "ada", "topic": "t", "payload": "x" * 5000}
    code, body = run(call("POST", f"{up.http}/cells/forge/events", json=big))
    assert code == 413 and "max_event_bytes" in body["error"]
    code, body = run(call("POST", f"{up.http}/cells/forge/events",
                          json={**big, "payload": "x" * 1900}))  # fits the body limit, not the line limit
    assert code == 413
    assert cli.ok("tail", "forge") == before


TOKENS = {"op": "operator", "aud": "auditor", "ada-tok": "agent", "other-tok": "agent"}


def _tokens_file(path: Path, cell_id: str) -> None:
    entries = []
    for token, identity in TOKENS.items():
        entry = f'[[token]]\nsha256 = "{hashlib.sha256(token.encode()).hexdigest()}"\nidentity = "{identity}"\n'
        if token == "ada-tok":
            entry += f'cell = "{cell_id}"\nagent = "ada"\n'
        if token == "other-tok":
            entry += 'cell = "elsewhere"\nagent = "ada"\n'
        entries.append(entry)
    path.write_text("\n".join(entries))
    path.chmod(0o600)


def test_tokens_identity_and_impersonation(up: Up, cli: Cli, tmp_path: Path) -> None:
    tokens = tmp_path / "tokens.toml"
    up.config(f'[http]\ntokens_file = "{tokens}"\n')
    cid = cli.ok("cell", "create", "forge").strip()
    cli.ok("agent", "invite", "forge", "ada", "--role", "lead")
    cli.ok("agent", "invite", "forge", "bob", "--role", "write")
    _tokens_file(tokens, cid)
    up.start("--http", "127.0.0.1:0")
    base, ev_url = up.http, f"{up.http}/cells/forge/events"
    assert run(call("GET", f"{base}/health"))[0] == 200  # open for load balancers
    assert run(call("GET", f"{base}/metrics"))[0] == 200
    assert run(call("GET", f"{base}/cells"))[0] == 401
    assert run(call("GET", f"{base}/cells", token="wrong"))[0] == 401
    assert run(call("GET", f"{base}/cells", token="aud"))[0] == 200
    assert run(call("POST", ev_url, token="aud", json={"type": "bus.message", "topic": "t"}))[0] == 403
    # an agent token writes as its agent, in its cell, and nothing else
    code, body = run(call("POST", f"{base}/cells/forge/agents/ada/heartbeat", token="ada-tok"))
    assert code == 201
    assert run(call("POST", f"{base}/cells/forge/agents/bob/heartbeat", token="ada-tok"))[0] == 403
    assert run(call("POST", ev_url, token="ada-tok", json={"type": "bus.message", "by": "bob", "topic": "t"}))[0] == 403
    code, body = run(call("POST", ev_url, token="ada-tok", json={"type": "bus.message", "topic": "t"}))
    assert code == 201
    assert json.loads(cli.ok("tail", "forge", "--since", str(body["seq"] - 1)).splitlines()[0])["by"] == "ada"
    assert run(call("POST", ev_url, token="other-tok", json={"type": "bus.message", "topic": "t"}))[0] == 403
    assert run(call("GET", f"{base}/cells/forge", token="other-tok"))[0] == 403
    # the operator's token appends as operator, whatever the body claims
    assert run(call("POST", ev_url, token="op", json={"type": "cell.frozen", "by": "ada"}))[0] == 403
    assert run(call("POST", ev_url, token="op", json={"type": "cell.frozen"}))[0] == 201


def test_a_tokens_file_others_may_read_is_refused_at_start(up: Up, cli: Cli, tmp_path: Path) -> None:
    tokens = tmp_path / "tokens.toml"
    _tokens_file(tokens, "forge")
    tokens.chmod(0o644)
    up.config(f'[http]\ntokens_file = "{tokens}"\n')
    r = cli("up", "--http", "127.0.0.1:0", timeout=60)  # refused before anything starts
    assert r.code == 4 and "chmod 600" in r.err and r.err.count("\n") == 1, r.err


def test_non_loopback_without_tokens_is_refused_at_start(up: Up, cli: Cli) -> None:
    up.config()
    r = cli("up", "--http", "0.0.0.0:0")
    assert r.code == 4 and "tokens_file" in r.err and r.err.count("\n") == 1
    assert not (up.root_dir / ".lazarus" / "daemon.pid").exists()
    r = cli("up", "--http", "nonsense")
    assert r.code == 2 and "HOST:PORT" in r.err
