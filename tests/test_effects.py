"""The side-effect ledger: a completed effect is answered with its result and never run again, a retry
needs a retryable failure or a resolution, an effect cut off by a crash is in doubt until verified,
run again because it is idempotent, or resolved; and through a real daemon, SIGKILL at any point of
a payment never pays twice."""

from __future__ import annotations

import asyncio
import json
import math
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from lazarus_bus import Cell, InDoubt, MalformedInput, Refused, Root, connect
from lazarus_bus import events as ev
from lazarus_bus.client import FENCED_EXIT, Agent
from lazarus_bus.errors import EffectDone, Forbidden
from lazarus_bus.fold import CellView
from tests.conftest import Cli, Procs
from tests.support import Up, wait

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


def view_of(cell: Cell) -> CellView:
    return cell.refresh()


# -- the ledger's rules, in one process -------------------------------------------------------


@pytest.fixture
def forge(root: Root) -> Cell:
    cell = root.create("forge")
    cell.append(ev.AgentInvited(by="operator", agent="w", role="write"))
    cell.append(ev.AgentInvited(by="operator", agent="r", role="read"))
    return cell


def agent(root: Root, name: str = "w") -> Agent:
    me = connect("forge", name, root=root.path)
    me.join()
    return me


class Counter:
    """A side effect that counts its runs."""

    def __init__(self) -> None:
        self.calls: list[dict[str, Any]] = []

    def __call__(self, *args: Any, **kwargs: Any) -> dict[str, Any]:
        self.calls.append({"args": list(args), **kwargs})
        return {"paid": args[0] if args else None, "n": len(self.calls)}


def crash(*args: Any, **kwargs: Any) -> None:
    raise KeyboardInterrupt  # a process dying mid-effect: no outcome recorded


def test_a_completed_effect_returns_its_recorded_result_and_never_runs_again(root: Root, forge: Cell) -> None:
    me, pay = agent(root), Counter()
    first = me.effect("invoice-42", pay, 42)
    again = me.effect("invoice-42", pay, 42)
    assert first == again == {"paid": 42, "n": 1} and len(pay.calls) == 1
    with pytest.raises(EffectDone) as done:  # a start of a completed id is refused, with the result
        forge.append(ev.EffectStarted(by="w", agent="w", effect_id="invoice-42"))
    assert done.value.result == {"paid": 42, "n": 1} and done.value.http_status == 409
    types = [e.type for e in forge.log.read() if e.type.startswith("effect.")]
    assert types == ["effect.started", "effect.completed"]


def test_retries_follow_a_retryable_failure_or_a_retry_resolution_only(root: Root, forge: Cell) -> None:
    me = agent(root)

    class Flaky(Exception):
        retryable = True

    def flaky() -> None:
        raise Flaky("bank busy")

    def broken() -> None:
        raise ValueError("card declined")

    with pytest.raises(Flaky):
        me.effect("e1", flaky)
    assert me.effect("e1", Counter()) == {"paid": None, "n": 1}
    assert [e.attempt for e in forge.log.read() if isinstance(e, ev.EffectStarted)] == [1, 2]
    with pytest.raises(ValueError):
        me.effect("e2", broken)
    with pytest.raises(Refused, match="failed for good"):
        me.effect("e2", Counter())
    forge.append(ev.EffectResolved(by="operator", effect_id="e2", outcome="retry", note="new card"))
    assert me.effect("e2", Counter())["n"] == 1
    with pytest.raises(Forbidden):  # another agent records no outcome of w's effect
        forge.append(ev.EffectResolved(by="r", effect_id="e2", outcome="failed"))


def test_an_effect_cut_off_is_in_doubt_until_verified_run_idempotently_or_resolved(root: Root, forge: Cell) -> None:
    first = agent(root)
    for effect_id in ("a", "b", "c", "d"):
        with pytest.raises(KeyboardInterrupt):
            first.effect(effect_id, crash)
    with pytest.raises(Refused, match="already running"):  # the same session: not in doubt, still refused
        first.effect("a", Counter())
    second = agent(root)  # a new session of the unsupervised agent: what the first left open is in doubt
    pay = Counter()
    with pytest.raises(InDoubt) as doubt:
        second.effect("a", pay)
    assert doubt.value.effect_id == "a" and str(doubt.value).startswith("in doubt:") and not pay.calls
    assert second.effect("a", pay, verify=lambda effect_id: {"found": effect_id}) == {"found": "a"}
    assert second.effect("b", pay, 7, verify=lambda effect_id: None) == {"paid": 7, "n": 1}  # not done: runs
    assert second.effect("c", pay, 8, idempotent=True) == {"paid": 8, "n": 2}
    assert pay.calls[-1]["idempotency_key"] == "c"
    forge.append(ev.EffectResolved(by="operator", effect_id="d", outcome="completed", result={"by": "hand"}))
    assert second.effect("d", pay) == {"by": "hand"} and len(pay.calls) == 2
    v = view_of(forge)
    assert [(e.effect_id, e.status, e.attempt) for e in v.effects.values()] == [
        ("a", "completed", 1), ("b", "completed", 2), ("c", "completed", 2), ("d", "completed", 1)]
    assert forge.replay() == v


def test_usage_and_reserve_refuse_malformed_amounts_in_the_client(root: Root, forge: Cell) -> None:
    me = agent(root)
    for bad in ({"cost": math.nan}, {"cost": math.inf}, {"cost": -0.01}, {"tokens_in": -1}):
        with pytest.raises(MalformedInput):
            me.usage(**bad)  # type: ignore[arg-type]
    with pytest.raises(MalformedInput):
        me.reserve(cost=math.nan)
    with pytest.raises(MalformedInput):
        me.reserve(tokens=-5)
    spend = me.usage(cost=0.25, tokens_in=10, tokens_out=5)
    assert (spend["cost"], spend["tokens"], spend["calls"]) == (0.25, 15, 1)
    assert not [e for e in forge.log.read() if isinstance(e, ev.AgentUsage) and e.cost != 0.25]


def test_resume_packets_say_what_was_done_what_is_in_doubt_and_what_was_spent(cli: Cli, root: Root,
                                                                            forge: Cell) -> None:
    me = agent(root)
    me.effect("mail-1", Counter(), "ann")
    with pytest.raises(KeyboardInterrupt):
        me.effect("mail-2", crash)
    me.usage(cost=0.5, tokens_in=100)
    cp = me.checkpoint("two mails out of three", state={"next": 3})
    me.handoff("w", cp, note="carry on")
    agent(root)  # a new session: mail-2 is in doubt now
    handoff_id = next(iter(view_of(forge).handoffs))
    packet = json.loads(cli.ok("bus", "resume", "forge", handoff_id, "--json"))
    assert packet["effects"]["completed"] == {"mail-1": {"paid": "ann", "n": 1}}
    assert packet["effects"]["in_doubt"] == ["mail-2"]
    assert packet["budget"]["spent"]["cost"] == 0.5 and packet["budget"]["left"]["cost"] is None
    assert packet["checkpoint_summary"] == "two mails out of three"
    assert packet["checkpoint"]["state"] == {"next": 3} and {"incarnation", "attempt"} <= packet.keys()
    os.environ["LAZARUS_RESUME"] = f"checkpoint:{cp}"
    try:
        resumed = agent(root).resume()
    finally:
        del os.environ["LAZARUS_RESUME"]
    assert resumed is not None and resumed["effects"]["in_doubt"] == ["mail-2"]
    assert resumed["checkpoint"]["checkpoint_id"] == cp


def test_the_cli_for_shell_agents(cli: Cli, root: Root, forge: Cell) -> None:
    assert cli("effect", "start", "forge", "w", "mail-1", "--name", "send").code == 0
    busy = cli("effect", "start", "forge", "w", "mail-1")
    assert busy.code == 4 and "already running" in busy.err
    cli.ok("effect", "complete", "forge", "w", "mail-1", "--result", '{"message_id": "m1"}')
    done = cli("effect", "start", "forge", "w", "mail-1")
    assert done.code == 4 and json.loads(done.out) == {"message_id": "m1"} and done.err.startswith("error: ")
    cli.ok("effect", "start", "forge", "w", "mail-2")
    cli.ok("effect", "fail", "forge", "w", "mail-2", "--error", "smtp down", "--retryable")
    assert "1" in cli.ok("effect", "start", "forge", "w", "mail-2", "--json")
    running = cli("effects", "resolve", "forge", "mail-2", "--outcome", "completed")
    assert running.code == 4 and "still running" in running.err  # its session runs: it records its own outcome
    cli.ok("agent", "leave", "forge", "w")  # the session that started mail-2 is gone
    [row] = json.loads(cli.ok("effects", "forge", "--in-doubt", "--json"))
    assert (row["effect_id"], row["attempt"], row["in_doubt"]) == ("mail-2", 2, True)
    assert "mail-2" in cli.ok("effects", "forge", "--agent", "w") and "in doubt" in cli.ok("effects", "forge")
    status = json.loads(cli.ok("status", "forge", "--json"))
    assert status["cells"][0]["agents"][0]["in_doubt"] == ["mail-2"]
    cli.ok("effects", "resolve", "forge", "mail-2", "--outcome", "completed", "--result", "1", "--note", "seen")
    assert json.loads(cli.ok("effects", "forge", "--in-doubt", "--json")) == []
    assert cli("effects", "resolve", "forge", "nope", "--outcome", "retry").code == 3
    assert cli("effects", "resolve", "forge", "mail-1", "--outcome", "retry").code == 4  # completed stays done
    assert cli("effects", "resolve", "forge", "mail-1", "--outcome", "maybe").code == 2


# -- through a real daemon ----------------------------------------------------------------------


def invite_payer(cli: Cli, *env: str) -> None:
    args = [a for e in env for a in ("--env", e)]
    cli.ok("agent", "invite", "forge", "payer", "--role", "write", *args,
           "--cmd", f"{sys.executable} {EXAMPLES / 'payer.py'}")


def bank(cell: Cell) -> list[str]:
    path = cell.workspace / "bank.jsonl"
    return [json.loads(line)["invoice"] for line in path.read_text().splitlines()] if path.exists() else []


def kill_when_halted(cell: Cell, point: str) -> int:
    """SIGKILL the payer's process group once it stands at `point`; returns the number of starts before."""
    wait(lambda: (cell.workspace / f"halted-{point}").exists(), f"the payer halted at {point}")
    a = view_of(cell).agents["payer"]
    os.killpg(a.pid, signal.SIGKILL)
    return a.spawns


@pytest.mark.parametrize("point", ["before:invoice-42", "paying:invoice-42", "paid:invoice-42",
                                   "after:invoice-42", "paid:invoice-41"])
def test_the_payer_killed_at_any_point_pays_every_invoice_once(up: Up, cli: Cli, point: str) -> None:
    up.config('[resurrection]\nmode = "yes"\n')
    cli.ok("cell", "create", "forge")
    invite_payer(cli, f"PAY_HALT_AT={point}")
    up.start()
    cell = up.cell()
    spawns = kill_when_halted(cell, point.replace(":", "-"))
    wait(lambda: view_of(cell).agents["payer"].phase == "left", "the revived payer to finish")
    v = view_of(cell)
    assert v.agents["payer"].spawns == spawns + 1 and v.agents["payer"].left_reason == "completed"
    assert bank(cell) == ["invoice-41", "invoice-42"]  # each paid once, whatever the SIGKILL cut
    assert {e.effect_id: e.status for e in v.effects.values()} == {"invoice-41": "completed",
                                                                   "invoice-42": "completed"}
    stage, _, invoice = point.partition(":")
    told = (cell.agent_logs / "payer.log").read_text()
    if stage in ("paying", "paid"):
        assert f"in doubt ['{invoice}']" in told, told  # the revived payer's resume packet said so
    effect = v.effects[invoice]
    outcome = [e for e in cell.log.read() if isinstance(e, ev.EffectResolved)]
    if stage == "paid":  # paid, not recorded: in doubt, and the bank said it was paid
        assert [(e.effect_id, e.outcome) for e in outcome] == [(invoice, "completed")] and effect.attempt == 1
    elif stage == "paying":  # started, not paid: in doubt, the bank knew nothing, so paid now
        assert [(e.effect_id, e.outcome) for e in outcome] == [(invoice, "retry")] and effect.attempt == 2
    else:
        assert outcome == [] and effect.attempt == 1
    assert v.agents["payer"].cost == pytest.approx(0.5) and v.agents["payer"].calls == 2  # two model calls paid
    assert cell.replay() == v


def test_killed_mid_payment_without_verify_waits_in_doubt_until_resolved(up: Up, cli: Cli) -> None:
    up.config('[resurrection]\nmode = "yes"\n')
    cli.ok("cell", "create", "forge")
    invite_payer(cli, "PAY_HALT_AT=paid:invoice-41", "PAY_VERIFY=0")
    up.start()
    cell = up.cell()
    kill_when_halted(cell, "paid-invoice-41")
    wait(lambda: view_of(cell).agents["payer"].status.startswith("waiting: in doubt"), "InDoubt in the revived payer")
    [row] = json.loads(cli.ok("effects", "forge", "--in-doubt", "--json"))
    assert row["effect_id"] == "invoice-41" and bank(cell) == ["invoice-41"]  # it had paid; nobody pays again
    cli.ok("effects", "resolve", "forge", "invoice-41", "--outcome", "completed", "--note", "the bank has it",
           "--result", '{"invoice": "invoice-41", "amount": 12.5, "confirmation": "conf-invoice-41"}')
    wait(lambda: view_of(cell).agents["payer"].phase == "left", "the payer to finish")
    assert bank(cell) == ["invoice-41", "invoice-42"]


def test_on_in_doubt_ask_turns_the_restart_into_an_approval_request_that_lists_them(up: Up, cli: Cli) -> None:
    up.config('[resurrection]\nmode = "yes"\n[effects]\non_in_doubt = "ask"\n')
    cli.ok("cell", "create", "forge")
    invite_payer(cli, "PAY_HALT_AT=paid:invoice-41")
    up.start()
    cell = up.cell()
    spawns = kill_when_halted(cell, "paid-invoice-41")
    [request] = wait(lambda: json.loads(cli.ok("approvals", "--json")), "the approval request")
    assert "invoice-41" in request["message"] and "effects resolve" in request["message"]
    assert view_of(cell).agents["payer"].spawns == spawns  # nothing restarted meanwhile
    cli.ok("effects", "resolve", "forge", "invoice-41", "--outcome", "completed", "--result", '{"confirmation": "x"}')
    cli.ok("approve", request["key"])
    wait(lambda: view_of(cell).agents["payer"].phase == "left", "the approved restart to finish")
    assert bank(cell) == ["invoice-41", "invoice-42"]


RACER = """
import os, pathlib, time
from lazarus_bus import connect
ran = pathlib.Path("ran.txt")
with connect() as me:
    while not pathlib.Path("go").exists():
        time.sleep(0.01)
    def act():
        with ran.open("a") as f:
            f.write(os.environ["LAZARUS_INCARNATION"] + "\\n")
        return "done"
    me.effect("race-1", act)
    me.progress("done")
    while True:
        time.sleep(1)
"""


def test_two_incarnations_racing_on_one_effect_never_both_run_it(up: Up, cli: Cli, procs: Procs,
                                                                 tmp_path: Path) -> None:
    script = tmp_path / "racer.py"
    script.write_text(RACER)
    up.config('[resurrection]\nmode = "yes"\n')
    cli.ok("cell", "create", "forge")
    cli.ok("agent", "invite", "forge", "w", "--role", "write", "--cmd", f"{sys.executable} {script}")
    up.start()
    cell = up.cell()
    old = wait(lambda: (a := view_of(cell).agents["w"]).phase == "running" and a.heartbeat_pid and a, "first start")
    os.killpg(old.pid, signal.SIGKILL)
    new = wait(lambda: (a := view_of(cell).agents["w"]).spawns == 2 and a.heartbeat_pid and a, "the revival")
    # a stale copy of the first incarnation (a partition, a missed kill) races the new one on the same id
    stale = procs.start([sys.executable, str(script)], cwd=cell.workspace,
                        env=cli.env(LAZARUS_AGENT="w", LAZARUS_CELL=cell.id, LAZARUS_INCARNATION=old.incarnation))
    (cell.workspace / "go").write_text("")
    _, err = stale.communicate(timeout=60)
    assert stale.returncode == FENCED_EXIT and b"fenced:" in err, err
    wait(lambda: "race-1" in view_of(cell).effects and view_of(cell).effects["race-1"].status == "completed",
         "the newest incarnation's effect")
    assert (cell.workspace / "ran.txt").read_text().split() == [new.incarnation]  # run once, by the newest
    started = [e for e in cell.log.read() if isinstance(e, ev.EffectStarted)]
    assert [e.incarnation for e in started] == [new.incarnation]


async def _http(base: str) -> list[tuple[int, Any]]:
    out = []
    async with aiohttp.ClientSession() as s:
        for method, path, body in [
            ("GET", "/cells/forge/effects?in_doubt=1", None),
            ("GET", "/cells/forge/effects", None),
            ("GET", "/cells/forge/effects?in_doubt=maybe", None),
            ("GET", "/cells/forge", None),
            ("GET", "/cells/forge/budget", None),
            ("POST", "/cells/forge/events", b'{"type": "agent.usage", "by": "w", "agent": "w", "cost": -1}'),
            ("POST", "/cells/forge/events", b'{"type": "agent.usage", "by": "w", "agent": "w", "cost": NaN}'),
            ("POST", "/cells/forge/events", b'{"type": "agent.usage", "by": "w", "agent": "w", "cost": 1e999}'),
            ("POST", "/cells/forge/events", b'{"type": "agent.usage", "by": "w", "agent": "w", "cost": 0.5}'),
            ("POST", "/cells/forge/events",
             b'{"type": "effect.started", "by": "w", "agent": "w", "effect_id": "pay-2"}'),
        ]:
            async with s.request(method, base + path, data=body,
                                 headers={"Content-Type": "application/json"}) as r:
                out.append((r.status, json.loads(await r.text())))
    return out


def test_the_gateway_lists_effects_and_spend_and_refuses_malformed_usage(up: Up, cli: Cli) -> None:
    up.config('[budget]\nmax_cost = 10\n')
    cli.ok("cell", "create", "forge")
    cli.ok("agent", "invite", "forge", "w", "--role", "write")
    cli.ok("effect", "start", "forge", "w", "pay-1")
    cli.ok("effect", "start", "forge", "w", "pay-2")
    cli.ok("effect", "complete", "forge", "w", "pay-2", "--result", '{"paid": 2}')
    cli.ok("agent", "leave", "forge", "w")
    cli.ok("agent", "invite", "forge", "w", "--role", "write")
    up.start("--http", "127.0.0.1:0")
    doubt, every, bad_flag, cell, budget, negative, nan, inf, ok, again = asyncio.run(_http(up.http))
    assert doubt[0] == 200 and [r["effect_id"] for r in doubt[1]] == ["pay-1"]
    assert [(r["effect_id"], r["in_doubt"]) for r in every[1]] == [("pay-1", True), ("pay-2", False)]
    assert bad_flag[0] == 422
    assert cell[1]["effects_in_doubt"] == ["pay-1"] and "spend" in cell[1]
    assert cell[1]["agents"][0]["in_doubt"] == ["pay-1"] and cell[1]["agents"][0]["spend"]["caps"]["cost"] == 10
    assert budget[1]["agents"][0]["caps"]["cost"] == 10
    assert negative[0] == 422 and "cost" in negative[1]["error"]
    assert nan[0] == 400 and inf[0] in (400, 422)
    assert ok[0] == 201
    assert again[0] == 409 and again[1]["result"] == {"paid": 2} and "already completed" in again[1]["error"]
    assert json.loads(cli.ok("budget", "forge", "w", "--json"))["agents"][0]["cost"] == 0.5
    assert cli("emit", "forge", "agent.usage", "--by", "w", "--data", '{"agent": "w", "cost": -2}').code == 2
    assert cli("emit", "forge", "agent.usage", "--by", "w", "--data", '{"agent": "w", "tokens_in": 1.5}').code == 2
    assert cli("budget", "raise", "forge", "w", "--cost", "nan").code == 2
    assert cli("budget", "raise", "forge", "w", "--cost", "-1").code == 2
    assert cli("budget", "raise", "forge", "w").code == 2


def test_a_cap_stops_the_payer_and_budget_raise_resumes_it(up: Up, cli: Cli) -> None:
    up.config('[resurrection]\nmode = "yes"\n[budget]\nmax_cost = 0.5\nwarn_at = 0.5\n')
    cli.ok("cell", "create", "forge")
    invite_payer(cli, "PAY_INVOICES=invoice-1:1,invoice-2:2,invoice-3:3")
    up.start()
    cell = up.cell()
    wait(lambda: view_of(cell).agents["payer"].phase == "stopped", "the payer stopped at its cap")
    v = view_of(cell)
    assert bank(cell) == ["invoice-1", "invoice-2"] and v.agents["payer"].budget_exceeded == "cost"
    kinds = [e.type for e in cell.log.read() if e.type.startswith("budget.")]
    assert kinds[-1] == "budget.exceeded" and kinds.count("budget.exceeded") == 1 and set(kinds) <= {
        "budget.warned", "budget.exceeded"}  # the warning, unless the daemon first saw the spend at the cap
    [request] = json.loads(cli.ok("approvals", "--json"))
    assert request["key"].startswith("budget-") and "budget raise forge payer" in request["message"]
    row = json.loads(cli.ok("status", "forge", "--json"))["cells"][0]["agents"][0]
    assert row["revival"].startswith("budget exceeded") and row["spend"]["caps"]["cost"] == 0.5
    wide = subprocess.run(cli.argv("status", "forge"), env=cli.env(COLUMNS="250"), capture_output=True, text=True,
                          timeout=60, start_new_session=True)
    assert "0.5/0.5 cost" in wide.stdout and "budget exceeded" in wide.stdout
    cli.ok("budget", "raise", "forge", "payer", "--cost", "0.5")
    wait(lambda: view_of(cell).agents["payer"].phase == "left", "the raised payer to finish")
    v = view_of(cell)
    assert bank(cell) == ["invoice-1", "invoice-2", "invoice-3"] and v.agents["payer"].spawns == 2
    assert v.agents["payer"].cost == pytest.approx(0.75) and json.loads(cli.ok("approvals", "--json")) == []


USER = """
import time
from lazarus_bus import connect
with connect() as me:
    me.usage(cost=0.125, tokens_in=100, tokens_out=10)
    while True:
        time.sleep(1)
"""


def test_spend_survives_revivals_and_daemon_restarts(up: Up, cli: Cli, tmp_path: Path) -> None:
    script = tmp_path / "user.py"
    script.write_text(USER)
    up.config('[resurrection]\nmode = "yes"\n')
    cli.ok("cell", "create", "forge")
    cli.ok("agent", "invite", "forge", "w", "--role", "write", "--cmd", f"{sys.executable} {script}")
    first = up.start()
    cell = up.cell()
    a = wait(lambda: (x := view_of(cell).agents["w"]).calls == 1 and x, "the first usage report")
    os.killpg(a.pid, signal.SIGKILL)
    a = wait(lambda: (x := view_of(cell).agents["w"]).calls == 2 and x, "the revived agent's report")
    os.killpg(first.pid, signal.SIGKILL)  # the daemon dies too; its agent lives on
    first.wait(10)
    up.start()
    os.killpg(a.pid, signal.SIGKILL)
    wait(lambda: view_of(cell).agents["w"].calls == 3, "a third incarnation under the new daemon")
    spent = json.loads(cli.ok("budget", "forge", "--json"))
    [row] = spent["agents"]
    assert (row["cost"], row["tokens"], row["calls"]) == (0.375, 330, 3) and row["runtime"] > 0
    assert spent["total"]["cost"] == 0.375
    assert cell.replay().agents["w"].cost == 0.375  # from the log alone
    wide = subprocess.run(cli.argv("status", "forge"), env=cli.env(COLUMNS="250"), capture_output=True, text=True,
                          timeout=60, start_new_session=True)
    assert "0.375 cost, 330 tokens" in wide.stdout
