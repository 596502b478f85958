"""``python -m scripts.engine_bench``: the authorization engine alone, by batch size.

Submits purchases by demo card M0006 straight to the group committer on a fresh SQLite ledger
(no network, no HSM call: the PIN result is given), and prints jobs per second and CPU per job
for each ``batch_max``. Bounded: ``--jobs`` per batch size (default 2,000).
"""

from __future__ import annotations

import argparse
import functools
import logging
import shutil
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

from hsm_sim.hsm import Hsm
from hsm_sim.keys import Lmk
from ledger import demo
from ledger.domain import AuthorizationJob, TransactionKey
from ledger.engine import GroupCommitter
from ledger.store import Store
from scripts.pos import PosTerminal
from switch.app import build_directory, load_rules
from switch.authorize import PinResult
from switch.calendar import BusinessCalendar
from switch.flows import FlowContext
from switch.requests import FinancialRequest, parse_request, request_digest
from switch.service import _decide

PAN, PIN = "6362144899564327", "9876"


def run(batch_max: int, jobs: int) -> tuple[float, float, int]:
    """Jobs/s, CPU µs per job and batches for one batch size on a fresh ledger."""
    directory = Path(tempfile.mkdtemp(prefix="honar-engine-bench-"))
    hsm = Hsm(lmk=Lmk.test())
    store = Store(f"sqlite:///{directory / 'ledger.db'}")
    store.migrate()
    demo.load_demo(store, hsm)
    merchant = build_directory(store).merchant("HNR000000000004")
    card = store.find_card(hsm.pan_hash(PAN))
    assert merchant is not None and card is not None
    now = datetime.now(UTC)
    today = BusinessCalendar("Asia/Tehran", "00:00").business_date(now)
    context = FlowContext(
        today=today,
        now=now,
        pin=PinResult.OK,
        merchant=merchant,
        rules=load_rules(store),
        program_accounts=store.program_accounts(),
    )
    terminal = PosTerminal.demo("HNR00004")
    prepared = []
    for index in range(jobs):
        request = parse_request(terminal.read(terminal.purchase(pan=PAN, pin=PIN, amount=10)))
        assert isinstance(request, FinancialRequest)
        prepared.append(
            AuthorizationJob(
                key=TransactionKey(request.tid, request.stan, f"{index:010d}"),
                mti="0200",
                kind="purchase",
                processing_code="000000",
                request_digest=request_digest(request.message),
                card_id=card.id,
                merchant_id=merchant.id,
                pan_masked="636214******4327",
                business_date=today.isoformat(),
                now=now.isoformat(),
                decide=functools.partial(
                    _decide, "purchase", request, context, (card.pvki, card.pvv)
                ),
            )
        )
    committer = GroupCommitter(store, batch_max=batch_max)
    committer.start()
    started, cpu = time.perf_counter(), time.process_time()
    results = [future.result() for future in [committer.submit(job) for job in prepared]]
    elapsed, cpu = time.perf_counter() - started, time.process_time() - cpu
    committer.stop()
    store.close()
    shutil.rmtree(directory, ignore_errors=True)
    assert {r.response_code for r in results} == {"00"}, "every purchase must be approved"
    return jobs / elapsed, cpu / jobs * 1e6, committer.batches


def main() -> None:
    """Print the table."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--jobs", type=int, default=2000, help="purchases per batch size")
    parser.add_argument("--batch-max", type=int, nargs="*", default=[1, 4, 16, 64, 256])
    args = parser.parse_args()
    if not 1 <= args.jobs <= 100_000:
        parser.error("--jobs must be 1-100000")
    logging.disable(logging.INFO)
    print(f"{'batch_max':>9} {'jobs/s':>9} {'CPU µs/job':>11} {'batches':>8}")
    for batch_max in args.batch_max:
        rate, cpu_us, batches = run(batch_max, args.jobs)
        print(f"{batch_max:>9} {rate:>9,.0f} {cpu_us:>11,.0f} {batches:>8}")


if __name__ == "__main__":
    main()
