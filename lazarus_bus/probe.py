"""What this machine can give at each isolation level, found by trying it (DESIGN section 15).

A level is never assumed from a binary's presence: bubblewrap and Podman are each run once with the
flags the backend uses, and the reason a trial failed is their own words. The answer is kept for the
life of the process (probed once per daemon start, and at each `cell create`)."""

from __future__ import annotations

import functools
import os
import resource
import shutil
import subprocess

from msgspec import Struct

from . import cgroups

__all__ = ["BWRAP", "Level", "Limits", "level", "levels", "limits_support", "podman_base",
           "problem", "reset"]

BWRAP = "/usr/bin/bwrap"
TRIAL_TIMEOUT = 60.0


class Level(Struct, frozen=True, kw_only=True):
    """One isolation level on this machine: whether it runs, what it needs, and why not."""

    level: int
    ok: bool
    needs: str
    detail: str = ""  # how it runs here, or the reason it does not (the tool's own words)


class Limits(Struct, frozen=True, kw_only=True):
    """How limits are enforced here: cgroups where the daemon can write them, else prlimit."""

    via: str  # "cgroup" or "prlimit"
    detail: str


def _run(argv: list[str]) -> tuple[bool, str]:
    try:
        done = subprocess.run(argv, stdin=subprocess.DEVNULL, capture_output=True, timeout=TRIAL_TIMEOUT,
                              cwd="/", start_new_session=True)
    except OSError as exc:
        return False, f"{argv[0]}: {exc.strerror}"
    except subprocess.TimeoutExpired:
        return False, f"{argv[0]} did not finish a trial run in {TRIAL_TIMEOUT:.0f} s"
    said = (done.stderr or done.stdout).decode(errors="replace").strip().splitlines()
    return done.returncode == 0, (said[-1] if said else f"exit status {done.returncode}")


def _bwrap() -> Level:
    needs = f"bubblewrap ({BWRAP}) able to make user, mount, pid and network namespaces"
    if not os.access(BWRAP, os.X_OK):
        return Level(level=2, ok=False, needs=needs,
                     detail=f"{BWRAP} is not installed (Debian: apt install bubblewrap)")
    ok, said = _run([BWRAP, "--ro-bind", "/", "/", "--dev", "/dev", "--proc", "/proc", "--tmpfs", "/tmp",
                     "--unshare-pid", "--unshare-net", "--die-with-parent", "--", "true"])
    if not ok:
        return Level(level=2, ok=False, needs=needs, detail=f"bubblewrap cannot run here: {said}")
    return Level(level=2, ok=True, needs=needs, detail=f"{BWRAP} runs (as uid {os.getuid()})")


def podman_base() -> list[str] | None:
    """`podman [global flags] run [flags]` as they work on this machine, or None when Podman cannot run.

    Found by trying, in order: Podman as configured; then with runc (crun refuses cgroups in hybrid
    mode), the host's cgroups (read-only), rlimits no higher than the daemon's own (without
    CAP_SYS_RESOURCE, raising them fails) and an overlay over `/` (pivot_root onto the live `/` is busy)."""
    return _podman_trials()[0]


@functools.cache
def _podman_trials() -> tuple[list[str] | None, str]:
    podman = shutil.which("podman")
    if podman is None:
        return None, "podman is not installed (Debian: apt install podman)"
    nofile = resource.getrlimit(resource.RLIMIT_NOFILE)
    nproc = resource.getrlimit(resource.RLIMIT_NPROC)

    def lim(v: int, cap: int | None) -> str:
        if cap is not None:
            v = cap if v == resource.RLIM_INFINITY else min(v, cap)
        return str(v) if v != resource.RLIM_INFINITY else "-1"

    plain = [podman, "run", "--rm", "--network", "none", "--rootfs", "/:O"]
    ok, first = _run([*plain, "true"])
    if ok:
        return plain, ""
    reasons = [first]
    if not shutil.which("runc"):
        reasons.append("runc (which copes with hybrid cgroups where crun does not) is not installed")
        return None, "; ".join(reasons)
    said = ""
    # the container's init may not raise a limit it lacks: try ours, then lower ones
    for cap in (None, 32768, 4096):
        ulimits = ["--ulimit", f"nofile={lim(nofile[0], cap)}:{lim(nofile[1], cap)}",
                   "--ulimit", f"nproc={lim(nproc[0], cap)}:{lim(nproc[1], cap)}"]
        tuned = [podman, "--runtime", "runc", "run", "--rm", "--cgroupns=host",
                 "-v", "/sys/fs/cgroup:/sys/fs/cgroup:ro", *ulimits, "--network", "none", "--rootfs", "/:O"]
        ok, said = _run([*tuned, "true"])
        if ok:
            return tuned, f"run with these flags, since its default configuration fails here ({first})"
    reasons.append(f"with runc: {said}")
    return None, "; ".join(reasons)


def _podman() -> Level:
    needs = "Podman with a runtime that starts containers here (rootless when the daemon is not root)"
    base = podman_base()
    if base is None:
        reason = _podman_trials()[1]
        return Level(level=3, ok=False, needs=needs, detail=f"Podman cannot run a container here: {reason}")
    how = " ".join(base[1:])
    mode = "rootless" if os.getuid() != 0 else "as root (the daemon runs as root: not rootless)"
    note = _podman_trials()[1]
    return Level(level=3, ok=True, needs=needs, detail=f"podman runs {mode}: {how}" + (f"; {note}" if note else ""))


@functools.cache
def level(n: int) -> Level:
    """The probe of one level, once per process."""
    if n == 1:
        return Level(level=1, ok=True, needs="nothing (a directory and a reduced environment; it confines nothing)",
                     detail="always available")
    if n == 2:
        return _bwrap()
    if n == 3:
        return _podman()
    return Level(level=n, ok=False, needs="", detail=f"isolation level {n} does not exist (use 1, 2 or 3)")


def levels() -> list[Level]:
    return [level(n) for n in (1, 2, 3)]


def problem(n: int) -> str | None:
    """Why this machine cannot give level `n`, or None when it can."""
    found = level(n)
    if found.ok:
        return None
    return found.detail if n not in (2, 3) else f"isolation level {n} unavailable: {found.detail}"


def reset() -> None:
    """Forget what was probed (the daemon probes again at each start)."""
    level.cache_clear()
    _podman_trials.cache_clear()
    limits_support.cache_clear()
    cgroups.hierarchy.cache_clear()


@functools.cache
def limits_support() -> Limits:
    """How this machine enforces `--limit`: the agent's own cgroup where the daemon can write one, else rlimits."""
    found = cgroups.hierarchy()
    if found is not None:
        where = ", ".join(found.bases)
        return Limits(via="cgroup", detail=(f"cgroup v{found.version} under {where}: memory (no swap), cpu (a "
                                            "quota of cores) and pids by the kernel, nofile as RLIMIT_NOFILE; "
                                            "a memory kill is named in the death's detail"))
    return Limits(via="prlimit", detail=(
        "no writable cgroup (v2 with the memory, cpu and pids controllers delegated, or v1 mounted writable): "
        "rlimits, memory as address space (RLIMIT_AS), pids as the user's processes (RLIMIT_NPROC), nofile as "
        "RLIMIT_NOFILE; cpu (a share of cores) is not enforced"))
