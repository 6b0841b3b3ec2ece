"""Admission: what the current state and the author's role allow, decided before anything is written."""

from __future__ import annotations

from msgspec import Struct
from msgspec.structs import replace

from . import events as ev
from .effects import is_in_doubt, may_start_again
from .errors import Conflict, EffectDone, Fenced, Forbidden, MalformedInput, NotFound, Refused
from .fold import CellView, fold
from .names import SYSTEM_AUTHORS, check_agent
from .probes import check_target

__all__ = ["ADMISSION", "CAPABILITIES", "Admission", "admit", "admit_batch"]

# capability -> roles holding it; types that need none are for operator and lazarus only
CAPABILITIES: dict[str, tuple[str, ...]] = {
    "presence": ("lead", "write", "read", "audit"),
    "bus.message": ("lead", "write"),
    "checkpoint": ("lead", "write"),
    "handoff": ("lead", "write"),
    "task": ("lead",),
    "effect": ("lead", "write"),
}
States = tuple[str, ...]
ANY_STATE: States = ("provisioned", "active", "frozen", "archived")


class Admission(Struct, frozen=True, kw_only=True):
    """What one event type needs to be let in."""

    capability: str | None = None  # the role capability an agent needs to append it; None: operator/lazarus
    states: States = ("provisioned", "active", "frozen")  # cell states that accept it
    activates: bool = False  # the first one in a provisioned cell appends cell.activated after it


_LIFE = Admission(states=ANY_STATE)  # an agent's end is recorded whatever the cell's state
_WORK = Admission(states=("provisioned", "active"))  # starts or advances work: a frozen cell refuses it

# every event type, one row: a new type that is not listed here fails at import and in the tests
ADMISSION: dict[type[ev.Event], Admission] = {
    ev.CellProvisioned: Admission(states=()),  # only ever the first event, admitted on its own
    ev.CellActivated: Admission(states=("provisioned",)),
    ev.CellFrozen: Admission(states=("active",)),
    ev.CellThawed: Admission(states=("frozen",)),
    ev.CellArchived: Admission(states=("provisioned", "active", "frozen")),
    ev.CellDestroyed: Admission(states=("archived",)),
    ev.CellExpiring: Admission(),  # section 17: provisioned, active or frozen, by operator or lazarus
    ev.LeaderElected: Admission(states=ANY_STATE),
    ev.AgentInvited: Admission(),
    ev.AgentJoined: Admission(capability="presence", states=_WORK.states, activates=True),
    ev.AgentHeartbeat: Admission(capability="presence", activates=True),
    ev.AgentLeft: Admission(capability="presence", states=ANY_STATE),
    ev.AgentUpdated: Admission(),
    ev.AgentSpawned: Admission(states=_WORK.states, activates=True),
    ev.AgentExited: _LIFE,
    ev.AgentDeclaredDead: Admission(),
    ev.AgentRevived: _WORK,
    ev.AgentProbeFailed: Admission(),  # by lazarus: the probe's changes (section 17)
    ev.AgentProbeOk: Admission(),
    ev.RevivalPlanned: Admission(),
    ev.RevivalApprovalRequested: Admission(),
    ev.RevivalApproved: Admission(),
    ev.RevivalDenied: Admission(),
    ev.BusMessage: Admission(capability="bus.message", states=_WORK.states),
    ev.CheckpointCreated: Admission(capability="checkpoint", states=_WORK.states),
    ev.CheckpointRestored: Admission(capability="checkpoint", states=_WORK.states),
    ev.HandoffCreated: Admission(capability="handoff", states=_WORK.states),
    ev.HandoffAccepted: Admission(capability="handoff", states=_WORK.states),
    ev.TaskCreated: Admission(capability="task", states=_WORK.states),
    ev.TaskUpdated: Admission(capability="task", states=_WORK.states),
    ev.EffectStarted: Admission(capability="effect", states=_WORK.states),
    ev.EffectCompleted: Admission(capability="effect"),  # an outcome is recorded in a frozen cell too
    ev.EffectFailed: Admission(capability="effect"),
    ev.EffectResolved: Admission(capability="effect"),
    ev.AgentUsage: Admission(capability="presence"),  # every role spends; what was spent is always recorded
    ev.BudgetWarned: Admission(),
    ev.BudgetExceeded: Admission(),
    ev.BudgetRaised: Admission(),
    ev.GraphCheckpoint: Admission(capability="checkpoint", states=_WORK.states),
    ev.GraphWrites: Admission(capability="checkpoint", states=_WORK.states),
    ev.GraphDeleted: Admission(capability="checkpoint", states=_WORK.states),
    ev.LogPruned: Admission(states=ANY_STATE),  # retention runs in every state a cell can still be in
}
assert ADMISSION.keys() == set(ev.EVENT_TYPES.values()), "every event type needs an admission rule"
_LIFECYCLE = (ev.CellActivated, ev.CellFrozen, ev.CellThawed, ev.CellArchived, ev.CellDestroyed)
_CELL_EVENTS = (ev.CellProvisioned, *_LIFECYCLE)


def _check_author(view: CellView, e: ev.Event) -> None:
    """`by` must hold the capability for the type; operator and lazarus hold all."""
    if e.by in SYSTEM_AUTHORS:
        return
    agent = view.agents.get(e.by)
    if agent is None:
        raise Forbidden(f"{e.by!r} is not invited in cell {view.name} and may append nothing")
    cap = ADMISSION[type(e)].capability
    if cap is None:
        raise Forbidden(f"agent {e.by} (role {agent.role}) may not append {e.type}: only operator and lazarus may")
    if cap == "presence":
        if getattr(e, "agent", None) != e.by:
            raise Forbidden(f"agent {e.by} may append {e.type} only for itself")
        if agent.phase == "left" and not isinstance(e, ev.AgentJoined):
            raise Refused(f"agent {e.by} has left cell {view.name}; it must join again first")
        return
    if isinstance(e, ev.HandoffAccepted):
        h = view.handoffs.get(e.handoff_id)
        if h is not None and h.to == e.by:
            return  # the recipient may always accept a handoff addressed to it
        if h is not None:
            raise Forbidden(f"agent {e.by} may not accept handoff {e.handoff_id}: only its recipient {h.to} may")
    if isinstance(e, _EFFECT_OUTCOMES):
        started = view.effects.get(e.effect_id)
        if started is not None and started.agent != e.by:
            raise Forbidden(f"agent {e.by} may not record an outcome of effect {e.effect_id}: "
                            f"agent {started.agent} started it")
    if isinstance(e, ev.EffectStarted) and e.agent != e.by:
        raise Forbidden(f"agent {e.by} may start effects only for itself")
    if isinstance(e, ev.TaskUpdated) and agent.role == "write":
        t = view.tasks.get(e.task_id)
        if t is not None and t.assignee == e.by and e.assignee in (None, e.by):
            return  # writers update their own tasks
        raise Forbidden(f"agent {e.by} (role write) may update only tasks assigned to it")
    if agent.role not in CAPABILITIES[cap]:
        raise Forbidden(f"agent {e.by} (role {agent.role}) lacks the {cap} capability needed for {e.type}")


_EFFECT_OUTCOMES = (ev.EffectCompleted, ev.EffectFailed, ev.EffectResolved)


def _attempt(e: ev.EffectStarted, expected: int) -> None:
    if e.attempt not in (0, expected):
        raise Refused(f"effect {e.effect_id}: this start is attempt {expected}, not {e.attempt}")


def _check_effect(view: CellView, e: ev.Event) -> None:
    """The ledger's rules: a completed id is answered with its result and never started again; a start after
    a retryable failure or a `retry` resolution is the next attempt; any other repeat is refused."""
    if isinstance(e, ev.EffectStarted):
        _known_agent(view, e.agent, "agent")
        old = view.effects.get(e.effect_id)
        if old is None:
            return _attempt(e, 1)
        if old.status == "completed":
            raise EffectDone(f"effect {e.effect_id} already completed (seq {old.ended_seq}); its recorded result "
                             "answers it", old.result)
        if may_start_again(old):
            if old.agent != e.agent:
                raise Forbidden(f"effect {e.effect_id} belongs to agent {old.agent}")
            return _attempt(e, old.attempt + 1)
        if old.status == "failed":
            raise Refused(f"effect {e.effect_id} failed for good: {old.error or 'no error given'} "
                          "(`lazarus effects resolve --outcome retry` allows another attempt)")
        if is_in_doubt(view, old):
            raise Refused(f"effect {e.effect_id} is in doubt (started at seq {old.seq} by an incarnation that is "
                          "gone, no outcome): resolve it first (`lazarus effects resolve`)")
        raise Refused(f"effect {e.effect_id} is already running (started at seq {old.seq}, attempt {old.attempt})")
    effect_id: str = e.effect_id  # type: ignore[attr-defined]
    started = view.effects.get(effect_id)
    if started is None:
        raise NotFound(f"no effect {effect_id} in cell {view.name}")
    if started.status == "completed" or (started.status != "started" and not isinstance(e, ev.EffectResolved)):
        raise Refused(f"effect {effect_id} already has an outcome ({started.status}, seq {started.ended_seq})")
    if isinstance(e, ev.EffectResolved) and started.status == "started" and not is_in_doubt(view, started):
        raise Refused(f"effect {effect_id} is still running (its incarnation runs): it records its own outcome; "
                      "resolve it once it is in doubt")
    stamped = getattr(e, "incarnation", "")
    if isinstance(e, (ev.EffectCompleted, ev.EffectFailed)) and stamped and started.incarnation \
            and stamped != started.incarnation:
        raise Refused(f"effect {effect_id} was started by another incarnation ({started.incarnation}): "
                      "it is in doubt, so resolve it (`effects resolve`), do not complete it")


def _check_incarnation(view: CellView, e: ev.Event) -> None:
    """An event stamped with an incarnation that is not its author's newest is fenced."""
    incarnation = getattr(e, "incarnation", "")
    if not incarnation:
        return
    agent = view.agents.get(e.by)
    newest = agent.incarnation if agent is not None else ""
    if incarnation != newest:
        raise Fenced(f"agent {e.by}'s incarnation {incarnation} was superseded by "
                     f"{newest or 'no running incarnation'}: this copy of the agent may not write, and stops")


# what a leader decides: stamped with its epoch, refused from a leader that was superseded
LEADER_DECISIONS: frozenset[type[ev.Event]] = frozenset(
    cls for cls in ev.EVENT_TYPES.values() if "epoch" in cls.__struct_fields__ and cls is not ev.LeaderElected)


def _check_epoch(view: CellView, e: ev.Event) -> None:
    """A newer leader.elected fences every older leader: its decisions are refused, as a stale
    incarnation's events are."""
    if isinstance(e, ev.LeaderElected):
        if e.epoch <= view.epoch:
            raise Fenced(f"epoch {e.epoch} is not newer than the cell's epoch {view.epoch} ({view.leader} leads)")
    elif e.by == "lazarus" and view.epoch and type(e) in LEADER_DECISIONS and getattr(e, "epoch", 0) < view.epoch:
        raise Fenced(f"a decision of leader epoch {getattr(e, 'epoch', 0)}, but {view.leader} leads the cell "
                     f"since epoch {view.epoch}: this daemon no longer leads it")


def _check_state(view: CellView, e: ev.Event) -> None:
    """The lifecycle state machine and what a frozen or archived cell accepts."""
    if view.state == "destroyed":
        raise Refused(f"cell {view.name} is destroyed")
    if isinstance(e, ev.CellProvisioned):
        raise Refused(f"cell {view.name} is already provisioned")
    if view.state in ADMISSION[type(e)].states:
        return
    if isinstance(e, _LIFECYCLE):
        raise Refused(f"{e.type} is not allowed: cell {view.name} is {view.state}")
    raise Refused(f"cell {view.name} is {view.state} and refuses {e.type}")


def _known_agent(view: CellView, name: str | None, what: str) -> None:
    if name is not None and name not in view.agents:
        raise NotFound(f"{what} {name!r} is not invited in cell {view.name}")


def _check_update(view: CellView, e: ev.AgentUpdated) -> None:
    """`agent stop | start | restart | update`: refused when there is nothing to do, said in words."""
    _known_agent(view, e.agent, "agent")
    a = view.agents[e.agent]
    if a.phase == "left":
        raise Refused(f"agent {e.agent} has left cell {view.name}: invite it again")
    if e.command is not None and not e.command:
        raise MalformedInput("agent.updated: command, when given, must not be empty")
    if e.run is None:
        return
    if e.run != "stop" and view.state not in ("provisioned", "active"):
        raise Refused(f"cell {view.name} is {view.state}: thaw it first")
    if e.run == "stop" and a.held:
        raise Refused(f"agent {e.agent} is already stopped")
    if e.run == "start" and not (a.held or a.phase == "stopped"):
        raise Refused(f"agent {e.agent} is {a.phase}, not stopped: `lazarus agent restart` restarts it")
    if e.run == "restart" and not (e.command or a.command):
        raise Refused(f"agent {e.agent} is not supervised (no command): there is no process to restart")


def _check_refs(view: CellView, e: ev.Event) -> None:
    """Everything an event names must exist (or, for new ids, must not)."""
    if isinstance(e, ev.AgentInvited):
        check_agent(e.agent)
        for sub in e.substitutes:
            check_agent(sub)
        if e.probe:
            check_target(e.probe)
        if e.probe and e.probe_cmd:
            raise MalformedInput("agent.invited: give probe or probe_cmd, not both")
        if e.restart_cmd and e.command:
            raise MalformedInput("agent.invited: restart_cmd is for an agent another manager runs; "
                                 "with command the daemon runs it itself")
        old = view.agents.get(e.agent)
        if old is not None and old.phase != "left":
            raise Refused(f"agent {e.agent} is already invited in cell {view.name}")
        return
    if isinstance(e, ev.AgentUpdated):
        _check_update(view, e)
        return
    if isinstance(e, ev.AgentRevived):
        _known_agent(view, e.agent, "agent")
        _known_agent(view, e.substitute_for, "agent")
        return
    agent = getattr(e, "agent", None)
    if isinstance(agent, str) and not isinstance(e, ev.RevivalApprovalRequested):
        _known_agent(view, agent, "agent")
    if isinstance(e, ev.RevivalApprovalRequested):
        _known_agent(view, e.agent, "agent")
        if e.key in view.approvals:
            raise Conflict(f"approval key {e.key} already exists")
    elif isinstance(e, (ev.RevivalApproved, ev.RevivalDenied)):
        a = view.approvals.get(e.key)
        if a is None:
            raise NotFound(f"no approval request {e.key} in cell {view.name}")
        if a.decision is not None:
            raise Refused(f"approval {e.key} was already {a.decision}")
    elif isinstance(e, ev.BusMessage):
        _known_agent(view, e.to, "recipient")
    elif isinstance(e, ev.CheckpointCreated):
        if e.checkpoint_id in view.checkpoints:
            raise Conflict(f"checkpoint {e.checkpoint_id} already exists")
    elif isinstance(e, ev.CheckpointRestored):
        if e.checkpoint_id not in view.checkpoints:
            raise NotFound(f"no checkpoint {e.checkpoint_id} in cell {view.name}")
    elif isinstance(e, ev.HandoffCreated):
        _known_agent(view, e.to, "recipient")
        if e.checkpoint_id is None or e.checkpoint_id not in view.checkpoints:
            raise NotFound(f"handoff needs an existing checkpoint; {e.checkpoint_id!r} is not in cell {view.name}")
        if e.handoff_id in view.handoffs:
            raise Conflict(f"handoff {e.handoff_id} already exists")
    elif isinstance(e, ev.HandoffAccepted):
        h = view.handoffs.get(e.handoff_id)
        if h is None:
            raise NotFound(f"no handoff {e.handoff_id} in cell {view.name}")
        if h.accepted:
            raise Refused(f"handoff {e.handoff_id} was already accepted")
    elif isinstance(e, ev.TaskCreated):
        if e.task_id in view.tasks:
            raise Conflict(f"task {e.task_id} already exists")
        _known_agent(view, e.assignee, "assignee")
        for dep in e.depends_on:
            if dep == e.task_id:
                raise Refused(f"task {e.task_id} cannot depend on itself (a cycle)")
            if dep not in view.tasks:
                raise Refused(f"task {e.task_id} depends on unknown task {dep}")
    elif isinstance(e, ev.TaskUpdated):
        t = view.tasks.get(e.task_id)
        if t is None:
            raise NotFound(f"no task {e.task_id} in cell {view.name}")
        _known_agent(view, e.assignee, "assignee")
        if e.status in ("in_progress", "done"):
            waiting = [d for d in t.depends_on if view.tasks[d].status != "done"]
            if waiting:
                raise Refused(f"task {e.task_id} waits on {', '.join(waiting)} (not done)")


def admit(view: CellView | None, e: ev.Event) -> list[ev.Event]:
    """The drafts to write for `e`: itself, plus `cell.activated` on a provisioned cell's first sign of life."""
    if view is None:
        if not isinstance(e, ev.CellProvisioned):
            raise NotFound("the cell has no cell.provisioned event")
        if e.by != "operator" and e.by != "lazarus":
            raise Forbidden("only operator or lazarus may provision a cell")
        return [e]
    if not e.by:
        raise MalformedInput(f"{e.type}: 'by' is required")
    _check_author(view, e)
    _check_incarnation(view, e)
    _check_epoch(view, e)
    _check_state(view, e)
    _check_refs(view, e)
    if isinstance(e, (ev.EffectStarted, *_EFFECT_OUTCOMES)):
        _check_effect(view, e)
    if view.state == "provisioned" and ADMISSION[type(e)].activates:
        who = getattr(e, "agent", e.by)
        return [e, ev.CellActivated(by="lazarus", reason=f"first {e.type} ({who})")]
    if (view.state == "provisioned" and not isinstance(e, _CELL_EVENTS)
            and any(a.last_seen for a in view.agents.values())):
        # a writer that crashed between a first sign of life and its activation (possible on NATS,
        # where a batch is published event by event): the next writer completes it
        return [ev.CellActivated(by="lazarus", reason="an agent was already seen"), e]
    return [e]


def admit_batch(view: CellView | None, drafts: list[ev.Event], first_seq: int) -> list[ev.Event]:
    """Admit drafts in order, each against the state the earlier ones leave."""
    out: list[ev.Event] = []
    seq = first_seq
    for d in drafts:
        for e in admit(view, d):
            seq += 1
            view = fold(view, replace(e, seq=seq))
            out.append(e)
    return out
