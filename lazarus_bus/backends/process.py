"""The process backend: a forked shim per agent that outlives the daemon and records the exit status."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import resource
import select
import signal
import subprocess
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from secrets import token_hex, token_urlsafe

import msgspec
from msgspec import Struct

from .. import cgroups, probe
from ..cells import Cell
from ..errors import LazarusError, Refused
from ..files import atomic_write
from ..fold import AgentView
from ..limits import Rlimit, rlimits
from ..logrotate import RotatingLog
from ..secrets import Masker, read_secrets
from .sandbox import SOCKET_NAME, Sandbox, bwrap_argv, podman_argv

__all__ = ["Exit", "Proc", "ProcessBackend", "alive", "start_time_of"]

GO = b"g"
KEPT_ENV = ("PATH", "HOME", "LANG", "TZ")  # level 1 and up: of the daemon's environment, only these (and passthrough)
QUIET = 0.2  # seconds of silence after which a masked tail held back (a possible split secret) is written
RESET_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGPIPE, signal.SIGXFSZ, signal.SIGCHLD)


class Proc(Struct, frozen=True, kw_only=True):
    """A supervised agent process and its shim, identified by pid plus start time."""

    cell: str
    agent: str
    pid: int
    start_time: float
    shim_pid: int
    shim_start: float
    attempt: int = 1
    container: str = ""  # level 3: the Podman container, ended by name as well as by its group
    cgroup: cgroups.Group | None = None  # levels 1 and 2, where the daemon can write cgroups


def _group_of(raw: object) -> cgroups.Group | None:
    """The cgroup a start record names (None for one without, or unreadable)."""
    try:
        return msgspec.convert(raw, cgroups.Group) if raw else None
    except msgspec.ValidationError:
        return None


class Exit(Struct, frozen=True, kw_only=True):
    """How an agent process ended, as its shim saw it (both None when nobody saw it)."""

    pid: int
    returncode: int | None = None
    signal: int | None = None


_BOOT: float | None = None
_TICKS = os.sysconf("SC_CLK_TCK")


def _boot_time() -> float:
    global _BOOT
    if _BOOT is None:
        with open("/proc/stat", "rb") as f:
            for line in f:
                if line.startswith(b"btime "):
                    _BOOT = float(line.split()[1])
                    break
            else:  # pragma: no cover - every Linux has btime
                _BOOT = 0.0
    return _BOOT


def start_time_of(pid: int) -> float | None:
    """A process's start time (epoch seconds) from /proc: with the pid, it names one process for good."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            raw = f.read()
    except OSError:
        return None
    fields = raw[raw.rfind(b")") + 2 :].split()
    if fields[0] in (b"Z", b"X"):
        return None  # a zombie has finished
    return round(_boot_time() + int(fields[19]) / _TICKS, 2)


def alive(pid: int, start_time: float) -> bool:
    """The very process that was started then, not another that reuses its pid."""
    now = start_time_of(pid) if pid > 0 else None
    return now is not None and abs(now - start_time) < 0.015


def group_members(pgid: int, session: int, since: float) -> list[int]:
    """The live processes of one agent's process group (its children, orphaned or not), never another's:
    the same session where known (the shim's), and started no earlier than the agent itself."""
    out = []
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            with open(f"/proc/{entry.name}/stat", "rb") as f:
                raw = f.read()
        except OSError:
            continue
        fields = raw[raw.rfind(b")") + 2 :].split()
        if int(fields[2]) != pgid or fields[0] in (b"Z", b"X") or (session and int(fields[3]) != session):
            continue
        if _boot_time() + int(fields[19]) / _TICKS < since - 0.02:
            continue
        out.append(int(entry.name))
    return out


def _close_fds_except(keep: set[int]) -> None:
    top = os.sysconf("SC_OPEN_MAX")
    low = 3
    for fd in sorted(keep):
        if fd >= low:
            os.closerange(low, fd)
            low = fd + 1
    os.closerange(low, top if top > 0 else 65536)


def _agent_child(argv: list[str], env: dict[str, str], cwd: str, go_r: int, out: int,
                 limits: Sequence[Rlimit], joins: Sequence[str]) -> None:
    """In the agent's own process: wait for the word that its start is durable, then exec."""
    try:
        os.setpgid(0, 0)
        for sig in RESET_SIGNALS:
            signal.signal(sig, signal.SIG_DFL)
        if os.read(go_r, 1) != GO:
            os._exit(127)  # the daemon died before the start was recorded: never run unrecorded
        os.close(go_r)
        null = os.open(os.devnull, os.O_RDONLY)
        os.dup2(null, 0)
        os.dup2(out, 1)
        os.dup2(out, 2)
        os.closerange(3, 65536)
        for path in joins:  # into its own cgroup before it can run anything: its children are born there
            try:
                fd = os.open(path, os.O_WRONLY)
                os.write(fd, b"0")
                os.close(fd)
            except OSError as exc:
                os.write(2, f"lazarus: cannot enter the cgroup {path}: {exc.strerror}\n".encode())
                os._exit(126)
        for lim in limits:
            try:
                resource.setrlimit(lim.resource, (lim.value, lim.value))
            except (OSError, ValueError) as exc:
                os.write(2, f"lazarus: cannot set the limit {lim.names}: {exc}\n".encode())
                os._exit(126)
        os.chdir(cwd)
        try:
            os.execvpe(argv[0], argv, env)
        except OSError as exc:
            os.write(2, f"lazarus: cannot start {argv[0]}: {exc.strerror}\n".encode())
    finally:
        os._exit(127)


def _pump(pid: int, out_r: int, out: RotatingLog, masker: Masker) -> None:
    """The shim copies the agent's output into its log, rotated at `[logs] max_bytes`, with every secret
    masked, until the agent ends."""
    pidfd = os.pidfd_open(pid)
    poller = select.poll()
    poller.register(out_r, select.POLLIN)
    poller.register(pidfd, select.POLLIN)
    os.set_blocking(out_r, False)
    done = False
    while not done:
        ready = poller.poll(int(QUIET * 1000) if masker.held else None)
        if not ready:
            out.write(masker.flush())
            continue
        for fd, _ in ready:
            if fd == pidfd:
                done = True  # the agent ended: what its pipe still holds is read below, then stop
        while True:
            try:
                chunk = os.read(out_r, 65536)
            except BlockingIOError:
                break
            if not chunk:
                done = True
                break
            out.write(masker.feed(chunk))
    out.write(masker.flush())
    out.close()
    os.close(pidfd)


def _shim(argv: list[str], env: dict[str, str], cwd: str, log: tuple[str, int, int], exit_dir: str, agent: str,
          go_r: int, info_w: int, masks: list[str], limits: Sequence[Rlimit], joins: Sequence[str]) -> None:
    """The agent's parent: its own session, deaf to the signals meant for the agent, records the exit."""
    try:
        os.setsid()
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            signal.signal(sig, signal.SIG_IGN)
        signal.signal(signal.SIGCHLD, signal.SIG_DFL)
        _close_fds_except({go_r, info_w})
        null = os.open(os.devnull, os.O_RDWR)
        for fd in (0, 1, 2):
            os.dup2(null, fd)  # the daemon's terminal or pipes are not the shim's to hold open
        os.close(null)
        out_r, out_w = os.pipe()  # always through the shim: it masks secrets and rotates the file
        pid = os.fork()
        if pid == 0:
            os.close(info_w)
            os.close(out_r)
            _agent_child(argv, env, cwd, go_r, out_w, limits, joins)
        os.close(out_w)
        # in the parent too, so the agent's group exists before its pid is reported (whichever runs first)
        with contextlib.suppress(PermissionError, ProcessLookupError):  # the child did it and exec'd, or is gone
            os.setpgid(pid, pid)
        os.close(go_r)
        os.write(info_w, pid.to_bytes(4, "little"))
        os.close(info_w)
        _pump(pid, out_r, RotatingLog(*log), Masker(masks))
        while True:
            try:
                _, status = os.waitpid(pid, 0)
                break
            except InterruptedError:  # pragma: no cover - PEP 475 retries
                continue
        code = os.waitstatus_to_exitcode(status)
        body = {"pid": pid, "returncode": code if code >= 0 else None, "signal": -code if code < 0 else None,
                "ts": time.time()}
        path = os.path.join(exit_dir, f"{agent}.{pid}.exit")
        tmp = path + ".tmp"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        os.write(fd, json.dumps(body).encode())
        os.fsync(fd)
        os.close(fd)
        os.rename(tmp, path)
    finally:
        os._exit(0)


class ProcessBackend:
    """Levels 1 to 3: cwd, a reduced environment, own process group, output captured in the cell's logs;
    at level 2 inside bubblewrap, at level 3 inside Podman (`sandbox`)."""

    def __init__(self, host: str, grace: float = 5.0, *, passthrough: Sequence[str] = (),
                 limits: dict[str, str] | None = None, socket_dir: Path | None = None,
                 hide: Sequence[str] = (), log_max_bytes: int = 10 * 1024 * 1024, log_keep: int = 5) -> None:
        self.host = host
        self.log_max_bytes = log_max_bytes
        self.log_keep = log_keep
        self.grace = grace
        self.passthrough = tuple(passthrough)
        self.default_limits = dict(limits or {})
        self.socket_dir = socket_dir
        self.hide = tuple(hide)
        self.tokens: dict[str, tuple[str, str, str]] = {}  # sha256 of a token -> (cell id, agent, incarnation)
        self.masks: dict[tuple[str, str], list[str]] = {}  # (cell id, agent) -> the secret values it was given
        self.oom: set[tuple[str, str]] = set()  # (cell id, agent) whose last end was the kernel's memory kill

    @staticmethod
    def state_dir(cell: Cell) -> Path:
        return cell.state_dir / "agents"

    def environment(self, cell: Cell, a: AgentView, resume: str, incarnation: str = "", epoch: int = 0
                    ) -> dict[str, str]:
        """PATH, HOME, LANG, TZ and the `[isolation] env_passthrough` names of the daemon's environment,
        the LAZARUS_* variables, then the invite's `env`: nothing else of the daemon's reaches an agent."""
        env = {k: os.environ[k] for k in (*KEPT_ENV, *self.passthrough)
               if k in os.environ and not k.startswith("LAZARUS_")}
        env.update({
            "LAZARUS_CELL": cell.id, "LAZARUS_CELL_DIR": str(cell.dir), "LAZARUS_ROOT": str(cell.root.path),
            "LAZARUS_AGENT": a.name, "LAZARUS_ROLE": a.role, "LAZARUS_RESUME": resume,
            "LAZARUS_INCARNATION": incarnation, "LAZARUS_EPOCH": str(epoch),
        })
        env.update(a.env)
        return env

    def limits_for(self, a: AgentView, isolation: int = 1) -> dict[str, str]:
        """The limits this agent gets (the invite's over `[isolation] limits`) as enforced here, with `via`;
        a kind nothing here can enforce (cpu without cgroups) is left out, never pretended."""
        wanted = {**self.default_limits, **a.limits}
        if not wanted:
            return {}
        if isolation < 3 and cgroups.hierarchy() is not None and set(wanted) & set(cgroups.KINDS):
            return {**wanted, "via": "cgroup"}  # memory, cpu and pids by the kernel; nofile as an rlimit
        calls, _ = rlimits(wanted)  # level 3 too: the container gets them as ulimits and `prlimit --as`
        enforced = {k: wanted[k] for k in wanted if any(c.names.startswith(k + "=") for c in calls)}
        return {**enforced, "via": "prlimit"} if enforced else {}

    def issue_token(self, cell: Cell, agent: str, incarnation: str) -> str:
        """A fresh token naming this incarnation of the agent; only its hash is kept (memory and `state/`)."""
        token = f"lzi_{token_urlsafe(32)}"
        digest = hashlib.sha256(token.encode()).hexdigest()
        sdir = self.state_dir(cell)
        sdir.mkdir(parents=True, exist_ok=True)
        atomic_write(sdir / f"{agent}.token", json.dumps({"sha256": digest, "incarnation": incarnation}).encode())
        self.tokens = {k: v for k, v in self.tokens.items() if v[:2] != (cell.id, agent)}
        self.tokens[digest] = (cell.id, agent, incarnation)
        return token

    def load_token(self, cell: Cell, a: AgentView) -> None:
        """After a daemon restart: the token of an agent it re-adopts is valid again."""
        try:
            rec = json.loads((self.state_dir(cell) / f"{a.name}.token").read_bytes())
        except (OSError, ValueError):
            return
        if rec.get("incarnation") == a.incarnation and isinstance(rec.get("sha256"), str):
            self.tokens[rec["sha256"]] = (cell.id, a.name, a.incarnation)

    def token_identity(self, digest: str) -> tuple[str, str, str] | None:
        return self.tokens.get(digest)

    def _confined(self, cell: Cell, a: AgentView, level: int, network: str, env: dict[str, str],
                  pid_hint: str, limits: Sequence[Rlimit]) -> tuple[list[str], str]:
        """The argv that runs the agent at its cell's level, and the container's name at level 3."""
        if level <= 1:
            return list(a.command), ""
        problem = probe.problem(level)
        if problem:
            raise Refused(problem)  # never silently downgraded
        box = Sandbox(root=str(cell.root.path.absolute()), cell_dir=str(cell.dir.absolute()), network=network,
                      socket_dir=str(self.socket_dir) if self.socket_dir else "",
                      hide=tuple(h for h in self.hide if h and os.path.exists(h)),
                      name=f"lazarus-{cell.id[:12]}-{a.name}-{pid_hint}")
        cwd = str(cell.workspace.absolute())
        if level == 2:
            return bwrap_argv(box, list(a.command), cwd), ""
        base = probe.podman_base()
        assert base is not None
        return podman_argv(base, box, list(a.command), cwd, env, limits), box.name

    def spawn(self, cell: Cell, a: AgentView, *, attempt: int, resume: str, incarnation: str = "", epoch: int = 0,
              record: Callable[[int, float], None]) -> Proc:
        """Fork the shim and the agent; `record` makes the start durable before the agent may exec."""
        if not a.command:
            raise LazarusError(f"agent {a.name} has no command to run")
        view = cell.projection or cell.refresh()
        sdir = self.state_dir(cell)
        sdir.mkdir(parents=True, exist_ok=True)
        cell.agent_logs.mkdir(parents=True, exist_ok=True)
        log_path = str(cell.agent_logs / f"{a.name}.log")
        env = self.environment(cell, a, resume, incarnation, epoch)
        values = read_secrets(a.secrets)  # at each spawn: a rotated secret is picked up by the next start
        env.update(values)
        if view.isolation >= 2:
            if self.socket_dir is None:
                raise Refused(f"agent {a.name} (isolation {view.isolation}) needs the daemon's gateway socket")
            env["LAZARUS_SOCKET"] = str(self.socket_dir / SOCKET_NAME)
            env["LAZARUS_TOKEN"] = self.issue_token(cell, a.name, incarnation)
        wanted = {**self.default_limits, **a.limits}
        calls, _ = rlimits(wanted)
        argv, container = self._confined(cell, a, view.isolation, view.network, env, token_hex(4), calls)
        group = self._cgroup(cell, a, view.isolation, incarnation, wanted)
        if container:
            calls = []  # at level 3 the container has them (podman would not start under them)
        elif group is not None:
            calls, _ = rlimits({k: v for k, v in wanted.items() if k not in cgroups.KINDS})
        masks = list(values.values())
        self.masks[(cell.id, a.name)] = masks
        go_r, go_w = os.pipe()
        info_r, info_w = os.pipe()
        shim = os.fork()
        if shim == 0:
            os.close(go_w)
            os.close(info_r)
            _shim(argv, env, str(cell.workspace), (log_path, self.log_max_bytes, self.log_keep), str(sdir), a.name,
                  go_r, info_w, masks, calls, cgroups.procs_files(group) if group else [])
        os.close(go_r)
        os.close(info_w)
        try:
            raw = os.read(info_r, 4)
        finally:
            os.close(info_r)
        if len(raw) != 4:
            os.close(go_w)
            if group is not None:
                cgroups.end(group)
            raise LazarusError(f"could not start agent {a.name}: its shim failed")
        pid = int.from_bytes(raw, "little")
        started = start_time_of(pid) or time.time()
        shim_start = start_time_of(shim) or 0.0
        proc = Proc(cell=cell.id, agent=a.name, pid=pid, start_time=started, shim_pid=shim,
                    shim_start=shim_start, attempt=attempt, container=container, cgroup=group)
        self.forget(cell, a.name, pid)  # an older process's record under a reused pid is not this one's
        try:
            record(pid, started)
        except BaseException:
            os.close(go_w)  # without GO the agent exits 127 and never runs
            with contextlib.suppress(ChildProcessError, OSError):
                os.waitpid(shim, 0)
            self.forget(cell, a.name, pid)
            if group is not None:
                cgroups.end(group)
            raise
        # from here the start is in the log: whatever happens, the shim records how the agent ends
        # only re-adoption after a daemon restart needs this record, and it falls back to the pid
        with contextlib.suppress(OSError):
            atomic_write(sdir / f"{a.name}.json", json.dumps(
                {"pid": pid, "start_time": started, "shim_pid": shim, "shim_start": shim_start,
                 "attempt": attempt, "container": container,
                 "cgroup": msgspec.to_builtins(group) if group else None}).encode())
        try:
            with contextlib.suppress(OSError):  # killed before its go byte: its exit is recorded all the same
                os.write(go_w, GO)
        finally:
            os.close(go_w)
        return proc

    @staticmethod
    def _cgroup(cell: Cell, a: AgentView, isolation: int, incarnation: str, wanted: dict[str, str]
                ) -> cgroups.Group | None:
        """Levels 1 and 2: a cgroup of the agent's own wherever this machine lets the daemon write cgroups,
        holding its memory, cpu and pids limits and ending every process it started, even one that left its
        process group (level 3's container has its own)."""
        h = cgroups.hierarchy()
        if isolation >= 3 or h is None:
            return None
        try:
            return cgroups.create(h, cell.id, a.name, incarnation or token_hex(8), wanted)
        except OSError as exc:
            raise LazarusError(f"cannot give agent {a.name} its cgroup: {exc.strerror or exc}") from None

    def adopt(self, cell: Cell, a: AgentView) -> Proc | Exit:
        """After a daemon restart: the live agent it spawned earlier, or how it ended meanwhile (and then
        whatever its process group left behind is ended)."""
        try:
            rec = json.loads((self.state_dir(cell) / f"{a.name}.json").read_bytes())
        except (OSError, ValueError):
            rec = {}
        shim, shim_start = (rec.get("shim_pid", 0), rec.get("shim_start", 0.0)) if rec.get("pid") == a.pid else (0, 0.0)
        mine = rec.get("pid") == a.pid
        proc = Proc(cell=cell.id, agent=a.name, pid=a.pid, start_time=a.start_time, shim_pid=shim,
                    shim_start=shim_start, attempt=a.attempt, container=str(rec.get("container", "")) if mine else "",
                    cgroup=_group_of(rec.get("cgroup")) if mine else None)
        self.load_token(cell, a)
        with contextlib.suppress(LazarusError):
            self.masks[(cell.id, a.name)] = list(read_secrets(a.secrets).values())
        seen = self.read_exit(cell, a.name, a.pid)
        if seen is None and alive(a.pid, a.start_time):
            return proc
        self.end_group(proc)
        return seen or Exit(pid=a.pid)

    def read_exit(self, cell: Cell, agent: str, pid: int) -> Exit | None:
        """The exit status the shim recorded for this pid, if any."""
        try:
            body = json.loads((self.state_dir(cell) / f"{agent}.{pid}.exit").read_bytes())
        except (OSError, ValueError):
            return None
        return Exit(pid=pid, returncode=body.get("returncode"), signal=body.get("signal"))

    def forget(self, cell: Cell, agent: str, pid: int) -> None:
        """Drop an exit record once the log holds it."""
        with contextlib.suppress(OSError):
            (self.state_dir(cell) / f"{agent}.{pid}.exit").unlink()

    def watch_fd(self, proc: Proc) -> int | None:
        """A pidfd that becomes readable when the shim (else the agent) is gone."""
        for pid, start in ((proc.shim_pid, proc.shim_start), (proc.pid, proc.start_time)):
            if pid and alive(pid, start):
                try:
                    return os.pidfd_open(pid)
                except OSError:
                    continue
        return None

    def reap(self, proc: Proc) -> None:
        """Collect the shim if it is our child, so no zombie stays behind."""
        with contextlib.suppress(ChildProcessError, OSError):
            os.waitpid(proc.shim_pid, os.WNOHANG)

    @staticmethod
    def end_container(proc: Proc) -> None:
        """Level 3: the container goes whole (its processes are conmon's children, not in our group)."""
        if not proc.container:
            return
        with contextlib.suppress(OSError, subprocess.SubprocessError):
            subprocess.run(["podman", "rm", "--force", "--time", "0", "--ignore", proc.container],
                           stdin=subprocess.DEVNULL, capture_output=True, timeout=30, start_new_session=True)

    def end_group(self, proc: Proc) -> int:
        """After the agent itself ended: kill what is left of its process group (a wrapper's workers) and
        its container, so no child outlives a death, a revival or a freeze; how many were killed."""
        self.end_container(proc)
        members = group_members(proc.pid, proc.shim_pid, proc.start_time)
        for pid in members:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signal.SIGKILL)
        if members:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(proc.pid, signal.SIGKILL)  # the group is ours: any member forked since goes too
        if proc.cgroup is None:
            return len(members)
        if cgroups.oom_killed(proc.cgroup):
            self.oom.add((proc.cell, proc.agent))
        return len(members) + cgroups.end(proc.cgroup)  # and what left the group (setsid) but not the cgroup

    def signal(self, proc: Proc, sig: int) -> bool:
        """Signal the agent's process group, if it is still the process we started."""
        if not alive(proc.pid, proc.start_time):
            return False
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return False
        if sig == signal.SIGKILL:
            self.end_container(proc)  # podman dies of SIGKILL without passing it on
        return True
