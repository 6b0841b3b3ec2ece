"""Agents that do not know Lazarus (section 17): probed from outside, declared dead with `probe_failed`,
brought back by another manager's restart command. Real servers, a real daemon, a real runit."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from lazarus_bus import Cell
from lazarus_bus import events as ev
from lazarus_bus.fold import AgentView
from lazarus_bus.outside import check, run_argv
from lazarus_bus.probes import ProbeSpec, change, fill
from tests.conftest import HELPERS, Cli, Procs
from tests.support import Up, wait

GATEWAY = HELPERS / "gateway.py"
FAST = '[resurrection]\nmode = "yes"\nbackoff_initial = 0.2\n'


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def events_of(cell: Cell, agent: str, kind: str | None = None) -> list[Any]:
    return [e for e in cell.log.read(0) if getattr(e, "agent", None) == agent and (kind is None or e.type == kind)]


def health(port: int) -> dict[str, Any] | None:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2) as resp:
            return json.loads(resp.read())  # type: ignore[no-any-return]
    except OSError:
        return None


def pid_in(pidfile: Path) -> int:
    return int(pidfile.read_text()) if pidfile.exists() else 0


@pytest.fixture
def pidfiles(tmp_path: Path) -> Iterator[list[Path]]:
    """Gateways a restart command started outside the test's process groups are ended by their pid files."""
    files: list[Path] = []
    yield files
    for f in files:
        pid = pid_in(f)
        if pid:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGCONT)
                os.kill(pid, signal.SIGKILL)


# -- pure: what a probe result changes ------------------------------------------------------


def test_only_changes_are_recorded() -> None:
    a = AgentView(name="gw", role="write", probe="http://127.0.0.1:1/health", probe_failures=3)
    ok = change(a, True, 0, {})
    assert isinstance(ok, ev.AgentProbeOk)
    a = AgentView(name="gw", role="write", probe="http://x:1/", probe_failures=3, probe_state="ok")
    assert change(a, True, 0, {}) is None  # still ok: nothing new
    first = change(a, False, 1, {"error": "refused"})
    assert isinstance(first, ev.AgentProbeFailed) and first.failures == 1
    failing = AgentView(name="gw", role="write", probe="http://x:1/", probe_failures=3, probe_state="failing",
                        probe_failed=1)
    assert change(failing, False, 2, {}) is None  # the failures between are not recorded
    limit = change(failing, False, 3, {})
    assert isinstance(limit, ev.AgentProbeFailed) and limit.failures == 3  # the one that makes it dead
    assert isinstance(change(failing, True, 0, {}), ev.AgentProbeOk)


def test_placeholders_are_filled() -> None:
    assert fill(["systemctl", "restart", "hermes-{agent}.service"], cell="forge", agent="ezra", host="h1") == [
        "systemctl", "restart", "hermes-ezra.service"]
    assert fill(["ssh", "{host}", "restart {cell}/{agent}"], cell="forge", agent="ezra", host="h1") == [
        "ssh", "h1", "restart forge/ezra"]


def test_a_bad_probe_is_one_error_and_nothing_is_invited(cli: Cli) -> None:
    cli.ok("cell", "create", "forge")
    for bad in ("ftp://x:1/", "tcp://127.0.0.1", "http://", "127.0.0.1:80"):
        r = cli("agent", "invite", "forge", "gw", "--role", "write", "--probe", bad)
        assert r.code == 2, (bad, r.err)
        assert r.err.startswith("error: ") and len(r.err.strip().splitlines()) == 1 and "--probe" in r.err
    r = cli("agent", "invite", "forge", "gw", "--role", "write", "--restart-cmd", "sh -c 'unbalanced")
    assert r.code == 2 and "--restart-cmd" in r.err
    assert "gw" not in cli.ok("cell", "show", "forge", "--json")


# -- the runner: real sockets and processes -------------------------------------------------


def test_tcp_and_command_probes(procs: Procs, tmp_path: Path) -> None:
    port = free_port()
    spec = ProbeSpec(kind="tcp", url=f"tcp://127.0.0.1:{port}", host="127.0.0.1", port=port, timeout=2)
    ok, detail = asyncio.run(check(spec))
    assert not ok and detail["error"]  # nothing listens
    pidfile = tmp_path / "gw.pid"
    procs.start([sys.executable, str(GATEWAY), str(port), str(pidfile)])
    wait(lambda: health(port), "the gateway")
    assert asyncio.run(check(spec)) == (True, {"probe": f"tcp://127.0.0.1:{port}"})
    ok, detail = asyncio.run(check(ProbeSpec(kind="cmd", argv=["sh", "-c", "echo fine; exit 0"], timeout=5)))
    assert ok and "fine" in detail["output"]
    ok, detail = asyncio.run(check(ProbeSpec(kind="cmd", argv=["sh", "-c", "exit 3"], timeout=5)))
    assert not ok and detail["returncode"] == 3
    started = time.monotonic()
    ok, detail = asyncio.run(check(ProbeSpec(kind="cmd", argv=["sleep", "30"], timeout=0.5)))
    assert not ok and "timed out" in detail["error"] and time.monotonic() - started < 10


def test_a_command_that_leaves_a_server_behind_does_not_hold_the_restart_up(tmp_path: Path,
                                                                          pidfiles: list[Path]) -> None:
    port, pidfile = free_port(), tmp_path / "bg.pid"
    pidfiles.append(pidfile)
    argv = ["sh", "-c", f"echo starting; {sys.executable} {GATEWAY} {port} {pidfile} &"]  # output still on the pipe
    started = time.monotonic()
    done = asyncio.run(run_argv(argv, 30))
    assert done["returncode"] == 0 and "starting" in done["output"]
    assert time.monotonic() - started < 10
    wait(lambda: health(port), "the server it started, still running")


# -- the daemon: probed, killed, declared dead, restarted by the command ---------------------


def test_an_http_agent_that_is_not_a_client_is_probed_killed_and_restarted_by_its_command(
        up: Up, cli: Cli, procs: Procs, tmp_path: Path, pidfiles: list[Path]) -> None:
    up.config(FAST)
    port, pidfile = free_port(), tmp_path / "gw.pid"
    pidfiles.append(pidfile)
    first = procs.start([sys.executable, str(GATEWAY), str(port), str(pidfile)])
    wait(lambda: health(port), "the gateway")
    restart = f"sh -c '{sys.executable} {GATEWAY} {port} {pidfile} >/dev/null 2>&1 & echo restarted {{agent}}'"
    cli.ok("cell", "create", "forge")
    # the restart command returns before the new server listens: the initial delay covers its start
    cli.ok("agent", "invite", "forge", "gw", "--role", "write", "--probe", f"http://127.0.0.1:{port}/health",
           "--probe-period", "0.2", "--probe-timeout", "1", "--probe-failures", "2", "--probe-initial-delay", "3",
           "--restart-cmd", restart)
    up.start()
    cell = up.cell()
    wait(lambda: events_of(cell, "gw", "agent.probe_ok"), "the first probe ok")
    assert cell.refresh().agents["gw"].phase == "running"
    assert [r["health"] for r in _rows(cli, "forge") if r["agent"] == "gw"] == ["healthy"]
    old = pid_in(pidfile)
    os.kill(first.pid, signal.SIGKILL)
    revived = wait(lambda: events_of(cell, "gw", "agent.revived"), "the revival through --restart-cmd")[0]
    assert revived.via == "restart_cmd" and revived.detail["returncode"] == 0
    assert "restarted gw" in revived.detail["output"]  # {agent} filled in, the output's tail kept
    before = [e for e in events_of(cell, "gw") if e.seq < revived.seq]
    dead = [e for e in before if e.type == "agent.declared_dead"]
    assert [d.reason for d in dead] == ["probe_failed"]
    assert dead[0].detail["failures"] == 2 and dead[0].detail["error"]
    failed = [e.failures for e in before if e.type == "agent.probe_failed"]
    assert failed == [1, 2]  # changes only: the first failure and the one that reached the limit
    planned = [e for e in before if e.type == "revival.planned"]
    assert [(p.action, p.attempt) for p in planned] == [("restart", 1)]
    wait(lambda: pid_in(pidfile) not in (0, old) and health(port), "the new gateway answering")
    wait(lambda: events_of(cell, "gw", "agent.probe_ok")[-1].seq > revived.seq, "probed ok again after the revival",
         timeout=90)
    assert cell.refresh().agents["gw"].phase == "running"
    assert cli.ok("verify", "forge").startswith("ok:")


def _rows(cli: Cli, cell: str) -> list[dict[str, Any]]:
    """The agent rows of `status CELL --json`."""
    return list(json.loads(cli.ok("status", cell, "--json"))["cells"][0]["agents"])


def test_a_restart_command_that_fails_is_a_death_and_escalates_after_max_attempts(
        up: Up, cli: Cli, procs: Procs, tmp_path: Path) -> None:
    up.config('[resurrection]\nmode = "yes"\nbackoff_initial = 0.1\nbackoff_max = 0.2\nmax_attempts = 2\n')
    port = free_port()
    cli.ok("cell", "create", "forge")
    cli.ok("agent", "invite", "forge", "gw", "--role", "write", "--probe", f"tcp://127.0.0.1:{port}",
           "--probe-period", "0.1", "--probe-failures", "1", "--restart-cmd", "sh -c 'echo no such unit >&2; exit 5'")
    up.start()
    cell = up.cell()
    wait(lambda: any(p.action == "escalated" for p in events_of(cell, "gw", "revival.planned")), "escalation")
    dead = events_of(cell, "gw", "agent.declared_dead")
    assert [d.reason for d in dead] == ["probe_failed", "restart_failed", "restart_failed"]
    assert dead[1].detail["returncode"] == 5 and "no such unit" in dead[1].detail["output"]
    assert [p.action for p in events_of(cell, "gw", "revival.planned")] == ["restart", "restart", "escalated"]
    assert not events_of(cell, "gw", "agent.revived")
    assert [r["revival"] for r in _rows(cli, "forge") if r["agent"] == "gw"] == ["escalated"]


def test_a_wedged_server_is_caught_by_the_probe_timeout_and_delays_no_other_probe(
        up: Up, cli: Cli, procs: Procs, tmp_path: Path) -> None:
    up.config('[resurrection]\nmode = "no"\n')
    wedged_port, fine_port, hits = free_port(), free_port(), tmp_path / "hits"
    procs.start([sys.executable, str(GATEWAY), str(wedged_port), str(tmp_path / "w.pid"), "--wedged"])
    procs.start([sys.executable, str(GATEWAY), str(fine_port), str(tmp_path / "f.pid"), str(hits)])
    wait(lambda: health(fine_port) and (tmp_path / "w.pid").exists(), "both servers")
    cli.ok("cell", "create", "forge")
    cli.ok("agent", "invite", "forge", "stuck", "--role", "write", "--probe", f"http://127.0.0.1:{wedged_port}/health",
           "--probe-period", "0.2", "--probe-timeout", "3", "--probe-failures", "2")
    cli.ok("agent", "invite", "forge", "fine", "--role", "write", "--probe", f"http://127.0.0.1:{fine_port}/health",
           "--probe-period", "0.2", "--probe-timeout", "3")
    up.start()
    cell = up.cell()
    dead = wait(lambda: events_of(cell, "stuck", "agent.declared_dead"), "the wedged agent's death", timeout=90)[0]
    assert dead.reason == "probe_failed" and "timed out after 3 s" in dead.detail["error"]
    first_failure = events_of(cell, "stuck", "agent.probe_failed")[0]
    assert dead.ts - first_failure.ts >= 2.5  # the second probe waited its whole timeout too
    # meanwhile the healthy agent was probed every 0.2 s: one hung probe never delays another
    during = [float(t) for t in hits.read_text().split() if first_failure.ts <= float(t) <= dead.ts]
    assert len(during) >= 5, during
    assert [e.type for e in events_of(cell, "fine") if e.type.startswith("agent.probe")] == ["agent.probe_ok"]
    assert [p.action for p in events_of(cell, "stuck", "revival.planned")] == ["suppressed"]
    # the daemon's own loop stayed free: its status is fresh
    status = json.loads((up.root_dir / ".lazarus" / "daemon.json").read_bytes())
    assert time.time() - status["last_tick"] < 5


@pytest.mark.skipif(shutil.which("runsv") is None, reason="runit is not installed (apt-get install runit)")
def test_an_agent_under_runit_is_restarted_through_sv(up: Up, cli: Cli, procs: Procs, tmp_path: Path,
                                                      pidfiles: list[Path]) -> None:
    up.config(FAST)
    port, pidfile, svc = free_port(), tmp_path / "gw.pid", tmp_path / "sv" / "hermes-gw"
    pidfiles.append(pidfile)
    svc.mkdir(parents=True)
    run = svc / "run"
    run.write_text(f"#!/bin/sh\nexec {sys.executable} {GATEWAY} {port} {pidfile} 2>&1\n")
    run.chmod(0o755)
    procs.start(["runsv", str(svc)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wait(lambda: health(port), "the gateway under runsv")
    cli.ok("cell", "create", "forge")
    cli.ok("agent", "invite", "forge", "gw", "--role", "write", "--probe", f"http://127.0.0.1:{port}/health",
           "--probe-period", "0.2", "--probe-timeout", "1", "--probe-failures", "2", "--probe-initial-delay", "3",
           "--restart-cmd", f"sv restart {svc}")
    up.start()
    cell = up.cell()
    wait(lambda: events_of(cell, "gw", "agent.probe_ok"), "the first probe ok")
    old = pid_in(pidfile)
    os.kill(old, signal.SIGSTOP)  # wedged: runsv sees it running, only a probe from outside notices
    revived = wait(lambda: events_of(cell, "gw", "agent.revived"), "the revival through sv", timeout=90)[0]
    assert revived.via == "restart_cmd" and revived.detail["returncode"] == 0
    assert revived.detail["argv"] == ["sv", "restart", str(svc)] and "run:" in revived.detail["output"]
    dead = [e for e in events_of(cell, "gw", "agent.declared_dead") if e.seq < revived.seq]
    assert [d.reason for d in dead] == ["probe_failed"] and "timed out" in dead[0].detail["error"]
    wait(lambda: pid_in(pidfile) not in (0, old) and health(port), "runsv's new gateway answering")
    assert health(port)["pid"] == pid_in(pidfile)  # type: ignore[index]
    wait(lambda: events_of(cell, "gw", "agent.probe_ok")[-1].seq > revived.seq, "probed ok after the restart",
         timeout=90)


def test_an_agent_of_another_manager_stops_and_starts_with_its_cell(up: Up, cli: Cli, tmp_path: Path) -> None:
    up.config(FAST)
    record = tmp_path / "manager.log"
    cli.ok("cell", "create", "forge")
    cli.ok("agent", "invite", "forge", "gw", "--role", "write",
           "--stop-cmd", f"sh -c 'echo stop {{agent}} {{cell}} >> {record}'",
           "--start-cmd", f"sh -c 'echo start {{agent}} >> {record}'")
    cli.ok("cell", "activate", "forge")
    up.start()

    def said() -> list[str]:
        return record.read_text().splitlines() if record.exists() else []

    cli.ok("cell", "freeze", "forge")
    wait(lambda: said() == ["stop gw forge"], "its stop command on the freeze")
    cli.ok("cell", "thaw", "forge")
    wait(lambda: said()[1:] == ["start gw"], "its start command on the thaw")
    cli.ok("agent", "stop", "forge", "gw")
    wait(lambda: said()[2:] == ["stop gw forge"], "its stop command on `agent stop`")
    cli.ok("agent", "start", "forge", "gw")
    wait(lambda: said()[3:] == ["start gw"], "its start command on `agent start`")
    cli.ok("cell", "archive", "forge")
    wait(lambda: said()[4:] == ["stop gw forge"], "its stop command with the archive")
