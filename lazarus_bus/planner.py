"""The resurrection planner: a pure function of projection, policy and time that returns actions."""

from __future__ import annotations

import hashlib
from typing import Any

from msgspec import Struct

from . import events as ev
from .budget import blocked, checks
from .config import Config
from .effects import open_effects
from .fold import AgentView, CellView
from .health import ALWAYS, Hearing, judge
from .lifetime import due, reminders
from .policy import Effective, effective
from .probes import fill, managed, probed
from .resume import resume_pointer

__all__ = ["Action", "Append", "Command", "Start", "Stop", "attempts_in_window", "backoff", "channels_of",
           "manual_revival", "plan", "quiet"]

RUNNABLE = ("provisioned", "active")


class Action(Struct, frozen=True, kw_only=True, tag_field="do"):
    """Something the executor does for one agent of one cell."""

    cell: str
    agent: str
    why: str = ""
    at_seq: int = 0  # the projection's seq it was planned on: it holds only while the log is still there


class Append(Action, frozen=True, kw_only=True, tag="append"):
    """Events to append together."""

    events: list[ev.AnyEvent]


class Start(Action, frozen=True, kw_only=True, tag="start"):
    """Spawn a supervised agent; `revived` > 0 also appends `agent.revived` with that restart number."""

    attempt: int = 1
    revived: int = 0
    resume: str = ""


class Stop(Action, frozen=True, kw_only=True, tag="stop"):
    """Stop a supervised agent's process (SIGTERM, grace, SIGKILL)."""


class Command(Action, frozen=True, kw_only=True, tag="command"):
    """Revive an agent another manager runs by its commands (`restart_cmd`, else `stop_cmd` then
    `start_cmd`), off the loop; success appends `agent.revived` (`via = "restart_cmd"`) with restart
    number `revived`, failure a death with reason `restart_failed`."""

    argv: list[list[str]]
    revived: int = 1


AnyAction = Append | Start | Stop | Command


def _commands(view: CellView, a: AgentView, host: str | None) -> list[list[str]]:
    """What revives a managed agent, placeholders filled: its restart command, else stop then start."""
    where = a.host or host or "localhost"
    chosen = [a.restart_cmd] if a.restart_cmd else [c for c in (a.stop_cmd, a.start_cmd) if c]
    return [fill(c, cell=view.name, agent=a.name, host=where) for c in chosen]


def _command(view: CellView, a: AgentView, host: str | None, revived: int, why: str) -> Command:
    return Command(cell=view.id, at_seq=view.seq, agent=a.name, argv=_commands(view, a, host), revived=revived,
                   why=why)


def _remote(a: AgentView, host: str | None) -> bool:
    """The agent runs on another host than this daemon's (as far as the log says where it runs)."""
    return bool(a.host) and a.host != host


def backoff(p: Effective, k: int) -> float:
    """Delay before restart number k+1 in the window: none for the first, then exponential."""
    if k <= 0:
        return 0.0
    return min(p.backoff_max, p.backoff_initial * p.backoff_factor ** (k - 1))


def attempts_in_window(a: AgentView, p: Effective, now: float) -> int:
    """Restarts already spent in the window; a run that lasted `stable_after` resets the count."""
    since = now - p.attempt_window
    ended = max(a.dead_at, a.exited_at)
    died = ended if ended >= a.spawned_at and ended else now  # the end of the latest run
    if a.spawned_at and died - a.spawned_at >= p.stable_after:
        since = max(since, a.spawned_at)
    return sum(1 for t in a.restarts if t > since)


def channels_of(config: Config) -> list[str]:
    """The channels named in an approval request: the configured ones, then webhook and command."""
    out = [f"{name}:{where}" for name, where in config.notify.channels.items()]
    if config.notify.webhook:
        out.append("webhook")
    if config.notify.command:
        out.append("command")
    return out


def _key(view: CellView, agent: str, what: str) -> str:
    """A deterministic id, unique under the root: the cell, the agent and the seq it was decided at."""
    return hashlib.sha256(f"{view.id}:{agent}:{view.seq}:{what}".encode()).hexdigest()[:12]


def _own_host(a: AgentView, host: str | None) -> bool:
    """None: this daemon leads the cell (NATS lease) and acts for agents of any host."""
    return host is None or not a.host or a.host == host


def _candidate(view: CellView, config: Config, dead: AgentView, p: Effective, now: float,
               prefer: str | None = None, hearing: Hearing = ALWAYS) -> AgentView | None:
    """The first healthy substitute: the suggested one, the policy's list, then the agent's own."""
    names = [n for n in [prefer, *p.substitutes, *dead.substitutes] if n]
    for name in dict.fromkeys(names):
        c = view.agents.get(name)
        if c is None or name == dead.name:
            continue
        if judge(view, c, effective(config, view, name), now, hearing).health == "healthy":
            return c
    return None


def _planned(a: AgentView, action: str, **kw: Any) -> ev.RevivalPlanned:
    return ev.RevivalPlanned(by="lazarus", agent=a.name, action=action, **kw)  # type: ignore[arg-type]


def _revive_now(view: CellView, config: Config, a: AgentView, p: Effective, now: float, host: str | None, *,
                k: int, delay: float, prefer: str | None = None) -> tuple[list[ev.AnyEvent], list[AnyAction]]:
    """Mode `yes`: restart when supervised here, else a healthy substitute, else unrecoverable."""
    if a.command and _own_host(a, host):
        events: list[ev.AnyEvent] = [_planned(a, "restart", attempt=k + 1, delay=delay)]
        later: list[AnyAction] = []
        if delay <= 0:
            later.append(Start(cell=view.id, at_seq=view.seq, agent=a.name, attempt=k + 2, revived=k + 1,
                               resume=resume_pointer(view, a.name), why="restart"))
        return events, later
    sub = _candidate(view, config, a, p, now, prefer)
    if managed(a) and (sub is None or p.prefer != "substitute" or not _remote(a, host)):
        # section 17: restart through the agent's own manager; a healthy substitute comes first only with
        # `prefer = "substitute"` for an agent on another host
        events = [_planned(a, "restart", attempt=k + 1, delay=delay)]
        return events, ([_command(view, a, host, k + 1, "restart_cmd")] if delay <= 0 else [])
    if sub is None:
        return [_planned(a, "unrecoverable", attempt=k + 1)], []
    return _substitute(view, a, sub, k + 1, "lazarus"), []


def _substitute(view: CellView, a: AgentView, sub: AgentView, attempt: int, by: str) -> list[ev.AnyEvent]:
    """The substitute takes over: a handoff from the dead agent's newest checkpoint, then its revival."""
    events: list[ev.AnyEvent] = [ev.RevivalPlanned(by=by, agent=a.name, action="substitute", substitute=sub.name,
                                                attempt=attempt)]
    if a.last_checkpoint:
        events.append(ev.HandoffCreated(by="lazarus", handoff_id=f"takeover-{_key(view, a.name, 'handoff')}",
                                        to=sub.name, checkpoint_id=a.last_checkpoint,
                                        note=f"taking over from {a.name}"))
    events.append(ev.AgentRevived(by="lazarus", agent=sub.name, pid=sub.pid, attempt=attempt, substitute_for=a.name))
    return events


def _decide(view: CellView, config: Config, a: AgentView, p: Effective, now: float, host: str | None,
            reason: str, detail: dict[str, Any]) -> tuple[list[ev.AnyEvent], list[AnyAction]]:
    """What the policy does with a death: the revival.planned and what follows it."""
    if p.mode == "no":
        return [_planned(a, "suppressed")], []
    doubt = [e.effect_id for e in open_effects(view, a.name)]  # at a death, every open effect is in doubt
    if p.mode == "ask" or (p.mode == "yes" and doubt and config.effects.on_in_doubt == "ask" and a.command):
        sub = None if a.command or (managed(a) and not _remote(a, host)) else _candidate(view, config, a, p, now)
        key = _key(view, a.name, "ask")
        why = (f"signal {detail['signal']}" if detail.get("signal") else
               f"code {detail['returncode']}" if detail.get("returncode") is not None else
               f"{float(detail['age']):.0f}s silent" if "age" in detail else "")
        held = (f"; it holds effects in doubt: {', '.join(doubt)} (see `lazarus effects {view.name} --in-doubt`, "
                "settle them with `lazarus effects resolve`)" if doubt else "")
        message = (f"agent {a.name} of mission {p.mission} (cell {view.name}) is dead: {reason}"
                   f"{f' ({why})' if why != '' else ''}{held}; "
                   + (f"suggested substitute: {sub.name}" if sub else
                      "it will be restarted" if a.command or managed(a) else "no healthy substitute")
                   + f"; run `lazarus approve {key}` or `lazarus deny {key}`")
        return [_planned(a, "ask", substitute=sub.name if sub else None),
                ev.RevivalApprovalRequested(by="lazarus", key=key, agent=a.name, message=message,
                                            substitute=sub.name if sub else None,
                                            channels=channels_of(config))], []
    k = attempts_in_window(a, p, now)
    if k >= p.max_attempts:
        return [_planned(a, "escalated", attempt=k)], []
    return _revive_now(view, config, a, p, now, host, k=k, delay=backoff(p, k))


def _declare(a: AgentView, reason: str, detail: dict[str, Any]) -> ev.AgentDeclaredDead:
    return ev.AgentDeclaredDead(by="lazarus", agent=a.name, reason=reason,  # type: ignore[arg-type]
                                last_seen=a.last_seen, detail=detail)


def _operator_stop(a: AgentView, running: bool) -> str | None:
    """`agent stop` and `agent restart`: why to stop the process ("" when it is already down, so nothing
    is to be done), or None when the operator asked for no stop."""
    if a.held:
        return "stopped by the operator" if running else ""
    if a.restart_pending and running:
        return "restart asked by the operator"
    return None


def plan_agent(view: CellView, config: Config, a: AgentView, now: float, host: str | None,
               hearing: Hearing = ALWAYS) -> list[AnyAction]:
    """The actions one agent needs now (usually none); silence counts only while `hearing` could hear."""
    cid, name, supervised = view.id, a.name, bool(a.command)
    p = effective(config, view, name)
    running_per_log = supervised and a.spawned_at > a.exited_at and a.pid > 0
    if supervised and not _own_host(a, host):
        return []  # another host's daemon supervises it
    if view.state not in RUNNABLE:
        if running_per_log and a.phase not in ("dead",):
            return [Stop(cell=cid, agent=name, why=f"cell is {view.state}")]
        return []
    if a.phase == "left":
        return [Stop(cell=cid, agent=name, why="agent left")] if running_per_log else []
    spending = checks(view, config, a, now, channels_of(config))
    if spending:
        return [Append(cell=cid, agent=name, at_seq=view.seq, why="budget", events=spending)]
    if blocked(a) and not (a.phase == "exited" and a.returncode == 0):
        return [Stop(cell=cid, agent=name, why="budget exceeded")] if running_per_log else []
    operator = _operator_stop(a, running_per_log)
    if operator is not None:
        return [Stop(cell=cid, agent=name, why=operator)] if operator else []
    if a.phase in ("invited", "stopped") and supervised:
        return [Start(cell=cid, at_seq=view.seq, agent=name, attempt=1, resume=resume_pointer(view, name),
                      why="first start" if a.phase == "invited" else "started again (thawed, or by the operator)")]
    if a.phase == "exited":
        if a.returncode == 0 and p.restart_on == "failure":
            return [Append(cell=cid, agent=name, at_seq=view.seq, why="completed",
                           events=[ev.AgentLeft(by="lazarus", agent=name, reason="completed")])]
        detail = {"returncode": a.returncode, "signal": a.signal, "pid": a.pid}
        events, later = _decide(view, config, a, p, now, host, "exited", detail)
        return [Append(cell=cid, agent=name, at_seq=view.seq, why="exited",
                       events=[_declare(a, "exited", detail), *events]), *later]
    if a.phase in ("running", "invited"):
        verdict = judge(view, a, p, now, hearing)
        if verdict.health != "dead" or verdict.reason is None:
            return []
        events, later = _decide(view, config, a, p, now, host, verdict.reason, verdict.detail)
        stop: list[AnyAction] = [Stop(cell=cid, agent=name, why="hung")] if running_per_log else []
        return [*stop, Append(cell=cid, agent=name, at_seq=view.seq, why=verdict.reason,
                              events=[_declare(a, verdict.reason, verdict.detail), *events]), *later]
    if a.phase != "dead":
        return []
    # dead, declared: carry on with whatever was decided
    if a.revival is None:
        events, later = _decide(view, config, a, p, now, host, a.dead_reason or "unknown", {})
        return [Append(cell=cid, agent=name, at_seq=view.seq, why="dead, undecided", events=events), *later]
    if a.revival == "restart" and supervised:
        if now < a.revival_at + a.revival_delay:
            return []
        k = a.revival_attempt
        return [Start(cell=cid, at_seq=view.seq, agent=name, attempt=k + 1, revived=k,
                      resume=resume_pointer(view, name), why="restart due")]
    if a.revival == "restart" and managed(a):
        if now < a.revival_at + a.revival_delay:
            return []
        return [_command(view, a, host, a.revival_attempt, "restart_cmd due")]
    if a.revival == "ask" and a.approval:
        request = view.approvals.get(a.approval)
        if request is None:
            return []
        if request.decision is None:
            t = config.approvals
            if t.timeout > 0 and now - request.requested_at >= t.timeout:
                cls = ev.RevivalApproved if t.on_timeout == "approve" else ev.RevivalDenied
                return [Append(cell=cid, agent=name, at_seq=view.seq, why="approval timed out",
                               events=[cls(by="lazarus", key=request.key, note="timeout")])]
            return []
        if request.decision == "approved":
            k = attempts_in_window(a, p, now)
            events, later = _revive_now(view, config, a, p, now, host, k=k, delay=0.0, prefer=request.substitute)
            return [Append(cell=cid, agent=name, at_seq=view.seq, why="approved", events=events), *later]
    return []


def plan(view: CellView, config: Config, now: float, host: str | None,
         hearing: Hearing = ALWAYS) -> list[AnyAction]:
    """Every action a cell needs now: its lifetime's (section 17) first, then agent by agent."""
    ending = due(view, now)
    if ending:  # an archive comes alone: the agents are stopped on the next pass, against the archived cell
        return [Append(cell=view.id, agent="", at_seq=view.seq, why=ending[0].type, events=ending)]
    out: list[AnyAction] = []
    reminded = reminders(view, now)
    if reminded:
        out.append(Append(cell=view.id, agent="", at_seq=view.seq, why="checkpoint due",
                          events=reminded))
    for a in view.agents.values():
        out.extend(plan_agent(view, config, a, now, host, hearing))
    return out


SETTLED = ("suppressed", "unrecoverable", "escalated")  # a dead agent's revival that no clock moves on


def quiet(view: CellView, config: Config) -> bool:
    """Nothing in the cell comes due by time alone but an agent's silence (which `health.silence_due` times),
    once a plan found nothing to do: a daemon plans it again when its log moves or a silence deadline
    comes, not every tick. Whatever else a clock moves (a supervised process, another manager's agent, a
    probe, a budget, a lifetime, an approval's timeout, the phi detector) keeps the cell on every tick."""
    if view.state not in RUNNABLE or view.max_duration > 0 or view.checkpoint_interval > 0 or view.auto_archive:
        return False
    if any(r.decision is None for r in view.approvals.values()):
        return False
    for a in view.agents.values():
        if a.command or managed(a) or probed(a) or a.budget_exceeded is not None:
            return False
        if not (a.phase in ("running", "invited", "left") or (a.phase == "dead" and a.revival in SETTLED)):
            return False
        if effective(config, view, a.name).detector == "phi":
            return False
    return True


def manual_revival(view: CellView, config: Config, agent: str, now: float) -> list[ev.AnyEvent]:
    """`lazarus revive`: the operator's restart (or substitute), which resets the attempt window."""
    from .errors import NotFound, Refused

    a = view.agents.get(agent)
    if a is None:
        raise NotFound(f"agent {agent!r} is not invited in cell {view.name}")
    if a.phase not in ("dead", "exited"):
        raise Refused(f"agent {agent} is {a.phase}, not dead: nothing to revive")
    if view.state not in RUNNABLE:
        raise Refused(f"cell {view.name} is {view.state}: thaw it first")
    out: list[ev.AnyEvent] = []
    if a.phase == "exited":
        out.append(ev.AgentDeclaredDead(by="operator", agent=agent, reason="exited", last_seen=a.last_seen,
                                        detail={"returncode": a.returncode, "signal": a.signal}))
    if a.command or managed(a):
        return [*out, ev.RevivalPlanned(by="operator", agent=agent, action="restart", attempt=1)]
    p = effective(config, view, agent)
    sub = _candidate(view, config, a, p, now)
    if sub is None:
        raise Refused(f"agent {agent} is not supervised and has no healthy substitute")
    return [*out, *_substitute(view, a, sub, 1, "operator")]
