"""A LangGraph graph of six steps that survives SIGKILL: its checkpointer is the cell's log.

The steps are plain Python (no LLM, no network): gather the order, price it, add tax, send the
invoice, write the report, archive it. `send_invoice` is the one external action, so it runs inside
`me.effect`: a revived agent never sends the invoice twice. Every step appends a line to the
workspace's `ledger.jsonl` (the step and the pid that ran it) when it starts, and the invoice
"service" appends to `outbox.jsonl` when it sends one: those two files are what the user guide (and
the tests) count. The final state goes to `result.json`.

Each superstep's checkpoint is durable before the next step starts (`durability="sync"`), so after a
SIGKILL the daemon revives the agent and the graph resumes at the first unfinished step: the steps
already done are not run again, the one that was cut off runs again, and its effect answers from the
ledger.

Run it supervised (see docs/user-guide.md, "LangGraph graphs"):

    lazarus agent invite forge graph --role write --cmd "$PWD/.venv/bin/python $PWD/examples/graph_agent.py"

Environment (all optional):
  GRAPH_THREAD      main        the LangGraph thread id (one run of the graph)
  GRAPH_STEP_DELAY  0           seconds each step takes, to have time to `kill -9` it by hand
  GRAPH_HALT_IN     invoice     in that step, after its effect, stop (once) and wait to be killed;
                    invoice:before  the same, before its effect
"""

from __future__ import annotations

import json
import operator
import os
import time
from pathlib import Path
from typing import Annotated, Any, TypedDict

from langchain_core.runnables import RunnableConfig
from langgraph.graph import END, START, StateGraph

from lazarus_bus import Agent, connect
from lazarus_bus.langgraph import LazarusSaver

THREAD = os.environ.get("GRAPH_THREAD", "main")
DELAY = float(os.environ.get("GRAPH_STEP_DELAY", "0"))
HALT_IN = os.environ.get("GRAPH_HALT_IN", "")
LEDGER, OUTBOX, RESULT = Path("ledger.jsonl"), Path("outbox.jsonl"), Path("result.json")  # cwd: the workspace
STEPS = ["gather", "price", "tax", "invoice", "report", "archive"]


class Order(TypedDict, total=False):
    items: list[dict[str, Any]]
    subtotal: float
    tax: float
    total: float
    invoice: dict[str, Any]
    report: str
    archived: str
    done: Annotated[list[str], operator.add]  # the steps that finished, in order


def append_line(path: Path, record: dict[str, Any]) -> None:
    with path.open("a") as f:
        f.write(json.dumps(record) + "\n")
        f.flush()
        os.fsync(f.fileno())


def step(name: str, me: Agent) -> None:
    """A step starts: say so in the ledger and in the heartbeat, then take the time it takes."""
    append_line(LEDGER, {"step": name, "pid": os.getpid()})
    me.progress(f"step {STEPS.index(name) + 1}/{len(STEPS)}: {name}")
    if DELAY:
        time.sleep(DELAY)


def halt(name: str) -> None:
    """Where GRAPH_HALT_IN says (once: a marker file remembers it), wait to be killed."""
    marker = Path(f"halted-{name.replace(':', '-')}")
    if HALT_IN != name or marker.exists():
        return
    marker.write_text(str(os.getpid()))
    print(f"halted in {name}: kill me (kill -9 {os.getpid()})", flush=True)
    while True:
        time.sleep(1)


def send_invoice(order_total: float, thread: str) -> dict[str, Any]:
    """The external action: an invoice leaves (here, a line in the outbox)."""
    sent = {"invoice": f"INV-{thread}", "amount": order_total, "confirmation": f"conf-INV-{thread}"}
    append_line(OUTBOX, sent)
    return sent


def build(me: Agent) -> StateGraph[Order]:
    def gather(state: Order) -> Order:
        step("gather", me)
        return {"items": [{"sku": "bolt", "qty": 40, "price": 0.25}, {"sku": "gear", "qty": 3, "price": 12.5}],
                "done": ["gather"]}

    def price(state: Order) -> Order:
        step("price", me)
        return {"subtotal": round(sum(i["qty"] * i["price"] for i in state["items"]), 2), "done": ["price"]}

    def tax(state: Order) -> Order:
        step("tax", me)
        t = round(state["subtotal"] * 0.2, 2)
        return {"tax": t, "total": round(state["subtotal"] + t, 2), "done": ["tax"]}

    def invoice(state: Order) -> Order:
        step("invoice", me)
        halt("invoice:before")
        sent = me.effect(f"invoice-{THREAD}", send_invoice, state["total"], THREAD)
        halt("invoice")
        return {"invoice": sent, "done": ["invoice"]}

    def report(state: Order) -> Order:
        step("report", me)
        lines = [f"{i['qty']} x {i['sku']} at {i['price']}" for i in state["items"]]
        return {"report": "\n".join([*lines, f"total {state['total']} ({state['invoice']['confirmation']})"]),
                "done": ["report"]}

    def archive(state: Order) -> Order:
        step("archive", me)
        Path("report.txt").write_text(state["report"] + "\n")  # idempotent: a rerun writes the same file
        return {"archived": "report.txt", "done": ["archive"]}

    graph = StateGraph(Order)
    for name, fn in zip(STEPS, (gather, price, tax, invoice, report, archive)):
        graph.add_node(name, fn)
    graph.add_edge(START, STEPS[0])
    for a, b in zip(STEPS, STEPS[1:]):
        graph.add_edge(a, b)
    graph.add_edge(STEPS[-1], END)
    return graph


def main() -> None:
    with connect() as me:
        graph = build(me).compile(checkpointer=LazarusSaver(agent=me))
        config: RunnableConfig = {"configurable": {"thread_id": THREAD}}
        state = graph.get_state(config)
        if state.next:
            print(f"resuming thread {THREAD} at {', '.join(state.next)} (done: {state.values.get('done', [])})",
                  flush=True)
            final = graph.invoke(None, config, durability="sync")
        elif state.values:
            print(f"thread {THREAD} had already finished", flush=True)
            final = state.values
        else:
            print(f"starting thread {THREAD}", flush=True)
            final = graph.invoke({"done": []}, config, durability="sync")
        RESULT.write_text(json.dumps(final, sort_keys=True, indent=1) + "\n")
        print(f"finished: {final['done']}, total {final['total']}", flush=True)


if __name__ == "__main__":
    main()
