"""One mission across several machines: the NATS backend end to end, with a real nats-server."""

from __future__ import annotations

import json
import os
import signal
import sys
from pathlib import Path

import pytest

from lazarus_bus import Root, load_config
from lazarus_bus.demo import EXAMPLES
from tests.conftest import HELPERS, Cli, NatsCluster, NatsServer, Procs, nats_toml
from tests.support import BASE, Proxy, Up, base, wait


@pytest.fixture
def nats_root(root_dir: Path, own_nats: NatsServer) -> Path:
    (root_dir / "lazarus.toml").write_text(nats_toml(own_nats, 'fsync = "never"\n'))
    return root_dir


def test_cli_and_status_work_unchanged_on_nats(nats_root: Path, cli: Cli) -> None:
    cid = cli.ok("cell", "create", "forge", "--mission", "span machines").strip()
    cli.ok("agent", "invite", "forge", "ada", "--role", "lead")
    assert cli.ok("heartbeat", "forge", "ada", "--cycle", "3") == "3\n"
    assert cli("cell", "create", "forge").code == 4  # names are unique across the stream
    status = json.loads(cli.ok("status", "--json"))["cells"][0]
    assert status["id"] == cid and status["agents"][0]["health"] == "healthy"
    r = cli("emit", "forge", "bus.message", "--by", "ada", "--data", '{"topic":"t"}', "--expected-seq", "1")
    assert r.code == 4 and "expected seq 1" in r.err
    assert cli.ok("verify", "forge").startswith("ok: 4 events")
    assert [json.loads(x)["seq"] for x in cli.ok("tail", "forge", "--since", "2").splitlines()] == [3, 4]


@pytest.mark.slow
def test_concurrent_appenders_in_separate_processes_keep_seqs_gap_free(nats_root: Path, cli: Cli,
                                                                       procs: Procs) -> None:
    cli.ok("cell", "create", "busy")
    writers = [procs.start([sys.executable, str(HELPERS / "appender.py"), str(nats_root), "busy", f"w{i}", "150"],
                           env=cli.env()) for i in range(4)]
    for w in writers:
        out, err = w.communicate(timeout=120)
        assert w.returncode == 0, err.decode()
    verified = json.loads(cli.ok("verify", "busy", "--json"))
    assert verified["events"] == 1 + 4 * 150
    # 4 writers racing: each "wrong last sequence" answer (10071, 10164) was a conflict retried, not an error
    lines = [json.loads(x) for x in cli.ok("tail", "busy").splitlines()]  # a fresh read through a new consumer
    assert [e["seq"] for e in lines] == list(range(1, 602))
    assert sorted((e["topic"], e["payload"]) for e in lines[1:]) == sorted((f"w{i}", n) for i in range(4)
                                                                         for n in range(150))
    for w in range(4):
        assert [e["payload"] for e in lines if e.get("topic") == f"w{w}"] == list(range(150))


def test_export_and_import_between_backends_byte_for_byte(nats_root: Path, cli: Cli, tmp_path: Path,
                                                          procs: Procs) -> None:
    cli.ok("cell", "create", "forge")
    cli.ok("agent", "invite", "forge", "ada", "--role", "lead")
    cli.ok("bus", "publish", "forge", "t", "--by", "ada", "--data", '{"x": [1, 2]}')
    head = json.loads(cli.ok("verify", "forge", "--json"))["head"]
    out = json.loads(cli.ok("export", "forge", "--to", str(tmp_path / "forge.jsonl"), "--json"))
    assert out["head"] == head
    file_root = tmp_path / "file-root"
    file_root.mkdir()
    (file_root / "lazarus.toml").write_text('fsync = "never"\n')
    to_file = Cli(file_root, procs)
    to_file.ok("import", str(tmp_path / "forge.jsonl"))
    assert json.loads(to_file.ok("verify", "forge", "--json"))["head"] == head
    to_file.ok("export", "forge", "--to", str(tmp_path / "again.jsonl"))
    assert (tmp_path / "again.jsonl").read_bytes() == (tmp_path / "forge.jsonl").read_bytes()
    r = cli("import", str(tmp_path / "forge.jsonl"))
    assert r.code == 4 and "is taken" in r.err
    # and back the other way, into another NATS (another fleet)
    other = NatsServer(tmp_path / "other-store")
    other.start()
    try:
        elsewhere = tmp_path / "elsewhere"
        elsewhere.mkdir()
        (elsewhere / "lazarus.toml").write_text(nats_toml(other, 'fsync = "never"\n'))
        there = Cli(elsewhere, procs)
        there.ok("import", str(tmp_path / "again.jsonl"))
        assert json.loads(there.ok("verify", "forge", "--json"))["head"] == head
    finally:
        other.stop(signal.SIGKILL)
    broken = (tmp_path / "forge.jsonl").read_bytes().replace(b'"role":"lead"', b'"role":"read"')  # a middle line
    (tmp_path / "broken.jsonl").write_bytes(broken)
    r = to_file("import", str(tmp_path / "broken.jsonl"))
    assert r.code == 5


@pytest.fixture
def forge_on_own_nats(own_nats: NatsServer, cli: Cli, root_dir: Path) -> NatsServer:
    """Cell forge with agent ada on a server of the test's own, which the test may kill and restart."""
    (root_dir / "lazarus.toml").write_text(nats_toml(own_nats) + BASE)
    cli.ok("cell", "create", "forge")
    cli.ok("agent", "invite", "forge", "ada", "--role", "lead")
    return own_nats


@pytest.mark.slow
def test_a_nats_restart_loses_no_acknowledged_event(forge_on_own_nats: NatsServer, cli: Cli) -> None:
    server = forge_on_own_nats
    acked = [int(cli.ok("bus", "publish", "forge", "t", "--by", "ada", "--data", str(i))) for i in range(5)]
    server.stop(signal.SIGKILL)  # no clean shutdown
    server.start()
    acked += [int(cli.ok("bus", "publish", "forge", "t", "--by", "ada", "--data", str(i))) for i in range(5, 8)]
    lines = [json.loads(x) for x in cli.ok("tail", "forge", "--type", "bus.message").splitlines()]
    assert [e["seq"] for e in lines] == acked and [e["payload"] for e in lines] == list(range(8))
    assert cli.ok("verify", "forge").startswith("ok: 10 events")


# the clock this test needs: long enough that a live keeper (heartbeat every 0.5 s) is never judged dead
# nor a live leader's lease lost on a loaded machine, short enough that a takeover comes in seconds
LEASE, STALE, DEAD = 5.0, 3.0, 6.0


def _two_roots(tmp_path: Path, config: str) -> dict[str, Path]:
    """A root for each of two machines, alpha and beta, with one config."""
    roots = {}
    for host in ("alpha", "beta"):
        roots[host] = tmp_path / host
        roots[host].mkdir()
        (roots[host] / "lazarus.toml").write_text(config)
    return roots


@pytest.mark.slow
def test_two_daemons_one_nats_one_revival_and_takeover(tmp_path: Path, own_nats: NatsServer,
                                                      procs: Procs) -> None:
    shared = nats_toml(own_nats, f"nats_lease = {LEASE}\n") + base(health={"stale_after": STALE, "dead_after": DEAD}) \
        + '[resurrection]\nmode = "yes"\n'
    roots = _two_roots(tmp_path, shared)
    a_cli, b_cli = Cli(roots["alpha"], procs), Cli(roots["beta"], procs)
    cid = a_cli.ok("cell", "create", "forge").strip()
    a_cli.ok("agent", "invite", "forge", "keeper", "--role", "write", "--heartbeat-interval", "0.3",
             "--cmd", f"{sys.executable} {EXAMPLES / 'keeper.py'}")
    a, b = Up(roots["alpha"], a_cli, procs), Up(roots["beta"], b_cli, procs)
    try:
        a_proc = a.start("--no-http", "--host", "alpha")
        b.start("--no-http", "--host", "beta")
        cell = Root(roots["beta"], load_config(roots["beta"] / "lazarus.toml")).open(cid)
        status = {h: roots[h] / ".lazarus" / "daemon.json" for h in roots}
        leading = lambda h: cid in (json.loads(status[h].read_bytes()).get("leading") or [])  # noqa: E731
        wait(lambda: leading("alpha"), "alpha leads")
        assert not leading("beta")
        first = wait(lambda: (x := cell.refresh().agents["keeper"]).phase == "running" and x.heartbeats and x, "started")
        assert first.host == "alpha"
        assert _environ(first.pid)["LAZARUS_EPOCH"] == str(_epochs(cell)["alpha"]) != "0"
        os.kill(first.pid, signal.SIGKILL)
        wait(lambda: cell.refresh().agents["keeper"].spawns == 2 and cell.refresh().agents["keeper"].heartbeats
             > first.heartbeats, "one revival")
        ticks = json.loads(status["beta"].read_bytes())["ticks"]
        wait(lambda: json.loads(status["beta"].read_bytes())["ticks"] >= ticks + 5, "both keep watching")
        events = list(cell.log.read())
        assert sum(1 for e in events if e.type == "revival.planned") == 1
        assert [e.host for e in events if e.type == "agent.spawned"] == ["alpha", "alpha"]  # type: ignore[attr-defined]
        # the leader's machine dies: its daemon and its agent
        second = cell.refresh().agents["keeper"]
        a_proc.send_signal(signal.SIGKILL)
        a_proc.wait(10)
        os.killpg(second.pid, signal.SIGKILL)
        wait(lambda: leading("beta"), "beta takes the lease", timeout=LEASE + 60)
        third = wait(lambda: (x := cell.refresh().agents["keeper"]).spawns == 3 and x.phase == "running" and x,
                     "beta revives it", timeout=LEASE + DEAD + 60)
        assert third.host == "beta"
        env = wait(lambda: "LAZARUS_EPOCH" in (e := _environ(third.pid)) and e, "it execs")  # (a fork before)
        assert env["LAZARUS_EPOCH"] == str(_epochs(cell)["beta"])  # a later epoch than alpha's
        assert _epochs(cell)["beta"] > _epochs(cell)["alpha"]
        dead = [e for e in cell.log.read() if e.type == "agent.declared_dead"]
        assert [e.reason for e in dead] == ["exited", "heartbeat_timeout"]  # type: ignore[attr-defined]
        assert b_cli.ok("verify", "forge").startswith("ok:")
    finally:
        b.stop()
        a.stop()
        from tests.conftest import kill_supervised

        for r in roots.values():
            kill_supervised(r)


def _environ(pid: int) -> dict[str, str]:
    """A process's environment as anyone on the machine can read it."""
    with open(f"/proc/{pid}/environ", "rb") as f:
        return dict(kv.decode().partition("=")[::2] for kv in f.read().split(b"\0") if kv)


def _epochs(cell: object) -> dict[str, int]:
    """The epoch of each host's latest `leader.elected`."""
    return {e.host: e.epoch for e in cell.log.read() if e.type == "leader.elected"}  # type: ignore[attr-defined]


LEDGER_AGENT = '''
import os, subprocess, sys, time
ledger, lazarus = sys.argv[1], sys.argv[2]
last = 0.0
while True:  # a line of work every 0.2 s, beside the log: a second copy shows without trusting the log
    with open(ledger, "a") as f:
        f.write(f"{os.getpid()}\\n")
    if time.monotonic() - last > 0.5:  # fenced or not, a shell-style agent carries on: the daemons must stop it
        subprocess.run([lazarus, "heartbeat", os.environ["LAZARUS_CELL"], os.environ["LAZARUS_AGENT"]],
                       capture_output=True)
        last = time.monotonic()
    time.sleep(0.2)
'''


def _ledger_cell(tmp_path: Path, roots: dict[str, Path], procs: Procs
                 ) -> tuple[Path, Path, str, tuple[Cli, Cli], tuple[Up, Up]]:
    """A cell made on alpha with the ledger agent invited: its script, its ledger, the cell id, and
    a CLI and a daemon (not started) for each machine."""
    script, ledger = tmp_path / "ledger_agent.py", tmp_path / "ledger.txt"
    script.write_text(LEDGER_AGENT)
    lazarus = str(Path(sys.executable).parent / "lazarus")
    a_cli, b_cli = Cli(roots["alpha"], procs), Cli(roots["beta"], procs)
    cid = a_cli.ok("cell", "create", "forge").strip()
    a_cli.ok("agent", "invite", "forge", "clerk", "--role", "write", "--heartbeat-interval", "0.5",
             "--cmd", f"{sys.executable} {script} {ledger} {lazarus}")
    return script, ledger, cid, (a_cli, b_cli), (Up(roots["alpha"], a_cli, procs), Up(roots["beta"], b_cli, procs))


def _copies(marker: str) -> list[int]:
    """Live processes running the ledger agent."""
    out = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                argv = f.read().split(b"\0")
            with open(f"/proc/{pid}/stat", "rb") as f:
                state = f.read().rpartition(b")")[2].split()[0]
        except OSError:
            continue
        if marker.encode() in argv and state != b"Z":
            out.append(int(pid))
    return out


@pytest.mark.slow
def test_a_leader_paused_past_its_lease_leaves_one_copy_and_its_stale_decisions_are_refused(
        tmp_path: Path, own_nats: NatsServer, procs: Procs) -> None:
    shared = (nats_toml(own_nats, f"nats_lease = {LEASE}\n")
              + base(health={"stale_after": STALE, "dead_after": DEAD}).replace("[daemon]\n", "[daemon]\nfence_after = 2.0\n")
              + '[resurrection]\nmode = "yes"\n')
    roots = _two_roots(tmp_path, shared)
    script, ledger, cid, (a_cli, b_cli), (a, b) = _ledger_cell(tmp_path, roots, procs)
    try:
        a_proc = a.start("--no-http", "--host", "alpha")
        cell = Root(roots["beta"], load_config(roots["beta"] / "lazarus.toml")).open(cid)
        first = wait(lambda: (x := cell.refresh().agents["clerk"]).phase == "running" and x.heartbeats and x,
                     "alpha starts the agent")
        b.start("--no-http", "--host", "beta")
        alpha_epoch = cell.refresh().epoch
        assert alpha_epoch > 0 and cell.refresh().leader.startswith("alpha/")
        # the whole of alpha's machine stops: its daemon and its agent
        os.killpg(a_proc.pid, signal.SIGSTOP)
        os.killpg(first.pid, signal.SIGSTOP)
        second = wait(lambda: (x := cell.refresh().agents["clerk"]).spawns == 2 and x.phase == "running"
                      and x.heartbeats and x, "beta takes over and starts the agent", timeout=LEASE + DEAD + 60)
        view = cell.refresh()
        assert second.host == "beta" and view.leader.startswith("beta/") and view.epoch > alpha_epoch
        os.killpg(first.pid, signal.SIGCONT)
        os.killpg(a_proc.pid, signal.SIGCONT)
        wait(lambda: _copies(str(script)) == [second.pid], "alpha's stale copy stopped: one copy left", timeout=60)
        lines = ledger.read_text().splitlines()
        wait(lambda: len(ledger.read_text().splitlines()) >= len(lines) + 10, "the one copy works on")
        assert set(ledger.read_text().splitlines()[len(lines):]) == {str(second.pid)}
        assert a_proc.poll() is None  # alpha's daemon lives on, leading nothing
        events = list(cell.log.read())
        took = max(e.seq for e in events if e.type == "leader.elected")
        for e in events[took:]:  # after beta's election, every decision is beta's
            if e.by == "lazarus" and hasattr(e, "epoch") and e.type != "leader.elected":
                assert e.epoch == view.epoch, e  # type: ignore[attr-defined]
        assert [e.host for e in events if e.type == "agent.spawned"] == ["alpha", "beta"]  # type: ignore[attr-defined]
        status = json.loads((roots["alpha"] / ".lazarus" / "daemon.json").read_bytes())
        assert status["instance"].startswith("alpha/") and status["leading"] == []
        assert b_cli.ok("verify", "forge").startswith("ok:")
    finally:
        for proc in (a.proc, b.proc):
            if proc is not None and proc.poll() is None:
                os.killpg(proc.pid, signal.SIGCONT)
        b.stop()
        a.stop()
        from tests.conftest import kill_supervised

        for r in roots.values():
            kill_supervised(r)


def test_nats_url_takes_a_list_and_goes_past_a_server_that_is_down(tmp_path: Path, own_nats: NatsServer,
                                                                   root_dir: Path, cli: Cli) -> None:
    stream = own_nats.stream()
    for url in (f'["nats://127.0.0.1:1", "{own_nats.url}"]', f'"nats://127.0.0.1:1, {own_nats.url}"'):
        (root_dir / "lazarus.toml").write_text(f'backend = "nats"\nnats_url = {url}\nnats_stream = "{stream}"\n' + BASE)
        cli.ok("cell", "create", f"c{len(url)}")
        assert f"c{len(url)}" in cli.ok("cell", "list")
    (root_dir / "lazarus.toml").write_text(f'backend = "nats"\nnats_url = []\nnats_stream = "{stream}"\n' + BASE)
    r = cli("cell", "list")
    assert r.code == 1 and "nats_url names no server" in r.err


def test_replicas_are_refused_on_a_server_that_can_fork_a_subject(root_dir: Path, tmp_path: Path,
                                                                 cli: Cli) -> None:
    """Debian's 2.9.10 has nats-io/nats-server#4320: two messages stored at one expected sequence."""
    debian = NatsServer(tmp_path / "debian-store", debian=True)
    debian.start()
    (root_dir / "lazarus.toml").write_text(nats_toml(debian, "nats_replicas = 3\n") + BASE)
    try:
        r = cli("cell", "create", "forge")
        assert r.code == 4 and "needs nats-server 2.10 or newer" in r.err and "4320" in r.err, r.err
        assert len(r.err.strip().splitlines()) == 1
    finally:
        debian.stop(signal.SIGKILL)


@pytest.mark.slow
def test_the_daemon_follows_on_through_a_nats_restart_and_says_so(forge_on_own_nats: NatsServer, up: Up, cli: Cli,
                                                                 root_dir: Path) -> None:
    server = forge_on_own_nats
    try:
        up.start("--http", "127.0.0.1:0")
        status = root_dir / ".lazarus" / "daemon.json"
        seq = lambda: json.loads(status.read_bytes())["cells"].get(cid, {}).get("seq", 0)  # noqa: E731
        cid = up.cell().id
        before = wait(seq, "the daemon folds the cell")
        server.stop(signal.SIGKILL)
        said = wait(lambda: json.loads(status.read_bytes()).get("store_error"), "the daemon says NATS is away")
        assert "NATS" in said or "watch" in said
        server.start()
        wait(lambda: json.loads(status.read_bytes()).get("store_error") is None, "back to normal")
        cli.ok("heartbeat", "forge", "ada")
        wait(lambda: seq() > before, "events after the restart are followed")
        import urllib.request

        with urllib.request.urlopen(up.http + "/health", timeout=30) as r:
            assert json.loads(r.read())["store_error"] is None
        assert up.proc is not None and up.proc.poll() is None
    finally:
        up.stop()  # before the server goes: a daemon stopping while NATS is away would wait on it


@pytest.mark.slow
def test_an_r3_stream_on_a_cluster_keeps_one_chain_and_outlives_any_node(root_dir: Path, cli: Cli, procs: Procs,
                                                                       nats_cluster: NatsCluster) -> None:
    from lazarus_bus.log.nats import Nats

    for fresh in ("R3A", "R3B", "R3C"):  # `cell create` on a brand-new R3 stream, whose election answers
        (root_dir / "lazarus.toml").write_text(nats_cluster.toml(fresh) + BASE)  # 503 or no responders at first
        cli.ok("cell", "create", f"first-{fresh.lower()}")
        assert json.loads(cli.ok("tail", f"first-{fresh.lower()}", "-n", "1"))["type"] == "cell.provisioned"
        conn = Nats.get([n.url for n in nats_cluster.nodes], fresh, replicas=3)
        conn.call(conn.js.delete_stream, fresh)  # one stream per account: the next one is brand-new too
    (root_dir / "lazarus.toml").write_text(nats_cluster.toml("R3") + BASE)
    cli.ok("cell", "create", "busy")  # a brand-new R3 stream, its KV buckets R3 too
    writers = [procs.start([sys.executable, str(HELPERS / "appender.py"), str(root_dir), "busy", f"w{i}", "150"],
                           env=cli.env()) for i in range(4)]
    for w in writers:
        out, err = w.communicate(timeout=300)
        assert w.returncode == 0, err.decode()
    verified = json.loads(cli.ok("verify", "busy", "--json"))
    assert verified["events"] == 1 + 4 * 150  # one chain: no fork, no seq twice, no gap
    # 4 writers racing: each "wrong last sequence" answer (10071, 10164) was a conflict retried, not an error
    lines = [json.loads(x) for x in cli.ok("tail", "busy").splitlines()]  # a fresh read through a new consumer
    assert [e["seq"] for e in lines] == list(range(1, 602))
    assert sorted((e["topic"], e["payload"]) for e in lines[1:]) == sorted((f"w{i}", n) for i in range(4)
                                                                         for n in range(150))
    nats_cluster.nodes[0].stop(signal.SIGKILL)  # the first URL's node goes down
    cli.ok("bus", "publish", "busy", "after", "--by", "operator", "--data", "1")
    assert json.loads(cli.ok("verify", "busy", "--json"))["events"] == 602
    cli.ok("cell", "create", "other")
    listed = cli.ok("cell", "list")
    assert {"busy", "other"} <= {line.split()[1] for line in listed.splitlines()[1:]}
    assert listed.count("unreadable") == 3  # the cells of the deleted streams: listed, and the list goes on


@pytest.mark.slow
def test_a_leader_cut_off_from_nats_fences_itself_and_one_copy_remains(tmp_path: Path, own_nats: NatsServer,
                                                                      procs: Procs) -> None:
    proxy = Proxy(own_nats.url)  # alpha's machine reaches NATS through it: its daemon and its agent
    stream = own_nats.stream()
    health = base(health={"stale_after": STALE, "dead_after": DEAD}).replace("[daemon]\n", "[daemon]\nfence_after = 2.0\n")
    roots = _two_roots(tmp_path, "")
    for host, url in (("alpha", proxy.url), ("beta", own_nats.url)):
        (roots[host] / "lazarus.toml").write_text(f'backend = "nats"\nnats_url = "{url}"\nnats_stream = "{stream}"\n'
                                                  f"nats_lease = {LEASE}\n" + health + '[resurrection]\nmode = "yes"\n')
    script, ledger, cid, (a_cli, b_cli), (a, b) = _ledger_cell(tmp_path, roots, procs)
    try:
        a.start("--no-http", "--host", "alpha")
        cell = Root(roots["beta"], load_config(roots["beta"] / "lazarus.toml")).open(cid)
        first = wait(lambda: (x := cell.refresh().agents["clerk"]).phase == "running" and x.heartbeats and x,
                     "alpha starts the agent")
        b.start("--no-http", "--host", "beta")
        proxy.cut()
        # alpha cannot renew: after fence_after it stops its own agent, before beta may start one
        wait(lambda: first.pid not in _copies(str(script)), "alpha fences itself", timeout=LEASE + 60)
        second = wait(lambda: (x := cell.refresh().agents["clerk"]).spawns == 2 and x.phase == "running"
                      and x.heartbeats and x, "beta takes over and starts the agent", timeout=LEASE + DEAD + 60)
        assert second.host == "beta"
        # (its fork shows the daemon's argv until it execs; alpha's copy is gone already, checked above)
        wait(lambda: _copies(str(script)) == [second.pid], "beta's copy runs, and only it")
        proxy.heal()
        wait(lambda: json.loads((roots["alpha"] / ".lazarus" / "daemon.json").read_bytes()).get("store_error")
             is None, "alpha is back on NATS")
        lines = ledger.read_text().splitlines()
        wait(lambda: len(ledger.read_text().splitlines()) >= len(lines) + 10, "the one copy works on")
        assert set(ledger.read_text().splitlines()[len(lines):]) == {str(second.pid)}
        assert _copies(str(script)) == [second.pid]
        assert [e.host for e in cell.log.read() if e.type == "agent.spawned"] == ["alpha", "beta"]  # type: ignore[attr-defined]
    finally:
        proxy.close()
        b.stop()
        a.stop()
        from tests.conftest import kill_supervised

        for r in roots.values():
            kill_supervised(r)


def test_a_checkpoint_taken_on_one_machine_restores_on_another(tmp_path: Path, own_nats: NatsServer,
                                                              procs: Procs) -> None:
    roots = _two_roots(tmp_path, nats_toml(own_nats) + BASE)
    a_cli, b_cli = Cli(roots["alpha"], procs), Cli(roots["beta"], procs)
    a_cli.ok("cell", "create", "forge")
    a_cli.ok("agent", "invite", "forge", "w", "--role", "write")
    alpha = Root(roots["alpha"], load_config(roots["alpha"] / "lazarus.toml")).open("forge")
    (alpha.workspace / "notes").mkdir(parents=True)
    (alpha.workspace / "notes" / "plan.md").write_text("step 3 of 6\n")
    cp = a_cli.ok("bus", "checkpoint", "forge", "--by", "w", "--path", "notes", "--id", "cp-1")
    assert "cp-1" in cp
    beta = Root(roots["beta"], load_config(roots["beta"] / "lazarus.toml")).open("forge")
    assert not (beta.workspace / "notes").exists()  # beta's disk never had it
    b_cli.ok("bus", "restore", "forge", "cp-1")
    assert (beta.workspace / "notes" / "plan.md").read_text() == "step 3 of 6\n"
    assert (beta.checkpoints / "cp-1.tar.gz").is_file()
    alpha.log.close()
    beta.log.close()


def test_a_fresh_reader_finds_its_start_among_other_cells_and_reads_leave_no_consumer(own_nats: NatsServer) -> None:
    import threading

    from lazarus_bus import parse_draft
    from lazarus_bus.log.nats import Nats, NatsLog

    stream = own_nats.stream()
    conn = Nats.get(own_nats.url, stream)
    mine, other = NatsLog(conn, "mine"), NatsLog(conn, "other")
    for i in range(1, 401):  # two cells' events interleaved in one stream: stream seqs are not cell seqs
        (other if i % 3 == 0 else mine).append(parse_draft({"type": "bus.message", "by": "operator",
                                                             "topic": "t", "payload": i}))
    total = mine.head().seq
    for since in (1, 2, 100, 200, total - 10, total - 1, total):
        assert [e.seq for e in NatsLog(conn, "mine").read(since)] == list(range(since + 1, total + 1)), since
    # four readers of the whole log at once, each read longer than direct gets serve: a consumer per read
    # left behind would reach the server's limit (error 10026) in a long-lived fleet
    failures: list[BaseException] = []

    def reader() -> None:
        try:
            for _ in range(5):
                assert len(list(NatsLog(conn, "mine").read())) == total
        except BaseException as exc:  # noqa: BLE001 - reported below
            failures.append(exc)

    threads = [threading.Thread(target=reader) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert not failures
    assert conn.call(conn.js.stream_info, stream).state.consumer_count == 0


def test_a_fresh_tail_of_a_long_nats_cell_prints_its_last_events(nats_root: Path, cli: Cli) -> None:
    cli.ok("cell", "create", "long")
    c = Root(nats_root, load_config(nats_root / "lazarus.toml")).open("long")
    from lazarus_bus import parse_draft

    c.log.append_many([parse_draft({"type": "bus.message", "by": "operator", "topic": "t", "payload": i})
                       for i in range(500)])
    lines = [json.loads(x) for x in cli.ok("tail", "long", "-n", "10").splitlines()]
    assert [e["payload"] for e in lines] == list(range(490, 500))
    assert [e["seq"] for e in lines] == list(range(c.log.head().seq - 9, c.log.head().seq + 1))
    typed = [json.loads(x) for x in cli.ok("tail", "long", "-n", "2", "--type", "cell.provisioned").splitlines()]
    assert [e["type"] for e in typed] == ["cell.provisioned"]


@pytest.mark.slow
def test_a_daemon_and_its_agent_outlive_any_one_cluster_node(root_dir: Path, cli: Cli, up: Up,
                                                            nats_cluster: NatsCluster) -> None:
    # a replicated bucket whose leader was on the dead node elects another in up to ~10 s (nats-server's raft
    # election timeout is 4 to 9 s): the runbook's settings for a cluster ride it out without fencing
    fence = 12.0
    # and no heartbeat lands while the cell's own stream elects: the runbook's dead_after (60 s) is far above it
    up.config(top=nats_cluster.toml("HA", "nats_lease = 15\n"), daemon={"fence_after": fence},
              extra='[resurrection]\nmode = "yes"\n')
    cid = cli.ok("cell", "create", "forge").strip()
    cli.ok("agent", "invite", "forge", "keeper", "--role", "write", "--heartbeat-interval", "0.3",
           "--cmd", f"{sys.executable} {EXAMPLES / 'keeper.py'}")
    status = root_dir / ".lazarus" / "daemon.json"
    try:
        up.start("--no-http", "--host", "alpha")
        cell = Root(root_dir, load_config(root_dir / "lazarus.toml")).open(cid)
        first = wait(lambda: (x := cell.refresh().agents["keeper"]).phase == "running" and x.heartbeats and x,
                     "started", timeout=60)
        nats_cluster.nodes[0].stop(signal.SIGKILL)  # the first URL's node: the daemon's and the agent's server
        beats = cell.refresh().agents["keeper"].heartbeats
        # the agent's heartbeats keep landing, and the daemon keeps its lease for longer than it would take to
        # fence itself, so it never stops the agent
        wait(lambda: cell.refresh().agents["keeper"].heartbeats >= beats + int(1.5 * fence / 0.3),
             "heartbeats after the node died", timeout=120)
        daemon = json.loads(status.read_bytes())
        assert cid in daemon["leading"] and daemon["running"]
        assert cell.refresh().agents["keeper"].spawns == 1 and cell.refresh().agents["keeper"].pid == first.pid
        os.kill(first.pid, signal.SIGKILL)  # and a death is still seen and revived
        wait(lambda: (x := cell.refresh().agents["keeper"]).spawns == 2 and x.phase == "running" and x.heartbeats,
             "revived with a node down", timeout=120)
        assert "keeper" in cli.ok("status", "forge")
        assert cli.ok("verify", "forge").startswith("ok:")
        assert up.proc is not None and up.proc.poll() is None
    finally:
        up.stop()
