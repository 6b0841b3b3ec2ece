"""An agent that pays invoices exactly once, however often it is killed, and never spends past its budget.

Each payment is an effect with a stable id (the invoice number): a revived payer asks the ledger first,
so a payment that completed is answered with its recorded receipt, and one cut off halfway is checked
against the bank (`verify`) instead of being paid again. Each payment also costs a model call (`PAY_FEE`),
reserved before it (`me.reserve`, which fails closed) and reported as usage inside it.

The "bank" is a local file in the workspace, `bank.jsonl`: one line per payment really made. Its line count
is the side-effect counter the user guide (and the tests) look at.

Environment (all optional):
  PAY_INVOICES   "invoice-41:12.50,invoice-42:30"    what to pay, in order
  PAY_FEE        0.25                                 the cost of the model call behind each payment
  PAY_VERIFY     1                                    0: no verify, so a cut-off payment raises InDoubt
  PAY_HALT_AT    e.g. "paid:invoice-42"               stop there (once) and wait to be killed: `before`,
                                                      `paying` (started, not paid), `paid` (paid, not
                                                      recorded) or `after` (recorded), then `:INVOICE`
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

from lazarus_bus import BudgetExceeded, InDoubt, connect

ORDER = os.environ.get("PAY_INVOICES", "invoice-41:12.50,invoice-42:30")
INVOICES = [(name, float(amount)) for name, _, amount in (item.partition(":") for item in ORDER.split(","))]
FEE = float(os.environ.get("PAY_FEE", "0.25"))
VERIFY = os.environ.get("PAY_VERIFY", "1") != "0"
HALT_AT = os.environ.get("PAY_HALT_AT", "")
BANK = Path("bank.jsonl")  # the cwd is the cell's workspace


def halt(point: str, invoice: str) -> None:
    """At the named point (once: a marker file remembers it), say so and wait to be killed."""
    if HALT_AT != f"{point}:{invoice}":
        return
    marker = Path(f"halted-{point}-{invoice}")
    if marker.exists():
        return
    marker.write_text(str(os.getpid()))
    print(f"halted {point} {invoice}: kill me (kill -9 {os.getpid()})", flush=True)
    while True:
        time.sleep(1)


def paid(invoice: str) -> dict[str, Any] | None:
    """What the bank says about an invoice: its receipt, or None when it was never paid."""
    if not BANK.exists():
        return None
    for line in BANK.read_text().splitlines():
        receipt: dict[str, Any] = json.loads(line)
        if receipt["invoice"] == invoice:
            return receipt
    return None


def main() -> None:
    with connect() as me:
        packet = me.resume()
        if packet is not None:
            print(f"resuming (attempt {packet['attempt']}): done {sorted(packet['effects']['completed'])}, "
                  f"in doubt {packet['effects']['in_doubt']}, spent {packet['budget']['spent']['cost']:g}",
                  flush=True)

        def pay(invoice: str, amount: float) -> dict[str, Any]:
            halt("paying", invoice)
            receipt = {"invoice": invoice, "amount": amount, "confirmation": f"conf-{invoice}"}
            with BANK.open("a") as bank:  # the side effect: money leaves
                bank.write(json.dumps(receipt) + "\n")
                bank.flush()
                os.fsync(bank.fileno())
            me.usage(cost=FEE, tokens_in=120, tokens_out=30)
            halt("paid", invoice)
            return receipt

        receipts = []
        for invoice, amount in INVOICES:
            halt("before", invoice)
            while True:
                try:
                    me.reserve(cost=FEE)  # fail closed: no call that would cross the cap
                    receipts.append(me.effect(invoice, pay, invoice, amount, verify=paid if VERIFY else None))
                    break
                except BudgetExceeded as exc:
                    me.heartbeat(status=f"waiting for budget: {exc}")
                except InDoubt as exc:
                    me.heartbeat(status=f"waiting: {exc}")  # an operator settles it with `lazarus effects resolve`
                time.sleep(0.2)
            me.progress(f"paid {invoice}")
            halt("after", invoice)
        me.checkpoint(f"paid {len(receipts)} invoices", state={"receipts": receipts})
        print(f"paid {len(receipts)} invoices: {[r['confirmation'] for r in receipts]}", flush=True)


if __name__ == "__main__":
    main()
