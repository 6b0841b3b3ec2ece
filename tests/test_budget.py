"""Budgets are pure: spend folded from the log across incarnations, caps layered like [resurrection],
and the daemon's answers (warn once, stop at a cap and ask to raise it, start again once raised)."""

from __future__ import annotations

import math
from typing import Any

import msgspec
import pytest

from lazarus_bus import MalformedInput, parse_draft
from lazarus_bus import events as ev
from lazarus_bus.budget import caps_of, checks, raise_events, refuse_over, spend_of
from lazarus_bus.config import Config
from lazarus_bus.errors import BudgetExceeded
from lazarus_bus.fold import fold_all
from lazarus_bus.planner import Append, Start, Stop, plan
from tests.test_planner import HOST, Story


def cfg(budget: dict[str, Any], **resurrection: Any) -> Config:
    return msgspec.convert({"budget": budget, "resurrection": {"mode": "yes", **resurrection}}, Config)


def supervised(**cell: Any) -> Story:
    s = Story()
    if cell:
        s = Story()
        s.view = None
        s.seq = 0
        s.add(ev.CellProvisioned(by="operator", name="forge", ts=0.0, policy=ev.Policy(**cell)))
    return s.add(ev.AgentInvited(by="operator", agent="w", role="write", command=["x"], ts=0.0),
                 ev.AgentSpawned(by="lazarus", agent="w", pid=10, host=HOST, attempt=1, ts=1.0))


def used(cost: float = 0.0, tokens_in: int = 0, ts: float = 2.0) -> ev.AgentUsage:
    return ev.AgentUsage(by="w", agent="w", cost=cost, tokens_in=tokens_in, calls=1, ts=ts)


def test_spend_is_summed_across_incarnations_and_runtime_counts_every_run() -> None:
    s = supervised().add(used(0.5, 100), ev.AgentExited(by="lazarus", agent="w", pid=10, returncode=1, ts=11.0),
                         ev.AgentSpawned(by="lazarus", agent="w", pid=11, host=HOST, attempt=2, ts=12.0),
                         used(0.25, 50, ts=13.0))
    assert s.view is not None
    spend = spend_of(s.view.agents["w"], now=20.0)
    assert (spend.cost, spend.tokens, spend.calls) == (0.75, 150, 2)
    assert spend.runtime == pytest.approx(10.0 + 8.0)  # the ended run, and the current one up to `now`


def test_caps_are_layered_config_mission_cell_agent_and_grow_by_raises() -> None:
    config = cfg({"max_cost": 10, "warn_at": 0.5, "missions": {"forge": {"max_cost": 5, "max_tokens": 1000}},
                  "agents": {"w": {"on_exceed": "stop"}}})
    s = supervised(budget=ev.BudgetPolicy(max_cost=2.0))
    assert s.view is not None
    caps = caps_of(config, s.view, "w")
    assert (caps.cost, caps.tokens, caps.runtime, caps.warn_at, caps.on_exceed) == (2.0, 1000, 0.0, 0.5, "stop")
    s.add(ev.BudgetRaised(by="operator", agent="w", cost=1.5, runtime=60.0))
    caps = caps_of(config, s.view, "w")
    assert (caps.cost, caps.runtime) == (3.5, 0.0)  # a raise grows a cap that is set; no cap stays no cap


def test_a_budget_under_resurrection_is_a_config_error(tmp_path: Any) -> None:
    from lazarus_bus.config import load_config

    path = tmp_path / "lazarus.toml"
    path.write_text('[resurrection.agents.w]\nbudget = {max_cost = 1}\n')
    with pytest.raises(MalformedInput, match=r"\[budget.agents.w\]"):
        load_config(path)


def test_warn_once_then_exceed_stops_and_asks_and_a_raise_starts_it_again() -> None:
    config = cfg({"max_cost": 1.0, "warn_at": 0.5})
    s = supervised().add(used(0.6))
    assert s.view is not None
    [warned] = checks(s.view, config, s.view.agents["w"], 3.0, [])
    assert isinstance(warned, ev.BudgetWarned) and (warned.what, warned.cap) == ("cost", 1.0)
    s.add(warned)
    assert checks(s.view, config, s.view.agents["w"], 3.0, []) == []  # once
    s.add(used(0.4, ts=4.0))
    [action] = plan(s.view, config, 5.0, HOST)
    assert isinstance(action, Append)
    exceeded, request = action.events
    assert isinstance(exceeded, ev.BudgetExceeded) and exceeded.on_exceed == "pause" and exceeded.spent == 1.0
    assert isinstance(request, ev.RevivalApprovalRequested) and request.key.startswith("budget-")
    assert "budget raise forge w --cost" in request.message
    s.apply([action], 5.0)
    [stop] = plan(s.view, config, 5.0, HOST)
    assert isinstance(stop, Stop) and stop.why == "budget exceeded"
    s.add(ev.AgentExited(by="lazarus", agent="w", pid=10, returncode=143, ts=6.0))
    a = s.view.agents["w"]
    assert a.phase == "stopped" and a.revival is None  # not a death: nothing revives it
    assert plan(s.view, config, 100.0, HOST) == []
    with pytest.raises(BudgetExceeded):
        refuse_over(s.view, config, "w", 7.0, cost=0.01)
    s.add(*raise_events(s.view, "w", cost=1.0))
    assert s.view.approvals[request.key].decision == "approved"  # the raise answers the pending request
    [warned] = plan(s.view, config, 9.0, HOST)  # 1.0 of the raised cap 2.0 is warn_at again
    s.apply([warned], 9.0)
    [start] = plan(s.view, config, 9.0, HOST)
    assert isinstance(start, Start)
    refuse_over(s.view, config, "w", 9.0, cost=0.5)
    with pytest.raises(BudgetExceeded):
        refuse_over(s.view, config, "w", 9.0, cost=1.01)  # would cross the raised cap (2.0)


def test_approving_the_budget_request_grants_one_more_cap_and_ask_does_not_stop() -> None:
    config = cfg({"max_tokens": 100, "on_exceed": "ask"})
    s = supervised().add(used(tokens_in=100))
    assert s.view is not None
    [action] = plan(s.view, config, 3.0, HOST)
    s.apply([action], 3.0)
    assert s.view.agents["w"].budget_exceeded == "tokens"
    assert plan(s.view, config, 4.0, HOST) == []  # `ask` files the request and stops nothing
    key = s.view.agents["w"].budget_approval
    assert key is not None and s.view.agents["w"].approval is None  # not a revival request
    s.add(ev.RevivalApproved(by="operator", key=key))
    [grant] = plan(s.view, config, 5.0, HOST)
    assert isinstance(grant, Append)
    [raised] = grant.events
    assert isinstance(raised, ev.BudgetRaised) and raised.tokens == 100 and raised.by == "lazarus"
    s.apply([grant], 5.0)
    assert caps_of(config, s.view, "w").tokens == 200 and s.view.agents["w"].budget_exceeded is None


def test_runtime_cap_is_reached_by_running_alone() -> None:
    config = cfg({"max_runtime": 30, "on_exceed": "stop"})
    s = supervised()
    assert s.view is not None
    assert plan(s.view, config, 20.0, HOST) == []
    [action, *_] = plan(s.view, config, 31.5, HOST)
    assert isinstance(action, Append)
    [exceeded] = action.events  # `stop` files no approval request
    assert isinstance(exceeded, ev.BudgetExceeded) and exceeded.what == "runtime"


@pytest.mark.parametrize("bad", [{"cost": -1.0}, {"tokens_in": -3}, {"calls": -1}, {"cost": "1"}])
def test_negative_or_mistyped_usage_is_malformed(bad: dict[str, Any]) -> None:
    with pytest.raises(MalformedInput):
        parse_draft({"type": "agent.usage", "by": "w", "agent": "w", **bad})


def test_non_finite_usage_is_malformed_at_the_write_path(root: Any) -> None:
    cell = root.create("forge")
    cell.append(ev.AgentInvited(by="operator", agent="w", role="write"))
    for value in (math.inf, math.nan):
        with pytest.raises(MalformedInput, match="finite"):
            cell.append(ev.AgentUsage(by="w", agent="w", cost=value))
    with pytest.raises(MalformedInput):
        cell.append(ev.AgentUsage(by="w", agent="w", cost=-0.5))
    assert [e.type for e in cell.log.read()] == ["cell.provisioned", "agent.invited"]


def test_the_live_fold_equals_a_replay() -> None:
    s = supervised().add(used(0.5), ev.BudgetWarned(by="lazarus", agent="w", what="cost", spent=0.5, cap=1.0),
                         ev.BudgetExceeded(by="lazarus", agent="w", what="cost", spent=1.0, cap=1.0),
                         ev.BudgetRaised(by="operator", agent="w", cost=1.0))
    events = []
    seq = 0
    for d in [ev.CellProvisioned(by="operator", name="forge", ts=0.0),
              ev.AgentInvited(by="operator", agent="w", role="write", command=["x"], ts=0.0),
              ev.AgentSpawned(by="lazarus", agent="w", pid=10, host=HOST, attempt=1, ts=1.0), used(0.5),
              ev.BudgetWarned(by="lazarus", agent="w", what="cost", spent=0.5, cap=1.0),
              ev.BudgetExceeded(by="lazarus", agent="w", what="cost", spent=1.0, cap=1.0),
              ev.BudgetRaised(by="operator", agent="w", cost=1.0)]:
        seq += 1
        events.append(msgspec.structs.replace(d, seq=seq, cell="c1", id=f"e{seq}"))
    assert fold_all(events) == s.view


def test_a_stop_is_an_escalation_and_a_pause_asks() -> None:
    from lazarus_bus.notify import kind_of

    assert kind_of(ev.BudgetExceeded(by="lazarus", agent="w", on_exceed="stop")) == "escalation"
    assert kind_of(ev.BudgetExceeded(by="lazarus", agent="w", on_exceed="pause")) is None  # its request notifies
