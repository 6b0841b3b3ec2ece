"""Health from the projection and a given `now`: no sleeping."""

from __future__ import annotations

from lazarus_bus import events as ev
from lazarus_bus.config import Config, HealthConfig
from lazarus_bus.fold import CellView, fold_all
from lazarus_bus.health import judge, phi
from lazarus_bus.policy import effective


def build(*events: ev.Event) -> CellView:
    out = []
    for seq, e in enumerate([ev.CellProvisioned(by="operator", name="forge", ts=0.0), *events], start=1):
        out.append(e.__class__(**{**{f: getattr(e, f) for f in e.__struct_fields__}, "seq": seq, "cell": "c1"}))
    v = fold_all(out)
    assert v is not None
    return v


def health(v: CellView, agent: str, now: float, config: Config = Config()) -> tuple[str, str | None]:
    verdict = judge(v, v.agents[agent], effective(config, v, agent), now)
    return verdict.health, verdict.reason


INVITE = ev.AgentInvited(by="operator", agent="ada", role="write", ts=10.0)


def beat(ts: float, cycle: int = 0) -> ev.AgentHeartbeat:
    return ev.AgentHeartbeat(by="ada", agent="ada", ts=ts, cycle=cycle)


def test_unsupervised_by_heartbeat_age() -> None:
    v = build(INVITE, beat(100.0))
    assert health(v, "ada", 120.0) == ("healthy", None)
    assert health(v, "ada", 131.0) == ("stale", None)
    assert health(v, "ada", 221.0) == ("dead", "heartbeat_timeout")


def test_never_seen_is_unknown_then_dead_after_dead_after() -> None:
    v = build(INVITE)
    assert health(v, "ada", 100.0) == ("unknown", None)
    assert health(v, "ada", 131.0) == ("dead", "never_seen")


def test_supervised_without_interval_is_judged_by_its_process() -> None:
    v = build(ev.AgentInvited(by="operator", agent="ada", role="write", command=["x"], ts=10.0),
              ev.AgentSpawned(by="lazarus", agent="ada", pid=5, attempt=1, ts=11.0))
    assert health(v, "ada", 10_000.0) == ("healthy", None)
    v = build(ev.AgentInvited(by="operator", agent="ada", role="write", command=["x"], ts=10.0),
              ev.AgentSpawned(by="lazarus", agent="ada", pid=5, attempt=1, ts=11.0),
              ev.AgentExited(by="lazarus", agent="ada", pid=5, returncode=None, signal=9, ts=12.0))
    assert health(v, "ada", 12.5) == ("dead", "exited")


def test_supervised_with_interval_is_also_judged_by_heartbeats() -> None:
    v = build(ev.AgentInvited(by="operator", agent="ada", role="write", command=["x"], heartbeat_interval=1, ts=10.0),
              ev.AgentSpawned(by="lazarus", agent="ada", pid=5, attempt=1, ts=11.0))
    assert health(v, "ada", 140.0) == ("dead", "heartbeat_timeout")


def test_no_progress_when_the_cycle_stands_still() -> None:
    v = build(INVITE, beat(100.0, 1), beat(110.0, 2), beat(150.0, 2), beat(170.0, 2))
    cfg = Config(health=HealthConfig(progress_after=50))
    assert health(v, "ada", 171.0, cfg) == ("dead", "no_progress")
    assert health(v, "ada", 171.0) == ("healthy", None)


def test_frozen_is_stopped_and_left_is_left() -> None:
    v = build(INVITE, beat(100.0), ev.CellFrozen(by="operator", ts=101.0))
    assert health(v, "ada", 10_000.0)[0] == "stopped"
    v = build(INVITE, beat(100.0), ev.AgentLeft(by="ada", agent="ada", ts=101.0))
    assert health(v, "ada", 10_000.0)[0] == "left"


def test_phi_adapts_to_each_agents_rhythm() -> None:
    beats = [beat(100.0 + 2.0 * i) for i in range(10)]  # every 2 s, last at 118
    v = build(INVITE, *beats)
    cfg = Config(health=HealthConfig(detector="phi", phi_threshold=8.0, dead_after=1000))
    assert health(v, "ada", 119.0, cfg)[0] == "healthy"
    assert health(v, "ada", 130.0, cfg) == ("dead", "heartbeat_timeout")  # long before dead_after
    assert phi((2.0, 2.0, 2.0), 1.0) < phi((2.0, 2.0, 2.0), 3.0) < phi((2.0, 2.0, 2.0), 6.0)
