"""Typed config: found in one documented order, validated, an unknown key named in the error."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated, Literal

import msgspec
from msgspec import Meta, Struct

from .errors import MalformedInput
from .events import BudgetPolicy, OnExceed, Policy, non_finite
from .limits import check_limits

__all__ = [
    "Config",
    "HealthConfig",
    "DaemonConfig",
    "ResurrectionConfig",
    "ApprovalsConfig",
    "BudgetConfig",
    "EffectsConfig",
    "NotifyConfig",
    "HttpConfig",
    "IsolationConfig",
    "LogsConfig",
    "load_config",
    "find_root",
    "resolve",
]

Seconds = Annotated[float, Meta(ge=0)]


class _Section(Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """Config sections refuse keys they do not know, so a typo is an error, not a no-op."""


class HealthConfig(_Section, frozen=True, kw_only=True):
    """When an agent counts as stale or dead."""

    stale_after: Seconds = 30.0
    dead_after: Seconds = 120.0
    progress_after: Seconds = 0.0
    detector: Literal["timeout", "phi"] = "timeout"
    phi_threshold: Annotated[float, Meta(gt=0)] = 8.0


class DaemonConfig(_Section, frozen=True, kw_only=True):
    """The daemon's pace."""

    tick: Annotated[float, Meta(gt=0)] = 1.0
    grace: Seconds = 5.0
    debounce: Annotated[float, Meta(ge=0.001, le=1.0)] = 0.008
    verify_every: Seconds = 60.0  # a full check of every cell's hash chain (0: only when the daemon starts)
    fence_after: Annotated[float, Meta(gt=0)] = 5.0  # a lease not renewed this long: stop what runs there


class ResurrectionConfig(_Section, frozen=True, kw_only=True):
    """How dead agents come back; missions and agents may override."""

    mode: Literal["yes", "no", "ask"] = "ask"
    max_attempts: Annotated[int, Meta(ge=0)] = 3
    attempt_window: Seconds = 600.0
    backoff_initial: Seconds = 1.0
    backoff_factor: Annotated[float, Meta(ge=1)] = 2.0
    backoff_max: Seconds = 60.0
    stable_after: Seconds = 300.0
    restart_on: Literal["failure", "always"] = "failure"
    prefer: Literal["restart", "substitute"] = "restart"  # "substitute": first choice for an agent on another host
    command_timeout: Annotated[float, Meta(gt=0)] = 60.0  # a --restart-cmd still running this long has failed
    substitutes: dict[str, list[str]] = {}
    missions: dict[str, Policy] = {}
    agents: dict[str, Policy] = {}


class ApprovalsConfig(_Section, frozen=True, kw_only=True):
    """Approval requests that nobody answers resolve by themselves."""

    timeout: Seconds = 0.0
    on_timeout: Literal["deny", "approve"] = "deny"


class BudgetConfig(_Section, frozen=True, kw_only=True):
    """Caps on what each agent spends across its incarnations (0 = no cap); missions and agents may override."""

    max_cost: Annotated[float, Meta(ge=0)] = 0.0
    max_tokens: Annotated[int, Meta(ge=0)] = 0
    max_runtime: Seconds = 0.0
    warn_at: Annotated[float, Meta(gt=0, le=1)] = 0.8
    on_exceed: OnExceed = "pause"
    missions: dict[str, BudgetPolicy] = {}
    agents: dict[str, BudgetPolicy] = {}


class EffectsConfig(_Section, frozen=True, kw_only=True):
    """What a restart does when the dead agent left effects in doubt."""

    on_in_doubt: Literal["resume", "ask"] = "resume"


class NotifyConfig(_Section, frozen=True, kw_only=True):
    """Where deaths, approval requests and escalations are announced."""

    webhook: str = ""
    command: list[str] = []
    channels: dict[str, str] = {}
    min_interval: Seconds = 60.0


class HttpConfig(_Section, frozen=True, kw_only=True):
    """The gateway's address and who may write through it."""

    listen: str = "127.0.0.1:8766"
    tokens_file: str = ""
    header_timeout: Annotated[float, Meta(gt=0)] = 10.0  # a request head (or an idle keep-alive) this slow is cut
    body_timeout: Annotated[float, Meta(gt=0)] = 30.0  # a request body, or a reader of a response, this slow is cut
    max_connections: Annotated[int, Meta(ge=1)] = 256  # beyond it a connection gets 503 and is closed at once


class IsolationConfig(_Section, frozen=True, kw_only=True):
    """What agents see of the daemon's environment, their network by default, and default limits."""

    env_passthrough: list[str] = []  # variable names passed on from the daemon's environment
    network: Literal["host", "none"] = "host"  # of cells created without --network (levels 2 and 3)
    limits: dict[str, str] = {}  # memory, cpu, pids, nofile: under each invite's own --limit


class LogsConfig(_Section, frozen=True, kw_only=True):
    """Agents' captured output: rotated by size so a chatty agent cannot fill the disk."""

    max_bytes: Annotated[int, Meta(ge=0)] = 10 * 1024 * 1024  # 0: never rotate
    keep: Annotated[int, Meta(ge=0)] = 5  # rotated files kept: <agent>.log.1 (newest) to .log.<keep>


class RetentionConfig(_Section, frozen=True, kw_only=True):
    """How many sealed segments of a cell's log are kept (DESIGN section 19); 0 keeps every one."""

    keep_segments: Annotated[int, Meta(ge=0)] = 0  # > 0: the newest this many sealed segments stay
    max_age: Seconds = 0.0  # > 0: a sealed segment whose last event is older than this goes


class AuditConfig(_Section, frozen=True, kw_only=True):
    """The head published outside the machine, so a log cut back is caught by `verify --expect`."""

    anchor_command: list[str] = []  # argv; gets `{"cell", "seq", "head"}` as JSON on stdin
    anchor_every: Annotated[int, Meta(ge=1)] = 10000  # events between two anchors of one cell


class Config(_Section, frozen=True, kw_only=True):
    """The whole of lazarus.toml."""

    missions_root: str | None = None
    backend: Literal["file", "nats"] = "file"
    nats_url: str | list[str] = "nats://127.0.0.1:4222"  # one server, a list, or a comma-separated string
    nats_stream: str = "LAZARUS"
    nats_replicas: Annotated[int, Meta(ge=1)] = 1
    nats_storage: Literal["file", "memory"] = "file"
    nats_lease: Annotated[float, Meta(gt=0)] = 10.0
    nats_creds: str = ""  # a credentials file (accounts with users)
    nats_tls_ca: str = ""  # TLS: the CA that signed the servers' certificates
    nats_tls_cert: str = ""  # TLS: this client's certificate (mutual TLS) ...
    nats_tls_key: str = ""  # ... and its key
    fsync: Literal["always", "batch", "never"] = "always"
    max_event_bytes: Annotated[int, Meta(ge=256)] = 1048576
    max_archive_bytes: Annotated[int, Meta(ge=0)] = 1073741824
    health: HealthConfig = HealthConfig()
    daemon: DaemonConfig = DaemonConfig()
    resurrection: ResurrectionConfig = ResurrectionConfig()
    approvals: ApprovalsConfig = ApprovalsConfig()
    budget: BudgetConfig = BudgetConfig()
    effects: EffectsConfig = EffectsConfig()
    notify: NotifyConfig = NotifyConfig()
    http: HttpConfig = HttpConfig()
    isolation: IsolationConfig = IsolationConfig()
    logs: LogsConfig = LogsConfig()
    segment_bytes: Annotated[int, Meta(ge=4096)] = 64 * 1024 * 1024  # the active log is sealed past this
    retention: RetentionConfig = RetentionConfig()
    audit: AuditConfig = AuditConfig()


def load_config(path: Path) -> Config:
    """Read and validate one config file; every problem names the file and the key."""
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise MalformedInput(f"config {path}: no such file") from None
    except OSError as exc:
        raise MalformedInput(f"config {path}: {exc.strerror}") from None
    try:
        config = msgspec.toml.decode(raw, type=Config)
    except msgspec.ValidationError as exc:
        raise MalformedInput(f"config {path}: {exc}") from None
    except (msgspec.DecodeError, UnicodeDecodeError) as exc:
        raise MalformedInput(f"config {path}: invalid TOML: {exc}") from None
    try:
        check_limits(dict(config.isolation.limits))
    except MalformedInput as exc:
        raise MalformedInput(f"config {path}: isolation.limits: {exc}") from None
    r = config.resurrection
    for place, layer in [*(("missions." + k, v) for k, v in r.missions.items()),
                         *(("agents." + k, v) for k, v in r.agents.items())]:
        if layer.budget is not None:
            raise MalformedInput(f"config {path}: resurrection.{place}.budget: budgets are set in "
                                 f"[budget.{place}], not under [resurrection]")
    where = non_finite(msgspec.to_builtins(config), "")
    if where is not None:
        raise MalformedInput(f"config {path}: {where.lstrip('.')} must be a finite number (TOML's inf and nan are not)")
    return config


def _default_root() -> Path:
    """$XDG_DATA_HOME/lazarus/missions, else ~/.local/share/lazarus/missions."""
    data = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(data) / "lazarus" / "missions"


def find_root(root: str | None, config_path: str | None) -> Path:
    """The missions root, first found: --root, $LAZARUS_ROOT, missions_root in a named config, XDG."""
    if root:
        return Path(root)
    if os.environ.get("LAZARUS_ROOT"):
        return Path(os.environ["LAZARUS_ROOT"])
    named = config_path or os.environ.get("LAZARUS_CONFIG")
    if named:
        cfg = load_config(Path(named))
        if cfg.missions_root:
            return Path(cfg.missions_root)
    return _default_root()


def resolve(root: str | None = None, config_path: str | None = None) -> tuple[Path, Config]:
    """Root and config together: --config, $LAZARUS_CONFIG, <root>/lazarus.toml, then defaults."""
    found = find_root(root, config_path)
    named = config_path or os.environ.get("LAZARUS_CONFIG")
    if named:
        return found, load_config(Path(named))
    local = found / "lazarus.toml"
    if local.is_file():
        return found, load_config(local)
    return found, Config()
