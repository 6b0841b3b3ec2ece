"""`lazarus demo`: the newcomer's first run works end to end and leaves nothing running."""

from __future__ import annotations

import os
from pathlib import Path

from tests.conftest import Cli


def test_demo_revives_the_killed_writer_and_cleans_up(cli: Cli, tmp_path: Path) -> None:
    r = cli("demo", "--dir", str(tmp_path / "demo"), timeout=120)
    assert r.code == 0, r.err
    out = r.out
    assert "kill -9 writer" in out and "writer revived" in out
    assert "resume checkpoint:" in out and "none lost, none repeated" in out
    for cmd in ("status", "tail demo", "verify demo"):
        assert cmd in out
    root = tmp_path / "demo" / "missions"
    assert cli.ok("--root", str(root), "verify", "demo").startswith("ok:")
    lingering = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            if os.readlink(f"/proc/{pid}/cwd").startswith(str(root)):
                lingering.append(pid)
        except OSError:
            continue
    assert lingering == []
