"""An agent's own cgroup (DESIGN section 15): its memory, cpu and pids held by the kernel, not by rlimits.

Found by trying, never assumed: cgroup v2 where the daemon's own cgroup can hand the memory, cpu and
pids controllers to children (a systemd unit with `Delegate=yes`), else the v1 hierarchies of those
controllers mounted writable (a root daemon on a v1 or hybrid host, such as a container). Each start
of an agent gets `lazarus/<cell>/<agent>-<incarnation>` below the daemon's own cgroup, so whatever
bounds the daemon (its unit, its container) still bounds every agent."""

from __future__ import annotations

import contextlib
import functools
import os
import signal
import time
from pathlib import Path

from msgspec import Struct

from .limits import size_bytes

__all__ = ["CPU_PERIOD", "Group", "Hierarchy", "KINDS", "create", "end", "hierarchy", "members", "oom_killed",
           "procs_files", "settle", "sweep"]

KINDS = ("memory", "cpu", "pids")  # what a cgroup holds here; nofile stays an rlimit
CPU_PERIOD = 100_000  # µs: `cpu=1.5` is 150 ms of cpu time in every 100 ms
_MOUNTS = Path("/proc/self/mounts")
_OWN = Path("/proc/self/cgroup")
LEAF = "lazarus-daemon"  # v2: the daemon's own leaf, so its cgroup may hand controllers to agents


class Hierarchy(Struct, frozen=True):
    """Where agents' cgroups go: v2, one directory; v1, one per controller (memory, cpu, pids)."""

    version: int
    bases: tuple[str, ...]


class Group(Struct, frozen=True):
    """One agent start's cgroup: its directories (one on v2, one per controller on v1)."""

    version: int
    dirs: tuple[str, ...]


def _mounts() -> list[tuple[str, str, set[str]]]:
    """(mount point, fs type, options) of every cgroup file system."""
    out = []
    with contextlib.suppress(OSError):
        for line in _MOUNTS.read_text().splitlines():
            parts = line.split()
            if len(parts) >= 4 and parts[2] in ("cgroup", "cgroup2"):
                out.append((parts[1].replace("\\040", " "), parts[2], set(parts[3].split(","))))
    return out


def _own() -> dict[str, str]:
    """The daemon's own cgroup per v1 controller, and "" (the v2 key) for the unified one."""
    out: dict[str, str] = {}
    with contextlib.suppress(OSError):
        for line in _OWN.read_text().splitlines():
            _, names, path = line.split(":", 2)
            for name in names.split(",") if names else [""]:
                out[name] = path
    return out


def _writable(base: Path) -> bool:
    """A child cgroup can be made and removed under `base`/lazarus."""
    try:
        trial = base / "lazarus" / f".trial-{os.getpid()}"
        trial.mkdir(parents=True, exist_ok=True)
        trial.rmdir()
        return True
    except OSError:
        return False


def _v2(mount: str, own: str) -> Hierarchy | None:
    here = Path(mount) / own.lstrip("/")
    base = here.parent if here.name == LEAF else here
    try:
        if not set(KINDS) <= set((base / "cgroup.controllers").read_text().split()) or not _writable(base):
            return None
        wanted = " ".join(f"+{k}" for k in KINDS)
        for d in (base, base / "lazarus"):
            (d / "cgroup.subtree_control").write_text(wanted)  # EBUSY while a process lives in `base` itself
    except OSError:
        return None
    return Hierarchy(2, (str(base / "lazarus"),))


def settle() -> None:
    """On cgroup v2 the daemon moves itself into a leaf of its own cgroup (a cgroup with processes of its
    own cannot hand controllers to children); its shims follow it there. Nothing to do on v1."""
    own = _own().get("")
    if own is None:
        return
    for mount, kind, _ in _mounts():
        here = Path(mount) / own.lstrip("/")
        if kind != "cgroup2" or here.name == LEAF:
            continue
        with contextlib.suppress(OSError):
            if set(KINDS) <= set((here / "cgroup.controllers").read_text().split()):
                (here / LEAF).mkdir(exist_ok=True)
                (here / LEAF / "cgroup.procs").write_text(str(os.getpid()))
                hierarchy.cache_clear()


@functools.cache
def hierarchy() -> Hierarchy | None:
    """Where this process may give agents cgroups, or None (then rlimits are all there is)."""
    mounts, own = _mounts(), _own()
    for mount, kind, _ in mounts:
        if kind == "cgroup2" and "" in own and (found := _v2(mount, own[""])) is not None:
            return found
    bases = []
    for controller in KINDS:
        where = next((m for m, kind, opts in mounts if kind == "cgroup" and controller in opts), None)
        if where is None or controller not in own:
            return None
        base = Path(where) / own[controller].lstrip("/")
        if not _writable(base):
            return None
        bases.append(str(base / "lazarus"))
    return Hierarchy(1, tuple(bases))


def _settings(version: int, kind: str, value: str) -> list[tuple[str, str]]:
    """The files and values that hold one limit."""
    if kind == "memory":
        n = str(size_bytes(value))
        return [("memory.max", n), ("memory.swap.max", "0")] if version == 2 else \
            [("memory.limit_in_bytes", n), ("memory.memsw.limit_in_bytes", n)]
    if kind == "cpu":
        quota = str(max(1000, round(float(value) * CPU_PERIOD)))
        return [("cpu.max", f"{quota} {CPU_PERIOD}")] if version == 2 else \
            [("cpu.cfs_period_us", str(CPU_PERIOD)), ("cpu.cfs_quota_us", quota)]
    return [("pids.max", value)]


def create(h: Hierarchy, cell_id: str, agent: str, incarnation: str, limits: dict[str, str]) -> Group:
    """A fresh cgroup holding `limits` (memory, cpu, pids); an OSError when the kernel refuses one."""
    name = f"{cell_id}/{agent}-{incarnation}"
    dirs: list[str] = []
    try:
        for i, base in enumerate(h.bases):
            d = Path(base) / name
            d.mkdir(parents=True, exist_ok=True)
            dirs.append(str(d))
            for kind in KINDS if h.version == 2 else (KINDS[i],):
                for file, value in _settings(h.version, kind, limits[kind]) if kind in limits else []:
                    try:
                        (d / file).write_text(value)
                    except FileNotFoundError:
                        if "swap" not in file and "memsw" not in file:  # no swap accounting: nothing to hold
                            raise
    except OSError:
        end(Group(h.version, tuple(dirs)))
        raise
    return Group(h.version, tuple(dirs))


def procs_files(g: Group) -> list[str]:
    """What the agent's process writes "0" to, before it execs, to enter its cgroup."""
    return [os.path.join(d, "cgroup.procs") for d in g.dirs]


def members(g: Group) -> set[int]:
    out: set[int] = set()
    for d in g.dirs:
        with contextlib.suppress(OSError):
            out.update(int(x) for x in Path(d, "cgroup.procs").read_text().split())
    return out


def oom_killed(g: Group) -> bool:
    """The kernel killed something in it for going over its memory limit."""
    for d in g.dirs:
        for file in ("memory.events", "memory.oom_control"):
            with contextlib.suppress(OSError):
                for line in Path(d, file).read_text().splitlines():
                    key, _, value = line.partition(" ")
                    if key == "oom_kill" and value.strip() not in ("", "0"):
                        return True
    return False


def end(g: Group, wait: float = 0.5) -> int:
    """SIGKILL every process still in it (a child that left the process group included), then remove it
    once empty; how many were killed. A cgroup the kernel will not remove yet is left, empty of use."""
    with contextlib.suppress(OSError):
        if g.version == 2:
            Path(g.dirs[0], "cgroup.kill").write_text("1")
    left = members(g)
    for pid in left:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + wait
    while members(g) and time.monotonic() < deadline:  # SIGKILL lands in microseconds; exit takes a moment
        time.sleep(0.002)
    for d in g.dirs:
        with contextlib.suppress(OSError):
            os.rmdir(d)
        with contextlib.suppress(OSError):
            os.rmdir(os.path.dirname(d))  # the cell's directory, once its last agent's is gone
    return len(left)


def sweep(h: Hierarchy, cell_id: str) -> None:
    """At daemon start, before any spawn: the empty cgroups a killed daemon left of a cell's ended starts go
    (the kernel refuses to remove one that still holds a process: a live agent's stays)."""
    for base in h.bases:
        cell = Path(base) / cell_id
        with contextlib.suppress(OSError):
            for d in cell.iterdir():
                if d.is_dir():
                    with contextlib.suppress(OSError):
                        d.rmdir()
        with contextlib.suppress(OSError):
            cell.rmdir()
