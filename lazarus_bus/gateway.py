"""The HTTP gateway: the daemon's projections and the one write path, over aiohttp, JSON everywhere."""

from __future__ import annotations

import asyncio
import contextlib
import errno
import fnmatch
import functools
import hashlib
import ipaddress
import logging
import re
import socket
import time
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Literal, Protocol, TypeVar

import msgspec
from aiohttp import web
from aiohttp.web_request import BaseRequest
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from . import events as ev
from .budget import cell_spend, spend_row
from .cells import Cell
from .checkpoints import checkpoint
from .config import Config
from .effects import effect_rows
from .errors import CorruptLog, EffectDone, Forbidden, LazarusError, MalformedInput, NotFound, Refused
from .fold import CellView, manifest
from .health import agent_rows, judge
from .log import Appended
from .names import check_agent
from .policy import effective

__all__ = ["Gateway", "Identity", "Served", "load_tokens", "parse_listen"]

log = logging.getLogger(__name__)
KEEPALIVE = 15.0
SSE_QUEUE = 10_000
# appends that wait for disk and backlog reads: a slow disk or a long backlog never stalls the daemon's loop
IO_THREADS = 4
# batches of one cell's appends in flight at once: one writing while the one before waits on its flush
IN_FLIGHT = 2
T = TypeVar("T")


class Served(Protocol):
    """What the gateway needs of the daemon it serves: watched cells, their projections, counters."""

    started_at: float
    appended: dict[str, int]

    @property
    def revivals(self) -> dict[str, int]: ...

    @property
    def lag(self) -> float: ...

    def cell(self, ref: str) -> Cell | None:
        """A watched cell by id or name; by the id of a watched cell, a lookup without I/O."""
        ...

    def views(self) -> dict[str, CellView]: ...

    @property
    def corrupt(self) -> dict[str, str]: ...

    def status(self) -> dict[str, Any]: ...

    def agent_token(self, digest: str) -> tuple[str, str, str] | None:
        """(cell id, agent, incarnation) of a per-incarnation token the daemon handed a confined agent."""
        ...


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
    incarnation: str = ""  # a confined agent's token names its incarnation too: it is stamped on what it sends


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


def _via_unix(request: BaseRequest) -> bool:
    """Whether the request came over the agents' Unix socket (its peer has no address)."""
    sock = request.transport.get_extra_info("socket") if request.transport is not None else None
    return sock is not None and sock.family == socket.AF_UNIX


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


_PATH = re.compile(r"(?<![\w.~:/-])/(?:[^\s/'\"]+/)+([^\s/'\",;)]+)")


def scrub(message: str) -> str:
    """An error body names a file by its last part only: the layout of the host is not the client's business."""
    return _PATH.sub(r"\1", message)


COOKIE = "lazarus_token"
CONSOLE_OPEN = frozenset({"/ui/login"})  # the console's login form (and its static files) need no token


def console_token(request: web.Request) -> str:
    """A browser cannot send a bearer header when it follows a link: the console keeps the token in a
    cookie (HttpOnly, SameSite=Strict) and it counts only for the console's own pages."""
    return request.cookies.get(COOKIE, "") if request.path == "/ui" or request.path.startswith("/ui/") else ""


def console_login(request: web.Request) -> web.Response | None:
    """A console page asked for without a valid token sends the browser to the login form."""
    if request.path != "/ui" and not request.path.startswith("/ui/"):
        return None
    return web.Response(status=303, headers={"Location": "/ui/login"}, text="log in at /ui/login\n")


def _error(status: int, message: str) -> web.Response:
    return web.json_response({"error": scrub(message)}, status=status)


def _json(data: Any, status: int = 200) -> web.Response:
    return web.Response(body=msgspec.json.encode(data), status=status, content_type="application/json")


class _Handler(web.RequestHandler):
    """aiohttp's connection handler, answering a request it cannot parse in JSON, logged in one line."""

    def handle_error(self, request: BaseRequest, status: int = 500, exc: BaseException | None = None,
                     message: str | None = None) -> web.StreamResponse:
        reason = str(getattr(exc, "message", "") or message or type(exc).__name__).splitlines()[0].strip().rstrip(":")
        log.info("HTTP %d from %s: %s", status, request.remote, reason)
        if request.writer.output_size > 0:
            raise ConnectionError("a response was under way: nothing more can be said on this connection")
        text = f"malformed HTTP request: {reason}" if status < 500 else "internal error"
        resp = _error(status, text)
        resp.force_close()
        return resp


class _Busy(asyncio.Protocol):
    """Past max_connections: one 503 and the connection closed, so idle clients never exhaust descriptors."""

    def __init__(self, limit: int) -> None:
        body = msgspec.json.encode({"error": f"too many connections (max_connections {limit}); try again"})
        self.response = (b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\n"
                         b"Retry-After: 1\r\nConnection: close\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body))

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.WriteTransport)
        transport.write(self.response)
        transport.close()


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


_Pending = tuple[ev.Event, int | None, asyncio.Future[list[Appended]]]
_Outcome = list[Appended] | Exception


class _Commits:
    """One cell's appends through the gateway, in batches appended on the loop: with fsync "never", the
    requests of one turn of the loop, answered at once; with "always", those that arrived while the
    last batch's flush ran (a worker thread waits for it), appended together once it is done and
    answered once their own flush is. Where an append itself blocks (the network), a batch is one hop
    to a worker thread, and those that arrive while it runs join the next. Each event is still
    admitted, chained and answered on its own."""

    def __init__(self, cell: Cell, pool: ThreadPoolExecutor) -> None:
        self.cell = cell
        self.pool = pool
        self.queue: list[_Pending] = []
        self.due = False  # a turn of the loop is to append what is queued
        self.syncing = False  # a worker thread waits for the flush of the last batch
        self.running = 0  # batches appended in worker threads

    def submit(self, draft: ev.Event, expected: int | None) -> asyncio.Future[list[Appended]]:
        loop = asyncio.get_running_loop()
        done: asyncio.Future[list[Appended]] = loop.create_future()
        self.queue.append((draft, expected, done))
        if not self.due:
            self.due = True
            loop.call_soon(self._turn)  # after the handlers ready in this turn have queued theirs
        return done

    def _turn(self) -> None:
        self.due = False
        if self.syncing or not self.queue:
            return  # appended when that flush is done, all in one batch: the next flush covers them anyway
        unwaited = self.cell.log.unwaited()
        if unwaited is None:  # appends that block: in worker threads
            if self.running < IN_FLIGHT:
                self._start()
            return
        batch, self.queue = self.queue, []
        with unwaited as durable:
            outcomes = _commit(self.cell, [(d, x) for d, x, _ in batch])
        if not durable.pending:
            _answer(batch, outcomes)
            return
        self.syncing = True  # one worker thread waits for the flush that covers the batch
        self._off(durable.wait, functools.partial(self._synced, batch, outcomes))

    def _synced(self, batch: list[_Pending], outcomes: list[_Outcome], flushed: asyncio.Future[Any]) -> None:
        self.syncing = False
        failed = _failure(flushed)
        if failed is not None:  # the flush failed: nothing it was to cover is acknowledged
            outcomes = [o if isinstance(o, Exception) else failed for o in outcomes]
        _answer(batch, outcomes)
        if self.queue:
            self._turn()  # what arrived meanwhile

    def _start(self) -> None:
        batch, self.queue = self.queue, []
        self.running += 1
        self._off(functools.partial(_commit, self.cell, [(d, x) for d, x, _ in batch]),
                  functools.partial(self._done, batch))

    def _done(self, batch: list[_Pending], outcome: asyncio.Future[list[_Outcome]]) -> None:
        """On the loop: a thread's batch answered, then the next one if requests wait."""
        self.running -= 1
        failed = _failure(outcome)
        _answer(batch, [failed] * len(batch) if failed is not None else outcome.result())
        if self.queue and self.running < IN_FLIGHT:
            self._start()

    def _off(self, work: Callable[[], Any], then: Callable[[asyncio.Future[Any]], None]) -> None:
        """`work` in a worker thread, `then` on the loop with its outcome."""
        loop = asyncio.get_running_loop()
        try:
            running = loop.run_in_executor(self.pool, work)
        except RuntimeError as exc:  # the pool is shut down: the daemon is stopping
            running = loop.create_future()
            running.set_exception(LazarusError(f"not appended: {exc}"))
        running.add_done_callback(then)


def _failure(outcome: asyncio.Future[Any]) -> Exception | None:
    if outcome.cancelled():
        return LazarusError("not appended: cancelled")
    failed = outcome.exception()
    if failed is None or isinstance(failed, Exception):
        return failed
    return LazarusError(f"not appended: {type(failed).__name__}")


def _answer(batch: list[_Pending], outcomes: list[_Outcome]) -> None:
    """Each request its own result or error."""
    for (_, _, done), outcome in zip(batch, outcomes):
        if done.cancelled():
            continue  # its client went away: the event is written all the same
        if isinstance(outcome, Exception):
            done.set_exception(outcome)
        else:
            done.set_result(outcome)


def _plain(draft: ev.Event, expected: int | None) -> bool:
    """A heartbeat with no id and no expected seq: several go in one write, as if one by one."""
    return type(draft) is ev.AgentHeartbeat and not draft.id and expected is None


def _commit(cell: Cell, batch: list[tuple[ev.Event, int | None]]) -> list[_Outcome]:
    """A batch of requests' appends, then one wait for the disk for them all. Plain heartbeats next to
    each other are written together (one lock, one write, one fold); anything else, or a run of them
    refused as a whole, one request at a time, so each request gets its own answer."""
    out: list[_Outcome] = []
    try:
        with cell.log.group_commit():  # the appends note their tickets; the wait for the flush is on the way out
            i = 0
            while i < len(batch):
                j = i + 1
                while j < len(batch) and _plain(*batch[i]) and _plain(*batch[j]):
                    j += 1
                if j - i > 1 and (written := _together(cell, [d for d, _ in batch[i:j]])) is not None:
                    out.extend(written)
                else:
                    out.extend(_alone(cell, draft, expected) for draft, expected in batch[i:j])
                i = j
    except LazarusError as exc:  # the flush failed: what this batch wrote is not known durable, so not acknowledged
        lost: list[_Outcome] = [exc] * (len(batch) - len(out))
        return [r if isinstance(r, Exception) else exc for r in out] + lost
    return out


def _alone(cell: Cell, draft: ev.Event, expected: int | None) -> _Outcome:
    try:
        return cell.append(draft, expected_seq=expected)
    except Exception as exc:  # noqa: BLE001 - a refusal answers its own request, not the batch
        return exc


def _together(cell: Cell, drafts: list[ev.Event]) -> list[_Outcome] | None:
    """Heartbeats in one append (admitted in order, each against the state the ones before leave), split
    back per request: its heartbeat and what admission added after it (a `cell.activated`; any before
    the first goes with the first); None when refused, to be tried one by one."""
    try:
        written = cell.append_many(drafts)
    except (MalformedInput, NotFound, Refused):
        return None  # refused before anything was written: one by one, each its own answer
    except LazarusError as exc:  # the disk or the log: every request of the run is told
        return [exc] * len(drafts)
    out: list[_Outcome] = []
    mine: list[Appended] = []
    for a in written:
        if type(a.event) is ev.AgentHeartbeat and any(type(b.event) is ev.AgentHeartbeat for b in mine):
            out.append(mine)
            mine = []
        mine.append(a)
    out.append(mine)
    return out


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
        self.commits: dict[str, _Commits] = {}  # cell id -> its appends in batches
        self.known: dict[str, Cell] = {}  # a cell reference (id or name) -> the cell it named last time
        self.subscribers: dict[str, set[asyncio.Queue[ev.Event | None]]] = {}
        self.registry = CollectorRegistry(auto_describe=True)
        self.registry.register(_Metrics(self))
        self.runner: web.AppRunner | None = None
        self.listener: asyncio.Server | None = None
        self.unix: asyncio.Server | None = None
        self.socket = ""
        self.sweeper: asyncio.Task[None] | None = None
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
        r.add_post("/cells/{cell}/checkpoints", self.checkpoint)
        r.add_get("/cells/{cell}/effects", self.effects)
        r.add_get("/cells/{cell}/budget", self.budget)

    def check_listen(self, listen: str) -> tuple[str, int]:
        """Refuse a non-loopback address without a tokens file, before anything starts."""
        host, port = parse_listen(listen)
        if not _loopback(host) and self.tokens is None:
            raise Refused(f"refusing to serve HTTP on {listen} without [http] tokens_file: "
                          "bind to 127.0.0.1 or configure tokens")
        return host, port

    async def _setup(self) -> None:
        if self.runner is None:
            self.runner = web.AppRunner(self.app, access_log=None, handle_signals=False)
            await self.runner.setup()
            self.sweeper = asyncio.create_task(self._sweep())

    async def start_unix(self, path: Path) -> None:
        """The socket confined agents append through (DESIGN section 15), with the same connection limit
        and timeouts as TCP; there only per-incarnation tokens are taken."""
        await self._setup()
        path.unlink(missing_ok=True)  # left by a daemon that was killed (the root's lock says none runs)
        try:
            self.unix = await asyncio.get_running_loop().create_unix_server(self._connection, str(path))
            path.chmod(0o600)
        except OSError as exc:
            raise LazarusError(f"cannot serve the agents' socket {path}: {exc.strerror}") from None
        self.socket = str(path)

    async def start(self, listen: str) -> None:
        host, port = self.check_listen(listen)
        had = self.runner is not None
        await self._setup()
        assert self.runner is not None
        try:
            self.listener = await asyncio.get_running_loop().create_server(
                self._connection, host, port, reuse_address=True)
        except OSError as exc:
            if not had:
                if self.sweeper is not None:
                    self.sweeper.cancel()
                await self.runner.cleanup()
                self.runner = None
            busy = (" (another daemon's? give this one `lazarus up --http HOST:PORT`, `--no-http`, or"
                    " `[http] listen`)" if exc.errno == errno.EADDRINUSE else "")
            raise LazarusError(f"cannot serve HTTP on {listen}: {exc.strerror}{busy}") from None
        bound = self.listener.sockets[0].getsockname()
        self.address = f"{bound[0]}:{bound[1]}"

    def _connection(self) -> asyncio.Protocol:
        """One protocol per accepted connection, refused at once past the limit."""
        assert self.runner is not None
        server, http = self.runner.server, self.config.http
        if server is None or len(server.connections) >= http.max_connections:
            return _Busy(http.max_connections)
        return _Handler(server, loop=asyncio.get_running_loop(), keepalive_timeout=http.header_timeout,
                        access_log=None,  # type: ignore[arg-type]  # aiohttp's own "no access log"
                        max_line_size=8190, max_field_size=8190, max_headers=64)

    async def _sweep(self) -> None:
        """Cut readers that take nothing for body_timeout while a response waits for them (backpressure
        that cannot turn into a held connection); slow request heads are cut by aiohttp's keep-alive timer."""
        assert self.runner is not None and self.runner.server is not None
        stalled: dict[asyncio.BaseTransport, tuple[int, float]] = {}
        period = min(1.0, self.config.http.body_timeout / 4)
        loop = asyncio.get_running_loop()
        while True:
            await asyncio.sleep(period)
            now, seen = loop.time(), dict[asyncio.BaseTransport, tuple[int, float]]()
            for handler in self.runner.server.connections:
                transport = handler.transport
                if not isinstance(transport, asyncio.WriteTransport) or transport.is_closing():
                    continue
                pending = transport.get_write_buffer_size()
                if pending == 0:
                    continue
                last, since = stalled.get(transport, (-1, now))
                if pending < last:
                    since = now  # the reader took something
                if now - since >= self.config.http.body_timeout:
                    log.info("HTTP: a client took nothing for %g s; connection closed", now - since)
                    transport.abort()
                    continue
                seen[transport] = (pending, since)
            stalled = seen

    async def stop(self) -> None:
        for queues in self.subscribers.values():
            for q in queues:
                q.put_nowait(None)
        if self.sweeper is not None:
            self.sweeper.cancel()
        if self.listener is not None:
            self.listener.close()
        if self.unix is not None:
            self.unix.close()
            with contextlib.suppress(OSError):
                Path(self.socket).unlink()
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
            if exc.status == 408:
                resp.force_close()  # the rest of the body may still be on its way
        except (ConnectionResetError, asyncio.CancelledError):
            raise
        except Exception as exc:  # noqa: BLE001 - JSON, never a traceback page
            log.error("HTTP %s %s: internal error: %s: %s", request.method, request.path, type(exc).__name__,
                      scrub(str(exc)).splitlines()[0] if str(exc) else "")
            log.debug("HTTP internal error", exc_info=True)
            resp = _error(500, f"internal error: {type(exc).__name__}")
        self.requests[resp.status] = self.requests.get(resp.status, 0) + 1
        return resp

    @web.middleware
    async def _auth(self, request: web.Request,
                    handler: Callable[[web.Request], Awaitable[web.StreamResponse]]) -> web.StreamResponse:
        if _via_unix(request):
            return await self._agent_auth(request, handler)
        if self.tokens is None or request.path in ("/health", "/metrics") or request.path in CONSOLE_OPEN \
                or request.path.startswith("/ui/static/"):
            request["identity"] = ANYONE
            return await handler(request)
        header = request.headers.get("Authorization", "")
        scheme, _, token = header.partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            scheme, token = "bearer", console_token(request)  # the web console's cookie (same tokens)
        if scheme.lower() != "bearer" or not token.strip():
            return console_login(request) or _error(401, "missing bearer token (Authorization: Bearer ...)")
        identity = self.tokens.get(hashlib.sha256(token.strip().encode()).hexdigest())
        if identity is None:
            return console_login(request) or _error(401, "unknown token")
        request["identity"] = identity
        return await handler(request)

    async def _agent_auth(self, request: web.Request,
                          handler: Callable[[web.Request], Awaitable[web.StreamResponse]]) -> web.StreamResponse:
        """On the agents' socket every request carries the token the daemon gave that incarnation."""
        scheme, _, token = request.headers.get("Authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            return _error(401, "missing bearer token: use $LAZARUS_TOKEN (Authorization: Bearer ...)")
        found = self.served.agent_token(hashlib.sha256(token.strip().encode()).hexdigest())
        if found is None:
            return _error(401, "unknown token (or one of an incarnation that has ended)")
        request["identity"] = Identity(kind="agent", cell=found[0], agent=found[1], incarnation=found[2])
        return await handler(request)

    # -- helpers --------------------------------------------------------------------------

    @staticmethod
    def _stamped(request: web.Request, draft: ev.Event) -> ev.Event:
        """What a confined agent sends carries its token's incarnation, so a superseded copy is fenced."""
        ident: Identity = request["identity"]
        if not ident.incarnation or not isinstance(draft, ev.INCARNATED) or draft.by != ident.agent:
            return draft
        return msgspec.structs.replace(draft, incarnation=ident.incarnation)

    def _found(self, ref: str) -> tuple[Cell, CellView]:
        """In a worker thread: the cell by id or name and its projection brought up to date."""
        cell = self.served.cell(ref)
        if cell is None:
            raise NotFound(f"no cell {ref!r}")
        if cell.id in self.served.corrupt:
            raise CorruptLog(self.served.corrupt[cell.id])
        return cell, cell.refresh()

    async def _cell(self, request: web.Request) -> tuple[Cell, CellView]:
        """The cell named in the path as the daemon folds it, brought up to date; an agent token sees
        its own cell only."""
        ref = request.match_info["cell"]
        cell, view = await self._io(self._found, ref)  # one hop to a worker thread, not two
        self.known[ref] = cell
        self._may_see(request, cell, view)
        return cell, view

    @staticmethod
    def _may_see(request: web.Request, cell: Cell, view: CellView) -> None:
        ident: Identity = request["identity"]
        if ident.kind == "agent" and ident.cell not in (cell.id, view.name):
            raise Forbidden(f"token of agent {ident.agent} is for cell {ident.cell}, not {request.match_info['cell']}")

    async def _target(self, request: web.Request) -> Cell:
        """The cell a write goes to: one named before is found on the loop, with no thread hop and no fold
        (the append folds under the cell's lock what it must); the first time, as `_cell` finds it."""
        ref = request.match_info["cell"]
        cell = self.known.get(ref)
        view = cell.projection if cell is not None else None
        if cell is None or view is None or view.state == "destroyed" or self.served.cell(cell.id) is not cell:
            return (await self._cell(request))[0]
        if cell.id in self.served.corrupt:
            raise CorruptLog(self.served.corrupt[cell.id])
        self._may_see(request, cell, view)
        return cell

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
        try:
            if request.content.is_eof():  # all in already (a small body): no timer to set
                raw = await request.read()
            else:
                async with asyncio.timeout(self.config.http.body_timeout):
                    raw = await request.read()
        except TimeoutError:
            raise web.HTTPRequestTimeout(
                reason=f"request body not received within body_timeout ({self.config.http.body_timeout:g} s)"
            ) from None
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
        commits = self.commits.get(cell.id)
        if commits is None or commits.cell is not cell:
            commits = self.commits[cell.id] = _Commits(cell, self.io)
        written = await commits.submit(draft, expected)  # with the requests around it: one write, one flush
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
                      "errors": len(status["errors"]), "corrupt": status["corrupt"],
                      "store_error": scrub(status["store_error"]) if status.get("store_error") else None})

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
                row.update(state="corrupt", error=scrub(self.served.corrupt[cid]))
            out.append(row)
        views = self.served.views()
        for cid, why in sorted(self.served.corrupt.items()):  # corrupt before its first fold: no view at all
            if cid not in views:
                name = await self._io(self._name, cid)
                if ident.kind != "agent" or ident.cell in (cid, name):
                    out.append({"id": cid, "name": name, "state": "corrupt", "error": scrub(why), "agents": {}})
        return _json(out)

    def _name(self, cid: str) -> str:
        cell = self.served.cell(cid)
        try:
            return cell.read_name() if cell is not None else ""
        except LazarusError:
            return ""

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
        cell = await self._target(request)
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
        return await self._written(cell, self._stamped(request, draft), expected)

    async def append(self, request: web.Request) -> web.Response:
        cell = await self._target(request)
        body = await self._body(request)
        expected = body.pop("expected_seq", None)
        by = self._author(request, body.get("by"))
        draft = ev.parse_emitted(body, by=by)
        try:
            return await self._written(cell, self._stamped(request, draft), expected)
        except EffectDone as done:  # refused, and answered with the recorded result
            return _json({"error": str(done), "result": done.result}, status=done.http_status)

    async def checkpoint(self, request: web.Request) -> web.Response:
        """A checkpoint whose workspace paths the daemon archives: a confined agent may not write the
        cell's `checkpoints/`, so it asks here (the CLI and the client do, inside a sandbox)."""
        cell, _ = await self._cell(request)
        body = await self._body(request)
        by = self._author(request, body.pop("by", None))
        if not by:
            raise MalformedInput("a checkpoint needs `by`")
        known = {"summary", "state", "paths", "artifacts", "checkpoint_id"}
        unknown = sorted(set(body) - known)
        if unknown:
            raise MalformedInput(f"unknown field {unknown[0]!r} (a checkpoint takes {', '.join(sorted(known))})")
        paths, artifacts = body.get("paths") or [], body.get("artifacts") or []
        if not all(isinstance(x, str) for x in [*paths, *artifacts]) or not isinstance(body.get("summary", ""), str):
            raise MalformedInput("summary is a string, paths and artifacts lists of strings")
        ident: Identity = request["identity"]
        written = await self._io(functools.partial(
            checkpoint, cell, by, summary=body.get("summary", ""), state=body.get("state"), paths=list(paths),
            artifacts=list(artifacts), checkpoint_id=body.get("checkpoint_id") or None,
            incarnation=ident.incarnation if ident.agent == by else ""))
        e = written.event
        return _json({"seq": written.seq, "id": e.id, "type": e.type, "duplicate": written.duplicate,
                      "checkpoint_id": getattr(e, "checkpoint_id", ""), "event": msgspec.to_builtins(e)},
                     status=200 if written.duplicate else 201)

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

