"""Pure projections: `view = fold(view, event)`, one small handler per event type, no clock, no I/O."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from itertools import groupby, islice
from operator import attrgetter
from typing import Any, Literal

import msgspec
from msgspec import Struct
from msgspec.structs import replace

from . import events as ev
from .errors import CorruptLog

__all__ = [
    "AgentView",
    "ApprovalView",
    "CellView",
    "CheckpointView",
    "EffectView",
    "HandoffView",
    "TaskView",
    "fold",
    "fold_all",
    "manifest",
    "PROJECTION_VERSION",
]

PROJECTION_VERSION = 4
INTERVALS_KEPT = 32
RUN = 4096  # heartbeats fold_all folds at once, at most

Phase = Literal["invited", "running", "exited", "dead", "stopped", "left"]


# Views are gc=False like events: frozen, built bottom-up, so they can hold no cycle
class AgentView(Struct, frozen=True, kw_only=True, gc=False):
    """Everything the log says about one agent, for health and planning."""

    name: str
    role: str
    command: list[str] = []
    env: dict[str, str] = {}
    substitutes: list[str] = []
    heartbeat_interval: float = 0.0
    revive: str | None = None
    limits: dict[str, str] = {}
    secrets: dict[str, str] = {}  # name -> source (@FILE or env:VAR), never a value
    invited_at: float = 0.0
    phase: Phase = "invited"
    pid: int = 0  # the supervised process, from agent.spawned alone (a heartbeat's pid is heartbeat_pid)
    host: str = ""
    start_time: float = 0.0
    heartbeat_pid: int = 0
    incarnation: str = ""  # the id of the newest agent.spawned
    last_seen: float = 0.0
    last_heartbeat: float = 0.0
    heartbeats: int = 0
    intervals: tuple[float, ...] = ()
    cycle: int = 0
    cycle_since: float = 0.0
    status: str = ""
    model: str = ""
    spawns: int = 0
    attempt: int = 0
    spawned_at: float = 0.0
    returncode: int | None = None
    signal: int | None = None
    exited_at: float = 0.0
    dead_reason: str | None = None
    dead_at: float = 0.0
    deaths: int = 0
    restarts: tuple[float, ...] = ()
    revival: str | None = None
    revival_at: float = 0.0
    revival_delay: float = 0.0
    revival_seq: int = 0
    revival_attempt: int = 0
    revival_substitute: str | None = None
    approval: str | None = None
    left_reason: str = ""
    substitute_for: str | None = None
    replaced_by: str | None = None
    last_checkpoint: str | None = None
    session_seq: int = 0  # the newest agent.invited or agent.joined: a new session of an unsupervised agent
    # spend across every incarnation (section 14): a revival never resets it
    tokens_in: int = 0
    tokens_out: int = 0
    cost: float = 0.0
    calls: int = 0
    runtime: float = 0.0  # seconds of supervised runs that ended; the current one is counted from spawned_at
    raised_cost: float = 0.0
    raised_tokens: int = 0
    raised_runtime: float = 0.0
    budget_warned: tuple[str, ...] = ()  # "what:cap" already warned about
    budget_exceeded: str | None = None  # what reached its cap, until a budget.raised
    budget_on_exceed: str = ""
    budget_approval: str | None = None
    held: bool = False  # stopped by the operator (`agent stop`): not started, not revived, until `agent start`
    restart_pending: bool = False  # `agent restart`: stopped, then started at once, outside the revival rules
    # section 17: a probe from outside (0 = the default) and the commands of another manager
    probe: str = ""
    probe_cmd: list[str] = []
    probe_period: float = 0.0
    probe_timeout: float = 0.0
    probe_failures: int = 0  # the limit: failures in a row that make it dead
    probe_initial_delay: float = 0.0
    restart_cmd: list[str] = []
    stop_cmd: list[str] = []
    start_cmd: list[str] = []
    probe_state: Literal["", "ok", "failing"] = ""  # as the log last recorded it
    probe_failed: int = 0  # failures in a row, as of the newest agent.probe_failed
    probe_detail: dict[str, Any] = {}
    probe_at: float = 0.0
    last_checkpoint_at: float = 0.0  # ts of the newest checkpoint it created
    checkpoint_due_at: float = 0.0  # ts of the newest `lazarus.checkpoint_due` reminder it was sent


class EffectView(Struct, frozen=True, kw_only=True, gc=False):
    """One effect id's ledger: its latest attempt and how it ended (status `started` = no outcome yet)."""

    effect_id: str
    agent: str
    seq: int
    started_at: float
    name: str = ""
    args_sha256: str = ""
    incarnation: str = ""
    attempt: int = 1
    status: Literal["started", "completed", "failed", "retry"] = "started"
    result: Any = None
    error: str = ""
    retryable: bool = False
    note: str = ""
    ended_seq: int = 0
    ended_by: str = ""


class CheckpointView(Struct, frozen=True, kw_only=True, gc=False):
    """A checkpoint as a resume packet needs it."""

    checkpoint_id: str
    by: str
    seq: int
    ts: float
    summary: str = ""
    state: Any = None
    artifacts: list[str] = []
    archive: str | None = None
    sha256: str = ""


class HandoffView(Struct, frozen=True, kw_only=True, gc=False):
    """Who passed what to whom, and whether it was taken up."""

    handoff_id: str
    by: str
    to: str
    seq: int
    ts: float
    checkpoint_id: str | None = None
    note: str = ""
    accepted: bool = False
    accepted_seq: int = 0


class TaskView(Struct, frozen=True, kw_only=True, gc=False):
    """A task with its dependencies and status."""

    task_id: str
    title: str
    by: str
    seq: int
    assignee: str | None = None
    depends_on: list[str] = []
    priority: str = "medium"
    status: str = "pending"
    updated_seq: int = 0


class ApprovalView(Struct, frozen=True, kw_only=True, gc=False):
    """A revival waiting on a human, or decided by one."""

    key: str
    agent: str
    seq: int
    requested_at: float
    message: str = ""
    substitute: str | None = None
    channels: list[str] = []
    decision: Literal["approved", "denied"] | None = None
    note: str = ""
    decided_at: float = 0.0
    decided_by: str = ""


class CellView(Struct, frozen=True, kw_only=True, gc=False):
    """The whole projection of one cell at `seq`."""

    id: str
    name: str
    mission: str = ""
    labels: dict[str, str] = {}
    isolation: int = 1
    network: str = "host"
    policy: ev.Policy | None = None
    state: str = "provisioned"
    reason: str = ""
    created_at: float = 0.0
    updated_at: float = 0.0
    seq: int = 0
    last_id: str = ""
    agents: dict[str, AgentView] = {}
    checkpoints: dict[str, CheckpointView] = {}
    handoffs: dict[str, HandoffView] = {}
    tasks: dict[str, TaskView] = {}
    approvals: dict[str, ApprovalView] = {}
    effects: dict[str, EffectView] = {}
    topics: dict[str, int] = {}
    messages: int = 0
    epoch: int = 0  # of the newest leader.elected (NATS): leader decisions below it are refused
    leader: str = ""  # the instance that appended it
    max_duration: float = 0.0  # section 17's lifetimes, from cell.provisioned
    checkpoint_interval: float = 0.0
    auto_archive: bool = False
    expiring_at: float = 0.0  # ts of the cell.expiring, once appended
    pruned_through: int = 0  # the newest log.pruned: events up to it are gone from the log (section 19)


def _agent(view: CellView, name: str, **changes: Any) -> CellView:
    agents = dict(view.agents)
    agents[name] = replace(agents[name], **changes)
    return replace(view, agents=agents)


def _provisioned(view: CellView | None, e: ev.CellProvisioned) -> CellView:
    return CellView(
        id=e.cell,
        name=e.name,
        mission=e.mission,
        labels=e.labels,
        isolation=e.isolation,
        network=e.network,
        policy=e.policy,
        created_at=e.ts,
        max_duration=e.max_duration,
        checkpoint_interval=e.checkpoint_interval,
        auto_archive=e.auto_archive,
    )


def _lifecycle(state: str) -> Callable[[CellView, Any], CellView]:
    def handle(view: CellView, e: Any) -> CellView:
        return replace(view, state=state, reason=e.reason)

    return handle


_SPEND = ("tokens_in", "tokens_out", "cost", "calls", "runtime", "raised_cost", "raised_tokens", "raised_runtime",
          "budget_warned", "budget_exceeded", "budget_on_exceed", "budget_approval")


def _invited(view: CellView, e: ev.AgentInvited) -> CellView:
    agents = dict(view.agents)
    old = agents.get(e.agent)
    agents[e.agent] = AgentView(
        name=e.agent,
        role=e.role,
        command=e.command,
        env=e.env,
        substitutes=e.substitutes,
        heartbeat_interval=e.heartbeat_interval,
        revive=e.revive,
        limits={str(k): v for k, v in e.limits.items()},
        secrets=e.secrets,
        invited_at=e.ts,
        probe=e.probe,
        probe_cmd=e.probe_cmd,
        probe_period=e.probe_period,
        probe_timeout=e.probe_timeout,
        probe_failures=e.probe_failures,
        probe_initial_delay=e.probe_initial_delay,
        restart_cmd=e.restart_cmd,
        stop_cmd=e.stop_cmd,
        start_cmd=e.start_cmd,
        last_checkpoint=old.last_checkpoint if old else None,
        last_checkpoint_at=old.last_checkpoint_at if old else 0.0,
        session_seq=e.seq,
        **({f: getattr(old, f) for f in _SPEND} if old else {}),  # invited again, an agent keeps what it spent
    )
    return replace(view, agents=agents)


def _joined(view: CellView, e: ev.AgentJoined) -> CellView:
    a = view.agents[e.agent]
    # a supervised agent belongs to the host whose daemon spawned it, whatever the agent calls its machine
    host = a.host if a.command and a.host else (e.host or a.host)
    pid = a.pid if a.command else e.pid or a.pid  # the agent's own pid may be a wrapper's child
    return _agent(view, e.agent, phase="running", pid=pid, host=host, heartbeat_pid=e.pid or a.heartbeat_pid,
                  last_seen=e.ts, session_seq=e.seq)


def _beaten(a: AgentView, beats: list[ev.AgentHeartbeat]) -> AgentView:
    """One agent after its run of heartbeats, as if folded one by one (the log's ts are never 0)."""
    last = beats[-1]
    tail = beats[-(INTERVALS_KEPT + 1):]  # all the kept intervals can come from
    stamps = [e.ts for e in tail]
    if len(tail) == len(beats) and a.last_heartbeat:
        stamps.insert(0, a.last_heartbeat)
    intervals = (*a.intervals, *(t - s for s, t in zip(stamps, stamps[1:])))[-INTERVALS_KEPT:]
    since = a.cycle_since  # from the last beat that moved the cycle on (or the agent's first beat ever)
    for i in range(len(beats) - 1, -1, -1):
        if beats[i].cycle != (beats[i - 1].cycle if i else a.cycle) or (not i and not a.heartbeats):
            since = beats[i].ts
            break
    beat_pid = next((e.pid for e in reversed(beats) if e.pid), a.heartbeat_pid)
    return replace(
        a,
        phase="running" if a.phase in ("invited", "running") or not a.command else a.phase,
        pid=a.pid if a.command else beat_pid,  # a supervised pid comes from agent.spawned alone
        heartbeat_pid=beat_pid,
        last_seen=last.ts,
        last_heartbeat=last.ts,
        heartbeats=a.heartbeats + len(beats),
        intervals=intervals,
        cycle=last.cycle,
        cycle_since=since,
        status=last.status,
        model=next((e.model for e in reversed(beats) if e.model), a.model),
    )


def _heartbeats(view: CellView, run: Sequence[ev.AgentHeartbeat]) -> CellView:
    """A run of heartbeats at once: most of any log, so each view is rebuilt once per run, not per beat."""
    by_agent: dict[str, list[ev.AgentHeartbeat]] = {}
    for e in run:
        beats = by_agent.get(e.agent)
        if beats is None:
            by_agent[e.agent] = [e]
        else:
            beats.append(e)
    agents = dict(view.agents)
    for name, beats in by_agent.items():
        agents[name] = _beaten(agents[name], beats)
    return replace(view, agents=agents)


def _left(view: CellView, e: ev.AgentLeft) -> CellView:
    return _agent(view, e.agent, phase="left", left_reason=e.reason, revival=None, approval=None)


def _spawned(view: CellView, e: ev.AgentSpawned) -> CellView:
    a = view.agents[e.agent]
    return _agent(
        view,
        e.agent,
        phase="running",
        pid=e.pid,
        host=e.host,
        start_time=e.start_time,
        heartbeat_pid=0,
        incarnation=e.id,
        spawns=a.spawns + 1,
        attempt=e.attempt,
        spawned_at=e.ts,
        last_seen=e.ts,
        cycle_since=e.ts,
        returncode=None,
        signal=None,
        dead_reason=None,
        revival=None,
        approval=None,
        restart_pending=False,
        probe_state="",
        probe_failed=0,
    )


def _running_per_log(a: AgentView) -> bool:
    return bool(a.command) and a.spawned_at > a.exited_at and a.pid > 0


def _updated(view: CellView, e: ev.AgentUpdated) -> CellView:
    """What its next start runs; with `run`, whether it runs (the planner stops and starts the process)."""
    a = view.agents[e.agent]
    changes: dict[str, Any] = {}
    if e.command is not None:
        changes["command"] = list(e.command)
    if e.env is not None:
        changes["env"] = {**a.env, **e.env}
    if e.heartbeat_interval is not None:
        changes["heartbeat_interval"] = e.heartbeat_interval
    if e.revive is not None:
        changes["revive"] = e.revive
    down = {"revival": None, "approval": None, "dead_reason": None}
    if e.run == "stop":
        changes.update(held=True, restart_pending=False, **down)
        if not _running_per_log(a):
            changes["phase"] = "stopped"
    elif e.run == "start":
        changes.update(held=False)
        if not (e.command or a.command):  # nobody starts it: it is judged by its heartbeats again from now
            changes.update(phase="running", last_seen=e.ts, cycle_since=e.ts)
    elif e.run == "restart":
        changes.update(held=False, **down)
        if _running_per_log(a):
            changes["restart_pending"] = True
        else:
            changes.update(phase="stopped", restart_pending=False)
    return _agent(view, e.agent, **changes)


def _exited(view: CellView, e: ev.AgentExited) -> CellView:
    a = view.agents[e.agent]
    if e.pid and a.pid and e.pid != a.pid:
        return view  # an older incarnation's exit, reported late
    phase: Phase
    if a.phase in ("left", "dead"):
        phase = a.phase  # a stop the log already explains
    elif a.held or a.restart_pending:
        phase = "stopped"  # `agent stop` or `agent restart`: the operator's stop, not a death
    elif view.state in ("frozen", "archived") and e.returncode != 0:
        phase = "stopped"  # stopped on purpose with its cell; started again on thaw
    elif a.budget_exceeded and a.budget_on_exceed != "ask" and e.returncode != 0:
        phase = "stopped"  # stopped for its budget; started again once it is raised
    else:
        phase = "exited"
    ran = e.ts - a.spawned_at if a.spawned_at and a.spawned_at >= a.exited_at else 0.0
    return _agent(view, e.agent, phase=phase, returncode=e.returncode, signal=e.signal, exited_at=e.ts,
                  runtime=a.runtime + max(0.0, ran))


def _declared_dead(view: CellView, e: ev.AgentDeclaredDead) -> CellView:
    a = view.agents[e.agent]
    return _agent(view, e.agent, phase="dead", dead_reason=e.reason, dead_at=e.ts, deaths=a.deaths + 1,
                  revival=None, approval=None)


def _revived(view: CellView, e: ev.AgentRevived) -> CellView:
    a = view.agents[e.agent]
    view = _agent(
        view,
        e.agent,
        phase="running",
        pid=e.pid or a.pid,
        last_seen=e.ts,
        cycle_since=e.ts,
        substitute_for=e.substitute_for,
        revival=None,
        approval=None,
        dead_reason=None,
        probe_state="",
        probe_failed=0,
    )
    if e.substitute_for and e.substitute_for in view.agents:
        view = _agent(view, e.substitute_for, replaced_by=e.agent, revival="substitute")
    return view


def _planned(view: CellView, e: ev.RevivalPlanned) -> CellView:
    a = view.agents[e.agent]
    restarts = a.restarts
    if e.action in ("restart", "substitute"):
        restarts = () if e.by == "operator" else (*restarts, e.ts)
    return _agent(view, e.agent, revival=e.action, revival_at=e.ts, revival_delay=e.delay,
                  revival_seq=e.seq, revival_attempt=e.attempt, revival_substitute=e.substitute, restarts=restarts)


BUDGET_KEY = "budget-"  # approval keys that ask to raise a budget, not to revive


def _approval_requested(view: CellView, e: ev.RevivalApprovalRequested) -> CellView:
    approvals = dict(view.approvals)
    approvals[e.key] = ApprovalView(key=e.key, agent=e.agent, seq=e.seq, requested_at=e.ts,
                                    message=e.message, substitute=e.substitute, channels=e.channels)
    view = replace(view, approvals=approvals)
    if e.key.startswith(BUDGET_KEY) and e.agent in view.agents:
        return _agent(view, e.agent, budget_approval=e.key)
    if e.agent in view.agents:
        view = _agent(view, e.agent, approval=e.key, revival="ask", revival_at=e.ts, revival_seq=e.seq)
    return view


def _decided(decision: Literal["approved", "denied"]) -> Callable[[CellView, Any], CellView]:
    def handle(view: CellView, e: Any) -> CellView:
        approvals = dict(view.approvals)
        a = approvals[e.key]
        approvals[e.key] = replace(a, decision=decision, note=e.note, decided_at=e.ts, decided_by=e.by)
        return replace(view, approvals=approvals)

    return handle


CHECKPOINT_DUE = "lazarus.checkpoint_due"  # the topic of the reminder to an agent whose checkpoint is old


def _messages(view: CellView, run: Sequence[ev.BusMessage]) -> CellView:
    topics = dict(view.topics)
    reminded: dict[str, float] = {}
    for e in run:
        topics[e.topic] = topics.get(e.topic, 0) + 1
        if e.topic == CHECKPOINT_DUE and e.by == "lazarus" and e.to in view.agents:
            reminded[e.to] = e.ts
    view = replace(view, topics=topics, messages=view.messages + len(run))
    if reminded:
        agents = dict(view.agents)
        for name, ts in reminded.items():
            agents[name] = replace(agents[name], checkpoint_due_at=ts)
        view = replace(view, agents=agents)
    return view


def _probe_failed(view: CellView, e: ev.AgentProbeFailed) -> CellView:
    return _agent(view, e.agent, probe_state="failing", probe_failed=e.failures, probe_detail=e.detail,
                  probe_at=e.ts)


def _probe_ok(view: CellView, e: ev.AgentProbeOk) -> CellView:
    a = view.agents[e.agent]
    seen: dict[str, Any] = {"phase": "running", "last_seen": e.ts} if a.phase == "invited" and not a.command else {}
    return _agent(view, e.agent, probe_state="ok", probe_failed=0, probe_detail=e.detail, probe_at=e.ts, **seen)


def _checkpoints(view: CellView, run: Sequence[ev.CheckpointCreated]) -> CellView:
    """Checkpoints at once: copying the map per checkpoint would make a replay quadratic in their number."""
    checkpoints = dict(view.checkpoints)
    latest: dict[str, tuple[str, float]] = {}
    for e in run:
        checkpoints[e.checkpoint_id] = CheckpointView(
            checkpoint_id=e.checkpoint_id, by=e.by, seq=e.seq, ts=e.ts, summary=e.summary, state=e.state,
            artifacts=e.artifacts, archive=e.archive, sha256=e.sha256,
        )
        if e.by in view.agents:
            latest[e.by] = (e.checkpoint_id, e.ts)
    agents = view.agents
    if latest:
        agents = dict(agents)
        for name, (checkpoint_id, ts) in latest.items():
            agents[name] = replace(agents[name], last_checkpoint=checkpoint_id, last_checkpoint_at=ts)
    return replace(view, checkpoints=checkpoints, agents=agents)


def _handoffs(view: CellView, run: Sequence[ev.HandoffCreated]) -> CellView:
    handoffs = dict(view.handoffs)
    for e in run:
        handoffs[e.handoff_id] = HandoffView(handoff_id=e.handoff_id, by=e.by, to=e.to, seq=e.seq, ts=e.ts,
                                             checkpoint_id=e.checkpoint_id, note=e.note)
    return replace(view, handoffs=handoffs)


def _accepted(view: CellView, e: ev.HandoffAccepted) -> CellView:
    handoffs = dict(view.handoffs)
    handoffs[e.handoff_id] = replace(handoffs[e.handoff_id], accepted=True, accepted_seq=e.seq)
    return replace(view, handoffs=handoffs)


def _restored(view: CellView, e: ev.CheckpointRestored) -> CellView:
    return view


def _tasks(view: CellView, run: Sequence[ev.TaskCreated | ev.TaskUpdated]) -> CellView:
    tasks = dict(view.tasks)
    for e in run:
        if isinstance(e, ev.TaskCreated):
            tasks[e.task_id] = TaskView(task_id=e.task_id, title=e.title, by=e.by, seq=e.seq, assignee=e.assignee,
                                        depends_on=e.depends_on, priority=e.priority, updated_seq=e.seq)
        else:
            t = tasks[e.task_id]
            tasks[e.task_id] = replace(t, status=e.status, assignee=e.assignee or t.assignee, updated_seq=e.seq)
    return replace(view, tasks=tasks)


def _effect_started(view: CellView, e: ev.EffectStarted) -> CellView:
    effects = dict(view.effects)
    old = effects.get(e.effect_id)
    effects[e.effect_id] = EffectView(effect_id=e.effect_id, agent=e.agent, seq=e.seq, started_at=e.ts, name=e.name,
                                      args_sha256=e.args_sha256, incarnation=e.incarnation,
                                      attempt=old.attempt + 1 if old is not None else 1)
    return replace(view, effects=effects)


def _effect_ended(view: CellView, e: ev.Event, **changes: Any) -> CellView:
    effects = dict(view.effects)
    effects[e.effect_id] = replace(effects[e.effect_id], ended_seq=e.seq, ended_by=e.by,  # type: ignore[attr-defined]
                                   **changes)
    return replace(view, effects=effects)


def _effect_completed(view: CellView, e: ev.EffectCompleted) -> CellView:
    return _effect_ended(view, e, status="completed", result=e.result)


def _effect_failed(view: CellView, e: ev.EffectFailed) -> CellView:
    return _effect_ended(view, e, status="failed", error=e.error, retryable=e.retryable)


def _effect_resolved(view: CellView, e: ev.EffectResolved) -> CellView:
    return _effect_ended(view, e, status=e.outcome, result=e.result, note=e.note, retryable=e.outcome == "retry")


def _usage(view: CellView, e: ev.AgentUsage) -> CellView:
    a = view.agents[e.agent]
    return _agent(view, e.agent, tokens_in=a.tokens_in + e.tokens_in, tokens_out=a.tokens_out + e.tokens_out,
                  cost=a.cost + e.cost, calls=a.calls + e.calls)


def _budget_warned(view: CellView, e: ev.BudgetWarned) -> CellView:
    a = view.agents[e.agent]
    return _agent(view, e.agent, budget_warned=(*a.budget_warned, f"{e.what}:{e.cap:g}"))


def _budget_exceeded(view: CellView, e: ev.BudgetExceeded) -> CellView:
    return _agent(view, e.agent, budget_exceeded=e.what, budget_on_exceed=e.on_exceed)


def _budget_raised(view: CellView, e: ev.BudgetRaised) -> CellView:
    a = view.agents[e.agent]
    return _agent(view, e.agent, raised_cost=a.raised_cost + e.cost, raised_tokens=a.raised_tokens + e.tokens,
                  raised_runtime=a.raised_runtime + e.runtime, budget_exceeded=None, budget_on_exceed="",
                  budget_approval=None)


def _graph(view: CellView, run: Sequence[ev.Event]) -> CellView:
    """LangGraph's checkpoints are the saver's own fold (graphs.py): the cell's projection is unchanged."""
    return view


# Folds that touch nothing a heartbeat reads or writes, nor each other's fields (a checkpoint sets only
# its author's last_checkpoint): fold_all holds them with the heartbeats and folds each kind at once.
_BATCHED: dict[type, Callable[[CellView, Any], CellView]] = {
    ev.BusMessage: _messages,
    ev.CheckpointCreated: _checkpoints,
    ev.HandoffCreated: _handoffs,
    ev.TaskCreated: _tasks,
    ev.TaskUpdated: _tasks,
    ev.GraphCheckpoint: _graph,
    ev.GraphWrites: _graph,
    ev.GraphDeleted: _graph,
}


# Under admission (a checked replay) only these are held: what one admits never depends on the others.
_UNCHECKED: dict[type, Callable[[CellView, Any], CellView]] = {ev.BusMessage: _messages}


def _one(batch: Callable[[CellView, Any], CellView]) -> Callable[[CellView, Any], CellView]:
    """One event through its kind's batch fold: the live fold and a replay share one code path."""
    return lambda view, e: batch(view, (e,))


_HANDLERS: dict[type[ev.Event], Callable[[Any, Any], CellView]] = {
    ev.CellProvisioned: _provisioned,
    ev.CellActivated: _lifecycle("active"),
    ev.CellFrozen: _lifecycle("frozen"),
    ev.CellThawed: _lifecycle("active"),
    ev.CellArchived: _lifecycle("archived"),
    ev.CellDestroyed: _lifecycle("destroyed"),
    ev.CellExpiring: lambda view, e: replace(view, expiring_at=e.ts),
    ev.LeaderElected: lambda view, e: replace(view, epoch=e.epoch, leader=e.instance),
    ev.AgentInvited: _invited,
    ev.AgentJoined: _joined,
    ev.AgentHeartbeat: _one(_heartbeats),
    ev.AgentLeft: _left,
    ev.AgentUpdated: _updated,
    ev.AgentSpawned: _spawned,
    ev.AgentExited: _exited,
    ev.AgentDeclaredDead: _declared_dead,
    ev.AgentRevived: _revived,
    ev.AgentProbeFailed: _probe_failed,
    ev.AgentProbeOk: _probe_ok,
    ev.RevivalPlanned: _planned,
    ev.RevivalApprovalRequested: _approval_requested,
    ev.RevivalApproved: _decided("approved"),
    ev.RevivalDenied: _decided("denied"),
    ev.BusMessage: _one(_messages),
    ev.CheckpointCreated: _one(_checkpoints),
    ev.HandoffCreated: _one(_handoffs),
    ev.HandoffAccepted: _accepted,
    ev.CheckpointRestored: _restored,
    ev.TaskCreated: _one(_tasks),
    ev.TaskUpdated: _one(_tasks),
    ev.EffectStarted: _effect_started,
    ev.EffectCompleted: _effect_completed,
    ev.EffectFailed: _effect_failed,
    ev.EffectResolved: _effect_resolved,
    ev.AgentUsage: _usage,
    ev.BudgetWarned: _budget_warned,
    ev.BudgetExceeded: _budget_exceeded,
    ev.BudgetRaised: _budget_raised,
    ev.GraphCheckpoint: _one(_graph),
    ev.GraphWrites: _one(_graph),
    ev.GraphDeleted: _one(_graph),
    ev.LogPruned: lambda view, e: replace(view, pruned_through=max(view.pruned_through, e.through_seq)),
}

assert _HANDLERS.keys() == set(ev.EVENT_TYPES.values()), "every event type needs a fold handler"


def fold(view: CellView | None, event: ev.Event) -> CellView:
    """One event onto the projection; the log's admission rules guarantee references exist."""
    if view is None and not isinstance(event, ev.CellProvisioned):
        raise CorruptLog(f"corrupt log at seq {event.seq}: {event.type} before cell.provisioned")
    try:
        new = _HANDLERS[type(event)](view, event)
    except KeyError as exc:  # admission never lets such an event in: the log was written another way
        raise _unknown(event, exc) from None
    return replace(new, seq=event.seq, last_id=event.id, updated_at=event.ts)


def _unknown(event: ev.Event, exc: KeyError) -> CorruptLog:
    return CorruptLog(f"corrupt log at seq {event.seq}: {event.type} names {exc.args[0]!r}, which the log "
                      "never introduced (was it written or rechained outside lazarus?)")


def fold_all(events: Iterable[ev.Event], view: CellView | None = None,
             check: Callable[[CellView | None, ev.Event], object] | None = None) -> CellView | None:
    """A whole stream, from `view` (or from nothing): the same result as `fold` one by one, with the
    heartbeats, messages, checkpoints, handoffs and tasks between two other events folded kind by kind.
    `check` (admission, for a replay) sees each event with the state before it; for heartbeats and
    messages, which never change what either is checked against, the state before their run."""
    beats: list[ev.AgentHeartbeat] = []
    aside: list[ev.Event] = []
    last: ev.Event | None = None
    batched = _BATCHED if check is None else _UNCHECKED
    for kind, group in groupby(events, type):
        if view is None or (kind is not ev.AgentHeartbeat and kind not in batched):
            if last is not None:
                view, beats, aside, last = _flush(view, beats, aside, last), [], [], None  # type: ignore[arg-type]
            for event in group:
                if check is not None:
                    check(view, event)
                view = fold(view, event)
            continue
        held = beats if kind is ev.AgentHeartbeat else aside
        while chunk := list(islice(group, RUN)):  # at most 2 x RUN held: a log read lazily stays lazy
            if len(beats) + len(aside) >= RUN:
                view = _flush(view, beats, aside, last)  # type: ignore[arg-type]
                beats.clear()
                aside.clear()
            if check is not None:
                for event in chunk:
                    check(view, event)
            held += chunk
            last = chunk[-1]
    if last is not None:
        view = _flush(view, beats, aside, last)  # type: ignore[arg-type]
    return view


def _flush(view: CellView, beats: list[ev.AgentHeartbeat], aside: list[ev.Event], last: ev.Event) -> CellView:
    """Held events folded a kind at once (they commute), then the envelope of the last one."""
    try:
        return _fold_kinds(view, beats, aside, last)
    except KeyError:  # one of them names what the log never introduced: fold one by one to name it
        for event in sorted([*beats, *aside], key=_SEQ):
            view = fold(view, event)
        raise


_SEQ = attrgetter("seq")


def _fold_kinds(view: CellView, beats: list[ev.AgentHeartbeat], aside: list[ev.Event], last: ev.Event) -> CellView:
    if beats:
        view = _heartbeats(view, beats)
    kinds: dict[Callable[[CellView, Any], CellView], list[ev.Event]] = {}
    for e in aside:
        kinds.setdefault(_BATCHED[type(e)], []).append(e)
    for batch, run in kinds.items():
        view = batch(view, run)
    return replace(view, seq=last.seq, last_id=last.id, updated_at=last.ts)


def manifest(view: CellView) -> dict[str, Any]:
    """What `cell.json` holds: the cell and its agents, without volatile heartbeat data."""
    return {
        "id": view.id,
        "name": view.name,
        "mission": view.mission,
        "state": view.state,
        "reason": view.reason,
        "labels": view.labels,
        "isolation": view.isolation,
        "network": view.network,
        "policy": msgspec.to_builtins(view.policy) if view.policy else None,
        "created_at": view.created_at,
        "max_duration": view.max_duration,
        "checkpoint_interval": view.checkpoint_interval,
        "auto_archive": view.auto_archive,
        "agents": {
            a.name: {
                "role": a.role,
                "phase": a.phase,
                "supervised": bool(a.command),
                "command": a.command,
                "pid": a.pid,
                "host": a.host,
                "attempt": a.attempt,
            }
            for a in view.agents.values()
        },
        "checkpoints": len(view.checkpoints),
        "handoffs": len(view.handoffs),
        "tasks": len(view.tasks),
    }
