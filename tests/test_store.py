"""One Store contract, both backends: a file root and a NATS root keep the same guarantees (tests/store_contract.py);
what only one backend promises (leases held against other hosts, cells seen from another host) is tested here."""

from __future__ import annotations

import itertools
import signal
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from lazarus_bus import Config, NotFound, Refused, Root
from lazarus_bus.log.nats import Nats
from lazarus_bus.store import FileStore
from tests.conftest import NatsServer
from tests.store_contract import MakeRoot, StoreContract, assert_unchanged, log_bytes, populated, staging


class Servers:
    """NATS servers of one test. Not the session's `nats_server`: a stream's subjects (`lazarus.cells.*.events`)
    and the KV buckets are per account, so a second stream on one server is refused ("one stream per NATS
    account") and cells would be shared; a server starts in milliseconds."""

    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.started: list[NatsServer] = []

    def config(self) -> Config:
        server = NatsServer(self.tmp / f"nats-{len(self.started)}")
        server.start()
        self.started.append(server)
        return Config(backend="nats", nats_url=server.url, nats_stream=server.stream(), fsync="never")

    def stop(self) -> None:
        urls = {s.url for s in self.started}
        for (url, _), conn in list(Nats._shared.items()):  # this process's connections, before their servers go
            if url in urls:
                conn.close()
        for s in self.started:
            s.stop(signal.SIGKILL)


@pytest.fixture
def servers(tmp_path: Path) -> Iterator[Servers]:
    s = Servers(tmp_path)
    yield s
    s.stop()


@pytest.fixture(params=["file", "nats"])
def make_root(request: pytest.FixtureRequest, tmp_path: Path) -> MakeRoot:
    n = itertools.count()

    def make() -> Root:
        path = tmp_path / f"root-{next(n)}"
        path.mkdir()
        if request.param == "file":
            return Root(path, Config(fsync="never"))
        return Root(path, request.getfixturevalue("servers").config())

    return make


class TestStoreContract(StoreContract):
    pass


# -- the file store ---------------------------------------------------------------------------


def test_file_store_is_one_host_and_its_lease_is_the_root_lock(tmp_path: Path) -> None:
    root = Root(tmp_path, Config(fsync="never"))
    assert isinstance(root.store, FileStore) and not root.store.spans_hosts
    cid = root.create("forge").id
    # on one host the root's daemon lock is the lease: whoever asks holds it
    assert root.store.lease(cid, "alpha/0001", 5.0, None) == 0
    assert root.store.lease(cid, "beta/0002", 5.0, None) == 0
    root.store.release(cid, "alpha/0001")
    assert root.store.lease(cid, "beta/0002", 5.0, 0) == 0


# -- NATS: one fleet, several hosts --------------------------------------------------------------


@pytest.fixture
def hosts(tmp_path: Path, servers: Servers) -> tuple[Root, Root]:
    """Two roots on two 'machines' (directories) sharing one NATS stream."""
    config = servers.config()
    paths = tmp_path / "alpha", tmp_path / "beta"
    for p in paths:
        p.mkdir()
    return Root(paths[0], config), Root(paths[1], config)


def test_nats_cells_are_seen_and_claimed_across_hosts(hosts: tuple[Root, Root]) -> None:
    alpha, beta = hosts
    assert alpha.store.spans_hosts and beta.store.spans_hosts
    cell = populated(alpha, cell_id="forge-1")
    assert beta.names() == {"forge-1": "forge"} and beta.store.cells() == {"forge-1": "forge"}
    seen = beta.open("forge")
    assert seen.id == "forge-1" and log_bytes(seen) == log_bytes(cell)
    assert seen.workspace.is_dir()  # its local side is made on first use
    ids, logs = {"forge-1": "forge"}, {"forge-1": log_bytes(cell)}
    # beta has a directory for forge-1 now; a third machine has none: the claim itself must refuse
    gamma = Root(alpha.path.parent / "gamma", alpha.config)
    for root in (beta, gamma):
        with pytest.raises(Refused, match="taken"):
            root.create("anvil", cell_id="forge-1")
        with pytest.raises(Refused, match="taken"):
            root.create("forge")
        assert_unchanged(root, ids, logs)
        with pytest.raises(NotFound):
            root.open("anvil")
    with pytest.raises(Refused, match="taken"):
        gamma.import_log([line for _, line in cell.log.read_raw()])
    assert_unchanged(gamma, ids, logs)
    assert staging(alpha) == []
    # a failure inside beta's claim frees the name for alpha
    with pytest.raises(RuntimeError), beta.store.claim(str(uuid.uuid4()), "anvil", beta.names):
        raise RuntimeError
    assert alpha.create("anvil").id in beta.names()


def test_nats_a_second_holder_is_refused_until_the_first_releases(hosts: tuple[Root, Root]) -> None:
    alpha, beta = hosts
    cid = alpha.create("forge").id
    a = alpha.store.lease(cid, "alpha/0001", 10.0, None)
    assert isinstance(a, int)
    assert beta.store.lease(cid, "beta/0002", 10.0, None) is None  # held: refused
    a2 = alpha.store.lease(cid, "alpha/0001", 10.0, a)
    assert isinstance(a2, int) and a2 > a
    assert beta.store.lease(cid, "beta/0002", 10.0, None) is None  # renewed: still refused
    beta.store.release(cid, "beta/0002")  # not the holder: gives nothing up
    assert beta.store.lease(cid, "beta/0002", 10.0, None) is None
    alpha.store.release(cid, "alpha/0001")
    b = beta.store.lease(cid, "beta/0002", 10.0, None)  # at once, no waiting for the ttl
    assert isinstance(b, int) and b > a2  # the epoch only grows
    assert alpha.store.lease(cid, "alpha/0001", 10.0, a2) is None  # the old holder's renewal is fenced
    assert alpha.store.lease(cid, "alpha/0001", 10.0, None) is None
    other = alpha.create("anvil").id  # leases are per cell
    assert isinstance(alpha.store.lease(other, "alpha/0001", 10.0, None), int)


def test_nats_a_lease_nobody_renews_expires_after_its_ttl(hosts: tuple[Root, Root]) -> None:
    alpha, beta = hosts
    cid = alpha.create("forge").id
    ttl = 1.0
    assert isinstance(alpha.store.lease(cid, "alpha/0001", ttl, None), int)
    assert beta.store.lease(cid, "beta/0002", ttl, None) is None
    t0 = time.monotonic()
    while (b := beta.store.lease(cid, "beta/0002", ttl, None)) is None:
        assert time.monotonic() < t0 + ttl + 5, f"a {ttl} s lease still held after {ttl + 5} s"
        time.sleep(0.05)
    assert isinstance(b, int)


def test_nats_a_lease_length_applies_to_a_bucket_made_earlier(hosts: tuple[Root, Root]) -> None:
    """DESIGN section 13: "a lease length set in config applies to a bucket made earlier"."""
    alpha, beta = hosts
    first, cid = alpha.create("forge").id, alpha.create("anvil").id
    # a daemon with nats_lease = 60 made the bucket; the fleet is restarted with nats_lease = 1
    assert isinstance(alpha.store.lease(first, "alpha/0001", 60.0, None), int)
    alpha.store.release(first, "alpha/0001")
    ttl = 1.0
    assert isinstance(alpha.store.lease(cid, "alpha/0001", ttl, None), int)
    assert beta.store.lease(cid, "beta/0002", ttl, None) is None
    t0 = time.monotonic()
    while (b := beta.store.lease(cid, "beta/0002", ttl, None)) is None:
        assert time.monotonic() < t0 + ttl + 5, (
            f"a lease taken with ttl {ttl} s is still held after {ttl + 5} s: the bucket kept the ttl it was made with")
        time.sleep(0.05)
    assert isinstance(b, int)
