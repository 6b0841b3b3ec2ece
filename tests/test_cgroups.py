"""An agent's cgroup on this machine's real kernel: limits written, processes held and ended, dirs removed."""

from __future__ import annotations

import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from lazarus_bus import cgroups, probe
from tests.support import wait

pytestmark = pytest.mark.skipif(cgroups.hierarchy() is None, reason=probe.limits_support().detail)



def joined(group: cgroups.Group, child: subprocess.Popen[bytes]) -> None:
    """Until the child has entered the group (a count of spins ran out first on a loaded machine)."""
    wait(lambda: cgroups.members(group) == {child.pid}, "the child in its cgroup", proc=child)

def test_a_group_holds_its_limits_and_ends_every_process_in_it_even_one_in_its_own_session() -> None:
    h = cgroups.hierarchy()
    assert h is not None
    cell = f"test-{uuid.uuid4().hex}"
    g = cgroups.create(h, cell, "w", "inc", {"memory": "64M", "cpu": "0.5", "pids": "16"})
    try:
        assert all(Path(d).is_dir() and Path(d).name == "w-inc" for d in g.dirs)
        held = {f.name: f.read_text().strip() for d in g.dirs for f in Path(d).iterdir()
                if f.name in ("memory.max", "memory.limit_in_bytes", "cpu.max", "cpu.cfs_quota_us", "pids.max")}
        assert held.get("memory.max", held.get("memory.limit_in_bytes")) == str(64 << 20)
        assert held.get("cpu.cfs_quota_us", held.get("cpu.max", "").split(" ")[0]) == "50000"
        assert held["pids.max"] == "16"
        join = "".join(f"open({p!r}, 'w').write('0'); " for p in cgroups.procs_files(g))
        child = subprocess.Popen([sys.executable, "-c", f"import os, time; {join}time.sleep(600)"],
                                 start_new_session=True)
        joined(g, child)
        assert cgroups.members(g) == {child.pid} and not cgroups.oom_killed(g)
        assert cgroups.end(g) == 1
        assert child.wait(10) == -9
        assert not any(Path(d).exists() for d in g.dirs)
    finally:
        cgroups.end(g)


def test_a_limit_the_kernel_refuses_is_an_error_and_doctor_names_the_cgroup() -> None:
    h = cgroups.hierarchy()
    assert h is not None
    cell = f"test-{uuid.uuid4().hex}"
    with pytest.raises(OSError):
        cgroups.create(h, cell, "w", "inc", {"pids": "-5"})  # (the CLI refuses it before this)
    assert not any((Path(base) / cell).exists() for base in h.bases)  # nothing half-made is left
    assert probe.limits_support().via == "cgroup" and f"cgroup v{h.version}" in probe.limits_support().detail


def test_a_sweep_removes_a_cells_empty_cgroups_and_keeps_the_one_with_a_live_agent() -> None:
    h = cgroups.hierarchy()
    assert h is not None
    cell = f"test-{uuid.uuid4().hex}"
    left, live = (cgroups.create(h, cell, "w", inc, {}) for inc in ("old", "new"))
    join = "".join(f"open({p!r}, 'w').write('0'); " for p in cgroups.procs_files(live))
    child = subprocess.Popen([sys.executable, "-c", f"{join}import time; time.sleep(600)"], start_new_session=True)
    try:
        joined(live, child)
        cgroups.sweep(h, cell)
        assert not any(Path(d).exists() for d in left.dirs)  # what a killed daemon left of an ended start
        assert all(Path(d).exists() for d in live.dirs) and cgroups.members(live) == {child.pid}
    finally:
        cgroups.end(live)
        child.wait(10)
    cgroups.sweep(h, cell)
    assert not any((Path(base) / cell).exists() for base in h.bases)
