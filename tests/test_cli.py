"""The CLI as a user runs it: real processes, exit codes, and a log left byte-for-byte intact."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from .conftest import HELPERS, Cli, Procs


@pytest.fixture
def forge(cli: Cli) -> Path:
    cli.ok("cell", "create", "forge", "--mission", "build the forge", "--id", "forge-1")
    cli.ok("agent", "invite", "forge", "ezra", "--role", "lead")
    cli.ok("agent", "invite", "forge", "reader", "--role", "read")
    cli.ok("heartbeat", "forge", "ezra", "--cycle", "1")
    return cli.root / "forge-1" / "logs" / "events.jsonl"


def test_a_first_session(cli: Cli, forge: Path) -> None:
    assert cli.ok("emit", "forge", "bus.message", "--by", "ezra", "--data", '{"topic": "plan", "payload": [1]}') == "6\n"
    lines = [json.loads(line) for line in cli.ok("tail", "forge").splitlines()]
    assert [e["type"] for e in lines] == [
        "cell.provisioned", "agent.invited", "agent.invited", "agent.heartbeat", "cell.activated", "bus.message",
    ]
    assert [e["seq"] for e in lines] == [1, 2, 3, 4, 5, 6]
    verified = json.loads(cli.ok("verify", "forge", "--json"))
    assert verified["events"] == 6 and len(verified["head"]) == 64
    manifest = json.loads((cli.root / "forge-1" / "cell.json").read_text())
    assert manifest["state"] == "active" and set(manifest["agents"]) == {"ezra", "reader"}
    replayed = json.loads(cli.ok("replay", "forge", "--json"))
    assert replayed["seq"] == 6 and replayed["agents"]["ezra"]["cycle"] == 1


def test_heartbeat_prints_its_own_seq_when_activation_follows(cli: Cli) -> None:
    cli.ok("cell", "create", "c2")
    cli.ok("agent", "invite", "c2", "a", "--role", "write")
    out = json.loads(cli.ok("heartbeat", "c2", "a", "--json"))
    assert out["seq"] == 3 and out["type"] == "agent.heartbeat"
    assert json.loads(cli.ok("cell", "show", "c2", "--json"))["state"] == "active"


def test_global_options_before_or_after(cli: Cli, tmp_path: Path) -> None:
    other = tmp_path / "other"
    cli.ok("--root", str(other), "cell", "create", "x")
    assert json.loads(cli.ok("cell", "list", "--root", str(other), "--json"))[0]["name"] == "x"
    assert json.loads(cli.ok("--json", "cell", "list", "--root", str(other)))[0]["name"] == "x"


def test_data_from_file_and_stdin(cli: Cli, forge: Path, tmp_path: Path) -> None:
    f = tmp_path / "d.json"
    f.write_text('{"topic": "file", "payload": {"big": "' + "z" * 200_000 + '"}}')
    assert cli.ok("emit", "forge", "bus.message", "--by", "ezra", "--data", f"@{f}").strip() == "6"
    assert cli.ok("emit", "forge", "bus.message", "--by", "ezra", "--data", "-", input='{"topic":"in"}').strip() == "7"


def test_tail_filters(cli: Cli, forge: Path) -> None:
    types = lambda out: [json.loads(x)["type"] for x in out.splitlines()]  # noqa: E731
    assert types(cli.ok("tail", "forge", "--type", "agent.*")) == ["agent.invited", "agent.invited", "agent.heartbeat"]
    assert types(cli.ok("tail", "forge", "--agent", "reader")) == ["agent.invited"]
    assert [json.loads(x)["seq"] for x in cli.ok("tail", "forge", "--since", "3").splitlines()] == [4, 5]


def _readline(p: subprocess.Popen[bytes], timeout: float) -> bytes:
    """One line of the process's output, or a clear failure (never a hang) once the deadline passes."""
    import select

    assert p.stdout is not None
    ready, _, _ = select.select([p.stdout], [], [], timeout)
    assert ready, f"no output in {timeout} s"
    return p.stdout.readline()


def test_tail_follow_prints_new_events(cli: Cli, forge: Path, procs: Procs) -> None:
    p = procs.start(cli.argv("tail", "forge", "-f", "--since", "5"), env=cli.env())
    cli.ok("heartbeat", "forge", "ezra", "--cycle", "2")
    line = json.loads(_readline(p, 60))
    assert line["seq"] == 6 and line["cycle"] == 2
    p.send_signal(2)  # Ctrl-C: a clean stop, no traceback
    assert p.wait(timeout=60) == 0
    assert p.stderr is not None and b"Traceback" not in p.stderr.read()


def test_idempotent_emit_and_expected_seq(cli: Cli, forge: Path) -> None:
    eid = "2b0ad6a4-3a0e-4d5c-9f5e-8a1b2c3d4e5f"
    args = ("emit", "forge", "bus.message", "--by", "ezra", "--data", '{"topic":"x"}', "--id", eid)
    assert cli.ok(*args) == "6\n"
    assert cli.ok(*args) == "6\n"
    assert cli.ok("emit", "forge", "bus.message", "--by", "ezra", "--data", '{"topic":"y"}',
                  "--expected-seq", "6") == "7\n"


BAD_INPUT = [
    # (args, exit code, words in the error)
    (["emit", "forge", "bus.message", "--by", "ezra", "--data", "{"], 2, "malformed JSON"),
    (["emit", "forge", "bus.nope", "--by", "ezra"], 2, "unknown event type"),
    (["emit", "forge", "agent.heartbeat", "--by", "ezra", "--data", '{"agent":"ezra","cycle":"x"}'], 2, "Expected `int`"),
    (["emit", "forge", "bus.message", "--by", "ezra", "--data", '{"topic":"t","colour":1}'], 2, "unknown field 'colour'"),
    (["emit", "forge", "bus.message", "--by", "ezra", "--data", '{}'], 2, "topic"),
    (["emit", "forge", "bus.message", "--by", "ezra", "--data", '{"topic":"t","seq":9}'], 2, "assigned by the log"),
    (["emit", "forge", "bus.message", "--by", "../x", "--data", '{"topic":"t"}'], 2, "bad agent name"),
    (["agent", "invite", "forge", "../x", "--role", "read"], 2, "bad agent name"),
    (["agent", "invite", "forge", "operator", "--role", "read"], 2, "reserved"),
    (["heartbeat", "../x", "ezra"], 2, "bad cell"),
    (["emit", "forge", "bus.message", "--by", "ezra", "--data", '{"topic":"t"}', "--id", "nope"], 2, "UUID"),
    (["cell", "create", "Bad Name"], 2, "bad cell name"),
    (["heartbeat", "nosuch", "ezra"], 3, "no cell"),
    (["emit", "forge", "agent.heartbeat", "--by", "operator", "--data", '{"agent":"ghost"}'], 3, "not invited"),
    (["emit", "forge", "bus.message", "--by", "stranger", "--data", '{"topic":"t"}'], 4, "not invited"),
    (["emit", "forge", "bus.message", "--by", "reader", "--data", '{"topic":"t"}'], 4, "role read"),
    (["cell", "thaw", "forge"], 4, "not allowed"),
    (["cell", "destroy", "forge"], 4, "not allowed"),
    (["cell", "create", "forge"], 4, "taken"),
    (["agent", "invite", "forge", "ezra", "--role", "read"], 4, "already invited"),
    (["emit", "forge", "bus.message", "--by", "ezra", "--data", '{"topic":"t"}', "--expected-seq", "2"], 4, "expected seq 2"),
    (["emit", "forge", "bus.message", "--by", "ezra", "--data", "@/nonexistent"], 2, "cannot read"),
    (["tail", "forge", "--since", "x"], 2, "--since"),
]


@pytest.mark.parametrize("args, code, words", BAD_INPUT, ids=[" ".join(a[:3]) for a, _, _ in BAD_INPUT])
def test_bad_input_is_refused_and_the_log_is_unchanged(cli: Cli, forge: Path, args: list[str], code: int,
                                                       words: str) -> None:
    before = forge.read_bytes()
    r = cli(*args)
    assert r.code == code, r.err
    assert r.err.startswith("error: ") and r.err.count("\n") == 1, r.err
    assert words in r.err
    assert "Traceback" not in r.err
    assert forge.read_bytes() == before


def test_oversized_event_is_refused(cli: Cli, forge: Path, tmp_path: Path) -> None:
    before = forge.read_bytes()
    big = tmp_path / "big.json"
    big.write_text(json.dumps({"topic": "t", "payload": "x" * (1 << 20)}))
    r = cli("emit", "forge", "bus.message", "--by", "ezra", "--data", f"@{big}")
    assert r.code == 4 and "max_event_bytes" in r.err
    assert forge.read_bytes() == before


def test_id_reused_with_other_payload_is_a_conflict(cli: Cli, forge: Path) -> None:
    eid = "5b0ad6a4-3a0e-4d5c-9f5e-8a1b2c3d4e5f"
    cli.ok("emit", "forge", "bus.message", "--by", "ezra", "--data", '{"topic":"a"}', "--id", eid)
    before = forge.read_bytes()
    r = cli("emit", "forge", "bus.message", "--by", "ezra", "--data", '{"topic":"b"}', "--id", eid)
    assert r.code == 4 and "different payload" in r.err
    assert forge.read_bytes() == before


def test_full_disk_is_exit_1_with_the_log_intact(cli: Cli, forge: Path) -> None:
    import resource

    before = forge.read_bytes()
    limit = len(before) + 200

    def cap() -> None:
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    r = cli("emit", "forge", "bus.message", "--by", "ezra", "--data", '{"topic":"t","payload":"' + "x" * 1000 + '"}',
            preexec_fn=cap)
    assert r.code == 1 and "disk full" in r.err
    assert forge.read_bytes() == before


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to switch to an unprivileged user")
def test_missing_permission_is_exit_1_with_the_log_intact(procs: Procs) -> None:
    base = Path(tempfile.mkdtemp(prefix="lz-perm-"))
    base.chmod(0o755)
    try:
        cli = Cli(base / "root", procs)
        cli.ok("cell", "create", "p")
        log = next((base / "root").glob("*/logs/events.jsonl"))
        before = log.read_bytes()
        argv = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", *cli.argv(
            "emit", "p", "cell.activated", "--by", "operator")]
        p = procs.start(argv, env=cli.env())  # its own process group, killed at teardown
        _, err = (x.decode() for x in p.communicate(timeout=60))
        assert p.returncode == 1, err
        assert err.startswith("error: ") and "ermission denied" in err
        assert log.read_bytes() == before
    finally:
        import shutil

        shutil.rmtree(base, ignore_errors=True)


def test_corrupt_log_stops_verify_and_replay(cli: Cli, forge: Path) -> None:
    lines = forge.read_bytes().split(b"\n")
    lines[2] = lines[2].replace(b'"role":"read"', b'"role":"lead"')
    forge.write_bytes(b"\n".join(lines))
    for cmd in ("verify", "replay"):
        r = cli(cmd, "forge")
        assert r.code == 5, r.err
        assert f"{forge}:3" in r.err and "seq 3" in r.err


@pytest.mark.slow
def test_replay_of_a_big_log_checks_its_chain_on_a_second_core_and_names_faults_alike(cli: Cli, forge: Path) -> None:
    from lazarus_bus import Config, Root
    from lazarus_bus import events as ev
    from lazarus_bus.log.file import ASIDE_BYTES

    cell = Root(cli.root, Config(fsync="never")).open("forge")
    while forge.stat().st_size < ASIDE_BYTES + (1 << 20):  # past where replay starts the chain helper
        cell.append_many([ev.AgentHeartbeat(by="ezra", agent="ezra", cycle=c, status="working on it")
                          for c in range(2, 10_002)])
    cell.close()
    head = json.loads(cli.ok("verify", "forge", "--json"))["events"]
    whole = cli.ok("replay", "forge", "--json")  # read here, chain checked by the helper
    assert json.loads(whole)["seq"] == head
    assert whole == cli.ok("replay", "forge", "--json", "--until", str(head))  # read and checked in one process

    lines = forge.read_bytes().split(b"\n")
    at = len(lines) // 2  # a heartbeat of an agent never invited, its line edited in place: the chain breaks
    lines[at] = lines[at].replace(b'"agent":"ezra"', b'"agent":"zed00"')
    forge.write_bytes(b"\n".join(lines))
    aside, inline = cli("replay", "forge"), cli("replay", "forge", "--until", str(head))
    assert aside.code == inline.code == 5
    assert aside.err == inline.err and f"{forge}:{at + 1}" in aside.err and "hash chain broken" in aside.err


def test_eight_writers_at_once(cli: Cli, root_dir: Path, procs: Procs) -> None:
    cli.ok("cell", "create", "busy")
    writers = [procs.start([sys.executable, str(HELPERS / "appender.py"), str(root_dir), "busy", f"w{i}", "2000"])
               for i in range(8)]
    for w in writers:
        assert w.wait(timeout=300) == 0, w.stderr.read() if w.stderr else ""
    verified = json.loads(cli.ok("verify", "busy", "--json"))
    assert verified["events"] == 16_001  # 16,000 messages after cell.provisioned
    events = [json.loads(x) for x in cli.ok("tail", "busy", "--type", "bus.message").splitlines()]
    assert [e["seq"] for e in events] == list(range(2, 16_002))
    for i in range(8):
        assert [e["payload"] for e in events if e["topic"] == f"w{i}"] == list(range(2000))


def test_lifecycle_and_destroy_keeps_the_log(cli: Cli, forge: Path) -> None:
    cli.ok("cell", "freeze", "forge", "--reason", "lunch")
    r = cli("emit", "forge", "bus.message", "--by", "ezra", "--data", '{"topic":"t"}')
    assert r.code == 4 and "frozen" in r.err
    cli.ok("heartbeat", "forge", "ezra")  # a frozen cell still hears heartbeats
    cli.ok("cell", "thaw", "forge")
    cli.ok("cell", "archive", "forge")
    r = cli("heartbeat", "forge", "ezra")
    assert r.code == 4 and "archived" in r.err
    log = forge.read_bytes()
    cli.ok("cell", "destroy", "forge", "--reason", "done")
    assert not (cli.root / "forge-1").exists()
    grave = (cli.root / ".lazarus" / "graveyard" / "forge-1.jsonl").read_bytes()
    assert grave.startswith(log) and json.loads(grave.splitlines()[-1])["type"] == "cell.destroyed"
    assert cli("cell", "show", "forge").code == 3


def test_errors_are_one_line_for_usage_too(cli: Cli) -> None:
    r = cli("cell", "create")
    assert r.code == 2 and r.err.startswith("error: ") and r.err.count("\n") == 1
    r = cli("frobnicate")
    assert r.code == 2 and r.err.startswith("error: ")


def _rechained(log: bytes, old: bytes, new: bytes, only: bytes = b'"type":"agent.heartbeat"') -> bytes:
    """The log with `old` replaced by `new` in the lines holding `only`, and every prev hash recomputed:
    a chain that verifies."""
    import hashlib

    out, prev = [], "0" * 64
    for line in log.splitlines():
        event = json.loads(line.replace(old, new) if only in line else line)
        event["prev"] = prev
        data = json.dumps(event, separators=(",", ":")).encode()
        out.append(data + b"\n")
        prev = hashlib.sha256(data).hexdigest()
    return b"".join(out)


def test_a_rechained_log_whose_events_the_rules_would_refuse_is_corrupt_not_a_crash(cli: Cli, forge: Path) -> None:
    forge.write_bytes(_rechained(forge.read_bytes(), b'"agent":"ezra"', b'"agent":"zed"'))
    assert cli("verify", "forge").code == 0  # the chain holds: only the fold can tell
    r = cli("replay", "forge")
    assert r.code == 5 and r.err.strip().splitlines() == [
        "error: corrupt log at seq 4: agent.heartbeat names 'zed', which the log never introduced "
        "(was it written or rechained outside lazarus?)"]


def test_export_and_import_refuse_bad_input_with_one_line_and_change_nothing(cli: Cli, forge: Path,
                                                                             tmp_path: Path) -> None:
    before = forge.read_bytes()
    r = cli("export", "forge", "--to", str(tmp_path / "no" / "such" / "dir" / "forge.jsonl"))
    assert r.code == 1 and "cannot write" in r.err and len(r.err.strip().splitlines()) == 1
    good = tmp_path / "forge.jsonl"
    cli.ok("export", "forge", "--to", str(good))
    assert good.read_bytes() == before
    lines = before.splitlines(keepends=True)
    bad = {
        "empty": b"",
        "not JSON": b"{nope\n",
        "a middle line altered": before.replace(b'"role":"lead"', b'"role":"read"'),
        "a line missing": b"".join(lines[:1] + lines[2:]),
    }
    bad["rechained, naming an agent never invited"] = _rechained(before, b'"agent":"ezra"', b'"agent":"zed"')
    for what, data in bad.items():
        (tmp_path / "bad.jsonl").write_bytes(data)
        r = cli("import", str(tmp_path / "bad.jsonl"))
        assert r.code == 5 and len(r.err.strip().splitlines()) == 1, (what, r.err)
    assert "seq 4: agent.heartbeat names 'zed', which the log never introduced" in r.err
    r = cli("import", str(good))
    assert r.code == 4 and "is taken" in r.err
    assert forge.read_bytes() == before
    assert [c["name"] for c in json.loads(cli.ok("cell", "list", "--json"))] == ["forge"]
    assert not list((cli.root / ".lazarus").glob("new-*"))  # no half-built cell left behind


def test_tail_n_prints_the_last_n_events(cli: Cli) -> None:
    cli.ok("cell", "create", "forge")
    cli.ok("agent", "invite", "forge", "w", "--role", "write")
    for i in range(5):
        cli.ok("heartbeat", "forge", "w", "--cycle", str(i))
    lines = [json.loads(x) for x in cli.ok("tail", "forge", "-n", "2").splitlines()]
    assert [e["cycle"] for e in lines] == [3, 4]
    beats = [json.loads(x) for x in cli.ok("tail", "forge", "--type", "agent.heartbeat", "-n", "3").splitlines()]
    assert [e["cycle"] for e in beats] == [2, 3, 4]
    assert len(cli.ok("tail", "forge", "-n", "100").splitlines()) == 8  # provisioned, invited, activated, 5 beats
    assert cli.ok("tail", "forge", "-n", "0") == ""


def test_shell_completion_is_clicks_own(cli: Cli) -> None:
    """`_LAZARUS_COMPLETE=bash_source lazarus` prints the script the user guide tells people to source."""
    import subprocess

    exe = str(Path(sys.executable).parent / "lazarus")
    env = {**cli.env(), "_LAZARUS_COMPLETE": "bash_source"}
    script = subprocess.run([exe], env=env, capture_output=True, text=True, timeout=60).stdout
    assert "_lazarus_completion()" in script and "complete -o nosort -F _lazarus_completion lazarus" in script
    env = {**cli.env(), "_LAZARUS_COMPLETE": "bash_complete", "COMP_WORDS": "lazarus agent re", "COMP_CWORD": "2"}
    got = subprocess.run([exe], env=env, capture_output=True, text=True, timeout=60).stdout
    assert got.split() == ["plain,restart"]


def test_the_systemd_unit_is_ready_to_use() -> None:
    import configparser

    unit = configparser.ConfigParser(strict=False, interpolation=None)
    unit.read(Path(__file__).parent.parent / "config" / "lazarus.service")
    service = unit["Service"]
    assert service["Type"] == "notify" and service["KillMode"] == "process" and int(service["WatchdogSec"]) > 1
    assert service["ExecStart"].split()[1:3] == ["up", "--log-json"]


HEAVY = ("aiohttp", "rich", "nats", "watchfiles", "prometheus_client", "asyncio", "lazarus_bus.gateway",
         "lazarus_bus.daemon", "lazarus_bus.client", "lazarus_bus.planner", "lazarus_bus.probe",
         # and what the fast path (lazarus_bus.fastpath) leaves out: click, and what msgspec, the cell and
         # the log would import but a heartbeat does not use
         "click", "lazarus_bus.cli", "typing_extensions", "inspect", "logging", "shutil", "tempfile",
         "lazarus_bus.proposal")
_PROBE = """
import os, runpy, sys
sys.argv = ["lazarus", *sys.argv[1:]]
os._exit = sys.exit  # the fast path ends with os._exit: come back here to print what it imported
try:
    runpy.run_module("lazarus_bus", run_name="__main__")
except SystemExit:
    pass
heavy = sorted(m for m in sys.modules if m.split(".")[0] in {HEAVY_ROOTS} or m in {HEAVY_MODULES})
print("imported:", " ".join(heavy), file=sys.stderr)
"""


@pytest.mark.parametrize("argv", [
    ["heartbeat", "forge", "ezra", "--cycle", "2"],
    ["emit", "forge", "bus.message", "--by", "ezra", "--data", '{"topic": "t"}'],
])
def test_the_agent_paths_import_nothing_heavy(cli: Cli, forge: Path, argv: list[str]) -> None:
    """An agent in a shell calls `lazarus heartbeat` every few seconds: that call must not import the
    gateway, rich, NATS, asyncio, the planner or click (issue 21; the cost is measured in bench/bench_cli.py)."""
    code = _PROBE.replace("{HEAVY_ROOTS}", repr({m for m in HEAVY if "." not in m})).replace(
        "{HEAVY_MODULES}", repr({m for m in HEAVY if "." in m}))
    env = {**os.environ, "LAZARUS_ROOT": str(cli.root)}
    env.pop("LAZARUS_SOCKET", None)
    r = subprocess.run([sys.executable, "-c", code, *argv], env=env, capture_output=True, text=True, timeout=120)
    assert r.stdout.strip().isdigit(), r.stdout + r.stderr  # the append happened: it printed its seq
    assert r.stderr.strip() == "imported:", r.stderr
