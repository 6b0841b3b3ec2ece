"""Health from the projection and a given `now`: no sleeping."""

from __future__ import annotations

from lazarus_bus import events as ev
from lazarus_bus.config import Config, HealthConfig
from lazarus_bus.fold import CellView, fold_all
from lazarus_bus.health import Hearing, judge, phi
from lazarus_bus.policy import effective


def build(*events: ev.Event) -> CellView:
    out = []
    for seq, e in enumerate([ev.CellProvisioned(by="operator", name="forge", ts=0.0), *events], start=1):
        out.append(e.__class__(**{**{f: getattr(e, f) for f in e.__struct_fields__}, "seq": seq, "cell": "c1"}))
    v = fold_all(out)
    assert v is not None
    return v


def health(v: CellView, agent: str, now: float, config: Config = Config(),
           hearing: Hearing = Hearing()) -> tuple[str, str | None]:
    verdict = judge(v, v.agents[agent], effective(config, v, agent), now, hearing)
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


def test_silence_counts_only_while_the_judge_could_hear() -> None:
    h = Hearing(since=200.0, gaps=((300.0, 340.0),))
    assert h.silence(100.0, 250.0) == 50.0  # before its first look is not silence
    assert h.silence(250.0, 400.0) == 110.0  # nor the stall of its loop
    assert h.silence(310.0, 400.0) == 60.0
    assert h.silence(350.0, 400.0) == 50.0
    assert Hearing().silence(100.0, 250.0) == 150.0  # the log alone


def test_a_daemon_that_started_late_gives_every_agent_dead_after_from_its_first_look() -> None:
    v = build(INVITE, beat(100.0))  # silent for 500 s, but the daemon only looked at 500
    started = Hearing(since=500.0)
    assert health(v, "ada", 600.0) == ("dead", "heartbeat_timeout")  # judged from the log alone
    assert health(v, "ada", 520.0, hearing=started) == ("healthy", None)
    assert health(v, "ada", 531.0, hearing=started) == ("stale", None)
    assert health(v, "ada", 621.0, hearing=started) == ("dead", "heartbeat_timeout")
    verdict = judge(v, v.agents["ada"], effective(Config(), v, "ada"), 621.0, started)
    assert verdict.detail == {"age": 521.0, "dead_after": 120.0, "heard_silent": 121.0}
    never = build(INVITE)
    assert health(never, "ada", 600.0, hearing=started) == ("unknown", None)
    assert health(never, "ada", 621.0, hearing=started) == ("dead", "never_seen")


def test_a_stall_of_the_daemon_is_held_off_the_silence_and_the_stillness() -> None:
    v = build(INVITE, beat(100.0, 1), beat(110.0, 1))
    stalled = Hearing(since=0.0, gaps=((120.0, 200.0),))
    assert health(v, "ada", 215.0, hearing=stalled) == ("healthy", None)  # 105 s old, 25 s of it heard
    assert health(v, "ada", 311.0, hearing=stalled) == ("dead", "heartbeat_timeout")
    cfg = Config(health=HealthConfig(progress_after=50, dead_after=1000))
    assert health(v, "ada", 180.0, cfg) == ("dead", "no_progress")
    assert health(v, "ada", 180.0, cfg, stalled) == ("healthy", None)
    phi_cfg = Config(health=HealthConfig(detector="phi", phi_threshold=8.0, dead_after=1000))
    beats = build(INVITE, *[beat(100.0 + 2.0 * i) for i in range(10)])
    assert health(beats, "ada", 130.0, phi_cfg, Hearing(gaps=((119.0, 129.0),)))[0] == "healthy"
