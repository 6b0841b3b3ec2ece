"""Bad input gets one clear line and a documented exit code, and the log stays readable: non-finite
numbers, wrong types from Python callers, names with a trailing newline, on every path."""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from lazarus_bus import EVENT_TYPES, Config, LazarusError, MalformedInput, Root
from lazarus_bus import events as ev
from lazarus_bus.replay import verify_log
from tests.conftest import Cli

SIMPLE = st.one_of(st.none(), st.booleans(), st.integers(-2**70, 2**70), st.floats(allow_nan=True, allow_infinity=True),
                   st.text(max_size=300), st.binary(max_size=8))
WILD = st.recursive(SIMPLE, lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=5), inner,
                                                                                        max_size=4), max_leaves=8)


def _cell(tmp_path: Path) -> Root:
    root = Root(tmp_path / "missions", Config(fsync="never"))
    root.path.mkdir(exist_ok=True)
    return root


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(kind=st.sampled_from(sorted(EVENT_TYPES)), data=st.data())
def test_whatever_a_python_caller_builds_is_either_refused_or_read_back(tmp_path_factory: pytest.TempPathFactory,
                                                                         kind: str, data: st.DataObject) -> None:
    """A Struct built in Python is not type-checked: any field may hold anything. Either the append
    refuses it with a LazarusError, or every reader decodes what was written."""
    root = _cell(tmp_path_factory.mktemp("hostile"))
    cell = root.create("forge")
    cell.append(ev.AgentInvited(by="operator", agent="w", role="lead"))
    cell.append(ev.CheckpointCreated(by="operator", checkpoint_id="c1"))
    cls = EVENT_TYPES[kind]
    fields = [f for f in cls.__struct_fields__ if f not in ev.ENVELOPE]
    kw: dict[str, object] = {"by": "operator"}
    for f in fields:
        if data.draw(st.booleans(), label=f"wild {f}"):
            kw[f] = data.draw(WILD, label=f)
    try:
        draft = cls(**kw)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return  # a required field left out, or a bad name (checked at construction): no event at all
    head = cell.head()
    try:
        cell.append(draft)
    except LazarusError:
        assert cell.head() == head  # refused: nothing written
    assert verify_log(cell.log)[0] == cell.head().seq  # every line still decodes and chains
    assert cell.replay().seq == cell.head().seq


def test_non_finite_numbers_are_malformed_on_the_cli(cli: Cli) -> None:
    cli.ok("cell", "create", "forge")
    before = cli.ok("verify", "forge")
    for bad in ("inf", "-inf", "nan"):
        r = cli("agent", "invite", "forge", "w", "--role", "write", "--heartbeat-interval", bad)
        assert r.code == 2 and r.err.startswith("error: ") and "heartbeat_interval" in r.err, r.err
        assert len(r.err.strip().splitlines()) == 1
    assert cli.ok("verify", "forge") == before  # the log byte for byte as it was
    assert cli("emit", "forge", "bus.message", "--by", "operator", "--data", '{"topic": "t", "payload": 1e999}').code == 2
    assert cli.ok("verify", "forge") == before


def test_non_finite_numbers_in_config_are_malformed(cli: Cli, root_dir: Path) -> None:
    for key, section in (("backoff_initial", "resurrection"), ("dead_after", "health"), ("tick", "daemon")):
        (root_dir / "lazarus.toml").write_text(f"[{section}]\n{key} = inf\n")
        r = cli("status")
        assert r.code == 2 and key in r.err and "finite" in r.err or ">" in r.err, r.err


def test_python_callers_get_the_cli_errors_before_anything_is_written(tmp_path: Path) -> None:
    """The agent client's calls end in the same door: wrong types and bad values raise, nothing is written."""
    from lazarus_bus import connect

    root = _cell(tmp_path)
    cell = root.create("forge")
    cell.append(ev.AgentInvited(by="operator", agent="w", role="lead"))
    me = connect(cell.id, "w", root=root.path)
    head = cell.head()
    for call in (lambda: me.publish("", 1), lambda: me.publish("x" * 300, 1),
                 lambda: me.heartbeat(cycle=1.5),  # type: ignore[arg-type]
                 lambda: me.publish("t", math.inf), lambda: me.checkpoint("s", state={"v": math.nan})):
        with pytest.raises(MalformedInput):
            call()
    cp = me.checkpoint("ok")
    with pytest.raises(MalformedInput):
        me.handoff("w", cp, note=None)  # type: ignore[arg-type]
    assert verify_log(cell.log)[0] == head.seq + 1  # only the good checkpoint landed


@pytest.mark.parametrize("bad", ["forge\n", "w\n", "../x", "a..b"])
def test_names_with_a_trailing_newline_or_dots_are_refused_everywhere(cli: Cli, bad: str) -> None:
    cli.ok("cell", "create", "forge")
    before = cli.ok("verify", "forge")
    assert cli("cell", "create", bad).code == 2
    assert cli("agent", "invite", "forge", bad, "--role", "write").code == 2
    data = '{"agent": "%s", "role": "write"}' % bad.replace("\n", "\\n")
    assert cli("emit", "forge", "agent.invited", "--by", "operator", "--data", data).code == 2
    assert cli("heartbeat", "forge", bad).code == 2
    assert cli("bus", "checkpoint", "forge", "--by", "operator", "--id", bad).code == 2
    assert cli.ok("verify", "forge") == before


def test_a_write_that_landed_is_reported_as_done_even_when_the_projection_cannot_be_written(cli: Cli,
                                                                                          root_dir: Path) -> None:
    """The log is the truth: once the append is durable the command succeeds, and a retry by id answers
    the first seq instead of appending a duplicate."""
    cid = cli.ok("cell", "create", "forge").strip()
    manifest = root_dir / cid / "cell.json"
    manifest.unlink()
    manifest.mkdir()  # cell.json cannot be replaced now (as a full disk would refuse it)
    eid = "0190f0c5-0b7e-7c3e-9e2b-1d2f3a4b5c6d"
    args = ("emit", "forge", "agent.invited", "--by", "operator", "--data", '{"agent": "w", "role": "write"}',
            "--id", eid, "--json")
    first = cli(*args)
    assert first.code == 0, first.err
    again = cli(*args)
    assert again.code == 0, again.err
    import json

    one, two = json.loads(first.out), json.loads(again.out)
    assert one["seq"] == two["seq"] and two["duplicate"] is True
    assert sum(1 for line in (root_dir / cid / "logs" / "events.jsonl").read_text().splitlines()
               if '"agent.invited"' in line) == 1


def test_verify_expect_catches_a_log_cut_back_even_to_nothing(cli: Cli, root_dir: Path) -> None:
    cid = cli.ok("cell", "create", "forge").strip()
    for n in range(3):
        cli.ok("bus", "publish", "forge", "t", "--by", "operator", "--data", str(n))
    import json

    first = json.loads(cli.ok("verify", "forge", "--json"))
    head = f"{first['events']}:{first['head']}"
    assert cli.ok("verify", "forge", "--expect", head).startswith("ok:")
    assert cli.ok("verify", "forge", "--expect", first["head"]).startswith("ok:")
    cli.ok("bus", "publish", "forge", "t", "--by", "operator", "--data", "4")  # growing is fine
    assert json.loads(cli.ok("verify", "forge", "--json", "--expect", head))["expect"] == head
    log = root_dir / cid / "logs" / "events.jsonl"
    lines = log.read_bytes().splitlines(keepends=True)
    log.write_bytes(b"".join(lines[:2]))  # cut back past the recorded head: still a valid chain
    assert cli.ok("verify", "forge").startswith("ok: 2 events")
    r = cli("verify", "forge", "--expect", head)
    assert r.code == 5 and "expected head" in r.err, r.err
    log.write_bytes(b"")  # to nothing at all
    assert cli("verify", "forge", "--expect", head).code == 5
    assert cli("verify", "forge", "--expect", "not-a-head").code == 2


def test_what_lazarus_writes_is_private_whatever_the_umask(cli: Cli, root_dir: Path, tmp_path: Path) -> None:
    import stat

    old = os.umask(0)
    try:
        cid = cli.ok("cell", "create", "forge").strip()
        cli.ok("bus", "publish", "forge", "t", "--by", "operator")
        cli.ok("export", "forge", "--to", str(tmp_path / "out.jsonl"))
        cli.ok("cell", "archive", "forge")
        cli.ok("cell", "destroy", "forge")
    finally:
        os.umask(old)
    mode = lambda p: stat.S_IMODE(p.stat().st_mode)  # noqa: E731
    assert mode(tmp_path / "out.jsonl") == 0o600
    assert mode(root_dir / ".lazarus") == 0o700 and mode(root_dir / ".lazarus" / "graveyard") == 0o700
    assert mode(root_dir / ".lazarus" / "graveyard" / f"{cid}.jsonl") == 0o600


def test_readers_work_on_a_log_they_may_not_write(cli: Cli, root_dir: Path, tmp_path: Path) -> None:
    """An auditor's read-only copy (here a read-only bind mount of the root, in a mount namespace of the
    test's own): verify, tail, replay and export work; an append is refused (exit 4), the log unchanged."""
    import shlex
    import subprocess
    import sys

    cid = cli.ok("cell", "create", "forge").strip()
    cli.ok("bus", "publish", "forge", "t", "--by", "operator", "--data", "1")
    expected = cli.ok("verify", "forge")
    before = (root_dir / cid / "logs" / "events.jsonl").read_bytes()
    out = tmp_path / "out"
    out.mkdir()
    lz = f"{shlex.quote(sys.executable)} -m lazarus_bus --root {shlex.quote(str(root_dir))}"
    script = "; ".join([
        f"mount --bind -o ro {shlex.quote(str(root_dir))} {shlex.quote(str(root_dir))}",
        f"{lz} verify forge > {out}/verify",
        f"{lz} tail forge > {out}/tail",
        f"{lz} replay forge --json > {out}/replay",
        f"{lz} export forge --to {out}/copy.jsonl > /dev/null",
        f"{lz} bus publish forge t --by operator 2> {out}/refused; echo $? > {out}/code",
    ])
    ns = ["unshare", "--mount"] if os.geteuid() == 0 else ["unshare", "--mount", "--map-root-user"]
    env = {k: v for k, v in os.environ.items() if not k.startswith("LAZARUS_")}
    r = subprocess.run([*ns, "sh", "-c", script], env=env, capture_output=True, text=True, timeout=120,
                       start_new_session=True)
    assert r.returncode == 0, r.stderr
    assert (out / "verify").read_text() == expected
    assert (out / "tail").read_text().count("\n") == 2
    assert '"state":"active"' in (out / "replay").read_text() or '"state":"provisioned"' in (out / "replay").read_text()
    assert (out / "copy.jsonl").read_bytes() == before
    assert (out / "code").read_text().strip() == "4" and "read-only" in (out / "refused").read_text()
    assert (root_dir / cid / "logs" / "events.jsonl").read_bytes() == before


def test_cell_destroyed_cannot_be_emitted_on_its_own(cli: Cli) -> None:
    """It would end the log and leave the cell in place: only `cell destroy` appends it."""
    cli.ok("cell", "create", "forge")
    cli.ok("cell", "archive", "forge")
    before = cli.ok("verify", "forge")
    r = cli("emit", "forge", "cell.destroyed", "--by", "operator")
    assert r.code == 4 and "cell destroy" in r.err, r.err
    assert cli.ok("verify", "forge") == before
    assert cli.ok("cell", "destroy", "forge").strip().isdigit()


def _rechained(events: list[dict[str, Any]]) -> bytes:
    """The events as log lines with every `prev` recomputed: a chain that verifies, whatever they say."""
    import hashlib
    import json

    prev, lines = "0" * 64, []
    for e in events:
        e["prev"] = prev
        line = json.dumps(e, separators=(",", ":")).encode()
        prev = hashlib.sha256(line).hexdigest()
        lines.append(line + b"\n")
    return b"".join(lines)


def test_a_rechained_log_holding_what_the_rules_refuse_is_not_imported(cli: Cli, root_dir: Path,
                                                                         tmp_path: Path) -> None:
    """Every prev recomputed after an edit passes `verify`; import re-admits each event all the same."""
    import json

    cli.ok("cell", "create", "forge")
    cli.ok("agent", "invite", "forge", "scout", "--role", "read")
    cli.ok("heartbeat", "forge", "scout")
    cli.ok("export", "forge", "--to", str(tmp_path / "good.jsonl"))
    events = [json.loads(line) for line in (tmp_path / "good.jsonl").read_text().splitlines()]
    beat = next(e for e in events if e["type"] == "agent.heartbeat")
    forged = {**beat, "type": "bus.message", "topic": "leak", "payload": 1, "to": None, "seq": len(events) + 1}
    for k in ("agent", "pid", "cycle", "status", "model", "incarnation"):
        forged.pop(k, None)
    events.append(forged)  # a read-only agent's message: the rules refuse it, the fold would not
    (tmp_path / "forged.jsonl").write_bytes(_rechained(events))
    cli.ok("cell", "archive", "forge")
    cli.ok("cell", "destroy", "forge")
    before = sorted(p.name for p in root_dir.iterdir())
    r = cli("import", str(tmp_path / "forged.jsonl"))
    assert r.code == 5 and f"seq {len(events)}" in r.err and "append rules" in r.err, r.err
    assert sorted(p.name for p in root_dir.iterdir()) == before


def test_replay_refuses_a_rechained_log_holding_what_the_rules_refuse(cli: Cli, root_dir: Path) -> None:
    """`verify` only checks the chain; `replay` re-admits every event, in a run of heartbeats too."""
    import json

    cli.ok("cell", "create", "forge")
    cli.ok("agent", "invite", "forge", "scout", "--role", "read")
    cli.ok("agent", "invite", "forge", "ada", "--role", "lead")
    for _ in range(3):
        cli.ok("heartbeat", "forge", "scout")
    cli.ok("heartbeat", "forge", "ada")
    log = next(root_dir.glob("*/logs/events.jsonl"))
    good = log.read_bytes()
    assert cli("replay", "forge").code == 0
    events = [json.loads(line) for line in good.splitlines()]
    n = [i for i, e in enumerate(events) if e["type"] == "agent.heartbeat"][2]
    assert events[n]["by"] == "scout" and events[n - 1]["type"] == "agent.heartbeat"
    events[n]["agent"] = "ada"  # scout's third heartbeat, in a run, now speaking for ada: a fold would take it
    log.write_bytes(_rechained(events))
    assert cli("verify", "forge").code == 0  # the chain holds
    r = cli("replay", "forge")
    assert r.code == 5 and f"seq {n + 1}" in r.err and "append rules" in r.err, r.err
    assert len(r.err.strip().splitlines()) == 1


def test_free_text_is_shown_as_written_in_one_table_row(cli: Cli) -> None:
    """A mission, a task title or a reason is the user's words: brackets are not rich markup (`[/]` crashed
    the tables), and a multi-line mission keeps `cell list` one row per cell."""
    cli.ok("cell", "create", "forge", "--mission", "ship [/] it [bold]now\nand a second line")
    cli.ok("agent", "invite", "forge", "ada", "--role", "lead")
    cli.ok("bus", "task", "forge", "fix [/bold] parsing", "--by", "ada", "--id", "t1")
    rows = cli.ok("cell", "list").splitlines()
    assert len(rows) == 2 and rows[1].rstrip().endswith("ship [/] it [bold]now …")
    assert "fix [/bold] parsing" in cli.ok("bus", "tasks", "forge")
    out = cli.ok("replay", "forge")
    assert "mission: ship [/] it [bold]now\nand a second line" in out
    assert "forge" in cli.ok("status")
    cli.ok("bus", "checkpoint", "forge", "--by", "ada", "--summary", "done\x1b]0;owned\x07\x1b[2J")
    cli.ok("cell", "create", "evil", "--mission", "a\x1b[2Jred")
    shown = cli.ok("cell", "list") + cli.ok("replay", "evil") + cli.ok("timeline", "forge")
    assert "\x1b" not in shown and "\x07" not in shown  # an agent's words cannot drive the operator's terminal
    assert "a\\x1b[2Jred" in shown and "done\\x1b]0;owned\\x07\\x1b[2J" in shown


def test_replay_until_before_the_first_event_is_malformed(cli: Cli) -> None:
    cli.ok("cell", "create", "forge")
    for bad in ("-5", "0"):
        r = cli("replay", "forge", "--until", bad)
        assert r.code == 2 and "--until" in r.err and len(r.err.strip().splitlines()) == 1, r.err
    assert "at seq 1" in cli.ok("replay", "forge", "--until", "1")


def test_errors_say_names_in_words_and_name_the_flag_typed(cli: Cli) -> None:
    cli.ok("cell", "create", "forge")
    cli.ok("agent", "invite", "forge", "ada", "--role", "lead")
    r = cli("bus", "task", "forge", "t", "--by", "ada", "--id", "t5", "--depends-on", "../x")
    assert r.code == 2 and "regex" not in r.err and "an id ([A-Za-z0-9][A-Za-z0-9_.-]{0,127}, no '..')" in r.err
    r = cli("agent", "invite", "forge", "bob", "--role", "write", "--heartbeat-interval", "-1")
    assert r.code == 2 and r.err.rstrip().endswith("at `$.heartbeat_interval` (from --heartbeat-interval)"), r.err
    r = cli("emit", "forge", "bus.message", "--by", "ada", "--data", '{"topic": 5}')
    assert r.code == 2 and r.err.rstrip().endswith("at `$.topic`")  # a field of --data: no flag of its own
