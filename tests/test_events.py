"""Event types: one tagged union, old logs still decode, drafts pass one door."""

from __future__ import annotations

from pathlib import Path

import msgspec
import pytest

from lazarus_bus import EVENT_TYPES, MalformedInput, decode_event, encode_event, parse_draft
from lazarus_bus.events import Event

SAMPLE = Path(__file__).parent / "data" / "sample_v1.jsonl"


def test_every_catalogue_type_is_defined() -> None:
    assert set(EVENT_TYPES) == {
        "cell.provisioned", "cell.activated", "cell.frozen", "cell.thawed", "cell.archived", "cell.destroyed", "leader.elected",
        "agent.invited", "agent.joined", "agent.heartbeat", "agent.left", "agent.updated", "agent.spawned", "agent.exited",
        "agent.declared_dead", "agent.revived", "revival.planned", "revival.approval_requested",
        "revival.approved", "revival.denied", "bus.message", "checkpoint.created", "handoff.created",
        "handoff.accepted", "checkpoint.restored", "task.created", "task.updated",
        "effect.started", "effect.completed", "effect.failed", "effect.resolved", "agent.usage",
        "budget.warned", "budget.exceeded", "budget.raised", "log.pruned",
        "graph.checkpoint", "graph.writes", "graph.deleted",
        "agent.probe_failed", "agent.probe_ok", "cell.expiring",  # section 17
    }


def test_events_are_frozen_and_flat() -> None:
    e = parse_draft({"type": "agent.heartbeat", "by": "ezra", "agent": "ezra", "cycle": 2})
    with pytest.raises(AttributeError):
        e.cycle = 3  # type: ignore[misc]
    raw = msgspec.json.decode(encode_event(e))
    assert raw["type"] == "agent.heartbeat" and raw["cycle"] == 2 and "payload" not in raw
    assert set(("seq", "id", "ts", "cell", "type", "by", "prev")) <= raw.keys()


def test_round_trip_of_every_type_with_defaults() -> None:
    required = {"name": "n", "agent": "a", "role": "read", "topic": "t", "key": "k", "action": "restart",
                "checkpoint_id": "c", "handoff_id": "h", "to": "b", "task_id": "t1", "title": "x",
                "status": "done", "instance": "h/0a1b2c3d", "epoch": 1, "effect_id": "e1", "outcome": "retry",
                "thread_id": "th-1", "through_seq": 9, "through_hash": "a" * 64, "snapshot_sha256": "b" * 64}
    for kind, cls in EVENT_TYPES.items():
        fields = {f: required[f] for f in cls.__struct_fields__ if f in required}
        e = parse_draft({"type": kind, "by": "operator", **fields})
        assert decode_event(encode_event(e)) == e


def test_a_log_written_by_version_one_still_decodes() -> None:
    events = [decode_event(line) for line in SAMPLE.read_bytes().splitlines()]
    assert [e.seq for e in events] == list(range(1, len(events) + 1))
    assert {e.type for e in events} >= {"cell.provisioned", "agent.heartbeat", "checkpoint.created"}


def test_old_lines_without_newer_fields_decode() -> None:
    line = b'{"type":"agent.heartbeat","seq":3,"id":"x","ts":1.0,"cell":"c","by":"a","prev":"0","agent":"a"}'
    e = decode_event(line)
    assert isinstance(e, Event) and e.cycle == 0 and e.status == ""  # type: ignore[attr-defined]


@pytest.mark.parametrize(
    "data, words",
    [
        (b"[1]", "JSON object"),
        (b'{"type": 3, "by": "a"}', "unknown event type"),
        (b'{"type": "agent.left", "agent": "a"}', "'by' is required"),
        (b'{"type": "agent.left", "by": "auditor", "agent": "a"}', "read-only"),
        (b'{"type": "task.updated", "by": "a", "task_id": "t", "status": "started"}', "status"),
        (b'{"type": "cell.provisioned", "by": "operator", "name": "n", "isolation": 4}', "isolation"),
        (b'{"type": "agent.invited", "by": "operator", "agent": "a", "role": "read", "substitutes": ["../b"]}',
         "bad agent name"),
    ],
)
def test_drafts_are_validated_at_the_door(data: bytes, words: str) -> None:
    with pytest.raises(MalformedInput, match=words):
        parse_draft(data)


def test_name_rules_hold_on_every_path_after_good_names_were_remembered() -> None:
    from lazarus_bus import events as ev

    line = b'{"type":"handoff.created","by":"ada","cell":"forge","handoff_id":"h1","to":"bob"}'
    good = decode_event(line)
    assert decode_event(line) == good  # the second time from the memo
    for field, bad in [("to", "../x"), ("by", "Ada"), ("cell", "../forge"), ("handoff_id", "a/b")]:
        with pytest.raises(msgspec.ValidationError, match=rf"\$\.{field}"):
            decode_event(line.replace(b'"' + getattr(good, field).encode() + b'"', b'"' + bad.encode() + b'"', 1))
        with pytest.raises(ValueError, match=rf"\$\.{field}"):
            msgspec.structs.replace(good, **{field: bad})
    with pytest.raises(ValueError, match=r"\$\.agent"):
        ev.AgentHeartbeat(by="ada", agent="../x")
    with pytest.raises(msgspec.ValidationError, match=r"depends_on\[0\]"):
        decode_event(b'{"type":"task.created","task_id":"t","title":"x","depends_on":["../up"]}')
    with pytest.raises(MalformedInput, match="agent"):
        parse_draft(b'{"type":"agent.heartbeat","by":"operator","agent":"../x"}')
