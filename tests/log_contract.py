"""The guarantees every log backend keeps; each backend's test module subclasses this."""

from __future__ import annotations

import hashlib
import threading
import uuid
from collections.abc import Callable

import pytest

from lazarus_bus import Conflict, LogBackend, Refused, TooLarge, parse_draft
from lazarus_bus.events import ZERO_HASH, CellDestroyed, Event
from lazarus_bus.log import Head

MakeLog = Callable[..., LogBackend]


def msg(i: int, **kw: object) -> Event:
    return parse_draft({"type": "bus.message", "by": "operator", "topic": "t", "payload": i, **kw})


class LogContract:
    """Subclasses provide a `make_log(**settings)` fixture for a fresh, empty cell log."""

    def test_append_assigns_the_envelope(self, make_log: MakeLog) -> None:
        log = make_log()
        a, b = log.append(msg(1))[0], log.append(msg(2))[0]
        assert (a.seq, b.seq) == (1, 2)
        assert a.event.prev == ZERO_HASH
        lines = [line for _, line in log.read_raw()]
        assert b.event.prev == hashlib.sha256(lines[0]).hexdigest()
        assert a.event.cell and a.event.ts > 0 and uuid.UUID(a.event.id)
        assert log.head() == Head(2, hashlib.sha256(lines[1]).hexdigest())

    def test_empty_log_head(self, make_log: MakeLog) -> None:
        assert make_log().head() == Head(0, ZERO_HASH)

    def test_read_since_and_until(self, make_log: MakeLog) -> None:
        log = make_log()
        log.append_many([msg(i) for i in range(1, 51)])
        assert [e.seq for e in log.read(10, 20)] == list(range(11, 21))
        assert [e.seq for e in log.read(49)] == [50]
        assert list(log.read(50)) == []
        assert [e.payload for e in log.read(0, 3)] == [1, 2, 3]  # type: ignore[attr-defined]

    def test_a_fresh_reader_starts_anywhere(self, make_log: MakeLog) -> None:
        log = make_log()
        log.append_many([msg(i) for i in range(1, 301)])
        for since in (1, 2, 63, 64, 150, 236, 299, 300, 301, 5000):
            fresh = make_log()  # a new process: no index of where anything is
            assert [e.seq for e in fresh.read(since)] == list(range(since + 1, 301)), since
        assert [e.seq for e in make_log().read(100, 110)] == list(range(101, 111))

    def test_nothing_follows_cell_destroyed_in_a_batch(self, make_log: MakeLog) -> None:
        log = make_log()
        log.append(msg(1))
        before = [line for _, line in log.read_raw()]
        with pytest.raises(Refused, match="nothing may follow"):
            log.append_many([CellDestroyed(by="operator"), msg(2)])
        assert [line for _, line in log.read_raw()] == before
        assert log.append(msg(2))[0].seq == 2  # the refused batch left the log open

    def test_expected_seq_conflict_writes_nothing(self, make_log: MakeLog) -> None:
        log = make_log()
        log.append(msg(1))
        with pytest.raises(Conflict, match="expected seq 0"):
            log.append(msg(2), expected_seq=0)
        assert log.head().seq == 1
        assert log.append(msg(2), expected_seq=1)[0].seq == 2

    def test_idempotent_retry_returns_the_original_seq(self, make_log: MakeLog) -> None:
        log = make_log()
        eid = str(uuid.uuid4())
        first = log.append(msg(1, id=eid))[0]
        log.append(msg(2))
        again = log.append(msg(1, id=eid), expected_seq=0)[0]  # checked before expected_seq
        assert again.duplicate and again.seq == first.seq
        assert log.head().seq == 2

    def test_same_id_other_payload_is_a_conflict(self, make_log: MakeLog) -> None:
        log = make_log()
        eid = str(uuid.uuid4())
        log.append(msg(1, id=eid))
        with pytest.raises(Conflict, match="different payload"):
            log.append(msg(2, id=eid))
        assert log.head().seq == 1

    def test_ids_older_than_the_window_are_new_again(self, make_log: MakeLog) -> None:
        log = make_log()
        eid = str(uuid.uuid4())
        log.append(msg(0, id=eid))
        log.append_many([msg(i) for i in range(10_000)])
        assert not log.append(msg(0, id=eid))[0].duplicate

    def test_oversized_event_is_refused(self, make_log: MakeLog) -> None:
        log = make_log(max_event_bytes=4096)
        log.append(msg(1))
        with pytest.raises(TooLarge, match="max_event_bytes"):
            log.append(msg("x" * 5000))  # type: ignore[arg-type]
        assert log.head().seq == 1

    def test_append_many_is_all_or_nothing(self, make_log: MakeLog) -> None:
        log = make_log(max_event_bytes=4096)
        with pytest.raises(TooLarge, match="max_event_bytes"):
            log.append_many([msg(1), msg(2), msg("y" * 5000)])  # type: ignore[arg-type]
        assert log.head().seq == 0

    def test_admit_refusal_writes_nothing_and_followups_are_added(self, make_log: MakeLog) -> None:
        log = make_log()

        def refuse(head: Head, drafts: list[Event]) -> list[Event]:
            raise Refused("no")

        with pytest.raises(Refused):
            log.append(msg(1), admit=refuse)
        assert log.head().seq == 0
        out = log.append(msg(1), admit=lambda head, drafts: [*drafts, msg(99)])
        assert [a.seq for a in out] == [1, 2]

    def test_follow_sees_later_appends(self, make_log: MakeLog) -> None:
        log = make_log()
        log.append(msg(1))
        stop = threading.Event()
        seen: list[int] = []

        def consume() -> None:
            for event, _ in log.follow(0, stop):
                seen.append(event.seq)
                if len(seen) == 3:
                    stop.set()

        t = threading.Thread(target=consume)
        t.start()
        writer = make_log(reopen=log)
        writer.append(msg(2))
        writer.append(msg(3))
        t.join(timeout=20)
        stop.set()
        assert seen == [1, 2, 3]
