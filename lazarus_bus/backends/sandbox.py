"""Isolation levels 2 and 3 (DESIGN section 15): the argv that confines an agent, built as a pure function.

Level 2 wraps the agent's command in bubblewrap, level 3 in `podman run`; both give the same view:
the host read-only, the missions root replaced by an empty directory in which only this cell is
present (read-only) with its `workspace/` and `artifacts/` writable and its `state/` (exit records,
tokens) hidden, the gateway's socket directory bound at the same path, a private `/tmp`, `/dev` and
`/proc`, no capabilities, and no network unless the cell's `network` is "host". The agent appends
through the socket with its per-incarnation token; the log itself is read-only to it."""

from __future__ import annotations

import os
import resource
from collections.abc import Sequence
from pathlib import Path

from msgspec import Struct

from ..limits import Rlimit
from ..probe import BWRAP

__all__ = ["Sandbox", "bwrap_argv", "podman_argv", "socket_dir"]

SOCKET_NAME = "gateway.sock"
SUN_PATH_MAX = 100  # sockaddr_un holds 108 bytes with the NUL; keep a margin


class Sandbox(Struct, frozen=True, kw_only=True):
    """Everything the confining argv depends on, so building it does no I/O."""

    root: str  # the missions root, hidden but for this cell
    cell_dir: str
    network: str = "host"  # or "none"
    socket_dir: str = ""  # the gateway's socket directory, bound at the same path ("" = none)
    hide: tuple[str, ...] = ()  # files outside the root the agent must not read (the tokens file)
    name: str = ""  # level 3: the container's name, so a stop can end it whole


def socket_dir(root: Path) -> Path:
    """Where the daemon binds its socket: under the root's `.lazarus/`, or when that path is too long for
    a Unix socket, a short directory under /tmp named after the root (bound at the same path inside)."""
    here = root.absolute() / ".lazarus" / "run"
    if len(str(here / SOCKET_NAME)) <= SUN_PATH_MAX:
        return here
    import hashlib

    tag = hashlib.sha256(str(root.absolute()).encode()).hexdigest()[:16]
    return Path(f"/tmp/lazarus-{os.getuid()}-{tag}")


def _cell_view(box: Sandbox) -> list[tuple[str, str, str]]:
    """The mounts both levels make, in order: (kind, source, target)."""
    cell = box.cell_dir
    out = [("tmpfs", "", box.root), ("ro", cell, cell), ("rw", f"{cell}/workspace", f"{cell}/workspace"),
           ("rw", f"{cell}/artifacts", f"{cell}/artifacts"), ("tmpfs", "", f"{cell}/state")]
    if box.socket_dir:
        out.append(("ro", box.socket_dir, box.socket_dir))  # connect() needs no write access
    out += [("ro", "/dev/null", path) for path in box.hide]
    return out


def bwrap_argv(box: Sandbox, argv: list[str], cwd: str) -> list[str]:
    """bubblewrap's own flags around `argv`: the mounts above, own pid and IPC namespaces, no network
    when asked, every capability dropped (as root bwrap would keep them), and gone with its parent."""
    out = [BWRAP, "--ro-bind", "/", "/", "--dev", "/dev", "--proc", "/proc", "--tmpfs", "/tmp"]
    for kind, source, target in _cell_view(box):
        if kind == "tmpfs":
            out += ["--tmpfs", target]
        else:
            out += ["--ro-bind" if kind == "ro" else "--bind", source, target]
    out += ["--unshare-pid", "--unshare-ipc", "--cap-drop", "ALL", "--die-with-parent"]
    if box.network == "none":
        out.append("--unshare-net")
    out += ["--chdir", cwd, "--", *argv]
    return out


_ULIMIT = {resource.RLIMIT_NPROC: "nproc", resource.RLIMIT_NOFILE: "nofile"}  # podman has no `as` ulimit


def podman_argv(base: list[str], box: Sandbox, argv: list[str], cwd: str, env: dict[str, str],
                limits: Sequence[Rlimit] = ()) -> list[str]:
    """`podman run` with the flags that work on this machine (`base`, from the probe) and the same view;
    limits become `--ulimit`s of the container, memory `prlimit --as` inside it (podman itself, a Go
    program, would not start under them)."""
    out = [a for a in base if a not in ("--network", "none")]
    out = out[: out.index("--rootfs")] if "--rootfs" in out else out
    inner: list[str] = []
    for lim in limits:
        if lim.resource not in _ULIMIT:
            inner.append(f"--as={lim.value}")
            continue
        name = _ULIMIT[lim.resource]
        for i in range(len(out) - 1):
            if out[i] == "--ulimit" and out[i + 1].startswith(name + "="):
                out[i : i + 2] = []
                break
        out += ["--ulimit", f"{name}={lim.value}:{lim.value}"]
    # (a tmpfs is not filled with what the rootfs, the host's own `/`, has there: notmpcopyup)
    out += ["--name", box.name, "--network", "none" if box.network == "none" else "host", "--read-only",
            "--read-only-tmpfs=false", "--cap-drop", "all", "--security-opt", "no-new-privileges",
            "--mount", "type=tmpfs,destination=/tmp,notmpcopyup", "-w", cwd]
    for kind, source, target in _cell_view(box):
        if kind == "tmpfs":
            out += ["--mount", f"type=tmpfs,destination={target},notmpcopyup"]
        else:
            out += ["--mount", f"type=bind,source={source},destination={target}" + (",ro=true" if kind == "ro" else "")]
    for key in sorted(env):
        out += ["--env", key]  # the value comes from podman's own environment: never in an argv (ps shows those)
    out += ["--rootfs", "/:O", *(["prlimit", *inner, "--"] if inner else []), *argv]
    return out
