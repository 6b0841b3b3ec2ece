"""The planner is pure: projection, policy and time in, actions out."""

from __future__ import annotations

from typing import Any

import msgspec

from lazarus_bus import events as ev
from lazarus_bus.config import Config
from lazarus_bus.fold import CellView, fold
from lazarus_bus.health import Hearing, silence_due
from lazarus_bus.planner import Append, Start, Stop, backoff, manual_revival, plan, quiet
from lazarus_bus.policy import effective

HOST = "here"


class Story:
    """A cell's log written by hand, with explicit times."""

    def __init__(self, *drafts: ev.Event) -> None:
        self.view: CellView | None = None
        self.seq = 0
        self.add(ev.CellProvisioned(by="operator", name="forge", ts=0.0), *drafts)

    def add(self, *drafts: ev.Event) -> Story:
        for d in drafts:
            self.seq += 1
            self.view = fold(self.view, msgspec.structs.replace(d, seq=self.seq, cell="c1", id=f"e{self.seq}"))
        return self

    def apply(self, actions: list[Any], ts: float) -> None:
        """What the executor would append for Append actions."""
        for a in actions:
            if isinstance(a, Append):
                self.add(*(msgspec.structs.replace(e, ts=ts) for e in a.events))


def cfg(**resurrection: Any) -> Config:
    return msgspec.convert({"resurrection": resurrection, "health": {"stale_after": 10, "dead_after": 20}}, Config)


def supervised(**kw: Any) -> list[ev.Event]:
    return [ev.AgentInvited(by="operator", agent="w", role="write", command=["run"], ts=1.0, **kw),
            ev.AgentSpawned(by="lazarus", agent="w", pid=10, attempt=1, host=HOST, ts=2.0)]


def crash(ts: float, pid: int = 10, code: int | None = None, sig: int | None = 9) -> ev.AgentExited:
    return ev.AgentExited(by="lazarus", agent="w", pid=pid, returncode=code, signal=sig, ts=ts)


def kinds(actions: list[Any]) -> list[str]:
    out = []
    for a in actions:
        if isinstance(a, Append):
            out.extend(e.type + (f":{e.action}" if e.type == "revival.planned" else "") for e in a.events)
        else:
            out.append(type(a).__name__.lower())
    return out


def test_first_start_of_a_supervised_agent() -> None:
    s = Story(ev.AgentInvited(by="operator", agent="w", role="write", command=["run"], ts=1.0))
    [start] = plan(s.view, cfg(), 2.0, HOST)  # type: ignore[arg-type]
    assert isinstance(start, Start) and start.attempt == 1 and start.revived == 0


def test_yes_restarts_at_once_then_backs_off_then_escalates() -> None:
    c = cfg(mode="yes", max_attempts=3, backoff_initial=1, backoff_factor=2, backoff_max=60)
    s = Story(*supervised(), crash(3.0))
    actions = plan(s.view, c, 3.0, HOST)  # type: ignore[arg-type]
    assert kinds(actions) == ["agent.declared_dead", "revival.planned:restart", "start"]
    assert actions[-1].attempt == 2 and actions[-1].revived == 1 and actions[0].events[1].delay == 0  # type: ignore[union-attr]
    delays = []
    t = 3.0
    for n in range(1, 4):
        s.apply(plan(s.view, c, t, HOST), t)  # type: ignore[arg-type]
        planned = s.view.agents["w"]  # type: ignore[union-attr]
        delays.append(planned.revival_delay)
        if planned.revival_delay:
            assert plan(s.view, c, t + planned.revival_delay - 0.01, HOST) == []  # type: ignore[arg-type]
        t += planned.revival_delay
        [start] = plan(s.view, c, t, HOST) if planned.revival_delay else [None]  # type: ignore[arg-type]
        s.add(ev.AgentSpawned(by="lazarus", agent="w", pid=10 + n, attempt=n + 1, host=HOST, ts=t),
              ev.AgentRevived(by="lazarus", agent="w", pid=10 + n, attempt=n, ts=t))
        t += 0.5
        s.add(crash(t, pid=10 + n))
    assert delays == [0.0, 1.0, 2.0]
    assert kinds(plan(s.view, c, t, HOST)) == ["agent.declared_dead", "revival.planned:escalated"]  # type: ignore[arg-type]
    s.apply(plan(s.view, c, t, HOST), t)  # type: ignore[arg-type]
    assert plan(s.view, c, t + 1000, HOST) == []  # type: ignore[arg-type]
    # the operator's revive resets the window: the daemon restarts it
    s.add(*(msgspec.structs.replace(e, ts=t + 5) for e in manual_revival(s.view, c, "w", t + 5)))  # type: ignore[arg-type]
    [start] = plan(s.view, c, t + 5, HOST)  # type: ignore[arg-type]
    assert isinstance(start, Start)


def test_a_stable_run_resets_the_count() -> None:
    c = cfg(mode="yes", max_attempts=1, stable_after=100)
    s = Story(*supervised(), crash(3.0))
    s.apply(plan(s.view, c, 3.0, HOST), 3.0)  # type: ignore[arg-type]
    s.add(ev.AgentSpawned(by="lazarus", agent="w", pid=11, attempt=2, host=HOST, ts=3.0), crash(500.0, pid=11))
    assert kinds(plan(s.view, c, 500.0, HOST))[1] == "revival.planned:restart"  # type: ignore[arg-type]
    s2 = Story(*supervised(), crash(3.0))
    s2.apply(plan(s2.view, c, 3.0, HOST), 3.0)  # type: ignore[arg-type]
    s2.add(ev.AgentSpawned(by="lazarus", agent="w", pid=11, attempt=2, host=HOST, ts=3.0), crash(50.0, pid=11))
    assert kinds(plan(s2.view, c, 50.0, HOST))[1] == "revival.planned:escalated"  # type: ignore[arg-type]


def test_no_suppresses_and_exit_zero_is_completion() -> None:
    s = Story(*supervised(), crash(3.0))
    assert kinds(plan(s.view, cfg(mode="no"), 3.0, HOST)) == ["agent.declared_dead", "revival.planned:suppressed"]  # type: ignore[arg-type]
    s = Story(*supervised(), crash(3.0, code=0, sig=None))
    assert kinds(plan(s.view, cfg(mode="yes"), 3.0, HOST)) == ["agent.left"]  # type: ignore[arg-type]
    assert kinds(plan(s.view, cfg(mode="yes", restart_on="always"), 3.0, HOST))[1] == "revival.planned:restart"  # type: ignore[arg-type]


def test_ask_then_approve_or_deny_or_timeout() -> None:
    c = cfg(mode="ask")
    s = Story(*supervised(), crash(3.0))
    actions = plan(s.view, c, 3.0, HOST)  # type: ignore[arg-type]
    assert kinds(actions) == ["agent.declared_dead", "revival.planned:ask", "revival.approval_requested"]
    req = actions[0].events[2]  # type: ignore[union-attr]
    assert "w" in req.message and "forge" in req.message and "exited" in req.message and req.key in req.message
    assert "exited (signal 9)" in req.message  # a SIGKILL has no return code: the signal is what a person reads
    s.apply(actions, 3.0)
    assert plan(s.view, c, 1000.0, HOST) == []  # type: ignore[arg-type]  # waits for a human
    timed = msgspec.convert({"resurrection": {"mode": "ask"}, "approvals": {"timeout": 60, "on_timeout": "approve"}},
                            Config)
    assert kinds(plan(s.view, timed, 70.0, HOST)) == ["revival.approved"]  # type: ignore[arg-type]
    denied = Story(*supervised(), crash(3.0))
    denied.apply(actions, 3.0)
    denied.add(ev.RevivalDenied(by="operator", key=req.key, ts=4.0))
    assert plan(denied.view, c, 5.0, HOST) == []  # type: ignore[arg-type]
    s.add(ev.RevivalApproved(by="operator", key=req.key, ts=4.0))
    assert kinds(plan(s.view, c, 5.0, HOST)) == ["revival.planned:restart", "start"]  # type: ignore[arg-type]


def test_unsupervised_dead_gets_first_healthy_substitute() -> None:
    c = msgspec.convert({"resurrection": {"mode": "yes", "substitutes": {"w": ["sick", "fine"]}},
                         "health": {"dead_after": 20}}, Config)
    s = Story(ev.AgentInvited(by="operator", agent="w", role="write", substitutes=["own"], ts=1.0),
              ev.AgentInvited(by="operator", agent="sick", role="write", ts=1.0),
              ev.AgentInvited(by="operator", agent="fine", role="write", ts=1.0),
              ev.AgentHeartbeat(by="w", agent="w", ts=2.0),
              ev.CheckpointCreated(by="w", checkpoint_id="cp1", ts=3.0),
              ev.AgentHeartbeat(by="fine", agent="fine", ts=30.0))
    actions = [a for a in plan(s.view, c, 30.0, HOST) if a.agent == "w"]  # type: ignore[arg-type]
    # "sick" was never seen: it is dead too (never_seen), so it is no candidate
    assert kinds(actions) == ["agent.declared_dead", "revival.planned:substitute", "handoff.created",
                              "agent.revived"]
    events = actions[0].events  # type: ignore[union-attr]
    assert events[0].reason == "heartbeat_timeout" and events[0].detail["dead_after"] == 20
    assert events[1].substitute == "fine" and events[2].to == "fine" and events[2].checkpoint_id == "cp1"
    assert events[3].agent == "fine" and events[3].substitute_for == "w"
    s.apply(actions, 30.0)
    assert s.view.agents["fine"].substitute_for == "w" and s.view.agents["w"].replaced_by == "fine"  # type: ignore[union-attr]
    # no healthy candidate: unrecoverable
    lonely = Story(ev.AgentInvited(by="operator", agent="w", role="write", ts=1.0),
                   ev.AgentHeartbeat(by="w", agent="w", ts=2.0))
    assert kinds(plan(lonely.view, c, 30.0, HOST)) == ["agent.declared_dead", "revival.planned:unrecoverable"]  # type: ignore[arg-type]


def test_freeze_stops_thaw_starts_and_other_hosts_are_left_alone() -> None:
    s = Story(*supervised(), ev.CellActivated(by="lazarus", ts=2.0), ev.CellFrozen(by="operator", ts=3.0))
    [stop] = plan(s.view, cfg(), 3.0, HOST)  # type: ignore[arg-type]
    assert isinstance(stop, Stop)
    s.add(crash(3.5, sig=15), ev.CellThawed(by="operator", ts=4.0))
    [start] = plan(s.view, cfg(), 4.0, HOST)  # type: ignore[arg-type]
    assert isinstance(start, Start) and start.why.startswith("started again")
    elsewhere = Story(*supervised(), crash(3.0))
    assert plan(elsewhere.view, cfg(mode="yes"), 3.0, "another-host") == []  # type: ignore[arg-type]


def test_backoff_formula() -> None:
    p = effective(cfg(backoff_initial=1, backoff_factor=2, backoff_max=5), Story().view, "x")  # type: ignore[arg-type]
    assert [backoff(p, k) for k in range(6)] == [0, 1, 2, 4, 5, 5]


# -- section 17: agents another manager runs -------------------------------------------------------------


def _managed_story(host: str) -> Story:
    restart = ["ssh", "{host}", "systemctl", "restart", "hermes-{agent}.service"]
    return Story(
        ev.AgentInvited(by="operator", agent="gw", role="write", probe="http://127.0.0.1:1/health", probe_failures=2,
                        restart_cmd=restart, substitutes=["spare"], ts=1.0),
        ev.AgentInvited(by="operator", agent="spare", role="write", heartbeat_interval=5, ts=1.0),
        ev.AgentJoined(by="gw", agent="gw", host=host, ts=2.0),
        ev.AgentHeartbeat(by="spare", agent="spare", ts=9.0),
        ev.AgentProbeFailed(by="lazarus", agent="gw", failures=1, detail={"error": "refused"}, ts=8.0),
        ev.AgentProbeFailed(by="lazarus", agent="gw", failures=2, detail={"error": "refused"}, ts=9.0),
    )


def test_a_probe_failed_agent_of_another_manager_is_restarted_by_its_command() -> None:
    from lazarus_bus.planner import Command

    s = _managed_story(HOST)
    assert s.view is not None
    actions = plan(s.view, cfg(mode="yes"), 10.0, HOST)
    append = next(a for a in actions if isinstance(a, Append))
    assert [(e.type, getattr(e, "reason", None) or getattr(e, "action", None)) for e in append.events] == [
        ("agent.declared_dead", "probe_failed"), ("revival.planned", "restart")]
    command = next(a for a in actions if isinstance(a, Command))
    assert command.argv == [["ssh", HOST, "systemctl", "restart", "hermes-gw.service"]] and command.revived == 1
    assert not any(isinstance(a, (Start, Stop)) for a in actions)  # nothing of its own to spawn or signal


def test_prefer_substitute_picks_a_healthy_substitute_for_an_agent_on_another_host_only() -> None:
    from lazarus_bus.planner import Command

    remote = _managed_story("far-away")
    assert remote.view is not None
    chosen = plan(remote.view, cfg(mode="yes", prefer="substitute"), 10.0, HOST)
    events = [e for a in chosen if isinstance(a, Append) for e in a.events]
    assert [e.type for e in events][-1] == "agent.revived" and events[-1].substitute_for == "gw"  # type: ignore[attr-defined]
    assert not any(isinstance(a, Command) for a in chosen)
    default = plan(remote.view, cfg(mode="yes"), 10.0, HOST)  # prefer = "restart": its manager restarts it
    assert any(isinstance(a, Command) for a in default)
    local = _managed_story(HOST)
    assert local.view is not None
    assert any(isinstance(a, Command) for a in plan(local.view, cfg(mode="yes", prefer="substitute"), 10.0, HOST))


def test_a_cell_of_heartbeating_agents_is_quiet_and_its_silence_deadline_is_when_the_plan_declares_death() -> None:
    c = cfg(mode="no")
    s = Story(ev.AgentInvited(by="operator", agent="ada", role="write", ts=1.0),
              ev.AgentInvited(by="operator", agent="bob", role="write", ts=1.0),
              ev.AgentHeartbeat(by="ada", agent="ada", ts=5.0), ev.AgentHeartbeat(by="bob", agent="bob", ts=8.0))
    assert s.view is not None and quiet(s.view, c)
    v = s.view
    dues = [silence_due(v, a, effective(c, v, a.name), 9.0) for a in v.agents.values()]
    assert dues == [25.0, 28.0]
    assert plan(v, c, 25.0, HOST) == []  # dead only once past it
    [declared] = plan(v, c, 25.001, HOST)
    assert isinstance(declared, Append) and declared.events[0].agent == "ada"  # type: ignore[union-attr]
    # a late first look moves the deadline with it
    assert silence_due(v, v.agents["ada"], effective(c, v, "ada"), 100.0, Hearing(since=90.0)) == 110.0
    s.apply(plan(v, c, 26.0, HOST), 26.0)  # declared dead, revival suppressed: nothing more comes due
    assert s.view is not None and s.view.agents["ada"].phase == "dead" and quiet(s.view, c)
    assert silence_due(s.view, s.view.agents["ada"], effective(c, s.view, "ada"), 30.0) is None


def test_whatever_a_clock_moves_besides_silence_keeps_a_cell_on_every_tick() -> None:
    c = cfg(mode="no")
    invite = ev.AgentInvited(by="operator", agent="ada", role="write", ts=1.0)
    supervised = Story(ev.AgentInvited(by="operator", agent="ada", role="write", command=["x"], ts=1.0))
    assert supervised.view is not None and not quiet(supervised.view, c)
    lifetime = Story(invite)
    lifetime.view = msgspec.structs.replace(lifetime.view, max_duration=60.0)  # type: ignore[arg-type]
    assert not quiet(lifetime.view, c)
    phi = msgspec.convert({"health": {"detector": "phi"}}, Config)
    assert Story(invite).view is not None and not quiet(Story(invite).view, phi)  # type: ignore[arg-type]
    asking = Story(invite, ev.AgentHeartbeat(by="ada", agent="ada", ts=2.0))
    assert asking.view is not None
    asking.apply(plan(asking.view, cfg(mode="ask"), 30.0, HOST), 30.0)  # an approval pending, with its timeout
    assert asking.view is not None and asking.view.approvals and not quiet(asking.view, cfg(mode="ask"))
    frozen = Story(invite, ev.CellFrozen(by="operator", ts=2.0))
    assert frozen.view is not None and not quiet(frozen.view, c)
