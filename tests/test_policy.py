"""Policy layering, case by case: each layer overrides the one before it."""

from __future__ import annotations

import msgspec

from lazarus_bus import events as ev
from lazarus_bus.config import Config
from lazarus_bus.fold import CellView, fold_all
from lazarus_bus.policy import effective


def view(name: str = "forge", policy: dict | None = None, revive: str | None = None) -> CellView:
    events = [
        ev.CellProvisioned(seq=1, ts=1.0, cell="c1", by="operator", name=name,
                           policy=msgspec.convert(policy, ev.Policy) if policy else None),
        ev.AgentInvited(seq=2, ts=2.0, cell="c1", by="operator", agent="ezra", role="lead", revive=revive,
                        substitutes=["own1"]),
    ]
    v = fold_all(events)
    assert v is not None
    return v


def config(**toml: object) -> Config:
    return msgspec.convert(toml, Config)


def test_builtin_defaults() -> None:
    p = effective(Config(), view(), "ezra")
    assert (p.mode, p.max_attempts, p.dead_after, p.stale_after, p.mission) == ("ask", 3, 120.0, 30.0, "forge")


def test_resurrection_section_over_defaults() -> None:
    p = effective(config(resurrection={"mode": "no", "max_attempts": 7}, health={"dead_after": 9}), view(), "ezra")
    assert (p.mode, p.max_attempts, p.dead_after) == ("no", 7, 9.0)


def test_mission_defaults_by_cell_name() -> None:
    c = config(resurrection={"mode": "no", "missions": {"forge": {"mode": "yes", "dead_after": 50}}})
    assert (effective(c, view("forge"), "ezra").mode, effective(c, view("forge"), "ezra").dead_after) == ("yes", 50)
    assert effective(c, view("other"), "ezra").mode == "no"


def test_cell_policy_over_mission() -> None:
    c = config(resurrection={"missions": {"forge": {"mode": "yes", "max_attempts": 5}}})
    p = effective(c, view(policy={"mode": "no"}), "ezra")
    assert (p.mode, p.max_attempts) == ("no", 5)


def test_agent_entry_over_cell_policy_and_names_its_mission() -> None:
    c = config(resurrection={
        "missions": {"forge": {"mode": "yes"}, "archive": {"mode": "no", "max_attempts": 1, "dead_after": 60}},
        "agents": {"ezra": {"mission": "archive", "dead_after": 900}},
    })
    p = effective(c, view(policy={"stale_after": 10}), "ezra")
    # the mission the agent names applies (not the cell's), then the cell, then the agent's own keys
    assert (p.mission, p.mode, p.max_attempts, p.stale_after, p.dead_after) == ("archive", "no", 1, 10, 900)
    assert effective(c, view(), "someone-else").mode == "yes"


def test_agent_revive_field_is_last() -> None:
    c = config(resurrection={"agents": {"ezra": {"mode": "no"}}})
    assert effective(c, view(revive="yes"), "ezra").mode == "yes"
    assert effective(c, view(), "ezra").mode == "no"


def test_substitutes_from_config_then_policy() -> None:
    c = config(resurrection={"substitutes": {"ezra": ["allegro"]}})
    assert effective(c, view(), "ezra").substitutes == ["allegro"]
    assert effective(c, view(policy={"substitutes": ["timmy"]}), "ezra").substitutes == ["timmy"]
