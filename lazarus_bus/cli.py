"""The `lazarus` command: thin click wrappers over the same functions the gateway calls."""

from __future__ import annotations

import fnmatch
import json
import os
import shlex
import signal
import socket
import sys
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import click
import msgspec

from . import events as ev
from . import fastpath
from .cells import Cell
from .errors import CorruptLog, LazarusError, MalformedInput, NotFound
from .fastpath import App, fail, guarded, read_data

if TYPE_CHECKING:  # the rest is imported where it is used: `lazarus heartbeat` stays cheap (issue 21)
    from .fold import ApprovalView, CellView
    from .log import Appended
    from .planner import AnyAction

__all__ = ["cli", "main"]

F = TypeVar("F", bound=Callable[..., Any])


def _setter(attr: str) -> Callable[[click.Context, click.Parameter, Any], None]:
    def callback(ctx: click.Context, param: click.Parameter, value: Any) -> None:
        if value not in (None, False):
            setattr(ctx.ensure_object(App), attr, value)

    return callback


def _option(o: fastpath.Option, *names: str, **kw: Any) -> Callable[[F], F]:
    """A click option from the one table the fast path reads too."""
    if o.kind == "flag":
        return click.option(o.flag, *names, is_flag=True, default=False, help=o.help, **kw)
    if not o.required:  # a default, even None, would satisfy click's check of a required option
        kw["default"] = o.default
    return click.option(o.flag, *names, type=int if o.kind == "int" else str, required=o.required,
                        is_eager=o.eager, help=o.help, **kw)


def _spec(command: fastpath.Command) -> Callable[[F], F]:
    """A command's arguments and options from its table in fastpath.py."""

    def decorate(f: F) -> F:
        for o in reversed(command.options):
            f = _option(o, o.dest)(f)
        for a in reversed(command.arguments):
            f = click.argument(a.dest, metavar=a.metavar)(f)
        return f

    return decorate


def common(f: F) -> F:
    """Global options, accepted before or after the subcommand."""
    for o in reversed(fastpath.GLOBAL):  # each sets the attribute of App its dest names
        f = _option(o, callback=_setter(o.dest), expose_value=False)(f)
    return f


pass_app = click.make_pass_decorator(App, ensure=True)


def _out(app: App, data: Any, text: str | Iterable[str]) -> None:
    if app.json:
        click.echo(json.dumps(data, default=str))
    elif isinstance(text, str):
        click.echo(text)
    else:
        for line in text:
            click.echo(line)


def _pairs(values: Iterable[str], what: str) -> dict[str, str]:
    out = {}
    for item in values:
        key, sep, val = item.partition("=")
        if not sep or not key:
            raise MalformedInput(f"{what} takes KEY=VALUE, got {item!r}")
        out[key] = val
    return out


def _argv(value: str, what: str) -> list[str]:
    """A shell-quoted argv; an empty or unbalanced one is malformed input."""
    try:
        argv = shlex.split(value)
    except ValueError as exc:
        raise MalformedInput(f"{what}: {exc}") from None
    if not argv:
        raise MalformedInput(f"{what}: empty command")
    return argv


def _appended(app: App, written: list[Appended], extra: dict[str, Any] | None = None) -> None:
    """Print the seq of the event asked for (the first written)."""
    click.echo(fastpath.appended(app, written, extra))


def _emit(app: App, cell: Cell, payload: dict[str, Any], *, by: str | None = None,
          expected_seq: int | None = None) -> list[Appended]:
    draft = ev.parse_draft(payload, by=by)
    return cell.append(draft, expected_seq=expected_seq)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@common
@click.version_option(package_name="lazarus-pit", prog_name="lazarus")
def cli() -> None:
    """Lazarus Pit: supervise teams of long-running agents from one append-only log per cell."""


@cli.command()
@common
@pass_app
def init(app: App) -> None:
    """Create the root and a starter config."""
    created = app.root.init()
    _out(app, {"root": str(app.root.path), "created": created},
         f"{'initialized' if created else 'already initialized:'} {app.root.path}")


# -- cells --------------------------------------------------------------------------------


@cli.group()
def cell() -> None:
    """Create, list and steer cells."""


@cell.command("create")
@click.argument("name", required=False)
@click.option("--mission", default="", help="The mission, in words.")
@click.option("--isolation", type=int, default=1, show_default=True, help="1 process, 2 mount namespace, 3 Podman.")
@click.option("--id", "cell_id", default=None, help="A UUID or slug (default: a new UUIDv7).")
@click.option("--label", multiple=True, help="KEY=VALUE, repeatable.")
@click.option("--policy", default=None, help="Resurrection overrides as JSON, @FILE or -.")
@click.option("--network", type=click.Choice(["host", "none"]), default=None,
              help="Levels 2 and 3: the agents' network (default: [isolation] network, host).")
@click.option("--max-duration", type=click.FloatRange(min=0), default=0.0,
              help="Seconds; the cell is archived (reason max_duration) this long after its creation.")
@click.option("--checkpoint-interval", type=click.FloatRange(min=0), default=0.0,
              help="Seconds; an agent whose newest checkpoint is older is sent lazarus.checkpoint_due.")
@click.option("--auto-archive", is_flag=True, default=False,
              help="Archive the cell once every agent completed or left.")
@click.option("--from", "from_", default=None, metavar="PROPOSAL",
              help="A mission proposal (the Markdown template, or .toml): the cell and its invitations.")
@click.option("--dry-run", is_flag=True, default=False, help="With --from: print what it would do, create nothing.")
@common
@pass_app
def cell_create(app: App, name: str | None, mission: str, isolation: int, cell_id: str | None,
                label: tuple[str, ...], policy: str | None, network: str | None, max_duration: float,
                checkpoint_interval: float, auto_archive: bool, from_: str | None, dry_run: bool) -> None:
    """Provision a cell (NAME, or from a mission proposal); prints its id."""
    if from_ is not None:
        _create_from(app, from_, name, cell_id, _pairs(label, "--label"), dry_run)
        return
    if dry_run:
        raise MalformedInput("--dry-run goes with --from PROPOSAL")
    if name is None:
        raise MalformedInput("cell create needs NAME (or --from PROPOSAL)")
    pol = None
    if policy is not None:
        try:
            pol = msgspec.convert(read_data(policy), ev.Policy)
        except msgspec.ValidationError as exc:
            raise MalformedInput(f"--policy: {exc}") from None
    c = app.root.create(name, mission=mission, isolation=isolation, cell_id=cell_id,
                        labels=_pairs(label, "--label"), policy=pol, network=network, max_duration=max_duration,
                        checkpoint_interval=checkpoint_interval, auto_archive=auto_archive)
    _out(app, {"id": c.id, "name": name, "seq": 1}, c.id)


def _create_from(app: App, source: str, name: str | None, cell_id: str | None, labels: dict[str, str],
                 dry_run: bool) -> None:
    """`cell create --from`: the whole proposal is read and checked first, so a malformed one creates
    nothing; then the cell, the proposal kept under `artifacts/`, and its invitations in one append."""
    from .proposal import parse

    path = Path(source)
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise MalformedInput(f"cannot read proposal {source}: {getattr(exc, 'strerror', None) or exc}") from None
    p = parse(path.name, text, name)
    kept = "proposal.toml" if path.name.endswith(".toml") else "proposal.md"
    plan = {"cell": p.name, "mission": p.mission, "isolation": p.isolation, "network": p.network,
            "max_duration": p.max_duration, "checkpoint_interval": p.checkpoint_interval,
            "auto_archive": p.auto_archive, "max_attempts": p.max_attempts,
            "agents": [{"agent": a.name, "role": a.role, "note": a.note} for a in p.agents],
            "success_criteria": p.success_criteria, "artifact": f"artifacts/{kept}"}
    if dry_run:
        lifetime = ", ".join(f"{k} {v:g} s" for k, v in (("max_duration", p.max_duration),
                                                          ("checkpoint_interval", p.checkpoint_interval)) if v)
        _out(app, {**plan, "dry_run": True}, [
            f"would create cell {p.name} (isolation {p.isolation}"
            + (f", network {p.network}" if p.network else "") + (f", {lifetime}" if lifetime else "")
            + (", auto_archive" if p.auto_archive else "")
            + (f", max_attempts {p.max_attempts}" if p.max_attempts is not None else "") + ")",
            *(f"would invite {a.name} as {a.role}" + (f" ({a.note})" if a.note else "") for a in p.agents),
            f"would keep the proposal as artifacts/{kept}"])
        return
    c, seq = app.root.create_from(p, text, kept, cell_id=cell_id, labels=labels)
    _out(app, {**plan, "id": c.id, "seq": seq}, c.id)


def _described(c: Cell) -> dict[str, Any]:
    """One row of `cell list`: a cell whose log cannot be read is shown as such, never stops the list."""
    try:
        return c.describe()
    except CorruptLog as exc:
        return {"id": c.id, "state": "corrupt", "error": str(exc), "dir": str(c.dir)}
    except LazarusError as exc:
        return {"id": c.id, "state": "unreadable", "error": str(exc), "dir": str(c.dir)}


@cell.command("list")
@common
@pass_app
def cell_list(app: App) -> None:
    """Every cell under the root."""
    rows = [_described(c) for c in app.root.cells()]
    if app.json:
        _out(app, rows, "")
        return
    from .render import cells_table

    cells_table(rows)


@cell.command("show")
@click.argument("ref", metavar="CELL")
@common
@pass_app
def cell_show(app: App, ref: str) -> None:
    """One cell's manifest."""
    body = app.cell(ref).describe()
    click.echo(json.dumps(body, indent=None if app.json else 2, default=str))


def _lifecycle(kind: str, cls: type[ev.Event], help_text: str) -> None:
    @cell.command(kind, help=help_text)
    @click.argument("ref", metavar="CELL")
    @click.option("--reason", default="", help="Why, for the log.")
    @common
    @pass_app
    def command(app: App, ref: str, reason: str) -> None:
        c = app.cell(ref)
        if cls is ev.CellDestroyed:
            seq = c.destroy(reason)
            _out(app, {"seq": seq, "destroyed": c.id}, str(seq) if seq else f"{c.id} already destroyed")
            return
        _appended(app, c.append(cls(by="operator", reason=reason)))  # type: ignore[call-arg]


_lifecycle("activate", ev.CellActivated, "Activate a provisioned cell by hand.")
_lifecycle("freeze", ev.CellFrozen, "Pause work: supervised agents stop, nothing advances.")
_lifecycle("thaw", ev.CellThawed, "Resume a frozen cell.")
_lifecycle("archive", ev.CellArchived, "End the mission; the cell stays readable.")
_lifecycle("destroy", ev.CellDestroyed, "Remove an archived cell; its log goes to the graveyard.")


# -- agents -------------------------------------------------------------------------------


@cli.group()
def agent() -> None:
    """Invite agents and let them leave."""


@agent.command("invite")
@click.argument("ref", metavar="CELL")
@click.argument("name", metavar="AGENT")
@click.option("--role", required=True, type=click.Choice(["lead", "write", "read", "audit"]))
@click.option("--cmd", "cmd", default=None, help="Argv as one shell-quoted string: the daemon supervises it.")
@click.option("--substitute", multiple=True, help="A substitute agent, repeatable, in order.")
@click.option("--revive", type=click.Choice(["yes", "no", "ask"]), default=None)
@click.option("--env", multiple=True, help="KEY=VALUE for the agent's environment, repeatable.")
@click.option("--heartbeat-interval", type=float, default=0.0, help="Seconds; 0 = judged by its process alone.")
@click.option("--limit", "limit", multiple=True, help="memory=512M, cpu=1.5, pids=256 or nofile=1024, repeatable.")
@click.option("--secret", multiple=True, help="NAME=@FILE or NAME=env:VAR: read at each spawn, never logged.")
@click.option("--probe", default="",
              help="http://HOST:PORT/PATH (200-399 is ok) or tcp://HOST:PORT, probed from outside.")
@click.option("--probe-cmd", default=None, help="Argv as one shell-quoted string; exit 0 is ok.")
@click.option("--probe-period", type=click.FloatRange(min=0), default=0.0, help="Seconds between probes (10).")
@click.option("--probe-timeout", type=click.FloatRange(min=0), default=0.0, help="Seconds a probe may take (2).")
@click.option("--probe-failures", type=click.IntRange(min=0), default=0,
              help="Failures in a row that make it dead, reason probe_failed (3).")
@click.option("--probe-initial-delay", type=click.FloatRange(min=0), default=0.0,
              help="Seconds after a start before the first probe (0).")
@click.option("--restart-cmd", default=None,
              help="Argv that restarts an agent another manager runs; {cell} {agent} {host}.")
@click.option("--stop-cmd", default=None, help="Argv that stops it (then --start-cmd: a restart).")
@click.option("--start-cmd", default=None, help="Argv that starts it.")
@click.option("--by", default="operator", show_default=True)
@common
@pass_app
def agent_invite(app: App, ref: str, name: str, role: str, cmd: str | None, substitute: tuple[str, ...],
                 revive: str | None, env: tuple[str, ...], heartbeat_interval: float, limit: tuple[str, ...],
                 secret: tuple[str, ...], probe: str, probe_cmd: str | None, probe_period: float, probe_timeout: float,
                 probe_failures: int, probe_initial_delay: float, restart_cmd: str | None, stop_cmd: str | None,
                 start_cmd: str | None, by: str) -> None:
    """Invite an agent; with --cmd the daemon starts and revives it, with --restart-cmd its own manager does."""
    from .limits import parse_limit
    from .secrets import secret_source

    payload: dict[str, Any] = {
        "type": "agent.invited", "agent": name, "role": role, "command": shlex.split(cmd) if cmd else [],
        "substitutes": list(substitute), "revive": revive, "env": _pairs(env, "--env"),
        "heartbeat_interval": heartbeat_interval,
    }
    if probe:
        from .probes import check_target

        check_target(probe)
        payload["probe"] = probe
    outside = {"probe_cmd": probe_cmd, "restart_cmd": restart_cmd, "stop_cmd": stop_cmd, "start_cmd": start_cmd}
    for key, value in outside.items():
        if value is not None:
            payload[key] = _argv(value, "--" + key.replace("_", "-"))
    for key, number in (("probe_period", probe_period), ("probe_timeout", probe_timeout),
                        ("probe_failures", probe_failures), ("probe_initial_delay", probe_initial_delay)):
        if number:
            payload[key] = number
    if limit:
        payload["limits"] = dict(parse_limit(x) for x in limit)
    if secret:
        payload["secrets"] = {k: secret_source(v) for k, v in _pairs(secret, "--secret").items()}
    _appended(app, _emit(app, app.cell(ref), payload, by=by))


@agent.command("leave")
@click.argument("ref", metavar="CELL")
@click.argument("name", metavar="AGENT")
@click.option("--reason", default="")
@click.option("--by", default="operator", show_default=True)
@common
@pass_app
def agent_leave(app: App, ref: str, name: str, reason: str, by: str) -> None:
    """An agent leaves on purpose; it is stopped and not revived."""
    _appended(app, _emit(app, app.cell(ref), {"type": "agent.left", "agent": name, "reason": reason}, by=by))


def _run(kind: str, help_text: str) -> None:
    """`agent stop | start | restart`: one `agent.updated` with `run`; the daemon does the rest."""

    @agent.command(kind, help=help_text)
    @click.argument("ref", metavar="CELL")
    @click.argument("name", metavar="AGENT")
    @common
    @pass_app
    def command(app: App, ref: str, name: str) -> None:
        _appended(app, _emit(app, app.cell(ref), {"type": "agent.updated", "agent": name, "run": kind},
                             by="operator"))


_run("stop", "Stop an agent on purpose: the daemon ends its process and does not revive it.")
_run("start", "Start a stopped agent again.")
_run("restart", "Stop and start an agent's process at once (not a death: no revival attempt is counted).")


@agent.command("update")
@click.argument("ref", metavar="CELL")
@click.argument("name", metavar="AGENT")
@click.option("--cmd", "cmd", default=None, help="A new argv, as one shell-quoted string.")
@click.option("--env", multiple=True, help="KEY=VALUE merged into the agent's environment, repeatable.")
@click.option("--heartbeat-interval", type=click.FloatRange(min=0), default=None, help="Seconds.")
@click.option("--revive", type=click.Choice(["yes", "no", "ask"]), default=None)
@common
@pass_app
def agent_update(app: App, ref: str, name: str, cmd: str | None, env: tuple[str, ...],
                 heartbeat_interval: float | None, revive: str | None) -> None:
    """Change what an agent's next start runs; `agent restart` applies it now."""
    payload: dict[str, Any] = {"type": "agent.updated", "agent": name}
    if cmd is not None:
        payload["command"] = shlex.split(cmd)
    if env:
        payload["env"] = _pairs(env, "--env")
    if heartbeat_interval is not None:
        payload["heartbeat_interval"] = heartbeat_interval
    if revive is not None:
        payload["revive"] = revive
    if len(payload) == 2:
        raise MalformedInput("nothing to update: give --cmd, --env, --heartbeat-interval or --revive")
    c = app.cell(ref)
    _appended(app, _emit(app, c, payload, by="operator"))
    a = c.refresh().agents[name]
    if not app.json and a.phase == "running" and a.command:
        click.echo(f"{name} runs the old settings until `lazarus agent restart {ref} {name}`", err=True)


@cli.command()
@common
@pass_app
def doctor(app: App) -> None:
    """What each isolation level needs, and whether this machine has it (found by trying)."""
    from . import probe

    levels = probe.levels()
    lim = probe.limits_support()
    data = {"levels": [msgspec.to_builtins(x) for x in levels], "limits": msgspec.to_builtins(lim),
            "uid": os.getuid()}
    lines = []
    for x in levels:
        lines.append(f"level {x.level}: {'ok' if x.ok else 'unavailable'}")
        lines.append(f"  needs: {x.needs}")
        lines.append(f"  here:  {x.detail}")
    lines.append(f"limits: {lim.via}")
    lines.append(f"  here:  {lim.detail}")
    _out(app, data, lines)


@cli.command()
@_spec(fastpath.HEARTBEAT)
@common
@pass_app
def heartbeat(app: App, /, **values: Any) -> None:
    """Append a heartbeat for AGENT (by AGENT)."""
    fastpath.heartbeat(app, **values)


@cli.command()
@_spec(fastpath.EMIT)
@common
@pass_app
def emit(app: App, /, **values: Any) -> None:
    """Append any event; prints its seq."""
    fastpath.emit(app, **values)


# -- reading ------------------------------------------------------------------------------


def _matches(event: ev.Event, types: tuple[str, ...], agents: tuple[str, ...]) -> bool:
    if types and not any(fnmatch.fnmatchcase(event.type, t) for t in types):
        return False
    if agents:
        names = {event.by, getattr(event, "agent", None), getattr(event, "to", None),
                 getattr(event, "substitute_for", None)}
        if not names.intersection(agents):
            return False
    return True


@cli.command()
@click.argument("ref", metavar="CELL")
@click.option("-f", "--follow", is_flag=True, help="Keep printing events as they are appended.")
@click.option("--type", "types", multiple=True, help="Only this type (globs like 'agent.*'), repeatable.")
@click.option("--agent", "agents", multiple=True, help="Only events by or about this agent, repeatable.")
@click.option("--since", type=int, default=0, help="Only events after this seq.")
@click.option("-n", "--lines", "last", type=int, default=None, help="Only the last N (of those matching).")
@common
@pass_app
def tail(app: App, ref: str, follow: bool, types: tuple[str, ...], agents: tuple[str, ...], since: int,
         last: int | None) -> None:
    """Print events as stored, one JSON line each (for auditors)."""
    if since < 0:
        raise MalformedInput("--since must be >= 0")
    if last is not None and last < 0:
        raise MalformedInput("-n must be >= 0")
    c = app.cell(ref)
    out = sys.stdout.buffer
    if last is not None:
        since = _last_seq(c, since, last, types, agents)
    stream = c.log.follow(since) if follow else c.log.read_raw(since)
    try:
        for event, line in stream:
            if _matches(event, types, agents):
                out.write(line + b"\n")
                if follow:
                    out.flush()
    except KeyboardInterrupt:
        pass
    out.flush()


def _last_seq(c: Cell, since: int, last: int, types: tuple[str, ...], agents: tuple[str, ...]) -> int:
    """The seq after which the last `last` matching events begin: read back from the head in widening
    windows, so `tail -n 10` of a cell of millions of events reads a few blocks, not the log (issue 21)."""
    from collections import deque

    head = c.head().seq
    if not types and not agents:
        return max(since, head - last)
    window = max(4 * last, 1024)
    while True:
        start = max(since, head - window)
        seqs: deque[int] = deque(maxlen=last + 1)
        seqs.append(start)
        for event in c.log.read(start, head):
            if _matches(event, types, agents):
                seqs.append(event.seq)
        if len(seqs) > last:
            return seqs[0]
        if start == since:
            return since
        window *= 4


@cli.command()
@click.argument("ref", metavar="CELL")
@click.argument("name", metavar="AGENT")
@click.option("-f", "--follow", is_flag=True, help="Keep printing what the agent writes, across rotations.")
@click.option("-n", "--lines", "last", type=int, default=None, help="Only the last N lines (default: all kept).")
@common
@pass_app
def logs(app: App, ref: str, name: str, follow: bool, last: int | None) -> None:
    """An agent's captured output (stdout and stderr), rotated files included, oldest first."""
    from .logrotate import follow_lines, last_lines

    if last is not None and last < 0:
        raise MalformedInput("-n must be >= 0")
    c = app.cell(ref)
    view = c.refresh()
    if name not in view.agents:
        raise NotFound(f"agent {name} is not in cell {view.name}")
    path = c.agent_logs / f"{name}.log"
    out = sys.stdout.buffer
    for line in last_lines(path, last):
        out.write(line)
    out.flush()
    if not follow:
        return
    try:
        for chunk in follow_lines(path):
            out.write(chunk)
            out.flush()
    except KeyboardInterrupt:
        pass


@cli.command()
@click.argument("ref", metavar="CELL", required=False)
@click.option("-w", "--watch", is_flag=True, help="Redraw live until interrupted.")
@click.option("--interval", type=click.FloatRange(min=0.1), default=1.0, show_default=True,
              help="Seconds between redraws with --watch.")
@common
@pass_app
def status(app: App, ref: str | None, watch: bool, interval: float) -> None:
    """Health of every agent: healthy, stale, dead, unknown, stopped or left."""
    if not watch:
        _status_once(app, ref)
        return
    import time

    from .render import live_status

    try:
        live_status(lambda: _status_data(app, ref), interval, app.json, time.sleep)
    except KeyboardInterrupt:
        pass


def _status_once(app: App, ref: str | None) -> None:
    body = _status_data(app, ref)
    if app.json:
        click.echo(json.dumps(body))
    else:
        from .render import status_table

        click.echo(body["daemon"]["text"])
        status_table(body["cells"])


def _status_data(app: App, ref: str | None) -> dict[str, Any]:
    """What `status` shows: the daemon line and one row per agent of each cell (or a corrupt cell)."""
    import time

    from .health import agent_rows
    from .rootlock import daemon_running

    now = time.time()
    running = daemon_running(app.root.meta)
    here = socket.gethostname() if app.root.store.spans_hosts else None  # elsewhere, another host's daemon
    cells = [app.cell(ref)] if ref else app.root.cells()
    data: list[dict[str, Any]] = []
    for c in cells:
        try:
            view = c.refresh()
        except LazarusError as exc:
            if ref:
                raise
            data.append({"id": c.id, "state": "corrupt" if isinstance(exc, CorruptLog) else "unreadable",
                         "error": str(exc)})
            continue
        data.append({"id": view.id, "name": view.name, "state": view.state, "seq": view.seq,
                     "agents": agent_rows(view, app.config, now, no_daemon=not running, host=here)})
    return {"daemon": _daemon_line(app, running), "cells": data}


def _daemon_line(app: App, running: bool) -> dict[str, Any]:
    """Whether this root's daemon runs, its pid and instance from daemon.json, and which cells it leads
    (on a store shared by hosts; `leading` is null on a local root, where the one daemon leads all)."""
    from .rootlock import daemon_status

    info = daemon_status(app.root.meta)
    if running:
        text = f"daemon: running (pid {info.get('pid', '?')} on {info.get('host', '?')}"
        if info.get("instance"):
            text += f", instance {info['instance']}"
        leading = info.get("leading")
        if isinstance(leading, list):
            text += f", leading {len(leading)} cell{'s' if len(leading) != 1 else ''}"
        return {"running": True, "pid": info.get("pid"), "host": info.get("host"),
                "instance": info.get("instance"), "leading": leading, "text": text + ")"}
    return {"running": False, "text": "daemon: not running (`lazarus up` supervises and revives the agents)"}


@cli.command()
@click.argument("ref", metavar="CELL")
@click.option("--since", type=int, default=0, help="Draw only what comes after this seq.")
@click.option("--svg", "svg", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Write the timeline as SVG to this file.")
@click.option("--html", "html_file", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Write it as a standalone HTML page to this file.")
@common
@pass_app
def timeline(app: App, ref: str, since: int, svg: Path | None, html_file: Path | None) -> None:
    """Swimlanes of a cell: each agent running, stale, dead or stopped, with spawns, deaths, revivals,
    handoffs and approvals marked."""
    import time

    from . import timeline as tl
    from .files import atomic_write
    from .policy import effective

    if since < 0:
        raise MalformedInput("--since must be >= 0")
    c = app.cell(ref)
    view = c.refresh()
    t = tl.build(c.log.read(), now=time.time(), since=since,
                 stale_after=lambda agent: effective(app.config, view, agent).stale_after)
    if t is None:
        raise NotFound(f"cell {c.id} has an empty log")
    for path, text in ((svg, tl.to_svg), (html_file, tl.to_html)):
        if path is not None:
            atomic_write(path, text(t).encode(), durable=False, mode=0o644)
    if app.json:
        click.echo(msgspec.json.encode(t).decode())
    elif svg is None and html_file is None:
        from .render import timeline_print

        timeline_print(t)


@cli.command()
@click.argument("ref", metavar="CELL")
@click.option("--until", type=click.IntRange(min=1), default=None,
              help="Rebuild the state as it stood at this seq.")
@common
@pass_app
def replay(app: App, ref: str, until: int | None) -> None:
    """Rebuild the projections from the log alone."""
    from .render import replay_with_progress, view_summary

    c = app.cell(ref)
    view = replay_with_progress(c, until)
    if app.json:
        click.echo(msgspec.json.encode(view).decode())
    else:
        view_summary(view)


@cli.command()
@click.argument("ref", metavar="CELL")
@click.option("--expect", default=None, metavar="HEAD",
              help="A head printed earlier (HASH, or SEQ:HASH): fail unless the log still holds it.")
@common
@pass_app
def verify(app: App, ref: str, expect: str | None) -> None:
    """Check seqs and the hash chain; prints the event count and the head hash."""
    from .replay import verify_anchored

    count, head, held, anchor = verify_anchored(app.cell(ref).log, expect)
    data: dict[str, Any] = {"events": count, "head": head}
    if expect is not None:
        data["expect"] = held
    text = f"ok: {count} events, head {head}" + (f"; holds {expect}" if expect else "")
    if anchor is not None:  # retention pruned the front: the check began at the log.pruned anchor
        data.update(first_seq=anchor.first_seq, pruned_through=anchor.through_seq, anchor=anchor.through_hash)
        text += (f"; checked from seq {anchor.first_seq}, anchored by log.pruned through seq "
                 f"{anchor.through_seq} ({anchor.through_hash})")
    _out(app, data, text)


# -- resurrection -------------------------------------------------------------------------


def _describe_event(e: ev.Event) -> str:
    match e:
        case ev.AgentDeclaredDead():
            return f"declare dead ({e.reason})"
        case ev.RevivalPlanned():
            extra = f" {e.substitute}" if e.substitute else ""
            delay = f" in {e.delay:g}s" if e.delay else ""
            return f"{e.action}{extra} (attempt {e.attempt}){delay}"
        case ev.RevivalApprovalRequested():
            return f"ask for approval (key {e.key})"
        case ev.BudgetWarned():
            return f"warn: {e.what} {e.spent:g} of {e.cap:g}"
        case ev.BudgetExceeded():
            return f"budget exceeded: {e.what} {e.spent:g} of {e.cap:g} ({e.on_exceed})"
        case ev.BudgetRaised():
            return "raise the budget"
    return e.type


def _describe_action(action: AnyAction) -> str:
    from .planner import Append, Command, Start

    match action:
        case Append():
            return ", then ".join(_describe_event(e) for e in action.events)
        case Start():
            return f"start (attempt {action.attempt}{', resume ' + action.resume if action.resume else ''})"
        case Command():
            return "run " + ", then ".join(shlex.join(argv) for argv in action.argv) + f" (restart {action.revived})"
    return f"stop ({action.why})"


@cli.command()
@click.argument("ref", metavar="CELL", required=False)
@common
@pass_app
def plan(app: App, ref: str | None) -> None:
    """What the daemon would do now, without doing it."""
    import socket
    import time

    from .planner import plan as plan_cell

    now, host = time.time(), socket.gethostname()
    found: list[tuple[CellView, AnyAction]] = []
    for c in [app.cell(ref)] if ref else app.root.cells():
        view = c.refresh()
        found.extend((view, action) for action in plan_cell(view, app.config, now, host))
    if app.json:
        click.echo(json.dumps([{"cell": v.id, "cell_name": v.name, **msgspec.to_builtins(a)} for v, a in found]))
    elif not found:
        click.echo("nothing to do")
    else:
        for view, action in found:
            where = f"{view.name}/{action.agent}" if action.agent else view.name  # a cell's lifetime: no agent
            click.echo(f"{where}: {_describe_action(action)}")


def _pending(app: App) -> list[tuple[Cell, ApprovalView]]:
    out: list[tuple[Cell, ApprovalView]] = []
    for c in app.root.cells():
        try:
            view = c.refresh()
        except LazarusError:
            continue
        out.extend((c, a) for a in view.approvals.values() if a.decision is None)
    return sorted(out, key=lambda pair: pair[1].requested_at)


@cli.command()
@common
@pass_app
def approvals(app: App) -> None:
    """Pending approval requests, oldest first."""
    rows = [{"key": a.key, "cell": c.id, "cell_name": c.read_name(), "agent": a.agent, "requested_at": a.requested_at,
             "message": a.message, "substitute": a.substitute, "channels": a.channels} for c, a in _pending(app)]
    if app.json:
        click.echo(json.dumps(rows))
    elif not rows:
        click.echo("no pending approvals")
    else:
        for r in rows:
            click.echo(f"{r['key']}  {r['cell_name']}/{r['agent']}  {r['message']}")


def _decide(app: App, key: str, note: str, cls: type[ev.Event]) -> None:
    from .names import check_ref_id

    check_ref_id("approval key", key)
    for c in app.root.cells():
        try:
            view = c.refresh()
        except LazarusError:
            continue
        if key in view.approvals:
            _appended(app, c.append(cls(by="operator", key=key, note=note)))  # type: ignore[call-arg]
            return
    raise NotFound(f"no approval request {key} under {app.root.path}")


@cli.command()
@click.argument("key")
@click.option("--note", default="")
@common
@pass_app
def approve(app: App, key: str, note: str) -> None:
    """Approve a revival; the daemon carries it out."""
    _decide(app, key, note, ev.RevivalApproved)


@cli.command()
@click.argument("key")
@click.option("--note", default="")
@common
@pass_app
def deny(app: App, key: str, note: str) -> None:
    """Deny a revival; the agent stays down."""
    _decide(app, key, note, ev.RevivalDenied)


@cli.command()
@click.argument("ref", metavar="CELL")
@click.argument("name", metavar="AGENT")
@common
@pass_app
def revive(app: App, ref: str, name: str) -> None:
    """Revive a dead agent by hand: resets the attempt window, even after an escalation."""
    import time

    from .planner import manual_revival

    c = app.cell(ref)
    _appended(app, c.append_many(manual_revival(c.refresh(), app.config, name, time.time())))


@cli.command()
@click.option("--once", is_flag=True, help="One pass: adopt, plan, act, then exit.")
@click.option("--http", "http", default=None, metavar="HOST:PORT", help="Gateway address (default from config).")
@click.option("--no-http", is_flag=True, help="No HTTP gateway.")
@click.option("-v", "--verbose", is_flag=True, help="Log every action in one line (spawn, death and why, revival...).")
@click.option("--log-json", is_flag=True, help="Log every action as a JSON line, with its event's cell and seq.")
@click.option("--host", default=None, envvar="LAZARUS_HOST",
              help="This daemon's host name in agent.spawned and leases (default: the machine's).")
@common
@pass_app
def up(app: App, once: bool, http: str | None, no_http: bool, verbose: bool, log_json: bool,
       host: str | None) -> None:
    """The daemon: watch, fold, plan, act, serve."""
    import asyncio
    import logging

    from .daemon import Daemon
    from .narrate import JsonFormatter

    handler = logging.StreamHandler()
    handler.setFormatter(JsonFormatter() if log_json else
                         logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    logging.basicConfig(level=logging.INFO if verbose or log_json else logging.WARNING, handlers=[handler])
    logging.getLogger("watchfiles").setLevel(logging.WARNING)
    daemon = Daemon(app.root, host=host, http="" if no_http else http,
                    announce=_announcer(log_json))
    asyncio.run(daemon.run(once=once))


@cli.command()
@click.option("--timeout", type=click.FloatRange(min=0), default=60.0, show_default=True,
              help="Seconds to wait for it to stop.")
@common
@pass_app
def down(app: App, timeout: float) -> None:
    """Stop the root's daemon (SIGTERM) and wait until it has; its agents keep running."""
    import time

    from .rootlock import daemon_running, daemon_status

    meta = app.root.meta
    if not daemon_running(meta):
        _out(app, {"stopped": False, "running": False}, f"no daemon runs on {app.root.path}")
        return
    pid = _daemon_pid(meta, daemon_status(meta))
    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        pass
    deadline = time.monotonic() + timeout
    while daemon_running(meta) or not _gone(pid):  # the lock is given back a moment before the exit
        if time.monotonic() > deadline:
            raise LazarusError(f"the daemon (pid {pid}) did not stop within {timeout:g}s")
        time.sleep(0.05)
    _out(app, {"stopped": True, "pid": pid}, f"daemon stopped (pid {pid})")


def _gone(pid: int) -> bool:
    """The process has exited (a zombie waiting for its parent counts as gone)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return True
    return stat.rpartition(")")[2].split()[0] in ("Z", "X")


def _daemon_pid(meta: Path, info: dict[str, Any]) -> int:
    """The lock holder's pid, from daemon.pid (written by the holder itself), else daemon.json."""
    try:
        return int((meta / "daemon.pid").read_text().strip())
    except (OSError, ValueError):
        pid = info.get("pid")
        if isinstance(pid, int) and info.get("host") in (None, socket.gethostname()):
            return pid
    raise LazarusError(f"a daemon holds {meta} but names no pid to signal")


def _announcer(log_json: bool) -> Callable[[str], None]:
    """The daemon's start line: plain on stderr, or one more JSON line (INFO, even without -v)."""
    if not log_json:
        return lambda msg: click.echo(msg, err=True)
    import logging

    started = logging.getLogger("lazarus.up")
    started.setLevel(logging.INFO)
    return started.info


@cli.command()
@click.option("--dir", "keep", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Where to put the demo's root (default: a new temporary directory).")
@common
@pass_app
def demo(app: App, keep: Path | None) -> None:
    """A first run: one cell, three agents, one killed and revived from its checkpoint."""
    from .demo import run_demo

    sys.exit(run_demo(keep))


# -- mission bus --------------------------------------------------------------------------


@cli.group()
def bus() -> None:
    """Messages, checkpoints, handoffs and tasks between agents."""


@bus.command("publish")
@click.argument("ref", metavar="CELL")
@click.argument("topic")
@click.option("--by", required=True)
@click.option("--data", default=None, help="The payload: JSON, @FILE or -.")
@click.option("--to", default=None, help="A recipient agent (default: everyone).")
@common
@pass_app
def bus_publish(app: App, ref: str, topic: str, by: str, data: str | None, to: str | None) -> None:
    """Publish a message on a topic."""
    payload: dict[str, Any] = {"type": "bus.message", "topic": topic, "payload": read_data(data)}
    if to:
        payload["to"] = to
    _appended(app, _emit(app, app.cell(ref), payload, by=by))


@bus.command("checkpoint")
@click.argument("ref", metavar="CELL")
@click.option("--by", required=True)
@click.option("--summary", default="")
@click.option("--state", default=None, help="Any JSON: inline, @FILE or -.")
@click.option("--path", "paths", multiple=True, help="A workspace path to archive, repeatable.")
@click.option("--id", "checkpoint_id", default=None, help="The checkpoint id (default: a new UUID).")
@common
@pass_app
def bus_checkpoint(app: App, ref: str, by: str, summary: str, state: str | None, paths: tuple[str, ...],
                   checkpoint_id: str | None) -> None:
    """Record a checkpoint; prints its seq and id."""
    from .checkpoints import checkpoint
    from .names import check_by

    a = checkpoint(app.cell(ref), check_by(by), summary=summary, state=read_data(state), paths=list(paths),
                   checkpoint_id=checkpoint_id)
    _appended(app, [a], {"checkpoint_id": a.event.checkpoint_id})  # type: ignore[attr-defined]


@bus.command("restore")
@click.argument("ref", metavar="CELL")
@click.argument("checkpoint_id")
@click.option("--by", default="operator", show_default=True)
@common
@pass_app
def bus_restore(app: App, ref: str, checkpoint_id: str, by: str) -> None:
    """Unpack a checkpoint's archive into the workspace after checking its hash."""
    from .checkpoints import restore
    from .names import check_by

    a = restore(app.cell(ref), checkpoint_id, check_by(by))
    _appended(app, [a], {"paths": " ".join(a.event.paths)})  # type: ignore[attr-defined]


@bus.command("handoff")
@click.argument("ref", metavar="CELL")
@click.option("--by", required=True)
@click.option("--to", "to", required=True, help="The recipient agent.")
@click.option("--checkpoint", "checkpoint_id", required=True, help="The checkpoint it resumes from.")
@click.option("--note", default="")
@click.option("--id", "handoff_id", default=None)
@common
@pass_app
def bus_handoff(app: App, ref: str, by: str, to: str, checkpoint_id: str, note: str, handoff_id: str | None) -> None:
    """Hand work to another agent; prints its seq and id."""
    from .checkpoints import handoff
    from .names import check_agent, check_by

    a = handoff(app.cell(ref), check_by(by), check_agent(to), checkpoint_id, note, handoff_id)
    _appended(app, [a], {"handoff_id": a.event.handoff_id})  # type: ignore[attr-defined]


@bus.command("resume")
@click.argument("ref", metavar="CELL")
@click.argument("handoff_id")
@click.option("--accept", is_flag=True, help="Append handoff.accepted (as --by, the recipient).")
@click.option("--by", default=None)
@common
@pass_app
def bus_resume(app: App, ref: str, handoff_id: str, accept: bool, by: str | None) -> None:
    """Print the resume packet of a handoff as JSON."""
    from .resume import resume_packet

    c = app.cell(ref)
    if accept:
        if not by:
            raise MalformedInput("--accept needs --by (the recipient)")
        resume_packet(c.refresh(), handoff_id)  # not found before anything is written
        _emit(app, c, {"type": "handoff.accepted", "handoff_id": handoff_id}, by=by)
    import time

    packet = resume_packet(c.refresh(), handoff_id, app.config, time.time())
    click.echo(json.dumps(packet, indent=None if app.json else 2))


@bus.command("task")
@click.argument("ref", metavar="CELL")
@click.argument("title")
@click.option("--by", required=True)
@click.option("--assignee", default=None)
@click.option("--depends-on", "depends_on", multiple=True, help="A task id it waits on, repeatable.")
@click.option("--priority", type=click.Choice(["high", "medium", "low"]), default="medium")
@click.option("--id", "task_id", default=None)
@common
@pass_app
def bus_task(app: App, ref: str, title: str, by: str, assignee: str | None, depends_on: tuple[str, ...],
             priority: str, task_id: str | None) -> None:
    """Create a task; prints its seq and id."""
    from .names import new_id

    payload = {"type": "task.created", "task_id": task_id or new_id(), "title": title, "assignee": assignee,
               "depends_on": list(depends_on), "priority": priority}
    written = _emit(app, app.cell(ref), payload, by=by)
    _appended(app, written, {"task_id": payload["task_id"]})


@bus.command("task-update")
@click.argument("ref", metavar="CELL")
@click.argument("task_id")
@click.argument("status", type=click.Choice(["pending", "in_progress", "done", "failed"]))
@click.option("--by", required=True)
@click.option("--assignee", default=None)
@common
@pass_app
def bus_task_update(app: App, ref: str, task_id: str, status: str, by: str, assignee: str | None) -> None:
    """Move a task to a new status."""
    payload = {"type": "task.updated", "task_id": task_id, "status": status, "assignee": assignee}
    _appended(app, _emit(app, app.cell(ref), payload, by=by))


@bus.command("tasks")
@click.argument("ref", metavar="CELL")
@common
@pass_app
def bus_tasks(app: App, ref: str) -> None:
    """Tasks with status and dependencies."""
    view = app.cell(ref).refresh()
    rows = [msgspec.to_builtins(t) for t in sorted(view.tasks.values(), key=lambda t: t.seq)]
    if app.json:
        click.echo(json.dumps(rows))
    else:
        from .render import tasks_table

        tasks_table(rows)


# -- effects and budgets -----------------------------------------------------------------


class _ListOrGroup(click.Group):
    """`lazarus effects CELL ...` lists, `lazarus effects resolve ...` acts: a first word that is not a
    subcommand is the CELL of the listing (its hidden `list` subcommand)."""

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        if args and args[0] not in self.commands and args[0] not in ("-h", "--help"):
            args = ["list", *args]
        return super().parse_args(ctx, args)


@cli.group()
def effect() -> None:
    """Record an external action of a shell agent: start, complete, fail."""


@effect.command("start")
@click.argument("ref", metavar="CELL")
@click.argument("name", metavar="AGENT")
@click.argument("effect_id")
@click.option("--name", "effect_name", default="", help="What the action is (e.g. pay).")
@click.option("--args-sha256", default="", help="A hash of its arguments, for the ledger.")
@common
@pass_app
def effect_start(app: App, ref: str, name: str, effect_id: str, effect_name: str, args_sha256: str) -> None:
    """Announce an action before doing it; prints the seq. A completed id prints its recorded result on
    stdout and exits 4: do not do it again."""
    from .effects import next_attempt
    from .errors import EffectDone
    from .names import check_ref_id

    c = app.cell(ref)
    check_ref_id("effect id", effect_id)
    payload = {"type": "effect.started", "effect_id": effect_id, "agent": name, "name": effect_name,
               "args_sha256": args_sha256, "attempt": next_attempt(c.refresh(), effect_id)}
    try:
        written = _emit(app, c, payload, by=name)
    except EffectDone as done:
        click.echo(json.dumps(done.result))
        raise
    _appended(app, written, {"attempt": payload["attempt"]} if app.json else None)


@effect.command("complete")
@click.argument("ref", metavar="CELL")
@click.argument("name", metavar="AGENT")
@click.argument("effect_id")
@click.option("--result", default=None, help="What it returned: JSON, @FILE or -.")
@common
@pass_app
def effect_complete(app: App, ref: str, name: str, effect_id: str, result: str | None) -> None:
    """Record that the action took place, with its result."""
    payload = {"type": "effect.completed", "effect_id": effect_id, "result": read_data(result)}
    _appended(app, _emit(app, app.cell(ref), payload, by=name))


@effect.command("fail")
@click.argument("ref", metavar="CELL")
@click.argument("name", metavar="AGENT")
@click.argument("effect_id")
@click.option("--error", default="", help="What went wrong.")
@click.option("--retryable", is_flag=True, help="It did not happen and may be tried again.")
@common
@pass_app
def effectfail(app: App, ref: str, name: str, effect_id: str, error: str, retryable: bool) -> None:
    """Record that the action did not take place."""
    payload = {"type": "effect.failed", "effect_id": effect_id, "error": error, "retryable": retryable}
    _appended(app, _emit(app, app.cell(ref), payload, by=name))


@cli.group(cls=_ListOrGroup)
def effects() -> None:
    """The side-effect ledger: `effects CELL` lists it, `effects resolve` settles one in doubt."""


@effects.command("list", hidden=True)
@click.argument("ref", metavar="CELL")
@click.option("--agent", "agent_name", default=None, help="Only this agent's effects.")
@click.option("--in-doubt", "only_in_doubt", is_flag=True, help="Only effects in doubt.")
@common
@pass_app
def effects_list(app: App, ref: str, agent_name: str | None, only_in_doubt: bool) -> None:
    """Every effect of a cell, oldest first."""
    from .effects import effect_rows

    rows = effect_rows(app.cell(ref).refresh(), agent_name, only_in_doubt)
    if app.json:
        click.echo(json.dumps(rows))
        return
    from .render import effects_table

    effects_table(rows)


@effects.command("resolve")
@click.argument("ref", metavar="CELL")
@click.argument("effect_id")
@click.option("--outcome", required=True, type=click.Choice(["completed", "failed", "retry"]))
@click.option("--result", default=None, help="Its result when it completed: JSON, @FILE or -.")
@click.option("--note", default="", help="How you know.")
@click.option("--by", default="operator", show_default=True)
@common
@pass_app
def effects_resolve(app: App, ref: str, effect_id: str, outcome: str, result: str | None, note: str,
                    by: str) -> None:
    """Settle an effect: completed (with its result), failed, or retry (the agent may start it again)."""
    payload = {"type": "effect.resolved", "effect_id": effect_id, "outcome": outcome, "result": read_data(result),
               "note": note}
    _appended(app, _emit(app, app.cell(ref), payload, by=by))


@cli.group(cls=_ListOrGroup)
def budget() -> None:
    """Spend against caps: `budget CELL [AGENT]` shows it, `budget raise` grants more."""


@budget.command("list", hidden=True)
@click.argument("ref", metavar="CELL")
@click.argument("name", metavar="AGENT", required=False)
@common
@pass_app
def budget_show(app: App, ref: str, name: str | None) -> None:
    """Each agent's spend (across every incarnation) against its caps, and the cell's total."""
    import time

    from .budget import cell_spend, spend_row

    view, now = app.cell(ref).refresh(), time.time()
    if name is not None and name not in view.agents:
        raise NotFound(f"agent {name!r} is not invited in cell {view.name}")
    rows = [spend_row(view, app.config, a, now) for a in view.agents.values() if name in (None, a.name)]
    total = msgspec.to_builtins(cell_spend(view, now))
    if app.json:
        click.echo(json.dumps({"cell": view.id, "agents": rows, "total": total}))
        return
    from .render import budget_table

    budget_table(view.name, rows, total)


@budget.command("raise")
@click.argument("ref", metavar="CELL")
@click.argument("name", metavar="AGENT")
@click.option("--cost", type=float, default=0.0, help="Add this much to the cost cap.")
@click.option("--tokens", type=int, default=0, help="Add this many tokens to the token cap.")
@click.option("--runtime", type=float, default=0.0, help="Add these seconds to the runtime cap.")
@click.option("--note", default="")
@common
@pass_app
def budget_raise(app: App, ref: str, name: str, cost: float, tokens: int, runtime: float, note: str) -> None:
    """Raise an agent's caps by these amounts; a paused agent is started again and resumes."""
    if not (cost or tokens or runtime):
        raise MalformedInput("budget raise needs --cost, --tokens or --runtime")
    from .budget import raise_events

    c = app.cell(ref)
    view = c.refresh()
    if name not in view.agents:
        raise NotFound(f"agent {name!r} is not invited in cell {view.name}")
    _appended(app, c.append_many(raise_events(view, name, cost=cost, tokens=tokens, runtime=runtime, note=note)))


@cli.command("export")
@click.argument("ref", metavar="CELL")
@click.option("--to", "target", required=True, type=click.Path(dir_okay=False, path_type=Path),
              help="The JSONL file to write (the log's lines, byte for byte).")
@common
@pass_app
def export_cmd(app: App, ref: str, target: Path) -> None:
    """Write a cell's verified log to a JSONL file, to import on another backend or root."""
    from .files import atomic_write
    from .replay import head_hash

    lines = [line for _, line in app.cell(ref).log.read_raw()]
    try:
        atomic_write(target, b"".join(line + b"\n" for line in lines))
    except OSError as exc:
        raise LazarusError(f"cannot write {target}: {exc.strerror}") from None
    head = head_hash(lines[-1] if lines else None)
    _out(app, {"events": len(lines), "head": head, "to": str(target)}, f"exported {len(lines)} events, head {head}")


@cli.command("import")
@click.argument("source", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@common
@pass_app
def import_cmd(app: App, source: Path) -> None:
    """Create a cell from an exported log (verified first); prints its id."""
    from .replay import head_hash

    lines = source.read_bytes().splitlines()
    c = app.root.import_log(lines)
    head = head_hash(lines[-1])
    _out(app, {"id": c.id, "events": len(lines), "head": head}, c.id)


@cli.group()
def schema() -> None:
    """JSON Schemas of the events and the config."""


@schema.command("export")
@click.option("--out", type=click.Path(file_okay=False), default="schemas", show_default=True)
@common
@pass_app
def schema_export(app: App, out: str) -> None:
    """Write the schemas generated from the code."""
    from .schema import export

    paths = export(Path(out))
    _out(app, [str(p) for p in paths], f"wrote {len(paths)} schemas to {out}")


@schema.command("catalogue")
@common
@pass_app
def schema_catalogue(app: App) -> None:
    """Print the event catalogue as Markdown (docs/events.md)."""
    from .schema import catalogue

    click.echo(catalogue(), nl=False)


# -- entry point --------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> None:
    """Run the click CLI: one `error: ...` line and the documented exit code on failure (the console
    script enters through `lazarus_bus.entry`, which sends `heartbeat` and `emit` round click)."""
    args = sys.argv[1:] if argv is None else argv

    def body() -> None:
        try:
            cli.main(args=args, prog_name="lazarus", standalone_mode=False)
        except click.exceptions.Exit as exc:
            sys.exit(exc.exit_code)
        except click.Abort:
            fail("interrupted", 130)
        except click.ClickException as exc:
            fail(exc.format_message(), 2 if isinstance(exc, click.UsageError) else exc.exit_code)

    guarded(body, "--debug" in args or bool(os.environ.get("LAZARUS_DEBUG")), args)
