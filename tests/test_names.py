"""Names and ids are validated before they touch a path."""

import os

import pytest

from lazarus_bus.errors import MalformedInput
from lazarus_bus.names import check_agent, check_by, check_cell_id, check_ref_id, new_id


@pytest.mark.parametrize("name", ["ezra", "a", "agent-1.b_c", "x" * 63])
def test_good_agent_names(name: str) -> None:
    assert check_agent(name) == name


@pytest.mark.parametrize("name", ["", "../x", "a/b", "..", "a..b", "Ezra", "-a", "x" * 64, "operator", "lazarus",
                                  "auditor", "a\n", " a"])
def test_bad_agent_names(name: str) -> None:
    with pytest.raises(MalformedInput):
        check_agent(name)


def test_authors() -> None:
    assert check_by("operator") == "operator" and check_by("lazarus") == "lazarus"
    with pytest.raises(MalformedInput):
        check_by("auditor")


@pytest.mark.parametrize("cid", ["forge", "f-1", "0b7e4c4e-8f5a-4d3b-9c1d-2e3f4a5b6c7d", new_id()])
def test_good_cell_ids(cid: str) -> None:
    assert check_cell_id(cid) == cid


@pytest.mark.parametrize("cid", ["../x", "Forge", "a_b", "a.b", "", "-a", "x" * 64])
def test_bad_cell_ids(cid: str) -> None:
    with pytest.raises(MalformedInput):
        check_cell_id(cid)


def test_ref_ids_refuse_traversal() -> None:
    with pytest.raises(MalformedInput):
        check_ref_id("checkpoint", "../../etc/passwd")
    with pytest.raises(MalformedInput):
        check_ref_id("checkpoint", "a..b")
    assert check_ref_id("checkpoint", "cp-1.2_x") == "cp-1.2_x"


def test_new_ids_are_uuid7_and_unique() -> None:
    import uuid

    from lazarus_bus.names import new_ids

    singles = [new_id() for _ in range(10_000)]  # one at a time: the path every single append takes
    ids = new_ids(10_000) + singles
    assert len(set(ids)) == len(ids)
    for i in ids[:100] + singles[:100]:
        u = uuid.UUID(i)
        assert (u.version, u.variant, str(u)) == (7, uuid.RFC_4122, i)


def test_a_forked_child_does_not_repeat_its_parents_ids() -> None:
    import random

    from lazarus_bus.names import new_ids

    random.seed(0)  # a user's seeding of the shared generator must not make ids predictable
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.write(w, " ".join(new_ids(1) + new_ids(20)).encode())
        os._exit(0)
    os.close(w)
    mine = new_ids(1) + new_ids(20)
    with os.fdopen(r) as f:
        theirs = f.read().split()
    os.waitpid(pid, 0)
    assert len(theirs) == 21 and not {i[15:] for i in theirs} & {i[15:] for i in mine}  # the random bits
