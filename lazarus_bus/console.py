"""The web console at `/ui`: the fleet, what needs the operator, a cell's timeline and live events, an
agent's log tail, and the operator's buttons. Server-rendered with Jinja2 over the gateway's own
cells and tokens; htmx (vendored in `data/console/static/`) polls the fragments and follows the SSE
stream, so there is no JavaScript build step. Thin: every action appends the event the CLI would."""

from __future__ import annotations

import asyncio
import hashlib
import html
import time
from collections.abc import Awaitable, Callable
from importlib.resources import files
from typing import Any

import jinja2
import msgspec
from aiohttp import web
from rich.text import Text

from . import events as ev
from . import timeline as tl
from .budget import base_caps, raise_events
from .cells import Cell
from .errors import Forbidden, LazarusError, NotFound, Refused
from .fold import CellView
from .gateway import COOKIE, KEEPALIVE, SSE_QUEUE, Gateway, Identity
from .health import agent_rows
from .logrotate import last_lines
from .names import check_agent, check_ref_id
from .planner import manual_revival
from .policy import effective
from .render import spend_text

__all__ = ["Console", "install"]

DATA = files("lazarus_bus") / "data" / "console"
STATIC = {"htmx.min.js": "text/javascript", "sse.js": "text/javascript", "console.js": "text/javascript",
          "console.css": "text/css", "htmx-LICENSE.txt": "text/plain"}
LOG_LINES = 200
BACKLOG = 50
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
Action = Callable[[web.Request], Awaitable[None]]


def _loader(name: str) -> str:
    return (DATA / "templates" / name).read_text(encoding="utf-8")


def _ago(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    if seconds < 120:
        return f"{seconds:.0f}s"
    if seconds < 7200:
        return f"{seconds / 60:.0f}m"
    return f"{seconds / 3600:.0f}h"


class Console:
    """The console's routes on the gateway's app (added before it starts serving)."""

    def __init__(self, gateway: Gateway) -> None:
        self.gateway = gateway
        self.config = gateway.config
        self.env = jinja2.Environment(loader=jinja2.FunctionLoader(_loader), autoescape=True,
                                      undefined=jinja2.StrictUndefined)
        self.env.filters["ago"] = _ago
        self.env.filters["spend"] = lambda row: Text.from_markup(spend_text(row)).plain
        self.env.filters["clock"] = lambda ts: time.strftime("%H:%M:%S", time.localtime(ts))

    def install(self) -> None:
        r = self.gateway.app.router
        r.add_get("/ui", self.read(self.fleet))
        r.add_get("/ui/fleet", self.read(self.fleet_fragment))
        r.add_get("/ui/login", self.login_form)
        r.add_post("/ui/login", self.login)
        r.add_post("/ui/logout", self.logout)
        r.add_get("/ui/static/{name}", self.static)
        r.add_get("/ui/cells/{cell}", self.read(self.cell))
        r.add_get("/ui/cells/{cell}/agents", self.read(self.cell_agents))
        r.add_get("/ui/cells/{cell}/timeline.svg", self.read(self.timeline))
        r.add_get("/ui/cells/{cell}/stream", self.read(self.stream))
        r.add_get("/ui/cells/{cell}/agents/{agent}/log", self.read(self.log))
        r.add_post("/ui/cells/{cell}/approvals/{key}/{decision:approve|deny}", self.act(self.decide))
        r.add_post("/ui/cells/{cell}/agents/{agent}/{verb:revive|stop|start|restart}", self.act(self.agent_verb))
        r.add_post("/ui/cells/{cell}/agents/{agent}/raise-budget", self.act(self.raise_budget))

    # -- who may --------------------------------------------------------------------------

    @staticmethod
    def read(handler: Handler) -> Handler:
        """Reading: any operator or auditor token (or none, without a tokens file); agents use the API."""
        async def wrapped(request: web.Request) -> web.StreamResponse:
            ident: Identity = request["identity"]
            if ident.kind == "agent":
                raise Forbidden("the console is for operators and auditors; an agent token reads the API")
            return await handler(request)

        return wrapped

    def act(self, handler: Action) -> Handler:
        """Actions: the operator (or anyone, without a tokens file); then back to the page it came from."""
        async def wrapped(request: web.Request) -> web.StreamResponse:
            ident: Identity = request["identity"]
            if ident.kind not in ("operator", "anyone"):
                raise Forbidden(f"an {ident.kind} token may not act: the console's buttons need an operator token")
            form = await request.post()
            back = str(form.get("back", "/ui"))
            back = back if back.startswith("/ui") and "//" not in back else "/ui"
            try:
                await handler(request)
            except LazarusError as exc:
                return self._page("error.html", status=exc.http_status, message=str(exc), back=back)
            return _see_other(back)

        return wrapped

    # -- pages ----------------------------------------------------------------------------

    def _page(self, name: str, status: int = 200, **context: Any) -> web.Response:
        tokens = self.gateway.tokens is not None
        body = self.env.get_template(name).render(tokens=tokens, **context)
        return web.Response(text=body, status=status, content_type="text/html",
                            headers={"Cache-Control": "no-store", "X-Frame-Options": "DENY"})

    def _fleet(self) -> dict[str, Any]:
        """The cells and agents, and what needs the operator: approvals with their time left, escalations."""
        now = time.time()
        timeout, on_timeout = self.config.approvals.timeout, self.config.approvals.on_timeout
        cells: list[dict[str, Any]] = []
        needs: list[dict[str, Any]] = []
        served = self.gateway.served
        for cid, view in sorted(served.views().items(), key=lambda x: x[1].name):
            if cid in served.corrupt:
                cells.append({"id": cid, "name": view.name, "state": "corrupt", "error": served.corrupt[cid],
                              "agents": []})
                continue
            rows = agent_rows(view, self.config, now)
            cells.append({"id": cid, "name": view.name, "state": view.state, "mission": view.mission, "agents": rows})
            for a in view.approvals.values():
                if a.decision is None:
                    deadline = a.requested_at + timeout if timeout > 0 else None
                    needs.append({"kind": "approval", "cell": view.name, "cell_id": cid, "agent": a.agent,
                                  "key": a.key, "message": a.message, "deadline": deadline,
                                  "left": None if deadline is None else max(0.0, deadline - now),
                                  "on_timeout": on_timeout, "since": now - a.requested_at})
            for r in rows:
                exceeded = r["spend"]["exceeded"]
                if exceeded:
                    needs.append({"kind": "budget", "cell": view.name, "cell_id": cid, "agent": r["agent"],
                                  "what": exceeded, "spend": r["spend"]})
                if r["revival"] in ("escalated", "unrecoverable", "suppressed", "approval denied"):
                    needs.append({"kind": "revive", "cell": view.name, "cell_id": cid, "agent": r["agent"],
                                  "why": r["revival"], "reason": r["reason"]})
        return {"cells": cells, "needs": needs, "now": now}

    async def fleet(self, request: web.Request) -> web.Response:
        return self._page("fleet.html", **self._fleet(), ident=request["identity"])

    async def fleet_fragment(self, request: web.Request) -> web.Response:
        return self._page("_fleet.html", **self._fleet())

    async def _view(self, request: web.Request) -> tuple[Cell, CellView]:
        return await self.gateway._cell(request)

    async def cell(self, request: web.Request) -> web.Response:
        cell, view = await self._view(request)
        rows = agent_rows(view, self.config, time.time())
        return self._page("cell.html", view=view, rows=rows, ident=request["identity"],
                          since=max(0, view.seq - BACKLOG))

    async def cell_agents(self, request: web.Request) -> web.Response:
        _, view = await self._view(request)
        return self._page("_agents.html", view=view, rows=agent_rows(view, self.config, time.time()))

    async def timeline(self, request: web.Request) -> web.Response:
        cell, view = await self._view(request)

        def draw() -> str:
            t = tl.build(cell.log.read(), now=time.time(),
                         stale_after=lambda agent: effective(self.config, view, agent).stale_after)
            if t is None:
                raise NotFound(f"cell {cell.id} has an empty log")
            return tl.to_svg(t)

        svg = await self.gateway._io(draw)
        return web.Response(text=svg, content_type="image/svg+xml", headers={"Cache-Control": "no-store"})

    async def log(self, request: web.Request) -> web.Response:
        cell, view = await self._view(request)
        name = check_agent(request.match_info["agent"])
        if name not in view.agents:
            raise NotFound(f"agent {name!r} is not invited in cell {view.name}")
        lines = await self.gateway._io(last_lines, cell.agent_logs / f"{name}.log", LOG_LINES)
        text = b"".join(lines).decode(errors="replace")
        fragment = request.query.get("fragment") == "1"
        return self._page("_log.html" if fragment else "log.html", view=view, agent=name, text=text)

    async def stream(self, request: web.Request) -> web.StreamResponse:
        """The cell's events as they come, one HTML line each (SSE event `line`), after `since`."""
        cell, view = await self._view(request)
        since = self.gateway._since(request)
        queue: asyncio.Queue[ev.Event | None] = asyncio.Queue(SSE_QUEUE)
        subs = self.gateway.subscribers.setdefault(cell.id, set())
        subs.add(queue)
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache",
                                           "X-Accel-Buffering": "no"})
        await resp.prepare(request)
        last = since
        try:
            for e in await self.gateway._io(_read, cell, since, None):
                last = e.seq
                await resp.write(_sse_line(e))
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
                if e_or_none.seq > last + 1:  # delivered out of order: read the gap from the log
                    for e in await self.gateway._io(_read, cell, last, e_or_none.seq):
                        await resp.write(_sse_line(e))
                last = e_or_none.seq
                await resp.write(_sse_line(e_or_none))
        except (ConnectionResetError, asyncio.CancelledError):
            pass
        finally:
            subs.discard(queue)
        return resp

    # -- actions --------------------------------------------------------------------------

    async def decide(self, request: web.Request) -> None:
        cell, _ = await self._view(request)
        key = check_ref_id("approval key", request.match_info["key"])
        cls = ev.RevivalApproved if request.match_info["decision"] == "approve" else ev.RevivalDenied
        await self.gateway._io(cell.append, cls(by="operator", key=key, note="from the console"))

    async def agent_verb(self, request: web.Request) -> None:
        cell, view = await self._view(request)
        name = check_agent(request.match_info["agent"])
        verb = request.match_info["verb"]
        if verb == "revive":
            await self.gateway._io(cell.append_many, manual_revival(view, self.config, name, time.time()))
        else:
            await self.gateway._io(cell.append, ev.AgentUpdated(by="operator", agent=name, run=verb))  # type: ignore[arg-type]

    async def raise_budget(self, request: web.Request) -> None:
        """One more of the exceeded cap's own amount, as approving the agent's budget request grants."""
        cell, view = await self._view(request)
        name = check_agent(request.match_info["agent"])
        a = view.agents.get(name)
        if a is None or not a.budget_exceeded:
            raise Refused(f"agent {name}'s budget is not exceeded: nothing to raise")
        what = a.budget_exceeded
        amount = float(getattr(base_caps(self.config, view, name), what))
        events = raise_events(view, name, cost=amount if what == "cost" else 0.0,
                              tokens=int(amount) if what == "tokens" else 0,
                              runtime=amount if what == "runtime" else 0.0, note="from the console")
        await self.gateway._io(cell.append_many, events)

    # -- login ----------------------------------------------------------------------------

    async def login_form(self, request: web.Request) -> web.Response:
        return self._page("login.html", error="", status=200)

    async def login(self, request: web.Request) -> web.Response:
        form = await request.post()
        token = str(form.get("token", "")).strip()
        tokens = self.gateway.tokens
        if tokens is not None:
            ident = tokens.get(hashlib.sha256(token.encode()).hexdigest())
            if ident is None or ident.kind == "agent":
                return self._page("login.html", status=401, error="unknown token (or an agent's)")
        resp = _see_other("/ui")
        resp.set_cookie(COOKIE, token, httponly=True, samesite="Strict", path="/ui")
        return resp

    async def logout(self, request: web.Request) -> web.Response:
        resp = _see_other("/ui/login")
        resp.del_cookie(COOKIE, path="/ui")
        return resp

    async def static(self, request: web.Request) -> web.Response:
        name = request.match_info["name"]
        if name not in STATIC:
            raise NotFound(f"no static file {name!r}")
        body = (DATA / "static" / name).read_bytes()
        return web.Response(body=body, content_type=STATIC[name], headers={"Cache-Control": "max-age=3600"})


def _read(cell: Cell, since: int, until: int | None) -> list[ev.Event]:
    return list(cell.log.read(since, until))


def _see_other(where: str) -> web.Response:
    """After a form's POST, the browser GETs the page again (returned: the error middleware would turn a
    raised redirect into JSON)."""
    return web.Response(status=303, headers={"Location": where})


def _sse_line(e: ev.Event) -> bytes:
    """One event as an HTML list item, in one SSE data line (htmx appends it to the live list)."""
    body = msgspec.to_builtins(e)
    fields = {k: v for k, v in body.items() if k not in ev.ENVELOPE and k not in ("epoch", "incarnation") and v}
    detail = ", ".join(f"{k}={v}" for k, v in fields.items())
    item = (f'<li class="event" data-seq="{e.seq}" data-type="{html.escape(e.type)}">'
            f'<span class="seq">{e.seq}</span> <span class="type">{html.escape(e.type)}</span> '
            f'<span class="by">by {html.escape(e.by)}</span> '
            f'<span class="detail">{html.escape(detail[:300])}</span></li>')
    return f"id: {e.seq}\nevent: line\ndata: {item}\n\n".encode()


def install(gateway: Gateway) -> Console:
    """Add the console to a gateway that is not serving yet."""
    console = Console(gateway)
    console.install()
    return console
