"""The ledger's tables and its versioned schema migrations (SQLite and PostgreSQL).

Migrations are an ordered list of (version, name, function). ``schema_migrations`` records
which have run; :func:`migrate` runs the missing ones in order, each in its own transaction.
A new schema change is a new entry at the end; an applied entry is never edited.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    BigInteger,
    Boolean,
    Column,
    Connection,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Table,
    Text,
    UniqueConstraint,
    inspect,
    select,
)

metadata = MetaData()

schema_migrations = Table(
    "schema_migrations",
    metadata,
    Column("version", Integer, primary_key=True, autoincrement=False),
    Column("name", String(100), nullable=False),
    Column("applied_at", String(32), nullable=False),
)

accounts = Table(
    "accounts",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("code", String(80), nullable=False, unique=True),
    Column("ledger", Integer, nullable=False),
    Column("flags", Integer, nullable=False),
    Column("debits_pending", BigInteger, nullable=False, default=0),
    Column("debits_posted", BigInteger, nullable=False, default=0),
    Column("credits_pending", BigInteger, nullable=False, default=0),
    Column("credits_posted", BigInteger, nullable=False, default=0),
)


def _transfers_v1_columns() -> list[Column[Any]]:
    return [
        Column("seq", Integer, primary_key=True),
        Column("id", String(80), nullable=False, unique=True),
        Column("debit_account_id", Integer, nullable=False, index=True),
        Column("credit_account_id", Integer, nullable=False, index=True),
        Column("amount", BigInteger, nullable=False),
        Column("ledger", Integer, nullable=False),
        Column("code", Integer, nullable=False),
        Column("flags", Integer, nullable=False),
        Column("pending_id", String(80)),
        Column("user_data", String(200), nullable=False, default=""),
        Column("transaction_id", Integer, index=True),
        Column("business_date", String(10), nullable=False),
        Column("created_at", String(32), nullable=False),
    ]


_transfers_v1 = Table("transfers", MetaData(), *_transfers_v1_columns())

transfers = Table(
    "transfers",
    metadata,
    *_transfers_v1_columns(),
    Column("timeout_s", Integer, nullable=False, default=0),
)

programs = Table(
    "programs",
    metadata,
    Column("code", String(20), primary_key=True),
    Column("name", String(200), nullable=False),
    Column("account_id", Integer, nullable=False),
)

members = Table(
    "members",
    metadata,
    Column("id", String(20), primary_key=True),
    Column("name", String(200), nullable=False),
)

cards = Table(
    "cards",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("member_id", String(20), nullable=False, index=True),
    Column("pan_hash", String(64), nullable=False, unique=True),
    Column("pan_encrypted", LargeBinary, nullable=False),
    Column("pan_masked", String(19), nullable=False),
    Column("expiry", String(4), nullable=False),  # YYMM
    Column("service_code", String(3), nullable=False),
    Column("pvki", Integer, nullable=False),
    Column("pvv", String(4), nullable=False),
    Column("state", String(12), nullable=False),  # active | blocked
    Column("pin_failures", Integer, nullable=False, default=0),
    Column("daily_amount_max", BigInteger, nullable=False),
    Column("daily_count_max", Integer, nullable=False),
    Column("payment_amount_max", BigInteger, nullable=False),
    Column("pin_tries_max", Integer, nullable=False),
)

purses = Table(
    "purses",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("member_id", String(20), nullable=False, index=True),
    Column("code", String(2), nullable=False),
    Column("account_id", Integer, nullable=False),
    Column("program_code", String(20), nullable=False),
    Column("expires", String(10)),  # YYYY-MM-DD, last day it may pay; NULL never expires
    UniqueConstraint("member_id", "code"),
)

purse_kinds = Table(
    "purse_kinds",
    metadata,
    Column("code", String(2), primary_key=True),
    Column("chains", String(200), nullable=False, default=""),  # comma-separated
    Column("merchant_ids", Text, nullable=False, default=""),
    Column("mccs", String(200), nullable=False, default=""),
    Column("expires", String(10)),
)

merchants = Table(
    "merchants",
    metadata,
    Column("id", String(15), primary_key=True),
    Column("name", String(40), nullable=False),
    Column("mcc", String(4), nullable=False),
    Column("city", String(40), nullable=False),
    Column("chain", String(20), nullable=False, default=""),
    Column("sheba", String(26), nullable=False),
    Column("payable_account_id", Integer, nullable=False),
)

terminals = Table(
    "terminals",
    metadata,
    Column("id", String(8), primary_key=True),
    Column("merchant_id", String(15), nullable=False),
    Column("key_scheme", String(8), nullable=False),  # tdes | dukpt
    Column("tmk", String(49), nullable=False, default=""),  # under the LMK
    Column("tpk", String(49), nullable=False, default=""),
    Column("tak", String(49), nullable=False, default=""),
    Column("bdk", String(49), nullable=False, default=""),
    Column("signed_on", Boolean, nullable=False, default=False),
)


def _transactions_v1_columns() -> list[Any]:
    return [
        Column("id", Integer, primary_key=True),
        Column("tid", String(8), nullable=False),
        Column("stan", String(6), nullable=False),
        Column("transmission", String(10), nullable=False),
        Column("mti", String(4), nullable=False),
        Column("kind", String(20), nullable=False),
        Column("request_digest", String(64), nullable=False),
        Column("card_id", Integer),
        Column("merchant_id", String(15)),
        Column("pan_masked", String(19)),
        Column("amount", BigInteger, nullable=False, default=0),
        Column("response_code", String(2), nullable=False),
        Column("rrn", String(12), nullable=False, default=""),
        Column("auth_id", String(6), nullable=False, default=""),
        Column("response_json", Text, nullable=False),
        Column("business_date", String(10), nullable=False),
        Column("created_at", String(32), nullable=False),
        UniqueConstraint("tid", "stan", "transmission", name="uq_transactions_key"),
    ]


# The shape migration 1 created; later migrations add columns to it (see MIGRATIONS).
_transactions_v1 = Table("transactions", MetaData(), *_transactions_v1_columns())

# The current shape, for queries.
transactions = Table(
    "transactions",
    metadata,
    *_transactions_v1_columns(),
    Column("processing_code", String(6), nullable=False, default=""),
    Column("member_id", String(20)),
    Column("discount", BigInteger, nullable=False, default=0),
    Column("discount_rule", String(20), nullable=False, default=""),
    Column("discount_funded_by", String(20), nullable=False, default=""),
    Column("amount_charged", BigInteger, nullable=False, default=0),
    Column("purses_used", String(200), nullable=False, default=""),
    Column("original_id", Integer),
    Column("reversed_amount", BigInteger, nullable=False, default=0),
    Column("refunded_amount", BigInteger, nullable=False, default=0),
    Column("hold_state", String(10), nullable=False, default=""),
    Column("hold_expires_at", String(32)),
    Column("tombstone", Boolean, nullable=False, default=False),
)


settings = Table(
    "settings",
    metadata,
    Column("key", String(40), primary_key=True),
    Column("value", Text, nullable=False),
)


def _v1_initial(connection: Connection) -> None:
    tables = [
        accounts,
        programs,
        members,
        cards,
        purses,
        purse_kinds,
        merchants,
        terminals,
        settings,
    ]
    metadata.create_all(connection, tables=tables)
    _transactions_v1.create(connection)
    _transfers_v1.create(connection)


transfer_states = Table(
    "transfer_states",
    metadata,
    Column("pending_id", String(80), primary_key=True),
    Column("state", String(10), nullable=False),  # pending | posted | voided | expired
    Column("amount", BigInteger, nullable=False),
    Column("expires_at", String(32)),  # UTC ISO 8601; NULL never
    Column("resolved_by", String(80)),
)

journal = Table(
    "journal",
    metadata,
    Column("seq", Integer, primary_key=True, autoincrement=False),
    Column("transfer_id", String(80), nullable=False, unique=True),
    Column("prev_hash", String(64), nullable=False),
    Column("hash", String(64), nullable=False),
)

journal_head = Table(
    "journal_head",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=False),
    Column("seq", Integer, nullable=False),
    Column("hash", String(64), nullable=False),
)

outbox = Table(
    "outbox",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("event_id", String(40), nullable=False, unique=True),
    Column("topic", String(120), nullable=False),
    Column("payload", Text, nullable=False),
    Column("created_at", String(32), nullable=False),
    Column("published_at", String(32), index=True),
)

discount_rules = Table(
    "discount_rules",
    metadata,
    Column("code", String(20), primary_key=True),
    Column("chains", String(200), nullable=False, default=""),
    Column("merchant_ids", Text, nullable=False, default=""),
    Column("mccs", String(200), nullable=False, default=""),
    Column("percent", Integer, nullable=False, default=0),
    Column("fixed_amount", BigInteger, nullable=False, default=0),
    Column("cap_amount", BigInteger, nullable=False, default=0),  # 0: no cap
    Column("uses_max", Integer, nullable=False, default=0),  # 0: no limit
    Column("uses_period", String(10), nullable=False, default=""),  # day | month | ""
    Column("funded_by", String(20), nullable=False),  # "merchant" or a program code
    Column("valid_from", String(10), nullable=False),
    Column("valid_to", String(10), nullable=False),
)

tombstones = Table(
    "tombstones",
    metadata,
    Column("tid", String(8), primary_key=True),
    Column("stan", String(6), primary_key=True),
    Column("transmission", String(10), primary_key=True),
    Column("reversal_id", Integer, nullable=False),
)

GENESIS_HASH = "0" * 64

V2_TRANSACTION_COLUMNS = (
    ("processing_code", "VARCHAR(6) NOT NULL DEFAULT ''"),
    ("member_id", "VARCHAR(20)"),
    ("discount", "BIGINT NOT NULL DEFAULT 0"),
    ("discount_rule", "VARCHAR(20) NOT NULL DEFAULT ''"),
    ("discount_funded_by", "VARCHAR(20) NOT NULL DEFAULT ''"),
    ("amount_charged", "BIGINT NOT NULL DEFAULT 0"),
    ("purses_used", "VARCHAR(200) NOT NULL DEFAULT ''"),
    ("original_id", "INTEGER"),
    ("reversed_amount", "BIGINT NOT NULL DEFAULT 0"),
    ("refunded_amount", "BIGINT NOT NULL DEFAULT 0"),
    ("hold_state", "VARCHAR(10) NOT NULL DEFAULT ''"),
    ("hold_expires_at", "VARCHAR(32)"),
    ("tombstone", "BOOLEAN NOT NULL DEFAULT FALSE"),
)


def _v2_holds_journal_outbox_rules(connection: Connection) -> None:
    metadata.create_all(
        connection,
        tables=[transfer_states, journal, journal_head, outbox, discount_rules, tombstones],
    )
    connection.execute(journal_head.insert().values(id=1, seq=0, hash=GENESIS_HASH))
    connection.exec_driver_sql(
        "ALTER TABLE transfers ADD COLUMN timeout_s INTEGER NOT NULL DEFAULT 0"
    )
    for name, ddl in V2_TRANSACTION_COLUMNS:
        connection.exec_driver_sql(f"ALTER TABLE transactions ADD COLUMN {name} {ddl}")
    connection.exec_driver_sql(
        "CREATE INDEX ix_transactions_rrn ON transactions (merchant_id, rrn)"
    )
    connection.exec_driver_sql(
        "CREATE INDEX ix_transactions_day ON transactions (tid, business_date)"
    )
    connection.exec_driver_sql(
        "CREATE INDEX ix_transactions_card_day ON transactions (card_id, business_date)"
    )
    connection.exec_driver_sql(
        "CREATE INDEX ix_transactions_hold ON transactions (hold_state, hold_expires_at)"
    )


disbursement_batches = Table(
    "disbursement_batches",
    metadata,
    Column("batch_id", String(40), primary_key=True),
    Column("program_code", String(20), nullable=False),
    Column("purse_code", String(2), nullable=False),
    Column("file_sha256", String(64), nullable=False),  # what makes a rerun "the same batch"
    Column("rows", Integer, nullable=False),
    Column("amount_total", BigInteger, nullable=False),
    Column("purses_created", Integer, nullable=False),
    Column("created_at", String(32), nullable=False),
)


def _v3_disbursement_batches(connection: Connection) -> None:
    metadata.create_all(connection, tables=[disbursement_batches])
    connection.exec_driver_sql("CREATE INDEX ix_purses_code ON purses (code, member_id)")
    connection.exec_driver_sql("CREATE INDEX ix_purses_expires ON purses (expires)")


MIGRATIONS: list[tuple[int, str, Callable[[Connection], None]]] = [
    (1, "initial ledger, merchants, terminals, transactions", _v1_initial),
    (2, "holds, journal hash chain, outbox, discount rules", _v2_holds_journal_outbox_rules),
    (3, "disbursement batches; purse indexes", _v3_disbursement_batches),
]


def applied_versions(connection: Connection) -> set[int]:
    """Versions recorded in ``schema_migrations`` (empty on a new database)."""
    if not inspect(connection).has_table("schema_migrations"):
        return set()
    return set(connection.scalars(select(schema_migrations.c.version)))


def run_migration(
    connection: Connection, version: int, name: str, step: Callable[[Connection], None]
) -> None:
    """Run one migration step and record it (inside the caller's transaction)."""
    step(connection)
    connection.execute(
        schema_migrations.insert().values(
            version=version, name=name, applied_at=datetime.now(UTC).isoformat()
        )
    )


# --- version 4: closed business dates (settlement) --------------------------------------------

business_days = Table(
    "business_days",
    metadata,
    Column("business_date", String(10), primary_key=True),  # YYYY-MM-DD
    Column("closed_at", String(32), nullable=False),  # UTC ISO 8601
    Column("generated_at", String(32)),  # first export of the day's files
    Column("manifest_sha256", String(64)),  # of the latest export's manifest.json
)


def _v4_business_days(connection: Connection) -> None:
    metadata.create_all(connection, tables=[business_days])
    # Settlement reads one business date at a time.
    connection.exec_driver_sql(
        "CREATE INDEX ix_transactions_business_date ON transactions (business_date, id)"
    )
    connection.exec_driver_sql(
        "CREATE INDEX ix_transfers_business_date ON transfers (business_date)"
    )


MIGRATIONS.append((4, "closed business dates, settlement indexes", _v4_business_days))


def _v5_outbox_quarantine(connection: Connection) -> None:
    # Events refused by the publisher (PAN-shaped content) are kept, never sent: see
    # ledger/outbox.py, whose table definition includes this column.
    connection.exec_driver_sql("ALTER TABLE outbox ADD COLUMN quarantined_at VARCHAR(32)")


MIGRATIONS.append((5, "outbox quarantine", _v5_outbox_quarantine))


card_days = Table(
    "card_days", metadata,
    Column("card_id", Integer, primary_key=True, autoincrement=False),
    Column("business_date", String(10), primary_key=True),
    Column("amount", BigInteger, nullable=False),  # approved payments less reversals
    Column("count", Integer, nullable=False),  # approved payments not fully reversed
)


def _v6_card_days(connection: Connection) -> None:
    # Daily limits read one row per card and date instead of summing the day's requests.
    card_days.create(connection)
    connection.exec_driver_sql(
        "INSERT INTO card_days (card_id, business_date, amount, count) "
        "SELECT card_id, business_date, SUM(amount - reversed_amount), COUNT(*) "
        "FROM transactions WHERE response_code = '00' AND kind IN ('purchase', 'completion') "
        "AND reversed_amount < amount AND card_id IS NOT NULL GROUP BY card_id, business_date"
    )


MIGRATIONS.append((6, "daily totals per card", _v6_card_days))


def _v7_drop_unused_transaction_indexes(connection: Connection) -> None:
    # Nothing reads by them any more: daily limits read card_days (v6), and the hold sweep
    # goes by transfer_states. Each index is one more b-tree page written per commit: a
    # single-request commit wrote 21 WAL pages, and without these two about 8 % less CPU
    # per purchase at one request per commit (docs/benchmarks.md, run 6).
    connection.exec_driver_sql("DROP INDEX IF EXISTS ix_transactions_card_day")
    connection.exec_driver_sql("DROP INDEX IF EXISTS ix_transactions_hold")


MIGRATIONS.append((7, "drop unused transaction indexes", _v7_drop_unused_transaction_indexes))


# Migrations were appended by several changes in turn: run them in version order.
MIGRATIONS.sort(key=lambda migration: migration[0])
