"""Isolation levels 1 and 2 with real agents under a real daemon and real bubblewrap (DESIGN section 15)."""

from __future__ import annotations

import json
import os
import shlex
import shutil
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from lazarus_bus import Cell, cgroups, probe
from lazarus_bus.backends.process import alive
from tests.conftest import Cli, Procs, kill_supervised
from tests.support import Up, wait

needs_bwrap = pytest.mark.skipif(not probe.level(2).ok, reason=f"level 2 unavailable: {probe.level(2).detail}")
needs_podman = pytest.mark.skipif(not probe.level(3).ok, reason=f"level 3 unavailable: {probe.level(3).detail}")
CONFINED = [pytest.param(2, marks=needs_bwrap), pytest.param(3, marks=needs_podman)]
needs_cgroups = pytest.mark.skipif(cgroups.hierarchy() is None, reason=probe.limits_support().detail)
WITH_CGROUP = [pytest.param(1, marks=needs_cgroups), pytest.param(2, marks=[needs_bwrap, needs_cgroups])]


def script(cell: Cell, name: str, body: str) -> str:
    """An agent's program, kept in its workspace (the one place a level-2 agent surely sees)."""
    path = cell.workspace / name
    path.write_text(body)
    return f"{shlex.quote(sys.executable)} {shlex.quote(str(path))}"


def done(cell: Cell, name: str = "result.json") -> dict[str, object]:
    path = cell.workspace / name
    return wait(lambda: path.exists() and path.read_text().endswith("\n") and json.loads(path.read_text()),
                f"the agent's {name}")  # type: ignore[no-any-return]


def tagged(tag: str) -> list[int]:
    """Live processes whose argv holds `tag`."""
    out = []
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            cmd = Path(f"/proc/{entry.name}/cmdline").read_bytes()
            state = Path(f"/proc/{entry.name}/stat").read_bytes().rsplit(b")", 1)[1].split()[0]
        except OSError:
            continue
        if tag.encode() in cmd and state not in (b"Z", b"X"):
            out.append(int(entry.name))
    return out


PROBE = r'''
import json, os, sys
from pathlib import Path
cell = Path(os.environ["LAZARUS_CELL_DIR"])
root = Path(os.environ["LAZARUS_ROOT"])
TEXT = []
def attempt(what, fn):
    try:
        fn()
        return "ok"
    except OSError as exc:
        return type(exc).__name__ + ": " + (exc.strerror or "")
out = {
    "workspace": attempt("ws", lambda: (cell / "workspace" / "mine.txt").write_text("x")),
    "artifacts": attempt("art", lambda: (cell / "artifacts" / "out.txt").write_text("x")),
    "outside": attempt("out", lambda: Path(sys.argv[1]).write_text("x")),
    "other_workspace": attempt("other", lambda: (Path(sys.argv[2]) / "intruder.txt").write_text("x")),
    "own_log": attempt("log", lambda: open(cell / "logs" / "events.jsonl", "a").write("x")),
    "tokens_file": attempt("tokens", lambda: open(sys.argv[3], "a").write("x")),
    "tokens_read": attempt("tokens", lambda: TEXT.append(open(sys.argv[3]).read())),
    "read_other_cell": attempt("read", lambda: (Path(sys.argv[2]).parent / "cell.json").read_text()),
    "read_own_log": attempt("read log", lambda: (cell / "logs" / "events.jsonl").read_text()),
    "root_listing": sorted(os.listdir(root)),
    "env": {k: v for k, v in os.environ.items() if k in ("ONLY_IN_DAEMON", "PASSED_ON")},
    "socket": os.environ.get("LAZARUS_SOCKET", ""),
    "token": bool(os.environ.get("LAZARUS_TOKEN")),
}
out["tokens_text"] = "".join(TEXT)
(cell / "workspace" / "result.json").write_text(json.dumps(out) + "\n")
'''


@pytest.fixture
def host_dir() -> Iterator[Path]:
    """A directory on the host's own disk (not /tmp, which a level-2 agent has privately)."""
    d = Path("/var/tmp") / f"lazarus-test-{uuid.uuid4().hex}"
    d.mkdir(mode=0o700)
    yield d
    shutil.rmtree(d, ignore_errors=True)


@pytest.mark.parametrize("level", CONFINED)
def test_a_confined_agent_writes_its_workspace_and_nothing_else(up: Up, cli: Cli, host_dir: Path, level: int) -> None:
    tokens = host_dir / "tokens.toml"
    tokens.write_text(f'[[token]]\nsha256 = "{"ab" * 32}"\nidentity = "operator"\n')
    tokens.chmod(0o600)
    before = tokens.read_text()
    up.config(f'[resurrection]\nmode = "no"\n[http]\ntokens_file = "{tokens}"\n')
    cli.ok("cell", "create", "other")
    other = up.cell("other")
    cli.ok("cell", "create", "forge", "--isolation", str(level))
    cell = up.cell()
    outside = host_dir / "outside.txt"
    cmd = script(cell, "probe.py", PROBE) + f" {outside} {other.workspace} {tokens}"
    cli.ok("agent", "invite", "forge", "w", "--role", "write", "--cmd", cmd)
    up.start()
    got = done(cell)
    assert got["workspace"] == "ok" and (cell.workspace / "mine.txt").exists()
    assert got["artifacts"] == "ok" and (cell.artifacts / "out.txt").exists()
    for key in ("outside", "other_workspace", "own_log", "read_other_cell"):
        assert got[key] != "ok", key
    assert not outside.exists() and not (other.workspace / "intruder.txt").exists()
    assert got["tokens_text"] == "" and tokens.read_text() == before  # unreadable, or an empty file at most
    assert got["read_own_log"] == "ok"  # read-only, not hidden
    assert got["root_listing"] == sorted([cell.id, *([".lazarus"] if str(up.root_dir) in got["socket"] else [])])
    assert got["token"] and got["socket"]
    assert cli.ok("verify", "forge").startswith("ok:")
    spawned = [e for e in cell.log.read(0) if e.type == "agent.spawned"]
    assert spawned[0].isolation == level  # type: ignore[attr-defined]


ENV_PROBE = r'''
import json, os
from pathlib import Path
out = {k: os.environ.get(k) for k in ("ONLY_IN_DAEMON", "PASSED_ON", "GIVEN", "LAZARUS_AGENT")}
out["keys"] = sorted(os.environ)
(Path(os.environ["LAZARUS_CELL_DIR"]) / "workspace" / "result.json").write_text(json.dumps(out) + "\n")
'''


def test_a_level_1_agent_sees_only_the_reduced_environment(up: Up, cli: Cli) -> None:
    up.config('[resurrection]\nmode = "no"\n[isolation]\nenv_passthrough = ["PASSED_ON"]\n')
    cli.ok("cell", "create", "forge")
    cell = up.cell()
    cli.ok("agent", "invite", "forge", "w", "--role", "write", "--env", "GIVEN=yes",
           "--cmd", script(cell, "env.py", ENV_PROBE))
    up.start(env={"ONLY_IN_DAEMON": "s3cr3t", "PASSED_ON": "fine"})
    got = done(cell)
    assert got["ONLY_IN_DAEMON"] is None
    assert got["PASSED_ON"] == "fine" and got["GIVEN"] == "yes" and got["LAZARUS_AGENT"] == "w"
    allowed = {"PATH", "HOME", "LANG", "TZ", "PASSED_ON", "GIVEN"}
    extra = [k for k in got["keys"] if k not in allowed and not k.startswith("LAZARUS_")]  # type: ignore[union-attr]
    assert extra in ([], ["PWD"]), extra  # (PWD, SHLVL: set by a shell, not by lazarus)


@pytest.mark.parametrize("level", CONFINED)
def test_network_none_blocks_loopback_tcp(up: Up, cli: Cli, level: int) -> None:
    import socket

    server = socket.create_server(("127.0.0.1", 0))
    port = server.getsockname()[1]
    try:
        body = ("import json, os, socket\nfrom pathlib import Path\n"
                "try:\n    socket.create_connection(('127.0.0.1', %d), timeout=5).close(); r = 'connected'\n"
                "except OSError as exc:\n    r = type(exc).__name__\n"
                "(Path(os.environ['LAZARUS_CELL_DIR']) / 'workspace' / 'result.json')"
                ".write_text(json.dumps({'r': r}) + '\\n')\n") % port
        up.config('[resurrection]\nmode = "no"\n')
        for name, network in (("walled", "none"), ("open", "host")):
            cli.ok("cell", "create", name, "--isolation", str(level), "--network", network)
            cli.ok("agent", "invite", name, "w", "--role", "write", "--cmd", script(up.cell(name), "net.py", body))
        up.start()
        assert done(up.cell("walled"))["r"] != "connected"
        assert done(up.cell("open"))["r"] == "connected"
        assert json.loads((up.cell("walled").dir / "cell.json").read_text())["network"] == "none"
    finally:
        server.close()


TREE = r'''
import os, subprocess, sys, time
tag = sys.argv[1]
# a child that leaves the agent's process group and session: only the sandbox can end it
subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)", tag + "-kid"], start_new_session=True)
print("child started", flush=True)
time.sleep(600)
'''


@pytest.mark.parametrize("level", [pytest.param(1, marks=needs_cgroups), *CONFINED])
def test_a_confined_child_does_not_survive_death_freeze_or_destroy(up: Up, cli: Cli, level: int) -> None:
    up.config('[resurrection]\nmode = "yes"\n')
    cli.ok("cell", "create", "forge", "--isolation", str(level))
    cell = up.cell()
    tag = f"lazarus-test-child-{uuid.uuid4().hex}"
    cli.ok("agent", "invite", "forge", "w", "--role", "write", "--cmd", script(cell, "tree.py", TREE) + f" {tag}")
    tag += "-kid"  # the child's argv alone holds this
    up.start()
    a = wait(lambda: (x := cell.refresh().agents["w"]).phase == "running" and tagged(tag) and x, "agent and child")
    [child] = tagged(tag)
    os.kill(a.pid, 9)  # death: the sandbox goes, and everything in it
    wait(lambda: child not in tagged(tag), "the first child gone with its agent")
    b = wait(lambda: (x := cell.refresh().agents["w"]).spawns == 2 and x.phase == "running" and tagged(tag) and x,
             "the revival and its child")
    cli.ok("cell", "freeze", "forge")
    wait(lambda: cell.refresh().agents["w"].phase == "stopped" and not tagged(tag), "freeze ends the tree")
    assert not alive(b.pid, b.start_time)
    cli.ok("cell", "thaw", "forge")
    wait(lambda: cell.refresh().agents["w"].spawns == 3 and tagged(tag), "thawed, with a child again")
    cli.ok("cell", "archive", "forge")  # (a cell is destroyed once archived)
    cli.ok("cell", "destroy", "forge")
    wait(lambda: not tagged(tag), "archive and destroy end the tree")


def test_a_level_1_child_in_the_group_does_not_survive_death_or_destroy(up: Up, cli: Cli) -> None:
    up.config('[resurrection]\nmode = "yes"\n')
    cli.ok("cell", "create", "forge")
    cell = up.cell()
    tag = f"lazarus-test-child-{uuid.uuid4().hex}"
    body = TREE.replace(", start_new_session=True", "")
    cli.ok("agent", "invite", "forge", "w", "--role", "write", "--cmd", script(cell, "tree.py", body) + f" {tag}")
    tag += "-kid"
    up.start()
    a = wait(lambda: (x := cell.refresh().agents["w"]).phase == "running" and tagged(tag) and x, "agent and child")
    [child] = tagged(tag)
    os.kill(a.pid, 9)
    wait(lambda: child not in tagged(tag), "the child gone with its agent")
    wait(lambda: cell.refresh().agents["w"].spawns == 2 and tagged(tag), "the revival and its child")
    cli.ok("cell", "archive", "forge")  # (a cell is destroyed once archived)
    cli.ok("cell", "destroy", "forge")
    wait(lambda: not tagged(tag), "archive and destroy end the tree")


SECRET_AGENT = r'''
import os, sys, time
print("token is", os.environ["API_KEY"], "and", os.environ["FROM_ENV"], flush=True)
sys.stdout.write(os.environ["API_KEY"][:5]); sys.stdout.flush(); time.sleep(0.05)
sys.stdout.write(os.environ["API_KEY"][5:] + " split across writes\\n"); sys.stdout.flush()
sys.exit(3)
'''


@pytest.mark.parametrize("level", [1, *CONFINED])
def test_a_secret_is_in_the_agent_env_but_never_in_the_log_and_masked_in_its_output(
        up: Up, cli: Cli, host_dir: Path, level: int) -> None:
    value, other = f"sk-{uuid.uuid4().hex}", f"pw-{uuid.uuid4().hex}"
    (host_dir / "key").write_text(value + "\n")
    up.config('[resurrection]\nmode = "no"\n')
    cli.ok("cell", "create", "forge", "--isolation", str(level))
    cell = up.cell()
    cli.ok("agent", "invite", "forge", "w", "--role", "write", "--secret", f"API_KEY=@{host_dir / 'key'}",
           "--secret", "FROM_ENV=env:LAZARUS_TEST_PW", "--cmd", script(cell, "leak.py", SECRET_AGENT))
    up.start(env={"LAZARUS_TEST_PW": other})
    dead = wait(lambda: next((e for e in cell.log.read(0) if e.type == "agent.declared_dead"), None), "its death")
    captured = (cell.agent_logs / "w.log").read_text()
    assert "token is *** and ***" in captured and "*** split across writes" in captured
    assert value not in captured and other not in captured
    raw = b"".join(p.read_bytes() for p in cell.dir.rglob("*") if p.is_file() and p.suffix in (".jsonl", ".json"))
    assert value.encode() not in raw and other.encode() not in raw
    invited = next(e for e in cell.log.read(0) if e.type == "agent.invited")
    assert invited.secrets == {"API_KEY": f"@{host_dir / 'key'}", "FROM_ENV": "env:LAZARUS_TEST_PW"}  # type: ignore[attr-defined]
    assert "***" in dead.detail["log_tail"] and value not in dead.detail["log_tail"]  # type: ignore[attr-defined]


HOG = r'''
import time
print("allocating", flush=True)
hog = b"x" * (256 * 1024 * 1024)  # every page touched: a cgroup counts what is used, not what is mapped
time.sleep(600)
'''


@pytest.mark.parametrize("level", [1, *CONFINED])
def test_an_agent_over_its_memory_limit_dies_with_the_limit_in_detail(up: Up, cli: Cli, level: int) -> None:
    up.config('[resurrection]\nmode = "no"\n')
    cli.ok("cell", "create", "forge", "--isolation", str(level))
    cell = up.cell()
    cli.ok("agent", "invite", "forge", "w", "--role", "write", "--limit", "memory=64M", "--limit", "nofile=256",
           "--cmd", script(cell, "hog.py", HOG))
    up.start()
    dead = wait(lambda: next((e for e in cell.log.read(0) if e.type == "agent.declared_dead"), None), "its death")
    assert dead.detail["limit"] == "memory=64M"  # type: ignore[attr-defined]
    assert dead.detail["limits"] == "memory=64M nofile=256"  # type: ignore[attr-defined]
    spawned = next(e for e in cell.log.read(0) if e.type == "agent.spawned")
    via = "prlimit" if level == 3 else probe.limits_support().via  # a container gets rlimits inside it
    assert spawned.limits == {"memory": "64M", "nofile": "256", "via": via}  # type: ignore[attr-defined]


def test_an_unavailable_level_is_refused_with_the_reason_and_doctor_says_why(cli: Cli) -> None:
    """Without podman on PATH, level 3 is refused at create (exit 4) in Podman's absence's own words."""
    import subprocess

    env = {**cli.env(), "PATH": "/nonexistent"}
    r = subprocess.run(cli.argv("cell", "create", "iso", "--isolation", "3"), env=env, capture_output=True,
                       text=True, timeout=120, start_new_session=True)
    assert r.returncode == 4 and "isolation level 3 unavailable" in r.stderr and "podman" in r.stderr, r.stderr
    assert cli("cell", "show", "iso").code == 3  # nothing was created
    r = subprocess.run(cli.argv("doctor", "--json"), env=env, capture_output=True, text=True, timeout=120,
                       start_new_session=True)
    report = json.loads(r.stdout)
    assert r.returncode == 0 and [x["ok"] for x in report["levels"]][0] is True
    assert report["levels"][2]["ok"] is False and "podman is not installed" in report["levels"][2]["detail"]
    assert report["limits"]["via"] in ("cgroup", "prlimit")
    text = cli.ok("doctor")
    assert "level 1: ok" in text and "level 2:" in text and "limits:" in text


@pytest.mark.parametrize("level", CONFINED)
def test_a_confined_agent_is_readopted_after_a_daemon_restart_and_its_exit_status_kept(
        up: Up, cli: Cli, level: int) -> None:
    up.config('[resurrection]\nmode = "yes"\n')
    cli.ok("cell", "create", "forge", "--isolation", str(level))
    cell = up.cell()
    marker = cell.workspace / "quit"
    body = ("import os, sys, time\nfrom pathlib import Path\nfrom lazarus_bus import client\n"
            "from lazarus_bus.errors import LazarusError\nme = client.connect()\n"
            f"while not Path({str(marker)!r}).exists():\n"
            "    try:\n        me.heartbeat(status='alive')\n    except LazarusError as exc:\n"
            "        print('no daemon:', exc, flush=True)\n"
            "    time.sleep(0.05)\nsys.exit(7)\n")
    cli.ok("agent", "invite", "forge", "w", "--role", "write", "--cmd", script(cell, "wait.py", body))
    first = up.start()
    a = wait(lambda: (x := cell.refresh().agents["w"]).phase == "running" and x, "the first start")
    os.killpg(first.pid, 9)
    first.wait(10)
    assert alive(a.pid, a.start_time)  # the sandbox outlives the daemon (its parent is the shim)
    mark = cell.head().seq
    up.start()
    wait(lambda: "re-adopted" in up.log.read_text(), "re-adoption")  # type: ignore[union-attr]
    wait(lambda: any(e.type == "agent.heartbeat" for e in cell.log.read(mark)),
         "a heartbeat through the new daemon's socket, with the same token")
    marker.write_text("")
    exited = wait(lambda: next((e for e in cell.log.read(0) if e.type == "agent.exited"), None), "its exit")
    assert exited.returncode == 7 and exited.pid == a.pid  # type: ignore[attr-defined]
    wait(lambda: cell.refresh().agents["w"].spawns == 2, "the revival")
    assert [e.type for e in cell.log.read(0)].count("agent.spawned") == 2


SOCKET_AGENT = r'''
import http.client, json, os, socket, subprocess, sys
from pathlib import Path
from lazarus_bus import client

ws = Path(os.environ["LAZARUS_CELL_DIR"]) / "workspace"
out = {}
with client.connect() as me:
    out["heartbeat"] = me.heartbeat(status="inside", cycle=1)
    (ws / "data.txt").write_text("kept")
    out["checkpoint"] = me.checkpoint("halfway", state={"n": 1}, paths=["data.txt"])
    out["published"] = me.publish("notes", {"hi": 1})

    class Unix(http.client.HTTPConnection):
        def connect(self):
            self.sock = socket.socket(socket.AF_UNIX)
            self.sock.connect(os.environ["LAZARUS_SOCKET"])

    def post(body, token=os.environ["LAZARUS_TOKEN"]):
        c = Unix("localhost")
        c.request("POST", f"/cells/{os.environ['LAZARUS_CELL']}/events", json.dumps(body),
                  {"Authorization": f"Bearer {token}", "Content-Type": "application/json"})
        r = c.getresponse()
        return r.status, json.loads(r.read())

    out["forged"] = post({"type": "bus.message", "by": "other", "topic": "t"})
    out["forged_heartbeat"] = post({"type": "agent.heartbeat", "by": "other", "agent": "other"})
    out["no_token"] = post({"type": "bus.message", "by": "w", "topic": "t"}, token="nope")
    cli = [sys.executable, "-m", "lazarus_bus"]
    r = subprocess.run([*cli, "emit", os.environ["LAZARUS_CELL"], "bus.message", "--by", "other",
                        "--data", '{"topic": "t"}'], capture_output=True, text=True)
    out["cli_forged"] = [r.returncode, r.stderr.strip()]
    r = subprocess.run([*cli, "heartbeat", os.environ["LAZARUS_CELL"], "w", "--cycle", "2"],
                       capture_output=True, text=True)
    out["cli_heartbeat"] = [r.returncode, r.stdout.strip(), r.stderr.strip()]
    try:
        open(Path(os.environ["LAZARUS_CELL_DIR"]) / "logs" / "events.jsonl", "a")
        out["log_writable"] = True
    except OSError:
        out["log_writable"] = False
(ws / "result.json").write_text(json.dumps(out) + "\n")
'''


@pytest.mark.parametrize("level", CONFINED)
def test_a_confined_agent_appends_through_the_socket_and_a_forged_by_is_refused(up: Up, cli: Cli, level: int) -> None:
    up.config('[resurrection]\nmode = "no"\n')
    cli.ok("cell", "create", "forge", "--isolation", str(level))
    cli.ok("agent", "invite", "forge", "other", "--role", "write")
    cell = up.cell()
    cli.ok("agent", "invite", "forge", "w", "--role", "write", "--cmd", script(cell, "sock.py", SOCKET_AGENT))
    up.start()
    got = done(cell)
    assert not got["log_writable"]
    assert got["forged"][0] == 403 and "speaks for w" in got["forged"][1]["error"]  # type: ignore[index]
    assert got["forged_heartbeat"][0] == 403  # type: ignore[index]
    assert got["no_token"][0] == 401  # type: ignore[index]
    assert got["cli_forged"][0] == 4 and "speaks for w" in got["cli_forged"][1]  # type: ignore[index]
    assert got["cli_heartbeat"][0] == 0, got["cli_heartbeat"]  # type: ignore[index]
    events = list(cell.log.read(0))
    spawned = next(e for e in events if e.type == "agent.spawned")
    mine = [e for e in events if e.by == "w"]
    assert {e.type for e in mine} >= {"agent.joined", "agent.heartbeat", "checkpoint.created", "bus.message"}
    assert all(getattr(e, "incarnation", spawned.id) == spawned.id for e in mine)  # stamped by the gateway
    assert not [e for e in events if e.by == "other"]
    cp = cell.refresh().checkpoints[got["checkpoint"]]  # type: ignore[index]
    assert cp.archive and (cell.dir / cp.archive).exists()  # archived by the daemon, outside the sandbox
    assert [e.cycle for e in events if e.type == "agent.heartbeat"] == [1, 2]  # type: ignore[attr-defined]
    assert cli.ok("verify", "forge").startswith("ok:")


def _nobody_python() -> str | None:
    """A Python an unprivileged user may run with this checkout on its path (the venv's may sit under /root)."""
    import pwd
    import subprocess

    try:
        pwd.getpwnam("nobody")
    except KeyError:
        return None
    if os.getuid() != 0 or not shutil.which("setpriv") or not os.path.exists("/usr/bin/python3"):
        return None
    v = subprocess.run(["/usr/bin/python3", "-c", "import sys; print(sys.version_info[:2])"], capture_output=True,
                       text=True).stdout.strip()
    return "/usr/bin/python3" if v == str(tuple(sys.version_info[:2])) else None


@needs_bwrap
@pytest.mark.skipif(_nobody_python() is None, reason="needs root, the user nobody, setpriv and a system Python alike")
def test_level_2_works_for_a_daemon_run_by_an_unprivileged_user(host_dir: Path, procs: Procs) -> None:
    import subprocess

    root = host_dir / "missions"
    root.mkdir()
    os.chown(host_dir, 65534, 65534)
    os.chown(root, 65534, 65534)
    site = next(Path(sys.prefix).glob("lib/python3*/site-packages"))
    env = {"HOME": str(host_dir), "LAZARUS_ROOT": str(root), "PATH": "/usr/bin:/bin",
           "PYTHONPATH": f"{Path(__file__).parents[1]}:{site}"}
    nobody = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", "/usr/bin/python3", "-m", "lazarus_bus"]

    def run(*args: str) -> str:
        r = subprocess.run([*nobody, *args], env=env, capture_output=True, text=True, timeout=60)
        assert r.returncode == 0, r.stderr
        return r.stdout.strip()

    cell_id = run("cell", "create", "forge", "--isolation", "2")
    outside = host_dir / "outside.txt"
    run("agent", "invite", "forge", "w", "--role", "write", "--cmd",
        f"sh -c 'id -u > who.tmp; touch {outside} 2> err; mv who.tmp who'")
    daemon = procs.start([*nobody, "up", "--no-http"], env=env)
    try:
        who = root / cell_id / "workspace" / "who"
        wait(lambda: who.exists(), "the agent's answer", proc=daemon)
        assert who.read_text().strip() == "65534"
        assert not outside.exists() and "Read-only" in (root / cell_id / "workspace" / "err").read_text()
    finally:
        daemon.terminate()
        daemon.wait(30)
        kill_supervised(root)


def _cgroup_dirs(cell: Cell, agent: str) -> list[Path]:
    """The cgroup directories the daemon gave the agent's current start (its start record names them)."""
    rec = json.loads((cell.state_dir / "agents" / f"{agent}.json").read_bytes())
    return [Path(d) for d in rec["cgroup"]["dirs"]]


def _cpu_seconds(pids: list[int]) -> float:
    total = 0
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_bytes().rsplit(b")", 1)[1].split()
        except OSError:
            continue
        total += int(fields[11]) + int(fields[12])  # utime + stime, in clock ticks
    return total / os.sysconf("SC_CLK_TCK")


BURN = r'''
print("burning", flush=True)
while True:
    pass
'''


@pytest.mark.parametrize("level", WITH_CGROUP)
def test_an_agent_over_its_cpu_limit_is_held_to_it_by_its_cgroup(up: Up, cli: Cli, level: int) -> None:
    import time

    up.config('[resurrection]\nmode = "no"\n')
    cli.ok("cell", "create", "forge", "--isolation", str(level))
    cell = up.cell()
    cli.ok("agent", "invite", "forge", "w", "--role", "write", "--limit", "cpu=0.2", "--cmd",
           script(cell, "burn.py", BURN))
    up.start()
    wait(lambda: cell.refresh().agents["w"].phase == "running" and "burning" in
         (cell.agent_logs / "w.log").read_text(), "burning")
    spawned = next(e for e in cell.log.read(0) if e.type == "agent.spawned")
    assert spawned.limits == {"cpu": "0.2", "via": "cgroup"}  # type: ignore[attr-defined]
    [cpu] = [d for d in _cgroup_dirs(cell, "w") if (d / "cpu.stat").exists()]
    quota = (cpu / "cpu.max").read_text().split()[0] if (cpu / "cpu.max").exists() else \
        (cpu / "cpu.cfs_quota_us").read_text().strip()
    assert quota == "20000"  # 20 ms in every 100 ms period
    members = [int(x) for x in (cpu / "cgroup.procs").read_text().split()]
    used, t0 = _cpu_seconds(members), time.monotonic()
    stat = lambda: dict(line.split() for line in (cpu / "cpu.stat").read_text().splitlines())  # noqa: E731
    wait(lambda: int(stat()["nr_throttled"]) >= 20, "the kernel throttling it")
    wait(lambda: time.monotonic() - t0 >= 2.0, "two seconds of it", timeout=30)
    share = (_cpu_seconds(members) - used) / (time.monotonic() - t0)
    assert share < 0.4, share  # an unbounded loop takes a whole core


FORKER = r'''
import subprocess, sys, time
tag = sys.argv[1]
kids = [subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)", tag]) for _ in range(30)]
print("all started", flush=True)
time.sleep(600)
'''


@pytest.mark.parametrize("level", WITH_CGROUP)
def test_an_agent_over_its_pids_limit_dies_with_the_limit_in_detail_and_no_child_left(up: Up, cli: Cli,
                                                                                      level: int) -> None:
    up.config('[resurrection]\nmode = "no"\n')
    cli.ok("cell", "create", "forge", "--isolation", str(level))
    cell = up.cell()
    tag = f"lazarus-test-kid-{uuid.uuid4().hex}"
    cli.ok("agent", "invite", "forge", "w", "--role", "write", "--limit", "pids=8", "--cmd",
           script(cell, "forker.py", FORKER) + f" {tag}")
    up.start()
    dead = wait(lambda: next((e for e in cell.log.read(0) if e.type == "agent.declared_dead"), None), "its death")
    assert dead.detail["limit"] == "pids=8", dead.detail  # type: ignore[attr-defined]
    assert "all started" not in (cell.agent_logs / "w.log").read_text()
    wait(lambda: not tagged(tag), "the children it did start, gone with it")
