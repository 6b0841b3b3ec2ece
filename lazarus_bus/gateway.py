"""The HTTP gateway: the daemon's projections and the one write path, over aiohttp, JSON everywhere."""

from __future__ import annotations

import asyncio
import fnmatch
import functools
import hashlib
import ipaddress
import logging
import time
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Literal, Protocol, TypeVar

import msgspec
from aiohttp import web
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from . import events as ev
from .budget import cell_spend, spend_row
from .cells import Cell
from .config import Config
from .effects import effect_rows
from .errors import CorruptLog, EffectDone, Forbidden, LazarusError, MalformedInput, NotFound, Refused
from .fold import CellView, manifest
from .health import agent_rows, judge
from .names import check_agent
from .policy import effective

__all__ = ["Gateway", "Identity", "Served", "load_tokens", "parse_listen"]

log = logging.getLogger(__name__)
KEEPALIVE = 15.0
SSE_QUEUE = 10_000
IO_THREADS = 4  # appends and backlog reads: a slow disk or a long backlog never stalls the daemon's loop
T = TypeVar("T")


class Served(Protocol):
    """What the gateway needs of the daemon it serves: watched cells, their projections, counters."""

    started_at: float
    appended: dict[str, int]

    @property
    def revivals(self) -> dict[str, int]: ...

    @property
    def lag(self) -> float: ...

    def cell(self, ref: str) -> Cell | None: ...

    def views(self) -> dict[str, CellView]: ...

    @property
    def corrupt(self) -> dict[str, str]: ...

    def status(self) -> dict[str, Any]: ...


class Token(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """One `[[token]]` entry: the SHA-256 of a bearer token and whom it speaks for."""

    sha256: str
    identity: Literal["operator", "auditor", "agent"]
    cell: str = ""
    agent: str = ""


class TokensFile(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    token: list[Token] = []


class Identity(msgspec.Struct, frozen=True, kw_only=True):
    """Who is asking: `operator`, `auditor` (read-only), or one agent of one cell; None without tokens."""

    kind: Literal["operator", "auditor", "agent", "anyone"]
    cell: str = ""
    agent: str = ""


ANYONE = Identity(kind="anyone")


def load_tokens(path: Path) -> dict[str, Identity]:
    """sha256 -> identity; every problem names the file and the entry."""
    try:
        raw = path.read_bytes()
        mode = path.stat().st_mode & 0o777
    except OSError as exc:
        raise MalformedInput(f"tokens_file {path}: {exc.strerror}") from None
    if mode & 0o077:  # the hashes of every bearer token: as private as an ssh key
        raise Refused(f"tokens_file {path} may be read by other users (mode {mode:o}); run `chmod 600 {path}`")
    try:
        tokens = msgspec.toml.decode(raw, type=TokensFile).token
    except (msgspec.ValidationError, msgspec.DecodeError, UnicodeDecodeError) as exc:
        raise MalformedInput(f"tokens_file {path}: {exc}") from None
    out = {}
    for n, t in enumerate(tokens, start=1):
        digest = t.sha256.lower()
        if len(digest) != 64 or any(c not in "0123456789abcdef" for c in digest):
            raise MalformedInput(f"tokens_file {path}: token {n}: sha256 must be 64 hex digits")
        if t.identity == "agent":
            if not t.cell or not t.agent:
                raise MalformedInput(f"tokens_file {path}: token {n}: an agent token needs cell and agent")
            check_agent(t.agent)
        out[digest] = Identity(kind=t.identity, cell=t.cell, agent=t.agent)
    return out


def parse_listen(listen: str) -> tuple[str, int]:
    """HOST:PORT (an IPv6 host in brackets)."""
    host, sep, port = listen.rpartition(":")
    if not sep or not port.isdigit() or not host:
        raise MalformedInput(f"listen address must be HOST:PORT, got {listen!r}")
    return host.strip("[]"), int(port)


def _loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _error(status: int, message: str) -> web.Response:
    return web.json_response({"error": message}, status=status)


def _json(data: Any, status: int = 200) -> web.Response:
    return web.Response(body=msgspec.json.encode(data), status=status, content_type="application/json")


class _Metrics(Collector):
    """Read from the daemon at scrape time: nothing to keep in step."""

    def __init__(self, gateway: Gateway) -> None:
        self.g = gateway

    def collect(self) -> Any:
        d = self.g.served
        appended = CounterMetricFamily("lazarus_events_appended", "Events appended, by type", labels=["type"])
        for t, n in sorted(d.appended.items()):
            appended.add_metric([t], n)
        revivals = CounterMetricFamily("lazarus_revivals", "Revival actions planned, by action", labels=["action"])
        for a, n in sorted(d.revivals.items()):
            revivals.add_metric([a], n)
        agents = GaugeMetricFamily("lazarus_agents", "Agents by health", labels=["health"])
        for h, n in sorted(self.g.health_counts().items()):
            agents.add_metric([h], n)
        lag = GaugeMetricFamily("lazarus_watcher_lag_seconds", "From an event's ts to its fold")
        lag.add_metric([], d.lag)
        requests = CounterMetricFamily("lazarus_http_requests", "HTTP requests, by status", labels=["status"])
        for s, n in sorted(self.g.requests.items()):
            requests.add_metric([str(s)], n)
        yield from (appended, revivals, agents, lag, requests)


class Gateway:
    """Serves the daemon's projections and appends through the same cells the daemon folds."""

    def __init__(self, served: Served, config: Config) -> None:
        self.served = served
        self.config = config
        self.io = ThreadPoolExecutor(IO_THREADS, thread_name_prefix="lazarus-http-io")
        self.tokens: dict[str, Identity] | None = None
        if self.config.http.tokens_file:
            self.tokens = load_tokens(Path(self.config.http.tokens_file))
        self.requests: dict[int, int] = {}
        self.subscribers: dict[str, set[asyncio.Queue[ev.Event | None]]] = {}
        self.registry = CollectorRegistry(auto_describe=True)
        self.registry.register(_Metrics(self))
        self.runner: web.AppRunner | None = None
        self.address = ""
        self.app = web.Application(middlewares=[self._errors, self._auth],
                                   client_max_size=self.config.max_event_bytes)
        r = self.app.router
        r.add_get("/health", self.health)
        r.add_get("/metrics", self.metrics)
        r.add_get("/cells", self.cells)
        r.add_get("/cells/{cell}", self.cell)
        r.add_get("/cells/{cell}/agents/{agent}", self.agent)
        r.add_post("/cells/{cell}/agents/{agent}/heartbeat", self.heartbeat)
        r.add_post("/cells/{cell}/events", self.append)
        r.add_get("/cells/{cell}/events", self.events)
        r.add_get("/cells/{cell}/effects", self.effects)
        r.add_get("/cells/{cell}/budget", self.budget)

    def check_listen(self, listen: str) -> tuple[str, int]:
        """Refuse a non-loopback address without a tokens file, before anything starts."""
        host, port = parse_listen(listen)
        if not _loopback(host) and self.tokens is None:
            raise Refused(f"refusing to serve HTTP on {listen} without [http] tokens_file: "
                          "bind to 127.0.0.1 or configure tokens")
        return host, port

    async def start(self, listen: str) -> None:
        host, port = self.check_listen(listen)
        self.runner = web.AppRunner(self.app, access_log=None, handle_signals=False)
        await self.runner.setup()
        site = web.TCPSite(self.runner, host, port, reuse_address=True)
        try:
            await site.start()
        except OSError as exc:
            await self.runner.cleanup()
            raise LazarusError(f"cannot serve HTTP on {listen}: {exc.strerror}") from None
        server = site._server
        sockets = server.sockets if isinstance(server, asyncio.Server) else []
        bound = sockets[0].getsockname() if sockets else (host, port)
        self.address = f"{bound[0]}:{bound[1]}"

    async def stop(self) -> None:
        for queues in self.subscribers.values():
            for q in queues:
                q.put_nowait(None)
        if self.runner is not None:
            await self.runner.cleanup()
        self.io.shutdown(wait=True)

    async def _io(self, fn: Callable[..., T], *args: Any) -> T:
        """Blocking work (the log, the disk) in a worker thread, off the daemon's loop."""
        return await asyncio.get_running_loop().run_in_executor(self.io, functools.partial(fn, *args))

    def publish(self, cell_id: str, events: list[ev.Event]) -> None:
        """New events of a cell, to every live stream of it (on the loop)."""
        for q in self.subscribers.get(cell_id, ()):
            for e in events:
                if q.full():
                    q.put_nowait(None)  # too slow a reader: it reconnects with Last-Event-ID, losing nothing
                    break
                q.put_nowait(e)

    # -- middleware -----------------------------------------------------------------------

    @web.middleware
    async def _errors(self, request: web.Request,
                      handler: Callable[[web.Request], Awaitable[web.StreamResponse]]) -> web.StreamResponse:
        try:
            resp = await handler(request)
        except LazarusError as exc:
            resp = _error(exc.http_status, str(exc))
        except web.HTTPRequestEntityTooLarge:
            resp = _error(413, f"request body over max_event_bytes ({self.config.max_event_bytes})")
        except web.HTTPException as exc:
            resp = _error(exc.status, exc.reason)
        except (ConnectionResetError, asyncio.CancelledError):
            raise
        except Exception as exc:  # noqa: BLE001 - JSON, never a traceback page
            log.exception("HTTP %s %s", request.method, request.path)
            resp = _error(500, f"internal error: {type(exc).__name__}")
        self.requests[resp.status] = self.requests.get(resp.status, 0) + 1
        return resp

    @web.middleware
    async def _auth(self, request: web.Request,
                    handler: Callable[[web.Request], Awaitable[web.StreamResponse]]) -> web.StreamResponse:
        if self.tokens is None or request.path in ("/health", "/metrics"):
            request["identity"] = ANYONE
            return await handler(request)
        header = request.headers.get("Authorization", "")
        scheme, _, token = header.partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            return _error(401, "missing bearer token (Authorization: Bearer ...)")
        identity = self.tokens.get(hashlib.sha256(token.strip().encode()).hexdigest())
        if identity is None:
            return _error(401, "unknown token")
        request["identity"] = identity
        return await handler(request)

    # -- helpers --------------------------------------------------------------------------

    async def _cell(self, request: web.Request) -> tuple[Cell, CellView]:
        """The cell named in the path as the daemon folds it, brought up to date; an agent token sees
        its own cell only."""
        ref = request.match_info["cell"]
        cell = await self._io(self.served.cell, ref)
        if cell is None:
            raise NotFound(f"no cell {ref!r}")
        if cell.id in self.served.corrupt:
            raise CorruptLog(self.served.corrupt[cell.id])
        view = await self._io(cell.refresh)
        ident: Identity = request["identity"]
        if ident.kind == "agent" and ident.cell not in (cell.id, view.name):
            raise Forbidden(f"token of agent {ident.agent} is for cell {ident.cell}, not {ref}")
        return cell, view

    @staticmethod
    def _author(request: web.Request, claimed: str | None) -> str | None:
        """The token's identity is the author; a body claiming another is refused."""
        ident: Identity = request["identity"]
        if ident.kind == "anyone":
            return claimed
        if ident.kind == "auditor":
            raise Forbidden("auditor tokens are read-only")
        who = "operator" if ident.kind == "operator" else ident.agent
        if claimed not in (None, "", who):
            raise Forbidden(f"this token speaks for {who}, not {claimed}")
        return who

    async def _body(self, request: web.Request) -> dict[str, Any]:
        limit = self.config.max_event_bytes
        if request.content_length is not None and request.content_length > limit:
            raise web.HTTPRequestEntityTooLarge(max_size=limit, actual_size=request.content_length)
        raw = await request.read()
        if not raw.strip():
            return {}
        try:
            body = ev.decode_json(raw)
        except MalformedInput as exc:
            raise web.HTTPBadRequest(reason=str(exc)) from None
        if not isinstance(body, dict):
            raise MalformedInput("the body must be a JSON object")
        return body

    async def _written(self, cell: Cell, draft: ev.Event, expected: Any) -> web.Response:
        if expected is not None and (not isinstance(expected, int) or isinstance(expected, bool) or expected < 0):
            raise MalformedInput("expected_seq must be a non-negative integer")
        written = await self._io(functools.partial(cell.append, draft, expected_seq=expected))
        first = written[0]
        return _json({"seq": first.seq, "id": first.event.id, "type": first.event.type,
                      "duplicate": first.duplicate}, status=200 if first.duplicate else 201)

    def health_counts(self) -> dict[str, int]:
        now, out = time.time(), dict[str, int]()
        for view in self.served.views().values():
            for r in agent_rows(view, self.config, now):
                out[r["health"]] = out.get(r["health"], 0) + 1
        return out

    # -- endpoints ------------------------------------------------------------------------

    async def health(self, request: web.Request) -> web.Response:
        d = self.served
        states: dict[str, int] = {}
        for view in d.views().values():
            states[view.state] = states.get(view.state, 0) + 1
        status = d.status()
        return _json({"status": "ok", "version": status["version"], "pid": status["pid"],
                      "uptime": round(time.time() - d.started_at, 3), "cells": states,
                      "agents": self.health_counts(), "watcher_lag": round(d.lag, 6),
                      "errors": len(status["errors"]), "corrupt": status["corrupt"]})

    async def metrics(self, request: web.Request) -> web.Response:
        return web.Response(body=generate_latest(self.registry),
                            headers={"Content-Type": "text/plain; version=0.0.4; charset=utf-8"})

    async def cells(self, request: web.Request) -> web.Response:
        ident: Identity = request["identity"]
        now, out = time.time(), []
        for cid, view in sorted(self.served.views().items()):
            if ident.kind == "agent" and ident.cell not in (cid, view.name):
                continue
            rows = agent_rows(view, self.config, now)
            row: dict[str, Any] = {"id": cid, "name": view.name, "mission": view.mission, "state": view.state,
                                   "seq": view.seq, "agents": {r["agent"]: r["health"] for r in rows},
                                   "cost": round(sum(r["spend"]["cost"] for r in rows), 6),
                                   "effects_in_doubt": sum(len(r["in_doubt"]) for r in rows)}
            if cid in self.served.corrupt:
                row.update(state="corrupt", error=self.served.corrupt[cid])
            out.append(row)
        return _json(out)

    async def cell(self, request: web.Request) -> web.Response:
        _, view = await self._cell(request)
        body = manifest(view)
        body["seq"] = view.seq
        body["agents"] = agent_rows(view, self.config, time.time())
        body["approvals_pending"] = [a.key for a in view.approvals.values() if a.decision is None]
        body["effects_in_doubt"] = [e["effect_id"] for e in effect_rows(view, only_in_doubt=True)]
        body["spend"] = msgspec.to_builtins(cell_spend(view, time.time()))
        return _json(body)

    async def effects(self, request: web.Request) -> web.Response:
        """The side-effect ledger, oldest first; `?in_doubt=1` for the ones in doubt, `?agent=A` for one agent's."""
        _, view = await self._cell(request)
        agent = request.query.get("agent")
        flag = request.query.get("in_doubt", "")
        if flag not in ("", "0", "1", "true", "false"):
            raise MalformedInput(f"in_doubt must be 1 or 0, got {flag!r}")
        return _json(effect_rows(view, check_agent(agent) if agent else None, flag in ("1", "true")))

    async def budget(self, request: web.Request) -> web.Response:
        """Each agent's spend against its caps, and the cell's total."""
        _, view = await self._cell(request)
        now = time.time()
        return _json({"cell": view.id, "agents": [spend_row(view, self.config, a, now) for a in view.agents.values()],
                      "total": msgspec.to_builtins(cell_spend(view, now))})

    async def agent(self, request: web.Request) -> web.Response:
        _, view = await self._cell(request)
        name = request.match_info["agent"]
        a = view.agents.get(check_agent(name))
        if a is None:
            raise NotFound(f"agent {name!r} is not invited in cell {view.name}")
        verdict = judge(view, a, effective(self.config, view, name), time.time())
        return _json({"cell": view.id, **msgspec.to_builtins(a), "health": verdict.health,
                      "reason": verdict.reason, "detail": verdict.detail})

    async def heartbeat(self, request: web.Request) -> web.Response:
        cell, _ = await self._cell(request)
        agent = check_agent(request.match_info["agent"])
        body = await self._body(request)
        expected = body.pop("expected_seq", None)
        ident: Identity = request["identity"]
        if ident.kind == "agent" and ident.agent != agent:
            raise Forbidden(f"this token speaks for {ident.agent}, not {agent}")
        by = self._author(request, body.pop("by", None) or agent)
        if "agent" in body and body["agent"] != agent:
            raise MalformedInput(f"the body names agent {body['agent']!r} but the path {agent!r}")
        draft = ev.parse_draft({**body, "type": "agent.heartbeat", "agent": agent}, by=by)
        return await self._written(cell, draft, expected)

    async def append(self, request: web.Request) -> web.Response:
        cell, _ = await self._cell(request)
        body = await self._body(request)
        expected = body.pop("expected_seq", None)
        by = self._author(request, body.get("by"))
        draft = ev.parse_emitted(body, by=by)
        try:
            return await self._written(cell, draft, expected)
        except EffectDone as done:  # refused, and answered with the recorded result
            return _json({"error": str(done), "result": done.result}, status=done.http_status)

    async def events(self, request: web.Request) -> web.StreamResponse:
        cell, _ = await self._cell(request)
        since = self._since(request)
        types = request.query.getall("type", [])

        def wanted(e: ev.Event) -> bool:
            return not types or any(fnmatch.fnmatchcase(e.type, t) for t in types)

        if "text/event-stream" not in request.headers.get("Accept", ""):
            lines = await self._io(lambda: [line for e, line in cell.log.read_raw(since) if wanted(e)])
            return web.Response(body=b"[" + b",".join(lines) + b"]", content_type="application/json")
        return await self._stream(request, cell, since, wanted)

    @staticmethod
    def _since(request: web.Request) -> int:
        raw = request.headers.get("Last-Event-ID") or request.query.get("since", "0")
        try:
            since = int(raw)
        except ValueError:
            raise MalformedInput(f"since must be a seq (an integer), got {raw!r}") from None
        if since < 0:
            raise MalformedInput("since must be >= 0")
        return since

    async def _stream(self, request: web.Request, cell: Cell, since: int,
                      wanted: Callable[[ev.Event], bool]) -> web.StreamResponse:
        """Server-Sent Events: the backlog after `since`, then live; each SSE id is the event's seq."""
        queue: asyncio.Queue[ev.Event | None] = asyncio.Queue(SSE_QUEUE)
        self.subscribers.setdefault(cell.id, set()).add(queue)  # subscribe first: no gap before the backlog
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache",
                                           "X-Accel-Buffering": "no"})
        await resp.prepare(request)
        last = since
        try:
            last = await self._backlog(resp, cell, last, None, wanted)
            while True:
                try:
                    e_or_none = await asyncio.wait_for(queue.get(), KEEPALIVE)
                except TimeoutError:
                    await resp.write(b": keepalive\n\n")
                    continue
                if e_or_none is None:
                    break
                if e_or_none.seq <= last:
                    continue
                if e_or_none.seq > last + 1:  # a gap (a write from another thread delivered later): fill it
                    last = await self._backlog(resp, cell, last, e_or_none.seq, wanted)
                    continue
                last = e_or_none.seq
                if wanted(e_or_none):
                    line = ev.encode_event(e_or_none)
                    await resp.write(b"id: %d\nevent: %s\ndata: %s\n\n" % (last, e_or_none.type.encode(), line))
        except (ConnectionResetError, asyncio.CancelledError):
            pass
        finally:
            self.subscribers.get(cell.id, set()).discard(queue)
        return resp

    async def _backlog(self, resp: web.StreamResponse, cell: Cell, since: int, until: int | None,
                       wanted: Callable[[ev.Event], bool]) -> int:
        """The stored events after `since` (up to `until`), read in a worker thread a block at a time;
        the seq of the last one sent."""
        last = since
        while True:
            block = await self._io(_read_block, cell, last, until)
            for e, line in block:
                last = e.seq
                if wanted(e):
                    await resp.write(b"id: %d\nevent: %s\ndata: %s\n\n" % (e.seq, e.type.encode(), line))
            if len(block) < BACKLOG_BLOCK:
                return last


BACKLOG_BLOCK = 1000


def _read_block(cell: Cell, since: int, until: int | None) -> list[tuple[ev.Event, bytes]]:
    stop = since + BACKLOG_BLOCK if until is None else min(until, since + BACKLOG_BLOCK)
    return list(cell.log.read_raw(since, stop))

