"""`lazarus heartbeat` and `emit` without click (lazarus_bus.fastpath) say and do exactly what click says and does."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import click
import pytest

from lazarus_bus import cli as click_cli
from lazarus_bus import fastpath

from .conftest import Cli, Procs, Result

ENTRY = [sys.executable, "-m", "lazarus_bus"]  # as the console script enters: lazarus_bus.entry
CLICK = [sys.executable, "-c", "from lazarus_bus.cli import main; main()"]  # click, whatever the argv
EID = "2b0ad6a4-3a0e-4d5c-9f5e-8a1b2c3d4e5f"
UUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")

# (argv, stdin, extra environment); "{root}" and "{data}" are filled in per copy of the root
CASES: list[tuple[list[str], str | None, dict[str, str]]] = [
    (["heartbeat", "forge", "ezra", "--cycle", "2"], None, {}),
    (["heartbeat", "forge", "ezra", "--cycle=3", "--status", "thinking", "--pid", "7", "--model", "m", "--json"],
     None, {}),
    (["--json", "heartbeat", "--status=", "forge", "ezra"], None, {}),
    (["--root", "{root}", "heartbeat", "forge", "ezra", "--root", "{root}", "--debug"], None, {}),
    (["heartbeat", "forge", "ezra", "--cycle", "5", "--cycle", "+6"], None, {}),
    (["heartbeat", "forge", "ezra", "--cycle", "-1"], None, {}),  # a value that looks like an option: click's
    (["heartbeat", "forge", "ezra", "--cycle", "0x9"], None, {}),
    (["emit", "forge", "bus.message", "--by", "ezra", "--data", '{"topic": "t"}'], None, {}),
    (["emit", "forge", "bus.message", "--data", "-", "--by", "ezra"], '{"topic": "in"}', {}),
    (["emit", "forge", "bus.message", "--by", "ezra", "--data", "@{data}"], None, {}),
    (["emit", "forge", "bus.message", "--by", "ezra", "--data", '{"topic": "x"}', "--id", EID, "--json"], None, {}),
    (["emit", "forge", "bus.message", "--by", "ezra", "--data", '{"topic": "x"}', "--id", EID, "--json"], None, {}),
    (["emit", "forge", "bus.message", "--by", "ezra", "--data", '{"topic": "y"}', "--expected-seq", "1"], None, {}),
    (["emit", "forge", "bus.message", "--by", "ezra", "--data", "{"], None, {}),
    (["emit", "forge", "bus.message", "--by", "ezra", "--data", "[1]"], None, {}),
    (["emit", "forge", "bus.message", "--by", "ezra", "--data", '{"type": "bus.task", "topic": "t"}'], None, {}),
    (["emit", "forge", "bus.message", "--by", "ezra", "--data", "@/nonexistent/d.json"], None, {}),
    (["emit", "forge", "cell.destroyed", "--by", "operator"], None, {}),
    (["emit", "forge", "bus.message", "--by", "reader", "--data", '{"topic": "t"}'], None, {}),
    (["heartbeat", "nosuch", "ezra"], None, {}),
    (["heartbeat", "forge", "ghost"], None, {}),
    (["heartbeat", "../x", "ezra"], None, {}),
    (["heartbeat", "forge", "ezra", "--config", "/nonexistent/lazarus.toml"], None, {}),
    (["heartbeat", "forge", "ezra"], None, {"LAZARUS_CELL": "forge-1", "LAZARUS_AGENT": "ezra",
                                            "LAZARUS_INCARNATION": "0190f0c5-0b7e-7c3e-9e2b-1d2f3a4b5c6d"}),
    (["heartbeat", "forge", "ezra"], None, {"LAZARUS_DEBUG": "1"}),
    # usage: the fast path hands each of these to click
    (["heartbeat", "forge"], None, {}),
    (["heartbeat", "forge", "ezra", "extra"], None, {}),
    (["heartbeat", "forge", "ezra", "--bogus"], None, {}),
    (["heartbeat", "forge", "ezra", "--json=1"], None, {}),
    (["heartbeat", "forge", "ezra", "--cycle"], None, {}),
    (["heartbeat", "forge", "ezra", "--cyc", "1"], None, {}),
    (["emit", "forge", "bus.message"], None, {}),
    (["emit", "forge", "bus.message", "--by"], None, {}),
    (["heartbeat", "--help"], None, {}),
    (["emit", "forge", "x", "-h"], None, {}),
    (["--version"], None, {}),
    (["heartbeat", "--", "forge", "ezra"], None, {}),
    (["heartbeat", "-", "ezra"], None, {}),
    (["--cycle", "1", "heartbeat", "forge", "ezra"], None, {}),
]


def _run(prefix: list[str], root: Path, data: Path, case: tuple[list[str], str | None, dict[str, str]],
         cli: Cli, procs: Procs) -> Result:
    args, stdin, extra = case
    argv = [a.replace("{root}", str(root)).replace("{data}", str(data)) for a in args]
    env = {**cli.env(**extra), "LAZARUS_ROOT": str(root)}
    p = procs.start(prefix + argv, stdin=subprocess.PIPE, env=env)
    out, err = p.communicate(stdin.encode() if stdin is not None else b"", timeout=60)

    def same(text: bytes) -> str:
        return UUID.sub("<uuid>", text.decode().replace(str(root), "<root>"))

    return Result(p.returncode, same(out), same(err))


@pytest.fixture
def twins(cli: Cli, tmp_path: Path) -> tuple[Path, Path, Path]:
    """Two copies of one root: the fast path runs on one, click on the other."""
    cli.ok("cell", "create", "forge", "--id", "forge-1")
    cli.ok("agent", "invite", "forge", "ezra", "--role", "lead")
    cli.ok("agent", "invite", "forge", "reader", "--role", "read")
    cli.ok("heartbeat", "forge", "ezra", "--cycle", "1")
    a, b = tmp_path / "a", tmp_path / "b"
    shutil.copytree(cli.root, a, symlinks=True)
    shutil.copytree(cli.root, b, symlinks=True)
    data = tmp_path / "d.json"
    data.write_text('{"topic": "file", "payload": [1, 2]}')
    return a, b, data


def _events(root: Path) -> list[dict[str, object]]:
    """The log with what differs from run to run (ids, times, the hashes over them) left out."""
    lines = (root / "forge-1" / "logs" / "events.jsonl").read_bytes().splitlines()
    return [{k: v for k, v in json.loads(x).items() if k not in ("id", "ts", "prev")} for x in lines]


def test_every_argv_gets_the_same_answer_and_appends_the_same_events(cli: Cli, procs: Procs,
                                                                     twins: tuple[Path, Path, Path]) -> None:
    a, b, data = twins
    for case in CASES:
        fast, slow = _run(ENTRY, a, data, case, cli, procs), _run(CLICK, b, data, case, cli, procs)
        if "LAZARUS_DEBUG" in case[2] or "--debug" in case[0]:  # a traceback, if any, names other frames
            assert (fast.code, fast.out, "Traceback" in fast.err) == (slow.code, slow.out, "Traceback" in slow.err)
        else:
            assert fast == slow, case
        assert _events(a) == _events(b), case
    assert len(_events(a)) > 10  # the appends happened


def test_a_broken_pipe_on_stdout_is_clicks_exit_1(cli: Cli, procs: Procs, twins: tuple[Path, Path, Path]) -> None:
    """Click takes an EPIPE during a command as exit 1, with nothing said when the streams flush at exit."""
    a, b, _ = twins
    got = []
    for prefix, root in ((ENTRY, a), (CLICK, b)):
        r, w = os.pipe()
        os.close(r)  # nobody reads: the seq's write fails with EPIPE
        p = procs.start([*prefix, "heartbeat", "forge", "ezra"], stdout=w, env={**cli.env(), "LAZARUS_ROOT": str(root)})
        os.close(w)
        _, err = p.communicate(timeout=60)
        got.append((p.returncode, err))
    assert got[0] == got[1] == (1, b"")
    assert _events(a) == _events(b)


def test_click_reads_the_options_the_fast_path_reads() -> None:
    """One table in fastpath.py makes both: click's options for these commands are exactly the table's."""
    group = {opt for p in click_cli.cli.params for opt in p.opts} - {"-h", "--help", "--version"}
    assert group == {o.flag for o in fastpath.GLOBAL}
    for spec in (fastpath.HEARTBEAT, fastpath.EMIT):
        command = click_cli.cli.commands[spec.name]
        options = {opt: p for p in command.params if isinstance(p, click.Option) for opt in p.opts}
        ours = {o.flag: o for o in (*spec.options, *fastpath.GLOBAL)}
        assert set(options) - {"-h", "--help"} == set(ours)
        for flag, o in ours.items():
            p = options[flag]
            assert (p.is_flag, p.required, p.type.name) == (
                o.kind == "flag", o.required, {"flag": "boolean", "int": "integer", "text": "text"}[o.kind]), flag
            if not o.required:
                assert p.default == o.default, flag
        assert [(p.name, p.metavar) for p in command.params if isinstance(p, click.Argument)] == [
            (x.dest, x.metavar) for x in spec.arguments]


@pytest.mark.parametrize("argv", [
    [], ["status"], ["heartbeat"], ["heartbeat", "c"], ["heartbeat", "c", "a", "b"], ["heartbeat", "-h", "c", "a"],
    ["heartbeat", "c", "a", "--help"], ["heartbeat", "c", "a", "--cycle", "x"], ["heartbeat", "c", "a", "--cycle"],
    ["heartbeat", "c", "a", "--cycle", "-1"], ["heartbeat", "c", "a", "--json=yes"], ["heartbeat", "--", "c", "a"],
    ["heartbeat", "c", "a", "--by", "x"], ["emit", "c", "t"], ["emit", "c", "t", "--by"], ["--cycle", "1", "heartbeat"],
    ["--version", "heartbeat", "c", "a"], ["bus", "publish", "c", "t", "--by", "a"],
])
def test_argv_click_must_answer_is_not_parsed(argv: list[str]) -> None:
    assert fastpath.parse(argv) is None


def test_shell_completion_is_left_to_click(monkeypatch: pytest.MonkeyPatch) -> None:
    assert fastpath.parse(["heartbeat", "c", "a"]) is not None
    monkeypatch.setenv("_LAZARUS_COMPLETE", "bash_complete")
    assert fastpath.parse(["heartbeat", "c", "a"]) is None


_TYPES = """
import importlib, pkgutil, sys
if sys.argv[1] == "lean":
    from lazarus_bus.fastpath import _import_msgspec
    _import_msgspec()
    assert "msgspec" in sys.modules and "typing_extensions" not in sys.modules
import msgspec, lazarus_bus
structs = set()
for m in sorted(pkgutil.walk_packages(lazarus_bus.__path__, "lazarus_bus."), key=lambda m: m.name):
    if m.name != "lazarus_bus.__main__":
        found = vars(importlib.import_module(m.name)).values()
        structs |= {v for v in found if isinstance(v, type) and issubclass(v, msgspec.Struct)
                    and v.__module__.startswith("lazarus_bus")}
types = sorted(structs, key=lambda t: (t.__module__, t.__qualname__))
print(len(types), repr(msgspec.inspect.multi_type_info(types)))
"""


def test_msgspec_without_typing_extensions_reads_every_struct_alike() -> None:
    """The fast path imports msgspec with typing_extensions kept out (typing's get_type_hints instead):
    every Struct of the package must come out the same, field by field, constraint by constraint."""
    got = [subprocess.run([sys.executable, "-c", _TYPES, how], capture_output=True, text=True, timeout=120,
                          check=True, start_new_session=True).stdout for how in ("lean", "normal")]
    assert int(got[0].split()[0]) > 50
    assert got[0] == got[1]
