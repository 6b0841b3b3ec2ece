"""Every event type of the catalogue as one tagged union, plus the door every draft passes."""

import math
import operator
import re
import typing
import uuid
from typing import Annotated, Any, Literal, Union

import msgspec
from msgspec import Meta, Struct

from .errors import MalformedInput, Refused
from .names import AGENT_PATTERN, CELL_ID_PATTERN, REF_PATTERN, check_agent, check_by

__all__ = [
    "INCARNATED",
    "Event",
    "AnyEvent",
    "EVENT_TYPES",
    "ENVELOPE",
    "ZERO_HASH",
    "DECODE_ERRORS",
    "decode_event",
    "decode_line",
    "encode_line",
    "decode_json",
    "encode_event",
    "check_finite",
    "non_finite",
    "parse_draft",
    "parse_emitted",
    "payload_of",
]

ZERO_HASH = "0" * 64
ENVELOPE = ("seq", "id", "ts", "cell", "type", "by", "prev")
ASSIGNED = frozenset({"seq", "ts", "cell", "prev"})


# what a name pattern allows, said as the other name errors say it (a regex is no answer to a person)
PATTERN_WORDS = {
    AGENT_PATTERN: "an agent name ([a-z0-9][a-z0-9_.-]{0,62}, no '..')",
    REF_PATTERN: "an id ([A-Za-z0-9][A-Za-z0-9_.-]{0,127}, no '..')",
}


def in_words(message: str) -> str:
    """msgspec's `Expected str matching regex '...'` for a name, with the regex put into words."""
    for pattern, words in PATTERN_WORDS.items():
        message = message.replace(f"`str` matching regex {pattern!r}", words)
    return message


class Rule:
    """A name pattern that Event.__post_init__ checks (msgspec's `Meta(pattern=...)` would run the
    regex on every field of every line: three quarters of the cost of decoding a log)."""

    def __init__(self, pattern: str, what: str) -> None:
        self.pattern = pattern
        self.what = what
        self.search = re.compile(pattern).search

    def check(self, field: str, value: str | None) -> None:
        if value is not None and not self.search(value):
            words = PATTERN_WORDS.get(self.pattern, f"`str` matching regex {self.pattern!r} (a valid {self.what})")
            raise ValueError(f"Expected {words} - at `$.{field}`")


def _checked(rule: Rule, description: str) -> Meta:
    return Meta(description=description, extra_json_schema={"pattern": rule.pattern})


NAME = Rule(AGENT_PATTERN, "agent name")
REF = Rule(REF_PATTERN, "reference")
CELL = Rule(f"^(?:{CELL_ID_PATTERN})?$", "cell id")
BY = Rule(r"^(?:(?!.*\.\.)[a-z0-9][a-z0-9_.-]{0,62})?(?!\n)$", "author")
Name = Annotated[str, _checked(NAME, "an agent name"), NAME]
Ref = Annotated[str, _checked(REF, "a reference id"), REF]
# list items are checked by msgspec itself (lists of names are rare: a few per cell)
NameItem = Annotated[str, Meta(pattern=AGENT_PATTERN, description="an agent name")]
RefItem = Annotated[str, Meta(pattern=REF_PATTERN, description="a reference id")]
Role = Literal["lead", "write", "read", "audit"]
Revive = Literal["yes", "no", "ask"]
DeathReason = Literal["exited", "heartbeat_timeout", "no_progress", "never_seen", "probe_failed", "restart_failed"]
Action = Literal["restart", "substitute", "ask", "suppressed", "unrecoverable", "escalated"]
TaskStatus = Literal["pending", "in_progress", "done", "failed"]
Priority = Literal["high", "medium", "low"]
Seconds = Annotated[float, Meta(ge=0)]
# the id of the `agent.spawned` that started the appending process (LAZARUS_INCARNATION): a superseded
# incarnation is fenced (its events refused), so a stale copy of an agent cannot write
Incarnation = Annotated[str, Meta(max_length=64, description="the agent.spawned id of the appending process")]
LimitKind = Literal["memory", "cpu", "pids", "nofile"]
LimitValue = Annotated[str, Meta(pattern=r"^[0-9]+(\.[0-9]+)?[KMGTkmgt]?[Bb]?$", max_length=32,
                                 description="512M, 1.5, 256")]
SecretName = Annotated[str, Meta(pattern=r"^[A-Za-z_][A-Za-z0-9_]{0,127}$", description="an environment variable")]
SecretSource = Annotated[str, Meta(pattern=r"^(@.+|env:[A-Za-z_][A-Za-z0-9_]*)$", max_length=4096,
                                   description="@FILE or env:VAR: where the value is read at each spawn")]
Network = Literal["host", "none"]
ProbeUrl = Annotated[str, Meta(pattern=r"^(|(https?|tcp)://[^\s]+)$", max_length=2048,
                               description="http://HOST:PORT/PATH, https://... or tcp://HOST:PORT")]
OnExceed = Literal["pause", "ask", "stop"]
Spent = Literal["cost", "tokens", "runtime"]
EffectOutcome = Literal["completed", "failed", "retry"]
Amount = Annotated[float, Meta(ge=0)]
Count = Annotated[int, Meta(ge=0)]


class BudgetPolicy(Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """Budget overrides a mission, cell or agent may carry; unset keys inherit (0 = no cap)."""

    max_cost: Amount | None = None
    max_tokens: Count | None = None
    max_runtime: Seconds | None = None
    warn_at: Annotated[float, Meta(gt=0, le=1)] | None = None
    on_exceed: OnExceed | None = None


class Policy(Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """Resurrection overrides a cell, mission or agent may carry; unset keys inherit."""

    mode: Revive | None = None
    mission: str | None = None
    substitutes: list[NameItem] | None = None
    max_attempts: Annotated[int, Meta(ge=0)] | None = None
    attempt_window: Seconds | None = None
    backoff_initial: Seconds | None = None
    backoff_factor: Annotated[float, Meta(ge=1)] | None = None
    backoff_max: Seconds | None = None
    stable_after: Seconds | None = None
    restart_on: Literal["failure", "always"] | None = None
    stale_after: Seconds | None = None
    dead_after: Seconds | None = None
    progress_after: Seconds | None = None
    budget: BudgetPolicy | None = None  # the cell's own `[budget]` layer (section 14); not a resurrection key
    prefer: Literal["restart", "substitute"] | None = None  # section 17: an agent on another host


# gc=False: events are immutable and acyclic (built from JSON), so the cycle collector need not
# track them; a replay makes a million of them, and each tracked one would count toward a collection
class Event(Struct, frozen=True, kw_only=True, tag_field="type", gc=False):
    """The envelope every event carries; the log assigns seq, ts, cell and prev."""

    seq: int = 0
    id: str = ""
    ts: float = 0.0
    cell: Annotated[str, _checked(CELL, "the cell id"), CELL] = ""
    by: Annotated[str, _checked(BY, "an agent name, `operator` or `lazarus`"), BY] = ""
    prev: str = ""

    def __post_init__(self) -> None:
        """Name rules on decode, convert, construction and replace alike, once per distinct set of names."""
        rules = _RULES.get(type(self)) or _rules_of(type(self))
        if rules is None:
            return
        names = rules.names(self)
        if names in rules.passed:  # a log repeats the same few names millions of times
            return
        for field, rule in rules.fields:
            rule.check(field, getattr(self, field))
        if len(rules.passed) < 65536:
            rules.passed.add(names)

    @property
    def type(self) -> str:
        """The tag, as written in the log."""
        return self.__struct_config__.tag  # type: ignore[return-value]


# Cell lifecycle ---------------------------------------------------------------------------


class CellProvisioned(Event, frozen=True, kw_only=True, tag="cell.provisioned"):
    """A cell came into being with its mission."""

    name: Name
    mission: str = ""
    labels: dict[str, str] = {}
    isolation: Literal[1, 2, 3] = 1
    policy: Policy | None = None
    network: Network = "host"  # levels 2 and 3: "none" gives the agents no network at all
    # cell lifetimes (section 17); 0 / false = none
    max_duration: Seconds = 0.0  # archived with reason `max_duration` this long after provisioning
    checkpoint_interval: Seconds = 0.0  # an agent whose newest checkpoint is older is reminded
    auto_archive: bool = False  # archived once every agent has completed or left


class CellActivated(Event, frozen=True, kw_only=True, tag="cell.activated"):
    """Work started: by hand or on the first sign of an agent."""

    reason: str = ""


class CellFrozen(Event, frozen=True, kw_only=True, tag="cell.frozen"):
    """Work paused: supervised agents stop, nothing advances."""

    reason: str = ""
    epoch: Annotated[int, Meta(ge=0)] = 0  # the leader's epoch (NATS); a stale leader's is refused


class CellThawed(Event, frozen=True, kw_only=True, tag="cell.thawed"):
    """Work resumed after a freeze."""

    reason: str = ""
    epoch: Annotated[int, Meta(ge=0)] = 0  # the leader's epoch (NATS); a stale leader's is refused


class CellArchived(Event, frozen=True, kw_only=True, tag="cell.archived"):
    """The mission ended; the cell is kept for reading."""

    reason: str = ""
    epoch: Annotated[int, Meta(ge=0)] = 0  # the leader's epoch (NATS); a stale leader's is refused


class CellExpiring(Event, frozen=True, kw_only=True, tag="cell.expiring"):
    """90% of the cell's `max_duration` has passed: it is archived at `deadline`."""

    deadline: float = 0.0
    max_duration: Seconds = 0.0
    epoch: Annotated[int, Meta(ge=0)] = 0  # the leader's epoch (NATS); a stale leader's is refused


class CellDestroyed(Event, frozen=True, kw_only=True, tag="cell.destroyed"):
    """The cell's files were removed; its log lives on in the graveyard."""

    reason: str = ""
    epoch: Annotated[int, Meta(ge=0)] = 0  # the leader's epoch (NATS); a stale leader's is refused


class LeaderElected(Event, frozen=True, kw_only=True, tag="leader.elected"):
    """A daemon took the cell's lease (NATS): its decisions from here carry this epoch."""

    instance: Annotated[str, Meta(min_length=1, max_length=200)]
    host: str = ""
    epoch: Annotated[int, Meta(ge=1)]


# Agents -----------------------------------------------------------------------------------


class AgentInvited(Event, frozen=True, kw_only=True, tag="agent.invited"):
    """An agent may take part; a `command` means the daemon supervises it."""

    agent: Name
    role: Role
    command: list[str] = []
    env: dict[str, str] = {}
    substitutes: list[NameItem] = []
    heartbeat_interval: Seconds = 0.0
    revive: Revive | None = None
    limits: dict[LimitKind, LimitValue] = {}
    secrets: dict[SecretName, SecretSource] = {}  # the source only: the value never enters the log
    # health probes from outside (section 17): an agent that does not know Lazarus; 0 = the default
    probe: ProbeUrl = ""  # http://HOST:PORT/PATH (200-399 is ok) or tcp://HOST:PORT
    probe_cmd: list[str] = []  # argv; exit 0 is ok
    probe_period: Seconds = 0.0  # 10
    probe_timeout: Seconds = 0.0  # 2
    probe_failures: Count = 0  # 3 failures in a row = dead (probe_failed)
    probe_initial_delay: Seconds = 0.0
    # an agent another manager runs (systemd, runit, Docker, a remote host); {cell} {agent} {host} substituted
    restart_cmd: list[str] = []
    stop_cmd: list[str] = []
    start_cmd: list[str] = []


class AgentJoined(Event, frozen=True, kw_only=True, tag="agent.joined"):
    """An agent announced itself."""

    agent: Name
    incarnation: Incarnation = ""
    pid: int = 0
    host: str = ""


class AgentHeartbeat(Event, frozen=True, kw_only=True, tag="agent.heartbeat"):
    """Proof of life; `cycle` is the agent's progress counter."""

    agent: Name
    incarnation: Incarnation = ""
    pid: int = 0
    cycle: int = 0
    status: str = ""
    model: str = ""


class AgentLeft(Event, frozen=True, kw_only=True, tag="agent.left"):
    """An agent stopped on purpose (or completed); it is not revived."""

    agent: Name
    incarnation: Incarnation = ""
    reason: str = ""


Run = Literal["stop", "start", "restart"]


class AgentUpdated(Event, frozen=True, kw_only=True, tag="agent.updated"):
    """The operator changed an agent: what its next start runs (fields left null stay as they were) and,
    with `run`, whether it runs: `stop` (stopped and not revived), `start` again, or `restart` (stopped,
    then started at once; neither counts as a death or a revival attempt)."""

    agent: Name
    command: list[str] | None = None
    env: dict[str, str] | None = None  # merged into the invite's env
    heartbeat_interval: Seconds | None = None
    revive: Revive | None = None
    run: Run | None = None


class AgentSpawned(Event, frozen=True, kw_only=True, tag="agent.spawned"):
    """The supervisor started the agent's own process."""

    agent: Name
    pid: int = 0
    start_time: float = 0.0
    host: str = ""
    attempt: int = 0
    resume: str = ""
    isolation: int = 0
    limits: dict[str, str] = {}  # the limits enforced on this process, and `via` (cgroup or prlimit)
    epoch: Annotated[int, Meta(ge=0)] = 0  # the leader's epoch (NATS); a stale leader's is refused


class AgentExited(Event, frozen=True, kw_only=True, tag="agent.exited"):
    """A supervised process ended, with how."""

    agent: Name
    pid: int = 0
    returncode: int | None = None
    signal: int | None = None
    epoch: Annotated[int, Meta(ge=0)] = 0  # the leader's epoch (NATS); a stale leader's is refused


class AgentDeclaredDead(Event, frozen=True, kw_only=True, tag="agent.declared_dead"):
    """The verdict, and the numbers behind it."""

    agent: Name
    reason: DeathReason | None = None
    last_seen: float = 0.0
    detail: dict[str, Any] = {}
    epoch: Annotated[int, Meta(ge=0)] = 0  # the leader's epoch (NATS); a stale leader's is refused


class AgentRevived(Event, frozen=True, kw_only=True, tag="agent.revived"):
    """An agent (or its substitute) is back at work."""

    agent: Name
    pid: int = 0
    attempt: int = 0
    substitute_for: Name | None = None
    epoch: Annotated[int, Meta(ge=0)] = 0  # the leader's epoch (NATS); a stale leader's is refused
    via: str = ""  # how: "" (the daemon's own spawn or a substitute) or "restart_cmd"
    detail: dict[str, Any] = {}  # with `via`: the command, its exit status and output tail


class AgentProbeFailed(Event, frozen=True, kw_only=True, tag="agent.probe_failed"):
    """An agent's health probe failed: the first failure after success, and the one that reaches
    `probe_failures` in a row (changes only: the failures between are not recorded)."""

    agent: Name
    failures: Count = 1
    detail: dict[str, Any] = {}
    epoch: Annotated[int, Meta(ge=0)] = 0  # the leader's epoch (NATS); a stale leader's is refused


class AgentProbeOk(Event, frozen=True, kw_only=True, tag="agent.probe_ok"):
    """An agent's health probe succeeded for the first time, or again after failing."""

    agent: Name
    detail: dict[str, Any] = {}
    epoch: Annotated[int, Meta(ge=0)] = 0  # the leader's epoch (NATS); a stale leader's is refused


# Resurrection -----------------------------------------------------------------------------


class RevivalPlanned(Event, frozen=True, kw_only=True, tag="revival.planned"):
    """What the planner (or an operator) decided for a dead agent."""

    agent: Name
    action: Action
    substitute: Name | None = None
    attempt: int = 0
    delay: Seconds = 0.0
    epoch: Annotated[int, Meta(ge=0)] = 0  # the leader's epoch (NATS); a stale leader's is refused


class RevivalApprovalRequested(Event, frozen=True, kw_only=True, tag="revival.approval_requested"):
    """A human is asked before an agent comes back."""

    key: Ref
    agent: Name
    message: str = ""
    substitute: Name | None = None
    channels: list[str] = []
    epoch: Annotated[int, Meta(ge=0)] = 0  # the leader's epoch (NATS); a stale leader's is refused


class RevivalApproved(Event, frozen=True, kw_only=True, tag="revival.approved"):
    """The human said yes."""

    key: Ref
    note: str = ""
    epoch: Annotated[int, Meta(ge=0)] = 0  # the leader's epoch (NATS); a stale leader's is refused


class RevivalDenied(Event, frozen=True, kw_only=True, tag="revival.denied"):
    """The human said no; the agent stays down."""

    key: Ref
    note: str = ""
    epoch: Annotated[int, Meta(ge=0)] = 0  # the leader's epoch (NATS); a stale leader's is refused


# Mission bus ------------------------------------------------------------------------------


class BusMessage(Event, frozen=True, kw_only=True, tag="bus.message"):
    """A message on a topic, to everyone or one agent."""

    topic: Annotated[str, Meta(min_length=1, max_length=256)]
    incarnation: Incarnation = ""
    payload: Any = None
    to: Name | None = None


class CheckpointCreated(Event, frozen=True, kw_only=True, tag="checkpoint.created"):
    """A resumable point: state, artifacts and an optional workspace archive."""

    checkpoint_id: Ref
    incarnation: Incarnation = ""
    summary: str = ""
    state: Any = None
    artifacts: list[str] = []
    archive: str | None = None
    sha256: str = ""


class HandoffCreated(Event, frozen=True, kw_only=True, tag="handoff.created"):
    """Work passed from one agent to another at a checkpoint."""

    handoff_id: Ref
    incarnation: Incarnation = ""
    to: Name
    checkpoint_id: Ref | None = None
    note: str = ""


class HandoffAccepted(Event, frozen=True, kw_only=True, tag="handoff.accepted"):
    """The recipient took the handoff up."""

    handoff_id: Ref
    incarnation: Incarnation = ""


class CheckpointRestored(Event, frozen=True, kw_only=True, tag="checkpoint.restored"):
    """A checkpoint archive was unpacked into the workspace."""

    checkpoint_id: Ref
    incarnation: Incarnation = ""
    paths: list[str] = []


class TaskCreated(Event, frozen=True, kw_only=True, tag="task.created"):
    """A unit of work with its dependencies."""

    task_id: Ref
    incarnation: Incarnation = ""
    title: Annotated[str, Meta(min_length=1)]
    assignee: Name | None = None
    depends_on: list[RefItem] = []
    priority: Priority = "medium"


class TaskUpdated(Event, frozen=True, kw_only=True, tag="task.updated"):
    """A task moved on."""

    task_id: Ref
    incarnation: Incarnation = ""
    status: TaskStatus
    assignee: Name | None = None


# Effects and budgets (section 14) ---------------------------------------------------------


class EffectStarted(Event, frozen=True, kw_only=True, tag="effect.started"):
    """An agent is about to perform an external action it named with a stable id."""

    effect_id: Ref
    agent: Name
    incarnation: Incarnation = ""
    name: str = ""
    args_sha256: str = ""
    attempt: Count = 0  # 1 for the first start; admission sets it


class EffectCompleted(Event, frozen=True, kw_only=True, tag="effect.completed"):
    """The action took place; its result answers every later call with the same id."""

    effect_id: Ref
    incarnation: Incarnation = ""
    result: Any = None


class EffectFailed(Event, frozen=True, kw_only=True, tag="effect.failed"):
    """The action did not take place; `retryable` lets a later start try again."""

    effect_id: Ref
    incarnation: Incarnation = ""
    error: str = ""
    retryable: bool = False


class EffectResolved(Event, frozen=True, kw_only=True, tag="effect.resolved"):
    """Someone who checked says how an effect left without an outcome ended."""

    effect_id: Ref
    incarnation: Incarnation = ""
    outcome: EffectOutcome
    result: Any = None
    note: str = ""


class AgentUsage(Event, frozen=True, kw_only=True, tag="agent.usage"):
    """What an agent spent since its last report: increments, finite and non-negative."""

    agent: Name
    incarnation: Incarnation = ""
    tokens_in: Count = 0
    tokens_out: Count = 0
    cost: Amount = 0.0
    calls: Count = 0


class BudgetWarned(Event, frozen=True, kw_only=True, tag="budget.warned"):
    """An agent's spend crossed `warn_at` of a cap (once per cap)."""

    agent: Name
    what: Spent = "cost"
    spent: float = 0.0
    cap: float = 0.0


class BudgetExceeded(Event, frozen=True, kw_only=True, tag="budget.exceeded"):
    """An agent's spend reached a cap; `on_exceed` says what the daemon does about it."""

    agent: Name
    what: Spent = "cost"
    spent: float = 0.0
    cap: float = 0.0
    on_exceed: OnExceed = "pause"


class BudgetRaised(Event, frozen=True, kw_only=True, tag="budget.raised"):
    """An agent's caps grew by these amounts; a paused agent starts again."""

    agent: Name
    cost: Amount = 0.0
    tokens: Count = 0
    runtime: Seconds = 0.0
    note: str = ""


# Framework adapters (section 18) ----------------------------------------------------------

GraphRef = Annotated[str, Meta(min_length=1, max_length=1024, description="a LangGraph thread or checkpoint id")]
Blob = Annotated[str, Meta(pattern=r"^[0-9a-f]{64}$", description="SHA-256 of a blob under checkpoints/graph/")]


class GraphCheckpoint(Event, frozen=True, kw_only=True, tag="graph.checkpoint"):
    """A LangGraph checkpoint: each channel value a blob under checkpoints/graph/, the rest inline."""

    thread_id: GraphRef
    checkpoint_id: GraphRef
    incarnation: Incarnation = ""
    checkpoint_ns: str = ""
    parent_checkpoint_id: str | None = None
    channels: dict[str, Blob] = {}  # channel -> its value's blob
    checkpoint: dict[str, Any] | None = None  # the checkpoint without its channel values (versions, ids)...
    checkpoint_blob: Blob | None = None  # ...or, when JSON cannot hold it exactly, its blob
    metadata: dict[str, Any] | None = None  # LangGraph's metadata (source, step, parents, run_id, yours)...
    metadata_blob: Blob | None = None  # ...or its blob
    run_id: str = ""  # copied from the metadata, so delete_for_runs and readers need no blob
    step: int | None = None
    source: str = ""


class GraphWrites(Event, frozen=True, kw_only=True, tag="graph.writes"):
    """A task's pending writes against a checkpoint: (index, channel, value blob) each."""

    thread_id: GraphRef
    checkpoint_id: GraphRef
    task_id: GraphRef
    incarnation: Incarnation = ""
    checkpoint_ns: str = ""
    task_path: str = ""
    writes: list[tuple[int, str, Blob]] = []


class GraphDeleted(Event, frozen=True, kw_only=True, tag="graph.deleted"):
    """A tombstone: these checkpoints of a thread (none listed: all of it) and their writes are gone for the saver."""

    thread_id: GraphRef
    incarnation: Incarnation = ""
    checkpoints: list[tuple[str, str]] = []  # (checkpoint_ns, checkpoint_id)
    reason: str = ""  # delete_thread, prune or delete_for_runs


class LogPruned(Event, frozen=True, kw_only=True, tag="log.pruned"):
    """Sealed segments through `through_seq` were dropped by retention (DESIGN section 19): the line at
    that seq hashed to `through_hash`, and the projection there is the snapshot with `snapshot_sha256`."""

    through_seq: Annotated[int, Meta(ge=1)]
    through_hash: Annotated[str, Meta(pattern="^[0-9a-f]{64}$")]
    snapshot_sha256: Annotated[str, Meta(pattern="^[0-9a-f]{64}$")]


AnyEvent = Union[
    CellProvisioned,
    CellActivated,
    CellFrozen,
    CellThawed,
    CellArchived,
    CellDestroyed,
    CellExpiring,
    LeaderElected,
    AgentInvited,
    AgentJoined,
    AgentHeartbeat,
    AgentLeft,
    AgentUpdated,
    AgentSpawned,
    AgentExited,
    AgentDeclaredDead,
    AgentRevived,
    AgentProbeFailed,
    AgentProbeOk,
    AgentUsage,
    RevivalPlanned,
    RevivalApprovalRequested,
    RevivalApproved,
    RevivalDenied,
    BusMessage,
    CheckpointCreated,
    HandoffCreated,
    HandoffAccepted,
    CheckpointRestored,
    TaskCreated,
    TaskUpdated,
    EffectStarted,
    EffectCompleted,
    EffectFailed,
    EffectResolved,
    BudgetWarned,
    BudgetExceeded,
    BudgetRaised,
    GraphCheckpoint,
    GraphWrites,
    GraphDeleted,
    LogPruned,
]

# the types an agent's own process appends, stamped with its incarnation
INCARNATED: tuple[type[Event], ...] = (AgentJoined, AgentHeartbeat, AgentLeft, BusMessage, CheckpointCreated,
                                       HandoffCreated, HandoffAccepted, CheckpointRestored, TaskCreated, TaskUpdated,
                                       EffectStarted, EffectCompleted, EffectFailed, EffectResolved, AgentUsage,
                                       GraphCheckpoint, GraphWrites, GraphDeleted)

EVENT_TYPES: dict[str, type[Event]] = {
    cls.__struct_config__.tag: cls for cls in AnyEvent.__args__  # type: ignore[attr-defined]
}


class _Rules:
    """One event type's checked fields, and the combinations of their values that passed."""

    def __init__(self, cls: type) -> None:
        found = []
        for field, hint in typing.get_type_hints(cls, include_extras=True).items():
            for arg in (hint, *typing.get_args(hint)):
                rule = next((m for m in getattr(arg, "__metadata__", ()) if isinstance(m, Rule)), None)
                if rule is not None:
                    found.append((field, rule))
                    break
        self.fields: tuple[tuple[str, Rule], ...] = tuple(found)
        self.names = operator.attrgetter(*(f for f, _ in found))
        self.passed: set[Any] = set()


# built per type on first use, not at import: a CLI call meets one or two types (issue 21)
_RULES: dict[type, _Rules] = {}
_CATALOGUE = frozenset(EVENT_TYPES.values())


def _rules_of(cls: type) -> _Rules | None:
    if cls not in _CATALOGUE:
        return None
    rules = _RULES[cls] = _Rules(cls)
    return rules


_FIELDS: dict[str, frozenset[str]] = {t: frozenset(c.__struct_fields__) for t, c in EVENT_TYPES.items()}


def _numeric_fields(cls: type) -> tuple[str, ...]:
    """The fields that may hold a float: a number typed field, or free JSON (payload, state, detail)."""
    out = []
    for field, hint in typing.get_type_hints(cls).items():
        args = {hint, *typing.get_args(hint)}
        if float in args or Any in args or any(typing.get_origin(a) is dict for a in args):
            out.append(field)
    return tuple(out)


_NUMERIC: dict[type, tuple[str, ...]] = {}  # as _RULES: per type, on first use


def non_finite(value: Any, where: str) -> str | None:
    """The path of the first inf or nan in a JSON-like value (JSON has no way to write them)."""
    if isinstance(value, float):
        return None if math.isfinite(value) else where
    if isinstance(value, dict):
        for k, v in value.items():
            if (found := non_finite(v, f"{where}.{k}")) is not None:
                return found
    elif isinstance(value, (list, tuple)):
        for i, v in enumerate(value):
            if (found := non_finite(v, f"{where}[{i}]")) is not None:
                return found
    return None


def check_finite(event: Event) -> None:
    """Non-finite numbers are malformed input: JSON would store them as null, which nothing reads back."""
    numeric = _NUMERIC.get(type(event))
    if numeric is None:
        numeric = _NUMERIC[type(event)] = _numeric_fields(type(event))
    for field in numeric:
        value = getattr(event, field)
        if value is None or isinstance(value, (str, int)):
            continue
        where = non_finite(value, field)
        if where is not None:
            raise MalformedInput(f"{event.type}: {where} must be a finite number, not {_show(event, where)}")


def _show(event: Event, where: str) -> str:
    found: Any = msgspec.to_builtins(event, builtin_types=(float,))
    for part in where.replace("[", ".").replace("]", "").split("."):
        found = found[int(part)] if isinstance(found, list) else found[part]
    return repr(found)

_decoder = msgspec.json.Decoder(AnyEvent)
_encoder = msgspec.json.Encoder()
# what decoding a line may raise; a reader's hot loop calls `decode_line` and catches these itself
DECODE_ERRORS = (msgspec.DecodeError, msgspec.ValidationError, UnicodeDecodeError, RecursionError)
decode_line = _decoder.decode
encode_line = _encoder.encode  # encode_event without a Python frame, for the append hot path


def decode_event(line: bytes) -> Event:
    """Decode one stored line; raises msgspec errors for the reader to turn into CorruptLog."""
    try:
        return _decoder.decode(line)
    except UnicodeDecodeError as exc:
        raise msgspec.DecodeError(f"invalid UTF-8: {exc}") from None
    except RecursionError:
        raise msgspec.DecodeError("JSON nested too deeply") from None


def decode_json(raw: bytes | str, what: str = "malformed JSON") -> Any:
    """User-supplied JSON: any failure (bad syntax, bad UTF-8, absurd nesting) is one MalformedInput."""
    try:
        return msgspec.json.decode(raw)
    except (msgspec.DecodeError, UnicodeDecodeError) as exc:
        raise MalformedInput(f"{what}: {exc}") from None
    except RecursionError:
        raise MalformedInput(f"{what}: nested too deeply") from None


def encode_event(event: Event) -> bytes:
    """The exact bytes of a log line, without its newline."""
    return _encoder.encode(event)


def payload_of(event: Event) -> dict[str, Any]:
    """The event as JSON-ready builtins, envelope included."""
    return msgspec.to_builtins(event)  # type: ignore[no-any-return]


def parse_draft(data: bytes | str | dict[str, Any], *, by: str | None = None) -> Event:
    """Validate an event a user asks to append; nothing the log assigns may be set here."""
    if isinstance(data, (bytes, str)):
        data = decode_json(data)
    if not isinstance(data, dict):
        raise MalformedInput("an event must be a JSON object")
    data = dict(data)
    if by is not None:
        data["by"] = by
    kind = data.get("type")
    if not isinstance(kind, str) or kind not in EVENT_TYPES:
        raise MalformedInput(f"unknown event type {kind!r}; see `lazarus schema export`")
    assigned = sorted(ASSIGNED & data.keys())
    if assigned:
        raise MalformedInput(f"{kind}: field {assigned[0]!r} is assigned by the log, not the caller")
    unknown = sorted(data.keys() - _FIELDS[kind] - {"type"})
    if unknown:
        raise MalformedInput(f"{kind}: unknown field {unknown[0]!r}")
    author = data.get("by")
    if not isinstance(author, str) or not author:
        raise MalformedInput(f"{kind}: 'by' is required (an agent name, operator or lazarus)")
    check_by(author)
    event_id = data.get("id")
    if event_id not in (None, ""):
        try:
            data["id"] = str(uuid.UUID(str(event_id)))
        except ValueError:
            raise MalformedInput(f"{kind}: 'id' must be a UUID string, got {event_id!r}") from None
    for field in _NAME_FIELDS:
        value = data.get(field)
        for name in value if isinstance(value, list) else [value]:
            if isinstance(name, str):
                check_agent(name)
    try:
        # straight to the type the tag names: converting to the union costs half of a heartbeat's append
        return msgspec.convert(data, EVENT_TYPES[kind])
    except msgspec.ValidationError as exc:
        raise MalformedInput(f"{kind}: {in_words(str(exc))}") from None
    except RecursionError:
        raise MalformedInput(f"{kind}: nested too deeply") from None


def parse_emitted(data: bytes | str | dict[str, Any], *, by: str | None = None) -> Event:
    """A draft any client sends (`lazarus emit`, `POST /cells/{cell}/events`): as `parse_draft`, but
    `cell.destroyed`, which ends the log and must remove the cell with it, comes only from `cell destroy`."""
    draft = parse_draft(data, by=by)
    if isinstance(draft, CellDestroyed):
        raise Refused("cell.destroyed is appended by `lazarus cell destroy`, which also moves the log to the "
                      "graveyard and removes the cell; it cannot be emitted on its own")
    return draft


_NAME_FIELDS = ("agent", "to", "substitute", "substitute_for", "assignee", "substitutes")
