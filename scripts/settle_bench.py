"""``honar settle-bench``: export time and peak memory of a large business date.

Builds a temporary SQLite ledger with synthetic data inserted directly (``executemany``):
1,000 merchants, 10,000 members with one purse each, a disbursement date, then N approved
purchases on the business date (a quarter with a merchant-funded discount, one in twenty
refunded). Closes the date and runs ``export_day`` in a fresh child process, which reports its
wall time and peak resident memory (``ru_maxrss``), so the figure is the export's own.

    honar settle-bench            100,000 and 1,000,000 transactions
    honar settle-bench --quick    10,000 (for CI)
"""

from __future__ import annotations

import argparse
import json
import resource
import sqlite3
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from datetime import date
from pathlib import Path
from typing import Any

DAY = date(2026, 12, 1)
FIRST = date(2026, 11, 30)
MERCHANTS = 1_000
MEMBERS = 10_000
BATCH_ROWS = 50_000


def register(commands: Any) -> None:
    """Add ``honar settle-bench``."""
    bench = commands.add_parser("settle-bench", help="settlement export time and peak memory")
    bench.add_argument("--quick", action="store_true", help="10,000 transactions only")
    bench.add_argument("--sizes", help="comma-separated transaction counts")
    bench.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Build each size, export it in a child process, print the figures."""
    sizes = [10_000] if args.quick else [100_000, 1_000_000]
    if args.sizes:
        sizes = [int(s) for s in args.sizes.split(",")]
    print(f"{'transactions':>12}  {'build s':>8}  {'export s':>8}  {'peak RSS MiB':>12}  files MiB")
    for size in sizes:
        with tempfile.TemporaryDirectory(prefix="honar-settle-bench-") as folder:
            root = Path(folder)
            started = time.perf_counter()
            url = build(root, size)
            built = time.perf_counter() - started
            child = subprocess.run(
                [sys.executable, "-m", "scripts.settle_bench", "--export", url, str(root)],
                capture_output=True,
                text=True,
                check=False,
            )
            if child.returncode != 0:
                print(child.stderr, file=sys.stderr)
                return 1
            figures = json.loads(child.stdout)
            print(
                f"{size:>12,}  {built:>8.1f}  {figures['seconds']:>8.1f}  "
                f"{figures['maxrss_kib'] / 1024:>12.1f}  {figures['bytes'] / 2**20:.1f}",
                flush=True,
            )
    return 0


def build(root: Path, size: int) -> str:
    """A migrated SQLite ledger with the synthetic data; its URL."""
    from ledger.settlement import close_business_date
    from ledger.store import Store

    database = root / "bench.db"
    url = f"sqlite:///{database}"
    store = Store(url)
    store.migrate()
    store.close()
    db = sqlite3.connect(database)
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("PRAGMA synchronous=OFF")
    with db:
        accounts = [(1, "program:FUND-GEN", 364, 0, 0, 0, 0, 0)]
        accounts += [
            (1 + i, f"merchant:B{i:014d}:payable", 364, 1, 0, 0, 0, 0)
            for i in range(1, MERCHANTS + 1)
        ]
        purse_base = 1 + MERCHANTS
        accounts += [
            (purse_base + i, f"purse:B{i:07d}:GN", 364, 1, 0, 0, 0, 0)
            for i in range(1, MEMBERS + 1)
        ]
        db.executemany("INSERT INTO accounts VALUES (?,?,?,?,?,?,?,?)", accounts)
        db.execute("INSERT INTO programs VALUES ('FUND-GEN', 'Art Credit Fund — general', 1)")
        db.executemany(
            "INSERT INTO merchants (id, name, mcc, city, chain, sheba, payable_account_id) "
            "VALUES (?,?,?,?,?,?,?)",
            [
                (
                    f"B{i:014d}",
                    f"Merchant {i}",
                    "5411",
                    ("Tehran", "Isfahan", "Shiraz")[i % 3],
                    "",
                    f"IR{i:024d}",
                    1 + i,
                )
                for i in range(1, MERCHANTS + 1)
            ],
        )
        db.executemany(
            "INSERT INTO purses (id, member_id, code, account_id, program_code, expires) "
            "VALUES (?,?,?,?,?,NULL)",
            [(i, f"B{i:07d}", "GN", purse_base + i, "FUND-GEN") for i in range(1, MEMBERS + 1)],
        )
        seq = 0
        transfer_rows = []
        for i in range(1, MEMBERS + 1):
            seq += 1
            transfer_rows.append(
                (
                    seq,
                    f"disburse-{i}",
                    1,
                    purse_base + i,
                    1_000_000_000,
                    1,
                    None,
                    None,
                    FIRST.isoformat(),
                )
            )
        _insert_transfers(db, transfer_rows)
        for chunk in _chunks(_day(size, purse_base, seq), BATCH_ROWS):
            db.executemany(
                "INSERT INTO transactions (id, tid, stan, transmission, mti, kind, request_digest,"
                " card_id, merchant_id, pan_masked, amount, response_code, rrn, auth_id,"
                " response_json, business_date, created_at, processing_code, member_id,"
                " discount, discount_rule, discount_funded_by, amount_charged, purses_used,"
                " original_id, reversed_amount, refunded_amount, hold_state, tombstone)"
                " VALUES (?,?,?,?,?,?,'',NULL,?,?,?,'00',?,?,'{}',?,?,?,NULL,?,?,?,?,?,?,0,0,'',0)",
                [row for row, _transfer in chunk],
            )
            _insert_transfers(db, [transfer for _row, transfer in chunk])
    # Fold the write-ahead log into the database: otherwise the export's reads map the WAL
    # and its index, and their pages count in the export's resident memory.
    db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    db.close()
    store = Store(url)
    try:
        close_business_date(store, FIRST, current=DAY, now="2026-12-01T00:00:00+00:00")
        close_business_date(store, DAY, current=date(2026, 12, 2), now="2026-12-02T00:00:00+00:00")
    finally:
        store.close()
    return url


def _day(size: int, purse_base: int, seq: int) -> Iterator[tuple[tuple[Any, ...], tuple[Any, ...]]]:
    day = DAY.isoformat()
    for i in range(1, size + 1):
        merchant = 1 + i % MERCHANTS
        purse = purse_base + 1 + i % MEMBERS
        amount = 10_000 + (i * 7919) % 5_000_000
        refund = i % 20 == 0 and i > 1
        discount = amount // 10 if i % 4 == 0 and not refund else 0
        funded = "merchant" if discount else ""
        created = f"{day}T{(i // 3600) % 24:02d}:{(i // 60) % 60:02d}:{i % 60:02d}+00:00"
        kind, code, original = ("refund", 3, i - 1) if refund else ("purchase", 2, None)
        if refund:
            amount = 10_000 + ((i - 1) * 7919) % 5_000_000
            if (i - 1) % 4 == 0:
                amount -= amount // 10  # the original's card part; no discount to give back
            discount = 0
        charged = amount - discount
        row = (
            i,
            f"B{i % 100_000:07d}",
            f"{i % 1_000_000:06d}",
            f"{i:010d}",
            "0200",
            kind,
            f"B{merchant:014d}",
            "636214******0000",
            amount,
            f"{i:012d}",
            f"{i % 1_000_000:06d}",
            day,
            created,
            "200000" if refund else "000000",
            discount,
            "BENCH" if discount else "",
            funded,
            charged,
            f"GN:{charged}",
            original,
        )
        debit, credit = (1 + merchant, purse) if refund else (purse, 1 + merchant)
        transfer = (seq + i, f"t-{i}", debit, credit, charged, code, i, None, day)
        yield row, transfer


def _insert_transfers(db: sqlite3.Connection, rows: list[tuple[Any, ...]]) -> None:
    db.executemany(
        "INSERT INTO transfers (seq, id, debit_account_id, credit_account_id, amount, ledger,"
        " code, flags, pending_id, user_data, transaction_id, business_date, created_at,"
        " timeout_s) VALUES (?,?,?,?,?,364,?,0,?,'',?,?,'2026-12-01T00:00:00+00:00',0)",
        [(s, i, d, c, a, code, None, tx, day) for s, i, d, c, a, code, tx, _p, day in rows],
    )
    db.executemany(
        "INSERT INTO journal (seq, transfer_id, prev_hash, hash) VALUES (?,?,'','')",
        [(row[0], row[1]) for row in rows],
    )


def _chunks(items: Iterator[Any], size: int) -> Iterator[list[Any]]:
    chunk: list[Any] = []
    for item in items:
        chunk.append(item)
        if len(chunk) == size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


def export_child(url: str, root: Path) -> None:
    """Export both dates (the first untimed); print the second's time and peak RSS as JSON."""
    from ledger.settlement import export_day, signing_key
    from ledger.store import Store

    store = Store(url)
    key = signing_key(root)
    options: dict[str, Any] = {
        "key": key,
        "zone": "Asia/Tehran",
        "cutover": "00:00",
        "now": "2026-12-02T00:00:00+00:00",
        "software_version": "bench",
    }
    export_day(store, FIRST, root / "out", **options)
    started = time.perf_counter()
    result = export_day(store, DAY, root / "out", **options)
    seconds = time.perf_counter() - started
    store.close()
    maxrss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
    size = sum(f.bytes for f in result.files)
    print(json.dumps({"seconds": seconds, "maxrss_kib": maxrss, "bytes": size}))


if __name__ == "__main__":
    if len(sys.argv) == 4 and sys.argv[1] == "--export":
        export_child(sys.argv[2], Path(sys.argv[3]))
    else:
        from switch.cli import main

        sys.exit(main(["settle-bench", *sys.argv[1:]]))
