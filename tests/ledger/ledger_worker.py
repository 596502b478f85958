"""A child process for the race and crash tests (run as a script, never collected by pytest).

ledger_worker.py race URL TAG COUNT PURSE MERCHANT AMOUNT
    submit COUNT payments of AMOUNT from account PURSE to MERCHANT through a GroupCommitter;
    print "approved N declined M" at the end.
ledger_worker.py stream URL PROGRAM PURSE MERCHANT COUNT_MAX
    submit jobs of two postings (PROGRAM -> PURSE -> MERCHANT) and print each job's key
    after its future resolved (its batch committed), until killed or COUNT_MAX.
"""

from __future__ import annotations

import sys
from concurrent.futures import Future

from ledger.domain import AuthorizationJob, JobResult, Outcome, Posting, TransactionKey
from ledger.engine import GroupCommitter
from ledger.model import TransferCode
from ledger.store import Store, TransferRejected

NOW = "2026-05-01T08:30:00+00:00"
FUTURE_TIMEOUT_S = 120
STREAM_WINDOW = 64  # jobs in flight in the stream mode


def job(key: TransactionKey, postings: tuple[Posting, ...], amount: int) -> AuthorizationJob:
    return AuthorizationJob(
        key=key,
        mti="0200",
        kind="purchase",
        request_digest=f"{key.tid}{key.stan}",
        card_id=None,
        merchant_id="HNR000000000001",
        pan_masked=None,
        business_date=NOW[:10],
        now=NOW,
        decide=lambda _view: Outcome("00", postings=postings, amount=amount),
    )


def race(url: str, tag: str, count: int, purse: int, merchant: int, amount: int) -> int:
    store = Store(url)
    committer = GroupCommitter(store, batch_max=64)
    committer.start()
    posting = Posting(purse, merchant, amount, TransferCode.PURCHASE)
    futures = [
        committer.submit(job(TransactionKey(tag, f"{i:06d}", "0501083000"), (posting,), amount))
        for i in range(count)
    ]
    approved = declined = 0
    for future in futures:
        try:
            future.result(FUTURE_TIMEOUT_S)
            approved += 1
        except TransferRejected:
            declined += 1
    committer.stop()
    store.close()
    print(f"approved {approved} declined {declined}", flush=True)
    return 0


def stream(url: str, program: int, purse: int, merchant: int, count_max: int) -> int:
    store = Store(url)
    committer = GroupCommitter(store, batch_max=32)
    committer.start()
    in_flight: list[tuple[TransactionKey, Future[JobResult]]] = []
    for i in range(count_max):
        key = TransactionKey("CRASH001", f"{i % 1_000_000:06d}", f"{i // 1_000_000:010d}")
        postings = (
            Posting(program, purse, 7, TransferCode.DISBURSEMENT),
            Posting(purse, merchant, 7, TransferCode.PURCHASE),
        )
        in_flight.append((key, committer.submit(job(key, postings, 7))))
        if len(in_flight) >= STREAM_WINDOW:
            done_key, future = in_flight.pop(0)
            future.result(FUTURE_TIMEOUT_S)
            print(f"{done_key.stan} {done_key.transmission}", flush=True)
    for done_key, future in in_flight:
        future.result(FUTURE_TIMEOUT_S)
        print(f"{done_key.stan} {done_key.transmission}", flush=True)
    committer.stop()
    return 0


if __name__ == "__main__":
    mode, *rest = sys.argv[1:]
    if mode == "race":
        url, tag, *numbers = rest
        count, purse_id, merchant_id, amount = (int(n) for n in numbers)
        sys.exit(race(url, tag, count, purse_id, merchant_id, amount))
    url, *numbers = rest
    program_id, purse_id, merchant_id, count_max = (int(n) for n in numbers)
    sys.exit(stream(url, program_id, purse_id, merchant_id, count_max))
