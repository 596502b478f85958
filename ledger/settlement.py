"""Settlement: closing business dates, the day's signed files, and verifying them.

Theory of operation (the contract is ``spec/settlement-files.md``; ``docs/settlement.md`` has
every column):

* :func:`close_business_date` records that a business date is closed (``business_days``).
  Only a date before the current business date may close, and only once.
* :func:`export_day` writes the files of one closed date into ``OUT/YYYY-MM-DD/``. Everything
  is read in one database transaction (one snapshot). ``transactions.csv`` is streamed from a
  server-side cursor and hashed while it is written, so memory does not grow with the day.
  The other files come from aggregate queries (one row per merchant or program).
* Figures are computed twice where it matters: a merchant's net payable is the net movement of
  its payable account (transfers), and it must equal what the day's requests add up to
  (gross, discounts) less what the ledger moved back (refunds, reversals); a program's purses
  must move only by disbursement, spending, returns and expiry. A mismatch stops the export.
* ``manifest.json`` lists each file's SHA-256, size, rows and sums, chains to the previous
  business date's manifest and names the journal entry that closed the day; ``manifest.sig``
  is the Ed25519 signature of its exact bytes.
* :func:`verify_folder` checks a folder as an auditor would and yields one :class:`Check`
  per step; the first failed check ends it.

Money is ``int`` minor units (IRR). No floats.
"""

from __future__ import annotations

import csv
import functools
import hashlib
import json
import os
import shutil
import xml.etree.ElementTree as ElementTree
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import date, datetime, time, timedelta
from pathlib import Path
from typing import IO, Any
from xml.sax.saxutils import escape
from zoneinfo import ZoneInfo

import jdatetime  # type: ignore[import-untyped]
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import (
    Ed25519PrivateKey,
    Ed25519PublicKey,
)
from sqlalchemy import Connection, and_, case, func, literal, or_, select
from sqlalchemy.exc import IntegrityError

from ledger import schema
from ledger.model import TransferCode, TransferFlags
from ledger.store import TOPIC_SETTLEMENT_CUTOVER, Store

FORMAT = "honar-settlement/1"
CAMT_VERSION = "camt.053.001.08"
CAMT_NAMESPACE = f"urn:iso:std:iso:20022:tech:xsd:{CAMT_VERSION}"
CURRENCY = "IRR"
FUND_ACCOUNT_ID = "HONAR-FUND-SETTLEMENT"  # the settlement account: all merchant payables
FUND_NAME = "Art Credit Fund"
SIGNING_KEY_FILE = "settlement-signing-key.pem"
STREAM_ROWS = 10_000  # rows fetched per round trip of the server-side cursor
WRITE_BUFFER_CHARS = 1 << 16

TRANSACTIONS_FILE = "transactions.csv"
MERCHANTS_FILE = "merchants.csv"
PROGRAMS_FILE = "programs.csv"
CAMT_FILE = "camt053.xml"
MANIFEST_FILE = "manifest.json"
SIGNATURE_FILE = "manifest.sig"
DATA_FILES = (TRANSACTIONS_FILE, MERCHANTS_FILE, PROGRAMS_FILE, CAMT_FILE)

PAYMENT_KINDS = ("purchase", "completion")
REVERSAL_KINDS = ("reversal", "advice")  # advice: a reversal advice (0420)

TRANSACTION_COLUMNS = (
    "business_date",
    "business_date_jalali",
    "time_utc",
    "time_local_jalali",
    "kind",
    "terminal_id",
    "merchant_id",
    "stan",
    "rrn",
    "auth_id",
    "mti",
    "processing_code",
    "pan_masked",
    "amount",
    "discount",
    "discount_rule",
    "discount_funded_by",
    "amount_charged",
    "purses_used",
    "response_code",
    "reversal_of_rrn",
    "original_rrn",
)
TRANSACTION_SUMS = ("amount", "discount", "amount_charged")

MERCHANT_COLUMNS = (
    "business_date",
    "business_date_jalali",
    "merchant_id",
    "name",
    "city",
    "sheba",
    "count",
    "gross_amount",
    "refunds",
    "reversals",
    "merchant_funded_discount",
    "program_funded_discount",
    "net_payable",
)
MERCHANT_SUMS = MERCHANT_COLUMNS[6:]

PROGRAM_COLUMNS = (
    "business_date",
    "business_date_jalali",
    "program",
    "name",
    "opening_outstanding",
    "disbursed",
    "spent_by_members",
    "returned_to_members",
    "expired_back",
    "outstanding",
    "discounts_funded",
)
PROGRAM_SUMS = PROGRAM_COLUMNS[4:]

CAMT_SUMS = ("opening_balance", "credits", "debits", "closing_balance")


class SettlementError(RuntimeError):
    """A business date that cannot be closed or exported; the message says which and why."""


# --- dates --------------------------------------------------------------------------------------


@functools.lru_cache(maxsize=4096)
def jalali(day: date) -> str:
    """The Jalali (Solar Hijri) date as ``YYYY/MM/DD``.

    >>> jalali(date(2025, 3, 21))
    '1404/01/01'
    """
    return str(jdatetime.date.fromgregorian(date=day).strftime("%Y/%m/%d"))


def local_jalali(created_at: str, zone: ZoneInfo) -> str:
    """A stored UTC instant as Jalali date and time in ``zone``.

    >>> local_jalali("2025-03-20T21:00:00+00:00", ZoneInfo("Asia/Tehran"))
    '1404/01/01 00:30:00'
    """
    local = datetime.fromisoformat(created_at).astimezone(zone)
    return f"{jalali(local.date())} {local:%H:%M:%S}"


# --- closing business dates ---------------------------------------------------------------------


@dataclass(frozen=True)
class BusinessDay:
    """A closed business date and its latest export."""

    business_date: str
    closed_at: str
    generated_at: str | None
    manifest_sha256: str | None


def business_day(store: Store, business_date: date) -> BusinessDay | None:
    """The closed business date's record, or None while it is open."""
    b = schema.business_days.c
    with store.engine.connect() as connection:
        row = connection.execute(
            select(schema.business_days).where(b.business_date == business_date.isoformat())
        ).one_or_none()
    return None if row is None else BusinessDay(*row)


def last_closed_date(store: Store) -> date | None:
    """The latest closed business date, if any."""
    with store.engine.connect() as connection:
        value = connection.scalar(select(func.max(schema.business_days.c.business_date)))
    return None if value is None else date.fromisoformat(str(value))


def close_business_date(
    store: Store, business_date: date, *, current: date, now: str, early: bool = False
) -> None:
    """Close ``business_date`` (before ``current``, the open business date) once.

    Requests are given their business date by the clock when they arrive, so a late advice
    for a closed date counts in the open date. ``early`` closes the current date itself before
    its cutover time (end of day by hand, demos): the authorization engine then counts every
    later request in the next date.
    """
    if business_date > current or (business_date == current and not early):
        raise SettlementError(
            f"business date {business_date} is not over: the current business date is "
            f"{current}; only an earlier date can be closed"
        )
    existing = business_day(store, business_date)
    if existing is not None:
        raise SettlementError(
            f"business date {business_date} was already closed at {existing.closed_at}; "
            "a business date closes once"
        )
    try:
        with store.begin_write() as connection:
            connection.execute(
                schema.business_days.insert().values(
                    business_date=business_date.isoformat(), closed_at=now
                )
            )
            # The cutover is an event too, in the same transaction as the close.
            store.add_event(
                connection,
                TOPIC_SETTLEMENT_CUTOVER,
                {
                    "event_id": f"cutover-{business_date.isoformat()}",
                    "type": "cutover",
                    "time": now,
                    "business_date": business_date.isoformat(),
                    "early": early,
                },
                now=now,
            )
    except IntegrityError:
        raise SettlementError(
            f"business date {business_date} was closed by someone else just now; "
            "a business date closes once"
        ) from None


# --- writing files ------------------------------------------------------------------------------


@dataclass(frozen=True)
class FileSummary:
    """What the manifest says about one file."""

    name: str
    sha256: str
    bytes: int
    rows: int
    sums: Mapping[str, int]

    def to_json(self) -> dict[str, Any]:
        """The manifest entry."""
        return {"sha256": self.sha256, "bytes": self.bytes, "rows": self.rows, "sums": self.sums}


class HashingWriter:
    """A text sink that encodes UTF-8, hashes and writes, in large chunks."""

    def __init__(self, handle: IO[bytes]) -> None:
        self._handle = handle
        self._digest = hashlib.sha256()
        self._parts: list[str] = []
        self._buffered = 0
        self.bytes = 0

    def write(self, text: str) -> int:
        """Buffer ``text``; flush past :data:`WRITE_BUFFER_CHARS`."""
        self._parts.append(text)
        self._buffered += len(text)
        if self._buffered >= WRITE_BUFFER_CHARS:
            self.flush()
        return len(text)

    def flush(self) -> None:
        """Write what is buffered."""
        data = "".join(self._parts).encode("utf-8")
        self._parts.clear()
        self._buffered = 0
        self._digest.update(data)
        self._handle.write(data)
        self.bytes += len(data)

    def hexdigest(self) -> str:
        """SHA-256 of everything written (flushes first)."""
        self.flush()
        return self._digest.hexdigest()


class CsvFile:
    """A CSV file being written: RFC 4180 (CRLF, minimal quoting), rows counted, sums kept."""

    def __init__(self, path: Path, columns: Sequence[str], sums: Sequence[str]) -> None:
        self.path = path
        self._handle = path.open("wb")
        self._sink = HashingWriter(self._handle)
        self._writer = csv.writer(self._sink, lineterminator="\r\n")
        self._writer.writerow(columns)
        self._sum_index = [(name, columns.index(name)) for name in sums]
        self.sums = dict.fromkeys(sums, 0)
        self.rows = 0

    def row(self, values: Sequence[object]) -> None:
        """Write one data row."""
        for name, index in self._sum_index:
            value = values[index]
            assert isinstance(value, int), f"{self.path.name}: {name} must be int"
            self.sums[name] += value
        self._writer.writerow(values)
        self.rows += 1

    def close(self) -> FileSummary:
        """Finish the file; its summary for the manifest."""
        digest = self._sink.hexdigest()
        self._handle.close()
        return FileSummary(self.path.name, digest, self._sink.bytes, self.rows, dict(self.sums))


# --- what the day's requests and transfers add up to ---------------------------------------------


@dataclass
class MerchantFigures:
    """One merchant's business date (minor units)."""

    merchant_id: str
    name: str
    city: str
    sheba: str
    count: int = 0
    gross_amount: int = 0
    refunds: int = 0  # what the payable gave back for refunds
    reversals: int = 0  # what the payable gave back for reversals (net)
    merchant_funded_discount: int = 0
    program_funded_discount: int = 0
    credits: int = 0  # ledger: posted credits to the payable account this date
    debits: int = 0  # ledger: posted debits
    other: int = 0  # ledger: net movement by any other transfer code (should be 0)

    @property
    def net_payable(self) -> int:
        """Net movement of the payable account in the ledger for the date."""
        return self.credits - self.debits

    @property
    def from_requests(self) -> int:
        """Net payable as the requests add up: gross less merchant discount, refunds, reversals."""
        return self.gross_amount - self.merchant_funded_discount - self.refunds - self.reversals


@dataclass
class ProgramFigures:
    """One program's business date (minor units)."""

    program: str
    name: str
    opening_outstanding: int = 0
    disbursed: int = 0
    spent_by_members: int = 0
    returned_to_members: int = 0
    expired_back: int = 0
    discounts_funded: int = 0
    purse_other: int = 0  # movement of the program's purses by other codes (should be 0)
    purse_net: int = 0  # net movement of the program's purses this date

    @property
    def outstanding(self) -> int:
        """What the program's purses hold at the end of the date."""
        return self.opening_outstanding + self.purse_net


@dataclass(frozen=True)
class DayFigures:
    """Everything aggregated about one business date."""

    business_date: date
    merchants: tuple[MerchantFigures, ...]
    programs: tuple[ProgramFigures, ...]
    payables_opening: int  # all merchant payables at the start of the date
    journal_seq: int  # the last journal entry of the date or earlier
    journal_hash: str


POSTED = schema.transfers.c.flags.op("&")(int(TransferFlags.PENDING)) == 0


def _moves(
    connection: Connection, side: str, owner: Any, owner_key: Any, where: Any
) -> Iterator[tuple[str, int, int]]:
    """(owner, transfer code, amount) summed over posted transfers of ``side`` (debit/credit)."""
    t = schema.transfers.c
    account = t.debit_account_id if side == "debit" else t.credit_account_id
    query = (
        select(owner_key, t.code, func.coalesce(func.sum(t.amount), 0))
        .select_from(schema.transfers.join(owner, account == owner.c[_owner_account(owner)]))
        .where(POSTED, where)
        .group_by(owner_key, t.code)
    )
    for key, code, amount in connection.execute(query):
        yield str(key), int(code), int(amount)


def _owner_account(owner: Any) -> str:
    return {
        "merchants": "payable_account_id",
        "programs": "account_id",
        "purses": "account_id",
    }[owner.name]


def day_figures(connection: Connection, business_date: date) -> DayFigures:
    """Aggregate one business date (inside the caller's read transaction)."""
    day = business_date.isoformat()
    t, tr = schema.transfers.c, schema.transactions.c
    m, p, pr = schema.merchants.c, schema.programs.c, schema.purses.c
    on_day = t.business_date == day

    merchants = {
        r.id: MerchantFigures(r.id, r.name, r.city, r.sheba)
        for r in connection.execute(select(m.id, m.name, m.city, m.sheba).order_by(m.id))
    }
    refund_codes = (int(TransferCode.REFUND),)
    for side in ("credit", "debit"):
        sign = 1 if side == "credit" else -1
        for merchant_id, code, amount in _moves(connection, side, schema.merchants, m.id, on_day):
            f = merchants[merchant_id]
            if side == "credit":
                f.credits += amount
            else:
                f.debits += amount
            if code in refund_codes:
                f.refunds -= sign * amount
            elif code == TransferCode.REVERSAL:
                f.reversals -= sign * amount
            elif code not in (TransferCode.PURCHASE, TransferCode.DISCOUNT_FUNDING) or sign < 0:
                f.other += sign * amount

    original = schema.transactions.alias("original")
    payment = tr.kind.in_(PAYMENT_KINDS)
    funded = tr.discount_funded_by
    rows = connection.execute(
        select(
            tr.merchant_id,
            func.count(),
            func.coalesce(func.sum(case((payment, tr.amount), else_=0)), 0),
            func.coalesce(
                func.sum(case((and_(payment, funded == "merchant"), tr.discount), else_=0)), 0
            ),
            func.coalesce(
                func.sum(
                    case((and_(payment, funded != "merchant", funded != ""), tr.discount), else_=0)
                ),
                0,
            ),
        )
        .select_from(schema.transactions.outerjoin(original, original.c.id == tr.original_id))
        .where(_financial(tr, original.c), tr.business_date == day)
        .group_by(tr.merchant_id)
    )
    for merchant_id, count, gross, by_merchant, by_program in rows:
        if merchant_id not in merchants:
            raise SettlementError(f"requests name merchant {merchant_id!r}, which is not known")
        f = merchants[merchant_id]
        f.count, f.gross_amount = int(count), int(gross)
        f.merchant_funded_discount, f.program_funded_discount = int(by_merchant), int(by_program)

    active = tuple(f for f in merchants.values() if f.count or f.credits or f.debits)
    for f in active:
        if f.other:
            raise SettlementError(
                f"merchant {f.merchant_id}: its payable account moved by {f.other} through "
                "transfers that are neither payments, refunds nor reversals"
            )
        if f.from_requests != f.net_payable:
            raise SettlementError(
                f"merchant {f.merchant_id}: the requests add up to {f.from_requests} "
                f"(gross {f.gross_amount} - merchant discount {f.merchant_funded_discount} "
                f"- refunds {f.refunds} - reversals {f.reversals}) but the payable account "
                f"moved by {f.net_payable}"
            )

    programs = {
        r.code: ProgramFigures(r.code, r.name)
        for r in connection.execute(select(p.code, p.name).order_by(p.code))
    }
    back = (int(TransferCode.REFUND), int(TransferCode.REVERSAL))
    for side in ("credit", "debit"):
        sign = 1 if side == "credit" else -1
        for code_, c, amount in _moves(connection, side, schema.purses, pr.program_code, on_day):
            g = programs[code_]
            g.purse_net += sign * amount
            if c == TransferCode.DISBURSEMENT:
                g.disbursed += sign * amount
            elif c == TransferCode.PURCHASE:
                g.spent_by_members -= sign * amount
            elif c in back:
                g.returned_to_members += sign * amount
            elif c == TransferCode.EXPIRY:
                g.expired_back -= sign * amount
            else:
                g.purse_other += sign * amount
        for code_, c, amount in _moves(connection, side, schema.programs, p.code, on_day):
            g = programs[code_]
            if c == TransferCode.DISCOUNT_FUNDING or c in back:
                g.discounts_funded -= sign * amount
        before = t.business_date < day
        for code_, _c, amount in _moves(connection, side, schema.purses, pr.program_code, before):
            programs[code_].opening_outstanding += sign * amount
    for g in programs.values():
        if g.purse_other:
            raise SettlementError(
                f"program {g.program}: its purses moved by {g.purse_other} through transfers "
                "that are neither disbursement, spending, returns nor expiry"
            )

    before_day = t.business_date < day
    opening = 0
    for side in ("credit", "debit"):
        sign = 1 if side == "credit" else -1
        for _id, _code, amount in _moves(connection, side, schema.merchants, m.id, before_day):
            opening += sign * amount

    j = schema.journal.c
    seq = connection.scalar(
        select(func.max(j.seq))
        .select_from(schema.journal.join(schema.transfers, t.id == j.transfer_id))
        .where(t.business_date <= day)
    )
    head_hash = schema.GENESIS_HASH
    if seq is not None:
        head_hash = str(connection.scalar(select(j.hash).where(j.seq == seq)))
    return DayFigures(
        business_date=business_date,
        merchants=active,
        programs=tuple(programs.values()),
        payables_opening=opening,
        journal_seq=int(seq or 0),
        journal_hash=head_hash,
    )


def _financial(tr: Any, original: Any) -> Any:
    """Approved requests that moved money: payments, refunds, reversals of those."""
    return and_(
        tr.response_code == "00",
        or_(
            tr.kind.in_((*PAYMENT_KINDS, "refund")),
            and_(
                tr.kind.in_(REVERSAL_KINDS),
                tr.amount > 0,
                original.kind.in_((*PAYMENT_KINDS, "refund")),
            ),
        ),
    )


def financial_rows(connection: Connection, business_date: date) -> Iterator[Any]:
    """The date's financial events in id order, streamed (constant memory)."""
    tr = schema.transactions.c
    original = schema.transactions.alias("original")
    query = (
        select(
            tr.business_date,
            tr.created_at,
            tr.kind,
            tr.tid,
            tr.merchant_id,
            tr.stan,
            tr.rrn,
            tr.auth_id,
            tr.mti,
            tr.processing_code,
            tr.pan_masked,
            tr.amount,
            tr.discount,
            tr.discount_rule,
            tr.discount_funded_by,
            tr.amount_charged,
            tr.purses_used,
            tr.response_code,
            func.coalesce(original.c.rrn, literal("")).label("original_rrn"),
        )
        .select_from(schema.transactions.outerjoin(original, original.c.id == tr.original_id))
        .where(tr.business_date == business_date.isoformat(), _financial(tr, original.c))
        .order_by(tr.id)
    )
    result = connection.execution_options(yield_per=STREAM_ROWS).execute(query)
    yield from result


# --- the files ------------------------------------------------------------------------------------


def write_transactions(
    path: Path, rows: Iterable[Any], business_date: date, zone: ZoneInfo
) -> FileSummary:
    """``transactions.csv``: one row per financial event."""
    out = CsvFile(path, TRANSACTION_COLUMNS, TRANSACTION_SUMS)
    day_jalali = jalali(business_date)
    for r in rows:
        reversal = r.kind in REVERSAL_KINDS
        out.row(
            (
                r.business_date,
                day_jalali,
                r.created_at,
                local_jalali(r.created_at, zone),
                "reversal" if reversal else r.kind,
                r.tid,
                r.merchant_id or "",
                r.stan,
                r.rrn,
                r.auth_id,
                r.mti,
                r.processing_code,
                r.pan_masked or "",
                int(r.amount),
                int(r.discount),
                r.discount_rule,
                r.discount_funded_by,
                int(r.amount_charged),
                r.purses_used,
                r.response_code,
                r.original_rrn if reversal else "",
                "" if reversal else r.original_rrn,
            )
        )
    return out.close()


def write_merchants(path: Path, figures: DayFigures) -> FileSummary:
    """``merchants.csv``: one row per merchant with activity on the date."""
    out = CsvFile(path, MERCHANT_COLUMNS, MERCHANT_SUMS)
    day, day_jalali = figures.business_date.isoformat(), jalali(figures.business_date)
    for f in figures.merchants:
        out.row(
            (
                day,
                day_jalali,
                f.merchant_id,
                f.name,
                f.city,
                f.sheba,
                f.count,
                f.gross_amount,
                f.refunds,
                f.reversals,
                f.merchant_funded_discount,
                f.program_funded_discount,
                f.net_payable,
            )
        )
    return out.close()


def write_programs(path: Path, figures: DayFigures) -> FileSummary:
    """``programs.csv``: one row per program."""
    out = CsvFile(path, PROGRAM_COLUMNS, PROGRAM_SUMS)
    day, day_jalali = figures.business_date.isoformat(), jalali(figures.business_date)
    for f in figures.programs:
        out.row(
            (
                day,
                day_jalali,
                f.program,
                f.name,
                f.opening_outstanding,
                f.disbursed,
                f.spent_by_members,
                f.returned_to_members,
                f.expired_back,
                f.outstanding,
                f.discounts_funded,
            )
        )
    return out.close()


def _day_window(business_date: date, zone: ZoneInfo, cutover: timedelta) -> tuple[str, str]:
    """Start and end of the business date as local ISO date-times (end = the close)."""
    start = datetime.combine(business_date, time(), zone) + cutover
    if cutover >= timedelta(hours=12):
        start -= timedelta(days=1)
    end = start + timedelta(days=1)
    return start.isoformat(), end.isoformat()


def _amount(value: int) -> str:
    return f'<Amt Ccy="{CURRENCY}">{value}</Amt>'


def _balance(kind: str, value: int, day: str) -> str:
    indicator = "CRDT" if value >= 0 else "DBIT"
    return (
        f"<Bal><Tp><CdOrPrtry><Cd>{kind}</Cd></CdOrPrtry></Tp>{_amount(abs(value))}"
        f"<CdtDbtInd>{indicator}</CdtDbtInd><Dt><Dt>{day}</Dt></Dt></Bal>"
    )


def write_camt053(
    path: Path, figures: DayFigures, zone: ZoneInfo, cutover: timedelta
) -> FileSummary:
    """``camt053.xml``: ISO 20022 camt.053.001.08 statement of the Fund's settlement account.

    The settlement account is the sum of the merchants' payable accounts. Each merchant with
    activity has a credit entry (payments and program-funded discounts owed to it) and a debit
    entry (refunds, reversals) when non-zero. The creation time is the close of the date, so
    the file depends on the ledger only.
    """
    day = figures.business_date.isoformat()
    start, end = _day_window(figures.business_date, zone, cutover)
    entries = [
        (f, indicator, value)
        for f in figures.merchants
        for indicator, value in (("CRDT", f.credits), ("DBIT", f.debits))
        if value
    ]
    credits = sum(f.credits for f in figures.merchants)
    debits = sum(f.debits for f in figures.merchants)
    closing = figures.payables_opening + credits - debits
    net = credits - debits
    with path.open("wb") as handle:
        out = HashingWriter(handle)
        out.write(
            '<?xml version="1.0" encoding="UTF-8"?>\n'
            f'<Document xmlns="{CAMT_NAMESPACE}">\n<BkToCstmrStmt>\n'
            f"<GrpHdr><MsgId>HONAR-{day}</MsgId><CreDtTm>{end}</CreDtTm></GrpHdr>\n"
            f"<Stmt>\n<Id>HONAR-{day}</Id><CreDtTm>{end}</CreDtTm>"
            f"<FrToDt><FrDtTm>{start}</FrDtTm><ToDtTm>{end}</ToDtTm></FrToDt>\n"
            f"<Acct><Id><Othr><Id>{FUND_ACCOUNT_ID}</Id></Othr></Id><Ccy>{CURRENCY}</Ccy>"
            f"<Nm>Merchant settlement</Nm><Ownr><Nm>{FUND_NAME}</Nm></Ownr></Acct>\n"
            f"{_balance('OPBD', figures.payables_opening, day)}\n"
            f"{_balance('CLBD', closing, day)}\n"
            f"<TxsSummry><TtlNtries><NbOfNtries>{len(entries)}</NbOfNtries>"
            f"<Sum>{credits + debits}</Sum><TtlNetNtry><Amt>{abs(net)}</Amt>"
            f"<CdtDbtInd>{'CRDT' if net >= 0 else 'DBIT'}</CdtDbtInd></TtlNetNtry></TtlNtries>"
            f"<TtlCdtNtries><NbOfNtries>{sum(1 for e in entries if e[1] == 'CRDT')}</NbOfNtries>"
            f"<Sum>{credits}</Sum></TtlCdtNtries>"
            f"<TtlDbtNtries><NbOfNtries>{sum(1 for e in entries if e[1] == 'DBIT')}</NbOfNtries>"
            f"<Sum>{debits}</Sum></TtlDbtNtries></TxsSummry>\n"
        )
        for f, indicator, value in entries:
            reference = f"{day}-{f.merchant_id}-{indicator[0]}"
            what = "payments" if indicator == "CRDT" else "refunds and reversals"
            out.write(
                f"<Ntry><NtryRef>{escape(reference)}</NtryRef>{_amount(value)}"
                f"<CdtDbtInd>{indicator}</CdtDbtInd><Sts><Cd>BOOK</Cd></Sts>"
                f"<BookgDt><Dt>{day}</Dt></BookgDt><ValDt><Dt>{day}</Dt></ValDt>"
                f"<BkTxCd><Prtry><Cd>HONAR-{'PAYMENTS' if indicator == 'CRDT' else 'RETURNS'}"
                f"</Cd><Issr>HONAR</Issr></Prtry></BkTxCd>"
                f"<NtryDtls><TxDtls><Refs><AcctSvcrRef>{escape(reference)}</AcctSvcrRef></Refs>"
                f"{_amount(value)}<CdtDbtInd>{indicator}</CdtDbtInd>"
                f"<RltdPties><Cdtr><Pty><Nm>{escape(f.name)}</Nm>"
                f"<Id><OrgId><Othr><Id>{escape(f.merchant_id)}</Id></Othr></OrgId></Id>"
                f"</Pty></Cdtr><CdtrAcct><Id><IBAN>{escape(f.sheba)}</IBAN></Id></CdtrAcct>"
                f"</RltdPties><AddtlTxInf>{escape(f'{f.merchant_id} {what}')}</AddtlTxInf>"
                "</TxDtls></NtryDtls></Ntry>\n"
            )
        out.write("</Stmt>\n</BkToCstmrStmt>\n</Document>\n")
        digest = out.hexdigest()
    sums = {
        "opening_balance": figures.payables_opening,
        "credits": credits,
        "debits": debits,
        "closing_balance": closing,
    }
    return FileSummary(path.name, digest, out.bytes, len(entries), sums)


# --- signing ----------------------------------------------------------------------------------


def signing_key(data_dir: Path) -> Ed25519PrivateKey:
    """The settlement signing key under ``data_dir``; generated (mode 0600) on first use."""
    path = data_dir / SIGNING_KEY_FILE
    if not path.exists():
        data_dir.mkdir(parents=True, exist_ok=True)
        key = Ed25519PrivateKey.generate()
        pem = key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:
            pass  # another process made it first: use theirs
        else:
            with os.fdopen(fd, "wb") as handle:
                handle.write(pem)
    mode = path.stat().st_mode & 0o777
    if mode & 0o077:
        raise SettlementError(f"{path}: mode {mode:04o}; the signing key must be 0600")
    loaded = serialization.load_pem_private_key(path.read_bytes(), password=None)
    if not isinstance(loaded, Ed25519PrivateKey):
        raise SettlementError(f"{path}: not an Ed25519 private key")
    return loaded


def public_key_pem(key: Ed25519PrivateKey) -> bytes:
    """The public half as PEM (SubjectPublicKeyInfo), for auditors."""
    return key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )


# --- export -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class ExportResult:
    """Where the files went and what the manifest says."""

    folder: Path
    manifest_sha256: str
    files: tuple[FileSummary, ...]
    warnings: tuple[str, ...] = ()


def manifest_bytes(manifest: Mapping[str, Any]) -> bytes:
    """The canonical text of a manifest: sorted keys, two-space indent, UTF-8, final newline."""
    return (json.dumps(manifest, sort_keys=True, indent=2, ensure_ascii=False) + "\n").encode()


def export_day(
    store: Store,
    business_date: date,
    out: Path,
    *,
    key: Ed25519PrivateKey,
    zone: str,
    cutover: str,
    now: str,
    software_version: str,
) -> ExportResult:
    """Write the settlement files of a closed business date into ``out/YYYY-MM-DD/``.

    Deterministic: the same ledger gives byte-identical CSV and XML. The manifest's generation
    time is that of the first export of the date, so an unchanged ledger gives an identical
    manifest (and, Ed25519 being deterministic, an identical signature) too.
    """
    day = business_day(store, business_date)
    if day is None:
        raise SettlementError(
            f"business date {business_date} is not closed; run `honar settle cutover "
            f"--date {business_date}` first"
        )
    previous = _previous_day(store, business_date)
    if previous is not None and previous.manifest_sha256 is None:
        raise SettlementError(
            f"business date {previous.business_date} is closed but was never exported; "
            f"export it first: the manifest of {business_date} chains to it"
        )
    tz = ZoneInfo(zone)
    hours, _, minutes = cutover.partition(":")
    cutover_delta = timedelta(hours=int(hours), minutes=int(minutes))
    folder = out / business_date.isoformat()
    partial = out / f".{business_date.isoformat()}.partial"
    if partial.exists():
        shutil.rmtree(partial)
    partial.mkdir(parents=True)
    with store.engine.connect() as connection:
        if not store.is_sqlite:
            connection = connection.execution_options(isolation_level="REPEATABLE READ")
        figures = day_figures(connection, business_date)
        files = (
            write_transactions(
                partial / TRANSACTIONS_FILE,
                financial_rows(connection, business_date),
                business_date,
                tz,
            ),
            write_merchants(partial / MERCHANTS_FILE, figures),
            write_programs(partial / PROGRAMS_FILE, figures),
            write_camt053(partial / CAMT_FILE, figures, tz, cutover_delta),
        )
        connection.rollback()
    net = files[1].sums["net_payable"]
    if net != files[3].sums["credits"] - files[3].sums["debits"]:
        raise SettlementError(
            f"{MERCHANTS_FILE} nets {net} but the settlement account moved by "
            f"{files[3].sums['credits'] - files[3].sums['debits']}"
        )
    generated_at = day.generated_at or now
    manifest = {
        "format": FORMAT,
        "business_date": business_date.isoformat(),
        "business_date_jalali": jalali(business_date),
        "closed_at": day.closed_at,
        "generated_at": generated_at,
        "software": {"name": "honar-switch", "version": software_version},
        "files": {f.name: f.to_json() for f in files},
        "previous_business_date": None if previous is None else previous.business_date,
        "previous_manifest_sha256": None if previous is None else previous.manifest_sha256,
        "journal": {"seq": figures.journal_seq, "hash": figures.journal_hash},
        "camt053_version": CAMT_VERSION,
    }
    body = manifest_bytes(manifest)
    (partial / MANIFEST_FILE).write_bytes(body)
    (partial / SIGNATURE_FILE).write_bytes(key.sign(body))
    if folder.exists():
        shutil.rmtree(folder)
    partial.rename(folder)
    digest = hashlib.sha256(body).hexdigest()
    warnings: list[str] = []
    if day.manifest_sha256 is not None and day.manifest_sha256 != digest:
        warnings.append(
            f"the manifest differs from the one of the earlier export of {business_date} "
            f"({day.manifest_sha256[:16]}...): the ledger changed, and a later date's manifest "
            "that chains to the earlier one will no longer verify"
        )
    b = schema.business_days.c
    with store.engine.begin() as connection:
        connection.execute(
            schema.business_days.update()
            .where(b.business_date == business_date.isoformat())
            .values(generated_at=generated_at, manifest_sha256=digest)
        )
    return ExportResult(folder, digest, files, tuple(warnings))


def _previous_day(store: Store, business_date: date) -> BusinessDay | None:
    b = schema.business_days.c
    with store.engine.connect() as connection:
        row = connection.execute(
            select(schema.business_days)
            .where(b.business_date < business_date.isoformat())
            .order_by(b.business_date.desc())
            .limit(1)
        ).one_or_none()
    return None if row is None else BusinessDay(*row)


def figures_for_report(store: Store, business_date: date) -> DayFigures:
    """The date's aggregates (open or closed date), for the people's report."""
    with store.engine.connect() as connection:
        figures = day_figures(connection, business_date)
        connection.rollback()
    return figures


# --- verification -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Check:
    """One verification step: what was checked, whether it holds, and the detail."""

    ok: bool
    what: str
    detail: str

    def __str__(self) -> str:
        return f"{'OK' if self.ok else 'FAIL'} {self.what}: {self.detail}"


def _sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _csv_totals(path: Path, sums: Iterable[str]) -> tuple[int, dict[str, int]]:
    with path.open(newline="", encoding="utf-8") as handle:
        reader = csv.reader(handle)
        header = next(reader)
        index = {name: header.index(name) for name in sums}
        totals = dict.fromkeys(index, 0)
        rows = 0
        for row in reader:
            rows += 1
            for name, i in index.items():
                totals[name] += int(row[i])
    return rows, totals


def _camt_totals(path: Path) -> tuple[int, dict[str, int]]:
    ns = f"{{{CAMT_NAMESPACE}}}"
    totals = dict.fromkeys(CAMT_SUMS, 0)
    rows = 0
    for _event, element in ElementTree.iterparse(path):
        if element.tag == f"{ns}Ntry":
            amount = int(element.findtext(f"{ns}Amt") or "0")
            if element.findtext(f"{ns}CdtDbtInd") == "CRDT":
                totals["credits"] += amount
            else:
                totals["debits"] += amount
            rows += 1
            element.clear()
        elif element.tag == f"{ns}Bal":
            kind = element.findtext(f"{ns}Tp/{ns}CdOrPrtry/{ns}Cd")
            amount = int(element.findtext(f"{ns}Amt") or "0")
            if element.findtext(f"{ns}CdtDbtInd") == "DBIT":
                amount = -amount
            name = {"OPBD": "opening_balance", "CLBD": "closing_balance"}.get(kind or "")
            if name:
                totals[name] = amount
    return rows, totals


FileTotals = Callable[[Path], tuple[int, dict[str, int]]]
FILE_TOTALS: dict[str, FileTotals] = {
    TRANSACTIONS_FILE: lambda p: _csv_totals(p, TRANSACTION_SUMS),
    MERCHANTS_FILE: lambda p: _csv_totals(p, MERCHANT_SUMS),
    PROGRAMS_FILE: lambda p: _csv_totals(p, PROGRAM_SUMS),
    CAMT_FILE: _camt_totals,
}


def _load_signed(folder: Path, public_key: Ed25519PublicKey) -> tuple[bytes, dict[str, Any]]:
    """The manifest bytes and content; raises ValueError naming what is wrong."""
    manifest_path, signature_path = folder / MANIFEST_FILE, folder / SIGNATURE_FILE
    for path in (manifest_path, signature_path):
        if not path.is_file():
            raise ValueError(f"{path} is missing")
    body = manifest_path.read_bytes()
    try:
        public_key.verify(signature_path.read_bytes(), body)
    except InvalidSignature:
        raise ValueError(
            f"{signature_path} is not a valid signature of {manifest_path} under this key"
        ) from None
    try:
        manifest = json.loads(body)
    except (ValueError, UnicodeDecodeError) as error:
        raise ValueError(f"{manifest_path} is not JSON: {error}") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise ValueError(f"{manifest_path}: not a {FORMAT} manifest")
    return body, manifest


def load_public_key(pem: bytes) -> Ed25519PublicKey:
    """An Ed25519 public key from PEM; ValueError otherwise."""
    key = serialization.load_pem_public_key(pem)
    if not isinstance(key, Ed25519PublicKey):
        raise ValueError("the public key is not an Ed25519 key")
    return key


def verify_folder(
    folder: Path, public_key: Ed25519PublicKey, store: Store | None
) -> Iterator[Check]:
    """Check one day's folder; stop after the first failed check.

    Order: the signature of the manifest; each file's presence, SHA-256, rows and sums
    (recomputed from the file); no file that the manifest does not list; the manifest chain
    back to the first day (previous days' folders beside this one, each signed); the journal
    hash chain of the ledger and the entry the manifest names (when ``store`` is given).
    """
    try:
        _body, manifest = _load_signed(folder, public_key)
    except ValueError as error:
        yield Check(False, "signature", str(error))
        return
    yield Check(True, "signature", f"{SIGNATURE_FILE} signs {MANIFEST_FILE} (Ed25519)")
    files = manifest.get("files") or {}
    for name in DATA_FILES:
        if name not in files:
            yield Check(False, name, "not listed in the manifest")
            return
        entry, path = files[name], folder / name
        if not path.is_file():
            yield Check(False, name, "missing")
            return
        digest = _sha256_file(path)
        if digest != entry["sha256"]:
            yield Check(
                False,
                name,
                f"SHA-256 {digest[:16]}... does not match the manifest's "
                f"{str(entry['sha256'])[:16]}...; the file was altered",
            )
            return
        try:
            rows, sums = FILE_TOTALS[name](path)
        except (ValueError, KeyError, StopIteration, ElementTree.ParseError) as error:
            yield Check(False, name, f"cannot be read: {error}")
            return
        if rows != entry["rows"] or sums != entry["sums"]:
            yield Check(
                False,
                name,
                f"rows {rows} and sums {sums} do not match the manifest's "
                f"{entry['rows']} and {entry['sums']}",
            )
            return
        total_text = ", ".join(f"{k} {v:,}" for k, v in sums.items())
        yield Check(True, name, f"sha256 {digest[:16]}..., {rows} rows, {total_text}")
    merchants_net = files[MERCHANTS_FILE]["sums"]["net_payable"]
    camt = files[CAMT_FILE]["sums"]
    if merchants_net != camt["credits"] - camt["debits"]:
        yield Check(False, "totals", f"{MERCHANTS_FILE} and {CAMT_FILE} disagree")
        return
    yield Check(True, "totals", f"merchants' net payable {merchants_net:,} = statement net")
    extra = sorted(
        p.name
        for p in folder.iterdir()
        if p.name not in {*DATA_FILES, MANIFEST_FILE, SIGNATURE_FILE}
    )
    if extra:
        yield Check(False, "folder", f"files the manifest does not list: {', '.join(extra)}")
        return
    yield from _verify_chain(folder, manifest, public_key)
    if store is None:
        return
    broken = store.verify_journal()
    if broken is not None:
        seq, reason = broken
        yield Check(False, "journal", f"entry {seq}: {reason}")
        return
    journal = manifest.get("journal") or {}
    seq, expected = int(journal.get("seq", 0)), str(journal.get("hash", ""))
    found = journal_entry_hash(store, seq)
    if found != expected:
        yield Check(
            False, "journal", f"entry {seq} of the ledger is {found}, the manifest says {expected}"
        )
        return
    head_seq, _head = store.journal_head()
    yield Check(
        True, "journal", f"hash chain whole ({head_seq} entries); entry {seq} = {expected[:16]}..."
    )


def _verify_chain(
    folder: Path, manifest: Mapping[str, Any], public_key: Ed25519PublicKey
) -> Iterator[Check]:
    days = 1
    current = manifest
    while current.get("previous_manifest_sha256"):
        previous_date = str(current.get("previous_business_date"))
        previous_folder = folder.parent / previous_date
        try:
            body, previous = _load_signed(previous_folder, public_key)
        except ValueError as error:
            yield Check(False, "manifest chain", f"{previous_date}: {error}")
            return
        digest = hashlib.sha256(body).hexdigest()
        if digest != current["previous_manifest_sha256"]:
            yield Check(
                False,
                "manifest chain",
                f"{previous_folder / MANIFEST_FILE} has SHA-256 {digest[:16]}..., "
                f"{current['business_date']} expects "
                f"{str(current['previous_manifest_sha256'])[:16]}...",
            )
            return
        if previous.get("business_date") != previous_date:
            yield Check(False, "manifest chain", f"{previous_folder} holds another date")
            return
        days += 1
        current = previous
    yield Check(
        True,
        "manifest chain",
        f"{days} day(s) back to {current.get('business_date')}, each signed and linked",
    )


def journal_entry_hash(store: Store, seq: int) -> str:
    """The hash of journal entry ``seq`` (the genesis hash for 0; empty when missing)."""
    if seq == 0:
        return schema.GENESIS_HASH
    with store.engine.connect() as connection:
        value = connection.scalar(select(schema.journal.c.hash).where(schema.journal.c.seq == seq))
    return "" if value is None else str(value)
