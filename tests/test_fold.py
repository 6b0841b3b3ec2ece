"""The live projection equals a fresh replay, and a snapshot plus the tail, for any valid history."""

from __future__ import annotations

import importlib
import tempfile
from pathlib import Path
from typing import Any

import msgspec
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from lazarus_bus import Cell, Config, Root
from lazarus_bus import events as ev
from lazarus_bus.errors import LazarusError
from lazarus_bus.fold import INTERVALS_KEPT, fold, fold_all
from lazarus_bus.snapshot import load_snapshot, save_snapshot

AGENTS = ["ada", "bob", "cy"]
REFS = ["r1", "r2", "r3"]
agent = st.sampled_from(AGENTS)
ref = st.sampled_from(REFS)
small = st.integers(min_value=0, max_value=5)



def own(cls: type[ev.Event], **fields: st.SearchStrategy) -> st.SearchStrategy[ev.Event]:
    """An agent's event about itself: `by` and `agent` agree."""
    return agent.flatmap(lambda name: st.builds(cls, by=st.just(name), agent=st.just(name), **fields))


PRELUDE = [ev.AgentInvited(by="operator", agent="ada", role="lead"),
           ev.AgentInvited(by="operator", agent="bob", role="write", command=["sleep", "9"]),
           ev.AgentInvited(by="operator", agent="cy", role="read", heartbeat_interval=2.0)]

drafts = st.one_of(
    own(ev.AgentJoined, pid=small),
    own(ev.AgentHeartbeat, cycle=small, pid=small, status=st.sampled_from(["", "x"])),
    own(ev.AgentHeartbeat, cycle=small, pid=small, status=st.sampled_from(["", "x"])),
    own(ev.AgentLeft),
    st.builds(ev.AgentSpawned, by=st.just("lazarus"), agent=agent, pid=small, attempt=small),
    st.builds(ev.AgentExited, by=st.just("lazarus"), agent=agent, pid=small, returncode=small),
    st.builds(ev.AgentDeclaredDead, by=st.just("lazarus"), agent=agent, reason=st.just("exited")),
    st.builds(ev.AgentRevived, by=st.just("lazarus"), agent=agent, pid=small,
              substitute_for=st.one_of(st.none(), agent)),
    st.builds(ev.RevivalPlanned, by=st.sampled_from(["lazarus", "operator"]), agent=agent,
              action=st.sampled_from(["restart", "substitute", "ask", "suppressed", "escalated"])),
    st.builds(ev.AgentUpdated, by=st.just("operator"), agent=agent,
              run=st.sampled_from([None, "stop", "start", "restart"]), revive=st.sampled_from([None, "yes"])),
    st.builds(ev.RevivalApprovalRequested, by=st.just("lazarus"), key=ref, agent=agent),
    st.builds(ev.RevivalApproved, by=st.just("operator"), key=ref),
    st.builds(ev.RevivalDenied, by=st.just("operator"), key=ref),
    st.builds(ev.BusMessage, by=agent, topic=st.sampled_from(["a", "b"]), payload=small),
    st.builds(ev.CheckpointCreated, by=agent, checkpoint_id=ref, state=st.dictionaries(st.text(max_size=3), small)),
    st.builds(ev.HandoffCreated, by=agent, handoff_id=ref, to=agent, checkpoint_id=ref),
    st.builds(ev.HandoffAccepted, by=agent, handoff_id=ref),
    st.builds(ev.TaskCreated, by=agent, task_id=ref, title=st.just("t"), depends_on=st.lists(ref, max_size=2)),
    st.builds(ev.TaskUpdated, by=agent, task_id=ref,
              status=st.sampled_from(["pending", "in_progress", "done", "failed"])),
    st.builds(ev.CellFrozen, by=st.just("operator")),
    st.builds(ev.CellThawed, by=st.just("operator")),
    st.builds(ev.AgentInvited, by=st.just("operator"), agent=agent,
              role=st.sampled_from(["lead", "write", "read", "audit"]),
              command=st.sampled_from([[], ["sleep", "9"]]), heartbeat_interval=st.sampled_from([0.0, 2.0])),
)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(history=st.lists(drafts, min_size=10, max_size=60), cut=st.integers(min_value=1))
def test_live_equals_replay_equals_snapshot_plus_tail(history: list[ev.Event], cut: int) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        root = Root(Path(tmp), Config(fsync="never"))
        cell = root.create("prop")
        for draft in [*PRELUDE, *history]:
            try:
                cell.append(draft)  # the rules decide what is a valid history; refusals are skipped
            except LazarusError:
                pass
        live = cell.refresh()
        assert live == cell.replay()
        head = cell.head().seq
        at = 1 + cut % head
        save_snapshot(cell.state_dir, cell.replay(at))
        fresh = Cell(root, cell.id)
        assert load_snapshot(fresh.state_dir, fresh.log, fresh.id) == cell.replay(at)
        assert fresh.refresh() == live
        assert msgspec.json.decode(msgspec.json.encode(live), type=type(live)) == live
        cell.close()
        fresh.close()


beat = own(ev.AgentHeartbeat, cycle=st.integers(0, 2), pid=small, status=st.sampled_from(["", "x"]),
           model=st.sampled_from(["", "", "m"]))
chatter = st.builds(ev.BusMessage, by=st.sampled_from(["ada", "bob"]), topic=st.just("a"))
# what fold_all folds ahead of a pending run of heartbeats: none of it may change the result
aside = st.one_of(
    chatter,
    st.builds(ev.CheckpointCreated, by=agent, checkpoint_id=ref, state=st.dictionaries(st.text(max_size=3), small)),
    st.builds(ev.HandoffCreated, by=agent, handoff_id=ref, to=agent, checkpoint_id=ref),
    st.builds(ev.TaskCreated, by=agent, task_id=ref, title=st.just("t")),
    st.builds(ev.TaskUpdated, by=agent, task_id=ref, status=st.sampled_from(["in_progress", "done"])),
)


def _folded_both_ways(history: list[ev.Event], run: int = 4096, strict: bool = False) -> tuple[Any, Any]:
    """The history appended to a cell whose first beat activated it: fold_all's view, fold's view."""
    fold_mod = importlib.import_module("lazarus_bus.fold")  # the package's `fold` is the function
    with tempfile.TemporaryDirectory() as tmp:
        root = Root(Path(tmp), Config(fsync="never"))
        cell = root.create("runs")
        for draft in [*PRELUDE, ev.AgentHeartbeat(by="cy", agent="cy"), *history]:
            try:
                cell.append(draft)
            except LazarusError:  # e.g. an update of a task never created: refused, skipped
                if strict:
                    raise
        events = list(cell.log.read())
        cell.close()
    one_by_one = None
    for event in events:
        one_by_one = fold_mod.fold(one_by_one, event)
    before = fold_mod.RUN
    fold_mod.RUN = run  # runs cut at every length, not only at 4,096
    try:
        return fold_mod.fold_all(events), one_by_one
    finally:
        fold_mod.RUN = before


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(history=st.one_of(st.lists(st.one_of(beat, beat, beat, aside, drafts), min_size=1, max_size=150),
                         st.lists(beat, min_size=60, max_size=150)),  # runs past the 32 intervals kept
       run=st.integers(min_value=1, max_value=5))
def test_fold_all_folds_runs_of_heartbeats_as_fold_does_one_by_one(history: list[ev.Event], run: int) -> None:
    for size in (run, 4096):
        together, one_by_one = _folded_both_ways(history, size)
        assert together == one_by_one
    assert all(len(a.intervals) <= INTERVALS_KEPT for a in one_by_one.agents.values())


BEAT = ev.AgentHeartbeat(by="ada", agent="ada", cycle=1, pid=7)
ASIDE = [ev.BusMessage(by="ada", topic="a"), ev.CheckpointCreated(by="ada", checkpoint_id="c1"),
         ev.HandoffCreated(by="ada", handoff_id="h1", to="bob", checkpoint_id="c0"),
         ev.TaskCreated(by="ada", task_id="t1", title="t")]


@pytest.mark.parametrize("aside", ASIDE, ids=lambda e: e.type)
@pytest.mark.parametrize("after", [[], [BEAT], [ev.AgentJoined(by="ada", agent="ada", pid=9)]],
                         ids=["end", "beat", "joined"])
def test_events_folded_ahead_of_a_run_of_heartbeats_change_nothing(aside: ev.Event, after: list[ev.Event]) -> None:
    """A message, checkpoint, handoff or task between heartbeats does not cut their run, and the
    view's envelope (seq, last id) is still the last event's."""
    start = ev.CheckpointCreated(by="bob", checkpoint_id="c0")  # for the handoff to name
    together, one_by_one = _folded_both_ways([start, BEAT, aside, *after], strict=True)
    assert together == one_by_one
    assert together.seq == 9 + len(after)  # the envelope is the last event's


def test_a_join_between_heartbeats_cuts_their_run() -> None:
    together, one_by_one = _folded_both_ways([BEAT, ev.AgentJoined(by="ada", agent="ada", pid=9), BEAT], strict=True)
    assert together == one_by_one
    assert together.agents["ada"].last_seen == together.agents["ada"].last_heartbeat  # the last beat's


def test_messages_checkpoints_handoffs_and_tasks_project_what_they_say() -> None:
    history = [
        ev.BusMessage(by="ada", topic="plan"), BEAT, ev.BusMessage(by="bob", topic="plan"),
        ev.BusMessage(by="bob", topic="done"),
        ev.CheckpointCreated(by="ada", checkpoint_id="c1", summary="first"), BEAT,
        ev.CheckpointCreated(by="ada", checkpoint_id="c2"), ev.CheckpointCreated(by="bob", checkpoint_id="c3"),
        ev.HandoffCreated(by="ada", handoff_id="h1", to="bob", checkpoint_id="c2", note="yours"),
        ev.TaskCreated(by="ada", task_id="t1", title="build", assignee="bob"), BEAT,
        ev.TaskUpdated(by="bob", task_id="t1", status="in_progress"),
        ev.TaskUpdated(by="bob", task_id="t1", status="done"),
    ]
    together, one_by_one = _folded_both_ways(history, strict=True)
    for view in (together, one_by_one):
        assert (view.messages, view.topics) == (3, {"plan": 2, "done": 1})
        assert list(view.checkpoints) == ["c1", "c2", "c3"] and view.checkpoints["c1"].summary == "first"
        assert (view.agents["ada"].last_checkpoint, view.agents["bob"].last_checkpoint) == ("c2", "c3")
        h1 = view.handoffs["h1"]
        assert (h1.to, h1.checkpoint_id, h1.note) == ("bob", "c2", "yours")
        t1 = view.tasks["t1"]
        assert (t1.status, t1.assignee, t1.updated_seq) == ("done", "bob", view.seq)
        assert view.agents["ada"].heartbeats == 3


def test_an_event_naming_what_the_log_never_introduced_is_corrupt_wherever_it_is_folded() -> None:
    from lazarus_bus import CorruptLog

    _, view = _folded_both_ways([BEAT])
    stranger = msgspec.structs.replace(BEAT, agent="zed", by="zed", seq=view.seq + 2)
    events = [msgspec.structs.replace(BEAT, seq=view.seq + 1), stranger,
              ev.BusMessage(by="ada", topic="a", seq=view.seq + 3)]
    for fold_them in (lambda: fold_all(events, view), lambda: fold(fold(view, events[0]), stranger)):
        with pytest.raises(CorruptLog, match=f"seq {view.seq + 2}: agent.heartbeat names 'zed', which the log never"):
            fold_them()
    with pytest.raises(CorruptLog, match="seq 4: agent.heartbeat before cell.provisioned"):
        fold(None, msgspec.structs.replace(BEAT, seq=4))


def test_an_operator_stop_is_stopped_not_dead() -> None:
    """`agent stop` of a running agent: its exit makes it `stopped`, held until `agent start`."""
    view = fold_all([ev.CellProvisioned(by="operator", name="forge", seq=1), *PRELUDE,
                     ev.AgentSpawned(by="lazarus", agent="bob", pid=7, attempt=1, ts=10.0),
                     ev.AgentUpdated(by="operator", agent="bob", run="stop", ts=11.0),
                     ev.AgentExited(by="lazarus", agent="bob", pid=7, signal=15, ts=12.0)])
    assert view is not None
    bob = view.agents["bob"]
    assert bob.phase == "stopped" and bob.held and bob.deaths == 0
    view = fold(view, ev.AgentUpdated(by="operator", agent="bob", run="start", env={"A": "1"}))
    assert not view.agents["bob"].held and view.agents["bob"].env == {"A": "1"}
