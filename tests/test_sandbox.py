"""The confining argv is a pure function of the cell's layout: what it mounts, and in which order."""

from __future__ import annotations

from pathlib import Path

from lazarus_bus.backends.sandbox import Sandbox, bwrap_argv, podman_argv, socket_dir
from lazarus_bus.limits import rlimits


def test_bwrap_hides_the_root_but_this_cell_and_drops_everything() -> None:
    box = Sandbox(root="/m", cell_dir="/m/c", network="none", socket_dir="/m/.lazarus/run", hide=("/etc/t.toml",))
    argv = bwrap_argv(box, ["agent", "--x"], "/m/c/workspace")
    joined = " ".join(argv)
    assert argv[-3:] == ["--", "agent", "--x"]
    order = ["--tmpfs /tmp", "--tmpfs /m ", "--ro-bind /m/c /m/c", "--bind /m/c/workspace", "--bind /m/c/artifacts",
             "--tmpfs /m/c/state", "--ro-bind /m/.lazarus/run", "--ro-bind /dev/null /etc/t.toml"]
    positions = [joined.index(o) for o in order]
    assert positions == sorted(positions)
    for flag in ("--unshare-pid", "--unshare-net", "--die-with-parent", "--cap-drop ALL", "--proc /proc", "--dev /dev"):
        assert flag in joined
    assert "--unshare-net" not in bwrap_argv(Sandbox(root="/m", cell_dir="/m/c"), ["a"], "/m/c/workspace")


def test_podman_gets_names_not_values_and_limits_inside() -> None:
    calls, _ = rlimits({"memory": "64M", "nofile": "128"})
    base = ["podman", "run", "--rm", "--ulimit", "nofile=1024:1024", "--network", "none", "--rootfs", "/:O"]
    argv = podman_argv(base, Sandbox(root="/m", cell_dir="/m/c", name="n"), ["agent"], "/w", {"API_KEY": "v"}, calls)
    assert "v" not in argv and "API_KEY" in argv
    assert "nofile=1024:1024" not in argv and "nofile=128:128" in argv
    assert argv[-5:] == ["/:O", "prlimit", f"--as={64 << 20}", "--", "agent"]
    assert "host" in argv and "type=tmpfs,destination=/m,notmpcopyup" in argv


def test_the_socket_path_fits_a_unix_socket(tmp_path: Path) -> None:
    assert socket_dir(Path("/m")) == Path("/m/.lazarus/run")
    deep = tmp_path / ("x" * 120)
    assert len(str(socket_dir(deep) / "gateway.sock")) <= 100
