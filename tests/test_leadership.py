"""Leases as their holders keep them, on a real nats-server: a deadline of the holder's own, epochs
that only grow, fencing when a lease is lost or cannot be renewed; and stale decisions refused."""

from __future__ import annotations

import signal
from pathlib import Path

import pytest

from lazarus_bus import Root, load_config
from lazarus_bus import events as ev
from lazarus_bus.errors import Fenced
from lazarus_bus.leadership import Leadership, new_instance
from tests.conftest import NatsServer, nats_toml

TTL = 3.0


class Clock:
    """The holder's monotonic clock, moved by the test: a pause is a jump."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def _root(tmp_path: Path, own_nats: NatsServer, name: str, stream: str) -> Root:
    d = tmp_path / name
    d.mkdir()
    (d / "lazarus.toml").write_text(f'backend = "nats"\nnats_url = "{own_nats.url}"\nnats_stream = "{stream}"\n'
                                    f'nats_lease = {TTL}\nfsync = "never"\n')
    return Root(d, load_config(d / "lazarus.toml"))


def test_instances_are_unique_per_start() -> None:
    a, b = new_instance("alpha"), new_instance("alpha")
    assert a != b and a.startswith("alpha/") and len(a.split("/")[1]) == 8


def test_the_holder_acts_only_before_its_own_deadline_and_epochs_grow(tmp_path: Path, own_nats: NatsServer) -> None:
    stream = nats_toml(own_nats).split('nats_stream = "')[1].split('"')[0]
    ra, rb = _root(tmp_path, own_nats, "a", stream), _root(tmp_path, own_nats, "b", stream)
    cid = ra.create("forge").id
    ca, cb = Clock(), Clock()
    a = Leadership(ra.store, new_instance("same"), ttl=TTL, fence_after=1.0, grace=0.5, clock=ca)
    b = Leadership(rb.store, new_instance("same"), ttl=TTL, fence_after=1.0, grace=0.5, clock=cb)
    taken, fence = a.apply(a.renew([cid]))
    assert taken == [cid] and fence == [] and a.leads(cid) and a.epoch(cid) > 0
    assert b.apply(b.renew([cid])) == ([], []) and not b.leads(cid)  # one host name, two daemons: one leads
    ca.now += TTL - a.margin  # paused (or slow) past its own deadline: it acts no more, renewed or not
    assert not a.leads(cid)
    a.apply(a.renew([cid]))  # a renewal in time gives a new deadline, the same epoch
    epoch = a.epoch(cid)
    assert a.leads(cid)
    ra.store.release(cid, a.instance)  # as if its lease ran out while it was away
    taken, _ = b.apply(b.renew([cid]))
    assert taken == [cid] and b.epoch(cid) > epoch
    assert a.apply(a.renew([cid])) == ([], [cid]) and not a.leads(cid)  # lost: what it runs there stops
    assert a.apply(a.renew([cid])) == ([], [])  # not held since: nothing more to fence
    b.hold_starts(cid)
    assert b.leads(cid) and not b.may_start(cid)
    cb.now += 1.5
    assert b.may_start(cid)


def test_a_lease_not_renewed_for_fence_after_is_fenced(tmp_path: Path, own_nats: NatsServer) -> None:
    stream = nats_toml(own_nats).split('nats_stream = "')[1].split('"')[0]
    root = _root(tmp_path, own_nats, "a", stream)
    cid = root.create("forge").id
    clock = Clock()
    a = Leadership(root.store, new_instance("alpha"), ttl=TTL, fence_after=2.0, grace=0.5, clock=clock)
    a.apply(a.renew([cid]))
    assert own_nats.proc is not None
    own_nats.proc.send_signal(signal.SIGSTOP)  # NATS unreachable: renewals time out (a third of the lease)
    try:
        clock.now += 1.0
        renewals = a.renew([cid])
        assert renewals[0].error
        assert a.apply(renewals) == ([], []) and a.leads(cid)  # not yet fence_after: still within its lease
        clock.now += 1.0
        assert a.apply(a.renew([cid])) == ([], [cid]) and not a.leads(cid)
    finally:
        own_nats.proc.send_signal(signal.SIGCONT)


def test_a_superseded_leaders_decisions_are_refused(tmp_path: Path, own_nats: NatsServer) -> None:
    stream = nats_toml(own_nats).split('nats_stream = "')[1].split('"')[0]
    root = _root(tmp_path, own_nats, "a", stream)
    cell = root.create("forge")
    cell.append(ev.AgentInvited(by="operator", agent="w", role="write", command=["true"]))
    cell.append(ev.LeaderElected(by="lazarus", instance="alpha/00000001", host="alpha", epoch=5))
    cell.append(ev.AgentDeclaredDead(by="lazarus", agent="w", reason="exited", epoch=5))
    cell.append(ev.LeaderElected(by="lazarus", instance="beta/00000002", host="beta", epoch=9))
    for stale in (ev.RevivalPlanned(by="lazarus", agent="w", action="restart", epoch=5),
                  ev.AgentSpawned(by="lazarus", agent="w", pid=1, epoch=5),
                  ev.AgentExited(by="lazarus", agent="w", pid=1),  # no epoch at all
                  ev.LeaderElected(by="lazarus", instance="alpha/00000001", host="alpha", epoch=5)):
        with pytest.raises(Fenced, match="^fenced: "):
            cell.append(stale)
    cell.append(ev.RevivalPlanned(by="lazarus", agent="w", action="restart", epoch=9))
    cell.append(ev.AgentHeartbeat(by="w", agent="w"))  # an agent's own events carry no epoch
    view = cell.refresh()
    assert view.epoch == 9 and view.leader == "beta/00000002"
