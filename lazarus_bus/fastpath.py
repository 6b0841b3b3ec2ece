"""`lazarus heartbeat` and `lazarus emit` without click: agents in a shell call them every few seconds
and click costs about half an interpreter start to import (issue 21).

The options of these two commands and the global ones are declared here once, as data: cli.py builds
its click options from these tables, and `parse` reads only an argv it can read exactly as click
would (anything else, `--help` included, is click's to answer). Both paths run the same functions.
Importing this module imports no msgspec: `run` imports it its own way (`_import_msgspec`)."""

from __future__ import annotations

import errno
import json
import os
import signal
import sys
from collections.abc import Callable, Sequence
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, NamedTuple, NoReturn

from .errors import LazarusError, MalformedInput

if TYPE_CHECKING:
    from .cells import Cell, Root
    from .config import Config
    from .log import Appended

__all__ = ["App", "Argument", "Command", "EMIT", "GLOBAL", "HEARTBEAT", "Option", "appended", "emit", "fail", "flagged",
           "guarded", "heartbeat", "parse", "read_data", "run"]

Value = str | int | bool | None


# NamedTuples, not Structs: choosing the path must not import msgspec (see `_import_msgspec`)
class Option(NamedTuple):
    """One option as click declares it: `--flag VALUE` (text or int) or a bare flag."""

    flag: str
    dest: str
    kind: Literal["text", "int", "flag"] = "text"
    default: Value = None
    required: bool = False
    eager: bool = False
    help: str | None = None


class Argument(NamedTuple):
    """One positional argument."""

    dest: str
    metavar: str


class Command(NamedTuple):
    """A command's arguments and options, in the order click shows them."""

    name: str
    arguments: tuple[Argument, ...]
    options: tuple[Option, ...]


# accepted before or after the subcommand; each sets the attribute of `App` its dest names
GLOBAL = (
    Option("--root", "root_opt", eager=True, help="Missions root (else $LAZARUS_ROOT, config, XDG)."),
    Option("--config", "config_opt", eager=True, help="Config file (else $LAZARUS_CONFIG, <root>/lazarus.toml)."),
    Option("--json", "json", "flag", False, help="Machine-readable output."),
    Option("--debug", "debug", "flag", False, help="Show tracebacks."),
)
HEARTBEAT = Command("heartbeat", (Argument("ref", "CELL"), Argument("name", "AGENT")), (
    Option("--status", "status", default=""),
    Option("--cycle", "cycle", "int", 0, help="The agent's progress counter."),
    Option("--pid", "pid", "int", 0),
    Option("--model", "model", default=""),
))
EMIT = Command("emit", (Argument("ref", "CELL"), Argument("kind", "TYPE")), (
    Option("--by", "by", required=True, help="Who appends: an agent, operator or lazarus."),
    Option("--data", "data", help="Payload fields as JSON, @FILE or - (stdin)."),
    Option("--expected-seq", "expected_seq", "int", help="Refuse unless the log ends at this seq."),
    Option("--id", "event_id", help="Event id (UUID) for idempotent retries."),
))


class App:
    """What every command shares: global options, the root and its config."""

    def __init__(self) -> None:
        self.root_opt: str | None = None
        self.config_opt: str | None = None
        self.json = False
        self.debug = False

    @cached_property
    def _resolved(self) -> tuple[Path, Config]:
        from .config import resolve

        return resolve(self.root_opt, self.config_opt)

    @property
    def config(self) -> Config:
        return self._resolved[1]

    @cached_property
    def root(self) -> Root:
        from .cells import Root

        return Root(*self._resolved)

    def cell(self, ref: str) -> Cell:
        """A cell by id or name; inside an agent the daemon started, what that agent appends carries
        its incarnation (so a superseded copy is fenced, exit 4)."""
        cell = self.root.open(ref)
        agent, incarnation = os.environ.get("LAZARUS_AGENT"), os.environ.get("LAZARUS_INCARNATION")
        if agent and incarnation and os.environ.get("LAZARUS_CELL") == cell.id:
            cell.speak_as(agent, incarnation)
        if not os.environ.get("LAZARUS_SOCKET"):
            return cell
        from .client import use_socket

        return use_socket(cell)


def read_data(value: str | None) -> Any:
    """`--data`/`--state`: inline JSON, @FILE or - (stdin)."""
    if value is None:
        return None
    if value == "-":
        raw = sys.stdin.buffer.read()
    elif value.startswith("@"):
        try:
            raw = Path(value[1:]).read_bytes()
        except OSError as exc:
            raise MalformedInput(f"cannot read {value[1:]}: {exc.strerror}") from None
    else:
        raw = value.encode()
    from .events import decode_json

    return decode_json(raw)


def appended(app: App, written: list[Appended], extra: dict[str, Any] | None = None) -> str:
    """The line an appending command prints: the seq of the event asked for (the first written) and the
    ids it made, or all of it as JSON."""
    first = written[0]
    data = {"seq": first.seq, "id": first.event.id, "type": first.event.type, "duplicate": first.duplicate}
    data.update(extra or {})
    if app.json:
        return json.dumps(data, default=str)
    return str(first.seq) if not extra else f"{first.seq} " + " ".join(str(v) for v in extra.values())


def _print(text: str) -> None:
    """One line on stdout, as click.echo writes it: the text here is ASCII (a seq, or JSON, which escapes
    everything else), so click's re-encoding and stripping of ANSI codes would change nothing."""
    if sys.stdout is None:  # no stdout at all: click.echo writes nothing
        return
    sys.stdout.write(text + "\n")
    sys.stdout.flush()


def heartbeat(app: App, ref: str, name: str, status: str, cycle: int, pid: int, model: str) -> None:
    """Append a heartbeat for AGENT (by AGENT)."""
    from .events import parse_draft

    payload = {"type": "agent.heartbeat", "agent": name, "status": status, "cycle": cycle, "pid": pid, "model": model}
    cell = app.cell(ref)
    _print(appended(app, cell.append(parse_draft(payload, by=name))))


def emit(app: App, ref: str, kind: str, by: str, data: str | None, expected_seq: int | None,
         event_id: str | None) -> None:
    """Append any event; prints its seq."""
    from .events import parse_emitted

    payload = read_data(data) if data is not None else {}
    if not isinstance(payload, dict):
        raise MalformedInput("--data must be a JSON object of payload fields")
    if "type" in payload and payload["type"] != kind:
        raise MalformedInput(f"--data says type {payload['type']!r} but TYPE is {kind!r}")
    payload = {**payload, "type": kind}
    if event_id is not None:
        payload["id"] = event_id
    c = app.cell(ref)
    _print(appended(app, c.append(parse_emitted(payload, by=by), expected_seq=expected_seq)))


COMMANDS: dict[str, tuple[Command, Callable[..., None]]] = {"heartbeat": (HEARTBEAT, heartbeat), "emit": (EMIT, emit)}
_GLOBAL_FLAGS = frozenset(o.flag for o in GLOBAL)


def parse(argv: Sequence[str]) -> tuple[Callable[..., None], App, dict[str, Value]] | None:
    """The command, the global settings and the command's values, for an argv naming `heartbeat` or
    `emit` with only options and values click would read the same way; None for anything else (help,
    `--`, `-`, an unknown option, a flag given a value, an option without one, a value that starts with
    `-`, a bad int, a missing or extra argument), which click then answers with its own words and exit code."""
    if os.environ.get("_LAZARUS_COMPLETE"):  # click's shell completion
        return None
    options = {o.flag: o for o in GLOBAL}
    command: Command | None = None
    settings: dict[str, Value] = {}
    values: dict[str, Value] = {}
    positional: list[str] = []
    tokens = iter(argv)
    for token in tokens:
        if token[:1] != "-":
            if command is not None:
                positional.append(token)
                continue
            found = COMMANDS.get(token)
            if found is None:
                return None
            command = found[0]
            options.update((o.flag, o) for o in command.options)
            continue
        flag, sep, text = token.partition("=")
        option = options.get(flag)
        if option is None:
            return None
        value: Value
        if option.kind == "flag":
            if sep:
                return None
            value = True
        else:
            if not sep:
                given = next(tokens, None)
                if given is None or given[:1] == "-":
                    return None
                text = given
            if option.kind == "int":
                try:
                    value = int(text)
                except ValueError:
                    return None
            else:
                value = text
        (settings if flag in _GLOBAL_FLAGS else values)[option.dest] = value
    if command is None or len(positional) != len(command.arguments):
        return None
    if any(o.required and o.dest not in values for o in command.options):
        return None
    app = App()
    for dest, value in settings.items():
        setattr(app, dest, value)
    given_values: dict[str, Value] = {a.dest: p for a, p in zip(command.arguments, positional)}
    given_values.update({o.dest: values.get(o.dest, o.default) for o in command.options})
    return COMMANDS[command.name][1], app, given_values


def fail(message: str, code: int) -> NoReturn:
    """One `error: ...` line on stderr (through click.echo, like every other command), then the exit code."""
    import click

    click.echo(f"error: {message}", err=True)
    sys.exit(code)


def flagged(message: str, argv: Sequence[str]) -> str:
    """An error about an event field (`at `$.heartbeat_interval``) also names the flag the user typed for it."""
    at = message.rfind("at `$.")
    if at < 0:
        return message
    field = message[at + 6:].split("`")[0].split("[")[0].split(".")[0]
    flag = "--" + field.replace("_", "-")
    return f"{message} (from {flag})" if any(a == flag or a.startswith(flag + "=") for a in argv) else message


def guarded(body: Callable[[], None], debug: bool, argv: Sequence[str] = ()) -> NoReturn:
    """Run a command: one `error: ...` line and the documented exit code on failure."""
    if hasattr(signal, "SIGXFSZ"):
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a file-size limit is an error, not a kill
    try:
        body()
    except LazarusError as exc:
        if debug:
            raise
        fail(flagged(str(exc), argv), exc.exit_code)
    except BrokenPipeError:
        sys.stderr.close()
        sys.exit(0)
    except OSError as exc:
        if debug:
            raise
        fail(f"{exc.filename or ''}{': ' if exc.filename else ''}{exc.strerror or exc}", 1)
    except Exception as exc:  # noqa: BLE001 - the one place every unexpected failure becomes one line
        if debug:
            raise
        fail(f"internal error: {type(exc).__name__}: {exc} (run with --debug for the traceback)", 1)
    sys.exit(0)


def _import_msgspec() -> None:
    """Import msgspec without typing_extensions, whose import (mostly the `inspect` it pulls in) costs a third
    of an interpreter start: msgspec then reads annotations with `typing.get_type_hints`, which on this
    Python resolves every annotation of this package's Structs alike (tests/test_fastpath.py compares them)."""
    if "msgspec" in sys.modules or "typing_extensions" in sys.modules:
        return
    sys.modules["typing_extensions"] = None  # type: ignore[assignment]  # msgspec's own fallback when it is absent
    try:
        import msgspec  # noqa: F401
    finally:
        del sys.modules["typing_extensions"]  # anything imported later finds the real one


def _done() -> NoReturn:
    """Exit 0 now that the command has done its work: the file log's writes are the kernel's already (made
    durable as `fsync` says before the append returned), no thread is left and nothing registered `atexit`,
    so the interpreter's teardown of every module (a third of an interpreter start) would change nothing."""
    for stream in (sys.stdout, sys.stderr):
        if stream is not None:
            stream.flush()  # a broken pipe raises here, as at a normal exit
    os._exit(0)


def run(call: Callable[..., None], app: App, values: dict[str, Value], debug: bool,
        argv: Sequence[str] = ()) -> NoReturn:
    """Run a parsed command as click's `main` would run it (an interrupt and a broken pipe as click takes
    them), then as the CLI's own `main` does."""
    _import_msgspec()

    def body() -> None:
        try:
            call(app, **values)
            if app.config.backend == "file":
                _done()
        except (EOFError, KeyboardInterrupt):
            import click

            click.echo(file=sys.stderr)  # click closes the terminal's ^C echo with a blank line
            fail("interrupted", 130)
        except OSError as exc:
            if exc.errno != errno.EPIPE:
                raise
            from click.utils import _PacifyFlushWrapper  # what click does: no complaint when the streams flush at exit

            sys.stdout = _PacifyFlushWrapper(sys.stdout)
            sys.stderr = _PacifyFlushWrapper(sys.stderr)
            sys.exit(1)

    guarded(body, debug, argv)
